"""Pipeline: sources -> store -> normalise -> evaluate -> rank, for one run.

Rule: this module holds what every engine shares about one run (the
:class:`Screening` it returns, the notes that make a run partial, the records
that name nobody) and no state between runs. How a run is carried out is an
engine's job (``engines/``: one process, every core, Spark); each groups the
records by patient its own way and calls the one per-patient function
(:func:`fhir_cohort.decide.decide`), so all give identical results.

Records that cannot be attached to a patient of this source never count for
anyone, and never silently: one that refers to a patient elsewhere (a foreign
reference) puts a local candidate of the same id to review; an in-scope
record that names no patient at all weighs on every candidate as a record
that could be theirs; a line or record that cannot be read and names no
patient means the input was not all read (``unattributed-record``: exit 4).

Input that was not all read (a ``PARTIAL_DATA`` note: a file, a search, an export
file, a resource type or a record nobody can be named for) could have held any
candidate's exclusion or washout, so every candidate carries it as a doubt and none
is eligible or in a washout on that run: they are ``needs-review`` with the reason.
A record only some patients' data refers to (a ``PATIENT_GAPS`` note: a Medication
that cannot be had) leaves the run partial too, but only those patients carry the
doubt (their source marks them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date

from .criteria.funnel import TrialFunnel
from .criteria.language import Trial
from .criteria.plan import PATIENT_DATA, PoolGate, TrialGates
from .listing import Candidates
from .normalise.elements import R4_RESOURCE_TYPES, show
from .quality import DataQuality, Note
from .sources import (
    DOUBT_RECORD,
    PATIENT_REFERENCE_KEYS,
    RawResource,
    elsewhere,
    same_id_elsewhere,
)
from .store import SqliteStore

# Notes saying the input was not all read (the run is then partial: exit 4).
PARTIAL_DATA = (
    "unreadable-file",
    "export-error",
    "incomplete-search",
    "unattributed-record",
    "missing-data",
)
# Notes saying some named patients' records could not all be had: a server that answered
# for everyone else (``incomplete-patient``), or a record their data refers to, such as a
# Medication (``missing-record``). The run is partial (exit 4), and only those patients,
# who carry a doubt from their source, are needs-review.
PATIENT_GAPS = ("incomplete-patient", "missing-record")
# Notes about records that were read but not for certain (they never count in a patient's
# favour; the run stays complete).
UNREADABLE_DATA = (
    "invalid-element",
    "bad-date",
    "invalid-utf8",
    "invalid-json",
    "not-a-resource",
    "line-too-long",
    "unknown-resource-type",
    "missing-id",
    "no-patient-reference",
    "foreign-reference",
    "bad-last-updated",
    "malformed-resource",
)
MAX_UNATTACHED = 10_000  # records naming no patient weighed on every candidate; more: partial


def pool_gates(trials: list[Trial]) -> TrialGates:
    """The ingest gates of the trials screened together."""
    return TrialGates([PoolGate(t.spec, t.valuesets) for t in trials])


@dataclass
class Screening:
    """The outcome of one run for one trial."""

    trial: Trial
    as_of: date
    funnel: TrialFunnel
    data_quality: DataQuality
    candidates: Candidates  # ranked: an engine's listing on disk, or a list
    retrieval: dict[str, int] = field(default_factory=dict)
    plan: dict | None = None  # how a server was asked (its source's ``retrieval_plan``)

    def missing_data(self) -> dict[str, int]:
        """Notes saying part of the input was not read (the run is then *partial*)."""
        counts = self.data_quality.counts
        return {code: counts[code] for code in (*PARTIAL_DATA, *PATIENT_GAPS) if counts.get(code)}

    def unreadable_data(self) -> dict[str, int]:
        """Notes about records read but not for certain (the run stays complete)."""
        counts = self.data_quality.counts
        return {code: counts[code] for code in UNREADABLE_DATA if counts.get(code)}


def _other_subject(resource: dict) -> str | None:
    """The subject reference, when it readably names something that is not a patient
    (``Group/9``): such a record is certainly nobody's here."""
    for key in PATIENT_REFERENCE_KEYS:
        target = resource.get(key)
        if type(target) is dict and type(target.get("reference")) is str:
            kind, _, rest = target["reference"].partition("/")
            if kind in R4_RESOURCE_TYPES and kind != "Patient" and rest and "/" not in rest:
                return target["reference"]
        if target is not None:
            return None
    return None


