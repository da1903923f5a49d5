//! The scenarios by name, and the closed loop that drives the call mixes:
//! every task makes one call after another until the time is up.

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::pb::auth::v1::{
    self as pb, admin_service_client::AdminServiceClient, auth_service_client::AuthServiceClient,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::client::{bearer, code_label, get_me, login};
use crate::grant_scenario::{self, TokenClient};
use crate::procfs::{CpuUse, CpuWindow};
use crate::seeding::{Shared, TaskState};
use crate::stats::{Row, Stats};

/// The scale run's scenarios (`--scale`), in order: the call scenarios run
/// on both servers in turns; `cleanup` is Refresh during a clean-up pass.
pub const SCALE: &str = "startup,health,getme,introspect,refresh,listsessions,getuser,lookupuser,listusers,mix,\
                         login,register,cleanup";

/// Every scenario, in the order a run without `--scenarios` takes them.
pub const ALL: &str = "health,getme,getuser,lookupuser,listusers,listsessions,introspect,jwks,client-credentials,\
                       exchange,client-credentials-http,exchange-http,refresh,mix,login,register,login-mfa,\
                       passkey-login,cache,revocation,ssf-push,ssf-poll,ssf-push-dead,startup";

#[derive(Debug, Clone)]
pub enum Scenario {
    Calls(Mix),
    /// Login + CompleteLogin with a TOTP code, in turns with Login alone
    /// (see `mfa_scenario`).
    LoginMfa,
    /// StartPasskeyLogin + FinishPasskeyLogin (a passwordless login with a
    /// software passkey), in turns with Login alone (see `passkey_scenario`).
    PasskeyLogin,
    /// authd's session cache filled, then GetMe with and without a stream
    /// of account changes (see `cache_scenario`).
    Cache,
    /// Logout at authd → refusal by authd-verifier, with 1 and 100
    /// subscribers, and the verifier's cost per call (see
    /// `revocation_scenario`).
    Revocation,
    /// Logout → session-revoked SET at every push receiver, 1 and 100
    /// streams (see `ssf_scenario`).
    SsfPush,
    /// The same with poll receivers long polling (see `ssf_scenario`).
    SsfPoll,
    /// 100 push streams, one of whose receivers is alive, silent, then
    /// refusing: the 99 others' latencies (see `ssf_scenario`).
    SsfPushDead,
    /// Logins offered at 1×, 2× and 4× the argon2 ceiling with deadlines
    /// (see `flood`); not in the default list.
    Flood,
    /// Clients that retry refused Logins, politely then impolitely, with
    /// GetMe alongside (see `retry_flood`); not in the default list.
    RetryFlood,
    /// Time from exec of authd to SERVING with its development cluster,
    /// warm and on an empty data folder (see `startup`).
    Startup,
    /// `--scale` only: Refresh on the seeded database without, then during,
    /// a clean-up pass (see `scale::cleanup_pass`).
    Cleanup,
}

/// Which operations, in what proportions (percent).
#[derive(Debug, Clone)]
pub struct Mix {
    pub name: &'static str,
    pub ops: Vec<(Op, u32)>,
}

impl Mix {
    /// Whether its tasks need places in the list of accounts first.
    pub fn lists_users(&self) -> bool {
        self.ops.iter().any(|(op, _)| *op == Op::ListUsers)
    }
}

impl Scenario {
    pub fn by_name(name: &str) -> Option<Self> {
        let single = |op: Op| {
            Scenario::Calls(Mix {
                name: op.name(),
                ops: vec![(op, 100)],
            })
        };
        Some(match name {
            "health" => single(Op::Health),
            "getme" => single(Op::GetMe),
            "getuser" => single(Op::GetUser),
            "lookupuser" => single(Op::LookupUser),
            "listusers" => single(Op::ListUsers),
            "listsessions" => single(Op::ListSessions),
            "introspect" => single(Op::Introspect),
            "jwks" => single(Op::Jwks),
            "client-credentials" => single(Op::ClientCredentials),
            "exchange" => single(Op::Exchange),
            "client-credentials-http" => single(Op::ClientCredentialsHttp),
            "exchange-http" => single(Op::ExchangeHttp),
            "refresh" => single(Op::Refresh),
            "login" => single(Op::Login),
            "register" => single(Op::Register),
            "mix" => Scenario::Calls(Mix {
                name: "mix",
                ops: vec![(Op::GetMe, 90), (Op::Refresh, 8), (Op::Login, 2)],
            }),
            "login-mfa" => Scenario::LoginMfa,
            "passkey-login" => Scenario::PasskeyLogin,
            "cache" => Scenario::Cache,
            "revocation" => Scenario::Revocation,
            "ssf-push" => Scenario::SsfPush,
            "ssf-poll" => Scenario::SsfPoll,
            "ssf-push-dead" => Scenario::SsfPushDead,
            "flood" => Scenario::Flood,
            "retry-flood" => Scenario::RetryFlood,
            "startup" => Scenario::Startup,
            "cleanup" => Scenario::Cleanup,
            _ => return None,
        })
    }

    /// Whether the scenario writes its own rows into authd's database, so
    /// against `--addr` it needs `--database-url`.
    pub fn fills_database(&self) -> bool {
        matches!(self, Scenario::Cache | Scenario::LoginMfa)
    }

    /// Whether the scenario is a Shared Signals receiver, so against
    /// `--addr` it needs `--ssf-key`.
    pub fn receives_signals(&self) -> bool {
        matches!(
            self,
            Scenario::SsfPush | Scenario::SsfPoll | Scenario::SsfPushDead
        )
    }

    /// Whether the scenario mints tokens for [`grant_scenario::AUDIENCE`]
    /// with a service key of scope `tokens.exchange`, so against `--addr`
    /// it needs `--token-client`.
    pub fn grants_tokens(&self) -> bool {
        match self {
            Scenario::Calls(mix) => mix.ops.iter().any(|(op, _)| op.grants_tokens()),
            _ => false,
        }
    }

    /// Whether the scenario is bound by argon2, so the argon2 baseline is
    /// measured again just before it.
    pub fn hashes_passwords(&self) -> bool {
        match self {
            Scenario::Calls(mix) => mix
                .ops
                .iter()
                .any(|(op, _)| matches!(op, Op::Login | Op::Register)),
            Scenario::Flood | Scenario::RetryFlood | Scenario::LoginMfa | Scenario::PasskeyLogin => true,
            Scenario::Cache
            | Scenario::Revocation
            | Scenario::SsfPush
            | Scenario::SsfPoll
            | Scenario::SsfPushDead
            | Scenario::Startup
            | Scenario::Cleanup => false,
        }
    }
}

/// Accounts per ListUsers page, and pages a task reads from its place in
/// the list before it goes back there: the same calls, whatever the list's
/// length, as long as it holds a few more than 60 accounts.
pub const LIST_PAGE_SIZE: i32 = 20;
pub const LIST_PAGES: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Health,
    GetMe,
    /// AdminService.GetUser with a service key (`users.read`), warm.
    GetUser,
    /// AdminService.LookupUser of the task's own address, in capitals.
    LookupUser,
    /// AdminService.ListUsers: each task reads [`LIST_PAGES`] pages of
    /// [`LIST_PAGE_SIZE`] from its own place in the list (see
    /// [`prepare_list_starts`]), then goes back to that place.
    ListUsers,
    /// ListSessions of the task's own account (bearer token).
    ListSessions,
    Introspect,
    Jwks,
    /// ExchangeToken, client_credentials (see `grant_scenario`).
    ClientCredentials,
    /// ExchangeToken, the task's access token exchanged for another
    /// audience.
    Exchange,
    /// `POST /oauth2/token` on the HTTP face, client_credentials.
    ClientCredentialsHttp,
    /// `POST /oauth2/token`, token exchange.
    ExchangeHttp,
    Refresh,
    Login,
    Register,
}

