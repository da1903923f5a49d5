//! Bearer tokens an attacker can make without the signing key: forged,
//! re-signed, mis-typed, out of date, truncated, or not bearer tokens at all.
//! Each is refused with UNAUTHENTICATED/TOKEN_INVALID (TOKEN_EXPIRED for an
//! expired one) and introspects as inactive.

use std::time::Duration;

use authd::pb::auth::v1 as pb;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePublicKey as _};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tonic::Code;

use super::raw_h2::RawConnection;
use crate::helpers::*;

/// A signed-in user's genuine token, split into what an attacker can read.
struct Genuine {
    token: String,
    header: Value,
    claims: Value,
}

async fn genuine(app: &TestApp) -> Genuine {
    let (_, tokens) = app.signed_in_user().await;
    let token = tokens.access_token;
    Genuine {
        header: jwt_part(&token, 0),
        claims: jwt_part(&token, 1),
        token,
    }
}

fn attacker_pem() -> String {
    authd::crypto::keys::generate_ed25519_pem().unwrap()
}

/// The control of every case: the same header and claims, signed with the
/// app's own key, are accepted, so the one difference is what is refused.
async fn assert_accepted(app: &TestApp, header: &Value, claims: &Value) {
    let token = sign_ed25519(&app.signing_pem, header, claims);
    app.get_me(&token).await.expect("the control token is accepted");
}

async fn assert_refused(app: &TestApp, token: &str, reason: &str) {
    assert_error(app.get_me(token).await, Code::Unauthenticated, reason);
    let answer = app.introspect(token).await.expect("introspection answers");
    assert_eq!(
        answer,
        pb::IntrospectTokenResponse::default(),
        "inactive, and nothing else"
    );
}

async fn get_me_with_authorization(app: &TestApp, values: &[&str]) -> Result<pb::User, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetMeRequest {});
    for value in values {
        request
            .metadata_mut()
            .append("authorization", value.parse().unwrap());
    }
    app.client
        .clone()
        .get_me(request)
        .await
        .map(|r| r.into_inner().user.unwrap())
}

