//! ECR's lifecycle policy document: its grammar and ECR's validation, with ECR's texts where
//! they are known (schema errors in the wording of ECR's JSON-schema validator, the rest in
//! plain words, each prefixed `Lifecycle policy validation failure: `). A policy that parses
//! here is one the evaluator can run; nothing else is stored.
//!
//! Ferry has no archive storage class: `storageClass: archive`, `action.type: transition` and
//! `sinceImageTransitioned` are refused with a clear error rather than accepted and ignored.
//! `sinceImagePulled` is accepted with `expire` (ECR documents it with `transition`), since
//! expiring what nobody pulls is what Ferry users ask lifecycle for.

use serde_json::{Map, Value};

/// The shortest policy text ECR takes.
pub const MIN_TEXT: usize = 100;
/// The longest policy text.
pub const MAX_TEXT: usize = 30_720;
/// Rules per policy.
pub const MAX_RULES: usize = 50;
/// Wildcards per `tagPatternList` entry.
pub const MAX_WILDCARDS: usize = 4;

/// Which images a rule looks at by their tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSelection {
    /// Tagged images whose tags match every pattern (`*` wildcards).
    Patterns(Vec<String>),
    /// Tagged images whose tags start with every prefix.
    Prefixes(Vec<String>),
    /// Images without tags.
    Untagged,
    /// Every image.
    Any,
}

/// How a rule picks, among the images it selects, those to expire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// All but the newest N by push time.
    MoreThan(u64),
    /// Pushed more than N days ago.
    SincePushedDays(u64),
    /// Last pulled (else pushed) more than N days ago.
    SincePulledDays(u64),
}

/// One rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Lower numbers apply first.
    pub priority: u64,
    /// What it says it does.
    pub description: Option<String>,
    /// Which images it looks at.
    pub tags: TagSelection,
    /// Which of those it expires.
    pub count: Count,
}

/// A validated policy, rules sorted by priority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecyclePolicy {
    /// The rules, lowest priority number first.
    pub rules: Vec<Rule>,
}

fn failure(message: impl std::fmt::Display) -> String {
    format!("Lifecycle policy validation failure: {message}")
}

fn quoted(names: &[&str]) -> String {
    let inner: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    format!("[{}]", inner.join(","))
}

/// An object's members, checked against the allowed and required ones.
fn object<'a>(value: &'a Value, allowed: &[&str], required: &[&str]) -> Result<&'a Map<String, Value>, String> {
    let Some(map) = value.as_object() else {
        return Err(failure(format!(
            "instance type ({}) does not match any allowed primitive type (allowed: [\"object\"])",
            type_name(value)
        )));
    };
    let mut unknown: Vec<&str> = map.keys().map(String::as_str).filter(|k| !allowed.contains(k)).collect();
    if !unknown.is_empty() {
        unknown.sort_unstable();
        return Err(failure(format!(
            "object instance has properties which are not allowed by the schema: {}",
            quoted(&unknown)
        )));
    }
    let missing: Vec<&str> = required.iter().copied().filter(|k| !map.contains_key(*k)).collect();
    if !missing.is_empty() {
        return Err(failure(format!("object has missing required properties ({})", quoted(&missing))));
    }
    Ok(map)
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn string(value: &Value) -> Result<&str, String> {
    value.as_str().ok_or_else(|| {
        failure(format!(
            "instance type ({}) does not match any allowed primitive type (allowed: [\"string\"])",
            type_name(value)
        ))
    })
}

fn one_of<'a>(value: &'a Value, allowed: &[&str]) -> Result<&'a str, String> {
    let s = string(value)?;
    if allowed.contains(&s) {
        Ok(s)
    } else {
        Err(failure(format!("instance value (\"{s}\") not found in enum (possible values: {})", quoted(allowed))))
    }
}

fn positive(value: &Value) -> Result<u64, String> {
    match value {
        Value::Number(n) if n.is_u64() => match n.as_u64() {
            Some(0) | None => {
                Err(failure("numeric instance is lower than the required minimum (minimum: 1, found: 0)"))
            }
            Some(v) => Ok(v),
        },
        Value::Number(n) if n.is_i64() => {
            Err(failure(format!("numeric instance is lower than the required minimum (minimum: 1, found: {n})")))
        }
        other => Err(failure(format!(
            "instance type ({}) does not match any allowed primitive type (allowed: [\"integer\"])",
            type_name(other)
        ))),
    }
}

