"""Elements: FHIR R4 element types, read strictly, each problem noted with its path.

Rule: a value is read only if it has the type FHIR R4 gives its element (a
JSON string for a code, an object for a CodeableConcept, a date matching the
FHIR regular expression and the calendar, a code from its required value
set); anything else is *unreadable* and is noted as ``"<path> <value> <why>"``
(``"status 'garbage' is not a FHIR code"``), never guessed at and never
raised. :class:`Reading` collects the problems of one resource as its elements
are read, so only the elements the tool reads are checked: a record whose
reading is certain but irrelevant costs nothing.
"""

from __future__ import annotations

import re
from datetime import date
from functools import lru_cache

import orjson

from .codes import Code, codes_from

# The FHIR R4 regular expressions (datatypes.html), anchored: a partial date
# (YYYY, YYYY-MM) is valid; "2026-5-21", "99999-01-01" and a time without a
# zone are not.
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_ZONE = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_MONTH, _DAY = r"(0[1-9]|1[0-2])", r"(0[1-9]|[1-2][0-9]|3[0-1])"
GRAMMARS = {
    "date": re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY})?)?"),
    "dateTime": re.compile(rf"{_YEAR}(-{_MONTH}(-{_DAY}(T{_TIME}{_ZONE})?)?)?"),
    "instant": re.compile(rf"{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_ZONE}"),
}

# Required bindings the tool reads (R4 value sets); a code outside them is unreadable.
OBSERVATION_STATUS = frozenset(
    {"registered", "preliminary", "final", "amended", "corrected", "cancelled"}
    | {"entered-in-error", "unknown"}
)
FAMILY_HISTORY_STATUS = frozenset({"partial", "completed", "entered-in-error", "health-unknown"})
PROCEDURE_STATUS = frozenset(
    {"preparation", "in-progress", "not-done", "on-hold", "stopped", "completed"}
    | {"entered-in-error", "unknown"}
)
CLINICAL_STATUS = frozenset(
    {"active", "recurrence", "relapse", "inactive", "remission", "resolved"}
)
VERIFICATION_STATUS = frozenset(
    {"unconfirmed", "provisional", "differential", "confirmed", "refuted", "entered-in-error"}
)
CLINICAL_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
MEDICATION_STATUS = {
    "MedicationAdministration": frozenset(
        {"in-progress", "not-done", "on-hold", "completed", "entered-in-error", "stopped"}
        | {"unknown"}
    ),
    "MedicationStatement": frozenset(
        {"active", "completed", "entered-in-error", "intended", "stopped", "on-hold"}
        | {"unknown", "not-taken"}
    ),
    "MedicationRequest": frozenset(
        {"active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped"}
        | {"draft", "unknown"}
    ),
}
REQUEST_INTENT = frozenset(
    {"proposal", "plan", "order", "original-order", "reflex-order", "filler-order"}
    | {"instance-order", "option"}
)
COMPARATORS = frozenset({"<", "<=", ">=", ">"})

# Every resource type of FHIR R4 (4.0.1): a record of any other type cannot be read.
R4_RESOURCE_TYPES = frozenset(
    """Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment
    AppointmentResponse AuditEvent Basic Binary BiologicallyDerivedProduct BodyStructure
    Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication
    CommunicationRequest CompartmentDefinition Composition ConceptMap Condition Consent
    Contract Coverage CoverageEligibilityRequest CoverageEligibilityResponse DetectedIssue
    Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement DiagnosticReport
    DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint
    EnrollmentRequest EnrollmentResponse EpisodeOfCare EventDefinition Evidence
    EvidenceVariable ExampleScenario ExplanationOfBenefit FamilyMemberHistory Flag Goal
    GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
    ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan
    Invoice Library Linkage List Location Measure MeasureReport Media Medication
    MedicationAdministration MedicationDispense MedicationKnowledge MedicationRequest
    MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
    MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged
    MedicinalProductPharmaceutical MedicinalProductUndesirableEffect MessageDefinition
    MessageHeader MolecularSequence NamingSystem NutritionOrder Observation
    ObservationDefinition OperationDefinition OperationOutcome Organization
    OrganizationAffiliation Parameters Patient PaymentNotice PaymentReconciliation Person
    PlanDefinition Practitioner PractitionerRole Procedure Provenance Questionnaire
    QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition
    ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment
    RiskEvidenceSynthesis Schedule SearchParameter ServiceRequest Slot Specimen
    SpecimenDefinition StructureDefinition StructureMap Subscription Substance
    SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
    SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task
    TerminologyCapabilities TestReport TestScript ValueSet VerificationResult
    VisionPrescription""".split()  # noqa: SIM905 (one name per word reads better here)
)

