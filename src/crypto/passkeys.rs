//! The WebAuthn relying party (webauthn-rs): ceremony options out, the
//! browser's answers checked against the ceremony's stored state.
//!
//! Everything crossing this module is JSON: options exactly as the browser's
//! `PublicKeyCredential.parse*OptionsFromJSON` take them, credentials
//! exactly as `toJSON()` gives them, and the state webauthn-rs keeps between
//! start and finish, which the caller stores in PostgreSQL so that any
//! replica finishes a ceremony another one started.
//!
//! Every login ceremony is a discoverable one at heart (its state names no
//! credential); when the account is known its passkeys are listed in the
//! options' `allowCredentials`, and the one credential that answered is
//! checked with its stored key and counter at the finish. The counter is
//! therefore compared with the freshest stored value, not with a copy taken
//! when the ceremony started.

use serde_json::{Value, json};
use uuid::Uuid;
use webauthn_rs::prelude::{
    Credential, DiscoverableAuthentication, Passkey, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder, WebauthnError,
};

use crate::domain::PasskeyBackup;

/// How long the browser is told to wait for the user; the server's own
/// ceremony lifetime (5 minutes) is the caller's.
const BROWSER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Credential ids a passkey may have (the table's bounds): WebAuthn caps
/// them at 1023 bytes (§7.1), and an authenticator's random id has at least
/// 16 (§4, "Credential ID").
const CREDENTIAL_ID_BYTES: std::ops::RangeInclusive<usize> = 16..=1023;

/// The relying party: its id and the origins its pages are served from.
#[derive(Clone)]
pub struct RelyingParty {
    webauthn: std::sync::Arc<Webauthn>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("origins", &self.webauthn.get_allowed_origins())
            .finish_non_exhaustive()
    }
}

/// A started ceremony: what the client gets, and what the server keeps.
pub struct Started {
    /// The random challenge; also the ceremony's id.
    pub challenge: Vec<u8>,
    /// PublicKeyCredential{Creation,Request}Options JSON.
    pub options: Value,
    /// webauthn-rs's state, to be stored server-side only.
    pub state: Value,
}

/// A verified new credential.
pub struct NewPasskey {
    pub credential_id: Vec<u8>,
    /// webauthn-rs's credential, to be stored.
    pub stored: Value,
    pub sign_count: u32,
    pub backup: PasskeyBackup,
}

/// A verified assertion, with the credential as it should now be stored.
pub struct Asserted {
    pub stored: Value,
    pub sign_count: u32,
    pub backup: PasskeyBackup,
    pub user_verified: bool,
}

/// Why a credential or assertion was refused. The reason is for the log;
/// callers answer all of them alike.
#[derive(Debug)]
pub enum Refusal {
    /// Not the JSON of a PublicKeyCredential (a client's mistake).
    Malformed(String),
    /// Well formed, but it does not prove what it must.
    Invalid(String),
    /// The signature counter did not move forward: a cloned authenticator.
    CounterWentBack,
}

/// An assertion as the browser sent it, parsed but not yet verified.
pub struct Assertion {
    credential: PublicKeyCredential,
    challenge: Option<Vec<u8>>,
}

impl Assertion {
    /// Parses `toJSON()` of an assertion (an AuthenticationResponseJSON).
    pub fn parse(json: Value) -> Result<Self, Refusal> {
        let credential: PublicKeyCredential =
            serde_json::from_value(json).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let challenge = challenge_of(&credential.response.client_data_json);
        Ok(Self {
            credential,
            challenge,
        })
    }

    /// The credential that signed.
    pub fn credential_id(&self) -> &[u8] {
        self.credential.get_credential_id()
    }

    /// The user handle a discoverable credential returns (authd's user id).
    pub fn user_handle(&self) -> Option<Uuid> {
        self.credential
            .get_user_unique_id()
            .and_then(|b| Uuid::from_slice(b).ok())
    }

    /// The challenge the client data says was signed: the ceremony's id.
    /// Not trusted until verification, which compares it with the state's.
    pub fn challenge(&self) -> Option<&[u8]> {
        self.challenge.as_deref()
    }
}

/// A new credential as the browser sent it (a RegistrationResponseJSON),
/// parsed but not yet verified: its form is checked before a ceremony is
/// used up or a failure charged.
pub struct NewCredential(RegisterPublicKeyCredential);

