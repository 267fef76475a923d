"""Apply progress on stderr: a live display on a terminal, one line per request otherwise.

Part of the command-line layer (it writes to a stream); the apply engine only
emits ``Event`` values. The live display is rich's Progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import IO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from reconciler.apply import Event
from reconciler.plan import Plan


class _Totals:
    def __init__(self, plan: Plan) -> None:
        self.total: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.ids: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        for change in plan.request_changes:
            d = change.destination
            self.total[d] = self.total.get(d, 0) + change.requests
            self.done.setdefault(d, 0)
            self.ids.setdefault(d, 0)
        for d in self.total:
            subset = [c for c in plan.request_changes if c.destination == d]
            self.seconds[d] = Plan(tuple(subset), pacing=plan.pacing).estimated_seconds()

    def record(self, event: Event) -> None:
        d = event.destination
        if event.type == "request":
            self.done[d] += 1
            self.ids[d] += event.ids
        elif event.type == "retry" and event.total:
            self.total[d] += event.total

    def time_left(self, d: str) -> float:
        total = self.total.get(d) or 1
        return self.seconds.get(d, 0.0) * max(0, total - self.done.get(d, 0)) / total


class LineProgress:
    """One line per request and per problem: for CI logs."""

    def __init__(self, plan: Plan, stream: IO[str]) -> None:
        self.totals, self.stream = _Totals(plan), stream

    def __call__(self, event: Event) -> None:
        self.totals.record(event)
        d = event.destination
        where = f"{d}/{event.list}"
        if event.type == "request":
            what = "created" if event.kind == "create" else f"{event.kind} {event.ids:,} ids"
            line = (
                f"{where}: {what} ({self.totals.done[d]}/{self.totals.total[d]} requests, "
                f"about {self.totals.time_left(d):.0f} s left)"
            )
        elif event.type in ("retry", "warning", "failed"):
            line = f"{where}: {event.type}: {event.message}"
        else:
            return
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class LiveProgress:
    """A live bar per destination: requests done/total, ids sent, time left at the pacing."""

    def __init__(self, plan: Plan, stream: IO[str], *, color: bool) -> None:
        self.totals = _Totals(plan)
        console = Console(file=stream, no_color=not color, highlight=False)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("requests, {task.fields[ids]:,} ids sent, ~{task.fields[left]:.0f} s left"),
            console=console,
            transient=False,
        )
        self.tasks: Mapping[str, TaskID] = {
            d: self.progress.add_task(d, total=t, ids=0, left=self.totals.time_left(d))
            for d, t in self.totals.total.items()
        }
        self.progress.start()

    def __call__(self, event: Event) -> None:
        self.totals.record(event)
        d = event.destination
        if d in self.tasks:
            self.progress.update(
                self.tasks[d],
                completed=self.totals.done[d],
                total=self.totals.total[d],
                ids=self.totals.ids[d],
                left=self.totals.time_left(d),
            )
        if event.type in ("retry", "warning", "failed"):
            self.progress.console.print(f"{d}/{event.list}: {event.type}: {event.message}")

    def close(self) -> None:
        self.progress.stop()


def make_progress(
    plan: Plan, stream: IO[str], *, live: bool, color: bool
) -> LineProgress | LiveProgress:
    return LiveProgress(plan, stream, color=color) if live else LineProgress(plan, stream)
