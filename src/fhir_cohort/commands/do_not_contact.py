"""``fhir-cohort do-not-contact``: patients who opted out of research contact.

Rule: the list is append-only records in the state, shared with the workbench: ``add``
puts a patient on it with the reason (required), ``remove`` takes them off with a new
record (the history is kept), ``list`` prints who is on it now. A patient on the list is
on no worklist; their page shows the reason.
"""

from __future__ import annotations

import argparse

from ..errors import Exit, UsageError
from ..state import State, default_state_dir
from ..text import printable
from .review import login_name


def run(args: argparse.Namespace) -> int:
    with State(args.state or default_state_dir()) as state:
        if args.action == "list":
            entries = state.do_not_contact().values()
            if not entries:
                print("nobody is on the do-not-contact list")
            for entry in entries:
                print(printable(f"{entry.patient}  {entry.reason}  ({entry.by}, {entry.at})"))
            return Exit.OK
        if not args.patient:
            raise UsageError(f"do-not-contact {args.action} needs PATIENT_ID")
        if args.action == "add" and not args.reason.strip():
            raise UsageError("say why with --reason (staff who look the patient up see it)")
        by = args.by or login_name()
        state.set_do_not_contact(args.patient, args.action == "add", args.reason.strip(), by)
    where = "on" if args.action == "add" else "off"
    print(printable(f"{args.patient} is {where} the do-not-contact list"))
    return Exit.OK
