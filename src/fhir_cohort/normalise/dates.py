"""Dates: FHIR date/dateTime parsing, calendar-month arithmetic and age.

Every function is pure. A FHIR dateTime keeps the calendar day it was written
in (``2026-06-30T23:30:00-05:00`` is 30 June): the clinic's local day is the
day the clinician saw, and converting to UTC would move late-evening results
to the next day.
"""

from __future__ import annotations

import calendar
import re
from datetime import date

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def parse_date(text: object) -> date | None:
    """Return the calendar day of a FHIR date, dateTime or instant.

    A partial date stands for its first day (the earliest it can be), so that
    evidence written as "2026" is never wrongly treated as lying after an
    as-of date in 2026. Anything unparseable gives None.

    >>> parse_date("2026-06-30T23:30:00-05:00")
    datetime.date(2026, 6, 30)
    >>> parse_date("1990-05")
    datetime.date(1990, 5, 1)
    >>> parse_date("1990")
    datetime.date(1990, 1, 1)
    >>> parse_date("30/06/2026") is None, parse_date(None) is None, parse_date("2026-13-01") is None
    (True, True, True)
    """
    if not isinstance(text, str):
        return None
    match = _DATE.match(text.strip())
    if not match:
        return None
    year, month, day = match.groups()
    try:
        return date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None


def date_bounds(text: object) -> tuple[date, date] | None:
    """Earliest and latest day a (possibly partial) FHIR date can stand for.

    >>> date_bounds("1980")
    (datetime.date(1980, 1, 1), datetime.date(1980, 12, 31))
    >>> date_bounds("2000-02")
    (datetime.date(2000, 2, 1), datetime.date(2000, 2, 29))
    >>> date_bounds("1975-07-14")
    (datetime.date(1975, 7, 14), datetime.date(1975, 7, 14))
    >>> date_bounds("unknown") is None
    True
    """
    earliest = parse_date(text)
    if earliest is None:
        return None
    assert isinstance(text, str)
    _, month, day = _DATE.match(text.strip()).groups()  # type: ignore[union-attr]
    if day:
        return earliest, earliest
    if month:
        last = calendar.monthrange(earliest.year, earliest.month)[1]
        return earliest, earliest.replace(day=last)
    return earliest, date(earliest.year, 12, 31)


def add_months(day: date, months: int) -> date:
    """``day`` plus whole calendar months, clamped to the month's last day.

    >>> add_months(date(2025, 8, 31), 6)
    datetime.date(2026, 2, 28)
    >>> add_months(date(2027, 8, 31), 6)
    datetime.date(2028, 2, 29)
    >>> add_months(date(2026, 4, 30), 2)
    datetime.date(2026, 6, 30)
    >>> add_months(date(2026, 11, 15), 2)
    datetime.date(2027, 1, 15)
    """
    index = day.year * 12 + (day.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def age_on(birth: date, on: date) -> int:
    """Age in completed years on a day (a birthday counts on the day itself).

    A 29 February birthday is reached on 1 March in common years.

    >>> age_on(date(2008, 6, 30), date(2026, 6, 30))
    18
    >>> age_on(date(2008, 7, 1), date(2026, 6, 30))
    17
    >>> age_on(date(2004, 2, 29), date(2022, 2, 28))
    17
    """
    years = on.year - birth.year
    if (on.month, on.day) < (birth.month, birth.day):
        years -= 1
    return years
