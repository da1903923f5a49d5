//! Who may call each RPC, and whether the per-client limit applies: one
//! table, keyed by the generated method paths. A method the table does not
//! name gets the strictest policy (a user's bearer and the limit), so a new
//! RPC is protected and limited until someone decides otherwise, and a test
//! fails for every RPC of the contract the table forgets.

use crate::domain::Scope;
use crate::pb::paths::admin_service as admin;
use crate::pb::paths::auth_service as auth;

/// The credential a method needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Anyone; the request itself carries whatever proves the right (a
    /// password, a refresh or reset token), or nothing is secret.
    Anyone,
    /// A user's access token: `authorization: Bearer <jwt>`.
    User,
    /// A service account's key with this scope: `authorization: Bearer sk_…`
    /// (or a token the key minted).
    Service(Scope),
    /// Any live service, whatever its scopes (the use case decides).
    AnyService,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub caller: Caller,
    /// The in-memory per-client token bucket (`AUTHD_PEER_RATE_LIMIT`):
    /// for the RPCs that cost a password hash. Token RPCs are the hot path
    /// of every service and never limited per client.
    pub per_client_limit: bool,
}

const PUBLIC: Policy = Policy {
    caller: Caller::Anyone,
    per_client_limit: false,
};
const PUBLIC_LIMITED: Policy = Policy {
    caller: Caller::Anyone,
    per_client_limit: true,
};
const USER: Policy = Policy {
    caller: Caller::User,
    per_client_limit: false,
};
const USER_LIMITED: Policy = Policy {
    caller: Caller::User,
    per_client_limit: true,
};

const fn service(scope: Scope) -> Policy {
    Policy {
        caller: Caller::Service(scope),
        per_client_limit: false,
    }
}

const ANY_SERVICE: Policy = Policy {
    caller: Caller::AnyService,
    per_client_limit: false,
};

/// What a method missing from the table gets.
pub const STRICTEST: Policy = USER_LIMITED;

const TABLE: &[(&str, Policy)] = &[
    (auth::REGISTER, PUBLIC_LIMITED),
    (auth::LOGIN, PUBLIC_LIMITED),
    (auth::REFRESH, PUBLIC),
    (auth::LOGOUT, PUBLIC),
    (auth::FORGOT_PASSWORD, PUBLIC_LIMITED),
    (auth::RESET_PASSWORD, PUBLIC_LIMITED),
    (auth::GET_ME, USER),
    (auth::CHANGE_PASSWORD, USER_LIMITED),
    (auth::GET_JWKS, PUBLIC),
    (auth::INTROSPECT_TOKEN, service(Scope::TokensIntrospect)),
    (auth::SEND_VERIFICATION_EMAIL, USER),
    // A wrong token costs no hash, but guessing is limited per client like
    // ResetPassword's.
    (auth::VERIFY_EMAIL, PUBLIC_LIMITED),
    (auth::UPDATE_ME, USER),
    (auth::CHANGE_EMAIL, USER_LIMITED),
    (auth::DELETE_ME, USER_LIMITED),
    (auth::LIST_SESSIONS, USER),
    (auth::REVOKE_SESSION, USER),
    (auth::REVOKE_OTHER_SESSIONS, USER),
    (admin::GET_USER, service(Scope::UsersRead)),
    (admin::BATCH_GET_USERS, service(Scope::UsersRead)),
    (admin::LOOKUP_USER, service(Scope::UsersRead)),
    (admin::LIST_USERS, service(Scope::UsersRead)),
    (admin::DISABLE_USER, service(Scope::UsersWrite)),
    (admin::ENABLE_USER, service(Scope::UsersWrite)),
    (admin::SET_USER_ROLES, service(Scope::UsersWrite)),
    (admin::REVOKE_USER_SESSIONS, service(Scope::UsersWrite)),
    (admin::WATCH_REVOCATIONS, service(Scope::RevocationsWatch)),
    (auth::COMPLETE_LOGIN, PUBLIC_LIMITED),
    (auth::ENROLL_TOTP, USER),
    // Wrong codes are charged on the account's Login throttle; the limit
    // per client bounds what one client can make the database count.
    (auth::CONFIRM_TOTP, USER_LIMITED),
    (auth::LIST_FACTORS, USER),
    (auth::REMOVE_FACTOR, USER),
    (auth::REGENERATE_RECOVERY_CODES, USER),
    (auth::STEP_UP, USER_LIMITED),
    (admin::RESET_USER_FACTORS, service(Scope::UsersWrite)),
    // Scopes depend on the grant; failed credentials are limited like every
    // service's, and no grant costs a password hash.
    (auth::EXCHANGE_TOKEN, ANY_SERVICE),
    (auth::START_PASSKEY_REGISTRATION, USER),
    // Failed ceremonies are also charged per client address (like
    // VerifyEmail's guesses); the bucket bounds the database's counting.
    (auth::FINISH_PASSKEY_REGISTRATION, USER_LIMITED),
    // A start costs one lookup and one row that dies in 5 minutes; the
    // bucket bounds how many one client can make.
    (auth::START_PASSKEY_LOGIN, PUBLIC_LIMITED),
    (auth::FINISH_PASSKEY_LOGIN, PUBLIC_LIMITED),
];

