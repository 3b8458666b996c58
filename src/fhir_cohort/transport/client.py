"""FhirClient: one FHIR server, spoken to politely and safely.

Rules this module enforces for every request:

* a timeout (connect, read) on every request;
* retries with exponential backoff and jitter on connection errors and on
  429, 502, 503 and 504, honouring ``Retry-After`` (seconds or an HTTP date)
  up to a ceiling (``max_wait``), past which the run stops with a clear message;
* credentials only for the configured origin (scheme, host and port): a
  paging link or file URL elsewhere never gets them, and paging stops there;
* a 401 in the middle of work refreshes the credentials once and retries;
* an OperationOutcome or an HTML error page becomes one line of explanation
  naming the method and path (never the query, which may hold patient ids);
* every request is counted, so a run can report requests per patient.
"""

from __future__ import annotations

import email.utils
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from .. import __version__
from ..errors import ServerFailure
from .auth import Auth, NoAuth

RETRY_STATUSES = frozenset({429, 502, 503, 504})
MAX_URL = 1900  # longer GET searches go as POST Type/_search (proxies cut at 2-8 KB)
FHIR_JSON = "application/fhir+json"


class ServerError(ServerFailure):
    """The server cannot be used for this run; the message is one line, without secrets.

    ``status`` is the HTTP status when the server answered with an error.
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ServerNote:
    """Something a server did that a coordinator should know (an incomplete search, ...)."""

    code: str
    message: str
    where: str


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of a URL (default ports made explicit).

    >>> origin("https://fhir.example.org/r4") == origin("https://FHIR.example.org:443/r4/x")
    True
    >>> origin("http://h:8080/fhir") == origin("https://h:8080/fhir")
    False
    """
    parts = urlsplit(url)
    try:
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    except ValueError:  # a port out of range: no origin anyone is configured for
        return "invalid", url, None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


_SECRETS = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+|eyJ[\w-]+\.[\w-]+\.[\w-]*")


def scrub(text: str) -> str:
    """Remove anything that looks like a credential from text a server sent back.

    >>> scrub("invalid token Bearer abc.def-1 for user")
    'invalid token *** for user'
    >>> scrub("got eyJhbGciOi.eyJzdWIi.sig")
    'got ***'
    """
    return _SECRETS.sub("***", text)


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
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def explain(response: requests.Response) -> str:
    """One line saying why a request failed."""
    where = f"{response.request.method} {urlsplit(response.url).path}"
    detail = ""
    kind = response.headers.get("Content-Type", "")
    text = response.text[:20000] if response.content else ""
    if "json" in kind or text.lstrip().startswith("{"):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
            issues = [
                i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "")
                for i in body.get("issue") or ()
                if isinstance(i, dict)
            ]
            detail = "; ".join(str(i) for i in issues if i)
        elif isinstance(body, dict):
            detail = str(body.get("error_description") or body.get("error") or "")
    elif "html" in kind or text.lstrip().lower().startswith("<"):
        title = re.search(r"<title[^>]*>(.*?)</title>", text, re.I | re.S)
        detail = title.group(1) if title else re.sub(r"<[^>]+>", " ", text)
    else:
        detail = text
    detail = scrub(" ".join(detail.split()))[:300] or (response.reason or "")
    return f"HTTP {response.status_code} from {where}: {detail}".rstrip(": ")


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


