"""Server: talking to a live FHIR server safely (client, authentication, probe, seed).

Rule: everything that crosses the network goes through
:class:`~fhir_cohort.server.client.FhirClient`: timeouts on every request,
bounded retries, errors turned into one-line explanations, credentials sent
only to the origin they were configured for and never written anywhere.
The REST and Bulk sources (``fhir_cohort.sources``) are built on it.
"""
