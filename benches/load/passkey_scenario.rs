//! The passkey-login scenario: a passwordless login, StartPasskeyLogin +
//! FinishPasskeyLogin with a discoverable credential (no username typed),
//! counted as one login, in turns with Login (password, argon2) alone on
//! the task accounts (legs in the scale run's balanced order, A B B A B A A
//! B, each a quarter of `--duration`), so that both are measured under the
//! same noise of this shared machine and their ratio means something.
//!
//! Setup registers, through the API, one account per task and one passkey
//! for each (Register, Login, StartPasskeyRegistration,
//! FinishPasskeyRegistration): the task accounts keep no factor, so the
//! password scenarios and the burst still log in with a password alone.
//!
//! The authenticator is webauthn-rs's own software passkey (`SoftPasskey`
//! of webauthn-authenticator-rs, as in the tests' kit, which lives with the
//! test harness; the few lines that speak the browser's JSON are repeated
//! here). A task answers with its own key, one ceremony after another, so
//! its signature counter only moves forward. It answers as a page on
//! authd's default origin (AUTHD_WEBAUTHN_ORIGINS, http://localhost:3000).
//!
//! Each task is a client of its own address, sent in `x-forwarded-for`
//! (the generator starts authd with AUTHD_TRUSTED_PROXY_HEADER set to it):
//! authd charges every passkey ceremony on a counter of its client's
//! address before checking it and forgives it on success, so more than
//! ten logins in flight from one address are refused as THROTTLED,
//! however good their answers (BENCHMARKS.md, Passkeys).

use std::sync::Arc;
use std::time::{Duration, Instant};

use authd::grpc::convert::{json_to_struct, struct_to_json};
use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use serde_json::{Value, json};
use tokio::sync::Mutex;
use tonic::transport::Channel;
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::client::{authorization, bearer, call_each, code_label};
use crate::procfs::CpuWindow;
use crate::scale::paired::ORDER;
use crate::scenarios::{self, Mix, MixRun, Op};
use crate::seeding::{Shared, TaskState};
use crate::stats::{Row, Stats};

/// The page the ceremonies run in: authd's default AUTHD_WEBAUTHN_ORIGINS.
const ORIGIN: &str = "http://localhost:3000";
/// The header the clients' addresses travel in.
pub const FORWARDED: &str = "x-forwarded-for";

/// `message` as sent by client number `n`, from an address of its own.
fn from_client<T>(mut request: tonic::Request<T>, n: usize) -> tonic::Request<T> {
    let address = format!("10.77.{}.{}", (n / 256) % 256, n % 256);
    request
        .metadata_mut()
        .insert(FORWARDED, address.parse().expect("an IPv4 address is ASCII"));
    request
}

pub struct Settings {
    pub duration: Duration,
    pub concurrency: usize,
}

pub struct Outcome {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// A software authenticator holding one passkey, for one account.
struct Key {
    authenticator: SoftPasskey,
    origin: Url,
    /// base64url credential id and the user handle it was made for.
    credential_id: String,
    user_handle: String,
}

impl Key {
    /// `navigator.credentials.create` on authd's options: the new key and
    /// the credential's `toJSON()`.
    fn create(options: &prost_types::Struct) -> Result<(Self, Value), String> {
        let public_key = struct_to_json(options.clone());
        let user_handle = public_key["user"]["id"]
            .as_str()
            .ok_or("creation options without user.id")?
            .to_owned();
        let ccr: CreationChallengeResponse = serde_json::from_value(json!({ "publicKey": public_key }))
            .map_err(|e| format!("creation options: {e}"))?;
        let origin = Url::parse(ORIGIN).map_err(|e| e.to_string())?;
        // `true`: the authenticator says it verified its user.
        let mut authenticator = SoftPasskey::new(true);
        let credential = authenticator
            .do_registration(origin.clone(), ccr)
            .map_err(|e| format!("SoftPasskey registration: {e:?}"))?;
        let credential = serde_json::to_value(&credential).map_err(|e| e.to_string())?;
        let credential_id = credential["id"]
            .as_str()
            .ok_or("credential without id")?
            .to_owned();
        let key = Self {
            authenticator,
            origin,
            credential_id,
            user_handle,
        };
        Ok((key, credential))
    }

