"""The command line: argparse, exit codes and where output goes. No logic.

Data goes to stdout, logs and progress to stderr. Every ReconcilerError
becomes one message and exit 1; nothing below this module prints or exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from reconciler import __version__, engine, render
from reconciler.errors import PlanRefused, ReconcilerError
from reconciler.spec import SCHEMA

EXIT_OK, EXIT_ERROR, EXIT_CHANGES, EXIT_INTERRUPTED = 0, 1, 2, 130

log = logging.getLogger("reconciler")


class Context:
    """What a command needs from the outside world, injectable for tests."""

    def __init__(
        self,
        args: argparse.Namespace,
        stdout: IO[str],
        stderr: IO[str],
        env: dict[str, str],
    ) -> None:
        self.args, self.stdout, self.stderr, self.env = args, stdout, stderr, env

    @property
    def color(self) -> bool:
        return "NO_COLOR" not in self.env and _isatty(self.stdout)

    def out(self, text: str) -> None:
        self.stdout.write(text)
        self.stdout.flush()

    def err(self, text: str) -> None:
        self.stderr.write(text if text.endswith("\n") else text + "\n")
        self.stderr.flush()

    @property
    def state_dir(self) -> Path:
        return Path(self.args.state or self.env.get("RECONCILER_STATE") or "state")

    @property
    def specs(self) -> Path:
        return Path(self.args.specs)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- commands --------------------------------------------------------------


def cmd_validate(ctx: Context) -> int:
    workspace = engine.load(ctx.specs)
    files, lists = len(workspace.files), len(workspace.lists)
    ctx.out(
        f"Valid: {files} spec file{'s' if files != 1 else ''}, "
        f"{len(workspace.destinations)} destination(s), {lists} list{'s' if lists != 1 else ''}.\n"
    )
    return EXIT_OK


def cmd_plan(ctx: Context) -> int:
    args = ctx.args
    everything = engine.load(ctx.specs)
    workspace = engine.select(everything, args.target, args.exclude)
    store = engine.open_state(ctx.state_dir, create=False)
    try:
        plan = engine.build_plan(
            workspace,
            store,
            allow_mass_removal=args.allow_mass_removal,
            retry_rejected=args.retry_rejected,
            all_lists=everything,
        )
    finally:
        if store is not None:
            store.close()
    ctx.out(render.render_plan(plan, args.format, show_ids=args.show_ids, color=ctx.color))
    if plan.refused:
        raise PlanRefused(plan.refused)
    if args.detailed_exitcode and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_schema(ctx: Context) -> int:
    ctx.out(json.dumps(SCHEMA, indent=2) + "\n")
    return EXIT_OK


# --- parser ----------------------------------------------------------------

Command = Callable[[Context], int]


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--specs",
        default="specs",
        metavar="PATH",
        help="spec directory or file (default: specs)",
    )
    parser.add_argument(
        "--state",
        default=None,
        metavar="DIR",
        help="state directory (default: $RECONCILER_STATE or state)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more to stderr")


def _selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="LIST",
        help="only this list (repeatable; name or destination/name)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="LIST",
        help="leave this list out (repeatable)",
    )
    parser.add_argument(
        "--allow-mass-removal",
        action="store_true",
        help="accept removals over a list's max_removal and emptied lists",
    )
    parser.add_argument(
        "--retry-rejected",
        action="store_true",
        help="send again ids Infobip rejected before",
    )
    parser.add_argument(
        "--show-ids", action="store_true", help="show ids unmasked (emails are masked by default)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keep Infobip audience lists equal to Amplitude cohorts: plan, review, apply.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(
            "reconciler validate",
            "reconciler plan --format markdown",
            "reconciler apply --auto-approve",
        ),
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def add(name: str, func: Command, help: str, description: str, *examples: str):
        sub = commands.add_parser(
            name,
            help=help,
            description=textwrap.dedent(description).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=_examples(*examples),
        )
        sub.set_defaults(func=func)
        _common(sub)
        return sub

    add(
        "validate",
        cmd_validate,
        "check the specs (no state, no network)",
        """
        Check every spec file: structure, destinations, cohort paths, names.
        Reports every problem at once as file:line:column, then exits 1.
        """,
        "reconciler validate",
        "reconciler validate --specs specs/prod.yaml",
    )

    plan = add(
        "plan",
        cmd_plan,
        "show what an apply would change (offline)",
        """
        Diff the cohorts named by the specs against the state and show the
        create/add/remove requests an apply would send. Offline: no network
        and no credentials, so pull requests from forks can plan.
        """,
        "reconciler plan",
        'reconciler plan --format markdown >> "$GITHUB_STEP_SUMMARY"',
        "reconciler plan --format json --detailed-exitcode",
    )
    plan.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help="default: text"
    )
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there are no changes, 2 when there are, 1 on error",
    )
    _selection(plan)

    add(
        "schema",
        cmd_schema,
        "print the JSON Schema of the spec format",
        """
        Print the JSON Schema (draft 2020-12) of spec files, for editors
        such as VS Code's YAML extension.
        """,
        "reconciler schema > reconciler.schema.json",
    )
    return parser


# --- entry points ----------------------------------------------------------


def main(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
    env: dict[str, str] | None = None,
) -> int:
    """Run one command; return its exit code. Never raises for user errors."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    env = dict(os.environ if env is None else env)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse says 2)
        return EXIT_OK if exc.code in (0, None) else EXIT_ERROR
    ctx = Context(args, stdout, stderr, env)
    _configure_logging(stderr, verbose=args.verbose)
    try:
        return args.func(ctx)
    except ReconcilerError as exc:
        ctx.err(f"Error: {exc}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        ctx.err("Interrupted.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_ERROR


def _configure_logging(stream: IO[str], *, verbose: bool) -> None:
    root = logging.getLogger("reconciler")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbose else logging.WARNING)
    root.propagate = False


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())
