"""FhirClient, authentication, and the REST and Bulk sources, against a fake server.

Every HTTP exchange is served by ``responses``: an unregistered URL raises
``requests.ConnectionError``, so a request that must never be sent shows up as
a call in ``rsps.calls`` (asserted absent), never as real network traffic.
No test sleeps: each FhirClient gets ``sleep=waits.append``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import json
import re
import stat
import time
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fake_fhir import route_searches, search_params

from fhir_cohort.criteria.language import load as load_trial
from fhir_cohort.sources.bulk import STATE, BulkSource
from fhir_cohort.sources.rest import RestSource
from fhir_cohort.transport import auth as auth_module
from fhir_cohort.transport.auth import (
    AuthError,
    BasicAuth,
    BearerAuth,
    SmartBackendAuth,
    read_secret,
)
from fhir_cohort.transport.client import MAX_URL, FhirClient, Limits, ServerError
from fhir_cohort.transport.urls import BadServerURL, Reach, origin

BASE = "https://fhir.example.test/fhir"
TOKEN = "s3cr3t-T0KEN-never-shown"
EVIL = "https://evil.example/fhir"


# -- helpers -------------------------------------------------------------------
@pytest.fixture
def rsps():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture(scope="module")
def trial():
    return load_trial("misle")


def make_client(waits: list, auth=None, **kwargs) -> FhirClient:
    return FhirClient(BASE, auth, sleep=lambda s: waits.append(s), **kwargs)


def bundle(*entries, next_url: str | None = None, total: int | None = None) -> dict:
    body: dict = {"resourceType": "Bundle", "type": "searchset", "entry": list(entries)}
    if next_url:
        body["link"] = [{"relation": "next", "url": next_url}]
    if total is not None:
        body["total"] = total
    return body


def entry(resource: dict, mode: str = "match") -> dict:
    return {
        "fullUrl": f"{BASE}/{resource['resourceType']}/{resource.get('id')}",
        "resource": resource,
        "search": {"mode": mode},
    }


def condition(cid: str, patient: str = "p1") -> dict:
    return {"resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{patient}"}}


def ids(entries) -> list[str]:
    return [e["resource"]["id"] for e in entries]


def auth_header(call) -> str | None:
    return call.request.headers.get("Authorization")


def hosts(rsps) -> list[str]:
    return [urlsplit(c.request.url).hostname for c in rsps.calls]


def form(call) -> dict[str, list[str]]:
    body = call.request.body
    if isinstance(body, bytes):
        body = body.decode()
    return parse_qs(body)


# -- 1. origin and paging ------------------------------------------------------
def test_origin_makes_default_ports_explicit_and_ignores_host_case():
    assert origin("https://FHIR.Example.test/fhir") == ("https", "fhir.example.test", 443)
    assert origin("HTTP://h/fhir") == ("http", "h", 80)
    assert origin("https://fhir.example.test:443/a") == origin("https://fhir.example.test/b?c")
    assert origin("http://h:80/") == origin("http://h/")
    assert origin("https://h:8443/") != origin("https://h/")
    assert origin("http://h:8080/") != origin("https://h:8080/")
    assert origin("http://h/") != origin("https://h/")
    client = FhirClient(BASE, sleep=lambda s: None)

    def same_origin(url: str) -> bool:
        return client.transport.check(url, Reach.SERVER) is None

    assert same_origin("https://FHIR.EXAMPLE.TEST:443/fhir/Condition?page=2")
    assert not same_origin("https://fhir.example.test:8443/fhir/Condition")
    assert not same_origin("http://fhir.example.test/fhir/Condition")
    # user-info trick: the host is evil.example
    assert not same_origin("https://fhir.example.test@evil.example/fhir/Condition")
    # backslash trick: urlsplit reads fhir.example.test, the library connects to evil.example
    assert not same_origin("https://evil.example\\@fhir.example.test/fhir/Condition")


def test_paging_follows_absolute_next_links_in_order_with_bearer_token(rsps):
    rsps.get(
        f"{BASE}/Condition",
        match=[responses.matchers.query_param_matcher({"code": "a|1", "_count": "2"})],
        json=bundle(
            entry(condition("c1")), entry(condition("c2")), next_url=f"{BASE}/Condition?page=2"
        ),
    )
    rsps.get(
        f"{BASE}/Condition?page=2",
        json=bundle(
            entry(condition("c3")), entry(condition("c4")), next_url=f"{BASE}/Condition?page=3"
        ),
    )
    rsps.get(f"{BASE}/Condition?page=3", json=bundle(entry(condition("c5"))))
    waits: list = []
    client = make_client(waits, BearerAuth(TOKEN))
    result = list(client.search("Condition", {"code": "a|1", "_count": "2"}))
    assert ids(result) == ["c1", "c2", "c3", "c4", "c5"]
    assert len(rsps.calls) == 3
    assert all(auth_header(c) == f"Bearer {TOKEN}" for c in rsps.calls)
    assert client.notes == [] and waits == []
    assert client.counter.total == 3 and client.counter.retries == 0
    assert client.counter.by_kind == {"search": 3}


def test_relative_next_link_is_resolved_against_the_base(rsps):
    rsps.get(
        f"{BASE}/Condition",
        match=[responses.matchers.query_param_matcher({"code": "x"})],
        json=bundle(entry(condition("c1")), next_url="Condition?page=2"),
    )
    rsps.get(f"{BASE}/Condition?page=2", json=bundle(entry(condition("c2"))))
    client = make_client([])
    assert ids(client.search("Condition", {"code": "x"})) == ["c1", "c2"]


def test_outcome_entries_become_notes_not_results(rsps):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "warning",
                "code": "processing",
                "diagnostics": "code system unknown, ignored",
            }
        ],
    }
    rsps.get(
        f"{BASE}/Condition",
        json=bundle(entry(condition("c1")), entry(outcome, mode="outcome"), entry(condition("c2"))),
    )
    client = make_client([])
    assert ids(client.search("Condition", {"code": "x"})) == ["c1", "c2"]
    assert [(n.code, n.message, n.where) for n in client.notes] == [
        ("server-warning", "code system unknown, ignored", "search Condition")
    ]


def test_repeated_next_link_stops_paging_with_a_note(rsps):
    rsps.get(
        f"{BASE}/Condition",
        match=[responses.matchers.query_param_matcher({"code": "x"})],
        json=bundle(entry(condition("c1")), next_url=f"{BASE}/Condition?page=2"),
    )
    rsps.get(
        f"{BASE}/Condition?page=2",
        json=bundle(entry(condition("c2")), next_url=f"{BASE}/Condition?page=2"),
    )
    client = make_client([])
    assert ids(client.search("Condition", {"code": "x"})) == ["c1", "c2"]
    assert len(rsps.calls) == 2
    assert [n.code for n in client.notes] == ["incomplete-search"]
    assert "repeated" in client.notes[0].message


def test_next_link_back_to_the_first_page_does_not_duplicate_entries(rsps):
    first = f"{BASE}/Condition?code=x"
    rsps.get(first, json=bundle(entry(condition("c1")), next_url=first))  # next == self
    client = make_client([])
    assert ids(client.search("Condition", {"code": "x"})) == ["c1"]
    assert [n.code for n in client.notes] == ["incomplete-search"]


def test_next_link_to_another_host_is_not_followed(rsps):
    rsps.get(
        f"{BASE}/Condition",
        json=bundle(entry(condition("c1")), next_url=f"{EVIL}/Condition?page=2"),
    )
    rsps.get(f"{EVIL}/Condition", json=bundle(entry(condition("stolen"))))
    waits: list = []
    client = make_client(waits, BearerAuth(TOKEN))
    assert ids(client.search("Condition", {"code": "x"})) == ["c1"]
    assert hosts(rsps) == ["fhir.example.test"]
    assert [n.code for n in client.notes] == ["incomplete-search"]
    assert "evil.example" in client.notes[0].message
    assert waits == []


@pytest.mark.parametrize(
    "link",
    [
        "http://fhir.example.test/fhir/Condition?page=2",  # downgrade to http
        "https://fhir.example.test:8443/fhir/Condition?page=2",  # another port
        "https://fhir.example.test@evil.example/fhir/Condition?page=2",  # user-info trick
    ],
)
def test_next_link_to_another_origin_on_same_name_is_not_followed(rsps, link):
    rsps.get(f"{BASE}/Condition", json=bundle(entry(condition("c1")), next_url=link))
    client = make_client([], BearerAuth(TOKEN))
    assert ids(client.search("Condition", {"code": "x"})) == ["c1"]
    assert len(rsps.calls) == 1
    assert [n.code for n in client.notes] == ["incomplete-search"]


def test_next_link_with_invalid_port_is_a_note_not_a_crash(rsps):
    rsps.get(
        f"{BASE}/Condition",
        json=bundle(
            entry(condition("c1")), next_url="https://fhir.example.test:99999/fhir/Condition?page=2"
        ),
    )
    client = make_client([], BearerAuth(TOKEN))
    try:
        result = ids(client.search("Condition", {"code": "x"}))
    except ServerError:
        return
    assert result == ["c1"]
    assert [n.code for n in client.notes] == ["incomplete-search"]


def test_redirect_to_another_host_is_refused_not_followed(rsps):
    """Before: followed without the token, and the other server's answer was used."""
    rsps.get(f"{BASE}/Binary/1", status=302, headers={"Location": f"{EVIL}/Binary/1"})
    rsps.get(f"{EVIL}/Binary/1", body=b"data")
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError) as caught:
        client.request("GET", "Binary/1")
    assert str(caught.value) == (
        "GET /fhir/Binary/1: the server redirects elsewhere: the URL points to another origin "
        "(https://evil.example:443); not followed (only the FHIR server's own origin may answer)"
    )
    assert hosts(rsps) == ["fhir.example.test"]


