"""The listed candidates of one trial in one run, ranked, kept on disk.

Rule: memory does not grow with the number of candidates. Each candidate's result goes
into a SQLite table of the run's scratch folder as it is decided: pickled, beside what
the outputs read without it, made once there (its patient, status and doubt, its
snapshot for the history and its ``to_dict()`` for candidates.json and the history),
and the sort key of :func:`fhir_cohort.criteria.rank_terms.sort_key`. The ranks are
SQLite's ``ORDER BY`` on that key (it sorts on disk past its cache); a pass that needs
the results themselves (the CSV, the report) reads back only those it asks for, one at
a time. A full disk is one :class:`~fhir_cohort.store.StoreError` line, as for the
store. A common-disease trial lists thousands of candidates, whose results held in
memory were most of a run's peak (about 8 KiB each with their snapshots).

The outputs take any sequence of :class:`Ranked` as well (a test's list): the helpers
here read both the same way.
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import tempfile
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, overload

import orjson

from .criteria.language import Trial
from .criteria.rank_terms import Ranked, score, sort_key
from .criteria.results import STATUSES
from .criteria.tree import TrialResult
from .snapshots import result_snapshot, snapshot
from .store import writing

_TABLE = (
    "CREATE TABLE listed (patient TEXT NOT NULL, status TEXT NOT NULL, doubted INTEGER, "
    "k_status INTEGER, k_from TEXT, k_points INTEGER, score INTEGER, rank INTEGER, "
    "result BLOB NOT NULL, snapshot BLOB NOT NULL, document BLOB NOT NULL)"
)


class Header(NamedTuple):
    """What the light passes read of a candidate, without its result."""

    rank: int
    patient: str
    status: str
    doubted: bool


class Listing:
    """One trial's listed candidates: :meth:`add` each result as it is decided, then
    :meth:`ranked` once; then read in rank order as often as needed."""

    def __init__(self, trial: Trial, workdir: Path | None = None):
        self.trial = trial
        with writing(workdir or Path(tempfile.gettempdir())):
            self._folder = Path(tempfile.mkdtemp(prefix="fhir-cohort-listing-", dir=workdir))
        with writing(self._folder):
            self._db = sqlite3.connect(self._folder / "listing.sqlite3")
            # The folder (owner-only, as mkdtemp makes it) goes with the listing, or when
            # the process ends.
            self._cleanup = weakref.finalize(self, _remove, self._db, self._folder)
            self._db.executescript(
                "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;"
            )
            self._db.execute(_TABLE)
        self._count = 0
        self._ranked = False

    def add(self, result: TrialResult) -> None:
        """A candidate's result (one of a listed status: others are not listed)."""
        if self._ranked:
            raise RuntimeError("a listing takes no result once it is ranked")
        if result.status not in STATUSES:
            return
        points = score(result, self.trial)
        k_status, k_from, k_points, _ = sort_key(result, points)
        row = (
            result.patient,
            result.status,
            result.doubted,
            k_status,
            k_from.isoformat(),
            k_points,
            points,
            pickle.dumps(result, pickle.HIGHEST_PROTOCOL),
            orjson.dumps(result_snapshot(result, None)),
            orjson.dumps(result.to_dict()),
        )
        with writing(self._folder):
            self._db.execute("INSERT INTO listed VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)", row)
        self._count += 1

    def ranked(self) -> Listing:
        """Number the candidates in rank order (once, after the last :meth:`add`)."""
        if not self._ranked:
            with writing(self._folder):
                self._rank()
            self._ranked = True
        return self

    def _rank(self) -> None:
        # Window functions (SQLite 3.25), not UPDATE ... FROM (3.33), which older systems'
        # Pythons lack.
        self._db.execute("CREATE TEMP TABLE ranks (id INTEGER PRIMARY KEY, n INTEGER)")
        self._db.execute(
            "INSERT INTO ranks SELECT rowid, row_number() OVER "
            "(ORDER BY k_status, k_from, k_points, patient) FROM listed"
        )
        self._db.execute("UPDATE listed SET rank = (SELECT n FROM ranks WHERE id = listed.rowid)")
        self._db.execute("DROP TABLE ranks")
        self._db.execute("CREATE UNIQUE INDEX listed_by_rank ON listed (rank)")
        self._db.execute("CREATE INDEX listed_by_patient ON listed (patient)")
        self._db.commit()

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    def __iter__(self) -> Iterator[Ranked]:
        return self.where(None)

    def where(self, keep: Callable[[str], bool] | None) -> Iterator[Ranked]:
        """The candidates whose patient ``keep`` keeps (None: all), in rank order; only
        their results are read back."""
        self.ranked()
        query = "SELECT patient, rank, score, result FROM listed ORDER BY rank"
        for patient, rank, points, blob in self._db.execute(query):
            if keep is None or keep(patient):
                yield Ranked(rank, points, pickle.loads(blob))

    def headers(self) -> Iterator[Header]:
        """Each candidate's rank, patient, status and doubt, in rank order, unread."""
        self.ranked()
        query = "SELECT rank, patient, status, doubted FROM listed ORDER BY rank"
        for rank, patient, status, doubted in self._db.execute(query):
            yield Header(rank, patient, status, bool(doubted))

    @overload
    def __getitem__(self, index: int) -> Ranked: ...
    @overload
    def __getitem__(self, index: slice) -> list[Ranked]: ...
    def __getitem__(self, index: int | slice) -> Ranked | list[Ranked]:
        if isinstance(index, slice):
            return list(self)[index]
        position = index + self._count if index < 0 else index
        if not 0 <= position < self._count:
            raise IndexError("listing index out of range")
        self.ranked()
        points, blob = self._db.execute(
            "SELECT score, result FROM listed WHERE rank = ?", (position + 1,)
        ).fetchone()
        return Ranked(position + 1, points, pickle.loads(blob))

    def entries(self) -> Iterator[tuple[str, dict, dict]]:
        """Each candidate's patient, snapshot and :func:`candidate_dict`, in rank order,
        as made when it was decided (no result is read back)."""
        self.ranked()
        query = "SELECT patient, rank, score, snapshot, document FROM listed ORDER BY rank"
        for patient, rank, points, snap, document in self._db.execute(query):
            yield patient, _ranked(orjson.loads(snap), rank), _document(rank, points, document)

    def snapshots(self) -> Iterator[tuple[str, dict]]:
        """Each candidate's patient and snapshot, in rank order."""
        self.ranked()
        query = "SELECT patient, rank, snapshot FROM listed ORDER BY rank"
        for patient, rank, snap in self._db.execute(query):
            yield patient, _ranked(orjson.loads(snap), rank)

    def snapshot(self, patient: str) -> dict | None:
        """A candidate's snapshot (None: not listed)."""
        self.ranked()
        row = self._db.execute(
            "SELECT rank, snapshot FROM listed WHERE patient = ?", (patient,)
        ).fetchone()
        return None if row is None else _ranked(orjson.loads(row[1]), row[0])

    def close(self) -> None:
        """Remove the listing's folder (also done when it is collected)."""
        self._cleanup()

    def detach(self) -> Path:
        """Its database file, closed and left for another process to :meth:`absorb`
        (in the run's scratch folder, which goes when the run does); unranked."""
        if self._ranked:
            raise RuntimeError("a ranked listing is read here, not handed on")
        with writing(self._folder):
            self._db.commit()
        self._cleanup.detach()
        self._db.close()
        return self._folder / "listing.sqlite3"

    def absorb(self, path: Path) -> None:
        """Take in the candidates of a listing another process :meth:`detach`-ed (a
        worker's share), then remove its folder."""
        if self._ranked:
            raise RuntimeError("a listing takes no result once it is ranked")
        with writing(self._folder):
            self._db.execute("ATTACH DATABASE ? AS share", (str(path),))
            taken = self._db.execute("INSERT INTO listed SELECT * FROM share.listed").rowcount
            self._db.commit()
            self._db.execute("DETACH DATABASE share")
        self._count += taken
        shutil.rmtree(path.parent, ignore_errors=True)


