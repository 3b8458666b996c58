"""The screening funnel, in the trial's own steps and words.

Rule: patients read → candidate pool → passed inclusion 1 → passed 1 and 2 → … →
no exclusion (every exclusion clear or a washout) → eligible and washout; the
exclusions are counted apart, by result, among the pool. Every step's label
comes from the trial file; nothing here knows a trial.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from .language import Trial
from .results import CLEAR, ELIGIBLE, NOT_A_CANDIDATE, STATUSES, WASHOUT
from .tree import TrialResult


@dataclass
class TrialFunnel:
    """How many patients reached each step of one trial's screen."""

    trial: Trial
    patients_read: int = 0
    resources_read: dict[str, int] = field(default_factory=dict)
    pool: int = 0
    passed: list[int] = field(default_factory=list)
    no_exclusion: int = 0
    exclusions: dict[str, Counter] = field(default_factory=dict)
    status: Counter = field(default_factory=Counter)

    def count_outside_pool(self, patients: int = 1) -> None:
        """Patients the pool gate (or a server search) ruled out: read, not a candidate."""
        self.patients_read += patients
        self.status[NOT_A_CANDIDATE] += patients

    def count(self, result: TrialResult) -> None:
        self.patients_read += 1
        self.status[result.status] += 1
        if not result.candidate:
            return
        self.pool += 1
        if not self.passed:
            self.passed = [0] * len(self.trial.spec.inclusions)
        for i, node in enumerate(result.inclusions.values()):
            if node.value is not True:
                break
            self.passed[i] += 1
        else:
            if all(f.result in (CLEAR, WASHOUT) for f in result.exclusions.values()):
                self.no_exclusion += 1
        for key, finding in result.exclusions.items():
            self.exclusions.setdefault(key, Counter())[finding.result] += 1

    def to_dict(self) -> dict:
        trial = self.trial
        pool = trial.spec.funnel.pool if trial.spec.funnel else "pool"
        passed = self.passed or [0] * len(trial.spec.inclusions)
        steps = [{"id": "pool", "label": trial.label(pool), "count": self.pool}]
        steps += [
            {"id": key, "label": trial.label(key), "count": count}
            for key, count in zip(trial.spec.inclusions, passed, strict=True)
        ]
        steps.append({"id": "no_exclusion", "label": "no exclusion", "count": self.no_exclusion})
        steps += [{"id": s, "label": s, "count": self.status[s]} for s in (ELIGIBLE, WASHOUT)]
        return {
            "patients_read": self.patients_read,
            "resources_read": dict(sorted(self.resources_read.items())),
            "steps": steps,
            "exclusions": {
                key: dict(sorted(self.exclusions.get(key, Counter()).items()))
                for key in trial.spec.exclusions
            },
            "status": {s: self.status[s] for s in (*STATUSES, NOT_A_CANDIDATE)},
        }
