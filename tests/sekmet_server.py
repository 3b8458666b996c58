"""A real FHIR server for the integration tests: sekmet-fhir on 127.0.0.1.

Started on a free port with its own SQLite file in a temporary folder, stopped
at the end (``server_process.serving``). Installed from the project's test
extras; where it is missing the tests are skipped, except in CI, where that is
an error.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from server_process import free_port, not_installed, serving


def require_sekmet() -> None:
    if importlib.util.find_spec("sekmet") is None:
        not_installed("sekmet-fhir", "pip install -e '.[test]'")


@contextmanager
def sekmet(folder: Path, server_auth: dict | None = None) -> Iterator[str]:
    """Run sekmet on a free port; yield its FHIR base URL."""
    require_sekmet()
    port = free_port()
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
    command = [
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
    ]
    with serving("sekmet", command, base, folder, env={"SEKMET_CONFIG": str(config)}) as url:
        yield url
