// authd from a web page: gRPC-Web calls (protobufjs for the messages, the
// framing by hand), the WebAuthn ceremonies with the browser's own JSON
// helpers, and errors shown with their ErrorInfo reason.
//
// ?authd=http://127.0.0.1:50051 names the server; it must list this page's
// origin in AUTHD_CORS_ORIGINS (and, for passkeys, AUTHD_WEBAUTHN_ORIGINS).

const AUTHD = (new URLSearchParams(location.search).get("authd") || "http://127.0.0.1:50051")
  .replace(/\/+$/, "");
// Served from the repository's root: the page is /examples/web/.
const AUTH_PROTO = "../../proto/auth.proto";
// googleapis' own copies of google/api and google/rpc, not authd's.
const GOOGLE_PROTOS = "node_modules/google-proto-files/";

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- protobuf

const root = new protobuf.Root();
root.resolvePath = (origin, target) =>
  target.startsWith("google/") ? GOOGLE_PROTOS + target : protobuf.util.path.resolve(origin, target);

const ready = root
  .load([AUTH_PROTO, "google/rpc/status.proto", "google/rpc/error_details.proto"])
  .then(() => root.resolveAll());

const toObjectOptions = { longs: String, enums: String, defaults: true, oneofs: true };

// google.protobuf.Struct <-> the plain JSON it holds (WebAuthn options and
// credentials travel as Structs).
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: "NULL_VALUE" };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  switch (typeof v) {
    case "number": return { numberValue: v };
    case "string": return { stringValue: v };
    case "boolean": return { boolValue: v };
    default: return { structValue: toStruct(v) };
  }
}

function toStruct(object) {
  const fields = {};
  for (const [k, v] of Object.entries(object)) if (v !== undefined) fields[k] = toValue(v);
  return { fields };
}

function fromValue(v) {
  switch (v.kind) {
    case "numberValue": return v.numberValue;
    case "stringValue": return v.stringValue;
    case "boolValue": return v.boolValue;
    case "structValue": return fromStruct(v.structValue);
    case "listValue": return (v.listValue.values || []).map(fromValue);
    default: return null;
  }
}

function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

// ---------------------------------------------------------------- gRPC-Web

class GrpcError extends Error {
  constructor(code, message, details) {
    super(message);
    this.code = code;
    this.details = details; // decoded google.rpc.Status details
    const info = details.find((d) => d["@type"].endsWith("google.rpc.ErrorInfo"));
    this.reason = info ? info.reason : "";
  }
}