    /// `navigator.credentials.get` on a discoverable ceremony's options:
    /// the assertion's `toJSON()`. `SoftPasskey` signs only for credentials
    /// the options name and keeps no user handle, so the key names its
    /// credential and adds the handle, as a browser's authenticator does
    /// for a resident credential (the handle is not signed).
    fn get(&mut self, options: &prost_types::Struct) -> Result<prost_types::Struct, String> {
        let mut public_key = struct_to_json(options.clone());
        public_key["allowCredentials"] = json!([{"type": "public-key", "id": self.credential_id}]);
        let rcr: RequestChallengeResponse = serde_json::from_value(json!({ "publicKey": public_key }))
            .map_err(|e| format!("request options: {e}"))?;
        let assertion = self
            .authenticator
            .do_authentication(self.origin.clone(), rcr)
            .map_err(|e| format!("SoftPasskey assertion: {e:?}"))?;
        let mut assertion = serde_json::to_value(&assertion).map_err(|e| e.to_string())?;
        assertion["response"]["userHandle"] = Value::String(self.user_handle.clone());
        Ok(json_to_struct(assertion))
    }
}

pub async fn run(
    shared: &Arc<Shared>,
    states: &mut Vec<TaskState>,
    settings: &Settings,
    server_pid: Option<u32>,
) -> Outcome {
    let (keys, setup_note) = prepare(shared, settings.concurrency).await;
    let keys: Arc<Vec<Mutex<Key>>> = Arc::new(keys.into_iter().map(Mutex::new).collect());

    let alone = Mix {
        name: "passkey-login: password login alone",
        ops: vec![(Op::Login, 100)],
    };
    let leg = settings.duration / 4;
    let mut runs: [Option<MixRun>; 2] = [None, None];
    for side in ORDER {
        let run = if side == 0 {
            scenarios::drive(&alone, states, shared, leg, server_pid).await
        } else {
            drive_pairs(&keys, shared, leg, server_pid).await
        };
        runs[side] = Some(match runs[side].take() {
            Some(earlier) => earlier.merge(run),
            None => run,
        });
    }
    let [alone_run, pairs_run] = runs.map(|r| r.expect("both kinds of leg ran"));
    let mut rows = scenarios::rows(&alone, alone_run);
    rows.extend(pairs_run.pair_rows([
        "passkey-login: start + finish",
        "  passkey-login: StartPasskeyLogin",
        "  passkey-login: FinishPasskeyLogin",
    ]));
    let mut notes = vec![setup_note];
    notes.extend(ratios(&rows));
    Outcome { rows, notes }
}

/// One account and one registered passkey per task. Panics if any step
/// fails: without them there is nothing to measure.
async fn prepare(shared: &Shared, n: usize) -> (Vec<Key>, String) {
    let started = Instant::now();
    let batch = format!(
        "pk-{}-{}",
        shared.run_id,
        &uuid::Uuid::new_v4().simple().to_string()[..6]
    );
    let accounts: Vec<(usize, String, String)> = (0..n)
        .map(|i| {
            (
                i,
                format!("{batch}-{i}@example.com"),
                format!("load test passphrase {}", uuid::Uuid::new_v4()),
            )
        })
        .collect();
    let answers = call_each(
        &shared.channels,
        &accounts,
        n,
        |mut client, (i, email, password)| async move {
            client
                .register(pb::RegisterRequest {
                    email: email.clone(),
                    password: password.clone(),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("Register: {}", code_label(&s)))?;
            let tokens = client
                .login(pb::LoginRequest {
                    login: email,
                    password,
                })
                .await
                .map_err(|s| format!("Login: {}", code_label(&s)))?
                .into_inner()
                .tokens
                .ok_or("Login: no tokens")?;
            let signed_in = Instant::now();
            let key = register(&mut client, &tokens.access_token, i).await?;
            Ok::<_, String>((key, signed_in.elapsed()))
        },
    )
    .await;
    let mut keys = Vec::with_capacity(n);
    let mut registering = Duration::ZERO;
    for answer in answers {
        let (key, took) =
            answer.unwrap_or_else(|e| panic!("passkey-login: setting up an account failed: {e}"));
        keys.push(key);
        registering += took;
    }
    let note = format!(
        "passkey-login: set up {n} accounts with one passkey each in {:.1} s (Register + Login + \
         StartPasskeyRegistration + FinishPasskeyRegistration each; the two passkey calls took {:.1} ms \
         on average, with the software authenticator); a login is StartPasskeyLogin + FinishPasskeyLogin \
         with a discoverable credential (no username typed), one ECDSA P-256 signature made by the load \
         generator",
        started.elapsed().as_secs_f64(),
        registering.as_secs_f64() * 1000.0 / n.max(1) as f64,
    );
    (keys, note)
}

async fn register(client: &mut AuthServiceClient<Channel>, access: &str, n: usize) -> Result<Key, String> {
    let authorization = authorization(access);
    let started = client
        .start_passkey_registration(from_client(
            bearer(
                pb::StartPasskeyRegistrationRequest {
                    name: "Load test key".into(),
                },
                &authorization,
            ),
            n,
        ))
        .await
        .map_err(|s| format!("StartPasskeyRegistration: {}", code_label(&s)))?
        .into_inner();
    let options = started.options.ok_or("StartPasskeyRegistration: no options")?;
    let (key, credential) = Key::create(&options)?;
    client
        .finish_passkey_registration(from_client(
            bearer(
                pb::FinishPasskeyRegistrationRequest {
                    ceremony_id: started.ceremony_id,
                    credential: Some(json_to_struct(credential)),
                },
                &authorization,
            ),
            n,
        ))
        .await
        .map_err(|s| format!("FinishPasskeyRegistration: {}", code_label(&s)))?;
    Ok(key)
}

/// Which of a leg's [`Stats`] holds what.
const PAIR: usize = 0;
const START: usize = 1;
const FINISH: usize = 2;

/// One task per key logs in with it, one login after another, for
/// `duration`.
async fn drive_pairs(
    keys: &Arc<Vec<Mutex<Key>>>,
    shared: &Arc<Shared>,
    duration: Duration,
    server_pid: Option<u32>,
) -> MixRun {
    let window = CpuWindow::open(server_pid);
    let started = window.started();
    let deadline = started + duration;
    let mut handles = Vec::with_capacity(keys.len());
    for task in 0..keys.len() {
        let (keys, shared) = (Arc::clone(keys), Arc::clone(shared));
        handles.push(tokio::spawn(async move {
            let mut client = AuthServiceClient::new(shared.channels[task % shared.channels.len()].clone());
            let mut key = keys[task].lock().await;
            let mut stats: [Stats; 3] = Default::default();
            while Instant::now() < deadline {
                passkey_login(&mut client, &mut key, task, &mut stats).await;
            }
            (stats, Instant::now())
        }));
    }
    let mut tasks = Vec::new();
    for handle in handles {
        tasks.push(handle.await.expect("passkey-login task panicked"));
    }
    MixRun::gather(3, started, window, tasks)
}

/// One passkey login, timed as a pair and each call alone (the
/// authenticator's signature is in the pair, not in either call).
async fn passkey_login(
    client: &mut AuthServiceClient<Channel>,
    key: &mut Key,
    task: usize,
    stats: &mut [Stats; 3],
) {
    let t = Instant::now();
    let started = match client
        .start_passkey_login(from_client(
            tonic::Request::new(pb::StartPasskeyLoginRequest::default()),
            task,
        ))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            stats[START].error(code_label(&s));
            stats[PAIR].error(code_label(&s));
            return;
        }
    };
    stats[START].record(t, Ok(()));
    let assertion = match started.options.as_ref().ok_or_else(|| "no_options".to_owned()) {
        Ok(options) => key.get(options),
        Err(e) => Err(e),
    };
    let assertion = match assertion {
        Ok(a) => a,
        Err(e) => {
            stats[PAIR].error(format!("authenticator: {e}"));
            return;
        }
    };
    let second = Instant::now();
    let answer = client
        .finish_passkey_login(from_client(
            tonic::Request::new(pb::FinishPasskeyLoginRequest {
                ceremony_id: started.ceremony_id,
                credential: Some(assertion),
            }),
            task,
        ))
        .await;
    let outcome = match answer {
        Ok(r) if r.get_ref().tokens.is_some() => Ok(()),
        Ok(_) => Err("no_tokens".to_owned()),
        Err(s) => Err(code_label(&s)),
    };
    stats[FINISH].record(second, outcome.clone());
    stats[PAIR].record(t, outcome);
}

