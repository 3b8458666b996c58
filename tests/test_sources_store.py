"""File sources (NDJSON, gzip, Bundles) and the SQLite patient store (de-duplication,
retirement of superseded copies, a private temporary folder)."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
import stat
from array import array
from contextlib import closing
from pathlib import Path

import pytest
from builders import LOINC, SNOMED, concept, observation, patient, sle

from fhir_cohort import store as store_module
from fhir_cohort.pipeline import pool_gates
from fhir_cohort.sources import RawResource, SourceError, files
from fhir_cohort.sources.files import FileSource
from fhir_cohort.store import BITS_PER_KEY, MEDICATION_BY_ID, Detached, KeyBits, SqliteStore, sift


def read_all(source: FileSource) -> tuple[list[RawResource], list]:
    notes: list = []
    done: list[int] = []
    resources = list(source.read(notes.append, done.append))
    assert sum(done) == source.total_work()  # progress reports every byte read
    return resources, notes


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- FileSource


def test_ndjson_lines_are_read_with_file_line_and_patient(tmp_path):
    path = write_ndjson(
        tmp_path / "data.ndjson",
        [patient("a"), sle("c1", pid="a"), observation("o1", "5048-4", pid="b")],
    )
    resources, notes = read_all(FileSource(path))
    assert notes == []
    assert [(r.resource["id"], r.where, r.patient) for r in resources] == [
        ("a", f"{path}:1", "a"),
        ("c1", f"{path}:2", "a"),
        ("o1", f"{path}:3", "b"),
    ]


def test_parts_of_a_file_name_its_lines_and_count_them_only_for_a_note(tmp_path, monkeypatch):
    """A part numbers its lines as the whole file does, in every record and note, and
    reads the file up to its start to count them only when a note or a record's place
    is asked for (a clean part never is)."""
    records = [observation(f"o{i}", "5048-4", pid="a") for i in range(40)]
    path = write_ndjson(tmp_path / "data.ndjson", records)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[25] = b'{"resourceType": "Observation", "id": \n'  # not JSON
    lines[31] = b'{"resourceType": "Observation", "id": "x", "subject": {}}\n'  # nobody's
    path.write_bytes(b"".join(lines))
    source = FileSource(path)
    whole, whole_notes = read_all(source)
    counted = []
    count = files._Span.lines_before
    monkeypatch.setattr(
        files._Span, "lines_before", lambda span: counted.append(span) or count(span)
    )
    parts = source.parts(4, smallest=1)
    assert len(parts) == 4 and parts[1].start > 0
    read, notes = [], []
    for part in parts:
        read += source.read_part(part, notes.append, lambda _: None)
    assert len(counted) == 1  # for the note on line 26 only
    assert notes == whole_notes and [n.where for n in notes] == [f"{path}:26"]
    assert [(r.where, r.patient, r.unreadable) for r in read] == [
        (r.where, r.patient, r.unreadable) for r in whole
    ]
    assert [r.where for r in read if r.patient is None] == [f"{path}:26", f"{path}:32"]
    assert len(counted) == len({id(span) for span in counted}) == 3  # once for each later part
    clean = FileSource(write_ndjson(tmp_path / "clean.ndjson", records))
    counted.clear()
    sinks = (notes.append, lambda _: None)
    read = [r for part in clean.parts(4, smallest=1) for r in clean.read_part(part, *sinks)]
    assert len(read) == 40 and counted == []


def test_parts_read_ahead_give_the_whole_files_records_notes_and_bytes(tmp_path):
    """A part is read through a read-ahead buffer and stops at its end, wherever the
    buffer's refills fall: over-long lines longer than the buffer (skipped in pieces)
    and lines on either side of a part's bounds give what one reader of the whole file
    gives, and the progress adds up to every byte once."""
    huge = files._BUFFER * 3 // 2
    records = [observation(f"o{i}", "5048-4", pid=f"p{i % 7}") for i in range(300)]
    lines = [json.dumps(r).encode() + b"\n" for r in records]
    head = b'{"resourceType": "Observation", "subject": {"reference": "Patient/p3"}, "n": "'
    for at in (0, 100, 150, 299):  # first and last line, and near the middle bound
        lines[at] = head + b"x" * huge + b'"}\n'
    path = tmp_path / "data.ndjson"
    path.write_bytes(b"".join(lines))
    source = FileSource(path, limits=files.FileLimits(line=64 * 1024))
    whole, whole_notes = read_all(source)
    for pieces in (2, 3, 5):
        parts = source.parts(pieces, smallest=1)
        assert 1 < len(parts) <= pieces  # bounds that fall in one long line are one
        read, notes, done = [], [], []
        for part in parts:
            read += source.read_part(part, notes.append, done.append)
        assert sum(done) == path.stat().st_size
        assert notes == whole_notes and len(notes) == 4
        assert [n.where for n in notes] == [f"{path}:{at + 1}" for at in (0, 100, 150, 299)]
        assert [(r.where, r.patient, r.unreadable, r.resource) for r in read] == [
            (r.where, r.patient, r.unreadable, r.resource) for r in whole
        ]
    assert len(whole) == 300 and sum(r.unreadable is not None for r in whole) == 4


def test_gzipped_ndjson_is_read(tmp_path):
    path = tmp_path / "Condition.000.ndjson.gz"
    lines = "".join(json.dumps(r) + "\n" for r in [sle("c1", pid="a"), sle("c2", pid="b")])
    path.write_bytes(gzip.compress(lines.encode(), mtime=0))
    resources, notes = read_all(FileSource(path))
    assert notes == []
    assert [(r.resource["id"], r.patient, r.where) for r in resources] == [
        ("c1", "a", f"{path}:1"),
        ("c2", "b", f"{path}:2"),
    ]


@pytest.mark.parametrize("bundle_type", ["transaction", "searchset", "collection"])
def test_bundle_urn_uuid_references_resolve_to_the_patient(tmp_path, bundle_type):
    """A Bundle's ``urn:uuid:`` references are resolved to ``Patient/<id>`` inside it."""
    pat_url = "urn:uuid:6f1c7e9a-0000-4000-8000-000000000001"
    med_url = "urn:uuid:6f1c7e9a-0000-4000-8000-000000000009"
    cond = sle("c1", pid="ignored")
    cond["subject"] = {"reference": pat_url}
    ms = {
        "resourceType": "MedicationStatement",
        "id": "ms1",
        "status": "active",
        "subject": {"reference": pat_url},
        "medicationReference": {"reference": med_url},
    }
    med = {"resourceType": "Medication", "id": "med1", "code": concept(SNOMED, "1")}
    entries = [
        {"fullUrl": pat_url, "resource": patient("pat-1")},
        {"fullUrl": "urn:uuid:6f1c7e9a-0000-4000-8000-000000000002", "resource": cond},
        {"fullUrl": "urn:uuid:6f1c7e9a-0000-4000-8000-000000000003", "resource": ms},
        {"fullUrl": med_url, "resource": med},
    ]
    if bundle_type == "transaction":
        for entry in entries:
            resource = entry["resource"]
            entry["request"] = {
                "method": "PUT",
                "url": f"{resource['resourceType']}/{resource['id']}",
            }
        entries.append({"request": {"method": "DELETE", "url": "Observation/gone"}})
    if bundle_type == "searchset":
        for entry in entries:
            entry["search"] = {"mode": "match"}
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": bundle_type, "entry": entries}))
    resources, notes = read_all(FileSource(path))
    assert notes == []
    got = {r.resource["id"]: r for r in resources}
    assert set(got) == {"pat-1", "c1", "ms1", "med1"}
    assert got["c1"].patient == "pat-1"
    assert got["c1"].resource["subject"]["reference"] == "Patient/pat-1"
    assert got["ms1"].patient == "pat-1"
    assert got["ms1"].resource["medicationReference"]["reference"] == "Medication/med1"
    assert got["med1"].patient is None
    assert got["c1"].where == f"{path}#entry[1]"


