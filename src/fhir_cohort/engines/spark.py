"""The Spark engine: the same screen where the data lives, on a cluster or ``local[N]``.

Rule: the answer is the embedded engine's, byte for byte; only the work moves. Local
files up to 64 MiB are read as bytes through the Hadoop filesystem (``binaryFiles``),
larger ones in line-aligned parts from their path (which executors must see as the
driver does: a JVM array cannot hold a large file whole); sources given as URIs
(``hdfs://``, ``s3a://`` through the cluster's own connector) are listed by the
cluster's filesystem and each file read whole (up to 1 GiB), each by the file source's own
reader and gate on an executor (so the bad-data rules hold and what the trial cannot use is dropped
there), into rows that carry their position in the source order (numbered as one
reader would, from each file's count). Copies of one type and id are settled by the
one duplicate rule (:func:`fhir_cohort.store.settle`) grouped by key, the survivors
grouped by patient and each patient decided by :func:`fhir_cohort.decide.decide`,
with the trial and the Medications broadcast. The driver receives per-file counts and
notes, the Medications, the few conflicts to number, and the decisions of the
patients past the gate: never the records.

Python's ``hash`` (the store's key of a type and id) is salted per process, so the
executors run with ``PYTHONHASHSEED=0`` (set for ``local`` masters here; set
``spark.executorEnv.PYTHONHASHSEED=0`` on a cluster, as the README shows).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from urllib.parse import unquote, urlsplit

import orjson

from ..criteria.language import Trial
from ..criteria.plan import CODED
from ..errors import UsageError
from ..pipeline import MAX_UNATTACHED, Screening, _Unattached, pool_gates
from ..quality import DataQuality
from ..sources import DOUBT_RECORD, NOTE_RECORD, ProgressStart, ResourceSource, SourceError
from ..sources.files import MIB, FilePart, FileSource, is_data_file
from ..store import Copy, Kept, SqliteStore, marker, settle, unkept_copies
from .embedded import (
    Share,
    base_of,
    context_for,
    decide_share,
    ingest,
    merge_shares,
    no_progress,
    note_duplicates,
    screenings,
)

_MARKERS = (DOUBT_RECORD, NOTE_RECORD)
WHOLE = 64 * MIB  # files this small are read whole, as bytes, through the Hadoop filesystem
# A file on a Hadoop filesystem (no path the executors share) is read whole, as one JVM
# byte array: at most 2 GiB, and it must fit the executor's heap with room to spare.
LARGEST_REMOTE = 1024 * MIB
# Spark's JVM logging for a --quiet screen in local mode: errors only.
QUIET_LOGGING = Path(__file__).with_name("log4j2-quiet.properties")


@contextmanager
def _environment_defaults(values: dict[str, str]) -> Iterator[None]:
    """Defaults for the JVM a session starts, through the environment it inherits
    (restored after) rather than Spark settings, which would replace a user's own: the
    driver's memory (``SPARK_DRIVER_MEMORY``, below a ``spark.driver.memory`` of theirs)
    and quiet logging (log4j's ``LOG4J_CONFIGURATION_FILE``, below a
    ``-Dlog4j2.configurationFile`` in their ``spark.driver.extraJavaOptions``). A
    variable the user set stays theirs."""
    added = [name for name in values if name not in os.environ]
    os.environ.update({name: values[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


@dataclass
class _Read:
    """One file read on an executor: its counts and notes (to the driver), its rows."""

    order: tuple[int, int]  # the file's place in the source, the part's first byte
    used: int
    quality: DataQuality
    unattached: list[dict]
    resources_by_type: dict[str, int]
    patients: list[str]
    rows: list[tuple]  # (rtype, rid, patient, stamp, seen, touches, body); body None: unkept


def _read_file(item: tuple[str, bytes], files: dict, source: FileSource, trials, now) -> _Read:
    """Read one whole file's bytes (from the Hadoop filesystem) with the file source's
    reader, as if it were at its own path."""
    uri, content = item
    index, name = files[uri]
    folder = Path(tempfile.mkdtemp(prefix="fhir-cohort-spark-"))
    try:
        path = folder / Path(name).name
        path.write_bytes(content)
        return _read_part(FilePart(index, path, name=name), source, trials, now)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _read_part(part: FilePart, source: FileSource, trials, now) -> _Read:
    """Read one part of the files into a private shard, and take its rows out."""
    quality = DataQuality()
    store = SqliteStore(None, filtered_types=CODED, now=now)
    store.keep_ids = True
    unattached = _Unattached(quality, store)
    raws = source.read_part(part, quality.add, no_progress)
    ingest(raws, pool_gates(trials), store, unattached)
    shard = store.detach()
    try:
        db = sqlite3.connect(shard.folder / "resources.sqlite3")
        rows = db.execute(
            "SELECT rtype, rid, patient, stamp, seen, touches, body FROM resources ORDER BY rowid"
        ).fetchall()
        rows += [
            (rtype, rid, None, stamp, seen, 0, None)
            for rtype, rid, stamp, seen in unkept_copies(db)
        ]
        patients = [p for (p,) in db.execute("SELECT id FROM patients")]
        db.close()
    finally:
        shutil.rmtree(shard.folder, ignore_errors=True)
    return _Read(
        (part.index, part.start),
        shard.used,
        quality,
        unattached.records,
        store.resources_by_type,
        patients,
        rows,
    )


def _placed(read: _Read, offsets: dict[tuple[int, int], int]) -> Iterator[tuple]:
    """A file's rows at their positions in the whole input (marker ids made from them)."""
    offset = offsets[read.order]
    for rtype, rid, patient, stamp, seen, touches, body in read.rows:
        seen += offset
        if rtype in _MARKERS:
            found = orjson.loads(body)
            rid, body = marker(rtype, seen, found["message"], found["code"])
        yield (rtype, rid), (seen, stamp, patient, touches, body)


