"""The workbench through Flask's test client: sign-in, sessions, CSRF, roles, the
worklist's order and filters, decisions and follow-up records, the patient page and its
audit, do-not-contact, the screening log, purge and the state's migration.

Every test works on its own copy of a state holding two real runs of the bundled cohort
(tests/web_support.py). Answers are checked by status code and by what the state holds
afterwards, never only by "it ran".
"""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
import time

import pytest
from web_support import PASSWORDS, Clock, add_users, cli, sign_in, signed_in, token

from fhir_cohort.reviews import SET_ASIDE
from fhir_cohort.state import SCHEMA, SCHEMA_VERSION, State
from fhir_cohort.web.app import create_app, trial_rows

ELIGIBLE = "p01-eligible-baseline"
RECORD_FORM = '<form method="post" action="/patients/'
PAGES = ("/", "/?tab=declined", f"/patients/{ELIGIBLE}", "/my-work", "/do-not-contact",
         "/log", "/log.csv")  # fmt: skip


def rows(state_dir):
    with State(state_dir) as state:
        return trial_rows(state, "misle")[0]


def record(client, pid: str, **fields):
    page = client.get(f"/patients/{pid}?trial=misle")
    return client.post(
        f"/patients/{pid}/record", data={"csrf": token(page.text), "trial": "misle", **fields}
    )


# -- serve and users -----------------------------------------------------------------
def test_serve_refuses_to_start_without_an_active_user(screened_state, tmp_path):
    code, _, err = cli("serve", "--state", str(screened_state), "--port", "0")
    assert code == 2
    assert "add a user first" in err and err.count("\n") == 1
    folder = tmp_path / "only-disabled"
    add_users(folder, ("vic",))
    assert cli("users", "disable", "vic", "--state", str(folder))[0] == 0
    code, _, err = cli("serve", "--state", str(folder))
    assert code == 2 and "add a user first" in err


def test_users_add_reads_the_password_from_stdin_or_a_named_variable(tmp_path, monkeypatch):
    folder = str(tmp_path / "s")
    monkeypatch.setattr("sys.stdin", io.StringIO("a-long-password\n"))
    assert cli("users", "add", "amy", "--role", "coordinator", "--state", folder)[0] == 0
    monkeypatch.setenv("NEW_PW", "another-long-password")
    code, out, _ = cli("users", "add", "bo", "--role", "viewer", "--password-env", "NEW_PW",
                       "--state", folder)  # fmt: skip
    assert code == 0 and "another-long-password" not in out
    with State(tmp_path / "s") as state:
        stored = {u.name: u for u in state.users()}
    assert stored["amy"].role == "coordinator" and stored["bo"].role == "viewer"
    assert stored["amy"].password.startswith("$argon2id$")
    assert "a-long-password" not in (tmp_path / "s" / "state.sqlite3").read_bytes().decode(
        "latin-1"
    )
    app = create_app(tmp_path / "s", clock=Clock())
    assert sign_in(app.test_client(), "amy", "a-long-password").status_code == 302
    assert sign_in(app.test_client(), "bo", "another-long-password").status_code == 302
    code, out, _ = cli("users", "list", "--state", folder)
    assert "amy" in out and "viewer" in out


def test_users_refuse_short_passwords_unknown_variables_and_duplicates(tmp_path, monkeypatch):
    folder = str(tmp_path / "s")
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    code, _, err = cli("users", "add", "amy", "--state", folder)
    assert code == 2 and "at least 10 characters" in err
    code, _, err = cli("users", "add", "amy", "--password-env", "NOT_SET_ANYWHERE",
                       "--state", folder)  # fmt: skip
    assert code == 2 and "NOT_SET_ANYWHERE is not set" in err
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    assert cli("users", "add", "amy", "--state", folder)[0] == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("long-enough-pw\n"))
    code, _, err = cli("users", "add", "amy", "--state", folder)
    assert code == 2 and "exists" in err
    code, _, err = cli("users", "disable", "--state", folder)
    assert code == 2 and "users disable needs NAME" in err
    code, _, err = cli("users", "disable", "nobody", "--state", folder)
    assert code == 2 and "no user 'nobody'" in err
    code, _, err = cli("users", "add", "bad\x1bname", "--state", folder)
    assert code == 2 and "printable" in err
    with pytest.raises(SystemExit):  # no option takes a password as an argument
        cli("users", "add", "x", "--password", "secret-secret")