def test_folder_is_read_recursively_in_sorted_order_skipping_hidden_and_logs(tmp_path):
    (tmp_path / "sub").mkdir()
    write_ndjson(tmp_path / "b.ndjson", [sle("c-b", pid="p")])
    write_ndjson(tmp_path / "sub" / "a.ndjson", [sle("c-a", pid="p")])
    write_ndjson(tmp_path / ".hidden.ndjson", [sle("c-hidden", pid="p")])
    write_ndjson(tmp_path / "log.ndjson", [{"event": "export started"}])
    (tmp_path / "notes.txt").write_text("not data")
    resources, notes = read_all(FileSource(tmp_path))
    assert notes == []
    assert [r.resource["id"] for r in resources] == ["c-b", "c-a"]


def test_missing_path_raises_source_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SourceError, match=re.escape(f"source {missing} does not exist")):
        FileSource(missing)


def test_folder_without_data_files_raises_source_error(tmp_path):
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(SourceError, match=re.escape("holds no .ndjson or .json files")):
        FileSource(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=re.escape("holds no .ndjson or .json files")):
        FileSource(empty)


# --------------------------------------------------------------------------- store helpers


def _load(store: SqliteStore, resources: list[dict], keep=lambda r: True) -> None:
    for index, resource in enumerate(resources, start=1):
        patient_id = resource.get("subject", {}).get("reference", "Patient/").split("/")[-1]
        if resource["resourceType"] == "Patient":
            patient_id = resource["id"]
        store.add(RawResource(resource, f"mem:{index}", patient_id or None), keep(resource))
    store.finish()


