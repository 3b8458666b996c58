"""Resources -> facts: the rules page's "evidence that counts", for every trial.

One small function per resource type turns a FHIR R4 dict into a fact, or
into nothing when the resource does not count (refuted or entered-in-error
Conditions, Observations that are not final/amended/corrected/preliminary or
carry a dataAbsentReason, Procedures not completed or in progress, medication
records that are not an exposure). Every element read is checked against its
FHIR R4 type (:class:`~fhir_cohort.normalise.elements.Reading`): a record with
an element that cannot be read (a wrong JSON type, a status that is not a
FHIR code, a date that is not a FHIR date, a required element missing) still
becomes a fact, marked ``unreadable`` with the element and why, and never
counts in the patient's favour; an invalid date field is skipped for the next
one in the rules page's order. A valid code keeps its meaning (a
MedicationStatement ``unknown`` is no exposure) whatever else is wrong.
Problems become :class:`~fhir_cohort.quality.Note` values; nothing here
raises on bad data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import date
from typing import Any, TypeVar

from ..quality import Note
from ..sources import DOUBT, DOUBT_RECORD, NOTE_RECORD, reference_to
from .codes import SNOMED, Code
from .elements import (
    CLINICAL_STATUS,
    CLINICAL_SYSTEM,
    COMPARATORS,
    FAMILY_HISTORY_STATUS,
    MEDICATION_STATUS,
    OBSERVATION_STATUS,
    PROCEDURE_STATUS,
    REQUEST_INTENT,
    VERIFICATION_STATUS,
    VERIFICATION_SYSTEM,
    Reading,
    nulls_marked,
    show,
)
from .facts import (
    ConditionFact,
    ExposureFact,
    FamilyHistoryFact,
    LabFact,
    MedicationRecord,
    PatientFacts,
    ProcedureFact,
    Quantity,
    Source,
)
from .units import canonical_unit
from .values import Titer, parse_answer, parse_titer

MedicationLookup = Callable[[str], "dict | None"]  # a Medication by its id

COUNTING_OBSERVATION = frozenset({"final", "amended", "corrected", "preliminary"})
NOT_COUNTING_VERIFICATION = frozenset({"refuted", "entered-in-error"})
COUNTING_PROCEDURE = frozenset({"completed", "in-progress"})
ORDER_INTENTS = frozenset({"order", "original-order", "instance-order", "filler-order"})
EXPOSURE_STATUS = {
    "MedicationAdministration": frozenset({"completed", "in-progress"}),
    "MedicationStatement": frozenset({"active", "completed", "stopped", "on-hold"}),
    "MedicationRequest": frozenset({"active", "completed", "stopped", "on-hold"}),
}
COUNTING_FAMILY_HISTORY = frozenset({"partial", "completed"})
_SUPPLY_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7}
_SUPPLY_DAYS |= {"mo": 30, "month": 30, "months": 30}
_STRING_QUANTITY = re.compile(r"^\s*(<=|>=|<|>|≤|≥)?\s*(\d+(?:\.\d+)?|\.\d+)\s*(\S.*?)?\s*$")
_COMPARATORS = {"≤": "<=", "≥": ">="}
# The date fields of each record, in the rules page's order, with their FHIR types.
CONDITION_DATES = (
    ("onsetDateTime", "dateTime"),
    ("onsetPeriod.start", "dateTime"),
    ("recordedDate", "dateTime"),
)
OBSERVATION_DATES = (
    ("effectiveDateTime", "dateTime"),
    ("effectivePeriod.start", "dateTime"),
    ("effectiveInstant", "instant"),
    ("issued", "instant"),
)
PROCEDURE_DATES = (
    ("performedDateTime", "dateTime"),
    ("performedPeriod.end", "dateTime"),
    ("performedPeriod.start", "dateTime"),
)
ADMINISTRATION_DATES = (
    ("effectiveDateTime", "dateTime"),
    ("effectivePeriod.end", "dateTime"),
    ("effectivePeriod.start", "dateTime"),
)

# Coded qualitative answers (LOINC answer list LL360-9, codebook §1.3).
_ANSWER_CODES = {
    f"{SNOMED}|10828004": True,
    f"{SNOMED}|260385009": False,
    "http://loinc.org|LA6576-8": True,
    "http://loinc.org|LA6577-6": False,
}


def _first_date(reading: Reading, fields: Iterable[tuple[str, str]]) -> date | None:
    """The first field in order that holds a valid date; invalid ones are noted and skipped.

    >>> r = Reading({"onsetString": "x", "onsetDateTime": "last spring",
    ...              "recordedDate": "2025-03-01"})
    >>> _first_date(r, CONDITION_DATES), r.problems
    (datetime.date(2025, 3, 1), ["onsetDateTime 'last spring' is not a FHIR dateTime"])
    """
    for path, grammar in fields:
        value = reading.at(path)
        if value is not None:
            found = reading.date(value, path, grammar)
            if found is not None:
                return found
    return None


def _status_code(reading: Reading, key: str, allowed: frozenset[str], system: str) -> str | None:
    """The code of a CodeableConcept bound to a required value set (Condition's statuses).

    A coding without a system is accepted (feeds often send ``{"code": "refuted"}``);
    a concept with no coding from the value set is a problem.

    >>> r = Reading({"verificationStatus": {"coding": [{"code": "refuted"}]}})
    >>> _status_code(r, "verificationStatus", VERIFICATION_STATUS, VERIFICATION_SYSTEM)
    'refuted'
    >>> r = Reading({"verificationStatus": {"coding": {"code": "refuted"}}})
    >>> _status_code(r, "verificationStatus", VERIFICATION_STATUS, VERIFICATION_SYSTEM), r.problems
    (None, ['verificationStatus.coding {"code":"refuted"} is not a JSON array'])
    """
    value = reading.resource.get(key)
    if value is None:
        return None
    if type(value) is not dict:
        reading.bad(key, value, "is not a JSON object (a CodeableConcept)")
        return None
    before = len(reading.problems)
    for index, coding in enumerate(reading.array(value.get("coding"), f"{key}.coding")):
        if type(coding) is not dict:
            reading.bad(f"{key}.coding[{index}]", coding, "is not a JSON object (a Coding)")
            continue
        code, coded_in = coding.get("code"), coding.get("system")
        if type(code) is str and code in allowed and coded_in in (None, system):
            return code
        reading.bad(f"{key}.coding[{index}].code", code, "is not a FHIR code")
    if len(reading.problems) == before:
        reading.problems.append(f"{key} holds no code from its FHIR value set")
    return None


def _quantity(reading: Reading, value: object, path: str) -> Quantity | None:
    """A Quantity (the UCUM code, else the unit text); one without a number is None."""
    if value is None:
        return None
    if type(value) is not dict:
        reading.bad(path, value, "is not a JSON object (a Quantity)")
        return None
    number = reading.number(value.get("value"), f"{path}.value")
    comparator = reading.code(value.get("comparator"), f"{path}.comparator", COMPARATORS)
    text = reading.string(value.get("unit"), f"{path}.unit")
    code = reading.string(value.get("code"), f"{path}.code")
    if number is None:
        return None
    unit = code or text
    return Quantity(number, comparator, unit, text if text != unit else None)


T = TypeVar("T")


def _checked(reading: Reading, read: Callable[[], T]) -> tuple[T, bool]:
    """Run one read; True when it found no problem."""
    before = len(reading.problems)
    value = read()
    return value, len(reading.problems) == before


def condition(reading: Reading, source: Source) -> ConditionFact | None:
    verification = _status_code(
        reading, "verificationStatus", VERIFICATION_STATUS, VERIFICATION_SYSTEM
    )
    if verification in NOT_COUNTING_VERIFICATION:
        return None
    (codes, text), code_read = _checked(
        reading, lambda: reading.concept(reading.resource.get("code"), "code")
    )
    when = _first_date(reading, CONDITION_DATES)
    status_reading = Reading(reading.resource)
    clinical = _status_code(status_reading, "clinicalStatus", CLINICAL_STATUS, CLINICAL_SYSTEM)
    return ConditionFact(
        source=source,
        codes=codes,
        text=text,
        date=when,
        clinical_status=clinical,
        verification_status=verification,
        any_code=not code_read,
        status_unreadable="; ".join(status_reading.problems) or None,
    )


def _titer(reading: Reading, quantity: Quantity | None, text: str | None) -> Titer | None:
    ratio = reading.resource.get("valueRatio")
    if ratio is not None:
        ratio = reading.dict_at(ratio, "valueRatio")
        numerator = _quantity(reading, ratio.get("numerator"), "valueRatio.numerator")
        denominator = _quantity(reading, ratio.get("denominator"), "valueRatio.denominator")
        if numerator and denominator and numerator.value > 0:
            return Titer(
                denominator.value / numerator.value, denominator.comparator or numerator.comparator
            )
    if quantity and quantity.unit and canonical_unit(quantity.unit) == "{titer}":
        return Titer(quantity.value, quantity.comparator)
    return parse_titer(text) if text else None


def _answer(reading: Reading, value_string: str | None) -> tuple[bool | None, str | None]:
    """A qualitative answer from valueCodeableConcept, valueString or valueBoolean."""
    concept = reading.resource.get("valueCodeableConcept")
    if concept is not None:
        codes, text = reading.concept(concept, "valueCodeableConcept")
        for code in codes:
            if code.key in _ANSWER_CODES:
                return _ANSWER_CODES[code.key], text
        return parse_answer(text), text
    if value_string is not None:
        return parse_answer(value_string), value_string
    flag = reading.boolean(reading.resource.get("valueBoolean"), "valueBoolean")
    return (flag, str(flag).lower()) if flag is not None else (None, None)


def _interpretation(reading: Reading) -> frozenset[str]:
    """The v3 ObservationInterpretation codes (H, L, POS, ...) of a result, upper-cased."""
    found: set[str] = set()
    concepts = reading.array(reading.resource.get("interpretation"), "interpretation")
    for index, concept in enumerate(concepts):
        codes, _ = reading.concept(concept, f"interpretation[{index}]")
        found.update(code.code.upper() for code in codes)
        # a flag written without its system still says H or L
        if type(concept) is dict and type(concept.get("coding")) is list:
            found.update(
                c["code"].upper()
                for c in concept["coding"]
                if type(c) is dict and type(c.get("code")) is str and c.get("system") is None
            )
    return frozenset(found)


def observation(reading: Reading, source: Source) -> LabFact | None:
    resource = reading.resource
    status = reading.code(resource.get("status"), "status", OBSERVATION_STATUS)
    if status is None and resource.get("status") is None:
        reading.missing("status")
    if status is not None and status not in COUNTING_OBSERVATION:
        return None
    absent = resource.get("dataAbsentReason")
    if absent is not None:
        _, read = _checked(reading, lambda: reading.concept(absent, "dataAbsentReason"))
        if read:
            return None  # a valid dataAbsentReason: no value to count
    (codes, text), code_read = _checked(
        reading, lambda: reading.concept(resource.get("code"), "code")
    )
    if resource.get("code") is None:
        reading.missing("code")
        code_read = False
    when = _first_date(reading, OBSERVATION_DATES)
    quantity = _quantity(reading, resource.get("valueQuantity"), "valueQuantity")
    value_string = reading.string(resource.get("valueString"), "valueString")
    answer, value_text = _answer(reading, value_string)
    ranges = reading.array(resource.get("referenceRange"), "referenceRange")
    first = reading.dict_at(ranges[0], "referenceRange[0]") if ranges else {}
    return LabFact(
        source=source,
        codes=codes,
        text=text,
        date=when,
        status=status or "unreadable",
        quantity=quantity,
        titer=_titer(reading, quantity, value_string),
        answer=answer,
        value_text=value_text,
        interpretation=_interpretation(reading),
        reference_low=_quantity(reading, first.get("low"), "referenceRange[0].low"),
        reference_high=_quantity(reading, first.get("high"), "referenceRange[0].high"),
        any_code=not code_read,
        **_answer_as_sent(resource),
    )


def _answer_as_sent(resource: dict) -> dict:
    """The coded answer, the answer's texts as sent and a valueString quantity (read
    again without noting: :func:`_answer` noted any problem already).

    >>> obs = {"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct",
    ...        "code": "260373001", "display": "Detected"}], "text": " Detected "}}
    >>> found = _answer_as_sent(obs)
    >>> [c.code for c in found["value_codes"]], found["value_texts"]
    (['260373001'], ('Detected',))
    """
    concept = resource.get("valueCodeableConcept")
    raw = resource.get("valueString")
    texts: list[str] = [raw] if isinstance(raw, str) else []
    value_codes, _ = Reading(resource).concept(concept, "valueCodeableConcept")
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str):
            texts.append(concept["text"])
        texts += [c.display for c in value_codes if c.display]
    texts = [t.strip() for t in texts if t.strip()]
    return {
        "value_codes": value_codes,
        "value_texts": tuple(dict.fromkeys(texts)),
        "string_quantity": string_quantity(raw),
    }


def procedure(reading: Reading, source: Source) -> ProcedureFact | None:
    status = reading.code(reading.resource.get("status"), "status", PROCEDURE_STATUS)
    if status is None and reading.resource.get("status") is None:
        reading.missing("status")
    if status is not None and status not in COUNTING_PROCEDURE:
        return None
    (codes, text), code_read = _checked(
        reading, lambda: reading.concept(reading.resource.get("code"), "code")
    )
    when = _first_date(reading, PROCEDURE_DATES)
    return ProcedureFact(source, codes, text, when, any_code=not code_read)


def _medication_concept(reading: Reading, medication: dict, prefix: str) -> tuple[list, list]:
    """Codes and names of a Medication: its code and ingredient[].itemCodeableConcept;
    ``prefix`` says which Medication in a problem's path."""
    codes, text = reading.concept(medication.get("code"), f"{prefix}code")
    found, names = list(codes), [text] if text else []
    ingredients = reading.array(medication.get("ingredient"), f"{prefix}ingredient")
    for index, ingredient in enumerate(ingredients):
        item = reading.dict_at(ingredient, f"{prefix}ingredient[{index}]")
        if "itemCodeableConcept" in item:
            item_codes, item_text = reading.concept(
                item["itemCodeableConcept"], f"{prefix}ingredient[{index}].itemCodeableConcept"
            )
            found += item_codes
            names += [item_text] if item_text else []
    return found, names


