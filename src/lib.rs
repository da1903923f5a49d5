//! authd: an identity service over gRPC.

// Production code never panics (Cargo.toml denies it); unit tests do, to fail.
#![cfg_attr(test, allow(clippy::panic))]
// Unit tests read the clock freely; production code only at its edges
// (clippy.toml).
#![cfg_attr(test, allow(clippy::disallowed_methods))]

// An operator's command is an edge: it reads the clock for what it records.
#[allow(clippy::disallowed_methods)]
pub mod cli;
pub mod coherence;
pub mod config;
pub mod crypto;
pub mod db;
pub mod deadline;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod jobs;
pub mod local_pg;
pub mod mail;
pub mod metrics;
pub mod pb;
pub mod service;
pub mod startup;
pub mod telemetry;