def test_same_origin_redirect_is_followed_with_the_token(rsps):
    rsps.get(f"{BASE}/Binary/1", status=301, headers={"Location": "/fhir/Binary/2"})
    rsps.get(f"{BASE}/Binary/2", body=b"data")
    client = make_client([], BearerAuth(TOKEN))
    assert client.request("GET", "Binary/1").content == b"data"
    assert [auth_header(c) for c in rsps.calls] == [f"Bearer {TOKEN}"] * 2


def test_redirect_to_storage_is_followed_without_the_token_only_where_allowed(rsps):
    rsps.get(f"{BASE}/files/1", status=302, headers={"Location": "https://storage.test/x"})
    rsps.get("https://storage.test/x", body=b"data")
    client = make_client([], BearerAuth(TOKEN))
    answer = client.request("GET", "files/1", redirect_to=Reach.STORAGE)
    assert answer.content == b"data"
    assert [auth_header(c) for c in rsps.calls] == [f"Bearer {TOKEN}", None]
    rsps.replace(responses.GET, f"{BASE}/files/1", status=302, headers={"Location": "http://s/x"})
    with pytest.raises(ServerError, match=r"another origin \(http://s:80\)"):
        client.request("GET", "files/1", redirect_to=Reach.STORAGE)  # storage is https only


def test_a_redirected_post_is_not_followed(rsps):
    rsps.post(f"{BASE}/Condition/_search", status=307, headers={"Location": f"{BASE}/x"})
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError, match=r"answered 307 \(a redirect\); not followed"):
        client.request("POST", "Condition/_search", data={"code": "a"})
    assert len(rsps.calls) == 1


def test_absolute_url_on_another_origin_is_refused_or_sent_without_credentials(rsps):
    rsps.get(f"{EVIL}/x", json={})
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError, match="another origin"):
        client.request("GET", f"{EVIL}/x")
    assert len(rsps.calls) == 0
    client.request("GET", f"{EVIL}/x", reach=Reach.STORAGE)
    assert auth_header(rsps.calls[0]) is None


# -- 2. long searches ----------------------------------------------------------
def test_long_search_goes_as_post_form(rsps):
    codes = ",".join(f"http://snomed.info/sct|{100000 + i}" for i in range(120))
    assert len(codes) > MAX_URL
    rsps.post(f"{BASE}/Condition/_search", json=bundle(entry(condition("c1"))))
    client = make_client([], BearerAuth(TOKEN))
    assert ids(client.search("Condition", {"code": codes, "_count": "500"})) == ["c1"]
    (call,) = rsps.calls
    assert call.request.method == "POST"
    assert urlsplit(call.request.url).path == "/fhir/Condition/_search"
    assert urlsplit(call.request.url).query == ""
    assert call.request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert form(call) == {"code": [codes], "_count": ["500"]}
    assert auth_header(call) == f"Bearer {TOKEN}"


