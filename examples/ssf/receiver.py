#!/usr/bin/env python3
"""A Shared Signals receiver, written from the specifications alone.

It is a second, independent reading of the standards that authd's
transmitter implements, so that a misreading on authd's side shows up as a
refusal here rather than passing a test that reuses authd's own code:

- RFC 8417  Security Event Token (SET)
- RFC 8935  Push-Based SET Delivery Using HTTP
- RFC 8936  Poll-Based SET Delivery Using HTTP
- RFC 9493  Subject Identifiers for Security Event Tokens
- OpenID Shared Signals Framework 1.0, CAEP 1.0 and RISC 1.0

Every SET is checked for:

- a JWS signature made by a key of the transmitter's JWKS (fetched from
  --jwks; fetched again when a SET names a `kid` it does not list), with the
  algorithm the JWK itself determines (never the one the header asks for);
- header `typ` `secevent+jwt` (or `application/secevent+jwt`, any case);
- `iss` equal to --issuer, `aud` naming --audience, `iat` and `jti` present,
  and no `exp` (a SET states a fact; it never expires);
- `sub_id` shaped as RFC 9493 (and SSF's `complex`) defines it;
- exactly one event (SSF 1.0 says SHOULD; authd promises it), its type one
  of the nine in EVENT_TYPES (CAEP session-revoked, credential-change,
  token-claims-change; RISC account-disabled, account-enabled,
  account-purged, identifier-changed; SSF verification, stream-updated)
  spelled exactly as the specifications do, its payload holding the members that
  event defines (and no malformed optional one);
- with --expect-state, a verification event carrying that `state` (else
  ``invalid_state``, SSF 1.0 §8.1.4.1).

Modes
-----

push (RFC 8935): serve http://HOST:PORT/events::

    receiver.py push --listen 127.0.0.1:0 --issuer ISS --audience AUD \\
        --jwks https://authd.example/.well-known/jwks.json \\
        [--authorization "Bearer secret"] --out received.jsonl

prints ``listening http://HOST:PORT/events`` once ready. With
--authorization, a request whose Authorization header differs gets 401.
A body that is not ``application/secevent+jwt`` gets 400. A good SET gets
202 with an empty body; a bad one 400 with RFC 8935's JSON error
(``{"err": ..., "description": ...}``, err one of invalid_request,
invalid_key, invalid_issuer, invalid_audience, authentication_failed,
invalid_state).

poll (RFC 8936): ask --url for SETs, acknowledge those recorded::

    receiver.py poll --url https://authd.example/ssf/poll \\
        --authorization "Bearer token" --issuer ISS --audience AUD \\
        --jwks URL --out received.jsonl [--max-events 10] \\
        [--return-immediately] [--until N] [--timeout 30]

stops once --until SETs were recorded (after acknowledging them) or when
--timeout seconds have passed; exits 1 when --until was not reached. A SET
that fails a check is reported back in ``setErrs`` and not acknowledged.

Output: one JSON line per SET received, in order, appended to --out:
``{"jti", "txn", "iat", "sub_id", "events", "received_at"}``; a duplicate
``jti`` is recorded again (counting duplicates is the point of a test
receiver). A refused SET adds ``{"rejected": err, "description", "jti"?,
"received_at"}``.

Error codes chosen where RFC 8935 leaves room: an unknown `kid`, or a header
`alg` other than the JWK's, is ``invalid_key``; a signature that does not
verify is ``authentication_failed`` (the SET does not come from the
transmitter); anything else wrong with the token or its events is
``invalid_request``.
"""

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

SET_MEDIA_TYPE = "application/secevent+jwt"
LEEWAY_SECONDS = 30
MAX_BODY_BYTES = 64 * 1024
JWKS_REFETCH_INTERVAL = 1.0
# The `state` of the verification this receiver asked for (--expect-state).
EXPECTED_STATE = None

CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
RISC = "https://schemas.openid.net/secevent/risc/event-type/"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"

CAEP_CREDENTIAL_CHANGE_TYPES = {"create", "revoke", "update", "delete"}
CAEP_INITIATING_ENTITIES = {"admin", "user", "policy", "system"}
SSF_STREAM_STATUSES = {"enabled", "paused", "disabled"}