impl NewCredential {
    pub fn parse(json: Value) -> Result<Self, Refusal> {
        serde_json::from_value(json)
            .map(Self)
            .map_err(|e| Refusal::Malformed(e.to_string()))
    }
}

/// `challenge` of a clientDataJSON (base64url, WebAuthn §5.8.1).
fn challenge_of(client_data_json: &[u8]) -> Option<Vec<u8>> {
    #[derive(serde::Deserialize)]
    struct ClientData {
        challenge: String,
    }
    let data: ClientData = serde_json::from_slice(client_data_json).ok()?;
    base64url_decode(&data.challenge)
}

pub fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .ok()
}

pub fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn internal(what: &str, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}

impl RelyingParty {
    /// `rp_id` a registrable domain (or `localhost`); `origins` the exact
    /// origins of the pages that run the ceremonies, each on `rp_id` or a
    /// subdomain of it (checked by webauthn-rs too).
    pub fn new(rp_id: &str, rp_name: &str, origins: &[String]) -> anyhow::Result<Self> {
        let (first, rest) = origins
            .split_first()
            .ok_or_else(|| anyhow::anyhow!("no WebAuthn origin"))?;
        let parse = |o: &String| Url::parse(o).map_err(|e| anyhow::anyhow!("{o:?}: {e}"));
        let first = parse(first)?;
        let mut builder = WebauthnBuilder::new(rp_id, &first)
            .map_err(|e| internal("the WebAuthn relying party", e))?
            .rp_name(rp_name)
            .timeout(BROWSER_TIMEOUT);
        for origin in rest {
            builder = builder.append_allowed_origin(&parse(origin)?);
        }
        let webauthn = builder
            .build()
            .map_err(|e| internal("the WebAuthn relying party", e))?;
        Ok(Self {
            webauthn: std::sync::Arc::new(webauthn),
        })
    }

