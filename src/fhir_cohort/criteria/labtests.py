"""Lab tests: the pure predicates behind "positive", "above", "low", "present".

Each predicate answers True, False or None (cannot tell), never guessing:
a bare number with no reference range is not "positive", a value whose unit
is not understood is not "below 4.0", and ``<1:160`` is not "below 1:80".
"""

from __future__ import annotations

from ..normalise.facts import LabFact, Quantity
from ..normalise.units import Converted
from ..normalise.values import dipstick_grade_from_mg_dl, parse_dipstick
from ..quality import Note

POSITIVE_FLAGS = frozenset({"H", "HH", "A", "AA", "POS", "DET", "HU"})
NEGATIVE_FLAGS = frozenset({"N", "NEG", "ND"})
LOW_FLAGS = frozenset({"L", "LL", "LU"})


def compare(value: float, comparator: str | None, op: str, threshold: float) -> bool | None:
    """Does the true value (``comparator value``) satisfy ``op threshold``?

    ``op`` is one of ``<``, ``>``, ``>=``. A comparator turns the value into a
    range; the answer is True when the whole range satisfies the test, False
    when none of it does, and None otherwise.

    >>> compare(3.2, None, "<", 4.0), compare(4.0, None, "<", 4.0)
    (True, False)
    >>> compare(20, "<", "<", 100), compare(0.3, "<", ">", 0.5), compare(1.0, "<", ">", 0.5)
    (True, False, None)
    >>> compare(1280, ">", ">=", 80), compare(40, ">", ">=", 80)
    (True, None)
    >>> compare(40, ">=", ">=", 40), compare(40, ">", ">", 40)
    (True, True)
    """
    # The range the true value lies in: (low, high), each bound open or closed.
    low = value if comparator in (None, ">", ">=") else float("-inf")
    high = value if comparator in (None, "<", "<=") else float("inf")
    low_open, high_open = comparator == ">", comparator == "<"
    if op == "<":
        every, none = high < threshold or (high == threshold and high_open), low >= threshold
    elif op == ">":
        every, none = low > threshold or (low == threshold and low_open), high <= threshold
    else:
        every, none = low >= threshold, high < threshold or (high == threshold and high_open)
    if every:
        return True
    return False if none else None


def in_unit(
    quantity: Quantity | None, unit: str, where: str
) -> tuple[Quantity | None, Note | None]:
    """The quantity expressed in ``unit`` (a canonical unit), or a note saying why not."""
    if quantity is None:
        return None, None
    canonical = quantity.canonical
    if isinstance(canonical, Converted):
        if canonical.unit == unit:
            return Quantity(canonical.value, quantity.comparator, unit), None
        return None, Note("unit-mismatch", f"{quantity.describe()} cannot be read as {unit}", where)
    return None, Note(f"{canonical.kind}-unit", canonical.detail, where)


def _same_scale(value: Quantity, bound: Quantity) -> tuple[float, float] | None:
    """Value and reference bound on one scale (as sent, or both converted)."""
    if not bound.unit or not value.unit or bound.unit == value.unit:
        return value.value, bound.value
    a, b = value.canonical, bound.canonical
    if isinstance(a, Converted) and isinstance(b, Converted) and a.unit == b.unit:
        return a.value, b.value
    return None


def above_reference_high(fact: LabFact) -> bool | None:
    """Is the value above the lab's own upper reference limit?"""
    if fact.quantity is None or fact.reference_high is None:
        return None
    pair = _same_scale(fact.quantity, fact.reference_high)
    return None if pair is None else compare(pair[0], fact.quantity.comparator, ">", pair[1])


def below_reference_low(fact: LabFact) -> bool | None:
    if fact.quantity is None or fact.reference_low is None:
        return None
    pair = _same_scale(fact.quantity, fact.reference_low)
    return None if pair is None else compare(pair[0], fact.quantity.comparator, "<", pair[1])


def positive(fact: LabFact, viral_load: bool = False) -> bool | None:
    """The rules page's "positive": coded/written answer, above range, or flag.

    Any positive sign wins. For viral loads a quantity above zero without a
    ``<`` comparator is detected, and one below the limit of quantitation is
    not (unless flagged detected).
    """
    flags = fact.interpretation
    if fact.answer is True or flags & POSITIVE_FLAGS:
        return True
    if viral_load and fact.quantity is not None and fact.answer is None:
        return fact.quantity.comparator not in ("<", "<=") and fact.quantity.value > 0
    above = above_reference_high(fact)
    if above is True:
        return True
    if fact.answer is False or above is False or flags & NEGATIVE_FLAGS:
        return False
    return None


def present(fact: LabFact) -> bool | None:
    """Casts and cells: a count above zero, or written present/few/many."""
    if fact.quantity is not None:
        if fact.quantity.comparator in ("<", "<="):
            return False
        return fact.quantity.value > 0
    if fact.answer is not None:
        return fact.answer
    if fact.interpretation & POSITIVE_FLAGS:
        return True
    return None


def low(fact: LabFact, fallback: float, unit: str, where: str) -> tuple[bool | None, Note | None]:
    """Complement "low": below the lab's lower limit or flagged L/LL; with neither
    a range nor a flag, below ``fallback`` (in ``unit``)."""
    below = below_reference_low(fact)
    if below is True or fact.interpretation & LOW_FLAGS:
        return True, None
    if below is False or fact.interpretation:
        return False, None
    value, note = in_unit(fact.quantity, unit, where)
    if value is None:
        return None, note
    return compare(value.value, value.comparator, "<", fallback), None


def dipstick_grade(fact: LabFact) -> float | None:
    """Urine protein dipstick grade from text ("3+", "+++") or a strip reading in mg/dL."""
    if fact.value_text:
        grade = parse_dipstick(fact.value_text)
        if grade is not None:
            return grade
    canonical = fact.quantity.canonical if fact.quantity is not None else None
    if isinstance(canonical, Converted) and canonical.unit == "mg/dL":
        return dipstick_grade_from_mg_dl(canonical.value)
    if fact.answer is False:
        return 0.0
    return None
