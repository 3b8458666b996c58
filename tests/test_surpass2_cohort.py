"""Every patient of the SURPASS-2 cohort ends as its hand-derived expectation says.

fixtures/surpass2-cohort.expected.json was worked out by hand from shared/surpass2-rules.md by
someone other than the author of the trial definition (each patient's `why` cites the section
that decides it). The cohort is screened once, through the public interface only
(``fhir-cohort screen --trial surpass2``, in process), and every listed patient is checked
finding by finding: status, eligible_from, the result of each inclusion and exclusion, the
`until` of each running washout, and that the evidence of each met, excluded or washout
finding names the resource the case was built around. Patients outside the pool must be
absent from the list and counted in the funnel.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from surpass2_builders import CRITERIA, EXCLUSIONS, evidence_of, finding, screen

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "surpass2-cohort"
EXPECTED = json.loads((ROOT / "fixtures" / "surpass2-cohort.expected.json").read_text())
CASES = EXPECTED["patients"]

if not (ROOT / "queries" / "surpass2.yaml").exists():
    pytest.skip(
        "the SURPASS-2 trial (queries/surpass2.yaml) does not exist yet", allow_module_level=True
    )


@pytest.fixture(scope="module")
def screening(tmp_path_factory) -> tuple[int, dict]:
    work = tmp_path_factory.mktemp("surpass2-cohort")
    return screen(COHORT, work, EXPECTED["as_of"])


@pytest.fixture(scope="module")
def listed(screening) -> dict[str, dict]:
    return {c["patient"]: c for c in screening[1]["candidates"]}


def test_the_cohort_screens_completely(screening):
    code, output = screening
    assert code == 0  # every file readable, every resource valid FHIR R4
    assert output["trial"] == "surpass2"
    assert output["as_of"] == EXPECTED["as_of"]


def test_listed_patients_are_the_candidate_pool(listed):
    """§2: exactly the expected pool is listed; nobody else, nobody missing."""
    pool = {pid for pid, want in CASES.items() if want["status"] != "not-a-candidate"}
    assert set(listed) == pool


def test_funnel_counts_every_status(screening):
    """§2/§5: the funnel counts each status, not-a-candidate included."""
    counts: dict[str, int] = {}
    for want in CASES.values():
        counts[want["status"]] = counts.get(want["status"], 0) + 1
    got = screening[1]["funnel"]["status"]
    assert {k: v for k, v in got.items() if v} == counts


@pytest.mark.parametrize("patient_id", sorted(CASES))
def test_patient_outcome(patient_id, listed):
    want = CASES[patient_id]
    if want["status"] == "not-a-candidate":
        assert patient_id not in listed, want["why"]
        return
    got = listed[patient_id]
    assert got["status"] == want["status"], want["why"]
    assert got["eligible_from"] == want["eligible_from"], want["why"]
    results = {key: finding(got, key)["result"] for key in CRITERIA + EXCLUSIONS}
    assert results == {**want["criteria"], **want["exclusions"]}, want["why"]
    for key, until in want["until"].items():
        assert finding(got, key)["until"] == until, (key, want["why"])
    for key, resources in want["key_evidence"].items():
        missing = set(resources) - evidence_of(got, key)
        assert not missing, (key, missing, want["why"])