def _settled(key: tuple, copies: Iterable[tuple], now: float) -> Iterator[tuple]:
    """The duplicate rule over one type and id: ("row", patient, Kept) for what stays,
    ("conflict", first seen, notes, owners, duplicates) for the driver."""
    copies = sorted(copies)
    if len(copies) == 1:
        seen, _, patient, touches, body = copies[0]
        if body is not None:
            yield "row", patient, Kept(seen, touches, body), key
        return
    touches = {seen: bits for seen, _, _, bits, _ in copies}
    outcome = settle(
        f"{key[0]}/{key[1]}",
        [Copy(seen, stamp, patient, body) for seen, stamp, patient, _, body in copies],
        now,
    )
    for copy in outcome.kept:
        assert copy.body is not None  # settle keeps only copies the trial can use
        yield "row", copy.patient, Kept(copy.seen, touches[copy.seen], copy.body), key
    if outcome.duplicates or outcome.notes:  # in the order of each key's first kept copy
        first = min(seen for seen, *_, body in copies if body is not None)
        yield "conflict", first, outcome.notes, outcome.owners, outcome.duplicates


class Spark:
    """``master``: a Spark master URL (default ``local[*]``, or the one spark-submit set)."""

    def __init__(
        self, master: str | None = None, whole: int = WHOLE, largest_remote: int = LARGEST_REMOTE
    ):
        """``whole``: local files below this many bytes are read whole through Hadoop;
        ``largest_remote``: the largest file on a Hadoop filesystem read (whole)."""
        self.master, self.whole, self.largest_remote = master, whole, largest_remote

    def session(self, quiet: bool = False):
        """The Spark session (an existing one as it is). ``quiet``: no stage progress
        bars, and in local mode the JVM logs errors only (:data:`QUIET_LOGGING`)."""
        try:
            from pyspark.sql import SparkSession
        except ImportError:
            raise UsageError(
                "--engine spark needs pyspark: pip install 'fhir-cohort[spark]'"
            ) from None
        builder = SparkSession.builder.appName("fhir-cohort")
        if self.master:
            builder = builder.master(self.master)
        if quiet:
            builder = builder.config("spark.ui.showConsoleProgress", "false")
        local = (self.master or "local").startswith("local")
        defaults = {}  # for the JVM this process starts (under spark-submit, the cluster's)
        if local:
            # Kept, not among the restored defaults: pyspark checks this process's own
            # environment for it whenever it hashes keys (rdd.portable_hash).
            os.environ.setdefault("PYTHONHASHSEED", "0")
            builder = builder.config("spark.executorEnv.PYTHONHASHSEED", "0")
            defaults["SPARK_DRIVER_MEMORY"] = "2g"  # local: the driver is the executor
            if quiet:
                defaults["LOG4J_CONFIGURATION_FILE"] = QUIET_LOGGING.as_uri()
        with _environment_defaults(defaults):
            return builder.getOrCreate()

    def screen(
        self,
        sources: Iterable[ResourceSource],
        trials: list[Trial],
        as_of: date,
        progress: ProgressStart | None = None,
        workdir: Path | None = None,
        now: float | None = None,
    ) -> list[Screening]:
        sources = list(sources)
        if len(sources) != 1 or not isinstance(sources[0], FileSource):
            raise UsageError("--engine spark reads files (--source), not a server")
        source = sources[0]
        now = time.time() if now is None else now
        spark = self.session(quiet=progress is None)
        context = spark.sparkContext
        quality = DataQuality()
        read_by_type: dict[str, int] = {}
        files = {str(path.resolve()): (n, str(path)) for n, path in enumerate(source.files)}
        remote = _listed(spark, source.uris)
        for uri, size in remote:
            if size > self.largest_remote:
                raise UsageError(
                    f"{uri} is {size / MIB:,.0f} MiB: a file on a Hadoop filesystem is read "
                    f"whole by one executor, up to {self.largest_remote / MIB:,.0f} MiB; "
                    "export it in smaller parts (Bulk exports split large types) or copy it "
                    "to a path every executor sees"
                )
            files[_local(uri)] = (len(files), uri)
        shared = context.broadcast((files, trials))

        def read(item: tuple[str, bytes]) -> _Read:
            found, trials_ = shared.value
            return _read_file((_local(item[0]), item[1]), found, source, trials_, now)

        def read_part(part: FilePart) -> _Read:
            return _read_part(part, source, shared.value[1], now)

        # Files up to WHOLE are read as bytes through the Hadoop filesystem; a larger one
        # (a JVM array holds at most 2 GiB, and the executor's heap less) is read in
        # line-aligned parts from its path, which the executors must see as the driver does.
        parts = source.parts(context.defaultParallelism, smallest=self.whole)
        small = [
            p
            for p in parts
            if p.end is None and p.start == 0 and p.path.stat().st_size < self.whole
        ]
        large = [p for p in parts if p not in small]
        reads = context.parallelize(large, max(1, len(large))).map(read_part)
        wholes = [p.path.resolve().as_uri() for p in small] + [uri for uri, _ in remote]
        if wholes:
            whole = context.binaryFiles(",".join(wholes), minPartitions=len(wholes)).map(read)
            reads = reads.union(whole)
        reads = reads.cache()
        summaries = sorted(
            reads.map(
                lambda r: (
                    r.order,
                    r.used,
                    r.quality,
                    r.unattached,
                    r.resources_by_type,
                )
            ).collect()
        )
        offsets: dict[tuple[int, int], int] = {}
        position, unattached = 0, []
        for order, used, shard_quality, records, by_type in summaries:
            offsets[order] = position
            position += used
            quality = quality.merge(shard_quality)
            unattached += records
            for kind, count in by_type.items():
                read_by_type[kind] = read_by_type.get(kind, 0) + count
        if len(unattached) > MAX_UNATTACHED:
            raise UsageError(
                f"more than {MAX_UNATTACHED} records name no patient: run --engine embedded"
            )
        placed = context.broadcast(offsets)
        settled = (
            reads.flatMap(lambda r: _placed(r, placed.value))
            .groupByKey()
            .flatMap(lambda kv: _settled(kv[0], kv[1], now))
            .cache()
        )
        conflicts = sorted(c for c in settled.filter(lambda x: x[0] == "conflict").collect())
        duplicates = sum(c[4] for c in conflicts)
        medications: dict[str, tuple[int, bytes]] = {}
        for _, _, kept, key in settled.filter(
            lambda x: x[0] == "row" and x[3][0] == "Medication"
        ).collect():
            if key[1] not in medications or kept.position < medications[key[1]][0]:
                medications[key[1]] = (kept.position, kept.body)
        table = {rid: orjson.loads(body) for rid, (_, body) in medications.items()}
        note_duplicates(quality, duplicates)
        markers = []
        for _, _, notes, owners, _ in conflicts:
            for note in notes:
                quality.add(note)
            for owner in owners:
                position += 1
                _, body = marker(NOTE_RECORD, position, notes[-1].message, "conflicting-duplicate")
                markers.append((owner, Kept(position, 1, body)))
        ran = context_for(trials, as_of, base_of(sources), unattached, table.get, quality)
        shared_run = context.broadcast((ran, table))
        patients = reads.flatMap(lambda r: [(p, None) for p in r.patients])
        rows = settled.filter(lambda x: x[0] == "row" and x[1] is not None).map(
            lambda x: (x[1], x[2])
        )
        grouped = (
            patients.union(rows)
            .union(context.parallelize(markers, 1))
            .groupByKey()
            .mapPartitions(lambda part: _decide_partition(part, shared_run.value))
        )
        funnels, listings = merge_shares(ran, grouped.collect(), quality, workdir)
        reads.unpersist()
        settled.unpersist()
        return screenings(ran, funnels, quality, listings, read_by_type, {"files": len(files)})


