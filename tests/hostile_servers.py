"""Small hostile HTTP servers on 127.0.0.1 for the tests: one scripted handler each.

A scenario is a function ``scenario(call)`` that answers one request through
``call``'s helpers (``json``, ``send``, ``redirect``, ``drip``, ``cut_short``).
Every server records each request it receives (method, path with query,
headers, body) in ``server.seen``, so a test can assert what reached it, down
to the bytes; :func:`assert_no_secrets` checks that none of them carried a
credential.

Each server is bounded, so no test can hang on one: it answers at most
``max_requests`` requests (then 503 and a note in ``server.overflow``), and
a drip stops after ``DRIP_LIMIT`` seconds, when the client goes away, or
when the server stops.

:class:`MiniFhir` is a well-behaved FHIR server for the MiSLE plan over a few
patients of the bundled cohort (REST searches and a Bulk export); hostile
scenarios wrap it and change one thing.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import ipaddress
import json
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
COHORT = ROOT / "fixtures" / "misle-cohort"
P01 = "p01-eligible-baseline"  # eligible on 2026-06-30
P02 = "p02-age-18-birthday-on-d"  # eligible on 2026-06-30
DRIP_LIMIT = 60.0  # seconds a dripping answer may last, whatever the client does
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def text(self) -> str:
        """Everything the request carried, as text (for searching for secrets)."""
        head = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}\n{head}\n\n{self.body.decode('latin-1')}"


class Call:
    """One request as a scenario sees it, and the ways to answer it."""

    def __init__(self, handler: _Handler, body: bytes):
        self._handler = handler
        self.server: HostileServer = handler.server.hostile  # type: ignore[attr-defined]
        self.method = handler.command
        parts = urlsplit(handler.path)
        self.path = parts.path
        self.headers = {k: v for k, v in handler.headers.items()}
        self.body = body
        query = parts.query
        if self.method == "POST" and self.headers.get("Content-Type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            query = body.decode()
        self.params = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
        self.answered = False

    # -- answers ---------------------------------------------------------------
    def send(
        self,
        status: int = 200,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = FHIR_JSON,
        length: int | None = None,
    ) -> None:
        """A complete answer (``length`` overrides Content-Length: a lie cuts it short)."""
        handler = self._handler
        handler.send_response(status)
        all_headers = {"Content-Type": content_type, **(headers or {})}
        for key, value in all_headers.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body) if length is None else length))
        if length is not None and length != len(body):
            handler.send_header("Connection", "close")
            handler.close_connection = True
        handler.end_headers()
        with contextlib.suppress(OSError):
            handler.wfile.write(body)
            handler.wfile.flush()
        self.answered = True

    def json(self, value: object, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """A JSON answer."""
        self.send(status, json.dumps(value).encode(), headers)

    def gzipped(self, body: bytes, headers: dict[str, str] | None = None, **kwargs) -> None:
        """An answer sent with ``Content-Encoding: gzip``."""
        self.send(body=body, headers={"Content-Encoding": "gzip", **(headers or {})}, **kwargs)

    def redirect(self, location: str, status: int = 302) -> None:
        self.send(status, b"", {"Location": location}, content_type="text/plain")

    def drip(self, every: float = 0.2, before_headers: bool = False) -> None:
        """Headers (unless ``before_headers``), then one byte every ``every`` seconds, for
        ever (within DRIP_LIMIT, until the client goes away or the server stops)."""
        handler = self._handler
        handler.close_connection = True
        self.answered = True
        ending = time.monotonic() + DRIP_LIMIT
        with contextlib.suppress(OSError):
            if before_headers:
                handler.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            else:
                handler.send_response(200)
                handler.send_header("Content-Type", FHIR_JSON)
                handler.send_header("Content-Length", "100000000")
                handler.end_headers()
                handler.wfile.write(b'{"resourceType":"Bundle","type":"searchset","entry":[')
            while time.monotonic() < ending and not self.server.stopping.is_set():
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(every)

    def stream(self, chunks: Iterator[bytes], headers: dict[str, str] | None = None) -> None:
        """A chunked answer, for bodies too large to hold (stops when the client goes away)."""
        handler = self._handler
        handler.send_response(200)
        for key, value in {"Content-Type": FHIR_JSON, **(headers or {})}.items():
            handler.send_header(key, value)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        self.answered = True
        with contextlib.suppress(OSError):
            for chunk in chunks:
                if self.server.stopping.is_set():
                    break
                handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            handler.wfile.write(b"0\r\n\r\n")
            handler.wfile.flush()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once, not 40 ms apart

    def log_message(self, *args) -> None:  # quiet
        return None

    def date_time_string(self, timestamp=None) -> str:
        """The Date header: the server's own clock, unless the scenario sets another."""
        return self.server.hostile.date or super().date_time_string(timestamp)  # type: ignore[attr-defined]

    def _serve(self) -> None:
        hostile: HostileServer = self.server.hostile  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        hostile.record(Seen(self.command, self.path, dict(self.headers.items()), body))
        call = Call(self, body)
        if hostile.exhausted():
            call.send(503, b"too many requests for one test", content_type="text/plain")
            return
        hostile.scenario(call)
        if not call.answered:
            call.json({"resourceType": "OperationOutcome", "issue": []}, status=404)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up mid-answer is the point of many scenarios: not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@dataclass
