"""Every patient of the bundled cohort ends as its hand-derived expectation says.

The expectations in fixtures/misle-cohort.expected.json were worked out from
the rules page independently of the engine; each names the rule it exercises.
"""

from __future__ import annotations

import json

import pytest
from conftest import EXPECTED

CASES = json.loads(EXPECTED.read_text())["patients"]


@pytest.fixture(scope="module")
def listed(cohort_output) -> dict:
    return {c["patient"]: c for c in cohort_output["candidates"]}


@pytest.mark.parametrize("patient_id", sorted(CASES))
def test_patient_outcome(patient_id, listed):
    want = CASES[patient_id]
    if want["status"] == "not-a-candidate":
        assert patient_id not in listed, want["exercises"]
        return
    got = listed[patient_id]
    assert got["status"] == want["status"], want["exercises"]
    assert got["eligible_from"] == want["eligible_from"], want["exercises"]
    assert got["age"] == want["age"], want["exercises"]
    if "acr_met" in want:
        assert sorted(got["criteria"]["acr"]["met"]) == sorted(want["acr_met"]), want["exercises"]
    if "activity" in want:
        assert got["criteria"]["activity"]["result"] == want["activity"], want["exercises"]
    flagged = {}
    for key, finding in got["exclusions"].items():
        if finding["result"] == "washout":
            flagged[key] = {"result": "washout", "until": finding["until"]}
        elif finding["result"] != "clear":
            flagged[key] = finding["result"]
    assert flagged == want.get("exclusions", {}), want["exercises"]
