//! Shared Signals (SSF 1.0 transmitter): receivers' streams, and the SETs
//! the event log becomes for each of them. The same log feeds
//! WatchRevocations; here every event is rendered as one SET per thing
//! that happened (one per ended session), each with a `jti` that names the
//! stream, the event and its place in it, so a redelivered SET carries the
//! same `jti` and an acknowledgement names exactly one SET.
//!
//! A stream's cursor says how far it got; push delivery moves it when the
//! receiver accepted a SET (`jobs::ssf_worker`), poll when the receiver
//! acknowledged one.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::Core;
use super::keys::ServiceIdentity;
use crate::db::revocations::{EventDetail, EventKind, EventRow, FactorChange, FactorCredential};
pub use crate::db::ssf::StreamRow;
use crate::db::ssf::{Cursor, MessageRow, StreamFields};
use crate::db::{self};
use crate::domain::Invalid;
use crate::domain::signal::{ChangeType, CredentialType, SetEnvelope, Signal, StreamStatus};
use crate::domain::stream_config::{Delivery, POLL_METHOD, PUSH_METHOD, StreamConfig};
use crate::error::AppError;

/// Events read per batch while rendering a stream's SETs.
const BATCH: i64 = 128;
/// SETs one poll answers with when the receiver does not say.
const DEFAULT_MAX_EVENTS: usize = 100;
/// And at most.
const MAX_EVENTS: usize = 1000;
/// Acknowledgements kept beyond the cursor (acks out of order).
const MAX_ACKED: usize = 4096;
/// How Shared Signals streams are served.
#[derive(Debug, Clone, Copy, Default)]
pub struct SsfSettings {
    /// Push URLs may name loopback, private and link-local addresses
    /// (`AUTHD_SSF_ALLOW_PRIVATE`): for tests and closed networks only.
    pub allow_private: bool,
}

/// One SET rendered for a stream, not yet signed.
#[derive(Debug, Clone)]
pub struct RenderedSet {
    pub jti: String,
    pub event_type: &'static str,
    pub set: authd_token_rules::SecurityEvent,
    /// Where the stream's cursor goes once this SET is delivered.
    pub after: Cursor,
}

/// What one poll hands out.
#[derive(Debug, Clone, Default)]
pub struct PollBatch {
    /// (jti, signed SET)
    pub sets: Vec<(String, String)>,
    pub more_available: bool,
}

/// What a receiver sends with a poll (RFC 8936 §2.4).
#[derive(Debug, Clone, Default)]
pub struct PollRequest {
    pub max_events: Option<usize>,
    pub return_immediately: bool,
    pub ack: Vec<String>,
    /// jti → (err, description): SETs the receiver could not use; they
    /// count as acknowledged (redelivering them would not help) and are
    /// logged.
    pub set_errs: Vec<(String, String, String)>,
}

fn invalid(field: &'static str, description: &str) -> AppError {
    AppError::invalid(field, Invalid::format(description))
}

/// SSF 1.0 §8.1.4.2 lets a transmitter answer 429 to verification
/// requests that come too often: here, when the stream has
/// `db::ssf::MAX_PENDING_MESSAGES` of its own events waiting.
fn too_many_messages() -> AppError {
    AppError::Throttled(Duration::from_secs(60))
}

fn parse_stream_id(input: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(input.trim()).map_err(|_| invalid("stream_id", "must be a stream id (UUID)"))
}

/// The jti of SET `index` of event `event_id` in `stream`.
fn event_jti(stream: Uuid, event_id: i64, index: usize) -> String {
    format!("{event_id}-{index}-{}", stream.simple())
}

fn message_jti(stream: Uuid, message: i64) -> String {
    format!("m{message}-{}", stream.simple())
}

/// What an acknowledged jti names in `stream`, if it is one of its.
enum Named {
    Event(i64, usize),
    Message(i64),
}

fn parse_jti(stream: Uuid, jti: &str) -> Option<Named> {
    let mut parts = jti.splitn(3, '-');
    let first = parts.next()?;
    let second = parts.next()?;
    match parts.next() {
        Some(owner) if owner == stream.simple().to_string() => {
            Some(Named::Event(first.parse().ok()?, second.parse().ok()?))
        }
        None if second == stream.simple().to_string() => {
            Some(Named::Message(first.strip_prefix('m')?.parse().ok()?))
        }
        _ => None,
    }
}

