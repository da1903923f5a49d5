//! `auth.v1.AdminService`: thin handlers over the admin use cases, each call
//! written to the audit log (service account, method, target, outcome) and
//! counted in metrics. The credential check already ran (`auth_layer`).

use std::pin::Pin;

use chrono::{DateTime, Utc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::{Request, Response, Status};

use super::auth_layer::service_caller;
use super::convert::timestamp;
use super::key_guard::KeyGuard;
use crate::domain::{FieldReason, Invalid, Scope};
use crate::error::AppError;
use crate::pb::auth::v1::{self as pb, admin_service_server::AdminService};
use crate::pb::paths::{admin_service as admin_paths, method_name};
use crate::service::{Core, RevocationEvent, RevocationKind};

pub struct AdminApi {
    core: Core,
}

impl AdminApi {
    pub fn new(core: Core) -> Self {
        Self { core }
    }

    /// Logs and counts one call, then turns its result into the answer.
    fn audited<T>(
        &self,
        caller: &str,
        method: &'static str,
        target: &str,
        result: Result<T, AppError>,
    ) -> Result<Response<T>, Status> {
        let outcome = outcome_of(&result);
        tracing::info!(
            target: "authd::audit",
            service_account = caller,
            method,
            target_user_id = target,
            outcome,
            "admin call"
        );
        self.core.metrics().admin_call(caller, method, outcome);
        result.map(Response::new).map_err(Status::from)
    }

    /// Like [`Self::audited`] for a call that reads several accounts: the
    /// line names every account it returned (at most a page, 500 ids).
    fn audited_reads<T>(
        &self,
        caller: &str,
        method: &'static str,
        result: Result<(T, Vec<String>), AppError>,
    ) -> Result<Response<T>, Status> {
        let outcome = outcome_of(&result);
        let (count, ids) = match &result {
            Ok((_, ids)) => (ids.len(), ids.join(",")),
            Err(_) => (0, String::new()),
        };
        tracing::info!(
            target: "authd::audit",
            service_account = caller,
            method,
            read_count = count,
            read_user_ids = %ids,
            outcome,
            "admin call"
        );
        self.core.metrics().admin_call(caller, method, outcome);
        result
            .map(|(answer, _)| Response::new(answer))
            .map_err(Status::from)
    }
}

fn outcome_of<T>(result: &Result<T, AppError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(AppError::UserNotFound) => "not_found",
        Err(AppError::Validation(_)) => "invalid_argument",
        Err(AppError::Unavailable(_)) => "unavailable",
        Err(_) => "error",
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Reply<pb::GetUserResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .get_user(&r.user_id)
            .await
            .map(|u| pb::GetUserResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::GET_USER),
            &r.user_id,
            result,
        )
    }

    async fn batch_get_users(
        &self,
        request: Request<pb::BatchGetUsersRequest>,
    ) -> Reply<pb::BatchGetUsersResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self.core.batch_get_users(&r.user_ids).await.map(|users| {
            let ids = users.iter().map(|u| u.id.to_string()).collect();
            let answer = pb::BatchGetUsersResponse {
                users: users.into_iter().map(Into::into).collect(),
            };
            (answer, ids)
        });
        self.audited_reads(&caller.name, method_name(admin_paths::BATCH_GET_USERS), result)
    }

    async fn lookup_user(&self, request: Request<pb::LookupUserRequest>) -> Reply<pb::LookupUserResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self.core.lookup_user(&r.email, &r.username).await;
        // The audit names the account found, never the address looked up.
        let target = result.as_ref().map(|u| u.id.to_string()).unwrap_or_default();
        let result = result.map(|u| pb::LookupUserResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::LOOKUP_USER),
            &target,
            result,
        )
    }

    async fn list_users(&self, request: Request<pb::ListUsersRequest>) -> Reply<pb::ListUsersResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .list_users(r.page_size, &r.page_token)
            .await
            .map(|(users, next)| {
                let ids = users.iter().map(|u| u.id.to_string()).collect();
                let answer = pb::ListUsersResponse {
                    users: users.into_iter().map(Into::into).collect(),
                    next_page_token: next,
                };
                (answer, ids)
            });
        self.audited_reads(&caller.name, method_name(admin_paths::LIST_USERS), result)
    }

    async fn disable_user(&self, request: Request<pb::DisableUserRequest>) -> Reply<pb::DisableUserResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .disable_user(&r.user_id, Utc::now())
            .await
            .map(|u| pb::DisableUserResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::DISABLE_USER),
            &r.user_id,
            result,
        )
    }

    async fn enable_user(&self, request: Request<pb::EnableUserRequest>) -> Reply<pb::EnableUserResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .enable_user(&r.user_id, Utc::now())
            .await
            .map(|u| pb::EnableUserResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::ENABLE_USER),
            &r.user_id,
            result,
        )
    }

    async fn set_user_roles(
        &self,
        request: Request<pb::SetUserRolesRequest>,
    ) -> Reply<pb::SetUserRolesResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .set_user_roles(&r.user_id, &r.roles, Utc::now())
            .await
            .map(|u| pb::SetUserRolesResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::SET_USER_ROLES),
            &r.user_id,
            result,
        )
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<pb::RevokeUserSessionsRequest>,
    ) -> Reply<pb::RevokeUserSessionsResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .revoke_user_sessions(&r.user_id, Utc::now())
            .await
            .map(|n| pb::RevokeUserSessionsResponse {
                revoked_count: i32::try_from(n).unwrap_or(i32::MAX),
            });
        self.audited(
            &caller.name,
            method_name(admin_paths::REVOKE_USER_SESSIONS),
            &r.user_id,
            result,
        )
    }

    type WatchRevocationsStream = RevocationResponses;

    async fn reset_user_factors(
        &self,
        request: Request<pb::ResetUserFactorsRequest>,
    ) -> Reply<pb::ResetUserFactorsResponse> {
        let caller = service_caller(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .reset_user_factors(&r.user_id, Utc::now())
            .await
            .map(|u| pb::ResetUserFactorsResponse { user: Some(u.into()) });
        self.audited(
            &caller.name,
            method_name(admin_paths::RESET_USER_FACTORS),
            &r.user_id,
            result,
        )
    }

    async fn watch_revocations(
        &self,
        request: Request<pb::WatchRevocationsRequest>,
    ) -> Reply<Self::WatchRevocationsStream> {
        let caller = service_caller(&request)?;
        let guard = KeyGuard::of(
            &request,
            self.core.service_keys(),
            Scope::RevocationsWatch,
            method_name(admin_paths::WATCH_REVOCATIONS),
        )?;
        let r = request.get_ref();
        let after = r.after_event_id;
        let include_factor_changes = r.include_factor_changes;
        let result = match r.since.map(instant).transpose() {
            Ok(since) => self.core.watch_revocations(after, since).await,
            Err(e) => Err(e),
        }
        .map(|events| -> RevocationResponses {
            Box::pin(ReceiverStream::new(events).map(move |item| {
                item.map(|e| revocation_event(e, include_factor_changes))
                    .map_err(Status::from)
            }))
        })
        .map(|stream| guard.bind(stream));
        self.audited(
            &caller.name,
            method_name(admin_paths::WATCH_REVOCATIONS),
            "",
            result,
        )
    }
}

