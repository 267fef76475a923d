"""The state commands: state list|show|rm|mv, import, force-unlock.

Each command that writes the state takes the lock; every write bumps the
serial, so saved plans made before it become stale.
"""

from __future__ import annotations

import json
import time
from typing import Any

from reconciler import engine
from reconciler.console import (
    EXIT_OK,
    Context,
    add_command,
    add_group,
    add_lock_timeout,
    confirm,
)
from reconciler.errors import ReconcilerError
from reconciler.masking import mask
from reconciler.spec import list_key
from reconciler.store import ListRecord, StateStore


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
            confirm(
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


def register(commands: Any) -> None:
    """Add the state commands to the top-level subparsers."""
    state = add_group(
        commands,
        "state",
        "inspect and change the state",
        "Inspect and change what the state knows. Infobip itself is never touched.",
        "reconciler state list",
        "reconciler state mv churn churn-eu",
    )
    listing = add_command(
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
    show_state = add_command(
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
    remove = add_command(
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
    add_lock_timeout(remove)
    move = add_command(
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
    add_lock_timeout(move)

    adopt = add_command(
        commands,
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
    add_lock_timeout(adopt)

    unlock = add_command(
        commands,
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
