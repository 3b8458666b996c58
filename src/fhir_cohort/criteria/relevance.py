"""Relevance: which resources a trial can ever use, decided once at ingest.

Most of a hospital's Observations (vital signs, chemistry) can never touch a
trial's criteria. Keeping only resources whose code is in one of the trial's
value sets lets the store hold a fraction of the data and keeps screening close
to the cost of parsing. Medication resources are always kept: a drug can be
named in text or behind a reference that only resolves later. A record whose
code cannot be read (a wrong JSON type in it, or an Observation without one)
may be any code: it is kept with every bit, so the patient is evaluated and
the record weighs on every rule of its type.
"""

from __future__ import annotations

from collections.abc import Callable

from ..normalise.codes import canonical_code, canonical_system
from .trial import Trial, rule_valuesets
from .valuesets import ValueSet

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
# Resources that must name their patient (subject/patient).
PATIENT_DATA = (ALWAYS_KEPT | CODED) - {"Patient", "Medication"}


KEPT, POOL = 1, 2  # relevance bits; bit 2 + i: the trial's i-th ACR criterion


class Relevance:
    """What a resource can mean to a trial, as bits, decided once at ingest.

    ``classify`` gives 0 for a resource the trial can never use, else ``KEPT``
    plus ``POOL`` when its code is a candidate-pool code, plus one bit per ACR
    criterion whose value sets hold its code. OR-ing a patient's bits tells,
    without reading a single value, whether they could be in the pool at all.
    """

    def __init__(self, trial: Trial):
        self.min_met = trial.acr_min_met
        self._sets: list[tuple[int, list[ValueSet]]] = [
            (KEPT, trial.valuesets()),
            (POOL, [trial.pool.valueset]),
            *((1 << (2 + i), rule_valuesets(c.rule)) for i, c in enumerate(trial.acr)),
        ]
        self._memo: dict[tuple[object, object], int] = {}
        self.any_code = KEPT | POOL | (((1 << len(trial.acr)) - 1) << 2)

    def _bits(self, system: object, code: object) -> int:
        if (code is not None and type(code) is not str) or (
            system is not None and type(system) is not str
        ):
            return self.any_code  # a number or true where FHIR has a string
        if not isinstance(system, str) or not isinstance(code, str):
            return 0  # valid, but without a system (or a code) it can never match
        system = canonical_system(system)
        code = canonical_code(system, code)
        key = f"{system}|{code}"
        bits = 0
        for bit, valuesets in self._sets:
            for valueset in valuesets:
                if key in valueset.codes or any(
                    system == s and code.startswith(p) for s, p in valueset.prefixes
                ):
                    bits |= bit
                    break
        return bits

    def classify(self, resource: dict) -> int:
        kind = resource.get("resourceType")
        if kind in ALWAYS_KEPT:
            return KEPT
        if kind not in CODED:
            return 0
        concept = resource.get("code")
        if type(concept) is not dict:
            if concept is None and kind != "Observation" and "code" not in resource:
                return 0  # uncoded: it can never match (Observation.code is required)
            return self.any_code  # a wrong JSON type (null included) or no required code
        codings = concept.get("coding")
        if type(codings) is not list:
            return 0 if codings is None and "coding" not in concept else self.any_code
        bits = 0
        memo = self._memo
        for coding in codings:  # the hot loop of ingest, kept inline
            if type(coding) is not dict:
                return self.any_code
            pair = (coding.get("system"), coding.get("code"))
            try:
                found = memo.get(pair)
            except TypeError:  # a list or an object where FHIR has a string
                return self.any_code
            if found is None:
                if len(memo) > 100_000:  # bounded, not a copy of every code seen
                    memo.clear()
                found = memo[pair] = self._bits(*pair)
            if (
                not found
                and None in pair
                and (
                    ("code" in coding and pair[1] is None)
                    or ("system" in coding and pair[0] is None)
                )
            ):
                return self.any_code  # a JSON null where FHIR has a string
            bits |= found
        return bits

    def may_be_candidate(self, touches: int) -> bool:
        """Could a patient whose resources OR to ``touches`` be in the candidate pool?

        The pool needs a pool code, or evidence for ``min_met`` ACR criteria, and a
        criterion can only be met by a resource whose code is in its value sets.
        Errs towards True: everyone it lets through is evaluated in full.

        >>> gate = Relevance.__new__(Relevance); gate.min_met = 4
        >>> gate.may_be_candidate(KEPT | POOL), gate.may_be_candidate(KEPT | 0b111100)
        (True, True)
        >>> gate.may_be_candidate(KEPT | 0b011100)
        False
        """
        return bool(touches & POOL) or (touches >> 2).bit_count() >= self.min_met


def resource_filter(trial: Trial) -> Callable[[dict], int]:
    """``Relevance(trial).classify``: non-zero for a resource ``trial`` may use."""
    return Relevance(trial).classify
