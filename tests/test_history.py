"""The coordinators' view: run history, what changed since the last run, review decisions.

End to end through ``fhir_cohort.cli.main`` (always with ``--state`` and ``--out`` in a
temporary folder), plus the pure functions of :mod:`fhir_cohort.changes` on hand-built
snapshots. What is checked:

- two runs over data that changed between them give the right diff (new, changed,
  dropped out, eligible soon), per screen (``--source`` scope), also when only time moves;
- review decisions: recorded, listed, kept across runs, append-only; a declined patient
  is set aside until new evidence appears;
- a run killed half way (SIGKILL, or a failure while writing) leaves the previous outputs
  and the history as they were;
- the state's lock keeps two runs apart (exit 5);
- scheduled runs: ``--quiet``, partial data (exit 4, not a baseline), owner-only files.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import pytest
from builders import (
    eligible_core,
    med_administration,
    med_statement,
    observation,
    ref,
)

import fhir_cohort.private_files as outputs
from fhir_cohort import changes as ch
from fhir_cohort.cli import main
from fhir_cohort.reviews import Review
from fhir_cohort.state import State

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
EXPECTED = ROOT / "fixtures" / "misle-cohort.expected.json"
GENERATOR = ROOT / "bench" / "generate_population.py"
OUTPUTS = ["candidates.csv", "candidates.json", "group.json", "report.html"]
AS_OF = "2026-06-30"
# A patient listed for the first time, in the trial's words (queries/misle.yaml labels:).
FIRST_LISTED = (
    "first listed: Age 18–65 met, ACR 1997 criteria (4 or more of 11) met (5), "
    "Clinically active SLE met"
)
CHANGE_KEYS = {
    "previous_run",
    "new",
    "status_changed",
    "dropped",
    "eligible_soon",
    "reconsider",
    "set_aside",
}


# --------------------------------------------------------------------------- helpers


def owned(pid: str, resources: list[dict]) -> list[dict]:
    """``resources`` (built for builders.PID) as patient ``pid``'s, with ids made unique."""
    out = []
    for resource in resources:
        copy = json.loads(json.dumps(resource))
        if copy["resourceType"] == "Patient":
            copy["id"] = pid
        else:
            copy["id"] = f"{pid}-{copy['id']}"
            copy["subject"] = ref(pid)
        out.append(copy)
    return out


def eligible(pid: str) -> list[dict]:
    """An eligible lupus patient (ACR 5, activity 6 as of 2026-06-30)."""
    return owned(pid, eligible_core())


def belimumab(pid: str, rid: str, day: str) -> dict:
    """A completed belimumab infusion on ``day``: a washout until day + 2 months."""
    return owned(pid, [med_administration(rid, "completed", day)])[0]


def hiv_positive(pid: str, rid: str = "o-hiv", day: str = "2026-06-15") -> dict:
    return owned(pid, [observation(rid, "56888-1", day, valueString="Reactive")])[0]


def anti_hbc_positive(pid: str) -> dict:
    """Anti-HBc reactive, nothing else about HBV: hepatitis_b review (needs-review)."""
    return owned(pid, [observation("o-hbc", "16933-4", "2025-01-01", valueString="Reactive")])[0]


def c3_low(pid: str, rid: str, day: str = "2026-06-20") -> dict:
    """A low complement C3: new activity evidence that changes no status."""
    return owned(
        pid,
        [
            observation(
                rid,
                "4485-9",
                day,
                valueQuantity={"value": 60, "unit": "mg/dL"},
                referenceRange=[
                    {"low": {"value": 90, "unit": "mg/dL"}, "high": {"value": 180, "unit": "mg/dL"}}
                ],
            )
        ],
    )[0]


def write_ndjson(path: Path, resources: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in resources), encoding="utf-8")
    return path


class Run:
    """One ``fhir-cohort`` command's exit code, stdout, stderr and (for screen) outputs."""

    def __init__(self, code: int, out: str, err: str, folder: Path | None):
        self.code, self.stdout, self.stderr, self.folder = code, out, err, folder

    @property
    def data(self) -> dict:
        assert self.folder is not None
        return json.loads((self.folder / "candidates.json").read_text(encoding="utf-8"))

    @property
    def changes(self) -> dict:
        return self.data["changes"]

    def ids(self, key: str) -> list[str]:
        return [c["patient"] for c in self.changes[key]]

    def change(self, key: str, pid: str) -> dict:
        (found,) = [c for c in self.changes[key] if c["patient"] == pid]
        return found

    def candidate(self, pid: str) -> dict:
        (found,) = [c for c in self.data["candidates"] if c["patient"] == pid]
        return found

    def csv_rows(self) -> dict[str, dict]:
        assert self.folder is not None
        with (self.folder / "candidates.csv").open(newline="", encoding="utf-8") as stream:
            return {row["record_id"]: row for row in csv.DictReader(stream)}


def cli(*argv: str, out: Path | None = None) -> Run:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(list(argv))
    return Run(code, stdout.getvalue(), stderr.getvalue(), out)


def screen(state: Path, out: Path, *sources: Path, as_of: str = AS_OF, quiet: bool = False) -> Run:
    argv = ["screen", "--state", str(state), "--out", str(out), "--as-of", as_of]
    for source in sources:
        argv += ["--source", str(source)]
    if quiet:
        argv.append("--quiet")
    return cli(*argv, out=out)


def review(state: Path, *argv: str) -> Run:
    return cli("review", "--state", str(state), *argv)


def run_rows(state: Path) -> list[tuple]:
    """(id, scope, as_of, outcome) of every recorded run, read straight from the file."""
    with contextlib.closing(sqlite3.connect(state / "state.sqlite3")) as db:
        return db.execute("SELECT id, scope, as_of, outcome FROM runs ORDER BY id").fetchall()


def snapshot_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def change_line(stdout: str, title: str, pid: str) -> str:
    """The terminal line of one change ('    new           p-id   status: why')."""
    (line,) = [
        line for line in stdout.splitlines() if line.startswith(f"    {title:<13} {pid:<36} ")
    ]
    return line


# ----------------------------------------------------------- 1. diff of two runs


