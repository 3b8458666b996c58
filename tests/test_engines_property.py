"""Property: the workers engine gives the embedded engine's answer on any order and any
split of the input into files, with copies of records anywhere in it.

Hypothesis shuffles both trials' bundled cohorts, adds copies of some records (the same
bytes; changed, with a later, the same, an earlier or no ``meta.lastUpdated``; with a
code no trial reads, later or with the same lastUpdated, which retires the kept copy if
it wins), cuts the lines into one to four files
and screens them with the embedded engine and with two or three workers, every file
read in parts. Copies then land in different parts and shards, on either side of the
kept copy, which is where "first seen" and the duplicate rule could differ between one
reader and several. CI runs a fixed set of examples (derandomized).
"""

from __future__ import annotations

import itertools
import random
import shutil

import orjson
from engine_support import ROOT, candidates
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhir_cohort.engines.embedded import Embedded
from fhir_cohort.engines.workers import Workers

EXAMPLES = 20
LINES = [
    line
    for cohort in ("misle-cohort", "surpass2-cohort")
    for path in sorted((ROOT / "fixtures" / cohort).glob("*.ndjson"))
    for line in path.read_bytes().splitlines()
    if line.strip()
]
COPIES = ("same", "later", "earlier", "unstamped", "tie", "unusable-later", "unusable-tie")
UNUSED = {"coding": [{"system": "http://example.org/unused", "code": "x-1"}]}


def copy(line: bytes, kind: str) -> bytes:
    """A copy of a record: the same bytes, or changed in what the trial reads (``tie``:
    with the same lastUpdated, so the first seen wins)."""
    if kind == "same":
        return line
    resource = orjson.loads(line)
    resource["language"] = "en-GB"  # a change: copies now disagree
    if kind == "later":
        resource["meta"] = {"lastUpdated": "2026-06-30T08:00:00Z"}
    elif kind == "earlier":
        resource["meta"] = {"lastUpdated": "2001-01-01T00:00:00Z"}
    elif kind == "unstamped":
        resource.pop("meta", None)
    elif kind == "unusable-later":
        resource["meta"] = {"lastUpdated": "2026-06-30T09:00:00Z"}
        resource["code"] = UNUSED
    elif kind == "unusable-tie":  # the same lastUpdated: the first seen wins
        resource["code"] = UNUSED
    return orjson.dumps(resource)


@st.composite
def inputs(draw) -> tuple[list[list[bytes]], int]:
    lines = list(LINES)
    random.Random(draw(st.integers(0, 2**32))).shuffle(lines)  # (a drawn one is too large)
    for _ in range(draw(st.integers(0, 25))):
        original = draw(st.sampled_from(LINES))
        where = draw(st.integers(0, len(lines)))
        lines.insert(where, copy(original, draw(st.sampled_from(COPIES))))
    cuts = sorted(draw(st.lists(st.integers(0, len(lines)), max_size=3)))
    bounds = [0, *cuts, len(lines)]
    files = [lines[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    return files, draw(st.sampled_from([2, 3]))


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(inputs())
def test_workers_give_the_embedded_answer_on_any_order_split_and_copies(tmp_path, drawn):
    files, workers = drawn
    folder = tmp_path / "input"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for index, lines in enumerate(files):
        (folder / f"Mixed.{index:03}.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    reference = candidates(Embedded().screen, folder)
    assert b'"status": "eligible"' in reference
    assert candidates(Workers(workers, smallest=1).screen, folder) == reference
