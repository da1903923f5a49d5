//! A tonic service that accepts only authd's access tokens, and refuses a
//! token as soon as authd ends its session (authd-verifier).
//!
//! With authd running (`cargo run`) and a key for the revocation stream:
//!
//! ```sh
//! KEY=$(cargo run -q -- service-account create verified-example --scope revocations.watch)
//! AUTHD_SERVICE_KEY=$KEY cargo run --example verified_service
//! # log in at authd, then:
//! grpcurl -plaintext -H "authorization: Bearer $ACCESS_TOKEN" -v \
//!   127.0.0.1:50061 grpc.health.v1.Health/Check    # x-user-id: …
//! ```
//!
//! Settings (environment): `AUTHD_URL` (http://127.0.0.1:50051),
//! `AUTHD_ISSUER` and `AUTHD_AUDIENCE` (authd's defaults: `authd`),
//! `AUTHD_SERVICE_KEY` (required), `LISTEN` (127.0.0.1:50061).
//!
//! The service's one RPC is `grpc.health.v1.Health/Check`, from
//! tonic-health's generated trait: it stands in for your own generated
//! service, so the example needs no .proto of its own. The integration
//! tests (tests/api/verifier.rs) run this file's `serve`.

use std::pin::Pin;

use authd_verifier::{Claims, Verifier, VerifierConfig, VerifierLayer};
use tokio::net::TcpListener;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Answers who the caller is, in the response metadata: `x-user-id`,
/// `x-session-id` and `x-roles` (comma-separated).
pub struct WhoAmI;

#[tonic::async_trait]
impl Health for WhoAmI {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // The layer put them there; without the layer this is a bug, not
        // an anonymous caller.
        let claims = request
            .extensions()
            .get::<Claims>()
            .ok_or_else(|| Status::internal("no verified claims: is the VerifierLayer installed?"))?;
        let mut response = Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        });
        let metadata = response.metadata_mut();
        metadata.insert("x-user-id", ascii(claims.user_id())?);
        metadata.insert("x-session-id", ascii(claims.session_id())?);
        metadata.insert("x-roles", ascii(&claims.roles().join(","))?);
        Ok(response)
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(
        &self,
        _request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("only Check"))
    }
}

fn ascii(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
    MetadataValue::try_from(value).map_err(|_| Status::internal("a claim is not printable ASCII"))
}

/// Serves [`WhoAmI`] behind the verifier on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    verifier: Verifier,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(VerifierLayer::new(verifier))
        .add_service(HealthServer::new(WhoAmI))
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let service_key = std::env::var("AUTHD_SERVICE_KEY")
        .map_err(|_| "AUTHD_SERVICE_KEY must hold a key with scope revocations.watch")?;
    let config = VerifierConfig::new(
        setting("AUTHD_ISSUER", "authd"),
        setting("AUTHD_AUDIENCE", "authd"),
        service_key,
    );
    let verifier = Verifier::connect(setting("AUTHD_URL", "http://127.0.0.1:50051"), config).await?;
    // Not required (a stale verifier fails closed), but a service that
    // starts refusing everyone should say why in its log at once.
    if !verifier.wait_until_fresh(std::time::Duration::from_secs(5)).await {
        eprintln!("the revocation stream has not started yet; refusing tokens until it does");
    }
    let listen = setting("LISTEN", "127.0.0.1:50061");
    let listener = TcpListener::bind(&listen).await?;
    println!("verified service on {listen}");
    serve(listener, verifier, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
