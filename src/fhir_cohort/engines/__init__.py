"""Engines: where and how the per-patient function runs over a whole input.

Rule (as cumulus-library puts DuckDB and Athena behind one ``DatabaseBackend``): every
engine answers the same question through one interface, :class:`Engine`, and none of
them decides a patient itself. They differ only in how records are read, settled by
the one duplicate rule and grouped by patient; then each calls
:func:`fhir_cohort.decide.decide` and merges the shares it returns in a fixed order
(patients by id, parts of the input in source order), so the outputs are the same
byte for byte whichever engine ran:

- ``embedded``: one process, the bounded-memory SQLite store (any source);
- ``workers``: ``N`` processes on one machine, parts of the files read apart and
  patients partitioned by a stable hash (file sources; others run embedded);
- ``spark``: a Spark cluster (or ``local[N]``) reading through the Hadoop filesystem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..criteria.trial import Trial
    from ..pipeline import Screening
    from ..sources import ResourceSource

ENGINES = ("embedded", "workers", "spark")

ProgressFactory = Callable[[str, int | None, str], Callable[[int], None]]


class Engine(Protocol):
    """Screen every patient of ``sources`` for ``trial`` as of ``as_of``."""

    def screen(
        self,
        sources: Iterable[ResourceSource],
        trial: Trial,
        as_of: date,
        progress: ProgressFactory | None = None,
        workdir: Path | None = None,
        now: float | None = None,
    ) -> Screening: ...


def engine(name: str, workers: int | None = None, master: str | None = None) -> Engine:
    """The engine called ``name`` (one of :data:`ENGINES`)."""
    if name == "embedded":
        from .embedded import Embedded

        return Embedded()
    if name == "workers":
        from .workers import Workers

        return Workers(workers)
    if name == "spark":
        from .spark import Spark

        return Spark(master)
    raise ValueError(f"unknown engine {name!r} (one of {', '.join(ENGINES)})")
