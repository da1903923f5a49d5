//! A Shared Signals receiver's push URL (RFC 8935), checked once when a
//! stream is configured. Whoever registers a stream chooses where authd will
//! POST, so the URL is the first half of the SSRF guard: `https` only (plain
//! `http` only with `allow_private`, `AUTHD_SSF_ALLOW_PRIVATE`, since the SET
//! and the receiver's `Authorization` would cross the network in clear), no
//! userinfo, no fragment, no ambiguous numeric host (`127.1`,
//! `0x7f000001`), and no literal internal address ([`forbidden_class`]) nor
//! `localhost`.
//! The second half runs at every delivery (`jobs::ssf_push`): the host's
//! addresses as resolved then, each judged by [`forbidden_class`].

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Longest receiver URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// Why a receiver URL is refused when a stream is configured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointRefusal {
    #[error("not an absolute http(s) URL with a host")]
    Malformed,
    #[error("the scheme must be https (http only with AUTHD_SSF_ALLOW_PRIVATE)")]
    Scheme,
    #[error("the URL must not carry a user name or password")]
    UserInfo,
    #[error("the URL must not have a fragment")]
    Fragment,
    #[error("the URL is longer than 2048 characters")]
    TooLong,
    #[error("the URL's host is a loopback, private, link-local or otherwise internal address")]
    PrivateAddress,
}

/// Where a receiver is: a name resolved at each delivery, or an address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushHost {
    /// Lowercase.
    Name(String),
    Ip(IpAddr),
}

/// A receiver's push URL, checked by [`PushEndpoint::parse`].
#[derive(Clone, PartialEq, Eq)]
pub struct PushEndpoint {
    url: String,
    tls: bool,
    host: PushHost,
    port: u16,
    /// `host[:port]` as written, for the `Host` header.
    authority: String,
    path_and_query: String,
}

impl PushEndpoint {
    /// Checks a receiver URL once, when a stream is created or changed. A
    /// host name passes here whatever it resolves to (`localhost` aside):
    /// `jobs::ssf_push::PushClient::deliver` checks its addresses at each
    /// delivery.
    pub fn parse(url: &str, allow_private: bool) -> Result<Self, EndpointRefusal> {
        if url.len() > MAX_URL_LEN {
            return Err(EndpointRefusal::TooLong);
        }
        if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(EndpointRefusal::Malformed);
        }
        // The scheme first, so `file:///…` or `gopher://…` are named for
        // what they are rather than for what http::Uri makes of them.
        let scheme = url
            .split_once(':')
            .map(|(s, _)| s)
            .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
            .ok_or(EndpointRefusal::Malformed)?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" if allow_private => false,
            _ => return Err(EndpointRefusal::Scheme),
        };
        if url.contains('#') {
            return Err(EndpointRefusal::Fragment);
        }
        let uri: http::Uri = url.parse().map_err(|_| EndpointRefusal::Malformed)?;
        let authority = uri.authority().ok_or(EndpointRefusal::Malformed)?;
        if authority.as_str().contains('@') {
            return Err(EndpointRefusal::UserInfo);
        }
        // http::Uri reads a port past u16 as none at all.
        let after_host = authority
            .as_str()
            .rsplit_once(']')
            .map_or(authority.as_str(), |(_, rest)| rest);
        let port = match after_host.rsplit_once(':') {
            Some((_, port)) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(EndpointRefusal::Malformed),
            },
            None if tls => 443,
            None => 80,
        };
        let host = parse_host(authority.host()).ok_or(EndpointRefusal::Malformed)?;
        let internal = match &host {
            PushHost::Ip(ip) => forbidden_class(*ip).is_some(),
            // RFC 6761 §6.3: always loopback, whatever DNS says.
            PushHost::Name(name) => name == "localhost" || name.ends_with(".localhost"),
        };
        if internal && !allow_private {
            return Err(EndpointRefusal::PrivateAddress);
        }
        let path_and_query = match uri.path_and_query().map(|p| p.as_str()) {
            None | Some("") => "/".to_owned(),
            Some(p) if p.starts_with('?') => format!("/{p}"),
            Some(p) => p.to_owned(),
        };
        Ok(Self {
            url: url.to_owned(),
            tls,
            host,
            port,
            authority: authority.as_str().to_owned(),
            path_and_query,
        })
    }

    /// The URL as it was given, to store. Its path or query may hold a
    /// receiver's secret: log [`PushEndpoint::authority`] instead.
    pub fn as_str(&self) -> &str {
        &self.url
    }

    pub fn host(&self) -> &PushHost {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_https(&self) -> bool {
        self.tls
    }

    /// `host[:port]` as written: the `Host` header, and what logs name.
    pub fn authority(&self) -> &str {
        &self.authority
    }

    /// The request target, at least `/`.
    pub fn path_and_query(&self) -> &str {
        &self.path_and_query
    }
}