/// A request's point in time, or INVALID_ARGUMENT for one no date can be.
fn instant(t: prost_types::Timestamp) -> Result<DateTime<Utc>, AppError> {
    u32::try_from(t.nanos)
        .ok()
        .filter(|nanos| *nanos < 1_000_000_000)
        .and_then(|nanos| DateTime::from_timestamp(t.seconds, nanos))
        .ok_or_else(|| {
            AppError::invalid(
                "since",
                Invalid::new(FieldReason::InvalidFormat, "is not a valid timestamp"),
            )
        })
}

type RevocationResponses = Pin<Box<dyn Stream<Item = Result<pb::WatchRevocationsResponse, Status>> + Send>>;

/// One event on the wire. A subscriber that did not ask for factor changes
/// gets them as a USER_SESSIONS_ENDED naming no session: a kind it does not
/// know could make it distrust tokens, and a skipped id would look like
/// lost events.
fn revocation_event(e: RevocationEvent, include_factor_changes: bool) -> pb::WatchRevocationsResponse {
    let kind = match e.kind {
        RevocationKind::FactorsChanged if include_factor_changes => pb::RevocationKind::FactorsChanged,
        RevocationKind::FactorsChanged | RevocationKind::Other => pb::RevocationKind::UserSessionsEnded,
        RevocationKind::SessionEnded => pb::RevocationKind::SessionEnded,
        RevocationKind::UserSessionsEnded => pb::RevocationKind::UserSessionsEnded,
        RevocationKind::UserDisabled => pb::RevocationKind::UserDisabled,
        RevocationKind::UserDeleted => pb::RevocationKind::UserDeleted,
        RevocationKind::Heartbeat => pb::RevocationKind::Heartbeat,
    };
    let session_ids: Vec<String> = e.session_ids.iter().map(ToString::to_string).collect();
    pb::WatchRevocationsResponse {
        event_id: e.id,
        kind: kind.into(),
        user_id: e.user_id.map(|id| id.to_string()).unwrap_or_default(),
        session_id: match (e.kind, session_ids.as_slice()) {
            (RevocationKind::SessionEnded, [one]) => one.clone(),
            _ => String::new(),
        },
        occurred_at: Some(timestamp(e.occurred_at)),
        session_ids,
    }
}
