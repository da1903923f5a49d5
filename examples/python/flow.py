#!/usr/bin/env python3
"""A whole authd session from Python, over plain gRPC.

    python3 examples/python/flow.py [HOST:PORT]      (default 127.0.0.1:50051)

Register, Login, GetMe, Refresh, Logout, a Refresh that must fail after the
Logout, and a Register with bad input whose google.rpc.Status details are
decoded and printed. Then a second factor: enrol an authenticator app, whose
codes pyotp computes (as any RFC 6238 app would), log in with the second step,
and once with a recovery code. One line per step; the exit code is 0 only if
every step behaved as the contract says.

Stubs are generated for proto/auth.proto only, into a temporary folder, on
every run. The google.api and google.rpc modules come from the
googleapis-common-protos package, not from authd's copies under proto/google.
"""

import contextlib
import pathlib
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import pyotp
from google.api import annotations_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

REPO = pathlib.Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
TIMEOUT = 10  # seconds, per call


def load_stubs():
    """Compiles proto/auth.proto with grpc_tools and imports the result."""
    # Imports of google/api/*.proto resolve to googleapis-common-protos' files.
    googleapis = pathlib.Path(annotations_pb2.__file__).parents[2]
    with tempfile.TemporaryDirectory(prefix="authd-py-stubs-") as out:
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc",
             f"-I{googleapis}", f"-I{REPO / 'proto'}",
             f"--python_out={out}", f"--grpc_python_out={out}",
             str(REPO / "proto" / "auth.proto")],
            check=True,
        )
        sys.path.insert(0, out)
        import auth_pb2
        import auth_pb2_grpc
        sys.path.remove(out)
    return auth_pb2, auth_pb2_grpc


class StepFailed(Exception):
    pass


def expect(condition, message):
    if not condition:
        raise StepFailed(message)


@contextlib.contextmanager
def step(name):
    """Prints `ok <name> <detail>` when the block succeeds, `FAIL ...` and exits if not."""
    detail = []
    try:
        yield detail.append
    except grpc.RpcError as error:
        print(f"FAIL  {name:<24} {error.code().name}: {error.details()}")
        sys.exit(1)
    except StepFailed as failure:
        print(f"FAIL  {name:<24} {failure}")
        sys.exit(1)
    print(f"ok    {name:<24} {' '.join(detail)}".rstrip())


def expect_error(call, code):
    """Runs `call`, which must fail with `code`; returns the RpcError."""
    try:
        call()
    except grpc.RpcError as error:
        expect(error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}")
        return error
    raise StepFailed(f"expected {code.name}, but the call succeeded")


def error_details(error):
    """The ErrorInfo and BadRequest field violations of a failed call."""
    info, violations = error_details_pb2.ErrorInfo(), []
    status = rpc_status.from_call(error)  # decodes grpc-status-details-bin
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(bad_request.field_violations)
    return info, violations


def flow(pb, stub):
    email = f"py-{uuid.uuid4()}@example.com"

    with step("Register") as report:
        user = stub.Register(pb.RegisterRequest(email=email, password=PASSWORD), timeout=TIMEOUT).user
        expect(user.id and user.email == email, f"unexpected user {user}")
        report(f"id={user.id} email={user.email}")

    with step("Login") as report:
        login = stub.Login(pb.LoginRequest(login=email, password=PASSWORD), timeout=TIMEOUT)
        tokens = login.tokens
        expect(tokens.access_token and tokens.refresh_token, "no tokens")
        expect(login.user.id == user.id, f"logged in as {login.user.id}")
        report(f"token_type={tokens.token_type} expires_in={tokens.expires_in}s")

    with step("GetMe") as report:
        bearer = [("authorization", f"Bearer {tokens.access_token}")]
        me = stub.GetMe(pb.GetMeRequest(), metadata=bearer, timeout=TIMEOUT).user
        expect(me.id == user.id and me.email == email, f"GetMe returned {me}")
        report(f"id={me.id} email={me.email}")

    with step("Refresh") as report:
        new = stub.Refresh(pb.RefreshRequest(refresh_token=tokens.refresh_token), timeout=TIMEOUT).tokens
        expect(new.refresh_token and new.refresh_token != tokens.refresh_token, "refresh token did not change")
        report("refresh token rotated")

    with step("Logout"):
        stub.Logout(pb.LogoutRequest(refresh_token=new.refresh_token), timeout=TIMEOUT)

    with step("Refresh after Logout") as report:
        error = expect_error(
            lambda: stub.Refresh(pb.RefreshRequest(refresh_token=new.refresh_token), timeout=TIMEOUT),
            grpc.StatusCode.UNAUTHENTICATED)
        info, _ = error_details(error)
        report(f"UNAUTHENTICATED reason={info.reason}")

    with step("Register invalid input") as report:
        error = expect_error(
            lambda: stub.Register(pb.RegisterRequest(email="nope", password="short"), timeout=TIMEOUT),
            grpc.StatusCode.INVALID_ARGUMENT)
        info, violations = error_details(error)
        fields = {v.field for v in violations}
        expect({"email", "password"} <= fields, f"violations name {sorted(fields)}, not email and password")
        report(f"INVALID_ARGUMENT: {error.details()}")
    print(f"        ErrorInfo reason={info.reason} domain={info.domain}")
    for v in violations:
        print(f"        violation field={v.field} reason={v.reason} description={v.description}")


