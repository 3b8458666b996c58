"""Compare today's engine (criteria.evaluator) with the criteria language (criteria.tree).

``differences`` lists, for one patient, every place the two answers differ: status,
eligible_from, age, each ACR criterion (result and evidence), activity (result, score,
window, descriptors with evidence), every exclusion (result, until, evidence) and the
data-quality notes. An empty list is the same answer.
"""

from __future__ import annotations

from fhir_cohort.criteria.results import PatientResult
from fhir_cohort.criteria.tree import TrialResult


def differences(old: PatientResult, new: TrialResult) -> list[tuple]:
    found: list[tuple] = []

    def check(what, a, b):
        if a != b:
            found.append((what, a, b))

    check("status", old.status, new.status)
    check("eligible_from", old.eligible_from, new.eligible_from)
    check("age", old.age.age, new.age)
    check("candidate", old.candidate, new.candidate)
    check("notes", list(old.notes), list(new.notes))
    if not old.candidate:
        return found
    age = new.inclusions["age"]
    check("age.result", (old.age.result, old.age.evidence), (age.result, age.evidence))
    acr = new.inclusions["acr"]
    check("acr.result", (old.acr.result, old.acr.met), (acr.result, acr.met))
    check("acr.unknown", old.acr.unknown, acr.unknown)
    for key, finding in old.acr.criteria.items():
        node = acr.find(key)
        check(f"acr.{key}", (finding.result, finding.evidence), (node.result, node.evidence))
    activity, sledai = new.inclusions["activity"], new.node("activity.sledai")
    check("activity.result", old.activity.result, activity.result)
    check("activity.score", old.activity.score, sledai.score)
    window = (old.activity.window_start, old.activity.window_end)
    check("activity.window", window, activity.window)
    check(
        "activity.evidence",
        set(old.activity.evidence),
        set(activity.evidence) | set(sledai.evidence),
    )
    for key, finding in old.activity.descriptors.items():
        node = sledai.find(key)
        check(f"activity.{key}", (finding.result, finding.evidence), (node.result, node.evidence))
    check("exclusions", list(old.exclusions), list(new.exclusions))
    for key, finding in old.exclusions.items():
        check(f"exclusions.{key}", finding, new.exclusions.get(key))
    return found
