"""Lab values: read titers, qualitative answers and dipstick grades from text.

Labs send the same result in many shapes (codebook §7.6): "1:160",
">1:1280", "<1:40", "1:2560 speckled", "Positive at 1:80", "POSITIVE",
"Not detected", "3+", "+++", "≥300 mg/dL". Each parser here is pure and
returns None when the text does not say, so "unreadable" never becomes "no".
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Titer:
    """A dilution titer as its denominator (1:160 -> 160) and comparator."""

    denominator: float
    comparator: str | None = None

    def at_least(self, threshold: float) -> bool | None:
        """Is the titer at or above 1:threshold? None when it cannot be told.

        >>> Titer(160).at_least(80), Titer(40).at_least(80)
        (True, False)
        >>> Titer(1280, ">").at_least(80), Titer(40, "<").at_least(80)
        (True, False)
        >>> Titer(160, "<").at_least(80) is None   # below 1:160 may still be 1:80
        True
        """
        if self.comparator == "<":
            return False if self.denominator <= threshold else None
        if self.comparator == "<=":
            return False if self.denominator < threshold else None
        if self.comparator in (">", ">="):
            return True if self.denominator >= threshold else None
        return self.denominator >= threshold


_TITER = re.compile(r"(<=|>=|≤|≥|<|>)?\s*1\s*[:/]\s*(\d+(?:\.\d+)?)")
_COMPARATORS = {"≤": "<=", "≥": ">="}


def parse_titer(text: str | None) -> Titer | None:
    """Find a titer in free text.

    >>> parse_titer("1:160")
    Titer(denominator=160.0, comparator=None)
    >>> parse_titer(">1:1280")
    Titer(denominator=1280.0, comparator='>')
    >>> parse_titer("<1:40").comparator
    '<'
    >>> parse_titer("1:2560 speckled").denominator, parse_titer("Positive at 1:80").denominator
    (2560.0, 80.0)
    >>> parse_titer("POSITIVE") is None, parse_titer("12") is None
    (True, True)
    """
    if not text:
        return None
    match = _TITER.search(text)
    if not match:
        return None
    comparator, denominator = match.groups()
    return Titer(float(denominator), _COMPARATORS.get(comparator, comparator))


_NEGATIVE = re.compile(
    r"\b(neg(ative)?|non[- ]?reactive|not[- ]detected|undetected|none detected|absent|"
    r"not[- ]seen|none seen|nil)\b"
)
_POSITIVE = re.compile(
    r"\b(pos(itive)?|reactive|detected|present|few|many|moderate|rare|"
    r"occasional)\b"
)
_UNCERTAIN = re.compile(r"\b(indeterminate|equivocal|borderline|inconclusive)\b")


def parse_answer(text: str | None) -> bool | None:
    """Read a qualitative answer: True positive, False negative, None unknown.

    Negative phrases are checked first ("Not detected" contains "detected"),
    and hedged answers stay unknown.

    >>> parse_answer("POSITIVE"), parse_answer("Reactive"), parse_answer("Detected")
    (True, True, True)
    >>> parse_answer("Not detected"), parse_answer("Non-reactive"), parse_answer("NEG")
    (False, False, False)
    >>> parse_answer("<20 copies/mL, detected")
    True
    >>> [parse_answer(t) for t in ("Equivocal", "TNP", "see comment")]
    [None, None, None]
    """
    if not text:
        return None
    lowered = text.lower()
    if _UNCERTAIN.search(lowered):
        return None
    if _NEGATIVE.search(lowered):
        return False
    if _POSITIVE.search(lowered):
        return True
    return None


_GRADE_SIGNS = re.compile(r"^\s*(\d)\s*\+|^\s*(\++)\s*$")
_MG_DL = re.compile(r"(\d+(?:\.\d+)?)\s*mg/dl")
_DIPSTICK_MG_DL = ((1000.0, 4.0), (300.0, 3.0), (100.0, 2.0), (30.0, 1.0), (15.0, 0.5))


def dipstick_grade_from_mg_dl(value: float) -> float:
    """Urine protein dipstick grade for a strip reading in mg/dL.

    >>> [dipstick_grade_from_mg_dl(v) for v in (300, 100, 2000)]
    [3.0, 2.0, 4.0]
    >>> dipstick_grade_from_mg_dl(0)
    0.0
    """
    return next((grade for floor, grade in _DIPSTICK_MG_DL if value >= floor), 0.0)


def parse_dipstick(text: str | None) -> float | None:
    """Read a urine protein dipstick grade (0, 0.5 for trace, 1-4).

    >>> parse_dipstick("3+"), parse_dipstick("+++"), parse_dipstick("4+"), parse_dipstick("1 +")
    (3.0, 3.0, 4.0, 1.0)
    >>> parse_dipstick("Trace"), parse_dipstick("Negative")
    (0.5, 0.0)
    >>> parse_dipstick(">=300 mg/dL"), parse_dipstick("≥300 mg/dL"), parse_dipstick("100 mg/dL")
    (3.0, 3.0, 2.0)
    >>> parse_dipstick("QNS") is None
    True
    """
    if not text:
        return None
    lowered = text.strip().lower()
    signs = _GRADE_SIGNS.match(lowered)
    if signs:
        digit, plusses = signs.groups()
        return float(digit) if digit else float(len(plusses))
    if "trace" in lowered:
        return 0.5
    amount = _MG_DL.search(lowered)
    if amount:
        return dipstick_grade_from_mg_dl(float(amount.group(1)))
    if parse_answer(lowered) is False:
        return 0.0
    return None