def test_short_search_stays_get(rsps):
    rsps.get(f"{BASE}/Condition", json=bundle())
    client = make_client([])
    assert list(client.search("Condition", {"code": "http://loinc.org|1-8"})) == []
    (call,) = rsps.calls
    assert call.request.method == "GET"
    assert parse_qs(urlsplit(call.request.url).query) == {"code": ["http://loinc.org|1-8"]}


# -- 3. retries ----------------------------------------------------------------
def test_429_honours_retry_after_seconds(rsps):
    rsps.get(f"{BASE}/metadata", status=429, headers={"Retry-After": "3"})
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    waits: list = []
    client = make_client(waits)
    assert client.capabilities()["resourceType"] == "CapabilityStatement"
    assert waits == [3.0]
    assert len(rsps.calls) == 2
    assert client.counter.total == 2 and client.counter.retries == 1
    assert client.counter.by_kind == {"metadata": 2}


def test_503_honours_retry_after_http_date(rsps):
    when = email.utils.formatdate(time.time() + 10, usegmt=True)
    rsps.get(f"{BASE}/metadata", status=503, headers={"Retry-After": when})
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    waits: list = []
    client = make_client(waits)
    client.capabilities()
    assert len(waits) == 1 and 8.0 <= waits[0] <= 10.0
    assert client.counter.total == 2 and client.counter.retries == 1


def test_502_504_without_retry_after_back_off_with_jitter_within_bounds(rsps):
    for status in (502, 504, 502, 504):
        rsps.get(f"{BASE}/metadata", status=status)
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    waits: list = []
    client = make_client(waits)
    client.capabilities()
    assert len(waits) == 4
    for attempt, wait in enumerate(waits):  # 0.5 * 2**attempt, jittered by [0.5, 1.5)
        assert 0.25 * 2**attempt <= wait < 0.75 * 2**attempt
    assert client.counter.total == 5 and client.counter.retries == 4


def test_backoff_grows_and_jitter_spans_its_range(monkeypatch):
    client = make_client([])
    monkeypatch.setattr("fhir_cohort.transport.client.random.random", lambda: 0.5)
    assert [client._backoff(a) for a in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    monkeypatch.setattr("fhir_cohort.transport.client.random.random", lambda: 0.0)
    assert client._backoff(2) == 1.0
    monkeypatch.setattr("fhir_cohort.transport.client.random.random", lambda: 0.999999)
    assert 2.99 < client._backoff(2) < 3.0
    monkeypatch.undo()
    samples = {client._backoff(3) for _ in range(50)}
    assert len(samples) > 1  # really jittered
    assert all(2.0 <= s < 6.0 for s in samples)


def test_retry_after_beyond_max_wait_stops_with_a_clear_message(rsps):
    rsps.get(f"{BASE}/metadata", status=429, headers={"Retry-After": "600"})
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    waits: list = []
    client = make_client(waits, max_wait=120)
    with pytest.raises(ServerError) as caught:
        client.capabilities()
    message = str(caught.value)
    assert "600 s" in message and "120 s" in message and "--max-wait" in message
    assert message.startswith("HTTP 429 from GET /fhir/metadata")
    assert "\n" not in message
    assert waits == [] and len(rsps.calls) == 1


def test_exhausting_retries_names_the_number_of_tries(rsps):
    rsps.get(f"{BASE}/metadata", status=503)
    waits: list = []
    client = make_client(waits, max_retries=2)
    with pytest.raises(ServerError) as caught:
        client.capabilities()
    assert "after 3 tries" in str(caught.value)
    assert str(caught.value).startswith("HTTP 503 from GET /fhir/metadata")
    assert len(rsps.calls) == 3 and len(waits) == 2
    assert client.counter.total == 3 and client.counter.retries == 2


def test_connection_error_is_retried_then_succeeds(rsps):
    rsps.get(f"{BASE}/metadata", body=requests.ConnectionError("connection reset"))
    rsps.get(f"{BASE}/metadata", body=requests.ConnectionError("connection reset"))
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    waits: list = []
    client = make_client(waits)
    assert client.capabilities()["resourceType"] == "CapabilityStatement"
    assert len(waits) == 2
    assert 0.25 <= waits[0] < 0.75 and 0.5 <= waits[1] < 1.5
    assert client.counter.total == 3 and client.counter.retries == 2


def test_connection_errors_exhausted_name_the_tries(rsps):
    rsps.get(f"{BASE}/metadata", body=requests.ConnectionError("no route"))
    waits: list = []
    client = make_client(waits, max_retries=3)
    with pytest.raises(ServerError) as caught:
        client.capabilities()
    assert str(caught.value) == "GET /fhir/metadata: no answer after 4 tries (ConnectionError)"
    assert len(waits) == 3 and len(rsps.calls) == 4
    assert client.counter.total == 4 and client.counter.retries == 3


def test_timeout_is_passed_on_every_request_within_the_total(rsps):
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    client = make_client([], limits=Limits(timeout=7.0))
    client.capabilities()
    connect, read = rsps.calls[0].request.req_kwargs["timeout"]
    assert 6.0 < connect <= 7.0 and 6.0 < read <= 7.0


# -- 4. errors -----------------------------------------------------------------
def test_operation_outcome_400_is_one_line_without_the_query(rsps):
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "Unknown search parameter\n'flavour'",
            }
        ],
    }
    rsps.get(f"{BASE}/Condition", status=400, json=outcome, content_type="application/fhir+json")
    waits: list = []
    client = make_client(waits)
    with pytest.raises(ServerError) as caught:
        list(client.search("Condition", {"patient": "secret-patient-42", "flavour": "x"}))
    assert str(caught.value) == (
        "HTTP 400 from GET /fhir/Condition: Unknown search parameter 'flavour'"
    )
    assert "secret-patient-42" not in str(caught.value)
    assert len(rsps.calls) == 1 and waits == []


def test_html_502_after_retries_becomes_its_title(rsps):
    page = (
        "<html><head><title>502 Bad Gateway</title></head>"
        "<body><h1>Bad Gateway</h1><p>nginx</p></body></html>"
    )
    rsps.get(f"{BASE}/Condition", status=502, body=page, content_type="text/html")
    waits: list = []
    client = make_client(waits, max_retries=2)
    with pytest.raises(ServerError) as caught:
        list(client.search("Condition", {"patient": "p1"}))
    assert str(caught.value) == "HTTP 502 from GET /fhir/Condition: 502 Bad Gateway (after 3 tries)"
    assert len(waits) == 2


