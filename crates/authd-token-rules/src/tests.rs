//! Each rule, with tokens signed here by real keys.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};

use crate::*;

const ISS: &str = "https://authd.test";
const AUD: &str = "svc";
const NOW: i64 = 1_900_000_000;

struct TestKey {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    pinned: PinnedKey,
    /// The public key's raw bytes, for the HMAC confusion attack.
    public: Vec<u8>,
}

impl TestKey {
    fn ed25519() -> Self {
        use ed25519_dalek::pkcs8::EncodePrivateKey as _;
        let sk = ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng);
        let pem = sk
            .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
            .unwrap();
        let public = sk.verifying_key().as_bytes().to_vec();
        let x = URL_SAFE_NO_PAD.encode(&public);
        Self {
            kid: format!("ed-{}", &x[..8]),
            alg: Algorithm::EdDSA,
            encoding: EncodingKey::from_ed_pem(pem.as_bytes()).unwrap(),
            pinned: PinnedKey::from_jwk("OKP", "Ed25519", "EdDSA", &x, "").unwrap(),
            public,
        }
    }

    fn es256() -> Self {
        use p256::elliptic_curve::sec1::ToEncodedPoint as _;
        use p256::pkcs8::EncodePrivateKey as _;
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = sk.to_pkcs8_pem(Default::default()).unwrap();
        let point = sk.public_key().to_encoded_point(false);
        let x = URL_SAFE_NO_PAD.encode(point.x().unwrap());
        let y = URL_SAFE_NO_PAD.encode(point.y().unwrap());
        Self {
            kid: format!("es-{}", &x[..8]),
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
            pinned: PinnedKey::from_jwk("EC", "P-256", "", &x, &y).unwrap(),
            public: point.as_bytes().to_vec(),
        }
    }

    fn sign_typed(&self, claims: &Value, typ: Option<&str>) -> String {
        let mut header = Header::new(self.alg);
        header.typ = typ.map(str::to_owned);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }

    fn sign(&self, claims: &Value) -> String {
        self.sign_typed(claims, Some("at+jwt"))
    }
}

fn user_claims(iat: i64, lifetime: i64) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "0b7c6d1e-user", "sid": "5e55-session",
        "iat": iat, "nbf": iat, "exp": iat + lifetime, "jti": "t1",
        "roles": ["admin"], "amr": ["mfa", "otp", "pwd"], "acr": "aal2", "auth_time": iat - 30,
    })
}

fn service_claims(iat: i64) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "sub": "svc:billing", "client_id": "billing", "scope": "users.read",
        "iat": iat, "nbf": iat, "exp": iat + 300, "jti": "t2",
    })
}

fn set_claims(iat: i64) -> Value {
    json!({
        "iss": ISS, "aud": AUD, "jti": "e1", "iat": iat,
        "sub_id": {"format": "iss_sub", "iss": ISS, "sub": "0b7c6d1e-user"},
        "events": {"https://schemas.openid.net/secevent/caep/event-type/session-revoked": {}},
    })
}

fn users() -> Rules<UserAccess> {
    Rules::new(ISS, AUD, Leeway::DEFAULT).with_max_lifetime(Duration::from_secs(900))
}

fn verify<K: TokenKind>(rules: &Rules<K>, key: &TestKey, token: &str, now: i64) -> Result<K, Refusal> {
    rules.verify(token, now, |kid| (kid == key.kid).then_some(&key.pinned))
}

fn invalid(why: Invalid) -> Result<(), Refusal> {
    Err(Refusal::Invalid(why))
}

/// The outcome without the claims, to compare with an expected refusal.
fn outcome<K>(result: Result<K, Refusal>) -> Result<(), Refusal> {
    result.map(|_| ())
}

#[test]
fn a_users_token_verifies_under_either_algorithm_and_says_how_they_proved_it() {
    for key in [TestKey::ed25519(), TestKey::es256()] {
        let token = key.sign(&user_claims(NOW, 900));
        let claims = verify(&users(), &key, &token, NOW).unwrap();
        assert_eq!(
            (claims.sub.as_str(), claims.sid.as_str()),
            ("0b7c6d1e-user", "5e55-session")
        );
        assert_eq!(claims.methods(), ["mfa", "otp", "pwd"]);
        assert_eq!((claims.level(), claims.proven_at()), ("aal2", NOW - 30));
        assert!(!claims.mfa_enrollment_required);
    }
}

#[test]
fn a_token_from_before_assurance_proved_a_password_when_it_was_issued() {
    let key = TestKey::ed25519();
    let mut old = user_claims(NOW, 900);
    for claim in ["amr", "acr", "auth_time"] {
        old.as_object_mut().unwrap().remove(claim);
    }
    let claims = verify(&users(), &key, &key.sign(&old), NOW).unwrap();
    assert_eq!(claims.methods(), [AMR_PASSWORD]);
    assert_eq!((claims.level(), claims.proven_at()), (ACR_AAL1, NOW));
}

