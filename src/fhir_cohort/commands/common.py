"""What several commands share: the bundled cohort, a server client from options, progress bars.

Rule: turning command-line options into working parts (an authenticated
client, a progress bar on stderr) happens here once, so every command reads
and checks its options the same way.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from ..criteria.trial import queries_dir
from ..transport.auth import (
    Auth,
    AuthError,
    BasicAuth,
    BearerAuth,
    NoAuth,
    SmartBackendAuth,
    load_private_key,
    read_secret,
)
from ..transport.client import FhirClient


def bundled_fixtures() -> Path:
    """The synthetic MiSLE cohort shipped with fhir-cohort (the default source)."""
    return queries_dir().parent / "fixtures" / "misle-cohort"


def progress_bars(enabled: bool) -> Callable[[str, int | None, str], Callable[[int], None]]:
    bars: list[tqdm] = []

    def start(label: str, total: int | None, unit: str) -> Callable[[int], None]:
        for bar in bars:
            bar.close()
        scale = unit == "B"
        bar = tqdm(
            total=total,
            desc=label,
            unit=unit,
            unit_scale=scale,
            leave=False,
            disable=None if enabled else True,
            file=sys.stderr,
        )
        bars.append(bar)
        return bar.update

    return start


def authentication(args: argparse.Namespace) -> Auth:
    if args.auth == "bearer":
        return BearerAuth(
            read_secret(
                args.token_env if not args.token_file else None, args.token_file, "bearer token"
            )
        )
    if args.auth == "basic":
        if not args.user:
            raise AuthError("--auth basic needs --user")
        return BasicAuth(
            args.user,
            read_secret(
                args.password_env if not args.password_file else None,
                args.password_file,
                "password",
            ),
        )
    if args.auth == "smart":
        if not args.client_id or not args.private_key:
            raise AuthError("--auth smart needs --client-id and --private-key")
        return SmartBackendAuth(
            args.server,
            args.client_id,
            load_private_key(args.private_key),
            scope=args.scope,
            key_id=args.key_id,
            token_url=args.token_url,
            verify=args.ca_bundle or True,
        )
    return NoAuth()


def server_client(args: argparse.Namespace) -> FhirClient:
    return FhirClient(
        args.server,
        authentication(args),
        timeout=(10.0, args.timeout),
        max_retries=args.max_retries,
        max_wait=args.max_wait,
        verify=args.ca_bundle or True,
        concurrency=args.concurrency,
    )
