"""Facts the general criteria language reads that :mod:`.resources` does not make yet.

Rule: the same "evidence that counts" as :mod:`.resources`, for what it leaves
out: Patient.gender; FamilyMemberHistory conditions (status partial or
completed, each ``condition[].code`` one piece of evidence, dated by ``date``);
an Observation's coded answer and its texts as sent, and a valueString read as
``[comparator] number unit`` ("7.4 %", ">60 mL/min/1.73m2"); and every medication
record read as an *exposure interval* the way the second rules page reads it
(start from the record's own dates, an explicit end, MedicationRequest
``expectedSupplyDuration`` × (1 + ``numberOfRepeatsAllowed``)). Nothing here
decides what counts for a trial: the leaves' options do.

Phase A of issue 11 keeps this beside :mod:`.resources` (another change is
editing it); phase B merges it there and drops :class:`ExtendedFacts`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import date

from ..quality import Note
from .codes import Code
from .elements import Reading, nulls_marked
from .facts import LabFact, PatientFacts, Quantity, Source
from .resources import (
    ORDER_INTENTS,
    MedicationLookup,
    _drug,
    _first_date,
    observation,
    patient_facts,
)

COUNTING_FAMILY_HISTORY = frozenset({"partial", "completed"})
STATEMENT_EXPOSURE = frozenset({"active", "completed", "stopped", "on-hold"})
REQUEST_EXPOSURE = STATEMENT_EXPOSURE
ADMINISTRATION_EXPOSURE = frozenset({"completed", "in-progress"})
_SUPPLY_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}
_SUPPLY_DAYS |= {"mo": 30, "month": 30, "months": 30}
_STRING_QUANTITY = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*(\d+(?:\.\d+)?|\.\d+)\s*(\S.*?)?\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}


@dataclass(frozen=True, slots=True)
class FamilyHistoryFact:
    """One condition of a relative, from a FamilyMemberHistory."""

    source: Source
    codes: tuple[Code, ...]
    text: str | None
    date: date | None
    relationship: str | None


@dataclass(frozen=True, slots=True)
class ObservationFact(LabFact):
    """A :class:`LabFact` with its coded answer, its texts, and a valueString quantity."""

    value_codes: tuple[Code, ...] = ()
    value_texts: tuple[str, ...] = ()
    string_quantity: Quantity | None = None


@dataclass(frozen=True, slots=True)
class MedicationRecord:
    """A medication record as an exposure interval: ``start`` … ``end``, both included.

    ``end`` is the record's own end (period end, validityPeriod.end); ``active``
    runs up to the as-of date; ``supply_days`` is a finished order's
    expectedSupplyDuration × (1 + numberOfRepeatsAllowed), when readable.
    """

    source: Source
    codes: tuple[Code, ...]
    names: tuple[str, ...]
    status: str
    start: date | None
    end: date | None
    active: bool
    supply_days: int | None = None


@dataclass(frozen=True, slots=True)
class ExtendedFacts(PatientFacts):
    """:class:`PatientFacts` plus what :mod:`.resources` does not read yet."""

    gender: str | None = None
    family_history: tuple[FamilyHistoryFact, ...] = ()
    records: tuple[MedicationRecord, ...] = ()


def family_history(resource: dict) -> tuple[FamilyHistoryFact, ...]:
    """The counting conditions of one FamilyMemberHistory.

    >>> fmh = {"resourceType": "FamilyMemberHistory", "id": "f1", "status": "completed",
    ...        "date": "2024-03-01", "relationship": {"coding": [{"code": "MTH"}]},
    ...        "condition": [{"code": {"coding": [{"system": "http://snomed.info/sct",
    ...                                            "code": "255032005"}]}}]}
    >>> [(f.source.reference, f.codes[0].code, f.date.isoformat(), f.relationship)
    ...  for f in family_history(fmh)]
    [('FamilyMemberHistory/f1', '255032005', '2024-03-01', 'mth')]
    >>> family_history({**fmh, "status": "entered-in-error"})
    ()
    """
    if resource.get("status") not in COUNTING_FAMILY_HISTORY:
        return ()
    reading = Reading(resource)
    source = Source("FamilyMemberHistory", str(resource.get("id")))
    when = _first_date(reading, (("date", "dateTime"),))
    kin = reading.dict_at(resource.get("relationship"), "relationship")
    codings = reading.array(kin.get("coding"), "relationship.coding")
    first = codings[0] if codings and type(codings[0]) is dict else {}
    code = reading.string(first.get("code"), "relationship.coding[0].code")
    relationship = code.strip().lower() if code else None
    found = []
    for index, item in enumerate(reading.array(resource.get("condition"), "condition")):
        if isinstance(item, dict):
            codes, text = reading.concept(item.get("code"), f"condition[{index}].code")
            found.append(FamilyHistoryFact(source, codes, text, when, relationship))
    return tuple(found)


def string_quantity(text: object) -> Quantity | None:
    """A valueString read as ``[comparator] number unit``.

    >>> string_quantity("7.4 %")
    Quantity(value=7.4, comparator=None, unit='%', unit_text=None)
    >>> string_quantity(">60 mL/min/1.73m2")
    Quantity(value=60.0, comparator='>', unit='mL/min/1.73m2', unit_text=None)
    >>> string_quantity("≥ 25"), string_quantity("Positive")
    (Quantity(value=25.0, comparator='>=', unit=None, unit_text=None), None)
    """
    if not isinstance(text, str):
        return None
    match = _STRING_QUANTITY.match(text)
    if not match:
        return None
    comparator, number, unit = match.groups()
    return Quantity(float(number), _COMPARATORS.get(comparator, comparator), unit or None)


def extend_observation(fact: LabFact, resource: dict) -> ObservationFact:
    """Add the coded answer, the texts and a valueString quantity to a LabFact.

    >>> from fhir_cohort.normalise.resources import observation
    >>> obs = {"resourceType": "Observation", "id": "o", "status": "final",
    ...        "code": {"coding": [{"system": "http://loinc.org", "code": "2106-3"}]},
    ...        "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
    ...            "code": "260373001", "display": "Detected"}], "text": " Detected "}}
    >>> fact = extend_observation(observation(Reading(obs), Source("Observation", "o")), obs)
    >>> [c.code for c in fact.value_codes], fact.value_texts
    (['260373001'], ('Detected',))
    """
    concept = resource.get("valueCodeableConcept")
    texts: list[str] = []
    raw = resource.get("valueString")
    if isinstance(raw, str):
        texts.append(raw)
    value_codes, _ = Reading(resource).concept(concept, "valueCodeableConcept")
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        texts += [c.display for c in value_codes if c.display]
    texts = [t.strip() for t in texts if t.strip()]
    values = {f.name: getattr(fact, f.name) for f in fields(LabFact)}
    return ObservationFact(
        **values,
        value_codes=value_codes,
        value_texts=tuple(dict.fromkeys(texts)),
        string_quantity=string_quantity(raw),
    )


def _supply_days(resource: dict) -> int | None:
    """expectedSupplyDuration in days × (1 + numberOfRepeatsAllowed), when readable.

    >>> _supply_days({"dispenseRequest": {"expectedSupplyDuration": {"value": 30,
    ...     "unit": "days", "code": "d"}, "numberOfRepeatsAllowed": 2}})
    90
    >>> _supply_days({"dispenseRequest": {"expectedSupplyDuration": {"value": 1,
    ...     "unit": "month"}}}), _supply_days({"dispenseRequest": {}})
    (30, None)
    """
    dispense = resource.get("dispenseRequest") or {}
    supply = dispense.get("expectedSupplyDuration")
    if not isinstance(supply, dict) or not isinstance(supply.get("value"), (int, float)):
        return None
    unit = supply.get("code") if supply.get("code") in _SUPPLY_DAYS else supply.get("unit")
    if unit not in _SUPPLY_DAYS or supply["value"] <= 0:
        return None
    repeats = dispense.get("numberOfRepeatsAllowed", 0)
    repeats = repeats if isinstance(repeats, int) and repeats >= 0 else 0
    return round(supply["value"] * _SUPPLY_DAYS[unit]) * (1 + repeats)


def medication_record(
    resource: dict, kind: str, lookup: MedicationLookup
) -> MedicationRecord | None:
    """One medication record as an exposure interval, or None when it is no exposure.

    >>> mr = {"resourceType": "MedicationRequest", "id": "m", "status": "completed",
    ...       "intent": "order", "dispenseRequest": {"validityPeriod": {"start": "2026-01-05"},
    ...       "expectedSupplyDuration": {"value": 4, "unit": "wk"}},
    ...       "medicationCodeableConcept": {"text": "metformin 500 mg"}}
    >>> r = medication_record(mr, "MedicationRequest", lambda _: None)
    >>> r.start.isoformat(), r.end, r.active, r.supply_days, r.names
    ('2026-01-05', None, False, 28, ('metformin 500 mg',))
    >>> medication_record({**mr, "intent": "plan"}, "MedicationRequest", lambda _: None) is None
    True
    """
    status = resource.get("status")
    reading = Reading(nulls_marked(resource))
    supply = None
    if kind == "MedicationAdministration":
        if status not in ADMINISTRATION_EXPOSURE:
            return None
        start = _first_date(
            reading,
            (
                ("effectiveDateTime", "dateTime"),
                ("effectivePeriod.start", "dateTime"),
                ("effectivePeriod.end", "dateTime"),
            ),
        )
        end = _first_date(reading, (("effectivePeriod.end", "dateTime"),))
        active = False
    elif kind == "MedicationStatement":
        if status not in STATEMENT_EXPOSURE:
            return None
        start = _first_date(
            reading,
            (
                ("effectivePeriod.start", "dateTime"),
                ("effectiveDateTime", "dateTime"),
                ("effectivePeriod.end", "dateTime"),
            ),
        )
        end = _first_date(reading, (("effectivePeriod.end", "dateTime"),))
        active = status == "active" and end is None
    else:
        if resource.get("intent") not in ORDER_INTENTS or status not in REQUEST_EXPOSURE:
            return None
        start = _first_date(
            reading,
            (("authoredOn", "dateTime"), ("dispenseRequest.validityPeriod.start", "dateTime")),
        )
        if start is None:
            return None
        end = _first_date(reading, (("dispenseRequest.validityPeriod.end", "dateTime"),))
        active = status == "active"
        supply = None if active or end else _supply_days(resource)
    source = Source(kind, str(resource.get("id")))
    codes, names, _ = _drug(reading, lookup, None, [], source.reference)
    extra = [(resource.get("medicationReference") or {}).get("display")]
    medication = resource.get("medicationReference") or {}
    if isinstance(medication, dict) and medication.get("reference"):
        extra += [c.display for c in codes]
    names = tuple(dict.fromkeys([*names, *(n for n in extra if isinstance(n, str) and n)]))
    return MedicationRecord(source, codes, names, str(status), start, end, active, supply)


_RECORD_KINDS = ("MedicationStatement", "MedicationRequest", "MedicationAdministration")
_SHAPE_ERRORS = (AttributeError, TypeError, KeyError, IndexError, ValueError)


def extended_facts(
    patient_id: str, resources: Iterable[dict], lookup: MedicationLookup
) -> ExtendedFacts:
    """Today's :func:`.resources.patient_facts` plus the facts above, for one patient.

    A resource of a shape FHIR does not allow is skipped here as it is there
    (its note comes from :func:`.resources.patient_facts`).
    """
    resources = list(resources)
    base = patient_facts(patient_id, resources, lookup)
    labs: list[LabFact] = []
    history: list[FamilyHistoryFact] = []
    records: list[MedicationRecord] = []
    notes: list[Note] = []
    gender = None
    for resource in resources:
        kind = resource.get("resourceType")
        try:
            if kind == "Patient":
                gender = resource.get("gender") if isinstance(resource.get("gender"), str) else None
            elif kind == "Observation":
                fact = observation(
                    Reading(nulls_marked(resource)), Source(kind, str(resource["id"]))
                )
                if fact is not None:
                    labs.append(extend_observation(fact, resource))
            elif kind == "FamilyMemberHistory":
                history += family_history(resource)
            elif kind in _RECORD_KINDS:
                record = medication_record(resource, kind, lookup)
                if record is not None:
                    records.append(record)
        except _SHAPE_ERRORS as error:
            if kind == "FamilyMemberHistory":  # the only type patient_facts does not read
                notes.append(
                    Note(
                        "malformed-resource",
                        f"{kind} has a field of the wrong shape and is skipped "
                        f"({type(error).__name__}: {error})",
                        f"{kind}/{resource.get('id')}",
                    )
                )
    values = {f.name: getattr(base, f.name) for f in fields(PatientFacts)}
    values["labs"] = tuple(labs)
    values["notes"] = (*base.notes, *notes)
    return ExtendedFacts(
        **values, gender=gender, family_history=tuple(history), records=tuple(records)
    )
