//! Shared Signals: what authd tells receivers happened (CAEP 1.0, RISC 1.0,
//! SSF 1.0), and the Security Event Token (RFC 8417) that says it. The event
//! type URIs and member names are the specifications' spelling, letter for
//! letter: receivers match them exactly.
//!
//! Subjects follow RFC 9493 as SSF 1.0 wants them, in the top-level `sub_id`
//! claim (never `sub`): a user is `iss_sub` (authd's issuer and the user's
//! id); a session-revoked event naming one session is `complex`, the user and
//! the session (`opaque`); the stream's own events (verification,
//! stream-updated) name the stream as `opaque`.

use authd_token_rules::SecurityEvent;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

pub const SESSION_REVOKED: &str = "https://schemas.openid.net/secevent/caep/event-type/session-revoked";
pub const CREDENTIAL_CHANGE: &str = "https://schemas.openid.net/secevent/caep/event-type/credential-change";
pub const TOKEN_CLAIMS_CHANGE: &str =
    "https://schemas.openid.net/secevent/caep/event-type/token-claims-change";
pub const ACCOUNT_DISABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-disabled";
pub const ACCOUNT_ENABLED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-enabled";
pub const ACCOUNT_PURGED: &str = "https://schemas.openid.net/secevent/risc/event-type/account-purged";
pub const IDENTIFIER_CHANGED: &str = "https://schemas.openid.net/secevent/risc/event-type/identifier-changed";
pub const VERIFICATION: &str = "https://schemas.openid.net/secevent/ssf/event-type/verification";
pub const STREAM_UPDATED: &str = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated";

/// The kind of credential a CAEP credential-change names (CAEP 1.0 §3.3,
/// `credential_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialType {
    Password,
    /// An authenticator app (TOTP).
    App,
    /// A passkey.
    Fido2Platform,
    /// The one-time recovery codes.
    RecoveryCode,
}

impl CredentialType {
    /// The `credential_type` value. CAEP has no type for recovery codes;
    /// they are the authenticator app's fallback here, so they go as `app`
    /// (a receiver that knows only CAEP's list still understands the SET)
    /// and are told apart by `friendly_name` (see [`Self::friendly_name`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Password => "password",
            Self::App | Self::RecoveryCode => "app",
            Self::Fido2Platform => "fido2-platform",
        }
    }

    /// CAEP's optional `friendly_name`, set where `credential_type` alone
    /// would leave two credentials indistinguishable.
    pub fn friendly_name(self) -> Option<&'static str> {
        match self {
            Self::RecoveryCode => Some("recovery codes"),
            Self::Password | Self::App | Self::Fido2Platform => None,
        }
    }
}

/// What happened to the credential (CAEP 1.0 §3.3, `change_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeType {
    Create,
    Revoke,
    Update,
    Delete,
}

impl ChangeType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Revoke => "revoke",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

/// A stream's status (SSF 1.0 §8.1.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamStatus {
    Enabled,
    Paused,
    Disabled,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Paused => "paused",
            Self::Disabled => "disabled",
        }
    }

    /// The status named exactly as SSF spells it; anything else is `None`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "enabled" => Some(Self::Enabled),
            "paused" => Some(Self::Paused),
            "disabled" => Some(Self::Disabled),
            _ => None,
        }
    }
}

/// Something a receiver is told. User events name the user through
/// [`SetEnvelope::user_id`]; the stream's own events name the stream through
/// [`SetEnvelope::stream_id`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// CAEP session-revoked. `None`: every session of the user.
    SessionRevoked { session: Option<Uuid> },
    /// CAEP credential-change.
    CredentialChange {
        credential_type: CredentialType,
        change_type: ChangeType,
    },
    /// CAEP token-claims-change: the roles tokens now carry.
    TokenClaimsChange { roles: Vec<String> },
    /// RISC account-disabled.
    AccountDisabled,
    /// RISC account-enabled.
    AccountEnabled,
    /// RISC account-purged.
    AccountPurged,
    /// RISC identifier-changed (the email). The new value is not sent: a
    /// receiver that needs it asks with its own credentials.
    IdentifierChanged,
    /// SSF verification, answering a receiver's request (its `state`).
    Verification { state: Option<String> },
    /// SSF stream-updated: the transmitter changed the stream's status.
    StreamUpdated {
        status: StreamStatus,
        reason: Option<String>,
    },
}

