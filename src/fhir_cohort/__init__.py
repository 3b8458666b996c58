"""fhir-cohort: pre-screen FHIR R4 records for clinical-trial eligibility.

The package is a one-way pipeline; each layer only imports from the layers
listed before it:

    errors, quality, private_files, text
              the bottom: exit-code errors, data-quality notes, owner-only
              files, outside text made safe to print
    transport HTTP to a FHIR server (client, authentication), used by sources
    sources   where resources come from (files, REST search, Bulk export) and
              the server plan a trial asks for
    store     groups a stream of resources by patient on disk (bounded memory)
    normalise FHIR JSON -> clinical facts with provenance (no trial knowledge)
    criteria  the trial definition (data, from ``queries/``) and a pure,
              per-patient evaluator: facts + as-of date -> result
    rank      orders evaluated patients into a candidate list
    pipeline  one run: sources -> store -> normalise -> evaluate -> rank
    changes   what changed since the previous run (pure)
    outputs   candidates.json/.csv, report.html, group.json, the terminal
    state     the run history and review decisions
    commands  one module per sub-command, wiring the layers for one job
    cli       arguments and exit codes
"""

__version__ = "0.1.0"