def test_200_not_json_is_a_server_error(rsps):
    rsps.get(f"{BASE}/Condition", status=200, body="<html>login</html>", content_type="text/html")
    client = make_client([])
    with pytest.raises(ServerError) as caught:
        list(client.search("Condition", {"patient": "p1"}))
    assert "not JSON" in str(caught.value)
    assert str(caught.value).startswith("GET /fhir/Condition:")
    assert "p1" not in str(caught.value)


def test_200_json_array_is_a_server_error(rsps):
    rsps.get(f"{BASE}/metadata", json=[1, 2])
    with pytest.raises(ServerError, match="not a JSON object"):
        make_client([]).capabilities()


def test_search_answered_with_non_bundle_is_a_server_error(rsps):
    rsps.get(f"{BASE}/Condition", json={"resourceType": "Patient", "id": "x"})
    with pytest.raises(ServerError, match="Patient, not a Bundle"):
        list(make_client([]).search("Condition", {"patient": "p1"}))


def test_bad_base_url_is_refused():
    with pytest.raises(BadServerURL, match="http:// or https://"):
        FhirClient("ftp://fhir.example.test/", sleep=lambda s: None)


# -- 5. auth -------------------------------------------------------------------
class RefreshingAuth:
    """A provider whose token changes at every refresh."""

    def __init__(self):
        self.refreshes = 0

    @property
    def token(self) -> str:
        return f"token-{self.refreshes}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def refresh(self) -> bool:
        self.refreshes += 1
        return True


def test_401_mid_paging_refreshes_once_and_paging_continues(rsps):
    rsps.get(
        f"{BASE}/Condition",
        match=[responses.matchers.query_param_matcher({"code": "x"})],
        json=bundle(entry(condition("c1")), next_url=f"{BASE}/Condition?page=2"),
    )
    rsps.get(f"{BASE}/Condition?page=2", status=401)
    rsps.get(
        f"{BASE}/Condition?page=2",
        json=bundle(entry(condition("c2")), next_url=f"{BASE}/Condition?page=3"),
    )
    rsps.get(f"{BASE}/Condition?page=3", json=bundle(entry(condition("c3"))))
    provider = RefreshingAuth()
    waits: list = []
    client = make_client(waits, provider)
    assert ids(client.search("Condition", {"code": "x"})) == ["c1", "c2", "c3"]
    assert provider.refreshes == 1
    assert [auth_header(c) for c in rsps.calls] == [
        "Bearer token-0",
        "Bearer token-0",
        "Bearer token-1",
        "Bearer token-1",
    ]
    assert [c.response.status_code for c in rsps.calls] == [200, 401, 200, 200]
    assert waits == [] and client.counter.total == 4


def test_second_401_after_refresh_is_a_server_error(rsps):
    rsps.get(
        f"{BASE}/Condition",
        status=401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "login", "diagnostics": "token expired"}],
        },
    )
    provider = RefreshingAuth()
    client = make_client([], provider)
    with pytest.raises(ServerError) as caught:
        list(client.search("Condition", {"code": "x"}))
    assert str(caught.value) == "HTTP 401 from GET /fhir/Condition: token expired"
    assert provider.refreshes == 1
    assert len(rsps.calls) == 2


def test_401_with_static_token_is_not_retried(rsps):
    rsps.get(f"{BASE}/Condition", status=401)
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError, match="HTTP 401 from GET /fhir/Condition"):
        list(client.search("Condition", {"code": "x"}))
    assert len(rsps.calls) == 1


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


TOKEN_URL = "https://auth.example.test/oauth/token"


def register_smart(rsps, access_token="smart-access-1", expires_in=3600):
    rsps.get(
        f"{BASE}/.well-known/smart-configuration",
        json={"token_endpoint": TOKEN_URL, "grant_types_supported": ["client_credentials"]},
    )
    rsps.post(
        TOKEN_URL,
        json={
            "access_token": access_token,
            "token_type": "bearer",
            "expires_in": expires_in,
            "scope": "system/*.rs",
        },
    )


def token_calls(rsps):
    return [c for c in rsps.calls if c.request.url == TOKEN_URL]


