"""Hostile servers (issue 8), part 3: a malformed answer is one line and exit 3 or 4.

Before, each of these ended in exit 1 ("a bug"): bodies cut short, broken
gzip, Bundles whose parts have the wrong JSON type, manifests of the wrong
shape, a ``file:`` output URL, an EC key on the wrong curve, a token no HTTP
header can carry. Now each is a one-line message: exit 3 when the answer
cannot be used at all, exit 4 (with an ``incomplete-search`` note and the
outputs written) when the rest of the run stands, exit 2 for settings.
"""

from __future__ import annotations

import gzip
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from hostile_servers import P01, MiniFhir, bundle, candidate_search, path_ends, screen, serve


def answer_first_search(body_of):
    """A server that answers the candidate searches with ``body_of(honest_bundle)``."""
    fhir = MiniFhir([P01])
    return fhir.but(
        candidate_search(),
        lambda call: call.json(body_of(bundle(fhir.search("Condition", call.params)))),
    )


def one_line(run) -> str:
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr
    return lines[0]


# -- bodies --------------------------------------------------------------------------
def test_a_body_cut_short_is_a_server_error(tmp_path):
    scenario = MiniFhir([P01]).but(
        candidate_search(),
        lambda call: call.send(body=b'{"resourceType":"Bundle","entry":[', length=4000),
    )
    with serve(scenario) as server:
        run = screen(tmp_path, server.base, "--max-retries", "1")
    assert run.code == 3
    assert "no answer after 2 tries (the answer was cut short" in one_line(run)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"this is not gzip at all", "compression is broken"),
        (gzip.compress(b'{"resourceType":"Bundle","entry":[]}' * 50)[:-30], "cut short"),
    ],
    ids=["garbage", "truncated"],
)
def test_a_broken_gzip_encoding_is_a_server_error(tmp_path, body, message):
    with serve(MiniFhir([P01]).but(candidate_search(), lambda call: call.gzipped(body))) as server:
        run = screen(tmp_path, server.base)
    assert run.code == 3
    assert message in one_line(run)


# -- Bundles of the wrong shape --------------------------------------------------------
def _set(key, value):
    def change(page: dict) -> dict:
        return {**page, key: value}

    return change


def _subjects_as_strings(page: dict) -> dict:
    for entry in page["entry"]:
        entry["resource"]["subject"] = entry["resource"]["subject"]["reference"]
    return page


def _outcome_with_issue(issue):
    def change(page: dict) -> dict:
        outcome = {"resourceType": "OperationOutcome", "issue": issue}
        page["entry"].append({"resource": outcome, "search": {"mode": "outcome"}})
        return page

    return change


@pytest.mark.parametrize(
    ("change", "code", "says"),
    [
        (_set("entry", {"resource": {}}), 3, "Bundle.entry is not a list"),
        (_set("entry", "abc"), 3, "Bundle.entry is not a list"),
        (_set("link", {"relation": "next"}), 3, "Bundle.link is not a list"),
        (_set("link", 7), 3, "Bundle.link is not a list"),
        (_set("resourceType", ["Bundle"]), 3, "not a Bundle"),
        (_set("entry", [5, "x", {"resource": 7}]), 4, "holds no resource"),
        (_set("link", [{"relation": "next", "url": {"x": 1}}]), 4, "next link is not a URL"),
        (_subjects_as_strings, 4, "names no readable patient"),
        (_outcome_with_issue(5), 4, "OperationOutcome the tool cannot read"),
        (_outcome_with_issue(["bad", {"details": "x"}]), 4, "cannot read"),
    ],
    ids=[
        "entry-object",
        "entry-string",
        "link-object",
        "link-number",
        "type-list",
        "entry-items",
        "next-url-object",
        "subject-string",
        "issue-number",
        "issue-items",
    ],
)
def test_a_bundle_of_the_wrong_shape_is_a_message_not_a_crash(tmp_path, change, code, says):
    with serve(answer_first_search(change)) as server:
        run = screen(tmp_path, server.base)
    assert run.code == code, run.stderr
    if code == 3:
        assert says in one_line(run)
    else:
        assert says in run.quality_text()
        assert run.quality()["incomplete-search"] >= 1