def _drug(
    reading: Reading, lookup: MedicationLookup, base: str | None, notes: list[Note], where: str
) -> tuple[tuple[Code, ...], tuple[str, ...], bool]:
    """The drug's codes and names, from the concept or the referenced Medication, and
    whether it could be read at all (False: it may be any drug)."""
    resource = reading.resource
    before = len(reading.problems)
    codes: list[Code] = []
    names: list[str] = []
    if "medicationCodeableConcept" in resource:
        found, text = reading.concept(resource["medicationCodeableConcept"], "medication")
        codes, names = list(found), [text] if text else []
    elif "medicationReference" in resource:
        mark = len(reading.problems)
        target = reading.dict_at(resource["medicationReference"], "medicationReference")
        reference = reading.string(target.get("reference"), "medicationReference.reference")
        display = reading.string(target.get("display"), "medicationReference.display")
        medication, path = None, ""
        if reference is not None and reference.startswith("#"):
            contained = reading.array(resource.get("contained"), "contained")
            medication = next(
                (c for c in contained if type(c) is dict and c.get("id") == reference[1:]), None
            )
            path = f"contained {reference}: "
        elif reference is not None:
            local, _ = reference_to(reference, "Medication", base)
            medication = lookup(local) if local else None
            path = f"Medication/{local}: "
        if medication is not None:
            codes, names = _medication_concept(reading, nulls_marked(medication), path)
        else:
            if reference is not None:
                notes.append(
                    Note(
                        "unresolved-medication",
                        f"medicationReference {reference!r} cannot be resolved",
                        where,
                    )
                )
            if not display and len(reading.problems) == mark:
                reading.problems.append(
                    f"medicationReference {show(reference)} cannot be resolved and names no drug"
                    if reference
                    else "medicationReference names no Medication and no drug"
                )
        names += [display] if display else []
    else:
        reading.missing("medication[x]")
    names += [c.display for c in codes if c.display]
    return tuple(codes), tuple(dict.fromkeys(names)), len(reading.problems) == before