/// A non-empty list of non-empty strings.
fn strings(value: &Value) -> Result<Vec<String>, String> {
    let Some(list) = value.as_array() else {
        return Err(failure(format!(
            "instance type ({}) does not match any allowed primitive type (allowed: [\"array\"])",
            type_name(value)
        )));
    };
    if list.is_empty() {
        return Err(failure("array is too short: must have at least 1 elements but instance has 0 elements"));
    }
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        let s = string(v)?;
        if s.is_empty() || s.len() > 128 {
            return Err(failure("a tag pattern or prefix must have between 1 and 128 characters"));
        }
        out.push(s.to_owned());
    }
    Ok(out)
}

fn has_null(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Array(a) => a.iter().any(has_null),
        Value::Object(o) => o.values().any(has_null),
        _ => false,
    }
}

/// Parses and validates a policy text as ECR does; the error is the constraint text for
/// `Invalid parameter at 'LifecyclePolicyText' failed to satisfy constraint: '…'`.
pub fn parse(text: &str) -> Result<LifecyclePolicy, String> {
    let length = text.chars().count();
    if length < MIN_TEXT {
        return Err(format!("Member must have length greater than or equal to {MIN_TEXT}"));
    }
    if length > MAX_TEXT {
        return Err(format!("Member must have length less than or equal to {MAX_TEXT}"));
    }
    // The text is at most 30 KiB, so nesting is bounded before it is parsed.
    let doc: Value = serde_json::from_str(text).map_err(|e| failure(format!("the policy is not valid JSON: {e}")))?;
    if has_null(&doc) {
        // What ECR answers for an explicit null anywhere (terraform users meet it often).
        return Err(failure("instance failed to match exactly one schema (matched 0 out of 2)"));
    }
    let top = object(&doc, &["rules"], &["rules"])?;
    let Some(rules) = top.get("rules").and_then(Value::as_array) else {
        return Err(failure("instance type does not match any allowed primitive type (allowed: [\"array\"])"));
    };
    if rules.is_empty() {
        return Err(failure("array is too short: must have at least 1 elements but instance has 0 elements"));
    }
    if rules.len() > MAX_RULES {
        return Err(failure(format!(
            "array is too long: must have at most {MAX_RULES} elements but instance has {} elements",
            rules.len()
        )));
    }
    let mut parsed: Vec<Rule> = rules.iter().map(rule).collect::<Result<_, _>>()?;
    parsed.sort_by_key(|r| r.priority);
    check_rules(&parsed)?;
    Ok(LifecyclePolicy { rules: parsed })
}

fn rule(value: &Value) -> Result<Rule, String> {
    let r = object(
        value,
        &["rulePriority", "description", "selection", "action"],
        &["rulePriority", "selection", "action"],
    )?;
    let priority = r.get("rulePriority").map(positive).transpose()?.unwrap_or(1);
    let description = r.get("description").map(string).transpose()?.map(str::to_owned);
    let action = object(&r["action"], &["type", "targetStorageClass"], &["type"])?;
    if one_of(&action["type"], &["expire", "transition"])? == "transition" || action.contains_key("targetStorageClass")
    {
        return Err(failure(
            "action type transition (to the archive storage class) is not supported by this registry: it has no archive tier; use expire",
        ));
    }
    let s = object(
        &r["selection"],
        &["tagStatus", "tagPatternList", "tagPrefixList", "storageClass", "countType", "countUnit", "countNumber"],
        &["tagStatus", "countType", "countNumber"],
    )?;
    if let Some(class) = s.get("storageClass") {
        if one_of(class, &["standard", "archive"])? == "archive" {
            return Err(failure("storageClass archive is not supported by this registry: it has no archive tier"));
        }
    }
    let patterns = s.get("tagPatternList").map(strings).transpose()?;
    let prefixes = s.get("tagPrefixList").map(strings).transpose()?;
    let tags = match (one_of(&s["tagStatus"], &["tagged", "untagged", "any"])?, patterns, prefixes) {
        ("tagged", Some(_), Some(_)) => {
            return Err(failure("a rule may give tagPatternList or tagPrefixList, not both"));
        }
        ("tagged", Some(p), None) => {
            if let Some(bad) = p.iter().find(|p| p.matches('*').count() > MAX_WILDCARDS) {
                return Err(failure(format!(
                    "tagPatternList entry \"{bad}\" has more than {MAX_WILDCARDS} wildcards (*)"
                )));
            }
            TagSelection::Patterns(p)
        }
        ("tagged", None, Some(p)) => TagSelection::Prefixes(p),
        ("tagged", None, None) => {
            return Err(failure("tagStatus tagged requires a tagPatternList or a tagPrefixList"));
        }
        (status, None, None) => {
            if status == "untagged" {
                TagSelection::Untagged
            } else {
                TagSelection::Any
            }
        }
        (status, _, _) => {
            return Err(failure(format!(
                "tagPatternList and tagPrefixList are only allowed with tagStatus tagged, not {status}"
            )));
        }
    };
    let count_type = one_of(
        &s["countType"],
        &["imageCountMoreThan", "sinceImagePushed", "sinceImagePulled", "sinceImageTransitioned"],
    )?;
    let number = positive(&s["countNumber"])?;
    let unit = s.get("countUnit").map(|u| one_of(u, &["days"])).transpose()?;
    let count = match (count_type, unit) {
        ("imageCountMoreThan", None) => Count::MoreThan(number),
        ("imageCountMoreThan", Some(_)) => {
            return Err(failure("countUnit is not allowed when countType is imageCountMoreThan"));
        }
        ("sinceImageTransitioned", _) => {
            return Err(failure(
                "countType sinceImageTransitioned needs the archive storage class, which this registry does not have",
            ));
        }
        (t, None) => return Err(failure(format!("countUnit (days) is required when countType is {t}"))),
        ("sinceImagePushed", Some(_)) => Count::SincePushedDays(number),
        (_, Some(_)) => Count::SincePulledDays(number),
    };
    Ok(Rule { priority, description, tags, count })
}