def _stored(store: SqliteStore) -> dict[str, list[dict]]:
    """Each patient's stored resources (without the store's own notes and doubts)."""
    return {
        record.patient_id: [r for r in record.resources() if not r["resourceType"].startswith("_")]
        for record in store.patients()
    }


def _versioned(value: str, updated: str | None, rid: str = "o1") -> dict:
    obs = observation(rid, "5048-4", pid="a", valueString=value)
    if updated:
        obs["meta"] = {"lastUpdated": updated}
    return obs


# --------------------------------------------------------------------------- duplicates


@pytest.mark.parametrize("order", ["older-first", "newer-first"])
def test_duplicate_later_last_updated_wins_in_any_order(tmp_path, order):
    """Rules page R14: same type+id is one piece of evidence; later meta.lastUpdated wins."""
    old = _versioned("1:40", "2026-01-01T00:00:00Z")
    new = _versioned("1:640", "2026-03-01T00:00:00+01:00")
    resources = [old, new] if order == "older-first" else [new, old]
    with SqliteStore(tmp_path) as store:
        _load(store, [patient("a"), *resources])
        assert store.kept == 3
        assert store.distinct_kept == 2
        stored = _stored(store)["a"]
        observations = [r for r in stored if r["resourceType"] == "Observation"]
        assert [o["valueString"] for o in observations] == ["1:640"]


def test_duplicate_without_last_updated_first_seen_wins(tmp_path):
    """R14: without meta.lastUpdated, the first copy seen wins."""
    with SqliteStore(tmp_path) as store:
        _load(store, [_versioned("first", None), _versioned("second", None)])
        assert store.distinct_kept == 1
        assert [o["valueString"] for o in _stored(store)["a"]] == ["first"]


def test_later_version_outside_every_valueset_retires_the_kept_copy(tmp_path, trial):
    """store.py docstring + R14: a later version the trial cannot use (its code left every
    value set) still supersedes, so the earlier kept copy is dropped at finish()."""
    keep = pool_gates([trial]).classify
    kept = _versioned("1:640", "2026-01-01T00:00:00Z")
    recoded = _versioned("1:640", "2026-02-01T00:00:00Z")
    recoded["code"] = concept(LOINC, "2345-7")  # glucose: in no MiSLE value set
    assert keep(kept) and not keep(recoded)
    with SqliteStore(tmp_path) as store:
        _load(store, [patient("a"), kept, recoded], keep)
        assert store.kept == 2
        assert [r["resourceType"] for r in _stored(store)["a"]] == ["Patient"]
        assert store.distinct_kept == 1


def test_earlier_version_outside_valuesets_does_not_retire_a_newer_kept_copy(tmp_path, trial):
    keep = pool_gates([trial]).classify
    kept = _versioned("1:640", "2026-03-01T00:00:00Z")
    older = _versioned("1:640", "2026-02-01T00:00:00Z")
    older["code"] = concept(LOINC, "2345-7")
    with SqliteStore(tmp_path) as store:
        _load(store, [older, kept], keep)
        assert [r["id"] for r in _stored(store)["a"]] == ["o1"]


