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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from reconciler import __version__, engine, planfile, render
from reconciler.errors import PlanRefused, ReconcilerError
from reconciler.masking import mask
from reconciler.plan import Plan
from reconciler.spec import SCHEMA, Workspace, list_key
from reconciler.store import ListRecord, StateStore

if TYPE_CHECKING:
    from reconciler.apply import ApplyResult

# The HTTP client, the sandbox and the live display are imported by the commands that
# use them: the offline commands (validate, plan, show) start faster without them.

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


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "allow_mass_removal": args.allow_mass_removal,
        "retry_rejected": args.retry_rejected,
        "targets": list(args.target),
        "excludes": list(args.exclude),
    }


def cmd_plan(ctx: Context) -> int:
    args = ctx.args
    everything = engine.load(ctx.specs)
    workspace = engine.select(everything, args.target, args.exclude)
    # Digested before planning: a file that changes meanwhile makes the saved plan stale.
    inputs = planfile.current_inputs(workspace) if args.out else {}
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
    _step_summary(ctx, lambda room: render.plan_markdown(plan, show_ids=False, limit=room))
    if plan.refused:
        raise PlanRefused(plan.refused)
    if args.out:
        saved = planfile.SavedPlan.new(plan, inputs=inputs, options=_options(args))
        planfile.write_plan(Path(args.out), saved)
        ctx.err(f"Saved the plan to {args.out}; apply exactly it with: reconciler apply {args.out}")
    if args.detailed_exitcode and plan.has_changes:
        return EXIT_CHANGES
    return EXIT_OK


def _confirm(ctx: Context, question: str, without_terminal: str) -> None:
    """Ask for 'yes' on a terminal; refuse to guess when nobody can answer."""
    if not _isatty(ctx.stdin):
        raise ReconcilerError(without_terminal)
    ctx.err(f"{question} Only 'yes' is accepted.")
    ctx.stderr.write("  Enter a value: ")
    ctx.stderr.flush()
    if ctx.stdin.readline().strip() != "yes":
        raise ReconcilerError("cancelled: nothing was changed")


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
        if saved is None and plan.has_changes and not args.auto_approve:
            _confirm(
                ctx,
                "Apply these changes?",
                "apply needs a 'yes' and standard input is not a terminal: review the plan "
                "above, then run 'reconciler apply --auto-approve'",
            )
        result = _execute(ctx, workspace, plan, store)
    if plan.has_changes or args.format == "json":
        ctx.out(render.render_apply(result, args.format, show_ids=args.show_ids))
    if plan.has_changes:
        _step_summary(ctx, lambda room: render.apply_markdown(result, limit=room))
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
        plan, ctx.stderr, live=_isatty(ctx.stderr), color="NO_COLOR" not in ctx.env
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


def _sandbox_keys(env: dict[str, str]) -> list[str]:
    from reconciler.targets import SANDBOX_KEY

    raw = env.get("RECONCILER_SANDBOX_KEYS", "")
    return [k.strip() for k in raw.split(",") if k.strip()] or [SANDBOX_KEY]


def _sandbox_dir(ctx: Context) -> Path:
    from reconciler.targets import sandbox_dir

    return Path(ctx.args.data) if ctx.args.data else sandbox_dir(ctx.state_dir, ctx.env)


def cmd_sandbox_serve(ctx: Context) -> int:
    from reconciler.sandbox import Faults, Limits, Sandbox, serve

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
    from reconciler.sandbox import Sandbox

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


def _step_summary(ctx: Context, render_markdown: Callable[[int], str]) -> None:
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


# --- state operations -------------------------------------------------------


def _open_existing_state(ctx: Context) -> StateStore:
    store = engine.open_state(ctx.state_dir, create=False)
    if store is None:
        raise ReconcilerError(
            f"no state at {ctx.state_dir}: run 'reconciler apply' first, or pass --state DIR"
        )
    return store


def _resolve(store: StateStore, name: str) -> tuple[str, ListRecord]:
    key = engine.resolve_list(store, name)
    record = store.record(key)
    assert record is not None  # resolve_list found it
    return key, record


