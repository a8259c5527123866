//! `docs/reference.md` against the running server: every endpoint it lists
//! answers (is not the fallback's `404 no such endpoint`), and every path of
//! the bot API's generated OpenAPI document is listed. (Configuration keys and
//! CLI verbs are checked by the unit tests of `config` and `cli`.)

use serde_json::Value;

use crate::common::{TestConfig, TestDb, spawn_app};

const REFERENCE: &str = include_str!("../../docs/reference.md");

/// `(METHOD, /path)` of every table row that starts with an endpoint.
fn documented_endpoints() -> Vec<(String, String)> {
    REFERENCE
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|rest| {
            let spec = rest.split('`').next()?;
            let (method, path) = spec.split_once(' ')?;
            let method = method.trim();
            if !["GET", "POST", "DELETE", "PUT", "PATCH"].contains(&method) {
                return None;
            }
            // The path without its query; `{user_id}` gets a value.
            let path = path.split(['?', ' ']).next()?.replace("{user_id}", "idp:x");
            Some((method.to_string(), path))
        })
        .collect()
}

async fn every_documented_endpoint_answers(db: &TestDb) {
    let app = spawn_app(&TestConfig::new(db)).await;
    let endpoints = documented_endpoints();
    assert!(endpoints.len() >= 15, "{endpoints:?}");
    for (method, path) in endpoints {
        let r = app
            .client
            .request(method.parse().unwrap(), app.url(&path))
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap_or_default();
        assert!(
            !(status == 404 && body.contains("no such endpoint")),
            "{method} {path} is documented but not served"
        );
    }
    // The other way round for the bot API: its document is generated from the
    // handlers, so every path in it must be documented.
    let spec: Value = app.get("/v1/openapi.json").await.json().await.unwrap();
    for (path, methods) in spec["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let row = format!("`{} {path}", method.to_uppercase());
            assert!(
                REFERENCE.contains(&row),
                "{row}` is served but not in docs/reference.md"
            );
        }
    }
    app.stop().await;
}

backend_tests!(every_documented_endpoint_answers);

/// The README is a front door: short, and every link in it and in `docs/`
/// leads somewhere — a file of the repository, and a heading in it when the
/// link names one.
#[test]
fn the_readme_is_short_and_every_link_leads_somewhere() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(
        lines <= 300,
        "README.md has {lines} lines: depth goes to docs/"
    );
    let mut pages = vec![root.join("README.md")];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).unwrap();
        for target in links(&text) {
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with("mailto:")
            {
                continue;
            }
            let (file, anchor) = target.split_once('#').unwrap_or((&target, ""));
            let file_path = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !file_path.exists() {
                broken.push(format!("{}: {target} (no such file)", page.display()));
                continue;
            }
            if !anchor.is_empty() && file_path.extension().is_some_and(|e| e == "md") {
                let target_text = std::fs::read_to_string(&file_path).unwrap();
                if !headings(&target_text).iter().any(|h| h == anchor) {
                    broken.push(format!("{}: {target} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// The targets of `[text](target)` links.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            let target = &rest[..end];
            if !target.contains(' ') && !target.is_empty() {
                out.push(target.to_string());
            }
        }
    }
    out
}

/// GitHub's anchors of a page's headings.
fn headings(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}