class Refused(Exception):
    """A SET this receiver will not accept, with RFC 8935's error code."""

    def __init__(self, err, description):
        super().__init__(description)
        self.err = err
        self.description = description


def _need(condition, description):
    if not condition:
        raise Refused("invalid_request", description)


def _is_text(value):
    return isinstance(value, str) and value != ""


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --- Event payloads (CAEP 1.0 §3, RISC 1.0 §2, SSF 1.0 §8) ---------------


def _caep_common(payload):
    # CAEP 1.0 §2: claims every event may carry, each optional.
    if "event_timestamp" in payload:
        _need(_is_number(payload["event_timestamp"]), "event_timestamp must be a NumericDate")
    if "initiating_entity" in payload:
        _need(
            payload["initiating_entity"] in CAEP_INITIATING_ENTITIES,
            "initiating_entity must be admin, user, policy or system",
        )
    for reason in ("reason_admin", "reason_user"):
        if reason in payload:
            messages = payload[reason]
            _need(
                isinstance(messages, dict) and messages and all(isinstance(m, str) for m in messages.values()),
                f"{reason} maps language tags to messages",
            )


def _session_revoked(payload, sub_id):
    _caep_common(payload)


def _credential_change(payload, sub_id):
    _caep_common(payload)
    _need(_is_text(payload.get("credential_type")), "credential-change needs credential_type")
    _need(
        payload.get("change_type") in CAEP_CREDENTIAL_CHANGE_TYPES,
        "credential-change needs change_type create, revoke, update or delete",
    )


def _token_claims_change(payload, sub_id):
    _caep_common(payload)
    claims = payload.get("claims")
    _need(isinstance(claims, dict) and claims, "token-claims-change needs a non-empty claims object")


def _risc(payload, sub_id):
    # RISC's account events define no required members.
    pass


def _verification(payload, sub_id):
    if "state" in payload:
        _need(isinstance(payload["state"], str), "verification state must be a string")
    _need(sub_id.get("format") == "opaque", "a stream's own event names the stream (opaque)")
    # SSF 1.0 §8.1.4.1: a receiver confirms the state it asked for.
    if EXPECTED_STATE is not None and payload.get("state") != EXPECTED_STATE:
        raise Refused("invalid_state", f"state {payload.get('state')!r} is not the one requested")


def _stream_updated(payload, sub_id):
    _need(payload.get("status") in SSF_STREAM_STATUSES, "stream-updated needs status enabled, paused or disabled")
    if "reason" in payload:
        _need(isinstance(payload["reason"], str), "stream-updated reason must be a string")
    _need(sub_id.get("format") == "opaque", "a stream's own event names the stream (opaque)")


EVENT_TYPES = {
    CAEP + "session-revoked": _session_revoked,
    CAEP + "credential-change": _credential_change,
    CAEP + "token-claims-change": _token_claims_change,
    RISC + "account-disabled": _risc,
    RISC + "account-enabled": _risc,
    RISC + "account-purged": _risc,
    RISC + "identifier-changed": _risc,
    SSF + "verification": _verification,
    SSF + "stream-updated": _stream_updated,
}


# --- Subject identifiers (RFC 9493 §3; SSF 1.0 §3: `complex`, `jwt_id`,
# `saml_assertion_id`, `ip-addresses`) ---------------------------------------

SIMPLE_FORMATS = {
    "account": ("uri",),
    "email": ("email",),
    "iss_sub": ("iss", "sub"),
    "opaque": ("id",),
    "phone_number": ("phone_number",),
    "did": ("url",),
    "uri": ("uri",),
    "jwt_id": ("iss", "jti"),
    "saml_assertion_id": ("issuer", "assertion_id"),
}


