"""State: the run history and review decisions of one screening setup.

Rule: this is the only module that writes the state folder (``--state DIR``),
but for the Bulk exports it hands out. It holds one SQLite file,
``state.sqlite3``, a lock file, ``work/``, where a run keeps its temporary store
(emptied when the next run starts, so a killed run's copy of the data does not
linger), and ``bulk/``, one folder per scope where a Bulk source keeps the export
its incremental runs build on (removed by ``purge`` once unused), all owner-only in
an owner-only folder. A run is recorded in one transaction, after its
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
import hashlib
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import orjson

from .errors import Locked, UsageError
from .reviews import Review

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

SCHEMA_VERSION = 2

# Version 2 (the coordinators' workbench): people who sign in, the follow-up records
# beside review decisions (owner, next action, note, close reason), the do-not-contact
# list and the audit of patient-page views. All but ``users`` are append-only. Added to
# an older state by :meth:`State._migrate`, which keeps every older row readable.
WORKBENCH_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('coordinator', 'viewer', 'admin')),
    password TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY,
    trial TEXT NOT NULL,
    patient TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('owner', 'next', 'note', 'close')),
    value TEXT NOT NULL,
    due TEXT,
    by TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS actions_by_patient ON actions (trial, patient, id);
CREATE TABLE IF NOT EXISTS do_not_contact (
    id INTEGER PRIMARY KEY,
    patient TEXT NOT NULL,
    listed INTEGER NOT NULL CHECK (listed IN (0, 1)),
    reason TEXT NOT NULL,
    by TEXT NOT NULL,
    at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS page_views (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    at TEXT NOT NULL,
    trial TEXT NOT NULL,
    patient TEXT NOT NULL
);
"""
APPEND_ONLY = ("actions", "do_not_contact", "page_views")
ROLES = ("coordinator", "viewer", "admin")


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


class RunSnapshots(Mapping[str, dict]):
    """A run's snapshots by patient, in the history's order, read as they are asked for."""

    _ALL = "SELECT patient, snapshot FROM run_candidates WHERE run_id = ?"

    def __init__(self, db: sqlite3.Connection, run_id: int):
        self._db, self._run = db, run_id

    def __getitem__(self, patient: str) -> dict:
        row = self._db.execute(
            "SELECT snapshot FROM run_candidates WHERE run_id = ? AND patient = ?",
            (self._run, patient),
        ).fetchone()
        if row is None:
            raise KeyError(patient)
        return orjson.loads(row[0])

    def __iter__(self) -> Iterator[str]:
        return (patient for patient, _ in self._db.execute(self._ALL, (self._run,)))

    def __len__(self) -> int:
        query = "SELECT count(*) FROM run_candidates WHERE run_id = ?"
        return self._db.execute(query, (self._run,)).fetchone()[0]

    def items(self) -> Iterator[tuple[str, dict]]:  # type: ignore[override]
        rows = self._db.execute(self._ALL, (self._run,))
        return ((patient, orjson.loads(body)) for patient, body in rows)