def cmd_state_list(ctx: Context) -> int:
    with _open_existing_state(ctx) as store:
        records = list(store.records().values())
    if ctx.args.format == "json":
        rows = [
            {
                "destination": r.destination,
                "list": r.name,
                "list_id": r.list_id,
                "members": r.member_count,
                "rejected": r.rejected_count,
                "status": r.status,
                "membership_known": r.membership_known,
                "applied_at": r.applied_at,
            }
            for r in records
        ]
        ctx.out(json.dumps({"lists": rows}, indent=2) + "\n")
        return EXIT_OK
    if not records:
        ctx.out("The state holds no lists.\n")
        return EXIT_OK
    table = [("LIST", "DESTINATION", "LIST ID", "MEMBERS", "REJECTED", "LAST APPLIED")]
    for r in records:
        applied = r.applied_at or "-"
        if r.status != "active":
            applied += f" ({r.status})"
        table.append(
            (
                r.name,
                r.destination,
                str(r.list_id or "-"),
                f"{r.member_count:,}",
                f"{r.rejected_count:,}",
                applied,
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        ctx.out("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        ctx.out("\n")
    return EXIT_OK


def cmd_state_show(ctx: Context) -> int:
    args = ctx.args
    with _open_existing_state(ctx) as store:
        key, record = _resolve(store, args.list)
        members = sorted(store.members(key))
        rejected = store.rejected(key)
    show = (lambda i: i) if args.show_ids else mask
    if args.format == "json":
        data = {
            "destination": record.destination,
            "list": record.name,
            "list_id": record.list_id,
            "status": record.status,
            "membership_known": record.membership_known,
            "applied_at": record.applied_at,
            "members": [show(m) for m in members],
            "rejected": {show(i): t for i, t in sorted(rejected.items())},
        }
        ctx.out(json.dumps(data, indent=2) + "\n")
        return EXIT_OK
    ctx.out(
        f"{record.destination}/{record.name}: list id {record.list_id}, {record.status}, "
        f"{len(members):,} members, {len(rejected):,} rejected, "
        f"last applied {record.applied_at or 'never'}\n"
    )
    if not record.membership_known:
        ctx.out("  imported: Infobip may hold ids the state has never seen\n")
    for member in members:
        ctx.out(f"  {show(member)}\n")
    for user_id, kind in sorted(rejected.items()):
        ctx.out(f"  {show(user_id)} (rejected: {kind})\n")
    return EXIT_OK


def cmd_state_rm(ctx: Context) -> int:
    with _open_existing_state(ctx) as store:
        key, record = _resolve(store, ctx.args.list)
        if not ctx.args.yes:
            _confirm(
                ctx,
                f"Forget {record.destination}/{record.name} (list id {record.list_id})?",
                "state rm needs a 'yes': pass --yes to confirm",
            )
        with store.locked(timeout=ctx.args.lock_timeout):
            store.remove_list(key)
    ctx.out(
        f"Forgot {record.destination}/{record.name}. Infobip is untouched: list "
        f"{record.list_id} still exists there; if a spec still names it, the next plan "
        "creates a new list.\n"
    )
    return EXIT_OK


def cmd_state_mv(ctx: Context) -> int:
    args = ctx.args
    with _open_existing_state(ctx) as store:
        old, record = _resolve(store, args.old)
        destination, _, name = args.new.rpartition("/")
        destination = destination or record.destination
        if not name.strip():
            raise ReconcilerError("the new name is blank")
        with store.locked(timeout=args.lock_timeout):
            moved = store.rename_list(
                old, list_key(destination, name), destination=destination, name=name
            )
    ctx.out(
        f"Moved {record.destination}/{record.name} to {moved.destination}/{moved.name}, "
        f"keeping Infobip list {moved.list_id} and its {moved.member_count:,} members.\n"
    )
    return EXIT_OK


def cmd_import(ctx: Context) -> int:
    args = ctx.args
    workspace = engine.load(ctx.specs)
    spec = engine.select(workspace, [args.list]).lists[0]
    if args.list_id <= 0:
        raise ReconcilerError("LIST_ID must be a positive Infobip list (tag) id")
    store = engine.open_state(ctx.state_dir, create=True)
    assert store is not None
    with store, store.locked(timeout=args.lock_timeout):
        existing = store.record(spec.key)
        if existing is not None:
            raise ReconcilerError(
                f"{spec.destination}/{spec.name} is already in the state as list "
                f"{existing.list_id}; run 'reconciler state rm {spec.name}' first to re-import"
            )
        store.import_list(spec.key, spec.destination, spec.name, args.list_id)
    ctx.out(
        f"Imported {spec.destination}/{spec.name} as Infobip list {args.list_id}. Its "
        "membership is unknown: the next apply adds every desired id, and ids already in the "
        "list but not desired cannot be removed by reconciler.\n"
    )
    return EXIT_OK


def cmd_force_unlock(ctx: Context) -> int:
    with _open_existing_state(ctx) as store:
        held = store.force_unlock(ctx.args.lock_id)
    ctx.out(f"Removed {held.describe(time.time())}.\n")
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
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more to stderr (-vv: debug)"
    )


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


def _add_command(
    subparsers: Any, name: str, func: Command, help: str, description: str, *examples: str
) -> argparse.ArgumentParser:
    sub = subparsers.add_parser(
        name,
        help=help,
        description=textwrap.dedent(description).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(*examples),
    )
    sub.set_defaults(func=func)
    _common(sub)
    return sub


def _add_group(subparsers: Any, name: str, help: str, description: str, *examples: str) -> Any:
    group = subparsers.add_parser(
        name,
        help=help,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_examples(*examples),
    )
    children = group.add_subparsers(dest=f"{name}_command", metavar="COMMAND")
    children.required = True
    return children


def _lock_timeout(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lock-timeout",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long for another run's state lock (default: 0, fail at once)",
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
        return _add_command(commands, name, func, help, description, *examples)

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
        "--out",
        metavar="FILE",
        help="also save the exact plan (ids included, mode 0600) for 'reconciler apply FILE'",
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
    _lock_timeout(apply)
    apply.add_argument("--format", choices=("text", "json"), default="text", help="default: text")
    _selection(apply)

    sandbox_commands = _add_group(
        commands,
        "sandbox",
        "the built-in Infobip sandbox",
        "A local Infobip: same paths, answers, errors and rate limits, no account.",
        "reconciler sandbox show",
        "reconciler sandbox serve --port 8080",
    )

    def add_sandbox(name: str, func: Command, help: str, description: str, *examples: str):
        sub = _add_command(sandbox_commands, name, func, help, description, *examples)
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

    state = _add_group(
        commands,
        "state",
        "inspect and change the state",
        "Inspect and change what the state knows. Infobip itself is never touched.",
        "reconciler state list",
        "reconciler state mv churn churn-eu",
    )
    listing = _add_command(
        state,
        "list",
        cmd_state_list,
        "list the lists in the state",
        "Every list the state knows: name, destination, list id, members, rejected ids and "
        "when it was last applied.",
        "reconciler state list",
        "reconciler state list --format json",
    )
    listing.add_argument("--format", choices=("text", "json"), default="text")
    show_state = _add_command(
        state,
        "show",
        cmd_state_show,
        "show one list's members (masked)",
        "Show one list of the state: its Infobip id, members and rejected ids.",
        "reconciler state show churn-risk-eu",
        "reconciler state show prod/churn-risk-eu --show-ids",
    )
    show_state.add_argument("list", metavar="LIST", help="name or destination/name")
    show_state.add_argument("--format", choices=("text", "json"), default="text")
    show_state.add_argument("--show-ids", action="store_true", help="show ids unmasked")
    remove = _add_command(
        state,
        "rm",
        cmd_state_rm,
        "forget a list (Infobip is untouched)",
        """
        Forget a list: the state no longer knows it or its members. The list
        stays in Infobip; if a spec still names it, the next plan creates a new one.
        """,
        "reconciler state rm legacy-list",
        "reconciler state rm prod/legacy-list --yes",
    )
    remove.add_argument("list", metavar="LIST", help="name or destination/name")
    remove.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    _lock_timeout(remove)
    move = _add_command(
        state,
        "mv",
        cmd_state_mv,
        "rename a list, keeping its Infobip list",
        """
        Rename a list in the state, keeping its Infobip list id and members: do
        this when you rename a list in the specs, so apply does not create a new
        list. Infobip still shows the old name.
        """,
        "reconciler state mv churn churn-eu",
        "reconciler state mv prod/churn prod/churn-eu",
    )
    move.add_argument("old", metavar="OLD", help="name or destination/name")
    move.add_argument("new", metavar="NEW", help="new name, or destination/name")
    _lock_timeout(move)

    adopt = add(
        "import",
        cmd_import,
        "adopt a list that already exists in Infobip",
        """
        Adopt an existing Infobip list (for example one made by Amplitude's
        built-in sync) for a list of the specs. Its membership is unknown to the
        state: the first apply adds every desired id, and ids already in the
        list but not desired cannot be removed.
        """,
        "reconciler import churn-risk-eu 2568",
    )
    adopt.add_argument("list", metavar="LIST", help="a list named by the specs")
    adopt.add_argument("list_id", metavar="LIST_ID", type=int, help="its Infobip list (tag) id")
    _lock_timeout(adopt)

    unlock = add(
        "force-unlock",
        cmd_force_unlock,
        "remove a stale state lock",
        """
        Remove the state lock with LOCK_ID, for a run that died on another
        machine. A lock left by a dead process on this host is taken over
        automatically; never force-unlock a run that is still going.
        """,
        "reconciler force-unlock 3f2a9c1b7d4e",
    )
    unlock.add_argument("lock_id", metavar="LOCK_ID", help="shown in the 'state is locked' error")

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
