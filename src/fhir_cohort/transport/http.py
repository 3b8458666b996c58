"""One HTTP exchange: sent exactly where it was checked to go, bounded in time and size.

Rules this module enforces for every request the tool makes:

* **one notion of origin**: a URL is prepared once by requests, judged by the
  origin requests' adapter will connect to (:mod:`.urls`), and exactly that
  prepared request is sent, with automatic redirects off (the client follows
  same-origin ones itself). A URL with a user name or password is refused; no
  cookie is kept (a cookie ignores ports); no proxy or ``.netrc`` is picked up
  from the environment;
* **a total deadline per exchange**: connecting, sending, the headers and every
  read of the body must end within ``timeout`` seconds. At the deadline a
  watchdog shuts the connection's socket down, so a server that drips one byte
  at a time cannot hold a read (a socket timeout alone only bounds each read);
* **a deadline per run**: no exchange and no pause goes past ``max_run_time``
  from the start;
* **bodies streamed, never buffered past a cap**: a JSON answer is read up to
  ``max_body`` bytes *after* decoding; a file goes to disk up to ``max_file``
  bytes and stops when it inflates more than ``max_ratio`` times the bytes on
  the wire (a decompression bomb). gzip and deflate are decoded here, in
  bounded steps; other content encodings are refused.

Failures are :class:`ServerError` (one line, secrets redacted); those worth
another try (no answer, a body cut short, the deadline) are :class:`Unanswered`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.cookiejar import DefaultCookiePolicy
from pathlib import Path
from typing import cast
from urllib.parse import urlsplit

import orjson
import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .. import __version__
from ..errors import ServerFailure, UsageError
from ..text import printable
from .redact import shown
from .urls import Origin, Reach, check_base, has_user_info, reaches, routed_origin

MiB = 1 << 20
CHUNK = 64 * 1024
CONNECT_TIMEOUT = 10.0  # seconds, within the exchange's deadline
ERROR_BODY = 64 * 1024  # bytes of an error answer read to explain it
RATIO_FLOOR = 16 * MiB  # a file is held to max_ratio once it has inflated this far
FHIR_JSON = "application/fhir+json"


class ServerError(ServerFailure):
    """The server cannot be used for this run; the message is one line, without secrets.

    ``status`` is the HTTP status when the server answered with an error.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(shown(message))
        self.status = status


class Unanswered(ServerError):
    """No complete answer (no connection, a body cut short, the deadline): worth a retry."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: no answer ({reason})")
        self.where, self.reason = where, reason


@dataclass(frozen=True)
class Limits:
    """Bounds on what one server may cost a run (defaults a real server never reaches)."""

    timeout: float = 60.0  # seconds per exchange: connect, send, headers and the whole body
    max_run_time: float = 6 * 3600.0  # seconds for every exchange and pause of a run
    max_body: int = 64 * MiB  # bytes of one JSON answer, after decoding
    max_file: int = 16 * 1024 * MiB  # bytes of one Bulk file on disk, after decoding
    max_ratio: int = 200  # decoded / received bytes of a Bulk file (real NDJSON: about 10)
    max_pages: int = 10_000  # pages of one search


@dataclass(frozen=True)
class Answer:
    """A server's answer, its body read within the limits (empty when saved to a file)."""

    method: str
    url: str
    status_code: int
    headers: CaseInsensitiveDict
    content: bytes
    reason: str = ""
    saved: int = 0  # bytes written to the file, when the body went to one

    @property
    def where(self) -> str:
        return where(self.method, self.url)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> object:
        """The body as JSON (``ValueError`` when it is not)."""
        return orjson.loads(self.content)


def where(method: str, url: str) -> str:
    """A request named by method and path, never the query (it may hold patient ids).

    >>> where("GET", "https://h/fhir/Condition?patient=p1")
    'GET /fhir/Condition'
    """
    return shown(f"{method} {urlsplit(url).path}", 200)


# -- the watchdog --------------------------------------------------------------
_CURRENT = threading.local()