class State:
    """The history and review decisions in ``folder`` (created owner-only)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            path = self.folder / "state.sqlite3"
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(path, isolation_level=None, timeout=10)
            self._db.executescript(SCHEMA)
            self._migrate()
        except (OSError, sqlite3.Error) as error:
            raise StateError(f"cannot use the state folder {self.folder}: {error}") from None

    def _migrate(self) -> None:
        """Bring an older state up to :data:`SCHEMA_VERSION`, adding tables and columns only
        (``runs`` gains ``purged_at``: when ``purge`` removed the run's patient data).

        The journal stays a rollback journal (WAL would need room for its index file even
        to read a full disk's state); a reader waits out a run's short write transaction
        (``timeout``), so the web service keeps working while a screen records a run.
        """
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        with self._transaction() as db:
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version >= SCHEMA_VERSION:
                return
            for statement in WORKBENCH_SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            for table in APPEND_ONLY:
                for event in ("UPDATE", "DELETE"):
                    db.execute(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{event.lower()} "
                        f"BEFORE {event} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} records are append-only'); END"
                    )
            columns = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
            if "purged_at" not in columns:
                db.execute("ALTER TABLE runs ADD COLUMN purged_at TEXT")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def compiled_templates(self) -> Path | None:
        """An owner-only folder for the report's compiled template, kept between runs
        (what is loaded from it runs as code: only the state's owner may write there);
        None when it cannot be made (the template is then compiled for this run)."""
        folder = self.folder / "templates"
        try:
            folder.mkdir(mode=0o700, exist_ok=True)
        except OSError:
            return None
        return folder

    def export_folder(self, scope: str) -> Path:
        """Where the Bulk source of ``scope`` keeps its exports (created by the source)."""
        return self.folder / "bulk" / hashlib.sha256(scope.encode()).hexdigest()[:16]

    def remove_exports(self, unused_since: float) -> int:
        """Remove each scope's Bulk exports in which nothing was written since
        ``unused_since`` (a POSIX time; links not followed); how many. That scope's next
        Bulk run exports in full. Call it holding the lock."""
        folder = self.folder / "bulk"
        if not folder.is_dir():
            return 0
        unused = [
            export
            for export in sorted(folder.iterdir())
            if export.is_dir()
            and not export.is_symlink()
            and all(p.lstat().st_mtime < unused_since for p in (export, *export.rglob("*")))
        ]
        for export in unused:
            try:
                shutil.rmtree(export)
            except OSError as error:
                raise StateError(f"cannot remove the old Bulk export {export}: {error}") from None
        return len(unused)

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
        return dict(RunSnapshots(self._db, run_id).items())

    def snapshots_read_as_asked(self, run_id: int) -> RunSnapshots:
        """:meth:`snapshots`, read from the history as they are asked for (a screen's
        diff, with the state open: memory does not grow with the run's candidates)."""
        return RunSnapshots(self._db, run_id)

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
        candidates: Iterable[tuple[str, dict, dict]],
        pool: Sequence[str] = (),
    ) -> int:
        """Keep one run: ``candidates`` are (patient, snapshot, full result) triples, taken
        one at a time."""
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
            assert run_id is not None  # sqlite3 sets it after every INSERT
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
        return run_id

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

    def _oldest_first(self, query: str, trial: str, patient: str | None) -> sqlite3.Cursor:
        """``query`` (``... WHERE trial = ?``) for one patient or all, in the order written."""
        if patient is None:
            return self._db.execute(query + " ORDER BY id", (trial,))
        return self._db.execute(query + " AND patient = ? ORDER BY id", (trial, patient))

    def reviews(self, trial: str, patient: str | None = None) -> list[Review]:
        """Every decision for ``trial`` (or one patient), oldest first."""
        rows = self._oldest_first(
            "SELECT patient, status, note, by, at, evidence_seen FROM reviews WHERE trial = ?",
            trial,
            patient,
        )
        return [
            Review(p, status, note, by, at, frozenset(orjson.loads(seen)))
            for p, status, note, by, at, seen in rows
        ]

    def latest_reviews(self, trial: str) -> dict[str, Review]:
        """Each patient's latest decision."""
        return {review.patient: review for review in self.reviews(trial)}

    # -- the workbench: trials, results, people, follow-up, audit ------------------
    def trials(self) -> list[str]:
        """Every trial with a recorded run, by name."""
        return [t for (t,) in self._db.execute("SELECT DISTINCT trial FROM runs ORDER BY trial")]

    def latest_run(self, trial: str) -> RunRecord | None:
        """The latest run of ``trial`` (complete or partial, any scope)."""
        row = self._db.execute(
            f"SELECT {RUN_COLUMNS} FROM runs WHERE trial = ? ORDER BY id DESC LIMIT 1", (trial,)
        ).fetchone()
        return RunRecord(*row) if row else None

    def results(self, run_id: int, patient: str | None = None) -> dict[str, dict]:
        """Each candidate's result in a run, as written to ``candidates.json``."""
        query = "SELECT patient, result FROM run_candidates WHERE run_id = ?"
        params: tuple = (run_id,)
        if patient is not None:
            query += " AND patient = ?"
            params += (patient,)
        return {p: orjson.loads(body) for p, body in self._db.execute(query, params)}

    def funnels(self, trial: str) -> list[tuple[RunRecord, dict]]:
        """Every run of ``trial`` with its funnel counts (kept when a run is purged)."""
        rows = self._db.execute(
            f"SELECT {RUN_COLUMNS}, funnel FROM runs WHERE trial = ? ORDER BY id", (trial,)
        )
        return [(RunRecord(*row[:-1]), orjson.loads(row[-1])) for row in rows]

    def user(self, name: str) -> UserRecord | None:
        row = self._db.execute(f"SELECT {USER_COLUMNS} FROM users WHERE name = ?", (name,))
        found = row.fetchone()
        return UserRecord(*found) if found else None

    def users(self) -> list[UserRecord]:
        rows = self._db.execute(f"SELECT {USER_COLUMNS} FROM users ORDER BY name")
        return [UserRecord(*row) for row in rows]

    def add_user(self, name: str, role: str, password_hash: str) -> None:
        now = utc_now()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise StateError(f"user {name!r} exists; use users reset-password")
            db.execute(
                "INSERT INTO users (name, role, password, disabled, created_at, changed_at) "
                "VALUES (?, ?, ?, 0, ?, ?)",
                (name, role, password_hash, now, now),
            )

    def change_user(
        self, name: str, *, password_hash: str | None = None, disabled: bool | None = None
    ) -> None:
        """A new password (which also enables the user again) or the user disabled."""
        with self._transaction() as db:
            if password_hash is not None:
                cursor = db.execute(
                    "UPDATE users SET password = ?, disabled = 0, changed_at = ? WHERE name = ?",
                    (password_hash, utc_now(), name),
                )
            else:
                cursor = db.execute(
                    "UPDATE users SET disabled = ?, changed_at = ? WHERE name = ?",
                    (int(bool(disabled)), utc_now(), name),
                )
            if cursor.rowcount == 0:
                raise StateError(f"no user {name!r} in {self.folder}")

    def add_action(
        self,
        trial: str,
        patient: str,
        kind: str,
        value: str,
        by: str,
        due: str | None = None,
        at: str | None = None,
    ) -> Action:
        """Append an owner, next action (with its due day), note or close reason."""
        action = Action(patient, kind, value, due, by, at or utc_now())
        with self._transaction() as db:
            db.execute(
                "INSERT INTO actions (trial, patient, kind, value, due, by, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (trial, patient, kind, value, due, by, action.at),
            )
        return action

    def actions(self, trial: str, patient: str | None = None) -> list[Action]:
        """The follow-up records of ``trial`` (or one patient), oldest first."""
        rows = self._oldest_first(
            "SELECT patient, kind, value, due, by, at FROM actions WHERE trial = ?", trial, patient
        )
        return [Action(*row) for row in rows]

    def set_do_not_contact(self, patient: str, listed: bool, reason: str, by: str) -> None:
        """Put a patient on the do-not-contact list (or take them off): a new record."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO do_not_contact (patient, listed, reason, by, at) "
                "VALUES (?, ?, ?, ?, ?)",
                (patient, int(listed), reason, by, utc_now()),
            )

    def do_not_contact(self) -> dict[str, DoNotContact]:
        """The patients on the do-not-contact list now, with the latest record for each."""
        rows = self._db.execute(
            "SELECT patient, listed, reason, by, at FROM do_not_contact ORDER BY id"
        )
        latest = {row[0]: DoNotContact(row[0], bool(row[1]), *row[2:]) for row in rows}
        return {patient: entry for patient, entry in latest.items() if entry.listed}

    def log_view(self, user: str, trial: str, patient: str) -> None:
        """Audit one view of a patient's page (for the privacy office)."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO page_views (user, at, trial, patient) VALUES (?, ?, ?, ?)",
                (user, utc_now(), trial, patient),
            )

    def views(self, patient: str | None = None) -> list[tuple[str, str, str, str]]:
        """(user, at, trial, patient) of every audited page view, oldest first."""
        query = "SELECT user, at, trial, patient FROM page_views"
        params: tuple = ()
        if patient is not None:
            query, params = query + " WHERE patient = ?", (patient,)
        return list(self._db.execute(query + " ORDER BY id", params))

    def purge(self, before: str) -> list[int]:
        """Remove the patient data of runs finished before ``before`` (a UTC instant).

        Each run's row and funnel counts stay; the latest complete run of each trial and
        scope keeps its candidates (the next incremental run compares with them), as does a
        later partial run's. Review decisions, follow-up records and the audit stay.
        """
        with self._transaction() as db:
            ids = [
                run_id
                for (run_id,) in db.execute(
                    "SELECT id FROM runs r WHERE finished_at < ? AND purged_at IS NULL "
                    "AND id < (SELECT MAX(id) FROM runs l WHERE l.trial = r.trial "
                    "AND l.scope = r.scope AND l.outcome = 'complete')",
                    (before,),
                )
            ]
            for run_id in ids:
                db.execute("DELETE FROM run_candidates WHERE run_id = ?", (run_id,))
                db.execute("DELETE FROM run_pool WHERE run_id = ?", (run_id,))
                db.execute("UPDATE runs SET purged_at = ? WHERE id = ?", (utc_now(), run_id))
        return ids


USER_COLUMNS = "name, role, password, disabled, created_at, changed_at"


@dataclass(frozen=True)
class UserRecord:
    """One person who may sign in to the workbench; ``password`` is an argon2 hash."""

    name: str
    role: str
    password: str
    disabled: int
    created_at: str
    changed_at: str


@dataclass(frozen=True)
class Action:
    """One follow-up record beside the decisions: owner, next action, note or close reason."""

    patient: str
    kind: str
    value: str
    due: str | None
    by: str
    at: str


@dataclass(frozen=True)
class DoNotContact:
    """The latest do-not-contact record of one patient."""

    patient: str
    listed: bool
    reason: str
    by: str
    at: str
