"""A real FHIR server for the integration tests: sekmet-fhir on 127.0.0.1.

Started once per test session on a free port with its own SQLite file in a
temporary folder, stopped at the end. Installed from the project's test extras;
where it is missing the tests are skipped, except in CI, where that is an error.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def require_sekmet() -> None:
    if importlib.util.find_spec("sekmet") is None:
        if os.environ.get("CI"):
            pytest.fail("sekmet-fhir is not installed: .ci/run must install the test extras")
        pytest.skip("sekmet-fhir is not installed (pip install -e '.[test]')")


@contextmanager
def sekmet(folder: Path, server_auth: dict | None = None):
    """Run sekmet on a free port; yield its FHIR base URL."""
    require_sekmet()
    port = _free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    settings = {
        "host": "127.0.0.1",
        "port": port,
        "base_url": base,
        "data_dir": str(folder / "data"),
        "simulator": {"enabled": False, "delay_seconds": 0},
        "log_inbound": False,
    }
    if server_auth:
        settings["server_auth"] = server_auth
    config = folder / "settings.yaml"
    config.write_text(yaml.safe_dump(settings))
    log = (folder / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "sekmet.main:app_factory",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "SEKMET_CONFIG": str(config)},
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=folder,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "sekmet did not start: " + (folder / "server.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()
