"""FhirClient: one FHIR server, spoken to politely and safely.

Rules this module enforces for every request (on top of :mod:`.http`: one
notion of origin, a total deadline per request and per run, bodies capped):

* retries with exponential backoff and jitter when no complete answer came
  and on 429, 502, 503 and 504, honouring ``Retry-After`` (seconds or an HTTP
  date) up to a ceiling (``max_wait``), past which the run stops with a clear
  message;
* credentials only for the configured origin (scheme, host and port, as the
  HTTP library connects): a paging link elsewhere is not followed (a note
  says the search is incomplete), a redirect elsewhere is refused (the run
  stops: the answer came from a server nobody configured), and only a GET is
  redirected at all, at most ``MAX_REDIRECTS`` times;
* a 401 in the middle of work refreshes the credentials once and retries;
* a search follows ``next`` links for at most the pages its announced
  ``total`` needs (and ``max_pages`` in any case), and a Bundle of the wrong
  shape is one line of explanation, never a crash;
* an OperationOutcome or an HTML error page becomes one line naming the
  method and path (never the query, which may hold patient ids); every
  message and note has its secrets redacted and its control characters removed;
* every request is counted, so a run can report requests per patient.
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urljoin

from .auth import Auth, NoAuth
from .http import Answer, Limits, ServerError, Transport, Unanswered
from .redact import redact, shown
from .urls import Reach

__all__ = ["MAX_URL", "FhirClient", "Limits", "ServerError", "explain"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
NOTE_LENGTH = 400  # characters of a server note kept
MAX_URL = 1900  # longer GET searches go as POST Type/_search (proxies cut at 2-8 KB)


@dataclass(frozen=True)
class ServerNote:
    """Something a server did that a coordinator should know (an incomplete search, ...)."""

    code: str
    message: str
    where: str


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date).

    >>> retry_after("7")
    7.0
    >>> retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0)
    30.0
    >>> retry_after("soon") is None
    True
    """
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _outcome_text(body: object) -> str:
    """What an OperationOutcome or an OAuth error says, whatever the shape of its parts.

    >>> _outcome_text({"resourceType": "OperationOutcome", "issue": [{"diagnostics": "x"}, 3]})
    'x'
    >>> _outcome_text({"resourceType": "OperationOutcome", "issue": "broken"})
    ''
    >>> _outcome_text({"error": "invalid_client"})
    'invalid_client'
    """
    if not isinstance(body, dict):
        return ""
    if body.get("resourceType") == "OperationOutcome":
        return "; ".join(issue_text(i) for i in _list(body.get("issue")) if issue_text(i))
    return str(body.get("error_description") or body.get("error") or "")


def issue_text(issue: object) -> str:
    """One OperationOutcome issue in words ('' when it says nothing readable).

    >>> issue_text({"details": {"text": "t"}}), issue_text({"details": "t"}), issue_text(7)
    ('t', '', '')
    """
    if not isinstance(issue, dict):
        return ""
    details = issue.get("details")
    for text in (
        issue.get("diagnostics"),
        details.get("text") if isinstance(details, dict) else None,
        issue.get("code"),
    ):
        if isinstance(text, str | int | float) and str(text):
            return str(text)
    return ""


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


def explain(answer: Answer) -> str:
    """One line saying why a request failed."""
    detail = ""
    kind = answer.headers.get("Content-Type", "")
    text = redact(answer.text)
    if "json" in kind or text.lstrip().startswith("{"):
        try:
            detail = _outcome_text(answer.json())
        except ValueError:
            detail = ""
    elif "html" in kind or text.lstrip().lower().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        detail = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    else:
        detail = text
    detail = shown(" ".join(shown(detail).split()), 300) or answer.reason
    return f"HTTP {answer.status_code} from {answer.where}: {detail}".rstrip(": ")


@dataclass
class RequestCounter:
    """Requests made, by purpose, and retries; thread-safe."""

    total: int = 0
    retries: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str, retry: bool = False) -> None:
        with self._lock:
            self.total += 1
            self.retries += retry
            self.by_kind[kind] = self.by_kind.get(kind, 0) + 1