/// Shows the scheme and authority only: the rest may hold a secret.
impl fmt::Debug for PushEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "PushEndpoint({scheme}://{}/…)", self.authority)
    }
}

/// An IP literal (IPv6 in brackets) or a DNS name of letters, digits, `-`
/// and `_`. A name whose last label is numeric is refused: resolvers read
/// `127.1` or `2130706433` as IPv4 addresses, which would hide a literal
/// address from the check above (the check at delivery would still catch
/// it, but the stream's owner deserves to hear it now).
fn parse_host(host: &str) -> Option<PushHost> {
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner.strip_suffix(']')?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|ip| PushHost::Ip(IpAddr::V6(ip)));
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Some(PushHost::Ip(IpAddr::V4(ip)));
    }
    let name = host.to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return None;
    }
    let labels: Vec<&str> = name.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !labels.iter().all(label_ok) {
        return None;
    }
    let last = labels.last()?;
    let numeric = last.chars().all(|c| c.is_ascii_digit())
        || (last.starts_with("0x") && last[2..].chars().all(|c| c.is_ascii_hexdigit()));
    if numeric {
        return None;
    }
    Some(PushHost::Name(name))
}

/// What kind of internal address `ip` is, or `None` for a public one a
/// receiver may be at.
pub fn forbidden_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_broadcast() => "broadcast",
        (0, _, _) => "unspecified (this network)",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "private",
        (100, 64..=127, _) => "shared (CGNAT)",
        (169, 254, _) => "link-local (cloud metadata)",
        (192, 0, 0) => "IETF protocol assignment",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18..=19, _) => "benchmarking",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved",
        _ => return None,
    })
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let seg = ip.segments();
    // Forms that carry an IPv4 address: mapped (::ffff:a.b.c.d), the old
    // compatible form (::a.b.c.d) and the NAT64 well-known prefix
    // (64:ff9b::/96), which a NAT64 gateway forwards to that IPv4 address.
    let embedded = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if seg[..6] == [0, 0, 0, 0, 0, 0xffff] {
        return forbidden_v4(embedded);
    }
    if seg[..6] == [0; 6] {
        return Some(forbidden_v4(embedded).unwrap_or("IPv4-compatible (deprecated)"));
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded);
    }
    Some(match seg[0] {
        0xfc00..=0xfdff => "unique local (private)",
        0xfe80..=0xfebf => "link-local",
        0xfec0..=0xfeff => "site-local",
        0xff00..=0xffff => "multicast",
        0x2001 if seg[1] == 0x0db8 => "documentation",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn receiver_urls_are_checked_when_a_stream_is_configured() {
        use EndpointRefusal::*;
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        let refused: &[(&str, EndpointRefusal)] = &[
            ("https://127.0.0.1/events", PrivateAddress),
            ("https://127.0.0.1:8443/events", PrivateAddress),
            ("https://[::1]/events", PrivateAddress),
            ("https://169.254.169.254/latest/meta-data", PrivateAddress),
            ("https://[fd00:ec2::254]/", PrivateAddress),
            ("https://10.1.2.3/events", PrivateAddress),
            ("https://172.16.0.1/events", PrivateAddress),
            ("https://192.168.1.1/events", PrivateAddress),
            ("https://100.64.0.1/events", PrivateAddress),
            ("https://0.0.0.0/events", PrivateAddress),
            ("https://[::]/events", PrivateAddress),
            ("https://[::ffff:127.0.0.1]/events", PrivateAddress),
            ("https://localhost/events", PrivateAddress),
            ("https://LocalHost:8443/events", PrivateAddress),
            ("https://api.localhost/events", PrivateAddress),
            ("https://[::ffff:169.254.169.254]/events", PrivateAddress),
            ("https://[64:ff9b::a9fe:a9fe]/events", PrivateAddress),
            ("https://[fe80::1]/events", PrivateAddress),
            ("https://224.0.0.1/events", PrivateAddress),
            ("https://255.255.255.255/events", PrivateAddress),
            ("https://user:pass@example.com/events", UserInfo),
            ("https://token@example.com/events", UserInfo),
            ("https://example.com/events#frag", Fragment),
            ("http://example.com/events", Scheme),
            ("ftp://example.com/events", Scheme),
            ("file:///etc/passwd", Scheme),
            ("gopher://example.com:70/_", Scheme),
            ("javascript:alert(1)", Scheme),
            ("/events", Malformed),
            ("example.com/events", Malformed),
            ("https://", Malformed),
            ("https:///events", Malformed),
            ("https://example.com:/events", Malformed),
            ("https://example.com:0/events", Malformed),
            ("https://example.com:99999/events", Malformed),
            ("https://exa mple.com/events", Malformed),
            ("https://example.com/ev\nents", Malformed),
            ("https://exa%6dple.com/events", Malformed),
            ("https://127.1/events", Malformed),
            ("https://2130706433/events", Malformed),
            ("https://0x7f000001/events", Malformed),
            ("https://[127.0.0.1]/events", Malformed),
            (&long, TooLong),
        ];
        for (url, refusal) in refused {
            assert_eq!(PushEndpoint::parse(url, false), Err(*refusal), "{url}");
        }

        // AUTHD_SSF_ALLOW_PRIVATE: internal addresses and plain http pass.
        for url in [
            "http://127.0.0.1:8080/events",
            "https://[::1]/events",
            "http://10.1.2.3/events",
            "https://169.254.169.254/",
            "http://localhost:8080/events",
        ] {
            assert!(PushEndpoint::parse(url, true).is_ok(), "{url}");
        }
        // Whatever is allowed, the rest stays refused.
        assert_eq!(PushEndpoint::parse("http://u:p@127.0.0.1/", true), Err(UserInfo));
        assert_eq!(PushEndpoint::parse("ftp://127.0.0.1/", true), Err(Scheme));

        let ok = PushEndpoint::parse("HTTPS://Receiver.Example.COM?x=1", false).unwrap();
        assert_eq!(ok.as_str(), "HTTPS://Receiver.Example.COM?x=1");
        assert_eq!(ok.host, PushHost::Name("receiver.example.com".into()));
        assert_eq!((ok.tls, ok.port), (true, 443));
        assert_eq!(ok.path_and_query, "/?x=1");
        let ok = PushEndpoint::parse("https://[2001:4860::8888]:8443/ssf", false).unwrap();
        assert_eq!(ok.authority, "[2001:4860::8888]:8443");
        assert_eq!(ok.port, 8443);
        assert!(PushEndpoint::parse("https://8.8.8.8/events", false).is_ok());
        assert!(PushEndpoint::parse("https://ssf_receiver.example.com/events", false).is_ok());
    }

    #[test]
    fn internal_addresses_are_named() {
        let class = |s: &str| forbidden_class(s.parse().unwrap());
        assert_eq!(class("127.0.0.1"), Some("loopback"));
        assert_eq!(class("127.255.0.9"), Some("loopback"));
        assert_eq!(class("169.254.169.254"), Some("link-local (cloud metadata)"));
        assert_eq!(class("172.31.255.255"), Some("private"));
        assert_eq!(class("172.32.0.1"), None);
        assert_eq!(class("100.128.0.1"), None);
        assert_eq!(class("::ffff:10.0.0.1"), Some("private"));
        assert_eq!(class("::ffff:8.8.8.8"), None);
        assert_eq!(class("::8.8.8.8"), Some("IPv4-compatible (deprecated)"));
        assert_eq!(class("64:ff9b::7f00:1"), Some("loopback"));
        assert_eq!(class("64:ff9b::808:808"), None);
        assert_eq!(class("fd00:ec2::254"), Some("unique local (private)"));
        assert_eq!(class("fe80::1"), Some("link-local"));
        assert_eq!(class("ff02::1"), Some("multicast"));
        assert_eq!(class("2001:db8::1"), Some("documentation"));
        assert_eq!(class("2606:4700:4700::1111"), None);
        assert_eq!(class("1.1.1.1"), None);
    }

    proptest! {
        /// An IPv4 address judged inside an IPv6 one (mapped or NAT64) gets
        /// the same verdict as on its own, and the standard library's own
        /// notions of internal never disagree with ours.
        #[test]
        fn embedded_ipv4_is_judged_like_ipv4(bits: u32) {
            let v4 = Ipv4Addr::from(bits);
            let verdict = forbidden_v4(v4);
            prop_assert_eq!(forbidden_class(IpAddr::V6(v4.to_ipv6_mapped())), verdict);
            let [a, b, c, d] = v4.octets();
            let nat64 = Ipv6Addr::new(
                0x64, 0xff9b, 0, 0, 0, 0,
                u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d]),
            );
            prop_assert_eq!(forbidden_class(IpAddr::V6(nat64)), verdict);
            if v4.is_private() || v4.is_loopback() || v4.is_link_local() || v4.is_unspecified()
                || v4.is_multicast() || v4.is_broadcast() || v4.is_documentation()
            {
                prop_assert!(verdict.is_some());
            }
        }

        #[test]
        fn internal_ipv6_ranges_are_refused(bits: u128) {
            let v6 = Ipv6Addr::from(bits);
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()
                || v6.is_unicast_link_local() || v6.is_unique_local()
            {
                prop_assert!(forbidden_v6(v6).is_some());
            }
        }
    }
}
