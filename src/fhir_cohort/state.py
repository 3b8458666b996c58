"""State: the run history and review decisions of one screening setup.

Rule: this is the only module that writes the state folder (``--state DIR``).
It holds one SQLite file, ``state.sqlite3``, a lock file and ``work/``, where
a run keeps its temporary store (emptied when the next run starts, so a killed
run's copy of the data does not linger), all owner-only in an owner-only
folder. A run is recorded in one transaction, after its
outputs are written, so a run killed half way leaves the history as it was.
Review decisions are an append-only audit trail: triggers refuse any UPDATE
or DELETE. A lock (``flock`` on ``DIR/lock``, released by the kernel when a
process dies) keeps two runs off one state at once. A state that cannot be
written (a full disk) is a one-line :class:`StateError` (exit 2), and the
transaction that failed leaves the history as it was.

The state is a record, not a cache of clinical data: each run keeps every
candidate's result as written to ``candidates.json``, the patients a server
search found (for the next incremental run) and the server's clock at the
start of the run. What changed between runs is worked out by the pure
functions in :mod:`fhir_cohort.changes`.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .changes import Review
from .errors import Locked, UsageError

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    trial TEXT NOT NULL,
    scope TEXT NOT NULL,
    as_of TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ('complete', 'partial')),
    checkpoint TEXT,
    searches TEXT,
    funnel TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS run_candidates (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    patient TEXT NOT NULL,
    snapshot TEXT NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (run_id, patient)
);
CREATE TABLE IF NOT EXISTS run_pool (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    patient TEXT NOT NULL,
    PRIMARY KEY (run_id, patient)
);
CREATE TABLE IF NOT EXISTS reviews (
    id INTEGER PRIMARY KEY,
    trial TEXT NOT NULL,
    patient TEXT NOT NULL,
    status TEXT NOT NULL,
    note TEXT NOT NULL,
    by TEXT NOT NULL,
    at TEXT NOT NULL,
    evidence_seen TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reviews_by_patient ON reviews (trial, patient, id);
CREATE TRIGGER IF NOT EXISTS reviews_no_update BEFORE UPDATE ON reviews
BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS reviews_no_delete BEFORE DELETE ON reviews
BEGIN SELECT RAISE(ABORT, 'review decisions are append-only'); END;
"""


RUN_COLUMNS = "id, trial, scope, as_of, started_at, finished_at, outcome, checkpoint, searches"


class StateError(UsageError):
    """The state folder cannot be used (unwritable, not a state, corrupt)."""


class StateLocked(Locked):
    """Another run holds the state's lock."""


