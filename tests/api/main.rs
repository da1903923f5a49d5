//! The integration suite: one binary, a real PostgreSQL cluster started once
//! for it, a fresh database and a real server on a real socket per test, and
//! the generated tonic client.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod helpers;
/// The bulk seed shared with the load generator's scale scenario.
#[path = "../seed/scale.rs"]
mod seed;

mod admin;
mod adversarial;
mod browser;
mod cleanup;
mod clients;
mod data_keys;
mod deadlines;
mod descriptor;
mod error_contract;
mod factors;
pub mod faults;
mod grpc_web;
mod health;
mod http1;
mod http_face;
mod layering;
mod lifecycle;
mod login;
mod metrics;
mod migrations_at_scale;
mod oauth_clients;
mod openapi;
mod passkey_flow;
mod passkey_kit;
mod passkeys;
mod query_plans;
mod readme;
mod recovery;
mod register;
mod rest_gateway;
mod revocation_coverage;
mod revocations;
mod scale_seed;
mod second_factor_flow;
mod security_claims;
mod service_account_cli;
mod session_cache;
mod sessions;
mod shared_signals;
mod smtp;
mod ssf_receiver_kit;
mod ssf_sets;
mod throttling;
mod token_grants;
mod tokens;
mod totp;
mod traces;
mod verifier;
