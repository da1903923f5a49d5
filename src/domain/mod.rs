//! Request values parsed once into types that are trusted afterwards.

mod email;
mod password;
mod profile;
mod username;

pub use email::Email;
pub use password::{Password, PasswordPolicy};
pub use profile::{FullName, ImageUrl, Phone};
pub use username::Username;

/// Refuses control characters anywhere, which also covers NUL, CR and LF.
fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}