@pytest.mark.parametrize("algorithm", ["ES384", "RS384"])
def test_smart_backend_discovers_endpoint_and_signs_assertion(rsps, ec_key, rsa_key, algorithm):
    key = ec_key if algorithm == "ES384" else rsa_key
    register_smart(rsps)
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    smart = SmartBackendAuth(BASE, "my-client", key, key_id="kid-1")
    client = make_client([], smart)
    before = int(time.time())
    client.capabilities()
    after = int(time.time())
    discovery, token, metadata = rsps.calls
    assert discovery.request.url == f"{BASE}/.well-known/smart-configuration"
    assert smart.token_url == TOKEN_URL
    fields = form(token)
    assert token.request.method == "POST"
    assert fields["grant_type"] == ["client_credentials"]
    assert fields["scope"] == ["system/*.rs"]
    assert fields["client_assertion_type"] == [
        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    ]
    (assertion,) = fields["client_assertion"]
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == algorithm and header["kid"] == "kid-1" and header["typ"] == "JWT"
    claims = jwt.decode(assertion, key=key.public_key(), algorithms=[algorithm], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "my-client"
    assert claims["aud"] == TOKEN_URL
    assert isinstance(claims["jti"], str) and len(claims["jti"]) >= 16
    assert before < claims["exp"] <= after + 300
    assert before <= claims["iat"] <= after
    # the token went to the FHIR server, and the assertion did not
    assert auth_header(metadata) == "Bearer smart-access-1"
    assert auth_header(token) is None and auth_header(discovery) is None
    with pytest.raises(jwt.InvalidSignatureError):
        other = (
            ec.generate_private_key(ec.SECP384R1())
            if algorithm == "ES384"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )
        jwt.decode(assertion, key=other.public_key(), algorithms=[algorithm], audience=TOKEN_URL)


def test_smart_jti_differs_between_assertions(rsps, ec_key):
    register_smart(rsps, expires_in=30)
    smart = SmartBackendAuth(BASE, "c", ec_key)
    smart.headers()
    smart.headers()
    jtis = [
        jwt.decode(form(c)["client_assertion"][0], options={"verify_signature": False})["jti"]
        for c in token_calls(rsps)
    ]
    assert len(jtis) == 2 and jtis[0] != jtis[1]


def test_smart_short_lived_token_is_fetched_every_call(rsps, ec_key):
    assert auth_module.REFRESH_MARGIN == 60
    register_smart(rsps, expires_in=30)
    smart = SmartBackendAuth(BASE, "c", ec_key)
    for _ in range(3):
        assert smart.headers() == {"Authorization": "Bearer smart-access-1"}
    assert len(token_calls(rsps)) == 3
    # discovery happens once, then the endpoint is remembered
    assert sum(c.request.url.endswith("smart-configuration") for c in rsps.calls) == 1


def test_smart_long_lived_token_is_reused(rsps, ec_key):
    register_smart(rsps, expires_in=3600)
    smart = SmartBackendAuth(BASE, "c", ec_key)
    for _ in range(5):
        assert smart.headers() == {"Authorization": "Bearer smart-access-1"}
    assert len(token_calls(rsps)) == 1


def test_smart_token_refreshed_after_401(rsps, ec_key):
    rsps.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    rsps.post(TOKEN_URL, json={"access_token": "first", "expires_in": 3600})
    rsps.post(TOKEN_URL, json={"access_token": "second", "expires_in": 3600})
    rsps.get(f"{BASE}/metadata", status=401)
    rsps.get(f"{BASE}/metadata", json={"resourceType": "CapabilityStatement"})
    client = make_client([], SmartBackendAuth(BASE, "c", ec_key))
    client.capabilities()
    fhir = [c for c in rsps.calls if c.request.url == f"{BASE}/metadata"]
    assert [auth_header(c) for c in fhir] == ["Bearer first", "Bearer second"]
    assert len(token_calls(rsps)) == 2


def test_smart_token_refused_message_has_description_but_no_secret(rsps, ec_key):
    rsps.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    rsps.post(
        TOKEN_URL,
        status=400,
        json={"error": "invalid_client", "error_description": "Unknown client key kid-1"},
    )
    smart = SmartBackendAuth(BASE, "c", ec_key)
    with pytest.raises(AuthError) as caught:
        smart.headers()
    message = str(caught.value)
    assert "Unknown client key kid-1" in message and "400" in message
    assertion = form(token_calls(rsps)[0])["client_assertion"][0]
    assert assertion not in message
    for part in assertion.split("."):
        assert part not in message
    assert "PRIVATE KEY" not in message
    assert str(ec_key.private_numbers().private_value) not in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None


def test_smart_discovery_failure_is_an_auth_error(rsps, ec_key):
    rsps.get(f"{BASE}/.well-known/smart-configuration", status=404)
    with pytest.raises(AuthError, match="cannot discover the token endpoint"):
        SmartBackendAuth(BASE, "c", ec_key).headers()


def test_smart_token_200_not_json_is_an_auth_error(rsps, ec_key):
    rsps.get(f"{BASE}/.well-known/smart-configuration", json={"token_endpoint": TOKEN_URL})
    rsps.post(TOKEN_URL, status=200, body="<html>Sign in</html>", content_type="text/html")
    with pytest.raises(AuthError):
        SmartBackendAuth(BASE, "c", ec_key).headers()


def test_read_secret_from_env_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv("FHIR_TEST_TOKEN", "  env-secret \n")
    assert read_secret(env="FHIR_TEST_TOKEN") == "env-secret"
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("file-secret\nsecond line\n")
    assert read_secret(file=secret_file) == "file-secret"
    assert read_secret(env="FHIR_TEST_TOKEN", file=secret_file) == "file-secret"  # file wins
    monkeypatch.delenv("FHIR_TEST_TOKEN")
    with pytest.raises(AuthError) as caught:
        read_secret(env="FHIR_TEST_TOKEN", what="token")
    assert "FHIR_TEST_TOKEN" in str(caught.value)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(AuthError, match="empty"):
        read_secret(file=tmp_path / "empty")
    with pytest.raises(AuthError, match="cannot read"):
        read_secret(file=tmp_path / "missing")
    with pytest.raises(AuthError, match="no secret given"):
        read_secret()


def test_repr_of_auth_providers_hides_secrets(rsps, ec_key):
    assert TOKEN not in repr(BearerAuth(TOKEN))
    basic = BasicAuth("alice", "pa55w0rd-secret")
    assert "pa55w0rd-secret" not in repr(basic) and "alice" in repr(basic)
    assert basic.headers()["Authorization"].split()[1] not in repr(basic)
    register_smart(rsps, access_token=TOKEN)
    smart = SmartBackendAuth(BASE, "my-client", ec_key)
    smart.headers()
    shown = repr(smart)
    assert TOKEN not in shown and "my-client" in shown
    assert "PRIVATE" not in shown and "EllipticCurvePrivateKey" not in shown
    assert str(ec_key.private_numbers().private_value) not in shown
    client = make_client([], smart)
    assert TOKEN not in repr(client.auth)


# -- 6. secrets never leak -----------------------------------------------------
def _paths_to_server_errors(rsps):
    """Register one failing endpoint per ServerError path; return (path, params) pairs."""
    outcome = {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "bad request"}]}
    rsps.get(f"{BASE}/A", status=400, json=outcome)
    rsps.get(
        f"{BASE}/B",
        status=502,
        body="<html><title>Bad Gateway</title></html>",
        content_type="text/html",
    )
    rsps.get(f"{BASE}/C", status=429, headers={"Retry-After": "9999"})
    rsps.get(f"{BASE}/D", body=requests.ConnectionError(f"boom {TOKEN}"))
    rsps.get(f"{BASE}/E", body="not json", content_type="text/plain")
    rsps.get(f"{BASE}/F", json={"resourceType": "Patient"})
    rsps.get(f"{BASE}/G", status=401, json=outcome)
    rsps.get(f"{BASE}/H", status=503, json={"error": "unavailable"})
    return "ABCDEFGH"


