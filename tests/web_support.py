"""Shared by the workbench tests: a state with real runs of the bundled cohort, users,
a signed-in Flask test client and a real waitress server on 127.0.0.1.

The bundled cohort is screened twice (as of 2026-06-30, then 2026-07-22, when some
washouts have ended) through ``fhir_cohort.cli.main`` once per test session; each test
gets its own copy of that state folder. Passwords are hashed with argon2id as in use, but
with the smallest cost parameters (a production hash takes half a second here, and the
hash keeps its own parameters, so verifying follows them).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from fhir_cohort.cli import main
from fhir_cohort.commands.serve import make_server
from fhir_cohort.state import State
from fhir_cohort.web import auth
from fhir_cohort.web.app import create_app
from fhir_cohort.web.auth import hash_password

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
AS_OF = ("2026-06-30", "2026-07-22")
PASSWORDS = {"ana": "ana-password-1", "vic": "vic-password-1", "root": "root-password-1"}
ROLES = {"ana": "coordinator", "vic": "viewer", "root": "admin"}
TOKEN = re.compile(r'name="csrf" value="([^"]+)"')

auth._HASHER = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
auth._DUMMY = auth._HASHER.hash("nobody's password")


def cli(*argv: str) -> tuple[int, str, str]:
    """Run the command line in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def screened_state(tmp_path_factory) -> Path:
    """A state folder with two runs of the bundled cohort and no users."""
    base = tmp_path_factory.mktemp("web-state")
    for as_of in AS_OF:
        code, _, err = cli(
            "screen", "--state", str(base / "state"), "--out", str(base / "out"),
            "--as-of", as_of, "--quiet",
        )  # fmt: skip
        assert code == 0, err
    return base / "state"


@pytest.fixture(scope="session")
def users_state(screened_state, tmp_path_factory) -> Path:
    """The screened state with a coordinator (ana), a viewer (vic) and an admin (root)."""
    folder = tmp_path_factory.mktemp("web-users") / "state"
    shutil.copytree(screened_state, folder, ignore=shutil.ignore_patterns("lock", "work"))
    add_users(folder)
    return folder


def add_users(folder: Path, names=tuple(PASSWORDS)) -> None:
    with State(folder) as state:
        for name in names:
            state.add_user(name, ROLES[name], hash_password(PASSWORDS[name]))


@pytest.fixture
def state_dir(users_state, tmp_path) -> Path:
    """A private copy of the screened state, with a coordinator, a viewer and an admin."""
    folder = tmp_path / "state"
    shutil.copytree(users_state, folder)
    return folder


class Clock:
    """A clock the tests move by hand (seconds since the epoch)."""

    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def token(html: str) -> str:
    match = TOKEN.search(html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def sign_in(client, name: str, password: str | None = None, address: str = "127.0.0.1"):
    """Sign in through the form (GET /login for the token, POST it); return the answer."""
    page = client.get("/login")
    return client.post(
        "/login",
        data={"csrf": token(page.text), "name": name, "password": password or PASSWORDS[name]},
        environ_base={"REMOTE_ADDR": address},
    )


def signed_in(state_dir: Path, name: str = "ana", clock: Clock | None = None):
    app = create_app(state_dir, clock=clock or Clock())
    client = app.test_client()
    answer = sign_in(client, name)
    assert answer.status_code == 302, answer.text
    return client


@contextlib.contextmanager
def served(state_dir: Path, trusted_proxy: str | None = None, **options) -> Iterator[str]:
    """The workbench served as ``serve`` serves it, on a free port of 127.0.0.1; yields
    its URL."""
    app = create_app(state_dir, secure=bool(trusted_proxy), **options)
    server = make_server(app, "127.0.0.1", 0, trusted_proxy)
    closing = threading.Event()

    def run() -> None:
        try:
            server.run()
        except OSError:  # its sockets closed under its select(): how waitress stops
            if not closing.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        closing.set()
        for channel in list(server._map.values()):  # the browser's keep-alive connections
            channel.close()  # too, or waitress's loop runs on while they are open
        server.task_dispatcher.shutdown()
        thread.join(timeout=5)
