"""Sources: where FHIR resources come from, as one lazy stream.

Rule: a source yields resources one at a time with their origin ("file:line")
and the id of the patient they belong to; it never holds a whole data set,
never decides what a resource means, and reports bad input as a
:class:`~fhir_cohort.normalise.facts.Note` instead of raising. The
:class:`ResourceSource` protocol is the seam where files, a REST server or a
Bulk export plug in.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from ..errors import UsageError
from ..quality import Note

NoteSink = Callable[[Note], None]
Progress = Callable[[int], None]

PATIENT_REFERENCE_KEYS = ("subject", "patient")


class SourceError(UsageError):
    """A source cannot be used at all (a missing path, an unreadable folder)."""


@dataclass(frozen=True, slots=True)
class RawResource:
    """One resource as read, where it was read, and whose it is (None: not patient data).

    ``origin`` and ``line`` are kept apart and joined only when a note needs
    them: formatting "file:line" for every resource would cost more than
    parsing some of them.
    """

    resource: dict
    origin: str
    patient: str | None
    line: int | None = None

    @property
    def where(self) -> str:
        return self.origin if self.line is None else f"{self.origin}:{self.line}"


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


def patient_id_from_reference(reference: object) -> str | None:
    """The Patient id in a reference, in any of the spellings servers use.

    >>> patient_id_from_reference("Patient/123")
    '123'
    >>> patient_id_from_reference("https://h/fhir/Patient/a-1/_history/2")
    'a-1'
    >>> patient_id_from_reference("urn:uuid:6cc4fff2"), patient_id_from_reference("Group/9") is None
    ('6cc4fff2', True)
    """
    if not isinstance(reference, str):
        return None
    if reference.startswith("urn:uuid:"):
        return reference[9:] or None
    parts = reference.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "Patient" and parts[i + 1]:
            return parts[i + 1]
    return None


def patient_of(resource: dict) -> str | None:
    """Whose resource this is: a Patient's own id, or its subject/patient reference."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    for key in PATIENT_REFERENCE_KEYS:
        target = resource.get(key)
        if isinstance(target, dict):
            reference = target.get("reference")
            if (
                type(reference) is str
                and reference.startswith("Patient/")
                and reference.find("/", 8) < 0
            ):
                return reference[8:] or None  # the common case, without the general parse
            return patient_id_from_reference(reference)
    return None