function base64ToBytes(b64) {
  const bin = atob(b64.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function decodeDetails(b64) {
  if (!b64) return [];
  const Status = root.lookupType("google.rpc.Status");
  const status = Status.decode(base64ToBytes(b64.trim()));
  return status.details.map((any) => {
    const name = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    const type = root.lookupType(name);
    return { "@type": any.type_url, ...type.toObject(type.decode(any.value), toObjectOptions) };
  });
}

// One unary call: a 5-byte frame (flag, big-endian length) around the
// request; the answer is data frames, then a trailer frame (flag 0x80) of
// HTTP-style header lines, unless it is trailers-only (status in headers).
async function call(method, request = {}, accessToken) {
  await ready;
  const m = root.lookupService("auth.v1.AuthService").methods[method];
  const payload = m.resolvedRequestType.encode(m.resolvedRequestType.fromObject(request)).finish();
  const body = new Uint8Array(5 + payload.length);
  new DataView(body.buffer).setUint32(1, payload.length);
  body.set(payload, 5);
  const headers = { "content-type": "application/grpc-web+proto", "x-grpc-web": "1" };
  if (accessToken) headers.authorization = `Bearer ${accessToken}`;
  const response = await fetch(`${AUTHD}/auth.v1.AuthService/${method}`, { method: "POST", headers, body });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const data = [];
  const trailers = new Map();
  for (let at = 0; at + 5 <= bytes.length;) {
    const length = new DataView(bytes.buffer, at + 1, 4).getUint32(0);
    const frame = bytes.subarray(at + 5, at + 5 + length);
    if (bytes[at] & 0x80) {
      for (const line of new TextDecoder().decode(frame).split("\r\n")) {
        const colon = line.indexOf(":");
        if (colon > 0) trailers.set(line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim());
      }
    } else {
      data.push(frame);
    }
    at += 5 + length;
  }
  const field = (name) => trailers.get(name) ?? response.headers.get(name);
  const status = field("grpc-status");
  if (status === null) throw new GrpcError(-1, `HTTP ${response.status} without a gRPC status`, []);
  if (status !== "0") {
    // grpc-message is percent-encoded (gRPC over HTTP/2, which gRPC-Web keeps).
    let message = field("grpc-message") || "";
    try {
      message = decodeURIComponent(message);
    } catch {
      // Not percent-encoded after all: shown as it came.
    }
    throw new GrpcError(Number(status), message, decodeDetails(field("grpc-status-details-bin")));
  }
  const type = m.resolvedResponseType;
  return type.toObject(type.decode(data[0] || new Uint8Array()), toObjectOptions);
}

// ---------------------------------------------------------------- state

let session = null; // { tokens, user }
let mfaChallenge = null; // Login's mfaRequired
let enrollmentId = null;

function jwtClaims(token) {
  const payload = token.split(".")[1];
  return JSON.parse(new TextDecoder().decode(base64ToBytes(payload)));
}

async function show() {
  const who = $("who");
  $("signed-in").hidden = !session;
  $("signed-out").hidden = !!session;
  $("second-factor").hidden = !mfaChallenge;
  $("passkey-second-factor").hidden = !(mfaChallenge && mfaChallenge.passkeyOptions);
  if (!session) {
    who.dataset.state = mfaChallenge ? "second-factor" : "signed-out";
    who.textContent = mfaChallenge ? "A second factor is due." : "Not logged in.";
    $("assurance").textContent = "";
    return;
  }
  const token = session.tokens.accessToken;
  const me = await call("GetMe", {}, token);
  const factors = await call("ListFactors", {}, token);
  who.dataset.state = "signed-in";
  who.textContent = `Logged in as ${me.user.email} (${me.user.id}).`;
  $("assurance").innerHTML = "";
  const line = document.createElement("p");
  line.id = "amr-acr";
  line.dataset.amr = me.assurance.amr.join(" ");
  line.dataset.acr = me.assurance.acr;
  line.textContent = `amr: ${me.assurance.amr.join(", ")} · acr: ${me.assurance.acr}`;
  $("assurance").append(line);
  $("factors").textContent =
    factors.factors.map((f) => `${f.name} (${f.kind})`).join(", ") || "none";
  $("claims").textContent = JSON.stringify(jwtClaims(token), null, 2);
  $("access-token").textContent = token;
}

function signedIn(response) {
  session = { tokens: response.tokens, user: response.user };
  mfaChallenge = null;
}

// ---------------------------------------------------------------- actions

const actions = {
  async signup(form) {
    const email = form.login.value;
    await call("Register", { email, password: form.password.value });
    return `Account ${email} created: log in.`;
  },

  async login(form) {
    const r = await call("Login", { login: form.login.value, password: form.password.value });
    if (r.mfaRequired) {
      mfaChallenge = r.mfaRequired;
      return `Password accepted; second factor due (${mfaChallenge.factors.join(", ")}).`;
    }
    signedIn(r);
    return "Logged in with a password.";
  },

  async completeLoginTotp() {
    const r = await call("CompleteLogin", { mfaToken: mfaChallenge.mfaToken, totpCode: $("totp-login-code").value });
    $("totp-login-code").value = "";
    signedIn(r);
    return "Logged in with a password and a code.";
  },

  async completeLoginPasskey() {
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(fromStruct(mfaChallenge.passkeyOptions));
    const credential = await navigator.credentials.get({ publicKey });
    const r = await call("CompleteLogin", {
      mfaToken: mfaChallenge.mfaToken,
      passkeyAssertion: toStruct(credential.toJSON()),
    });
    signedIn(r);
    return "Logged in with a password and a passkey.";
  },

  async enrollTotp() {
    const r = await call("EnrollTotp", {}, session.tokens.accessToken);
    enrollmentId = r.enrollmentId;
    $("totp-secret").textContent = r.secret;
    $("totp-uri").textContent = r.otpauthUri;
    $("totp-enrollment").hidden = false;
    return "Type the secret into your authenticator app, then confirm with a code.";
  },

  async confirmTotp() {
    const r = await call(
      "ConfirmTotp",
      { enrollmentId, code: $("totp-confirm-code").value },
      session.tokens.accessToken,
    );
    $("totp-confirm-code").value = "";
    $("totp-enrollment").hidden = true;
    enrollmentId = null;
    // The session now counts as proven by both factors; its next access
    // token says so.
    const refreshed = await call("Refresh", { refreshToken: session.tokens.refreshToken });
    session.tokens = refreshed.tokens;
    const codes = r.recoveryCodes.length ? ` Recovery codes: ${r.recoveryCodes.join(" ")}` : "";
    return `Authenticator app added.${codes}`;
  },

  async registerPasskey() {
    const token = session.tokens.accessToken;
    const start = await call("StartPasskeyRegistration", {}, token);
    const publicKey = PublicKeyCredential.parseCreationOptionsFromJSON(fromStruct(start.options));
    const credential = await navigator.credentials.create({ publicKey });
    const r = await call(
      "FinishPasskeyRegistration",
      { ceremonyId: start.ceremonyId, credential: toStruct(credential.toJSON()) },
      token,
    );
    return `Passkey added: ${r.factor.name}.`;
  },

  async passkeyLogin() {
    // No login typed: the browser offers whichever of its passkeys for this
    // site the user picks (a discoverable credential).
    const start = await call("StartPasskeyLogin", {});
    const publicKey = PublicKeyCredential.parseRequestOptionsFromJSON(fromStruct(start.options));
    const credential = await navigator.credentials.get({ publicKey });
    const r = await call("FinishPasskeyLogin", {
      ceremonyId: start.ceremonyId,
      credential: toStruct(credential.toJSON()),
    });
    signedIn(r);
    return "Logged in with a passkey.";
  },

  async logout() {
    await call("Logout", { refreshToken: session.tokens.refreshToken });
    session = null;
    return "Logged out.";
  },
};

function showError(e) {
  const box = $("error");
  box.innerHTML = "";
  const line = document.createElement("p");
  if (e instanceof GrpcError) {
    box.dataset.reason = e.reason;
    line.textContent = `${e.reason || `gRPC status ${e.code}`}: ${e.message}`;
    box.append(line);
    for (const d of e.details) {
      for (const v of d.fieldViolations || []) {
        const item = document.createElement("p");
        item.textContent = `${v.field}: ${v.description}`;
        box.append(item);
      }
    }
  } else {
    // A browser error (the WebAuthn dialog cancelled, no network...).
    box.dataset.reason = e.name || "Error";
    line.textContent = `${e.name}: ${e.message}`;
    box.append(line);
  }
}

// Runs one action; body[data-done] counts finished actions, so a script
// driving the page knows when one is over.
async function run(name, arg) {
  $("error").textContent = "";
  delete $("error").dataset.reason;
  document.body.dataset.busy = name;
  try {
    $("notice").textContent = (await actions[name](arg)) || "";
    await show();
  } catch (e) {
    console.error(e);
    showError(e);
  } finally {
    delete document.body.dataset.busy;
    document.body.dataset.done = String(Number(document.body.dataset.done || 0) + 1);
  }
}

$("authd").textContent = AUTHD;
$("password-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run(e.submitter && e.submitter.value === "signup" ? "signup" : "login", e.target);
});
$("totp-login-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run("completeLoginTotp");
});
$("totp-confirm-form").addEventListener("submit", (e) => {
  e.preventDefault();
  run("confirmTotp");
});
$("complete-login-passkey").addEventListener("click", () => run("completeLoginPasskey"));
$("passkey-login").addEventListener("click", () => run("passkeyLogin"));
$("enroll-totp").addEventListener("click", () => run("enrollTotp"));
$("register-passkey").addEventListener("click", () => run("registerPasskey"));
$("logout").addEventListener("click", () => run("logout"));

ready.then(show, showError).finally(() => {
  document.body.dataset.done = "0";
});

// For trying calls in the browser's console, e.g.
// `await authd.call("StartPasskeyLogin", {login: "ann@example.com"})`.
window.authd = { call, toStruct, fromStruct, session: () => session };
