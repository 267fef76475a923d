"""The command line: the entry point, the parser, and the plan/apply commands. No logic.

Data goes to stdout, logs and progress to stderr. Every ReconcilerError
becomes one message and exit 1; nothing below the command-line layer
(this module, ``console``, ``cli_state``, ``cli_sandbox``, ``progress``)
prints or exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from reconciler import __version__, cli_sandbox, cli_state, engine, planfile, render
from reconciler.console import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Command,
    Context,
    add_command,
    add_lock_timeout,
    add_selection_options,
    confirm,
    examples,
    isatty,
    step_summary,
)
from reconciler.errors import PlanRefused, ReconcilerError
from reconciler.plan import Plan
from reconciler.spec import SCHEMA, Workspace
from reconciler.store import StateStore

if TYPE_CHECKING:
    from reconciler.apply import ApplyResult

# The HTTP client, the sandbox and the live display are imported by the commands that
# use them: the offline commands (validate, plan, show) start faster without them.


# --- commands --------------------------------------------------------------


def cmd_validate(ctx: Context) -> int:
    workspace = engine.load(ctx.specs)
    files, lists = len(workspace.files), len(workspace.lists)
    ctx.out(
        f"Valid: {files} spec file{'s' if files != 1 else ''}, "
        f"{len(workspace.destinations)} destination(s), {lists} list{'s' if lists != 1 else ''}.\n"
    )
    return EXIT_OK


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "allow_mass_removal": args.allow_mass_removal,
        "retry_rejected": args.retry_rejected,
        "targets": list(args.target),
        "excludes": list(args.exclude),
    }


def _build_plan(
    args: argparse.Namespace,
    workspace: Workspace,
    store: StateStore | None,
    everything: Workspace,
    digests: dict[Path, str] | None = None,
) -> Plan:
    return engine.build_plan(
        workspace,
        store,
        allow_mass_removal=args.allow_mass_removal,
        retry_rejected=args.retry_rejected,
        all_lists=everything,
        digests=digests,
    )


def cmd_plan(ctx: Context) -> int:
    args = ctx.args
    everything = engine.load(ctx.specs)
    workspace = engine.select(everything, args.target, args.exclude)
    # Digested before planning: a file that changes meanwhile makes the saved plan stale.
    digests: dict[Path, str] = {}  # each cohort file hashed once, for --out and the fast path
    inputs = planfile.current_inputs(workspace, digests) if args.out else {}
    store = engine.open_state(ctx.state_dir, create=False)
    try:
        plan = _build_plan(args, workspace, store, everything, digests)
    finally:
        if store is not None:
            store.close()
    ctx.out(render.render_plan(plan, args.format, show_ids=args.show_ids, color=ctx.color))
    step_summary(ctx, lambda room: render.plan_markdown(plan, show_ids=False, limit=room))
    if plan.refused:
        raise PlanRefused(plan.refused)
    if args.out:
        saved = planfile.SavedPlan.new(plan, inputs=inputs, options=_options(args))
        planfile.write_plan(Path(args.out), saved)
        ctx.err(f"Saved the plan to {args.out}; apply exactly it with: reconciler apply {args.out}")
    if args.detailed_exitcode and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def cmd_apply(ctx: Context) -> int:
    args = ctx.args
    saved = planfile.read_plan(Path(args.planfile)) if args.planfile else None
    if saved is not None:
        if args.target or args.exclude or args.allow_mass_removal or args.retry_rejected:
            raise ReconcilerError(
                "a saved plan is applied exactly as it was made: drop --target, --exclude, "
                "--allow-mass-removal and --retry-rejected, or make a new plan with them"
            )
        targets, excludes = saved.options.get("targets", []), saved.options.get("excludes", [])
    else:
        targets, excludes = args.target, args.exclude
    everything = engine.load(ctx.specs)
    workspace = engine.select(everything, targets, excludes)
    store = engine.open_state(ctx.state_dir, create=True)
    assert store is not None
    with store, store.locked(timeout=args.lock_timeout):
        if saved is not None:
            current = planfile.current_inputs(workspace)
            planfile.check_fresh(saved, lineage=store.lineage, serial=store.serial, inputs=current)
            plan = saved.plan
        else:
            plan = _build_plan(args, workspace, store, everything)
        if args.format == "text":
            ctx.out(render.render_plan(plan, "text", show_ids=args.show_ids, color=ctx.color))
        if plan.refused:
            raise PlanRefused(plan.refused)
        if saved is None and plan.has_changes and not args.auto_approve:
            confirm(
                ctx,
                "Apply these changes?",
                "apply needs a 'yes' and standard input is not a terminal: review the plan "
                "above, then run 'reconciler apply --auto-approve'",
            )
        result = _execute(ctx, workspace, plan, store)
    if plan.has_changes or args.format == "json":
        ctx.out(render.render_apply(result, args.format, show_ids=args.show_ids))
    if plan.has_changes:
        step_summary(ctx, lambda room: render.apply_markdown(result, limit=room))
    if result.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_OK if result.ok else EXIT_ERROR


def _execute(ctx: Context, workspace: Workspace, plan: Plan, store: StateStore) -> ApplyResult:
    """Send the plan's requests with progress on stderr; close every client after."""
    from reconciler import targets as wiring
    from reconciler.progress import make_progress

    targets, sandboxes = wiring.make_targets(
        workspace, plan, ctx.env, state_dir=ctx.state_dir, timeout=_http_timeout(ctx.env)
    )
    progress = make_progress(
        plan, ctx.stderr, live=isatty(ctx.stderr), color="NO_COLOR" not in ctx.env
    )
    try:
        return wiring.run_apply(plan, store, targets, on_event=progress, stop=threading.Event())
    finally:
        progress.close()
        for target in {id(t): t for t in targets.values()}.values():
            target.client.close()
        for box in sandboxes:
            box.close()


