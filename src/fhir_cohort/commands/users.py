"""``fhir-cohort users``: the people who may sign in to the workbench (``serve``).

Rule: a password comes from standard input or from an environment variable named by
``--password-env``, never from an argument (argv is visible to every user of the
machine); it is stored only as an argon2 hash. Users are disabled, never deleted, so
the names in the audit trail always mean someone.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from ..errors import Exit, UsageError
from ..state import State, default_state_dir
from ..text import printable
from ..web.auth import hash_password, password_problem


def _password(args: argparse.Namespace) -> str:
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            raise UsageError(f"the environment variable {args.password_env} is not set")
    elif sys.stdin.isatty():
        password = getpass.getpass("new password: ")
        if getpass.getpass("again: ") != password:
            raise UsageError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    problem = password_problem(password)
    if problem:
        raise UsageError(problem)
    return password


def _name(text: str | None, action: str) -> str:
    if text is None:
        raise UsageError(f"users {action} needs NAME")
    name = text.strip()
    if not name or name != printable(name) or len(name) > 64:
        raise UsageError(f"a user name is 1 to 64 printable characters, not {text!r}")
    return name


def run(args: argparse.Namespace) -> int:
    with State(args.state or default_state_dir()) as state:
        if args.action == "list":
            users = state.users()
            if not users:
                print("no users; add one with: fhir-cohort users add NAME --role coordinator")
            for user in users:
                mark = "  (disabled)" if user.disabled else ""
                print(f"{user.name:<24} {user.role:<12} since {user.created_at}{mark}")
            return Exit.OK
        name = _name(args.name, args.action)
        if args.action == "add":
            state.add_user(name, args.role, hash_password(_password(args)))
            print(f"added {name} ({args.role})")
        elif args.action == "reset-password":
            state.change_user(name, password_hash=hash_password(_password(args)))
            print(f"new password for {name}; their open sessions are signed out")
        else:
            state.change_user(name, disabled=True)
            print(f"disabled {name}; their open sessions are signed out")
    return Exit.OK