_SHOWN = 40  # characters of a bad value quoted in a note


class _Null:
    """A JSON null where FHIR has a value (FHIR JSON has no nulls): read as a value of the
    wrong type, never as an element that is absent."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "null"


NULL = _Null()


def _marked(value: object) -> object:
    if type(value) is dict:
        return {k: NULL if v is None else _marked(v) for k, v in value.items()}
    if type(value) is list:
        return [NULL if v is None else _marked(v) for v in value]
    return value


def nulls_marked(resource: dict | bytes) -> dict:
    """``resource`` with each JSON null replaced by :data:`NULL` (a copy, and only when it
    holds one), so a getter tells ``"status": null`` from a missing status. Given as JSON
    bytes, it is parsed, and the bytes tell whether it holds a null (a JSON null is the
    text ``null`` in any JSON that holds one), rather than the parsed value written again.

    >>> nulls_marked({"status": None, "code": {"coding": [None]}})
    {'status': null, 'code': {'coding': [null]}}
    >>> r = {"status": "final"}; nulls_marked(r) is r
    True
    >>> nulls_marked(b'{"status": null}'), nulls_marked(b'{"status": "annulled"}')
    ({'status': null}, {'status': 'annulled'})
    """
    if type(resource) is bytes:
        raw, resource = resource, orjson.loads(resource)
    else:
        raw = orjson.dumps(resource)
    if b"null" not in raw:
        return resource  # type: ignore[return-value]
    return _marked(resource)  # type: ignore[return-value]


def show(value: object) -> str:
    """A bad value as a note quotes it: strings in single quotes, the rest as JSON, short.

    >>> show("garbage"), show(["55464009"]), show(True), show("x" * 50)[-4:]
    ("'garbage'", '["55464009"]', 'true', "xx…'")
    """
    if isinstance(value, str):
        return f"'{value[:_SHOWN]}{'…' if len(value) > _SHOWN else ''}'"
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS, default=lambda v: None).decode()
    return text[:_SHOWN] + ("…" if len(text) > _SHOWN else "")


def fhir_date(text: object, grammar: str = "dateTime") -> date | None:
    """The calendar day of a valid FHIR date, dateTime or instant (a partial date: its
    first day); None for anything else, including real-looking impossible days.

    >>> fhir_date("2026-06-30T23:30:00-05:00"), fhir_date("1990-05"), fhir_date("1990")
    (datetime.date(2026, 6, 30), datetime.date(1990, 5, 1), datetime.date(1990, 1, 1))
    >>> [fhir_date(t) for t in ("2026-5-21", "99999-01-01", "2026-02-30", "0000-01-01")]
    [None, None, None, None]
    >>> fhir_date("2026-06-01T10:00:00"), fhir_date("2026-06-01", "instant")
    (None, None)
    """
    return _day(text, grammar) if type(text) is str else None


@lru_cache(maxsize=4096)
def _day(text: str, grammar: str) -> date | None:
    """:func:`fhir_date` of a string, remembered: the results of one panel, drawn at one
    time, carry one timestamp, and reading it took a tenth of normalising a record."""
    if not GRAMMARS[grammar].fullmatch(text):
        return None
    try:
        return date(int(text[:4]), int(text[5:7] or 1), int(text[8:10] or 1))
    except ValueError:
        return None


class Reading:
    """One resource being read: typed access to its elements, each problem noted.

    Every getter returns None for an element that is absent *or* unreadable; an
    unreadable one is added to ``problems`` as ``"<path> <value> <why>"``.
    """

    __slots__ = ("problems", "resource")

    def __init__(self, resource: dict):
        self.resource = resource
        self.problems: list[str] = []

    def bad(self, path: str, value: object, why: str) -> None:
        self.problems.append(f"{path} {show(value)} {why}")

    def missing(self, path: str) -> None:
        self.problems.append(f"{path} is missing (FHIR requires it)")

    def at(self, path: str) -> object:
        """The value at a dotted path through objects (None if absent or unreachable)."""
        value: object = self.resource
        walked = ""
        for part in path.split("."):
            if value is None:
                break
            if type(value) is not dict:
                self.bad(walked, value, "is not a JSON object")
                return None
            value = value.get(part)
            walked = f"{walked}.{part}" if walked else part
        return value

    def string(self, value: object, path: str) -> str | None:
        if value is None or type(value) is str:
            return value
        self.bad(path, value, "is not a string")
        return None

    def boolean(self, value: object, path: str) -> bool | None:
        if value is None or type(value) is bool:
            return value
        self.bad(path, value, "is not true or false")
        return None

    def code(self, value: object, path: str, allowed: frozenset[str]) -> str | None:
        """A code from a required value set."""
        if value is None:
            return None
        if type(value) is str and value in allowed:
            return value
        self.bad(path, value, "is not a FHIR code" if type(value) is str else "is not a string")
        return None

    def date(self, value: object, path: str, grammar: str = "dateTime") -> date | None:
        if value is None:
            return None
        found = fhir_date(value, grammar)
        if found is None:
            self.bad(path, value, f"is not a FHIR {grammar}")
        return found

    def array(self, value: object, path: str) -> list:
        """A JSON array ([] when absent or not an array)."""
        if value is None:
            return []
        if type(value) is list:
            return value
        self.bad(path, value, "is not a JSON array")
        return []

    def concept(self, value: object, path: str) -> tuple[tuple[Code, ...], str | None]:
        """A CodeableConcept's canonical codings and its text (text, else first display).

        Any element of it that is not of its FHIR type is a problem: the concept
        then cannot be read for certain (the caller's record is doubtful).
        """
        if value is None:
            return (), None
        if type(value) is not dict:
            self.bad(path, value, "is not a JSON object (a CodeableConcept)")
            return (), None
        text = self.string(value.get("text"), f"{path}.text")
        parts = []
        for index, coding in enumerate(self.array(value.get("coding"), f"{path}.coding")):
            where = f"{path}.coding[{index}]"
            if type(coding) is not dict:
                self.bad(where, coding, "is not a JSON object (a Coding)")
                continue
            system = self.string(coding.get("system"), f"{where}.system")
            code = self.string(coding.get("code"), f"{where}.code")
            display = self.string(coding.get("display"), f"{where}.display")
            parts.append((system, code, display))
        codes = codes_from(parts)
        if text is not None and text.strip():
            return codes, text.strip()
        return codes, next((d for _, _, d in parts if d), None)

    def number(self, value: object, path: str) -> float | None:
        if value is None:
            return None
        if type(value) in (int, float):
            return float(value)  # type: ignore[arg-type]
        self.bad(path, value, "is not a JSON number")
        return None

    def dict_at(self, value: object, path: str) -> dict:
        """A JSON object ({} when absent or not an object)."""
        if value is None:
            return {}
        if type(value) is dict:
            return value
        self.bad(path, value, "is not a JSON object")
        return {}
