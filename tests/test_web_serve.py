"""``fhir-cohort serve`` for real: waitress on 127.0.0.1 by default, the sign-in page and
the redirect of an anonymous visitor over HTTP, and a worklist that keeps answering while
a screen records a new run in the same state.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import requests
from web_support import COHORT, PASSWORDS, Clock, cli, served, token


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_binds_127_0_0_1_by_default_and_sends_visitors_to_sign_in(state_dir):
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "fhir_cohort.cli", "serve", "--state", str(state_dir),
         "--port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = process.stderr.readline()
        assert banner.strip() == f"fhir-cohort workbench on http://127.0.0.1:{port}/"
        for _ in range(100):
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/", allow_redirects=False)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert answer.status_code == 302 and answer.headers["Location"] == "/login?next=/"
        if shutil.which("ss"):  # iproute2: which address the socket listens on
            listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True,
                                       text=True).stdout  # fmt: skip
            assert f"127.0.0.1:{port}" in listening and f"0.0.0.0:{port}" not in listening
        login = requests.get(f"http://127.0.0.1:{port}/login")
        assert login.status_code == 200 and "Sign in" in login.text
        assert "waitress" not in str(login.headers).lower()
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_worklist_keeps_answering_while_a_screen_records_a_run(state_dir, tmp_path):
    with served(state_dir) as site:
        session = requests.Session()
        page = session.get(f"{site}/login")
        session.post(f"{site}/login", data={"csrf": token(page.text), "name": "ana",
                                            "password": PASSWORDS["ana"]})  # fmt: skip
        statuses: list[int] = []
        runs: set[str] = set()
        done = threading.Event()

        def read() -> None:
            while not done.is_set():
                answer = session.get(f"{site}/?trial=misle", allow_redirects=False)
                statuses.append(answer.status_code)
                runs.update(re.findall(r'id="run" class="muted">Run (\d+)', answer.text))

        reader = threading.Thread(target=read)
        reader.start()
        try:
            code, _, err = cli("screen", "--source", str(COHORT), "--state", str(state_dir),
                               "--out", str(tmp_path / "out"), "--as-of", "2026-08-01",
                               "--quiet")  # fmt: skip
            deadline = time.monotonic() + 30  # a busy machine may answer slowly
            while "3" not in runs and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            done.set()
            reader.join()
    assert code == 0, err
    assert statuses and set(statuses) == {200}, statuses
    assert runs == {"2", "3"}  # the list moved to the new run without a restart


def test_serve_on_a_taken_port_is_a_usage_error(state_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli("serve", "--state", str(state_dir), "--port", str(port))
    assert code == 2 and err.startswith(f"fhir-cohort: error: cannot listen on 127.0.0.1:{port}")


def failing_sign_ins(site: str, forwarded_for: str, count: int) -> list[int]:
    """Status codes of ``count`` wrong sign-ins sent as if through a proxy for a client
    (the session cookie is sent by hand: a Secure one is not sent over http otherwise)."""
    headers = {"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"}
    page = requests.get(f"{site}/login", headers=headers)
    headers["Cookie"] = page.headers["Set-Cookie"].split(";")[0]
    return [
        requests.post(f"{site}/login", headers=headers, data={
            "csrf": token(page.text), "name": f"x{n}", "password": "wrong"}).status_code
        for n in range(count)
    ]  # fmt: skip


def test_behind_a_trusted_proxy_the_clients_address_counts_and_cookies_are_secure(state_dir):
    with served(state_dir, trusted_proxy="127.0.0.1", clock=Clock()) as site:
        assert failing_sign_ins(site, "10.1.2.3", 11) == [401] * 10 + [429]
        assert failing_sign_ins(site, "10.9.9.9", 1) == [401]  # another client is not held up
        cookie = requests.get(f"{site}/login").headers["Set-Cookie"]
        assert cookie.startswith("__Host-fhir-cohort=") and "; Secure" in cookie


def test_without_a_trusted_proxy_forwarded_headers_are_not_believed(state_dir):
    with served(state_dir, clock=Clock()) as site:
        assert failing_sign_ins(site, "10.1.2.3", 10) == [401] * 10
        assert failing_sign_ins(site, "10.9.9.9", 1) == [429]  # one address: 127.0.0.1
        assert "Secure" not in requests.get(f"{site}/login").headers["Set-Cookie"]
