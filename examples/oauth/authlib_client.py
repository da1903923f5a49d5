#!/usr/bin/env python3
"""A service talks OAuth 2.0 to authd with Authlib, knowing only the issuer.

    AUTHD_CLIENT_ID=NAME AUTHD_CLIENT_SECRET=sk_... AUTHD_SUBJECT_TOKEN=eyJ... \\
        python3 examples/oauth/authlib_client.py ISSUER AUDIENCE

ISSUER is authd's issuer URL (`AUTHD_ISSUER`, e.g. http://127.0.0.1:50051);
AUDIENCE one of the further `AUTHD_AUDIENCES` to exchange the user's token
for. The client is a service account (`authd service-account create NAME
--scope tokens.exchange --scope tokens.introspect`): NAME is its client_id,
its key the client_secret. AUTHD_SUBJECT_TOKEN is a user's access token, as
Login returned it. Secrets come from the environment, not the command line,
which other users of the machine can read.

Steps:
1. RFC 8414 discovery from /.well-known/oauth-authorization-server, checked
   with Authlib's own metadata model.
2. client_credentials with client_secret_basic: a token for authd itself.
3. client_credentials with client_secret_post, for AUDIENCE and one scope.
4. RFC 8693 token exchange of the user's token for AUDIENCE.
5. RFC 7662 introspection of the tokens of steps 2 and 4, and of a token
   authd never issued.

Every step asserts what the RFCs and authd's contract promise; a JSON
summary of what came back is printed last, on one line. Exit code 0 only if
every check held.
"""

import base64
import json
import os
import sys
import time

import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata, get_well_known_url

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
TIMEOUT = 10  # seconds, per request


class CheckFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise CheckFailed(message)


def unverified_claims(jwt):
    """The claims of a JWT, read without checking it: this script is the
    client; verifying is the resource server's job (pyjwt_verify.py)."""
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def audiences(claims):
    aud = claims.get("aud")
    return aud if isinstance(aud, list) else [aud]


def discover(issuer):
    url = get_well_known_url(issuer, external=True)
    response = requests.get(url, timeout=TIMEOUT)
    expect(response.status_code == 200, f"GET {url}: {response.status_code}")
    expect(
        response.headers.get("content-type", "").startswith("application/json"),
        f"metadata content type {response.headers.get('content-type')}",
    )
    metadata = AuthorizationServerMetadata(response.json())
    # Authlib's validate() would also demand a non-empty
    # response_types_supported, but authd has no authorization endpoint, so
    # it honestly lists none; every other member goes through Authlib's rules.
    for key in metadata.REGISTRY_KEYS:
        if key != "response_types_supported":
            getattr(metadata, f"validate_{key}")()
    expect(isinstance(metadata.get("response_types_supported"), list), "response_types_supported")
    # RFC 8414 §3.3: the issuer in the document is the one asked for.
    expect(metadata["issuer"] == issuer, f"issuer {metadata['issuer']!r} != {issuer!r}")
    expect(metadata["token_endpoint"] == f"{issuer}/oauth2/token", "token_endpoint")
    expect(metadata["introspection_endpoint"] == f"{issuer}/oauth2/introspect", "introspection_endpoint")
    expect(metadata["jwks_uri"] == f"{issuer}/.well-known/jwks.json", "jwks_uri")
    for grant in ("client_credentials", TOKEN_EXCHANGE):
        expect(grant in metadata["grant_types_supported"], f"{grant} not in grant_types_supported")
    for key in ("token_endpoint_auth_methods_supported", "introspection_endpoint_auth_methods_supported"):
        for method in ("client_secret_basic", "client_secret_post"):
            expect(method in metadata[key], f"{method} not in {key}")
    return metadata


def check_token_response(token, what):
    # RFC 6749 §5.1; the token type is case-insensitive (§7.1).
    expect(token["token_type"].lower() == "bearer", f"{what}: token_type {token['token_type']}")
    expect(int(token["expires_in"]) > 0, f"{what}: expires_in {token['expires_in']}")
    expect("refresh_token" not in token, f"{what}: a refresh token (RFC 6749 §4.4.3 says none)")