impl Op {
    fn grants_tokens(self) -> bool {
        matches!(
            self,
            Op::ClientCredentials | Op::Exchange | Op::ClientCredentialsHttp | Op::ExchangeHttp
        )
    }

    fn name(self) -> &'static str {
        match self {
            Op::Health => "health",
            Op::GetMe => "getme",
            Op::GetUser => "getuser",
            Op::LookupUser => "lookupuser",
            Op::ListUsers => "listusers",
            Op::ListSessions => "listsessions",
            Op::Introspect => "introspect",
            Op::Jwks => "jwks",
            Op::ClientCredentials => "client-credentials",
            Op::Exchange => "exchange",
            Op::ClientCredentialsHttp => "client-credentials-http",
            Op::ExchangeHttp => "exchange-http",
            Op::Refresh => "refresh",
            Op::Login => "login",
            Op::Register => "register",
        }
    }
}

/// One call of `op`; `Err` carries the label it is counted under. Every
/// answer must say what a success says (SERVING, a user, `active`, keys),
/// or it counts as an error.
async fn call(
    op: Op,
    task: usize,
    state: &mut TaskState,
    client: &mut AuthServiceClient<Channel>,
    admin: &mut AdminServiceClient<Channel>,
    health: &mut HealthClient<Channel>,
    shared: &Shared,
) -> Result<(), String> {
    match op {
        Op::Health => {
            let r = health
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().status == ServingStatus::Serving as i32 {
                Ok(())
            } else {
                Err("NOT_SERVING".into())
            }
        }
        Op::GetMe => get_me(client, &state.authorization).await,
        Op::GetUser => {
            let key = shared
                .service_authorization
                .as_ref()
                .ok_or_else(|| "no_service_key".to_owned())?;
            let r = admin
                .get_user(bearer(
                    pb::GetUserRequest {
                        user_id: state.user_id.clone(),
                    },
                    key,
                ))
                .await
                .map_err(|s| code_label(&s))?;
            match r.into_inner().user {
                Some(u) if u.id == state.user_id => Ok(()),
                _ => Err("wrong_user".into()),
            }
        }
        Op::LookupUser => {
            let key = shared
                .service_authorization
                .as_ref()
                .ok_or_else(|| "no_service_key".to_owned())?;
            let r = admin
                .lookup_user(bearer(
                    pb::LookupUserRequest {
                        email: shared.accounts[state.account].email.to_uppercase(),
                        username: String::new(),
                    },
                    key,
                ))
                .await
                .map_err(|s| code_label(&s))?;
            match r.into_inner().user {
                Some(u) if u.id == state.user_id => Ok(()),
                _ => Err("wrong_user".into()),
            }
        }
        Op::ListUsers => {
            let key = shared
                .service_authorization
                .as_ref()
                .ok_or_else(|| "no_service_key".to_owned())?;
            let page_token = if state.list_page == 0 {
                state.list_start.clone()
            } else {
                std::mem::take(&mut state.page_token)
            };
            let r = admin
                .list_users(bearer(
                    pb::ListUsersRequest {
                        page_size: LIST_PAGE_SIZE,
                        page_token,
                    },
                    key,
                ))
                .await
                .map_err(|s| code_label(&s))?
                .into_inner();
            // A page that is not the last is full.
            let full = usize::try_from(LIST_PAGE_SIZE).unwrap_or(usize::MAX);
            if r.users.is_empty() || (!r.next_page_token.is_empty() && r.users.len() != full) {
                return Err("short_page".into());
            }
            state.list_page = if r.next_page_token.is_empty() {
                0
            } else {
                (state.list_page + 1) % LIST_PAGES
            };
            state.page_token = r.next_page_token;
            Ok(())
        }
        Op::ListSessions => {
            let r = client
                .list_sessions(bearer(pb::ListSessionsRequest {}, &state.authorization))
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().sessions.iter().any(|s| s.current) {
                Ok(())
            } else {
                Err("no_current_session".into())
            }
        }
        Op::Introspect => {
            let message = pb::IntrospectTokenRequest {
                access_token: state.access.clone(),
            };
            let request = match &shared.service_authorization {
                Some(key) => bearer(message, key),
                None => tonic::Request::new(message),
            };
            let r = client
                .introspect_token(request)
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().active {
                Ok(())
            } else {
                Err("inactive".into())
            }
        }
        Op::Jwks => {
            let r = client
                .get_jwks(pb::GetJwksRequest {})
                .await
                .map_err(|s| code_label(&s))?;
            if r.get_ref().keys.is_empty() {
                Err("no_keys".into())
            } else {
                Ok(())
            }
        }
        Op::ClientCredentials => grant_scenario::client_credentials_grpc(client, token_client(shared)?).await,
        Op::Exchange => grant_scenario::exchange_grpc(client, token_client(shared)?, &state.access).await,
        Op::ClientCredentialsHttp => {
            grant_scenario::client_credentials_http(token_client(shared)?, task).await
        }
        Op::ExchangeHttp => grant_scenario::exchange_http(token_client(shared)?, task, &state.access).await,
        Op::Refresh => {
            let result = client
                .refresh(pb::RefreshRequest {
                    refresh_token: state.refresh.clone(),
                })
                .await;
            match result.map(|r| r.into_inner().tokens) {
                Ok(Some(tokens)) => {
                    state.set_tokens(tokens);
                    Ok(())
                }
                Ok(None) => {
                    state.relogin = true;
                    Err("no_tokens".into())
                }
                Err(s) => {
                    state.relogin = true;
                    Err(code_label(&s))
                }
            }
        }
        Op::Login => login(client, &shared.accounts[state.account]).await.map(drop),
        Op::Register => {
            state.registered += 1;
            let r = client
                .register(pb::RegisterRequest {
                    email: format!("reg-{}-{task}-{}@example.com", shared.run_id, state.registered),
                    password: format!("load test passphrase {}", uuid::Uuid::new_v4()),
                    ..Default::default()
                })
                .await
                .map_err(|s| code_label(&s))?;
            match r.into_inner().user {
                Some(_) => Ok(()),
                None => Err("no_user".into()),
            }
        }
    }
}

