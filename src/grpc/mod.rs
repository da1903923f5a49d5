//! The gRPC face of authd: a thin `AuthService` over `service::Core`, the
//! conversions between protobuf and domain types, the bearer layer, and the
//! guard that ends a stream when its key goes.

mod admin;
pub mod auth_layer;
mod convert;
pub mod database_gate;
pub mod deadline;
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