def default_state_dir() -> Path:
    """Where the state lives unless ``--state`` says otherwise.

    ``$FHIR_COHORT_STATE``, else ``$XDG_STATE_HOME/fhir-cohort``, else
    ``~/.local/state/fhir-cohort``.
    """
    if os.environ.get("FHIR_COHORT_STATE"):
        return Path(os.environ["FHIR_COHORT_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fhir-cohort"


def utc_now() -> str:
    """Now as a UTC instant with seconds, the form every timestamp in the state takes."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RunRecord:
    """One finished run, as the history keeps it."""

    id: int
    trial: str
    scope: str
    as_of: str
    started_at: str
    finished_at: str
    outcome: str
    checkpoint: str | None  # the server's clock for the next incremental run
    searches: str | None  # a digest of the candidate searches the checkpoint is good for


class State:
    """The history and review decisions in ``folder`` (created owner-only)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.folder / "state.sqlite3"
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None)
            self._db.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"cannot use the state folder {self.folder}: {error}") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> State:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the state's lock for a run; fail at once if another run holds it."""
        path = self.folder / "lock"
        try:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as error:
            raise StateError(f"cannot use the state folder {self.folder}: {error}") from None
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(descriptor, 200, 0).decode("utf-8", "replace").strip()
                raise StateLocked(
                    f"another fhir-cohort run is using {self.folder}"
                    + (f" ({holder})" if holder else "")
                    + "; try again when it has finished"
                ) from None
            try:  # who holds it, for the message of a run that finds it taken
                os.ftruncate(descriptor, 0)
                os.pwrite(descriptor, f"pid {os.getpid()}, started {utc_now()}".encode(), 0)
            except OSError:
                pass  # a full disk: the lock holds all the same, unsigned
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def scratch(self) -> Path:
        """An empty owner-only folder for a run's temporary store; call it holding the lock.

        What a run killed earlier left there (a copy of clinical data) is removed.
        """
        folder = self.folder / "work"
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.mkdir(mode=0o700)
        except OSError as error:
            raise StateError(f"cannot use the state folder {self.folder}: {error}") from None
        return folder

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; a database that cannot be written (a full disk) rolls it back
        and raises StateError."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise StateError(f"cannot write the state in {self.folder}: {error}") from None

    # -- runs ----------------------------------------------------------------
    def previous_run(self, trial: str, scope: str) -> RunRecord | None:
        """The latest complete run of ``trial`` over ``scope``."""
        row = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs "
            "WHERE trial = ? AND scope = ? AND outcome = 'complete' "
            "ORDER BY id DESC LIMIT 1",
            (trial, scope),
        ).fetchone()
        return RunRecord(*row) if row else None

    def runs(self, trial: str) -> list[RunRecord]:
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE trial = ? ORDER BY id",
            (trial,),
        )
        return [RunRecord(*row) for row in rows]

    def snapshots(self, run_id: int) -> dict[str, dict]:
        """Each candidate of a run, as :func:`fhir_cohort.changes.snapshot` summarised it."""
        rows = self._db.execute(
            "SELECT patient, snapshot FROM run_candidates WHERE run_id = ?", (run_id,)
        )
        return {patient: orjson.loads(body) for patient, body in rows}

    def pool(self, run_id: int) -> list[str]:
        """The patients a run's server searches found (its candidate pool)."""
        rows = self._db.execute(
            "SELECT patient FROM run_pool WHERE run_id = ? ORDER BY patient", (run_id,)
        )
        return [patient for (patient,) in rows]

    def record_run(
        self,
        *,
        trial: str,
        scope: str,
        as_of: str,
        started_at: str,
        outcome: str,
        checkpoint: str | None,
        searches: str | None = None,
        funnel: dict,
        candidates: list[tuple[str, dict, dict]],
        pool: Sequence[str] = (),
    ) -> int:
        """Keep one run: ``candidates`` are (patient, snapshot, full result) triples."""
        with self._transaction() as db:
            cursor = db.execute(
                "INSERT INTO runs (trial, scope, as_of, started_at, finished_at, outcome, "
                "checkpoint, searches, funnel) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    trial,
                    scope,
                    as_of,
                    started_at,
                    utc_now(),
                    outcome,
                    checkpoint,
                    searches,
                    orjson.dumps(funnel).decode(),
                ),
            )
            run_id = cursor.lastrowid
            db.executemany(
                "INSERT INTO run_candidates (run_id, patient, snapshot, result) "
                "VALUES (?, ?, ?, ?)",
                (
                    (run_id, patient, orjson.dumps(snap).decode(), orjson.dumps(result).decode())
                    for patient, snap, result in candidates
                ),
            )
            db.executemany(
                "INSERT OR IGNORE INTO run_pool (run_id, patient) VALUES (?, ?)",
                ((run_id, patient) for patient in pool),
            )
        return int(run_id)

    def latest_snapshot(self, trial: str, patient: str) -> dict | None:
        """The patient's candidate snapshot in the latest run of ``trial`` that listed them."""
        row = self._db.execute(
            "SELECT c.snapshot FROM run_candidates c JOIN runs r ON r.id = c.run_id "
            "WHERE r.trial = ? AND c.patient = ? ORDER BY r.id DESC LIMIT 1",
            (trial, patient),
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    # -- review decisions ------------------------------------------------------
    def add_review(
        self, trial: str, patient: str, status: str, note: str, by: str, at: str | None = None
    ) -> Review:
        """Append a decision; it remembers the evidence on record when it was made."""
        latest = self.latest_snapshot(trial, patient)
        if latest is None:
            raise StateError(
                f"patient {patient!r} is in no recorded screen of {trial!r} in {self.folder}; "
                "check the id (it is the one in candidates.csv)"
            )
        seen = sorted(latest.get("evidence", {}))
        review = Review(patient, status, note, by, at or utc_now(), frozenset(seen))
        with self._transaction() as db:
            db.execute(
                "INSERT INTO reviews (trial, patient, status, note, by, at, evidence_seen) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (trial, patient, status, note, by, review.at, orjson.dumps(seen).decode()),
            )
        return review

    def reviews(self, trial: str, patient: str | None = None) -> list[Review]:
        """Every decision for ``trial`` (or one patient), oldest first."""
        query = "SELECT patient, status, note, by, at, evidence_seen FROM reviews WHERE trial = ?"
        params: tuple = (trial,)
        if patient is not None:
            query += " AND patient = ?"
            params += (patient,)
        rows = self._db.execute(query + " ORDER BY id", params)
        return [
            Review(p, status, note, by, at, frozenset(orjson.loads(seen)))
            for p, status, note, by, at, seen in rows
        ]

    def latest_reviews(self, trial: str) -> dict[str, Review]:
        """Each patient's latest decision."""
        return {review.patient: review for review in self.reviews(trial)}