@pytest.fixture
def two_runs(tmp_path) -> dict:
    """A small export screened twice as of 2026-06-30; the data changed in between.

    - a-eligible:       eligible both times, nothing changes
    - b-washout-late:   belimumab 2026-05-25 -> washout until 2026-07-25 (both runs)
    - f-washout-early:  belimumab 2026-05-10 -> washout until 2026-07-10 (both runs)
    - g-washout-day-30: belimumab 2026-05-30 -> until 2026-07-30, the 30th day: soon
    - h-washout-day-31: belimumab 2026-05-31 -> until 2026-07-31, the 31st day: not soon
    - c-new:            only a Patient and an ANA in run 1; the whole record in run 2
    - d-drops:          eligible, then an HIV-positive result appears -> excluded
    - e-changes:        eligible, then anti-HBc alone appears -> needs-review
    """
    source = tmp_path / "export"
    first = [
        *eligible("a-eligible"),
        *eligible("b-washout-late"),
        belimumab("b-washout-late", "ma-bel", "2026-05-25"),
        *eligible("f-washout-early"),
        belimumab("f-washout-early", "ma-bel", "2026-05-10"),
        *eligible("g-washout-day-30"),
        belimumab("g-washout-day-30", "ma-bel", "2026-05-30"),
        *eligible("h-washout-day-31"),
        belimumab("h-washout-day-31", "ma-bel", "2026-05-31"),
        *[r for r in eligible("c-new") if r["resourceType"] == "Patient" or "o-ana" in r["id"]],
        *eligible("d-drops"),
        *eligible("e-changes"),
    ]
    write_ndjson(source / "a.ndjson", first)
    state, out1, out2 = tmp_path / "state", tmp_path / "out1", tmp_path / "out2"
    run1 = screen(state, out1, source)
    # between the runs: c-new's record arrives, d-drops gets an HIV result, e-changes anti-HBc
    write_ndjson(source / "a.ndjson", [*first, *eligible("c-new")])  # duplicates count once
    write_ndjson(source / "b.ndjson", [hiv_positive("d-drops"), anti_hbc_positive("e-changes")])
    run2 = screen(state, out2, source)
    return {"source": source, "state": state, "run1": run1, "run2": run2, "tmp": tmp_path}


def test_first_run_says_first_recorded_run_and_lists_washouts_ending_soon(two_runs):
    run1 = two_runs["run1"]
    assert run1.code == 0, run1.stderr
    assert run1.stderr == ""
    assert "  first recorded run of this screen: nothing to compare with yet" in run1.stdout
    changes = run1.changes
    assert set(changes) == CHANGE_KEYS
    assert changes["previous_run"] is None
    for key in ("new", "status_changed", "dropped", "reconsider", "set_aside"):
        assert changes[key] == [], key
    # washouts ending within 30 days of 2026-06-30 (up to 2026-07-30 inclusive), by date
    assert [(c["patient"], c["eligible_from"]) for c in changes["eligible_soon"]] == [
        ("f-washout-early", "2026-07-10"),
        ("b-washout-late", "2026-07-25"),
        ("g-washout-day-30", "2026-07-30"),
    ]
    soon = run1.change("eligible_soon", "f-washout-early")
    assert (soon["before"], soon["after"]) == ("washout", "washout")
    assert soon["why"] == "Belimumab in the last 2 months until 2026-07-10"
    assert change_line(run1.stdout, "eligible soon", "f-washout-early").endswith(
        "from 2026-07-10: Belimumab in the last 2 months until 2026-07-10"
    )
    statuses = {c["patient"]: c["status"] for c in run1.data["candidates"]}
    assert statuses == {
        "a-eligible": "eligible",
        "b-washout-late": "washout",
        "f-washout-early": "washout",
        "g-washout-day-30": "washout",
        "h-washout-day-31": "washout",
        "d-drops": "eligible",
        "e-changes": "eligible",
    }
    # (the fixture has already run the second screen too)
    assert [row[2:] for row in run_rows(two_runs["state"])] == [(AS_OF, "complete")] * 2


def test_second_run_reports_new_changed_dropped_and_soon(two_runs):
    run1, run2 = two_runs["run1"], two_runs["run2"]
    assert run2.code == 0, run2.stderr
    changes = run2.changes
    assert set(changes) == CHANGE_KEYS
    (first_id, _, _, _), (second_id, _, _, _) = run_rows(two_runs["state"])
    assert second_id > first_id
    assert changes["previous_run"]["id"] == first_id
    assert changes["previous_run"]["as_of"] == AS_OF
    assert changes["previous_run"]["finished_at"].endswith("Z")

    assert run2.ids("new") == ["c-new"]
    new = run2.change("new", "c-new")
    assert (new["before"], new["after"]) == (None, "eligible")
    assert new["why"] == FIRST_LISTED

    assert run2.ids("status_changed") == ["e-changes"]
    changed = run2.change("status_changed", "e-changes")
    assert (changed["before"], changed["after"]) == ("eligible", "needs-review")
    assert changed["why"].startswith("eligible → needs-review; now Hepatitis B: review; ")
    assert "new evidence: " in changed["why"]
    assert "(Observation/e-changes-o-hbc)" in changed["why"]

    assert run2.ids("dropped") == ["d-drops"]
    dropped = run2.change("dropped", "d-drops")
    assert (dropped["before"], dropped["after"]) == ("eligible", "excluded")
    assert dropped["why"].startswith("eligible → excluded; now HIV: excluded; new evidence: ")
    assert "(Observation/d-drops-o-hiv)" in dropped["why"]

    assert [(c["patient"], c["eligible_from"]) for c in changes["eligible_soon"]] == [
        ("f-washout-early", "2026-07-10"),
        ("b-washout-late", "2026-07-25"),
        ("g-washout-day-30", "2026-07-30"),
    ]
    assert changes["reconsider"] == [] and changes["set_aside"] == []
    # unchanged patients are in no list
    every = {c["patient"] for key in CHANGE_KEYS - {"previous_run"} for c in changes[key]}
    assert "a-eligible" not in every and "h-washout-day-31" not in every

    # the terminal says the same
    previous = changes["previous_run"]
    assert (
        f"  since the run of {previous['finished_at']} (as of {AS_OF}): "
        "1 new, 1 changed, 1 dropped out\n"
    ) in run2.stdout
    assert change_line(run2.stdout, "new", "c-new").endswith("eligible: " + FIRST_LISTED)
    assert change_line(run2.stdout, "changed", "e-changes").endswith(
        "needs-review: " + changed["why"]
    )
    assert change_line(run2.stdout, "dropped out", "d-drops").endswith(
        "was eligible: " + dropped["why"]
    )
    # the CSV's screening log carries the change for listed patients
    rows = run2.csv_rows()
    assert rows["c-new"]["change_since_last"] == "new: " + FIRST_LISTED
    assert rows["e-changes"]["change_since_last"] == "changed: " + changed["why"]
    assert rows["a-eligible"]["change_since_last"] == ""
    # the first run's outputs (another folder) are untouched by the second
    assert run1.changes["previous_run"] is None


def test_same_data_again_changes_nothing(two_runs):
    run3 = screen(two_runs["state"], two_runs["tmp"] / "out3", two_runs["source"])
    assert run3.code == 0
    changes = run3.changes
    assert changes["previous_run"]["id"] == run_rows(two_runs["state"])[1][0]
    for key in ("new", "status_changed", "dropped", "reconsider", "set_aside"):
        assert changes[key] == [], key
    assert ": 0 new, 0 changed, 0 dropped out\n" in run3.stdout


