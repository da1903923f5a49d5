//! Password hashing, access-token signing, opaque secrets and the data keys
//! that seal stored secrets.

pub mod data_keys;
pub mod jwt;
pub mod keys;
pub mod opaque;
pub mod passkeys;
pub mod password;
pub mod recovery_codes;
pub mod totp;