def partial_input_doubts(quality: DataQuality) -> tuple[str, ...]:
    """One reason per kind of input that was not all read, for every candidate.

    >>> q = DataQuality()
    >>> q.add(Note("export-error", "Condition file failed", "bulk"))
    >>> q.add(Note("export-error", "Observation file failed", "bulk"))
    >>> partial_input_doubts(q)
    ('not all input could be read (2 export-error, first: bulk: Condition file failed); \
records of this patient may be missing',)
    """
    doubts = []
    for code in PARTIAL_DATA:
        count = quality.counts.get(code)
        if count:
            first = quality.examples[code][0]
            doubts.append(
                f"not all input could be read ({count} {code}, first: {first['where']}: "
                f"{first['message']}); records of this patient may be missing"
            )
    return tuple(doubts)


class _Unattached:
    """Records a source read but could not attach to a patient of its own, at ingest."""

    def __init__(self, quality: DataQuality, store: SqliteStore):
        self.quality, self.store = quality, store
        self.records: list[dict] = []  # in-scope records naming no patient (bounded)

    def take(self, raw: RawResource) -> None:
        """A record the trial can use whose patient is not one of this source's."""
        resource, add = raw.resource, self.quality.add
        where = f"{resource['resourceType']}/{resource['id']}"
        if resource["resourceType"] not in PATIENT_DATA:
            return
        if raw.foreign is not None:
            same, far = same_id_elsewhere(raw.foreign), elsewhere(raw.foreign)
            if same:
                self.store.add_marker(
                    same,
                    DOUBT_RECORD,
                    f"{where} refers to {raw.foreign[:120]}, "
                    + (
                        "not to this patient, though the id is the same"
                        if far
                        else "a broken reference that may mean this patient"
                    )
                    + ": it is not counted here, and this patient's record may be incomplete",
                )
            if far:
                add(
                    Note(
                        "foreign-reference",
                        f"refers to a patient outside this source ({raw.foreign[:120]}); "
                        "not counted for any patient",
                        raw.where,
                    )
                )
                return
            # A broken reference ("Patient/", an id with a space): the record is someone's
            # here, and nobody can say whose, so it weighs on everyone, as one naming nobody.
            why = f"its patient reference {show(raw.foreign)} is not a valid reference"
        else:
            other = _other_subject(resource)
            if other:
                add(
                    Note(
                        "no-patient-reference", f"refers to {other}, not a patient; skipped", where
                    )
                )
                return
            why = "names no patient it can be attributed to (subject/patient missing or unreadable)"
        if len(self.records) >= MAX_UNATTACHED:
            add(
                Note(
                    "unattributed-record",
                    f"names no patient, and more than {MAX_UNATTACHED} records do: the "
                    "evidence it holds is missing for whoever it belongs to",
                    raw.where,
                )
            )
            return
        add(
            Note(
                "no-patient-reference",
                f"{why}; it weighs on every candidate as a record that could be theirs",
                raw.where,
            )
        )
        self.records.append(resource)

    def unreadable(self, raw: RawResource) -> None:
        """A record that could not be read at all, or of a type FHIR R4 does not have."""
        why = raw.unreadable
        if why is None:
            kind = raw.resource["resourceType"]
            self.quality.add(
                Note(
                    "unknown-resource-type",
                    f"resourceType {show(kind)} is not a FHIR R4 resource type",
                    raw.where,
                )
            )
            why = f"{show(kind)[1:-1]}/{raw.resource.get('id')} is of no FHIR R4 resource type"
        if raw.patient is not None:
            self.store.add_marker(raw.patient, DOUBT_RECORD, why)
            return
        self.quality.add(
            Note(
                "unattributed-record",
                f"{why}; it names no patient: the evidence it holds is missing for whoever "
                "it belongs to",
                raw.where,
            )
        )
