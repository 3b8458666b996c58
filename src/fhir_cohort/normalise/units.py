"""Units: turn the unit strings labs really send into a few canonical units.

Rule: convert only what is certainly the same quantity; anything else is
"unknown" and the caller reports it instead of guessing (codebook §7.8).

Canonical units, one per kind of quantity:

* cell counts ``10*9/L`` (= ``10*3/uL`` = ``K/uL`` = ``/nL``; ``/uL`` ÷ 1000)
* protein excretion ``g/(24.h)``; protein/creatinine ratio ``g/g``
  (``mg/mmol`` × 8.84 → mg/g, creatinine 113.12 g/mol)
* mass concentration ``mg/dL`` (complement: ``g/L`` × 100)
* temperature ``Cel`` (``[degF]`` converted)
* urine sediment ``/[HPF]``, casts ``/[LPF]``
* antiphospholipid units ``[GPL'U]/mL`` (GPL, MPL and U/mL read alike)
* titers ``{titer}``; viral loads ``{copies}/mL`` and ``[IU]/mL`` (never
  converted, only compared with zero)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class Unit:
    """A known unit: its canonical unit and the linear map into it."""

    canonical: str
    scale: float
    offset: float = 0.0
    plausible_min: float | None = None  # below this the unit is probably wrong


@dataclass(frozen=True, slots=True)
class Converted:
    """A value expressed in its canonical unit."""

    value: float
    unit: str


@dataclass(frozen=True, slots=True)
class UnitProblem:
    """Why a value could not be converted: ``unknown`` or ``suspect``."""

    kind: str
    unit: str
    detail: str


def _same(canonical: str, scale: float, *spellings: str, plausible_min: float | None = None):
    return {s: Unit(canonical, scale, plausible_min=plausible_min) for s in spellings}


_UNITS: dict[str, Unit] = {
    **_same(
        "10*9/L",
        1.0,
        "10*9/l",
        "10^9/l",
        "x10e9/l",
        "x10^9/l",
        "10*3/ul",
        "10^3/ul",
        "x10e3/ul",
        "x10^3/ul",
        "x10(3)/ul",
        "x10*3/ul",
        "k/ul",
        "thou/ul",
        "10*3/mm3",
        "10^3/mm3",
        "k/mm3",
        "thou/mm3",
        "/nl",
        "10*3/{cells}/ul",
        "10*3{cells}/ul",
        "giga/l",
        "g/l{cells}",
    ),
    **_same(
        "10*9/L",
        1e-3,
        "/ul",
        "/mm3",
        "{cells}/ul",
        "cells/ul",
        "10*6/l",
        "/cumm",
        plausible_min=20.0,
    ),
    **_same(
        "g/(24.h)",
        1.0,
        "g/(24.h)",
        "g/24h",
        "g/24.h",
        "g/24hr",
        "g/(24h)",
        "g/d",
        "g/day",
        "g/24hours",
    ),
    **_same(
        "g/(24.h)",
        1e-3,
        "mg/(24.h)",
        "mg/24h",
        "mg/24.h",
        "mg/24hr",
        "mg/(24h)",
        "mg/d",
        "mg/day",
        "mg/24hours",
    ),
    **_same("g/g", 1.0, "g/g", "mg/mg", "g/g{creat}", "g/g{cre}", "mg/mg{creat}", "mg/mg{cre}"),
    **_same("g/g", 1e-3, "mg/g", "mg/g{creat}", "mg/g{cre}", "mg/g{creatinine}", "mg/gcr"),
    **_same("g/g", 8.84e-3, "mg/mmol", "mg/mmol{creat}", "mg/mmol{cre}", "mg/mmolcr"),
    **_same("mg/dL", 1.0, "mg/dl"),
    **_same("mg/dL", 100.0, "g/l"),
    **_same("mg/dL", 0.1, "mg/l"),
    **_same("mg/dL", 1000.0, "g/dl"),
    **_same("Cel", 1.0, "cel", "°c", "degc", "c", "[degc]"),
    "[degf]": Unit("Cel", 5 / 9, -32 * 5 / 9),
    "°f": Unit("Cel", 5 / 9, -32 * 5 / 9),
    "degf": Unit("Cel", 5 / 9, -32 * 5 / 9),
    "f": Unit("Cel", 5 / 9, -32 * 5 / 9),
    **_same(
        "/[HPF]",
        1.0,
        "/[hpf]",
        "/hpf",
        "{cells}/[hpf]",
        "cells/hpf",
        "rbc/hpf",
        "wbc/hpf",
        "/hpf{rbc}",
        "/hpf{wbc}",
    ),
    **_same("/[LPF]", 1.0, "/[lpf]", "/lpf", "{casts}/[lpf]", "casts/lpf"),
    **_same(
        "[GPL'U]/mL",
        1.0,
        "[gpl'u]/ml",
        "[mpl'u]/ml",
        "[gpl'u]",
        "[mpl'u]",
        "gpl",
        "mpl",
        "gpl/ml",
        "mpl/ml",
        "gplu/ml",
        "mplu/ml",
        "gpl-u/ml",
        "mpl-u/ml",
        "{gpl}/ml",
        "{mpl}/ml",
        "u/ml",
        "[arb'u]/ml",
    ),
    **_same("{titer}", 1.0, "{titer}", "titer", "{ratio}", "ratio"),
    **_same("{copies}/mL", 1.0, "{copies}/ml", "copies/ml", "cp/ml"),
    **_same("[IU]/mL", 1.0, "[iu]/ml", "iu/ml"),
}


def _key(unit: str) -> str:
    """Spelling-insensitive lookup key: case, spaces, micro signs, 'mc' for micro.

    >>> _key(" 10^3/mcL "), _key("x10E3/µL"), _key("mg/24 hr")
    ('10^3/ul', 'x10e3/ul', 'mg/24hr')
    """
    key = unit.strip().lower().replace(" ", "").replace("µ", "u").replace("μ", "u")
    return key.replace("mcl", "ul").replace("mcg", "ug")


@lru_cache(maxsize=4096)
def canonical_unit(unit: str) -> str | None:
    """The canonical unit a spelling belongs to, or None if unknown.

    >>> canonical_unit("K/uL"), canonical_unit("mg/mmol"), canonical_unit("bananas")
    ('10*9/L', 'g/g', None)
    """
    known = _UNITS.get(_key(unit))
    return known.canonical if known else None


@lru_cache(maxsize=4096)
def _unit(unit: str) -> Unit | None:
    return _UNITS.get(_key(unit))


def convert(value: float, unit: str | None) -> Converted | UnitProblem:
    """Express ``value`` (in ``unit``) in its canonical unit.

    >>> convert(3200, "/uL")
    Converted(value=3.2, unit='10*9/L')
    >>> convert(4.1, "x10E3/uL")
    Converted(value=4.1, unit='10*9/L')
    >>> convert(700, "mg/(24.h)")
    Converted(value=0.7, unit='g/(24.h)')
    >>> round(convert(57, "mg/mmol").value, 3)
    0.504
    >>> convert(0.8, "g/L")
    Converted(value=80.0, unit='mg/dL')
    >>> round(convert(101.3, "[degF]").value, 2)
    38.5
    >>> convert(3.1, "/uL").kind      # a white count of 3.1 per µL is mis-unitised thousands
    'suspect'
    >>> convert(4.0, "bananas").kind, convert(4.0, None).kind
    ('unknown', 'unknown')
    """
    if not unit:
        return UnitProblem("unknown", "", "value has no unit")
    known = _unit(unit)
    if known is None:
        return UnitProblem("unknown", unit, f"unit {unit!r} is not understood")
    if known.plausible_min is not None and 0 < value < known.plausible_min:
        return UnitProblem(
            "suspect", unit, f"{value:g} {unit} is implausible; probably thousands mis-unitised"
        )
    return Converted(round(value * known.scale + known.offset, 6), known.canonical)
