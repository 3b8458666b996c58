"""Pipeline: sources -> store -> normalise -> evaluate -> rank, for one run.

Rule: this is the only module that knows every stage; it wires them in one
direction and holds no state between runs. The per-patient step
(``Relevance.may_be_candidate`` on the patient's relevance bits, then
``normalise.patient_facts`` and ``criteria.evaluate``) is pure, so an engine
that groups resources by patient some other way (Spark, a REST funnel) can
call it and get identical results.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from .criteria.evaluator import evaluate
from .criteria.relevance import CODED, PATIENT_DATA, Relevance
from .criteria.results import MET, NOT_A_CANDIDATE, STATUSES, PatientResult
from .criteria.trial import Trial
from .normalise.resources import patient_facts
from .quality import DataQuality, Note
from .rank import Candidate, rank
from .sources import ResourceSource
from .store import SqliteStore

PARTIAL_DATA = ("unreadable-file", "export-error", "incomplete-search")  # input not all read


@dataclass
class Funnel:
    """How many patients reached each step of the screen."""

    trial: Trial
    patients_read: int = 0
    resources_read: dict[str, int] = field(default_factory=dict)
    lupus_evidence: int = 0
    inclusion: dict[str, Counter] = field(default_factory=dict)
    exclusions: dict[str, Counter] = field(default_factory=dict)
    status: Counter = field(default_factory=Counter)
    not_read: int = 0  # known to a server, never fetched: no candidate search found them

    def finish(self) -> None:
        """Patients a server search ruled out count as read and not-a-candidate."""
        self.patients_read += self.not_read
        self.status[NOT_A_CANDIDATE] += self.not_read
        self.not_read = 0

    def count_outside_pool(self) -> None:
        """A patient whose codes cannot put them in the candidate pool."""
        self.patients_read += 1
        self.status[NOT_A_CANDIDATE] += 1

    def count(self, result: PatientResult) -> None:
        self.patients_read += 1
        self.status[result.status] += 1
        if not result.candidate:
            return
        self.lupus_evidence += 1
        for key, value in (
            ("age", result.age.result),
            ("acr", result.acr.result),
            ("activity", result.activity.result),
        ):
            self.inclusion.setdefault(key, Counter())[value] += 1
        for key, finding in result.exclusions.items():
            self.exclusions.setdefault(key, Counter())[finding.result] += 1

    def to_dict(self) -> dict:
        return {
            "patients_read": self.patients_read,
            "resources_read": dict(sorted(self.resources_read.items())),
            "lupus_evidence": self.lupus_evidence,
            "inclusion": {
                key: {
                    "passed": self.inclusion.get(key, Counter())[MET],
                    **dict(sorted(self.inclusion.get(key, Counter()).items())),
                }
                for key in ("age", "acr", "activity")
            },
            "exclusions": {
                key: dict(sorted(self.exclusions.get(key, Counter()).items()))
                for key in self.trial.exclusion_ids
            },
            "status": {s: self.status[s] for s in (*STATUSES, NOT_A_CANDIDATE)},
        }


@dataclass
class Screening:
    """The outcome of one run."""

    trial: Trial
    as_of: date
    funnel: Funnel
    data_quality: DataQuality
    candidates: list[Candidate]
    retrieval: dict[str, int] = field(default_factory=dict)

    def missing_data(self) -> dict[str, int]:
        """Notes saying part of the input was not read (the run is then *partial*)."""
        counts = self.data_quality.counts
        return {code: counts[code] for code in PARTIAL_DATA if counts.get(code)}


def screen(
    sources: Iterable[ResourceSource],
    trial: Trial,
    as_of: date,
    progress: Callable[[str, int | None, str], Callable[[int], None]] | None = None,
    workdir: Path | None = None,
) -> Screening:
    """Screen every patient in ``sources`` for ``trial`` as of ``as_of``.

    ``progress(label, total, unit)`` may return a callback that is told how much
    work was done; it is how the command line draws its progress bars.
    ``workdir`` is where the run's temporary store goes (default: the system's
    temporary folder).
    """
    sources = list(sources)
    quality = DataQuality()
    funnel = Funnel(trial)
    relevance = Relevance(trial)
    results: list[PatientResult] = []

    def no_progress(_: int) -> None:
        return None

    retrieval: Counter = Counter()
    with SqliteStore(workdir, filtered_types=CODED) as store:
        for source in sources:
            advance = (
                progress("reading", source.total_work(), source.progress_unit)
                if progress
                else no_progress
            )
            for raw in source.read(quality.add, advance):
                wanted = relevance.classify(raw.resource)
                if wanted and raw.foreign is not None:
                    quality.add(
                        Note(
                            "foreign-reference",
                            f"refers to a patient outside this source ({raw.foreign[:120]}); "
                            "not counted for any patient",
                            raw.where,
                        )
                    )
                elif (
                    wanted and raw.patient is None and raw.resource["resourceType"] in PATIENT_DATA
                ):
                    quality.add(
                        Note(
                            "no-patient-reference",
                            "resource names no Patient (subject/patient); skipped",
                            raw.where,
                        )
                    )
                store.add(raw, wanted)
            funnel.not_read += source.patients_not_read()
            retrieval.update(source.stats())
        store.finish()
        duplicates = store.kept - store.distinct_kept
        if duplicates:
            quality.counts["duplicate-resource"] += duplicates
            quality.examples["duplicate-resource"] = [
                {
                    "where": "(several files)",
                    "message": "the same type and id was read more than once; counted once "
                    "(later meta.lastUpdated wins, else the first seen)",
                }
            ]
        funnel.resources_read = store.resources_by_type
        advance = (
            progress("screening", store.patient_count(), "patients") if progress else no_progress
        )
        for record in store.patients():
            advance(1)
            if not relevance.may_be_candidate(record.touches):
                funnel.count_outside_pool()
                continue
            facts = patient_facts(record.patient_id, record.resources(), store.medication)
            result = evaluate(facts, trial, as_of)
            funnel.count(result)
            for note in result.notes:
                quality.add(note)
            if result.candidate:
                results.append(result)
    funnel.finish()
    return Screening(trial, as_of, funnel, quality, rank(results, trial.ranking), dict(retrieval))
