"""The coordinators' workbench: a web service over the state's runs and decisions.

Rule: the web service reads what screens recorded and appends decisions and follow-up
records through :class:`fhir_cohort.state.State` only; it never runs a screen. Nothing
is shown before sign-in, and every page that shows a patient is audited.
"""