def second_factor(pb, stub):
    email = f"py-mfa-{uuid.uuid4()}@example.com"
    stub.Register(pb.RegisterRequest(email=email, password=PASSWORD), timeout=TIMEOUT)
    tokens = stub.Login(pb.LoginRequest(login=email, password=PASSWORD), timeout=TIMEOUT).tokens
    bearer = [("authorization", f"Bearer {tokens.access_token}")]

    with step("EnrollTotp") as report:
        enrollment = stub.EnrollTotp(pb.EnrollTotpRequest(name="pyotp"), metadata=bearer, timeout=TIMEOUT)
        # What scanning the QR code gives an authenticator app.
        app = pyotp.parse_uri(enrollment.otpauth_uri)
        expect(app.secret == enrollment.secret, "the URI and the secret disagree")
        expect((app.digits, app.interval) == (6, 30), f"digits {app.digits}, period {app.interval}")
        report(enrollment.otpauth_uri.split("?")[0])

    with step("ConfirmTotp") as report:
        # A code is accepted once: remember the time, the next login uses
        # the step after this one (accepted while less than 30 s passed).
        confirmed_at = time.time()
        confirmed = stub.ConfirmTotp(
            pb.ConfirmTotpRequest(enrollment_id=enrollment.enrollment_id, code=app.at(confirmed_at)),
            metadata=bearer, timeout=TIMEOUT)
        codes = list(confirmed.recovery_codes)
        expect(len(codes) == 10, f"{len(codes)} recovery codes")
        report(f"factor={confirmed.factor.id} recovery codes={len(codes)}")

    with step("Login, second factor due") as report:
        login = stub.Login(pb.LoginRequest(login=email, password=PASSWORD), timeout=TIMEOUT)
        expect(login.HasField("mfa_required") and not login.HasField("tokens"), f"unexpected {login}")
        kinds = [pb.FactorKind.Name(k) for k in login.mfa_required.factors]
        report(f"factors={','.join(kinds)}")

    with step("CompleteLogin wrong code") as report:
        wrong = f"{(int(app.at(confirmed_at + 30)) + 1) % 1_000_000:06d}"
        error = expect_error(
            lambda: stub.CompleteLogin(
                pb.CompleteLoginRequest(mfa_token=login.mfa_required.mfa_token, totp_code=wrong), timeout=TIMEOUT),
            grpc.StatusCode.UNAUTHENTICATED)
        info, _ = error_details(error)
        expect(info.reason == "INVALID_CREDENTIALS", f"reason {info.reason}")
        report(f"UNAUTHENTICATED reason={info.reason}")

    with step("CompleteLogin") as report:
        done = stub.CompleteLogin(
            pb.CompleteLoginRequest(mfa_token=login.mfa_required.mfa_token, totp_code=app.at(confirmed_at + 30)),
            timeout=TIMEOUT)
        bearer = [("authorization", f"Bearer {done.tokens.access_token}")]
        assurance = stub.GetMe(pb.GetMeRequest(), metadata=bearer, timeout=TIMEOUT).assurance
        expect(assurance.acr == "aal2", f"acr {assurance.acr}")
        report(f"acr={assurance.acr} amr={','.join(assurance.amr)}")

    with step("CompleteLogin recovery") as report:
        login = stub.Login(pb.LoginRequest(login=email, password=PASSWORD), timeout=TIMEOUT)
        # Spaces, hyphens and letter case do not matter.
        typed = codes[0].upper().replace("-", " ")
        stub.CompleteLogin(
            pb.CompleteLoginRequest(mfa_token=login.mfa_required.mfa_token, recovery_code=typed), timeout=TIMEOUT)
        left = stub.ListFactors(pb.ListFactorsRequest(), metadata=bearer, timeout=TIMEOUT).recovery_codes_left
        expect(left == 9, f"{left} recovery codes left")
        report(f"recovery codes left={left}")


def main():
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(target) as channel:
        with step("Connect") as report:
            try:
                grpc.channel_ready_future(channel).result(timeout=TIMEOUT)
            except grpc.FutureTimeoutError:
                raise StepFailed(f"no gRPC server at {target} within {TIMEOUT}s")
            report(target)
        flow(pb, pb_grpc.AuthServiceStub(channel))
        second_factor(pb, pb_grpc.AuthServiceStub(channel))
    print("ok    every step behaved")


if __name__ == "__main__":
    main()
