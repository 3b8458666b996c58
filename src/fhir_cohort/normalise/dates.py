"""Dates: partial-date ranges, calendar-month arithmetic and age.

Every function is pure. Dates are read by the FHIR grammar (``elements.fhir_date``);
a FHIR dateTime keeps the calendar day it was written in
(``2026-06-30T23:30:00-05:00`` is 30 June): the clinic's local day is the
day the clinician saw, and converting to UTC would move late-evening results
to the next day.
"""

from __future__ import annotations

import calendar
from datetime import date

from .elements import fhir_date


def date_bounds(text: object) -> tuple[date, date] | None:
    """Earliest and latest day a (possibly partial) FHIR ``date`` can stand for; None
    when it is not a valid FHIR date.

    >>> date_bounds("1980")
    (datetime.date(1980, 1, 1), datetime.date(1980, 12, 31))
    >>> date_bounds("2000-02")
    (datetime.date(2000, 2, 1), datetime.date(2000, 2, 29))
    >>> date_bounds("1975-07-14")
    (datetime.date(1975, 7, 14), datetime.date(1975, 7, 14))
    >>> date_bounds("unknown") is None, date_bounds("1975-7-14") is None
    (True, True)
    """
    earliest = fhir_date(text, "date")
    if earliest is None:
        return None
    assert isinstance(text, str)
    if len(text) == 10:
        return earliest, earliest
    if len(text) == 7:
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
