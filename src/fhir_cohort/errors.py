"""Errors that end a run, by the exit code they mean.

Rule: every failure the tool expects is one of these, raised with a one-line
message that holds no secret; the command line maps the class to its exit
code without importing the stage that raised it. Anything else that escapes
is a bug (exit 1). At the bottom of the package: any stage may import it.
"""

from __future__ import annotations

from enum import IntEnum


class Exit(IntEnum):
    """The documented exit codes."""

    OK = 0
    BUG = 1
    USAGE = 2
    SERVER = 3
    PARTIAL = 4
    LOCKED = 5


class UsageError(ValueError):
    """Unusable input or settings: a missing path, a bad trial, bad authentication (exit 2)."""


class ServerFailure(RuntimeError):
    """The server cannot be used for this run (exit 3)."""


class Locked(RuntimeError):
    """Another run holds a lock this run needs (exit 5)."""
