//! The layering README's design section draws, held by a test: every
//! `crate::…` path in the library's production code (test modules aside) is
//! an arrow from the layer of its file to the layer it names, and each
//! arrow must be one the table below allows. The arrows that break the
//! design today are listed, each with what it would take to remove; the
//! list may only shrink (an entry that no longer occurs fails too).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layer of a module of the crate, by its first path segment.
fn layer_of(module: &str) -> &'static str {
    match module {
        "domain" => "domain",
        "error" => "error",
        "crypto" => "crypto",
        "db" => "db",
        "mail" => "mail",
        "coherence" => "coherence",
        "jobs" => "jobs",
        "service" => "service",
        "grpc" => "grpc",
        "http" => "http",
        "metrics" => "metrics",
        "pb" => "pb",
        "deadline" => "deadline",
        "config" => "config",
        "telemetry" => "telemetry",
        "local_pg" => "local_pg",
        "cli" => "cli",
        "startup" => "startup",
        "lib" | "main" => "root",
        other => panic!("src/{other}: a module with no layer; give it one in tests/api/layering.rs"),
    }
}

/// Which layers each layer may name. Written once; README's design section
/// draws the same picture.
fn allowed() -> BTreeMap<&'static str, BTreeSet<&'static str>> {
    let table: [(&str, &[&str]); 19] = [
        // Plain values and parsing: nothing of authd.
        ("domain", &[]),
        ("error", &["domain"]),
        // Leaves: anyone may use them, they use nobody.
        ("metrics", &[]),
        ("pb", &[]),
        ("deadline", &[]),
        ("local_pg", &[]),
        ("config", &[]),
        ("telemetry", &["config"]),
        ("crypto", &["domain", "error", "deadline", "metrics"]),
        ("db", &["domain", "error", "crypto"]),
        ("mail", &["domain", "error", "db", "metrics"]),
        (
            "coherence",
            &["domain", "error", "crypto", "db", "metrics", "coherence"],
        ),
        (
            "service",
            &[
                "domain",
                "error",
                "crypto",
                "db",
                "mail",
                "coherence",
                "metrics",
                "deadline",
            ],
        ),
        (
            "jobs",
            &["domain", "error", "db", "mail", "coherence", "metrics", "service"],
        ),
        // The transport calls use cases; it never reaches storage or keys.
        (
            "grpc",
            &["service", "domain", "error", "pb", "metrics", "deadline"],
        ),
        // The HTTP face rides on the gRPC listener and shares its edge (the
        // credential check and its failure limit); like gRPC, it calls use
        // cases and never storage or keys.
        ("http", &["service", "domain", "error", "metrics", "grpc"]),
        (
            "cli",
            &[
                "config",
                "telemetry",
                "db",
                "crypto",
                "domain",
                "error",
                "startup",
                "local_pg",
                "cli",
            ],
        ),
        // Where everything is put together.
        (
            "startup",
            &[
                "domain",
                "error",
                "crypto",
                "db",
                "mail",
                "coherence",
                "jobs",
                "service",
                "grpc",
                "http",
                "metrics",
                "pb",
                "deadline",
                "config",
                "telemetry",
                "local_pg",
            ],
        ),
        ("root", &["startup", "cli", "config", "telemetry"]),
    ];
    table
        .into_iter()
        .map(|(from, to)| (from, to.iter().copied().collect()))
        .collect()
}

/// Arrows that break the table today: (from file, to module, what removing
/// it takes).
const DEBT: &[(&str, &str, &str)] = &[(
    "src/config.rs",
    "crypto",
    "argon2 settings as a config type that crypto takes",
)];

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

/// The production part of a source file: every `#[cfg(test)]` item left
/// out (unit tests may reach anything), and what follows one still read.
/// An item ends on its own line with `;`, or at the `}` of its indentation
/// (the code is rustfmt-formatted).
fn production(source: &str) -> String {
    let mut kept = Vec::new();
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "#[cfg(test)]" {
            kept.push(line);
            continue;
        }
        let indent = &line[..line.len() - line.trim_start().len()];
        let close = format!("{indent}}}");
        for item in lines.by_ref() {
            if item.trim_start().starts_with("#[") {
                continue;
            }
            if item.trim_end().ends_with(';') {
                break;
            }
            for inner in lines.by_ref() {
                if inner.trim_end() == close {
                    break;
                }
            }
            break;
        }
    }
    kept.join("\n")
}

/// The first segment of every `crate::` path in `source`.
fn named_modules(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or_default();
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                !name.is_empty(),
                "`crate::{{…}}` groups hide their arrows from this test; name each module: {line}"
            );
            found.insert(name);
            rest = after;
        }
    }
    found
}

