"""Real FHIR servers for the tests: sekmet-fhir, Medplum's router and fhirsnake.

Three implementations that answer the same requests differently (see
``docs/servers.md``), each run on 127.0.0.1 by ``server_process.serving``:

- **sekmet**: sekmet-fhir from the test extras (``tests/sekmet_server.py``).
- **medplum**: ``@medplum/fhir-router`` 4.5.2 with its in-memory repository,
  served by ``tests/servers/medplum/server.mjs`` under ``/fhir/R4`` (Node 20.19+;
  ``npm ci`` in that folder installs the locked packages).
- **fhirsnake**: fhirsnake 1.1.0, which serves resources from files and ignores
  search parameters. Its FastAPI pin conflicts with sekmet's, so it lives in its
  own virtual environment, ``.venv-fhirsnake`` at the repository root (or
  ``$FHIRSNAKE_VENV``). It imports its modules as top-level ``main`` and
  ``files`` and reads ``./resources/<Type>/<id>.json`` at start, so it runs
  with its package folder on ``PYTHONPATH`` and the server's temporary folder
  (with an empty ``resources/``) as working folder.

``scripts/test-servers-setup.sh`` installs the last two. Session fixtures:
``real_server`` (started empty, for the characterisation tests, which write
their own few resources) and ``cohort_server`` (a separate instance seeded
with the bundled cohort by the project's own ``fhir-cohort seed``), each
parametrised over ``SERVERS``; tests pick servers with indirect
parametrisation. The two never share an instance: fhirsnake answers every
search with every resource of the type, so one test's writes would reach
another's screen.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sekmet_server import sekmet
from server_process import free_port, not_installed, serving

from fhir_cohort.cli import main
from fhir_cohort.commands.seed import collect
from fhir_cohort.sources.files import FileSource

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
MEDPLUM_DIR = ROOT / "tests" / "servers" / "medplum"
SETUP = "scripts/test-servers-setup.sh"


@contextmanager
def medplum(folder: Path) -> Iterator[str]:
    """Medplum's router on a free port; yield its FHIR base URL (``.../fhir/R4``)."""
    node = shutil.which("node")
    if node is None:
        not_installed("Node.js (20.19 or newer)", "apt-get install nodejs")
    if not (MEDPLUM_DIR / "node_modules" / "@medplum" / "fhir-router" / "package.json").is_file():
        not_installed("Medplum's FHIR router", f"{SETUP}, or npm ci in tests/servers/medplum")
    port = free_port()
    command = [node, str(MEDPLUM_DIR / "server.mjs"), str(port)]
    with serving("medplum", command, f"http://127.0.0.1:{port}/fhir/R4", folder) as base:
        yield base


def fhirsnake_package() -> Path | None:
    """fhirsnake's package folder in its own virtual environment, if installed there."""
    venv = Path(os.environ.get("FHIRSNAKE_VENV") or ROOT / ".venv-fhirsnake")
    found = sorted(venv.glob("lib/python3*/site-packages/fhirsnake/main.py"))
    return found[-1].parent if found else None


@contextmanager
def fhirsnake(folder: Path) -> Iterator[str]:
    """fhirsnake on a free port with an empty ``resources/``; yield its base URL."""
    package = fhirsnake_package()
    if package is None:
        not_installed("fhirsnake", f"{SETUP} creates .venv-fhirsnake")
    python = package.parents[3] / "bin" / "python"
    (folder / "resources").mkdir()
    port = free_port()
    command = [str(python), "-m", "uvicorn", "main:app", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--log-level", "warning"]
    env = {"PYTHONPATH": str(package)}
    with serving("fhirsnake", command, f"http://127.0.0.1:{port}", folder, env=env) as base:
        yield base


SERVERS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "sekmet": sekmet,
    "medplum": medplum,
    "fhirsnake": fhirsnake,
}


@dataclass(frozen=True)
class RealServer:
    name: str  # a key of SERVERS
    base: str  # its FHIR base URL


def cohort_counts() -> dict[str, int]:
    """Resources per type that seeding the bundled cohort writes (after seed's de-duplication)."""
    counts: dict[str, int] = {}
    for resource in collect(FileSource(COHORT), []):
        counts[resource["resourceType"]] = counts.get(resource["resourceType"], 0) + 1
    return counts


def held(base: str, kind: str) -> int | None:
    """How many resources of a type the server says it holds (``_summary=count``)."""
    answer = requests.get(f"{base}/{kind}", params={"_summary": "count"}, timeout=30)
    answer.raise_for_status()
    total = answer.json().get("total")
    return total if isinstance(total, int) else None


def seed_cohort(base: str) -> None:
    """Put the bundled cohort on a server with ``fhir-cohort seed`` and check it all arrived.

    ``seed`` works on all three servers: sekmet takes its transaction Bundles,
    Medplum's router runs them as batches (without the project's transaction
    setting it does not make them atomic), and fhirsnake, which refuses the
    transaction (405), gets one PUT per resource.
    """
    assert main(["seed", "--server", base, "--yes"]) == 0
    expected = cohort_counts()
    assert {kind: held(base, kind) for kind in expected} == expected


@pytest.fixture(scope="session", params=list(SERVERS))
def real_server(request, tmp_path_factory) -> Iterator[RealServer]:
    """A server of each kind, started empty."""
    name = request.param
    with SERVERS[name](tmp_path_factory.mktemp(f"{name}-empty")) as base:
        yield RealServer(name, base)


@pytest.fixture(scope="session", params=list(SERVERS))
def cohort_server(request, tmp_path_factory) -> Iterator[RealServer]:
    """A server of each kind holding the bundled cohort (treat it as read-only)."""
    name = request.param
    with SERVERS[name](tmp_path_factory.mktemp(f"{name}-cohort")) as base:
        seed_cohort(base)
        yield RealServer(name, base)
