"""Real-shaped third-party data (Synthea bundles, a SMART Bulk export) reads cleanly.

None of these patients has lupus (fixtures/third-party/README.md), so the
screen must list nobody and note no problem; lupus evidence added on top of a
Synthea patient, in a separate source, must make exactly that patient listed.
"""

from __future__ import annotations

import gzip
import json
from datetime import date

from conftest import ROOT

from fhir_cohort.engines.embedded import screen
from fhir_cohort.outputs.candidates import screening_dict
from fhir_cohort.sources.files import FileSource

THIRD_PARTY = ROOT / "fixtures" / "third-party"
ALFONZO = "cd3d3588-94fc-b980-9e94-0390d989d921"
AS_OF = date(2026, 6, 30)


def _lines(path) -> int:
    with gzip.open(path, "rt") as stream:
        return sum(1 for line in stream if line.strip())


def test_third_party_data_screens_cleanly(trial):
    out = screening_dict(screen([FileSource(THIRD_PARTY)], trial, AS_OF))
    smart_patients = _lines(THIRD_PARTY / "smart-bulk" / "Patient.000.ndjson.gz")
    assert out["funnel"]["patients_read"] == smart_patients + 2
    assert out["funnel"]["resources_read"]["Condition"] >= _lines(
        THIRD_PARTY / "smart-bulk" / "Condition.000.ndjson.gz"
    )
    assert out["funnel"]["steps"][0] == {"id": "pool", "label": "lupus evidence", "count": 0}
    assert out["candidates"] == []
    assert out["data_quality"] == []


def _lupus_top_up(tmp_path):
    """A collection Bundle adding SLE evidence to the Synthea patient Alfonzo."""

    def entry(resource):
        return {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}

    # A relative reference: a urn:uuid only resolves inside its own Bundle (FHIR's rule).
    subject = {"reference": f"Patient/{ALFONZO}"}

    def condition(rid, system, code, onset):
        return {
            "resourceType": "Condition",
            "id": rid,
            "subject": subject,
            "code": {"coding": [{"system": system, "code": code}]},
            "clinicalStatus": {"coding": [{"code": "active"}]},
            "onsetDateTime": onset,
        }

    def lab(rid, loinc, when, **value):
        return {
            "resourceType": "Observation",
            "id": rid,
            "status": "final",
            "subject": subject,
            "code": {"coding": [{"system": "http://loinc.org", "code": loinc}]},
            "effectiveDateTime": when,
            **value,
        }

    snomed = "http://snomed.info/sct"
    resources = [
        condition("topup-sle", snomed, "55464009", "2020-01-01"),
        condition("topup-malar", snomed, "95332009", "2020-01-01"),
        condition("topup-arthritis", snomed, "3723001", "2020-02-01"),
        lab("topup-ana", "5048-4", "2020-01-05", valueString="1:640"),
        lab(
            "topup-dsdna",
            "5130-0",
            "2026-06-01",
            valueQuantity={"value": 90, "unit": "IU/mL"},
            referenceRange=[{"high": {"value": 30, "unit": "IU/mL"}}],
        ),
        lab(
            "topup-c3",
            "4485-9",
            "2026-06-01",
            valueQuantity={
                "value": 0.6,
                "unit": "g/L",
                "system": "http://unitsofmeasure.org",
                "code": "g/L",
            },
        ),
    ]
    path = tmp_path / "lupus-top-up.json"
    path.write_text(
        json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [entry(r) for r in resources]}
        )
    )
    return path


def test_lupus_added_on_top_of_synthea_patient(trial, tmp_path):
    out = screening_dict(
        screen([FileSource(THIRD_PARTY), FileSource(_lupus_top_up(tmp_path))], trial, AS_OF)
    )
    assert [c["patient"] for c in out["candidates"]] == [ALFONZO]
    alfonzo = out["candidates"][0]
    assert alfonzo["status"] == "eligible"
    assert alfonzo["name"] == "Alfonzo975 Hickle134"
    assert alfonzo["age"] == 32  # born 1994-01-20
    assert alfonzo["criteria"]["acr"]["met"] == ["malar_rash", "arthritis", "immunologic", "ana"]
    activity = alfonzo["criteria"]["activity"]
    assert activity["parts"]["sledai"]["score"] == 4
    assert {e["resource"] for e in activity["evidence"]} == {
        "Observation/topup-dsdna",
        "Observation/topup-c3",
    }
    assert out["funnel"]["patients_read"] == 15
