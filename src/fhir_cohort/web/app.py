"""The workbench's Flask application: sign-in, the worklist, patient pages, the log.

Rule: every request but the sign-in page and the style sheet needs a signed-in, enabled
user whose password has not changed since they signed in (else: to ``/login``, nothing
else shown); every POST needs the session's CSRF token (else 403); only coordinators and
admins write. Each request opens the state on its own and reads in short transactions
(the database is in WAL mode), so a screen can record a run while the service runs.
Pages are Jinja2 templates with autoescaping on; none runs a script.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from flask import Flask, Response, abort, g, redirect, render_template, request, session, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as WebResponse  # what redirect() returns

from ..reviews import REVIEW_STATUSES
from ..state import RunRecord, State, StateError, UserRecord, utc_now
from . import auth, patient, screening_log, worklist
from .labels import label, trial_labels

IDLE_SECONDS = 30 * 60
AUDIT_ROWS = 1000
SESSION_HOURS = 8
WRITERS = frozenset({"coordinator", "admin"})
SIGNED_IN = ("user", "key", "seen", "since")
OPEN_ENDPOINTS = frozenset({"login", "login_post", "static"})
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@dataclass
class Workbench:
    """What the application keeps between requests (never patient data)."""

    folder: Path
    trial_files: tuple[Path, ...]
    clock: Callable[[], float] = time.time
    labels: dict[str, dict[str, str]] = field(default_factory=dict)
    throttles: tuple[auth.Throttle, auth.Throttle] = field(init=False)

    def __post_init__(self) -> None:
        self.throttles = auth.throttles(self.clock)

    def labels_of(self, trial: str) -> dict[str, str]:
        if trial not in self.labels:
            self.labels[trial] = trial_labels(trial, self.trial_files)
        return self.labels[trial]


def fingerprint(user: UserRecord) -> str:
    """Changes when the password does: a session signed in before a reset is over."""
    return hashlib.sha256(user.password.encode()).hexdigest()[:16]


def safe_back(target: str | None, default: str) -> str:
    """A same-site path to go back to after a form; anything else is ``default``.

    >>> safe_back("/?tab=declined", "/"), safe_back("//evil.example/", "/")
    ('/?tab=declined', '/')
    >>> safe_back("https://evil.example/", "/"), safe_back("/\\\\evil", "/")
    ('/', '/')
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else default


def create_app(
    folder: Path,
    *,
    secure: bool = False,
    trial_files: tuple[Path, ...] = (),
    clock: Callable[[], float] = time.time,
) -> Flask:
    """The workbench over the state in ``folder``; ``secure``: served over TLS (behind a
    proxy), so the session cookie is Secure and ``__Host-`` prefixed."""
    app = Flask(__name__)
    app.jinja_env.autoescape = True
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # a restart signs everyone out
        SESSION_COOKIE_NAME="__Host-fhir-cohort" if secure else "fhir-cohort",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=SESSION_HOURS),
        MAX_CONTENT_LENGTH=64 * 1024,
    )
    bench = Workbench(Path(folder), tuple(trial_files), clock)
    app.extensions["workbench"] = bench
    _guard(app, bench)
    _pages(app, bench)
    _forms(app, bench)
    return app


def _user() -> UserRecord:
    return g.user


def _guard(app: Flask, bench: Workbench) -> None:
    @app.before_request
    def open_state() -> WebResponse | None:
        g.state = State(bench.folder)
        g.user = None
        if request.method == "POST" and not auth.same_token(
            session.get("csrf"), request.form.get("csrf")
        ):
            abort(403, "this form has expired or did not come from this site; reload the page")
        if request.endpoint in OPEN_ENDPOINTS:
            return None
        user = g.state.user(session.get("user") or "")
        now = bench.clock()
        fresh = (
            now - float(session.get("seen", 0)) < IDLE_SECONDS
            and now - float(session.get("since", 0)) < SESSION_HOURS * 3600
        )
        if user is None or user.disabled or session.get("key") != fingerprint(user) or not fresh:
            for key in SIGNED_IN:  # the sign-in form's token stays: a favicon fetch must
                session.pop(key, None)  # not spoil the form open in the same browser
            return redirect(url_for("login", next=request.full_path.rstrip("?")))
        session["seen"] = now
        g.user = user
        return None

    @app.teardown_request
    def close_state(_: BaseException | None) -> None:
        state = g.pop("state", None)
        if state is not None:
            state.close()

    @app.after_request
    def headers(response: Response) -> Response:
        for name, value in HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    @app.errorhandler(StateError)
    def state_error(error: StateError) -> tuple[str, int]:
        app.logger.error("%s", error)  # the folder and the cause: for whoever runs serve
        message = "the screening state cannot be used just now; try again in a minute"
        return render_template("error.html", message=message, code=503), 503

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        code = error.code or 500
        return render_template("error.html", message=error.description, code=code), code

    @app.context_processor
    def common() -> dict:
        if "csrf" not in session:
            session["csrf"] = secrets.token_urlsafe(32)
        user = g.get("user")
        return {
            "csrf": session["csrf"],
            "user": user,
            "can_write": bool(user and user.role in WRITERS),
            "decisions": worklist.DECISIONS,
        }


