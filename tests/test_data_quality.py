"""The messy export (fixtures/messy/, from fixtures/generate_messy.py): the run finishes,
the eligible patient stays eligible, and every problem is reported once, with where it was.
Records with a value that cannot be read (rules page, "values the tool cannot read") never
count in the patient's favour: an invalid onset date no longer counts for a criterion, and
a belimumab administration without its required date makes the washout a review.

Expected counts are worked out from the generator's layout (its docstring lists every
broken line), not from an engine run.
"""

from __future__ import annotations

import importlib.util
import json
from datetime import date
from pathlib import Path

import pytest
from builders import eligible_core

from fhir_cohort.cli import main
from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]
MESSY = ROOT / "fixtures" / "messy"
AS_OF = date(2026, 6, 30)


def _generator():
    spec = importlib.util.spec_from_file_location(
        "generate_messy", ROOT / "fixtures" / "generate_messy.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# code -> (count, places). A place naming a file is relative to the messy folder (the
# source reports "<path>:<line>", or the path alone for a whole-file problem); notes raised
# while normalising or evaluating a resource name the resource ("Type/id") instead.
EXPECTED_NOTES: dict[str, tuple[int, list[str]]] = {
    "invalid-json": (2, ["file:01-patients.ndjson:4", "file:06-broken-bundle.json"]),
    "not-a-resource": (1, ["file:01-patients.ndjson:5"]),
    "missing-id": (1, ["file:01-patients.ndjson:6"]),
    "operation-outcome": (1, ["file:01-patients.ndjson:7"]),
    "unreadable-file": (1, ["file:05-corrupt.ndjson.gz"]),
    "no-patient-reference": (1, ["file:03-observations.ndjson:9"]),
    "unknown-unit": (2, ["Observation/o-wbc-r", "Observation/o-plt-r"]),
    "suspect-unit": (1, ["Observation/o-wbc-e"]),
    "unit-mismatch": (1, ["Observation/o-plt2-r"]),
    "bad-date": (1, ["Condition/c-photo-r"]),
    "exposure-start-only": (1, ["MedicationStatement/ms-pred-e"]),
    "unresolved-medication": (1, ["MedicationRequest/mr-hcq-e"]),
    "invalid-element": (1, ["MedicationAdministration/ma-bel-r"]),
    "duplicate-resource": (1, ["(several files)"]),
}


def _place(place: str, folder: Path) -> str:
    return f"{folder}/{place[5:]}" if place.startswith("file:") else place


def got_message(output: dict, code: str) -> str:
    entry = next(e for e in output["data_quality"] if e["code"] == code)
    return entry["examples"][0]["message"].removeprefix("cannot read the file: ")


def _check_output(output: dict, folder: Path) -> None:
    listed = {c["patient"]: c for c in output["candidates"]}
    assert set(listed) == {"messy-eligible", "messy-review"}

    # Every criterion of messy-eligible is met, but 05-corrupt.ndjson.gz could not be read
    # and could hold their exclusion: every candidate is needs-review, saying so.
    eligible = listed["messy-eligible"]
    assert eligible["status"] == "needs-review"
    assert eligible["reasons"][-1] == (
        "not all input could be read (1 unreadable-file, first: "
        f"{folder}/05-corrupt.ndjson.gz: cannot read the file: "
        + got_message(output, "unreadable-file")
        + "); records of this patient may be missing"
    )
    assert eligible["rank"] == 1
    assert eligible["age"] == 38
    acr = eligible["criteria"]["acr"]
    assert sorted(acr["met"]) == ["ana", "arthritis", "immunologic", "malar_rash", "oral_ulcers"]
    activity = eligible["criteria"]["activity"]
    assert (activity["result"], activity["parts"]["sledai"]["score"]) == ("met", 8)
    assert {e["resource"] for e in activity["evidence"]} == {
        "Observation/o-upcr-e",
        "Observation/o-c3-e",
        "Observation/o-dsdna-e",
    }
    # the suspect WBC neither scores leukopenia nor blocks anything
    assert activity["parts"]["sledai"]["descriptors"]["leukopenia"]["result"] == "unknown"
    assert (
        activity["parts"]["sledai"]["descriptors"]["leukopenia"]["evidence"][0]["resource"]
        == "Observation/o-wbc-e"
    )
    assert all(f["result"] == "clear" for f in eligible["exclusions"].values())

    review = listed["messy-review"]
    assert review["status"] == "needs-review"
    # the photosensitivity Condition's onset is not a date: it cannot count for the criterion
    assert review["criteria"]["acr"]["met"] == []
    photo = review["criteria"]["acr"]["criteria"]["photosensitivity"]
    assert photo["result"] == "unknown"
    assert [(e["resource"], e["date"], e["note"]) for e in photo["evidence"]] == [
        (
            "Condition/c-photo-r",
            None,
            "cannot be read: onsetDateTime 'last spring' is not a FHIR dateTime",
        )
    ]
    assert review["criteria"]["acr"]["criteria"]["hematologic"]["result"] == "unknown"
    assert review["criteria"]["activity"]["result"] == "unknown"
    # the belimumab administration without its (required) date could be any day: review
    washout = review["exclusions"]["belimumab_washout"]
    assert washout["result"] == "review"
    assert [e["resource"] for e in washout["evidence"]] == ["MedicationAdministration/ma-bel-r"]
    assert washout["evidence"][0]["note"].startswith(
        "cannot be read: effective[x] is missing (FHIR requires it)"
    )
    assert (
        "belimumab_washout needs review: MedicationAdministration/ma-bel-r: cannot be read: "
        "effective[x] is missing (FHIR requires it); at worst +2 calendar months = 2026-08-30"
    ) in review["reasons"]

    # The orphan Observation, the id-less Patient and the broken lines made no patients.
    assert output["funnel"]["patients_read"] == 2
    assert output["funnel"]["status"]["not-a-candidate"] == 0

    got = {entry["code"]: entry for entry in output["data_quality"]}
    assert set(got) == set(EXPECTED_NOTES)
    for code, (count, places) in EXPECTED_NOTES.items():
        entry = got[code]
        assert entry["count"] == count, code
        assert [e["where"] for e in entry["examples"]] == [_place(p, folder) for p in places], code
        assert all(e["message"] for e in entry["examples"]), code


def test_generator_is_deterministic_and_fixture_is_current(tmp_path):
    """fixtures/messy/ is exactly what the generator writes, on every run."""
    generator = _generator()
    first, second = tmp_path / "a", tmp_path / "b"
    generator.generate(first)
    generator.generate(second)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in MESSY.iterdir())
    assert len(names) == 7
    for name in names:
        assert (
            (first / name).read_bytes()
            == (second / name).read_bytes()
            == (MESSY / name).read_bytes()
        ), name


