"""fhir-cohort: pre-screen FHIR R4 records for clinical-trial eligibility.

The package is a one-way pipeline; each stage lives in its own sub-package and
only ever imports from the stages before it:

    sources   where resources come from (NDJSON, Bundles; later REST and Bulk)
    store     groups a stream of resources by patient on disk (bounded memory)
    normalise FHIR JSON -> clinical facts with provenance (no trial knowledge
              beyond "which codes are worth keeping")
    criteria  the trial definition (data, from ``queries/``) and a pure,
              per-patient evaluator: facts + as_of date -> result
    rank      orders evaluated patients into a candidate list
    outputs   candidates.json, candidates.csv, the terminal summary

``pipeline.screen`` wires the stages together; ``cli`` is the command line.
"""

__version__ = "0.1.0"