def test_first_seen_version_outside_valuesets_wins_without_last_updated(tmp_path, trial):
    """R14: without lastUpdated the first copy seen wins, even if the trial cannot use it."""
    keep = pool_gates([trial]).classify
    first = _versioned("1:640", None)
    first["code"] = concept(LOINC, "2345-7")
    second = _versioned("1:640", None)
    with SqliteStore(tmp_path) as store:
        _load(store, [patient("a"), first, second], keep)
        assert [r["resourceType"] for r in _stored(store)["a"]] == ["Patient"]


def test_medication_lookup_and_patients_without_resources(tmp_path):
    med = {"resourceType": "Medication", "id": "m1", "code": concept(SNOMED, "1")}
    with SqliteStore(tmp_path) as store:
        store.add(RawResource(med, "mem:1", None), True)
        store.add(RawResource(patient("z"), "mem:2", "z"), False)  # a Patient nobody kept
        store.finish()
        assert store.medication("m1") == med
        assert store.medication("missing") is None
        assert _stored(store) == {"z": []}
        assert store.patient_count() == 1


# --------------------------------------------------------------------------- temp folder


def test_temp_folder_is_private_and_removed_on_close(tmp_path):
    """store.py: resources live in a private temporary folder (mode 0700), gone on close."""
    with SqliteStore(tmp_path) as store:
        folders = list(tmp_path.glob("fhir-cohort-*"))
        assert len(folders) == 1
        folder = folders[0]
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        assert (folder / "resources.sqlite3").is_file()
        _load(store, [sle("c1", pid="a")])
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_temp_folder_removed_even_when_screening_fails(tmp_path):
    with pytest.raises(RuntimeError), SqliteStore(tmp_path):
        assert len(list(tmp_path.glob("fhir-cohort-*"))) == 1
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_transaction_post_entries_take_their_id_from_the_urn_uuid(tmp_path):
    """A transaction POST carries no resource id; its fullUrl urn:uuid names it and is
    what the other entries reference."""
    pid, cid = "5f1c0c7e-0000-4000-8000-000000000001", "5f1c0c7e-0000-4000-8000-000000000002"
    person = patient("ignored")
    del person["id"]
    diagnosis = sle("ignored", pid="ignored")
    del diagnosis["id"]
    diagnosis["subject"] = {"reference": f"urn:uuid:{pid}"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{pid}",
                "resource": person,
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "fullUrl": f"urn:uuid:{cid}",
                "resource": diagnosis,
                "request": {"method": "POST", "url": "Condition"},
            },
        ],
    }
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(bundle))
    resources, notes = read_all(FileSource(path))
    assert notes == []
    assert [(r.resource["resourceType"], r.resource["id"], r.patient) for r in resources] == [
        ("Patient", pid, pid),
        ("Condition", cid, pid),
    ]


def _shard(folder: Path, resources: list[dict], keep) -> Detached:
    """A worker's shard store (in ``folder``) holding ``resources``, detached to absorb."""
    shard = SqliteStore(folder)
    for index, resource in enumerate(resources, start=1):
        pid = "a" if resource["resourceType"] != "Patient" else resource["id"]
        shard.add(RawResource(resource, f"shard:{index}", pid), keep(resource))
    return shard.detach()


@pytest.mark.parametrize("unkept_first", [False, True])
def test_a_newer_copy_the_trial_cannot_use_retires_a_kept_copy_in_another_shard(
    tmp_path, trial, unkept_first
):
    """The workers' shards: a kept copy in one and a later copy the trial cannot use in
    another (either shard first), matched at finish() through the kept keys' bit set;
    an older unusable copy in a third shard retires nothing."""
    keep = pool_gates([trial]).classify
    kept = _versioned("1:640", "2026-01-01T00:00:00Z")
    newer = _versioned("1:640", "2026-02-01T00:00:00Z")
    older = _versioned("1:640", "2025-12-01T00:00:00Z")
    for unusable in (newer, older):
        unusable["code"] = concept(LOINC, "2345-7")  # glucose: in no MiSLE value set
    first, second = (
        ([newer], [patient("a"), kept]) if unkept_first else ([patient("a"), kept], [newer])
    )
    with SqliteStore(tmp_path) as store:
        for part in (first, second, [older]):
            store.absorb(_shard(tmp_path, part, keep))
        store.finish()
        assert [r["resourceType"] for r in _stored(store)["a"]] == ["Patient"]
        assert store.duplicates == 2  # three copies of one resource, counted once

    with SqliteStore(tmp_path) as store:  # without the newer copy the kept one stays
        for part in ([patient("a"), kept], [older]):
            store.absorb(_shard(tmp_path, part, keep))
        store.finish()
        assert [r.get("valueString") for r in _stored(store)["a"]] == [None, "1:640"]
        assert store.duplicates == 1


