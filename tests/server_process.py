"""One way to run a real FHIR server for the tests: a child process on 127.0.0.1.

Every real server the tests use (sekmet-fhir, Medplum's router, fhirsnake) is
started the same way: on a free port, in its own temporary folder (its log
goes to ``server.log`` there), ready once ``GET <base>/metadata`` answers 200,
and stopped (SIGTERM, SIGKILL after 15 s) however the test ends. A server
whose parts are not installed is skipped locally with the command that
installs it, and is a test failure under CI (the ``CI`` variable set), where
``.ci/run`` must have installed it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import pytest
import requests

START_SECONDS = 60.0
STOP_SECONDS = 15.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def not_installed(part: str, how: str) -> NoReturn:
    """Skip (locally) or fail (under CI) a test that needs a part that is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{part} is not installed: .ci/run must install it ({how})")
    pytest.skip(f"{part} is not installed ({how})")


def _wait_until_ready(process: subprocess.Popen, base: str, log: Path, name: str) -> None:
    deadline = time.monotonic() + START_SECONDS
    while True:
        try:
            if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not start: " + log.read_text(errors="replace")[-2000:])
        time.sleep(0.1)


@contextmanager
def serving(
    name: str,
    command: Sequence[str],
    base: str,
    folder: Path,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Run ``command`` (which serves ``base``) with ``folder`` as its working folder;
    yield ``base`` once it answers, stop it afterwards."""
    log_path = folder / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            list(command),
            env={**os.environ, **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=folder,
        )
        try:
            _wait_until_ready(process, base, log_path, name)
            yield base
        finally:
            process.terminate()
            try:
                process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_SECONDS)
