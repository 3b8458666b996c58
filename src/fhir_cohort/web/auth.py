"""Passwords, sign-in throttling and CSRF tokens for the workbench.

Rule: passwords are kept only as argon2id hashes (argon2-cffi, its default,
memory-hard parameters); a password is never an argument, a log line or an error
text. Failed sign-ins slow down the account and the address they came from, each on
its own: an address that keeps failing waits up to 15 minutes, an account at most a
minute per try, so nobody can lock another person out for long by guessing wrong on
their behalf. CSRF tokens are random per session and compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_PASSWORD = 10
KEPT = 10_000  # failure records kept before those whose wait is over are dropped
_HASHER = PasswordHasher()
# A hash of a password nobody knows: signing in as an unknown user costs the same time.
_DUMMY = _HASHER.hash(secrets.token_urlsafe(24))


def password_problem(password: str) -> str | None:
    """Why a new password will not do, or None.

    >>> password_problem("short"), password_problem("long enough password")
    ('a password needs at least 10 characters', None)
    """
    if len(password) < MIN_PASSWORD:
        return f"a password needs at least {MIN_PASSWORD} characters"
    return None


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    """Whether ``password`` is the one behind ``stored`` (None: no such user)."""
    try:
        return _HASHER.verify(stored or _DUMMY, password) and stored is not None
    except (VerificationError, InvalidHashError):
        return False


def same_token(expected: str | None, given: str | None) -> bool:
    """A CSRF token check in constant time; no token on either side is a failure.

    >>> same_token("abc", "abc"), same_token("abc", "abd"), same_token(None, None)
    (True, False, False)
    """
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


@dataclass
class Throttle:
    """Failures per key; after ``free`` failures each try waits twice as long as the
    last, from one second up to ``cap`` seconds. A success clears the key.

    >>> clock = iter([0.0, 0.0, 0.5, 1.0]).__next__
    >>> t = Throttle(1, 60.0, clock)
    >>> t.failed("ann"); t.wait("ann"), t.wait("ann"), t.wait("bob")
    (1.0, 0.5, 0.0)
    """

    free: int
    cap: float
    clock: Callable[[], float] = time.monotonic
    _failures: dict[str, tuple[int, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, key: str) -> float:
        """Seconds before ``key`` may try again (0: now)."""
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
        if count < self.free:
            return 0.0
        delay = min(self.cap, 2.0 ** (count - self.free))
        return max(0.0, last + delay - self.clock())

    def failed(self, key: str) -> None:
        with self._lock:
            now = self.clock()
            if len(self._failures) >= KEPT:  # made-up names cannot grow memory without end
                self._failures = {
                    k: (n, last) for k, (n, last) in self._failures.items() if now - last < self.cap
                }
            count, _ = self._failures.get(key, (0, 0.0))
            self._failures[key] = (count + 1, now)

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failures.pop(key, None)


def throttles(clock: Callable[[], float] = time.monotonic) -> tuple[Throttle, Throttle]:
    """(per account, per address): an account waits at most a minute, an address 15."""
    return Throttle(5, 60.0, clock), Throttle(10, 900.0, clock)
