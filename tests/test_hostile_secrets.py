"""Hostile servers (issue 8), part 4: no credential is ever printed, stored or sent astray.

A server that echoes a secret back (raw, URL-encoded, JSON-escaped, inside
HTML, the basic pair or its base64, the SMART client assertion) never gets it
printed or written: secrets are redacted by value. A token with a line break
is refused before use; credentials in ``--server`` are refused before
anything stores them; a SMART assertion never travels in clear text to a
token endpoint elsewhere; secret files others can read draw a warning; text
a server sends to the terminal loses its escape sequences.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, quote

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hostile_servers import (
    P01,
    MiniFhir,
    Variant,
    assert_no_secrets,
    bundle,
    candidate_search,
    path_ends,
    recorder,
    screen,
    self_signed,
    serve,
)

TOKEN = "echo/T0KEN+with=odd&chars-7c1"
PASSWORD = "pa55 w0rd/é&x"
# fragments of each, found in no message of the tool: their absence means no form of the
# secret was shown, however the server encoded it
TOKEN_PART, PASSWORD_PART = "T0KEN", "w0rd"
BEARER = ("--auth", "bearer")
BASIC = ("--auth", "basic", "--user", "alice")


@pytest.fixture(autouse=True)
def secrets_in_env(monkeypatch):
    monkeypatch.setenv("FHIR_COHORT_TOKEN", TOKEN)
    monkeypatch.setenv("FHIR_COHORT_PASSWORD", PASSWORD)


def everything_written(folder) -> bytes:
    return b"".join(p.read_bytes() for p in folder.rglob("*") if p.is_file())


def refusing(echo: str, status: int = 401, content_type: str = "application/fhir+json"):
    """A server that refuses the candidate searches, echoing ``echo``."""

    def refuse(call):
        if content_type.endswith("json"):
            outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": echo}]}
            call.json(outcome, status=status)
        else:
            call.send(status, echo.encode(), content_type=content_type)

    return MiniFhir([P01]).but(candidate_search(), refuse)


def smart_server(token_url) -> Variant:
    """A server whose .well-known names ``token_url(call)`` as its token endpoint."""
    return MiniFhir([P01]).but(
        path_ends("/.well-known/smart-configuration"),
        lambda call: call.json({"token_endpoint": token_url(call)}),
    )


# -- echoes ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "echo",
    [
        f"token {TOKEN} is not valid",
        f"token {quote(TOKEN, safe='')} is not valid",
        f"got {json.dumps({'token': TOKEN})}",
        f"token {TOKEN.replace('-', '%2D')} (needlessly encoded)",
    ],
    ids=["raw", "url-encoded", "json-escaped", "odd-encoding"],
)
def test_a_bearer_token_echoed_by_the_server_is_never_printed(tmp_path, echo):
    with serve(refusing(echo)) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert run.code == 3
    assert "HTTP 401" in run.stderr
    assert TOKEN_PART not in run.stderr


@pytest.mark.parametrize("content_type", ["application/fhir+json", "text/html", "text/plain"])
def test_a_basic_password_echoed_in_any_form_is_never_printed(tmp_path, content_type):
    pair = f"alice:{PASSWORD}"
    encoded = base64.b64encode(pair.encode()).decode()
    echo = f"<title>user {pair} / Basic {encoded} / {quote(PASSWORD)} refused</title>"
    with serve(refusing(echo, 403, content_type)) as server:
        run = screen(tmp_path, server.base, *BASIC)
    assert run.code == 3
    assert "HTTP 403" in run.stderr
    assert PASSWORD_PART not in run.stderr and encoded not in run.stderr


def test_a_token_echoed_in_a_search_warning_is_not_stored(tmp_path):
    fhir = MiniFhir([P01])

    def warn(call):
        page = bundle(fhir.search("Condition", call.params))
        outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": TOKEN}]}
        page["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
        call.json(page)

    with serve(fhir.but(candidate_search(), warn)) as server:
        run = screen(tmp_path, server.base, *BEARER)
    assert run.code == 0, run.stderr
    assert run.quality()["server-warning"] >= 1
    assert TOKEN_PART.encode() not in everything_written(tmp_path)
    assert TOKEN_PART not in run.stderr + run.stdout


@pytest.mark.parametrize("token", ["abc\r\nX-Injected: yes", "abc\ndef", "abc\x1b[2Jdef"])
def test_a_token_with_control_characters_is_refused_without_being_shown(
    tmp_path, monkeypatch, token
):
    monkeypatch.setenv("FHIR_COHORT_TOKEN", token)
    monkeypatch.setenv("FHIR_COHORT_PASSWORD", token)
    with serve(MiniFhir([P01])) as server:
        bearer = screen(tmp_path / "bearer", server.base, *BEARER)
        basic = screen(tmp_path / "basic", server.base, *BASIC)
    for run in (bearer, basic):
        assert run.code == 2
        assert "control character" in run.stderr
        assert "Injected" not in run.stderr and "def" not in run.stderr
    assert server.seen == []


# -- SMART -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def p384_key(tmp_path_factory):
    path = tmp_path_factory.mktemp("smart") / "client.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP384R1()).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


def smart_args(key) -> tuple[str, ...]:
    return ("--auth", "smart", "--client-id", "hostile-client", "--private-key", str(key))


def test_a_token_endpoint_echoing_the_form_never_gets_the_assertion_printed(tmp_path, p384_key):
    def echo_the_form(call):
        echoed = call.body.decode()
        call.json({"error": "invalid_client", "error_description": echoed}, status=400)

    scenario = smart_server(lambda call: f"{call.server.origin}/token")
    with serve(scenario.but(path_ends("/token"), echo_the_form)) as server:
        run = screen(tmp_path, server.base, *smart_args(p384_key))
    (posted,) = [s for s in server.seen if s.path == "/token"]
    assertion = parse_qs(posted.body.decode())["client_assertion"][0]
    assert run.code == 2
    assert "token request refused (400)" in run.stderr
    for part in (assertion, *assertion.split(".")):
        assert part not in run.stderr


def test_an_https_server_pointing_at_an_http_token_url_gets_no_assertion(tmp_path, p384_key):
    """Before: the signed assertion went in clear text to the http token endpoint."""
    certificate = self_signed(tmp_path)
    scenario = smart_server(lambda call: f"{other.origin}/token")
    with serve(recorder) as other, serve(scenario, tls=certificate.context()) as server:
        run = screen(
            tmp_path, server.base, *smart_args(p384_key), "--ca-bundle", str(certificate.pem)
        )
    assert run.code == 2
    assert "refusing the token endpoint" in run.stderr and "https" in run.stderr
    assert other.seen == []
    assert [s.path for s in server.seen] == ["/fhir/.well-known/smart-configuration"]


def test_an_https_token_endpoint_elsewhere_gets_the_assertion_and_nothing_else(tmp_path, p384_key):
    certificate = self_signed(tmp_path)
    issued = "issued-access-token-5d4c"

    def token_endpoint(call):
        call.json({"access_token": issued, "token_type": "bearer", "expires_in": 300})

    scenario = smart_server(lambda call: f"{auth.origin}/token")
    context = certificate.context()
    with serve(token_endpoint, tls=context) as auth, serve(scenario, tls=context) as server:
        run = screen(
            tmp_path, server.base, *smart_args(p384_key), "--ca-bundle", str(certificate.pem)
        )
    assert run.code == 0, run.stderr
    assert run.statuses() == {P01: "eligible"}
    assert [s.method for s in auth.seen] == ["POST"]
    assert_no_secrets(auth, issued)  # the access token only ever goes to the FHIR server
    fhir_calls = [s for s in server.seen if "well-known" not in s.path]
    assert all(s.headers.get("Authorization") == f"Bearer {issued}" for s in fhir_calls)


# -- credentials in the URL, and secret files ------------------------------------------
def test_credentials_in_the_server_url_are_refused_and_stored_nowhere(tmp_path):
    with serve(MiniFhir([P01])) as server:
        url = server.base.replace("http://", "http://alice:PW-in-url-3e2@")
        run = screen(tmp_path, url)
    assert run.code == 2
    assert "--server must not hold a user name or password" in run.stderr
    assert "PW-in-url-3e2" not in run.stderr + run.stdout
    assert b"PW-in-url-3e2" not in everything_written(tmp_path)
    assert server.seen == []


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600])
@pytest.mark.parametrize("kind", ["token", "password", "key"])
def test_a_secret_file_others_can_read_draws_a_warning(tmp_path, p384_key, kind, mode):
    secret = tmp_path / f"{kind}.txt"
    if kind == "key":
        secret.write_bytes(p384_key.read_bytes())
        args = smart_args(secret)
    else:
        secret.write_text("s3cret-from-file\n")
        args = (*BEARER, "--token-file", str(secret))
        if kind == "password":
            args = (*BASIC, "--password-file", str(secret))
    secret.chmod(mode)
    with serve(MiniFhir([P01])) as server:
        run = screen(tmp_path, server.base, *args)
    warned = f"can be read by group or others (mode {mode:04o})" in run.stderr
    assert warned == (mode != 0o600)
    if warned:
        assert f"chmod 600 {secret}" in run.stderr
    assert "s3cret-from-file" not in run.stderr
    if kind != "key":  # the run goes on (SMART fails later: this server has no token endpoint)
        assert run.code == 0, run.stderr


def test_x_progress_with_escape_sequences_is_printed_as_plain_text(tmp_path):
    progress = "\x1b[2J\x1b[31m50% done\x1b]0;pwned\x07\tall clear\x1b[0m\x08"
    scenario = MiniFhir([P01]).but(
        lambda call: call.path.endswith("/status/1") and call.server.paths().count(call.path) < 2,
        lambda call: call.send(202, headers={"Retry-After": "0", "X-Progress": progress}),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, "--bulk", quiet=False)
    assert run.code == 0, run.stderr
    (line,) = [x for x in run.stderr.splitlines() if "export" in x and "50%" in x]
    assert line == "fhir-cohort: export 50% done all clear "
    assert "\x1b" not in run.stderr + run.stdout and "pwned" not in run.stderr