def test_another_source_path_is_another_screen(two_runs):
    """A copy of the same export at another path is another scope: no diff across them."""
    copy = two_runs["tmp"] / "copy-of-export"
    copy.mkdir()
    for path in two_runs["source"].iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    other = screen(two_runs["state"], two_runs["tmp"] / "out-copy", copy)
    assert other.code == 0
    assert other.changes["previous_run"] is None
    assert other.changes["new"] == [] and other.changes["dropped"] == []
    assert "first recorded run of this screen" in other.stdout
    scopes = [row[1] for row in run_rows(two_runs["state"])]
    assert scopes[0] == scopes[1] == f"files:{two_runs['source'].resolve()}"
    assert scopes[2] == f"files:{copy.resolve()}"
    # and the original screen still compares with its own last run, not with the copy's
    again = screen(two_runs["state"], two_runs["tmp"] / "out-again", two_runs["source"])
    assert again.changes["previous_run"]["id"] == run_rows(two_runs["state"])[1][0]


def test_bundled_cohort_as_time_moves_on(tmp_path):
    """Same data, as of 2026-06-30 then 2026-07-22: washouts end, a 65-year-old turns 66."""
    expected = json.loads(EXPECTED.read_text())
    state = tmp_path / "state"
    first = screen(state, tmp_path / "o1")  # no --source: the bundled cohort
    assert first.code == 0
    soon_then = [
        (pid, case["eligible_from"])
        for pid, case in expected["patients"].items()
        if case["status"] == "washout" and case["eligible_from"] <= "2026-07-30"
    ]
    assert sorted(soon_then, key=lambda x: (x[1], x[0])) == [
        ("p113-statement-stopped-start-only", "2026-07-20"),
        ("p94-belimumab-admin-40d", "2026-07-21"),
        ("p114-last-exposure-counts", "2026-07-25"),
    ]
    assert [(c["patient"], c["eligible_from"]) for c in first.changes["eligible_soon"]] == (
        sorted(soon_then, key=lambda x: (x[1], x[0]))
    )

    later = screen(state, tmp_path / "o2", as_of="2026-07-22")
    assert later.code == 0
    changes = later.changes
    assert changes["previous_run"]["as_of"] == AS_OF
    for pid, key in (
        (
            "p113-statement-stopped-start-only",
            "Other biologics in the last 6 months until 2026-07-20",
        ),
        ("p94-belimumab-admin-40d", "Belimumab in the last 2 months until 2026-07-21"),
    ):
        change = later.change("status_changed", pid)
        assert (change["before"], change["after"]) == ("washout", "eligible")
        assert change["why"] == f"washout → eligible; washout over ({key})"
        assert later.candidate(pid)["status"] == "eligible"
        assert change_line(later.stdout, "changed", pid).endswith(f"eligible: {change['why']}")
    dropped = later.change("dropped", "p05-age-65-day-before-66th")
    assert (dropped["before"], dropped["after"]) == ("eligible", "excluded")
    assert "Age 18–65: 66 outside the trial's range" in dropped["why"]
    assert later.candidate("p05-age-65-day-before-66th")["age"] == 66
    # washouts with a fixed end in (2026-07-22, 2026-08-21], soonest first, ties by id
    fixed_soon = sorted(
        (
            (pid, case["eligible_from"])
            for pid, case in expected["patients"].items()
            if case["status"] == "washout" and "2026-07-22" < case["eligible_from"] <= "2026-08-21"
        ),
        key=lambda x: (x[1], x[0]),
    )
    soon = [(c["patient"], c["eligible_from"]) for c in changes["eligible_soon"]]
    assert (
        soon
        == fixed_soon
        == [
            ("p114-last-exposure-counts", "2026-07-25"),
            ("p99-belimumab-may-31", "2026-07-31"),
            ("p110-two-washouts-later-wins", "2026-08-01"),
            ("p105-contained-medication", "2026-08-10"),
            ("p112-request-validity-end", "2026-08-15"),
            ("p119-bundle-searchset-washout", "2026-08-15"),
        ]
    )
    assert all(c["after"] == "washout" for c in changes["eligible_soon"])
    # neither p113 nor p94 is still "eligible soon": they are eligible now
    assert not {"p113-statement-stopped-start-only", "p94-belimumab-admin-40d"} & {
        s[0] for s in soon
    }


# ----------------------------------------------------------- 2. review decisions


@pytest.fixture
def reviewed(tmp_path) -> dict:
    """One screen of three eligible patients in a small export (as of 2026-06-30)."""
    source = tmp_path / "export"
    base = {pid: eligible(pid) for pid in ("r-declined", "r-contacted", "r-other")}
    write_ndjson(source / "a.ndjson", [r for rs in base.values() for r in rs])
    state = tmp_path / "state"
    first = screen(state, tmp_path / "out0", source)
    assert first.code == 0
    return {"source": source, "state": state, "base": base, "tmp": tmp_path, "n": 0}


def rescreen(ctx: dict, resources: dict[str, list[dict]], as_of: str = AS_OF) -> Run:
    """Rewrite the export with ``resources`` (by patient) and screen it again."""
    write_ndjson(ctx["source"] / "a.ndjson", [r for rs in resources.values() for r in rs])
    ctx["n"] += 1
    run = screen(ctx["state"], ctx["tmp"] / f"out{ctx['n']}", ctx["source"], as_of=as_of)
    assert run.code == 0, run.stderr
    return run


def test_review_is_recorded_and_listed(reviewed):
    state = reviewed["state"]
    done = review(
        state, "r-declined", "--status", "declined", "--note", "moving abroad", "--by", "ana"
    )
    assert done.code == 0 and done.stderr == ""
    assert done.stdout.startswith("recorded: r-declined declined by ana at ")
    assert done.stdout.endswith(" (moving abroad)\n")
    listed = review(state, "--list")
    assert listed.code == 0
    header, *lines = listed.stdout.splitlines()
    assert header.split() == ["when", "patient", "decision", "by", "note"]
    assert len(lines) == 1
    assert lines[0].split(None, 4)[1:] == ["r-declined", "declined", "ana", "moving abroad"]
    # for one patient
    assert review(state, "--list", "r-other").stdout == "no review decisions recorded for misle\n"


def test_review_of_unknown_patient_exits_2_with_one_line(reviewed):
    state = reviewed["state"]
    run = review(state, "no-such-patient", "--status", "declined", "--by", "ana")
    assert run.code == 2
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1
    assert run.stderr.startswith("fhir-cohort: error: patient 'no-such-patient' is in no ")
    assert str(state) in run.stderr
    assert review(state, "--list").stdout == "no review decisions recorded for misle\n"


def test_review_without_status_exits_2(reviewed):
    run = review(reviewed["state"], "r-declined")
    assert run.code == 2
    assert run.stderr == "fhir-cohort: error: review needs PATIENT_ID and --status (or --list)\n"