class _Watch:
    """The deadline of one exchange: at the deadline, the socket it uses is shut down."""

    def __init__(self, deadline: float):
        self.fired = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True

    def __enter__(self) -> _Watch:
        _CURRENT.watch = self
        self._timer.start()
        return self

    def __exit__(self, *_) -> None:
        self._timer.cancel()
        with self._lock:
            self._connection = None
        _CURRENT.watch = None

    def attach(self, connection: HTTPConnection) -> None:
        with self._lock:
            self._connection = connection
            if self.fired:
                _shut(connection)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._connection is not None:
                _shut(self._connection)


def _shut(connection: HTTPConnection) -> None:
    """Shut a connection's socket down: a read blocked on it returns at once."""
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the TCP socket, under any TLS


class _Watched:
    """A connection that tells the current exchange's watchdog it carries it."""

    def _attach(self) -> None:
        watch = getattr(_CURRENT, "watch", None)
        if watch is not None:
            watch.attach(self)

    def connect(self) -> None:
        self._attach()
        super().connect()  # type: ignore[misc]
        self._attach()

    def request(self, *args, **kwargs) -> None:
        self._attach()
        super().request(*args, **kwargs)  # type: ignore[misc]


class _WatchedHTTP(_Watched, HTTPConnection):
    pass


class _WatchedHTTPS(_Watched, HTTPSConnection):
    pass


class _HTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTP


class _HTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPS


class _Adapter(HTTPAdapter):
    """requests' adapter, with connections the watchdog can reach."""

    def init_poolmanager(self, *args, **kwargs) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


# -- bodies --------------------------------------------------------------------
class _Inflater:
    """Decode a Content-Encoding (identity, gzip, deflate) in bounded steps."""

    def __init__(self, encoding: str, at: str):
        self.at = at
        encoding = encoding.strip().lower()
        if encoding in ("", "identity"):
            self.wbits = None
        elif encoding in ("gzip", "x-gzip"):
            self.wbits = 16 + zlib.MAX_WBITS
        elif encoding == "deflate":
            self.wbits = zlib.MAX_WBITS  # zlib-wrapped, as the RFC says; raw deflate below
        else:
            raise ServerError(
                f"{at}: the answer is in a content encoding the tool does not read "
                f"({shown(encoding, 30)})"
            )
        self._z = zlib.decompressobj(self.wbits) if self.wbits else None
        self._started = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._z is None:
            yield data
            return
        try:
            yield from self._inflate(data)
        except zlib.error:
            raise ServerError(f"{self.at}: the answer's compression is broken") from None

    def _inflate(self, data: bytes) -> Iterator[bytes]:
        assert self._z is not None and self.wbits is not None
        while True:
            if self._z.eof:  # a gzip body may hold several members; deflate ends here
                data = self._z.unused_data + data
                if self.wbits != 16 + zlib.MAX_WBITS or not data.strip(b"\x00"):
                    return
                self._z = zlib.decompressobj(self.wbits)
            try:
                out = self._z.decompress(data, CHUNK)
            except zlib.error:
                if self._started or self.wbits != zlib.MAX_WBITS:
                    raise
                self.wbits = -zlib.MAX_WBITS  # "deflate" sent raw, as some servers do
                self._z = zlib.decompressobj(self.wbits)
                continue
            self._started = True
            data = self._z.unconsumed_tail
            if out:
                yield out
            if not data and len(out) < CHUNK and not self._z.eof:
                return

    def finish(self) -> None:
        if self._z is not None and self._started and not self._z.eof:
            raise ServerError(f"{self.at}: the answer's compressed body is cut short")


