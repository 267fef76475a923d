"""The sandbox commands: serve the built-in Infobip sandbox, show what it holds."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from reconciler.console import EXIT_OK, Command, Context, add_command, add_group
from reconciler.errors import ReconcilerError
from reconciler.masking import mask


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


def register(commands: Any) -> None:
    """Add ``sandbox serve`` and ``sandbox show`` to the top-level subparsers."""
    sandbox_commands = add_group(
        commands,
        "sandbox",
        "the built-in Infobip sandbox",
        "A local Infobip: same paths, answers, errors and rate limits, no account.",
        "reconciler sandbox show",
        "reconciler sandbox serve --port 8080",
    )

    def add_sandbox(name: str, func: Command, help: str, description: str, *usage: str):
        sub = add_command(sandbox_commands, name, func, help, description, *usage)
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