def test_reset_password_and_disable_end_open_sessions(state_dir, monkeypatch):
    client = signed_in(state_dir, "ana")
    assert client.get("/").status_code == 200
    monkeypatch.setattr("sys.stdin", io.StringIO("a-brand-new-password\n"))
    assert cli("users", "reset-password", "ana", "--state", str(state_dir))[0] == 0
    assert client.get("/").headers["Location"].startswith("/login")
    assert sign_in(client, "ana").status_code == 401  # the old password is gone
    assert sign_in(client, "ana", "a-brand-new-password").status_code == 302
    assert cli("users", "disable", "ana", "--state", str(state_dir))[0] == 0
    assert client.get("/").headers["Location"].startswith("/login")
    assert sign_in(client, "ana", "a-brand-new-password").status_code == 401


# -- sign-in, sessions, CSRF ---------------------------------------------------------
@pytest.mark.parametrize("path", PAGES)
def test_every_page_refuses_an_anonymous_visitor_and_shows_nothing(state_dir, path):
    answer = create_app(state_dir).test_client().get(path)
    assert answer.status_code == 302
    assert answer.headers["Location"].startswith("/login?next=")
    words = re.sub(r"<[^>]*>", "", answer.text).replace(answer.headers["Location"], "")
    assert "eligible" not in words and not any(ch.isdigit() for ch in words)  # not a count


def test_the_login_page_shows_no_patient_and_no_count(state_dir):
    page = create_app(state_dir).test_client().get("/login")
    assert page.status_code == 200
    assert "p01" not in page.text and 'class="count"' not in page.text


def test_session_cookie_is_httponly_samesite_and_secure_behind_tls(state_dir):
    plain = sign_in(create_app(state_dir).test_client(), "ana").headers["Set-Cookie"]
    assert "HttpOnly" in plain and "SameSite=Strict" in plain and "Secure" not in plain
    client = create_app(state_dir, secure=True).test_client()
    page = client.get("/login", base_url="https://localhost")
    secure = client.post(
        "/login",
        data={"csrf": token(page.text), "name": "ana", "password": PASSWORDS["ana"]},
        base_url="https://localhost",
    ).headers["Set-Cookie"]
    assert secure.startswith("__Host-fhir-cohort=") and "; Secure" in secure


def test_a_session_expires_after_half_an_hour_idle(state_dir):
    clock = Clock()
    client = signed_in(state_dir, "ana", clock)
    clock.now += 29 * 60
    assert client.get("/").status_code == 200
    clock.now += 29 * 60  # each request counts as activity
    assert client.get("/").status_code == 200
    clock.now += 31 * 60
    assert client.get("/").headers["Location"].startswith("/login")


def test_a_session_ends_after_eight_hours_however_busy(state_dir):
    clock = Clock()
    client = signed_in(state_dir, "ana", clock)
    for _ in range(16):  # a request every 29 minutes: never idle
        clock.now += 29 * 60
        assert client.get("/").status_code == 200, clock.now
    clock.now += 29 * 60  # 8 h 3 min after signing in
    assert client.get("/").headers["Location"].startswith("/login")


def test_a_post_without_the_sessions_csrf_token_is_refused(state_dir):
    client = signed_in(state_dir)
    for data in ({}, {"csrf": "forged"}, {"csrf": ""}):
        answer = client.post(
            f"/patients/{ELIGIBLE}/record", data={**data, "trial": "misle", "decision": "declined"}
        )
        assert answer.status_code == 403
    answer = client.post("/do-not-contact", data={"patient": ELIGIBLE, "reason": "x"})
    assert answer.status_code == 403
    with State(state_dir) as state:
        assert state.reviews("misle") == [] and state.do_not_contact() == {}
    login = (
        create_app(state_dir)
        .test_client()
        .post("/login", data={"name": "ana", "password": PASSWORDS["ana"]})
    )
    assert login.status_code == 403  # the sign-in form too