#[tokio::test]
async fn jwt_with_a_tampered_payload_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let (other, _) = app.signed_in_user().await;
    let mut claims = g.claims.clone();
    claims["sub"] = json!(other.id);
    let parts: Vec<&str> = g.token.split('.').collect();
    let forged = format!("{}.{}.{}", parts[0], b64(claims.to_string()), parts[2]);
    assert_refused(&app, &forged, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_with_the_signature_of_another_token_is_refused() {
    let app = spawn_app().await;
    let victim = genuine(&app).await;
    let attacker = genuine(&app).await;
    let v: Vec<&str> = victim.token.split('.').collect();
    let a: Vec<&str> = attacker.token.split('.').collect();
    let spliced = format!("{}.{}.{}", v[0], v[1], a[2]);
    assert_refused(&app, &spliced, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_signed_by_another_key_under_our_kid_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    assert_accepted(&app, &g.header, &g.claims).await;
    let forged = sign_ed25519(&attacker_pem(), &g.header, &g.claims);
    assert_refused(&app, &forged, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_with_an_unknown_kid_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut header = g.header.clone();
    header["kid"] = json!("someone-elses-key");
    // Signed with the real key: only the kid is wrong.
    let token = sign_ed25519(&app.signing_pem, &header, &g.claims);
    assert_refused(&app, &token, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_without_a_kid_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut header = g.header.clone();
    header.as_object_mut().unwrap().remove("kid");
    let token = sign_ed25519(&app.signing_pem, &header, &g.claims);
    assert_refused(&app, &token, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn expired_jwt_is_refused_as_expired() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut claims = g.claims.clone();
    claims["iat"] = json!(now() - 3600);
    claims["nbf"] = json!(now() - 3600);
    // Well past the verifier's small leeway.
    claims["exp"] = json!(now() - 120);
    let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
    assert_refused(&app, &token, "TOKEN_EXPIRED").await;
}

#[tokio::test]
async fn not_yet_valid_jwt_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut claims = g.claims.clone();
    claims["nbf"] = json!(now() + 600);
    claims["iat"] = json!(now() + 600);
    claims["exp"] = json!(now() + 1500);
    let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
    assert_refused(&app, &token, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_missing_a_required_claim_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for claim in ["iss", "aud", "sub", "sid", "exp", "nbf"] {
        let mut claims = g.claims.clone();
        claims.as_object_mut().unwrap().remove(claim);
        let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
        let status = app.get_me(&token).await.expect_err(claim);
        assert_eq!(reason(&status), "TOKEN_INVALID", "without {claim}");
    }
}

#[tokio::test]
async fn jwt_with_alg_none_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let mut header = g.header.clone();
        header["alg"] = json!(alg);
        let unsigned = format!("{}.{}.", b64(header.to_string()), b64(g.claims.to_string()));
        assert_refused(&app, &unsigned, "TOKEN_INVALID").await;
        // The same with the genuine signature left in place.
        let signature = g.token.rsplit('.').next().unwrap();
        assert_refused(&app, &format!("{unsigned}{signature}"), "TOKEN_INVALID").await;
    }
}

#[tokio::test]
async fn jwt_hmac_signed_with_our_public_key_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let public = ed25519_dalek::SigningKey::from_pkcs8_pem(&app.signing_pem)
        .unwrap()
        .verifying_key();
    let public_pem = public
        .to_public_key_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .unwrap();
    let x = b64(public.as_bytes());
    // Every form of the public key an algorithm-confusion attack might try
    // as an HMAC secret.
    let secrets: [&[u8]; 3] = [public.as_bytes(), x.as_bytes(), public_pem.as_bytes()];
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for secret in secrets {
            let mut header = Header::new(alg);
            header.kid = g.header["kid"].as_str().map(str::to_owned);
            header.typ = Some("at+jwt".into());
            let token = jsonwebtoken::encode(&header, &g.claims, &EncodingKey::from_secret(secret)).unwrap();
            assert_refused(&app, &token, "TOKEN_INVALID").await;
        }
    }
}

#[tokio::test]
async fn jwt_with_es256_under_our_eddsa_kid_is_refused() {
    use p256::ecdsa::signature::Signer as _;
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut header = g.header.clone();
    header["alg"] = json!("ES256");
    let key = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
    let input = format!("{}.{}", b64(header.to_string()), b64(g.claims.to_string()));
    let signature: p256::ecdsa::Signature = key.sign(input.as_bytes());
    let token = format!("{input}.{}", b64(signature.to_bytes()));
    assert_refused(&app, &token, "TOKEN_INVALID").await;
    // Nor is the genuine EdDSA signature accepted under another alg name.
    let mut header = g.header.clone();
    header["alg"] = json!("Ed25519");
    let relabelled = sign_ed25519(&app.signing_pem, &header, &g.claims);
    assert_refused(&app, &relabelled, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn jwt_with_a_wrong_issuer_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for issuer in [
        "https://evil.example",
        "https://authd.test/",
        "HTTPS://AUTHD.TEST",
        "",
    ] {
        let mut claims = g.claims.clone();
        claims["iss"] = json!(issuer);
        let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
        assert_refused(&app, &token, "TOKEN_INVALID").await;
    }
}

#[tokio::test]
async fn jwt_with_a_wrong_audience_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for audience in [
        json!("another-service"),
        json!(["another-service"]),
        json!([]),
        json!(""),
    ] {
        let mut claims = g.claims.clone();
        claims["aud"] = audience.clone();
        let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
        let status = app.get_me(&token).await.expect_err("refused");
        assert_eq!(reason(&status), "TOKEN_INVALID", "aud {audience}");
    }
}

#[tokio::test]
async fn jwt_with_a_subject_that_names_no_user_id_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for (claim, value) in [
        ("sub", json!("admin")),
        ("sub", json!(42)),
        ("sid", json!("' OR 1=1 --")),
        ("sub", json!(uuid::Uuid::nil().to_string())),
    ] {
        let mut claims = g.claims.clone();
        claims[claim] = value.clone();
        let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
        let status = app.get_me(&token).await.expect_err("refused");
        assert_eq!(
            status.code(),
            Code::Unauthenticated,
            "{claim} = {value}: {status:?}"
        );
    }
}

#[tokio::test]
async fn jwt_of_another_type_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for typ in [
        json!("JWT"),
        json!("id_token+jwt"),
        json!("dpop+jwt"),
        json!(null),
        json!(7),
    ] {
        let mut header = g.header.clone();
        header["typ"] = typ.clone();
        let token = sign_ed25519(&app.signing_pem, &header, &g.claims);
        let status = app.get_me(&token).await.expect_err("refused");
        assert_eq!(reason(&status), "TOKEN_INVALID", "typ {typ}");
    }
}

#[tokio::test]
async fn truncated_jwt_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let t = g.token.as_str();
    let last_dot = t.rfind('.').unwrap();
    let first_dot = t.find('.').unwrap();
    for cut in [
        t.len() - 1,
        t.len() - 2,
        t.len() - 10,
        last_dot + 1,
        last_dot,
        first_dot + 1,
        first_dot,
        t.len() / 2,
        10,
    ] {
        let status = app.get_me(&t[..cut]).await.expect_err("refused");
        assert_eq!(reason(&status), "TOKEN_INVALID", "cut at {cut} of {}", t.len());
    }
}