impl Signal {
    /// The event type URI, exactly as the specifications spell it.
    pub fn event_type(&self) -> &'static str {
        match self {
            Self::SessionRevoked { .. } => SESSION_REVOKED,
            Self::CredentialChange { .. } => CREDENTIAL_CHANGE,
            Self::TokenClaimsChange { .. } => TOKEN_CLAIMS_CHANGE,
            Self::AccountDisabled => ACCOUNT_DISABLED,
            Self::AccountEnabled => ACCOUNT_ENABLED,
            Self::AccountPurged => ACCOUNT_PURGED,
            Self::IdentifierChanged => IDENTIFIER_CHANGED,
            Self::Verification { .. } => VERIFICATION,
            Self::StreamUpdated { .. } => STREAM_UPDATED,
        }
    }

    /// The user events authd delivers: what a stream's `events_requested`
    /// is filtered to (the stream's own events are always delivered).
    pub fn all_user_event_types() -> [&'static str; 7] {
        [
            SESSION_REVOKED,
            CREDENTIAL_CHANGE,
            TOKEN_CLAIMS_CHANGE,
            ACCOUNT_DISABLED,
            ACCOUNT_ENABLED,
            ACCOUNT_PURGED,
            IDENTIFIER_CHANGED,
        ]
    }

    /// Whether the event names the stream rather than a user.
    pub fn is_about_the_stream(&self) -> bool {
        matches!(self, Self::Verification { .. } | Self::StreamUpdated { .. })
    }

    /// The event's payload (the value under its URI in `events`).
    fn payload(&self, event_time: i64) -> Value {
        // CAEP events say when the change happened (CAEP 1.0 §2,
        // `event_timestamp`), which may be well before the SET is signed
        // when a receiver catches up.
        let mut caep = Map::new();
        caep.insert("event_timestamp".to_owned(), json!(event_time));
        match self {
            Self::SessionRevoked { .. } => Value::Object(caep),
            Self::CredentialChange {
                credential_type,
                change_type,
            } => {
                caep.insert("credential_type".to_owned(), json!(credential_type.as_str()));
                caep.insert("change_type".to_owned(), json!(change_type.as_str()));
                if let Some(name) = credential_type.friendly_name() {
                    caep.insert("friendly_name".to_owned(), json!(name));
                }
                Value::Object(caep)
            }
            Self::TokenClaimsChange { roles } => {
                caep.insert("claims".to_owned(), json!({ "roles": roles }));
                Value::Object(caep)
            }
            Self::AccountDisabled | Self::AccountEnabled | Self::AccountPurged | Self::IdentifierChanged => {
                json!({})
            }
            Self::Verification { state } => match state {
                Some(state) => json!({ "state": state }),
                None => json!({}),
            },
            Self::StreamUpdated { status, reason } => {
                let mut payload = Map::new();
                payload.insert("status".to_owned(), json!(status.as_str()));
                if let Some(reason) = reason {
                    payload.insert("reason".to_owned(), json!(reason));
                }
                Value::Object(payload)
            }
        }
    }

    /// The RFC 9493 subject identifier; `None` when the envelope lacks the
    /// id this signal names (a caller's mistake the SET then shows by
    /// having no `sub_id`, which receivers refuse).
    fn subject(&self, env: &SetEnvelope<'_>) -> Option<Value> {
        if self.is_about_the_stream() {
            return env
                .stream_id
                .map(|stream| json!({ "format": "opaque", "id": stream.to_string() }));
        }
        let user = json!({ "format": "iss_sub", "iss": env.issuer, "sub": env.user_id?.to_string() });
        Some(match self {
            Self::SessionRevoked {
                session: Some(session),
            } => json!({
                "format": "complex",
                "user": user,
                "session": { "format": "opaque", "id": session.to_string() },
            }),
            _ => user,
        })
    }
}

/// What a SET says besides its event: who signs it, for whom, its id, and
/// what it is about.
#[derive(Debug, Clone)]
pub struct SetEnvelope<'a> {
    /// `iss`: authd's issuer.
    pub issuer: &'a str,
    /// `aud`: the stream's audience.
    pub audience: &'a str,
    /// `jti`: unique per SET (per stream and event).
    pub jti: String,
    /// `iat`: when the SET is signed (seconds since the epoch).
    pub iat: i64,
    /// `txn`: shared by the SETs of one change.
    pub txn: Option<String>,
    /// The user of a user event.
    pub user_id: Option<Uuid>,
    /// The stream of a verification or stream-updated event.
    pub stream_id: Option<Uuid>,
    /// When the change happened (CAEP `event_timestamp`).
    pub event_time: i64,
}

