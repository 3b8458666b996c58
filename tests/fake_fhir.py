"""A fake FHIR search endpoint for ``responses``: every search, GET or POST _search."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import responses


def route_searches(rsps: responses.RequestsMock, base: str, answer: Callable) -> None:
    """Send every ``GET base/Type?...`` and ``POST base/Type/_search`` to ``answer``."""
    for method, path in ((responses.GET, r"/\w+(\?.*)?$"), (responses.POST, r"/\w+/_search$")):
        rsps.add_callback(
            method, re.compile(re.escape(base) + path), answer, content_type="application/fhir+json"
        )


def search_params(request) -> dict[str, str]:
    """A search's parameters, from the query or the form body of a POST _search."""
    query = urlsplit(request.url).query
    if request.method == "POST":
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        query = body or ""
    return {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