def _listed(spark, uris: list[str]) -> list[tuple[str, int]]:
    """The data files under each URI, as the cluster's Hadoop filesystem lists them
    (recursively, each folder's files in name order, as local folders are): the URI
    binaryFiles will name each by, and its size."""
    if not uris:
        return []
    jvm, conf = spark._jvm, spark._jsc.hadoopConfiguration()
    found: list[tuple[str, int]] = []
    for uri in uris:
        path = jvm.org.apache.hadoop.fs.Path(uri)
        try:
            system = path.getFileSystem(conf)
            listing = system.listFiles(path, True)
            mine = []
            while listing.hasNext():
                status = listing.next()
                name = status.getPath().toString()
                if is_data_file(Path(urlsplit(name).path)):
                    mine.append((name, int(status.getLen())))
        except Exception as error:  # a py4j error carries the Java exception's text
            first = str(error).strip().splitlines()[-1:] or ["unknown error"]
            raise SourceError(f"cannot list {uri}: {first[0][:300]}") from None
        if not mine:
            raise SourceError(f"source {uri} holds no .ndjson or .json files")
        found += sorted(mine)
    return found


def _local(uri: str) -> str:
    """The path of a ``file:`` URI as binaryFiles gives it (``file:/x``); others as they are.

    >>> _local("file:/data/a%20b.ndjson"), _local("hdfs://nn/x.ndjson")
    ('/data/a b.ndjson', 'hdfs://nn/x.ndjson')
    """
    parsed = urlsplit(uri)
    return unquote(parsed.path) if parsed.scheme == "file" else uri


def _decide_partition(part, run) -> Iterator[Share]:
    context, table = run
    # A patient exists when a record names them (the None each brings); rows alone (a
    # doubt or a note about a patient no record names) do not make one, as in the store.
    groups = ((p, list(kept)) for p, kept in sorted(part))
    patients = ((p, [k for k in kept if k is not None]) for p, kept in groups if None in kept)
    yield decide_share(patients, table.get, context, pool_gates(list(context.trials)))
