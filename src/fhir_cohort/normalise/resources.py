"""Resources -> facts: the rules page's "evidence that counts", for every trial.

One small function per resource type turns a FHIR R4 dict into a fact, or
into nothing when the resource does not count (refuted or entered-in-error
Conditions, Observations that are not final/amended/corrected/preliminary or
carry a dataAbsentReason, Procedures not completed or in progress, medication
records that are not an exposure). Problems worth a coordinator's attention
become :class:`~fhir_cohort.quality.Note` values; nothing here raises on bad data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from functools import lru_cache, partial

from ..quality import Note
from .codes import SNOMED, Code, codes_of, text_of
from .dates import parse_date
from .facts import (
    ConditionFact,
    ExposureFact,
    LabFact,
    PatientFacts,
    ProcedureFact,
    Quantity,
    Source,
)
from .units import canonical_unit
from .values import Titer, parse_answer, parse_titer

MedicationLookup = Callable[[str], "dict | None"]

COUNTING_OBSERVATION = frozenset({"final", "amended", "corrected", "preliminary"})
NOT_COUNTING_VERIFICATION = frozenset({"refuted", "entered-in-error"})
COUNTING_PROCEDURE = frozenset({"completed", "in-progress"})
ORDER_INTENTS = frozenset({"order", "original-order", "instance-order", "filler-order"})

# Coded qualitative answers (LOINC answer list LL360-9, codebook §1.3).
_ANSWER_CODES = {
    f"{SNOMED}|10828004": True,
    f"{SNOMED}|260385009": False,
    "http://loinc.org|LA6576-8": True,
    "http://loinc.org|LA6577-6": False,
}


def _status(resource: dict, key: str) -> str | None:
    """A status code, plain (Observation.status) or coded (Condition.clinicalStatus).

    The coding's system is not required: feeds often send ``{"code": "refuted"}``.

    >>> _status({"verificationStatus": {"coding": [{"code": "refuted"}]}}, "verificationStatus")
    'refuted'
    """
    value = resource.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        for coding in value.get("coding") or ():
            if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                return coding["code"].strip().lower()
    return None


@lru_cache(maxsize=64)
def _split(path: str) -> tuple[str, ...]:
    return tuple(path.split("."))


def _first_date(resource: dict, *paths: str) -> tuple[date | None, str | None]:
    """The first date among dotted paths that parses, and the first raw text that did not.

    >>> _first_date({"onsetString": "x", "onsetDateTime": "last spring",
    ...              "recordedDate": "2025-03-01"}, "onsetDateTime", "recordedDate")
    (datetime.date(2025, 3, 1), 'last spring')
    """
    unreadable = None
    for path in paths:
        value: object = resource
        for part in _split(path):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        parsed = parse_date(value)
        if parsed:
            return parsed, unreadable
        unreadable = unreadable or str(value)
    return None, unreadable


def _bad_date_note(source: Source, raw: str | None) -> tuple[Note, ...]:
    if raw is None:
        return ()
    return (
        Note("bad-date", f"date {raw!r} is not a FHIR date; treated as undated", source.reference),
    )


def _quantity(raw: object) -> Quantity | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("value"), (int, float)):
        return None
    value = float(raw["value"])
    unit = raw.get("code") or raw.get("unit")
    unit = unit if isinstance(unit, str) else None
    text = raw.get("unit")
    text = text if isinstance(text, str) and text != unit else None
    return Quantity(value, raw.get("comparator"), unit, text)


def condition(resource: dict) -> tuple[ConditionFact | None, tuple[Note, ...]]:
    source = Source("Condition", str(resource.get("id")))
    verification = _status(resource, "verificationStatus")
    if verification in NOT_COUNTING_VERIFICATION:
        return None, ()
    when, raw = _first_date(resource, "onsetDateTime", "onsetPeriod.start", "recordedDate")
    fact = ConditionFact(
        source=source,
        codes=codes_of(resource.get("code")),
        text=text_of(resource.get("code")),
        date=when,
        clinical_status=_status(resource, "clinicalStatus"),
        verification_status=verification,
    )
    return fact, _bad_date_note(source, raw)


def _titer(resource: dict, quantity: Quantity | None) -> Titer | None:
    ratio = resource.get("valueRatio")
    if isinstance(ratio, dict):
        numerator, denominator = (
            _quantity(ratio.get("numerator")),
            _quantity(ratio.get("denominator")),
        )
        if numerator and denominator and numerator.value > 0:
            return Titer(
                denominator.value / numerator.value, denominator.comparator or numerator.comparator
            )
    if quantity and quantity.unit and canonical_unit(quantity.unit) == "{titer}":
        return Titer(quantity.value, quantity.comparator)
    text = resource.get("valueString")
    return parse_titer(text) if isinstance(text, str) else None


def _answer(resource: dict) -> tuple[bool | None, str | None]:
    """A qualitative answer from valueCodeableConcept, valueString or valueBoolean."""
    concept = resource.get("valueCodeableConcept")
    if isinstance(concept, dict):
        for code in codes_of(concept):
            if code.key in _ANSWER_CODES:
                return _ANSWER_CODES[code.key], text_of(concept)
        text = text_of(concept)
        return parse_answer(text), text
    text = resource.get("valueString")
    if isinstance(text, str):
        return parse_answer(text), text
    if isinstance(resource.get("valueBoolean"), bool):
        return resource["valueBoolean"], str(resource["valueBoolean"]).lower()
    return None, None


def _interpretation(concepts: object) -> frozenset[str]:
    """The v3 ObservationInterpretation codes (H, L, POS, ...) of a result, upper-cased."""
    if not concepts or not isinstance(concepts, list):
        return frozenset()
    return frozenset(
        code.upper()
        for concept in concepts
        if isinstance(concept, dict)
        for code in (c.get("code") for c in concept.get("coding") or () if isinstance(c, dict))
        if isinstance(code, str)
    )


def observation(resource: dict) -> tuple[LabFact | None, tuple[Note, ...]]:
    source = Source("Observation", str(resource.get("id")))
    status = resource.get("status")
    if status not in COUNTING_OBSERVATION or resource.get("dataAbsentReason"):
        return None, ()
    when, raw = _first_date(
        resource, "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"
    )
    quantity = _quantity(resource.get("valueQuantity"))
    answer, value_text = _answer(resource)
    ranges = resource.get("referenceRange")
    ranges = [ranges] if isinstance(ranges, dict) else ranges  # a lone range, not in a list
    first_range = ranges[0] if isinstance(ranges, list) and ranges else {}
    first_range = first_range if isinstance(first_range, dict) else {}
    interpretation = _interpretation(resource.get("interpretation"))
    fact = LabFact(
        source=source,
        codes=codes_of(resource.get("code")),
        text=text_of(resource.get("code")),
        date=when,
        status=status,
        quantity=quantity,
        titer=_titer(resource, quantity),
        answer=answer,
        value_text=value_text,
        interpretation=interpretation,
        reference_low=_quantity(first_range.get("low")),
        reference_high=_quantity(first_range.get("high")),
    )
    return fact, _bad_date_note(source, raw)


def procedure(resource: dict) -> tuple[ProcedureFact | None, tuple[Note, ...]]:
    source = Source("Procedure", str(resource.get("id")))
    if resource.get("status") not in COUNTING_PROCEDURE:
        return None, ()
    when, raw = _first_date(
        resource, "performedDateTime", "performedPeriod.end", "performedPeriod.start"
    )
    fact = ProcedureFact(
        source, codes_of(resource.get("code")), text_of(resource.get("code")), when
    )
    return fact, _bad_date_note(source, raw)


def _drug(
    resource: dict, lookup: MedicationLookup, source: Source
) -> tuple[tuple[Code, ...], tuple[str, ...], tuple[Note, ...]]:
    """The drug's codes and names, from the concept or the referenced Medication."""
    concept = resource.get("medicationCodeableConcept")
    medication: dict | None = None
    notes: tuple[Note, ...] = ()
    if not isinstance(concept, dict):
        reference = (resource.get("medicationReference") or {}).get("reference")
        if isinstance(reference, str) and reference.startswith("#"):
            medication = next(
                (
                    c
                    for c in resource.get("contained") or ()
                    if isinstance(c, dict) and c.get("id") == reference[1:]
                ),
                None,
            )
        elif isinstance(reference, str):
            medication = lookup(reference.rsplit("/", 1)[-1])
        if medication is None:
            notes = (
                Note(
                    "unresolved-medication",
                    f"medicationReference {reference!r} cannot be resolved",
                    source.reference,
                ),
            )
            display = (resource.get("medicationReference") or {}).get("display")
            names = (display,) if isinstance(display, str) else ()
            return (), names, notes
        concept = medication.get("code")
    codes = list(codes_of(concept))
    names = [n for n in (text_of(concept),) if n]
    names += [c.display for c in codes if c.display]
    for ingredient in (medication or {}).get("ingredient") or ():
        if isinstance(ingredient, dict):
            item = ingredient.get("itemCodeableConcept")
            codes += codes_of(item)
            names += [n for n in (text_of(item),) if n]
    return tuple(codes), tuple(dict.fromkeys(names)), notes


