"""Normalise: FHIR R4 JSON (plain dicts) -> clinical facts with provenance.

Rule of this layer: it knows FHIR and clinical units, never a trial. It turns a
resource into a typed fact (code, value, unit, date, status, source reference)
and applies the rules page's "evidence that counts" rules that hold for every
trial (verification and observation status, date fallbacks, medication
exposure intervals). It never decides whether a patient qualifies.
"""
