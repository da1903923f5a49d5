//! `auth.v1.AuthService`: each handler converts its request, calls the use
//! case with the current time, and converts the answer. No logic lives here.

use super::outcomes::CountResults;
use chrono::Utc;
use tonic::{Request, Response, Status};

use super::auth_layer::{bearer, service_caller};
use super::convert::{complete_login_proof, json_to_struct, step_up_proof, struct_to_json, timestamp};
use super::rate_limit::{client_address, client_ip};
use crate::domain::ClientInfo;
use crate::error::AppError;
use crate::metrics::ThrottleKind;
use crate::pb::auth::v1::{self as pb, auth_service_server::AuthService};
use crate::pb::paths::{auth_service, method_name};
use crate::service::{Core, Introspection, LoginAnswer, ProfileValues, RegisterInput, UpdateMeInput};

pub struct AuthApi {
    core: Core,
    /// Where a gateway puts the client's address, for per-client limits.
    trusted_proxy_header: Option<http::HeaderName>,
}

impl AuthApi {
    /// Where a session starts from: the user agent and the client address.
    fn client_info<T>(&self, request: &Request<T>) -> ClientInfo {
        ClientInfo::new(
            request
                .metadata()
                .get(http::header::USER_AGENT.as_str())
                .and_then(|v| v.to_str().ok()),
            client_ip(request, self.trusted_proxy_header.as_ref()),
        )
    }

