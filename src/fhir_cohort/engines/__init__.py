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
  patients partitioned by a stable hash (file sources; a server is read embedded);
- ``spark``: a Spark cluster (or ``local[N]``) reading through the Hadoop filesystem.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..criteria.language import Trial
    from ..pipeline import Screening
    from ..sources import ProgressStart, ResourceSource


class EngineName(str, Enum):
    EMBEDDED = "embedded"
    WORKERS = "workers"
    SPARK = "spark"


class Engine(Protocol):
    """Screen every patient of ``sources`` for each of ``trials`` as of ``as_of``, reading
    the data once.

    ``progress(label, total, unit)`` may return a callback that is told how much
    work was done; it is how the command line draws its progress bars (None: none).
    ``workdir`` is where the run's temporary store goes (default: the system's
    temporary folder). ``now`` is when the run started (default: the clock), after
    which no ``meta.lastUpdated`` counts.
    """

    def screen(
        self,
        sources: Iterable[ResourceSource],
        trials: list[Trial],
        as_of: date,
        progress: ProgressStart | None = None,
        workdir: Path | None = None,
        now: float | None = None,
    ) -> list[Screening]: ...


def engine(name: str, workers: int | None = None, master: str | None = None) -> Engine:
    """The engine called ``name`` (an :class:`EngineName`); its modules are imported only
    when chosen (Spark's are heavy)."""
    if name == EngineName.EMBEDDED:
        from .embedded import Embedded

        return Embedded()
    if name == EngineName.WORKERS:
        from .workers import Workers

        return Workers(workers)
    if name == EngineName.SPARK:
        from .spark import Spark

        return Spark(master)
    raise ValueError(f"unknown engine {name!r} (one of {', '.join(EngineName)})")