def _exposure(
    reading: Reading, source: Source, lookup: MedicationLookup, base: str | None, notes: list[Note]
) -> ExposureFact | None:
    """Apply the rules page's exposure rules for the three medication resources.

    A record that cannot be read is taken at its worst: ongoing when its status
    could be an ongoing one, or when no date of it can be read.
    """
    resource, kind = reading.resource, source.resource_type
    status = reading.code(resource.get("status"), "status", MEDICATION_STATUS[kind])
    if status is None and resource.get("status") is None:
        reading.missing("status")
    if status is not None and status not in EXPOSURE_STATUS[kind]:
        return None
    if kind == "MedicationRequest":
        intent = reading.code(resource.get("intent"), "intent", REQUEST_INTENT)
        if intent is None and resource.get("intent") is None:
            reading.missing("intent")
        if intent is not None and intent not in ORDER_INTENTS:
            return None
    doubtful_status = status is None
    start: date | None
    end: date | None
    ongoing = False
    if kind == "MedicationAdministration":
        if not any(k in resource for k in ("effectiveDateTime", "effectivePeriod")):
            reading.missing("effective[x]")
        start = end = _first_date(reading, ADMINISTRATION_DATES)
    elif kind == "MedicationStatement":
        period = reading.dict_at(resource.get("effectivePeriod"), "effectivePeriod")
        first = reading.date(period.get("start"), "effectivePeriod.start")
        last = reading.date(period.get("end"), "effectivePeriod.end")
        single = reading.date(resource.get("effectiveDateTime"), "effectiveDateTime")
        start, end = first or single, last or single
        if (status == "active" or doubtful_status) and last is None:
            end, ongoing = None, True
        elif end is None and start is not None:
            end = start
            notes.append(
                Note(
                    "exposure-start-only",
                    f"{status} MedicationStatement has only a start date; "
                    "exposure counted on the start date",
                    source.reference,
                )
            )
    else:
        start = _first_date(reading, (("authoredOn", "dateTime"),))
        dispense = reading.dict_at(resource.get("dispenseRequest"), "dispenseRequest")
        validity = reading.dict_at(dispense.get("validityPeriod"), "dispenseRequest.validityPeriod")
        validity_end = reading.date(validity.get("end"), "dispenseRequest.validityPeriod.end")
        if status == "active" or doubtful_status:
            end, ongoing = None, True
        else:
            end = validity_end or start
    codes, names, drug_read = _drug(reading, lookup, base, notes, source.reference)
    if not ongoing and end is None:
        if not reading.problems:
            notes.append(
                Note(
                    "undated-exposure",
                    f"{kind} ({status}) has no usable date; it cannot date a washout",
                    source.reference,
                )
            )
            return None
        ongoing = True  # an unreadable record with no readable date: it may be any day
    return ExposureFact(
        source, codes, names, start, end, ongoing, status or "unreadable", any_drug=not drug_read
    )