    pub fn new(core: Core, trusted_proxy_header: Option<http::HeaderName>) -> Self {
        Self {
            core,
            trusted_proxy_header,
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

/// ExchangeToken's parameters, parsed as the HTTP token endpoint parses its
/// form.
fn parse_grant(r: &pb::ExchangeTokenRequest) -> Result<crate::domain::Grant, AppError> {
    Ok(crate::domain::Grant::parse(crate::domain::TokenRequestFields {
        grant_type: &r.grant_type,
        audience: &r.audience,
        scope: &r.scope,
        subject_token: &r.subject_token,
        subject_token_type: &r.subject_token_type,
        requested_subject: &r.requested_subject,
    })?)
}

/// Which service asked about whom: the answer, and when the token is active
/// its user and session, never the token.
fn audit_introspection(caller: &str, answer: &Result<Introspection, AppError>) {
    let (outcome, user_id, session_id) = match answer {
        Ok(Introspection::Active { token, .. }) => {
            ("active", token.user_id.to_string(), token.session_id.to_string())
        }
        Ok(Introspection::Service(token)) => ("active", token.name.clone(), String::new()),
        Ok(Introspection::Inactive) => ("inactive", String::new(), String::new()),
        Err(AppError::Validation(_)) => ("invalid_argument", String::new(), String::new()),
        Err(AppError::Unavailable(_)) => ("unavailable", String::new(), String::new()),
        Err(_) => ("error", String::new(), String::new()),
    };
    tracing::info!(
        target: "authd::audit",
        service_account = caller,
        method = method_name(auth_service::INTROSPECT_TOKEN),
        outcome,
        user_id = %user_id,
        session_id = %session_id,
        "token introspected"
    );
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Reply<pb::RegisterResponse> {
        let r = request.into_inner();
        let input = RegisterInput {
            email: r.email,
            password: r.password,
            username: r.username,
            full_name: r.full_name,
            phone: r.phone,
            image_url: r.image_url,
        };
        let user = self.core.register(input, Utc::now()).await?;
        Ok(Response::new(pb::RegisterResponse {
            user: Some(user.into()),
        }))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Reply<pb::LoginResponse> {
        let client = self.client_info(&request);
        let r = request.into_inner();
        let result = self.core.login(&r.login, &r.password, &client, Utc::now()).await;
        self.core.metrics().count_login(&result);
        Ok(Response::new(match result? {
            LoginAnswer::Session {
                tokens,
                user,
                mfa_enrollment_required,
            } => pb::LoginResponse {
                tokens: Some(tokens.into()),
                user: Some(user.into()),
                mfa_required: None,
                mfa_enrollment_required,
            },
            LoginAnswer::SecondFactorDue { challenge, user } => pb::LoginResponse {
                tokens: None,
                user: Some(user.into()),
                mfa_required: Some(challenge.into()),
                mfa_enrollment_required: false,
            },
        }))
    }

    async fn refresh(&self, request: Request<pb::RefreshRequest>) -> Reply<pb::RefreshResponse> {
        let result = self
            .core
            .refresh(&request.get_ref().refresh_token, Utc::now())
            .await;
        self.core.metrics().count_refresh(&result);
        let tokens = result?;
        Ok(Response::new(pb::RefreshResponse {
            tokens: Some(tokens.into()),
        }))
    }

    async fn logout(&self, request: Request<pb::LogoutRequest>) -> Reply<pb::LogoutResponse> {
        self.core
            .logout(&request.get_ref().refresh_token, Utc::now())
            .await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn forgot_password(
        &self,
        request: Request<pb::ForgotPasswordRequest>,
    ) -> Reply<pb::ForgotPasswordResponse> {
        self.core
            .forgot_password(&request.get_ref().email, Utc::now())
            .await?;
        Ok(Response::new(pb::ForgotPasswordResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Reply<pb::ResetPasswordResponse> {
        let client = client_address(&request, self.trusted_proxy_header.as_ref()).map(|c| c.0);
        let r = request.into_inner();
        let result = self
            .core
            .reset_password(&r.token, &r.new_password, client, Utc::now())
            .await;
        self.core
            .metrics()
            .count_throttle(ThrottleKind::ResetGuesses, &result);
        result?;
        Ok(Response::new(pb::ResetPasswordResponse {}))
    }

    async fn get_me(&self, request: Request<pb::GetMeRequest>) -> Reply<pb::GetMeResponse> {
        let bearer = bearer(&request)?;
        let assurance = pb::Assurance::from(&bearer.assurance);
        let mfa_enrollment_required = bearer.mfa_enrollment_required;
        let user = self.core.get_me(bearer, Utc::now()).await?;
        Ok(Response::new(pb::GetMeResponse {
            user: Some(pb::User::from(&*user)),
            assurance: Some(assurance),
            mfa_enrollment_required,
        }))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Reply<pb::ChangePasswordResponse> {
        let who = bearer(&request)?;
        let r = request.into_inner();
        let result = self
            .core
            .change_password(who, &r.current_password, &r.new_password, Utc::now())
            .await;
        self.core
            .metrics()
            .count_throttle(ThrottleKind::LoginBackoff, &result);
        let tokens = result?;
        Ok(Response::new(pb::ChangePasswordResponse {
            tokens: Some(tokens.into()),
        }))
    }

    async fn get_jwks(&self, _request: Request<pb::GetJwksRequest>) -> Reply<pb::GetJwksResponse> {
        let keys = self
            .core
            .public_keys()
            .map(|k| pb::Jwk {
                kid: k.kid.clone(),
                kty: k.kty.into(),
                crv: k.crv.into(),
                x: k.x.clone(),
                y: k.y.clone(),
                n: String::new(),
                e: String::new(),
                alg: k.alg.into(),
                r#use: k.use_.into(),
            })
            .collect();
        Ok(Response::new(pb::GetJwksResponse {
            keys,
            jwks_json: self.core.jwks_json().to_owned(),
        }))
    }

    async fn introspect_token(
        &self,
        request: Request<pb::IntrospectTokenRequest>,
    ) -> Reply<pb::IntrospectTokenResponse> {
        let caller = service_caller(&request)?;
        let answer = self
            .core
            .introspect(&request.get_ref().access_token, Utc::now())
            .await;
        audit_introspection(&caller.name, &answer);
        Ok(Response::new(match answer? {
            Introspection::Inactive => pb::IntrospectTokenResponse::default(),
            Introspection::Active { token, claims, user } => pb::IntrospectTokenResponse {
                active: true,
                user_id: token.user_id.to_string(),
                session_id: token.session_id.to_string(),
                expires_at: chrono::DateTime::from_timestamp(token.expires_at, 0).map(timestamp),
                roles: token.roles.to_vec(),
                disabled: user.disabled,
                assurance: Some(pb::Assurance::from(&token.assurance)),
                audience: claims.aud,
                client_id: claims.client_id.unwrap_or_default(),
                scope: String::new(),
                actors: claims
                    .act
                    .map(|act| act.chain().into_iter().map(str::to_owned).collect())
                    .unwrap_or_default(),
            },
            Introspection::Service(token) => pb::IntrospectTokenResponse {
                active: true,
                expires_at: chrono::DateTime::from_timestamp(token.expires_at, 0).map(timestamp),
                audience: token.audience,
                client_id: token.name,
                scope: token.scopes.join(" "),
                ..Default::default()
            },
        }))
    }

    async fn send_verification_email(
        &self,
        request: Request<pb::SendVerificationEmailRequest>,
    ) -> Reply<pb::SendVerificationEmailResponse> {
        self.core
            .send_verification_email(bearer(&request)?, Utc::now())
            .await?;
        Ok(Response::new(pb::SendVerificationEmailResponse {}))
    }

    async fn verify_email(&self, request: Request<pb::VerifyEmailRequest>) -> Reply<pb::VerifyEmailResponse> {
        let client = client_address(&request, self.trusted_proxy_header.as_ref()).map(|c| c.0);
        let user = self
            .core
            .verify_email(&request.get_ref().token, client, Utc::now())
            .await?;
        Ok(Response::new(pb::VerifyEmailResponse {
            user: Some(user.into()),
        }))
    }

    async fn update_me(&self, request: Request<pb::UpdateMeRequest>) -> Reply<pb::UpdateMeResponse> {
        let who = bearer(&request)?;
        let r = request.into_inner();
        let input = UpdateMeInput {
            values: r.user.map(|u| ProfileValues {
                username: u.username,
                full_name: u.full_name,
                phone: u.phone,
                image_url: u.image_url,
            }),
            paths: r.update_mask.map(|m| m.paths).unwrap_or_default(),
        };
        let user = self.core.update_me(who, input, Utc::now()).await?;
        Ok(Response::new(pb::UpdateMeResponse {
            user: Some(user.into()),
        }))
    }

    async fn change_email(&self, request: Request<pb::ChangeEmailRequest>) -> Reply<pb::ChangeEmailResponse> {
        let who = bearer(&request)?;
        let r = request.into_inner();
        self.core
            .change_email(who, &r.new_email, &r.current_password, Utc::now())
            .await?;
        Ok(Response::new(pb::ChangeEmailResponse {}))
    }

    async fn delete_me(&self, request: Request<pb::DeleteMeRequest>) -> Reply<pb::DeleteMeResponse> {
        let who = bearer(&request)?;
        self.core
            .delete_me(who, &request.get_ref().current_password, Utc::now())
            .await?;
        Ok(Response::new(pb::DeleteMeResponse {}))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let sessions = self
            .core
            .list_sessions(bearer(&request)?, Utc::now())
            .await?
            .into_iter()
            .map(|own| pb::Session {
                id: own.session.id.to_string(),
                created_at: Some(timestamp(own.session.created_at)),
                last_used_at: Some(timestamp(own.session.last_used_at)),
                expires_at: Some(timestamp(own.session.expires_at)),
                user_agent: own.session.user_agent.unwrap_or_default(),
                ip_address: own.session.ip_address.unwrap_or_default(),
                current: own.current,
            })
            .collect();
        Ok(Response::new(pb::ListSessionsResponse { sessions }))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Reply<pb::RevokeSessionResponse> {
        self.core
            .revoke_session(bearer(&request)?, &request.get_ref().session_id, Utc::now())
            .await?;
        Ok(Response::new(pb::RevokeSessionResponse {}))
    }

    async fn revoke_other_sessions(
        &self,
        request: Request<pb::RevokeOtherSessionsRequest>,
    ) -> Reply<pb::RevokeOtherSessionsResponse> {
        let ended = self
            .core
            .revoke_other_sessions(bearer(&request)?, Utc::now())
            .await?;
        Ok(Response::new(pb::RevokeOtherSessionsResponse {
            revoked_count: i32::try_from(ended).unwrap_or(i32::MAX),
        }))
    }

    async fn complete_login(
        &self,
        request: Request<pb::CompleteLoginRequest>,
    ) -> Reply<pb::CompleteLoginResponse> {
        let client = self.client_info(&request);
        let r = request.into_inner();
        let result = self
            .core
            .complete_login(&r.mfa_token, complete_login_proof(r.proof), &client, Utc::now())
            .await;
        self.core.metrics().count_login(&result);
        let (tokens, user) = result?;
        Ok(Response::new(pb::CompleteLoginResponse {
            tokens: Some(tokens.into()),
            user: Some(user.into()),
        }))
    }

    async fn enroll_totp(&self, request: Request<pb::EnrollTotpRequest>) -> Reply<pb::EnrollTotpResponse> {
        let bearer = bearer(&request)?;
        let e = self
            .core
            .enroll_totp(bearer, &request.get_ref().name, Utc::now())
            .await?;
        Ok(Response::new(pb::EnrollTotpResponse {
            enrollment_id: e.id.to_string(),
            secret: e.secret_base32.to_string(),
            otpauth_uri: e.otpauth_uri.to_string(),
            expires_at: Some(timestamp(e.expires_at)),
        }))
    }

    async fn confirm_totp(&self, request: Request<pb::ConfirmTotpRequest>) -> Reply<pb::ConfirmTotpResponse> {
        let bearer = bearer(&request)?;
        let r = request.get_ref();
        let result = self
            .core
            .confirm_totp(bearer, &r.enrollment_id, &r.code, Utc::now())
            .await;
        self.core
            .metrics()
            .count_throttle(ThrottleKind::LoginBackoff, &result);
        let (factor, codes) = result?;
        Ok(Response::new(pb::ConfirmTotpResponse {
            factor: Some(factor.into()),
            recovery_codes: codes.iter().map(|c| c.to_string()).collect(),
        }))
    }

    async fn list_factors(&self, request: Request<pb::ListFactorsRequest>) -> Reply<pb::ListFactorsResponse> {
        let (factors, codes_left) = self.core.list_factors(bearer(&request)?, Utc::now()).await?;
        Ok(Response::new(pb::ListFactorsResponse {
            factors: factors.into_iter().map(Into::into).collect(),
            recovery_codes_left: i32::try_from(codes_left).unwrap_or(i32::MAX),
        }))
    }

    async fn remove_factor(
        &self,
        request: Request<pb::RemoveFactorRequest>,
    ) -> Reply<pb::RemoveFactorResponse> {
        let bearer = bearer(&request)?;
        self.core
            .remove_factor(bearer, &request.get_ref().factor_id, Utc::now())
            .await?;
        Ok(Response::new(pb::RemoveFactorResponse {}))
    }

    async fn regenerate_recovery_codes(
        &self,
        request: Request<pb::RegenerateRecoveryCodesRequest>,
    ) -> Reply<pb::RegenerateRecoveryCodesResponse> {
        let codes = self
            .core
            .regenerate_recovery_codes(bearer(&request)?, Utc::now())
            .await?;
        Ok(Response::new(pb::RegenerateRecoveryCodesResponse {
            recovery_codes: codes.iter().map(|c| c.to_string()).collect(),
        }))
    }

    async fn step_up(&self, request: Request<pb::StepUpRequest>) -> Reply<pb::StepUpResponse> {
        let bearer = bearer(&request)?;
        let proof = step_up_proof(request.into_inner().proof);
        let result = self.core.step_up(bearer, proof, Utc::now()).await;
        self.core
            .metrics()
            .count_throttle(ThrottleKind::LoginBackoff, &result);
        let stepped = result?;
        Ok(Response::new(pb::StepUpResponse {
            access_token: stepped.access_token,
            expires_in: i64::try_from(stepped.expires_in.as_secs()).unwrap_or(i64::MAX),
        }))
    }

    async fn start_passkey_registration(
        &self,
        request: Request<pb::StartPasskeyRegistrationRequest>,
    ) -> Reply<pb::StartPasskeyRegistrationResponse> {
        let bearer = bearer(&request)?;
        let c = self
            .core
            .start_passkey_registration(bearer, &request.get_ref().name, Utc::now())
            .await?;
        Ok(Response::new(pb::StartPasskeyRegistrationResponse {
            ceremony_id: c.ceremony_id,
            options: Some(json_to_struct(c.options)),
            expires_at: Some(timestamp(c.expires_at)),
        }))
    }

    async fn finish_passkey_registration(
        &self,
        request: Request<pb::FinishPasskeyRegistrationRequest>,
    ) -> Reply<pb::FinishPasskeyRegistrationResponse> {
        let bearer = bearer(&request)?;
        let client = client_address(&request, self.trusted_proxy_header.as_ref()).map(|c| c.0);
        let r = request.into_inner();
        let result = self
            .core
            .finish_passkey_registration(
                bearer,
                &r.ceremony_id,
                r.credential.map(struct_to_json),
                client,
                Utc::now(),
            )
            .await?;
        let (factor, codes) = result;
        Ok(Response::new(pb::FinishPasskeyRegistrationResponse {
            factor: Some(factor.into()),
            recovery_codes: codes.iter().map(|c| c.to_string()).collect(),
        }))
    }

    async fn start_passkey_login(
        &self,
        request: Request<pb::StartPasskeyLoginRequest>,
    ) -> Reply<pb::StartPasskeyLoginResponse> {
        let c = self
            .core
            .start_passkey_login(&request.get_ref().login, Utc::now())
            .await?;
        Ok(Response::new(pb::StartPasskeyLoginResponse {
            ceremony_id: c.ceremony_id,
            options: Some(json_to_struct(c.options)),
            expires_at: Some(timestamp(c.expires_at)),
        }))
    }

    async fn finish_passkey_login(
        &self,
        request: Request<pb::FinishPasskeyLoginRequest>,
    ) -> Reply<pb::FinishPasskeyLoginResponse> {
        let client = self.client_info(&request);
        // Failures are charged on the client's group (an IPv6 /64), as
        // every per-client budget is; the session records the address.
        let charged = client_address(&request, self.trusted_proxy_header.as_ref()).map(|c| c.0);
        let r = request.into_inner();
        let result = self
            .core
            .finish_passkey_login(
                &r.ceremony_id,
                r.credential.map(struct_to_json),
                &client,
                charged,
                Utc::now(),
            )
            .await;
        // A throttled passkey login was counted by its own kind of limit
        // (per client), not the password's back-off.
        if !matches!(result, Err(AppError::Throttled(_))) {
            self.core.metrics().count_login(&result);
        }
        let (tokens, user) = result?;
        Ok(Response::new(pb::FinishPasskeyLoginResponse {
            tokens: Some(tokens.into()),
            user: Some(user.into()),
        }))
    }

    async fn exchange_token(
        &self,
        request: Request<pb::ExchangeTokenRequest>,
    ) -> Reply<pb::ExchangeTokenResponse> {
        let caller = service_caller(&request)?;
        let client = self.client_info(&request);
        let r = request.into_inner();
        let grant = parse_grant(&r)?;
        let granted = self.core.grant_token(&caller, grant, &client, Utc::now()).await?;
        Ok(Response::new(pb::ExchangeTokenResponse {
            access_token: granted.access_token,
            issued_token_type: granted
                .issued_token_type
                .unwrap_or(crate::domain::token_request::TOKEN_TYPE_ACCESS)
                .to_owned(),
            token_type: "Bearer".into(),
            expires_in: i64::try_from(granted.expires_in.as_secs()).unwrap_or(i64::MAX),
            scope: granted.scope,
        }))
    }
}
