//! SECURITY.md names, for every control, the tests that prove it. A renamed
//! or deleted test would leave a claim that nothing proves, so this reads
//! the table and checks that every test it names exists where it says.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The places a module path can live: the integration binary's modules,
/// the library's (unit tests), the verifier crate's and the token rules'.
fn candidate_files(segments: &[&str]) -> Vec<PathBuf> {
    let root = root();
    let (bases, segments): (Vec<PathBuf>, &[&str]) = match segments.first() {
        Some(&"authd_verifier") => (vec![root.join("crates/authd-verifier/src")], &segments[1..]),
        Some(&"authd_token_rules") => (vec![root.join("crates/authd-token-rules/src")], &segments[1..]),
        _ => (vec![root.join("tests/api"), root.join("src")], segments),
    };
    let mut found = Vec::new();
    for base in bases {
        // The longest prefix that names a file: the rest are inline modules
        // (`tests`, `properties`) inside it.
        for len in (1..=segments.len()).rev() {
            let path = segments[..len].join("/");
            let file = base.join(format!("{path}.rs"));
            let dir = base.join(&path);
            if file.is_file() {
                found.push(file);
                if dir.is_dir() {
                    found.push(dir);
                }
                break;
            }
            if dir.join("mod.rs").is_file() {
                found.push(dir);
                break;
            }
        }
        if !found.is_empty() {
            break;
        }
    }
    found
}

fn sources_under(path: &Path, out: &mut Vec<String>) {
    if path.is_file() {
        out.push(std::fs::read_to_string(path).unwrap());
    } else if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            sources_under(&entry.unwrap().path(), out);
        }
    }
}

/// Every backticked test reference of the "Proven by" column, with `…::`
/// shorthands expanded against the previous full reference.
fn proven_by_references(security_md: &str) -> Vec<String> {
    let mut refs = Vec::new();
    for line in security_md.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // `| control | what | answers | proven by |` → 6 pieces.
        if cells.len() < 6 || cells[1] == "Control" || cells[1].starts_with("---") {
            continue;
        }
        let proven_by = cells[cells.len() - 2];
        let mut module = String::new();
        for piece in proven_by.split('`').skip(1).step_by(2) {
            let Some(reference) = piece.split_whitespace().next() else {
                continue;
            };
            if !reference.contains("::") {
                continue;
            }
            let full = match reference.strip_prefix("…::") {
                Some(rest) => format!("{module}::{rest}"),
                None => reference.to_owned(),
            };
            if let Some((m, _)) = full.rsplit_once("::") {
                module = m.to_owned();
            }
            refs.push(full);
        }
    }
    refs
}

#[test]
fn every_test_security_md_names_exists() {
    let text = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let refs = proven_by_references(&text);
    assert!(refs.len() > 100, "the table was not read: {refs:?}");
    let mut missing = Vec::new();
    for reference in &refs {
        let segments: Vec<&str> = reference.split("::").collect();
        let (name, module) = segments.split_last().unwrap();
        let files = candidate_files(module);
        let mut sources = Vec::new();
        for file in &files {
            sources_under(file, &mut sources);
        }
        let exists = match *name {
            "*" => sources
                .iter()
                .any(|s| s.contains("#[test]") || s.contains("#[tokio::test]")),
            name => {
                let declared = format!("fn {name}(");
                sources.iter().any(|s| s.contains(&declared))
            }
        };
        if !exists {
            missing.push(format!("{reference} (looked in {files:?})"));
        }
    }
    assert!(
        missing.is_empty(),
        "SECURITY.md names tests that do not exist:\n{}",
        missing.join("\n")
    );
}
