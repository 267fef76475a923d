"""Pacing: when the next request of an API key may start.

Infobip limits each API key per kind of request (create 1 per 2 s, add 1 per
10 s, remove 1 per 5 s). A ``Lane`` holds one key's clocks: at most one
request in flight, and per kind a minimum interval between request starts.
Kinds interleave: the next request is of whichever kind with work waiting
becomes ready first, so no queue idles while another waits.

The clock and sleep are injected; tests run on a fake clock and check exact
send times.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping

from reconciler.spec import KINDS

Clock = Callable[[], float]
Sleep = Callable[[float], None]

MAX_BACKOFF = 300.0  # seconds: a lane never waits longer than this for one retry


class Lane:
    """The pacing clocks of one API key."""

    def __init__(
        self,
        intervals: Mapping[str, float],
        *,
        clock: Clock,
        sleep: Sleep,
        last_start: Mapping[str, float | None] | None = None,
    ) -> None:
        self.intervals = dict(intervals)
        self.clock, self.sleep = clock, sleep
        self.last_start: dict[str, float] = {
            kind: t for kind, t in (last_start or {}).items() if t is not None
        }
        self._not_before: dict[str, float] = {}

    def ready_at(self, kind: str) -> float:
        """The earliest time a request of ``kind`` may start."""
        last = self.last_start.get(kind)
        paced = last + self.intervals[kind] if last is not None else -math.inf
        return max(paced, self._not_before.get(kind, -math.inf))

    def next_kind(self, kinds: Iterable[str]) -> str:
        """Of the kinds with work waiting, the one that may start first."""
        return min(kinds, key=lambda kind: (self.ready_at(kind), KINDS.index(kind)))

    def wait(self, kind: str) -> None:
        """Sleep until a request of ``kind`` may start."""
        delay = self.ready_at(kind) - self.clock()
        if delay > 0:
            self.sleep(delay)

    def started(self, kind: str) -> float:
        """Record that a request of ``kind`` starts now; returns the start time."""
        now = self.clock()
        self.last_start[kind] = now
        return now

    def back_off(self, kind: str, seconds: float) -> None:
        """Hold requests of ``kind`` for ``seconds`` from now (after a 429 or an error)."""
        self._not_before[kind] = self.clock() + seconds


def backoff(
    interval: float,
    attempt: int,
    *,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before resending, for the ``attempt``-th retry (1-based).

    A server's Retry-After wins. Otherwise exponential from the kind's
    interval, capped, with up to 25 % jitter so that several runs that met
    the same error do not resend in lockstep.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), MAX_BACKOFF)
    base = min(max(interval, 0.01) * 2 ** (attempt - 1), MAX_BACKOFF)
    return base * (1 + (rng or random).random() * 0.25)
