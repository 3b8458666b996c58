"""Small builders of FHIR R4 dicts for focused tests, and a one-call evaluation helper.

Every builder returns a plain dict shaped as a real feed would send it; keyword
arguments override or add fields, so a test states only what it is about.
"""

from __future__ import annotations

from datetime import date

from misle_view import MisleView

from fhir_cohort.criteria.language import Trial
from fhir_cohort.criteria.tree import evaluate
from fhir_cohort.normalise.facts import PatientFacts
from fhir_cohort.normalise.resources import patient_facts

SNOMED = "http://snomed.info/sct"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

D = date(2026, 6, 30)  # the as-of date used throughout unless a test says otherwise
PID = "p1"


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict = {"coding": [coding]}
    if text:
        out["text"] = text
    return out


def ref(pid: str = PID) -> dict:
    return {"reference": f"Patient/{pid}"}


def patient(pid: str = PID, birth: str | None = "1990-01-15", **extra) -> dict:
    out: dict = {"resourceType": "Patient", "id": pid}
    if birth is not None:
        out["birthDate"] = birth
    out.update(extra)
    return out


def condition(
    rid: str,
    system: str,
    code: str,
    onset: str | None = "2020-01-01",
    *,
    pid: str = PID,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    **extra,
) -> dict:
    out: dict = {
        "resourceType": "Condition",
        "id": rid,
        "subject": ref(pid),
        "code": concept(system, code),
    }
    if clinical:
        out["clinicalStatus"] = concept(CLIN, clinical)
    if verification:
        out["verificationStatus"] = concept(VER, verification)
    if onset is not None:
        out["onsetDateTime"] = onset
    out.update(extra)
    return out


def sle(rid: str = "c-sle", code: str = "55464009", **kw) -> dict:
    return condition(rid, SNOMED, code, **kw)


def quantity(value: float, unit: str | None, comparator: str | None = None) -> dict:
    out: dict = {"value": value}
    if unit is not None:
        out["unit"] = unit
    if comparator:
        out["comparator"] = comparator
    return out


def interpretation(*codes: str) -> list[dict]:
    return [concept(INTERP, c) for c in codes]


def observation(
    rid: str, loinc: str, when: str | None = "2026-06-01", *, pid: str | None = PID, **extra
) -> dict:
    """An Observation; pass value fields as keywords (valueQuantity=..., valueString=...)."""
    out: dict = {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": concept(LOINC, loinc),
    }
    if pid is not None:
        out["subject"] = ref(pid)
    if when is not None:
        out["effectiveDateTime"] = when
    out.update(extra)
    return out


def procedure(rid: str, system: str, code: str, when: str, *, pid: str = PID, **extra) -> dict:
    out = {
        "resourceType": "Procedure",
        "id": rid,
        "status": "completed",
        "subject": ref(pid),
        "code": concept(system, code),
        "performedDateTime": when,
    }
    out.update(extra)
    return out


def drug(code: str = "1092437", display: str = "belimumab") -> dict:
    return concept(RXNORM, code, display)


def med_administration(
    rid: str, status: str = "completed", when: str | None = "2026-05-15", **extra
) -> dict:
    out: dict = {
        "resourceType": "MedicationAdministration",
        "id": rid,
        "status": status,
        "subject": ref(),
        "medicationCodeableConcept": drug(),
    }
    if when is not None:
        out["effectiveDateTime"] = when
    out.update(extra)
    return out


def med_statement(rid: str, status: str = "completed", **extra) -> dict:
    out: dict = {
        "resourceType": "MedicationStatement",
        "id": rid,
        "status": status,
        "subject": ref(),
        "medicationCodeableConcept": drug(),
    }
    out.update(extra)
    return out


def med_request(
    rid: str,
    status: str = "completed",
    intent: str = "order",
    authored: str | None = "2026-05-10",
    **extra,
) -> dict:
    out: dict = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": intent,
        "subject": ref(),
        "medicationCodeableConcept": drug(),
    }
    if authored is not None:
        out["authoredOn"] = authored
    out.update(extra)
    return out


def eligible_core(as_of: date = D) -> list[dict]:
    """An otherwise eligible lupus patient (age 36, ACR 5, SLEDAI labs 6 in the window).

    ACR: malar rash, arthritis, oral ulcers (Conditions), ANA 1:320, anti-dsDNA
    above the lab's range. Activity: UPCR 1.2 g/g (4) + anti-dsDNA positive (2).
    """
    recent = as_of.replace(day=1).isoformat() if as_of.day > 1 else as_of.isoformat()
    return [
        patient(),
        sle(),
        condition("c-malar", SNOMED, "95332009"),
        condition("c-arthritis", SNOMED, "3723001"),
        condition("c-ulcers", SNOMED, "26284000"),
        observation("o-ana", "5048-4", "2019-03-01", valueString="1:320"),
        observation(
            "o-dsdna",
            "5130-0",
            recent,
            valueQuantity=quantity(85, "[IU]/mL"),
            referenceRange=[{"high": quantity(30, "[IU]/mL")}],
        ),
        observation("o-upcr", "2890-2", recent, valueQuantity=quantity(1.2, "g/g")),
    ]


def facts_of(
    resources: list[dict], pid: str = PID, medications: dict | None = None
) -> PatientFacts:
    meds = medications or {}
    return patient_facts(pid, resources, meds.get)


def run(
    trial: Trial,
    resources: list[dict],
    as_of: date = D,
    pid: str = PID,
    medications: dict | None = None,
) -> MisleView:
    """Normalise ``resources`` as one patient's record and evaluate it (read as MiSLE's
    age, acr and activity)."""
    return MisleView(evaluate(facts_of(resources, pid, medications), trial, as_of))


def resources_of(evidence) -> list[str]:
    return [e.resource for e in evidence]