/// The signals one event becomes, in order, every one of them (a stream
/// then keeps those it asked for; indices do not depend on that choice).
fn signals_of(row: &EventRow) -> Vec<(Signal, Option<Uuid>)> {
    let user_event = |s: Signal| vec![(s, None)];
    match row.kind {
        EventKind::SessionEnded | EventKind::UserSessionsEnded => row
            .session_ids
            .iter()
            .map(|sid| (Signal::SessionRevoked { session: Some(*sid) }, Some(*sid)))
            .collect(),
        EventKind::UserDisabled => user_event(Signal::AccountDisabled),
        EventKind::UserEnabled => user_event(Signal::AccountEnabled),
        EventKind::UserDeleted => user_event(Signal::AccountPurged),
        EventKind::IdentifierChanged => user_event(Signal::IdentifierChanged),
        EventKind::PasswordChanged => user_event(Signal::CredentialChange {
            credential_type: CredentialType::Password,
            change_type: ChangeType::Update,
        }),
        EventKind::RolesChanged => {
            let roles = match row.detail() {
                Some(EventDetail::Roles { roles }) => roles,
                _ => Vec::new(),
            };
            user_event(Signal::TokenClaimsChange { roles })
        }
        EventKind::FactorsChanged => {
            let Some(EventDetail::Factor { credential, change }) = row.detail() else {
                // Written before events said which factor: an update of
                // the second factors, which is all that is known.
                return user_event(Signal::CredentialChange {
                    credential_type: CredentialType::App,
                    change_type: ChangeType::Update,
                });
            };
            let change_type = match change {
                FactorChange::Added => ChangeType::Create,
                FactorChange::Removed => ChangeType::Delete,
                FactorChange::Updated => ChangeType::Update,
            };
            let types: &[CredentialType] = match credential {
                FactorCredential::Totp => &[CredentialType::App],
                FactorCredential::Passkey => &[CredentialType::Fido2Platform],
                FactorCredential::RecoveryCodes => &[CredentialType::RecoveryCode],
                FactorCredential::All => &[
                    CredentialType::App,
                    CredentialType::Fido2Platform,
                    CredentialType::RecoveryCode,
                ],
            };
            types
                .iter()
                .map(|t| {
                    (
                        Signal::CredentialChange {
                            credential_type: *t,
                            change_type,
                        },
                        None,
                    )
                })
                .collect()
        }
    }
}

/// The event types authd delivers, among those a stream asked for (all of
/// them when it named none).
pub fn delivered(requested: &[String]) -> Vec<String> {
    let supported = Signal::all_user_event_types();
    if requested.is_empty() {
        return supported.iter().map(|s| (*s).to_owned()).collect();
    }
    supported
        .iter()
        .filter(|s| requested.iter().any(|r| r == *s))
        .map(|s| (*s).to_owned())
        .collect()
}

fn config_of(row: &StreamRow, authorization: Option<String>) -> StreamConfig {
    StreamConfig {
        audience: Some(row.audience.clone()),
        events_requested: row.events_requested.clone(),
        delivery: match &row.endpoint_url {
            Some(url) => Delivery::Push {
                endpoint_url: url.clone(),
                authorization,
            },
            None => Delivery::Poll,
        },
        description: row.description.clone(),
    }
}

impl Core {
    /// The receiver's Authorization value for a push stream, opened.
    pub fn ssf_authorization(&self, row: &StreamRow) -> Result<Option<String>, AppError> {
        let (Some(sealed), Some(key_id)) = (&row.authorization_sealed, &row.authorization_key_id) else {
            return Ok(None);
        };
        let opened = self
            .factors
            .data_keys
            .open(
                key_id,
                sealed,
                &db::sealed_secrets::stream_authorization_aad(row.id),
            )
            .map_err(AppError::internal)?;
        String::from_utf8(opened.to_vec())
            .map(Some)
            .map_err(AppError::internal)
    }