def family_history(reading: Reading, source: Source) -> tuple[FamilyHistoryFact, ...]:
    """The counting conditions of one FamilyMemberHistory (status partial or completed;
    each ``condition[].code`` one fact, dated by ``date``).

    >>> fmh = {"resourceType": "FamilyMemberHistory", "id": "f1", "status": "completed",
    ...        "date": "2024-03-01", "relationship": {"coding": [{"code": "MTH"}]},
    ...        "condition": [{"code": {"coding": [{"system": "http://snomed.info/sct",
    ...                                            "code": "255032005"}]}}]}
    >>> where = Source("FamilyMemberHistory", "f1")
    >>> [(f.source.reference, f.codes[0].code, f.date.isoformat(), f.relationship)
    ...  for f in family_history(Reading(fmh), where)]
    [('FamilyMemberHistory/f1', '255032005', '2024-03-01', 'mth')]
    >>> family_history(Reading({**fmh, "status": "entered-in-error"}), where)
    ()
    """
    resource = reading.resource
    status = reading.code(resource.get("status"), "status", FAMILY_HISTORY_STATUS)
    if status is None and resource.get("status") is None:
        reading.missing("status")
    if status is not None and status not in COUNTING_FAMILY_HISTORY:
        return ()
    when = _first_date(reading, (("date", "dateTime"),))
    kin = reading.dict_at(resource.get("relationship"), "relationship")
    codings = reading.array(kin.get("coding"), "relationship.coding")
    first = codings[0] if codings and type(codings[0]) is dict else {}
    code = reading.string(first.get("code"), "relationship.coding[0].code")
    relationship = code.strip().lower() if code else None
    found = []
    for index, item in enumerate(reading.array(resource.get("condition"), "condition")):
        if isinstance(item, dict):
            before = len(reading.problems)
            codes, text = reading.concept(item.get("code"), f"condition[{index}].code")
            code_read = len(reading.problems) == before
            found.append(
                FamilyHistoryFact(
                    source,
                    codes,
                    text,
                    when,
                    relationship,
                    any_code=not code_read,
                )
            )
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


