"""Store: group a stream of resources by patient on disk, in bounded memory.

Rule: memory holds one patient's record at a time, never the data set. The
:class:`PatientStore` protocol is the seam; :class:`SqliteStore` keeps the
resources the trial can use in a private temporary SQLite file (mode 0700
folder). The same type and id read more than once is one resource, by the
rules pages' one rule: the copy with the later ``meta.lastUpdated`` (compared
as instants) wins; a copy without one, or with one that is not a FHIR instant
or lies after this run's start, counts as the oldest (noted); on a tie, the
first seen. Resources the trial cannot use are not kept, but a winning copy
of one still retires a kept copy. Copies that disagree on anything the trial
reads (all but ``meta`` and the narrative) are noted on the patient; when the
choice between them rests on an unreadable ``meta.lastUpdated``, no copy wins
for certain: every kept copy stays, marked doubtful, so none counts in the
patient's favour. A full disk is a :class:`StoreError` (exit 2), not a crash.
Every lookup the run makes goes through an index or in index order, never a scan per
lookup: the page cache is small, so a scan or a random probe per row grows with the
square of the data. The copies the trial cannot use (most of the input) are written in
runs, a row per batch, and only those whose type and id some kept copy may have (a bit
set of the kept keys, :class:`KeyBits`) are taken out of them for the duplicate rule.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import tempfile
import time
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache, partial
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Protocol, cast

import orjson

from .errors import UsageError
from .normalise.elements import fhir_date, show
from .quality import Note
from .sources import DOUBT, DOUBT_RECORD, NOTE_RECORD, RawResource

_BATCH = 5000
_RECENT_PATIENTS = 100_000  # patient ids remembered to skip repeat inserts
_NOT_READ = ("meta", "text")  # what copies may differ in without disagreeing
_OLDEST = float("-inf")
# The kept keys' bit set (KeyBits): 2**25 bits (4 MiB) to begin with, four times larger
# each time the keys marked pass one per 16 bits, up to 2**30 bits (128 MiB). Up to two
# million kept keys (about 37,000 patients of the benchmark's shape) it stays 4 MiB: at
# 10,000 patients (560,000 kept keys) about 1.7 % of the unkept copies pass it by chance
# and are then matched exactly on the key index like the others. A fixed size would let
# almost every copy pass at a health system's scale (at 55 million kept keys, 81 %);
# growing, at most 1 in 16 does up to 67 million kept keys.
FIRST_BITS = 1 << 25
MOST_BITS = 1 << 30
BITS_PER_KEY = 16
# A Medication by id, on the partial index ``medications`` (every distinct id a record
# references is looked up: a scan of all kept records each took 80 ms at 10,000 patients).
MEDICATION_BY_ID = "SELECT body FROM resources WHERE rtype = 'Medication' AND rid = ?"
# The unkept copies that compete with a kept copy (its type and id has one), found in
# key order: read through their key index, they probe the kept keys' index in order, so
# each of its pages is read once. Probed in the order they were read, every row re-read
# a page from disk once that index outgrew the page cache (3 s of a 10,000-patient
# screen).
_COMPETING = (
    "unkept AS u INDEXED BY unkept_by_key "
    "WHERE EXISTS (SELECT 1 FROM resources r WHERE r.key = u.key)"
)
# Each patient and their kept records' bits, in patient order, read from the index
# ``resources_by_patient`` alone (no record's body is read; ``where``: a filter on p.id).
PATIENT_BITS = (
    "SELECT p.id, r.touches FROM patients p "
    "LEFT JOIN resources r ON r.patient = p.id {where} ORDER BY p.id"
)
_ABSENT = object()
# A scratch store is thrown away if the run fails: no journal, no waiting for the disk
# (set on each connection that writes to one).
_SCRATCH = "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF; PRAGMA temp_store = FILE;"
_NO_ID = (None, None)  # the type and id of an unkept copy whose store did not keep them


def marker(kind: str, seen: int, message: str, code: str) -> tuple[str, bytes]:
    """A doubt or note kept for a patient at position ``seen``: its id (made from the
    position, so every engine numbers it alike) and its bytes."""
    rid = f"marker-{seen}"
    return rid, orjson.dumps({"resourceType": kind, "id": rid, "message": message, "code": code})


class StoreError(UsageError):
    """The scratch store cannot be written (a full disk, an unwritable folder): exit 2."""


@dataclass(frozen=True, slots=True)
class Kept:
    """One kept record of a patient: where it stood in the source order, what its codes
    can mean to the trial (relevance bits), and its JSON bytes (None: not read, because
    deciding the patient does not need them; :func:`kept_by_patient`)."""

    position: int
    touches: int
    body: bytes | None


@dataclass(slots=True)
class _Run:
    """Unkept copies as they are read (a batch), written as one row: their keys and
    positions as 64-bit arrays, their raw stamps (and, for an engine settling them
    itself, their types and ids) as JSON. A row costs SQLite nothing per copy; a table
    of them with an index cost a fifth of a screen."""

    keys: array = field(default_factory=lambda: array("q"))
    seen: array = field(default_factory=lambda: array("q"))
    stamps: list[str | None] = field(default_factory=list)
    ids: list[tuple[str, str]] = field(default_factory=list)

    def row(self) -> tuple[bytes, bytes, bytes, bytes | None]:
        ids = orjson.dumps(self.ids) if self.ids else None
        return self.keys.tobytes(), self.seen.tobytes(), orjson.dumps(self.stamps), ids

    @staticmethod
    def read(row: tuple) -> _Run:
        """A written run back."""
        ids = [tuple(pair) for pair in orjson.loads(row[3])] if row[3] else []
        return _Run(array("q", row[0]), array("q", row[1]), orjson.loads(row[2]), ids)


class KeyBits:
    """The kept copies' keys as a bit set (bit ``key % size``): an unkept copy whose bit
    is not set shares its type and id with no kept copy. It errs only towards "may"."""

    __slots__ = ("bits", "count", "mask")

    def __init__(self, size: int):
        """``size``: how many bits (a power of two, at least 8)."""
        self.bits = bytearray(size >> 3)
        self.mask = size - 1
        self.count = 0  # keys marked (a key marked twice counts twice)

    def mark(self, keys: Sequence[int]) -> None:
        bits, mask = self.bits, self.mask
        for key in keys:
            bits[(key & mask) >> 3] |= 1 << (key & 7)
        self.count += len(keys)

    def hits(self, keys: bytes) -> list[int]:
        """Where in a run's keys (64-bit integers) are those whose bit is set.

        >>> kept = KeyBits(64)
        >>> kept.mark([5])
        >>> kept.hits(array("q", [7, 5, 5 + 64, -3]).tobytes())
        [1, 2]
        """
        bits, mask = self.bits, self.mask
        return [
            index
            for index, key in enumerate(array("q", keys))
            if bits[(key & mask) >> 3] >> (key & 7) & 1
        ]

    def crowded(self) -> bool:
        """More keys than one per ``BITS_PER_KEY`` bits, and room to grow.

        >>> kept = KeyBits(64)
        >>> kept.mark(range(4)); kept.crowded()
        False
        >>> kept.mark([4]); kept.crowded()
        True
        """
        size = self.mask + 1
        return self.count * BITS_PER_KEY > size and size < MOST_BITS


def _marked(db: sqlite3.Connection, schema: str, bits: KeyBits) -> KeyBits:
    """``bits`` with the keys of a store's kept copies set (``schema``: that store, as
    attached), read from the arrays it wrote as it flushed (a cursor over its rows cost
    three times the marking)."""
    for (keys,) in db.execute(f"SELECT keys FROM {schema}.kept_keys"):
        bits.mark(array("q", keys))
    return bits


@dataclass(frozen=True, slots=True)
class Detached:
    """A shard store whose input has ended, for :meth:`SqliteStore.absorb` in another
    process: its folder, the positions it used, how many markers it holds (none: its
    rows need not be searched for them) and its counts by resource type."""

    folder: Path
    used: int
    markers: int
    resources_by_type: dict[str, int]


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """One patient's kept resources, still as stored bytes, and their relevance bits OR-ed."""

    patient_id: str
    touches: int
    bodies: tuple[bytes, ...]

    def resources(self) -> list[dict]:
        return [orjson.loads(body) for body in self.bodies]


