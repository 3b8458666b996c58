"""Pre-filter: settle most NDJSON lines the trial cannot use without building them.

Rule: a line is *vouched for* only when what the pipeline would do with it is proven
from what is read here, and then it becomes a stand-in holding exactly what the
pipeline reads of a record it cannot use (type, id, ``meta.lastUpdated``, the patient
reference, no code): counted, its patient known, and its type, id and lastUpdated
still competing under the one duplicate rule, so a skipped newer copy retires an older
kept one. Every other line goes to the full parser as before. The proof, step by step:

- the line is validated whole by msgspec against a schema of the few elements read
  (so it is JSON: same grammar as orjson, the last of duplicate keys wins in both);
- a line holding a backslash (escapes, ``\\u``), a byte outside ASCII (UTF-8 checks),
  a number too large for a double (orjson refuses those; msgspec does not look) or
  anything of another JSON type than the schema says (a code that is a number, a null)
  is not vouched for;
- the gate's own ``classify`` is asked about the line's type and codings (all of them,
  across every coding), and only a 0 (nothing the trial reads) is skipped; a type
  whose relevance depends on more than ``code`` (``READS_MORE``) is never skipped.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec
from msgspec import UNSET, Struct, UnsetType

# Types whose relevance a gate may read from elements other than ``code``.
READS_MORE = frozenset({"FamilyMemberHistory", "Bundle", "OperationOutcome"})


class _Coding(Struct):
    system: str | UnsetType = UNSET
    code: str | UnsetType = UNSET


class _Concept(Struct):
    coding: list[_Coding] | UnsetType = UNSET


class _Reference(Struct):
    reference: str | UnsetType = UNSET


class _Meta(Struct):
    lastUpdated: str | UnsetType = UNSET


class _Line(Struct):
    resourceType: str
    id: str | UnsetType = UNSET
    meta: _Meta | UnsetType = UNSET
    code: _Concept | UnsetType = UNSET
    subject: _Reference | UnsetType = UNSET
    patient: _Reference | UnsetType = UNSET


# Numbers after the translation below: digits are "0", e, E and signs "e". A literal
# with an exponent of three or more digits, or 200 digits in a row, may not fit a double
# (a smaller one is below 1e299). Looked for in the bytes first (cheap, but strings hold
# such runs too: "e38485db"), then in the bytes outside strings, where an "e" followed by
# a digit or sign can only be an exponent (true and false are followed by , } ] or space).
_NUMBERS = bytes(
    ord("0") if chr(b).isdigit() else ord("e") if chr(b) in "eE+-" else ord("x") for b in range(256)
)
_TOO_LARGE = (b"e000", b"0" * 200)


def _may_overflow(data: bytes) -> bool:
    """Could a number of this line (ASCII, no backslash) be too large for a double?

    >>> _may_overflow(b'{"id":"e38485db","v":1.5e12}'), _may_overflow(b'{"v":1E+400}')
    (False, True)
    >>> _may_overflow(b'{"id":"' + b"1" * 300 + b'"}'), _may_overflow(b'[' + b"1" * 300 + b']')
    (False, True)
    """
    numbers = data.translate(_NUMBERS)
    for pattern in _TOO_LARGE:
        found = numbers.find(pattern)
        while found >= 0:
            if not data.count(b'"', 0, found) & 1:  # an even count of quotes: not in a string
                return True
            found = numbers.find(pattern, found + len(pattern))
    return False


def _reference(value: _Reference | UnsetType) -> dict | None:
    if value is UNSET:
        return None
    assert isinstance(value, _Reference)
    return {} if value.reference is UNSET else {"reference": value.reference}


def stand_in(line: _Line) -> dict:
    """What the pipeline reads of a record it cannot use, as a resource."""
    found: dict = {"resourceType": line.resourceType, "id": line.id, "code": {}}
    if line.meta is not UNSET:
        stamp = line.meta.lastUpdated  # type: ignore[union-attr]
        found["meta"] = {} if stamp is UNSET else {"lastUpdated": stamp}
    for key in ("subject", "patient"):
        target = _reference(getattr(line, key))
        if target is not None:
            found[key] = target
    return found


_NO_CODE, _NO_CODING = "no code", "no coding"


def _probe(key: tuple) -> dict:
    """A resource of the type and codings of a memo key, for the gate to classify.

    >>> _probe(("Condition", _NO_CODING)), _probe(("Observation", ("s", UNSET)))
    ({'resourceType': 'Condition', 'code': {}}, {'resourceType': 'Observation', \
'code': {'coding': [{'system': 's'}]}})
    """
    kind, *pairs = key
    if pairs == [_NO_CODE]:
        return {"resourceType": kind}
    if pairs == [_NO_CODING]:
        return {"resourceType": kind, "code": {}}
    codings = [{k: v for k, v in (("system", s), ("code", c)) if v is not UNSET} for s, c in pairs]
    return {"resourceType": kind, "code": {"coding": codings}}


class PreFilter:
    """``vouch(line)``: a stand-in resource for a line the trial cannot use, else None
    (parse it). ``classify`` is the gate's (0: the trial never uses the resource)."""

    def __init__(self, classify: Callable[[dict], int]):
        self._classify = classify
        self._decode = msgspec.json.Decoder(_Line).decode
        self._memo: dict[tuple, bool] = {}
        self.vouched = self.parsed = 0

    def _useless(self, line: _Line) -> bool:
        """Would the gate give 0 for this type and these codings?"""
        concept = line.code
        if concept is UNSET:
            key: tuple = (line.resourceType, _NO_CODE)
        elif concept.coding is UNSET:  # type: ignore[union-attr]
            key = (line.resourceType, _NO_CODING)
        else:
            key = (line.resourceType, *[(c.system, c.code) for c in concept.coding])  # type: ignore[union-attr]
        found = self._memo.get(key)
        if found is None:
            if len(self._memo) > 100_000:
                self._memo.clear()
            found = self._memo[key] = not self._classify(_probe(key))
        return found

    def vouch(self, data: bytes) -> dict | None:
        if b"\\" in data or not data.isascii():
            self.parsed += 1
            return None
        try:
            line = self._decode(data)
        except (msgspec.DecodeError, RecursionError):
            self.parsed += 1
            return None
        if (
            type(line.id) is not str
            or not line.id
            or line.resourceType in READS_MORE
            or not self._useless(line)
        ):
            self.parsed += 1
            return None
        if _may_overflow(data):
            self.parsed += 1
            return None
        self.vouched += 1
        return stand_in(line)
