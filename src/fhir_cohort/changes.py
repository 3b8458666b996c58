"""Changes: what is different since the previous run, and what review decisions mean.

Rule: pure functions over *snapshots*, small JSON-able dicts that summarise one
candidate (status, dates, flags and the evidence on record), so the same
comparison runs on a history read from SQLite, from files or inside Spark.
A patient is *listed* when eligible, in washout or in need of review; the
diff reports who is newly listed, whose status changed, who dropped out (and
why) and who leaves a washout within the next 30 days. A patient whose latest
review decision is ``declined`` or ``not-eligible`` is not shown as new again
unless evidence appears that was not on record when the decision was made,
and then the change says so.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, timedelta

from .criteria.results import ELIGIBLE, NEEDS_REVIEW, WASHOUT
from .reviews import SET_ASIDE, Review
from .snapshots import evidence_items as evidence_items
from .snapshots import evidence_key as evidence_key
from .snapshots import flags as flags
from .snapshots import snapshot as snapshot

LISTED = (ELIGIBLE, WASHOUT, NEEDS_REVIEW)
SOON_DAYS = 30
SHOWN_EVIDENCE = 3


def migrated(snap: dict) -> dict:
    """A snapshot written before trials were data (one field per inclusion: a count
    ``<id>_count`` or a result ``<id>``) in today's shape; only what it recorded is
    compared.

    >>> migrated({"status": "eligible", "acr_count": 5, "activity": "met", "flags": []})
    {'status': 'eligible', 'flags': [], 'criteria': {'activity': 'met'}, 'met': {'acr': 5}}
    """
    if "criteria" in snap:
        return snap
    shaped = {k: v for k, v in snap.items() if k in _SNAPSHOT_FIELDS}
    old = {k: v for k, v in snap.items() if k not in _SNAPSHOT_FIELDS}
    return {
        **shaped,
        "criteria": {k: v for k, v in old.items() if not k.endswith("_count")},
        "met": {k.removesuffix("_count"): v for k, v in old.items() if k.endswith("_count")},
    }


_SNAPSHOT_FIELDS = frozenset({"name", "status", "eligible_from", "rank", "flags", "evidence"})


@dataclass(frozen=True)
class Change:
    """One line of the diff: a patient, their status before and after, and why."""

    patient: str
    name: str | None
    before: str | None
    after: str | None
    why: str
    eligible_from: str | None = None

    def to_dict(self) -> dict:
        return {
            "patient": self.patient,
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "why": self.why,
            "eligible_from": self.eligible_from,
        }


@dataclass(frozen=True)
class ReviewState:
    """A patient's latest decision and the evidence that has appeared since."""

    review: Review
    new_evidence: tuple[str, ...] = ()

    @property
    def set_aside(self) -> bool:
        """Declined or not eligible, and nothing new since: not to be shown as new."""
        return self.review.status in SET_ASIDE and not self.new_evidence

    def describe(self) -> str:
        text = f"{self.review.status} {self.review.at[:10]} by {self.review.by}"
        if self.review.status in SET_ASIDE and self.new_evidence:
            text += f"; new evidence since: {_some(self.new_evidence)}"
        return text

    def to_dict(self) -> dict:
        return {**self.review.to_dict(), "new_evidence_since": list(self.new_evidence)}


@dataclass
class Changes:
    """The diff of one run against the previous complete run of the same screen."""

    previous: dict | None  # {"id", "as_of", "finished_at"} of the run compared with
    new: list[Change] = field(default_factory=list)
    status_changed: list[Change] = field(default_factory=list)
    dropped: list[Change] = field(default_factory=list)
    eligible_soon: list[Change] = field(default_factory=list)
    reconsider: list[Change] = field(default_factory=list)
    set_aside: list[Change] = field(default_factory=list)
    reviews: dict[str, ReviewState] = field(default_factory=dict)

    def for_patient(self, patient: str) -> str:
        """The change a candidate is part of, in a few words ('' when none)."""
        for name, title in (
            ("new", "new"),
            ("reconsider", "new evidence since review"),
            ("status_changed", "changed"),
            ("dropped", "dropped out"),
            ("set_aside", "set aside"),
        ):
            for change in getattr(self, name):
                if change.patient == patient:
                    return f"{title}: {change.why}"
        return ""

    def to_dict(self) -> dict:
        lists = ("new", "status_changed", "dropped", "eligible_soon", "reconsider", "set_aside")
        return {
            "previous_run": self.previous,
            **{name: [c.to_dict() for c in getattr(self, name)] for name in lists},
        }