class PatientStore(Protocol):
    """What the engines ask of a store: records in, duplicates settled, patients out."""

    def add(self, raw: RawResource, keep: int) -> None: ...
    def finish(self) -> None: ...
    def kept_by_patient(
        self, part: tuple[int, int] | None = None, needed: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[str, list[Kept]]]: ...
    def medication(self, medication_id: str) -> dict | None: ...


def _stamp(resource: dict, meta: object) -> str | None:
    """The raw ``meta.lastUpdated`` of a copy, as text (JSON text when it is not a string;
    the whole ``meta`` when that is not an object; ``null`` for a JSON null, which is no
    instant either): parsed only if the copy competes. None: absent."""
    stamp = meta.get("lastUpdated") if type(meta) is dict else meta
    if stamp is None:
        present = "lastUpdated" in meta if type(meta) is dict else "meta" in resource
        return "null" if present else None
    return stamp if type(stamp) is str else orjson.dumps(stamp).decode()


def instant(stamp: object, now: float) -> tuple[float, str | None]:
    """``meta.lastUpdated`` as a UTC timestamp for ordering copies, and why it does not
    count when it does not: absent, not a FHIR instant, or after ``now`` (all the oldest).

    >>> now = 1.9e9
    >>> instant("2026-01-02T03:04:05Z", now) > instant("2026-01-02T03:04:05+01:00", now)
    True
    >>> instant(None, now), instant("9999-01-01T00:00:00Z", now)[1]
    ((-inf, None), "meta.lastUpdated '9999-01-01T00:00:00Z' is after this run started")
    >>> instant("2026-01-02", now)[1]
    "meta.lastUpdated '2026-01-02' is not a FHIR instant"
    """
    if stamp is None:
        return _OLDEST, None
    if fhir_date(stamp, "instant") is None:
        return _OLDEST, f"meta.lastUpdated {show(stamp)} is not a FHIR instant"
    assert isinstance(stamp, str)
    text = stamp.replace("Z", "+00:00")
    if "." in text:  # Python before 3.11 takes at most six digits of a fraction
        head, tail = text.split(".", 1)
        digits = len(tail) - len(tail.lstrip("0123456789"))
        text = f"{head}.{tail[:digits][:6].ljust(6, '0')}{tail[digits:]}"
    try:
        moment = datetime.fromisoformat(text.replace(":60", ":59")).timestamp()
    except ValueError:
        return _OLDEST, f"meta.lastUpdated {show(stamp)} is not a FHIR instant"
    if moment > now:
        return _OLDEST, f"meta.lastUpdated {show(stamp)} is after this run started"
    return moment, None


