//! The gRPC face of authd: a thin `AuthService` over `service::Core`, the
//! conversions between protobuf and domain types, and the bearer layer.

pub mod auth_layer;
mod convert;
mod handlers;
pub mod observe;
pub mod rate_limit;

pub use handlers::AuthApi;
