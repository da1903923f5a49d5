//! Which accounts must have a second factor (`AUTHD_REQUIRE_MFA`).

use super::{FieldReason, Invalid, Role};

/// `off`, `all`, or `roles:a,b` (accounts holding any of those roles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MfaRequirement {
    #[default]
    Off,
    All,
    /// Sorted and without duplicates; never empty.
    Roles(Vec<Role>),
}

impl MfaRequirement {
    /// Reads the setting; role names follow the rules of `Role`.
    pub fn parse(input: &str) -> Result<Self, Invalid> {
        let input = input.trim();
        if input.eq_ignore_ascii_case("off") {
            return Ok(Self::Off);
        }
        if input.eq_ignore_ascii_case("all") {
            return Ok(Self::All);
        }
        let Some(list) = input.strip_prefix("roles:") else {
            return Err(Invalid::format(
                "must be off, all, or roles: and a comma list of roles",
            ));
        };
        let names: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
            .collect();
        if names.is_empty() {
            return Err(Invalid::new(
                FieldReason::Required,
                "roles: must name at least one role, like roles:admin,ops",
            ));
        }
        let roles = Role::parse_set(&names).map_err(|e| {
            let bad = names.iter().find(|n| Role::parse(n).is_err());
            match bad {
                Some(name) => Invalid::new(e.reason, format!("role {name:?}: {e}")),
                None => e,
            }
        })?;
        Ok(Self::Roles(roles))
    }

    /// Whether an account with these roles must have a second factor.
    pub fn applies_to(&self, roles: &[String]) -> bool {
        match self {
            Self::Off => false,
            Self::All => true,
            Self::Roles(required) => required
                .iter()
                .any(|r| roles.iter().any(|held| held == r.as_str())),
        }
    }
}

impl std::fmt::Display for MfaRequirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Off => f.write_str("off"),
            Self::All => f.write_str("all"),
            Self::Roles(roles) => {
                let names: Vec<&str> = roles.iter().map(Role::as_str).collect();
                write!(f, "roles:{}", names.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn off_and_all_mean_nobody_and_everybody() {
        assert_eq!(MfaRequirement::parse("off"), Ok(MfaRequirement::Off));
        assert_eq!(MfaRequirement::parse(" ALL "), Ok(MfaRequirement::All));
        assert_eq!(MfaRequirement::default(), MfaRequirement::Off);
        assert!(!MfaRequirement::Off.applies_to(&roles(&["admin"])));
        assert!(MfaRequirement::All.applies_to(&[]));
    }

    #[test]
    fn roles_require_a_factor_of_anyone_holding_one_of_them() {
        let requirement = MfaRequirement::parse("roles:ops, admin,admin").unwrap();
        assert_eq!(requirement.to_string(), "roles:admin,ops");
        assert!(requirement.applies_to(&roles(&["viewer", "admin"])));
        assert!(requirement.applies_to(&roles(&["ops"])));
        assert!(!requirement.applies_to(&roles(&["viewer"])));
        assert!(!requirement.applies_to(&[]));
        // Exact names: no prefix or case folding.
        assert!(!requirement.applies_to(&roles(&["admins", "Admin"])));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        for (input, expected) in [
            ("sometimes", "must be off, all, or roles:"),
            ("roles:", "at least one role"),
            ("roles: , ", "at least one role"),
            ("roles:admin,Ops", "role \"Ops\""),
            ("admin", "must be off, all, or roles:"),
        ] {
            let err = MfaRequirement::parse(input).unwrap_err();
            assert!(err.description.contains(expected), "{input}: {err}");
        }
    }
}