fn token_client(shared: &Shared) -> Result<&TokenClient, String> {
    shared.tokens.as_ref().ok_or_else(|| "no_token_client".to_owned())
}

fn next_random(state: &mut u64) -> u64 {
    // xorshift64*
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

fn pick(ops: &[(Op, u32)], rng: &mut u64) -> Op {
    if ops.len() == 1 {
        return ops[0].0;
    }
    let total: u32 = ops.iter().map(|(_, w)| w).sum();
    let mut r = (next_random(rng) % u64::from(total)) as u32;
    for (op, weight) in ops {
        if r < *weight {
            return *op;
        }
        r -= weight;
    }
    ops[ops.len() - 1].0
}

/// Gives each task a place in the list of accounts to page from (before a
/// mix with ListUsers): cursors spread over the whole list, read with pages
/// of 500 (a list of a million accounts is walked in 2 000 calls), or, for
/// a list of up to 500, the place after its first account, so that the
/// first page of each task's round is read with a cursor too. Returns how
/// many places, and how long it took.
pub async fn prepare_list_starts(
    states: &mut [TaskState],
    shared: &Shared,
) -> Result<(usize, Duration), String> {
    let started = Instant::now();
    let key = shared
        .service_authorization
        .as_ref()
        .ok_or_else(|| "no_service_key".to_owned())?;
    let admin = AdminServiceClient::new(shared.channels[0].clone());
    let page = |page_size: i32, page_token: String| {
        let request = bearer(
            pb::ListUsersRequest {
                page_size,
                page_token,
            },
            key,
        );
        let mut admin = admin.clone();
        async move {
            admin
                .list_users(request)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| format!("ListUsers while preparing: {}", code_label(&s)))
        }
    };
    let mut cursors = Vec::new();
    let mut token = String::new();
    loop {
        let r = page(500, token).await?;
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token.clone();
        cursors.push(r.next_page_token);
    }
    // The last place may have fewer than a round's accounts after it.
    cursors.pop();
    if cursors.is_empty() {
        cursors.push(page(1, String::new()).await?.next_page_token);
    }
    let tasks = states.len().max(1);
    for (i, state) in states.iter_mut().enumerate() {
        state.list_start = cursors[i * cursors.len() / tasks].clone();
        state.list_page = 0;
    }
    Ok((cursors.len(), started.elapsed()))
}

