"""A fake FHIR search endpoint for ``responses``: every search, GET or POST _search."""

from __future__ import annotations

import re
from collections.abc import Callable

import responses


def route_searches(rsps: responses.RequestsMock, base: str, answer: Callable) -> None:
    """Send every ``GET base/Type?...`` and ``POST base/Type/_search`` to ``answer``."""
    for method, path in ((responses.GET, r"/\w+(\?.*)?$"), (responses.POST, r"/\w+/_search$")):
        rsps.add_callback(
            method, re.compile(re.escape(base) + path), answer, content_type="application/fhir+json"
        )
