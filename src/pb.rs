//! Code generated from `proto/auth.proto`, and its descriptor set.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("auth.v1");
    }
}

pub mod google {
    pub mod api {
        tonic::include_proto!("google.api");
    }
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

/// Serialized `FileDescriptorSet` of auth.proto with all its imports, for
/// reflection and for REST gateways (`authd descriptor-set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/auth_descriptor.bin"));
