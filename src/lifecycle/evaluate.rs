//! The evaluator: which images a policy expires, and by which rule, from facts alone (tags,
//! push and pull times), so a preview and a run decide exactly alike and tests need no storage.
//!
//! As ECR (ECR.md 3.2): rules apply lowest priority number first; an image is expired by at
//! most one rule; an image a higher rule's tag selection matched is never expired by a lower
//! rule, but lower rules still count it; `imageCountMoreThan` keeps the newest N by push time
//! and expires the rest; `sinceImagePushed` / `sinceImagePulled` expire what is older than N
//! days (a never-pulled image counts from its push).

use super::policy::{Count, LifecyclePolicy};
use crate::oci::Digest;
use std::collections::{HashMap, HashSet};

/// A day in milliseconds.
const DAY_MS: u64 = 86_400_000;

/// What the evaluator knows of one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFacts {
    /// The manifest's digest.
    pub digest: Digest,
    /// Its tags.
    pub tags: Vec<String>,
    /// When it was first pushed (ms since the epoch).
    pub pushed_at_ms: u64,
    /// When it was last pulled, if ever.
    pub last_pulled_ms: Option<u64>,
}

/// One image a policy expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The image.
    pub digest: Digest,
    /// The rule that expires it.
    pub rule_priority: u64,
}

