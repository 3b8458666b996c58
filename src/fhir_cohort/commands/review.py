"""``fhir-cohort review``: record a coordinator's decision, or list the decisions.

Rule: decisions are appended to the state's audit trail, never changed.
"""

from __future__ import annotations

import argparse
import getpass

from ..criteria.language import load
from ..errors import Exit
from ..outputs.terminal import review_lines
from ..sources import SourceError
from ..state import State, default_state_dir


def login_name() -> str:
    """The login name, for --by; a one-line error where it is unknown."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        raise SourceError("say who decided with --by NAME (the login name is unknown)") from None


def run(args: argparse.Namespace) -> int:
    trial = load(args.trial)
    with State(args.state or default_state_dir()) as state:
        if args.list:
            print("\n".join(review_lines(state.reviews(trial.id, args.patient), trial.id)))
            return Exit.OK
        if not args.patient or not args.status:
            raise SourceError("review needs PATIENT_ID and --status (or --list)")
        review = state.add_review(
            trial.id, args.patient, args.status, args.note, args.by or login_name()
        )
    print(
        f"recorded: {review.patient} {review.status} by {review.by} at {review.at}"
        + (f" ({review.note})" if review.note else "")
    )
    return Exit.OK