    /// The JSON of a stream configuration (SSF 1.0 §8.1.1): never the
    /// receiver's Authorization value.
    pub fn ssf_stream_json(&self, row: &StreamRow) -> Value {
        let mut delivery = match &row.endpoint_url {
            Some(url) => json!({"method": PUSH_METHOD, "endpoint_url": url}),
            None => json!({
                "method": POLL_METHOD,
                "endpoint_url": format!("{}/ssf/poll/{}", self.issuer(), row.id),
            }),
        };
        if row.authorization_sealed.is_some() {
            // Says one is set, not what it is.
            delivery["authorization_header"] = Value::from("(set)");
        }
        let mut body = json!({
            "stream_id": row.id.to_string(),
            "iss": self.issuer(),
            "aud": row.audience,
            "events_supported": Signal::all_user_event_types(),
            "events_requested": row.events_requested,
            "events_delivered": row.events_delivered,
            "delivery": delivery,
            "min_verification_interval": 0,
        });
        if let Some(d) = &row.description {
            body["description"] = Value::from(d.as_str());
        }
        body
    }

    /// A stream's status (SSF 1.0 §8.1.2.1).
    pub fn ssf_status_json(&self, row: &StreamRow) -> Value {
        let mut body = json!({"stream_id": row.id.to_string(), "status": row.status});
        if let Some(reason) = &row.status_reason {
            body["reason"] = Value::from(reason.as_str());
        }
        body
    }