    /// Options to register a passkey for `user_handle`, excluding the
    /// credentials the account has already.
    pub fn start_registration(
        &self,
        user_handle: Uuid,
        user_name: &str,
        display_name: &str,
        exclude: Vec<Vec<u8>>,
    ) -> anyhow::Result<Started> {
        let exclude = (!exclude.is_empty()).then_some(exclude);
        let (options, state) = self
            .webauthn
            .start_passkey_registration(user_handle, user_name, display_name, exclude)
            .map_err(|e| internal("starting a passkey registration", e))?;
        let challenge = options.public_key.challenge.to_vec();
        let mut options =
            serde_json::to_value(&options.public_key).map_err(|e| internal("registration options", e))?;
        // A passkey that logs in without a username must be discoverable;
        // "preferred" still lets a security key without room for one
        // register (it then logs in when the login is named).
        if let Some(selection) = options
            .get_mut("authenticatorSelection")
            .and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), json!("preferred"));
            selection.insert("requireResidentKey".into(), json!(false));
        }
        let state = serde_json::to_value(&state).map_err(|e| internal("registration state", e))?;
        Ok(Started {
            challenge,
            options,
            state,
        })
    }

    /// Checks the browser's new credential against the ceremony's state.
    pub fn finish_registration(
        &self,
        credential: &NewCredential,
        state: &Value,
    ) -> Result<NewPasskey, Refusal> {
        let state: PasskeyRegistration = serde_json::from_value(state.clone())
            .map_err(|e| Refusal::Invalid(format!("stored registration state: {e}")))?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(&credential.0, &state)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let stored = serde_json::to_value(&passkey).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let credential = Credential::from(passkey);
        if !CREDENTIAL_ID_BYTES.contains(&credential.cred_id.len()) {
            return Err(Refusal::Invalid(format!(
                "a credential id of {} bytes",
                credential.cred_id.len()
            )));
        }
        Ok(NewPasskey {
            credential_id: credential.cred_id.to_vec(),
            stored,
            sign_count: credential.counter,
            backup: PasskeyBackup {
                eligible: credential.backup_eligible,
                backed_up: credential.backup_state,
            },
        })
    }

    /// Options to log in with one of `allow` (empty: any discoverable
    /// credential of this relying party). User verification is required.
    pub fn start_login(&self, allow: &[Vec<u8>]) -> anyhow::Result<Started> {
        let (options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|e| internal("starting a passkey login", e))?;
        let challenge = options.public_key.challenge.to_vec();
        let mut options =
            serde_json::to_value(&options.public_key).map_err(|e| internal("login options", e))?;
        if let Some(object) = options.as_object_mut() {
            let listed: Vec<Value> = allow
                .iter()
                .map(|id| json!({"type": "public-key", "id": base64url(id)}))
                .collect();
            object.insert("allowCredentials".into(), Value::Array(listed));
        }
        let state = serde_json::to_value(&state).map_err(|e| internal("login state", e))?;
        Ok(Started {
            challenge,
            options,
            state,
        })
    }

    /// Checks an assertion against the ceremony's state and the stored
    /// credential it names (with its last counter). The caller has checked
    /// that the credential belongs to the account being proven.
    pub fn finish_login(
        &self,
        assertion: &Assertion,
        state: &Value,
        stored: &Value,
    ) -> Result<Asserted, Refusal> {
        let state: DiscoverableAuthentication = serde_json::from_value(state.clone())
            .map_err(|e| Refusal::Invalid(format!("stored login state: {e}")))?;
        let mut passkey: Passkey = serde_json::from_value(stored.clone())
            .map_err(|e| Refusal::Invalid(format!("stored passkey: {e}")))?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(&assertion.credential, state, &passkey)
            .map_err(|e| match e {
                WebauthnError::CredentialPossibleCompromise => Refusal::CounterWentBack,
                other => Refusal::Invalid(other.to_string()),
            })?;
        if !result.user_verified() {
            // webauthn-rs asks for it; an authenticator that skipped it
            // proves possession only.
            return Err(Refusal::Invalid("no user verification".into()));
        }
        passkey.update_credential(&result);
        let stored = serde_json::to_value(&passkey).map_err(|e| Refusal::Invalid(e.to_string()))?;
        Ok(Asserted {
            stored,
            sign_count: result.counter(),
            backup: PasskeyBackup {
                eligible: result.backup_eligible(),
                backed_up: result.backup_state(),
            },
            user_verified: result.user_verified(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_read_from_the_client_data_whatever_its_padding() {
        let challenge = [7u8; 32];
        let data = json!({"type": "webauthn.get", "challenge": base64url(&challenge), "origin": "x"});
        let bytes = serde_json::to_vec(&data).unwrap();
        assert_eq!(challenge_of(&bytes).as_deref(), Some(&challenge[..]));
        let padded = json!({"challenge": format!("{}=", base64url(&challenge[..31]))});
        assert_eq!(
            challenge_of(&serde_json::to_vec(&padded).unwrap()).as_deref(),
            Some(&challenge[..31])
        );
        for bad in [
            &b"not json"[..],
            br#"{"challenge": 5}"#,
            br#"{"challenge": "***"}"#,
            b"{}",
        ] {
            assert_eq!(challenge_of(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn options_ask_for_a_discoverable_user_verified_credential_and_list_the_allowed_ones() {
        let rp = RelyingParty::new("localhost", "authd", &["http://localhost:3000".into()]).unwrap();
        let started = rp
            .start_registration(Uuid::new_v4(), "ada@example.com", "ada", vec![vec![1; 16]])
            .unwrap();
        let selection = &started.options["authenticatorSelection"];
        assert_eq!(selection["residentKey"], "preferred");
        assert_eq!(selection["userVerification"], "required");
        assert_eq!(started.options["rp"]["id"], "localhost");
        assert_eq!(
            started.options["excludeCredentials"][0]["id"],
            base64url(&[1; 16])
        );
        assert_eq!(started.options["challenge"], base64url(&started.challenge));

        let login = rp.start_login(&[vec![2; 20]]).unwrap();
        assert_eq!(login.options["allowCredentials"][0]["id"], base64url(&[2; 20]));
        assert_eq!(login.options["userVerification"], "required");
        assert!(login.options.get("mediation").is_none());
        let discoverable = rp.start_login(&[]).unwrap();
        assert_eq!(discoverable.options["allowCredentials"], json!([]));
        assert_ne!(discoverable.challenge, login.challenge);
    }

    #[test]
    fn a_relying_party_refuses_an_origin_off_its_id() {
        assert!(RelyingParty::new("example.com", "x", &["https://evil.com".into()]).is_err());
        assert!(RelyingParty::new("example.com", "x", &[]).is_err());
    }
}