def _supply_days(resource: dict) -> int | None:
    """expectedSupplyDuration in days × (1 + numberOfRepeatsAllowed), when readable.

    >>> _supply_days({"dispenseRequest": {"expectedSupplyDuration": {"value": 30,
    ...     "unit": "days", "code": "d"}, "numberOfRepeatsAllowed": 2}})
    90
    >>> _supply_days({"dispenseRequest": {"expectedSupplyDuration": {"value": 1,
    ...     "unit": "month"}}}), _supply_days({"dispenseRequest": {}})
    (30, None)
    """
    dispense = resource.get("dispenseRequest")
    if type(dispense) is not dict:
        return None
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
    resource: dict, kind: str, lookup: MedicationLookup, base: str | None = None
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
    reading = Reading(resource)  # nulls already marked by the caller
    supply = None
    if kind == "MedicationAdministration":
        if status not in EXPOSURE_STATUS[kind]:
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
        if status not in EXPOSURE_STATUS[kind]:
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
        if resource.get("intent") not in ORDER_INTENTS or status not in EXPOSURE_STATUS[kind]:
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
    codes, names, drug_read = _drug(reading, lookup, base, [], source.reference)
    medication = resource.get("medicationReference")
    extra = []
    if isinstance(medication, dict):
        extra.append(medication.get("display"))
        if medication.get("reference"):
            extra += [c.display for c in codes]
    names = tuple(dict.fromkeys([*names, *(n for n in extra if isinstance(n, str) and n)]))
    return MedicationRecord(
        source, codes, names, str(status), start, end, active, supply, any_drug=not drug_read
    )


