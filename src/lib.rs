//! authd: an identity service over gRPC.

// Production code never panics (Cargo.toml denies it); unit tests do, to fail.
#![cfg_attr(test, allow(clippy::panic))]

pub mod change_listener;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod freshness;
pub mod grpc;
pub mod local_pg;
pub mod mail;
pub mod metrics;
pub mod pb;
pub mod revocation_feed;
pub mod service;
pub mod service_keys;
pub mod session_cache;
pub mod startup;
pub mod telemetry;
