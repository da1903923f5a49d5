//! Code generated from `proto/auth.proto`, and its descriptor set.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }
}

/// The gRPC path of every RPC (`/auth.v1.AuthService/Register`), generated
/// from the proto: one module per service, with `ALL` listing its methods.
pub mod paths {
    include!(concat!(env!("OUT_DIR"), "/method_paths.rs"));

    /// A method's own name, the last segment of its path
    /// (`/auth.v1.AdminService/GetUser` → `GetUser`): the label audit lines
    /// and admin-call metrics show, taken from the generated path so that
    /// it cannot name a method the contract lacks.
    pub fn method_name(path: &'static str) -> &'static str {
        path.rsplit('/').next().unwrap_or(path)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_method_name_is_the_last_segment_of_its_path() {
            assert_eq!(method_name(admin_service::GET_USER), "GetUser");
            assert_eq!(method_name(auth_service::INTROSPECT_TOKEN), "IntrospectToken");
            for path in auth_service::ALL.iter().chain(admin_service::ALL) {
                let name = method_name(path);
                assert!(
                    !name.is_empty() && !name.contains('/') && path.ends_with(name),
                    "{path}"
                );
            }
        }
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Serialized `FileDescriptorSet` of auth.proto with all its imports, for
/// reflection and for REST gateways (`authd descriptor-set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/auth_descriptor.bin"));

/// OpenAPI 3.0.3 document of the REST routes that Envoy's gRPC-JSON
/// transcoder serves from the `google.api.http` rules, generated from the
/// proto by build.rs (`authd openapi <file>`; committed as docs/openapi.json).
pub const OPENAPI_JSON: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

#[cfg(test)]
mod tests {
    use super::OPENAPI_JSON;

    /// docs/openapi.json is what readers and client generators see; it must
    /// be the document this build derives from the proto, not an older one.
    #[test]
    fn committed_openapi_document_matches_the_proto() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
        let regenerate = "regenerate it with `cargo run -- openapi docs/openapi.json` and commit it";
        let committed =
            std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}; {regenerate}"));
        // A checkout with CRLF line endings is not drift.
        let committed = committed.replace("\r\n", "\n");
        if committed != OPENAPI_JSON {
            let line = committed
                .lines()
                .zip(OPENAPI_JSON.lines())
                .position(|(a, b)| a != b)
                // No differing pair: one text is a prefix of the other.
                .unwrap_or_else(|| committed.lines().count().min(OPENAPI_JSON.lines().count()))
                + 1;
            panic!(
                "docs/openapi.json differs from the document generated from proto/ (first at line {line}); {regenerate}"
            );
        }
    }
}
