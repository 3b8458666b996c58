"""Facts: the typed, provenance-carrying records the evaluator reads.

Every fact names the resource it came from (``source``), so every criterion
result can show its evidence. Facts are frozen dataclasses of plain values:
they pickle, so the same evaluator can run in another process or engine.

A fact whose record could not be read for certain (invalid FHIR: a wrong JSON
type, a status that is not a FHIR code, a date that is not a FHIR date) says
why in ``unreadable``; it never counts in the patient's favour. One whose code
(or drug) could not be read at all has ``any_code`` (``any_drug``) set: it may
be any code, so every rule that reads its type must consider it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from ..quality import Note
from .codes import Code
from .units import Converted, UnitProblem, convert
from .values import Titer


@dataclass(frozen=True, slots=True)
class Source:
    """Where a fact came from: ``Observation/abc``."""

    resource_type: str
    resource_id: str

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


@dataclass(frozen=True, slots=True)
class Quantity:
    """A number as sent: value, comparator, unit (the UCUM code, else the unit text).

    ``unit_text`` is the human unit when it differs from the code; it is tried
    when the code cannot be read (a bad UCUM code beside a readable "mg/dL").
    """

    value: float
    comparator: str | None
    unit: str | None
    unit_text: str | None = None

    @property
    def canonical(self) -> Converted | UnitProblem:
        """The value in its canonical unit (computed when asked: most never are)."""
        converted = convert(self.value, self.unit)
        if isinstance(converted, UnitProblem) and converted.kind == "unknown" and self.unit_text:
            return convert(self.value, self.unit_text)
        return converted

    def describe(self) -> str:
        return f"{self.comparator or ''}{self.value:g} {self.unit or ''}".strip()


@dataclass(frozen=True, slots=True)
class ConditionFact:
    source: Source
    codes: tuple[Code, ...]
    text: str | None
    date: date | None
    clinical_status: str | None
    verification_status: str | None
    unreadable: tuple[str, ...] = ()
    any_code: bool = False
    status_unreadable: str | None = None  # clinicalStatus: only "current" rules read it


@dataclass(frozen=True, slots=True)
class LabFact:
    """A counting Observation, its value read every way it can be read."""

    source: Source
    codes: tuple[Code, ...]
    text: str | None
    date: date | None
    status: str
    quantity: Quantity | None = None
    titer: Titer | None = None
    answer: bool | None = None  # a coded or written Positive/Negative
    value_text: str | None = None
    interpretation: frozenset[str] = frozenset()
    reference_low: Quantity | None = None
    reference_high: Quantity | None = None
    unreadable: tuple[str, ...] = ()
    any_code: bool = False
    value_codes: tuple[Code, ...] = ()  # the coded answer (valueCodeableConcept)
    value_texts: tuple[str, ...] = ()  # the answer's texts as sent, trimmed
    string_quantity: Quantity | None = None  # a valueString read as "[comparator] number unit"

    def describe_value(self) -> str:
        if self.value_text:
            return self.value_text
        if self.quantity:
            return self.quantity.describe()
        if self.titer:
            return f"{self.titer.comparator or ''}1:{self.titer.denominator:g}"
        return "(interpretation only)" if self.interpretation else ""


@dataclass(frozen=True, slots=True)
class ProcedureFact:
    source: Source
    codes: tuple[Code, ...]
    text: str | None
    date: date | None
    unreadable: tuple[str, ...] = ()
    any_code: bool = False


@dataclass(frozen=True, slots=True)
class ExposureFact:
    """A medication exposure: from ``start`` to ``end``, or ongoing.

    ``end`` is the last day the drug is known to have been given; an
    ``ongoing`` exposure has no end and runs up to the as-of date. An unreadable
    record is read at its worst: ongoing when its status or dates leave it open.
    """

    source: Source
    codes: tuple[Code, ...]
    names: tuple[str, ...]
    start: date | None
    end: date | None
    ongoing: bool
    status: str
    unreadable: tuple[str, ...] = ()
    any_drug: bool = False


@dataclass(frozen=True, slots=True)
class FamilyHistoryFact:
    """One condition of a relative, from a FamilyMemberHistory."""

    source: Source
    codes: tuple[Code, ...]
    text: str | None
    date: date | None
    relationship: str | None
    unreadable: tuple[str, ...] = ()
    any_code: bool = False


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
    unreadable: tuple[str, ...] = ()
    any_drug: bool = False


@dataclass(frozen=True, slots=True)
class PatientFacts:
    """Everything the evaluator may know about one patient."""

    patient_id: str
    birth_date: str | None = None
    deceased_boolean: bool | None = None
    deceased_date: date | None = None
    birth_date_unreadable: str | None = None
    deceased_unreadable: str | None = None
    name: str | None = None
    conditions: tuple[ConditionFact, ...] = ()
    labs: tuple[LabFact, ...] = ()
    procedures: tuple[ProcedureFact, ...] = ()
    exposures: tuple[ExposureFact, ...] = ()
    gender: str | None = None
    family_history: tuple[FamilyHistoryFact, ...] = ()
    records: tuple[MedicationRecord, ...] = ()  # every medication record as an interval
    notes: tuple[Note, ...] = field(default=())
    # Records of this patient that could not be read at all (a line that is not JSON,
    # a resource type FHIR does not have, a reference to a same-id patient elsewhere):
    # they may hold anything, so the patient can be neither eligible nor in a washout.
    doubts: tuple[str, ...] = ()
