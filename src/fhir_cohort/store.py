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
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import orjson

from .sources import RawResource

_BATCH = 5000
_RECENT_PATIENTS = 100_000  # patient ids remembered to skip repeat inserts


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """One patient's kept resources, still as stored bytes, and their relevance bits OR-ed."""

    patient_id: str
    touches: int
    bodies: tuple[bytes, ...]

    def resources(self) -> list[dict]:
        return [orjson.loads(body) for body in self.bodies]


class PatientStore(Protocol):
    def add(self, raw: RawResource, keep: int) -> None: ...
    def finish(self) -> None: ...
    def patients(self) -> Iterator[PatientRecord]: ...
    def medication(self, medication_id: str) -> dict | None: ...


def _last_updated(resource: dict) -> str | None:
    meta = resource.get("meta")
    stamp = meta.get("lastUpdated") if type(meta) is dict else None
    return stamp if type(stamp) is str else None


def _timestamp(stamp: str | None) -> float | None:
    """``meta.lastUpdated`` as a UTC timestamp (None when absent or unreadable).

    >>> _timestamp("2026-01-02T03:04:05Z") > _timestamp("2026-01-02T03:04:05+01:00")
    True
    """
    if stamp is None:
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
                                    seen INTEGER, key INTEGER, touches INTEGER, body BLOB,
                                    PRIMARY KEY (rtype, rid));
            CREATE TABLE patients (id TEXT PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE unkept (key INTEGER, stamp TEXT, seen INTEGER);
            """
        )
        self._filtered_types = filtered_types
        self._rows: list[tuple] = []
        self._unkept: list[tuple] = []
        self._new_patients: list[tuple[str]] = []
        self._recent_patients: set[str] = set()  # bounded: cleared when large
        self._seen = 0
        self.kept = 0
        self.resources_by_type: dict[str, int] = {}
        self.medication = lru_cache(maxsize=4096)(self._medication)

    # -- loading -----------------------------------------------------------
    def add(self, raw: RawResource, keep: int) -> None:
        """Take one resource; ``keep`` is its relevance (0: the trial cannot use it)."""
        resource = raw.resource
        rtype = resource["resourceType"]
        counts = self.resources_by_type
        counts[rtype] = counts.get(rtype, 0) + 1
        patient = raw.patient
        if patient is not None and patient not in self._recent_patients:
            self._recent_patients.add(patient)
            self._new_patients.append((patient,))
        self._seen += 1
        # A copy is known by a 64-bit hash of type and id: a salted SipHash, so two
        # different resources share one with odds near 1e-9 even at ten million.
        if keep:
            self.kept += 1
            self._rows.append(
                (
                    rtype,
                    resource["id"],
                    patient,
                    _timestamp(_last_updated(resource)),
                    self._seen,
                    hash((rtype, resource["id"])),
                    int(keep),
                    orjson.dumps(resource),
                )
            )
        elif self._filtered_types is None or rtype in self._filtered_types:
            # Most resources land here: keep the raw stamp, parse it only if it competes.
            meta = resource.get("meta")
            stamp = meta.get("lastUpdated") if type(meta) is dict else None
            self._unkept.append((hash((rtype, resource["id"])), stamp, self._seen))
        if not self._seen % _BATCH:
            self._flush()

    def _flush(self) -> None:
        self._db.executemany(
            "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (rtype, rid) "
            "DO UPDATE SET patient = excluded.patient, updated = excluded.updated, "
            "seen = excluded.seen, touches = excluded.touches, body = excluded.body "
            "WHERE resources.updated IS NOT NULL AND excluded.updated > resources.updated",
            self._rows,
        )
        self._db.executemany("INSERT INTO unkept VALUES (?, ?, ?)", self._unkept)
        self._db.executemany("INSERT OR IGNORE INTO patients VALUES (?)", self._new_patients)
        self._rows.clear()
        self._unkept.clear()
        self._new_patients.clear()
        if len(self._recent_patients) > _RECENT_PATIENTS:
            self._recent_patients.clear()

    def finish(self) -> None:
        """End of input: drop kept copies that an unkept copy beats, index by patient.

        A copy beats another by a later ``meta.lastUpdated`` when both have one,
        otherwise by being seen first (the same rule the upsert applies).
        """
        self._flush()
        self._db.execute("CREATE INDEX resources_by_key ON resources (key)")
        competing = self._db.execute(
            "SELECT r.rowid, r.updated, r.seen, u.stamp, u.seen FROM unkept u "
            "JOIN resources r ON r.key = u.key"
        ).fetchall()
        beaten = set()
        for rowid, updated, seen, stamp, unkept_seen in competing:
            unkept_updated = _timestamp(stamp if isinstance(stamp, str) else None)
            if unkept_updated is not None and updated is not None:
                wins = unkept_updated > updated
            else:
                wins = unkept_seen < seen
            if wins:
                beaten.add(rowid)
        self._db.executemany("DELETE FROM resources WHERE rowid = ?", ((r,) for r in beaten))
        self._db.execute("CREATE INDEX resources_by_patient ON resources (patient)")
        self._db.commit()

    @property
    def distinct_kept(self) -> int:
        return self._db.execute("SELECT count(*) FROM resources").fetchone()[0]

    # -- reading -----------------------------------------------------------
    def patients(self) -> Iterator[PatientRecord]:
        """Each patient (sorted by id) with their kept resources, unparsed."""
        cursor = self._db.execute(
            "SELECT p.id, r.touches, r.body FROM patients p "
            "LEFT JOIN resources r ON r.patient = p.id ORDER BY p.id"
        )
        current: str | None = None
        touches = 0
        bodies: list[bytes] = []
        for patient, bits, body in cursor:
            if patient != current:
                if current is not None:
                    yield PatientRecord(current, touches, tuple(bodies))
                current, touches, bodies = patient, 0, []
            if body is not None:
                touches |= bits
                bodies.append(body)
        if current is not None:
            yield PatientRecord(current, touches, tuple(bodies))

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
