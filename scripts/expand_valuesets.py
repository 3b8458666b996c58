"""Add a FHIR ``expansion`` to every value set that uses an ICD-10-CM ``is-a`` filter.

A server cannot be asked "G40 and everything below it" reliably (``code:below``
on a token is optional and some servers read it as an exact match), so the
server search plan uses each value set's explicit codes. This script lists the
descendants of every ICD-10-CM ``is-a`` filter, from the CDC April 2026 tabular
shipped in the PyPI package ``simple-icd-10-cm``, into ``expansion.contains``;
the filter stays in ``compose`` as the definition, and local matching still
honours it. Run it after editing a value set:

    pip install simple-icd-10-cm==1.5.0
    python scripts/expand_valuesets.py

It is a maintainer's tool, not a runtime dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

import simple_icd_10_cm as icd

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
VALUESETS = Path(__file__).resolve().parents[1] / "queries" / "valuesets"
TIMESTAMP = "2026-11-25T00:00:00Z"  # fixed, so the files only change when codes do


def expansion(valueset: dict) -> list[dict] | None:
    contains: dict[tuple[str, str], dict] = {}
    has_filter = False
    for include in valueset.get("compose", {}).get("include", []):
        system = include["system"]
        for concept in include.get("concept", []):
            item = {"system": system, "code": concept["code"]}
            if concept.get("display"):
                item["display"] = concept["display"]
            contains[(system, concept["code"])] = item
        for rule in include.get("filter", []):
            if system != ICD10CM or rule.get("op") != "is-a":
                continue
            has_filter = True
            for code in [rule["value"], *icd.get_descendants(rule["value"])]:
                if icd.is_valid_item(code):
                    contains[(system, code)] = {
                        "system": system,
                        "code": code,
                        "display": icd.get_description(code),
                    }
    return list(contains.values()) if has_filter else None


def main() -> None:
    for path in sorted(VALUESETS.glob("*.json")):
        valueset = json.loads(path.read_text(encoding="utf-8"))
        contains = expansion(valueset)
        if contains is None:
            continue
        valueset["expansion"] = {
            "identifier": f"urn:fhir-cohort:expansion:{valueset['id']}:{valueset['version']}",
            "timestamp": TIMESTAMP,
            "total": len(contains),
            "parameter": [{"name": "system-version", "valueUri": f"{ICD10CM}|2026-04-01"}],
            "contains": contains,
        }
        path.write_text(json.dumps(valueset, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"{path.name}: {len(contains)} codes")


if __name__ == "__main__":
    main()