def _ranked(snap: dict, rank: int) -> dict:
    snap["rank"] = rank  # in the place the snapshot kept for it
    return snap


def _document(rank: int, points: int, document: bytes) -> dict:
    return {"rank": rank, "score": points, **orjson.loads(document)}


def candidate_dict(candidate: Ranked) -> dict:
    """What candidates.json and the history keep of a ranked candidate."""
    return {"rank": candidate.rank, "score": candidate.score, **candidate.result.to_dict()}


class Snapshots(Mapping[str, dict]):
    """The candidates' snapshots by patient, in rank order, read from a listing as they
    are asked for (:func:`fhir_cohort.changes.compare` reads them once)."""

    def __init__(self, listing: Listing):
        self._listing = listing

    def __getitem__(self, patient: str) -> dict:
        found = self._listing.snapshot(patient)
        if found is None:
            raise KeyError(patient)
        return found

    def __iter__(self) -> Iterator[str]:
        return (h.patient for h in self._listing.headers())

    def __len__(self) -> int:
        return len(self._listing)

    def items(self) -> Iterator[tuple[str, dict]]:  # type: ignore[override]
        return self._listing.snapshots()


def _remove(db: sqlite3.Connection, folder: Path) -> None:
    db.close()
    shutil.rmtree(folder, ignore_errors=True)


Candidates = Listing | Sequence[Ranked]


def picked(candidates: Candidates, keep: Callable[[str], bool]) -> Iterator[Ranked]:
    """The candidates whose patient ``keep`` keeps, in rank order (only theirs read back)."""
    if isinstance(candidates, Listing):
        return candidates.where(keep)
    return (c for c in candidates if keep(c.result.patient))


def snapshots(candidates: Candidates) -> Mapping[str, dict]:
    """The candidates' snapshots by patient, in rank order (a listing's, read as asked)."""
    if isinstance(candidates, Listing):
        return Snapshots(candidates)
    return {c.result.patient: snapshot(c) for c in candidates}


def entries(candidates: Candidates) -> Iterator[tuple[str, dict, dict]]:
    """Each candidate's patient, snapshot and :func:`candidate_dict`, in rank order."""
    if isinstance(candidates, Listing):
        return candidates.entries()
    return ((c.result.patient, snapshot(c), candidate_dict(c)) for c in candidates)


def headers(candidates: Candidates) -> Iterator[Header]:
    """Each candidate's rank, patient, status and doubt, without reading results back."""
    if isinstance(candidates, Listing):
        return candidates.headers()
    return (Header(c.rank, c.result.patient, c.result.status, c.result.doubted) for c in candidates)