@pytest.mark.parametrize(
    "status", ["contacted", "declined", "not-eligible", "enrolled", "deferred"]
)
def test_review_accepts_the_five_statuses(reviewed, status):
    assert review(reviewed["state"], "r-other", "--status", status, "--by", "x").code == 0
    assert review(reviewed["state"], "--list").stdout.split("\n")[1].split()[2] == status


@pytest.mark.parametrize("status", ["rejected", "Declined", "eligible", ""])
def test_review_refuses_other_statuses(reviewed, status, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["review", "--state", str(reviewed["state"]), "r-other", "--status", status])
    assert stop.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert review(reviewed["state"], "--list").stdout == "no review decisions recorded for misle\n"


def test_decision_survives_later_runs_in_json_and_csv(reviewed):
    state = reviewed["state"]
    review(state, "r-declined", "--status", "declined", "--note", "no", "--by", "ana")
    review(state, "r-contacted", "--status", "contacted", "--note", "called", "--by", "bo")
    for _ in range(2):
        run = rescreen(reviewed, reviewed["base"])
        decision = run.candidate("r-declined")["review"]
        assert {k: decision[k] for k in ("patient", "status", "note", "by")} == {
            "patient": "r-declined",
            "status": "declined",
            "note": "no",
            "by": "ana",
        }
        assert decision["new_evidence_since"] == []
        assert run.candidate("r-contacted")["review"]["status"] == "contacted"
        assert run.candidate("r-other")["review"] is None
        rows = run.csv_rows()
        assert (rows["r-declined"]["review_status"], rows["r-declined"]["review_by"]) == (
            "declined",
            "ana",
        )
        assert rows["r-declined"]["review_date"] == decision["at"][:10]
        assert rows["r-contacted"]["review_status"] == "contacted"
        assert rows["r-other"]["review_status"] == ""
        # still listed, nothing new: in no list of changes
        assert run.changes["set_aside"] == [] and run.changes["reconsider"] == []


@pytest.mark.parametrize("status", ["declined", "not-eligible"])
def test_set_aside_patient_coming_back_without_new_evidence_is_not_new(reviewed, status):
    state, base = reviewed["state"], reviewed["base"]
    review(state, "r-declined", "--status", status, "--note", "n", "--by", "ana")
    # the patient's records are missing from one export: dropped out
    gone = rescreen(reviewed, {k: v for k, v in base.items() if k != "r-declined"})
    assert gone.ids("dropped") == ["r-declined"]
    assert gone.change("dropped", "r-declined")["why"].startswith("not in the candidate pool")
    # back with the same records: set aside, not new
    back = rescreen(reviewed, base)
    assert back.ids("new") == []
    assert back.ids("set_aside") == ["r-declined"]
    aside = back.change("set_aside", "r-declined")
    assert (aside["before"], aside["after"]) == (None, "eligible")
    assert aside["why"].startswith(f"{status} ")
    assert " by ana; no new evidence since" in aside["why"]
    assert ": 0 new, 0 changed, 0 dropped out, 1 set aside by review\n" in back.stdout
    assert back.csv_rows()["r-declined"]["change_since_last"] == "set aside: " + aside["why"]


def test_set_aside_patient_excluded_then_clear_again_is_not_new(reviewed):
    """Dropped out because of an HIV result later withdrawn (entered in error)."""
    state, base = reviewed["state"], reviewed["base"]
    review(state, "r-declined", "--status", "declined", "--by", "ana")
    hiv = {**base, "r-declined": [*base["r-declined"], hiv_positive("r-declined")]}
    out = rescreen(reviewed, hiv)
    assert out.change("dropped", "r-declined")["after"] == "excluded"
    back = rescreen(reviewed, base)
    assert back.ids("new") == [] and back.ids("set_aside") == ["r-declined"]
    assert back.change("set_aside", "r-declined")["before"] == "excluded"


@pytest.mark.parametrize("status", ["declined", "not-eligible"])
def test_set_aside_patient_back_with_new_evidence_is_new_and_says_so(reviewed, status):
    state, base = reviewed["state"], reviewed["base"]
    review(state, "r-declined", "--status", status, "--note", "n", "--by", "ana")
    rescreen(reviewed, {k: v for k, v in base.items() if k != "r-declined"})
    fresh = {**base, "r-declined": [*base["r-declined"], c3_low("r-declined", "o-c3-new")]}
    back = rescreen(reviewed, fresh)
    assert back.ids("set_aside") == []
    assert back.ids("new") == ["r-declined"]
    why = back.change("new", "r-declined")["why"]
    assert why.startswith(f"{status} ")
    assert " by ana; new evidence since: " in why
    assert "(Observation/r-declined-o-c3-new)" in why
    assert any(
        "Observation/r-declined-o-c3-new" in label
        for label in back.candidate("r-declined")["review"]["new_evidence_since"]
    )
    assert change_line(back.stdout, "new", "r-declined").endswith("eligible: " + why)


@pytest.mark.parametrize("status", ["declined", "not-eligible"])
def test_listed_declined_patient_with_new_evidence_is_reconsidered(reviewed, status):
    state, base = reviewed["state"], reviewed["base"]
    review(state, "r-declined", "--status", status, "--by", "ana")
    # a later as-of alone is not new evidence
    later = rescreen(reviewed, base, as_of="2026-07-02")
    assert later.changes["reconsider"] == []
    # a new result is
    fresh = {**base, "r-declined": [*base["r-declined"], c3_low("r-declined", "o-c3-new")]}
    run = rescreen(reviewed, fresh)
    assert run.ids("reconsider") == ["r-declined"]
    assert run.ids("new") == [] and run.ids("set_aside") == []
    why = run.change("reconsider", "r-declined")["why"]
    assert why.startswith(f"{status} ") and " by ana; new evidence since: " in why
    assert "(Observation/r-declined-o-c3-new)" in why
    assert change_line(run.stdout, "new evidence", "r-declined").endswith("eligible: " + why)
    assert run.csv_rows()["r-declined"]["change_since_last"] == (
        "new evidence since review: " + why
    )


def test_ongoing_medication_at_a_later_as_of_is_not_new_evidence(tmp_path):
    """An active belimumab statement without an end is dated as of each run: not new."""
    source = tmp_path / "export"
    pid = "r-ongoing"
    ongoing = owned(
        pid, [med_statement("ms-bel", "active", effectivePeriod={"start": "2026-01-01"})]
    )
    write_ndjson(source / "a.ndjson", [*eligible(pid), *ongoing])
    state = tmp_path / "state"
    first = screen(state, tmp_path / "o1", source)
    assert first.candidate(pid)["status"] == "washout"
    assert first.candidate(pid)["eligible_from"] == "2026-08-30"
    review(state, pid, "--status", "declined", "--by", "ana")
    later = screen(state, tmp_path / "o2", source, as_of="2026-07-05")
    assert later.candidate(pid)["eligible_from"] == "2026-09-05"
    assert later.changes["reconsider"] == []
    assert later.ids("status_changed") == []  # the end moving with the run is not news
    assert later.candidate(pid)["review"]["new_evidence_since"] == []