def test_messy_fixture_lines_are_as_documented():
    """Guard the line numbers the expectations rely on."""
    lines = (MESSY / "01-patients.ndjson").read_text().split("\n")
    assert lines[2] == ""  # line 3 is blank
    assert lines[3].endswith('"birthDate":"19')  # line 4 truncated
    assert lines[4].startswith("[")  # line 5 is an array
    assert json.loads(lines[6])["resourceType"] == "OperationOutcome"
    orphan = json.loads((MESSY / "03-observations.ndjson").read_text().split("\n")[8])
    assert orphan["id"] == "o-dsdna-orphan" and "subject" not in orphan


def test_pipeline_screen_over_messy_data(trial):
    screening = screen([FileSource(MESSY)], trial, AS_OF)
    _check_output(screening_dict(screening), MESSY)


def test_cli_screen_over_messy_data(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["screen", "--source", str(MESSY), "--as-of", AS_OF.isoformat(), "--out", str(out)])
    assert code == 4  # done with partial data: one file could not be read
    captured = capsys.readouterr()
    assert captured.err.startswith("fhir-cohort: warning: partial data: 1 unreadable-file;")
    assert "eligible: 0  washout: 0  needs-review: 2  excluded: 0" in captured.out
    assert "2 invalid-json" in captured.out and "1 unreadable-file" in captured.out
    output = json.loads((out / "candidates.json").read_text())
    _check_output(output, MESSY)


