"""Data-quality notes: what the tool could not read or had to set aside, and where.

Rule: bad input never raises past the stage that met it; it becomes a
:class:`Note` (a machine code, a sentence, a place) that reaches
``data_quality`` in the outputs. This module is at the bottom of the package:
every stage may import it, it imports none of them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

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