@dataclass(frozen=True)
class _Page:
    """A searchset page, checked for shape: its entries, next link and announced total."""

    entries: list
    next_url: object  # a str to follow; anything else is reported
    total: int | None


def _page(body: dict, what: str) -> _Page:
    """The parts of a search answer; ServerError when its shape is not a Bundle's."""
    if body.get("resourceType") != "Bundle":
        kind = body.get("resourceType")
        named = shown(kind, 40) if isinstance(kind, str) else "JSON object"
        raise ServerError(f"{what}: the answer is a {named}, not a Bundle")
    for key in ("entry", "link"):
        if body.get(key) is not None and not isinstance(body[key], list):
            raise ServerError(f"{what}: the answer's Bundle.{key} is not a list")
    next_url = next(
        (
            link.get("url")
            for link in body.get("link") or ()
            if isinstance(link, dict) and link.get("relation") == "next"
        ),
        None,
    )
    total = body.get("total")
    return _Page(
        body.get("entry") or [],
        next_url,
        total if type(total) is int and total >= 0 else None,
    )


def _keys(entries: list) -> set[tuple]:
    """(type, id) of the entries that count toward a search's total.

    >>> sorted(_keys([{"resource": {"resourceType": "A", "id": "1"}}, {"resource": 3}, 5]))
    [('A', '1')]
    """
    return {
        (e["resource"].get("resourceType"), e["resource"].get("id"))
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and _counted(e)
        and e["resource"].get("resourceType") != "OperationOutcome"
    }


def _counted(entry: dict) -> bool:
    search = entry.get("search")
    return not isinstance(search, dict) or search.get("mode") not in ("include", "outcome")


def _matches(entries: list) -> int:
    """Entries that count toward a search's total (not _include-d, not outcomes)."""
    return sum(
        1
        for e in entries
        if not (isinstance(e, dict) and isinstance(e.get("search"), dict))
        or e["search"].get("mode") not in ("include", "outcome")
    )


