"""The patient page's content: criteria, the chart checklist and the timeline.

Rule: pure functions over one stored result (``candidates.json`` shape), walked
generically: a criterion is any mapping with a ``result``; its parts are under
``criteria`` or ``descriptors``. Met criteria come first, not-met ones are folded
away, and every clear exclusion is folded into one line. Words come from
:func:`fhir_cohort.web.labels.label`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .labels import label

PARTS = ("criteria", "descriptors")
ORDER = {"met": 0, "washout": 1, "review": 1, "unknown": 1, "excluded": 1, "not-met": 2}
TO_CHECK = frozenset({"unknown", "review", "washout"})


@dataclass(frozen=True)
class Node:
    """One criterion or exclusion as the page shows it."""

    key: str
    label: str
    result: str
    detail: str
    evidence: tuple[dict, ...]
    parts: tuple[Node, ...]


def _detail(body: dict) -> str:
    """The numbers beside a result: a count, a score, a washout's end.

    >>> _detail({"count": 5}), _detail({"score": 6, "window": {"from": "a", "to": "b"}})
    ('5 met', 'score 6, from a to b')
    >>> _detail({"until": "2026-07-20"}), _detail({})
    ('until 2026-07-20', '')
    """
    bits = []
    if "count" in body:
        bits.append(f"{body['count']} met")
    if "score" in body:
        bits.append(f"score {body['score']}")
    window = body.get("window")
    if isinstance(window, dict) and window.get("from"):
        bits.append(f"from {window['from']} to {window.get('to')}")
    if body.get("until"):
        bits.append(f"until {body['until']}")
    return ", ".join(bits)


def node(key: str, body: dict, labels: dict[str, str]) -> Node:
    parts = [
        node(k, v, labels)
        for name in PARTS
        for k, v in (body.get(name) or {}).items()
        if isinstance(v, dict) and "result" in v
    ]
    return Node(
        key,
        label(key, labels),
        str(body.get("result")),
        _detail(body),
        tuple(e for e in body.get("evidence") or () if isinstance(e, dict)),
        tuple(sorted(parts, key=lambda n: ORDER.get(n.result, 1))),
    )


def nodes(section: dict | None, labels: dict[str, str]) -> list[Node]:
    """A result's criteria (or exclusions) as nodes, met first, not-met last."""
    found = [
        node(k, v, labels)
        for k, v in (section or {}).items()
        if isinstance(v, dict) and "result" in v
    ]
    return sorted(found, key=lambda n: ORDER.get(n.result, 1))


def folded_exclusions(exclusions: list[Node]) -> tuple[str, list[Node]]:
    """(one line naming every clear exclusion, the exclusions that are not clear).

    >>> clear = Node("a", "HIV", "clear", "", (), ())
    >>> folded_exclusions([clear, Node("b", "Dialysis", "excluded", "", (), ())])[0]
    'no exclusion found: HIV'
    """
    clear = [n.label for n in exclusions if n.result == "clear"]
    line = f"no exclusion found: {', '.join(clear)}" if clear else ""
    return line, [n for n in exclusions if n.result != "clear"]


def checklist(result: dict, labels: dict[str, str]) -> list[str]:
    """What to verify in the chart: every criterion or exclusion the screen could not
    settle (unknown, review, a washout's end); where there is none, the run's reasons."""
    items: list[str] = []

    def walk(found: list[Node] | tuple[Node, ...]) -> None:
        for n in found:
            if n.result in TO_CHECK:
                items.append(f"{n.label}: {n.result}" + (f" ({n.detail})" if n.detail else ""))
            walk(n.parts)

    walk(nodes(result.get("criteria"), labels))
    walk(nodes(result.get("exclusions"), labels))
    return items or [str(r) for r in result.get("reasons") or []]


def timeline(result: dict, labels: dict[str, str]) -> list[tuple[str, str, dict]]:
    """Every dated piece of evidence once, newest first: (day, what it counts for, item)."""
    seen: dict[str, tuple[str, str, dict]] = {}

    def walk(found: list[Node] | tuple[Node, ...]) -> None:
        for n in found:
            walk(n.parts)  # the part an item counts for names it better than the whole
            for item in n.evidence:
                key = str(item.get("resource"))
                if item.get("date") and key not in seen:
                    seen[key] = (str(item["date"]), n.label, item)

    walk(nodes(result.get("criteria"), labels))
    walk(nodes(result.get("exclusions"), labels))
    return sorted(seen.values(), key=lambda entry: entry[0], reverse=True)