/// The images `policy` expires at `now_ms`, in the order the rules marked them.
pub fn evaluate(policy: &LifecyclePolicy, images: &[ImageFacts], now_ms: u64) -> Vec<Verdict> {
    let mut marked: HashMap<usize, u64> = HashMap::new();
    let mut order: Vec<usize> = Vec::new();
    let mut protected: HashSet<usize> = HashSet::new();
    for rule in &policy.rules {
        let mut selected: Vec<usize> = (0..images.len()).filter(|&i| rule.tags.selects(&images[i].tags)).collect();
        let candidates: Vec<usize> = match rule.count {
            Count::MoreThan(n) => {
                // Newest first; equal times in digest order, so every run agrees.
                selected.sort_by(|&a, &b| {
                    images[b]
                        .pushed_at_ms
                        .cmp(&images[a].pushed_at_ms)
                        .then_with(|| images[a].digest.hex().cmp(images[b].digest.hex()))
                });
                selected.iter().copied().skip(usize::try_from(n).unwrap_or(usize::MAX)).collect()
            }
            Count::SincePushedDays(days) => {
                let cutoff = now_ms.saturating_sub(days.saturating_mul(DAY_MS));
                selected.iter().copied().filter(|&i| images[i].pushed_at_ms < cutoff).collect()
            }
            Count::SincePulledDays(days) => {
                let cutoff = now_ms.saturating_sub(days.saturating_mul(DAY_MS));
                selected
                    .iter()
                    .copied()
                    .filter(|&i| images[i].last_pulled_ms.unwrap_or(images[i].pushed_at_ms) < cutoff)
                    .collect()
            }
        };
        for i in candidates {
            if !protected.contains(&i) && !marked.contains_key(&i) {
                marked.insert(i, rule.priority);
                order.push(i);
            }
        }
        protected.extend(selected);
    }
    order
        .into_iter()
        .filter_map(|i| marked.get(&i).map(|&p| Verdict { digest: images[i].digest.clone(), rule_priority: p }))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::policy::parse;

    fn digest(i: usize) -> Digest {
        Digest::parse(&format!("sha256:{i:064x}")).unwrap()
    }

    /// Image `i`, pushed `age_days` before `NOW`, with `tags`.
    fn image(i: usize, age_days: u64, tags: &[&str]) -> ImageFacts {
        ImageFacts {
            digest: digest(i),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            pushed_at_ms: NOW - age_days * DAY_MS - i as u64,
            last_pulled_ms: None,
        }
    }

    const NOW: u64 = 2_000_000_000_000;

    fn run(rules: &str, images: &[ImageFacts]) -> Vec<(usize, u64)> {
        let text = format!(r#"{{"rules":[{rules}]}}"#);
        let policy = parse(&format!("{text:<100}")).unwrap();
        let mut out: Vec<(usize, u64)> = evaluate(&policy, images, NOW)
            .into_iter()
            .map(|v| (images.iter().position(|i| i.digest == v.digest).unwrap(), v.rule_priority))
            .collect();
        out.sort_unstable();
        out
    }

    fn rule(p: u64, selection: &str) -> String {
        format!(r#"{{"rulePriority":{p},"selection":{{{selection}}},"action":{{"type":"expire"}}}}"#)
    }

    #[test]
    fn filtering_on_image_age() {
        // ECR example: expire prod* images older than 14 days.
        let images = [image(0, 20, &["prod1"]), image(1, 10, &["prod2"]), image(2, 30, &["dev"])];
        let r = rule(
            1,
            r#""tagStatus":"tagged","tagPatternList":["prod*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":14"#,
        );
        assert_eq!(run(&r, &images), vec![(0, 1)]);
    }

    #[test]
    fn filtering_on_image_count() {
        // ECR example: keep one untagged image, expire the rest (oldest go).
        let images = [image(0, 3, &[]), image(1, 2, &[]), image(2, 1, &[]), image(3, 5, &["v1"])];
        let r = rule(1, r#""tagStatus":"untagged","countType":"imageCountMoreThan","countNumber":1"#);
        assert_eq!(run(&r, &images), vec![(0, 1), (1, 1)]);
    }

    #[test]
    fn multiple_rules_each_image_once() {
        // ECR example: rule 1 keeps prod* to 1, rule 2 keeps beta* to 1.
        let images = [
            image(0, 1, &["prod1"]),
            image(1, 2, &["prod2", "beta2"]),
            image(2, 3, &["beta3"]),
            image(3, 4, &["beta4"]),
            image(4, 5, &["alpha5"]),
        ];
        let rules = format!(
            "{},{}",
            rule(
                1,
                r#""tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":1"#
            ),
            rule(
                2,
                r#""tagStatus":"tagged","tagPatternList":["beta*"],"countType":"imageCountMoreThan","countNumber":1"#
            )
        );
        // Rule 1 expires image 1 (prod2). Rule 2 counts image 1 (newest beta) but may not
        // mark it, so it keeps it and expires 2 and 3.
        assert_eq!(run(&rules, &images), vec![(1, 1), (2, 2), (3, 2)]);
    }

    #[test]
    fn multiple_tags_in_one_rule_are_anded() {
        // ECR example: tagPatternList ["alpha*","beta*"] selects only images with both.
        let images = [image(0, 10, &["alpha1"]), image(1, 10, &["alpha2", "beta2"]), image(2, 10, &["beta3"])];
        let r = rule(
            1,
            r#""tagStatus":"tagged","tagPatternList":["alpha*","beta*"],"countType":"sinceImagePushed","countUnit":"days","countNumber":5"#,
        );
        assert_eq!(run(&r, &images), vec![(1, 1)]);
    }

    #[test]
    fn a_protective_rule_keeps_what_it_selects_from_lower_rules() {
        // Keep everything prod* (count > 9999), expire anything else older than 14 days.
        let images = [image(0, 30, &["prod"]), image(1, 30, &["dev"]), image(2, 30, &[]), image(3, 1, &["dev2"])];
        let rules = format!(
            "{},{}",
            rule(
                1,
                r#""tagStatus":"tagged","tagPatternList":["prod*"],"countType":"imageCountMoreThan","countNumber":9999"#
            ),
            rule(2, r#""tagStatus":"any","countType":"sinceImagePushed","countUnit":"days","countNumber":14"#)
        );
        assert_eq!(run(&rules, &images), vec![(1, 2), (2, 2)]);
    }

    #[test]
    fn all_images_count_with_any() {
        // ECR example: tagStatus any, imageCountMoreThan 1: only the newest stays.
        let images = [image(0, 1, &["a"]), image(1, 2, &[]), image(2, 3, &["b"])];
        let r = rule(1, r#""tagStatus":"any","countType":"imageCountMoreThan","countNumber":1"#);
        assert_eq!(run(&r, &images), vec![(1, 1), (2, 1)]);
    }

    #[test]
    fn since_pulled_falls_back_to_push_time() {
        let mut images = [image(0, 40, &["a"]), image(1, 40, &["b"]), image(2, 5, &["c"])];
        images[0].last_pulled_ms = Some(NOW - DAY_MS);
        let r = rule(1, r#""tagStatus":"any","countType":"sinceImagePulled","countUnit":"days","countNumber":30"#);
        assert_eq!(run(&r, &images), vec![(1, 1)]);
    }

    #[test]
    fn prefixes_match_literally() {
        let images = [image(0, 30, &["v1.0"]), image(1, 30, &["ver"]), image(2, 30, &["x-v1"])];
        let r = rule(
            1,
            r#""tagStatus":"tagged","tagPrefixList":["v1"],"countType":"sinceImagePushed","countUnit":"days","countNumber":1"#,
        );
        assert_eq!(run(&r, &images), vec![(0, 1)]);
    }
}