@dataclass(frozen=True, slots=True)
class Copy:
    """One copy of a type and id: where it stood, its raw lastUpdated, its patient and its
    kept bytes (None: a copy the trial cannot use, which still competes)."""

    seen: int
    stamp: str | None
    patient: str | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class Settled:
    """What the duplicate rule keeps of one type and id, and what it says about it."""

    kept: list[Copy]  # the kept copies that stay (bodies marked doubtful where they must)
    duplicates: int  # copies counted once
    notes: list[Note]  # bad-last-updated, then conflicting-duplicate (its message last)
    owners: list[str]  # patients (sorted) whose card gets the conflicting-duplicate note


def settle(where: str, copies: list[Copy], now: float) -> Settled:
    """The rules pages' one duplicate rule over every copy of one type and id (``where``).

    Identical kept copies of one patient are one. Then the copy with the later
    ``meta.lastUpdated`` wins (an unreadable one counts as the oldest, and is noted), on
    a tie the first seen; a winner the trial cannot use retires every kept copy. Copies
    that disagree are noted, on the data quality and on each owner's card; if the choice
    rests on an unreadable lastUpdated, every kept copy stays, marked doubtful.

    >>> a = Copy(1, "2026-01-01T00:00:00Z", "p1", b'{"v":1}')
    >>> b = Copy(2, "2026-02-01T00:00:00Z")
    >>> out = settle("Observation/o1", [a, b], 1.9e9)
    >>> out.kept, out.duplicates, out.owners
    ([], 1, ['p1'])
    >>> settle("Observation/o1", [a, Copy(3, a.stamp, "p1", a.body)], 1.9e9).kept == [a]
    True
    """
    copies = sorted(copies, key=lambda c: c.seen)
    unique: list[Copy] = []
    for copy in copies:
        if copy.body is None or not any(
            c.body == copy.body and c.patient == copy.patient for c in unique if c.body
        ):
            unique.append(copy)
    duplicates = len(copies) - len(unique)
    kept = [c for c in unique if c.body is not None]
    if len(unique) < 2 or not kept:
        return Settled(kept, duplicates, [], [])
    ranked = []
    for copy in unique:
        moment, why = instant(copy.stamp, now)
        ranked.append(((moment, -copy.seen), copy, why))
    unreadable = [why for *_, why in ranked if why]
    notes = [
        Note("bad-last-updated", f"{why}; counted as the oldest copy", where)
        for why in dict.fromkeys(unreadable)
    ]
    winner = max(ranked, key=lambda r: r[0])[1]
    duplicates += len(unique) - 1
    if len(kept) == len(unique) and len({c.body for c in kept}) == 1:
        return Settled([winner], duplicates, notes, [])
    message = f"{len(unique)} copies of {where} differ in what the trial reads; " + (
        "the choice between them rests on a meta.lastUpdated that cannot be read, "
        "so every copy counts as one that cannot be read"
        if unreadable
        else "the copy with the later meta.lastUpdated (else the first seen) is used"
    )
    notes.append(Note("conflicting-duplicate", message, where))
    owners = sorted({c.patient for c in kept if c.patient is not None})
    if unreadable:
        doubted = []
        for copy in kept:
            resource = orjson.loads(copy.body)  # type: ignore[arg-type]
            resource[DOUBT] = [message]
            doubted.append(Copy(copy.seen, copy.stamp, copy.patient, orjson.dumps(resource)))
        return Settled(doubted, duplicates, notes, owners)
    return Settled([c for c in kept if c is winner], duplicates, notes, owners)


