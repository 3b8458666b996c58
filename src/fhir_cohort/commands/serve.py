"""``fhir-cohort serve``: the coordinators' workbench, served by waitress.

Rule: it binds 127.0.0.1 unless told otherwise and will not start (exit 2) while the
state has no active user: a web service over patient data is never open to anyone who
finds the port. Behind a TLS reverse proxy, ``--trusted-proxy ADDRESS`` makes waitress
believe the X-Forwarded-For/-Proto/-Host headers of requests from that address only
(one hop; from anyone else they are removed) and marks the session cookie Secure.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

from ..errors import Exit, UsageError
from ..state import State, default_state_dir


class _Proxy(TypedDict, total=False):
    """waitress's settings for one trusted proxy (none: no forwarded header is believed)."""

    trusted_proxy: str
    trusted_proxy_count: int
    trusted_proxy_headers: str


def make_server(app: Callable, host: str, port: int, trusted_proxy: str | None = None):
    """A waitress server for ``app`` (not yet running); behind ``trusted_proxy``, the
    forwarded headers of requests from that address (one hop) are believed."""
    from waitress.server import create_server

    proxy: _Proxy = (
        {
            "trusted_proxy": trusted_proxy,
            "trusted_proxy_count": 1,
            "trusted_proxy_headers": "x-forwarded-for x-forwarded-proto x-forwarded-host",
        }
        if trusted_proxy
        else {}
    )
    return create_server(app, host=host, port=port, threads=4, ident="", **proxy)


def run(args: argparse.Namespace) -> int:
    folder = args.state or default_state_dir()
    with State(folder) as state:
        if not any(not user.disabled for user in state.users()):
            raise UsageError(
                f"no one can sign in to the workbench over {folder}: add a user first "
                "(fhir-cohort users add NAME --role coordinator --state ...)"
            )
    from ..web.app import create_app

    files = tuple(Path(name) for name in args.trial or ())
    app = create_app(folder, secure=bool(args.trusted_proxy), trial_files=files)
    try:
        server = make_server(app, args.host, args.port, args.trusted_proxy)
    except (OSError, ValueError) as error:  # the port is taken, the address is not ours
        reason = getattr(error, "strerror", None) or error
        raise UsageError(f"cannot listen on {args.host}:{args.port}: {reason}") from None
    print(f"fhir-cohort workbench on http://{args.host}:{args.port}/", file=sys.stderr)
    server.run()
    return Exit.OK
