"""Drives examples/web in a real Chromium against a running authd.

    python3 examples/web/browser_test.py --authd http://127.0.0.1:50051 --port 3000

serves the page (and what it loads: examples/web, node_modules, proto/) on
http://localhost:PORT, the origin authd must have in AUTHD_CORS_ORIGINS and
AUTHD_WEBAUTHN_ORIGINS, and clicks through it as a person would: sign up,
log in with the password, add an authenticator app (codes from pyotp),
log out, log in with the password and a code, register a passkey, log out,
log in with the password and the passkey as second factor, log out, log in
with the passkey alone; on the way, three refusals as the page shows them
(a short password, a wrong code, the same passkey registered twice). The
passkey lives in a CDP virtual
authenticator (user-verifying, resident keys), so the page runs the real
navigator.credentials API. Prints one JSON line with what the page showed;
exits non-zero, with the page's console, on any step that fails.

Needs Debian's chromium (/usr/bin/chromium, or CHROMIUM=path) and
examples/web/requirements.txt; tests/api/browser.rs runs it.
"""

import argparse
import functools
import http.server
import json
import os
import sys
import threading
import time
import uuid
from pathlib import Path

import pyotp
from playwright.sync_api import sync_playwright

REPO = Path(__file__).resolve().parents[2]
SERVED = ("/examples/web/", "/proto/")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# One action: a few gRPC-Web calls and, at most, one WebAuthn ceremony.
ACTION_TIMEOUT_MS = 30_000


class Files(http.server.SimpleHTTPRequestHandler):
    """The repository's root, but only the page and the protos it loads."""

    def send_head(self):
        if not self.path.startswith(SERVED):
            self.send_error(404)
            return None
        return super().send_head()

    def log_message(self, *args):
        pass


