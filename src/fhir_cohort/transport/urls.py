"""Origins and where a request may go: one reading of a URL, the HTTP library's own.

Rule: a URL is judged by the origin the HTTP library will *connect to*, never by
a parse of our own. requests prepares the URL (IDNA, percent-encoding, a
backslash in the authority ends it) and its adapter picks the connection pool
from the prepared URL; :func:`routed_origin` asks the adapter for exactly that
choice, and the transport sends exactly that prepared request. A URL that
``urlsplit`` reads as ``127.0.0.1:PORT`` but the library connects to
``127.0.0.1:OTHER`` is therefore judged as ``OTHER``.

Where a request may go is its :class:`Reach`: the FHIR server's own origin
(credentials go along), storage for a Bulk file that needs no token (https
anywhere; plain http only on the host of a plain-http server, i.e. a local
test server, because the data then travels in clear text anyway), or a SMART
token endpoint (https anywhere, or the server's own origin). A URL holding a
user name or password reaches nowhere: requests would turn it into an
``Authorization`` header.
"""

from __future__ import annotations

import enum
from typing import NamedTuple
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from ..errors import UsageError
from ..text import printable

DEFAULT_PORTS = {"http": 80, "https": 443}


class Origin(NamedTuple):
    """Scheme, host and port of a connection (the default port made explicit)."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return printable(f"{self.scheme}://{host}:{self.port}")


class Reach(enum.Enum):
    """Where a request may go, and whether credentials go with it."""

    SERVER = "the FHIR server's own origin"
    STORAGE = "storage for files that need no token"
    TOKEN = "a SMART token endpoint"


_ROUTER = HTTPAdapter()  # only asked which pool it would use; never sends


def routed_origin(prepared_url: str, adapter: HTTPAdapter = _ROUTER) -> Origin | None:
    """The origin ``adapter`` connects to for an already prepared URL (None: none it can).

    >>> routed_origin("https://FHIR.Example.test/r4")
    Origin(scheme='https', host='fhir.example.test', port=443)
    >>> routed_origin("http://127.0.0.1:9/%5C@127.0.0.1:8/fhir").port
    9
    >>> routed_origin("file:///etc/passwd") is None
    True
    """
    request = requests.PreparedRequest()
    request.url = prepared_url
    try:
        params, _ = adapter.build_connection_pool_key_attributes(request, True, None)
    except ValueError:  # a port out of range
        return None
    scheme, host = params["scheme"], params["host"]
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return Origin(scheme, host.lower(), params["port"] or DEFAULT_PORTS[scheme])


def prepare_url(url: str) -> str | None:
    """``url`` as requests will send it (None: requests cannot send it).

    >>> prepare_url("http://127.0.0.1:9\\\\@127.0.0.1:8/fhir")
    'http://127.0.0.1:9/%5C@127.0.0.1:8/fhir'
    """
    request = requests.PreparedRequest()
    try:
        request.prepare_url(url, None)
    except (requests.RequestException, ValueError):
        return None
    return request.url


def origin(url: str) -> Origin | None:
    """The origin a URL connects to, read as the HTTP library reads it.

    >>> origin("https://fhir.example.org/r4") == origin("https://FHIR.example.org:443/r4/x")
    True
    >>> origin("http://h:8080/fhir") == origin("https://h:8080/fhir")
    False
    >>> origin("https://h:99999/x") is None
    True
    """
    prepared = prepare_url(url)
    return routed_origin(prepared) if prepared else None


def has_user_info(prepared_url: str) -> bool:
    """Does the URL carry a user name or password (which requests would send)?

    >>> has_user_info("https://alice:pw@h/x"), has_user_info("https://h/x?u=a@b")
    (True, False)
    """
    return "@" in urlsplit(prepared_url).netloc


def reaches(target: Origin, base: Origin, reach: Reach) -> bool:
    """May a request of this reach go to ``target``, for a server at ``base``?

    >>> server, other = Origin("https", "h", 443), Origin("https", "s3.example", 443)
    >>> reaches(other, server, Reach.SERVER), reaches(other, server, Reach.STORAGE)
    (False, True)
    >>> reaches(Origin("http", "s3.example", 80), server, Reach.STORAGE)
    False
    >>> local = Origin("http", "127.0.0.1", 8080)
    >>> reaches(Origin("http", "127.0.0.1", 9000), local, Reach.STORAGE)
    True
    >>> reaches(Origin("http", "auth.example", 80), server, Reach.TOKEN)
    False
    """
    if reach is Reach.SERVER:
        return target == base
    if reach is Reach.TOKEN:
        return target == base or target.scheme == "https"
    return target.scheme == "https" or (
        target.scheme == base.scheme == "http" and target.host == base.host
    )


class BadServerURL(UsageError):
    """The server URL given cannot be used (exit 2); the message never repeats it."""


def check_base(url: str) -> str:
    """A FHIR base URL, refused (without repeating it) when it cannot be used safely.

    >>> check_base("https://fhir.example.org/r4")
    'https://fhir.example.org/r4'
    >>> check_base("http://alice:secret@fhir.example.org/r4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    fhir_cohort.transport.urls.BadServerURL: --server must not hold a user name or password ...
    """
    if not isinstance(url, str) or printable(url) != url or url != url.strip():
        raise BadServerURL("--server holds spaces or control characters")
    prepared = prepare_url(url)
    if prepared and has_user_info(prepared):
        raise BadServerURL(
            "--server must not hold a user name or password (user:password@); use --auth "
            "basic with --user, and the password in FHIR_COHORT_PASSWORD or --password-file"
        )
    if origin(url) is None:
        raise BadServerURL("--server must be an http:// or https:// URL with a host")
    parts = urlsplit(prepared or "")
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise BadServerURL("--server must be a base URL, without ?query or #fragment")
    return url