def test_medication_ending_between_runs_is_not_new_evidence(tmp_path):
    source = tmp_path / "export"
    pid = "r-period"
    statement = owned(
        pid,
        [
            med_statement(
                "ms-bel",
                "active",
                effectivePeriod={"start": "2026-01-01", "end": "2026-07-10"},
            )
        ],
    )
    write_ndjson(source / "a.ndjson", [*eligible(pid), *statement])
    state = tmp_path / "state"
    first = screen(state, tmp_path / "o1", source)
    assert first.candidate(pid)["status"] == "washout"
    review(state, pid, "--status", "declined", "--by", "ana")
    later = screen(state, tmp_path / "o2", source, as_of="2026-07-20")  # same file
    assert later.candidate(pid)["status"] == "washout"
    assert later.candidate(pid)["review"]["new_evidence_since"] == []
    assert later.changes["reconsider"] == []


def test_contacted_is_not_set_aside(reviewed):
    state, base = reviewed["state"], reviewed["base"]
    review(state, "r-contacted", "--status", "contacted", "--by", "bo")
    rescreen(reviewed, {k: v for k, v in base.items() if k != "r-contacted"})
    back = rescreen(reviewed, base)
    assert back.ids("new") == ["r-contacted"]
    assert back.ids("set_aside") == []
    assert back.change("new", "r-contacted")["why"] == FIRST_LISTED
    assert back.candidate("r-contacted")["review"]["status"] == "contacted"


def test_latest_of_several_decisions_counts_and_all_stay_listed(reviewed):
    state, base = reviewed["state"], reviewed["base"]
    for status, note in (("contacted", "left a message"), ("declined", "not now")):
        assert (
            review(state, "r-declined", "--status", status, "--note", note, "--by", "ana").code == 0
        )
    assert review(state, "r-other", "--status", "enrolled", "--by", "bo").code == 0
    lines = review(state, "--list", "r-declined").stdout.splitlines()[1:]
    assert [line.split(None, 4)[2:] for line in lines] == [
        ["contacted", "ana", "left a message"],
        ["declined", "ana", "not now"],
    ]
    assert len(review(state, "--list").stdout.splitlines()) == 4  # header + 3 decisions
    # the latest (declined) counts: back without new evidence -> set aside
    rescreen(reviewed, {k: v for k, v in base.items() if k != "r-declined"})
    back = rescreen(reviewed, base)
    assert back.ids("set_aside") == ["r-declined"]
    # a later "deferred" replaces it: back again -> new
    review(state, "r-declined", "--status", "deferred", "--by", "ana")
    rescreen(reviewed, {k: v for k, v in base.items() if k != "r-declined"})
    again = rescreen(reviewed, base)
    assert again.ids("new") == ["r-declined"] and again.ids("set_aside") == []
    assert again.candidate("r-declined")["review"]["status"] == "deferred"
    assert [
        line.split()[2] for line in review(state, "--list", "r-declined").stdout.splitlines()[1:]
    ] == [
        "contacted",
        "declined",
        "deferred",
    ]


def test_review_trail_is_append_only(reviewed):
    state = reviewed["state"]
    review(state, "r-declined", "--status", "declined", "--note", "original", "--by", "ana")
    with contextlib.closing(sqlite3.connect(state / "state.sqlite3")) as db:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("UPDATE reviews SET status = 'enrolled'")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            db.execute("DELETE FROM reviews")
        db.commit()
        assert db.execute("SELECT patient, status, note FROM reviews").fetchall() == [
            ("r-declined", "declined", "original")
        ]
    assert review(state, "--list").stdout.splitlines()[1].split(None, 4)[2:] == [
        "declined",
        "ana",
        "original",
    ]


# ----------------------------------------------------------- 3. killed half way


def outputs_and_runs(out: Path, state: Path) -> tuple[dict[str, bytes], list[tuple]]:
    return snapshot_bytes(out), run_rows(state)


@pytest.fixture(scope="module")
def population(tmp_path_factory) -> Path:
    """A generated population that takes a couple of seconds to screen."""
    folder = tmp_path_factory.mktemp("population") / "pop"
    subprocess.run(
        [sys.executable, str(GENERATOR), "--patients", "300", "--out", str(folder), "--quiet"],
        check=True,
        capture_output=True,
    )
    return folder


def family(pid: int) -> list[int]:
    """``pid`` and its children (its worker processes), from /proc."""
    try:
        found = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return [pid]
    return [pid, *(int(child) for child in found)]


def reading(pid: int, folder: Path) -> bool:
    """Whether process ``pid`` or one of its workers has a file of ``folder`` open
    (always true without /proc)."""
    if not Path("/proc/self/fd").is_dir():
        return True
    targets = []
    for member in family(pid):
        try:
            targets += [os.readlink(fd) for fd in Path(f"/proc/{member}/fd").iterdir()]
        except OSError:  # the process is gone, or an fd closed while listing
            continue
    return any(target.startswith(f"{folder.resolve()}/") for target in targets)


