#!/usr/bin/env node
// A Node service finds authd by OpenID discovery and trades its key for a
// short-lived service token, with openid-client (v6).
//
//   AUTHD_CLIENT_ID=NAME AUTHD_CLIENT_SECRET=sk_... \
//     node examples/oauth/service_token.mjs ISSUER AUDIENCE
//
// ISSUER is authd's issuer URL (`AUTHD_ISSUER`); AUDIENCE one of
// `AUTHD_AUDIENCES`, the service the token is for. NAME is a service
// account with scope tokens.introspect. openid-client checks that the
// discovery document names the issuer it was asked for, and that every
// answer is JSON of the right shape.
//
// Steps: discovery from /.well-known/openid-configuration; client_credentials
// for AUDIENCE with client_secret_basic, and with client_secret_post for
// authd's own audience; introspection of the first token. Prints one JSON
// line; exit code 0 only if every check held.

import assert from 'node:assert/strict';
import * as client from 'openid-client';

function claimsOf(jwt) {
  return JSON.parse(Buffer.from(jwt.split('.')[1], 'base64url').toString());
}

async function main() {
  const [issuer, audience] = process.argv.slice(2);
  if (!issuer || !audience) {
    console.error('usage: node service_token.mjs ISSUER AUDIENCE');
    process.exit(2);
  }
  const clientId = process.env.AUTHD_CLIENT_ID;
  const secret = process.env.AUTHD_CLIENT_SECRET;
  // Plain http is allowed by authd only on a loopback address (development
  // and tests); against an https issuer this option is not needed.
  const execute = new URL(issuer).protocol === 'http:' ? [client.allowInsecureRequests] : [];

  const basic = await client.discovery(new URL(issuer), clientId, undefined, client.ClientSecretBasic(secret), {
    execute,
  });
  const metadata = basic.serverMetadata();
  assert.equal(metadata.issuer, issuer);
  assert.equal(metadata.token_endpoint, `${issuer}/oauth2/token`);
  assert.ok(metadata.grant_types_supported.includes('client_credentials'));
  console.error(`discovery: ${metadata.issuer} -> ${metadata.token_endpoint}`);

  const forTarget = await client.clientCredentialsGrant(basic, { audience });
  assert.equal(forTarget.token_type, 'bearer', 'openid-client lower-cases token_type');
  assert.ok(forTarget.expires_in > 0);
  const claims = claimsOf(forTarget.access_token);
  assert.equal(claims.sub, `svc:${clientId}`);
  assert.equal(claims.client_id, clientId);
  assert.deepEqual([claims.aud].flat(), [audience]);
  assert.equal(claims.iss, issuer);
  console.error(`client_credentials (basic): ${claims.sub} for ${claims.aud}`);

  const post = await client.discovery(new URL(issuer), clientId, undefined, client.ClientSecretPost(secret), {
    execute,
  });
  const forAuthd = await client.clientCredentialsGrant(post);
  const ownClaims = claimsOf(forAuthd.access_token);
  assert.equal(ownClaims.sub, `svc:${clientId}`);
  assert.notDeepEqual([ownClaims.aud].flat(), [audience], 'no audience asked: authd\'s own');
  console.error(`client_credentials (post): ${ownClaims.sub} for ${ownClaims.aud}`);

  const introspection = await client.tokenIntrospection(post, forTarget.access_token);
  assert.equal(introspection.active, true);
  assert.equal(introspection.sub, `svc:${clientId}`);
  assert.equal(introspection.client_id, clientId);
  assert.equal(introspection.exp, claims.exp);
  console.error('introspection: active');

  console.log(
    JSON.stringify({
      issuer: metadata.issuer,
      token_endpoint: metadata.token_endpoint,
      client_credentials_basic: { token_type: forTarget.token_type, expires_in: forTarget.expires_in, scope: forTarget.scope, claims },
      client_credentials_post: { claims: ownClaims },
      introspection,
    }),
  );
}

main().catch((error) => {
  console.error(`FAILED: ${error.stack ?? error}`);
  process.exit(1);
});