/// What one run of a call mix measured: per operation, and the CPU used.
pub struct MixRun {
    pub per_op: Vec<Stats>,
    pub elapsed: Duration,
    pub cpu: CpuUse,
}

impl MixRun {
    /// The run of tasks that each measured `n_ops` operations and report
    /// when they finished: their stats merged per operation, timed from
    /// `started` to the last one's end.
    pub fn gather<S: IntoIterator<Item = Stats>>(
        n_ops: usize,
        started: Instant,
        window: CpuWindow,
        tasks: impl IntoIterator<Item = (S, Instant)>,
    ) -> MixRun {
        let mut per_op: Vec<Stats> = (0..n_ops).map(|_| Stats::default()).collect();
        let mut finished = started;
        for (stats, done) in tasks {
            finished = finished.max(done);
            for (total, s) in per_op.iter_mut().zip(stats) {
                total.merge(s);
            }
        }
        MixRun {
            per_op,
            elapsed: finished - started,
            cpu: window.close(),
        }
    }

    /// One row per operation of a paired scenario (the pair first, then
    /// each step), the run's CPU on the pair's row.
    pub fn pair_rows(self, names: [&str; 3]) -> Vec<Row> {
        let MixRun { per_op, elapsed, cpu } = self;
        let mut rows: Vec<Row> = names
            .into_iter()
            .zip(per_op)
            .map(|(name, s)| Row::from_stats(name.to_owned(), s, elapsed))
            .collect();
        if let Some(pair) = rows.first_mut() {
            pair.cpu = Some(cpu);
        }
        rows
    }

