//! A software passkey for the tests: webauthn-rs's own test authenticator
//! (`SoftPasskey`, not authd's code) behind the JSON a browser would send.
//!
//! `SoftPasskey` keeps no user handle and signs only for credentials named
//! in `allowCredentials`; to answer a discoverable ceremony (empty list) the
//! kit names its own credentials and adds the user handle to the answer,
//! as a browser's authenticator does for a resident credential. The user
//! handle is not signed (WebAuthn §6.3.3), so this changes nothing authd
//! could check.

use authd::grpc::convert::{json_to_struct, struct_to_json};
use authd::pb::auth::v1 as pb;
use p256::ecdsa::signature::Signer as _;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use webauthn_authenticator_rs::WebauthnAuthenticator;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse, Url};

use crate::helpers::{TestApp, with_bearer};

/// The origin authd accepts by default (AUTHD_WEBAUTHN_ORIGINS).
pub const ORIGIN: &str = "http://localhost:3000";

/// One authenticator holding the keys it made.
pub struct SoftKey {
    key: SoftPasskey,
    origin: Url,
    /// Credential ids it made, base64url, with the user handle each was
    /// made for.
    pub credentials: Vec<(String, String)>,
}

impl SoftKey {
    /// An authenticator that verifies its user (passkeys need it).
    pub fn new() -> Self {
        Self::at(ORIGIN)
    }

    /// The same, in a page served from `origin`.
    pub fn at(origin: &str) -> Self {
        Self {
            key: SoftPasskey::new(true),
            origin: Url::parse(origin).unwrap(),
            credentials: Vec::new(),
        }
    }

    /// `navigator.credentials.create` on the options authd gave:
    /// the credential's `toJSON()`.
    pub fn create(&mut self, options: &prost_types::Struct) -> Value {
        let public_key = struct_to_json(options.clone());
        let user_handle = public_key["user"]["id"].as_str().unwrap().to_owned();
        let ccr: CreationChallengeResponse =
            serde_json::from_value(json!({ "publicKey": public_key })).unwrap();
        let credential = self.key.do_registration(self.origin.clone(), ccr).unwrap();
        let json = serde_json::to_value(&credential).unwrap();
        self.credentials
            .push((json["id"].as_str().unwrap().to_owned(), user_handle));
        json
    }

    /// `navigator.credentials.get` on the options authd gave: the
    /// assertion's `toJSON()`.
    pub fn get(&mut self, options: &prost_types::Struct) -> Value {
        let mut public_key = struct_to_json(options.clone());
        let discoverable = public_key["allowCredentials"]
            .as_array()
            .is_none_or(|a| a.is_empty());
        if discoverable {
            let own: Vec<Value> = self
                .credentials
                .iter()
                .map(|(id, _)| json!({"type": "public-key", "id": id}))
                .collect();
            public_key["allowCredentials"] = Value::Array(own);
        }
        let rcr: RequestChallengeResponse =
            serde_json::from_value(json!({ "publicKey": public_key })).unwrap();
        let assertion = self.key.do_authentication(self.origin.clone(), rcr).unwrap();
        let mut json = serde_json::to_value(&assertion).unwrap();
        if discoverable {
            let id = json["id"].as_str().unwrap().to_owned();
            let handle = self
                .credentials
                .iter()
                .find(|(c, _)| *c == id)
                .map(|(_, h)| h.clone())
                .unwrap();
            json["response"]["userHandle"] = Value::String(handle);
        }
        json
    }
}

/// What a browser's `navigator.credentials` does with an authenticator:
/// the kit's helpers take either kind of key.
pub trait Authenticator {
    fn create(&mut self, options: &prost_types::Struct) -> Value;
    fn get(&mut self, options: &prost_types::Struct) -> Value;
}

impl Authenticator for SoftKey {
    fn create(&mut self, options: &prost_types::Struct) -> Value {
        SoftKey::create(self, options)
    }
    fn get(&mut self, options: &prost_types::Struct) -> Value {
        SoftKey::get(self, options)
    }
}

/// An authenticator built by hand (P-256, `none` attestation) for what
/// `SoftPasskey` cannot do: be copied with its key and counter (a cloned
/// authenticator), register one credential again, skip user verification,
/// or sign with a chosen counter. One credential per key.
#[derive(Clone)]
pub struct RawKey {
    key: p256::ecdsa::SigningKey,
    pub credential_id: Vec<u8>,
    /// The user handle (base64url) of the account it was made for.
    pub user_handle: Option<String>,
    pub counter: u32,
    /// Whether it says it verified its user (the UV flag).
    pub verifies_user: bool,
    pub origin: String,
    /// Flags to send as they are, instead of UP, UV and (registering) AT.
    pub flags: Option<u8>,
}

impl Default for RawKey {
    fn default() -> Self {
        Self::new()
    }
}

impl RawKey {
    pub fn new() -> Self {
        let mut id = vec![0u8; 32];
        getrandom::getrandom(&mut id).unwrap();
        Self {
            key: p256::ecdsa::SigningKey::random(&mut rand_core::OsRng),
            credential_id: id,
            user_handle: None,
            counter: 0,
            verifies_user: true,
            origin: ORIGIN.into(),
            flags: None,
        }
    }

    pub fn id(&self) -> String {
        b64url(&self.credential_id)
    }

