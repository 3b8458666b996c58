"""Issue 10, outputs: what bad data may do to the CSV, the terminal and the output folder.

- a cell with a carriage return or a line feed can never split a CSV row, and the
  formula guard applies after cleaning;
- control and escape characters never reach the terminal (ids and notes included);
- ``--out`` is locked for a run, like ``--state``: a second run into the same folder
  exits 5 with a message, never "File exists";
- a full disk while staging the outputs, in the scratch store or in the state database
  is a one-line message and exit 2, with the previous outputs and history intact
  (injected at each write point, and on a real tiny tmpfs where the machine allows one).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from builders import eligible_core, sle
from test_bad_data import P01, cohort, find, listed
from test_history import COHORT, outputs_and_runs, run_rows, screen

from fhir_cohort.changes import Review
from fhir_cohort.criteria.funnel import TrialFunnel as Funnel
from fhir_cohort.criteria.rank_terms import rank
from fhir_cohort.criteria.tree import evaluate
from fhir_cohort.normalise.resources import patient_facts
from fhir_cohort.outputs.candidates import CSV_COLUMNS
from fhir_cohort.outputs.terminal import review_lines, summary
from fhir_cohort.pipeline import Screening
from fhir_cohort.quality import DataQuality
from fhir_cohort.state import State
from fhir_cohort.store import SqliteStore

ROOT = Path(__file__).resolve().parents[1]
ESCAPES = "\x1b[2J\x1b[31m\x07\x9b1m"


# --------------------------------------------------------------------------- CSV


def test_a_carriage_return_in_a_name_never_splits_a_csv_row(tmp_path):
    """Issue 10: a bare carriage return inside a name split the CSV row, and the new row's
    first cell was a live formula. Cells are cleaned (line breaks become spaces) and the
    guard applies after: no row splits, no cell starts a formula."""

    def edit(files: dict) -> None:
        name = find(files, P01, "Patient")["name"][0]
        name["family"] = "O'Brien\r=cmd|' /C calc'!A0"
        name["given"] = ['\n=HYPERLINK("http://x")']

    out = tmp_path / "out"
    run = screen(tmp_path / "state", out, cohort(tmp_path, edit), quiet=True)
    assert run.code == 0, run.stderr
    raw = (out / "candidates.csv").read_bytes()
    assert b"\r" not in raw
    listed_count = len(run.data["candidates"])
    assert raw.count(b"\n") == listed_count + 1  # one physical line per row
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(rows) == listed_count
    assert all(len(row) == len(CSV_COLUMNS) for row in rows)
    (p01,) = [row for row in rows if row["record_id"] == P01]
    assert p01["patient_name"] == "'=HYPERLINK(\"http://x\") O'Brien =cmd|' /C calc'!A0"
    for row in rows:  # no text cell starts a formula (a negative score is a number)
        for column, value in row.items():
            if column != "rank_score":
                assert value.lstrip()[:1] not in ("=", "+", "-", "@"), (column, value)


def test_the_csv_says_why_a_candidate_needs_review(tmp_path):
    def edit(files: dict) -> None:
        find(files, "p94-belimumab-admin-40d-7")["status"] = "garbage"

    out = tmp_path / "out"
    run = screen(tmp_path / "state", out, cohort(tmp_path, edit), quiet=True)
    rows = {
        r["record_id"]: r for r in csv.DictReader(io.StringIO((out / "candidates.csv").read_text()))
    }
    row = rows["p94-belimumab-admin-40d"]
    assert row["screen_status"] == "needs-review"
    # the reasons of candidates.json, with the exclusion named by the trial's label
    assert row["needs_review_because"] == "; ".join(
        listed(run.data)["p94-belimumab-admin-40d"]["reasons"]
    ).replace("belimumab_washout needs review", "Belimumab in the last 2 months needs review")
    assert "status 'garbage' is not a FHIR code" in row["needs_review_because"]
    report = (out / "report.html").read_text()
    assert "Records that cannot be read for certain:</strong> 1 invalid-element." in report
    assert "Needs review because:" in report


# --------------------------------------------------------------------------- terminal


def test_escape_sequences_never_reach_the_terminal(trial):
    """Issue 10: patient ids or review notes carrying ANSI escape sequences reached the
    terminal raw. Everything printed goes through text.printable."""
    patient = f"p1{ESCAPES}"
    resources = [
        {**r, "subject": {"reference": "Patient/p1"}} if "subject" in r else r
        for r in [*eligible_core(), sle("c-2")]
    ]
    facts = patient_facts(patient, resources, {}.get)
    result = evaluate(facts, trial, date(2026, 6, 30))
    quality = DataQuality()
    quality.counts[f"odd{ESCAPES}code"] += 1
    screening = Screening(trial, date(2026, 6, 30), Funnel(trial), quality, rank([result], trial))
    text = summary(screening, "out")
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text
    assert "p12J" not in text and "p1 " in text  # the escape is gone, the id is still shown
    review = Review(
        patient, "declined", f"bad{ESCAPES}note\nsecond line", "A. R", "2026", frozenset()
    )
    (_, line) = review_lines([review], "misle")
    assert "\x1b" not in line and "\n" not in line and line.endswith("bad note second line")


# --------------------------------------------------------------------------- --out lock


def test_a_second_run_into_a_locked_output_folder_exits_5(tmp_path):
    """Issue 10: two runs writing the same --out with different --state collided ("File
    exists"). --out takes a lock like --state: the second run exits 5 with a message and
    leaves the folder to the first."""
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pathlib import Path\n"
            "from fhir_cohort.private_files import locked_folder\n"
            "with locked_folder(Path(sys.argv[1])):\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
            str(out),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        run = screen(tmp_path / "other-state", out, COHORT, quiet=True)
        assert run.code == 5
        assert run.stderr == (
            f"fhir-cohort: error: another fhir-cohort run is writing to {out}; "
            "try again when it has finished\n"
        )
        assert list(out.iterdir()) == []
        assert run_rows(tmp_path / "other-state") == []
    finally:
        holder.communicate(timeout=10)
    assert screen(tmp_path / "other-state", out, COHORT, quiet=True).code == 0


def test_concurrent_runs_into_one_output_folder_never_collide(tmp_path):
    """Several real processes at once, each with its own state, one --out: each finishes
    (0) or finds the folder taken (5); never a crash, never "File exists"."""
    out = tmp_path / "out"
    runs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fhir_cohort.cli",
                "screen",
                "--as-of",
                "2026-06-30",
                "--out",
                str(out),
                "--state",
                str(tmp_path / f"state-{i}"),
                "--quiet",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    results = [(run.wait(timeout=120), run.stderr.read()) for run in runs]
    codes = Counter(code for code, _ in results)
    assert set(codes) <= {0, 5} and codes[0] >= 1, results
    assert all("File exists" not in err for _, err in results)
    assert sorted(p.name for p in out.iterdir()) == [
        "candidates.csv",
        "candidates.json",
        "group.json",
        "report.html",
    ]


# --------------------------------------------------------------------------- a full disk


def _good_first_run(tmp_path: Path) -> tuple[Path, Path, tuple]:
    state, out = tmp_path / "state", tmp_path / "out"
    assert screen(state, out, COHORT).code == 0
    return state, out, outputs_and_runs(out, state)


def test_a_full_scratch_store_is_exit_2_with_outputs_and_history_intact(tmp_path, monkeypatch):
    """A real SQLITE_FULL in the scratch store (its file may hold 16 pages)."""
    state, out, before = _good_first_run(tmp_path)
    real = SqliteStore.__init__

    def small(self, *args, **kwargs):
        real(self, *args, **kwargs)
        self._db.execute("PRAGMA max_page_count = 16")

    monkeypatch.setattr(SqliteStore, "__init__", small)
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    assert failed.code == 2
    assert failed.stderr.startswith(
        f"fhir-cohort: error: cannot write the scratch store in {state}"
    )
    assert failed.stderr.endswith(": database or disk is full\n")
    assert failed.stderr.count("\n") == 1
    assert outputs_and_runs(out, state) == before
    assert list((state / "work").iterdir()) == []  # the store's folder is gone


def test_a_full_state_database_is_exit_2_and_undoes_the_new_outputs(tmp_path, monkeypatch):
    """A real SQLITE_FULL while recording the run: the outputs already renamed into place
    are put back, so the folder and the history both stay as the previous run left them."""
    state, out, before = _good_first_run(tmp_path)
    real = State.__init__

    def full(self, folder):
        real(self, folder)
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        self._db.execute(f"PRAGMA max_page_count = {pages}")

    monkeypatch.setattr(State, "__init__", full)
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    assert failed.code == 2
    assert failed.stderr == (
        f"fhir-cohort: error: cannot write the state in {state}: database or disk is full\n"
    )
    assert outputs_and_runs(out, state) == before
    monkeypatch.undo()
    again = screen(state, out, COHORT, as_of="2026-07-22")
    assert again.code == 0
    assert again.changes["previous_run"]["id"] == before[1][0][0]


INSIDE = textwrap.dedent(
    """
    import json, os, subprocess, sys
    from pathlib import Path

    disk, cohort = Path(sys.argv[1]), sys.argv[2]
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    state, out = disk / "state", disk / "out"

    def screen(as_of):
        run = subprocess.run(
            [sys.executable, "-m", "fhir_cohort.cli", "screen", "--source", cohort,
             "--as-of", as_of, "--state", str(state), "--out", str(out), "--quiet"],
            capture_output=True, text=True)
        return run.returncode, run.stderr

    def snapshot():
        files = {p.name: p.read_bytes().hex()[:64] + str(p.stat().st_size)
                 for p in sorted(out.iterdir())}
        return files, (state / "state.sqlite3").read_bytes().hex()

    results = [("first", *screen("2026-06-30"))]
    before = snapshot()
    for free in (16, 512, 1200, 1800, 2400, 2800, 3200):
        filler = disk / "filler"
        filler.unlink(missing_ok=True)
        stat = os.statvfs(disk)
        room = stat.f_bavail * stat.f_frsize - free * 1024
        with filler.open("wb") as stream:
            stream.truncate(0)
            stream.write(b"\\0" * max(0, room))
        code, err = screen("2026-07-22")
        intact = snapshot() == before
        results.append((free, code, err, intact))
        if code == 0:
            before = snapshot()
    filler.unlink()
    results.append(("last", *screen("2026-07-23")))
    print(json.dumps(results))
    """
)


def test_a_real_full_disk_is_exit_2_with_outputs_and_history_intact(tmp_path):
    """On a real 8 MB tmpfs (a user and mount namespace, where the machine allows one),
    filled to leave a little room: each run either fits (exit 0) or fails at a write point
    (the scratch store, the outputs, the state) with one line and exit 2, the previous
    outputs and history exactly as they were."""
    if (
        not shutil.which("unshare")
        or subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "true"], capture_output=True
        ).returncode
    ):
        pytest.skip("no user and mount namespaces here to mount a tiny tmpfs")
    disk = tmp_path / "disk"
    disk.mkdir()
    script = tmp_path / "inside.py"
    script.write_text(INSIDE)
    namespace = ["unshare", "--user", "--map-root-user", "--mount"]
    run = subprocess.run(
        [*namespace, sys.executable, str(script), str(disk), str(COHORT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout)
    assert results[0][:2] == ["first", 0]
    failures = [r for r in results[1:-1] if r[1] != 0]
    assert failures, results  # the fullest disk cannot hold a run
    where = set()
    for free, code, err, intact in failures:
        assert code == 2, (free, err)
        assert err.count("\n") == 1 and err.startswith("fhir-cohort: error: cannot write "), err
        assert intact, (free, err)
        where.add(err.split(" in ")[0].split(" to ")[0])
    assert "fhir-cohort: error: cannot write the scratch store" in where
    assert len(where) >= 2, where  # and the outputs or the state (here: both)
    assert results[-1][:2] == ["last", 0], results[-1]
