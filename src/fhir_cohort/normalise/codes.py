"""Codes: canonical code-system URLs and code spellings, so matching is exact.

Real feeds spell the same system many ways (``http://snomed.info/sct``,
``urn:oid:2.16.840.1.113883.6.96``, ``SNOMED``) and ICD-10-CM codes with or
without the dot (``M3214``). Everything is brought to one spelling here, once,
so that value-set membership is a plain set lookup.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
ICD9CM = "http://hl7.org/fhir/sid/icd-9-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CPT = "http://www.ama-assn.org/go/cpt"
ATC = "http://www.whocc.no/atc"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"

_ALIASES = {
    "urn:oid:2.16.840.1.113883.6.96": SNOMED,
    "snomed": SNOMED,
    "sct": SNOMED,
    "snomed-ct": SNOMED,
    "http://snomed.info/sct/": SNOMED,
    "urn:oid:2.16.840.1.113883.6.1": LOINC,
    "loinc": LOINC,
    "http://loinc.org/": LOINC,
    "urn:oid:2.16.840.1.113883.6.90": ICD10CM,
    "icd-10-cm": ICD10CM,
    "icd10cm": ICD10CM,
    "http://hl7.org/fhir/sid/icd-10-cm/": ICD10CM,
    "urn:oid:2.16.840.1.113883.6.3": ICD10,
    "urn:oid:2.16.840.1.113883.6.103": ICD9CM,
    "urn:oid:2.16.840.1.113883.6.104": ICD9CM,
    "icd-9-cm": ICD9CM,
    "http://hl7.org/fhir/sid/icd-9": ICD9CM,
    "urn:oid:2.16.840.1.113883.6.88": RXNORM,
    "rxnorm": RXNORM,
    "urn:oid:2.16.840.1.113883.6.12": CPT,
    "cpt": CPT,
    "urn:oid:2.16.840.1.113883.6.285": HCPCS,
    "http://www.cms.gov/medicare/coding/hcpcsreleasecodesets": HCPCS,
    "hcpcs": HCPCS,
    "urn:oid:2.16.840.1.113883.6.73": ATC,
    "atc": ATC,
}
_ICD = {ICD10CM, ICD10, ICD9CM}


def canonical_system(system: str) -> str:
    """One spelling per code system.

    >>> canonical_system("urn:oid:2.16.840.1.113883.6.96")
    'http://snomed.info/sct'
    >>> canonical_system("http://loinc.org")
    'http://loinc.org'
    """
    return _ALIASES.get(system.strip().lower(), system.strip())


def canonical_code(system: str, code: str) -> str:
    """One spelling per code: ICD codes upper-case with their dot.

    >>> canonical_code(ICD10CM, "m3214"), canonical_code(ICD10CM, "B20")
    ('M32.14', 'B20')
    >>> canonical_code(ICD9CM, "7100")
    '710.0'
    >>> canonical_code(SNOMED, " 55464009 ")
    '55464009'
    """
    code = code.strip()
    if system in _ICD:
        code = code.upper()
        if "." not in code and len(code) > 3:
            code = f"{code[:3]}.{code[3:]}"
    return code


@dataclass(frozen=True, slots=True)
class Code:
    """One coding, canonicalised; ``key`` is ``system|code``."""

    system: str
    code: str
    display: str | None = None
    undotted: bool = False  # an ICD code sent without its dot ("E119" for E11.9)

    @property
    def key(self) -> str:
        return f"{self.system}|{self.code}"


@lru_cache(maxsize=65536)
def _code(system: str, code: str, display: str | None) -> Code:
    """One canonical Code, memoised: a data set repeats a few thousand codings millions of times."""
    system = canonical_system(system)
    canonical = canonical_code(system, code)
    return Code(system, canonical, display, "." in canonical and "." not in code)


def codes_from(parts: Iterable[tuple[object, object, object]]) -> tuple[Code, ...]:
    """Canonical Codes from (system, code, display) triples; a triple without a string
    system and a non-blank string code can never match and is skipped."""
    return tuple(
        _code(system, code, display if isinstance(display, str) else None)
        for system, code, display in parts
        if isinstance(system, str) and isinstance(code, str) and code.strip()
    )