    fn stream_fields<'a>(
        &self,
        owner: &'a ServiceIdentity,
        config: &'a StreamConfig,
        delivered: &'a [String],
        sealed: Option<&'a (Vec<u8>, String)>,
    ) -> StreamFields<'a> {
        let (delivery_method, endpoint_url) = match &config.delivery {
            Delivery::Push { endpoint_url, .. } => ("push", Some(endpoint_url.as_str())),
            Delivery::Poll => ("poll", None),
        };
        StreamFields {
            audience: config.audience.as_deref().unwrap_or(owner.name.as_str()),
            description: config.description.as_deref(),
            events_requested: &config.events_requested,
            events_delivered: delivered,
            delivery_method,
            endpoint_url,
            authorization: sealed.map(|(bytes, key)| (bytes.as_slice(), key.as_str())),
        }
    }

    fn seal_authorization(
        &self,
        id: Uuid,
        config: &StreamConfig,
    ) -> Result<Option<(Vec<u8>, String)>, AppError> {
        match &config.delivery {
            Delivery::Push {
                authorization: Some(value),
                ..
            } => {
                let sealed = self
                    .factors
                    .data_keys
                    .seal(
                        value.as_bytes(),
                        &db::sealed_secrets::stream_authorization_aad(id),
                    )
                    .map_err(AppError::internal)?;
                Ok(Some((sealed.bytes, sealed.key_id)))
            }
            _ => Ok(None),
        }
    }

    /// Creates a stream for `owner`, starting at the log's present.
    pub async fn ssf_create_stream(
        &self,
        owner: &ServiceIdentity,
        config: StreamConfig,
        now: DateTime<Utc>,
    ) -> Result<StreamRow, AppError> {
        let id = Uuid::new_v4();
        let delivered = delivered(&config.events_requested);
        let sealed = self.seal_authorization(id, &config)?;
        let fields = self.stream_fields(owner, &config, &delivered, sealed.as_ref());
        self.number_committed_events().await?;
        let mut tx = super::begin(&self.db).await?;
        let Some(row) = db::ssf::insert(&mut tx, owner.account_id, id, &fields, now).await? else {
            return Err(invalid(
                "stream",
                &format!(
                    "a service account owns at most {} streams",
                    db::ssf::MAX_STREAMS_PER_OWNER
                ),
            ));
        };
        tx.commit().await?;
        tracing::info!(target: "authd::audit", service_account = %owner.name, stream_id = %id,
            method = row.delivery_method, "shared signals stream created");
        Ok(row)
    }

    pub async fn ssf_streams(&self, owner: &ServiceIdentity) -> Result<Vec<StreamRow>, AppError> {
        db::ssf::by_owner(&self.db, owner.account_id).await
    }

    pub async fn ssf_stream(&self, owner: &ServiceIdentity, stream_id: &str) -> Result<StreamRow, AppError> {
        let id = parse_stream_id(stream_id)?;
        db::ssf::get(&self.db, Some(owner.account_id), id)
            .await?
            .ok_or(AppError::StreamNotFound)
    }

    /// Replaces (`patch` false) or patches a stream's configuration.
    pub async fn ssf_update_stream(
        &self,
        owner: &ServiceIdentity,
        stream_id: &str,
        body: &Value,
        patch: bool,
        now: DateTime<Utc>,
    ) -> Result<StreamRow, AppError> {
        let current = self.ssf_stream(owner, stream_id).await?;
        let config = if patch {
            config_of(&current, self.ssf_authorization(&current)?).patched(body)
        } else {
            StreamConfig::parse(body)
        }
        .map_err(|errors| {
            AppError::Validation(
                errors
                    .into_iter()
                    .map(|(field, e)| crate::error::Violation::new(field, e))
                    .collect(),
            )
        })?;
        self.check_push_url(&config)?;
        let delivered = delivered(&config.events_requested);
        let sealed = self.seal_authorization(current.id, &config)?;
        let fields = self.stream_fields(owner, &config, &delivered, sealed.as_ref());
        db::ssf::replace(&self.db, owner.account_id, current.id, &fields, now)
            .await?
            .ok_or(AppError::StreamNotFound)
    }

    /// Checks a push URL as the delivery will (the literal-address part of
    /// the SSRF guard; names are checked when resolved).
    pub fn check_push_url(&self, config: &StreamConfig) -> Result<(), AppError> {
        if let Delivery::Push { endpoint_url, .. } = &config.delivery {
            crate::domain::push_endpoint::PushEndpoint::parse(endpoint_url, self.ssf.allow_private)
                .map_err(|e| invalid("delivery.endpoint_url", &e.to_string()))?;
        }
        Ok(())
    }

    pub async fn ssf_delete_stream(&self, owner: &ServiceIdentity, stream_id: &str) -> Result<(), AppError> {
        let id = parse_stream_id(stream_id)?;
        if !db::ssf::delete(&self.db, owner.account_id, id).await? {
            return Err(AppError::StreamNotFound);
        }
        tracing::info!(target: "authd::audit", service_account = %owner.name, stream_id = %id,
            "shared signals stream deleted");
        Ok(())
    }

    /// Sets a stream's status and tells the receiver with a stream-updated
    /// SET (SSF 1.0 §8.1.5), delivered before what follows.
    pub async fn ssf_set_status(
        &self,
        owner: &ServiceIdentity,
        stream_id: &str,
        status: &str,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<StreamRow, AppError> {
        let id = parse_stream_id(stream_id)?;
        let status = StreamStatus::parse(status)
            .ok_or_else(|| invalid("status", "must be enabled, paused or disabled"))?;
        if reason.is_some_and(|r| r.chars().count() > 1024) {
            return Err(invalid("reason", "must be at most 1024 characters"));
        }
        self.number_committed_events().await?;
        let mut tx = super::begin(&self.db).await?;
        let row = db::ssf::set_status(&mut *tx, owner.account_id, id, status.as_str(), reason, now)
            .await?
            .ok_or(AppError::StreamNotFound)?;
        let message = json!({"kind": "stream-updated", "status": status.as_str(), "reason": reason});
        if !db::ssf::enqueue_message(&mut *tx, id, &message, now).await? {
            return Err(too_many_messages());
        }
        tx.commit().await?;
        self.revocation_feed.nudge();
        Ok(row)
    }

    /// Asks for a verification SET (SSF 1.0 §8.1.4) carrying `state`.
    pub async fn ssf_verify(
        &self,
        owner: &ServiceIdentity,
        stream_id: &str,
        state: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), AppError> {
        let row = self.ssf_stream(owner, stream_id).await?;
        if state.is_some_and(|s| s.len() > 1024) {
            return Err(invalid("state", "must be at most 1024 bytes"));
        }
        let message = json!({"kind": "verification", "state": state});
        if !db::ssf::enqueue_message(&self.db, row.id, &message, now).await? {
            return Err(too_many_messages());
        }
        self.revocation_feed.nudge();
        Ok(())
    }

    /// The SET a stream message becomes.
    pub fn ssf_render_message(
        &self,
        row: &StreamRow,
        message: &MessageRow,
        now: DateTime<Utc>,
    ) -> RenderedSet {
        let kind = message.event.get("kind").and_then(Value::as_str).unwrap_or("");
        let text = |key: &str| message.event.get(key).and_then(Value::as_str).map(str::to_owned);
        let signal = match kind {
            "stream-updated" => Signal::StreamUpdated {
                status: text("status")
                    .as_deref()
                    .and_then(StreamStatus::parse)
                    .unwrap_or(StreamStatus::Enabled),
                reason: text("reason"),
            },
            _ => Signal::Verification { state: text("state") },
        };
        let jti = message_jti(row.id, message.id);
        let set = crate::domain::signal::security_event(
            &signal,
            SetEnvelope {
                issuer: self.issuer(),
                audience: &row.audience,
                jti: jti.clone(),
                iat: now.timestamp(),
                txn: None,
                user_id: None,
                stream_id: Some(row.id),
                event_time: message.created_at.timestamp(),
            },
        );
        RenderedSet {
            jti,
            event_type: signal.event_type(),
            set,
            after: row.cursor(),
        }
    }

    /// The SETs of `event` for `stream` that it asked for, each with the
    /// cursor it leaves behind once delivered; none before `cursor`.
    pub fn ssf_render_event(
        &self,
        row: &StreamRow,
        event: &EventRow,
        cursor: Cursor,
        now: DateTime<Utc>,
    ) -> Vec<RenderedSet> {
        let signals = signals_of(event);
        let total = signals.len();
        let skip = if event.id == cursor.event + 1 {
            usize::try_from(cursor.sets).unwrap_or(0)
        } else {
            0
        };
        let iat = now.timestamp();
        signals
            .into_iter()
            .enumerate()
            .skip(skip)
            .filter(|(_, (signal, _))| row.events_delivered.iter().any(|e| e == signal.event_type()))
            .map(|(index, (signal, _))| {
                let jti = event_jti(row.id, event.id, index);
                let after = if index + 1 == total {
                    Cursor {
                        event: event.id,
                        sets: 0,
                    }
                } else {
                    Cursor {
                        event: event.id - 1,
                        sets: i32::try_from(index + 1).unwrap_or(i32::MAX),
                    }
                };
                let set = crate::domain::signal::security_event(
                    &signal,
                    SetEnvelope {
                        issuer: self.issuer(),
                        audience: &row.audience,
                        jti: jti.clone(),
                        iat,
                        txn: event.txn.map(|t| t.to_string()),
                        user_id: Some(event.user_id),
                        stream_id: None,
                        event_time: event.occurred_at.timestamp(),
                    },
                );
                RenderedSet {
                    jti,
                    event_type: signal.event_type(),
                    set,
                    after,
                }
            })
            .collect()
    }

    pub fn ssf_sign(&self, set: &authd_token_rules::SecurityEvent) -> Result<String, AppError> {
        self.tokens.sign_event(set).map_err(AppError::internal)
    }

    /// Whether the stream's cursor is still inside the log: a stream that
    /// fell further behind than the retention is disabled with a reason
    /// saying so (the receiver re-enables it to start again from now).
    pub async fn ssf_check_retention(&self, row: &StreamRow, now: DateTime<Utc>) -> Result<bool, AppError> {
        let state = db::revocations::state(&self.db).await?;
        if row.cursor_event >= state.pruned_through {
            return Ok(true);
        }
        let reason = format!(
            "events after {} are past the retention ({} h) and were deleted; enable the stream to start again from now",
            row.cursor_event,
            self.revocation_feed.retention().num_hours()
        );
        db::ssf::expire(&self.db, row.id, &reason, now).await?;
        tracing::warn!(stream_id = %row.id, "shared signals stream fell behind the event retention; disabled");
        Ok(false)
    }

    /// The next SETs after the stream's cursor, at most `limit`, stream
    /// messages first; those in `skip` (acknowledged already) left out.
    pub async fn ssf_pending(
        &self,
        row: &StreamRow,
        limit: usize,
        skip: &BTreeSet<String>,
        now: DateTime<Utc>,
    ) -> Result<(Vec<RenderedSet>, bool), AppError> {
        let mut out = Vec::new();
        let want = i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1);
        for message in db::ssf::messages(&self.db, row.id, want).await? {
            let set = self.ssf_render_message(row, &message, now);
            if !skip.contains(&set.jti) {
                out.push(set);
            }
        }
        let mut cursor = row.cursor();
        loop {
            if out.len() > limit {
                break;
            }
            let events = db::revocations::after(&self.db, cursor.event, BATCH).await?;
            let Some(last) = events.last().map(|e| e.id) else {
                break;
            };
            for event in &events {
                for set in self.ssf_render_event(row, event, cursor, now) {
                    if !skip.contains(&set.jti) {
                        out.push(set);
                    }
                }
                cursor = Cursor {
                    event: event.id,
                    sets: 0,
                };
                if out.len() > limit {
                    break;
                }
            }
            if last == cursor.event && events.len() < usize::try_from(BATCH).unwrap_or(0) {
                break;
            }
        }
        let more = out.len() > limit;
        out.truncate(limit);
        Ok((out, more))
    }

    /// RFC 8936 poll: records the acknowledgements, moves the cursor over
    /// every SET acknowledged in order, then answers with what follows
    /// (waiting up to `wait` for something when the receiver asked to).
    pub async fn ssf_poll(
        &self,
        owner: &ServiceIdentity,
        stream_id: &str,
        request: PollRequest,
        wait: Duration,
        now: DateTime<Utc>,
    ) -> Result<PollBatch, AppError> {
        let mut row = self.ssf_stream(owner, stream_id).await?;
        if row.endpoint_url.is_some() {
            return Err(AppError::StreamNotPolled);
        }
        for (jti, err, description) in &request.set_errs {
            tracing::warn!(stream_id = %row.id, jti, err, description, "receiver could not use a SET");
        }
        let acks: Vec<String> = request
            .ack
            .iter()
            .chain(request.set_errs.iter().map(|(jti, _, _)| jti))
            .cloned()
            .collect();
        if !acks.is_empty() {
            row = self.ssf_acknowledge(row, &acks, now).await?;
        }
        if row.status != "enabled" || !self.ssf_check_retention(&row, now).await? {
            return Ok(PollBatch::default());
        }
        let limit = request.max_events.unwrap_or(DEFAULT_MAX_EVENTS).min(MAX_EVENTS);
        if limit == 0 {
            return Ok(PollBatch::default());
        }
        // A poll that returns at once answers with every change committed
        // before it, like a read of the log would: the last ones may still
        // wait for their ids. A long poll need not pay for that on every
        // call: what is still waiting wakes it a moment later.
        if request.return_immediately {
            self.number_committed_events().await?;
        }
        let mut head = self.revocation_feed.head();
        let started = tokio::time::Instant::now();
        let deadline = started + wait;
        loop {
            let skip: BTreeSet<String> = row.acked.iter().cloned().collect();
            // `iat` is when the SETs are handed out, after a long wait too.
            let issued = now + chrono::Duration::from_std(started.elapsed()).unwrap_or_default();
            let (sets, more) = self.ssf_pending(&row, limit, &skip, issued).await?;
            if !sets.is_empty() || request.return_immediately || tokio::time::Instant::now() >= deadline {
                let signed = sets
                    .iter()
                    .map(|s| Ok((s.jti.clone(), self.ssf_sign(&s.set)?)))
                    .collect::<Result<Vec<_>, AppError>>()?;
                self.metrics().ssf_delivered("poll", signed.len());
                return Ok(PollBatch {
                    sets: signed,
                    more_available: more,
                });
            }
            // Woken by the log's notifications; a second's poll covers a
            // stream message written on another replica.
            let tick = tokio::time::sleep(Duration::from_secs(1).min(deadline - tokio::time::Instant::now()));
            tokio::select! {
                _ = head.changed() => {}
                () = tick => {}
            }
            row = self.ssf_stream(owner, stream_id).await?;
        }
    }

    /// Adds `acks` (those naming SETs of this stream not yet passed) to the
    /// stream's acknowledgements, drops acknowledged stream messages, and
    /// moves the cursor over the acknowledged prefix. Unknown jtis are
    /// ignored (RFC 8936 has no error for them).
    async fn ssf_acknowledge(
        &self,
        row: StreamRow,
        acks: &[String],
        now: DateTime<Utc>,
    ) -> Result<StreamRow, AppError> {
        let state = db::revocations::state(&self.db).await?;
        let mut acked: BTreeSet<String> = row.acked.iter().cloned().collect();
        let mut messages = Vec::new();
        for jti in acks {
            match parse_jti(row.id, jti) {
                Some(Named::Message(id)) => messages.push(id),
                Some(Named::Event(event, index))
                    if event <= state.last_event_id
                        && Cursor {
                            event: event - 1,
                            sets: i32::try_from(index).unwrap_or(i32::MAX),
                        } >= row.cursor()
                        && acked.len() < MAX_ACKED =>
                {
                    acked.insert(jti.clone());
                }
                _ => {}
            }
        }
        if !messages.is_empty() {
            db::ssf::remove_messages(&self.db, row.id, &messages).await?;
        }
        // Walk forward over SETs acknowledged in order.
        let mut cursor = row.cursor();
        'walk: loop {
            let events = db::revocations::after(&self.db, cursor.event, BATCH).await?;
            if events.is_empty() {
                break;
            }
            for event in &events {
                for set in self.ssf_render_event(&row, event, cursor, now) {
                    if !acked.remove(&set.jti) {
                        break 'walk;
                    }
                    cursor = set.after;
                }
                // Every SET of the event it asked for is acknowledged (or
                // it asked for none of them).
                cursor = Cursor {
                    event: event.id,
                    sets: 0,
                };
            }
        }
        // An ack the walk could not consume but the cursor has passed (an
        // index the event never had, or a SET the stream did not ask for)
        // would otherwise stay forever and fill MAX_ACKED with junk, after
        // which real out-of-order acks were dropped.
        acked.retain(|jti| match parse_jti(row.id, jti) {
            Some(Named::Event(event, index)) => {
                Cursor {
                    event: event - 1,
                    sets: i32::try_from(index).unwrap_or(i32::MAX),
                } >= cursor
            }
            _ => false,
        });
        let acked: Vec<String> = acked.into_iter().collect();
        db::ssf::advance(&self.db, row.id, cursor, &acked, None).await?;
        Ok(StreamRow {
            cursor_event: cursor.event,
            cursor_sets: cursor.sets,
            acked,
            ..row
        })
    }
}

