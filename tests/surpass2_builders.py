"""Builders of small FHIR R4 records for the SURPASS-2 rule tests, and the one screen they share.

Rule: everything goes through the public interface only. A row's resources are written as
Bulk-style NDJSON (one file per type) and screened with
``fhir_cohort.cli.main(["screen", "--trial", "surpass2", ...])``; the answer is read from the
``candidates.json`` it writes. Nothing from ``fhir_cohort.criteria`` is imported.

The builders write ``@`` where the patient id goes (``Patient/@``, ``@-a1c``); a row replaces
it with its own id, so each row states only what it is about. ``@`` appears nowhere else.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import defaultdict
from pathlib import Path

from fhir_cohort import cli

D = "2026-06-30"  # the as-of date unless a row says otherwise
ME = "Patient/@"

SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
CLIN = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VER = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERP = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DAR = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

CRITERIA = ("age", "t2d_duration", "hba1c", "metformin", "bmi", "egfr")
EXCLUSIONS = (
    "type1_diabetes",
    "pancreatitis",
    "mtc_men2",
    "proliferative_retinopathy",
    "glp1_washout",
    "insulin_washout",
    "pregnancy",
    "deceased",
)

SAME = object()  # quantity(): send the unit as the UCUM code too


def days_before(n: int, as_of: str = D) -> str:
    """The date ``n`` days before ``as_of`` (after it when ``n`` is negative).

    >>> days_before(90), days_before(-1)
    ('2026-04-01', '2026-07-01')
    """
    return (dt.date.fromisoformat(as_of) - dt.timedelta(days=n)).isoformat()


def system_of(code: str) -> str:
    """The code system of a Condition or Observation code, from its shape.

    >>> system_of("4548-4") == LOINC, system_of("E11.9") == ICD10CM, system_of("44054006") == SNOMED
    (True, True, True)
    """
    if "-" in code:
        return LOINC
    if code[:1].isalpha() and code[1:2].isdigit():
        return ICD10CM
    return SNOMED


def concept(code: str, system: str | None = None, display: str | None = None) -> dict:
    coding = {"system": system or system_of(code), "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def rx(code: str, display: str | None = None) -> dict:
    """An RxNorm medicationCodeableConcept."""
    return {"medicationCodeableConcept": concept(code, RXNORM, display)}


def named(text: str) -> dict:
    """A medicationCodeableConcept with only text."""
    return {"medicationCodeableConcept": {"text": text}}


def quantity(value, unit=None, code=SAME, comparator=None) -> dict:
    """A Quantity; by default the unit is sent as its UCUM code too; code=None sends none."""
    q: dict = {"value": value}
    if comparator:
        q["comparator"] = comparator
    if unit is not None:
        q["unit"] = unit
    if code is SAME:
        code = unit
    if code is not None:
        q["system"] = UCUM
        q["code"] = code
    return q


def patient(birth: str | None = "1990-05-12", gender: str | None = "female", **extra) -> dict:
    out: dict = {"resourceType": "Patient", "id": "@"}
    if gender:
        out["gender"] = gender
    if birth:
        out["birthDate"] = birth
    out.update(extra)
    return out


def condition(
    suffix: str,
    code: str,
    onset: str | None = "2018-04-12",
    *,
    system: str | None = None,
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    **extra,
) -> dict:
    out: dict = {"resourceType": "Condition", "id": f"@-{suffix}"}
    if clinical:
        out["clinicalStatus"] = concept(clinical, CLIN)
    if verification:
        out["verificationStatus"] = concept(verification, VER)
    out["code"] = concept(code, system)
    out["subject"] = {"reference": ME}
    if onset:
        out["onsetDateTime"] = onset
    out.update(extra)
    return out


def observation(suffix: str, loinc: str, when: str | None, *, status="final", **extra) -> dict:
    """An Observation dated by effectiveDateTime; pass the value as valueQuantity=... etc."""
    out: dict = {
        "resourceType": "Observation",
        "id": f"@-{suffix}",
        "status": status,
        "code": concept(loinc, LOINC),
        "subject": {"reference": ME},
    }
    if when is not None:
        out["effectiveDateTime"] = when
    out.update(extra)
    return out


def statement(suffix: str, drug: dict, status: str = "active", **extra) -> dict:
    out = {"resourceType": "MedicationStatement", "id": f"@-{suffix}", "status": status}
    out.update(drug)
    out["subject"] = {"reference": ME}
    out.update(extra)
    return out


def period(start: str | None = None, end: str | None = None) -> dict:
    return {k: v for k, v in (("start", start), ("end", end)) if v}


def request(
    suffix: str, drug: dict, status: str = "active", intent: str = "order", **extra
) -> dict:
    out = {
        "resourceType": "MedicationRequest",
        "id": f"@-{suffix}",
        "status": status,
        "intent": intent,
    }
    out.update(drug)
    out["subject"] = {"reference": ME}
    out.update(extra)
    return out


def supply(value, unit, code=None, repeats=None, validity=None) -> dict:
    """dispenseRequest with expectedSupplyDuration (value, unit, optional UCUM code)."""
    out: dict = {"expectedSupplyDuration": quantity(value, unit, code)}
    if repeats is not None:
        out["numberOfRepeatsAllowed"] = repeats
    if validity:
        out["validityPeriod"] = validity
    return {"dispenseRequest": out}


def administration(suffix: str, drug: dict, status: str = "completed", **extra) -> dict:
    out = {"resourceType": "MedicationAdministration", "id": f"@-{suffix}", "status": status}
    out.update(drug)
    out["subject"] = {"reference": ME}
    out.update(extra)
    return out


def family_history(suffix: str, code: str, status: str = "completed", **extra) -> dict:
    out = {
        "resourceType": "FamilyMemberHistory",
        "id": f"@-{suffix}",
        "status": status,
        "patient": {"reference": ME},
        "relationship": concept("MTH", ROLE, "mother"),
        "condition": [{"code": concept(code)}],
    }
    out.update(extra)
    return out


METFORMIN = rx("6809", "metformin")


def eligible(
    *, birth: str | None = "1990-05-12", gender: str | None = "female", without=(), as_of=D
) -> list[dict]:
    """A patient meeting all six inclusions as of ``as_of``, every exclusion clear.

    T2D since 2018, HbA1c 8.0 % and eGFR 75 twenty days before, BMI 27.5 thirty days before,
    metformin ongoing since 400 days before. ``without`` drops pieces by name:
    t2d, a1c, metformin, bmi, egfr.
    """
    pieces = {
        "t2d": condition("t2d", "E11.9", "2018-04-12"),
        "a1c": observation(
            "a1c", "4548-4", days_before(20, as_of), valueQuantity=quantity(8.0, "%")
        ),
        "metformin": statement(
            "met", METFORMIN, "active", effectivePeriod=period(days_before(400, as_of))
        ),
        "bmi": observation(
            "bmi", "39156-5", days_before(30, as_of), valueQuantity=quantity(27.5, "kg/m2")
        ),
        "egfr": observation(
            "egfr",
            "62238-1",
            days_before(20, as_of),
            valueQuantity=quantity(75, "mL/min/{1.73_m2}"),
        ),
    }
    unknown = set(without) - set(pieces)
    assert not unknown, unknown
    return [patient(birth, gender)] + [r for k, r in pieces.items() if k not in without]


def with_id(resources, pid: str) -> list[dict]:
    """The resources with ``@`` replaced by the patient id."""
    return json.loads(json.dumps(list(resources)).replace("@", pid))


def write_ndjson(folder: Path, resources, suffix: str = "000") -> None:
    """Bulk-style NDJSON: one ``<Type>.<suffix>.ndjson`` per resource type, in given order."""
    by_type: dict[str, list[str]] = defaultdict(list)
    for r in resources:
        by_type[r["resourceType"]].append(json.dumps(r, ensure_ascii=False))
    folder.mkdir(parents=True, exist_ok=True)
    for rtype, lines in by_type.items():
        (folder / f"{rtype}.{suffix}.ndjson").write_text("".join(x + "\n" for x in lines))


def screen(source: Path, work: Path, as_of: str = D) -> tuple[int, dict]:
    """Screen ``source`` for SURPASS-2 through the CLI; the exit code and candidates.json."""
    out, state = work / "out", work / "state"
    code = cli.main(
        [
            "screen",
            "--trial",
            "surpass2",
            "--source",
            str(source),
            "--as-of",
            as_of,
            "--out",
            str(out),
            "--state",
            str(state),
            "--quiet",
        ]
    )
    path = out / "candidates.json"
    return code, json.loads(path.read_text()) if path.exists() else {}


def finding(candidate: dict, key: str) -> dict:
    """A candidate's criterion or exclusion by id."""
    return candidate["criteria" if key in CRITERIA else "exclusions"][key]


def evidence_of(candidate: dict, key: str) -> set[str]:
    """The ``Type/id`` of every evidence item of one finding."""
    return {e["resource"] for e in finding(candidate, key).get("evidence") or ()}