def test_token_appears_in_no_error_and_no_note(rsps):
    kinds = _paths_to_server_errors(rsps)
    rsps.get(
        f"{BASE}/N",
        json=bundle(
            entry(
                {"resourceType": "OperationOutcome", "issue": [{"code": "informational"}]},
                mode="outcome",
            ),
            next_url=f"{EVIL}/N?page=2",
        ),
    )
    rsps.get(f"{BASE}/R", json=bundle(next_url=f"{BASE}/R?p=2"))
    rsps.get(f"{BASE}/R?p=2", json=bundle(next_url=f"{BASE}/R?p=2"))
    waits: list = []
    client = make_client(waits, BearerAuth(TOKEN), max_retries=1)
    messages = []
    for kind in kinds:
        with pytest.raises(ServerError) as caught:
            list(client.search(kind, {"patient": "p1"}))
        messages.append(str(caught.value))
        messages.append(repr(caught.value))
        assert caught.value.__cause__ is None
    list(client.search("N", {}))
    list(client.search("R", {}))
    assert len(client.notes) == 3
    assert all(TOKEN not in m for m in messages), messages
    assert all(TOKEN not in f"{n}" for n in client.notes)
    assert [c.request.url for c in rsps.calls if "evil" in c.request.url] == []
    # the token really was sent, to the server itself
    assert all(auth_header(c) == f"Bearer {TOKEN}" for c in rsps.calls)


def test_token_echoed_by_the_server_is_not_repeated(rsps):
    rsps.get(
        f"{BASE}/Condition",
        status=401,
        json={
            "resourceType": "OperationOutcome",
            "issue": [{"code": "login", "diagnostics": f"invalid token 'Bearer {TOKEN}'"}],
        },
    )
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError) as caught:
        list(client.search("Condition", {}))
    assert TOKEN not in str(caught.value)


# -- 7. RestSource ---------------------------------------------------------------
def fake_server(rsps, seen: list, medication_twice=False):
    """A FHIR server for the misle plan: 5 patients, candidates p1 and p2 (found by their
    Conditions and p1's Observation, which the fetch brings back too), no /metadata."""
    rsps.get(f"{BASE}/metadata", status=404, json={"resourceType": "OperationOutcome"})

    def answer(request):
        path = urlsplit(request.url).path[len("/fhir/") :]
        kind = path.split("/")[0]
        params = search_params(request)
        seen.append((request.method, path, params))
        if kind == "Patient" and params.get("_summary") == "count":
            return 200, {}, json.dumps(bundle(total=5))
        if "_elements" in params:  # a candidate search
            if kind == "Condition" and "D68.61" in params["code"]:
                found = ["p1", "p2"]
            else:
                found = ["p1"]  # duplicates
            entries = [
                entry({"resourceType": kind, "id": f"{kind}-{p}", "subject": ref(p)}) for p in found
            ]
            return 200, {}, json.dumps(bundle(*entries))
        patients = (params.get("_id") or params.get("patient") or "").split(",")
        entries = []
        if kind == "Patient":
            entries = [
                entry({"resourceType": "Patient", "id": p, "birthDate": "1970-01-01"})
                for p in patients
            ]
        elif kind == "Condition":
            entries = [entry(condition(f"Condition-{p}", p)) for p in patients]
        elif kind == "Observation":
            entries = [
                entry({"resourceType": kind, "id": f"{kind}-{p}", "subject": ref(p)})
                for p in patients
                if p == "p1"
            ]
        elif kind == "MedicationRequest" or (medication_twice and kind.startswith("Medication")):
            for p in patients:
                entries.append(
                    entry(
                        {
                            "resourceType": kind,
                            "id": f"{kind}-{p}",
                            "subject": {"reference": f"Patient/{p}"},
                            "medicationReference": {"reference": "Medication/m1"},
                        }
                    )
                )
            entries.append(
                entry(
                    {"resourceType": "Medication", "id": "m1", "code": {"text": "prednisone"}},
                    mode="include",
                )
            )
        return 200, {}, json.dumps(bundle(*entries))

    route_searches(rsps, BASE, answer)


def ref(patient: str) -> dict:
    return {"reference": f"Patient/{patient}"}


def test_rest_source_reads_candidates_records_and_counts(rsps, trial):
    seen: list = []
    fake_server(rsps, seen)
    client = make_client([], BearerAuth(TOKEN))
    source = RestSource(client, trial.server, concurrency=2)
    notes, progress = [], []
    raws = list(source.read(notes.append, progress.append))
    got = sorted((r.resource["resourceType"], r.resource["id"], r.patient) for r in raws)
    assert got == [
        ("Condition", "Condition-p1", "p1"),
        ("Condition", "Condition-p2", "p2"),
        ("Medication", "m1", None),
        ("MedicationRequest", "MedicationRequest-p1", "p1"),
        ("MedicationRequest", "MedicationRequest-p2", "p2"),
        ("Observation", "Observation-p1", "p1"),
        ("Patient", "p1", "p1"),
        ("Patient", "p2", "p2"),
    ]
    assert {r.origin for r in raws if r.resource["resourceType"] == "Patient"} == {
        f"{BASE}/Patient"
    }
    assert source.patients_not_read() == 3
    assert source.stats() == {
        "http_requests": len(rsps.calls),
        "http_retries": 0,
        "patients_fetched": 2,
    }
    assert sum(progress) == 2
    assert notes == []
    # the long candidate code lists went as POST _search, the fetch named both patients
    condition_candidates = [s for s in seen if s[1] == "Condition/_search" and "_elements" in s[2]]
    assert condition_candidates and all(m == "POST" for m, _, _ in condition_candidates)
    fetches = [s for s in seen if "_elements" not in s[2] and s[2].get("_summary") != "count"]
    assert fetches and all((p.get("_id") or p.get("patient")) == "p1,p2" for _, _, p in fetches)
    assert all(auth_header(c) == f"Bearer {TOKEN}" for c in rsps.calls)


def test_rest_source_deduplicates_included_medications_across_batches(rsps, trial):
    one_each = dataclasses.replace(
        trial, server=dataclasses.replace(trial.server, patients_per_request=1)
    )
    seen: list = []
    fake_server(rsps, seen, medication_twice=True)
    client = make_client([])
    source = RestSource(client, one_each.server, concurrency=2)
    progress: list = []
    raws = list(source.read(lambda n: None, progress.append))
    kinds = [r.resource["resourceType"] for r in raws]
    assert kinds.count("Medication") == 1
    assert kinds.count("Patient") == 2
    assert kinds.count("MedicationStatement") == kinds.count("MedicationRequest") == 2
    assert progress == [1, 1]
    assert source.stats()["http_requests"] == len(rsps.calls)
    fetched = {  # the strategy's known-answer checks (fewer results asked) aside
        p.get("_id") or p.get("patient")
        for _, _, p in seen
        if "_elements" not in p and p.get("_count") == "500"
    }
    assert fetched == {"p1", "p2"}