#[test]
fn the_issuers_header_is_the_one_the_rules_accept() {
    let key = TestKey::ed25519();
    let header = Rules::<UserAccess>::header(key.alg, &key.kid);
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let token = jsonwebtoken::encode(&header, &user_claims(NOW, 60), &key.encoding).unwrap();
    assert!(verify(&users(), &key, &token, NOW).is_ok());
    let set_header = Rules::<SecurityEvent>::header(key.alg, &key.kid);
    assert_eq!(set_header.typ.as_deref(), Some("secevent+jwt"));
}

#[test]
fn only_this_kinds_typ_is_accepted_in_either_form() {
    let key = TestKey::ed25519();
    let claims = user_claims(NOW, 900);
    for typ in ["at+jwt", "AT+JWT", "application/at+jwt", "Application/At+JWT"] {
        let token = key.sign_typed(&claims, Some(typ));
        assert!(verify(&users(), &key, &token, NOW).is_ok(), "{typ}");
    }
    for typ in [
        Some("JWT"),
        None,
        Some("secevent+jwt"),
        Some("application/secevent+jwt"),
        Some("at+jwt2"),
        Some("application/"),
        Some("text/at+jwt"),
    ] {
        let token = key.sign_typed(&claims, typ);
        assert_eq!(
            outcome(verify(&users(), &key, &token, NOW)),
            invalid(Invalid::Typ),
            "{typ:?}"
        );
    }
}

#[test]
fn alg_none_and_another_algorithm_under_the_same_kid_are_refused() {
    let (ed, es) = (TestKey::ed25519(), TestKey::es256());
    let claims = user_claims(NOW, 900);
    // Unsigned: jsonwebtoken knows no `none`, so the header does not even
    // parse.
    let head = URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "at+jwt", "kid": ed.kid}).to_string());
    let body = URL_SAFE_NO_PAD.encode(claims.to_string());
    for unsigned in [format!("{head}.{body}."), format!("{head}.{body}")] {
        assert_eq!(
            outcome(verify(&users(), &ed, &unsigned, NOW)),
            invalid(Invalid::Malformed)
        );
    }
    // HMAC with the public key as the secret: the classic confusion.
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(ed.kid.clone());
    let hmac = jsonwebtoken::encode(&header, &claims, &EncodingKey::from_secret(&ed.public)).unwrap();
    assert_eq!(
        outcome(verify(&users(), &ed, &hmac, NOW)),
        invalid(Invalid::Algorithm)
    );
    // A real ES256 signature naming the Ed25519 key, and the other way.
    let mut header = Header::new(Algorithm::ES256);
    header.typ = Some("at+jwt".into());
    header.kid = Some(ed.kid.clone());
    let confused = jsonwebtoken::encode(&header, &claims, &es.encoding).unwrap();
    assert_eq!(
        outcome(verify(&users(), &ed, &confused, NOW)),
        invalid(Invalid::Algorithm)
    );
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(es.kid.clone());
    let confused = jsonwebtoken::encode(&header, &claims, &ed.encoding).unwrap();
    assert_eq!(
        outcome(verify(&users(), &es, &confused, NOW)),
        invalid(Invalid::Algorithm)
    );
    // A key of another issuer that names ours.
    let other = TestKey::ed25519();
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    header.kid = Some(ed.kid.clone());
    let forged = jsonwebtoken::encode(&header, &claims, &other.encoding).unwrap();
    assert_eq!(
        outcome(verify(&users(), &ed, &forged, NOW)),
        invalid(Invalid::Signature)
    );
    // No kid, or one naming no key.
    let mut header = Header::new(Algorithm::EdDSA);
    header.typ = Some("at+jwt".into());
    let unnamed = jsonwebtoken::encode(&header, &claims, &ed.encoding).unwrap();
    assert_eq!(
        outcome(verify(&users(), &ed, &unnamed, NOW)),
        invalid(Invalid::Kid)
    );
    let stranger = other.sign(&claims);
    assert_eq!(
        outcome(verify(&users(), &ed, &stranger, NOW)),
        invalid(Invalid::Kid)
    );
}