@contextmanager
def writing(folder: Path) -> Iterator[None]:
    """Turn a full disk (or an unwritable scratch folder) into one StoreError line."""
    try:
        yield
    except sqlite3.Error as error:
        raise StoreError(f"cannot write the scratch store in {folder}: {error}") from None
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EROFS):
            raise StoreError(
                f"cannot write the scratch store in {folder}: {error.strerror or error}"
            ) from None
        raise


class SqliteStore:
    """Patient-grouped resources in a temporary SQLite database."""

    def __init__(
        self,
        folder: Path | None = None,
        filtered_types: frozenset[str] | None = None,
        now: float | None = None,
    ):
        """``filtered_types``: the types whose copies may be kept or not by content
        (None: any type). A copy not kept still competes with a kept copy of the
        same type and id. ``now``: when the run started (a later lastUpdated does not
        count)."""
        with writing(folder or Path(tempfile.gettempdir())):
            self._folder = Path(tempfile.mkdtemp(prefix="fhir-cohort-", dir=folder))
        # 16 KiB pages (not 4): a kept record (about 1 KiB) rarely spills onto an overflow
        # page, which makes copying shards and building the indexes about a third cheaper
        # (a screen of 2,000 patients 10 % faster; 64 KiB gains little more and needs
        # more room on a nearly full disk). The page cache stays 2 MiB whatever the page.
        with writing(self._folder):
            self._db = sqlite3.connect(self._folder / "resources.sqlite3")
            self._db.executescript(
                "PRAGMA page_size = 16384;"
                + _SCRATCH
                + """
                CREATE TABLE resources (rtype TEXT, rid TEXT, patient TEXT, stamp TEXT,
                                        seen INTEGER, key INTEGER, touches INTEGER, body BLOB);
                CREATE INDEX medications ON resources (rid) WHERE rtype = 'Medication';
                CREATE TABLE patients (id TEXT PRIMARY KEY) WITHOUT ROWID;
                CREATE TABLE unkept (key INTEGER, stamp TEXT, seen INTEGER, rtype TEXT, rid TEXT);
                CREATE TABLE unkept_runs (keys BLOB, seen BLOB, stamps BLOB, ids BLOB);
                CREATE TABLE kept_keys (keys BLOB);
                """
            )
        self._now = time.time() if now is None else now
        self._filtered_types = filtered_types
        self.keep_ids = False  # keep the type and id of unkept copies (an engine settling them)
        self._rows: list[tuple] = []
        self._run = _Run()
        self._kept_bits: KeyBits | None = None  # kept_bits(), then kept up to date
        self._new_patients: list[tuple[str]] = []
        self._recent_patients: set[str] = set()  # bounded: cleared when large
        # Absorbed shards whose unkept copies are taken at finish(), and only those of a
        # type and id some kept copy has (the others compete with nothing): (folder, offset).
        self._shards: list[tuple[Path, int]] = []
        self._seen = 0
        self._markers = 0
        self.kept = 0
        self.duplicates = 0
        self.resources_by_type: dict[str, int] = {}
        self.notes: list[Note] = []  # what finish() found about duplicates
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
            stamp = _stamp(resource, resource.get("meta"))
            meta = resource.pop("meta", _ABSENT)
            text = resource.pop("text", _ABSENT)
            body = orjson.dumps(resource)  # what the trial reads: copies compare by it
            if meta is not _ABSENT:
                resource["meta"] = meta
            if text is not _ABSENT:
                resource["text"] = text
            self._rows.append(
                (
                    rtype,
                    resource["id"],
                    patient,
                    stamp,
                    self._seen,
                    hash((rtype, resource["id"])),
                    int(keep),
                    body,
                )
            )
        elif self._filtered_types is None or rtype in self._filtered_types:
            # Most resources land here: keep the raw stamp, parse it only if it competes.
            meta = resource.get("meta")
            stamp = meta.get("lastUpdated") if type(meta) is dict else meta
            if type(stamp) is not str:
                stamp = _stamp(resource, meta)
            run = self._run
            run.keys.append(hash((rtype, resource["id"])))
            run.seen.append(self._seen)
            run.stamps.append(stamp)
            if self.keep_ids:
                run.ids.append((rtype, resource["id"]))
        if not self._seen % _BATCH:
            self._flush()

    def add_marker(self, patient: str, kind: str, message: str, code: str = "") -> None:
        """Keep a doubt (``DOUBT_RECORD``) or a note (``NOTE_RECORD``) for a patient, if
        that patient exists; it does not make the patient exist."""
        self._seen += 1
        self._markers += 1
        rid, body = marker(kind, self._seen, message, code)
        self._rows.append((kind, rid, patient, None, self._seen, hash((kind, rid)), 1, body))

    def _flush(self) -> None:
        with writing(self._folder):
            self._db.executemany(
                "INSERT INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?)", self._rows
            )
            if self._rows:
                keys = array("q", [row[5] for row in self._rows])
                self._db.execute("INSERT INTO kept_keys VALUES (?)", (keys.tobytes(),))
                if self._kept_bits is not None:
                    self._kept_bits.mark(keys)
                    self._grown()
            if self._run.keys:
                self._db.execute("INSERT INTO unkept_runs VALUES (?, ?, ?, ?)", self._run.row())
            self._db.executemany("INSERT OR IGNORE INTO patients VALUES (?)", self._new_patients)
        self._rows.clear()
        self._run = _Run()
        self._new_patients.clear()
        if len(self._recent_patients) > _RECENT_PATIENTS:
            self._recent_patients.clear()

    def finish(self) -> None:
        """End of input: settle every type and id read more than once, index by patient."""
        self._flush()
        with writing(self._folder):
            self._db.execute("CREATE INDEX resources_by_key ON resources (key)")
            self._take_unkept(self.kept_bits())
            self._db.execute("CREATE INDEX unkept_by_key ON unkept (key)")
            # Identical copies (the same export read twice) agree whoever wins: one stays.
            # Only keys kept more than once are compared (found on the key index alone).
            identical = self._db.execute(
                "DELETE FROM resources WHERE rowid IN (SELECT r.rowid FROM resources r "
                "JOIN resources o ON o.key = r.key AND o.rowid < r.rowid AND o.body = r.body "
                "AND o.patient IS r.patient WHERE r.key IN "
                "(SELECT key FROM resources GROUP BY key HAVING count(*) > 1))"
            )
            self.duplicates += identical.rowcount
            # Keys in the order of their first copy (not of their hash, which is salted per
            # process): the markers settling adds are numbered the same in every run.
            keys = [
                key
                for key, _ in self._db.execute(
                    "SELECT key, min(seen) FROM resources WHERE key IN ("
                    "SELECT key FROM resources GROUP BY key HAVING count(*) > 1 "
                    "UNION SELECT u.key FROM " + _COMPETING + ") "
                    "GROUP BY key ORDER BY 2"
                )
            ]
            for key in keys:
                self._settle(key)
            # A patient's records' bits are read from this index alone (kept_by_patient).
            self._db.execute("CREATE INDEX resources_by_patient ON resources (patient, touches)")
            self._db.commit()

    def kept_bits(self) -> KeyBits:
        """The bit set of every kept copy's key: an unkept copy whose bit is not set
        competes with none (:func:`sift`). Made at the first call (a store that absorbs
        shards makes it at the first, and sets their bits as it absorbs them, while the
        workers read on), then kept up to date."""
        self._flush()
        if self._kept_bits is None:
            self._kept_bits = _marked(self._db, "main", KeyBits(FIRST_BITS))
            self._grown()
        return self._kept_bits

    def _grown(self) -> None:
        """Make the bit set four times larger (up to ``MOST_BITS``), from every kept key
        (all in ``kept_keys``), while it is crowded: building each size again costs at most
        4/3 of marking the keys once (each smaller size held a quarter as many)."""
        while self._kept_bits is not None and self._kept_bits.crowded():
            larger = KeyBits(min(4 * (self._kept_bits.mask + 1), MOST_BITS))
            self._kept_bits = None  # one set in memory at a time
            self._kept_bits = _marked(self._db, "main", larger)

    def shards(self) -> list[Path]:
        """The folders of the absorbed shards (to :func:`sift` before :meth:`finish`)."""
        return [folder for folder, _ in self._shards]

    def _take_unkept(self, bits: KeyBits) -> None:
        """Into the ``unkept`` table, the copies whose key some kept copy may have: this
        store's own, sifted here, and each absorbed shard's (at its offset), sifted here
        unless a worker did (the shards are only read)."""
        _sift(self._db, "main", bits)
        for folder, offset in self._shards:
            self._db.execute("ATTACH DATABASE ? AS shard", (str(folder / "resources.sqlite3"),))
            _sift(self._db, "shard", bits, offset)
            self._db.execute(
                "INSERT INTO unkept SELECT key, stamp, seen + ?, rtype, rid FROM shard.unkept",
                (offset,),
            )
            self._db.commit()
            self._db.execute("DETACH DATABASE shard")
            shutil.rmtree(folder, ignore_errors=True)
        self._shards.clear()

    def _settle(self, key: int) -> None:
        """One type and id read several times: keep the winner, note what disagreed."""
        kept = self._db.execute(
            "SELECT rowid, rtype, rid, patient, stamp, seen, body FROM resources WHERE key = ?",
            (key,),
        ).fetchall()
        unkept = self._db.execute("SELECT stamp, seen FROM unkept WHERE key = ?", (key,)).fetchall()
        copies = [Copy(seen, stamp, patient, body) for _, _, _, patient, stamp, seen, body in kept]
        copies += [Copy(seen, stamp) for stamp, seen in unkept]
        outcome = settle(f"{kept[0][1]}/{kept[0][2]}", copies, self._now)
        self.duplicates += outcome.duplicates
        self.notes += outcome.notes
        for owner in outcome.owners:
            self.add_marker(owner, NOTE_RECORD, outcome.notes[-1].message, "conflicting-duplicate")
        survivors = {copy.seen: copy.body for copy in outcome.kept}
        for rowid, *_, seen, body in kept:
            if seen not in survivors:
                self._db.execute("DELETE FROM resources WHERE rowid = ?", (rowid,))
            elif survivors[seen] != body:
                self._db.execute(
                    "UPDATE resources SET body = ? WHERE rowid = ?", (survivors[seen], rowid)
                )
        self._flush()

    @property
    def distinct_kept(self) -> int:
        return self.kept - self.duplicates

    # -- shards: one store per part of the input, merged in source order ----------
    def detach(self) -> Detached:
        """End of a shard's input (before :meth:`finish`): what :meth:`absorb` takes in
        another process (or an engine reads out with :func:`unkept_copies`)."""
        self._flush()
        with writing(self._folder):
            self._db.commit()
        self._db.close()
        return Detached(self._folder, self._seen, self._markers, self.resources_by_type)

    def absorb(self, shard: Detached) -> None:
        """Append a detached shard, read after everything absorbed so far: its positions
        (and the ids of its markers, which are made from them) follow on, and its counts
        add up, as if one store had read both. Its unkept copies wait for :meth:`finish`
        (sifted there, or before in a worker: :func:`sift`), which removes its folder."""
        bits = self.kept_bits()  # (everything read so far flushed first)
        offset, plain = self._seen, "rtype NOT IN (?, ?)"
        markers: list[tuple[str, bytes, int]] = []
        with writing(self._folder):
            path = str(shard.folder / "resources.sqlite3")
            self._db.execute("ATTACH DATABASE ? AS shard", (path,))
            kept = self._db.execute(
                "INSERT INTO resources SELECT rtype, rid, patient, stamp, seen + ?, key, touches,"
                f" body FROM shard.resources WHERE {plain} ORDER BY rowid",
                (offset, DOUBT_RECORD, NOTE_RECORD),
            )
            self._db.execute("INSERT OR IGNORE INTO patients SELECT id FROM shard.patients")
            self._db.execute("INSERT INTO kept_keys SELECT keys FROM shard.kept_keys")
            _marked(self._db, "shard", bits)
            self._grown()
            if shard.markers:
                markers = self._db.execute(
                    "SELECT patient, body, seen FROM shard.resources "
                    f"WHERE NOT {plain} ORDER BY rowid",
                    (DOUBT_RECORD, NOTE_RECORD),
                ).fetchall()
            self._db.commit()
            self._db.execute("DETACH DATABASE shard")
        for patient, body, seen in markers:
            marker = orjson.loads(body)
            self._seen = offset + seen - 1
            self.add_marker(patient, marker["resourceType"], marker["message"], marker["code"])
        self._seen = offset + shard.used
        self.kept += kept.rowcount
        for kind, count in shard.resources_by_type.items():
            self.resources_by_type[kind] = self.resources_by_type.get(kind, 0) + count
        self._shards.append((shard.folder, offset))

    # -- reading -----------------------------------------------------------
    def kept_by_patient(
        self, part: tuple[int, int] | None = None, needed: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[str, list]]:
        """Each patient (sorted by id) with their kept records (:func:`kept_by_patient`)."""
        return kept_by_patient(self._db, part, needed)

    def patients(self) -> Iterator[PatientRecord]:
        """Each patient (sorted by id) with their kept resources, unparsed."""
        for patient, kept in self.kept_by_patient():
            touches = 0
            for record in kept:
                touches |= record.touches
            yield PatientRecord(patient, touches, tuple(r.body for r in kept if r.body is not None))

    def patient_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM patients").fetchone()[0]

    def _medication(self, medication_id: str) -> dict | None:
        return medication(self._db, medication_id)

    @property
    def path(self) -> Path:
        """The database file (to be opened read-only by :class:`StoreReader`)."""
        return self._folder / "resources.sqlite3"

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def partition(patient_id: str, parts: int) -> int:
    """A patient's part of ``parts``, stable across processes and machines (CRC-32).

    >>> partition("p01", 2), partition("p01", 2) == partition("p01", 2)
    (1, True)
    """
    return zlib.crc32(patient_id.encode()) % parts