# -- manifests -------------------------------------------------------------------------
def _manifest_change(change):
    fhir = MiniFhir([P01])
    return fhir.but(
        path_ends("/status/1"), lambda call: call.json(change(fhir.manifest(call.server.base)))
    )


def _url_object(manifest: dict) -> dict:
    manifest["output"][0]["url"] = {"href": manifest["output"][0]["url"]}
    return manifest


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda m: [m], "it is not a JSON object"),
        (lambda m: {**m, "output": m["output"][0]["url"]}, "output is not a list"),
        (_url_object, "an output item has no url string"),
        (lambda m: {**m, "requiresAccessToken": "false"}, "requiresAccessToken"),
        (lambda m: {**m, "error": [{"url": 5}]}, "an error item has no url string"),
        (lambda m: {**m, "transactionTime": 20260630}, "transactionTime"),
    ],
    ids=["list", "output-string", "url-object", "token-string", "error-url", "time-number"],
)
def test_a_malformed_manifest_is_a_message_and_the_job_is_dropped(tmp_path, change, says):
    with serve(_manifest_change(change)) as server:
        run = screen(tmp_path, server.base, "--bulk")
    assert run.code == 3
    line = one_line(run)
    assert "manifest is malformed" in line and says in line
    assert "next run starts a new one" in line
    state = json.loads(next(tmp_path.rglob(".bulk-state.json")).read_text())
    assert "job" not in state


def test_a_file_url_in_the_manifest_is_refused(tmp_path):
    secret_file = tmp_path / "local.ndjson"
    secret_file.write_text('{"resourceType":"Patient","id":"read-from-local-disk"}\n')

    def point_at_disk(manifest: dict) -> dict:
        manifest["output"][0]["url"] = secret_file.as_uri()
        return manifest

    with serve(_manifest_change(point_at_disk)) as server:
        run = screen(tmp_path / "run", server.base, "--bulk")
    assert run.code == 3
    assert "not an http(s) URL with a host (file:)" in one_line(run)
    copies = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not any(b"read-from-local-disk" in p.read_bytes() for p in copies)


# -- settings a server cannot use -------------------------------------------------------
def screen_signing_with(tmp_path, private_key):
    """A SMART screen whose client key (a PEM file, 0600) is ``private_key``; the server."""
    key = tmp_path / "client.pem"
    key.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    with serve(MiniFhir([P01])) as server:
        run = screen(
            tmp_path, server.base, "--auth", "smart", "--client-id", "c", "--private-key", str(key)
        )
    return run, server


def test_an_ec_p256_key_is_refused_naming_the_curve(tmp_path):
    run, server = screen_signing_with(tmp_path, ec.generate_private_key(ec.SECP256R1()))
    assert run.code == 2
    assert "EC key on curve secp256r1" in one_line(run) and "P-384" in run.stderr
    assert server.seen == []


def test_a_key_that_is_neither_rsa_nor_ec_is_refused_before_any_request(tmp_path):
    run, server = screen_signing_with(tmp_path, ed25519.Ed25519PrivateKey.generate())
    assert run.code == 2
    assert (
        f"{tmp_path / 'client.pem'}: SMART Backend Services needs an RSA or EC private key"
        in one_line(run)
    )
    assert server.seen == []


@pytest.mark.parametrize("token", ["t\u00f6k\u20acn-abc", "tok en", "tok\u00e9n"])
def test_a_token_no_header_can_carry_is_refused(tmp_path, monkeypatch, token):
    monkeypatch.setenv("FHIR_COHORT_TOKEN", token)
    with serve(MiniFhir([P01])) as server:
        run = screen(tmp_path, server.base, "--auth", "bearer")
    assert run.code == 2
    assert "cannot carry" in one_line(run)
    assert token not in run.stderr
    assert server.seen == []
