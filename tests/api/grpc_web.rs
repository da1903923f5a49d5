//! Browsers: gRPC-Web over HTTP/1.1 on authd's own port (tonic-web), and
//! the CORS policy of AUTHD_CORS_ORIGINS.

use authd::pb::auth::v1 as pb;
use prost::Message as _;

use crate::helpers::*;
use crate::http1::{HttpResponse, Request};

const APP_ORIGIN: &str = "https://app.example.com";

/// One gRPC-Web frame: flag byte, big-endian length, payload.
fn frame(message: &impl prost::Message) -> Vec<u8> {
    let payload = message.encode_to_vec();
    let mut out = vec![0u8];
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// The data frames' payloads and the trailer frame's text.
fn frames(body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers, mut rest) = (Vec::new(), String::new(), body);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes(rest[1..5].try_into().unwrap()) as usize;
        let payload = &rest[5..5 + len];
        if rest[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            data.push(payload.to_vec());
        }
        rest = &rest[5 + len..];
    }
    (data, trailers)
}

/// grpc-status of a gRPC-Web answer: in the headers when trailers-only,
/// else in the trailer frame.
fn grpc_status(response: &HttpResponse) -> String {
    if let Some(s) = response.header("grpc-status") {
        return s.to_owned();
    }
    let (_, trailers) = frames(&response.body);
    trailers
        .split("\r\n")
        .find_map(|l| l.strip_prefix("grpc-status:"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn call(method: &str, message: &impl prost::Message) -> Request<'static> {
    let path: &'static str = Box::leak(format!("/auth.v1.AuthService/{method}").into_boxed_str());
    let mut request = Request::new("POST", path)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", APP_ORIGIN);
    request.body = frame(message);
    request
}

#[tokio::test]
async fn a_browser_calls_authd_with_grpc_web() {
    let app = spawn_app_with(|c| c.cors_origins = vec![APP_ORIGIN.into()]).await;
    let (user, tokens) = app.signed_in_user().await;

    let r = call("GetMe", &pb::GetMeRequest {})
        .bearer(&tokens.access_token)
        .send(app.addr)
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("application/grpc-web")
    );
    assert_eq!(r.header("access-control-allow-origin"), Some(APP_ORIGIN));
    assert_eq!(grpc_status(&r), "0", "{r:?}");
    let (data, _) = frames(&r.body);
    let me = pb::GetMeResponse::decode(data[0].as_slice()).unwrap();
    assert_eq!(me.user.unwrap().id, user.id);

    // Errors keep their code and details.
    let r = call("GetMe", &pb::GetMeRequest {}).send(app.addr).await;
    assert_eq!(grpc_status(&r), "16", "{r:?}");
    let has_details = r.header("grpc-status-details-bin").is_some()
        || frames(&r.body).1.contains("grpc-status-details-bin");
    assert!(has_details, "{r:?}");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let app = spawn_app_with(|c| c.cors_origins = vec![APP_ORIGIN.into()]).await;
    let preflight = |origin: &'static str| {
        Request::new("OPTIONS", "/auth.v1.AuthService/Login")
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type,x-grpc-web,authorization",
            )
    };
    let ok = preflight(APP_ORIGIN).send(app.addr).await;
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some(APP_ORIGIN),
        "{ok:?}"
    );
    let allowed_headers = ok.header("access-control-allow-headers").unwrap_or_default();
    assert!(allowed_headers.contains("authorization"), "{ok:?}");
    let other = preflight("https://evil.example").send(app.addr).await;
    assert_eq!(other.header("access-control-allow-origin"), None, "{other:?}");

    // The default: no browser origin at all.
    let closed = spawn_app().await;
    let r = preflight(APP_ORIGIN).send(closed.addr).await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
    let r = call("GetJwks", &pb::GetJwksRequest {}).send(closed.addr).await;
    assert_eq!(r.header("access-control-allow-origin"), None, "{r:?}");
}
