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
//! `AUTHD_ISSUER` (authd's default: http://127.0.0.1:50051),
//! `AUTHD_AUDIENCE` (the audience tokens must be for; authd's own by
//! default, `authd`),
//! `AUTHD_SERVICE_KEY` (required), `LISTEN` (127.0.0.1:50061),
//! `REQUIRE_AAL2_WITHIN` (seconds; if set, Check requires a second factor
//! proven that recently, and answers FAILED_PRECONDITION
//! `REAUTHENTICATION_REQUIRED` otherwise: StepUp at authd, then retry),
//! `SERVICE_SCOPE` (if set, Check also admits services' own tokens, from
//! ExchangeToken's client_credentials grant, that hold this scope).
//!
//! The service's one RPC is `grpc.health.v1.Health/Check`, from
//! tonic-health's generated trait: it stands in for your own generated
//! service, so the example needs no .proto of its own. The integration
//! tests (tests/api/verifier.rs) run this file's `serve`.

use std::pin::Pin;

use std::time::{Duration, UNIX_EPOCH};

use authd_verifier::{Acr, Caller, Claims, Policy, ServiceClaims, Verifier, VerifierConfig, VerifierLayer};
use tokio::net::TcpListener;
use tonic::codegen::tokio_stream::Stream;
use tonic::metadata::MetadataValue;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Answers who the caller is, in the response metadata. For a user's
/// token: `x-user-id`, `x-session-id`, `x-roles` and `x-amr`
/// (comma-separated), `x-acr`, `x-auth-time` (seconds since the epoch),
/// and if services act for the user, `x-actors` (comma-separated, the
/// current one first) and `x-client-id`. For a service's own token:
/// `x-service` and `x-scopes` (comma-separated). Always `x-audience`.
pub struct WhoAmI;

#[tonic::async_trait]
impl Health for WhoAmI {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        // The layer put it there; without the layer this is a bug, not
        // an anonymous caller.
        let caller = request
            .extensions()
            .get::<Caller>()
            .ok_or_else(|| Status::internal("no verified caller: is the VerifierLayer installed?"))?;
        let mut response = Response::new(HealthCheckResponse {
            status: ServingStatus::Serving.into(),
        });
        let metadata = response.metadata_mut();
        metadata.insert("x-audience", ascii(caller.audience())?);
        match caller {
            Caller::User(claims) => describe_user(claims, metadata)?,
            Caller::Service(service) => describe_service(service, metadata)?,
        }
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

fn describe_user(claims: &Claims, metadata: &mut tonic::metadata::MetadataMap) -> Result<(), Status> {
    metadata.insert("x-user-id", ascii(claims.user_id())?);
    metadata.insert("x-session-id", ascii(claims.session_id())?);
    metadata.insert("x-roles", ascii(&claims.roles().join(","))?);
    metadata.insert("x-amr", ascii(&claims.amr().join(","))?);
    metadata.insert("x-acr", ascii(claims.acr())?);
    let auth_time = claims
        .auth_time()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    metadata.insert("x-auth-time", ascii(&auth_time.to_string())?);
    // Who acts for the user, if anyone: a service that exchanged the
    // user's token to call this one on their behalf.
    if claims.actor().is_some() {
        metadata.insert("x-actors", ascii(&claims.actors().join(","))?);
    }
    if let Some(client_id) = claims.client_id() {
        metadata.insert("x-client-id", ascii(client_id)?);
    }
    Ok(())
}

fn describe_service(
    service: &ServiceClaims,
    metadata: &mut tonic::metadata::MetadataMap,
) -> Result<(), Status> {
    metadata.insert("x-service", ascii(service.client_id())?);
    metadata.insert("x-scopes", ascii(&service.scopes().join(","))?);
    Ok(())
}

fn ascii(value: &str) -> Result<MetadataValue<tonic::metadata::Ascii>, Status> {
    MetadataValue::try_from(value).map_err(|_| Status::internal("a claim is not printable ASCII"))
}

/// The RPC of this example, as the layer's routes name it.
pub const CHECK: &str = "/grpc.health.v1.Health/Check";

/// Serves [`WhoAmI`] behind the verifier on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    verifier: Verifier,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    serve_with(listener, VerifierLayer::new(verifier), shutdown).await
}

/// [`serve`] behind a layer configured by the caller (routes, policies).
pub async fn serve_with(
    listener: TcpListener,
    layer: VerifierLayer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .layer(layer)
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
        setting("AUTHD_ISSUER", "http://127.0.0.1:50051"),
        setting("AUTHD_AUDIENCE", "authd"),
        service_key,
    );
    let verifier = Verifier::connect(setting("AUTHD_URL", "http://127.0.0.1:50051"), config).await?;
    // Not required (a stale verifier fails closed), but a service that
    // starts refusing everyone should say why in its log at once.
    if !verifier.wait_until_fresh(std::time::Duration::from_secs(5)).await {
        eprintln!("the revocation stream has not started yet; refusing tokens until it does");
    }
    let mut check = Policy::new();
    if let Ok(secs) = std::env::var("REQUIRE_AAL2_WITHIN") {
        let max_age = Duration::from_secs(secs.parse().map_err(|_| "REQUIRE_AAL2_WITHIN: seconds")?);
        // A second factor, proven within max_age: a password alone, an
        // older proof, or one from before the account's factors changed is
        // refused with REAUTHENTICATION_REQUIRED.
        check = check.require_acr(Acr::Aal2).max_age(max_age);
    }
    if let Ok(scope) = std::env::var("SERVICE_SCOPE") {
        // Services calling in their own name too, if they hold the scope;
        // the requirements above stay those of users' tokens.
        check = check.allow_services().require_scope(scope);
    }
    let layer = VerifierLayer::new(verifier).route(CHECK, check);
    let listen = setting("LISTEN", "127.0.0.1:50061");
    let listener = TcpListener::bind(&listen).await?;
    println!("verified service on {listen}");
    serve_with(listener, layer, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
