//! How the holder of a session proved who they are: RFC 8176 method
//! references (`amr`), an assurance level (`acr`, NIST SP 800-63B AAL
//! names) and when the last proof happened (`auth_time`). A session stores
//! it, every access token of the session carries it, and only a new proof
//! raises it.

use chrono::{DateTime, Utc};

/// One RFC 8176 authentication method reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuthMethod {
    /// A password.
    Pwd,
    /// A one-time code: TOTP, or a single-use recovery code.
    Otp,
    /// A hardware-bound key (a passkey on a security key).
    Hwk,
    /// A software key (a synced passkey).
    Swk,
    /// The user was verified by the authenticator (PIN, biometrics).
    User,
    /// Two kinds of proof.
    Mfa,
}

impl AuthMethod {
    pub const ALL: [Self; 6] = [Self::Pwd, Self::Otp, Self::Hwk, Self::Swk, Self::User, Self::Mfa];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pwd => "pwd",
            Self::Otp => "otp",
            Self::Hwk => "hwk",
            Self::Swk => "swk",
            Self::User => "user",
            Self::Mfa => "mfa",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether this method is a second factor next to a password.
    fn is_second_factor(self) -> bool {
        matches!(self, Self::Otp | Self::Hwk | Self::Swk)
    }
}

/// Authentication assurance level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Acr {
    /// One factor.
    Aal1,
    /// Two factors, or a user-verified passkey.
    Aal2,
}

impl Acr {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Aal1 => "aal1",
            Self::Aal2 => "aal2",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "aal1" => Some(Self::Aal1),
            "aal2" => Some(Self::Aal2),
            _ => None,
        }
    }
}

/// What a session's proofs add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assurance {
    /// Sorted, without repeats.
    amr: Vec<AuthMethod>,
    pub acr: Acr,
    pub auth_time: DateTime<Utc>,
}

impl Assurance {
    /// A password alone.
    pub fn password(at: DateTime<Utc>) -> Self {
        Self::from_parts([AuthMethod::Pwd], at)
    }

    /// Rebuilds a stored or signed assurance; `acr` follows from the methods,
    /// so no store can claim a level its methods do not earn.
    pub fn from_parts(methods: impl IntoIterator<Item = AuthMethod>, auth_time: DateTime<Utc>) -> Self {
        let mut amr: Vec<AuthMethod> = methods.into_iter().collect();
        amr.sort_unstable();
        amr.dedup();
        let mut assurance = Self {
            amr,
            acr: Acr::Aal1,
            auth_time,
        };
        assurance.settle();
        assurance
    }

    /// The session proved `method` again at `at`: the level can only rise,
    /// and `auth_time` moves to the new proof.
    pub fn with_proof(&self, method: AuthMethod, at: DateTime<Utc>) -> Self {
        let mut methods = self.amr.clone();
        methods.push(method);
        Self::from_parts(methods, at.max(self.auth_time))
    }

    /// As [`Self::with_proof`], for a proof that names several methods (a
    /// passkey: the key and its user verification).
    pub fn with_proofs(&self, methods: &[AuthMethod], at: DateTime<Utc>) -> Self {
        let mut all = self.amr.clone();
        all.extend_from_slice(methods);
        Self::from_parts(all, at.max(self.auth_time))
    }

    fn settle(&mut self) {
        let knows = self.amr.contains(&AuthMethod::Pwd);
        let has = self.amr.iter().any(|m| m.is_second_factor());
        let verified_key = self.amr.contains(&AuthMethod::User)
            && self
                .amr
                .iter()
                .any(|m| matches!(m, AuthMethod::Hwk | AuthMethod::Swk));
        if knows && has && !self.amr.contains(&AuthMethod::Mfa) {
            self.amr.push(AuthMethod::Mfa);
            self.amr.sort_unstable();
        }
        self.acr = if (knows && has) || verified_key {
            Acr::Aal2
        } else {
            Acr::Aal1
        };
    }

    pub fn methods(&self) -> &[AuthMethod] {
        &self.amr
    }

    /// The `amr` claim, in alphabetical order so equal sets compare equal.
    pub fn amr_strings(&self) -> Vec<String> {
        let mut names: Vec<String> = self.amr.iter().map(|m| m.as_str().to_owned()).collect();
        names.sort_unstable();
        names
    }

    /// A second factor was proven within `max_age` of `now`.
    pub fn second_factor_since(&self, now: DateTime<Utc>, max_age: std::time::Duration) -> bool {
        let max_age = chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        self.acr == Acr::Aal2 && now.signed_duration_since(self.auth_time) <= max_age
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_alone_is_aal1_and_a_code_after_it_is_aal2_with_mfa() {
        let t0 = Utc::now();
        let pwd = Assurance::password(t0);
        assert_eq!((pwd.acr, pwd.amr_strings()), (Acr::Aal1, vec!["pwd".to_owned()]));
        let later = t0 + chrono::Duration::seconds(30);
        let both = pwd.with_proof(AuthMethod::Otp, later);
        assert_eq!(both.acr, Acr::Aal2);
        assert_eq!(both.amr_strings(), ["mfa", "otp", "pwd"].map(str::to_owned));
        assert_eq!(both.auth_time, later);
    }

    #[test]
    fn the_level_follows_the_methods_never_a_stored_claim() {
        let t = Utc::now();
        assert_eq!(Assurance::from_parts([AuthMethod::Otp], t).acr, Acr::Aal1);
        assert_eq!(
            Assurance::from_parts([AuthMethod::Swk, AuthMethod::User], t).acr,
            Acr::Aal2
        );
        assert_eq!(Assurance::from_parts([AuthMethod::Mfa], t).acr, Acr::Aal1);
    }

    #[test]
    fn freshness_needs_both_the_level_and_a_recent_proof() {
        let t = Utc::now();
        let ten = std::time::Duration::from_secs(600);
        let both = Assurance::password(t).with_proof(AuthMethod::Otp, t);
        assert!(both.second_factor_since(t + chrono::Duration::seconds(599), ten));
        assert!(!both.second_factor_since(t + chrono::Duration::seconds(601), ten));
        assert!(!Assurance::password(t).second_factor_since(t, ten));
    }

    #[test]
    fn an_older_proof_never_moves_auth_time_back() {
        let t = Utc::now();
        let a = Assurance::password(t).with_proof(AuthMethod::Otp, t - chrono::Duration::seconds(5));
        assert_eq!(a.auth_time, t);
    }
}