def _http_timeout(env: dict[str, str]) -> float:
    """Seconds to wait for an Infobip answer: $RECONCILER_HTTP_TIMEOUT, default 30."""
    raw = env.get("RECONCILER_HTTP_TIMEOUT", "30")
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value <= 3600:
        raise ReconcilerError(
            f"RECONCILER_HTTP_TIMEOUT must be a number of seconds between 0 and 3600, not {raw!r}"
        )
    return value


def cmd_show(ctx: Context) -> int:
    args = ctx.args
    saved = planfile.read_plan(Path(args.planfile))
    ctx.err(
        f"Saved plan made {saved.created_at} by reconciler {saved.tool_version} "
        f"from state serial {saved.serial}."
    )
    ctx.out(render.render_plan(saved.plan, args.format, show_ids=args.show_ids, color=ctx.color))
    return EXIT_OK


def cmd_schema(ctx: Context) -> int:
    ctx.out(json.dumps(SCHEMA, indent=2) + "\n")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="Keep Infobip audience lists equal to Amplitude cohorts: plan, review, apply.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=examples(
            "reconciler validate",
            "reconciler plan --format markdown",
            "reconciler apply --auto-approve",
        ),
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def add(name: str, func: Command, help: str, description: str, *usage: str):
        return add_command(commands, name, func, help, description, *usage)

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
        "reconciler plan --out plan.bin --format markdown",
        "reconciler plan --format json --detailed-exitcode",
    )
    plan.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help="default: text"
    )
    plan.add_argument(
        "--out",
        metavar="FILE",
        help="also save the exact plan (ids included, mode 0600) for 'reconciler apply FILE'",
    )
    plan.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there are no changes, 2 when there are, 1 on error",
    )
    add_selection_options(plan)

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
        "reconciler apply plan.bin",
        "reconciler apply --auto-approve --format json",
        "INFOBIP_API_KEY=... reconciler apply --auto-approve --lock-timeout 300",
    )
    apply.add_argument(
        "planfile",
        nargs="?",
        metavar="PLANFILE",
        help="a plan saved by 'plan --out': applied exactly, without a prompt",
    )
    apply.add_argument("--auto-approve", action="store_true", help="apply without asking")
    add_lock_timeout(apply)
    apply.add_argument("--format", choices=("text", "json"), default="text", help="default: text")
    add_selection_options(apply)

    cli_sandbox.register(commands)

    show_plan = add(
        "show",
        cmd_show,
        "render a saved plan",
        """
        Render a plan saved by 'reconciler plan --out FILE', in any format.
        """,
        "reconciler show plan.bin",
        "reconciler show plan.bin --format markdown",
    )
    show_plan.add_argument("planfile", metavar="PLANFILE")
    show_plan.add_argument(
        "--format", choices=("text", "markdown", "json"), default="text", help="default: text"
    )
    show_plan.add_argument("--show-ids", action="store_true", help="show ids unmasked")

    cli_state.register(commands)

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


def _configure_logging(stream: IO[str], *, verbose: int) -> None:
    root = logging.getLogger("reconciler")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel({0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG))
    root.propagate = False


def entry() -> None:
    """Console-script entry point."""
    code = main()
    # Freeing millions of ids one by one at exit can take longer than a plan's own
    # work at that scale. Everything is written, flushed and closed by now.
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or EXIT_ERROR
    os._exit(code)
