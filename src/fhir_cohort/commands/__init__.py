"""Commands: what each ``fhir-cohort`` sub-command does, one module each.

Rule: a command wires the stages below it (sources, engines, outputs, state)
for one user-facing job and reports in one-line messages with the documented
exit codes; ``fhir_cohort.cli`` only parses arguments and dispatches here.
"""