def _some(labels: tuple[str, ...] | list[str]) -> str:
    shown = "; ".join(labels[:SHOWN_EVIDENCE])
    more = len(labels) - SHOWN_EVIDENCE
    return shown + (f" and {more} more" if more > 0 else "")


def named(flag: str, name: Callable[[str], str]) -> str:
    """A snapshot's flag with its leading id put in words (snapshots keep ids, so they
    compare across runs whatever the labels say).

    >>> label = {"biologic_washout": "Biologic (6 months)", "hiv": "HIV", "age": "Age"}.get
    >>> named("biologic_washout until 2026-07-01", label), named("hiv: excluded", label)
    ('Biologic (6 months) until 2026-07-01', 'HIV: excluded')
    >>> named("age 70 outside the trial's range", label)
    "Age: 70 outside the trial's range"
    """
    cut = min((i for i in (flag.find(" "), flag.find(":")) if i > 0), default=len(flag))
    rest = flag[cut:]
    if rest.startswith(" ") and not rest.startswith(" until "):
        rest = ":" + rest  # an age: as the outputs' own flags put it
    return name(flag[:cut]) + rest


def differences(
    before: dict | None, now: dict | None, name: Callable[[str], str] = str
) -> list[str]:
    """Why a patient's snapshot changed, in short phrases (``name`` puts an id in words).

    >>> was = {"status": "washout", "flags": ["biologic_washout until 2026-07-01"],
    ...        "criteria": {"acr": "met", "activity": "met"}, "met": {"acr": 4}, "evidence": {}}
    >>> differences(was, {**was, "status": "eligible", "flags": []})
    ['washout → eligible', 'washout over (biologic_washout until 2026-07-01)']
    >>> differences(None, {**was, "status": "eligible", "flags": []})
    ['first listed: acr met (4), activity met']
    """
    if now is None:
        return ["not in the candidate pool in this run's data (records changed or not read)"]
    now = migrated(now)
    if before is None:
        return ["first listed: " + ", ".join(_criteria(now, name))]
    before = migrated(before)
    out = []
    if before["status"] != now["status"]:
        out.append(f"{before['status']} → {now['status']}")
    was = _washouts(before["flags"])
    still = _washouts(now["flags"])
    for flag in before["flags"]:
        key = flag.split(" until ")[0]
        if flag in now["flags"]:
            continue
        if key in was and key in still:
            out.append(f"{name(key)} now until {still[key]} (was {was[key]})")
        elif key in was:
            out.append(f"washout over ({named(flag, name)})")
        else:
            out.append(f"no longer {named(flag, name)}")
    out += [
        f"now {named(flag, name)}"
        for flag in now["flags"]
        if flag not in before["flags"] and flag.split(" until ")[0] not in was
    ]
    for key, count in now["met"].items():
        was_count = before["met"].get(key, count)
        if was_count != count:
            out.append(f"{name(key)} {was_count} → {count} met")
    for key, result in now["criteria"].items():
        was_result = before["criteria"].get(key, result)
        if was_result != result:
            out.append(f"{name(key)} {was_result} → {result}")
    fresh = [label for key, label in now["evidence"].items() if key not in before["evidence"]]
    if fresh:
        out.append(f"new evidence: {_some(fresh)}")
    return out


