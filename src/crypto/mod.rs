//! Password hashing, access-token signing and opaque secrets.

pub mod jwt;
pub mod keys;
pub mod opaque;
pub mod password;