def _patient_name(reading: Reading) -> str | None:
    for index, name in enumerate(reading.array(reading.resource.get("name"), "name")):
        if type(name) is not dict:
            reading.bad(f"name[{index}]", name, "is not a JSON object (a HumanName)")
            continue
        text = reading.string(name.get("text"), f"name[{index}].text")
        if text:
            return text
        given = " ".join(
            g
            for i, g in enumerate(reading.array(name.get("given"), f"name[{index}].given"))
            if reading.string(g, f"name[{index}].given[{i}]")
        )
        family = reading.string(name.get("family"), f"name[{index}].family") or ""
        full = f"{given} {family}".strip()
        if full:
            return full
    return None


MEDICATION_KINDS = ("MedicationStatement", "MedicationRequest", "MedicationAdministration")
Fact = ConditionFact | LabFact | ProcedureFact | ExposureFact | FamilyHistoryFact
Reader = Callable[
    [Reading, Source, MedicationLookup, "str | None", list], "Fact | tuple[Fact, ...] | None"
]

# resourceType -> (the PatientFacts field its facts go to, its reader)
_READERS: dict[str, tuple[str, Reader]] = {
    "Condition": ("conditions", lambda reading, source, *_: condition(reading, source)),
    "Observation": ("labs", lambda reading, source, *_: observation(reading, source)),
    "Procedure": ("procedures", lambda reading, source, *_: procedure(reading, source)),
    "FamilyMemberHistory": (
        "family_history",
        lambda reading, source, *_: family_history(reading, source),
    ),
    **{kind: ("exposures", _exposure) for kind in MEDICATION_KINDS},
}


def _notes(problems: list[str], where: str) -> list[Note]:
    return [
        Note("bad-date" if "is not a FHIR date" in p else "invalid-element", p, where)
        for p in problems
    ]


def _doubted(resource: dict) -> list[str]:
    """The reasons a source or the store gave for doubting a resource, as strings."""
    reasons = resource.get(DOUBT)
    return [str(r) for r in reasons] if type(reasons) is list else []


