"""Outputs: candidates.json and .csv, report.html, group.json, the terminal.

Rule: outputs only format a finished :class:`~fhir_cohort.pipeline.Screening`
(and the changes since the previous run); they never decide anything. The
files are written owner-only through :mod:`fhir_cohort.private_files`.
"""
