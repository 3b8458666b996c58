"""The worklist: a run's candidates in the order a coordinator works them.

Rule: pure functions over the latest run's stored results (``candidates.json``
shape), the latest decision and follow-up records of each patient and the
do-not-contact list. Not yet acted on come first: eligible by rank, then
washouts by the day they end, then needs-review (with the reason) by rank; a
patient whose latest decision is one of :data:`DECISIONS` is in that decision's
tab ("reopened" puts them back); do-not-contact patients are on no tab.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from ..reviews import Review
from ..state import Action, DoNotContact

STATUS_ORDER = ("eligible", "washout", "needs-review", "excluded")
DECISIONS = {
    "contacted": "contacted",
    "scheduled": "scheduled for screening visit",
    "screened": "screened",
    "declined": "declined",
    "not-eligible": "not eligible after chart review",
    "enrolled": "enrolled",
    "deferred": "deferred",
    "reopened": "reopened: back on the list",
}
CLOSING = frozenset({"declined", "not-eligible", "enrolled"})
TO_WORK = "to-work"
EXCLUDED = "excluded"
TABS = (TO_WORK, *(d for d in DECISIONS if d != "reopened"), EXCLUDED)
FUNNEL_STEPS = ("contacted", "scheduled", "screened", "declined", "not-eligible", "enrolled")


@dataclass(frozen=True)
class Row:
    """One patient on the worklist."""

    patient: str
    name: str
    status: str
    rank: int | None
    eligible_from: str | None
    reason: str
    decision: Review | None
    owner: str | None
    next_action: Action | None
    changed: bool
    tab: str


def latest(actions: Iterable[Action], kind: str) -> dict[str, Action]:
    """Each patient's latest record of one kind."""
    return {a.patient: a for a in actions if a.kind == kind}


def reason(result: dict) -> str:
    """Why a patient is where they are, in the words the run wrote.

    >>> reason({"status": "washout", "eligible_from": "2026-07-20", "reasons": []})
    'in washout until 2026-07-20'
    >>> reason({"status": "needs-review", "reasons": ["a", "b"]})
    'a; b'
    """
    if result.get("status") == "washout" and result.get("eligible_from"):
        return f"in washout until {result['eligible_from']}"
    return "; ".join(str(r) for r in result.get("reasons") or [])


def tab_of(status: str, decision: Review | None) -> str:
    """The tab a patient is on.

    >>> tab_of("eligible", None), tab_of("excluded", None)
    ('to-work', 'excluded')
    >>> tab_of("eligible", Review("p", "declined", "", "a", "t"))
    'declined'
    >>> tab_of("washout", Review("p", "reopened", "", "a", "t"))
    'to-work'
    """
    if decision is not None and decision.status in TABS:
        return decision.status
    return EXCLUDED if status == EXCLUDED else TO_WORK


def changed(result: dict, before: dict | None) -> bool:
    """New on the list, or a different status or washout end than the run before.

    >>> changed({"status": "eligible"}, None)
    True
    >>> changed({"status": "eligible", "eligible_from": None}, {"status": "eligible"})
    False
    """
    if before is None:
        return True
    return (result.get("status"), result.get("eligible_from")) != (
        before.get("status"),
        before.get("eligible_from"),
    )


def rows(
    results: dict[str, dict],
    decisions: dict[str, Review],
    actions: list[Action],
    previous: dict[str, dict] | None,
) -> list[Row]:
    """Every candidate of a run as a worklist row, in working order (:func:`order`)."""
    owners, nexts = latest(actions, "owner"), latest(actions, "next")
    out = []
    for patient, result in results.items():
        decision = decisions.get(patient)
        owner = owners.get(patient)
        out.append(
            Row(
                patient=patient,
                name=str(result.get("name") or ""),
                status=str(result.get("status")),
                rank=result.get("rank"),
                eligible_from=result.get("eligible_from"),
                reason=reason(result),
                decision=decision,
                owner=owner.value if owner and owner.value else None,
                next_action=nexts.get(patient),
                changed=previous is not None and changed(result, previous.get(patient)),
                tab=tab_of(str(result.get("status")), decision),
            )
        )
    return sorted(out, key=order)


def order(row: Row) -> tuple:
    """Working order: status group, then washouts by end day, others by rank."""
    group = STATUS_ORDER.index(row.status) if row.status in STATUS_ORDER else len(STATUS_ORDER)
    day = row.eligible_from if row.status == "washout" else ""
    return (group, day or "", row.rank if row.rank is not None else 10**9, row.patient)


def matches(row: Row, query: str) -> bool:
    """A search by patient id or name, ignoring case.

    >>> r = Row("p01", "Ann Lee", "eligible", 1, None, "", None, None, None, False, "to-work")
    >>> matches(r, "ann"), matches(r, "P01"), matches(r, "bob")
    (True, True, False)
    """
    needle = query.strip().casefold()
    return needle in row.patient.casefold() or needle in row.name.casefold()


@dataclass(frozen=True)
class Filters:
    """What the worklist shows: a tab, and optional status, decision, change and search."""

    tab: str = TO_WORK
    status: str = ""
    decision: str = ""
    changed_only: bool = False
    query: str = ""

    def keep(self, row: Row) -> bool:
        if self.query:
            return matches(row, self.query)  # a search looks across every tab
        if self.decision:
            decided = row.decision.status if row.decision else ""
            return decided == self.decision and self._rest(row)
        return row.tab == self.tab and self._rest(row)

    def _rest(self, row: Row) -> bool:
        return (not self.status or row.status == self.status) and (
            not self.changed_only or row.changed
        )


def worklist(
    all_rows: list[Row], filters: Filters, blocked: dict[str, DoNotContact]
) -> tuple[list[Row], list[tuple[Row, DoNotContact]], Counter]:
    """(rows shown, do-not-contact patients a search found, rows per tab).

    Do-not-contact patients are on no tab and in no count; a search that finds one shows
    them apart, with the reason.
    """
    open_rows = [row for row in all_rows if row.patient not in blocked]
    shown = [row for row in open_rows if filters.keep(row)]
    found_blocked = [
        (row, blocked[row.patient])
        for row in all_rows
        if filters.query and row.patient in blocked and matches(row, filters.query)
    ]
    return shown, found_blocked, Counter(row.tab for row in open_rows)


def my_work(
    all_rows: dict[str, list[Row]], user: str, today: date
) -> dict[str, list[tuple[str, Row]]]:
    """The open cases ``user`` owns, as (trial, row) pairs: ``overdue``, ``due`` today and
    ``later`` (a later day or none), each by due day; a closed case (declined, not
    eligible, enrolled) is no one's work."""
    out: dict[str, list[tuple[str, Row]]] = {"overdue": [], "due": [], "later": []}
    day = today.isoformat()
    for trial, trial_rows in all_rows.items():
        for row in trial_rows:
            if row.owner != user or (row.decision and row.decision.status in CLOSING):
                continue
            due = row.next_action.due if row.next_action else None
            when = "later" if not due or due > day else ("due" if due == day else "overdue")
            out[when].append((trial, row))
    for pairs in out.values():
        pairs.sort(key=lambda pair: (pair[1].next_action and pair[1].next_action.due) or "9")
    return out