def _exposure(
    resource: dict, kind: str, lookup: MedicationLookup
) -> tuple[ExposureFact | None, tuple[Note, ...]]:
    """Apply the rules page's exposure rules for the three medication resources."""
    source = Source(kind, str(resource.get("id")))
    status = resource.get("status")
    start: date | None
    end: date | None
    ongoing = False
    notes: list[Note] = []
    if kind == "MedicationAdministration":
        if status not in ("completed", "in-progress"):
            return None, ()
        start, raw = _first_date(
            resource, "effectiveDateTime", "effectivePeriod.end", "effectivePeriod.start"
        )
        end = start
        notes += _bad_date_note(source, raw)
    elif kind == "MedicationStatement":
        if status not in ("active", "completed", "stopped", "on-hold"):
            return None, ()
        period = resource.get("effectivePeriod") or {}
        start = parse_date(period.get("start")) or parse_date(resource.get("effectiveDateTime"))
        end = parse_date(period.get("end")) or parse_date(resource.get("effectiveDateTime"))
        if status == "active" and not parse_date(period.get("end")):
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
        if resource.get("intent") not in ORDER_INTENTS:
            return None, ()
        if status not in ("active", "completed", "stopped", "on-hold"):
            return None, ()
        start, raw = _first_date(resource, "authoredOn")
        notes += _bad_date_note(source, raw)
        validity_end = parse_date(
            ((resource.get("dispenseRequest") or {}).get("validityPeriod") or {}).get("end")
        )
        if status == "active":
            end, ongoing = None, True
        else:
            end = validity_end or start
    if not ongoing and end is None:
        notes.append(
            Note(
                "undated-exposure",
                f"{kind} ({status}) has no usable date; it cannot date a washout",
                source.reference,
            )
        )
        return None, tuple(notes)
    codes, names, drug_notes = _drug(resource, lookup, source)
    return ExposureFact(source, codes, names, start, end, ongoing, str(status)), (
        *notes,
        *drug_notes,
    )