/// The claims of the SET telling `signal`: one event, the subject in
/// `sub_id`, no `sub` and no `exp` (a SET grants nothing and never expires,
/// RFC 8417 §2.2).
pub fn security_event(signal: &Signal, env: SetEnvelope<'_>) -> SecurityEvent {
    let mut events = Map::new();
    events.insert(signal.event_type().to_owned(), signal.payload(env.event_time));
    SecurityEvent {
        iss: env.issuer.to_owned(),
        aud: env.audience.to_owned(),
        sub_id: signal.subject(&env),
        jti: env.jti,
        iat: env.iat,
        txn: env.txn,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://authd.test";
    // Written out again rather than taken from the constants above: the
    // test holds them to the specifications' text.
    const CAEP: &str = "https://schemas.openid.net/secevent/caep/event-type/";
    const RISC: &str = "https://schemas.openid.net/secevent/risc/event-type/";
    const SSF: &str = "https://schemas.openid.net/secevent/ssf/event-type/";

    fn envelope(user: Option<Uuid>, stream: Option<Uuid>) -> SetEnvelope<'static> {
        SetEnvelope {
            issuer: ISS,
            audience: "https://receiver.test",
            jti: "jti-1".to_owned(),
            iat: 1_900_000_100,
            txn: Some("txn-1".to_owned()),
            user_id: user,
            stream_id: stream,
            event_time: 1_900_000_000,
        }
    }

    fn every_signal() -> Vec<Signal> {
        vec![
            Signal::SessionRevoked { session: None },
            Signal::SessionRevoked {
                session: Some(Uuid::new_v4()),
            },
            Signal::CredentialChange {
                credential_type: CredentialType::Password,
                change_type: ChangeType::Update,
            },
            Signal::CredentialChange {
                credential_type: CredentialType::App,
                change_type: ChangeType::Create,
            },
            Signal::CredentialChange {
                credential_type: CredentialType::Fido2Platform,
                change_type: ChangeType::Delete,
            },
            Signal::CredentialChange {
                credential_type: CredentialType::RecoveryCode,
                change_type: ChangeType::Revoke,
            },
            Signal::TokenClaimsChange {
                roles: vec!["admin".to_owned()],
            },
            Signal::AccountDisabled,
            Signal::AccountEnabled,
            Signal::AccountPurged,
            Signal::IdentifierChanged,
            Signal::Verification {
                state: Some("s-1".to_owned()),
            },
            Signal::Verification { state: None },
            Signal::StreamUpdated {
                status: StreamStatus::Paused,
                reason: Some("receiver unreachable".to_owned()),
            },
            Signal::StreamUpdated {
                status: StreamStatus::Enabled,
                reason: None,
            },
        ]
    }

    #[test]
    fn the_event_type_uris_are_the_specifications_spelling() {
        let expected = [
            (
                Signal::SessionRevoked { session: None },
                format!("{CAEP}session-revoked"),
            ),
            (
                Signal::CredentialChange {
                    credential_type: CredentialType::Password,
                    change_type: ChangeType::Update,
                },
                format!("{CAEP}credential-change"),
            ),
            (
                Signal::TokenClaimsChange { roles: vec![] },
                format!("{CAEP}token-claims-change"),
            ),
            (Signal::AccountDisabled, format!("{RISC}account-disabled")),
            (Signal::AccountEnabled, format!("{RISC}account-enabled")),
            (Signal::AccountPurged, format!("{RISC}account-purged")),
            (Signal::IdentifierChanged, format!("{RISC}identifier-changed")),
            (Signal::Verification { state: None }, format!("{SSF}verification")),
            (
                Signal::StreamUpdated {
                    status: StreamStatus::Disabled,
                    reason: None,
                },
                format!("{SSF}stream-updated"),
            ),
        ];
        for (signal, uri) in &expected {
            assert_eq!(signal.event_type(), uri, "{signal:?}");
        }
        let users: Vec<&str> = expected
            .iter()
            .filter(|(s, _)| !s.is_about_the_stream())
            .map(|(s, _)| s.event_type())
            .collect();
        assert_eq!(Signal::all_user_event_types().to_vec(), users);
    }

    #[test]
    fn user_events_name_the_user_as_iss_sub_and_carry_no_sub_nor_exp() {
        let user = Uuid::new_v4();
        for signal in every_signal().iter().filter(|s| !s.is_about_the_stream()) {
            if matches!(signal, Signal::SessionRevoked { session: Some(_) }) {
                continue;
            }
            let set = security_event(signal, envelope(Some(user), None));
            assert_eq!(
                set.sub_id,
                Some(json!({"format": "iss_sub", "iss": ISS, "sub": user.to_string()})),
                "{signal:?}"
            );
            let claims = serde_json::to_value(&set).unwrap();
            for absent in ["sub", "exp", "nbf"] {
                assert!(claims.get(absent).is_none(), "{absent} in {claims}");
            }
            assert_eq!(claims["iss"], ISS);
            assert_eq!(claims["aud"], "https://receiver.test");
            assert_eq!(claims["jti"], "jti-1");
            assert_eq!(claims["iat"], 1_900_000_100);
            assert_eq!(claims["txn"], "txn-1");
            let events = claims["events"].as_object().unwrap();
            assert_eq!(events.len(), 1);
            assert!(events.contains_key(signal.event_type()));
        }
    }

    #[test]
    fn one_revoked_session_is_a_complex_subject_of_user_and_session() {
        let (user, session) = (Uuid::new_v4(), Uuid::new_v4());
        let set = security_event(
            &Signal::SessionRevoked {
                session: Some(session),
            },
            envelope(Some(user), None),
        );
        assert_eq!(
            set.sub_id,
            Some(json!({
                "format": "complex",
                "user": {"format": "iss_sub", "iss": ISS, "sub": user.to_string()},
                "session": {"format": "opaque", "id": session.to_string()},
            }))
        );
        assert_eq!(
            set.events[SESSION_REVOKED],
            json!({"event_timestamp": 1_900_000_000})
        );
    }

    #[test]
    fn the_streams_own_events_name_the_stream_as_opaque() {
        let stream = Uuid::new_v4();
        for signal in every_signal().iter().filter(|s| s.is_about_the_stream()) {
            let set = security_event(signal, envelope(Some(Uuid::new_v4()), Some(stream)));
            assert_eq!(
                set.sub_id,
                Some(json!({"format": "opaque", "id": stream.to_string()})),
                "{signal:?}"
            );
        }
    }

    #[test]
    fn payloads_carry_the_members_each_specification_names() {
        let user = Some(Uuid::new_v4());
        let payload = |signal: Signal| {
            let set = security_event(&signal, envelope(user, Some(Uuid::new_v4())));
            set.events[signal.event_type()].clone()
        };
        assert_eq!(
            payload(Signal::CredentialChange {
                credential_type: CredentialType::Fido2Platform,
                change_type: ChangeType::Create,
            }),
            json!({"event_timestamp": 1_900_000_000, "credential_type": "fido2-platform", "change_type": "create"})
        );
        assert_eq!(
            payload(Signal::CredentialChange {
                credential_type: CredentialType::RecoveryCode,
                change_type: ChangeType::Update,
            }),
            json!({
                "event_timestamp": 1_900_000_000, "credential_type": "app", "change_type": "update",
                "friendly_name": "recovery codes",
            })
        );
        assert_eq!(
            payload(Signal::TokenClaimsChange {
                roles: vec!["admin".to_owned(), "support".to_owned()],
            }),
            json!({"event_timestamp": 1_900_000_000, "claims": {"roles": ["admin", "support"]}})
        );
        for risc in [
            Signal::AccountDisabled,
            Signal::AccountEnabled,
            Signal::AccountPurged,
            Signal::IdentifierChanged,
        ] {
            assert_eq!(payload(risc), json!({}));
        }
        assert_eq!(
            payload(Signal::Verification {
                state: Some("abc".to_owned())
            }),
            json!({"state": "abc"})
        );
        assert_eq!(payload(Signal::Verification { state: None }), json!({}));
        assert_eq!(
            payload(Signal::StreamUpdated {
                status: StreamStatus::Paused,
                reason: Some("why".to_owned()),
            }),
            json!({"status": "paused", "reason": "why"})
        );
        assert_eq!(
            payload(Signal::StreamUpdated {
                status: StreamStatus::Disabled,
                reason: None,
            }),
            json!({"status": "disabled"})
        );
    }

    #[test]
    fn no_txn_means_no_txn_claim() {
        let mut env = envelope(Some(Uuid::new_v4()), None);
        env.txn = None;
        let claims = serde_json::to_value(security_event(&Signal::AccountPurged, env)).unwrap();
        assert!(claims.get("txn").is_none(), "{claims}");
    }

    #[test]
    fn stream_status_parses_only_its_own_spelling() {
        for status in [
            StreamStatus::Enabled,
            StreamStatus::Paused,
            StreamStatus::Disabled,
        ] {
            assert_eq!(StreamStatus::parse(status.as_str()), Some(status));
        }
        for other in ["", "Enabled", "PAUSED", "disabled ", "deleted"] {
            assert_eq!(StreamStatus::parse(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_signal_survives_its_stored_form() {
        for signal in every_signal() {
            let stored = serde_json::to_value(&signal).unwrap();
            assert_eq!(serde_json::from_value::<Signal>(stored).unwrap(), signal);
        }
    }
}
