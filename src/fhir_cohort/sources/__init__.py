"""Sources: where FHIR resources come from, as one lazy stream.

Rule: a source yields resources one at a time with their origin ("file:line")
and the id of the patient they belong to; it never holds a whole data set,
never decides what a resource means, and reports bad input as a
:class:`~fhir_cohort.normalise.facts.Note` instead of raising. The
:class:`ResourceSource` protocol is the seam where files, a REST server or a
Bulk export plug in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import NamedTuple, Protocol

from ..errors import UsageError
from ..quality import Note

NoteSink = Callable[[Note], None]
Progress = Callable[[int], object]  # told how many more units are done; its answer is unused
ProgressStart = Callable[[str, "int | None", str], Progress]  # (label, total, unit) -> a bar

PATIENT_REFERENCE_KEYS = ("subject", "patient")
# A resource a source (or the store) could not read for certain carries, under this key,
# the reasons why (a list of strings): its facts then never count in the patient's favour.
DOUBT = "_fhir_cohort_doubt"
# Rows the store keeps for a patient beside their resources: something about the patient
# that could not be read at all (``DOUBT_RECORD``) or a note worth reading on their card
# (``NOTE_RECORD``); each body holds ``message`` (and a note's ``code``).
DOUBT_RECORD, NOTE_RECORD = "_Doubt", "_Note"


class SourceError(UsageError):
    """A source cannot be used at all (a missing path, an unreadable folder)."""


class RawResource(NamedTuple):
    """One resource as read, where it was read, and whose it is (None: not patient data,
    or a patient of another source, named in ``foreign``).

    ``origin`` and ``line`` are kept apart and joined only when a note needs
    them: formatting "file:line" for every resource would cost more than
    parsing some of them. A named tuple, immutable like a frozen dataclass but built
    in a third of its time (0.25 µs against 0.7 µs, one per record: 5 % of a screen).
    Read from a part of a file, ``line`` counts from the part's first line and
    ``lines_before`` tells (once asked, then remembered) how many lines come before it:
    counting them is reading the file up to the part, which only a note needs.

    >>> RawResource({}, "f.ndjson", "p1", 3).where
    'f.ndjson:3'
    >>> RawResource({}, "f.ndjson", "p1", 3, lines_before=lambda: 40).where
    'f.ndjson:43'
    """

    resource: dict
    origin: str
    patient: str | None
    line: int | None = None
    foreign: str | None = None  # a patient reference that points outside this source
    # Set when the record could not be read at all (``resource`` is then empty): why,
    # and ``patient`` is the patient its bytes name, if they name exactly one.
    unreadable: str | None = None
    lines_before: Callable[[], int] | None = None

    @property
    def where(self) -> str:
        if self.line is None:
            return self.origin
        return f"{self.origin}:{line_in_file(self.line, self.lines_before)}"


def line_in_file(number: int, before: Callable[[], int] | None) -> int:
    """The line number in the whole file of a part's line ``number`` (``before``: how
    many lines come before the part, counted only when asked; None: the whole file).

    >>> line_in_file(3, None), line_in_file(3, lambda: 40)
    (3, 43)
    """
    return number if before is None else number + before()


class ResourceSource(Protocol):
    """Anything that can stream FHIR resources."""

    progress_unit: str  # what ``progress`` counts: "B" (bytes) or "patients"

    def total_work(self) -> int | None:
        """Work to do in ``progress_unit``, for a progress bar (None when unknown)."""

    def read(self, note: NoteSink, progress: Progress) -> Iterator[RawResource]:
        """Yield every resource; report problems to ``note`` and work done to ``progress``."""

    def patients_not_read(self) -> int:
        """Patients known to exist but not read, because no candidate search found them
        (after ``read``; 0 for a source that reads everyone)."""

    def stats(self) -> dict[str, int]:
        """Counts worth reporting about the retrieval (HTTP requests, ...)."""


_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_HISTORY = re.compile(r"^([^/]+)(?:/_history/[^/]+)?$")
NOT_A_PATIENT: tuple[None, None] = (None, None)
# Relative references ``Patient/<id>`` already read (the same for every base): a patient's
# hundreds of records name them alike, and a lookup costs a fifth of the check. Bounded.
_LOCAL: dict[str, tuple[str, None]] = {}
_LOCAL_MAX = 100_000


def _local_id(rest: str) -> str | None:
    """The id in ``<id>`` or ``<id>/_history/<version>``, if it is a valid FHIR id."""
    found = _HISTORY.match(rest)
    if found and _FHIR_ID.fullmatch(found.group(1)):
        return found.group(1)
    return None


def patient_reference(reference: object, base: str | None = None) -> tuple[str | None, str | None]:
    """Read a patient reference by FHIR's rules: ``(local id, None)`` for a patient of
    this source, ``(None, reference)`` for one that points elsewhere, ``(None, None)``
    for a reference to something that is not a Patient.

    Local means relative (``Patient/id``, ``_history`` stripped) or absolute under
    ``base``, the source server's own base URL. Anything else that names a Patient (an
    absolute URL elsewhere, an unresolved ``urn:uuid:``, an invalid id) is *foreign*:
    never evidence for a local patient of the same id.

    >>> patient_reference("Patient/123"), patient_reference("Patient/a-1/_history/2")
    (('123', None), ('a-1', None))
    >>> patient_reference("https://h/fhir/Patient/a-1", base="https://H/fhir/")
    ('a-1', None)
    >>> patient_reference("https://other/fhir/Patient/a-1", base="https://h/fhir")
    (None, 'https://other/fhir/Patient/a-1')
    >>> patient_reference("urn:uuid:6cc4fff2"), patient_reference("Patient/a b")
    ((None, 'urn:uuid:6cc4fff2'), (None, 'Patient/a b'))
    >>> patient_reference("Group/9"), patient_reference(7)
    ((None, None), (None, None))
    """
    return reference_to(reference, "Patient", base)


def reference_to(
    reference: object, kind: str, base: str | None = None
) -> tuple[str | None, str | None]:
    """:func:`patient_reference` for a reference to any resource type ``kind``.

    >>> reference_to("Medication/m1/_history/3", "Medication"), reference_to("#m1", "Medication")
    (('m1', None), (None, None))
    """
    if not isinstance(reference, str):
        return NOT_A_PATIENT
    prefix = f"{kind}/"
    if reference.startswith(prefix):
        local = _local_id(reference[len(prefix) :])
        return (local, None) if local else (None, reference)
    if reference.startswith("urn:"):
        return None, reference
    if "://" in reference:
        if base and _same_base(reference, base, kind):
            local = _local_id(reference[len(base.rstrip("/")) + len(prefix) + 1 :])
            if local:
                return local, None
        return (None, reference) if f"/{prefix}" in reference else NOT_A_PATIENT
    return NOT_A_PATIENT


def same_id_elsewhere(foreign: str) -> str | None:
    """The id a foreign patient reference gives its patient, read loosely (the server or
    ``urn:uuid:`` prefix dropped, then the longest id it starts with), so that a local
    patient of that id can be told their record may be incomplete.

    >>> same_id_elsewhere("https://other/fhir/Patient/a-1/_history/2")
    'a-1'
    >>> same_id_elsewhere("urn:uuid:6cc4fff2"), same_id_elsewhere("Patient/p01 x?y=1")
    ('6cc4fff2', 'p01')
    >>> same_id_elsewhere("Patient//p01"), same_id_elsewhere("Patient/") is None
    ('p01', True)
    """
    rest = foreign.rsplit("Patient/", 1)[-1] if "Patient/" in foreign else foreign
    if rest.startswith("urn:uuid:"):
        rest = rest[9:]
    found = _FHIR_ID.match(rest.strip().lstrip("/").strip())
    return found.group(0) if found else None


def elsewhere(foreign: str) -> bool:
    """Is a foreign patient reference a well-formed one to a patient of another source
    (an absolute URL ending in ``/Patient/<id>``, a ``urn:uuid:``)? If not, it is a
    broken reference: its record belongs here, to a patient it does not say.

    >>> elsewhere("https://other/fhir/Patient/a-1/_history/2"), elsewhere("urn:uuid:6cc4")
    (True, True)
    >>> elsewhere("Patient/a b"), elsewhere("Patient/"), elsewhere("https://other/fhir/Patient/")
    (False, False, False)
    """
    if foreign.startswith("urn:uuid:"):
        return len(foreign) > 9
    head, _, rest = foreign.rpartition("/Patient/")
    return "://" in head and _local_id(rest) is not None


def _same_base(reference: str, base: str, kind: str = "Patient") -> bool:
    """Does an absolute reference lie under ``base``/``kind``/ (scheme and host in any case)?"""
    prefix = f"{base.rstrip('/')}/{kind}/"
    head = len(prefix.split("/", 3)[2]) + len(prefix.split("://", 1)[0]) + 3  # scheme://host
    return (
        reference[:head].lower() == prefix[:head].lower()
        and reference[head : len(prefix)] == prefix[head:]
    )


def patient_of(resource: dict, base: str | None = None) -> tuple[str | None, str | None]:
    """Whose resource this is: a Patient's own id, or its subject/patient reference,
    read by :func:`patient_reference` (``(local id, None)`` or ``(None, foreign)``)."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return (rid, None) if isinstance(rid, str) else NOT_A_PATIENT
    for key in PATIENT_REFERENCE_KEYS:
        target = resource.get(key)
        if isinstance(target, dict):
            reference = target.get("reference")
            if type(reference) is str:  # the common case first, without the general parse
                known = _LOCAL.get(reference)
                if known is not None:
                    return known
                if (
                    reference.startswith("Patient/")
                    and reference.find("/", 8) < 0
                    and _FHIR_ID.fullmatch(reference, 8)
                ):
                    if len(_LOCAL) > _LOCAL_MAX:
                        _LOCAL.clear()
                    known = _LOCAL[reference] = (reference[8:], None)
                    return known
            return patient_reference(reference, base)
    return NOT_A_PATIENT