#[test]
fn keys_are_pinned_by_type_and_curve_and_only_eddsa_and_es256_exist() {
    assert_eq!(
        PinnedKey::algorithm_of_jwk("OKP", "Ed25519", ""),
        Ok(Algorithm::EdDSA)
    );
    assert_eq!(
        PinnedKey::algorithm_of_jwk("EC", "P-256", "ES256"),
        Ok(Algorithm::ES256)
    );
    assert!(PinnedKey::algorithm_of_jwk("EC", "P-256", "EdDSA").is_err());
    assert!(PinnedKey::algorithm_of_jwk("OKP", "Ed25519", "HS256").is_err());
    assert!(PinnedKey::algorithm_of_jwk("RSA", "", "RS256").is_err());
    assert!(PinnedKey::algorithm_of_jwk("EC", "P-384", "ES384").is_err());
    assert!(PinnedKey::new(Algorithm::HS256, DecodingKey::from_secret(b"k")).is_err());
    assert!(PinnedKey::from_jwk("OKP", "Ed25519", "", "not base64!", "").is_err());
}

#[test]
fn an_oversized_or_empty_bearer_is_refused_before_parsing() {
    let key = TestKey::ed25519();
    let mut claims = user_claims(NOW, 900);
    claims["roles"] = json!(vec!["r".repeat(60); 70]);
    let big = key.sign(&claims);
    assert!(big.len() > MAX_TOKEN_BYTES, "{}", big.len());
    assert_eq!(outcome(verify(&users(), &key, &big, NOW)), invalid(Invalid::Size));
    assert_eq!(outcome(verify(&users(), &key, "", NOW)), invalid(Invalid::Size));
    assert_eq!(
        outcome(verify(&users(), &key, "garbage", NOW)),
        invalid(Invalid::Malformed)
    );
}

#[test]
fn exp_nbf_and_iat_are_judged_at_the_edges_of_the_leeway() {
    let key = TestKey::ed25519();
    let token = key.sign(&user_claims(NOW, 900));
    let rules = users();
    assert!(verify(&rules, &key, &token, NOW + 900 + 5).is_ok(), "exp 5 s ago");
    assert_eq!(
        outcome(verify(&rules, &key, &token, NOW + 900 + 6)),
        Err(Refusal::Expired)
    );
    assert!(verify(&rules, &key, &token, NOW - 5).is_ok(), "nbf 5 s ahead");
    assert_eq!(
        outcome(verify(&rules, &key, &token, NOW - 6)),
        invalid(Invalid::NotYetValid)
    );
    let mut issued_ahead = user_claims(NOW, 900);
    issued_ahead["iat"] = json!(NOW + 6);
    let token = key.sign(&issued_ahead);
    assert_eq!(
        outcome(verify(&rules, &key, &token, NOW)),
        invalid(Invalid::IssuedInFuture)
    );
    let long_lived = key.sign(&user_claims(NOW, 901));
    assert_eq!(
        outcome(verify(&rules, &key, &long_lived, NOW)),
        invalid(Invalid::Lifetime)
    );
    let unbounded = Rules::<UserAccess>::new(ISS, AUD, Leeway::DEFAULT);
    assert!(
        verify(&unbounded, &key, &long_lived, NOW).is_ok(),
        "authd sets no bound"
    );
    let wide = Rules::<UserAccess>::new(ISS, AUD, Leeway::MAX);
    assert!(verify(&wide, &key, &token, NOW).is_ok(), "within 30 s");
}

#[test]
fn the_leeway_is_at_most_thirty_seconds() {
    assert_eq!(Leeway::new(Duration::from_secs(30)), Some(Leeway::MAX));
    assert_eq!(Leeway::new(Duration::from_secs(31)), None);
    assert_eq!(Leeway::new(Duration::from_millis(5900)), Some(Leeway::DEFAULT));
    assert!(Leeway::DEFAULT.expired(NOW - 6, NOW));
    assert!(!Leeway::DEFAULT.expired(NOW - 5, NOW));
}

#[test]
fn missing_or_foreign_claims_are_refused() {
    let key = TestKey::ed25519();
    for claim in ["exp", "nbf", "iss", "aud", "sub", "sid", "iat"] {
        let mut claims = user_claims(NOW, 900);
        claims.as_object_mut().unwrap().remove(claim);
        let token = key.sign(&claims);
        assert_eq!(
            outcome(verify(&users(), &key, &token, NOW)),
            invalid(Invalid::Claims),
            "{claim}"
        );
    }
    for (claim, value) in [
        ("iss", json!("https://evil.test")),
        ("aud", json!("other")),
        ("exp", json!("tomorrow")),
        ("amr", json!("pwd")),
    ] {
        let mut claims = user_claims(NOW, 900);
        claims[claim] = value;
        let token = key.sign(&claims);
        assert_eq!(
            outcome(verify(&users(), &key, &token, NOW)),
            invalid(Invalid::Claims),
            "{claim}"
        );
    }
    for (claim, value) in [("sub", json!("")), ("sid", json!("")), ("iat", json!(-1))] {
        let mut claims = user_claims(NOW, 900);
        claims[claim] = value;
        let token = key.sign(&claims);
        assert_eq!(
            outcome(verify(&users(), &key, &token, NOW)),
            invalid(Invalid::Shape),
            "{claim}"
        );
    }
}

