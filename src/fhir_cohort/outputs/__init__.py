"""Outputs: candidates.json, candidates.csv and the terminal summary.

Rule: outputs only format a finished :class:`~fhir_cohort.pipeline.Screening`;
they never decide anything. Files that hold patient data are written
owner-only (0600) to a temporary name and renamed into place, so a crash
never leaves half a file and nobody else on the machine can read one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path``, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
