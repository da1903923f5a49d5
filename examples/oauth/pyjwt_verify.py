#!/usr/bin/env python3
"""A resource server verifies an authd token with PyJWT, offline.

    AUTHD_TOKEN=eyJ... python3 examples/oauth/pyjwt_verify.py ISSUER AUDIENCE [OTHER_AUDIENCE]

The service whose name is AUDIENCE (one of `AUTHD_AUDIENCES`) reads
authd's discovery document once, fetches the signing keys from its
`jwks_uri` with PyJWT's PyJWKClient, and from then on checks tokens without
calling authd: the signature, the issuer, its own audience, the lifetime,
and `typ` `at+jwt` (RFC 9068). A token another service obtained on a user's
behalf (RFC 8693 token exchange) names that service in `act`.

With OTHER_AUDIENCE, the same token must be refused by a service of that
name: a token for one destination is good only there.

Prints one JSON line: the verified claims, the acting chain and what the
other service said. Exit code 0 only if every check held.
"""

import json
import os
import sys

import jwt
import requests

TIMEOUT = 10  # seconds


def fail(message):
    sys.exit(f"FAILED: {message}")


def actors(claims):
    """The acting chain, most recent actor first (RFC 8693 §4.1)."""
    chain, act = [], claims.get("act")
    while act:
        chain.append(act["sub"])
        act = act.get("act")
    return chain


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    issuer, audience = sys.argv[1], sys.argv[2]
    other = sys.argv[3] if len(sys.argv) == 4 else None
    token = os.environ["AUTHD_TOKEN"]

    metadata = requests.get(f"{issuer}/.well-known/openid-configuration", timeout=TIMEOUT).json()
    if metadata["issuer"] != issuer:
        fail(f"discovery names issuer {metadata['issuer']!r}")
    keys = jwt.PyJWKClient(metadata["jwks_uri"], cache_keys=True, timeout=TIMEOUT)
    signing_key = keys.get_signing_key_from_jwt(token)
    # Only the algorithms authd publishes; never the one the token names.
    algorithms = metadata["id_token_signing_alg_values_supported"]
    if signing_key.algorithm_name not in algorithms:
        fail(f"key algorithm {signing_key.algorithm_name} not in {algorithms}")

    header = jwt.get_unverified_header(token)
    if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
        fail(f"typ {header.get('typ')!r}: not an RFC 9068 access token")

    def verify(aud):
        return jwt.decode(
            token,
            signing_key.key,
            algorithms=algorithms,
            audience=aud,
            issuer=issuer,
            options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            leeway=5,
        )

    try:
        claims = verify(audience)
    except jwt.InvalidTokenError as e:
        fail(f"refused for {audience}: {type(e).__name__}: {e}")
    summary = {"claims": claims, "actors": actors(claims), "kid": header.get("kid"), "alg": header.get("alg")}

    if other is not None:
        try:
            verify(other)
        except jwt.InvalidAudienceError as e:
            summary["other_audience"] = {"audience": other, "refused": type(e).__name__}
        except jwt.InvalidTokenError as e:
            fail(f"refused for {other}, but not for its audience: {type(e).__name__}: {e}")
        else:
            fail(f"a token for {audience} was accepted by {other}")

    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