def test_sign_in_goes_back_only_to_a_page_of_this_site(state_dir):
    client = create_app(state_dir).test_client()
    page = client.get("/login?next=//evil.example/")
    answer = client.post("/login", data={"csrf": token(page.text), "name": "ana",
                                         "password": PASSWORDS["ana"],
                                         "next": "//evil.example/"})  # fmt: skip
    assert answer.headers["Location"] == "/"


def test_failed_sign_ins_slow_the_account_then_clear_after_the_wait(state_dir):
    clock = Clock()
    client = create_app(state_dir, clock=clock).test_client()
    for _ in range(5):  # five tries are free, then each waits twice as long as the last
        assert sign_in(client, "ana", "wrong-password").status_code == 401
    refused = sign_in(client, "ana")  # even the right password waits its turn
    assert refused.status_code == 429 and "try again in 1 seconds" in refused.text
    assert sign_in(client, "root").status_code == 302  # another account is not held up
    clock.now += 1
    assert sign_in(client, "ana", "wrong-password").status_code == 401
    assert sign_in(client, "ana").status_code == 429
    for _ in range(8):  # a guesser keeps failing: the wait doubles but stops at a minute
        clock.now += 60
        assert sign_in(client, "ana", "wrong-password").status_code == 401
    assert "try again in 60 seconds" in sign_in(client, "ana").text
    clock.now += 60  # the owner of the account waits at most a minute
    assert sign_in(client, "ana").status_code == 302


def test_failed_sign_ins_from_one_address_slow_that_address(state_dir):
    clock = Clock()
    client = create_app(state_dir, clock=clock).test_client()
    for n in range(10):
        assert sign_in(client, f"nobody{n}", "x", address="10.0.0.9").status_code == 401
    assert sign_in(client, "ana", address="10.0.0.9").status_code == 429
    assert sign_in(client, "ana", address="10.0.0.10").status_code == 302


# -- roles and decisions ---------------------------------------------------------------
def test_a_coordinators_decision_is_the_review_record_the_cli_lists(state_dir):
    client = signed_in(state_dir, "ana")
    answer = record(client, ELIGIBLE, decision="declined", note="not interested",
                    close_reason="travel too far")  # fmt: skip
    assert answer.status_code == 302
    with State(state_dir) as state:
        (review,) = state.reviews("misle", ELIGIBLE)
        (close,) = [a for a in state.actions("misle", ELIGIBLE) if a.kind == "close"]
    assert (review.status, review.by, review.note) == ("declined", "ana", "not interested")
    assert close.value == "travel too far" and close.at == review.at
    assert review.status in SET_ASIDE
    code, out, _ = cli("review", "--list", "--state", str(state_dir))
    assert code == 0 and ELIGIBLE in out and "declined" in out and "ana" in out
    moved = {r.patient: r.tab for r in rows(state_dir)}
    assert moved[ELIGIBLE] == "declined"
    assert ELIGIBLE not in client.get("/?trial=misle").text
    assert ELIGIBLE in client.get("/?trial=misle&tab=declined").text


def test_undo_is_a_newer_record_and_history_is_kept(state_dir):
    client = signed_in(state_dir, "ana")
    record(client, ELIGIBLE, decision="declined")
    record(client, ELIGIBLE, decision="reopened", note="declined by mistake")
    with State(state_dir) as state:
        assert [r.status for r in state.reviews("misle", ELIGIBLE)] == ["declined", "reopened"]
    assert {r.patient: r.tab for r in rows(state_dir)}[ELIGIBLE] == "to-work"
    page = client.get(f"/patients/{ELIGIBLE}?trial=misle").text
    assert page.index('data-status="declined"') < page.index('data-status="reopened"')


def test_the_cli_accepts_the_new_decision_kinds(state_dir):
    for status in ("scheduled", "screened", "reopened"):
        code, out, _ = cli("review", ELIGIBLE, "--status", status, "--by", "cli",
                           "--state", str(state_dir))  # fmt: skip
        assert code == 0 and status in out


