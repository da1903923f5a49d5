//! gRPC plumbing shared by every scenario: connections, bearer metadata,
//! and the calls whose answers need more than "OK" to count as a success.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use authd::pb::auth::v1::{self as pb, auth_service_client::AuthServiceClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic_types::StatusExt;

/// `n` HTTP/2 connections to `addr`.
pub async fn connect(addr: &str, n: usize) -> Vec<Channel> {
    let mut channels = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = Endpoint::from_shared(addr.to_owned())
            .expect("server address")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connecting to authd");
        channels.push(channel);
    }
    channels
}

/// The label a failed call is counted under: its gRPC code.
pub fn code_label(status: &tonic::Status) -> String {
    format!("{:?}", status.code())
}

/// `Bearer <access>`, parsed once per token rather than once per call.
pub fn authorization(access_token: &str) -> MetadataValue<Ascii> {
    format!("Bearer {access_token}").parse().unwrap()
}

pub fn bearer<T>(message: T, authorization: &MetadataValue<Ascii>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", authorization.clone());
    request
}

pub struct Account {
    pub email: String,
    pub password: String,
}

pub async fn login(
    client: &mut AuthServiceClient<Channel>,
    account: &Account,
) -> Result<pb::TokenPair, String> {
    let response = client
        .login(pb::LoginRequest {
            login: account.email.clone(),
            password: account.password.clone(),
        })
        .await
        .map_err(|s| code_label(&s))?;
    response.into_inner().tokens.ok_or_else(|| "no_tokens".to_owned())
}

/// GetMe; a success must name a user.
pub async fn get_me(
    client: &mut AuthServiceClient<Channel>,
    authorization: &MetadataValue<Ascii>,
) -> Result<(), String> {
    let r = client
        .get_me(bearer(pb::GetMeRequest {}, authorization))
        .await
        .map_err(|s| code_label(&s))?;
    match r.into_inner().user {
        Some(_) => Ok(()),
        None => Err("no_user".into()),
    }
}

/// GetMe of a session that may have ended: `Ok(true)` if authd still
/// answers with its user, `Ok(false)` if authd says the session has ended
/// (UNAUTHENTICATED with reason SESSION_REVOKED), and any other answer as
/// the label it is counted under.
pub async fn session_still_answers(
    client: &mut AuthServiceClient<Channel>,
    authorization: &MetadataValue<Ascii>,
) -> Result<bool, String> {
    match client.get_me(bearer(pb::GetMeRequest {}, authorization)).await {
        Ok(r) if r.get_ref().user.is_some() => Ok(true),
        Ok(_) => Err("no_user".into()),
        Err(s) => {
            let reason = s.get_details_error_info().map(|i| i.reason);
            if s.code() == tonic::Code::Unauthenticated
                && reason.as_deref() == Some(pb::ErrorReason::SessionRevoked.as_str_name())
            {
                Ok(false)
            } else {
                Err(match reason {
                    Some(r) => format!("{}/{r}", code_label(&s)),
                    None => code_label(&s),
                })
            }
        }
    }
}

/// One call per item with `concurrency` calls in flight over `channels`;
/// the answers come back in the order of the items.
pub async fn call_each<T, R, F, Fut>(channels: &[Channel], items: &[T], concurrency: usize, call: F) -> Vec<R>
where
    T: Clone + Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(AuthServiceClient<Channel>, T) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = R> + Send,
{
    let items: Arc<Vec<T>> = Arc::new(items.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..concurrency.min(items.len()) {
        let (items, next, call) = (Arc::clone(&items), Arc::clone(&next), call.clone());
        let client = AuthServiceClient::new(channels[w % channels.len()].clone());
        workers.push(tokio::spawn(async move {
            let mut answers = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return answers;
                };
                answers.push((i, call(client.clone(), item.clone()).await));
            }
        }));
    }
    let mut answers: Vec<Option<R>> = std::iter::repeat_with(|| None).take(items.len()).collect();
    for w in workers {
        for (i, answer) in w.await.expect("call task panicked") {
            answers[i] = Some(answer);
        }
    }
    answers
        .into_iter()
        .map(|a| a.expect("every item was called"))
        .collect()
}