def kept_by_patient(
    db: sqlite3.Connection,
    part: tuple[int, int] | None = None,
    needed: Callable[[int], bool] | None = None,
) -> Iterator[tuple[str, list[Kept]]]:
    """Each patient (sorted by id) with their kept records, in source order.

    ``needed`` is told a patient's relevance bits OR-ed and says whether deciding them
    reads their records (None: always). A patient it says no to comes with one record
    that stands for all of theirs: those bits, no body. Their bodies are never read:
    for a trial of a rare disease that is nearly every patient, and reading the bodies
    was most of the time spent deciding them. With ``part`` (i, n), only the patients
    whose :func:`partition` of n is i.
    """
    where, args = "", cast(tuple, ())
    if part is not None:
        db.create_function("part", 2, partition, deterministic=True)
        where, args = "WHERE part(p.id, ?) = ?", (part[1], part[0])
    cursor = db.execute(PATIENT_BITS.format(where=where), args)
    for patient, rows in groupby(cursor, key=itemgetter(0)):
        touches = 0
        found = False
        for _, bits in rows:
            if bits is not None:  # None: a patient without kept records (the LEFT JOIN)
                touches |= bits
                found = True
        if not found:
            yield patient, []
        elif needed is None or needed(touches):
            records = db.execute(
                "SELECT seen, touches, body FROM resources WHERE patient = ? ORDER BY seen",
                (patient,),
            )
            yield patient, [Kept(*record) for record in records]
        else:
            yield patient, [Kept(0, touches, None)]


