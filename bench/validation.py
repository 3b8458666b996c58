"""Validation after the pool gate: fhir.resources R4B models against the per-element check.

    python bench/validation.py --data bench/data/pop-2000 [--repeat 3] [--json FILE]

Issue 10 asks for the elements the tool reads in each pool patient's records to be
checked against their FHIR R4 types. Two ways, timed on the same records: the kept
resources of every patient of a population made by ``bench/generate_population.py``
(what a trial whose pool held everyone would check; at 1 % lupus prevalence MiSLE's
pool is 1 % of this, a diabetes trial's can be half):

* ``per-element``: ``normalise.resources.patient_facts``, which reads every element it
  uses through ``normalise.elements.Reading`` (type, grammar and value-set checks), and
  builds the facts: the whole per-patient normalisation, checks included;
* ``R4B models``: ``fhir.resources.R4B`` ``model_validate`` of each resource (checks every
  element, read or not), without building any fact; on the first ``--model-sample``
  resources (they validate ~10x slower).

Times are CPU seconds of this process (``time.process_time``, best of ``--repeat``), so
other work on the machine does not distort them. Prints resources/s for each and what
a pool of half of a 10,000-patient population would cost (``docs/benchmark.md``). To
price the checks themselves, run the same with ``PYTHONPATH`` set to a checkout from
before them: the ``per-element`` line is then the normalisation without checks.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

from fhir.resources.R4B import get_fhir_model_class

from fhir_cohort.criteria.language import load as load_trial
from fhir_cohort.criteria.plan import CODED
from fhir_cohort.normalise.resources import patient_facts
from fhir_cohort.pipeline import pool_gates
from fhir_cohort.sources.files import FileSource
from fhir_cohort.store import SqliteStore


def records(folder: Path) -> tuple[list[tuple[str, list[dict]]], SqliteStore]:
    """Every patient's kept resources, read back from the store as the pipeline does."""
    relevance = pool_gates([load_trial("misle")])
    store = SqliteStore(filtered_types=CODED)
    for raw in FileSource(folder).read(lambda note: None, lambda n: None):
        store.add(raw, relevance.classify(raw.resource))
    store.finish()
    return [(r.patient_id, r.resources()) for r in store.patients()], store


def best(repeat: int, run) -> float:
    times = []
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        run()
        times.append(time.process_time() - started)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--model-sample", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    patients, store = records(args.data)
    count = sum(len(resources) for _, resources in patients)
    sample = [r for _, resources in patients for r in resources][: args.model_sample]
    invalid = []

    def per_element() -> None:
        for patient_id, resources in patients:
            patient_facts(patient_id, resources, store.medication)

    def models() -> None:
        invalid.clear()
        for resource in sample:
            try:
                get_fhir_model_class(resource["resourceType"]).model_validate(resource)
            except ValueError as error:  # pydantic's ValidationError
                invalid.append(str(error).splitlines()[0])

    timings = {
        "per-element": best(args.repeat, per_element),
        "R4B models": best(args.repeat, models) * count / len(sample),  # for all resources
    }
    store.close()
    result = {
        "data": str(args.data),
        "patients": len(patients),
        "resources_checked": count,
        "per_patient": round(count / len(patients), 1),
        "seconds": {k: round(v, 3) for k, v in timings.items()},
        "resources_per_second": {k: round(count / v) for k, v in timings.items()},
        "models_over_per_element": round(timings["R4B models"] / timings["per-element"], 1),
        "model_sample": len(sample),
        "rejected_by_models": len(invalid),
        "first_rejection": invalid[0] if invalid else None,
        # a pool of 5,000 patients (half of pop-10000), at this data's records per patient
        "pool_5000_seconds": {
            k: round(5000 * count / len(patients) / (count / v), 1) for k, v in timings.items()
        },
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
