"""Shared fixtures: the trial definition and one screening of the bundled cohort."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
from real_servers import cohort_server, real_server  # noqa: F401 (session fixtures for all tests)
from web_support import screened_state, state_dir, users_state  # noqa: F401 (the workbench's)

from fhir_cohort.criteria.language import load
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.files import FileSource
from fhir_cohort.transport import redact

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
EXPECTED = ROOT / "fixtures" / "misle-cohort.expected.json"


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory):
    """Runs in the tests keep their history in a temporary folder, never in ~/.local."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FHIR_COHORT_STATE", str(tmp_path_factory.mktemp("state")))
        patch.delenv("XDG_STATE_HOME", raising=False)
        yield


@pytest.fixture(autouse=True)
def fresh_secrets(monkeypatch):
    """Each test is a process of its own as far as secrets go: a token one test
    registered ("second") must not mask that word in the next test's paths."""
    monkeypatch.setattr(redact, "SECRETS", redact.Secrets())


@pytest.fixture(scope="session")
def trial():
    return load("misle")


@pytest.fixture(scope="session")
def expected() -> dict:
    return json.loads(EXPECTED.read_text())


@pytest.fixture(scope="session")
def cohort_screening(trial, expected):
    """The bundled cohort screened for MiSLE, once per test session (never changed)."""
    return screen([FileSource(COHORT)], trial, date.fromisoformat(expected["as_of"]))


@pytest.fixture(scope="session")
def cohort_output(cohort_screening) -> dict:
    """candidates.json for the bundled cohort."""
    return screening_dict(cohort_screening)