def _criteria(snap: dict, name: Callable[[str], str]) -> list[str]:
    """Each inclusion's result, with the count of an ``at_least``: 'acr met (4)'."""
    shown = [
        f"{name(key)} {result}" + (f" ({snap['met'][key]})" if key in snap["met"] else "")
        for key, result in snap["criteria"].items()
    ]
    return shown + [
        f"{name(k)}: {n} met" for k, n in snap["met"].items() if k not in snap["criteria"]
    ]


def _washouts(flags: list[str]) -> dict[str, str]:
    """Washout flags by exclusion: {'biologic_washout': '2026-07-20'}."""
    return dict(flag.split(" until ", 1) for flag in flags if " until " in flag)


def _moved(before: dict, now: dict) -> bool:
    """A listed patient's change worth a line: a new status, an earlier eligible-from
    date, or a later one because of new evidence (an ongoing medication's washout
    end moves with every run and is not news by itself)."""
    if before["status"] != now["status"]:
        return True
    was, will = before.get("eligible_from"), now.get("eligible_from")
    if was == will:
        return False
    if was is None or will is None or will < was:
        return True
    return any(key not in before["evidence"] for key in now["evidence"])


def review_states(
    current: Mapping[str, dict], reviews: dict[str, Review]
) -> dict[str, ReviewState]:
    """Each reviewed candidate's latest decision with the evidence that is new since."""
    states = {}
    for patient, review in reviews.items():
        now = current.get(patient)
        fresh = (
            tuple(
                label for key, label in now["evidence"].items() if key not in review.evidence_seen
            )
            if now
            else ()
        )
        states[patient] = ReviewState(review, fresh)
    return states


def compare(
    previous: Mapping[str, dict] | None,
    current: Mapping[str, dict],
    reviews: dict[str, Review],
    as_of: date,
    previous_run: dict | None = None,
    name: Callable[[str], str] = str,
) -> Changes:
    """The diff of ``current`` snapshots against ``previous`` (None on a first run);
    ``name`` puts the trial's ids in words (its labels) in every line."""
    states = review_states(current, reviews)
    changes = Changes(previous_run if previous is not None else None, reviews=states)
    soon = as_of + timedelta(days=SOON_DAYS)
    for patient, now in current.items():
        listed = now["status"] in LISTED
        leaves = now.get("eligible_from")
        if now["status"] == WASHOUT and leaves and date.fromisoformat(leaves) <= soon:
            changes.eligible_soon.append(
                _change(patient, now, now, "; ".join(named(f, name) for f in now["flags"]), leaves)
            )
        if previous is None or not listed:
            continue
        before = previous.get(patient)
        state = states.get(patient)
        reason = "; ".join(differences(before, now, name))
        if before is None or before["status"] not in LISTED:
            if state and state.set_aside:
                changes.set_aside.append(
                    _change(patient, before, now, f"{state.describe()}; no new evidence since")
                )
            elif state and state.review.status in SET_ASIDE:
                changes.new.append(_change(patient, before, now, f"{state.describe()}; {reason}"))
            else:
                changes.new.append(_change(patient, before, now, reason))
            continue
        if state and state.review.status in SET_ASIDE and state.new_evidence:
            changes.reconsider.append(_change(patient, before, now, state.describe()))
        if _moved(before, now):
            changes.status_changed.append(_change(patient, before, now, reason))
    for patient, before in (previous or {}).items():
        after = current.get(patient)
        if before["status"] in LISTED and (after is None or after["status"] not in LISTED):
            why = "; ".join(differences(before, after, name))
            changes.dropped.append(_change(patient, before, after, why))
    changes.eligible_soon.sort(key=lambda c: (c.eligible_from or "", c.patient))
    return changes


def _change(
    patient: str, before: dict | None, now: dict | None, why: str, eligible_from: str | None = None
) -> Change:
    return Change(
        patient,
        (now or before or {}).get("name"),
        before["status"] if before else None,
        now["status"] if now else None,
        why,
        eligible_from or (now or {}).get("eligible_from"),
    )
