use std::time::Duration;

use authd::local_pg::{Durability, LocalPostgres};
use authd::pb::auth::v1 as pb;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::*;

async fn status(app: &TestApp, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    response.status()
}

async fn wait_for(app: &TestApp, want: ServingStatus) {
    for _ in 0..100 {
        if status(app, "").await == want && status(app, "auth.v1.AuthService").await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("health never became {want:?}");
}

#[tokio::test]
async fn health_follows_the_database_across_a_restart() {
    // Its own cluster: stopping the shared one would break other tests.
    let root = scratch_dir("restart");
    let pg = tokio::task::spawn_blocking(move || LocalPostgres::start(&root, Durability::Throwaway))
        .await
        .unwrap()
        .unwrap();
    pg.ensure_database("authd").await.unwrap();
    let app = spawn_app_on(&pg.url("authd"), |_| {}).await;
    wait_for(&app, ServingStatus::Serving).await;
    let (_, tokens) = app.signed_in_user().await;

    pg.stop_for_restart().unwrap();
    wait_for(&app, ServingStatus::NotServing).await;
    let during = app.get_me(&tokens.access_token).await;
    let status = during.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(!status.message().contains("sql"), "no internals in {status:?}");

    pg.start_again(Durability::Throwaway).unwrap();
    wait_for(&app, ServingStatus::Serving).await;
    app.get_me(&tokens.access_token).await.unwrap();
}

#[tokio::test]
async fn graceful_shutdown_finishes_and_stops_listening() {
    let app = spawn_app().await;
    let addr = app.addr;
    app.register("bye@example.com", PASSWORD).await;
    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("shutdown within the drain time")
        .expect("clean exit");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[tokio::test]
async fn reflection_lists_the_services_in_both_versions() {
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;

    let app = spawn_app().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut v1 =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    let mut stream = v1
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let Some(V1Response::ListServicesResponse(list)) =
        stream.message().await.unwrap().unwrap().message_response
    else {
        panic!("no service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["auth.v1.AuthService", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} in {names:?}");
    }

    let mut alpha =
        tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(AlphaRequest::FileContainingSymbol("google.rpc.ErrorInfo".into())),
    };
    let mut stream = alpha
        .server_reflection_info(tokio_stream_once(request))
        .await
        .unwrap()
        .into_inner();
    let response = stream.message().await.unwrap().unwrap().message_response;
    assert!(
        matches!(response, Some(AlphaResponse::FileDescriptorResponse(_))),
        "error details are resolvable: {response:?}"
    );
}

fn tokio_stream_once<T: Send + 'static>(
    item: T,
) -> impl tonic::codegen::tokio_stream::Stream<Item = T> + Send {
    tonic::codegen::tokio_stream::iter(vec![item])
}

#[tokio::test]
async fn oversized_requests_are_refused_without_harming_the_connection() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let huge = pb::RegisterRequest {
        email: "big@example.com".into(),
        password: "p".repeat(1024 * 1024),
        ..Default::default()
    };
    let status = client.register(huge).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    // The same connection still serves.
    app.register("small@example.com", PASSWORD).await;
}

#[tokio::test]
async fn with_a_certificate_configured_authd_speaks_tls_only() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig};
    let dir = scratch_dir("tls");
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();
    let app = spawn_app_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await;

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(key.cert.pem()))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{}", app.addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = authd::pb::auth::v1::auth_service_client::AuthServiceClient::new(channel);
    client
        .get_jwks(pb::GetJwksRequest {})
        .await
        .expect("a call over TLS");
    // A plaintext client gets nowhere.
    assert!(app.client.clone().get_jwks(pb::GetJwksRequest {}).await.is_err());
    std::fs::remove_dir_all(dir).unwrap();
}
