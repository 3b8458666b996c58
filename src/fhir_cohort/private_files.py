"""Owner-only files: patient data is written readable by its owner alone, atomically.

Rule: a file holding patient data is staged under a temporary name (mode
0600, flushed to disk) and renamed into place, in a folder created 0700, so a
crash never leaves half a file and nobody else on the machine can read one.
Several files are staged first and renamed together
(:func:`write_private_files`), so a run killed while writing leaves the
previous set as it was. A folder a run writes into is locked for the whole
run (:func:`locked_folder`), so two runs never interleave their files. A file's
content may come as chunks, written as they come, so a large output is never whole in
memory. At the bottom of the package: any stage may use it.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Locked, UsageError

Content = bytes | Iterable[bytes]  # a file's bytes, whole or as chunks


@contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (created owner-only if missing) while a run
    writes into it; another run holding it raises :class:`Locked` at once (exit 5).

    The lock is ``flock`` on the folder itself (released by the kernel if the process
    dies), so it leaves no file behind.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as error:
        raise UsageError(f"cannot use the output folder {folder}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Locked(
                f"another fhir-cohort run is writing to {folder}; try again when it has finished"
            ) from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def _staged(path: Path, data: Content) -> Path:
    """``data`` in an owner-only temporary file beside ``path``, flushed to disk (none if
    making the chunks fails)."""
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            for chunk in (data,) if isinstance(data, bytes) else data:
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o600)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return Path(temporary)


def write_private(path: Path, data: Content) -> None:
    """Atomically write ``data`` to ``path``, readable by its owner only."""
    write_private_files(path.parent, {path.name: data})


def write_private_files(
    folder: Path, files: dict[str, Content], then: Callable[[], object] | None = None
) -> None:
    """Write several files into ``folder`` (owner-only): all staged, then all renamed.

    If a rename fails, the files already renamed are put back as they were, so
    the folder holds either the old set or the new one. ``then`` runs once all are
    renamed (recording the run); if it fails, the renames are undone too. Temporary
    files a killed run left behind for these names are removed first.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name in files:
        for leftover in folder.glob(f".{name}.*"):
            leftover.unlink(missing_ok=True)
    staged: dict[str, Path] = {}
    kept: dict[str, Path | None] = {}  # the previous file of each name replaced so far
    try:
        for name, data in files.items():
            staged[name] = _staged(folder / name, data)
        for name, temporary in staged.items():
            target = folder / name
            previous = None
            if target.is_file():
                previous = target.with_name(f".{name}.previous")
                os.link(target, previous)
            try:
                os.replace(temporary, target)
            except BaseException:
                if previous is not None:
                    previous.unlink()
                raise
            kept[name] = previous
        if then is not None:
            then()
    except BaseException:
        for name, previous in kept.items():
            if previous is not None:
                os.replace(previous, folder / name)
            else:
                (folder / name).unlink(missing_ok=True)
        raise
    finally:
        for path in [*staged.values(), *(p for p in kept.values() if p)]:
            path.unlink(missing_ok=True)
