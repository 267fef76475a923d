"""The command line: argparse, exit codes and where output goes. No logic.

Data goes to stdout, logs and progress to stderr. Every ReconcilerError
becomes one message and exit 1; nothing below this module prints or exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import textwrap
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from reconciler import __version__, engine, render
from reconciler.errors import PlanRefused, ReconcilerError
from reconciler.masking import mask
from reconciler.progress import make_progress
from reconciler.sandbox import Faults, Limits, Sandbox, serve
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
        stdin: IO[str],
    ) -> None:
        self.args, self.stdout, self.stderr, self.env = args, stdout, stderr, env
        self.stdin = stdin

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


def _confirm(ctx: Context) -> None:
    """Ask for 'yes' on a terminal; refuse to guess when nobody can answer."""
    if not _isatty(ctx.stdin):
        raise ReconcilerError(
            "apply needs a 'yes' and standard input is not a terminal: review the plan "
            "above, then run 'reconciler apply --auto-approve'"
        )
    ctx.err("Apply these changes? Only 'yes' is accepted.")
    ctx.stderr.write("  Enter a value: ")
    ctx.stderr.flush()
    if ctx.stdin.readline().strip() != "yes":
        raise ReconcilerError("apply cancelled: nothing was sent")


def cmd_apply(ctx: Context) -> int:
    args = ctx.args
    everything = engine.load(ctx.specs)
    workspace = engine.select(everything, args.target, args.exclude)
    store = engine.open_state(ctx.state_dir, create=True)
    assert store is not None
    with store, store.locked(timeout=args.lock_timeout):
        plan = engine.build_plan(
            workspace,
            store,
            allow_mass_removal=args.allow_mass_removal,
            retry_rejected=args.retry_rejected,
            all_lists=everything,
        )
        if args.format == "text":
            ctx.out(render.render_plan(plan, "text", show_ids=args.show_ids, color=ctx.color))
        if plan.refused:
            raise PlanRefused(plan.refused)
        if plan.has_changes and not args.auto_approve:
            _confirm(ctx)
        targets, sandboxes = engine.make_targets(workspace, plan, ctx.env, state_dir=ctx.state_dir)
        progress = make_progress(
            plan, ctx.stderr, live=_isatty(ctx.stderr), color="NO_COLOR" not in ctx.env
        )
        stop = threading.Event()
        try:
            result = engine.run_apply(plan, store, targets, on_event=progress, stop=stop)
        finally:
            progress.close()
            for target in {id(t): t for t in targets.values()}.values():
                target.client.close()
            for box in sandboxes:
                box.close()
    if plan.has_changes or args.format == "json":
        ctx.out(render.render_apply(result, args.format, show_ids=args.show_ids))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_ERROR


def _sandbox_keys(env: dict[str, str]) -> list[str]:
    raw = env.get("RECONCILER_SANDBOX_KEYS", "")
    return [k.strip() for k in raw.split(",") if k.strip()] or [engine.SANDBOX_KEY]


def _sandbox_dir(ctx: Context) -> Path:
    return Path(ctx.args.data) if ctx.args.data else engine.sandbox_dir(ctx.state_dir, ctx.env)


def cmd_sandbox_serve(ctx: Context) -> int:
    args = ctx.args
    try:
        limits = Limits.parse(args.limits) if args.limits else Limits()
        faults = Faults.parse(args.faults) if args.faults else Faults()
    except ValueError as exc:
        raise ReconcilerError(str(exc)) from None
    box = Sandbox(_sandbox_dir(ctx), keys=_sandbox_keys(ctx.env), limits=limits, faults=faults)
    try:
        server = serve(box, host=args.host, port=args.port)
    except OSError as exc:
        box.close()
        raise ReconcilerError(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror}; pick another --port"
        ) from None
    ctx.out(f"Infobip sandbox listening on {server.url} (data in {box.data_dir})\n")
    # SIGTERM (CI, test fixtures) stops it like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        box.close()
    return EXIT_OK


def cmd_sandbox_show(ctx: Context) -> int:
    args = ctx.args
    with Sandbox(_sandbox_dir(ctx), keys=()) as box:
        lists = box.lists()
        members = {item.id: sorted(box.members(item.id)) for item in lists}
    shown = {i: ids if args.show_ids else [mask(x) for x in ids] for i, ids in members.items()}
    if args.format == "json":
        data = {
            "lists": [
                {"id": item.id, "name": item.name, "size": item.size, "members": shown[item.id]}
                for item in lists
            ]
        }
        ctx.out(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    if not lists:
        ctx.out("The sandbox has no lists yet. Run 'reconciler apply' to fill it.\n")
        return EXIT_OK
    for item in lists:
        sample = ", ".join(shown[item.id][:5])
        more = f" and {item.size - 5:,} more" if item.size > 5 else ""
        ctx.out(f"list {item.id} {item.name!r}: {item.size:,} members")
        ctx.out(f": {sample}{more}\n" if sample else "\n")
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

    apply = add(
        "apply",
        cmd_apply,
        "make the Infobip lists match the specs",
        """
        Plan, show the plan, ask for 'yes' (or take --auto-approve), then send
        the requests, paced per API key under Infobip's rate limits. Each
        confirmed request is saved to the state before the next is sent, so a
        failed or interrupted apply can simply be run again.
        """,
        "reconciler apply",
        "reconciler apply --auto-approve --format json",
        "INFOBIP_API_KEY=... reconciler apply --auto-approve --lock-timeout 300",
    )
    apply.add_argument("--auto-approve", action="store_true", help="apply without asking")
    apply.add_argument(
        "--lock-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's state lock (default: 0, fail at once)",
    )
    apply.add_argument("--format", choices=("text", "json"), default="text", help="default: text")
    _selection(apply)

    sandbox = commands.add_parser(
        "sandbox",
        help="the built-in Infobip sandbox",
        description="A local Infobip: same paths, answers, errors and rate limits, no account.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples("reconciler sandbox show", "reconciler sandbox serve --port 8080"),
    )
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command", metavar="COMMAND")
    sandbox_commands.required = True

    def add_sandbox(name: str, func: Command, help: str, description: str, *examples: str):
        sub = sandbox_commands.add_parser(
            name,
            help=help,
            description=textwrap.dedent(description).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=_examples(*examples),
        )
        sub.set_defaults(func=func)
        _common(sub)
        sub.add_argument(
            "--data",
            metavar="DIR",
            help="sandbox data directory (default: $RECONCILER_SANDBOX_DIR or <state>/sandbox)",
        )
        return sub

    serve_parser = add_sandbox(
        "serve",
        cmd_sandbox_serve,
        "serve the sandbox over HTTP",
        """
        Serve the sandbox over real HTTP until Ctrl-C or SIGTERM. It accepts the
        API keys listed in $RECONCILER_SANDBOX_KEYS (comma-separated; default:
        the key 'sandbox'). Point a destination's base_url at the printed URL.
        """,
        "reconciler sandbox serve --port 8080",
        "reconciler sandbox serve --port 0 --limits create=0.2,add=0.5,remove=0.3",
        "reconciler sandbox serve --faults rate=0.3,seed=7,kinds=reset+slow",
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve_parser.add_argument("--port", type=int, default=0, help="default: 0, any free port")
    serve_parser.add_argument(
        "--limits",
        metavar="SPEC",
        help="seconds between requests per key, e.g. create=2,add=10,remove=5 (Infobip's)",
    )
    serve_parser.add_argument(
        "--faults",
        metavar="SPEC",
        help="fault injection, e.g. rate=0.2,seed=1,kinds=error_before+error_after+reset",
    )
    show = add_sandbox(
        "show",
        cmd_sandbox_show,
        "show the sandbox's lists and members",
        """
        Show every list the sandbox holds, with masked member samples.
        """,
        "reconciler sandbox show",
        "reconciler sandbox show --format json --show-ids",
    )
    show.add_argument("--format", choices=("text", "json"), default="text", help="default: text")
    show.add_argument("--show-ids", action="store_true", help="show ids unmasked")

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
    stdin: IO[str] | None = None,
) -> int:
    """Run one command; return its exit code. Never raises for user errors."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    stdin = stdin or sys.stdin
    env = dict(os.environ if env is None else env)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (argparse says 2)
        return EXIT_OK if exc.code in (0, None) else EXIT_ERROR
    ctx = Context(args, stdout, stderr, env, stdin)
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
