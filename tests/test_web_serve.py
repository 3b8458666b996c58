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
from web_support import COHORT, PASSWORDS, cli, served, token


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
            time.sleep(0.5)
        finally:
            done.set()
            reader.join()
    assert code == 0, err
    assert statuses and set(statuses) == {200}, statuses
    assert runs == {"2", "3"}  # the list moved to the new run without a restart
