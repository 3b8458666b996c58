"""The SURPASS-2 test cohort is current, valid FHIR R4, and agrees with its expected outcomes.

These check the fixture, not the engine, so they run before the trial definition exists:
the committed files are exactly what fixtures/generate_surpass2_cohort.py writes (which
validates every resource with fhir.resources R4B models and fails on the first invalid one),
every NDJSON line is a resource of its file's type, and the expected file names every patient
and only resources that are in the cohort.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "fixtures" / "generate_surpass2_cohort.py"
COHORT = ROOT / "fixtures" / "surpass2-cohort"
EXPECTED = ROOT / "fixtures" / "surpass2-cohort.expected.json"


@pytest.fixture(scope="module")
def rendered() -> dict[Path, bytes]:
    spec = importlib.util.spec_from_file_location("generate_surpass2_cohort", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        return module.render()
    finally:
        del sys.modules[spec.name]


def resources() -> list[dict]:
    """Every resource of the cohort, Bundle entries unpacked."""
    out = []
    for path in sorted(COHORT.rglob("*")):
        if path.suffix == ".ndjson":
            out += [json.loads(line) for line in path.read_text().splitlines()]
        elif path.suffix == ".json":
            out += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    return out


def test_committed_files_are_what_the_generator_writes(rendered):
    on_disk = {p for p in COHORT.rglob("*") if p.is_file()}
    assert on_disk == {p for p in rendered if COHORT in p.parents}
    for path, data in rendered.items():
        assert path.read_bytes() == data, f"{path} is stale: run {GENERATOR.name}"


def test_every_ndjson_line_is_a_resource_of_its_type():
    files = sorted(COHORT.glob("*.ndjson"))
    assert [f.name.split(".")[0] for f in files] == sorted(
        [
            "Condition",
            "FamilyMemberHistory",
            "Medication",
            "MedicationAdministration",
            "MedicationRequest",
            "MedicationStatement",
            "Observation",
            "Patient",
        ]
    )
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            resource = json.loads(line)
            assert resource["resourceType"] == path.name.split(".")[0], (path.name, number)


def test_expected_outcomes_cover_the_cohort():
    expected = json.loads(EXPECTED.read_text())
    assert (expected["trial"], expected["as_of"]) == ("surpass2", "2026-06-30")
    data = resources()
    patients = {r["id"] for r in data if r["resourceType"] == "Patient"}
    assert patients == set(expected["patients"])
    present = {f"{r['resourceType']}/{r['id']}" for r in data if "id" in r}
    for pid, want in expected["patients"].items():
        assert want["why"].startswith(("§", "Baseline", "Header", "Delivered")), pid
        for refs in want.get("key_evidence", {}).values():
            assert set(refs) <= present, pid