@pytest.mark.parametrize("in_worker", [False, True])
@pytest.mark.parametrize("every_key_passes", [False, True])
def test_only_copies_that_may_share_a_kept_key_are_taken_out_of_the_runs(
    tmp_path, trial, monkeypatch, every_key_passes, in_worker
):
    """Copies the trial cannot use are written in runs; finish() takes out those whose key
    a kept copy may have: every copy sharing one (before or after it, in this store or an
    absorbed shard, sifted there or before as a worker does), and with a bit set that
    every key passes (as a full one would), all of them, with the same outcome."""
    if every_key_passes:
        monkeypatch.setattr(KeyBits, "hits", lambda self, keys: list(range(len(keys) // 8)))
    keep = pool_gates([trial]).classify
    kept = _versioned("1:640", "2026-01-01T00:00:00Z")
    newer = _versioned("1:640", "2026-02-01T00:00:00Z")
    newer["code"] = concept(LOINC, "2345-7")  # glucose: in no MiSLE value set
    others = [
        {**newer, "id": f"other-{index}", "code": concept(LOINC, "2345-7")}
        for index in range(12_000)  # past a run's 5,000
    ]
    with SqliteStore(tmp_path) as store:
        for index, resource in enumerate([*others[:6_000], patient("a"), kept], start=1):
            store.add(RawResource(resource, f"mem:{index}", "a"), keep(resource))
        store.absorb(shard := _shard(tmp_path, [*others[6_000:], newer], keep))
        assert store._db.execute("SELECT count(*) FROM unkept_runs").fetchone() == (2,)
        if in_worker:
            sift(shard.folder, store.kept_bits())
            with closing(sqlite3.connect(shard.folder / "resources.sqlite3")) as db:
                assert db.execute("SELECT count(*) FROM unkept_runs").fetchone() == (0,)
                assert db.execute("SELECT stamp, seen FROM unkept").fetchall()[-1] == (
                    "2026-02-01T00:00:00Z",
                    6_001,  # its place in the shard
                )
        store.finish()
        taken = store._db.execute("SELECT stamp, seen FROM unkept").fetchall()
        assert ("2026-02-01T00:00:00Z", 12_003) in taken
        if every_key_passes:
            assert len(taken) == 12_001
        else:  # two kept keys in 2**25 bits: another passes 1 in 16 million
            assert len(taken) < 5
        assert [r["resourceType"] for r in _stored(store)["a"]] == ["Patient"]
        assert store.duplicates == 1


def _kept_copies(count: int, prefix: str) -> list[dict]:
    return [
        _versioned("1:640", "2026-01-01T00:00:00Z", f"{prefix}-{index}") for index in range(count)
    ]


@pytest.mark.parametrize("through", ["own", "absorbed"])
def test_the_kept_keys_bit_set_grows_fourfold_while_crowded(tmp_path, trial, monkeypatch, through):
    """A bit set of a fixed size lets nearly every copy through once the kept keys far
    outnumber its bits (at a health system's scale); it grows fourfold, from every kept
    key (its own and its absorbed shards'), while there is more than one key per
    BITS_PER_KEY bits. Every kept key stays marked, and a newer copy the trial cannot
    use still retires its kept copy."""
    monkeypatch.setattr(store_module, "FIRST_BITS", 64)
    keep = pool_gates([trial]).classify
    kept = _kept_copies(300, "k")
    newer = {**kept[123], "meta": {"lastUpdated": "2026-02-01T00:00:00Z"}}
    newer["code"] = concept(LOINC, "2345-7")  # glucose: in no MiSLE value set
    with SqliteStore(tmp_path) as store:
        store.add(RawResource(patient("a"), "mem:1", "a"), keep(patient("a")))
        assert store.kept_bits().mask + 1 == 64
        if through == "own":
            for index, resource in enumerate(kept, start=2):
                store.add(RawResource(resource, f"mem:{index}", "a"), keep(resource))
        else:
            store.absorb(_shard(tmp_path, kept, keep))
        bits = store.kept_bits()
        # 301 keys: 64 -> 256 -> 1,024 -> 4,096 -> 16,384 bits, the first with room for them
        assert bits.mask + 1 == 16_384 >= 301 * BITS_PER_KEY > 4_096
        keys = array("q", [hash(("Observation", r["id"])) for r in kept]).tobytes()
        assert bits.hits(keys) == list(range(300))
        store.add(RawResource(newer, "mem:999", "a"), keep(newer))
        store.finish()
        assert store.duplicates == 1
        assert "k-123" not in {r["id"] for r in _stored(store)["a"]}
        assert len(_stored(store)["a"]) == 300  # the Patient and the 299 others


def test_the_kept_keys_bit_set_stops_growing_at_its_most(tmp_path, trial, monkeypatch):
    """Past MOST_BITS it stays as it is: more copies pass by chance (matched exactly
    after), memory stays bounded."""
    monkeypatch.setattr(store_module, "FIRST_BITS", 64)
    monkeypatch.setattr(store_module, "MOST_BITS", 256)
    keep = pool_gates([trial]).classify
    with SqliteStore(tmp_path) as store:
        for index, resource in enumerate(_kept_copies(300, "k"), start=1):
            store.add(RawResource(resource, f"mem:{index}", "a"), keep(resource))
        bits = store.kept_bits()
        assert bits.mask + 1 == 256 and bits.count == 300 and not bits.crowded()


def test_a_medication_is_found_by_id_on_an_index_not_a_scan(tmp_path):
    """Every distinct Medication a record references is looked up; on a scan of all kept
    records each lookup cost 80 ms at 10,000 patients."""
    medication = {"resourceType": "Medication", "id": "med-1", "code": {"text": "rituximab"}}
    with SqliteStore(tmp_path) as store:
        _load(store, [patient("a"), _versioned("1:640", None), medication])
        assert store.medication("med-1") == medication and store.medication("med-2") is None
        plan = store._db.execute(f"EXPLAIN QUERY PLAN {MEDICATION_BY_ID}", ("med-1",)).fetchall()
        assert [row[-1] for row in plan] == ["SEARCH resources USING INDEX medications (rid=?)"]


def test_a_patient_no_pool_needs_is_read_from_the_bits_index_without_their_records(tmp_path):
    """Deciding a patient outside every trial's pool needs only their records' bits OR-ed
    (for a rare disease, nearly every patient): the store reads those from an index and
    the records only of the patients ``needed`` asks for, all of them in source order."""
    records = [("a", "o1", 2), ("b", "o2", 4), ("a", "o3", 1), ("b", "o4", 1)]
    asked: list[int] = []

    def needed(touches: int) -> bool:
        asked.append(touches)
        return bool(touches & 4)

    with SqliteStore(tmp_path) as store:
        for index, (pid, rid, bits) in enumerate(records, start=1):
            store.add(RawResource(observation(rid, "5048-4", pid=pid), f"mem:{index}", pid), bits)
        store.add(RawResource(patient("c"), "mem:5", "c"), 0)  # nothing of theirs is kept
        store.finish()
        got = {
            pid: [(k.touches, k.body and json.loads(k.body)["id"]) for k in kept]
            for pid, kept in store.kept_by_patient(needed=needed)
        }
        bits_query = store_module.PATIENT_BITS.format(where="")
        plan = [row[-1] for row in store._db.execute(f"EXPLAIN QUERY PLAN {bits_query}")]
    assert got == {"a": [(3, None)], "b": [(4, "o2"), (1, "o4")], "c": []}
    assert asked == [3, 5]
    assert any("USING COVERING INDEX resources_by_patient" in step for step in plan), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan
