"""Where apply sends: a client per API key, the in-process sandbox, real time.

Kept apart from ``engine`` (which plans) so that the offline commands never
import the HTTP client or the sandbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reconciler.apply import ApplyResult, Event, Target, apply_plan
from reconciler.errors import ReconcilerError
from reconciler.infobip import InfobipClient
from reconciler.plan import Plan
from reconciler.sandbox import Limits, Sandbox
from reconciler.spec import KINDS, SANDBOX, Destination, Workspace
from reconciler.store import StateStore

# The in-process sandbox answers any host; this one only names it in logs.
SANDBOX_URL = "http://sandbox.invalid"

SANDBOX_KEY = "sandbox"  # the key of a sandbox destination without api_key_env


def sandbox_dir(state_dir: Path, env: Mapping[str, str]) -> Path:
    """Where the built-in sandbox keeps its lists: $RECONCILER_SANDBOX_DIR or <state>/sandbox."""
    return Path(env.get("RECONCILER_SANDBOX_DIR") or Path(state_dir) / "sandbox")


def api_key(destination: Destination, env: Mapping[str, str]) -> str:
    """The destination's API key, from its environment variable only.

    Raises ReconcilerError naming the variable when it is not set.
    """
    name = destination.api_key_env
    value = env.get(name, "").strip() if name else ""
    if value:
        return value
    if destination.is_sandbox:
        return SANDBOX_KEY
    raise ReconcilerError(
        f"destination '{destination.name}': the environment variable {name} is not set. "
        f"Export it with the Infobip API key (in CI, from a secret), then run apply again"
    )


def make_targets(
    workspace: Workspace,
    plan: Plan,
    env: Mapping[str, str],
    *,
    state_dir: Path,
    timeout: float = 30.0,
) -> tuple[dict[str, Target], list[Sandbox]]:
    """A Target per destination with requests; destinations sharing a key share one.

    Returns the targets and the in-process sandboxes opened for them (to close).
    Raises ReconcilerError for a missing API key, before any request is sent.
    """
    needed = sorted({change.destination for change in plan.request_changes})
    destinations = [workspace.destination(name) for name in needed]
    keys = {d.name: api_key(d, env) for d in destinations}
    sandboxes: list[Sandbox] = []
    transport = None
    sandboxed = [d for d in destinations if d.is_sandbox]
    if sandboxed:
        # The sandbox enforces the most permissive pacing among its destinations.
        limits = Limits(**{k: min(d.pacing.interval(k) for d in sandboxed) for k in KINDS})
        box = Sandbox(
            sandbox_dir(state_dir, env),
            keys={keys[d.name] for d in sandboxed},
            limits=limits,
        )
        sandboxes.append(box)
        transport = box.transport()
    shared: dict[tuple[str, str], list[Destination]] = {}
    for d in destinations:
        shared.setdefault((d.base_url, keys[d.name]), []).append(d)
    targets: dict[str, Target] = {}
    for (base_url, key), group in shared.items():
        client = InfobipClient(
            SANDBOX_URL if base_url == SANDBOX else base_url,
            key,
            transport=transport if base_url == SANDBOX else None,
            timeout=timeout,
        )
        # One key, one set of limits: the slowest pacing of the destinations sharing it.
        intervals = {k: max(d.pacing.interval(k) for d in group) for k in KINDS}
        target = Target(
            name=", ".join(d.name for d in group),
            client=client,
            intervals=intervals,
            api_key_env=group[0].api_key_env,
        )
        targets.update({d.name: target for d in group})
    return targets, sandboxes


def run_apply(
    plan: Plan,
    store: StateStore,
    targets: Mapping[str, Target],
    *,
    on_event: Callable[[Event], None],
    stop: threading.Event,
    clock: Callable[[], float] = time.time,
) -> ApplyResult:
    """Apply ``plan`` with real time; ``stop`` ends it after the requests in flight."""

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # a stop wakes the lane at once instead of after the interval

    return apply_plan(plan, store, targets, clock=clock, sleep=sleep, on_event=on_event, stop=stop)
