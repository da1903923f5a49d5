#!/usr/bin/env node
// A whole authd session from Node, over plain gRPC.
//
//     node examples/node/flow.js [HOST:PORT]      (default 127.0.0.1:50051)
//
// Register, Login, GetMe, Refresh, Logout, a Refresh that must fail after the
// Logout, and a Register with bad input whose google.rpc.Status details are
// decoded and printed. One line per step; the exit code is 0 only if every
// step behaved as the contract says.
//
// proto/auth.proto is loaded at run time with @grpc/proto-loader. The google
// protos (google/api for auth.proto's imports, google/rpc for error details)
// come from the google-proto-files package, not from authd's copies.
'use strict';

const crypto = require('node:crypto');
const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const { getProtoPath } = require('google-proto-files');

const REPO = path.resolve(__dirname, '..', '..');
const GOOGLE_PROTOS = path.resolve(getProtoPath(), '..'); // holds google/api, google/rpc, google/protobuf
const PASSWORD = 'correct horse battery staple';
const TIMEOUT_MS = 10_000; // per call

// The AuthService client, from proto/auth.proto.
const definition = protoLoader.loadSync('auth.proto', {
  includeDirs: [GOOGLE_PROTOS, path.join(REPO, 'proto')],
  keepCase: true, // field names as in the .proto: access_token, refresh_token
  longs: Number,
  defaults: true,
});
const { AuthService } = grpc.loadPackageDefinition(definition).auth.v1;

// google.rpc.Status and the detail messages, to decode grpc-status-details-bin.
const rpcTypes = new protobuf.Root();
rpcTypes.resolvePath = (_origin, target) => path.join(GOOGLE_PROTOS, target);
rpcTypes.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto'], { keepCase: true });
const Status = rpcTypes.lookupType('google.rpc.Status');
const ErrorInfo = rpcTypes.lookupType('google.rpc.ErrorInfo');
const BadRequest = rpcTypes.lookupType('google.rpc.BadRequest');

class StepFailed extends Error {}

function expect(condition, message) {
  if (!condition) throw new StepFailed(message);
}

// Runs one step: prints `ok <name> <detail>` (what `body` returns), or
// `FAIL ...` and exits.
async function step(name, body) {
  try {
    const detail = (await body()) ?? '';
    console.log(`ok    ${name.padEnd(24)} ${detail}`.trimEnd());
  } catch (err) {
    const why = err instanceof StepFailed || err.code === undefined
      ? err.message
      : `${grpc.status[err.code]}: ${err.details}`;
    console.log(`FAIL  ${name.padEnd(24)} ${why}`);
    process.exit(1);
  }
}

// Calls the client `method` as a promise, with a deadline.
function call(client, method, request, metadata = new grpc.Metadata()) {
  return new Promise((resolve, reject) => {
    const options = { deadline: Date.now() + TIMEOUT_MS };
    client[method](request, metadata, options, (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// Runs a call that must fail with `code`; returns the error.
async function expectError(promise, code) {
  try {
    await promise;
  } catch (err) {
    expect(err.code === code, `expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
    return err;
  }
  throw new StepFailed(`expected ${grpc.status[code]}, but the call succeeded`);
}

// The ErrorInfo and BadRequest field violations of a failed call.
function errorDetails(err) {
  let info = ErrorInfo.create();
  const violations = [];
  const [bin] = err.metadata.get('grpc-status-details-bin');
  const details = bin ? Status.decode(bin).details : [];
  for (const any of details) {
    const type = any.type_url.split('/').pop();
    if (type === 'google.rpc.ErrorInfo') info = ErrorInfo.decode(any.value);
    if (type === 'google.rpc.BadRequest') violations.push(...BadRequest.decode(any.value).field_violations);
  }
  return { info, violations };
}

async function flow(client) {
  const email = `node-${crypto.randomUUID()}@example.com`;
  let user, tokens, rotated, info, violations;

  await step('Register', async () => {
    ({ user } = await call(client, 'Register', { email, password: PASSWORD }));
    expect(user.id && user.email === email, `unexpected user ${JSON.stringify(user)}`);
    return `id=${user.id} email=${user.email}`;
  });

  await step('Login', async () => {
    const login = await call(client, 'Login', { login: email, password: PASSWORD });
    tokens = login.tokens;
    expect(tokens.access_token && tokens.refresh_token, 'no tokens');
    expect(login.user.id === user.id, `logged in as ${login.user.id}`);
    return `token_type=${tokens.token_type} expires_in=${tokens.expires_in}s`;
  });

  await step('GetMe', async () => {
    const bearer = new grpc.Metadata();
    bearer.set('authorization', `Bearer ${tokens.access_token}`);
    const me = (await call(client, 'GetMe', {}, bearer)).user;
    expect(me.id === user.id && me.email === email, `GetMe returned ${JSON.stringify(me)}`);
    return `id=${me.id} email=${me.email}`;
  });

  await step('Refresh', async () => {
    rotated = (await call(client, 'Refresh', { refresh_token: tokens.refresh_token })).tokens;
    expect(rotated.refresh_token && rotated.refresh_token !== tokens.refresh_token, 'refresh token did not change');
    return 'refresh token rotated';
  });

  await step('Logout', () => call(client, 'Logout', { refresh_token: rotated.refresh_token }).then(() => ''));

  await step('Refresh after Logout', async () => {
    const err = await expectError(
      call(client, 'Refresh', { refresh_token: rotated.refresh_token }),
      grpc.status.UNAUTHENTICATED,
    );
    return `UNAUTHENTICATED reason=${errorDetails(err).info.reason}`;
  });

  await step('Register invalid input', async () => {
    const err = await expectError(
      call(client, 'Register', { email: 'nope', password: 'short' }),
      grpc.status.INVALID_ARGUMENT,
    );
    ({ info, violations } = errorDetails(err));
    const fields = violations.map((v) => v.field);
    expect(fields.includes('email') && fields.includes('password'),
      `violations name [${fields}], not email and password`);
    return `INVALID_ARGUMENT: ${err.details}`;
  });
  console.log(`        ErrorInfo reason=${info.reason} domain=${info.domain}`);
  for (const v of violations) {
    console.log(`        violation field=${v.field} reason=${v.reason} description=${v.description}`);
  }
}

async function main() {
  const target = process.argv[2] ?? '127.0.0.1:50051';
  const client = new AuthService(target, grpc.credentials.createInsecure());
  await step('Connect', () => new Promise((resolve, reject) => {
    client.waitForReady(Date.now() + TIMEOUT_MS, (err) =>
      err ? reject(new StepFailed(`no gRPC server at ${target}: ${err.message}`)) : resolve(target));
  }));
  await flow(client);
  client.close();
  console.log('ok    every step behaved');
}

main();