def test_sigkilled_run_leaves_previous_outputs_and_history(tmp_path, population):
    state, out = tmp_path / "state", tmp_path / "out"
    first = screen(state, out, COHORT)
    assert first.code == 0
    before_files, before_runs = outputs_and_runs(out, state)
    assert sorted(before_files) == OUTPUTS and len(before_runs) == 1

    env = {k: v for k, v in os.environ.items() if k not in ("FHIR_COHORT_STATE", "TMPDIR")}
    env["TMPDIR"] = str(tmp_path / "child-tmp")  # its store must not go here but to the state
    (tmp_path / "child-tmp").mkdir()
    argv = ["screen", "--source", str(population), "--as-of", AS_OF]
    argv += ["--state", str(state), "--out", str(out)]
    child = subprocess.Popen(
        [sys.executable, "-m", "fhir_cohort.cli", *argv],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lock = state / "lock"
        deadline = time.monotonic() + 20
        while True:  # until the child holds the lock (it writes its pid once it does)
            if child.poll() is not None:
                pytest.fail(f"the run finished (exit {child.returncode}) before it was killed")
            text = lock.read_text() if lock.exists() else ""
            if text.startswith(f"pid {child.pid}, "):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"the child never took the lock ({text!r})")
            time.sleep(0.005)
        while not reading(child.pid, population):  # and has a population file open
            if child.poll() is not None or time.monotonic() > deadline:
                break  # (reported just below)
            time.sleep(0.005)
        time.sleep(0.1)
        if child.poll() is not None:
            pytest.fail(f"the run finished (exit {child.returncode}) before it was killed")
        workers = family(child.pid)[1:]
        child.send_signal(signal.SIGKILL)
        stdout, _ = child.communicate(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert stdout == b""  # it never got as far as its summary
    # its worker processes die with it (they would hold the state's lock otherwise)
    deadline = time.monotonic() + 10
    while [w for w in workers if Path(f"/proc/{w}").exists()] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [w for w in workers if Path(f"/proc/{w}/fd").exists()]

    after_files, after_runs = outputs_and_runs(out, state)
    assert after_files == before_files  # byte-identical, and no stray '.name.xxx' temp file
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert after_runs == before_runs
    with contextlib.closing(sqlite3.connect(state / "state.sqlite3")) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # the killed run's temporary store (a copy of clinical data) is in the state's work/
    # folder, owner-only, and nowhere else
    (left,) = (state / "work").iterdir()
    assert stat.S_IMODE(left.stat().st_mode) == 0o700
    assert list((tmp_path / "child-tmp").iterdir()) == []
    # the kernel released the lock: the next run goes ahead and compares with the first
    third = screen(state, out, COHORT)
    assert third.code == 0, third.stderr
    assert third.changes["previous_run"]["id"] == before_runs[0][0]
    assert len(run_rows(state)) == 2
    assert list((state / "work").iterdir()) == []  # the leftover store is gone


def test_an_output_name_taken_by_a_folder_leaves_the_previous_set(tmp_path):
    """A rename that fails half way (here group.json is a folder) puts back the files
    already renamed: the output folder holds the previous run's set, and no run is kept."""
    state, out = tmp_path / "state", tmp_path / "out"
    assert screen(state, out, COHORT).code == 0
    before_files, before_runs = outputs_and_runs(out, state)
    (out / "group.json").unlink()
    (out / "group.json").mkdir()
    before_files.pop("group.json")
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    assert failed.code == 2
    assert failed.stderr.startswith(f"fhir-cohort: error: cannot write to {out}: ")
    assert outputs_and_runs(out, state) == (before_files, before_runs)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_failure_while_staging_leaves_previous_outputs_and_history(tmp_path, monkeypatch):
    state, out = tmp_path / "state", tmp_path / "out"
    assert screen(state, out, COHORT).code == 0
    before_files, before_runs = outputs_and_runs(out, state)

    real, calls = outputs._staged, []

    def staged(path: Path, data: bytes) -> Path:
        calls.append(path.name)
        if len(calls) == 3:  # two files staged, the third fails
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(outputs, "_staged", staged)
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    assert failed.code == 2
    assert failed.stderr == f"fhir-cohort: error: cannot write to {out}: No space left on device\n"
    assert len(calls) == 3
    assert outputs_and_runs(out, state) == (before_files, before_runs)
    monkeypatch.undo()
    # the next run compares with the last one that was recorded
    ok = screen(state, out, COHORT, as_of="2026-07-22")
    assert ok.code == 0
    assert ok.changes["previous_run"]["id"] == before_runs[0][0]


def test_failure_building_an_output_leaves_previous_outputs_and_history(tmp_path, monkeypatch):
    import fhir_cohort.commands.screen as cli_module

    state, out = tmp_path / "state", tmp_path / "out"
    assert screen(state, out, COHORT).code == 0
    before = outputs_and_runs(out, state)

    def broken(*_args, **_kwargs):  # the page fails half-way, after its first chunk
        yield b"<!doctype html>"
        raise RuntimeError("template exploded")

    monkeypatch.setattr(cli_module, "report_bytes", broken)
    monkeypatch.delenv("FHIR_COHORT_DEBUG", raising=False)
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    assert failed.code == 1
    assert "RuntimeError: template exploded" in failed.stderr
    assert outputs_and_runs(out, state) == before


def test_failure_while_renaming_leaves_previous_outputs(tmp_path, monkeypatch):
    state, out = tmp_path / "state", tmp_path / "out"
    assert screen(state, out, COHORT).code == 0
    before = outputs_and_runs(out, state)

    real, calls = os.replace, []

    def replace(src, dst, *args, **kwargs):
        calls.append(Path(dst).name)
        if len(calls) == 2:
            raise PermissionError(13, "Permission denied")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(outputs.os, "replace", replace)
    failed = screen(state, out, COHORT, as_of="2026-07-22")
    monkeypatch.undo()
    assert failed.code == 2
    assert failed.stderr == f"fhir-cohort: error: cannot write to {out}: Permission denied\n"
    assert calls[:2] == ["candidates.json", "candidates.csv"]  # then the roll-back
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    files, runs = outputs_and_runs(out, state)
    assert runs == before[1]  # no run recorded (holds today)
    assert files["candidates.csv"] == before[0]["candidates.csv"]  # holds today
    assert files["candidates.json"] == before[0]["candidates.json"]  # rolled back
    assert files == before[0]


# ----------------------------------------------------------- 4. the lock


def test_locked_state_exits_5_and_is_released(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    with State(state) as held, held.lock():
        run = screen(state, out, COHORT)
        assert run.code == 5
        assert run.stdout == ""
        assert run.stderr.count("\n") == 1
        assert run.stderr.startswith(
            f"fhir-cohort: error: another fhir-cohort run is using {state} (pid {os.getpid()}, "
        )
        assert run.stderr.endswith("; try again when it has finished\n")
        assert not out.exists()
        assert run_rows(state) == []
    ok = screen(state, out, COHORT)
    assert ok.code == 0
    assert len(run_rows(state)) == 1


def test_lock_held_by_another_process(tmp_path):
    state, out = tmp_path / "state", tmp_path / "out"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "from fhir_cohort.state import State\n"
            "with State(sys.argv[1]) as s, s.lock():\n"
            "    print('locked', flush=True)\n"
            "    sys.stdin.read()\n",
            str(state),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        run = screen(state, out, COHORT, quiet=True)
        assert run.code == 5
        assert f"is using {state} (pid {holder.pid}, started " in run.stderr
        assert run.stderr.count("\n") == 1
    finally:
        holder.communicate(timeout=10)  # closes stdin: the holder lets go and exits
    assert holder.returncode == 0
    assert screen(state, out, COHORT, quiet=True).code == 0


# ----------------------------------------------------------- 5. scheduled runs


def test_quiet_clean_run_prints_nothing(tmp_path):
    source = write_ndjson(tmp_path / "export" / "a.ndjson", eligible("q-1"))
    run = screen(tmp_path / "state", tmp_path / "out", source.parent, quiet=True)
    assert (run.code, run.stdout, run.stderr) == (0, "", "")
    assert [c["patient"] for c in run.data["candidates"]] == ["q-1"]


def truncated_gz(path: Path, resources: list[dict]) -> Path:
    body = gzip.compress("".join(json.dumps(r) + "\n" for r in resources).encode())
    path.write_bytes(body[: len(body) // 2])
    return path


def test_partial_data_exits_4_warns_and_is_not_a_baseline(tmp_path):
    source, state = tmp_path / "export", tmp_path / "state"
    write_ndjson(source / "a.ndjson", eligible("q-1"))
    baseline = screen(state, tmp_path / "o1", source, quiet=True)
    assert baseline.code == 0

    # a broken .ndjson.gz arrives with q-2's records; q-3 arrives readable
    broken = truncated_gz(source / "b.ndjson.gz", eligible("q-2"))
    write_ndjson(source / "c.ndjson", eligible("q-3"))
    partial = screen(state, tmp_path / "o2", source, quiet=True)
    assert partial.code == 4
    assert partial.stdout == ""
    assert partial.stderr == (
        "fhir-cohort: warning: partial data: 1 unreadable-file; the outputs say what could "
        "not be read and the run is not used as the baseline of the next one\n"
    )
    (note,) = [n for n in partial.data["data_quality"] if n["code"] == "unreadable-file"]
    assert note["count"] == 1 and note["examples"][0]["where"] == str(broken)
    assert partial.ids("new") == ["q-3"]
    assert [row[3] for row in run_rows(state)] == ["complete", "partial"]

    # the next complete run compares with the baseline, not with the partial run
    broken.unlink()
    after = screen(state, tmp_path / "o3", source)
    assert after.code == 0
    runs = run_rows(state)
    assert [row[3] for row in runs] == ["complete", "partial", "complete"]
    assert after.changes["previous_run"]["id"] == runs[0][0]
    assert after.ids("new") == ["q-3"]  # new against the baseline, again


def test_partial_data_without_quiet_still_warns_on_stderr(tmp_path):
    source = tmp_path / "export"
    write_ndjson(source / "a.ndjson", eligible("q-1"))
    truncated_gz(source / "b.ndjson.gz", eligible("q-2"))
    run = screen(tmp_path / "state", tmp_path / "out", source)
    assert run.code == 4
    assert run.stderr.startswith("fhir-cohort: warning: partial data: 1 unreadable-file;")
    assert run.stdout.startswith("fhir-cohort: misle as of 2026-06-30\n")


def test_outputs_and_state_are_owner_only(tmp_path):
    source = write_ndjson(tmp_path / "export" / "a.ndjson", eligible("q-1"))
    state, out = tmp_path / "deep" / "state", tmp_path / "deep" / "out"
    assert screen(state, out, source.parent, quiet=True).code == 0
    assert review(state, "q-1", "--status", "contacted", "--by", "ana").code == 0

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(out) == 0o700
    assert sorted(p.name for p in out.iterdir()) == OUTPUTS
    for path in out.iterdir():
        assert mode(path) == 0o600, path
    assert mode(state) == 0o700
    assert sorted(p.name for p in state.iterdir()) == ["lock", "state.sqlite3", "templates", "work"]
    for path in [*state.iterdir(), *(state / "templates").iterdir()]:
        assert mode(path) == (0o700 if path.is_dir() else 0o600), path
    assert list((state / "work").iterdir()) == []  # the run's store is gone with the run
    assert len(list((state / "templates").iterdir())) == 2  # the report's and its rows', compiled


# ----------------------------------------------------------- changes.py, pure


def snap(
    status: str,
    *,
    flags: tuple[str, ...] = (),
    evidence: dict[str, str] | None = None,
    eligible_from: str | None = None,
    acr: int = 5,
    activity: str | None = "met",
) -> dict:
    return {
        "name": "N",
        "status": status,
        "eligible_from": eligible_from,
        "rank": 1,
        "acr_count": acr,
        "activity": activity,
        "flags": list(flags),
        "evidence": {"Observation/a|1:320": "ANA 1:320 (Observation/a)"}
        if evidence is None
        else evidence,
    }


D = date(2026, 6, 30)
SEEN = frozenset({"Observation/a|1:320"})


def decision(pid: str, status: str, seen: frozenset[str] = SEEN) -> Review:
    return Review(pid, status, "note", "ana", "2026-06-30T10:00:00Z", seen)


def test_evidence_key_is_the_record_not_its_date_or_wording():
    assert ch.evidence_key("Observation/o1") == "Observation/o1"
    assert ch.evidence_key("MedicationStatement/m") == "MedicationStatement/m"


def test_differences_describe_each_kind_of_change():
    was = snap("washout", flags=("belimumab_washout until 2026-07-10",), eligible_from="2026-07-10")
    assert ch.differences(was, snap("eligible")) == [
        "washout → eligible",
        "washout over (belimumab_washout until 2026-07-10)",
    ]
    later = snap("washout", flags=("belimumab_washout until 2026-09-01",))
    assert ch.differences(was, later) == ["belimumab_washout now until 2026-09-01 (was 2026-07-10)"]
    assert ch.differences(snap("eligible"), snap("excluded", flags=("hiv: excluded",))) == [
        "eligible → excluded",
        "now hiv: excluded",
    ]
    assert ch.differences(
        snap("needs-review", flags=("hepatitis_b: review",)), snap("eligible")
    ) == [
        "needs-review → eligible",
        "no longer hepatitis_b: review",
    ]
    grown = snap("eligible", acr=6, evidence={"Observation/a|1:320": "A", "Observation/b|9": "B"})
    assert ch.differences(snap("eligible", activity="unknown"), grown) == [
        "acr 5 → 6 met",
        "activity unknown → met",
        "new evidence: B",
    ]
    assert ch.differences(None, snap("eligible")) == ["first listed: activity met, acr: 5 met"]
    assert ch.differences(snap("eligible"), None)[0].startswith("not in the candidate pool")


def test_new_evidence_is_shortened_after_three():
    many = {f"Observation/{i}|v": f"L{i}" for i in range(5)}
    (line,) = ch.differences(snap("eligible", evidence={}), snap("eligible", evidence=many))
    assert line == "new evidence: L0; L1; L2 and 2 more"


def test_compare_on_first_run_lists_only_eligible_soon():
    current = {
        "late": snap("washout", eligible_from="2026-07-30"),  # day 30: soon
        "later": snap("washout", eligible_from="2026-07-31"),  # day 31: not soon
        "early": snap("washout", eligible_from="2026-07-01"),
        "review": snap("needs-review", eligible_from="2026-07-02"),  # not in washout
        "elig": snap("eligible"),
    }
    changes = ch.compare(None, current, {}, D, {"id": 9, "as_of": "x", "finished_at": "y"})
    assert changes.previous is None  # nothing compared with, whatever was passed
    assert [c.patient for c in changes.eligible_soon] == ["early", "late"]
    assert changes.new == changes.status_changed == changes.dropped == []


def test_eligible_soon_ties_are_ordered_by_patient():
    current = {p: snap("washout", eligible_from="2026-07-15") for p in ("p-b", "p-c", "p-a")}
    changes = ch.compare({}, current, {}, D)
    assert [c.patient for c in changes.eligible_soon] == ["p-a", "p-b", "p-c"]


def test_compare_new_changed_dropped():
    previous = {
        "stays": snap("eligible"),
        "drops": snap("eligible"),
        "changes": snap("eligible"),
        "was-excluded": snap("excluded", flags=("hiv: excluded",)),
        "vanishes": snap("needs-review", activity="unknown"),
        "excluded-before-and-after": snap("excluded"),
    }
    current = {
        "stays": snap("eligible"),
        "drops": snap("excluded", flags=("hiv: excluded",)),
        "changes": snap("needs-review", flags=("hepatitis_b: review",)),
        "was-excluded": snap("eligible"),
        "brand-new": snap("washout", eligible_from="2026-12-01", flags=("x until 2026-12-01",)),
        "excluded-before-and-after": snap("excluded"),
        "new-but-excluded": snap("excluded"),
    }
    changes = ch.compare(previous, current, {}, D, {"id": 1, "as_of": "a", "finished_at": "b"})
    assert changes.previous == {"id": 1, "as_of": "a", "finished_at": "b"}
    assert sorted(c.patient for c in changes.new) == ["brand-new", "was-excluded"]
    brand_new = next(c for c in changes.new if c.patient == "brand-new")
    assert (brand_new.before, brand_new.after, brand_new.eligible_from) == (
        None,
        "washout",
        "2026-12-01",
    )
    assert [c.patient for c in changes.status_changed] == ["changes"]
    assert sorted(c.patient for c in changes.dropped) == ["drops", "vanishes"]
    vanished = next(c for c in changes.dropped if c.patient == "vanishes")
    assert (vanished.before, vanished.after) == ("needs-review", None)
    assert changes.eligible_soon == []
    assert changes.for_patient("changes").startswith("changed: eligible → needs-review")
    assert changes.for_patient("stays") == ""
    assert set(changes.to_dict()) == CHANGE_KEYS


def test_washout_end_moving_later_is_news_only_with_new_evidence():
    med = {"MedicationStatement/m|active; ongoing": "belimumab"}
    before = snap("washout", eligible_from="2026-08-30", evidence=med)
    drift = snap("washout", eligible_from="2026-09-05", evidence=med)
    assert ch.compare({"p": before}, {"p": drift}, {}, D).status_changed == []
    sooner = snap("washout", eligible_from="2026-08-01", evidence=med)
    assert [c.patient for c in ch.compare({"p": before}, {"p": sooner}, {}, D).status_changed] == [
        "p"
    ]
    infused = snap(
        "washout",
        eligible_from="2026-09-05",
        evidence={**med, "MedicationAdministration/x|completed; last exposure 2026-07-05": "i"},
    )
    assert [c.patient for c in ch.compare({"p": before}, {"p": infused}, {}, D).status_changed] == [
        "p"
    ]


def test_review_states_and_set_aside():
    current = {
        "same": snap("eligible"),
        "more": snap(
            "eligible",
            evidence={"Observation/a|1:320": "ANA", "Observation/c3|60 mg/dL": "C3 low"},
        ),
    }
    reviews = {
        "same": decision("same", "declined"),
        "more": decision("more", "not-eligible"),
        "gone": decision("gone", "declined"),
    }
    states = ch.review_states(current, reviews)
    assert states["same"].new_evidence == () and states["same"].set_aside
    assert states["more"].new_evidence == ("C3 low",) and not states["more"].set_aside
    assert states["gone"].new_evidence == ()
    assert states["same"].describe() == "declined 2026-06-30 by ana"
    assert states["more"].describe() == "not-eligible 2026-06-30 by ana; new evidence since: C3 low"
    assert states["more"].to_dict()["new_evidence_since"] == ["C3 low"]
    for status in ("contacted", "enrolled", "deferred"):
        state = ch.review_states(current, {"same": decision("same", status)})["same"]
        assert not state.set_aside
        assert state.describe() == f"{status} 2026-06-30 by ana"


def test_compare_with_reviews_new_set_aside_reconsider():
    fresh = {"Observation/a|1:320": "ANA", "Observation/c3|60": "C3 low"}
    previous = {
        "aside": snap("excluded"),
        "renewed": snap("excluded"),
        "contacted": snap("excluded"),
        "listed": snap("eligible"),
        "listed-same": snap("eligible"),
    }
    current = {
        "aside": snap("eligible"),
        "renewed": snap("eligible", evidence=fresh),
        "contacted": snap("eligible"),
        "listed": snap("eligible", evidence=fresh),
        "listed-same": snap("eligible"),
    }
    reviews = {
        "aside": decision("aside", "declined"),
        "renewed": decision("renewed", "declined"),
        "contacted": decision("contacted", "contacted"),
        "listed": decision("listed", "not-eligible"),
        "listed-same": decision("listed-same", "declined"),
    }
    changes = ch.compare(previous, current, reviews, D, {"id": 1, "as_of": "a", "finished_at": "b"})
    assert [c.patient for c in changes.set_aside] == ["aside"]
    assert changes.set_aside[0].why == "declined 2026-06-30 by ana; no new evidence since"
    assert sorted(c.patient for c in changes.new) == ["contacted", "renewed"]
    renewed = next(c for c in changes.new if c.patient == "renewed")
    assert renewed.why.startswith("declined 2026-06-30 by ana; new evidence since: C3 low; ")
    contacted = next(c for c in changes.new if c.patient == "contacted")
    assert "contacted" not in contacted.why
    assert [c.patient for c in changes.reconsider] == ["listed"]
    assert changes.reconsider[0].why == (
        "not-eligible 2026-06-30 by ana; new evidence since: C3 low"
    )
    assert changes.for_patient("listed").startswith("new evidence since review: ")
    assert changes.for_patient("aside").startswith("set aside: ")
    assert set(changes.reviews) == set(reviews)


def test_a_runs_snapshots_read_as_asked_are_its_snapshots(tmp_path):
    """The diff reads the previous run's snapshots from the history as it asks for them
    (memory does not grow with that run's candidates): the same patients, in the same
    order, with the same snapshots, as the dict the history gives."""
    with State(tmp_path) as state:
        run = state.record_run(
            trial="t", scope="s", as_of="2026-06-30", started_at="2026-06-30T00:00:00Z",
            outcome="complete", checkpoint=None, funnel={},
            candidates=[(p, {"status": "eligible", "rank": i}, {}) for i, p in enumerate("cab")],
        )  # fmt: skip
        whole, asked = state.snapshots(run), state.snapshots_read_as_asked(run)
        assert list(asked.items()) == list(whole.items()) and list(asked) == list(whole)
        assert len(asked) == 3 and asked["b"] == {"status": "eligible", "rank": 2}
        assert asked.get("nobody") is None and "a" in asked
        with pytest.raises(KeyError):
            asked["nobody"]