#[tokio::test]
async fn jwt_with_an_empty_or_garbled_signature_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let (input, signature) = g.token.rsplit_once('.').unwrap();
    let mut flipped = signature.as_bytes().to_vec();
    flipped[5] = if flipped[5] == b'A' { b'B' } else { b'A' };
    for sig in [
        String::new(),
        "AAAA".to_owned(),
        String::from_utf8(flipped).unwrap(),
        format!("{signature}AA"),
        signature.replace('-', "+").replace('_', "/"),
        "!!!!".to_owned(),
    ]
    .into_iter()
    .filter(|sig| sig != signature)
    {
        let status = app.get_me(&format!("{input}.{sig}")).await.expect_err("refused");
        assert_eq!(reason(&status), "TOKEN_INVALID", "signature {sig:?}");
    }
}

#[tokio::test]
async fn jwt_with_extra_segments_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    for token in [
        format!("{}.extra", g.token),
        format!("{}.", g.token),
        format!("{}..x.y", g.token),
        format!("x.{}", g.token),
    ] {
        let status = app.get_me(&token).await.expect_err("refused");
        assert_eq!(reason(&status), "TOKEN_INVALID", "{token}");
    }
}

#[tokio::test]
async fn jwt_with_jku_x5u_or_an_embedded_jwk_fetches_nothing_and_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let bait = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", bait.local_addr().unwrap());
    let pem = attacker_pem();
    let attacker = authd::crypto::keys::Key::from_pkcs8_pem(&pem).unwrap();
    let jwk = serde_json::to_value(&attacker.jwk).unwrap();
    for kid in [attacker.kid.clone(), g.header["kid"].as_str().unwrap().to_owned()] {
        let header = json!({
            "alg": "EdDSA",
            "typ": "at+jwt",
            "kid": kid,
            "jku": url,
            "x5u": url,
            "jwk": jwk,
        });
        let token = sign_ed25519(&pem, &header, &g.claims);
        assert_refused(&app, &token, "TOKEN_INVALID").await;
    }
    let fetched = tokio::time::timeout(Duration::from_millis(500), bait.accept()).await;
    assert!(fetched.is_err(), "authd must never fetch a key named by a token");
}

#[tokio::test]
async fn oversized_bearer_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut claims = g.claims.clone();
    claims["padding"] = json!("x".repeat(8 * 1024));
    let token = sign_ed25519(&app.signing_pem, &g.header, &claims);
    assert_refused(&app, &token, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn authorization_header_without_the_bearer_scheme_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let t = &g.token;
    for value in [
        t.clone(),
        format!("Basic {t}"),
        format!("Token {t}"),
        format!("Bearer: {t}"),
        format!("Bearer{t}"),
        format!("JWT {t}"),
        "Bearer".to_owned(),
    ] {
        let result = get_me_with_authorization(&app, &[&value]).await;
        assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");
    }
    // The control: the scheme is case-insensitive (RFC 9110 11.1).
    get_me_with_authorization(&app, &[&format!("bearer {t}")])
        .await
        .unwrap();
}

#[tokio::test]
async fn two_authorization_headers_are_refused() {
    let app = spawn_app().await;
    let victim = genuine(&app).await;
    let junk = "Bearer junk";
    let good = format!("Bearer {}", victim.token);
    for pair in [
        [good.as_str(), junk],
        [junk, good.as_str()],
        [good.as_str(), good.as_str()],
    ] {
        let result = get_me_with_authorization(&app, &pair).await;
        assert_error(result, Code::Unauthenticated, "TOKEN_INVALID");
    }
}

#[tokio::test]
async fn refresh_token_presented_as_bearer_is_refused() {
    let app = spawn_app().await;
    let (_, tokens) = app.signed_in_user().await;
    assert_refused(&app, &tokens.refresh_token, "TOKEN_INVALID").await;
}

#[tokio::test]
async fn bearer_with_non_ascii_bytes_is_refused() {
    let app = spawn_app().await;
    let g = genuine(&app).await;
    let mut raw = RawConnection::open(app.addr).await;
    let mut value = b"Bearer ".to_vec();
    value.extend_from_slice(g.token.as_bytes());
    value.extend_from_slice(b"\xff\xfe");
    let reply = raw
        .call(
            "/auth.v1.AuthService/GetMe",
            &[("authorization", http::HeaderValue::from_bytes(&value).unwrap())],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.grpc_status, Some(Code::Unauthenticated as i32), "{reply:?}");
    // The connection still serves the same token, well-formed.
    let reply = raw
        .call(
            "/auth.v1.AuthService/GetMe",
            &[("authorization", format!("Bearer {}", g.token).parse().unwrap())],
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reply.grpc_status, Some(0), "{reply:?}");
}
