"""Against a real FHIR server (sekmet-fhir on 127.0.0.1): seed the bundled cohort,
then screen it over REST search and over Bulk $export, and get exactly what
screening the files gives, patient by patient."""

from __future__ import annotations

import json

import pytest
from sekmet_server import sekmet

from fhir_cohort.cli import main

AS_OF = "2026-06-30"


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sekmet")
    with sekmet(folder) as base:
        assert main(["seed", "--server", base, "--yes"]) == 0
        yield base


def outcomes(output: dict) -> dict[str, dict]:
    """What a coordinator reads per patient, evidence dates included."""
    found = {}
    for c in output["candidates"]:
        found[c["patient"]] = {
            "rank": c["rank"],
            "status": c["status"],
            "eligible_from": c["eligible_from"],
            "age": c["age"],
            "score": c["score"],
            "acr": sorted(c["criteria"]["acr"]["met"]),
            "activity": (
                c["criteria"]["activity"]["result"],
                c["criteria"]["activity"]["parts"]["sledai"]["score"],
            ),
            "evidence": sorted(e["resource"] for e in c["criteria"]["activity"]["evidence"]),
            "exclusions": {k: (v["result"], v.get("until")) for k, v in c["exclusions"].items()},
        }
    return found


def funnel(output: dict) -> dict:
    return {k: v for k, v in output["funnel"].items() if k != "resources_read"}


def screen_server(tmp_path, base, *extra) -> dict:
    out = tmp_path / "out"
    code = main(
        ["screen", "--server", base, "--as-of", AS_OF, "--out", str(out), "--quiet", *extra]
    )
    assert code == 0
    return json.loads((out / "candidates.json").read_text())


def test_rest_screen_matches_files(seeded, cohort_output, tmp_path):
    rest = screen_server(tmp_path, seeded)
    assert outcomes(rest) == outcomes(cohort_output)
    assert funnel(rest) == funnel(cohort_output)
    assert len(outcomes(rest)) == len(cohort_output["candidates"]) > 100
    retrieval = rest["retrieval"]
    # The candidate searches find the pool (and a few more), never the whole server.
    pool = cohort_output["funnel"]["steps"][0]["count"]  # the candidate pool
    assert pool <= retrieval["patients_fetched"] < cohort_output["funnel"]["patients_read"]
    # Several patients per request: far fewer requests than patients.
    assert 0 < retrieval["http_requests"] < retrieval["patients_fetched"]


@pytest.mark.parametrize("level", ["system", "patient"])
def test_bulk_screen_matches_files(seeded, cohort_output, tmp_path, level):
    bulk = screen_server(tmp_path, seeded, "--bulk", level)
    assert outcomes(bulk) == outcomes(cohort_output)
    assert funnel(bulk) == funnel(cohort_output)
    assert bulk["retrieval"]["http_requests"] > 0


@pytest.fixture(scope="module")
def smart_server(tmp_path_factory):
    """sekmet with SMART Backend Services required, and a registered EC P-384 client."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    folder = tmp_path_factory.mktemp("sekmet-smart")
    key = ec.generate_private_key(ec.SECP384R1())
    private = folder / "client.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    private.chmod(0o600)
    public = folder / "client.pub.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    auth = {
        "types": ["smart"],
        "token_lifetime": 120,
        "smart_clients": [
            {
                "client_id": "fhir-cohort-ci",
                "scopes": "system/*.read system/*.write",
                "public_key_path": str(public),
            }
        ],
    }
    with sekmet(folder, server_auth=auth) as base:
        smart = ["--auth", "smart", "--client-id", "fhir-cohort-ci", "--private-key", str(private)]
        assert (
            main(
                [
                    "seed",
                    "--server",
                    base,
                    "--yes",
                    *smart,
                    "--scope",
                    "system/*.write system/*.read",
                ]
            )
            == 0
        )
        yield base, smart


def test_smart_backend_services_screen(smart_server, cohort_output, tmp_path, capsys):
    base, smart = smart_server
    rest = screen_server(tmp_path / "rest", base, *smart)
    bulk = screen_server(tmp_path / "bulk", base, *smart, "--bulk", "system")
    assert outcomes(rest) == outcomes(cohort_output) == outcomes(bulk)
    # Neither an access token nor key material reaches the terminal or the outputs.
    printed = capsys.readouterr()
    written = "".join(
        p.read_text(errors="replace")
        for p in tmp_path.rglob("*")
        if p.is_file() and p.suffix in (".json", ".csv")
    )
    for text in (printed.out, printed.err, written):
        assert "eyJ" not in text and "PRIVATE KEY" not in text and "Bearer" not in text


def test_server_refusing_without_credentials_exits_3_in_one_line(smart_server, tmp_path, capsys):
    base, _ = smart_server
    code = main(["screen", "--server", base, "--as-of", AS_OF, "--out", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    assert len(err) == 1 and "HTTP 401" in err[0] and "Authentication required" in err[0]