    fn flags(&self) -> u8 {
        // UP, and UV when it verifies its user.
        if self.verifies_user { 0x05 } else { 0x01 }
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": false,
        }))
        .unwrap()
    }

    /// COSE_Key of the public key (EC2, ES256, P-256), CBOR by hand.
    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.verifying_key().to_encoded_point(false);
        let mut out = vec![0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01, 0x21, 0x58, 0x20];
        out.extend_from_slice(point.x().unwrap());
        out.extend_from_slice(&[0x22, 0x58, 0x20]);
        out.extend_from_slice(point.y().unwrap());
        out
    }

    /// The same credential's registration, for these options (again, if
    /// it registered before).
    pub fn create_json(&mut self, public_key: &Value) -> Value {
        self.user_handle = public_key["user"]["id"].as_str().map(str::to_owned);
        let rp_id = public_key["rp"]["id"].as_str().unwrap();
        let challenge = public_key["challenge"].as_str().unwrap();
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags.unwrap_or(self.flags() | 0x40));
        auth_data.extend_from_slice(&self.counter.to_be_bytes());
        auth_data.extend_from_slice(&[0u8; 16]);
        auth_data.extend_from_slice(&u16::try_from(self.credential_id.len()).unwrap().to_be_bytes());
        auth_data.extend_from_slice(&self.credential_id);
        auth_data.extend_from_slice(&self.cose_key());
        let mut attestation = vec![0xa3, 0x63];
        attestation.extend_from_slice(b"fmt");
        attestation.push(0x64);
        attestation.extend_from_slice(b"none");
        attestation.push(0x67);
        attestation.extend_from_slice(b"attStmt");
        attestation.extend_from_slice(&[0xa0, 0x68]);
        attestation.extend_from_slice(b"authData");
        attestation.push(0x59);
        attestation.extend_from_slice(&u16::try_from(auth_data.len()).unwrap().to_be_bytes());
        attestation.extend_from_slice(&auth_data);
        json!({
            "id": self.id(),
            "rawId": self.id(),
            "type": "public-key",
            "response": {
                "attestationObject": b64url(&attestation),
                "clientDataJSON": b64url(&self.client_data("webauthn.create", challenge)),
            },
            "extensions": {},
        })
    }

    /// An assertion of the options' challenge signed with the next count
    /// (whatever the options allow: this key does not look).
    pub fn get_json(&mut self, public_key: &Value) -> Value {
        self.counter += 1;
        let counter = self.counter;
        self.sign(public_key, counter)
    }

    /// An assertion signed with `counter` (the key's own is left alone).
    pub fn sign(&self, public_key: &Value, counter: u32) -> Value {
        let rp_id = public_key["rpId"].as_str().unwrap();
        let challenge = public_key["challenge"].as_str().unwrap();
        let mut auth_data = Sha256::digest(rp_id.as_bytes()).to_vec();
        auth_data.push(self.flags.unwrap_or(self.flags()));
        auth_data.extend_from_slice(&counter.to_be_bytes());
        let client_data = self.client_data("webauthn.get", challenge);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let signature: p256::ecdsa::Signature = self.key.sign(&signed);
        json!({
            "id": self.id(),
            "rawId": self.id(),
            "type": "public-key",
            "response": {
                "authenticatorData": b64url(&auth_data),
                "clientDataJSON": b64url(&client_data),
                "signature": b64url(signature.to_der().as_bytes()),
                "userHandle": self.user_handle,
            },
            "extensions": {},
        })
    }
}

impl Authenticator for RawKey {
    fn create(&mut self, options: &prost_types::Struct) -> Value {
        self.create_json(&struct_to_json(options.clone()))
    }
    fn get(&mut self, options: &prost_types::Struct) -> Value {
        self.get_json(&struct_to_json(options.clone()))
    }
}

pub fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub fn to_struct(v: Value) -> prost_types::Struct {
    json_to_struct(v)
}

/// Registers a passkey of `key` for the bearer of `access` (which must be
/// fresh enough); the new factor.
pub async fn register_passkey(app: &TestApp, access: &str, key: &mut impl Authenticator) -> pb::Factor {
    let mut client = app.client.clone();
    let started = client
        .start_passkey_registration(with_bearer(
            pb::StartPasskeyRegistrationRequest {
                name: "Test key".into(),
            },
            access,
        ))
        .await
        .unwrap()
        .into_inner();
    let credential = key.create(started.options.as_ref().unwrap());
    client
        .finish_passkey_registration(with_bearer(
            pb::FinishPasskeyRegistrationRequest {
                ceremony_id: started.ceremony_id,
                credential: Some(to_struct(credential)),
            },
            access,
        ))
        .await
        .unwrap()
        .into_inner()
        .factor
        .unwrap()
}

/// A passkey login with no username typed.
pub async fn passkey_login(
    app: &TestApp,
    key: &mut impl Authenticator,
) -> Result<pb::FinishPasskeyLoginResponse, tonic::Status> {
    let mut client = app.client.clone();
    let started = client
        .start_passkey_login(pb::StartPasskeyLoginRequest::default())
        .await?
        .into_inner();
    let assertion = key.get(started.options.as_ref().unwrap());
    client
        .finish_passkey_login(pb::FinishPasskeyLoginRequest {
            ceremony_id: started.ceremony_id,
            credential: Some(to_struct(assertion)),
        })
        .await
        .map(tonic::Response::into_inner)
}