def test_a_viewer_reads_but_cannot_decide(state_dir):
    client = signed_in(state_dir, "vic")
    page = client.get("/?trial=misle")
    assert page.status_code == 200 and ELIGIBLE in page.text
    assert RECORD_FORM not in page.text  # no forms to decide with
    assert RECORD_FORM in signed_in(state_dir, "ana").get("/?trial=misle").text
    answer = record(client, ELIGIBLE, decision="enrolled")
    assert answer.status_code == 403
    answer = client.post("/do-not-contact", data={"csrf": token(page.text), "patient": ELIGIBLE,
                                                  "reason": "x"})  # fmt: skip
    assert answer.status_code == 403
    with State(state_dir) as state:
        assert state.reviews("misle") == [] and state.do_not_contact() == {}


def test_unknown_decisions_owners_and_due_dates_are_refused(state_dir):
    client = signed_in(state_dir, "ana")
    assert record(client, ELIGIBLE, decision="approved").status_code == 400
    assert record(client, ELIGIBLE, owner="vic").status_code == 400  # a viewer owns nothing
    assert record(client, ELIGIBLE, next_action="call", due="next week").status_code == 400
    assert record(client, "no-such-patient", decision="contacted").status_code == 404
    assert record(client, "no-such-patient", note="x", owner="ana").status_code == 404
    with State(state_dir) as state:
        assert state.reviews("misle") == [] and state.actions("misle") == []