class HostileServer:
    """A threaded server on 127.0.0.1 answering by ``scenario``."""

    scenario: Callable[[Call], None]
    max_requests: int = 400
    tls: ssl.SSLContext | None = None
    date: str | None = None  # the Date header every answer carries (None: the clock's)
    seen: list[Seen] = field(default_factory=list)
    overflow: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._http = _Server(("127.0.0.1", 0), _Handler)
        self._http.hostile = self  # type: ignore[attr-defined]
        if self.tls is not None:
            self._http.socket = self.tls.wrap_socket(self._http.socket, server_side=True)
        self.port = self._http.server_address[1]
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def origin(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.origin}/fhir"

    def record(self, seen: Seen) -> None:
        with self._lock:
            self.seen.append(seen)

    def exhausted(self) -> bool:
        with self._lock:
            if len(self.seen) > self.max_requests:
                self.overflow += 1
                return True
            return False

    def paths(self) -> list[str]:
        return [urlsplit(s.path).path for s in self.seen]

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self.stopping.set()
        self._http.shutdown()
        self._http.server_close()


def serve(scenario: Callable[[Call], None], **kwargs) -> HostileServer:
    """A server for ``with serve(scenario) as server:``."""
    return HostileServer(scenario, **kwargs)


def recorder(call: Call) -> None:
    """The "other origin": answers anything with an empty searchset and records it."""
    call.json({"resourceType": "Bundle", "type": "searchset", "entry": []})


def assert_no_secrets(server: HostileServer, *secrets: str) -> None:
    """No request to ``server`` carried an Authorization header or any of ``secrets``."""
    for seen in server.seen:
        assert not any(k.lower() == "authorization" for k in seen.headers), seen
        text = seen.text()
        for secret in secrets:
            assert secret not in text, f"a secret reached {server.origin}: {seen.path}"


MiB = 1 << 20


def gzip_of(prefix: bytes, filler: bytes, size: int, suffix: bytes) -> bytes:
    """gzip of ``prefix``, about ``size`` bytes of ``filler``, then ``suffix``: a body that
    inflates about a thousand times (built 1 MiB at a time, never whole in memory)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    parts = [packer.compress(prefix)]
    block = filler * (MiB // len(filler))
    parts += [packer.compress(block) for _ in range(size // MiB)]
    parts += [packer.compress(suffix), packer.flush()]
    return b"".join(parts)


# -- TLS -----------------------------------------------------------------------
@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1, its key, and a server context."""

    pem: Path

    def context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pem)
        return context


def self_signed(folder: Path) -> Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = folder / "server.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return Certificate(pem)