def patient_facts(
    patient_id: str,
    resources: Iterable[dict | bytes],
    lookup: MedicationLookup,
    base: str | None = None,
) -> PatientFacts:
    """Normalise one patient's resources (parsed, or as JSON bytes) into
    :class:`PatientFacts`.

    ``base`` is the source's own server base, for absolute Medication references.
    """
    facts: dict[str, list] = {field: [] for field, _ in _READERS.values()}
    facts["records"] = []
    notes: list[Note] = []
    doubts: list[str] = []
    patient: dict | None = None
    for resource in resources:
        resource = nulls_marked(resource)
        kind = resource.get("resourceType")
        where = f"{kind}/{resource.get('id')}"
        if kind == DOUBT_RECORD:
            doubts.append(str(resource.get("message")))
            continue
        if kind == NOTE_RECORD:
            notes.append(Note(str(resource.get("code")), str(resource.get("message")), where))
            continue
        if kind == "Patient":
            if patient is None:
                patient = resource
            doubts += [f"{where}: {reason}" for reason in _doubted(resource)]
            continue
        if kind not in _READERS:
            continue
        field, read = _READERS[kind]
        reading = Reading(resource)
        source = Source(kind, str(resource.get("id")))
        found: list[Note] = []
        try:
            fact = read(reading, source, lookup, base, found)
            record = None
            if kind in MEDICATION_KINDS:
                record = medication_record(resource, kind, lookup, base)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            # A shape no reader foresaw: the record may say anything, so the patient's
            # answer cannot rest on it (and the run goes on).
            message = f"cannot be read ({type(error).__name__}: {error})"
            notes.append(Note("malformed-resource", message, where))
            doubts.append(f"{where} {message}")
            continue
        problems = [*_doubted(resource), *reading.problems]
        notes += found + _notes(reading.problems, where)
        if record is not None:
            facts["records"].append(
                replace(record, unreadable=tuple(problems)) if problems else record
            )
        for one in fact if isinstance(fact, tuple) else () if fact is None else (fact,):
            if problems:
                one = replace(one, unreadable=tuple(problems))
            if isinstance(one, ConditionFact) and one.status_unreadable:
                notes += _notes([one.status_unreadable], where)
            facts[field].append(one)
    records: dict[str, Any] = {field: tuple(found) for field, found in facts.items()}
    return PatientFacts(
        patient_id=patient_id,
        **_patient_fields(patient_id, patient or {}, notes),
        **records,
        notes=tuple(notes),
        doubts=tuple(doubts),
    )


def _patient_fields(patient_id: str, patient: dict, notes: list[Note]) -> dict:
    """Birth date, deceased and name of the Patient resource; problems noted.

    A name that cannot be read is only noted (it decides nothing); a birth date or a
    deceased element that cannot be read makes age unknown or deceased a review.
    """
    where = f"Patient/{patient_id}"
    birth = Reading(patient)
    birth_date = birth.date(patient.get("birthDate"), "birthDate", "date")
    deceased = Reading(patient)
    flag = deceased.boolean(patient.get("deceasedBoolean"), "deceasedBoolean")
    deceased_date = _first_date(deceased, (("deceasedDateTime", "dateTime"),))
    naming = Reading(patient)
    name = _patient_name(naming)
    notes += _notes(birth.problems + deceased.problems + naming.problems, where)
    gender = patient.get("gender")
    return {
        "gender": gender if isinstance(gender, str) else None,
        "birth_date": patient["birthDate"] if birth_date else None,
        "birth_date_unreadable": "; ".join(birth.problems) or None,
        "deceased_boolean": flag,
        "deceased_date": deceased_date,
        "deceased_unreadable": "; ".join(deceased.problems) or None,
        "name": name,
    }


_RECORD_FIELDS = ("conditions", "labs", "procedures", "exposures", "family_history", "records")


def with_unattached(facts: PatientFacts, unattached: PatientFacts) -> PatientFacts:
    """``facts`` plus the facts of records that name no patient (each marked unreadable:
    it could be this patient's), so they weigh on every candidate, never in their favour."""
    if not any(getattr(unattached, name) for name in _RECORD_FIELDS):
        return facts
    return replace(
        facts,
        **{name: getattr(facts, name) + getattr(unattached, name) for name in _RECORD_FIELDS},
    )


def unattached_facts(
    resources: Iterable[dict], lookup: MedicationLookup, base: str | None
) -> PatientFacts:
    """Facts of records that name no patient they can be attributed to, each marked
    unreadable ("names no patient"), for :func:`with_unattached`."""
    found = patient_facts("(no patient)", resources, lookup, base)

    def mark(items: tuple) -> tuple:
        return tuple(
            replace(
                f,
                unreadable=(
                    "names no patient it can be attributed to; it could be this patient's",
                    *f.unreadable,
                ),
            )
            for f in items
        )

    marked: dict[str, Any] = {name: mark(getattr(found, name)) for name in _RECORD_FIELDS}
    return replace(found, **marked)
