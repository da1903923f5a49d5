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
use serde_json::{Value, json};
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

pub fn to_struct(v: Value) -> prost_types::Struct {
    json_to_struct(v)
}

/// Registers a passkey of `key` for the bearer of `access` (which must be
/// fresh enough); the new factor.
pub async fn register_passkey(app: &TestApp, access: &str, key: &mut SoftKey) -> pb::Factor {
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
    key: &mut SoftKey,
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