# -- the worklist -------------------------------------------------------------------------
def test_worklist_order_eligible_by_rank_then_washouts_by_end_then_needs_review(state_dir):
    work = [r for r in rows(state_dir) if r.tab == "to-work"]
    statuses = [r.status for r in work]
    assert statuses == sorted(statuses, key=["eligible", "washout", "needs-review"].index)
    eligible = [r.rank for r in work if r.status == "eligible"]
    assert eligible == sorted(eligible) and len(eligible) > 10
    ends = [r.eligible_from for r in work if r.status == "washout"]
    assert ends == sorted(ends) and len(ends) > 3
    review = [r for r in work if r.status == "needs-review"]
    assert review and all(r.reason for r in review)  # the reason, in words
    page = signed_in(state_dir).get("/?trial=misle").text
    shown = [page.index(f'data-patient="{r.patient}"') for r in work[:: max(1, len(work) // 9)]]
    assert shown == sorted(shown)


def test_filters_status_changed_since_last_run_and_search(state_dir):
    client = signed_in(state_dir)
    washouts = client.get("/?trial=misle&status=washout").text
    assert 'data-status="washout"' in washouts and 'data-status="eligible"' not in washouts
    changed = [r for r in rows(state_dir) if r.changed]
    assert changed and len(changed) < len(rows(state_dir))  # the second run moved some
    page = client.get("/?trial=misle&changed=1").text
    assert all(f'data-patient="{r.patient}"' in page for r in changed if r.tab == "to-work")
    unchanged = next(r for r in rows(state_dir) if not r.changed and r.tab == "to-work")
    assert f'data-patient="{unchanged.patient}"' not in page
    found = client.get("/?trial=misle&q=ELIGIBLE-BASEL").text
    assert found.count("<tr data-patient=") == 1 and ELIGIBLE in found
    record(client, ELIGIBLE, decision="contacted")
    assert ELIGIBLE in client.get("/?trial=misle&decision=contacted").text


def test_do_not_contact_keeps_a_patient_off_the_list_and_says_why_on_look_up(state_dir):
    client = signed_in(state_dir)
    page = client.get("/do-not-contact")
    form = {"csrf": token(page.text), "patient": ELIGIBLE, "listed": "1"}
    client.post("/do-not-contact", data={**form, "reason": "opted out by phone"})
    work = client.get("/?trial=misle").text
    assert f'data-patient="{ELIGIBLE}"' not in work
    found = client.get(f"/?trial=misle&q={ELIGIBLE}").text
    assert 'id="blocked-found"' in found and "opted out by phone" in found
    assert '<tr data-patient="' + ELIGIBLE not in found
    patient = client.get(f"/patients/{ELIGIBLE}?trial=misle").text
    assert 'id="dnc-banner"' in patient and "opted out by phone" in patient
    assert RECORD_FORM not in patient  # nothing to record while on the list
    client.post("/do-not-contact", data={**form, "listed": "0", "reason": "consented again"})
    assert f'data-patient="{ELIGIBLE}"' in client.get("/?trial=misle").text


def test_my_work_lists_what_a_coordinator_owns_by_due_day(state_dir):
    clock = Clock()
    client = signed_in(state_dir, "ana", clock)
    today = time.strftime("%Y-%m-%d", time.localtime(clock.now))
    record(client, ELIGIBLE, owner="ana", next_action="call back", due="2020-01-01")
    record(client, "p02-age-18-birthday-on-d", owner="ana", next_action="visit", due=today)
    record(client, "p05-age-65-day-before-66th", owner="root", next_action="x", due=today)
    page = client.get("/my-work").text
    overdue = page.split('id="work-overdue"')[1].split("</section>")[0]
    due = page.split('id="work-due"')[1].split("</section>")[0]
    assert ELIGIBLE in overdue and "call back" in overdue
    assert "p02-age-18-birthday-on-d" in due and "p05-age-65" not in page
    record(client, "p02-age-18-birthday-on-d", decision="enrolled")  # closed: no one's work
    page = client.get("/do-not-contact")
    form = {"csrf": token(page.text), "patient": ELIGIBLE, "listed": "1", "reason": "opted out"}
    client.post("/do-not-contact", data=form)
    page = client.get("/my-work").text
    assert ELIGIBLE not in page and "p02-age-18" not in page


# -- the patient page and its audit ---------------------------------------------------------
def test_patient_page_folds_clear_exclusions_puts_met_first_and_is_audited(state_dir):
    client = signed_in(state_dir, "vic")
    page = client.get(f"/patients/{ELIGIBLE}?trial=misle").text
    clear = page.split('id="clear-exclusions">')[1].split("</p>")[0]
    assert clear.startswith("no exclusion found: ") and "Dialysis" in clear and "HIV" in clear
    criteria = page.split('id="criteria"')[1].split('id="exclusions"')[0]
    assert criteria.index("r-met") < criteria.index('<details class="not-met">')
    assert 'data-key="malar_rash"' in criteria and "Malar rash" in criteria  # the trial's label
    assert 'id="timeline"' in page and "Observation/" in page.split('id="timeline"')[1]
    with State(state_dir) as state:
        (view,) = state.views(ELIGIBLE)
    assert view[0] == "vic" and view[2:] == ("misle", ELIGIBLE) and view[1].endswith("Z")


def test_a_washout_patients_page_prefills_the_call_back_on_the_day_it_ends(state_dir):
    washout = next(r for r in rows(state_dir) if r.status == "washout")
    page = signed_in(state_dir).get(f"/patients/{washout.patient}?trial=misle").text
    assert 'value="call back when the washout ends"' in page
    assert f'type="date" value="{washout.eligible_from}"' in page
    assert "Verify in the chart" in page


def test_markup_in_notes_and_reasons_is_text(state_dir):
    client = signed_in(state_dir)
    record(client, ELIGIBLE, decision="contacted", note="<script>alert(1)</script>")
    page = client.get(f"/patients/{ELIGIBLE}?trial=misle").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert (
        "script-src" not in page
        and "default-src 'none'" in client.get("/").headers["Content-Security-Policy"]
    )


def test_an_unknown_patient_is_404_and_not_audited(state_dir):
    assert signed_in(state_dir).get("/patients/nobody-at-all").status_code == 404
    with State(state_dir) as state:
        assert state.views() == []


# -- the screening log ---------------------------------------------------------------------
def test_screening_log_counts_and_csv(state_dir):
    client = signed_in(state_dir)
    record(client, ELIGIBLE, decision="contacted")
    record(client, ELIGIBLE, decision="declined", close_reason="=HYPERLINK(1)", note="@x")
    record(client, "p02-age-18-birthday-on-d", decision="contacted")
    record(client, "p02-age-18-birthday-on-d", decision="enrolled")
    page = client.get("/log?trial=misle").text
    assert 'data-step="contacted"><th>contacted</th><td>2</td>' in page
    assert 'data-step="enrolled"><th>enrolled</th><td>1</td>' in page
    with State(state_dir) as state:
        funnel = state.funnels("misle")[-1][1]["status"]
    listed = funnel["eligible"] + funnel["washout"] + funnel["needs-review"]
    prescreened = page.split('data-step="prescreened">')[1].split("</tr>")[0]
    assert prescreened.endswith(f"<td>{listed}</td>")
    body = client.get("/log.csv?trial=misle")
    assert body.headers["Content-Disposition"].startswith("attachment;")
    log = list(csv.DictReader(io.StringIO(body.text)))
    assert [r["decision"] for r in log] == ["contacted", "declined", "contacted", "enrolled"]
    declined = log[1]
    assert declined["close_reason"] == "'=HYPERLINK(1)" and declined["note"] == "'@x"
    assert declined["decided_by"] == "ana"
    old = client.get("/log?trial=misle&from=2001-01-01&to=2001-12-31").text
    assert "no run in the period" in old and "<td>2</td>" not in old


# -- purge and migration ---------------------------------------------------------------------
def test_purge_removes_old_runs_patient_data_and_keeps_counts_and_the_latest(state_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "candidates.json").write_text("{}")
    (out / "report.html").write_text("x")
    os.utime(out / "candidates.json", (0, 0))
    with State(state_dir) as state:
        runs = state.runs("misle")
        db = sqlite3.connect(state_dir / "state.sqlite3")
        db.execute("UPDATE runs SET finished_at = '2001-01-01T00:00:00Z'")
        db.commit()
        db.close()
    code, out_text, _ = cli("purge", "--older-than", "30", "--state", str(state_dir),
                            "--out", str(out))  # fmt: skip
    assert code == 0 and "1 run(s)" in out_text
    with State(state_dir) as state:
        assert state.results(runs[0].id) == {} and state.pool(runs[0].id) == []
        assert state.results(runs[1].id)  # the latest complete run is kept
        assert len(state.funnels("misle")) == 2  # the counts stay
        assert state.funnels("misle")[0][1]["status"]["eligible"] > 0
    assert not (out / "candidates.json").exists() and (out / "report.html").exists()


def test_purge_removes_a_bulk_export_no_run_used_for_days_and_keeps_one_in_use(state_dir):
    with State(state_dir) as state:
        stale, used = state.export_folder("stale scope"), state.export_folder("nightly scope")
    for export in (stale, used):
        (export / "baseline").mkdir(parents=True)
        (export / "baseline" / "Condition.ndjson").write_text('{"resourceType":"Condition"}')
        (export / ".bulk-state.json").write_text("{}")
        for path in (*export.rglob("*"), export):
            os.utime(path, (0, 0))
    (used / ".bulk-state.json").write_text('{"baseline": {}}')  # last night's run
    code, out_text, _ = cli("purge", "--older-than", "30", "--state", str(state_dir))
    assert code == 0 and "removed 1 Bulk export(s) unused for 30 days" in out_text
    assert not stale.exists()
    assert (used / "baseline" / "Condition.ndjson").is_file()
    code, out_text, _ = cli("purge", "--older-than", "30", "--state", str(state_dir))
    assert code == 0 and "Bulk" not in out_text and used.is_dir()


def test_an_old_state_is_migrated_and_keeps_its_runs_and_decisions(tmp_path):
    folder = tmp_path / "old"
    folder.mkdir()
    db = sqlite3.connect(folder / "state.sqlite3")
    db.executescript(SCHEMA)
    db.execute("INSERT INTO runs (trial, scope, as_of, started_at, finished_at, outcome, funnel) "
               "VALUES ('t', 's', '2026-01-01', 'a', 'b', 'complete', '{}')")  # fmt: skip
    db.execute("INSERT INTO reviews (trial, patient, status, note, by, at, evidence_seen) "
               "VALUES ('t', 'p', 'contacted', '', 'x', 'c', '[]')")  # fmt: skip
    db.commit()
    db.close()
    with State(folder) as state:
        assert [r.trial for r in state.runs("t")] == ["t"]
        assert [r.status for r in state.reviews("t")] == ["contacted"]
        assert state.users() == [] and state.latest_run("t").id == 1
    db = sqlite3.connect(folder / "state.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("INSERT INTO page_views (user, at, trial, patient) VALUES ('a','b','c','d')")
        db.execute("DELETE FROM page_views")


def test_every_trial_in_the_state_is_served_and_the_patient_page_shows_each(state_dir):
    with State(state_dir) as state:
        run = state.latest_run("misle")
        results, snapshots = state.results(run.id), state.snapshots(run.id)
        state.record_run(
            trial="other-trial", scope="s", as_of=run.as_of, started_at=run.started_at,
            outcome="partial", checkpoint=None, funnel={"status": {"eligible": 1}},
            candidates=[(ELIGIBLE, snapshots[ELIGIBLE], dict(results[ELIGIBLE], rank=7))],
        )  # fmt: skip
    client = signed_in(state_dir, "ana")
    home = client.get("/").text
    assert 'data-trial="misle"' in home and 'data-trial="other-trial"' in home
    other = client.get("/?trial=other-trial").text
    assert other.count("<tr data-patient=") == 1 and 'id="partial"' in other  # never silent
    page = client.get(f"/patients/{ELIGIBLE}?trial=misle").text
    standing = page.split('id="standing"')[1].split("</section>")[0]
    assert 'data-trial="misle"' in standing and 'data-trial="other-trial"' in standing
    assert "rank 7" in standing
    with State(state_dir) as state:
        assert sorted(v[2] for v in state.views(ELIGIBLE)) == ["misle", "other-trial"]


def test_the_do_not_contact_cli_shares_the_list_with_the_workbench(state_dir):
    folder = str(state_dir)
    code, _, err = cli("do-not-contact", "add", ELIGIBLE, "--state", folder)
    assert code == 2 and "--reason" in err
    code, out, _ = cli("do-not-contact", "add", ELIGIBLE, "--reason", "asked by letter",
                       "--by", "desk", "--state", folder)  # fmt: skip
    assert code == 0 and "is on the do-not-contact list" in out
    assert "asked by letter" in cli("do-not-contact", "list", "--state", folder)[1]
    client = signed_in(state_dir)
    assert f'data-patient="{ELIGIBLE}"' not in client.get("/?trial=misle").text
    assert "asked by letter" in client.get("/do-not-contact").text
    assert cli("do-not-contact", "remove", ELIGIBLE, "--by", "desk", "--state", folder)[0] == 0
    assert "nobody is on" in cli("do-not-contact", "list", "--state", folder)[1]
    assert f'data-patient="{ELIGIBLE}"' in client.get("/?trial=misle").text


def test_admins_read_the_audit_of_patient_page_views_and_no_one_else(state_dir):
    signed_in(state_dir, "vic").get(f"/patients/{ELIGIBLE}?trial=misle")
    assert signed_in(state_dir, "ana").get("/audit").status_code == 403
    page = signed_in(state_dir, "root").get(f"/audit?patient={ELIGIBLE}").text
    row = page.split('<table id="audit">')[1].split("<tbody>")[1].split("</tr>")[0]
    assert "<td>vic</td><td>misle</td>" in row and ELIGIBLE in row


def test_labels_come_from_the_trial_file_else_from_the_key(state_dir, tmp_path):
    own = tmp_path / "site-misle.yaml"
    own.write_text("trial: misle\nlabels:\n  dialysis: Long-term dialysis (site wording)\n")
    other = tmp_path / "other.yaml"
    other.write_text("trial: another\nlabels:\n  dialysis: Not this trial's words\n")
    app = create_app(state_dir, clock=Clock(), trial_files=(other, own))
    client = app.test_client()
    sign_in(client, "ana")
    clear = client.get(f"/patients/{ELIGIBLE}?trial=misle").text.split('id="clear-exclusions">')[1]
    assert clear.startswith("no exclusion found: ") and "Long-term dialysis (site wording)" in clear
    assert "Not this trial" not in clear
    assert "Hepatitis b" in clear  # no label in that file: the key in words


def test_a_state_that_cannot_be_read_is_503_without_its_path(state_dir):
    client = signed_in(state_dir)
    (state_dir / "state.sqlite3").write_bytes(b"not a database" * 100)
    for path in ("/login", "/"):
        answer = client.get(path)
        assert answer.status_code == 503 and str(state_dir) not in answer.text
        assert "cannot be used just now" in answer.text