def _trial(state: State) -> tuple[str | None, list[str]]:
    """(the trial asked for, else the first, or None; every trial the state holds)."""
    trials = state.trials()
    asked = request.values.get("trial") or session.get("trial")
    trial = asked if asked in trials else (trials[0] if trials else None)
    if trial:
        session["trial"] = trial
    return trial, trials


def trial_rows(state: State, trial: str) -> tuple[list[worklist.Row], RunRecord | None]:
    """The worklist rows of ``trial``'s latest run, and that run."""
    run = state.latest_run(trial)
    if run is None:
        return [], None
    earlier = [r for r in state.runs(trial) if r.id < run.id and r.scope == run.scope]
    previous = state.snapshots(earlier[-1].id) if earlier else None
    rows = worklist.rows(
        state.results(run.id), state.latest_reviews(trial), state.actions(trial), previous
    )
    return rows, run


def _pages(app: Flask, bench: Workbench) -> None:
    @app.get("/login")
    def login() -> str:
        return render_template("login.html", next=request.args.get("next", ""), error="")

    @app.get("/")
    def home() -> str:
        state = g.state
        trial, trials = _trial(state)
        rows, run = trial_rows(state, trial) if trial else ([], None)
        filters = worklist.Filters(
            tab=request.args.get("tab", worklist.TO_WORK),
            status=request.args.get("status", ""),
            decision=request.args.get("decision", ""),
            changed_only=request.args.get("changed") == "1",
            query=request.args.get("q", ""),
        )
        shown, blocked, counts = worklist.worklist(rows, filters, state.do_not_contact())
        return render_template(
            "worklist.html",
            trial=trial,
            trials=trials,
            run=run,
            rows=shown,
            blocked=blocked,
            counts=counts,
            tabs=worklist.TABS,
            filters=filters,
            statuses=worklist.STATUS_ORDER,
            coordinators=_coordinators(state),
            back=request.full_path.rstrip("?"),
        )

    @app.get("/patients/<path:pid>")
    def patient_page(pid: str) -> str:
        state = g.state
        trial, trials = _trial(state)
        standing = []
        for name in trials:
            run = state.latest_run(name)
            result = state.results(run.id, pid).get(pid) if run else None
            if result is not None:
                standing.append((name, run, result))
        if not standing:
            abort(404, "this patient is in no recorded screen")
        for name, _, _ in standing:
            state.log_view(_user().name, name, pid)
        name, run, result = next((s for s in standing if s[0] == trial), standing[0])
        actions = state.actions(name, pid)
        labels = bench.labels_of(name)
        criteria = patient.nodes(result.get("criteria"), labels)
        clear_line, flagged = patient.folded_exclusions(
            patient.nodes(result.get("exclusions"), labels)
        )
        return render_template(
            "patient.html",
            pid=pid,
            trial=name,
            trials=trials,
            run=run,
            result=result,
            standing=standing,
            decisions_of={t: state.latest_reviews(t).get(pid) for t, _, _ in standing},
            criteria=criteria,
            clear_line=clear_line,
            flagged=flagged,
            checklist=patient.checklist(result, labels),
            timeline=patient.timeline(result, labels),
            history=sorted(
                [("decision", r) for r in state.reviews(name, pid)]
                + [("action", a) for a in actions],
                key=lambda pair: pair[1].at,
            ),
            actions=actions,
            blocked=state.do_not_contact().get(pid),
            coordinators=_coordinators(state),
            status_label=lambda key: label(key, labels),
            back=url_for("patient_page", pid=pid, trial=name),
            today=date.fromtimestamp(bench.clock()).isoformat(),
        )

    @app.get("/my-work")
    def my_work() -> str:
        state = g.state
        trial, trials = _trial(state)
        blocked = state.do_not_contact()
        every = {
            t: [row for row in trial_rows(state, t)[0] if row.patient not in blocked]
            for t in trials
        }
        work = worklist.my_work(every, _user().name, date.fromtimestamp(bench.clock()))
        return render_template("mywork.html", trial=trial, trials=trials, work=work)

    @app.get("/do-not-contact")
    def do_not_contact() -> str:
        trial, trials = _trial(g.state)
        return render_template(
            "dnc.html", trial=trial, trials=trials, entries=g.state.do_not_contact().values()
        )

    @app.get("/log")
    def log() -> str:
        trial, trials = _trial(g.state)
        period = screening_log.period(request.args.get("from"), request.args.get("to"))
        counts = screening_log.counts(g.state, trial, period) if trial else None
        return render_template("log.html", trial=trial, trials=trials, period=period, counts=counts)

    @app.get("/audit")
    def audit() -> str:
        if _user().role != "admin":
            abort(403, "the audit of patient-page views is for admins")
        trial, trials = _trial(g.state)
        patient_id = request.args.get("patient", "").strip() or None
        views = list(reversed(g.state.views(patient_id)))[:AUDIT_ROWS]
        return render_template(
            "audit.html", trial=trial, trials=trials, views=views, patient=patient_id or ""
        )

    @app.get("/log.csv")
    def log_csv() -> Response:
        trial, _ = _trial(g.state)
        if trial is None:
            abort(404, "no trial has a recorded run")
        period = screening_log.period(request.args.get("from"), request.args.get("to"))
        body = screening_log.csv_bytes(g.state, trial, period)
        filename = f"screening-log-{trial}-{period[0]}-{period[1]}.csv"
        return Response(
            body,
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )


