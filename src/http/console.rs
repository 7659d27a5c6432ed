//! The web console on the admin listener: read-only HTML pages an operator opens in a browser
//! (`/console`: repositories, pull-through rules, replication and webhooks; `/console/
//! repositories/<name>`: the images with their tags, sizes, times and replication status).
//! Server-rendered, no script, every value escaped. It changes nothing, so it needs no
//! credentials beyond reaching the admin listener (which binds loopback by default; keep it on
//! an operators' network). Knows nothing of storage layout: it reads through the registry.

use crate::oci::RepositoryName;
use crate::registry::Registry;
use crate::replication::store::ReplicationStore;
use std::fmt::Write as _;

/// Repositories (or images) on one page.
const PAGE: usize = 50;

/// Tags counted for the index at most (more show as `1000+`).
const COUNT_UP_TO: usize = 1000;

/// A page: its status and HTML.
pub struct Page {
    /// 200, 404 or 500.
    pub status: u16,
    /// The document.
    pub html: String,
}

/// `&`, `<`, `>`, `"` and `'` escaped, so any stored text is shown, never run.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} · Ferry</title>\
         <style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
         th,td{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
         code{{font-size:12px}}.muted{{color:#777}}</style></head>\
         <body><h1><a href=\"/console\">Ferry</a> · {title}</h1>\n{body}\n</body></html>\n",
        title = escape(title)
    )
}

fn when(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => {
            let t = std::time::UNIX_EPOCH
                .checked_add(std::time::Duration::from_millis(ms))
                .unwrap_or(std::time::UNIX_EPOCH);
            humantime::format_rfc3339_seconds(t).to_string()
        }
        None => "—".into(),
    }
}

fn size(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len().saturating_sub(1) {
        value /= 1024.0;
        unit = unit.saturating_add(1);
    }
    format!("{value:.1} {}", units.get(unit).unwrap_or(&"B"))
}

/// Serves a console path (under `/console`), with the query's `after` for paging.
pub async fn page(app: &super::App, path: &str, query: Option<&str>) -> Page {
    let (registry, replication, proxy) = (app.registry.as_ref(), app.replication.as_ref(), app.rules.proxy());
    let result = match path.strip_prefix("/console").unwrap_or("") {
        "" | "/" => index(registry, replication, proxy, &app.workers, query).await,
        rest => match rest.strip_prefix("/repositories/").and_then(|n| RepositoryName::parse(n).ok()) {
            Some(name) => repository(registry, replication, &name, query).await,
            None => Ok(Page { status: 404, html: document("Not found", "<p>No such page.</p>") }),
        },
    };
    result.unwrap_or_else(|e| Page {
        status: 500,
        html: document("Error", &format!("<p>The registry failed: {}</p>", escape(&e.to_string()))),
    })
}

async fn index(
    registry: &Registry,
    replication: &ReplicationStore,
    proxy: &crate::proxy::Proxy,
    workers: &crate::worker::Workers,
    query: Option<&str>,
) -> crate::registry::Result<Page> {
    let after = query
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "after").map(|(_, v)| v.into_owned()));
    // One page of the catalog, whatever the registry holds.
    let listed = registry.repositories_page(after.as_deref(), PAGE, &|_| true).await?;
    let mut body = String::new();
    let _ = write!(
        body,
        "<h2>Repositories</h2><table><tr><th>Repository</th><th>Tags</th><th>Tag mutability</th><th>Created</th></tr>"
    );
    for name in &listed.items {
        let settings = registry.repository_settings(name).await?.unwrap_or_default();
        let tags = match registry.tag_count_up_to(name, COUNT_UP_TO).await? {
            (n, false) => n.to_string(),
            (n, true) => format!("{n}+"),
        };
        let created = (settings.created_at > 0).then(|| settings.created_at.saturating_mul(1000));
        let _ = write!(
            body,
            "<tr><td><a href=\"/console/repositories/{n}\">{n}</a></td><td>{tags}</td><td>{m}</td><td>{c}</td></tr>",
            n = escape(name.as_str()),
            m = escape(settings.image_tag_mutability.as_str()),
            c = escape(&when(created)),
        );
    }
    body.push_str("</table>");
    if let Some(last) = listed.items.last().filter(|_| listed.more) {
        let next: String = form_urlencoded::byte_serialize(last.as_str().as_bytes()).collect();
        let _ = write!(body, "<p><a href=\"/console?after={}\">Next page</a></p>", escape(&next));
    }
    body.push_str("<h2>Pull-through cache rules</h2><table><tr><th>Prefix</th><th>Upstream</th><th>From</th></tr>");
    let configured: Vec<String> = proxy.configured().iter().map(|r| r.prefix.to_string()).collect();
    for rule in proxy.rules() {
        let from = if configured.contains(&rule.prefix.to_string()) { "config file" } else { "ECR API" };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{from}</td></tr>",
            escape(rule.prefix.as_str()),
            escape(rule.upstream.base())
        );
    }
    body.push_str("</table>");
    let replication = replication.replication_configuration().await?;
    body.push_str("<h2>Replication</h2>");
    if replication.rules.is_empty() {
        body.push_str("<p class=\"muted\">No replication rules.</p>");
    } else {
        body.push_str("<table><tr><th>Destinations</th><th>Repository filters</th></tr>");
        for rule in &replication.rules {
            let dests: Vec<String> =
                rule.destinations.iter().map(|d| format!("{} ({})", d.region, d.registry_id)).collect();
            let filters: Vec<&str> = rule.repository_filters.iter().map(|f| f.filter.as_str()).collect();
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td></tr>",
                escape(&dests.join(", ")),
                escape(&if filters.is_empty() { "all repositories".to_owned() } else { filters.join(", ") })
            );
        }
        body.push_str("</table>");
    }
    body.push_str(
        "<h2>Workers</h2><table><tr><th>Worker</th><th>Last round</th><th>Ended</th><th>Errors in a row</th>\
         <th>Last error</th><th>Status</th></tr>",
    );
    for (name, info) in workers.snapshot() {
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(name),
            escape(if info.last_result.is_empty() { "not run yet" } else { info.last_result }),
            escape(&when((info.last_run_ms > 0).then_some(info.last_run_ms))),
            info.consecutive_errors,
            escape(info.last_error.as_deref().unwrap_or("")),
            escape(&info.status),
        );
    }
    body.push_str("</table>");
    Ok(Page { status: 200, html: document("Registry", &body) })
}