def test_messy_data_in_two_sources_of_one_run(tmp_path, trial):
    """A regenerated copy read as a second source: every resource is read twice but counts
    once (R14), so the outcome is the same and the duplicates are counted."""
    copy = tmp_path / "copy"
    _generator().generate(copy)
    output = screening_dict(screen([FileSource(MESSY), FileSource(copy)], trial, AS_OF))
    assert [(c["patient"], c["status"]) for c in output["candidates"]] == [
        ("messy-eligible", "needs-review"),  # the corrupt .gz (twice) could hold anything
        ("messy-review", "needs-review"),
    ]
    counts = {e["code"]: e["count"] for e in output["data_quality"]}
    assert counts["invalid-json"] == 4
    assert counts["unreadable-file"] == 2
    # Distinct kept resources: 2 Patients + 7 Conditions + 9 Observations (the orphan is
    # kept too) + 3 medication records = 21; each copy keeps 22 rows (c-sle-e twice), so
    # 44 rows hold 21 distinct resources: 23 duplicates.
    assert counts["duplicate-resource"] == 23
    # Per-resource notes are deduplicated the same way: still one per resource.
    assert counts["unknown-unit"] == 2
    assert counts["bad-date"] == 1


# One record each, in shapes a careless exporter sends: an object where FHIR has a list,
# a string where FHIR has an object.
MALFORMED = {
    "referenceRange-object": {
        "resourceType": "Observation",
        "id": "o-bad-range",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "4485-9"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2026-06-01",
        "valueQuantity": {"value": 60, "unit": "mg/dL"},
        "referenceRange": {"low": {"value": 90, "unit": "mg/dL"}},
    },
    "effectivePeriod-string": {
        "resourceType": "MedicationStatement",
        "id": "ms-bad-period",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "prednisone"},
        "effectivePeriod": "2026-01-01/2026-02-01",
    },
    "medicationReference-string": {
        "resourceType": "MedicationRequest",
        "id": "mr-bad-ref",
        "status": "active",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationReference": "Medication/m1",
        "authoredOn": "2026-01-01",
    },
    "dispenseRequest-list": {
        "resourceType": "MedicationRequest",
        "id": "mr-bad-dispense",
        "status": "completed",
        "intent": "order",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "prednisone"},
        "authoredOn": "2026-01-01",
        "dispenseRequest": [{"validityPeriod": {"end": "2026-02-01"}}],
    },
}


# What each malformed record does once read strictly: the element named in its note, and
# whether it can touch the outcome (a prednisone record cannot; a drug that cannot be read
# at all may be a biologic, so both washouts need review).
MALFORMED_OUTCOME = {
    "referenceRange-object": ("referenceRange {\"low\":{\"value\":90,\"unit\":\"mg/dL\"}} "
                              "is not a JSON array", "eligible"),
    "effectivePeriod-string": ("effectivePeriod '2026-01-01/2026-02-01' is not a JSON object",
                               "eligible"),
    "medicationReference-string": ("medicationReference 'Medication/m1' is not a JSON object",
                                   "needs-review"),
    "dispenseRequest-list": ("dispenseRequest [{\"validityPeriod\":{\"end\":\"2026-02-01\"}}… "
                             "is not a JSON object", "eligible"),
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(MALFORMED))
def test_one_malformed_record_does_not_abort_the_screen(tmp_path, trial, shape):
    export = tmp_path / "export.ndjson"
    records = [*eligible_core(), MALFORMED[shape]]
    export.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records))
    output = screening_dict(screen([FileSource(export)], trial, AS_OF))
    message, status = MALFORMED_OUTCOME[shape]
    assert [(c["patient"], c["status"]) for c in output["candidates"]] == [("p1", status)]
    notes = {n["code"]: n for n in output["data_quality"]}
    assert "malformed-resource" not in notes  # every shape is read, none breaks a reader
    assert notes["invalid-element"]["count"] == 1
    assert notes["invalid-element"]["examples"] == [
        {
            "where": f"{MALFORMED[shape]['resourceType']}/{MALFORMED[shape]['id']}",
            "message": message,
        }
    ]
    if status == "needs-review":
        reasons = output["candidates"][0]["reasons"]
        assert [r.split(":")[0] for r in reasons] == [
            "belimumab_washout needs review",
            "biologic_washout needs review",
        ]