def check_service_token(token, client_id, audience, what):
    check_token_response(token, what)
    claims = unverified_claims(token["access_token"])
    expect(claims["sub"] == f"svc:{client_id}", f"{what}: sub {claims['sub']}")
    expect(claims["client_id"] == client_id, f"{what}: client_id {claims['client_id']}")
    expect(audiences(claims) == [audience], f"{what}: aud {claims['aud']}")
    expect(claims["exp"] > time.time(), f"{what}: already expired")
    expect("sid" not in claims, f"{what}: a service token has no session")
    return claims


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    issuer, target = sys.argv[1], sys.argv[2]
    client_id = os.environ["AUTHD_CLIENT_ID"]
    secret = os.environ["AUTHD_CLIENT_SECRET"]
    subject_token = os.environ["AUTHD_SUBJECT_TOKEN"]
    subject = unverified_claims(subject_token)
    summary = {}

    metadata = discover(issuer)
    summary["metadata"] = dict(metadata)
    token_endpoint = metadata["token_endpoint"]
    introspection_endpoint = metadata["introspection_endpoint"]
    print(f"discovery: {issuer} -> {token_endpoint}", file=sys.stderr)

    basic = OAuth2Session(client_id, secret, token_endpoint_auth_method="client_secret_basic")
    post = OAuth2Session(client_id, secret, token_endpoint_auth_method="client_secret_post")

    # 2. No audience: authd's own, with every scope of the service.
    own = basic.fetch_token(token_endpoint, grant_type="client_credentials", timeout=TIMEOUT)
    own_claims = check_service_token(own, client_id, subject["aud"], "client_credentials (basic)")
    expect(set(own["scope"].split()) == set(own_claims["scope"].split()), "scope in the answer and the token")
    summary["client_credentials_basic"] = {"response": dict(own), "claims": own_claims}
    print(f"client_credentials (basic): {own_claims['sub']} for {own_claims['aud']}", file=sys.stderr)

    # 3. For the target, narrowed to one scope.
    narrow = post.fetch_token(
        token_endpoint, grant_type="client_credentials", audience=target, scope="tokens.introspect",
        timeout=TIMEOUT,
    )
    narrow_claims = check_service_token(narrow, client_id, target, "client_credentials (post)")
    expect(narrow["scope"] == "tokens.introspect", f"narrowed scope {narrow['scope']}")
    expect(narrow_claims["scope"] == "tokens.introspect", f"narrowed claim {narrow_claims['scope']}")
    summary["client_credentials_post"] = {"response": dict(narrow), "claims": narrow_claims}
    print(f"client_credentials (post): {narrow_claims['sub']} for {narrow_claims['aud']}", file=sys.stderr)

    # 4. The user's token, exchanged for one the target service accepts.
    exchanged = basic.fetch_token(
        token_endpoint,
        grant_type=TOKEN_EXCHANGE,
        subject_token=subject_token,
        subject_token_type=ACCESS_TOKEN_TYPE,
        audience=target,
        timeout=TIMEOUT,
    )
    check_token_response(exchanged, "token exchange")
    expect(exchanged["issued_token_type"] == ACCESS_TOKEN_TYPE, f"issued_token_type {exchanged['issued_token_type']}")
    claims = unverified_claims(exchanged["access_token"])
    expect(claims["sub"] == subject["sub"], f"exchanged sub {claims['sub']}")
    expect(claims["sid"] == subject["sid"], "exchanged sid (revocation follows the session)")
    expect(audiences(claims) == [target], f"exchanged aud {claims['aud']}")
    expect(claims["act"] == {"sub": f"svc:{client_id}"}, f"exchanged act {claims.get('act')}")
    expect(claims["client_id"] == client_id, f"exchanged client_id {claims.get('client_id')}")
    expect(claims["exp"] <= subject["exp"], "the exchanged token outlives the subject token")
    summary["token_exchange"] = {"response": dict(exchanged), "claims": claims}
    print(f"token exchange: {claims['sub']} for {claims['aud']}, act {claims['act']}", file=sys.stderr)

    # 5. Introspection, once with each client authentication.
    def introspect(session, token):
        response = session.introspect_token(
            introspection_endpoint, token=token, token_type_hint="access_token", timeout=TIMEOUT
        )
        expect(response.status_code == 200, f"introspect: {response.status_code} {response.text}")
        expect(
            response.headers.get("content-type", "").startswith("application/json"),
            f"introspection content type {response.headers.get('content-type')}",
        )
        return response.json()

    seen = introspect(basic, own["access_token"])
    expect(seen["active"] is True, f"service token inactive: {seen}")
    expect(seen["sub"] == f"svc:{client_id}" and seen["client_id"] == client_id, f"service token: {seen}")
    expect(set(seen["scope"].split()) == set(own["scope"].split()), f"service token scope: {seen}")
    expect(seen["iss"] == issuer and seen["exp"] == own_claims["exp"], f"service token: {seen}")
    summary["introspect_service_token"] = seen

    seen = introspect(post, exchanged["access_token"])
    expect(seen["active"] is True, f"exchanged token inactive: {seen}")
    expect(seen["sub"] == subject["sub"] and seen["sid"] == subject["sid"], f"exchanged token: {seen}")
    expect(audiences(seen) == [target], f"exchanged token aud: {seen}")
    expect(seen["act"] == {"sub": f"svc:{client_id}"} and seen["client_id"] == client_id, f"exchanged: {seen}")
    summary["introspect_exchanged_token"] = seen

    # RFC 7662 §2.2: a token the server does not know is just not active.
    seen = introspect(basic, "not-a-token-authd-issued")
    expect(seen == {"active": False}, f"unknown token: {seen}")
    summary["introspect_unknown_token"] = seen
    print("introspection: service token, exchanged token, unknown token", file=sys.stderr)

    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as failure:
        sys.exit(f"FAILED: {failure}")
