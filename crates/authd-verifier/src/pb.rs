//! Client code generated from authd's contract (`proto/auth.proto`, package
//! `auth.v1`): the messages, and the `AuthService` and `AdminService`
//! clients. The verifier needs only GetJwks, IntrospectToken and
//! WatchRevocations; the rest comes along and is there for callers who want
//! it without generating their own.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

tonic::include_proto!("auth.v1");
