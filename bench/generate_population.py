"""Generate a synthetic Bulk-export-style NDJSON population for benchmarking.

Deterministic: the same ``--patients`` and ``--seed`` always give byte-identical
files. Volumes per patient follow a general hospital population: one Patient,
~15 Conditions, ~300 Observations (vital signs, chemistry and a CBC), ~20
MedicationRequests and ~20 Procedures. About 1 % of patients are lupus patients
whose records carry the evidence the MiSLE trial reads (SLE diagnosis, ANA
titer, anti-dsDNA, low C3, 24-h urine protein on two days, low leukocytes).

    python bench/generate_population.py --patients 10000 --out bench/data/pop-10000

Files: Patient.000.ndjson, Condition.000.ndjson, Observation.NNN.ndjson (at
most --max-lines lines each), MedicationRequest.000.ndjson,
Procedure.000.ndjson, plus a hidden ``.population.json`` describing the run
(hidden files are skipped by FileSource, so it is not read as data).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import orjson

AS_OF = date(2026, 6, 30)
HISTORY_START = date(2014, 1, 1)
SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
UCUM = "http://unitsofmeasure.org"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"

# Common non-lupus conditions (SNOMED CT), with relative weights.
CONDITIONS = [
    ("38341003", "Hypertensive disorder, systemic arterial", 10),
    ("44054006", "Diabetes mellitus type 2", 6),
    ("55822004", "Hyperlipidemia", 8),
    ("195967001", "Asthma", 4),
    ("13645005", "Chronic obstructive lung disease", 2),
    ("35489007", "Depressive disorder", 5),
    ("197480006", "Anxiety disorder", 4),
    ("40055000", "Chronic sinusitis", 3),
    ("444814009", "Viral sinusitis", 6),
    ("195662009", "Acute viral pharyngitis", 6),
    ("10509002", "Acute bronchitis", 5),
    ("68496003", "Polyp of colon", 2),
    ("271737000", "Anemia", 3),
    ("162864005", "Body mass index 30+ - obesity", 5),
    ("59621000", "Essential hypertension", 4),
    ("49436004", "Atrial fibrillation", 2),
    ("53741008", "Coronary arteriosclerosis", 2),
    ("431855005", "Chronic kidney disease stage 1", 1),
    ("433144002", "Chronic kidney disease stage 3", 1),
    ("73430006", "Sleep apnea", 2),
    ("235595009", "Gastroesophageal reflux disease", 4),
    ("396275006", "Osteoarthritis", 4),
    ("161891005", "Backache", 5),
    ("25064002", "Headache", 4),
    ("40930008", "Hypothyroidism", 3),
    ("68566005", "Urinary tract infectious disease", 4),
    ("65363002", "Otitis media", 3),
    ("43878008", "Streptococcal sore throat", 2),
    ("233678006", "Childhood asthma", 1),
    ("302870006", "Hypertriglyceridemia", 2),
    ("15777000", "Prediabetes", 4),
    ("714628002", "Prediabetes", 1),
    ("72892002", "Normal pregnancy", 2),
    ("19169002", "Miscarriage in first trimester", 1),
    ("284551006", "Laceration of foot", 2),
    ("283371005", "Laceration of forearm", 2),
    ("44465007", "Sprain of ankle", 3),
    ("62106007", "Concussion with no loss of consciousness", 1),
    ("36971009", "Sinusitis", 3),
    ("230690007", "Cerebrovascular accident", 1),
]

# Observations: (code, display, unit, mean, sd, ref_low, ref_high, decimals)
VITALS = [
    ("8867-4", "Heart rate", "/min", 74, 10, 60, 100, 0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 124, 14, 90, 130, 0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 79, 9, 60, 80, 0),
    ("9279-1", "Respiratory rate", "/min", 15, 2, 12, 20, 0),
    ("8310-5", "Body temperature", "Cel", 36.8, 0.35, 36.1, 37.2, 1),
    ("29463-7", "Body weight", "kg", 78, 16, None, None, 1),
    ("8302-2", "Body height", "cm", 169, 10, None, None, 1),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 27, 5, 18.5, 25, 1),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 97, 1.5, 95, 100, 0),
    ("72514-3", "Pain severity - 0-10 verbal numeric rating", "{score}", 2, 2, None, None, 0),
]
CHEMISTRY = [
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 100, 22, 70, 99, 0),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.95, 0.2, 0.6, 1.2, 2),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "mg/dL", 15, 4, 7, 20, 0),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 140, 2.5, 136, 145, 0),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 4.2, 0.35, 3.5, 5.1, 1),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma", "mmol/L", 102, 3, 98, 107, 0),
    (
        "2028-9",
        "Carbon dioxide, total [Moles/volume] in Serum or Plasma",
        "mmol/L",
        25,
        2.5,
        22,
        29,
        0,
    ),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma", "mg/dL", 9.5, 0.4, 8.6, 10.3, 1),
    (
        "1742-6",
        "Alanine aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        25,
        10,
        7,
        56,
        0,
    ),
    (
        "1920-8",
        "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or Plasma",
        "U/L",
        24,
        8,
        10,
        40,
        0,
    ),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 5.8, 0.8, 4.0, 5.6, 1),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 190, 35, 0, 200, 0),
]
CBC = [
    (
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        7.0,
        1.8,
        4.0,
        11.0,
        1,
    ),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 14, 1.4, 12, 17.5, 1),
    ("4544-3", "Hematocrit [Volume Fraction] of Blood by Automated count", "%", 42, 4, 36, 50, 1),
    ("787-2", "MCV [Entitic volume] by Automated count", "fL", 90, 5, 80, 100, 0),
    ("777-3", "Platelets [#/volume] in Blood by Automated count", "10*3/uL", 260, 55, 150, 400, 0),
    (
        "731-0",
        "Lymphocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        2.1,
        0.6,
        1.0,
        4.8,
        2,
    ),
]

MEDICATIONS = [
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("617312", "atorvastatin 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("198211", "simvastatin 40 MG Oral Tablet"),
    ("966222", "levothyroxine sodium 0.075 MG Oral Tablet"),
    ("310965", "ibuprofen 200 MG Oral Tablet"),
    ("313782", "acetaminophen 325 MG Oral Tablet"),
    ("308136", "amlodipine 2.5 MG Oral Tablet"),
    ("834061", "penicillin V potassium 250 MG Oral Tablet"),
    ("308182", "amoxicillin 250 MG Oral Capsule"),
    ("895994", "120 ACTUAT fluticasone propionate 0.044 MG/ACTUAT Metered Dose Inhaler"),
    ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("1049221", "acetaminophen 325 MG / oxycodone hydrochloride 5 MG Oral Tablet"),
    ("310798", "hydrochlorothiazide 25 MG Oral Tablet"),
    ("312961", "simvastatin 20 MG Oral Tablet"),
    ("198405", "omeprazole 20 MG Delayed Release Oral Capsule"),
    ("849574", "naproxen sodium 220 MG Oral Tablet"),
    ("1000126", "1 ML medroxyprogesterone acetate 150 MG/ML Injection"),
    ("866924", "metoprolol tartrate 25 MG Oral Tablet"),
]
LUPUS_MEDICATIONS = [
    ("979092", "hydroxychloroquine sulfate 200 MG Oral Tablet"),
    ("312617", "prednisone 5 MG Oral Tablet"),
    ("197388", "azathioprine 50 MG Oral Tablet"),
]

PROCEDURES = [
    ("430193006", "Medication reconciliation (procedure)"),
    ("710824005", "Assessment of health and social care needs (procedure)"),
    ("171207006", "Depression screening (procedure)"),
    ("454711000124102", "Depression screening using PHQ-2 (procedure)"),
    ("428211000124100", "Assessment of substance use (procedure)"),
    ("73761001", "Colonoscopy (procedure)"),
    ("274804006", "Evaluation of uterine fundal height (procedure)"),
    ("76601001", "Intramuscular injection (procedure)"),
    ("117015009", "Throat culture (procedure)"),
    ("399208008", "Plain X-ray of chest (procedure)"),
    ("24623002", "Screening mammography (procedure)"),
    ("252160004", "Standard pregnancy test (procedure)"),
    ("85548006", "Episiotomy (procedure)"),
    ("180256009", "Subcutaneous immunotherapy (procedure)"),
    ("288086009", "Suture open wound (procedure)"),
    ("127783003", "Spirometry (procedure)"),
    ("23426006", "Measurement of respiratory function (procedure)"),
    ("5880005", "Physical examination (procedure)"),
    ("418891003", "Computed tomography of chest and abdomen (procedure)"),
    ("90226004", "Cytopathology procedure, preparation of smear, genital source (procedure)"),
]

GIVEN_F = ["Maria", "Aoife", "Chen", "Fatima", "Olga", "Priya", "Emma", "Sofia", "Amara", "Lena"]
GIVEN_M = ["James", "Wei", "Omar", "Lars", "Rahul", "Noah", "Liam", "Diego", "Kofi", "Mateo"]
FAMILY = [
    "Smith",
    "Nguyen",
    "Garcia",
    "O'Brien",
    "Kowalski",
    "Haddad",
    "Okafor",
    "Tanaka",
    "Müller",
    "Rossi",
    "Johansson",
    "Patel",
    "Ivanova",
    "Silva",
    "Cohen",
    "Murphy",
]


def _cum_weights(items):
    total, out = 0, []
    for item in items:
        total += item[-1]
        out.append(total)
    return out


CONDITION_WEIGHTS = _cum_weights(CONDITIONS)


class Generator:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    # -- small helpers ------------------------------------------------------
    def uuid(self) -> str:
        h = f"{self.rng.getrandbits(128):032x}"
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"

    def day(self, start: date, end: date) -> date:
        return start + timedelta(days=self.rng.randrange(max(1, (end - start).days + 1)))

    def stamp(self, d: date) -> str:
        rng = self.rng
        return f"{d.isoformat()}T{rng.randrange(7, 19):02d}:{rng.randrange(60):02d}:00Z"

    def updated(self, d: date) -> str:
        lag = self.rng.randrange(0, 3)
        return (
            datetime.combine(d, datetime.min.time(), timezone.utc)
            + timedelta(days=lag, seconds=self.rng.randrange(86400))
        ).strftime("%Y-%m-%dT%H:%M:%S.000+00:00")

    @staticmethod
    def quantity(value, unit):
        return {"value": value, "unit": unit, "system": UCUM, "code": unit}

    # -- resources ----------------------------------------------------------
    def patient(self, pid: str, birth: date, gender: str) -> dict:
        rng = self.rng
        given = rng.choice(GIVEN_F if gender == "female" else GIVEN_M)
        return {
            "resourceType": "Patient",
            "id": pid,
            "meta": {"lastUpdated": self.updated(AS_OF - timedelta(days=rng.randrange(400)))},
            "identifier": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                "code": "MR",
                                "display": "Medical Record Number",
                            }
                        ]
                    },
                    "system": "http://hospital.example.org/mrn",
                    "value": f"MRN{rng.randrange(10**7, 10**8)}",
                },
            ],
            "name": [{"use": "official", "family": rng.choice(FAMILY), "given": [given]}],
            "telecom": [
                {"system": "phone", "value": f"555-{rng.randrange(1000, 9999)}", "use": "home"}
            ],
            "gender": gender,
            "birthDate": birth.isoformat(),
            "address": [
                {
                    "line": [f"{rng.randrange(1, 999)} Main Street"],
                    "city": "Springfield",
                    "state": "MA",
                    "postalCode": f"0{rng.randrange(1000, 2999)}",
                    "country": "US",
                }
            ],
            "maritalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        "code": rng.choice("MSWD"),
                    }
                ]
            },
        }

    def condition(self, pid, enc, code, display, onset: date, active: bool) -> dict:
        rng = self.rng
        resource = {
            "resourceType": "Condition",
            "id": self.uuid(),
            "meta": {"lastUpdated": self.updated(onset)},
            "clinicalStatus": {
                "coding": [{"system": CLINICAL, "code": "active" if active else "resolved"}]
            },
            "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
            "category": [
                {
                    "coding": [
                        {
                            "system": COND_CATEGORY,
                            "code": "problem-list-item" if active else "encounter-diagnosis",
                            "display": "Problem List Item" if active else "Encounter Diagnosis",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": SNOMED, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc}"},
            "onsetDateTime": self.stamp(onset),
            "recordedDate": self.stamp(onset),
        }
        if not active:
            resource["abatementDateTime"] = self.stamp(
                min(AS_OF, onset + timedelta(days=rng.randrange(5, 60)))
            )
        return resource

    def observation(
        self,
        pid,
        enc,
        when: str,
        updated: str,
        category: str,
        code: str,
        display: str,
        value_field: str,
        value,
        ref: dict | None = None,
        interpretation: str | None = None,
    ) -> dict:
        resource = {
            "resourceType": "Observation",
            "id": self.uuid(),
            "meta": {"lastUpdated": updated},
            "status": "final",
            "category": [
                {
                    "coding": [
                        {
                            "system": OBS_CATEGORY,
                            "code": category,
                            "display": "Vital Signs" if category == "vital-signs" else "Laboratory",
                        }
                    ]
                }
            ],
            "code": {
                "coding": [{"system": LOINC, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc}"},
            "effectiveDateTime": when,
            "issued": when.replace("Z", ".000Z"),
            value_field: value,
        }
        if interpretation:
            resource["interpretation"] = [
                {"coding": [{"system": INTERPRETATION, "code": interpretation}]}
            ]
        if ref is not None:
            resource["referenceRange"] = [ref]
        return resource

    def measured(self, pid, enc, when, updated, category, spec, override=None) -> dict:
        code, display, unit, mean, sd, low, high, decimals = spec
        value = (
            override
            if override is not None
            else round(max(0.0, self.rng.gauss(mean, sd)), decimals)
        )
        if decimals == 0:
            value = int(value)
        ref = None
        interp = None
        if low is not None:
            ref = {"low": self.quantity(low, unit), "high": self.quantity(high, unit)}
            interp = "L" if value < low else "H" if value > high else "N"
        return self.observation(
            pid,
            enc,
            when,
            updated,
            category,
            code,
            display,
            "valueQuantity",
            self.quantity(value, unit),
            ref,
            interp,
        )

    def medication_request(self, pid, enc, code, display, when: date) -> dict:
        rng = self.rng
        stamp = self.stamp(when)
        return {
            "resourceType": "MedicationRequest",
            "id": self.uuid(),
            "meta": {"lastUpdated": self.updated(when)},
            "status": rng.choice(("active", "completed", "completed", "stopped")),
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc}"},
            "authoredOn": stamp,
            "requester": {"reference": f"Practitioner/{self.uuid()}"},
            "dosageInstruction": [
                {
                    "sequence": 1,
                    "timing": {
                        "repeat": {
                            "frequency": rng.choice((1, 2, 3)),
                            "period": 1,
                            "periodUnit": "d",
                        }
                    },
                    "asNeededBoolean": False,
                    "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}],
                }
            ],
        }

    def procedure(self, pid, enc, code, display, when: date) -> dict:
        start = self.stamp(when)
        return {
            "resourceType": "Procedure",
            "id": self.uuid(),
            "meta": {"lastUpdated": self.updated(when)},
            "status": "completed",
            "code": {
                "coding": [{"system": SNOMED, "code": code, "display": display}],
                "text": display,
            },
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{enc}"},
            "performedPeriod": {"start": start, "end": start.replace(":00Z", ":45Z")},
            "location": {"reference": f"Location/{self.uuid()}", "display": "Springfield Clinic"},
        }

    # -- one patient ----------------------------------------------------------
    def start_person(self, lupus: bool) -> tuple[str, date, dict[str, list[dict]]]:
        """A new patient: id, first day of history, and the output with its Patient."""
        rng = self.rng
        pid = self.uuid()
        if lupus:
            gender = "female" if rng.random() < 0.9 else "male"
            age = rng.randrange(20, 60)
        else:
            gender = rng.choice(("female", "male"))
            age = rng.randrange(0, 95)
        birth = AS_OF - timedelta(days=age * 365 + rng.randrange(365))
        out: dict[str, list[dict]] = {
            t: [] for t in ("Patient", "Condition", "Observation", "MedicationRequest", "Procedure")
        }
        out["Patient"].append(self.patient(pid, birth, gender))
        return pid, max(HISTORY_START, birth), out

    def person(self, lupus: bool) -> dict[str, list[dict]]:
        rng = self.rng
        pid, first, out = self.start_person(lupus)

        # Encounters: each has vital signs, often chemistry, sometimes a CBC.
        target = rng.randrange(240, 361)
        encounters: list[tuple[str, date]] = []
        obs = out["Observation"]
        while len(obs) < target:
            enc, d = self.uuid(), self.day(first, AS_OF)
            encounters.append((enc, d))
            when, updated = self.stamp(d), self.updated(d)
            for spec in VITALS:
                obs.append(self.measured(pid, enc, when, updated, "vital-signs", spec))
            if rng.random() < 0.7:
                for spec in CHEMISTRY:
                    obs.append(self.measured(pid, enc, when, updated, "laboratory", spec))
            if rng.random() < 0.45:
                for spec in CBC:
                    override = None
                    if lupus and spec[0] == "6690-2":
                        override = round(rng.uniform(2.8, 3.9), 1)
                    obs.append(self.measured(pid, enc, when, updated, "laboratory", spec, override))

        def encounter():
            return rng.choice(encounters)

        for _ in range(rng.randrange(10, 21)):
            code, display, _w = rng.choices(CONDITIONS, cum_weights=CONDITION_WEIGHTS)[0]
            enc, d = encounter()
            out["Condition"].append(self.condition(pid, enc, code, display, d, rng.random() < 0.5))
        for _ in range(rng.randrange(14, 27)):
            code, display = rng.choice(MEDICATIONS)
            enc, d = encounter()
            out["MedicationRequest"].append(self.medication_request(pid, enc, code, display, d))
        for _ in range(rng.randrange(14, 27)):
            code, display = rng.choice(PROCEDURES)
            enc, d = encounter()
            out["Procedure"].append(self.procedure(pid, enc, code, display, d))

        if lupus:
            self.lupus_evidence(pid, first, out)
        return out

    def lupus_evidence(self, pid: str, first: date, out: dict[str, list[dict]]) -> None:
        rng = self.rng
        recent = rng.random() < 0.7  # activity labs inside the 90-day window
        diagnosed = self.day(first, AS_OF - timedelta(days=365))
        enc = self.uuid()
        out["Condition"].append(
            self.condition(pid, enc, "55464009", "Systemic lupus erythematosus", diagnosed, True)
        )
        if rng.random() < 0.5:
            out["Condition"].append(
                self.condition(pid, enc, "3723001", "Arthritis", diagnosed, True)
            )
        lab_days = (
            [
                AS_OF - timedelta(days=rng.randrange(5, 40)),
                AS_OF - timedelta(days=rng.randrange(45, 88)),
            ]
            if recent
            else [
                AS_OF - timedelta(days=rng.randrange(120, 300)),
                AS_OF - timedelta(days=rng.randrange(310, 700)),
            ]
        )
        obs = out["Observation"]
        d0 = lab_days[0]
        when, updated = self.stamp(d0), self.updated(d0)
        obs.append(
            self.observation(
                pid,
                enc,
                self.stamp(diagnosed),
                self.updated(diagnosed),
                "laboratory",
                "5048-4",
                "Nuclear Ab [Titer] in Serum by Immunofluorescence",
                "valueString",
                "1:160",
            )
        )
        obs.append(
            self.observation(
                pid,
                enc,
                when,
                updated,
                "laboratory",
                "5130-0",
                "DNA double strand Ab [Units/volume] in Serum",
                "valueQuantity",
                self.quantity(80, "[IU]/mL"),
                {"high": self.quantity(30, "[IU]/mL")},
                "H",
            )
        )
        obs.append(
            self.observation(
                pid,
                enc,
                when,
                updated,
                "laboratory",
                "4485-9",
                "Complement C3 [Mass/volume] in Serum or Plasma",
                "valueQuantity",
                self.quantity(70, "mg/dL"),
                {"low": self.quantity(90, "mg/dL"), "high": self.quantity(180, "mg/dL")},
                "L",
            )
        )
        for d in lab_days:
            obs.append(
                self.observation(
                    pid,
                    self.uuid(),
                    self.stamp(d),
                    self.updated(d),
                    "laboratory",
                    "2889-4",
                    "Protein [Mass/time] in 24 hour Urine",
                    "valueQuantity",
                    self.quantity(0.8, "g/(24.h)"),
                    {"high": self.quantity(0.15, "g/(24.h)")},
                    "H",
                )
            )
        for code, display in LUPUS_MEDICATIONS[: rng.randrange(1, 4)]:
            out["MedicationRequest"].append(
                self.medication_request(pid, enc, code, display, self.day(diagnosed, AS_OF))
            )


class Writer:
    """One NDJSON file per type; Observation split at ``max_lines``."""

    def __init__(self, out: Path, max_lines: int):
        self.out, self.max_lines = out, max_lines
        self.files: dict[str, tuple] = {}  # type -> (handle, part, lines)
        self.counts: dict[str, int] = {}
        self.paths: list[str] = []

    def _open(self, rtype: str, part: int):
        path = self.out / f"{rtype}.{part:03d}.ndjson"
        self.paths.append(path.name)
        return path.open("wb", buffering=1 << 20)

    def write(self, rtype: str, resources: list[dict]) -> None:
        handle, part, lines = self.files.get(rtype) or (self._open(rtype, 0), 0, 0)
        for resource in resources:
            if lines >= self.max_lines:
                handle.close()
                part, lines = part + 1, 0
                handle = self._open(rtype, part)
            handle.write(orjson.dumps(resource) + b"\n")
            lines += 1
        self.files[rtype] = (handle, part, lines)
        self.counts[rtype] = self.counts.get(rtype, 0) + len(resources)

    def close(self) -> None:
        for handle, _, _ in self.files.values():
            handle.close()


def generate(
    patients: int,
    out: Path,
    seed: int = 20260630,
    lupus_rate: float = 0.01,
    max_lines: int = 500_000,
    quiet: bool = False,
) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.ndjson"):
        old.unlink()
    gen = Generator(seed)
    # Which patients have lupus: exactly round(patients * rate), spread evenly at random.
    n_lupus = max(1, round(patients * lupus_rate)) if lupus_rate > 0 else 0
    lupus_index = set(random.Random(seed + 1).sample(range(patients), n_lupus))
    writer = Writer(out, max_lines)
    started = time.perf_counter()
    for i in range(patients):
        for rtype, resources in gen.person(i in lupus_index).items():
            writer.write(rtype, resources)
        if not quiet and (i + 1) % 1000 == 0:
            rate = (i + 1) / (time.perf_counter() - started)
            print(f"  {i + 1:,}/{patients:,} patients ({rate:,.0f}/s)", file=sys.stderr)
    writer.close()
    return write_info(out, writer, started, patients=patients, lupus_patients=n_lupus, seed=seed)


def write_info(out: Path, writer, started: float, **facts) -> dict:
    """Describe a generated population in ``out/.population.json`` and return it."""
    info = {
        **facts,
        "as_of": AS_OF.isoformat(),
        "resources": dict(sorted(writer.counts.items())),
        "total_resources": sum(writer.counts.values()),
        "files": sorted(writer.paths),
        "bytes": sum((out / name).stat().st_size for name in writer.paths),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / ".population.json").write_bytes(orjson.dumps(info, option=orjson.OPT_INDENT_2))
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench/data/pop-<N>)"
    )
    parser.add_argument("--seed", type=int, default=20260630)
    parser.add_argument("--lupus-rate", type=float, default=0.01)
    parser.add_argument(
        "--max-lines", type=int, default=500_000, help="split a type's file after this many lines"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = args.out or Path(__file__).resolve().parent / "data" / f"pop-{args.patients}"
    info = generate(args.patients, out, args.seed, args.lupus_rate, args.max_lines, args.quiet)
    print(
        f"{out}: {info['patients']:,} patients ({info['lupus_patients']} lupus), "
        f"{info['total_resources']:,} resources, {info['bytes'] / 1e6:,.0f} MB, "
        f"{len(info['files'])} files, {info['seconds']} s"
    )
    for rtype, count in info["resources"].items():
        print(f"  {rtype:<18} {count:>12,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
