//! The house rules that keep the code easy to live in, checked on the source:
//! `vault::Vault` is the one owner of a `vault_entries` row, so nothing above
//! `src/vault/` calls the SQL of `src/store/vault.rs` or names its row types.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The `pub` functions and types `src/store/vault.rs` defines.
fn store_vault_names() -> (Vec<String>, Vec<String>) {
    let text = std::fs::read_to_string("src/store/vault.rs").unwrap();
    let mut functions = Vec::new();
    let mut types = Vec::new();
    for line in text.lines().map(str::trim) {
        let name = |rest: &str| {
            rest.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect::<String>()
        };
        if let Some(rest) = line.strip_prefix("pub async fn ") {
            functions.push(name(rest));
        } else if let Some(rest) = line.strip_prefix("pub fn ") {
            functions.push(name(rest));
        } else if let Some(rest) = line
            .strip_prefix("pub struct ")
            .or_else(|| line.strip_prefix("pub enum "))
        {
            types.push(name(rest));
        }
    }
    (functions, types)
}

#[test]
fn only_the_vault_touches_vault_rows() {
    let (functions, types) = store_vault_names();
    assert!(
        functions.iter().any(|f| f == "take_refresh_lease")
            && types.iter().any(|t| t == "VaultRow"),
        "the check reads src/store/vault.rs: {functions:?} {types:?}"
    );
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut offences = Vec::new();
    for file in &files {
        let path = file.to_string_lossy().replace('\\', "/");
        if path.starts_with("src/store/") || path.starts_with("src/vault/") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let code: String = text
            .lines()
            .map(|line| line.split("//").next().unwrap_or(""))
            .collect();
        // rustfmt breaks call chains over lines: compare without whitespace.
        let compact: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        for f in &functions {
            for call in [
                format!("store.{f}("),
                format!("store().{f}("),
                format!("Store::{f}("),
            ] {
                if compact.contains(&call) {
                    offences.push(format!("{path}: calls {call}"));
                }
            }
        }
        for t in &types {
            // `LeaseTake` and `SignInRecords` are re-exported by the vault
            // (`crate::vault::LeaseTake`): part of its own API.
            let named = compact.match_indices(t.as_str()).any(|(i, _)| {
                let before = &compact[..i];
                let after = compact[i + t.len()..].chars().next();
                let whole = !before.ends_with(|c: char| c.is_alphanumeric() || c == '_')
                    && !after.is_some_and(|c| c.is_alphanumeric() || c == '_');
                let via_vault = ["LeaseTake", "SignInRecords"].contains(&t.as_str())
                    && !before.ends_with("store::")
                    && !before.ends_with("store::{");
                whole && !via_vault && (before.contains("store::") || before.contains("store::{"))
            });
            if named {
                offences.push(format!("{path}: names store::{t}"));
            }
        }
    }
    assert!(
        offences.is_empty(),
        "only src/vault/ may use src/store/vault.rs (see docs/architecture.md); go through \
         vault::Vault instead:\n{}",
        offences.join("\n")
    );
}
