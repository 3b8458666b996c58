"""group.json: the listed candidates as a FHIR R4 ``Group``, for other tools.

Rule: the Group holds references only (no names), one member per listed
candidate (eligible, in washout or in need of review), in the one fixed shape
built here from values that are valid where they stand (a FHIR id, a code, a
count); the tests validate what it writes with fhir.resources' R4B model, which
the screen does not import on every run (0.4 s of start-up). Its id is stable per
trial (``fhir-cohort-<trial>``), so ``--publish-group`` updates one Group on
the server (a PUT) rather than adding one a night.
"""

from __future__ import annotations

import orjson

from .. import __version__
from ..changes import LISTED
from ..listing import headers
from ..pipeline import Screening

STATUS_EXTENSION = "https://github.com/fhir-cohort/fhir-cohort/StructureDefinition/screen-status"


def group_id(trial_id: str) -> str:
    """The Group's stable id: FHIR ids allow letters, digits, '-' and '.', up to 64.

    >>> group_id("misle"), group_id("My Trial_2")
    ('fhir-cohort-misle', 'fhir-cohort-my-trial-2')
    """
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in trial_id.lower())
    return f"fhir-cohort-{safe}"[:64]


def build_group(screening: Screening) -> dict:
    """The listed candidates of one screen as an R4 Group."""
    trial = screening.trial
    members = [
        {
            "extension": [{"url": STATUS_EXTENSION, "valueCode": c.status}],
            "entity": {"reference": f"Patient/{c.patient}"},
        }
        for c in headers(screening.candidates)
        if c.status in LISTED
    ]
    group: dict = {
        "resourceType": "Group",
        "id": group_id(trial.id),
        "type": "person",
        "actual": True,
        "name": f"{trial.title}: pre-screen candidates as of {screening.as_of.isoformat()} "
        f"(fhir-cohort {__version__}, trial definition {trial.version})",
        "quantity": len(members),
    }
    if members:  # FHIR has no empty arrays
        group["member"] = members
    return group


def group_json(group: dict) -> bytes:
    return orjson.dumps(group, option=orjson.OPT_INDENT_2)