/// The checks across rules (they are sorted by priority).
fn check_rules(rules: &[Rule]) -> Result<(), String> {
    for pair in rules.windows(2) {
        if let [a, b] = pair {
            if a.priority == b.priority {
                return Err(failure(format!(
                    "rulePriority {} is used by more than one rule; priorities must be unique",
                    a.priority
                )));
            }
        }
    }
    let last = rules.len().saturating_sub(1);
    if let Some(i) = rules.iter().position(|r| r.tags == TagSelection::Any) {
        if i != last {
            return Err(failure("the rule with tagStatus any must have the highest rulePriority"));
        }
    }
    if rules.iter().filter(|r| r.tags == TagSelection::Untagged).count() > 1 {
        return Err(failure("only one rule may select untagged images"));
    }
    let mut prefix_sets: Vec<Vec<&String>> = Vec::new();
    for r in rules {
        if let TagSelection::Prefixes(p) = &r.tags {
            let mut set: Vec<&String> = p.iter().collect();
            set.sort_unstable();
            set.dedup();
            if prefix_sets.contains(&set) {
                return Err(failure("two rules have the same tagPrefixList; prefix sets must be unique"));
            }
            prefix_sets.push(set);
        }
    }
    Ok(())
}

/// Whether `tag` matches `pattern`, where `*` matches any run of characters (empty included).
pub fn pattern_matches(pattern: &str, tag: &str) -> bool {
    wildmatch::WildMatchPattern::<'*', '\0'>::new(pattern).matches(tag)
}