async fn repository(
    registry: &Registry,
    replication: &ReplicationStore,
    name: &RepositoryName,
    query: Option<&str>,
) -> crate::registry::Result<Page> {
    let Some(settings) = registry.repository_settings(name).await? else {
        let body = format!("<p>There is no repository {}.</p>", escape(name.as_str()));
        return Ok(Page { status: 404, html: document("Not found", &body) });
    };
    // One page of the index in digest order (a digest's hex after `after`): a page costs its
    // images, whatever the repository holds.
    let after = query
        .and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "after").map(|(_, v)| v.into_owned()))
        .filter(|a| a.len() == 64 && a.bytes().all(|b| b.is_ascii_hexdigit()));
    let (images, more) = registry.images_page(name, after.as_deref(), PAGE).await?;
    let count = match (after.is_some(), more) {
        (false, false) => format!("{} images", images.len()),
        _ => "Images, a page at a time".to_owned(),
    };
    let mut body = format!(
        "<p>Tag mutability {}{}. {count}.</p><table><tr><th>Digest</th><th>Tags</th><th>Type</th><th>Size</th>\
         <th>Pushed</th><th>Last pulled</th><th>Replication</th></tr>",
        escape(settings.image_tag_mutability.as_str()),
        if settings.policy.is_some() { ", with a repository policy" } else { "" },
    );
    for image in &images {
        // The image with every tag it carries: COMPLETE only when all of them arrived.
        let statuses = replication.replication_status_of(registry, name, &image.digest, None).await?;
        let replication: Vec<String> = statuses
            .iter()
            .map(|s| match &s.failure_code {
                Some(code) => format!("{}: {} ({code})", s.region, s.status.as_str()),
                None => format!("{}: {}", s.region, s.status.as_str()),
            })
            .collect();
        let digest = image.digest.to_string();
        let is_index = crate::oci::MediaType::parse(&image.media_type).is_some_and(crate::oci::MediaType::is_index);
        let kind = match (&image.subject, is_index) {
            (Some(_), _) => "referrer",
            (None, true) => "index",
            (None, false) => "image",
        };
        let _ = write!(
            body,
            "<tr><td><code title=\"{d}\">{short}</code></td><td>{tags}</td><td>{kind}</td><td>{size}</td><td>{pushed}</td>\
             <td>{pulled}</td><td>{repl}</td></tr>",
            d = escape(&digest),
            short = escape(digest.get(..19).unwrap_or(&digest)),
            tags = escape(&image.tags.join(", ")),
            size = escape(&size(image.image_size)),
            pushed = escape(&when(image.pushed_at_ms)),
            pulled = escape(&when(image.last_pulled_ms)),
            repl = escape(&replication.join("; ")),
        );
    }
    body.push_str("</table>");
    if let Some(last) = images.last().filter(|_| more) {
        let _ = write!(
            body,
            "<p><a href=\"/console/repositories/{}?after={}\">Next page</a></p>",
            escape(name.as_str()),
            escape(last.digest.hex())
        );
    }
    Ok(Page { status: 200, html: document(name.as_str(), &body) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_is_shown_never_run() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert!(document("<b>", "").contains("<title>&lt;b&gt; · Ferry</title>"));
    }

    #[test]
    fn sizes_and_times_read_well() {
        assert_eq!(size(512), "512.0 B");
        assert_eq!(size(3 << 20), "3.0 MiB");
        assert_eq!(when(Some(0)), "1970-01-01T00:00:00Z");
        assert_eq!(when(None), "—");
    }
}
