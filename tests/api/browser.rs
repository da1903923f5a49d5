//! The web example (examples/web) in a real Chromium: a page on its own
//! origin calls authd over gRPC-Web (CORS) and runs the WebAuthn ceremonies
//! through the browser's own `navigator.credentials`, with a CDP virtual
//! authenticator standing in for the user's device. The driver
//! (examples/web/browser_test.py, Playwright for Python with Debian's
//! chromium) serves the page, clicks through sign-up, password, TOTP,
//! passkey registration and a passwordless login, and reports what the page
//! showed; this test then checks the account from the server's side.
//! Without the tools it prints `SKIPPED: ...` and passes, unless
//! `AUTHD_TEST_REQUIRE_TOOLS=1`.

use std::path::Path;
use std::time::Duration;

use authd::pb::auth::v1 as pb;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::smtp::reserve_port;

/// A cold browser start on a busy machine, and a dozen page actions.
const TIMEOUT: Duration = Duration::from_secs(180);
const CHROMIUM: &str = "/usr/bin/chromium";

/// Skips (or, in CI, fails) unless the driver can run.
async fn tools_ready() -> bool {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let protobufjs = repo.join("examples/web/node_modules/protobufjs/dist/protobuf.min.js");
    let missing = if !Path::new(CHROMIUM).exists() {
        Some(format!(
            "{CHROMIUM} is absent; install with `apt-get install chromium`"
        ))
    } else if !protobufjs.exists() {
        Some(
            "examples/web/node_modules is absent; install with `bash examples/install.sh` \
             (or `cd examples/web && npm ci`)"
                .to_owned(),
        )
    } else {
        tool_missing("python3", &["-c", "import playwright.sync_api, pyotp"])
            .await
            .map(|why| {
                format!(
                    "{why}; install with `bash examples/install.sh` \
                     (or `pip install -r examples/web/requirements.txt`)"
                )
            })
    };
    match missing {
        Some(why) => {
            skip_test(&why);
            false
        }
        None => true,
    }
}

#[tokio::test]
async fn the_web_page_registers_a_passkey_and_logs_in_with_it_in_chromium() {
    if !tools_ready().await {
        return;
    }
    // The page's origin: WebAuthn treats http://localhost as secure, and
    // its host is the relying party's id.
    let page_port = reserve_port().port();
    let origin = format!("http://localhost:{page_port}");
    let app = spawn_app_with(|c| {
        c.cors_origins = vec![origin.clone()];
        c.webauthn_rp_id = "localhost".into();
        c.webauthn_origins = vec![origin.clone()];
    })
    .await;
    let authd = format!("http://{}", app.addr);
    let driver = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web/browser_test.py");
    let port = page_port.to_string();
    let stdout = run_tool(
        "python3",
        &[
            driver.as_os_str(),
            "--authd".as_ref(),
            authd.as_ref(),
            "--port".as_ref(),
            port.as_ref(),
        ],
        &[],
        TIMEOUT,
    )
    .await;
    let last = stdout.lines().last().unwrap_or_default();
    let report: Value =
        serde_json::from_str(last).unwrap_or_else(|e| panic!("no JSON report ({e}) in:\n{stdout}"));
    eprintln!("browser flow: {}s", report["seconds"]);

    // What the page showed after each login.
    let amr = |step: &str| -> Vec<String> {
        serde_json::from_value(report[step]["amr"].clone()).unwrap_or_default()
    };
    assert_eq!(amr("password_login"), ["pwd"], "{report:#}");
    assert_eq!(report["password_login"]["acr"], "aal1", "{report:#}");
    assert!(amr("totp_login").contains(&"otp".to_owned()), "{report:#}");
    assert_eq!(report["totp_login"]["acr"], "aal2", "{report:#}");
    let passkey_amr = amr("passkey_login");
    assert!(passkey_amr.contains(&"user".to_owned()), "{report:#}");
    assert!(passkey_amr.iter().any(|m| m == "hwk" || m == "swk"), "{report:#}");
    assert_eq!(report["passkey_login"]["acr"], "aal2", "{report:#}");
    let second = amr("passkey_second_factor");
    assert!(second.contains(&"pwd".to_owned()), "{report:#}");
    assert!(second.iter().any(|m| m == "hwk" || m == "swk"), "{report:#}");
    assert_eq!(report["passkey_second_factor"]["acr"], "aal2", "{report:#}");
    // The virtual authenticator holds one discoverable credential: it
    // signed once to register and once for each of the two logins.
    assert_eq!(
        report["authenticator_credentials"],
        json!([{"resident": true, "sign_count": 3}]),
        "{report:#}"
    );

    // The server's side: the passkey login's token is authd's, for the
    // account the page signed up, which now has a passkey factor.
    let token = report["passkey_access_token"].as_str().unwrap();
    let mut client = app.client.clone();
    let me = client
        .get_me(with_bearer(pb::GetMeRequest {}, token))
        .await
        .expect("GetMe with the passkey login's token")
        .into_inner();
    assert_eq!(me.user.unwrap().email, report["email"].as_str().unwrap());
    let claims = jwt_claims(token);
    assert_eq!(claims["acr"], "aal2", "{claims}");
    let claimed: Vec<&str> = claims["amr"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(claimed.contains(&"user"), "{claims}");
    assert!(claimed.contains(&"hwk") || claimed.contains(&"swk"), "{claims}");
    assert!(!claimed.contains(&"pwd"), "a passkey alone: {claims}");

    let factors = client
        .list_factors(with_bearer(pb::ListFactorsRequest {}, token))
        .await
        .unwrap()
        .into_inner()
        .factors;
    let kinds: Vec<pb::FactorKind> = factors.iter().map(|f| f.kind()).collect();
    assert_eq!(
        kinds,
        [pb::FactorKind::Totp, pb::FactorKind::Passkey],
        "{factors:?}"
    );
    assert!(
        factors[1].last_used_at.is_some(),
        "the passkey login used it: {factors:?}"
    );
}
