//! What a session records about the client that started it, so its owner
//! can tell their sessions apart in ListSessions. Both values come from the
//! client (or its gateway) and prove nothing; they are kept short and
//! printable so they cannot bloat a row or smuggle anything into a UI.

use std::net::IpAddr;

use super::has_control;

/// A `user-agent` header as recorded on a session: control characters
/// dropped, whitespace runs collapsed, at most [`UserAgent::MAX_CHARS`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserAgent(String);

impl UserAgent {
    /// Real user agents stay well below this; longer ones are cut, not refused:
    /// a login never fails over what its client calls itself.
    pub const MAX_CHARS: usize = 256;

    /// `None` when nothing printable is left.
    pub fn capture(header: &str) -> Option<Self> {
        let mut s = String::with_capacity(header.len().min(Self::MAX_CHARS));
        for word in header.split_whitespace() {
            let word: String = word.chars().filter(|c| !c.is_control()).collect();
            if word.is_empty() {
                continue;
            }
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(&word);
        }
        let s: String = s.chars().take(Self::MAX_CHARS).collect();
        let s = s.trim_end().to_owned();
        debug_assert!(!has_control(&s));
        (!s.is_empty()).then_some(Self(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a login came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub user_agent: Option<UserAgent>,
    /// The client's own address (not grouped like the per-client limits'),
    /// IPv4-mapped IPv6 shown as IPv4.
    pub ip_address: Option<IpAddr>,
}

impl ClientInfo {
    pub fn new(user_agent: Option<&str>, ip_address: Option<IpAddr>) -> Self {
        Self {
            user_agent: user_agent.and_then(UserAgent::capture),
            ip_address: ip_address.map(|ip| ip.to_canonical()),
        }
    }

    /// The address as stored: at most 45 characters, the longest an IPv6
    /// address is written.
    pub fn ip_text(&self) -> Option<String> {
        self.ip_address.map(|ip| ip.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_agents_are_printable_and_capped() {
        assert_eq!(
            UserAgent::capture("grpc-python/1.60 grpc-c/37.0 (linux; chttp2)")
                .map(|u| u.0)
                .as_deref(),
            Some("grpc-python/1.60 grpc-c/37.0 (linux; chttp2)")
        );
        assert_eq!(
            UserAgent::capture("a\tb\r\n c\u{7}d\u{0}")
                .map(|u| u.0)
                .as_deref(),
            Some("a b cd")
        );
        assert_eq!(UserAgent::capture(" \t\u{1b} "), None);
        let long = UserAgent::capture(&"é".repeat(1000)).unwrap();
        assert_eq!(long.as_str().chars().count(), UserAgent::MAX_CHARS);
    }

    #[test]
    fn mapped_addresses_are_stored_as_ipv4_and_fit_the_column() {
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let info = ClientInfo::new(None, Some(mapped));
        assert_eq!(info.ip_text().as_deref(), Some("192.0.2.7"));
        let longest: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        assert!(ClientInfo::new(None, Some(longest)).ip_text().unwrap().len() <= 45);
    }
}
