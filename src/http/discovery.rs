//! The authorization server's metadata (RFC 8414), served at its own path
//! and at OpenID Connect Discovery's, so both kinds of client find it.

use serde_json::json;

use super::{INTROSPECTION_PATH, JWKS_PATH, TOKEN_PATH};
use crate::domain::Scope;
use crate::domain::token_request::{GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE};

/// The document for `issuer`, whose tokens `alg` signs. authd issues no ID
/// tokens and has no authorization endpoint; the members OpenID Discovery
/// requires anyway say so truthfully (no response types) or describe the
/// access tokens (`public` subjects, the signing algorithm).
pub fn metadata(issuer: &str, alg: &str) -> String {
    let auth_methods = ["client_secret_basic", "client_secret_post"];
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "token_endpoint": format!("{issuer}{TOKEN_PATH}"),
        "introspection_endpoint": format!("{issuer}{INTROSPECTION_PATH}"),
        "grant_types_supported": [GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE],
        "token_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "scopes_supported": Scope::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": [alg],
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_endpoint_is_under_the_issuer() {
        let doc: serde_json::Value =
            serde_json::from_str(&metadata("https://auth.example.com", "EdDSA")).unwrap();
        assert_eq!(doc["issuer"], "https://auth.example.com");
        assert_eq!(doc["token_endpoint"], "https://auth.example.com/oauth2/token");
        assert_eq!(doc["jwks_uri"], "https://auth.example.com/.well-known/jwks.json");
        assert_eq!(
            doc["grant_types_supported"][1],
            "urn:ietf:params:oauth:grant-type:token-exchange"
        );
    }
}
