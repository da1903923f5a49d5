//! What the verifier knows of revocations: ended sessions, disabled and
//! deleted accounts, and when an account's second factors last changed,
//! each remembered only as long as a token it concerns can still be
//! unexpired. Pure state: the stream task feeds it changes,
//! requests read it, and the caller passes the time in.

use std::collections::{HashMap, VecDeque};

use crate::claims::Claims;
use crate::error::Revocation;

/// One revocation, as WatchRevocations reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// Tokens of these sessions are refused (SESSION_ENDED,
    /// USER_SESSIONS_ENDED).
    SessionsEnded(Vec<String>),
    /// Tokens of this account issued at or before the change are refused.
    UserDisabled(String),
    /// Every token of this account is refused.
    UserDeleted(String),
    /// The account's second factors changed: proofs from before no longer
    /// meet a policy that needs a second factor. Revokes nothing.
    FactorsChanged(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Session(String),
    Disabled(String),
    Deleted(String),
    Factors(String),
}

/// A change to an account at a time, remembered until `forget_at`.
#[derive(Debug, Clone, Copy)]
struct Stamp {
    /// Seconds since the epoch of the (latest) change.
    at: i64,
    forget_at: i64,
}

/// Revocations still relevant, with the time each may be forgotten.
#[derive(Debug)]
pub(crate) struct RevocationState {
    /// How long after a change its tokens may still be unexpired: the
    /// longest token lifetime plus the leeway, in seconds.
    retention: i64,
    ended_sessions: HashMap<String, i64>,
    /// Tokens with an `iat` up to the change are refused.
    disabled_users: HashMap<String, Stamp>,
    deleted_users: HashMap<String, i64>,
    factors_changed: HashMap<String, Stamp>,
    /// Entries in the order they were added, with their forget time. The
    /// changes arrive roughly in time order, so pruning pops from the front;
    /// one that arrived late waits behind a later one, which only keeps it a
    /// little longer.
    forget_queue: VecDeque<(i64, Entry)>,
}

impl RevocationState {
    pub(crate) fn new(retention_secs: i64) -> Self {
        Self {
            retention: retention_secs,
            ended_sessions: HashMap::new(),
            disabled_users: HashMap::new(),
            deleted_users: HashMap::new(),
            factors_changed: HashMap::new(),
            forget_queue: VecDeque::new(),
        }
    }

    /// Records `change`, which committed at `occurred_at` (seconds since the
    /// epoch). A change whose tokens have all expired by `now` (a resumed
    /// stream catching up on an old outage) is not kept at all.
    pub(crate) fn apply(&mut self, change: Change, occurred_at: i64, now: i64) {
        let forget_at = occurred_at.saturating_add(self.retention);
        if forget_at <= now {
            return;
        }
        match change {
            Change::SessionsEnded(sessions) => {
                for session in sessions {
                    let kept = self.ended_sessions.entry(session.clone()).or_insert(forget_at);
                    *kept = (*kept).max(forget_at);
                    self.forget_queue.push_back((forget_at, Entry::Session(session)));
                }
            }
            Change::UserDisabled(user) => {
                // Disabled again later: the later change refuses more.
                stamp(&mut self.disabled_users, &user, occurred_at, forget_at);
                self.forget_queue.push_back((forget_at, Entry::Disabled(user)));
            }
            Change::FactorsChanged(user) => {
                stamp(&mut self.factors_changed, &user, occurred_at, forget_at);
                self.forget_queue.push_back((forget_at, Entry::Factors(user)));
            }
            Change::UserDeleted(user) => {
                let kept = self.deleted_users.entry(user.clone()).or_insert(forget_at);
                *kept = (*kept).max(forget_at);
                self.forget_queue.push_back((forget_at, Entry::Deleted(user)));
            }
        }
    }

    /// Forgets what no unexpired token can be affected by any more.
    pub(crate) fn prune(&mut self, now: i64) {
        while let Some((forget_at, _)) = self.forget_queue.front() {
            if *forget_at > now {
                break;
            }
            let Some((_, entry)) = self.forget_queue.pop_front() else {
                break;
            };
            // A later change may have extended the entry: only the map's own
            // forget time counts.
            match entry {
                Entry::Session(id) => {
                    if self.ended_sessions.get(&id).is_some_and(|t| *t <= now) {
                        self.ended_sessions.remove(&id);
                    }
                }
                Entry::Disabled(id) => {
                    if self.disabled_users.get(&id).is_some_and(|d| d.forget_at <= now) {
                        self.disabled_users.remove(&id);
                    }
                }
                Entry::Deleted(id) => {
                    if self.deleted_users.get(&id).is_some_and(|t| *t <= now) {
                        self.deleted_users.remove(&id);
                    }
                }
                Entry::Factors(id) => {
                    if self.factors_changed.get(&id).is_some_and(|f| f.forget_at <= now) {
                        self.factors_changed.remove(&id);
                    }
                }
            }
        }
    }

    /// Whether a known revocation covers the token.
    pub(crate) fn check(&self, claims: &Claims) -> Result<(), Revocation> {
        if self.ended_sessions.contains_key(claims.session_id()) {
            return Err(Revocation::SessionEnded);
        }
        if self.deleted_users.contains_key(claims.user_id()) {
            return Err(Revocation::UserDeleted);
        }
        if let Some(disabled) = self.disabled_users.get(claims.user_id())
            && claims.iat_secs() <= disabled.at
        {
            return Err(Revocation::UserDisabled);
        }
        Ok(())
    }

    /// When the account's factors last changed, if that is remembered.
    pub(crate) fn factors_changed_at(&self, user_id: &str) -> Option<i64> {
        self.factors_changed.get(user_id).map(|f| f.at)
    }

