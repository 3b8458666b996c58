"""Value sets: load FHIR ValueSet JSON and answer "is this code a member?".

Supported compose shapes: ``include[].concept[]`` lists, and
``include[].filter`` with ``op: is-a`` on ICD-10-CM/ICD-10/ICD-9-CM, where
the classification's hierarchy is its code prefix (``is-a G40`` holds G40.909).
``exclude`` is honoured for listed concepts. An ``expansion.contains`` list
(see ``scripts/expand_valuesets.py``) adds its codes, and marks the value set
as searchable on a server by explicit codes alone. Anything else is refused
with a clear error rather than silently matching nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..normalise.codes import ICD9CM, ICD10, ICD10CM, Code, canonical_code, canonical_system


class ValueSetError(ValueError):
    """A value set file cannot be used."""


@dataclass(frozen=True, slots=True)
class ValueSet:
    """A loaded value set: exact ``system|code`` keys plus ICD prefixes."""

    id: str
    url: str
    codes: frozenset[str]
    prefixes: tuple[tuple[str, str], ...] = ()
    excluded: frozenset[str] = frozenset()
    expanded: bool = False  # an expansion lists every code the filters stand for
    dotted_only: bool = False  # ICD codes sent without their dot are never members

    @property
    def searchable_codes(self) -> bool:
        """Can a server search by ``codes`` alone (no hierarchy filter left)?"""
        return self.expanded or not self.prefixes

    def match(self, codes: Iterable[Code]) -> Code | None:
        """The first of ``codes`` that is a member, or None.

        >>> vs = ValueSet("x", "urn:x", frozenset({"http://snomed.info/sct|55464009"}),
        ...               (("http://hl7.org/fhir/sid/icd-10-cm", "G40"),))
        >>> vs.match([Code("http://hl7.org/fhir/sid/icd-10-cm", "G40.909")]).code
        'G40.909'
        >>> vs.match([Code("http://snomed.info/sct", "200936003")]) is None
        True
        >>> undotted = Code("http://hl7.org/fhir/sid/icd-10-cm", "G40.909", undotted=True)
        >>> strict = ValueSet("x", "urn:x", vs.codes, vs.prefixes, dotted_only=True)
        >>> vs.match([undotted]).code, strict.match([undotted])
        ('G40.909', None)
        """
        for code in codes:
            key = code.key
            if key in self.excluded or (self.dotted_only and code.undotted):
                continue
            if key in self.codes:
                return code
            for system, prefix in self.prefixes:
                if code.system == system and code.code.startswith(prefix):
                    return code
        return None


def parse_valueset(document: dict, where: str) -> ValueSet:
    if document.get("resourceType") != "ValueSet":
        raise ValueSetError(f"{where}: not a FHIR ValueSet")
    compose = document.get("compose") or {}
    codes: set[str] = set()
    prefixes: list[tuple[str, str]] = []
    excluded: set[str] = set()
    for part, target in (("include", codes), ("exclude", excluded)):
        for include in compose.get(part) or ():
            system = canonical_system(include.get("system") or "")
            if not system:
                raise ValueSetError(f"{where}: compose.{part} entry without a system")
            for concept in include.get("concept") or ():
                target.add(f"{system}|{canonical_code(system, concept['code'])}")
            for rule in include.get("filter") or ():
                if (
                    part == "exclude"
                    or rule.get("op") != "is-a"
                    or system not in (ICD10CM, ICD10, ICD9CM)
                ):
                    raise ValueSetError(
                        f"{where}: only 'is-a' filters on ICD code systems are supported, "
                        f"not {rule.get('op')!r} on {system}"
                    )
                prefixes.append((system, canonical_code(system, rule["value"]).rstrip(".")))
    contains = (document.get("expansion") or {}).get("contains") or ()
    for item in contains:
        if item.get("system") and item.get("code"):
            system = canonical_system(item["system"])
            codes.add(f"{system}|{canonical_code(system, item['code'])}")
    if not codes and not prefixes:
        raise ValueSetError(f"{where}: value set has no codes")
    return ValueSet(
        str(document.get("id")),
        str(document.get("url")),
        frozenset(codes - excluded),
        tuple(prefixes),
        frozenset(excluded),
        bool(contains),
    )


def load_valueset(path: Path) -> ValueSet:
    try:
        document = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        raise ValueSetError(f"value set file {path} does not exist") from None
    except orjson.JSONDecodeError as error:
        raise ValueSetError(f"{path}: not valid JSON ({error})") from None
    return parse_valueset(document, str(path))
