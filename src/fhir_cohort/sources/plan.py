"""The server plan: which searches find a trial's candidates and fetch their records.

Rule: this is what a trial asks of a live server, in the terms a server
speaks (resource types, code lists, references to include), built by the
trial loader (:func:`fhir_cohort.criteria.plan.server_plan`) and read by the REST and
Bulk sources and ``probe``. Sources see code lists through the
:class:`CodeList` protocol, never a trial.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CodeList(Protocol):
    """A value set as a server search sees it."""

    @property
    def id(self) -> str: ...

    @property
    def codes(self) -> frozenset[str]:
        """Explicit ``system|code`` members."""

    @property
    def prefixes(self) -> tuple[tuple[str, str], ...]:
        """Hierarchy filters as (system, code prefix)."""

    @property
    def searchable_codes(self) -> bool:
        """Can a server search by ``codes`` alone (no hierarchy filter left)?"""


@dataclass(frozen=True, slots=True)
class ServerSearch:
    """One search of a server: a resource type, optionally narrowed to codes."""

    resource: str
    valuesets: tuple[CodeList, ...] = ()
    include: str | None = None  # a reference to _include, e.g. "medication"


@dataclass(frozen=True, slots=True)
class ServerPlan:
    """Which searches find candidates on a server, and which fetch their records."""

    candidate_searches: tuple[ServerSearch, ...]
    fetch: tuple[ServerSearch, ...]
    patients_per_request: int = 20
