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