def _simple_subject(sub_id, where):
    _need(isinstance(sub_id, dict), f"{where} must be an object")
    fmt = sub_id.get("format")
    if fmt == "aliases":
        identifiers = sub_id.get("identifiers")
        _need(isinstance(identifiers, list) and identifiers, f"{where}: aliases needs identifiers")
        for i, alias in enumerate(identifiers):
            _need(isinstance(alias, dict) and alias.get("format") != "aliases", f"{where}: aliases do not nest")
            _simple_subject(alias, f"{where}.identifiers[{i}]")
        return
    if fmt == "ip-addresses":
        addresses = sub_id.get("ip-addresses")
        _need(
            isinstance(addresses, list) and addresses and all(_is_text(a) for a in addresses),
            f"{where}: ip-addresses needs an array of addresses",
        )
        return
    _need(fmt in SIMPLE_FORMATS, f"{where}: unknown subject format {fmt!r}")
    for member in SIMPLE_FORMATS[fmt]:
        _need(_is_text(sub_id.get(member)), f"{where}: format {fmt} needs {member}")
    if fmt == "account":
        _need(sub_id["uri"].startswith("acct:"), f"{where}: an account uri starts with acct:")


def check_subject(sub_id):
    _need(isinstance(sub_id, dict), "sub_id is required and must be an object")
    if sub_id.get("format") != "complex":
        _simple_subject(sub_id, "sub_id")
        return
    # SSF names user, device, session, application, tenant, org_unit and
    # group, and allows other names: every member is a simple subject.
    members = [m for m in sub_id if m != "format"]
    _need(members, "a complex sub_id has at least one member")
    for member in members:
        _simple_subject(sub_id[member], f"sub_id.{member}")


# --- Keys -------------------------------------------------------------------


class Jwks:
    """The transmitter's published keys, fetched again for an unknown kid."""

    def __init__(self, url):
        self.url = url
        self.keys = {}
        self.fetched_at = 0.0
        self.lock = threading.Lock()

    def _fetch(self):
        with urllib.request.urlopen(self.url, timeout=10) as response:
            document = json.load(response)
        keys = {}
        for jwk in document.get("keys", []):
            if jwk.get("use", "sig") != "sig" or not jwk.get("kid"):
                continue
            try:
                keys[jwk["kid"]] = jwt.PyJWK(jwk)
            except jwt.PyJWKError:
                continue  # a key type this receiver cannot use
        self.keys = keys
        self.fetched_at = time.monotonic()

    def key(self, kid):
        with self.lock:
            if kid not in self.keys and time.monotonic() - self.fetched_at >= JWKS_REFETCH_INTERVAL:
                try:
                    self._fetch()
                except (OSError, ValueError) as e:
                    raise Refused("invalid_key", f"the JWKS could not be fetched: {e}") from e
            found = self.keys.get(kid)
        if found is None:
            raise Refused("invalid_key", f"no key {kid!r} in the transmitter's JWKS")
        return found


# --- The SET ----------------------------------------------------------------