impl TagSelection {
    /// Whether an image with `tags` is selected: every entry of a list must match at least
    /// one tag (entries are ANDed, as in ECR).
    pub fn selects(&self, tags: &[String]) -> bool {
        match self {
            Self::Any => true,
            Self::Untagged => tags.is_empty(),
            Self::Patterns(p) => !tags.is_empty() && p.iter().all(|pat| tags.iter().any(|t| pattern_matches(pat, t))),
            Self::Prefixes(p) => {
                !tags.is_empty() && p.iter().all(|pre| tags.iter().any(|t| t.starts_with(pre.as_str())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &str) -> String {
        let text = format!(r#"{{"rules":[{rules}]}}"#);
        // Pad with spaces to ECR's minimum length, as real documents are longer anyway.
        format!("{text:<100}")
    }

    fn rule(p: u64, selection: &str) -> String {
        format!(r#"{{"rulePriority":{p},"selection":{{{selection}}},"action":{{"type":"expire"}}}}"#)
    }

    fn error(rules: &str) -> String {
        parse(&policy(rules)).unwrap_err()
    }

    #[test]
    fn ecr_examples_parse() {
        let p = parse(&policy(&rule(
            1,
            r#""tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14"#,
        )))
        .unwrap();
        assert_eq!(p.rules[0].tags, TagSelection::Patterns(vec!["prod*".into()]));
        assert_eq!(p.rules[0].count, Count::SincePushedDays(14));
        let two = format!(
            "{},{}",
            rule(2, r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":1"#),
            rule(1, r#""tagStatus":"untagged","countType":"sinceImagePushed","countUnit":"days","countNumber":14"#)
        );
        let p = parse(&policy(&two)).unwrap();
        assert_eq!(p.rules.iter().map(|r| r.priority).collect::<Vec<_>>(), vec![1, 2]);
    }

    #[test]
    fn ecr_validation_errors() {
        let untagged = r#""tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1"#;
        assert!(error(&format!(
            "{},{}",
            rule(1, untagged),
            rule(1, r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":1"#)
        ))
        .contains("must be unique"));
        assert!(error(&format!(
            "{},{}",
            rule(1, r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":1"#),
            rule(2, untagged)
        ))
        .contains("tagStatus any must have the highest rulePriority"));
        assert!(error(&rule(1, r#""tagStatus":"tagged","countType":"imageCountMoreThan","countNumber":1"#))
            .contains("requires a tagPatternList or a tagPrefixList"));
        assert!(error(&rule(
            1,
            r#""tagStatus":"tagged","tagPatternList":["a"],"tagPrefixList":["b"],"countType":"imageCountMoreThan","countNumber":1"#
        ))
        .contains("not both"));
        assert!(error(&rule(
            1,
            r#""tagStatus":"tagged","tagPatternList":["*a*b*c*d*"],"countType":"imageCountMoreThan","countNumber":1"#
        ))
        .contains("more than 4 wildcards"));
        assert!(error(&rule(
            1,
            r#""tagStatus":"untagged","countType":"imageCountMoreThan","countUnit":"days","countNumber":1"#
        ))
        .contains("countUnit is not allowed"));
        assert!(error(&rule(1, r#""tagStatus":"untagged","countType":"sinceImagePushed","countNumber":1"#))
            .contains("countUnit (days) is required"));
        assert_eq!(
            error(&rule(1, r#""tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":0"#)),
            "Lifecycle policy validation failure: numeric instance is lower than the required minimum (minimum: 1, found: 0)"
        );
        assert_eq!(
            error(&rule(
                1,
                r#""tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1,"tagPatternList":null"#
            )),
            "Lifecycle policy validation failure: instance failed to match exactly one schema (matched 0 out of 2)"
        );
        assert!(error(&rule(1, r#""tagStatus":"some","countType":"imageCountMoreThan","countNumber":1"#))
            .contains(r#"instance value ("some") not found in enum"#));
        assert!(error(&rule(1, r#""tagStatus":"untagged","countNumber":1"#))
            .contains(r#"missing required properties (["countType"])"#));
        assert!(error(&format!("{},{}", rule(1, untagged), rule(2, untagged)))
            .contains("only one rule may select untagged"));
        let many: Vec<String> = (1..=51)
            .map(|i| {
                rule(
                    i,
                    r#""tagStatus":"tagged","tagPrefixList":["x"],"countType":"imageCountMoreThan","countNumber":1"#,
                )
            })
            .collect();
        assert!(error(&many.join(",")).contains("at most 50 elements"));
        assert_eq!(parse("{}").unwrap_err(), "Member must have length greater than or equal to 100");
        assert!(parse(&"x".repeat(MAX_TEXT + 1)).unwrap_err().contains("less than or equal to 30720"));
        assert!(error(&rule(
            1,
            r#""tagStatus":"untagged","countType":"sinceImageTransitioned","countUnit":"days","countNumber":1"#
        ))
        .contains("archive"));
    }

    #[test]
    fn tag_lists_are_anded_and_wildcards_match_empty_runs() {
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let sel = TagSelection::Patterns(vec!["prod*".into()]);
        assert!(sel.selects(&tags(&["prod"])) && sel.selects(&tags(&["production-team1"])));
        assert!(!sel.selects(&tags(&["staging"])) && !sel.selects(&[]));
        assert!(TagSelection::Patterns(vec!["*prod*".into()]).selects(&tags(&["repo-production"])));
        let both = TagSelection::Patterns(vec!["alpha*".into(), "beta*".into()]);
        assert!(!both.selects(&tags(&["alpha1"])));
        assert!(both.selects(&tags(&["alpha1", "beta1"])));
        let prefixes = TagSelection::Prefixes(vec!["v".into(), "rel".into()]);
        assert!(prefixes.selects(&tags(&["v1", "release"])) && !prefixes.selects(&tags(&["v1"])));
        assert!(TagSelection::Untagged.selects(&[]) && !TagSelection::Untagged.selects(&tags(&["a"])));
    }
}