#[test]
fn a_security_event_token_is_never_an_access_token() {
    let key = TestKey::ed25519();
    let sets = Rules::<SecurityEvent>::new(ISS, AUD, Leeway::DEFAULT);
    let set = key.sign_typed(&set_claims(NOW), Some("secevent+jwt"));
    let event = verify(&sets, &key, &set, NOW).unwrap();
    assert_eq!(event.events.len(), 1);
    assert_eq!(outcome(verify(&users(), &key, &set, NOW)), invalid(Invalid::Typ));
    // Even under the access token's typ, its claims are not an access
    // token's; nor are an access token's claims with `events` added.
    let retyped = key.sign(&set_claims(NOW));
    assert_eq!(
        outcome(verify(&users(), &key, &retyped, NOW)),
        invalid(Invalid::Claims)
    );
    let mut hybrid = user_claims(NOW, 900);
    hybrid["events"] = set_claims(NOW)["events"].clone();
    let hybrid = key.sign(&hybrid);
    assert_eq!(
        outcome(verify(&users(), &key, &hybrid, NOW)),
        invalid(Invalid::Shape)
    );
    // And the other way: an access token is no event.
    let access = key.sign(&user_claims(NOW, 900));
    assert_eq!(outcome(verify(&sets, &key, &access, NOW)), invalid(Invalid::Typ));
    let retyped = key.sign_typed(&user_claims(NOW, 900), Some("secevent+jwt"));
    assert_eq!(
        outcome(verify(&sets, &key, &retyped, NOW)),
        invalid(Invalid::Claims)
    );
    let mut empty = set_claims(NOW);
    empty["events"] = json!({});
    let empty = key.sign_typed(&empty, Some("secevent+jwt"));
    assert_eq!(outcome(verify(&sets, &key, &empty, NOW)), invalid(Invalid::Shape));
}

#[test]
fn a_security_events_txn_is_written_only_when_known_and_read_back() {
    let key = TestKey::ed25519();
    let sets = Rules::<SecurityEvent>::new(ISS, AUD, Leeway::DEFAULT);
    let without = verify(
        &sets,
        &key,
        &key.sign_typed(&set_claims(NOW), Some("secevent+jwt")),
        NOW,
    )
    .unwrap();
    assert_eq!(without.txn, None);
    let written = serde_json::to_value(&without).unwrap();
    assert!(written.get("txn").is_none(), "no `txn: null`: {written}");
    let mut claims = set_claims(NOW);
    claims["txn"] = json!("change-1");
    let with = verify(&sets, &key, &key.sign_typed(&claims, Some("secevent+jwt")), NOW).unwrap();
    assert_eq!(with.txn.as_deref(), Some("change-1"));
    assert_eq!(serde_json::to_value(&with).unwrap()["txn"], "change-1");
}

#[test]
fn a_services_token_never_passes_as_a_users_nor_the_other_way() {
    let key = TestKey::ed25519();
    let services = Rules::<ServiceAccess>::new(ISS, AUD, Leeway::DEFAULT);
    let service = key.sign(&service_claims(NOW));
    let claims = verify(&services, &key, &service, NOW).unwrap();
    assert_eq!(
        (claims.sub.as_str(), claims.client_id.as_str()),
        ("svc:billing", "billing")
    );
    assert_eq!(
        outcome(verify(&users(), &key, &service, NOW)),
        invalid(Invalid::Claims),
        "no sid"
    );
    let mut with_sid = service_claims(NOW);
    with_sid["sid"] = json!("5e55-session");
    let with_sid = key.sign(&with_sid);
    assert_eq!(
        outcome(verify(&users(), &key, &with_sid, NOW)),
        invalid(Invalid::Shape),
        "sub svc:"
    );
    assert_eq!(
        outcome(verify(&services, &key, &with_sid, NOW)),
        invalid(Invalid::Shape),
        "a sid"
    );

    let user = key.sign(&user_claims(NOW, 900));
    assert_eq!(
        outcome(verify(&services, &key, &user, NOW)),
        invalid(Invalid::Claims),
        "no client_id"
    );
    let mut with_client = user_claims(NOW, 900);
    with_client["client_id"] = json!("billing");
    let with_client = key.sign(&with_client);
    assert_eq!(
        outcome(verify(&services, &key, &with_client, NOW)),
        invalid(Invalid::Shape)
    );
    let mut mismatched = service_claims(NOW);
    mismatched["client_id"] = json!("other");
    let mismatched = key.sign(&mismatched);
    assert_eq!(
        outcome(verify(&services, &key, &mismatched, NOW)),
        invalid(Invalid::Shape)
    );
}