/// Every production source file of the library: its path from the crate
/// root, its first-level module, and the modules its `crate::` paths name.
fn sources() -> Vec<(String, String, BTreeSet<String>)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            let first = relative
                .trim_start_matches("src/")
                .split(['/', '.'])
                .next()
                .unwrap()
                .to_owned();
            let source = std::fs::read_to_string(&file).unwrap();
            let named = named_modules(&production(&source));
            (relative, first, named)
        })
        .collect()
}

/// Every arrow of the crate: (file, module named, from layer, to layer).
fn arrows() -> Vec<(String, String, &'static str, &'static str)> {
    let mut arrows = Vec::new();
    for (file, first, named) in sources() {
        let from = layer_of(&first);
        for module in named {
            let to = layer_of(&module);
            if to != from {
                arrows.push((file.clone(), module, from, to));
            }
        }
    }
    arrows
}

fn forbidden(arrows: &[(String, String, &'static str, &'static str)]) -> Vec<(String, String)> {
    let allowed = allowed();
    arrows
        .iter()
        .filter(|(_, _, from, to)| !allowed[from].contains(to))
        .map(|(file, module, ..)| (file.clone(), module.clone()))
        .collect()
}

#[test]
fn every_import_follows_the_layers() {
    let arrows = arrows();
    assert!(arrows.len() > 100, "no imports were read");
    let found = forbidden(&arrows);
    let new: Vec<String> = found
        .iter()
        .filter(|(file, module)| !DEBT.iter().any(|(f, m, _)| f == file && m == module))
        .map(|(file, module)| format!("{file} uses crate::{module}"))
        .collect();
    assert!(
        new.is_empty(),
        "imports the layers forbid (README, design section):\n{}",
        new.join("\n")
    );
    let paid: Vec<String> = DEBT
        .iter()
        .filter(|(f, m, _)| !found.iter().any(|(file, module)| file == f && module == m))
        .map(|(f, m, _)| format!("{f} → {m}"))
        .collect();
    assert!(
        paid.is_empty(),
        "listed as debt but gone; remove from DEBT:\n{}",
        paid.join("\n")
    );
}

/// The allowed arrows alone make no cycle between layers, so code that
/// follows them has none either (the debt aside).
#[test]
fn the_allowed_layers_form_no_cycle() {
    let allowed = allowed();
    fn visit(
        layer: &'static str,
        allowed: &BTreeMap<&'static str, BTreeSet<&'static str>>,
        path: &mut Vec<&'static str>,
        done: &mut BTreeSet<&'static str>,
    ) {
        if done.contains(layer) {
            return;
        }
        assert!(!path.contains(&layer), "cycle: {path:?} → {layer}");
        path.push(layer);
        for next in &allowed[layer] {
            if *next != layer {
                visit(next, allowed, path, done);
            }
        }
        path.pop();
        done.insert(layer);
    }
    let mut done = BTreeSet::new();
    for layer in allowed.keys() {
        visit(layer, &allowed, &mut Vec::new(), &mut done);
    }
}

#[test]
fn a_wrong_import_is_caught() {
    // What the test would see if a use case reached for the transport.
    let source = "use crate::grpc::status::ERROR_DOMAIN;\nfn f() {}\n";
    let modules = named_modules(source);
    assert_eq!(modules, BTreeSet::from(["grpc".to_owned()]));
    let arrows = vec![(
        "src/service/login.rs".to_owned(),
        "grpc".to_owned(),
        "service",
        "grpc",
    )];
    assert_eq!(
        forbidden(&arrows),
        vec![("src/service/login.rs".to_owned(), "grpc".to_owned())]
    );
    // A comment naming a module is no arrow.
    assert!(named_modules("// see crate::grpc for the mapping\n").is_empty());
    // Unit tests are left out, and the code after them is still read.
    let source = "use crate::db;\n\n#[cfg(test)]\nmod tests {\n    use crate::grpc;\n\n    fn f() {\n    }\n}\n\n#[cfg(test)]\nuse crate::mail;\nfn g() -> crate::service::Core {}\n";
    assert_eq!(
        named_modules(&production(source)),
        BTreeSet::from(["db".to_owned(), "service".to_owned()])
    );
}

/// No two modules of the crate import each other, however indirectly (the
/// debt included): `cargo test --test api layering` is the check README
/// names.
#[test]
fn no_module_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (_, first, named) in sources() {
        let others: BTreeSet<String> = named.into_iter().filter(|m| *m != first).collect();
        graph.entry(first).or_default().extend(others);
    }
    fn visit(
        module: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(module) {
            return;
        }
        assert!(
            !path.iter().any(|m| m == module),
            "module cycle: {} → {module}",
            path.join(" → ")
        );
        path.push(module.to_owned());
        for next in graph.get(module).into_iter().flatten() {
            visit(next, graph, path, done);
        }
        path.pop();
        done.insert(module.to_owned());
    }
    let mut done = BTreeSet::new();
    for module in graph.keys() {
        visit(module, &graph, &mut Vec::new(), &mut done);
    }
}