def _coordinators(state: State) -> list[str]:
    return [u.name for u in state.users() if u.role in WRITERS and not u.disabled]


def _writer() -> UserRecord:
    """The signed-in user, who must be allowed to write (403 for a viewer)."""
    user = _user()
    if user.role not in WRITERS:
        abort(403, "viewers can read the worklist but not record anything")
    return user


def _field(name: str, limit: int = 2000) -> str:
    value = request.form.get(name, "").strip()
    if len(value) > limit:
        abort(400, f"{name} is longer than {limit} characters")
    return value


def _forms(app: Flask, bench: Workbench) -> None:
    @app.post("/login")
    def login_post() -> WebResponse | tuple[str, int]:
        name = request.form.get("name", "").strip()
        password = request.form.get("password", "")
        address = request.remote_addr or "?"
        target = safe_back(request.form.get("next"), url_for("home"))
        per_account, per_address = bench.throttles
        wait = max(per_account.wait(name.casefold()), per_address.wait(address))
        if wait > 0:
            message = f"too many failed sign-ins: try again in {math.ceil(wait)} seconds"
            return render_template("login.html", next=target, error=message), 429
        user = g.state.user(name)
        if not auth.password_matches(user.password if user else None, password) or (
            user is None or user.disabled
        ):
            per_account.failed(name.casefold())
            per_address.failed(address)
            error = "that name and password do not match an active user"
            return render_template("login.html", next=target, error=error), 401
        per_account.succeeded(name.casefold())
        per_address.succeeded(address)
        session.clear()
        session.permanent = True
        session.update(
            user=user.name,
            key=fingerprint(user),
            seen=bench.clock(),
            since=bench.clock(),
            csrf=secrets.token_urlsafe(32),
        )
        return redirect(target)

    @app.post("/logout")
    def logout() -> WebResponse:
        session.clear()
        return redirect(url_for("login"))

    @app.post("/patients/<path:pid>/record")
    def record(pid: str) -> WebResponse:
        user = _writer()
        state = g.state
        trial, _ = _trial(state)
        if trial is None:
            abort(404)
        if state.latest_snapshot(trial, pid) is None:
            abort(404, f"no recorded screen of {trial} lists this patient")
        back = safe_back(request.form.get("back"), url_for("patient_page", pid=pid, trial=trial))
        at = utc_now()
        decision = _field("decision", 40)
        if decision:
            if decision not in REVIEW_STATUSES:
                abort(400, f"unknown decision {decision!r}")
            state.add_review(trial, pid, decision, _field("note"), user.name, at)
            if decision in worklist.CLOSING and _field("close_reason"):
                state.add_action(trial, pid, "close", _field("close_reason"), user.name, at=at)
        elif _field("note"):
            state.add_action(trial, pid, "note", _field("note"), user.name, at=at)
        if "owner" in request.form:
            owner = _field("owner", 64)
            if owner and owner not in _coordinators(state):
                abort(400, "the owner must be an active coordinator")
            state.add_action(trial, pid, "owner", owner, user.name, at=at)
        if _field("next_action", 500):
            due = _field("due", 10) or None
            if due is not None:
                try:
                    date.fromisoformat(due)
                except ValueError:
                    abort(400, "the due date must be YYYY-MM-DD")
            state.add_action(trial, pid, "next", _field("next_action", 500), user.name, due, at)
        return redirect(back)

    @app.post("/do-not-contact")
    def do_not_contact_post() -> WebResponse:
        user = _writer()
        pid = _field("patient", 200)
        if not pid:
            abort(400, "which patient?")
        listed = request.form.get("listed", "1") == "1"
        reason = _field("reason", 500)
        if listed and not reason:
            abort(400, "say why the patient is not to be contacted")
        g.state.set_do_not_contact(pid, listed, reason, user.name)
        return redirect(safe_back(request.form.get("back"), url_for("do_not_contact")))