    /// Two runs of the same mix as one (the halves of a paired measurement).
    pub fn merge(mut self, other: MixRun) -> MixRun {
        for (total, s) in self.per_op.iter_mut().zip(other.per_op) {
            total.merge(s);
        }
        self.cpu = self.cpu.merge(self.elapsed, other.cpu, other.elapsed);
        self.elapsed += other.elapsed;
        self
    }
}

/// Runs one call mix; returns its total row and, for a mix of several
/// operations, one row per operation.
pub async fn run_mix(
    mix: &Mix,
    states: &mut Vec<TaskState>,
    shared: &Arc<Shared>,
    duration: Duration,
    server_pid: Option<u32>,
) -> Vec<Row> {
    rows(mix, drive(mix, states, shared, duration, server_pid).await)
}

/// Every task calls the mix's operations one after another for `duration`.
pub async fn drive(
    mix: &Mix,
    states: &mut Vec<TaskState>,
    shared: &Arc<Shared>,
    duration: Duration,
    server_pid: Option<u32>,
) -> MixRun {
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    let deadline = started + duration;
    let mut handles = Vec::with_capacity(states.len());
    for (task, mut state) in std::mem::take(states).into_iter().enumerate() {
        let shared = Arc::clone(shared);
        let ops = mix.ops.clone();
        handles.push(tokio::spawn(async move {
            let channel = shared.channels[task % shared.channels.len()].clone();
            let mut client = AuthServiceClient::new(channel.clone());
            let mut admin = AdminServiceClient::new(channel.clone());
            let mut health = HealthClient::new(channel);
            let mut stats: Vec<Stats> = ops.iter().map(|_| Stats::default()).collect();
            while Instant::now() < deadline {
                if state.relogin {
                    // Recovery is not timed; the failure was already counted.
                    if let Ok(tokens) = login(&mut client, &shared.accounts[state.account]).await {
                        state.set_tokens(tokens);
                        state.relogin = false;
                    }
                    continue;
                }
                let op = pick(&ops, &mut state.rng);
                let index = ops.iter().position(|(o, _)| *o == op).unwrap_or(0);
                let t = Instant::now();
                let outcome = call(
                    op,
                    task,
                    &mut state,
                    &mut client,
                    &mut admin,
                    &mut health,
                    &shared,
                )
                .await;
                stats[index].record(t, outcome);
            }
            (state, stats, Instant::now())
        }));
    }
    let mut tasks = Vec::new();
    for handle in handles {
        let (state, stats, done) = handle.await.expect("load task panicked");
        states.push(state);
        tasks.push((stats, done));
    }
    MixRun::gather(mix.ops.len(), started, window, tasks)
}

/// The table rows of a run: the total and, for a mix of several
/// operations, one per operation.
pub fn rows(mix: &Mix, run: MixRun) -> Vec<Row> {
    let MixRun {
        mut per_op,
        elapsed,
        cpu,
    } = run;
    let mut rows = Vec::new();
    if mix.ops.len() > 1 {
        let mut all = Stats::default();
        for s in &per_op {
            all.latencies_us.extend_from_slice(&s.latencies_us);
            for (k, v) in &s.errors {
                *all.errors.entry(k.clone()).or_default() += v;
            }
        }
        rows.push(Row::from_stats(mix.name.to_owned(), all, elapsed));
        rows[0].cpu = Some(cpu);
        for ((op, _), s) in mix.ops.iter().zip(per_op) {
            rows.push(Row::from_stats(
                format!("  {}:{}", mix.name, op.name()),
                s,
                elapsed,
            ));
        }
    } else {
        let s = per_op.pop().unwrap_or_default();
        let mut row = Row::from_stats(mix.name.to_owned(), s, elapsed);
        row.cpu = Some(cpu);
        rows.push(row);
    }
    rows
}
