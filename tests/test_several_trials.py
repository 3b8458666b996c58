"""Several trials in one pass, and the run history written before trials were data.

README "Several trials": ``--trial misle --trial surpass2`` (or ``--trial all``) reads
the data once and writes each trial's outputs in ``OUT/<trial>/``, each the same as a
run of that trial alone; one state holds every trial's history. A history written by
the code before this change (fixtures/state-before-issue-11/) still reads, and the
first run after the change reports no change that did not happen.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import COHORT

from fhir_cohort.cli import main

ROOT = Path(__file__).resolve().parents[1]
OLD_STATE = ROOT / "fixtures" / "state-before-issue-11" / "state.sqlite3.gz"
SURPASS2 = ROOT / "fixtures" / "surpass2-cohort"


def screen(out: Path, state: Path, *args: str) -> int:
    return main(["screen", "--out", str(out), "--state", str(state), "--quiet", *args])


def candidates(folder: Path) -> dict:
    return json.loads((folder / "candidates.json").read_text())


def without_run_details(output: dict) -> dict:
    """What must be the same whether a trial is screened alone or with others: all but
    the data-quality notes (one pass keeps, and notes, what every trial reads) and the
    store's internal id of a note."""
    shown = {k: v for k, v in output.items() if k not in ("changes", "generator", "data_quality")}
    shown["candidates"] = [
        {**c, "notes": [{**n, "where": None} for n in c["notes"]]} for c in output["candidates"]
    ]
    return shown


@pytest.fixture(scope="module")
def both(tmp_path_factory) -> tuple[Path, int]:
    """Both trials over both cohorts, in one pass."""
    work = tmp_path_factory.mktemp("both")
    sources = ["--source", str(COHORT), "--source", str(SURPASS2)]
    code = screen(work / "out", work / "state", "--trial", "all", "--as-of", "2026-06-30", *sources)
    return work, code


@pytest.mark.parametrize("trial", ["misle", "surpass2"])
def test_one_pass_equals_each_trial_alone(both, tmp_path, trial):
    work, code = both
    assert code == 0
    sources = ["--source", str(COHORT), "--source", str(SURPASS2)]
    assert screen(tmp_path / "out", tmp_path / "state", "--trial", trial, "--as-of", "2026-06-30",
                  *sources) == 0  # fmt: skip
    together = candidates(work / "out" / trial)
    alone = candidates(tmp_path / "out")
    assert together["trial"] == trial
    assert without_run_details(together) == without_run_details(alone)
    counts = {n["code"]: n["count"] for n in together["data_quality"]}
    assert all(counts.get(n["code"], 0) >= n["count"] for n in alone["data_quality"])
    assert not (work / "out" / "candidates.json").exists()  # each trial in its own folder
    assert len(together["candidates"]) > 30


def test_one_state_holds_every_trials_history(both):
    work, _ = both
    with sqlite3.connect(work / "state" / "state.sqlite3") as db:
        runs = db.execute("SELECT trial, outcome FROM runs ORDER BY trial").fetchall()
    assert runs == [("misle", "complete"), ("surpass2", "complete")]


def test_history_written_before_the_change_still_reads(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / "state.sqlite3").write_bytes(gzip.decompress(OLD_STATE.read_bytes()))
    (state / "state.sqlite3").chmod(0o600)
    with sqlite3.connect(state / "state.sqlite3") as db:
        db.execute("UPDATE runs SET scope = ?", (f"files:{COHORT.resolve()}",))
    out = tmp_path / "out"
    assert (
        screen(out, state, "--trial", "misle", "--trial", "surpass2", "--as-of", "2026-07-22") == 0
    )
    misle = candidates(out / "misle")["changes"]
    assert misle["previous_run"]["id"] == 2  # the old code's run as of 2026-07-22
    for kind in ("new", "status_changed", "dropped", "reconsider"):
        assert misle[kind] == [], kind
    # the review decision recorded by the old code still sets its patient aside
    assert [c["patient"] for c in misle["set_aside"]] in ([], ["p94-belimumab-admin-40d"])
    listed = {c["patient"]: c for c in candidates(out / "misle")["candidates"]}
    assert listed["p94-belimumab-admin-40d"]["review"]["status"] == "declined"
    surpass2 = candidates(out / "surpass2")["changes"]
    assert surpass2["previous_run"] is None  # its first run: nothing to compare with
