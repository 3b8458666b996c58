"""Store: group a stream of resources by patient on disk, in bounded memory.

Rule: memory holds one patient's record at a time, never the data set. The
:class:`PatientStore` protocol is the seam; :class:`SqliteStore` keeps the
resources the trial can use in a private temporary SQLite file (mode 0700
folder), keyed by type and id so a duplicate counts once: the copy with the
later ``meta.lastUpdated`` wins, otherwise the first seen. Resources the trial
cannot use are not kept, but a winning copy of one still retires a kept copy.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import orjson

from .sources import RawResource

_BATCH = 5000


class PatientStore(Protocol):
    def add(self, raw: RawResource, keep: bool) -> None: ...
    def finish(self) -> None: ...
    def patients(self) -> Iterator[tuple[str, list[dict]]]: ...
    def medication(self, medication_id: str) -> dict | None: ...


def _updated(resource: dict) -> float | None:
    """``meta.lastUpdated`` as a UTC timestamp (None when absent or unreadable).

    >>> utc = _updated({"meta": {"lastUpdated": "2026-01-02T03:04:05Z"}})
    >>> utc > _updated({"meta": {"lastUpdated": "2026-01-02T03:04:05+01:00"}})
    True
    """
    meta = resource.get("meta")
    stamp = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(stamp, str):
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class SqliteStore:
    """Patient-grouped resources in a temporary SQLite database."""

    def __init__(self, folder: Path | None = None, filtered_types: frozenset[str] | None = None):
        """``filtered_types``: the types whose copies may be kept or not by content
        (None: any type). A copy not kept still competes with a kept copy of the
        same type and id."""
        self._folder = Path(tempfile.mkdtemp(prefix="fhir-cohort-", dir=folder))
        self._db = sqlite3.connect(self._folder / "resources.sqlite3")
        self._db.executescript(
            """
            PRAGMA journal_mode = OFF;
            PRAGMA synchronous = OFF;
            PRAGMA temp_store = FILE;
            CREATE TABLE resources (rtype TEXT, rid TEXT, patient TEXT, updated REAL,
                                    seen INTEGER, body BLOB, PRIMARY KEY (rtype, rid));
            CREATE TABLE patients (id TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE unkept (rtype TEXT, rid TEXT, updated REAL, seen INTEGER);
            """
        )
        self._filtered_types = filtered_types
        self._rows: list[tuple] = []
        self._unkept: list[tuple] = []
        self._seen = 0
        self._patients: set[str] = set()
        self.kept = 0
        self.resources_by_type: dict[str, int] = {}
        self.medication = lru_cache(maxsize=4096)(self._medication)

    # -- loading -----------------------------------------------------------
    def add(self, raw: RawResource, keep: bool) -> None:
        resource = raw.resource
        rtype = resource["resourceType"]
        self.resources_by_type[rtype] = self.resources_by_type.get(rtype, 0) + 1
        if raw.patient is not None:
            self._patients.add(raw.patient)
        self._seen += 1
        if keep:
            self.kept += 1
            self._rows.append(
                (
                    rtype,
                    resource["id"],
                    raw.patient,
                    _updated(resource),
                    self._seen,
                    orjson.dumps(resource),
                )
            )
        elif self._filtered_types is None or rtype in self._filtered_types:
            self._unkept.append((rtype, resource["id"], _updated(resource), self._seen))
        if max(len(self._rows), len(self._unkept), len(self._patients)) >= _BATCH:
            self._flush()

    def _flush(self) -> None:
        self._db.executemany(
            "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (rtype, rid) "
            "DO UPDATE SET patient = excluded.patient, updated = excluded.updated, "
            "seen = excluded.seen, body = excluded.body "
            "WHERE resources.updated IS NOT NULL AND excluded.updated > resources.updated",
            self._rows,
        )
        self._db.executemany("INSERT INTO unkept VALUES (?, ?, ?, ?)", self._unkept)
        self._db.executemany(
            "INSERT OR IGNORE INTO patients VALUES (?)", ((p,) for p in self._patients)
        )
        self._rows.clear()
        self._unkept.clear()
        self._patients.clear()

    def finish(self) -> None:
        """End of input: drop kept copies that an unkept copy beats, index by patient.

        A copy beats another by a later ``meta.lastUpdated`` when both have one,
        otherwise by being seen first (the same rule the upsert applies).
        """
        self._flush()
        self._db.executescript(
            """
            DELETE FROM resources WHERE rowid IN (
                SELECT r.rowid FROM unkept u JOIN resources r
                ON r.rtype = u.rtype AND r.rid = u.rid
                WHERE CASE WHEN u.updated IS NOT NULL AND r.updated IS NOT NULL
                           THEN u.updated > r.updated ELSE u.seen < r.seen END);
            CREATE INDEX resources_by_patient ON resources (patient);
            """
        )
        self._db.commit()

    @property
    def distinct_kept(self) -> int:
        return self._db.execute("SELECT count(*) FROM resources").fetchone()[0]

    # -- reading -----------------------------------------------------------
    def patients(self) -> Iterator[tuple[str, list[dict]]]:
        """Each patient id (sorted) with their kept resources."""
        cursor = self._db.execute(
            "SELECT p.id, r.body FROM patients p LEFT JOIN resources r ON r.patient = p.id "
            "ORDER BY p.id"
        )
        current: str | None = None
        bodies: list[dict] = []
        for patient, body in cursor:
            if patient != current:
                if current is not None:
                    yield current, bodies
                current, bodies = patient, []
            if body is not None:
                bodies.append(orjson.loads(body))
        if current is not None:
            yield current, bodies

    def patient_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM patients").fetchone()[0]

    def _medication(self, medication_id: str) -> dict | None:
        row = self._db.execute(
            "SELECT body FROM resources WHERE rtype = 'Medication' AND rid = ?", (medication_id,)
        ).fetchone()
        return orjson.loads(row[0]) if row else None

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
