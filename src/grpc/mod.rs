//! The gRPC face of authd: a thin `AuthService` over `service::Core`, the
//! conversions between protobuf and domain types, the bearer layer, and the
//! guard that ends a stream when its key goes.

// The handlers are the transport's edge: each reads the clock once per call
// and hands that `now` to the use case.
#[allow(clippy::disallowed_methods)]
mod admin;
pub mod auth_layer;
pub mod convert;
pub mod database_gate;
pub mod deadline;
#[allow(clippy::disallowed_methods)]
mod handlers;
pub mod health;
pub mod key_guard;
pub mod middleware;
pub mod observe;
mod outcomes;
pub mod policy;
pub mod rate_limit;
pub mod status;

pub use admin::AdminApi;
pub use handlers::AuthApi;
