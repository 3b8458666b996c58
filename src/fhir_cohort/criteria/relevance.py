"""Relevance: which resources a trial can ever use, decided once at ingest.

Most of a hospital's Observations (vital signs, chemistry) can never touch a
trial's criteria. Keeping only resources whose code is in one of the trial's
value sets lets the store hold a fraction of the data and keeps screening close
to the cost of parsing. Medication resources are always kept: a drug can be
named in text or behind a reference that only resolves later.
"""

from __future__ import annotations

from collections.abc import Callable

from ..normalise.codes import canonical_code, canonical_system
from .trial import Trial

ALWAYS_KEPT = frozenset(
    {
        "Patient",
        "Medication",
        "MedicationStatement",
        "MedicationRequest",
        "MedicationAdministration",
    }
)
CODED = frozenset({"Condition", "Observation", "Procedure"})


def resource_filter(trial: Trial) -> Callable[[dict], bool]:
    """A predicate: may this resource matter to ``trial``?"""
    keys: set[str] = set()
    prefixes: set[tuple[str, str]] = set()
    for valueset in trial.valuesets():
        keys |= valueset.codes
        prefixes.update(valueset.prefixes)
    prefix_list = tuple(prefixes)

    def keep(resource: dict) -> bool:
        kind = resource.get("resourceType")
        if kind in ALWAYS_KEPT:
            return True
        if kind not in CODED:
            return False
        concept = resource.get("code")
        if not isinstance(concept, dict):
            return False
        for coding in concept.get("coding") or ():
            if not isinstance(coding, dict):
                continue
            system, code = coding.get("system"), coding.get("code")
            if not isinstance(system, str) or not isinstance(code, str):
                continue
            system = canonical_system(system)
            code = canonical_code(system, code)
            if f"{system}|{code}" in keys:
                return True
            if any(system == s and code.startswith(p) for s, p in prefix_list):
                return True
        return False

    return keep
