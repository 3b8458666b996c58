"""The outputs are written as they are made: candidates.json a candidate at a time,
candidates.csv a batch of rows at a time, the report a card at a time. The bytes are
those of the whole file made at once, and a failure half-way leaves the previous files.
"""

from __future__ import annotations

import dataclasses
import json

import orjson
import pytest

from fhir_cohort.changes import compare, snapshot
from fhir_cohort.outputs import candidates as candidates_module
from fhir_cohort.outputs import report as report_module
from fhir_cohort.outputs.candidates import csv_chunks, json_chunks, screening_dict
from fhir_cohort.outputs.report import render, report_bytes
from fhir_cohort.private_files import write_private_files


@pytest.fixture(scope="module")
def screening(cohort_screening):
    return cohort_screening


@pytest.fixture(scope="module")
def changes(screening):
    """The cohort against a previous run that listed one candidate fewer and one more."""
    current = {c.result.patient: snapshot(c) for c in screening.candidates}
    previous = dict(list(current.items())[1:])
    previous["p999-listed-before"] = dict(next(iter(current.values())), name="Gone Before")
    run = {"id": 3, "as_of": "2026-05-31", "finished_at": "2026-05-31T18:00:00+00:00"}
    return compare(previous, current, {}, screening.as_of, run, screening.trial.label)


def whole_json(screening, changes=None) -> bytes:
    return orjson.dumps(screening_dict(screening, changes), option=orjson.OPT_INDENT_2)


@pytest.mark.parametrize("with_changes", [False, True])
def test_candidates_json_a_candidate_at_a_time_is_what_orjson_writes_whole(
    screening, changes, with_changes
):
    told = changes if with_changes else None
    chunks = list(json_chunks(screening, told))
    assert len(screening.candidates) > 5
    assert len(chunks) == len(screening.candidates) + 2  # the head, each one, the end
    assert b"".join(chunks) == whole_json(screening, told)
    assert json.loads(b"".join(chunks))["candidates"][0]["rank"] == 1


def test_candidates_json_without_candidates_is_what_orjson_writes_whole(screening):
    nobody = dataclasses.replace(screening, candidates=[])
    written = b"".join(json_chunks(nobody))
    assert written == whole_json(nobody)
    assert json.loads(written)["candidates"] == []


def test_candidates_csv_in_batches_is_the_same_table(screening, changes, monkeypatch):
    whole = b"".join(csv_chunks(screening, changes))
    monkeypatch.setattr(candidates_module, "CSV_ROWS", 2)
    chunks = list(csv_chunks(screening, changes))
    assert len(chunks) == len(screening.candidates) // 2 + 1
    assert b"".join(chunks) == whole
    assert whole.count(b"\n") == len(screening.candidates) + 1  # the header and a row each


def test_the_report_makes_each_card_only_when_it_is_written(screening, monkeypatch):
    made = []
    real = report_module.card

    def card(candidate, trial):
        made.append(candidate.result.patient)
        return real(candidate, trial)

    monkeypatch.setattr(report_module, "card", card)
    monkeypatch.setattr(report_module, "CHUNK", 2000)
    chunks = report_bytes(screening)
    page = b""
    while b'<table id="candidates">' not in page:
        page += next(chunks)
    assert made == []  # the list is written before any card is made
    while not made:
        page += next(chunks)
    assert 0 < len(made) < len(screening.candidates)  # cards are made as they are written
    page += b"".join(chunks)
    assert sorted(made) == sorted(c.result.patient for c in screening.candidates)
    assert page.count(b'<section class="card"') == len(screening.candidates)
    assert page.rstrip().endswith(b"</html>")


def test_the_report_written_in_chunks_is_the_page_rendered_whole(screening, changes):
    assert b"".join(report_bytes(screening, changes)).decode() == render(screening, changes)


def test_a_file_whose_chunks_fail_half_way_leaves_the_previous_files(tmp_path):
    write_private_files(tmp_path, {"a.json": b"old a", "b.html": b"old b"})

    def failing():
        yield b"new b, first part"
        raise RuntimeError("template exploded")

    with pytest.raises(RuntimeError, match="template exploded"):
        write_private_files(tmp_path, {"a.json": iter([b"new ", b"a"]), "b.html": failing()})
    assert (tmp_path / "a.json").read_bytes() == b"old a"
    assert (tmp_path / "b.html").read_bytes() == b"old b"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.html"]


def test_a_file_given_in_chunks_is_written_whole_and_owner_only(tmp_path):
    write_private_files(tmp_path, {"c.csv": (bytes([65 + i]) * 3 for i in range(3))})
    assert (tmp_path / "c.csv").read_bytes() == b"AAABBBCCC"
    assert (tmp_path / "c.csv").stat().st_mode & 0o777 == 0o600
