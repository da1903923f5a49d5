//! The committed OpenAPI document (docs/openapi.json): valid OpenAPI 3 by an
//! independent validator, and a route for every `google.api.http` rule the
//! proto declares. That it is the document the build generates is a unit test
//! in src/pb.rs.

use std::collections::BTreeSet;
use std::process::Command;

use crate::helpers::skip_test;

const DOCUMENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
const PROTO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/proto/auth.proto");

const VERBS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[test]
fn document_passes_openapi_spec_validator() {
    let skipped = "openapi-spec-validator is not installed; pip install openapi-spec-validator";
    let output = match Command::new("openapi-spec-validator").arg(DOCUMENT).output() {
        Ok(output) => output,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            skip_test(skipped);
            return;
        }
        Err(e) => panic!("running openapi-spec-validator: {e}"),
    };
    // pyenv's shim exists for every Python version and answers 127 where
    // the package is missing.
    if output.status.code() == Some(127) {
        skip_test(skipped);
        return;
    }
    assert!(
        output.status.success(),
        "openapi-spec-validator rejected docs/openapi.json ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
}

#[test]
fn document_has_exactly_the_routes_of_the_proto() {
    let proto = std::fs::read_to_string(PROTO).unwrap();
    let declared = declared_routes(&proto);
    assert!(
        !declared.is_empty(),
        "found no google.api.http route in proto/auth.proto"
    );

    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DOCUMENT).unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.0.3");
    let paths = document["paths"].as_object().expect("the document has paths");
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .into_iter()
                .flat_map(|operations| operations.keys())
                .filter(|verb| VERBS.contains(&verb.as_str()))
                .map(move |verb| (verb.clone(), path.clone()))
        })
        .collect();

    let missing: Vec<_> = declared.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes in proto/auth.proto missing from docs/openapi.json: {missing:?}; \
         regenerate it with `cargo run -- openapi docs/openapi.json`"
    );
    let extra: Vec<_> = documented.difference(&declared).collect();
    assert!(
        extra.is_empty(),
        "routes in docs/openapi.json that proto/auth.proto does not declare: {extra:?}; \
         regenerate it with `cargo run -- openapi docs/openapi.json`"
    );
}

#[test]
fn route_scan_reads_rules_and_skips_comments() {
    let proto = r#"
      // post: "/v1/commented-out"
      option (google.api.http) = {get: "/v1/users/{user_id=users/*}"};
      post: "/v1/auth/login"  // a trailing comment
      string target: "/not/a/rule";
    "#;
    let routes = declared_routes(proto);
    let expected: BTreeSet<_> = [("get", "/v1/users/{user_id}"), ("post", "/v1/auth/login")]
        .into_iter()
        .map(|(verb, path)| (verb.to_owned(), path.to_owned()))
        .collect();
    assert_eq!(routes, expected);
}

/// `(verb, path)` of every `get:`/`put:`/`post:`/`delete:`/`patch:` string in
/// the proto, found by a text scan that owes nothing to the generator, with
/// path variables in OpenAPI form (`{name=shelves/*}` becomes `{name}`).
fn declared_routes(proto: &str) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for line in proto.lines() {
        // Paths never contain "//", so this cuts exactly the comment off.
        let code = line.split("//").next().unwrap_or_default();
        for verb in VERBS {
            let key = format!("{verb}:");
            let mut rest = code;
            while let Some(at) = rest.find(&key) {
                let part_of_a_word = rest[..at]
                    .chars()
                    .next_back()
                    .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
                let after = rest[at + key.len()..].trim_start();
                if !part_of_a_word
                    && let Some(quoted) = after.strip_prefix('"')
                    && let Some(end) = quoted.find('"')
                {
                    routes.insert((verb.to_owned(), openapi_path(&quoted[..end])));
                }
                rest = &rest[at + key.len()..];
            }
        }
    }
    routes
}

fn openapi_path(template: &str) -> String {
    let mut path = String::new();
    let (mut in_variable, mut in_pattern) = (false, false);
    for c in template.chars() {
        match c {
            '{' => in_variable = true,
            '=' if in_variable => in_pattern = true,
            '}' => (in_variable, in_pattern) = (false, false),
            _ => {}
        }
        if !in_pattern {
            path.push(c);
        }
    }
    path
}

/// The proto's "Auth:" lines (which the document's `security` comes from)
/// and the bearer layer agree on every method, so REST users are told the
/// truth about which routes need a token.
#[test]
fn documented_auth_matches_what_the_server_enforces() {
    let doc: serde_json::Value = serde_json::from_str(authd::pb::OPENAPI_JSON).unwrap();
    let mut checked = 0;
    for (_, item) in doc["paths"].as_object().unwrap() {
        for (_, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap();
            let (service, method) = id.split_once('_').unwrap();
            let path = format!("/auth.v1.{service}/{method}");
            let documented_public = operation["security"].as_array().is_some_and(Vec::is_empty);
            assert_eq!(
                documented_public,
                !authd::grpc::auth_layer::requires_bearer(&path),
                "{path}: the proto's Auth line and the server disagree"
            );
            checked += 1;
        }
    }
    assert!(checked >= 10, "{checked}");
}