def test_rest_source_without_patient_count_notes_it(rsps, trial):
    rsps.get(
        f"{BASE}/Patient",
        status=400,
        json={"resourceType": "OperationOutcome"},
        match=[responses.matchers.query_param_matcher({"_summary": "count"})],
    )
    fake_server(rsps, [])
    source = RestSource(make_client([]), trial.server, concurrency=2)
    notes: list = []
    list(source.read(notes.append, lambda n: None))
    assert [n.code for n in notes] == ["no-patient-count"]
    assert source.patients_not_read() == 0


def test_rest_source_plan_sends_nothing(rsps, trial):
    lines = RestSource(make_client([]), trial.server).plan()
    assert lines[0] == f"server {BASE}/"
    assert len(rsps.calls) == 0


# -- 8. BulkSource ---------------------------------------------------------------
STATUS = f"{BASE}/bulkstatus/job-1"
FILE1 = f"{BASE}/bulkfiles/patient-1.ndjson"
FILE2 = f"{BASE}/bulkfiles/condition-1.ndjson"
PATIENTS = (
    b'{"resourceType":"Patient","id":"p1","birthDate":"1970-01-01"}\n'
    b'{"resourceType":"Patient","id":"p2","birthDate":"1980-01-01"}\n'
)
CONDITIONS = b'{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"}}\n'


def manifest(outputs, requires_token=True) -> dict:
    return {
        "transactionTime": "2024-05-01T00:00:00Z",
        "request": f"{BASE}/$export",
        "requiresAccessToken": requires_token,
        "output": [{"type": t, "url": u} for t, u in outputs],
        "error": [],
    }


def register_export(
    rsps,
    outputs=((("Patient", FILE1)), ("Condition", FILE2)),
    requires_token=True,
    file2=CONDITIONS,
):
    """A server that offers every type, holds none of those it leaves out of the
    manifest (``_summary=count`` answers 0) and releases the export on DELETE."""
    rsps.get(f"{BASE}/metadata", status=404)
    rsps.get(re.compile(re.escape(BASE) + r"/\w+\?_summary=count$"), json=bundle(total=0))
    rsps.delete(STATUS, status=202)
    rsps.get(f"{BASE}/$export", status=202, headers={"Content-Location": STATUS})
    rsps.get(STATUS, status=202, headers={"X-Progress": "50% done", "Retry-After": "2"})
    rsps.get(STATUS, status=200, json=manifest(outputs, requires_token))
    rsps.get(FILE1, body=PATIENTS, content_type="application/fhir+ndjson")
    if file2 is not None:
        rsps.get(FILE2, body=file2, content_type="application/fhir+ndjson")


def paths(rsps) -> list[str]:
    return [urlsplit(c.request.url).path for c in rsps.calls]


def read_settled(source: BulkSource, complete: bool = True) -> list:
    """A Bulk run: read everything, then settle as a run recorded complete (or not)."""
    raws = list(source.read(lambda n: None, lambda n: None))
    source.settle(complete)
    return raws


def kickoffs(rsps, since: int = 0) -> list:
    return [
        c.request for c in rsps.calls[since:] if urlsplit(c.request.url).path.endswith("$export")
    ]