/// The passkey login against the password login, measured in turns.
fn ratios(rows: &[Row]) -> Vec<String> {
    let find = |prefix: &str| rows.iter().find(|r| r.name.trim_start().starts_with(prefix));
    let (Some(alone), Some(pair), Some(start), Some(finish)) = (
        find("passkey-login: password login alone"),
        find("passkey-login: start + finish"),
        find("passkey-login: StartPasskeyLogin"),
        find("passkey-login: FinishPasskeyLogin"),
    ) else {
        return Vec::new();
    };
    let cpu = match (pair.authd_us_per_call(), alone.authd_us_per_call()) {
        (Some(p), Some(a)) => format!("; authd CPU per login {p:.0} / {a:.0} µs = {:.3}", p / a),
        _ => String::new(),
    };
    vec![
        format!(
            "passkey-login: passkey logins (start + finish) / password Logins, legs in turns: {:.1} / {:.1} \
             logins/s = {:.2}; p99 {:.2} / {:.2} ms = {:.3}{cpu}",
            pair.calls_per_sec,
            alone.calls_per_sec,
            pair.calls_per_sec / alone.calls_per_sec,
            pair.p99_ms,
            alone.p99_ms,
            pair.p99_ms / alone.p99_ms,
        ),
        format!(
            "passkey-login: StartPasskeyLogin p50 {:.2} ms, p99 {:.2} ms; FinishPasskeyLogin p50 {:.2} ms, \
             p99 {:.2} ms; Login p50 {:.2} ms, p99 {:.2} ms",
            start.p50_ms, start.p99_ms, finish.p50_ms, finish.p99_ms, alone.p50_ms, alone.p99_ms,
        ),
    ]
}
