"""Data-quality notes: what the tool could not read or had to set aside, and where.

Rule: bad input never raises past the stage that met it; it becomes a
:class:`Note` (a machine code, a sentence, a place) that reaches
``data_quality`` in the outputs. This module is at the bottom of the package:
every stage may import it, it imports none of them.

Counters merge associatively (:meth:`DataQuality.merge`, :func:`add_counters`), so
the shares of any number of workers add up to the same totals whatever the grouping;
examples are the first few in the order the shares are merged in (the source order of
their partitions), never the order workers happened to finish in.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields

EXAMPLES_PER_NOTE = 5


@dataclass(frozen=True, slots=True)
class Note:
    """A data-quality note: a machine code, a sentence, and where it happened."""

    code: str
    message: str
    where: str


@dataclass
class DataQuality:
    """Notes aggregated by code: a count, a message and the first few places."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[dict]] = field(default_factory=dict)

    def add(self, note: Note) -> None:
        self.counts[note.code] += 1
        examples = self.examples.setdefault(note.code, [])
        if len(examples) < EXAMPLES_PER_NOTE:
            examples.append({"where": note.where, "message": note.message})

    def to_list(self) -> list[dict]:
        return [
            {"code": code, "count": count, "examples": self.examples.get(code, [])}
            for code, count in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]

    def merge(self, later: DataQuality) -> DataQuality:
        """This share followed by a ``later`` one: counts added, the first examples kept.

        >>> a, b = DataQuality(), DataQuality()
        >>> for n in range(4): a.add(Note("x", "m", f"a:{n}"))
        >>> for n in range(3): b.add(Note("x", "m", f"b:{n}"))
        >>> both = a.merge(b)
        >>> both.counts["x"], [e["where"] for e in both.examples["x"]]
        (7, ['a:0', 'a:1', 'a:2', 'a:3', 'b:0'])
        """
        merged = DataQuality(self.counts + later.counts, {})
        for code in {**self.examples, **later.examples}:
            both = self.examples.get(code, []) + later.examples.get(code, [])
            merged.examples[code] = both[:EXAMPLES_PER_NOTE]
        return merged


def add_counters(total: object, share: object) -> None:
    """Add the counters of ``share`` into ``total``, field by field (both the same
    dataclass: ints, Counters, dicts of ints or of Counters, lists of ints; other
    fields, such as the trial, are left as they are). Associative and commutative.

    >>> @dataclass
    ... class F:
    ...     n: int = 0
    ...     by: dict = field(default_factory=dict)
    ...     steps: list = field(default_factory=list)
    >>> t = F(1, {"a": Counter(x=1)}, [1, 0]); add_counters(t, F(2, {"a": Counter(x=2)}, [1, 1]))
    >>> t
    F(n=3, by={'a': Counter({'x': 3})}, steps=[2, 1])
    """
    for spec in fields(share):  # type: ignore[arg-type]
        mine, theirs = getattr(total, spec.name), getattr(share, spec.name)
        if type(theirs) is int:
            setattr(total, spec.name, mine + theirs)
        elif isinstance(theirs, Counter):
            mine.update(theirs)
        elif isinstance(theirs, dict):
            for key, value in theirs.items():
                if isinstance(value, Counter):
                    mine.setdefault(key, Counter()).update(value)
                else:
                    mine[key] = mine.get(key, 0) + value
        elif isinstance(theirs, list) and theirs:
            if not mine:
                mine.extend([0] * len(theirs))
            mine[:] = [a + b for a, b in zip(mine, theirs, strict=True)]
