"""Hostile servers (issue 8): the origin a URL is judged by is the origin it connects to.

Property: a URL is accepted as same-origin exactly when requests' own adapter
would send it through the connection pool of that origin (scheme, host, port)
without user info, across generated URLs with user info, backslashes, ``@``,
odd ports, IDNA, percent-encoding and whitespace. The client judges what the
library will do because it asks the library; this test keeps it that way
(and a regression to a parser of our own shows up as a counterexample).
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_cohort.transport.client import FhirClient
from fhir_cohort.transport.urls import Reach

BASE = "https://fhir.example.test:8443/r4"
# Each list leads with the base's own part, repeated so that about one URL in ten is
# accepted; the rest are the tricks.
SCHEMES = ["https://"] * 6 + ["HTTPS://", "http://", "https:/", "https:\\\\", "ftp://", "//"]
USERINFO = [""] * 10 + ["u:p@", "fhir.example.test:8443@", "@", "%40", "u@", ":@"]
HOSTS = ["fhir.example.test"] * 6 + [
    "FHIR.Example.TEST",
    "fhir.example.test.",
    "evil.example",
    "127.0.0.1",
    "[::1]",
    "bücher.de",
    "fhir%2Eexample.test",
    "fhir.example.test\u3002",
    "fhir\u3002example.test",
]
PORTS = [":8443"] * 6 + [":443", "", ":08443", ":8443:", ": 8443", ":8443\t", ":99999", ":0"]
AFTER = [""] * 4 + [
    "/", "\\", "\\@evil.example", "@evil.example", "\\@evil.example:8443", "?@evil",
    "#@evil.example", "%5C@evil.example", "/..//evil.example", "\\\\evil.example", " @evil",
]  # fmt: skip
urls = st.builds(
    lambda *parts: "".join(parts) + "/r4/Patient",
    *(st.sampled_from(x) for x in (SCHEMES, USERINFO, HOSTS, PORTS, AFTER)),
)


@pytest.fixture(scope="module")
def client():
    return FhirClient(BASE, sleep=lambda s: None)


def connects_to(transport, url: str) -> tuple | None:
    """The (scheme, host, port) of the pool requests would send ``url`` through (None: it
    would send it nowhere), and whether the URL carries user info requests would send."""
    try:
        prepared = transport.session.prepare_request(requests.Request("GET", url))
        pool = transport.adapter.get_connection_with_tls_context(prepared, True)
    except Exception:  # any refusal by the library itself: it connects nowhere
        return None
    return pool.scheme, pool.host, pool.port, "@" in urlsplit(prepared.url).netloc


@settings(
    max_examples=1000,
    deadline=None,
    database=None,  # nothing written into the checkout; a failure prints its seed
    suppress_health_check=[HealthCheck.too_slow],
)
@given(url=st.one_of(urls, st.text(max_size=40).map(lambda t: f"https://fhir.example.test{t}")))
def test_a_url_is_accepted_as_same_origin_exactly_when_it_connects_there(client, url):
    transport = client.transport
    accepted = transport.check(url, Reach.SERVER) is None
    assert accepted == (connects_to(transport, url) == ("https", "fhir.example.test", 8443, False))
    if accepted:  # and what is sent is what was judged
        prepared = transport.prepare("GET", url, Reach.SERVER)
        pool = transport.adapter.get_connection_with_tls_context(prepared, True)
        assert (pool.scheme, pool.host, pool.port) == ("https", "fhir.example.test", 8443)
        assert "Authorization" not in prepared.headers


def test_the_property_is_not_vacuous(client):
    """The generators do produce accepted URLs, and the tricks are judged as connected."""
    transport = client.transport
    assert transport.check("https://FHIR.example.test:8443/r4/Patient?x=1", Reach.SERVER) is None
    # the backslash ends the authority: this one really goes to fhir.example.test:8443
    assert transport.check("https://fhir.example.test:8443\\@evil.example/", Reach.SERVER) is None
    assert transport.check("https://evil.example\\@fhir.example.test:8443/", Reach.SERVER)
    assert transport.check("https://u:p@fhir.example.test:8443/r4", Reach.SERVER)
    accepted = [u for u in _sample(urls, 400) if transport.check(u, Reach.SERVER) is None]
    assert len(accepted) > 20


def _sample(strategy, count: int) -> list[str]:
    found: list[str] = []

    @settings(max_examples=count, database=None)
    @given(strategy)
    def collect(value):
        found.append(value)

    collect()
    return found