    /// Remembered sessions and accounts, for the health accessor.
    pub(crate) fn len(&self) -> usize {
        self.ended_sessions.len()
            + self.disabled_users.len()
            + self.deleted_users.len()
            + self.factors_changed.len()
    }
}

/// Records a change to `user` at `at`; a later one moves the time and the
/// forget time forward, an earlier one arriving late moves neither back.
fn stamp(map: &mut HashMap<String, Stamp>, user: &str, at: i64, forget_at: i64) {
    let kept = map.entry(user.to_owned()).or_insert(Stamp { at, forget_at });
    kept.at = kept.at.max(at);
    kept.forget_at = kept.forget_at.max(forget_at);
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_900_000_000;
    const RETENTION: i64 = 905;

    fn token(user: &str, session: &str, iat: i64) -> Claims {
        crate::claims::test_claims(user, session, iat, &["pwd"], iat)
    }

    #[test]
    fn an_ended_session_refuses_its_tokens_only() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::SessionsEnded(vec!["s1".into(), "s2".into()]), T, T);
        assert_eq!(
            state.check(&token("u", "s1", T - 10)),
            Err(Revocation::SessionEnded)
        );
        assert_eq!(
            state.check(&token("u", "s2", T - 10)),
            Err(Revocation::SessionEnded)
        );
        assert_eq!(state.check(&token("u", "s3", T - 10)), Ok(()));
    }

    #[test]
    fn a_disabled_account_refuses_tokens_issued_up_to_the_change() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::UserDisabled("u".into()), T, T);
        assert_eq!(
            state.check(&token("u", "s", T - 60)),
            Err(Revocation::UserDisabled)
        );
        assert_eq!(state.check(&token("u", "s", T)), Err(Revocation::UserDisabled));
        assert_eq!(
            state.check(&token("u", "s", T + 1)),
            Ok(()),
            "enabled again, new login"
        );
        assert_eq!(state.check(&token("other", "s", T - 60)), Ok(()));
    }

    #[test]
    fn a_deleted_account_refuses_every_token() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::UserDeleted("u".into()), T, T);
        assert_eq!(
            state.check(&token("u", "s", T + 100)),
            Err(Revocation::UserDeleted)
        );
    }

    #[test]
    fn entries_are_forgotten_once_their_tokens_have_expired() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::SessionsEnded(vec!["s1".into()]), T, T);
        state.apply(Change::UserDisabled("u1".into()), T, T);
        state.apply(Change::UserDeleted("u2".into()), T + 100, T + 100);
        state.prune(T + RETENTION - 1);
        assert_eq!(state.len(), 3);
        state.prune(T + RETENTION);
        assert_eq!(state.len(), 1, "the later deletion stays");
        assert_eq!(state.check(&token("u2", "s", T)), Err(Revocation::UserDeleted));
        state.prune(T + 100 + RETENTION);
        assert_eq!(state.len(), 0);
        assert!(state.forget_queue.is_empty());
    }

    #[test]
    fn a_repeated_change_extends_the_entry() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::SessionsEnded(vec!["s".into()]), T, T);
        state.apply(Change::SessionsEnded(vec!["s".into()]), T + 500, T + 500);
        state.prune(T + RETENTION);
        assert_eq!(state.check(&token("u", "s", T)), Err(Revocation::SessionEnded));
        state.apply(Change::UserDisabled("u".into()), T, T);
        state.apply(Change::UserDisabled("u".into()), T + 500, T + 500);
        assert_eq!(
            state.check(&token("u", "x", T + 400)),
            Err(Revocation::UserDisabled),
            "the later disabling counts"
        );
    }

    #[test]
    fn a_factor_change_is_remembered_per_account_until_its_tokens_expired() {
        let mut state = RevocationState::new(RETENTION);
        state.apply(Change::FactorsChanged("u".into()), T, T);
        state.apply(Change::FactorsChanged("u".into()), T - 50, T);
        assert_eq!(
            state.factors_changed_at("u"),
            Some(T),
            "a late older change moves nothing back"
        );
        assert_eq!(state.factors_changed_at("other"), None);
        assert_eq!(
            state.check(&token("u", "s", T - 10)),
            Ok(()),
            "it revokes nothing"
        );
        state.apply(Change::FactorsChanged("u".into()), T + 100, T + 100);
        assert_eq!(state.factors_changed_at("u"), Some(T + 100));
        state.prune(T + RETENTION);
        assert_eq!(
            state.factors_changed_at("u"),
            Some(T + 100),
            "the later change stays"
        );
        state.prune(T + 100 + RETENTION);
        assert_eq!(state.factors_changed_at("u"), None);
        assert_eq!(state.len(), 0);
        assert!(state.forget_queue.is_empty());
    }

    #[test]
    fn changes_older_than_any_token_are_not_kept() {
        let mut state = RevocationState::new(RETENTION);
        // A resumed stream catching up on changes from an hour ago.
        state.apply(Change::SessionsEnded(vec!["old".into()]), T - 3600, T);
        state.apply(Change::UserDeleted("gone".into()), T - 3600, T);
        assert_eq!(state.len(), 0);
        assert!(state.forget_queue.is_empty());
    }

    #[test]
    fn memory_is_bounded_by_the_changes_of_one_retention() {
        let mut state = RevocationState::new(RETENTION);
        // One logout per second for an hour, pruned as it goes.
        for second in 0..3600 {
            let now = T + second;
            state.apply(Change::SessionsEnded(vec![format!("s{second}")]), now, now);
            state.prune(now);
        }
        assert!(state.len() <= RETENTION as usize + 1, "{}", state.len());
        assert!(state.forget_queue.len() <= RETENTION as usize + 1);
    }
}