# -- a well-behaved FHIR server ------------------------------------------------
def _cohort() -> list[dict]:
    resources = []
    for path in sorted(COHORT.glob("*.ndjson*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as stream:
            resources += [json.loads(line) for line in stream if line.strip()]
    return resources


def _owner(resource: dict) -> str | None:
    if resource["resourceType"] == "Patient":
        return resource["id"]
    for key in ("subject", "patient"):
        reference = (resource.get(key) or {}).get("reference", "")
        if reference.startswith("Patient/"):
            return reference[8:]
    return None


def _codes(resource: dict) -> set[str]:
    return {
        f"{c.get('system')}|{c.get('code')}"
        for c in (resource.get("code") or {}).get("coding") or ()
    }


def bundle(resources: list[dict], *, total: int | None = None, next_url: str | None = None) -> dict:
    body: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if total is not None:
        body["total"] = total
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    return body


Match = Callable[[Call], bool]
Scenario = Callable[[Call], None]


def candidate_search(kind: str = "Condition") -> Match:
    """The candidate searches on ``kind`` (GET or POST ``_search``; they ask ``_elements``)."""
    return lambda call: kind in call.path and "_elements" in call.params


def path_ends(suffix: str) -> Match:
    return lambda call: call.path.endswith(suffix)


@dataclass(frozen=True)
class Variant:
    """A scenario that answers the requests ``when`` matches by ``then``, the rest by
    ``base``; ``.but`` adds another exception."""

    base: Scenario
    when: Match
    then: Scenario

    def __call__(self, call: Call) -> None:
        (self.then if self.when(call) else self.base)(call)

    def but(self, when: Match, then: Scenario) -> Variant:
        return Variant(self, when, then)


class MiniFhir:
    """REST search and Bulk export of a few patients of the bundled cohort.

    Candidate searches match codes; fetches answer ``patient=``/``_id=`` with
    those patients' resources (``_include``-d Medications added); ``$export``
    answers 202 with a status URL that answers the manifest; files are NDJSON.
    ``extra`` resources (by type) are added to fetch answers and files as they
    are, whoever they belong to: the way to poison an answer.
    """

    def __init__(self, patients: list[str], extra: list[dict] = ()):
        everything = _cohort()
        self.patients = list(patients)
        self.resources = [r for r in everything if _owner(r) in self.patients]
        self.medications = {r["id"]: r for r in everything if r["resourceType"] == "Medication"}
        self.extra = list(extra)

    def of_type(self, kind: str) -> list[dict]:
        return [r for r in self.resources if r["resourceType"] == kind]

    def search(self, kind: str, params: dict[str, str]) -> list[dict]:
        """What an honest server answers to a search of ``kind`` (extras included)."""
        found = list(self.medications.values()) if kind == "Medication" else self.of_type(kind)
        if "code" in params:
            wanted = set(params["code"].split(","))
            found = [r for r in found if _codes(r) & wanted]
        if "_elements" in params:  # a candidate search
            return [
                {"resourceType": kind, "id": r["id"], "subject": r["subject"]}
                for r in found
                if "subject" in r
            ]
        asked = set((params.get("_id") or params.get("patient") or "").split(","))
        found = [r for r in found if (r["id"] if kind == "Medication" else _owner(r)) in asked]
        if "_include" in params:
            referenced = {
                (r.get("medicationReference") or {}).get("reference", "")[11:] for r in found
            }
            found += [self.medications[m] for m in sorted(referenced) if m in self.medications]
        return found + [r for r in self.extra if r["resourceType"] == kind]

    def but(self, when: Match, then: Scenario) -> Variant:
        """This server, except that the requests ``when`` matches are answered by ``then``."""
        return Variant(self, when, then)

    def __call__(self, call: Call) -> None:
        base = call.server.base
        tail = call.path[len("/fhir/") :] if call.path.startswith("/fhir/") else call.path
        if tail == "metadata":
            call.json({"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1"})
        elif tail.isalpha() and call.params.get("_summary") == "count":
            call.json(bundle([], total=len(self.of_type(tail))))
        elif tail == "$export":
            call.send(202, headers={"Content-Location": f"{base}/status/1"})
        elif tail == "status/1":
            call.json(self.manifest(base))
        elif tail.startswith("files/"):
            call.send(body=self.ndjson(tail[6:]), content_type="application/fhir+ndjson")
        else:
            kind = tail.removesuffix("/_search")
            if kind.isalpha():
                call.json(bundle(self.search(kind, call.params)))

    def types(self) -> list[str]:
        kinds = {r["resourceType"] for r in self.resources + self.extra} | {"Medication"}
        return sorted(kinds)

    def manifest(self, base: str, requires_token: bool = True) -> dict:
        return {
            "transactionTime": "2026-06-30T00:00:00Z",
            "request": f"{base}/$export",
            "requiresAccessToken": requires_token,
            "output": [{"type": k, "url": f"{base}/files/{k}"} for k in self.types()],
            "error": [],
        }

    def ndjson(self, kind: str) -> bytes:
        if kind == "Medication":
            chosen = list(self.medications.values())
        else:
            chosen = self.of_type(kind)
        chosen += [r for r in self.extra if r["resourceType"] == kind]
        return b"".join(json.dumps(r).encode() + b"\n" for r in chosen)


# -- running the command line against a server --------------------------------
AS_OF = "2026-06-30"


@dataclass(frozen=True)
class Run:
    """One ``fhir-cohort screen`` run: exit code, what it printed, and its outputs."""

    code: int
    stdout: str
    stderr: str
    out: Path
    seconds: float

    def result(self) -> dict:
        return json.loads((self.out / "candidates.json").read_text())

    def statuses(self) -> dict[str, str]:
        return {c["patient"]: c["status"] for c in self.result()["candidates"]}

    def quality(self) -> dict[str, int]:
        return {q["code"]: q["count"] for q in self.result()["data_quality"]}

    def quality_text(self) -> str:
        return json.dumps(self.result()["data_quality"])


def screen(folder: Path, base: str, *args: str, quiet: bool = True) -> Run:
    """Run ``fhir-cohort screen --server base`` with its state and outputs in ``folder``."""
    from fhir_cohort.cli import main

    out, err = io.StringIO(), io.StringIO()
    started = time.monotonic()
    argv = [
        "screen",
        "--server",
        base,
        "--as-of",
        AS_OF,
        "--out",
        str(folder / "out"),
        "--state",
        str(folder / "state"),
        *(["--quiet"] if quiet else []),
        *args,
    ]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return Run(code, out.getvalue(), err.getvalue(), folder / "out", time.monotonic() - started)
