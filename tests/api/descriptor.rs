//! The descriptor set gateways and reflection clients load keeps every
//! extension option: each method's `google.api.http` rule (without which
//! Envoy maps no route at all) and the fields' `google.api.field_behavior`.

use authd::pb::FILE_DESCRIPTOR_SET;
use prost::Message as _;
use prost_reflect::{DescriptorPool, Value};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::*;

/// `package.Service/Method` of every method of authd's own services that
/// lacks an HTTP rule; empty when all have one.
fn methods_without_http_rule(pool: &DescriptorPool) -> Vec<String> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .expect("google.api.http is in the set");
    let services: Vec<_> = pool
        .services()
        .filter(|s| s.package_name().starts_with("auth."))
        .collect();
    assert!(!services.is_empty(), "no authd service in the set");
    let mut missing = Vec::new();
    for service in services {
        for method in service.methods() {
            let options = method.options();
            let has_route = options.has_extension(&http)
                && matches!(&*options.get_extension(&http), Value::Message(rule)
                    if ["get", "put", "post", "delete", "patch", "custom"]
                        .iter()
                        .any(|p| rule.has_field_by_name(p)));
            if !has_route {
                missing.push(format!("{}/{}", service.full_name(), method.name()));
            }
        }
    }
    missing
}

fn field_behaviors(pool: &DescriptorPool, message: &str, field: &str) -> Vec<i32> {
    let behavior = pool
        .get_extension_by_name("google.api.field_behavior")
        .expect("google.api.field_behavior is in the set");
    let field = pool
        .get_message_by_name(message)
        .and_then(|m| m.get_field_by_name(field))
        .unwrap_or_else(|| panic!("{message}.{field}"));
    match &*field.options().get_extension(&behavior) {
        Value::List(values) => values.iter().filter_map(Value::as_enum_number).collect(),
        _ => Vec::new(),
    }
}

const REQUIRED: i32 = 2;
const OUTPUT_ONLY: i32 = 3;

#[test]
fn the_embedded_set_keeps_every_http_rule_and_field_behavior() {
    let pool = DescriptorPool::decode(FILE_DESCRIPTOR_SET).unwrap();
    assert_eq!(methods_without_http_rule(&pool), Vec::<String>::new());
    assert_eq!(
        field_behaviors(&pool, "auth.v1.RegisterRequest", "email"),
        [REQUIRED]
    );
    assert_eq!(field_behaviors(&pool, "auth.v1.User", "id"), [OUTPUT_ONLY]);
    for message in [
        "auth.v1.FinishPasskeyRegistrationRequest",
        "auth.v1.FinishPasskeyLoginRequest",
    ] {
        for field in ["ceremony_id", "credential"] {
            assert_eq!(
                field_behaviors(&pool, message, field),
                [REQUIRED],
                "{message}.{field}"
            );
        }
    }
    // The passkey options and credentials are the browser's JSON in a
    // Struct: a gateway needs its description to print and read them.
    assert!(pool.get_message_by_name("google.protobuf.Struct").is_some());
    assert!(pool.get_message_by_name("google.protobuf.Value").is_some());
    // The error details are described too, for gateways to print as JSON.
    assert!(pool.get_message_by_name("google.rpc.Status").is_some());
    assert!(pool.get_message_by_name("google.rpc.BadRequest").is_some());
}

#[test]
fn the_descriptor_set_command_writes_the_full_set() {
    let dir = scratch_dir("descriptor");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("authd.pb");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_authd"))
        .arg("descriptor-set")
        .arg(&path)
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    let written = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(written, FILE_DESCRIPTOR_SET);
    let pool = DescriptorPool::decode(written.as_slice()).unwrap();
    assert_eq!(methods_without_http_rule(&pool), Vec::<String>::new());
}

#[tokio::test]
async fn reflection_serves_the_annotations() {
    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    // The file of the service, then every import by name, as grpcurl does.
    let mut files: Vec<prost_types::FileDescriptorProto> = Vec::new();
    let mut raw_files: Vec<Vec<u8>> = Vec::new();
    let mut wanted = vec![MessageRequest::FileContainingSymbol("auth.v1.AuthService".into())];
    while let Some(request) = wanted.pop() {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::once(request))
            .await
            .unwrap()
            .into_inner();
        let answer = answers.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(response)) = answer.message_response else {
            panic!("no file descriptors in {answer:?}");
        };
        for raw in response.file_descriptor_proto {
            let file = prost_types::FileDescriptorProto::decode(raw.as_slice()).unwrap();
            if files.iter().any(|f| f.name == file.name) {
                continue;
            }
            for dependency in &file.dependency {
                if !files.iter().any(|f| f.name() == dependency) {
                    wanted.push(MessageRequest::FileByFilename(dependency.clone()));
                }
            }
            files.push(file);
            raw_files.push(raw);
        }
    }
    // Reassembled into a set from the bytes as served.
    let mut bytes = Vec::new();
    for file in &raw_files {
        prost::encoding::bytes::encode(1, file, &mut bytes);
    }
    let pool = DescriptorPool::decode(bytes.as_slice()).unwrap();
    assert_eq!(methods_without_http_rule(&pool), Vec::<String>::new());
}
