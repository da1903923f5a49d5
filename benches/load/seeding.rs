//! The accounts the scenarios run as, and the session each load task keeps
//! from scenario to scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::client::{Account, authorization, login};
use crate::grant_scenario::TokenClient;

/// What every load task shares.
pub struct Shared {
    pub channels: Vec<Channel>,
    pub accounts: Vec<Account>,
    /// Makes this run's emails unique, so a server can be driven twice.
    pub run_id: String,
    /// `Bearer sk_…` of a service key with scope tokens.introspect, which
    /// IntrospectToken requires.
    pub service_authorization: Option<MetadataValue<Ascii>>,
    /// A service key with scope tokens.exchange and HTTP/2 connections to
    /// the HTTP face, for the token grant scenarios.
    pub tokens: Option<TokenClient>,
}

/// What one load task carries from scenario to scenario: its account and
/// its own session (access token and rotating refresh token).
pub struct TaskState {
    pub account: usize,
    pub access: String,
    /// `Bearer <access>`, parsed once per token rather than once per call.
    pub authorization: MetadataValue<Ascii>,
    pub refresh: String,
    /// The account's id (the token's `sub`), for GetUser.
    pub user_id: String,
    /// A Refresh failed: the chain may be broken; log in again first.
    pub relogin: bool,
    pub rng: u64,
    pub registered: u64,
    /// ListUsers: the place in the list this task pages from (a cursor;
    /// empty: the start), the next page's cursor, and pages read since the
    /// place.
    pub list_start: String,
    pub page_token: String,
    pub list_page: u32,
}

impl TaskState {
    pub fn set_tokens(&mut self, tokens: pb::TokenPair) {
        self.authorization = authorization(&tokens.access_token);
        self.user_id = subject(&tokens.access_token);
        self.access = tokens.access_token;
        self.refresh = tokens.refresh_token;
    }
}

/// The `sub` claim of an access token (read, not verified: the generator
/// only needs the account's id).
fn subject(access_token: &str) -> String {
    use base64::Engine as _;
    let payload = access_token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|claims| claims["sub"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Registers `n` accounts with `concurrency` tasks.
pub async fn seed_accounts(channels: &[Channel], run_id: &str, n: usize, concurrency: usize) -> Vec<Account> {
    let accounts: Arc<Vec<Account>> = Arc::new(
        (0..n)
            .map(|i| Account {
                email: format!("load-{run_id}-{i}@example.com"),
                password: format!("load test passphrase {}", uuid::Uuid::new_v4()),
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::new();
    for task in 0..concurrency.min(n) {
        let accounts = Arc::clone(&accounts);
        let next = Arc::clone(&next);
        let mut client = AuthServiceClient::new(channels[task % channels.len()].clone());
        handles.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(account) = accounts.get(i) else {
                    return;
                };
                client
                    .register(pb::RegisterRequest {
                        email: account.email.clone(),
                        password: account.password.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap_or_else(|s| panic!("seeding: Register failed: {s:?}"));
            }
        }));
    }
    for h in handles {
        h.await.expect("seeding task panicked");
    }
    Arc::try_unwrap(accounts).unwrap_or_else(|_| unreachable!("seeding tasks are done"))
}

/// One session per load task, for its account.
pub async fn sign_in_tasks(shared: &Arc<Shared>, concurrency: usize) -> Vec<TaskState> {
    let mut handles = Vec::new();
    for task in 0..concurrency {
        let shared = Arc::clone(shared);
        handles.push(tokio::spawn(async move {
            let mut client = AuthServiceClient::new(shared.channels[task % shared.channels.len()].clone());
            let account = task % shared.accounts.len();
            let tokens = login(&mut client, &shared.accounts[account])
                .await
                .unwrap_or_else(|e| panic!("setup: Login failed: {e}"));
            TaskState {
                account,
                authorization: authorization(&tokens.access_token),
                user_id: subject(&tokens.access_token),
                access: tokens.access_token,
                refresh: tokens.refresh_token,
                relogin: false,
                rng: 0x9E37_79B9_7F4A_7C15 ^ (task as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03),
                registered: 0,
                list_start: String::new(),
                page_token: String::new(),
                list_page: 0,
            }
        }));
    }
    let mut states = Vec::with_capacity(concurrency);
    for h in handles {
        states.push(h.await.expect("sign-in task panicked"));
    }
    states
}