class Checker:
    def __init__(self, issuer, audience, jwks):
        self.issuer = issuer
        self.audience = audience
        self.jwks = jwks

    def check(self, token):
        """The claims of `token` once every check passed; else Refused."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as e:
            raise Refused("invalid_request", f"not a JWS: {e}") from e
        typ = header.get("typ")
        _need(
            isinstance(typ, str) and typ.lower() in ("secevent+jwt", SET_MEDIA_TYPE),
            f"header typ must be secevent+jwt, not {typ!r}",
        )
        _need("crit" not in header, "no JWS extension is understood here (crit)")
        kid = header.get("kid")
        _need(_is_text(kid), "header kid is required")
        key = self.jwks.key(kid)
        if header.get("alg") != key.algorithm_name:
            raise Refused("invalid_key", f"key {kid} signs with {key.algorithm_name}, not {header.get('alg')!r}")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "iat", "jti"]},
            )
        except jwt.InvalidSignatureError as e:
            raise Refused("authentication_failed", "the signature does not verify") from e
        except jwt.InvalidAudienceError as e:
            raise Refused("invalid_audience", f"aud does not name {self.audience}: {e}") from e
        except jwt.InvalidIssuerError as e:
            raise Refused("invalid_issuer", f"iss is not {self.issuer}: {e}") from e
        except jwt.InvalidTokenError as e:
            raise Refused("invalid_request", f"{type(e).__name__}: {e}") from e
        _need("exp" not in claims, "a SET has no exp (RFC 8417 §2.2)")
        _need(_is_text(claims["jti"]), "jti must be a non-empty string")
        _need(_is_number(claims["iat"]), "iat must be a NumericDate")
        if "txn" in claims:
            _need(_is_text(claims["txn"]), "txn must be a non-empty string")
        events = claims.get("events")
        _need(isinstance(events, dict), "events is required and must be an object")
        # SSF 1.0 §4.2.1: one event per SET (SHOULD; several only as
        # alternative URIs of one event type). authd promises one, so this
        # receiver holds it to that.
        _need(len(events) == 1, f"an SSF SET carries one event, not {len(events)}")
        sub_id = claims.get("sub_id")
        check_subject(sub_id)
        for uri, payload in events.items():
            _need(uri in EVENT_TYPES, f"unknown event type {uri!r}")
            _need(isinstance(payload, dict), f"the payload of {uri} must be an object")
            EVENT_TYPES[uri](payload, sub_id)
        return claims


def unverified_jti(token):
    try:
        jti = jwt.decode(token, options={"verify_signature": False}).get("jti")
        return jti if isinstance(jti, str) else None
    except jwt.InvalidTokenError:
        return None


class Recorder:
    def __init__(self, path):
        self.file = open(path, "a", encoding="utf-8")
        self.lock = threading.Lock()

    def _write(self, line):
        with self.lock:
            self.file.write(json.dumps(line, separators=(",", ":")) + "\n")
            self.file.flush()

    def accepted(self, claims):
        self._write(
            {
                "jti": claims["jti"],
                "txn": claims.get("txn"),
                "iat": claims["iat"],
                "sub_id": claims["sub_id"],
                "events": claims["events"],
                "received_at": time.time(),
            }
        )

    def rejected(self, refused, jti=None):
        line = {"rejected": refused.err, "description": refused.description, "received_at": time.time()}
        if jti is not None:
            line["jti"] = jti
        self._write(line)


# --- Push (RFC 8935) --------------------------------------------------------


def push(args):
    checker = Checker(args.issuer, args.audience, Jwks(args.jwks))
    recorder = Recorder(args.out)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *log_args):
            pass

        def _answer(self, status, body=None, headers=()):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            if body is not None:
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _refuse(self, refused, jti=None):
            recorder.rejected(refused, jti)
            self._answer(400, {"err": refused.err, "description": refused.description})

        def _body(self):
            """The request body, at most MAX_BODY_BYTES; None once answered."""
            if (self.headers.get("Transfer-Encoding") or "").strip().lower() == "chunked":
                body = b""
                while True:
                    size_line = self.rfile.readline(100).split(b";")[0].strip()
                    try:
                        size = int(size_line, 16)
                    except ValueError:
                        self.close_connection = True
                        self._answer(400)
                        return None
                    if size == 0:
                        while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return body
                    if len(body) + size > MAX_BODY_BYTES:
                        self.close_connection = True
                        self._answer(413)
                        return None
                    body += self.rfile.read(size)
                    self.rfile.readline(10)
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._answer(411)
                return None
            if int(length) > MAX_BODY_BYTES:
                self.close_connection = True
                self._answer(413)
                return None
            return self.rfile.read(int(length))

        def do_POST(self):
            if self.path != "/events":
                self._answer(404)
                return
            body = self._body()
            if body is None:
                return
            if args.authorization is not None and self.headers.get("Authorization") != args.authorization:
                recorder.rejected(Refused("authentication_failed", "wrong or missing Authorization"))
                self._answer(
                    401,
                    {"err": "authentication_failed", "description": "wrong or missing Authorization"},
                    [("WWW-Authenticate", "Bearer")],
                )
                return
            media_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if media_type != SET_MEDIA_TYPE:
                self._refuse(Refused("invalid_request", f"Content-Type must be {SET_MEDIA_TYPE}"))
                return
            try:
                token = body.decode("ascii").strip()
            except UnicodeDecodeError:
                self._refuse(Refused("invalid_request", "a SET is ASCII"))
                return
            try:
                claims = checker.check(token)
            except Refused as refused:
                self._refuse(refused, unverified_jti(token))
                return
            recorder.accepted(claims)
            self._answer(202)

        def do_GET(self):
            self._answer(405, headers=[("Allow", "POST")])

    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host or "127.0.0.1", int(port)), Handler)
    server.daemon_threads = True
    bound_host, bound_port = server.server_address[:2]
    print(f"listening http://{bound_host}:{bound_port}/events", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


# --- Poll (RFC 8936) --------------------------------------------------------


def poll(args):
    checker = Checker(args.issuer, args.audience, Jwks(args.jwks))
    recorder = Recorder(args.out)
    deadline = time.monotonic() + args.timeout
    recorded = 0
    ack, set_errs = [], {}

    def request(body, wait):
        data = json.dumps(body).encode()
        req = urllib.request.Request(
            args.url,
            data=data,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": args.authorization,
            },
        )
        with urllib.request.urlopen(req, timeout=wait) as response:
            return json.load(response)

    def body(max_events, return_immediately):
        out = {"maxEvents": max_events, "returnImmediately": return_immediately, "ack": list(ack)}
        if set_errs:
            out["setErrs"] = dict(set_errs)
        return out

    while True:
        remaining = deadline - time.monotonic()
        done = args.until is not None and recorded >= args.until
        if done or remaining <= 0:
            break
        sent = body(args.max_events, args.return_immediately)
        try:
            # A long poll may be held open up to the server's limit; past
            # our own deadline the answer no longer matters.
            answer = request(sent, max(remaining, 0.1))
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            if e.code >= 500 or e.code == 429:
                time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))
                continue
            print(f"poll: HTTP {e.code}: {detail}", file=sys.stderr)
            return 2
        except (OSError, ValueError) as e:
            # Timeouts and refused connections alike: try again until the
            # deadline (the transmitter may be restarting).
            if time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"poll: {e}", file=sys.stderr)
            continue
        # Acknowledged and reported: the transmitter now holds them.
        ack, set_errs = [], {}
        sets = answer.get("sets") if isinstance(answer, dict) else None
        if not isinstance(sets, dict):
            print(f"poll: no sets object in {answer!r}", file=sys.stderr)
            return 2
        for jti, token in sets.items():
            try:
                _need(isinstance(token, str), "a SET is a string")
                claims = checker.check(token)
                _need(claims["jti"] == jti, f"listed as {jti!r} but its jti is {claims['jti']!r}")
            except Refused as refused:
                recorder.rejected(refused, jti)
                set_errs[jti] = {"err": refused.err, "description": refused.description}
                continue
            recorder.accepted(claims)
            recorded += 1
            ack.append(jti)
        if args.return_immediately and not sets and not answer.get("moreAvailable"):
            # Nothing waiting: do not spin against the server.
            time.sleep(0.1)

    if ack or set_errs:
        # The last batch is acknowledged without asking for more.
        try:
            request(body(0, True), 10)
        except (OSError, ValueError) as e:
            print(f"poll: final acknowledgement failed: {e}", file=sys.stderr)
            return 2
    if args.until is not None and recorded < args.until:
        print(f"poll: {recorded} of {args.until} SETs within {args.timeout}s", file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)

    def common(mode):
        mode.add_argument("--issuer", required=True)
        mode.add_argument("--audience", required=True)
        mode.add_argument("--jwks", required=True, help="URL of the transmitter's JWKS")
        mode.add_argument("--out", required=True, help="file the JSON lines are appended to")
        mode.add_argument(
            "--expect-state", help="refuse a verification event without this state (invalid_state)"
        )

    push_args = modes.add_parser("push", help="RFC 8935: receive SETs over HTTP POST")
    push_args.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free)")
    push_args.add_argument("--authorization", help="the Authorization value the transmitter must send")
    common(push_args)

    poll_args = modes.add_parser("poll", help="RFC 8936: fetch and acknowledge SETs")
    poll_args.add_argument("--url", required=True)
    poll_args.add_argument("--authorization", required=True)
    poll_args.add_argument("--max-events", type=int, default=10)
    poll_args.add_argument("--return-immediately", action="store_true")
    poll_args.add_argument("--until", type=int, help="stop after this many SETs were recorded")
    poll_args.add_argument("--timeout", type=float, default=30.0, help="seconds")
    common(poll_args)

    args = parser.parse_args(argv)
    global EXPECTED_STATE
    EXPECTED_STATE = args.expect_state
    return push(args) if args.mode == "push" else poll(args)


if __name__ == "__main__":
    sys.exit(main())