def test_bulk_export_downloads_privately_and_records_state(rsps, trial, tmp_path):
    register_export(rsps)
    folder = tmp_path / "export"
    waits: list = []
    client = make_client(waits, BearerAuth(TOKEN))
    source = BulkSource(client, trial.server, folder)
    progress: list = []
    raws = list(source.read(lambda n: None, progress.append))
    assert sorted(r.resource["id"] for r in raws) == ["c1", "p1", "p2"]
    absent = sorted(set(source.types()) - {"Patient", "Condition", "Medication"})
    assert paths(rsps) == [
        "/fhir/metadata",
        "/fhir/$export",
        "/fhir/bulkstatus/job-1",
        "/fhir/bulkstatus/job-1",
        "/fhir/bulkfiles/patient-1.ndjson",
        "/fhir/bulkfiles/condition-1.ndjson",
        "/fhir/bulkstatus/job-1",  # DELETE: the server may drop the files
        *(f"/fhir/{kind}" for kind in absent),  # _summary=count: none held, none missing
    ]
    assert rsps.calls[6].request.method == "DELETE"
    kickoff = rsps.calls[1].request
    assert kickoff.headers["Prefer"] == "respond-async"
    assert "Patient" in parse_qs(urlsplit(kickoff.url).query)["_type"][0]
    assert waits == [2.0]
    assert progress == [1, 1]
    assert all(auth_header(c) == f"Bearer {TOKEN}" for c in rsps.calls)
    # Screened from the staged export; it becomes the baseline once the run is complete.
    assert sorted(p.name for p in folder.iterdir()) == [STATE, "incoming", "staged"]
    for path in (folder / "staged").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((folder / "staged").stat().st_mode) == 0o700
    source.settle(complete=True)
    assert sorted(p.name for p in folder.iterdir()) == [STATE, "baseline"]
    baseline = folder / "baseline"
    files = sorted(p.name.split(".")[0] for p in baseline.iterdir())
    assert files == ["Condition", "Patient"]
    for path in [folder / STATE, *baseline.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(baseline.stat().st_mode) == 0o700
    assert next(baseline.glob("Patient.*.ndjson")).read_bytes() == PATIENTS
    state = json.loads((folder / STATE).read_text())
    assert state == {
        "baseline": {
            "transactionTime": "2024-05-01T00:00:00Z",
            "level": "system",
            "types": source.types(),
            "params": source._params(None),
        }
    }
    assert TOKEN not in (folder / STATE).read_text()
    assert source.transaction_time == "2024-05-01T00:00:00Z"
    assert source.pull == "full (no earlier export in this folder to build on)"
    assert source.stats() == {"http_requests": 7 + len(absent), "http_retries": 0, "files": 2}


def test_bulk_second_run_exports_only_changes_and_merges_them(rsps, trial, tmp_path):
    """Every run exports; the second asks `_since` the first export's transactionTime and
    merges: a changed resource replaces its copy, a new one is added, the rest stay."""
    register_export(rsps)
    folder = tmp_path / "export"
    read_settled(BulkSource(make_client([], BearerAuth(TOKEN)), trial.server, folder))
    first = len(rsps.calls)

    delta = f"{BASE}/bulkfiles/patient-2.ndjson"
    changed = (
        b'{"resourceType":"Patient","id":"p2","birthDate":"1981-02-02"}\n'
        b'{"resourceType":"Patient","id":"p3","birthDate":"1990-03-03"}\n'
    )
    since_manifest = {**manifest((("Patient", delta),)), "transactionTime": "2024-05-02T00:00:00Z"}
    rsps.replace(responses.GET, f"{BASE}/$export", status=202, headers={"Content-Location": STATUS})
    rsps.upsert(responses.GET, STATUS, status=200, json=since_manifest)
    rsps.get(delta, body=changed, content_type="application/fhir+ndjson")
    again = BulkSource(make_client([], BearerAuth(TOKEN)), trial.server, folder)
    raws = read_settled(again)

    (kickoff,) = kickoffs(rsps, first)
    assert parse_qs(urlsplit(kickoff.url).query)["_since"] == ["2024-05-01T00:00:00.000Z"]
    assert again.pull.startswith("incremental: resources changed since 2024-05-01")
    births = {r.resource["id"]: r.resource.get("birthDate") for r in raws}
    assert births == {"p1": "1970-01-01", "p2": "1981-02-02", "p3": "1990-03-03", "c1": None}
    assert len(raws) == 4  # the old p2 is gone, not duplicated
    state = json.loads((folder / STATE).read_text())
    assert state["baseline"]["transactionTime"] == "2024-05-02T00:00:00Z"

    full = BulkSource(make_client([], BearerAuth(TOKEN)), trial.server, folder, incremental=False)
    rsps.upsert(responses.GET, STATUS, status=200, json=manifest((("Patient", FILE1),)))
    calls = len(rsps.calls)
    assert sorted(r.resource["id"] for r in read_settled(full)) == ["p1", "p2"]
    (kickoff,) = kickoffs(rsps, calls)
    assert "_since" not in parse_qs(urlsplit(kickoff.url).query)
    assert full.pull == "full (asked for with --full)"


def test_bulk_file_on_another_host_with_token_is_refused(rsps, trial, tmp_path):
    register_export(rsps, outputs=(("Patient", FILE1), ("Condition", f"{EVIL}/c.ndjson")))
    rsps.get(f"{EVIL}/c.ndjson", body=CONDITIONS)
    client = make_client([], BearerAuth(TOKEN))
    with pytest.raises(ServerError) as caught:
        list(BulkSource(client, trial.server, tmp_path / "x").read(lambda n: None, lambda n: None))
    assert "another origin (https://evil.example:443)" in str(caught.value)
    assert "needs the access token" in str(caught.value)
    assert TOKEN not in str(caught.value)
    assert "evil.example" not in hosts(rsps)


def test_bulk_file_without_required_token_gets_no_authorization(rsps, trial, tmp_path):
    register_export(rsps, requires_token=False)
    client = make_client([], BearerAuth(TOKEN))
    list(BulkSource(client, trial.server, tmp_path / "x").read(lambda n: None, lambda n: None))
    by_path = {urlsplit(c.request.url).path: auth_header(c) for c in rsps.calls}
    assert by_path["/fhir/bulkfiles/patient-1.ndjson"] is None
    assert by_path["/fhir/bulkfiles/condition-1.ndjson"] is None
    assert by_path["/fhir/$export"] == f"Bearer {TOKEN}"


def test_bulk_file_elsewhere_without_required_token_is_fetched_without_auth(rsps, trial, tmp_path):
    other = "https://storage.example.test/bucket/c.ndjson"
    register_export(rsps, outputs=(("Patient", FILE1), ("Condition", other)), requires_token=False)
    rsps.get(other, body=CONDITIONS)
    client = make_client([], BearerAuth(TOKEN))
    list(BulkSource(client, trial.server, tmp_path / "x").read(lambda n: None, lambda n: None))
    (call,) = [c for c in rsps.calls if c.request.url == other]
    assert auth_header(call) is None


def test_bulk_resumes_after_a_crash_downloading_only_what_is_missing(rsps, trial, tmp_path):
    register_export(rsps, file2=None)
    rsps.get(FILE2, body=requests.ConnectionError("connection reset"))
    folder = tmp_path / "export"
    waits: list = []
    client = make_client(waits, BearerAuth(TOKEN), max_retries=2)
    with pytest.raises(ServerError, match="no answer after 3 tries"):
        list(BulkSource(client, trial.server, folder).read(lambda n: None, lambda n: None))
    assert len(waits) == 1 + 2  # the poll, then two backoffs
    job = json.loads((folder / STATE).read_text())["job"]
    assert list(job["downloaded"]) == [FILE1]
    assert next((folder / "incoming").glob("Patient.*.ndjson")).read_bytes() == PATIENTS
    assert not list(folder.rglob("Condition.*.ndjson"))
    assert not (folder / "baseline").exists()  # nothing half-done is screened

    rsps.replace(responses.GET, FILE2, body=CONDITIONS, content_type="application/fhir+ndjson")
    first_run = len(rsps.calls)
    progress: list = []
    resumed = BulkSource(make_client([], BearerAuth(TOKEN)), trial.server, folder)
    raws = list(resumed.read(lambda n: None, progress.append))
    resumed.settle(complete=True)
    assert sorted(r.resource["id"] for r in raws) == ["c1", "p1", "p2"]
    fetched = [p for p in paths(rsps)[first_run:] if "bulkfiles" in p or "$export" in p]
    assert fetched == ["/fhir/bulkfiles/condition-1.ndjson"]
    assert progress == [1, 1]
    state = json.loads((folder / STATE).read_text())
    assert set(state) == {"baseline"} and not (folder / "incoming").exists()


def test_bulk_output_type_cannot_escape_the_folder(rsps, trial, tmp_path):
    register_export(rsps, outputs=(("../../escaped", FILE1),))
    folder = tmp_path / "a" / "b" / "export"
    client = make_client([], BearerAuth(TOKEN))
    with contextlib.suppress(ServerError):  # refusing the manifest is a fine answer too
        BulkSource(client, trial.server, folder).export(lambda n: None, lambda n: None)
    outside = [p for p in tmp_path.rglob("*.ndjson") if folder not in p.parents]
    assert outside == []
