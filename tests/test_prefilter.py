"""The NDJSON pre-filter never changes an answer: candidates.json with and without it is
the same byte for byte, over generated files with reordered keys, whitespace, escaped
and non-ASCII characters, codes split across codings, codes that are not strings,
duplicates (a skipped newer copy retiring a kept older one), numbers too large for a
double, broken lines and the same resources in a Bundle."""

from __future__ import annotations

import json
import random
import tempfile
from datetime import date
from pathlib import Path

from builders import LOINC, SNOMED, eligible_core, observation, patient, sle
from hypothesis import given, settings
from hypothesis import strategies as st

from fhir_cohort.criteria.relevance import Relevance
from fhir_cohort.criteria.trial import load_trial
from fhir_cohort.engines.embedded import Embedded
from fhir_cohort.outputs.candidates import json_bytes
from fhir_cohort.sources.files import FileSource
from fhir_cohort.sources.prefilter import PreFilter

TRIAL = load_trial("misle")
AS_OF, NOW = date(2026, 6, 30), 1.9e9
NOISE = ["8867-4", "2345-7", "29463-7"]  # heart rate, glucose, body weight: never read
STAMPS = ["2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z", "not a date", None]


def population() -> list[dict]:
    """Two lupus patients (one eligible) and noise Observations, Encounters, Conditions."""
    found = eligible_core()
    other = [dict(r) for r in eligible_core()]
    for resource in other:
        resource["id"] = f"{resource['id']}-2"
        if resource["resourceType"] == "Patient":
            resource["id"] = "p2"
        else:
            resource["subject"] = {"reference": "Patient/p2"}
    found += [*other, patient("p3"), sle("c-sle-3", pid="p3"), patient("p4")]
    for n in range(12):
        pid = ("p1", "p2", "p3")[n % 3]
        found.append(
            observation(f"noise-{n}", NOISE[n % 3], pid=pid, valueQuantity={"value": 70 + n})
        )
        found.append(
            {
                "resourceType": "Encounter",
                "id": f"e-{n}",
                "subject": {"reference": f"Patient/{pid}"},
            }
        )
    found.append(
        {
            "resourceType": "Condition",
            "id": "c-hyp",
            "code": {"coding": [{"system": SNOMED, "code": "38341003"}]},
            "subject": {"reference": "Patient/p3"},
        }
    )
    return found


def mutate(resource: dict, kind: int, rng: random.Random) -> dict:
    """One of the shapes the filter must see through (0: as it is)."""
    resource = json.loads(json.dumps(resource))
    codings = resource.get("code", {}).get("coding") if type(resource.get("code")) is dict else None
    if kind == 1 and codings:  # the trial's code second, after a code it does not read
        codings.insert(0, {"system": LOINC, "code": NOISE[0], "display": "Heart rate"})
    elif kind == 2 and codings:  # a display with letters outside ASCII
        codings[0]["display"] = "Lupus érythémateux disséminé ✓"
    elif kind == 3 and codings:  # a code that is not a string
        codings[-1]["code"] = rng.choice([5130, None, True, ["x"], {"c": 1}])
    elif kind == 4:  # a number too large for a double
        resource["valueQuantity"] = {"value": "__HUGE__"}
    elif kind == 5 and codings:  # a system written with an escaped slash
        codings[-1]["system"] = codings[-1].get("system", "") + "__SLASH__"
    elif kind == 6:
        resource.setdefault("meta", {})["lastUpdated"] = rng.choice(STAMPS)
    elif kind == 7 and codings:  # the same record, now with a code the trial never reads
        resource["code"] = {"coding": [{"system": LOINC, "code": NOISE[1]}]}
        resource["meta"] = {"lastUpdated": rng.choice(STAMPS)}
    return resource


def dump(value: object, rng: random.Random, spaced: bool, ascii_only: bool) -> str:
    def shuffled(item: object) -> object:
        if isinstance(item, dict):
            keys = list(item)
            rng.shuffle(keys)
            return {k: shuffled(item[k]) for k in keys}
        if isinstance(item, list):
            return [shuffled(x) for x in item]
        return item

    separators = (" , ", " :  ") if spaced else (",", ":")
    text = json.dumps(shuffled(value), separators=separators, ensure_ascii=ascii_only)
    return text.replace('"__HUGE__"', "1e400").replace("__SLASH__", "\\/x")


records = st.lists(
    st.tuples(
        st.integers(0, 200),  # which resource
        st.integers(0, 7),  # which shape
        st.booleans(),  # spaced
        st.booleans(),  # ASCII only (escapes) or UTF-8
        st.integers(0, 2),  # 0, 1: NDJSON file 1 or 2; 2: the Bundle
    ),
    min_size=1,
    max_size=25,
)


def screen(folder: Path, prefilter: PreFilter | None) -> bytes:
    source = FileSource(folder, prefilter=prefilter)
    return json_bytes(Embedded().screen([source], TRIAL, AS_OF, now=NOW))


@settings(max_examples=40, deadline=None, database=None)
@given(records, st.integers(0, 2**32), st.booleans())
def test_prefilter_changes_nothing(extra, seed, truncate):
    rng = random.Random(seed)
    base = population()
    lines: list[list[str]] = [[], []]
    bundle: list[dict] = []
    for resource in base:
        lines[rng.randrange(2)].append(dump(resource, rng, False, True))
    for index, kind, spaced, ascii_only, where in extra:
        resource = mutate(base[index % len(base)], kind, rng)
        if where == 2:
            bundle.append({"resource": resource})
        else:
            lines[where].append(dump(resource, rng, spaced, ascii_only))
    if truncate:
        lines[0].append(lines[0][-1][: len(lines[0][-1]) // 2])
    for file_lines in lines:
        rng.shuffle(file_lines)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for n, file_lines in enumerate(lines):
            (root / f"{n}.ndjson").write_text("\n".join(file_lines) + "\n", encoding="utf-8")
        if bundle:
            text = dump(
                {"resourceType": "Bundle", "type": "collection", "entry": bundle}, rng, False, False
            )
            (root / "bundle.json").write_text(text, encoding="utf-8")
        prefilter = PreFilter(Relevance(TRIAL).classify)
        assert screen(root, prefilter) == screen(root, None)
        assert prefilter.vouched > 0  # the noise lines at least were not parsed


def test_prefilter_vouches_only_for_what_the_trial_cannot_use():
    vouch = PreFilter(Relevance(TRIAL).classify).vouch
    noise = observation("o1", NOISE[0], meta={"lastUpdated": "2026-01-01T00:00:00Z"})
    stand_in = vouch(json.dumps(noise).encode())
    assert stand_in == {
        "resourceType": "Observation",
        "id": "o1",
        "code": {},
        "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
        "subject": {"reference": "Patient/p1"},
    }
    read = observation("o2", "5048-4")  # ANA: the trial reads it
    split = observation("o3", NOISE[0])
    split["code"]["coding"].append({"system": LOINC, "code": "5048-4"})
    assert vouch(json.dumps(read).encode()) is None
    assert vouch(json.dumps(split).encode()) is None
    assert vouch(json.dumps(noise).replace("o1", "o\\u0031").encode()) is None
    assert vouch(json.dumps(noise).replace('"final"', "1e400").encode()) is None
    assert vouch(json.dumps(noise).replace(NOISE[0], "x").replace('"x"', "8867").encode()) is None
    assert vouch(json.dumps(noise)[:-1].encode()) is None  # not JSON: the parser notes it
    assert vouch(json.dumps(patient()).encode()) is None  # always read