/// What the push worker asks of the use cases.
impl Core {
    pub fn ssf_allows_private(&self) -> bool {
        self.ssf.allow_private
    }

    /// Wakes when the log has news (or a stream message was written here).
    pub fn revocation_head(&self) -> tokio::sync::watch::Receiver<i64> {
        self.revocation_feed.head()
    }

    pub async fn ssf_stream_for_delivery(&self, id: Uuid) -> Result<Option<StreamRow>, AppError> {
        db::ssf::get(&self.db, None, id).await
    }

    /// The stream's own pending messages (verification, stream-updated).
    pub async fn ssf_messages(
        &self,
        row: &StreamRow,
        now: DateTime<Utc>,
    ) -> Result<Vec<RenderedSet>, AppError> {
        Ok(db::ssf::messages(&self.db, row.id, 64)
            .await?
            .iter()
            .map(|m| self.ssf_render_message(row, m, now))
            .collect())
    }

    /// Records that `set` was delivered by push from `replica`: a stream
    /// message is dropped, an event's SET moves the cursor (fenced by the
    /// lease). False when the lease is no longer this replica's.
    pub async fn ssf_delivered(
        &self,
        row: &StreamRow,
        set: &RenderedSet,
        replica: Uuid,
    ) -> Result<bool, AppError> {
        if let Some(Named::Message(id)) = parse_jti(row.id, &set.jti) {
            db::ssf::remove_messages(&self.db, row.id, &[id]).await?;
            return Ok(true);
        }
        db::ssf::advance(&self.db, row.id, set.after, &[], Some(replica)).await
    }

    pub async fn ssf_note_rejection(&self, id: Uuid, error: &str) -> Result<(), AppError> {
        db::ssf::note_rejection(&self.db, id, error).await
    }

    pub async fn ssf_push_failed(
        &self,
        id: Uuid,
        replica: Uuid,
        retry_at: DateTime<Utc>,
        reason: &str,
    ) -> Result<(), AppError> {
        db::ssf::failed(&self.db, id, replica, retry_at, reason).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_names_its_stream_event_and_place() {
        let stream = Uuid::new_v4();
        let other = Uuid::new_v4();
        assert!(matches!(
            parse_jti(stream, &event_jti(stream, 42, 3)),
            Some(Named::Event(42, 3))
        ));
        assert!(matches!(
            parse_jti(stream, &message_jti(stream, 7)),
            Some(Named::Message(7))
        ));
        assert!(parse_jti(other, &event_jti(stream, 42, 3)).is_none());
        assert!(parse_jti(stream, "42-3").is_none());
        assert!(parse_jti(stream, "").is_none());
        assert!(parse_jti(stream, &format!("x-1-{}", stream.simple())).is_none());
    }
}