class FhirClient:
    """HTTP to one FHIR server base URL."""

    def __init__(
        self,
        base_url: str,
        auth: Auth | None = None,
        *,
        limits: Limits | None = None,
        max_retries: int = 5,
        max_wait: float = 120.0,
        verify: bool | str = True,
        concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
        transport: Transport | None = None,
    ):
        self.transport = transport or Transport(
            base_url, limits, verify=verify, concurrency=concurrency, sleep=sleep
        )
        self.base = self.transport.base
        self.limits = self.transport.limits
        self.auth = auth or NoAuth()
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.counter = RequestCounter()
        self.notes: list[ServerNote] = []
        self.server_date: str | None = None  # the Date header of the latest answer
        self._notes_lock = threading.Lock()

    # -- plumbing ------------------------------------------------------------
    def url(self, path: str) -> str:
        """A path resolved against the base (an absolute URL stays as it is)."""
        return urljoin(self.base, path)

    def note(self, code: str, message: str, where: str) -> None:
        """Record a server note; its text is redacted (whole, before it is cut to
        NOTE_LENGTH) and made one printable line."""
        with self._notes_lock:
            self.notes.append(
                ServerNote(
                    code,
                    shown(message, NOTE_LENGTH),
                    shown(where, NOTE_LENGTH),
                )
            )

    def pause(self, seconds: float, why: str) -> None:
        """Wait ``seconds`` (within the run's deadline)."""
        self.transport.pause(seconds, why)

    def _backoff(self, attempt: int) -> float:
        return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())  # full jitter, halved

    def request(
        self,
        method: str,
        path: str,
        *,
        kind: str = "other",
        reach: Reach = Reach.SERVER,
        redirect_to: Reach | None = None,
        into: Path | None = None,
        headers: dict[str, str] | None = None,
        data: object = None,
        json: object = None,
    ) -> Answer:
        """One request with retries; raises ServerError when it cannot succeed.

        ``reach`` says where the URL (and any redirect) may go; credentials go
        only with :attr:`Reach.SERVER`. ``redirect_to`` also lets a redirect lead
        there (a Bulk file the server hands over to storage), credentials
        dropped from then on. With ``into``, a 2xx body is streamed to that file
        instead of memory.
        """
        url = self.url(path)
        refreshed = False
        attempt = hops = 0
        while True:
            prepared = self.transport.prepare(
                method, url, reach, headers=headers, data=data, json=json
            )
            if reach is Reach.SERVER:
                prepared.headers.update(self.auth.headers())
            try:
                answer = self.transport.send(prepared, into=into)
            except Unanswered as error:
                self.counter.count(kind, retry=attempt > 0)
                if attempt >= self.max_retries:
                    tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
                    raise ServerError(
                        f"{error.where}: no answer after {tries} ({error.reason})"
                    ) from None
                self.pause(self._backoff(attempt), f"{error.where}: {error.reason}")
                attempt += 1
                continue
            self.counter.count(kind, retry=attempt > 0)
            status = answer.status_code
            if status in REDIRECTS:
                url, reach = self._redirect(answer, (reach, redirect_to), hops)
                hops += 1
                continue
            if status == 401 and reach is Reach.SERVER and not refreshed and self.auth.refresh():
                refreshed = True
                continue
            if status in RETRY_STATUSES:
                if attempt >= self.max_retries:
                    raise ServerError(explain(answer) + f" (after {attempt + 1} tries)")
                wait = retry_after(answer.headers.get("Retry-After"))
                if wait is not None and wait > self.max_wait:
                    raise ServerError(
                        f"{explain(answer)}; the server asks to wait {wait:.0f} s, more than "
                        f"the {self.max_wait:.0f} s allowed (--max-wait); try again later"
                    )
                self.pause(wait if wait is not None else self._backoff(attempt), explain(answer))
                attempt += 1
                continue
            if status >= 400 or status < 200:
                raise ServerError(explain(answer), status=status)
            self.server_date = answer.headers.get("Date") or self.server_date
            return answer

    def _redirect(
        self, answer: Answer, reaches: tuple[Reach, Reach | None], hops: int
    ) -> tuple[str, Reach]:
        """Where a redirect leads and with which reach, the first of ``reaches`` it may be
        followed with; ServerError when it may not be followed."""
        at = answer.where
        location = answer.headers.get("Location")
        if answer.method != "GET" or not location:
            raise ServerError(
                f"{at}: the server answered {answer.status_code} (a redirect"
                f"{'' if location else ' without a Location'}); not followed"
            )
        if hops >= MAX_REDIRECTS:
            raise ServerError(f"{at}: more than {MAX_REDIRECTS} redirects; stopped")
        target = urljoin(answer.url, location)
        allowed = [r for r in reaches if r is not None]
        for reach in allowed:
            if self.transport.check(target, reach) is None:
                return target, reach
        refused = self.transport.check(target, allowed[-1])
        raise ServerError(
            f"{at}: the server redirects elsewhere: {refused}; not followed "
            f"(only {' or '.join(r.value for r in allowed)} may answer)"
        )

    def json(self, method: str, path: str, **kwargs) -> dict:
        """A request whose answer must be a JSON object."""
        answer = self.request(method, path, **kwargs)
        try:
            body = answer.json()
        except ValueError:
            kind = shown(answer.headers.get("Content-Type", "no content type"), 60)
            raise ServerError(f"{answer.where}: the answer is not JSON ({kind})") from None
        if not isinstance(body, dict):
            raise ServerError(f"{answer.where}: the answer is not a JSON object")
        return body

    # -- FHIR ----------------------------------------------------------------
    def capabilities(self) -> dict:
        return self.json("GET", "metadata", kind="metadata")

    def search_url(self, resource_type: str, params: dict[str, str]) -> str:
        """The URL of a search sent as GET (longer than ``MAX_URL``: sent as POST)."""
        return self.url(f"{resource_type}?{urlencode(params, safe='|,:')}")

    def _first_page(self, resource_type: str, params: dict[str, str], kind: str) -> dict:
        first = self.search_url(resource_type, params)
        if len(first) <= MAX_URL:
            return self.json("GET", first, kind=kind)
        return self.json(
            "POST",
            f"{resource_type}/_search",
            data=params,
            kind=kind,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    def search(
        self,
        resource_type: str,
        params: dict[str, str],
        *,
        kind: str = "search",
        incomplete: Callable[[str], None] | None = None,
    ) -> Iterator[dict]:
        """Every entry of a search (a dict holding a ``resource`` dict), following ``next``
        links on the same origin only.

        Long searches go as ``POST Type/_search``. Paging stops at a link to
        another origin, a link already followed, a link that is not a URL, or
        past the pages the announced ``total`` needs (``max_pages`` without
        one). A server that announces more results than its pages hold and
        gives no ``next`` link is asked for the rest with ``_offset``
        (:meth:`_offset_pages`). Whatever leaves the results short is told to
        ``incomplete`` (default: an ``incomplete-search`` note). ``search.mode``
        outcome entries become notes, not resources.
        """
        what = f"search {resource_type}"
        short = incomplete or (lambda why: self.note("incomplete-search", why, what))
        body = self._first_page(resource_type, params, kind)
        followed = {self.search_url(resource_type, params)}
        pages, allowed, total = 1, self.limits.max_pages, None
        seen: set[tuple] = set()
        while True:
            page = _page(body, what)
            if pages == 1 and page.total is not None:
                total = page.total
                allowed = min(allowed, math.ceil(page.total / max(1, _matches(page.entries))) + 1)
            seen |= _keys(page.entries)
            yield from self._entries(page.entries, what, short)
            link = page.next_url
            if link is None:
                break
            stop = self._stop_paging(link, followed, pages, allowed, page.total)
            if stop:
                short(stop)
                return
            assert isinstance(link, str)
            followed.add(self.url(link))
            pages += 1
            body = self.json("GET", link, kind=kind)
        if total is not None and len(seen) < total:
            yield from self._offset_pages(resource_type, params, (seen, total), kind, short)

    def _offset_pages(
        self,
        resource_type: str,
        params: dict[str, str],
        progress: tuple[set[tuple], int],
        kind: str,
        short: Callable[[str], None],
    ) -> Iterator[dict]:
        """The rest of a search whose pages hold fewer results than its ``total`` and
        carry no ``next`` link, asked for with ``_offset``. A page that repeats a result
        already read (``_offset`` ignored) or brings none stops it, told to ``short``."""
        what = f"search {resource_type}"
        seen, total = progress
        pages = 1
        while len(seen) < total and pages < self.limits.max_pages:
            asked = {**params, "_offset": str(len(seen))}
            page = _page(self._first_page(resource_type, asked, kind), what)
            keys = _keys(page.entries)
            if not keys or keys & seen:
                break
            pages += 1
            self.counter.count("offset-page")
            seen |= keys
            yield from self._entries(page.entries, what, short)
        if len(seen) < total:
            short(
                f"the server announced {total} results but gave {len(seen)}, with no next link, "
                "and _offset did not bring the rest; results are incomplete"
            )

    def _stop_paging(
        self, link: object, followed: set[str], pages: int, allowed: int, total: int | None
    ) -> str | None:
        """Why a next link is not followed (None: follow it)."""
        if not isinstance(link, str) or not link:
            return "the server's next link is not a URL; paging stopped, results may be incomplete"
        url = self.url(link)
        reason = self.transport.check(url, Reach.SERVER)
        if reason:
            return f"the server's next link cannot be followed: {reason}; paging stopped"
        if url in followed:
            return "the server repeated a next link; paging stopped"
        if pages >= allowed:
            needed = f"the {total} results it announced need" if total is not None else "allowed"
            return (
                f"the server gave a next link after {pages} pages, more than {needed} "
                "(--max-pages); paging stopped, results may be incomplete"
            )
        return None

    def _entries(self, entries: list, what: str, short: Callable[[str], None]) -> Iterator[dict]:
        for entry in entries:
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict):
                short(
                    "an entry of the answer holds no resource; it is skipped and the results "
                    "may be incomplete"
                )
                continue
            search = entry.get("search")
            mode = search.get("mode") if isinstance(search, dict) else None
            if mode == "outcome" or resource.get("resourceType") == "OperationOutcome":
                texts = [issue_text(i) for i in _list(resource.get("issue"))]
                for text in filter(None, texts):
                    self.note("server-warning", text, what)
                if not any(texts):  # it meant to say something about this search
                    short(
                        "the server sent an OperationOutcome the tool cannot read; the results "
                        "may be incomplete"
                    )
                continue
            yield entry