# -- the transport -------------------------------------------------------------
class Transport:
    """HTTP for one FHIR server: prepared once, checked, sent, bounded."""

    def __init__(
        self,
        base_url: str,
        limits: Limits | None = None,
        *,
        verify: bool | str = True,
        concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.base = check_base(base_url).rstrip("/") + "/"
        self.limits = limits or Limits()
        self._sleep = sleep
        self.run_deadline = time.monotonic() + self.limits.max_run_time
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False  # no proxy or .netrc credentials picked up silently
        self.session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))  # none kept
        self.adapter = _Adapter(pool_connections=1, pool_maxsize=max(4, concurrency))
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)
        self.session.headers.update(
            {
                "Accept": FHIR_JSON,
                "Accept-Encoding": "gzip, deflate",
                "User-Agent": f"fhir-cohort/{__version__}",
            }
        )
        prepared = self.session.prepare_request(requests.Request("GET", self.base))
        # types-requests leaves url Optional (unset before preparing); prepared, it is a str
        base = routed_origin(cast(str, prepared.url))
        assert base is not None  # check_base made sure
        self.origin: Origin = base

    # -- where a request may go -----------------------------------------------
    def _refusal(self, prepared_url: str, reach: Reach) -> str | None:
        """Why a prepared URL may not be requested with this reach (None: it may)."""
        if has_user_info(prepared_url):
            return "the URL holds a user name or password"
        target = routed_origin(prepared_url, self.adapter)
        if target is None:
            scheme = urlsplit(prepared_url).scheme or "no scheme"
            return f"the URL is not an http(s) URL with a host ({printable(scheme)[:20]}:)"
        if not reaches(target, self.origin, reach):
            return f"the URL points to another origin ({target})"
        return None

    def prepare(
        self,
        method: str,
        url: str,
        reach: Reach,
        *,
        headers: dict[str, str] | None = None,
        data: object = None,
        json: object = None,
    ) -> requests.PreparedRequest:
        """The request exactly as it will be sent; ServerError when it may not be."""
        try:
            prepared = self.session.prepare_request(
                requests.Request(method, url, headers=headers, data=data, json=json)
            )
        except (requests.RequestException, ValueError, urllib3.exceptions.HTTPError):
            raise ServerError(f"{method}: the URL cannot be requested") from None
        assert prepared.url is not None
        reason = self._refusal(prepared.url, reach)
        if reason:
            raise ServerError(f"{where(method, prepared.url)}: {reason}; not requested")
        return prepared

    def check(self, url: str, reach: Reach) -> str | None:
        """Why ``url`` may not be requested with this reach (None: it may), judged on the
        URL exactly as it would be sent."""
        try:
            prepared = self.session.prepare_request(requests.Request("GET", url))
        except (requests.RequestException, ValueError, urllib3.exceptions.HTTPError):
            return "the URL cannot be requested"
        assert prepared.url is not None
        return self._refusal(prepared.url, reach)

    # -- time ------------------------------------------------------------------
    def pause(self, seconds: float, why: str) -> None:
        """Wait, unless that would pass the run's deadline (then ServerError)."""
        if time.monotonic() + seconds > self.run_deadline:
            raise ServerError(
                f"{why}: waiting {seconds:.0f} s more would pass the run's deadline "
                f"(--max-run-time {self.limits.max_run_time:.0f} s)"
            )
        self._sleep(seconds)

    # -- one exchange ----------------------------------------------------------
    def send(self, prepared: requests.PreparedRequest, *, into: Path | None = None) -> Answer:
        """Send a prepared request (no redirect followed) and read its answer.

        A 2xx body goes to ``into`` when given (``Answer.content`` is then empty),
        else into memory up to ``max_body``; an error body is read up to a few
        KB, to explain it.
        """
        assert prepared.method is not None and prepared.url is not None
        at = where(prepared.method, prepared.url)
        now = time.monotonic()
        deadline = min(now + self.limits.timeout, self.run_deadline)
        if deadline <= now:
            raise ServerError(
                f"{at}: the run reached its deadline (--max-run-time "
                f"{self.limits.max_run_time:.0f} s); stopped"
            )
        remaining = deadline - now
        with _Watch(deadline) as watch:
            try:
                response = self.session.send(
                    prepared,
                    stream=True,
                    allow_redirects=False,
                    timeout=(min(CONNECT_TIMEOUT, remaining), remaining),
                )
                try:
                    answer = self._answer(prepared, response, into)
                finally:
                    response.close()
                if watch.fired:  # the socket was shut under a body that had no length to check
                    raise self._late(at, deadline)
                return answer
            except (ServerError, requests.RequestException, urllib3.exceptions.HTTPError) as error:
                if watch.fired:  # whatever broke, it broke because the deadline came
                    raise self._late(at, deadline) from None
                if isinstance(error, ServerError):
                    raise
                if isinstance(error, requests.exceptions.SSLError):
                    raise ServerError(
                        f"{at}: the TLS connection failed; is the server's certificate "
                        "trusted (--ca-bundle)?"
                    ) from None
                if isinstance(error, requests.ConnectionError | requests.Timeout):
                    raise Unanswered(at, type(error).__name__) from None
                raise ServerError(f"{at}: the request failed ({type(error).__name__})") from None

    def _late(self, at: str, deadline: float) -> Unanswered:
        if deadline >= self.run_deadline:
            limit = f"the run's deadline (--max-run-time {self.limits.max_run_time:g} s)"
        else:
            limit = f"the deadline (--timeout {self.limits.timeout:g} s)"
        return Unanswered(at, f"no complete answer within {limit}")

    def _answer(
        self, prepared: requests.PreparedRequest, response: requests.Response, into: Path | None
    ) -> Answer:
        assert prepared.method is not None and prepared.url is not None
        at = where(prepared.method, prepared.url)
        ok = 200 <= response.status_code < 300
        saved, content = 0, b""
        if ok and into is not None:
            saved = self._save(response, into, at)
        elif ok:
            content = self._read(response, self.limits.max_body, at, strict=True)
        else:
            content = self._read(response, ERROR_BODY, at, strict=False)
        return Answer(
            prepared.method,
            prepared.url,
            response.status_code,
            response.headers,
            content,
            shown(response.reason or "", 100),
            saved,
        )

    def _decoded(self, response: requests.Response, at: str) -> Iterator[tuple[bytes, int]]:
        """The body in decoded pieces of at most CHUNK bytes, with the bytes received so far."""
        inflater = _Inflater(response.headers.get("Content-Encoding", ""), at)
        received = 0
        blocks = response.raw.stream(CHUNK, decode_content=False)
        while True:
            try:
                block = next(blocks, None)
            except (urllib3.exceptions.HTTPError, OSError) as error:
                raise Unanswered(at, f"the answer was cut short ({type(error).__name__})") from None
            if block is None:
                break
            received += len(block)
            for piece in inflater.feed(block):
                yield piece, received
        inflater.finish()

    def _read(self, response: requests.Response, limit: int, at: str, strict: bool) -> bytes:
        body = bytearray()
        for piece, _ in self._decoded(response, at):
            body += piece
            if len(body) > limit:
                if not strict:
                    return bytes(body[:limit])
                raise ServerError(
                    f"{at}: the answer is larger than {limit / MiB:.3g} MB (--max-body-mb); "
                    "stopped reading it"
                )
        return bytes(body)

    def _save(self, response: requests.Response, into: Path, at: str) -> int:
        limits = self.limits
        written = 0
        try:
            descriptor = os.open(into, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        except OSError as error:
            raise UsageError(f"cannot write {into}: {error.strerror}") from None
        try:
            with os.fdopen(descriptor, "wb") as stream:
                for piece, received in self._decoded(response, at):
                    written += len(piece)
                    if written > limits.max_file:
                        raise ServerError(
                            f"{at}: the file is larger than {limits.max_file / MiB / 1024:.3g} GB "
                            "(--max-file-gb); stopped"
                        )
                    if written > RATIO_FLOOR and written > limits.max_ratio * received:
                        raise ServerError(
                            f"{at}: the file inflates to more than {limits.max_ratio} times "
                            "the bytes sent (a decompression bomb?); stopped "
                            "(--max-inflate-ratio)"
                        )
                    try:
                        stream.write(piece)
                    except OSError as error:
                        raise UsageError(f"cannot write {into}: {error.strerror}") from None
        except BaseException:
            into.unlink(missing_ok=True)
            raise
        return written
