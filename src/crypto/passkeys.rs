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
    pub fn finish_registration(&self, credential: Value, state: &Value) -> Result<NewPasskey, Refusal> {
        let credential: RegisterPublicKeyCredential =
            serde_json::from_value(credential).map_err(|e| Refusal::Malformed(e.to_string()))?;
        let state: PasskeyRegistration = serde_json::from_value(state.clone())
            .map_err(|e| Refusal::Invalid(format!("stored registration state: {e}")))?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(&credential, &state)
            .map_err(|e| Refusal::Invalid(e.to_string()))?;
        let stored = serde_json::to_value(&passkey).map_err(|e| Refusal::Invalid(e.to_string()))?;
        let credential = Credential::from(passkey);
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