def _patient_name(resource: dict) -> str | None:
    for name in resource.get("name") or ():
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str):
            return name["text"]
        given = " ".join(g for g in name.get("given") or () if isinstance(g, str))
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        full = f"{given} {family}".strip()
        if full:
            return full
    return None


Reader = Callable[[dict, MedicationLookup], tuple[object, tuple[Note, ...]]]

# resourceType -> (the PatientFacts field its facts go to, its reader)
_READERS: dict[str, tuple[str, Reader]] = {
    "Condition": ("conditions", lambda resource, _: condition(resource)),
    "Observation": ("labs", lambda resource, _: observation(resource)),
    "Procedure": ("procedures", lambda resource, _: procedure(resource)),
    **{
        kind: ("exposures", partial(lambda k, r, lookup: _exposure(r, k, lookup), kind))
        for kind in ("MedicationStatement", "MedicationRequest", "MedicationAdministration")
    },
}


def patient_facts(
    patient_id: str, resources: Iterable[dict], lookup: MedicationLookup
) -> PatientFacts:
    """Normalise one patient's resources into :class:`PatientFacts`."""
    facts: dict[str, list] = {field: [] for field, _ in _READERS.values()}
    notes: list[Note] = []
    patient: dict = {}
    for resource in resources:
        kind = resource.get("resourceType")
        if kind == "Patient":
            patient = resource
            continue
        if kind not in _READERS:
            continue
        field, read = _READERS[kind]
        try:
            fact, found = read(resource, lookup)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            # A shape FHIR does not allow (an object where a list belongs, ...):
            # set this resource aside, keep the patient and the run going.
            notes.append(
                Note(
                    "malformed-resource",
                    f"{kind} has a field of the wrong shape and is skipped "
                    f"({type(error).__name__}: {error})",
                    f"{kind}/{resource.get('id')}",
                )
            )
            continue
        notes.extend(found)
        if fact is not None:
            facts[field].append(fact)
    deceased_date, raw = _first_date(patient, "deceasedDateTime")
    birth = patient.get("birthDate")
    return PatientFacts(
        patient_id=patient_id,
        birth_date=birth if isinstance(birth, str) else None,
        deceased_boolean=patient.get("deceasedBoolean")
        if isinstance(patient.get("deceasedBoolean"), bool)
        else None,
        deceased_date=deceased_date,
        name=_patient_name(patient),
        **{field: tuple(found) for field, found in facts.items()},
        notes=(*notes, *_bad_date_note(Source("Patient", patient_id), raw)),
    )
