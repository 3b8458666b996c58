"""Transport: talking HTTP to a live FHIR server safely (client, authentication).

Rule: everything that crosses the network goes through
:class:`~fhir_cohort.transport.client.FhirClient`: timeouts on every request,
bounded retries, errors turned into one-line explanations, credentials sent
only to the origin they were configured for and never written anywhere.
Only the REST and Bulk sources (``fhir_cohort.sources``) and the commands
that set them up use it.
"""