class FhirClient:
    """HTTP to one FHIR server base URL."""

    def __init__(
        self,
        base_url: str,
        auth: Auth | None = None,
        *,
        timeout: tuple[float, float] = (10.0, 120.0),
        max_retries: int = 5,
        max_wait: float = 120.0,
        verify: bool | str = True,
        concurrency: int = 4,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ServerError(f"server URL must start with http:// or https://, not {base_url!r}")
        self.base = base_url.rstrip("/") + "/"
        self.origin = origin(self.base)
        self.auth = auth or NoAuth()
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.sleep = sleep
        self.counter = RequestCounter()
        self.notes: list[ServerNote] = []
        self.server_date: str | None = None  # the Date header of the latest answer
        self._notes_lock = threading.Lock()
        self.session = requests.Session()
        self.session.verify = verify
        self.session.trust_env = False  # no proxy or .netrc credentials picked up silently
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(4, concurrency))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update(
            {"Accept": FHIR_JSON, "User-Agent": f"fhir-cohort/{__version__}"}
        )

    # -- plumbing ------------------------------------------------------------
    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else urljoin(self.base, path)

    def same_origin(self, url: str) -> bool:
        return origin(url) == self.origin

    def note(self, code: str, message: str, where: str) -> None:
        with self._notes_lock:
            self.notes.append(ServerNote(code, message, where))

    def _backoff(self, attempt: int) -> float:
        return min(30.0, 0.5 * 2**attempt) * (0.5 + random.random())  # full jitter, halved

    def request(
        self, method: str, path: str, *, kind: str = "other", send_auth: bool = True, **kwargs
    ) -> requests.Response:
        """One request with retries; raises ServerError when it cannot succeed."""
        url = self.url(path)
        with_auth = send_auth and self.same_origin(url)
        kwargs.setdefault("timeout", self.timeout)
        fixed_headers = dict(kwargs.pop("headers", None) or {})
        refreshed = False
        attempt = 0
        while True:
            headers = {**fixed_headers, **(self.auth.headers() if with_auth else {})}
            try:
                response = self.session.request(method, url, headers=headers, **kwargs)
            except requests.exceptions.InvalidURL as error:
                raise ServerError(
                    f"{method}: the URL cannot be requested ({type(error).__name__})"
                ) from None
            except (requests.ConnectionError, requests.Timeout) as error:
                self.counter.count(kind, retry=attempt > 0)
                if attempt >= self.max_retries:
                    raise ServerError(
                        f"{method} {urlsplit(url).path}: no answer after {attempt + 1} tries "
                        f"({type(error).__name__})"
                    ) from None
                self.sleep(self._backoff(attempt))
                attempt += 1
                continue
            self.counter.count(kind, retry=attempt > 0)
            if response.status_code == 401 and with_auth and not refreshed and self.auth.refresh():
                refreshed = True
                continue
            if response.status_code in RETRY_STATUSES:
                if attempt >= self.max_retries:
                    raise ServerError(explain(response) + f" (after {attempt + 1} tries)")
                wait = retry_after(response.headers.get("Retry-After"))
                if wait is not None and wait > self.max_wait:
                    raise ServerError(
                        f"{explain(response)}; the server asks to wait {wait:.0f} s, more than "
                        f"the {self.max_wait:.0f} s allowed (--max-wait); try again later"
                    )
                self.sleep(wait if wait is not None else self._backoff(attempt))
                attempt += 1
                continue
            if response.status_code >= 400:
                raise ServerError(explain(response), status=response.status_code)
            self.server_date = response.headers.get("Date") or self.server_date
            return response

    def json(self, method: str, path: str, **kwargs) -> dict:
        response = self.request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise ServerError(
                f"{method} {urlsplit(response.url).path}: the answer is not JSON "
                f"({response.headers.get('Content-Type', 'no content type')})"
            ) from None
        if not isinstance(body, dict):
            raise ServerError(
                f"{method} {urlsplit(response.url).path}: the answer is not a JSON object"
            )
        return body

    # -- FHIR ----------------------------------------------------------------
    def capabilities(self) -> dict:
        return self.json("GET", "metadata", kind="metadata")

    def search(
        self, resource_type: str, params: dict[str, str], *, kind: str = "search"
    ) -> Iterator[dict]:
        """Every entry of a search, following ``next`` links on the same origin only.

        Long searches go as ``POST Type/_search``. Paging stops (with a note) at a
        link to another origin or a link already followed; ``search.mode``
        outcome entries become notes, not resources.
        """
        query = urlencode(params, safe="|,:")
        if len(self.url(resource_type)) + len(query) + 1 > MAX_URL:
            page = self.json(
                "POST",
                f"{resource_type}/_search",
                data=params,
                kind=kind,
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
        else:
            page = self.json("GET", f"{resource_type}?{query}", kind=kind)
        followed: set[str] = (
            set()
            if len(query) + len(self.url(resource_type)) + 1 > MAX_URL
            else {self.url(f"{resource_type}?{query}")}
        )
        while True:
            if page.get("resourceType") != "Bundle":
                raise ServerError(
                    f"search {resource_type}: the answer is a "
                    f"{page.get('resourceType')}, not a Bundle"
                )
            for entry in page.get("entry") or ():
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    continue
                resource = entry["resource"]
                if (entry.get("search") or {}).get("mode") == "outcome" or resource.get(
                    "resourceType"
                ) == "OperationOutcome":
                    for issue in resource.get("issue") or ():
                        self.note(
                            "server-warning",
                            str(issue.get("diagnostics") or issue.get("code")),
                            f"search {resource_type}",
                        )
                    continue
                yield entry
            link = next(
                (
                    x.get("url")
                    for x in page.get("link") or ()
                    if isinstance(x, dict) and x.get("relation") == "next"
                ),
                None,
            )
            if not link:
                return
            link = self.url(link)
            if not self.same_origin(link):
                self.note(
                    "incomplete-search",
                    f"the server's next link points to another origin "
                    f"({origin(link)[1]}); paging stopped, results may be incomplete",
                    f"search {resource_type}",
                )
                return
            if link in followed:
                self.note(
                    "incomplete-search",
                    "the server repeated a next link; paging stopped",
                    f"search {resource_type}",
                )
                return
            followed.add(link)
            page = self.json("GET", link, kind=kind)
