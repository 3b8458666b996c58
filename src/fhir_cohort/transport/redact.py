"""Secrets redacted by value, in every form a server may echo them.

Rule: every secret in play (a bearer token, a password, the basic ``user:password``
pair and its base64, a SMART client assertion, each access token as it arrives)
is registered here the moment it is read or made, and every message that is
printed or stored (errors, server notes, warnings) passes through
:func:`redact` before it leaves the process. A pattern-based scrubber can only
catch ``Bearer x``; a server that echoes the raw token, the URL-encoded form
it received or the JSON-escaped assertion is caught here because the values
themselves are known. The registry lives for the process (a secret, once
seen, stays a secret). No third-party imports: the command line applies it to
whatever it prints without loading the HTTP stack.
"""

from __future__ import annotations

import html
import json
import threading
from urllib.parse import quote, quote_plus, unquote, unquote_plus

from ..text import printable

MASK = "***"
WITHHELD = "[text withheld: it held a credential in an encoding the tool cannot mask]"


def forms(secret: str) -> frozenset[str]:
    """The forms a secret can come back in: raw, URL-encoded, JSON- and HTML-escaped.

    >>> sorted(forms('a b/"c'))
    ['a b/"c', 'a b/&quot;c', 'a b/\\\\"c', 'a%20b%2F%22c', 'a+b%2F%22c']
    """
    return frozenset(
        form
        for form in (
            secret,
            quote(secret, safe=""),
            quote_plus(secret, safe=""),
            json.dumps(secret)[1:-1],
            json.dumps(secret, ensure_ascii=False)[1:-1],
            html.escape(secret),
        )
        if form
    )


class Secrets:
    """The secret values of this process; thread-safe."""

    def __init__(self) -> None:
        self._forms: tuple[str, ...] = ()
        self._lock = threading.Lock()

    def add(self, *secrets: str) -> None:
        """Register secrets (empty values are ignored)."""
        new = {form for secret in secrets if secret for form in forms(secret)}
        with self._lock:
            # longest first, so a pair is masked whole before its password is
            self._forms = tuple(sorted(new.union(self._forms), key=lambda f: (-len(f), f)))

    def redact(self, text: str) -> str:
        """``text`` with every registered secret, in any of its forms, replaced by ***;
        withheld whole if a secret still shows once the text is decoded (``%2D``, ``&#45;``)."""
        for form in self._forms:
            if form in text:
                text = text.replace(form, MASK)
        decoded = {unquote(text), unquote_plus(text), html.unescape(text)}
        if any(form in variant for form in self._forms for variant in decoded):
            return WITHHELD
        return text


SECRETS = Secrets()


def register(*secrets: str) -> None:
    """Make these values secrets for the rest of the process."""
    SECRETS.add(*secrets)


def redact(text: str) -> str:
    """Text with every known secret masked (see :class:`Secrets`).

    >>> register("hunter2-example")
    >>> redact("bad password 'hunter2-example'")
    "bad password '***'"
    >>> redact("bad password hunter2%2Dexample")
    '[text withheld: it held a credential in an encoding the tool cannot mask]'
    """
    return SECRETS.redact(text)


def shown(text: str, limit: int | None = None) -> str:
    """Outside text made fit to show: secrets masked whole, *then* control characters
    removed and the text cut to ``limit`` (cutting first could leave half a secret).

    >>> register("s3cr3t-xyz")
    >>> shown("echo: s3cr3t-xyz\\x1b[2J and more", limit=12)
    'echo: *** an'
    """
    return redact(printable(redact(text)))[:limit]