def _sift(db: sqlite3.Connection, schema: str, bits: KeyBits, offset: int = 0) -> None:
    """Into the ``unkept`` table of the connection's own store, the copies of a store's
    unkept runs (``schema``: that store, as attached) whose bit is set, their positions
    moved on by ``offset``; a run at a time, so memory stays flat."""
    for row in db.execute(f"SELECT * FROM {schema}.unkept_runs ORDER BY rowid"):
        if hits := bits.hits(row[0]):
            run = _Run.read(row)
            db.executemany(
                "INSERT INTO main.unkept VALUES (?, ?, ?, ?, ?)",
                [
                    (run.keys[i], run.stamps[i], run.seen[i] + offset)
                    + (run.ids[i] if run.ids else _NO_ID)
                    for i in hits
                ],
            )


def sift(folder: Path, bits: KeyBits) -> None:
    """A detached shard's unkept copies that may compete (``bits``: the run's
    :meth:`SqliteStore.kept_bits`), sifted in the shard itself: in a worker, so that
    :meth:`SqliteStore.finish` only copies them."""
    with writing(folder):
        db = sqlite3.connect(folder / "resources.sqlite3")
        try:
            db.executescript(_SCRATCH)
            _sift(db, "main", bits)
            db.execute("DELETE FROM unkept_runs")  # finish() copies what was taken, no more
            db.commit()
        finally:
            db.close()


def unkept_copies(db: sqlite3.Connection) -> Iterator[tuple[str, str, str | None, int]]:
    """A detached store's unkept copies in the order read (it kept their types and ids,
    ``keep_ids``): type, id, raw stamp, position."""
    for row in db.execute("SELECT * FROM unkept_runs ORDER BY rowid"):
        run = _Run.read(row)
        assert len(run.ids) == len(run.keys), "the store did not keep the ids (keep_ids)"
        for (rtype, rid), stamp, seen in zip(run.ids, run.stamps, run.seen, strict=True):
            yield rtype, rid, stamp, seen


def medication(db: sqlite3.Connection, medication_id: str) -> dict | None:
    row = db.execute(MEDICATION_BY_ID, (medication_id,)).fetchone()
    return orjson.loads(row[0]) if row else None


class StoreReader:
    """A finished store, opened read-only by another process (a worker deciding its part
    of the patients)."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        self.medication = lru_cache(maxsize=4096)(partial(medication, self._db))

    def kept_by_patient(
        self, part: tuple[int, int] | None = None, needed: Callable[[int], bool] | None = None
    ) -> Iterator[tuple[str, list]]:
        return kept_by_patient(self._db, part, needed)

    def close(self) -> None:
        self._db.close()
