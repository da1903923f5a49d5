//! Why a session ended, as `sessions.revoked_reason` records it: one closed
//! list, so no caller can write a reason nobody reads back the same way.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Logout with the session's refresh token.
    Logout,
    /// A consumed refresh token came back: the family is ended.
    RefreshTokenReused,
    /// ChangePassword ended the account's other sessions.
    PasswordChanged,
    /// ResetPassword ended every session.
    PasswordReset,
    /// DisableUser.
    UserDisabled,
    /// RevokeUserSessions, by a service.
    RevokedByService,
    /// RevokeSession or RevokeOtherSessions, by the account's owner.
    RevokedByOwner,
    /// ResetUserFactors, by a service.
    FactorsReset,
}

impl EndReason {
    pub const ALL: [Self; 8] = [
        Self::Logout,
        Self::RefreshTokenReused,
        Self::PasswordChanged,
        Self::PasswordReset,
        Self::UserDisabled,
        Self::RevokedByService,
        Self::RevokedByOwner,
        Self::FactorsReset,
    ];

    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::RefreshTokenReused => "refresh_token_reused",
            Self::PasswordChanged => "password_changed",
            Self::PasswordReset => "password_reset",
            Self::UserDisabled => "user_disabled",
            Self::RevokedByService => "revoked_by_service",
            Self::RevokedByOwner => "revoked_by_owner",
            Self::FactorsReset => "factors_reset",
        }
    }

    pub fn parse(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_reads_back_as_itself() {
        for reason in EndReason::ALL {
            assert_eq!(EndReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(EndReason::parse("test"), None);
    }
}
