"""Command-line plumbing shared by the commands: context, prompts, parser helpers.

Part of the command-line layer with ``cli``, ``cli_state`` and ``cli_sandbox``:
the only modules that write to the terminal or choose exit codes.
"""

from __future__ import annotations

import argparse
import logging
import os
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from reconciler import render
from reconciler.errors import ReconcilerError

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
        stdin: IO[str],
    ) -> None:
        self.args, self.stdout, self.stderr, self.env = args, stdout, stderr, env
        self.stdin = stdin

    @property
    def color(self) -> bool:
        return "NO_COLOR" not in self.env and isatty(self.stdout)

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


def isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(ctx: Context, question: str, without_terminal: str) -> None:
    """Ask for 'yes' on a terminal; refuse to guess when nobody can answer."""
    if not isatty(ctx.stdin):
        raise ReconcilerError(without_terminal)
    ctx.err(f"{question} Only 'yes' is accepted.")
    ctx.stderr.write("  Enter a value: ")
    ctx.stderr.flush()
    if ctx.stdin.readline().strip() != "yes":
        raise ReconcilerError("cancelled: nothing was changed")


def step_summary(ctx: Context, render_markdown: Callable[[int], str]) -> None:
    """Append a markdown summary to $GITHUB_STEP_SUMMARY when CI provides one."""
    path = ctx.env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    try:
        used = os.path.getsize(path) if os.path.exists(path) else 0
        room = render.STEP_SUMMARY_LIMIT - used
        if room < 256:
            log.warning("the step summary %s is full; nothing appended", path)
            return
        with open(path, "a", encoding="utf-8") as summary:
            summary.write(render_markdown(room))
    except OSError as exc:
        log.warning("cannot write the step summary %s: %s", path, exc.strerror)


# --- parser ----------------------------------------------------------------

Command = Callable[[Context], int]


def examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def add_common_options(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more to stderr (-vv: debug)"
    )


def add_selection_options(parser: argparse.ArgumentParser) -> None:
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


def add_command(
    subparsers: Any, name: str, func: Command, help: str, description: str, *usage: str
) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(
        name,
        help=help,
        description=textwrap.dedent(description).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(*usage),
    )
    sub.set_defaults(func=func)
    add_common_options(sub)
    return sub


def add_group(subparsers: Any, name: str, help: str, description: str, *usage: str) -> Any:
    group = subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(*usage),
    )
    children = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    children.required = True
    return children


def add_lock_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's state lock (default: 0, fail at once)",
    )
