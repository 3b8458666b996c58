"""check-trial: validate a trial file and say, in words, what it means.

Rule: the same strict loader as a screen (a bad file is exit 2 with every
problem on its own line: file, line, dotted path, why); then the criteria as
a tree with their labels, the value sets with their sizes, the resource types
and codes the trial reads, and the server plan with its completeness
argument. Nothing is read but the trial and its value sets.
"""

from __future__ import annotations

import argparse
import sys

from ..criteria.language import (
    AgeRule,
    AllRule,
    AnyRule,
    AtLeastRule,
    ConditionRule,
    CriterionRule,
    DeceasedRule,
    ExposureRule,
    FamilyHistoryRule,
    GenderRule,
    IfRule,
    LabRule,
    MeasureRule,
    NotRule,
    ProcedureRule,
    RulesExclusion,
    ScoreRule,
    Trial,
    TrialError,
    check_site,
    children,
    load,
    load_site,
    node_id,
)
from ..criteria.plan import codes, covered, resource_types
from ..errors import Exit


def _window(rule) -> str:
    days = getattr(rule, "within_days", None) or getattr(rule, "window_days", None)
    before = getattr(rule, "dated_at_least_days_before", None)
    undated = getattr(rule, "undated", None)
    tail = f" (undated: {undated})" if undated else ""
    if days is not None:
        return f" within {days} days up to D{tail}"
    return (f" dated on or before D − {before} days" if before is not None else "") + tail


def _leaf(rule, trial: Trial) -> str:
    if isinstance(rule, AgeRule):
        return f"age {rule.age.min if rule.age.min is not None else '…'}–{rule.age.max or '…'}"
    if isinstance(rule, GenderRule):
        return "gender " + " or ".join(rule.gender)
    if isinstance(rule, DeceasedRule):
        return "deceased on or before D"
    if isinstance(rule, ConditionRule):
        status = "current " if rule.status == "current" else ""
        tail = f", unless followed by {rule.unless_followed_by}" if rule.unless_followed_by else ""
        return f"{status}Condition in {rule.condition}{_window(rule)}{tail}"
    if isinstance(rule, ProcedureRule):
        return f"Procedure in {rule.procedure}{_window(rule)}"
    if isinstance(rule, FamilyHistoryRule):
        return f"family history in {rule.family_history}{_window(rule)}"
    if isinstance(rule, (LabRule, MeasureRule)):
        name = rule.lab if isinstance(rule, LabRule) else f"measure {rule.measure}"
        test = rule.test
        value = getattr(rule, test)
        shown = "" if value is True else f" {value}"
        if test == "range":
            shown = f" {value.min if value.min is not None else '…'}–{value.max or '…'}"
        latest = " (latest occasion)" if rule.occasion == "latest" else ""
        return f"{name} {test.replace('_', ' ')}{shown}{latest}{_window(rule)}"
    if isinstance(rule, ExposureRule):
        return (
            f"on {rule.exposure} continuously since D − {rule.continuous_days} days "
            f"(gaps ≤ {rule.gap_days} days, still on D − {rule.ends_within_days})"
        )
    assert isinstance(rule, CriterionRule)
    return f"inclusion {rule.criterion} met"


def _head(rule) -> str:
    if isinstance(rule, AllRule):
        return "all of"
    if isinstance(rule, AnyRule):
        return f"on {rule.occasions} distinct days, any of" if rule.occasions > 1 else "any of"
    if isinstance(rule, NotRule):
        return "not"
    if isinstance(rule, AtLeastRule):
        return f"at least {rule.at_least} of (otherwise {rule.otherwise})"
    if isinstance(rule, ScoreRule):
        return f"score of at least {rule.score.at_least}"
    assert isinstance(rule, IfRule)
    return f"if … then … (else {rule.else_})"


def tree_lines(rule, trial: Trial, indent: int = 1) -> list[str]:
    """A rule as indented lines, with labels for named sub-rules."""
    pad = "  " * indent
    kids = children(rule)
    if not kids:
        return [f"{pad}{_leaf(rule, trial)}"]
    lines = [f"{pad}{_head(rule)}{_window(rule)}"]
    for key, child in kids:
        name = node_id(rule, key, child)
        label = f"{trial.label(name)}: " if name else ""
        weight = (  # a score item is always named (node_id: its key)
            f"[{rule.score.items[name].weight}] "
            if isinstance(rule, ScoreRule) and name is not None
            else ""
        )
        sub = tree_lines(child, trial, indent + 1)
        sub[0] = f"{'  ' * (indent + 1)}{weight}{label}{sub[0].strip()}"
        lines += sub
    return lines


def describe(trial: Trial) -> list[str]:
    spec = trial.spec
    lines = [f"{spec.title} ({spec.trial}, version {spec.version})"]
    lines += [f"  {key}: {value}" for key, value in spec.references.items()]
    pool = trial.label(spec.funnel.pool) if spec.funnel else "candidate pool"
    lines += ["", f"Candidate pool ({pool}):", *tree_lines(spec.candidate_pool, trial)]
    lines += ["", "Inclusions (in funnel order):"]
    for key, inclusion in spec.inclusions.items():
        excludes = "; known and not met excludes" if inclusion.not_met == "excludes" else ""
        lines += [f"  {key}: {trial.label(key)}{excludes}", *tree_lines(inclusion.rule, trial, 2)]
    lines += ["", "Exclusions (the worst outcome wins):"]
    for key, exclusion in spec.exclusions.items():
        lines.append(f"  {key}: {trial.label(key)}")
        if isinstance(exclusion, RulesExclusion):
            for part in exclusion.rules:
                sub = tree_lines(part.rule, trial, 3)
                lines += [f"    {part.outcome} when:", *sub]
        else:
            lines.append(
                f"    washout: last {exclusion.washout} exposure + {exclusion.months} months"
            )
    if spec.ranking:
        lines += ["", "Ranking (points within a status):"]
        lines += [f"  {term.model_dump(by_alias=True)}" for term in spec.ranking]
    lines += ["", "Value sets (codes; prefixes):"]
    for name, valueset in sorted(trial.valuesets.items()):
        lines.append(f"  {name}: {len(valueset.codes)}; {len(valueset.prefixes)}")
    lines += ["", "Reads: " + ", ".join(resource_types(spec))]
    for kind, keys in codes(spec, trial.valuesets).items():
        lines.append(f"  {kind}: {len(keys)} codes and prefixes")
    lines += ["", "Server plan:"]
    if trial.server is None:
        lines.append("  none (no server: section); files only")
        return lines
    for search in trial.server.candidate_searches:
        names = ", ".join(v.id for v in search.valuesets) or "all"
        lines.append(f"  find candidates: {search.resource} in {names}")
    for search in trial.server.fetch:
        names = ", ".join(v.id for v in search.valuesets) or "all"
        include = f" (+ _include {search.include})" if search.include else ""
        lines.append(f"  fetch per patient: {search.resource} {names}{include}")
    searched = {v.id for s in trial.server.candidate_searches for v in s.valuesets}
    complete = covered(spec, spec.candidate_pool, searched)
    lines.append(
        "  complete: every patient the pool could take has a searched code"
        if complete
        else "  NOT complete"
    )
    return lines


def run(args: argparse.Namespace) -> int:
    try:
        site, lines = load_site(args.site) if args.site else (None, {})
        trial = load(args.trial, site=site)
        if args.site:
            check_site(args.site, lines, [trial])
    except TrialError as error:
        for problem in error.problems:
            print(f"fhir-cohort: error: {problem}", file=sys.stderr)
        return Exit.USAGE
    print("\n".join(describe(trial)))
    return Exit.OK
