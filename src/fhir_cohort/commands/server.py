"""Reading a live server for a screen: the client the options describe, REST or Bulk.

Rule: turning command-line options into an authenticated client within its limits
happens here once, so every command that reaches a server (screen, probe, seed) reads
and checks its options the same way. A secret file that group or others can read draws
a warning on stderr (not a refusal: the run still works, but the file should be
fixed). Only commands that reach a server import this module (it loads the HTTP stack
and the cryptography behind SMART).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..criteria.language import Trial
from ..criteria.plan import merged_plan
from ..errors import UsageError
from ..sources import ResourceSource, SourceError
from ..sources.bulk import BulkSource
from ..sources.plan import ServerPlan
from ..sources.rest import RestSource
from ..state import RunRecord, State
from ..transport.auth import (
    Auth,
    AuthError,
    BasicAuth,
    BearerAuth,
    NoAuth,
    SmartBackendAuth,
    exposed,
    load_private_key,
    read_secret,
)
from ..transport.client import FhirClient
from ..transport.http import Limits, MiB, Transport
from ..transport.redact import shown

BULK_MAX_WAIT = 3600.0  # --max-wait with --bulk: an export may take a while
REST_MAX_WAIT = 120.0


def server_plan(trials: list[Trial]) -> ServerPlan:
    """The trials' searches for a live server; a trial without them cannot screen one."""
    for trial in trials:
        if trial.server is None:
            raise SourceError(f"trial {trial.id!r} has no 'server' section: it says no searches")
    plans = [t.server for t in trials if t.server is not None]
    return plans[0] if len(plans) == 1 else merged_plan(plans)


def server_sources(
    args: argparse.Namespace,
    trials: list[Trial],
    state: State | None,
    previous: RunRecord | None,
    scope: str,
) -> list[ResourceSource]:
    """The server source the options ask for (Bulk or REST), incremental on ``previous``
    where the trials' searches allow it (``state`` None: a dry run, nothing kept)."""
    client = server_client(args)
    if args.bulk:
        folder = args.bulk_dir or (
            state.export_folder(scope) if state else args.out / "bulk-export"
        )

        def status(text: str) -> None:
            if not args.quiet:
                print(f"fhir-cohort: {shown(text)}", file=sys.stderr)

        return [
            BulkSource(
                client,
                server_plan(trials),
                folder,
                level=args.bulk,
                incremental=not args.full,
                type_filter=args.type_filter,
                on_status=status,
            )
        ]
    source = RestSource(client, server_plan(trials), concurrency=args.concurrency)
    if state is None or previous is None or not previous.checkpoint:
        source.pull = "full (no earlier complete run to build on)"
    elif args.full:
        source.pull = "full (asked for with --full)"
    elif previous.searches != source.searches_fingerprint():
        source.pull = "full (the trial's candidate searches changed since the last run)"
    else:
        source.since, source.known = previous.checkpoint, tuple(state.pool(previous.id))
        if len(trials) > 1:  # every trial's pool of the last run is checked again
            runs = [state.previous_run(t.id, scope) for t in trials]
            pools = [state.pool(r.id) for r in runs if r is not None]
            source.known = tuple(dict.fromkeys(p for pool in pools for p in pool))
    return [source]


def warn(message: str) -> None:
    print(f"fhir-cohort: warning: {message}", file=sys.stderr)


def _warn_if_exposed(path: str | None, what: str) -> None:
    mode = exposed(path) if path else None
    if mode is not None:
        warn(
            f"the {what} {path} can be read by group or others (mode {mode:04o}); "
            f"make it private: chmod 600 {path}"
        )


def authentication(args: argparse.Namespace, transport: Transport) -> Auth:
    for path, what in (
        (args.token_file if args.auth == "bearer" else None, "token file"),
        (args.password_file if args.auth == "basic" else None, "password file"),
        (args.private_key if args.auth == "smart" else None, "private key"),
    ):
        _warn_if_exposed(path, what)
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
            transport=transport,
        )
    return NoAuth()


def limits(args: argparse.Namespace) -> Limits:
    """The server limits the options ask for (each must be positive)."""
    values = {
        "--timeout": args.timeout,
        "--max-run-time": args.max_run_time,
        "--max-body-mb": args.max_body_mb,
        "--max-file-gb": args.max_file_gb,
        "--max-inflate-ratio": args.max_inflate_ratio,
        "--max-pages": args.max_pages,
        "--max-wait": max_wait(args),
    }
    for option, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise UsageError(f"{option} must be a number more than 0")
    if args.max_retries < 0:
        raise UsageError("--max-retries must be 0 or more")
    return Limits(
        timeout=args.timeout,
        max_run_time=args.max_run_time,
        max_body=int(args.max_body_mb * MiB),
        max_file=int(args.max_file_gb * 1024 * MiB),
        max_ratio=args.max_inflate_ratio,
        max_pages=args.max_pages,
    )


def max_wait(args: argparse.Namespace) -> float:
    """``--max-wait``, or its default: longer for a Bulk export than for REST."""
    if args.max_wait is not None:
        return args.max_wait
    return BULK_MAX_WAIT if getattr(args, "bulk", None) else REST_MAX_WAIT


def server_client(args: argparse.Namespace) -> FhirClient:
    """A client for ``--server``, authenticated and within the limits the options set."""
    if args.ca_bundle and not Path(args.ca_bundle).is_file():
        raise UsageError(f"--ca-bundle {args.ca_bundle} is not a file")
    transport = Transport(
        args.server, limits(args), verify=args.ca_bundle or True, concurrency=args.concurrency
    )
    return FhirClient(
        args.server,
        authentication(args, transport),
        transport=transport,
        max_retries=args.max_retries,
        max_wait=max_wait(args),
    )