/// What a session that must enrol a second factor first may call (its
/// token says `mfa_enrollment_required`); Refresh and Logout take no bearer.
const DURING_ENROLLMENT: &[&str] = &[
    auth::GET_ME,
    auth::ENROLL_TOTP,
    auth::CONFIRM_TOTP,
    auth::START_PASSKEY_REGISTRATION,
    auth::FINISH_PASSKEY_REGISTRATION,
    auth::LIST_FACTORS,
];

/// Whether a bearer that must enrol a second factor may call `path`.
pub fn allowed_during_enrollment(path: &str) -> bool {
    DURING_ENROLLMENT.contains(&path)
}

/// Services that are not authd's contract but the server's plumbing:
/// health checks and reflection answer anyone, unlimited.
const INFRASTRUCTURE: &[&str] = &[
    tonic_health::pb::health_server::SERVICE_NAME,
    tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
];

/// The policy of the method at `path` (`/package.Service/Method`).
pub fn policy_for(path: &str) -> Policy {
    if let Some((_, policy)) = TABLE.iter().find(|(p, _)| *p == path) {
        return *policy;
    }
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(service, _)| service);
    match service {
        Some(s) if INFRASTRUCTURE.contains(&s) => PUBLIC,
        _ => STRICTEST,
    }
}

/// Whether the method at `path` needs the database: all of authd's
/// contract but the public keys, none of the plumbing.
pub fn needs_database(path: &str) -> bool {
    if path == auth::GET_JWKS {
        return false;
    }
    let service = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .map(|(service, _)| service);
    !matches!(service, Some(s) if INFRASTRUCTURE.contains(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_of_the_contract_has_a_policy() {
        let missing: Vec<&str> = auth::ALL
            .iter()
            .chain(admin::ALL)
            .copied()
            .filter(|path| !TABLE.iter().any(|(p, _)| p == path))
            .collect();
        assert!(missing.is_empty(), "RPCs without a policy: {missing:?}");
    }

    #[test]
    fn only_the_keys_and_the_plumbing_go_without_the_database() {
        assert!(!needs_database(auth::GET_JWKS));
        let health = format!("/{}/Check", tonic_health::pb::health_server::SERVICE_NAME);
        assert!(!needs_database(&health));
        assert!(needs_database(auth::GET_ME));
        assert!(needs_database(admin::WATCH_REVOCATIONS));
        assert!(needs_database("/auth.v1.AuthService/SomethingNew"));
    }

    #[test]
    fn unknown_methods_get_the_strictest_policy() {
        let service = crate::pb::auth::v1::auth_service_server::SERVICE_NAME;
        assert_eq!(policy_for(&format!("/{service}/SomethingNew")), STRICTEST);
        assert_eq!(policy_for(&format!("/{service}Other/Method")), STRICTEST);
        assert_eq!(policy_for("garbage"), STRICTEST);
    }

    #[test]
    fn plumbing_is_open_and_password_rpcs_are_limited() {
        let health = format!("/{}/Check", tonic_health::pb::health_server::SERVICE_NAME);
        assert_eq!(policy_for(&health), PUBLIC);
        assert_eq!(policy_for(auth::GET_ME).caller, Caller::User);
        assert!(policy_for(auth::LOGIN).per_client_limit);
        assert!(!policy_for(auth::REFRESH).per_client_limit);
        assert_eq!(
            policy_for(admin::DISABLE_USER).caller,
            Caller::Service(Scope::UsersWrite)
        );
    }
}