def serve(port):
    handler = functools.partial(Files, directory=str(REPO))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Page:
    def __init__(self, page):
        self.page = page
        self.console = []
        page.on("console", lambda m: self.console.append(f"{m.type}: {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"pageerror: {e}"))

    def done(self):
        return int(self.page.get_attribute("body", "data-done") or "-1")

    def act(self, button, step):
        """Clicks `button` and waits until the page's action is over;
        fails with the page's error unless it succeeded."""
        before = self.done()
        self.page.click(button)
        self.page.wait_for_function(
            f"Number(document.body.dataset.done) > {before}", timeout=ACTION_TIMEOUT_MS
        )
        error = self.page.inner_text("#error").strip()
        if error:
            raise StepFailed(step, error)
        return self.state()

    def refused(self, button, step, reason):
        """Clicks `button`, expecting the page to show an error with
        `reason` (an ErrorInfo reason, or a DOMException's name); returns
        the error's text."""
        before = self.done()
        self.page.click(button)
        self.page.wait_for_function(
            f"Number(document.body.dataset.done) > {before}", timeout=ACTION_TIMEOUT_MS
        )
        shown = self.page.get_attribute("#error", "data-reason")
        error = self.page.inner_text("#error").strip()
        if shown != reason:
            raise StepFailed(step, f"{error!r} (reason {shown!r}), not {reason}")
        return error

    def state(self):
        p = self.page
        amr = p.locator("#amr-acr")
        shown = amr.count() > 0 and not p.locator("#signed-in").is_hidden()
        return {
            "who": p.get_attribute("#who", "data-state"),
            "text": p.inner_text("#who"),
            "notice": p.inner_text("#notice"),
            "amr": amr.get_attribute("data-amr").split() if shown else None,
            "acr": amr.get_attribute("data-acr") if shown else None,
            "factors": p.inner_text("#factors") if shown else None,
        }

    def access_token(self):
        return self.page.text_content("#access-token")


class StepFailed(Exception):
    def __init__(self, step, error):
        super().__init__(f"{step}: the page shows {error!r}")


def expect(step, state, who):
    if state["who"] != who:
        raise StepFailed(step, f"state {state['who']!r}, not {who!r}: {state}")


def run(page, report):
    email = f"web-{uuid.uuid4().hex[:12]}@example.com"
    password = "correct horse battery staple"
    report["email"] = email
    page.page.fill("#login", email)
    page.page.fill("#password", "short")
    # authd's refusal, decoded from grpc-status-details-bin: the reason and
    # the field violation.
    error = page.refused("#signup", "sign up with a short password", "INVALID_ARGUMENT")
    if "password" not in error:
        raise StepFailed("sign up with a short password", f"no field violation in {error!r}")
    report["short_password_error"] = error

    page.page.fill("#password", password)
    s = page.act("#signup", "sign up")
    expect("sign up", s, "signed-out")

    s = page.act("#password-login", "password login")
    expect("password login", s, "signed-in")
    report["password_login"] = s

    page.act("#enroll-totp", "EnrollTotp")
    app = pyotp.TOTP(page.page.inner_text("#totp-secret").strip())
    confirmed_at = time.time()
    page.page.fill("#totp-confirm-code", app.at(confirmed_at))
    report["totp_enrolled"] = page.act("#confirm-totp", "ConfirmTotp")

    expect("log out", page.act("#logout", "log out"), "signed-out")

    page.page.fill("#login", email)
    page.page.fill("#password", password)
    s = page.act("#password-login", "password login with TOTP")
    expect("password login with TOTP", s, "second-factor")
    window = {app.at(confirmed_at + 30 * k) for k in range(-1, 3)}
    wrong = next(c for c in ("000000", "000001", "000002", "000003", "000004") if c not in window)
    page.page.fill("#totp-login-code", wrong)
    page.refused("#complete-login", "CompleteLogin with a wrong code", "INVALID_CREDENTIALS")
    # The next step's code: the one ConfirmTotp used cannot serve twice.
    page.page.fill("#totp-login-code", app.at(confirmed_at + 30))
    s = page.act("#complete-login", "CompleteLogin")
    expect("CompleteLogin", s, "signed-in")
    report["totp_login"] = s

    s = page.act("#register-passkey", "register a passkey")
    report["passkey_registered"] = s
    # The options exclude the account's passkeys, so the browser itself
    # refuses to register the same authenticator twice.
    page.refused("#register-passkey", "register the same passkey again", "InvalidStateError")

    # The passkey as the second factor after a password (Login's
    # MfaChallenge.passkey_options, answered to CompleteLogin).
    expect("log out", page.act("#logout", "log out"), "signed-out")
    page.page.fill("#login", email)
    page.page.fill("#password", password)
    s = page.act("#password-login", "password login with a passkey")
    expect("password login with a passkey", s, "second-factor")
    s = page.act("#complete-login-passkey", "CompleteLogin with a passkey")
    expect("CompleteLogin with a passkey", s, "signed-in")
    report["passkey_second_factor"] = s

    expect("log out", page.act("#logout", "log out"), "signed-out")

    s = page.act("#passkey-login", "passkey login")
    expect("passkey login", s, "signed-in")
    report["passkey_login"] = s
    report["passkey_access_token"] = page.access_token()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--authd", default="http://127.0.0.1:50051", help="authd's gRPC-Web URL")
    parser.add_argument("--port", type=int, default=3000, help="the page's port on localhost")
    parser.add_argument("--screenshot", metavar="PNG", help="save the page as it ends here")
    args = parser.parse_args()

    server = serve(args.port)
    report = {}
    started = time.monotonic()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=os.environ.get("CHROMIUM", "/usr/bin/chromium"),
            args=CHROMIUM_ARGS,
            headless=True,
        )
        context = browser.new_context()
        page = Page(context.new_page())
        cdp = context.new_cdp_session(page.page)
        cdp.send("WebAuthn.enable")
        authenticator = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                }
            },
        )["authenticatorId"]
        page.page.set_default_timeout(ACTION_TIMEOUT_MS)
        page.page.goto(f"http://localhost:{args.port}/examples/web/?authd={args.authd}")
        page.page.wait_for_function("document.body.dataset.done !== undefined")
        try:
            error = page.page.inner_text("#error").strip()
            if error:
                raise StepFailed("loading the page", error)
            run(page, report)
            credentials = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})
            if args.screenshot:
                page.page.screenshot(path=args.screenshot, full_page=True)
            report["authenticator_credentials"] = [
                {"resident": c["isResidentCredential"], "sign_count": c["signCount"]}
                for c in credentials["credentials"]
            ]
        except Exception:
            print("--- the page's console", file=sys.stderr)
            print("\n".join(page.console), file=sys.stderr)
            raise
        finally:
            browser.close()
            server.shutdown()
    report["seconds"] = round(time.monotonic() - started, 2)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
