"""Executing a plan: one lane per API key, each request committed before the next.

A lane sends at most one request at a time, paced per kind (``pacing.Lane``).
Every confirmed request is committed to the state before the next one is
sent, so a crash loses at most the outcome of the request in flight, and a
re-run converges (adds and removes are set operations, safe to resend).

Nothing here prints: progress and warnings go to an ``on_event`` callback.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime

import attrs

from reconciler.errors import (
    InfobipError,
    PayloadTooLarge,
    TagNotFound,
    TooManyRequests,
    TransientError,
    Unauthorized,
)
from reconciler.infobip import InfobipClient
from reconciler.pacing import Clock, Lane, Sleep, backoff
from reconciler.plan import ListChange, Plan
from reconciler.spec import KINDS
from reconciler.store import StateStore

log = logging.getLogger(__name__)

MAX_RETRIES = 5  # per request, for 5xx, timeouts and connection errors
MAX_THROTTLED = 10  # per request, for 429s
SAMPLE = 5


@attrs.frozen
class Op:
    """One request to send: a create, or one batch of an add or a remove."""

    kind: str
    change: ListChange
    ids: tuple[str, ...] = ()
    retries: int = 0
    throttled: int = 0


@attrs.frozen
class Event:
    """Something an apply did, for progress displays and logs.

    ``type`` is ``start`` (``total`` requests planned for ``destination``),
    ``request`` (one confirmed), ``retry``, ``warning``, ``failed`` or ``done``.
    """

    type: str
    destination: str = ""
    list: str = ""
    kind: str = ""
    ids: int = 0
    total: int = 0
    message: str = ""


@attrs.frozen
class Failure:
    destination: str
    list: str
    message: str


@attrs.define
class ApplyResult:
    """What an apply did; counts only what Infobip confirmed."""

    creates: int = 0
    adds: int = 0
    removes: int = 0
    requests: int = 0
    rejected: Counter = attrs.field(factory=Counter)
    rejected_samples: dict[str, list[str]] = attrs.field(factory=dict)
    failed: list[Failure] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    # list label -> {"add": ids, "remove": ids, "create": bool} not yet applied
    remaining: dict[str, dict[str, int]] = attrs.field(factory=dict)
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.failed and not self.interrupted


@attrs.frozen
class Target:
    """Where one lane sends: a client for one API key, and that key's pacing."""

    name: str  # shown in progress: the destinations sharing the key
    client: InfobipClient
    intervals: Mapping[str, float]
    api_key_env: str | None = None


def batches(ids: Sequence[str], size: int) -> Iterable[tuple[str, ...]]:
    for start in range(0, len(ids), size):
        yield tuple(ids[start : start + size])


def _now_iso(clock: Clock) -> str:
    return datetime.fromtimestamp(clock(), tz=UTC).isoformat(timespec="seconds")


class _LaneRun:
    """Sends one lane's requests; the loop of ``apply_plan`` for one API key."""

    def __init__(
        self,
        target: Target,
        changes: Sequence[ListChange],
        store: StateStore,
        result: ApplyResult,
        *,
        clock: Clock,
        sleep: Sleep,
        emit: Callable[[Event], None],
        stop: threading.Event,
        rng: random.Random,
        lock: threading.Lock,
    ) -> None:
        self.target, self.store, self.result = target, store, result
        self.clock, self.emit, self.stop, self.rng, self.lock = clock, emit, stop, rng, lock
        fingerprint = target.client.fingerprint
        self.fingerprint = fingerprint
        self.lane = Lane(
            target.intervals,
            clock=clock,
            sleep=sleep,
            last_start={k: store.last_request(fingerprint, k) for k in KINDS},
        )
        self.queues: dict[str, deque[Op]] = {kind: deque() for kind in KINDS}
        self.list_ids: dict[str, int | None] = {}
        self.pending: Counter[str] = Counter()
        self.changes = {c.key: c for c in changes}
        self.failed: set[str] = set()
        for change in changes:
            self._enqueue(change)

    def _enqueue(self, change: ListChange) -> None:
        self.list_ids[change.key] = None if change.create else change.list_id
        ops = [Op("create", change)] if change.create else []
        ops += [Op("remove", change, b) for b in batches(change.remove, change.batch_size)]
        ops += [Op("add", change, b) for b in batches(change.add, change.batch_size)]
        for op in ops:
            self.queues[op.kind].append(op)
        self.pending[change.key] += len(ops)

    # --- the loop ------------------------------------------------------------

    def _eligible(self, op: Op) -> bool:
        return op.kind == "create" or self.list_ids.get(op.change.key) is not None

    def _next(self) -> Op | None:
        ready = [k for k, q in self.queues.items() if any(self._eligible(op) for op in q)]
        if not ready:
            return None
        kind = self.lane.next_kind(ready)
        queue = self.queues[kind]
        for index, op in enumerate(queue):
            if self._eligible(op):
                del queue[index]
                return op
        raise AssertionError("unreachable: a ready kind has an eligible op")

    def run(self) -> None:
        while not self.stop.is_set():
            op = self._next()
            if op is None:
                break
            self.lane.wait(op.kind)
            if self.stop.is_set():
                self.queues[op.kind].appendleft(op)
                break
            started = self.lane.started(op.kind)
            # Recorded before sending: a run started right after a crash still waits.
            self.store.set_last_request(self.fingerprint, op.kind, started)
            self._send(op)
        self._record_remaining()

    # --- one request -----------------------------------------------------------

    def _send(self, op: Op) -> None:
        change = op.change
        client = self.target.client
        try:
            if op.kind == "create":
                list_id = client.create_list(change.name)
                taken = self._owner_of(change, list_id)
                if taken is not None:
                    self._fail_list(
                        change,
                        f"Infobip answered with list {list_id}, which the state already tracks "
                        f"as '{taken}'; give this list another name",
                    )
                    return
                self.store.record_created(change.key, change.destination, change.name, list_id)
                self.list_ids[change.key] = list_id
                with self.lock:
                    self.result.creates += 1
            elif op.kind == "add":
                answer = client.add(self._list_id(op), op.ids)
                rejected = _rejected_ids(op.ids, answer.rejected)
                self.store.record_added(change.key, op.ids, rejected)
                self._count_add(op, rejected)
            else:
                self.store.record_removing(change.key, op.ids)
                client.remove(self._list_id(op), op.ids)
                self.store.record_removed(change.key, op.ids)
                with self.lock:
                    self.result.removes += len(op.ids)
        except TooManyRequests as exc:
            self._throttled(op, exc)
            return
        except TransientError as exc:
            self._transient(op, exc)
            return
        except PayloadTooLarge:
            self._split(op)
            return
        except Unauthorized as exc:
            self._unauthorized(exc)
            return
        except TagNotFound:
            self._tag_not_found(op)
            return
        except InfobipError as exc:
            self._fail_list(change, str(exc))
            return
        with self.lock:
            self.result.requests += 1
        self.emit(Event("request", change.destination, change.name, op.kind, len(op.ids)))
        self._done_one(change)

    def _owner_of(self, change: ListChange, list_id: int) -> str | None:
        """Another list of the state on the same destination with this Infobip id."""
        for key, record in self.store.records().items():
            same = record.destination == change.destination and record.list_id == list_id
            if same and key != change.key and record.status != "missing":
                return record.name
        return None

    def _list_id(self, op: Op) -> int:
        list_id = self.list_ids[op.change.key]
        assert list_id is not None
        return list_id

    def _count_add(self, op: Op, rejected: Mapping[str, str]) -> None:
        with self.lock:
            self.result.adds += len(op.ids) - len(rejected)
            for user_id, kind in rejected.items():
                self.result.rejected[kind] += 1
                samples = self.result.rejected_samples.setdefault(kind, [])
                if len(samples) < SAMPLE:
                    samples.append(user_id)

    def _done_one(self, change: ListChange) -> None:
        self.pending[change.key] -= 1
        if self.pending[change.key] == 0 and change.key not in self.failed:
            finish_list(self.store, change, self.clock)
            self.emit(Event("done", change.destination, change.name))

    # --- what can go wrong ---------------------------------------------------

    def _retry(self, op: Op, delay: float, message: str) -> None:
        self.lane.back_off(op.kind, delay)
        self.queues[op.kind].appendleft(op)
        self.emit(Event("retry", op.change.destination, op.change.name, op.kind, message=message))

    def _throttled(self, op: Op, exc: TooManyRequests) -> None:
        if op.throttled >= MAX_THROTTLED:
            self._fail_list(op.change, f"still rate limited after {MAX_THROTTLED} retries")
            return
        op = attrs.evolve(op, throttled=op.throttled + 1)
        delay = backoff(
            self.lane.intervals[op.kind], op.throttled, retry_after=exc.retry_after, rng=self.rng
        )
        self._retry(op, delay, f"429 too many requests; waiting {delay:.1f} s")

    def _transient(self, op: Op, exc: TransientError) -> None:
        change = op.change
        if op.kind == "create" and exc.outcome_unknown:
            warning = (
                f"{change.destination}/{change.name}: a create may have succeeded before the "
                f"answer was lost ({exc}); if Infobip now shows two lists named "
                f"'{change.name}', the empty one is an orphan and can be deleted"
            )
            with self.lock:
                self.result.warnings.append(warning)
            self.emit(Event("warning", change.destination, change.name, message=warning))
        if op.retries >= MAX_RETRIES:
            self._fail_list(change, f"{exc} (gave up after {MAX_RETRIES} retries)")
            return
        op = attrs.evolve(op, retries=op.retries + 1)
        delay = backoff(self.lane.intervals[op.kind], op.retries, rng=self.rng)
        self._retry(op, delay, f"{exc}; retry {op.retries}/{MAX_RETRIES} in {delay:.1f} s")

    def _split(self, op: Op) -> None:
        if len(op.ids) <= 1:
            self._fail_list(op.change, "Infobip says one id is too large a request (413)")
            return
        half = len(op.ids) // 2
        queue = self.queues[op.kind]
        queue.appendleft(attrs.evolve(op, ids=op.ids[half:], retries=0, throttled=0))
        queue.appendleft(attrs.evolve(op, ids=op.ids[:half], retries=0, throttled=0))
        self.pending[op.change.key] += 1
        self.emit(
            Event(
                "retry",
                op.change.destination,
                op.change.name,
                op.kind,
                message=f"413 too large: split {len(op.ids):,} ids in two",
                total=1,
            )
        )

    def _unauthorized(self, exc: Unauthorized) -> None:
        env = self.target.api_key_env
        where = f"the key in ${env}" if env else "the sandbox key"
        message = f"{exc}. Infobip refused {where}: check it, then run apply again"
        for change in self.changes.values():
            if self.pending[change.key] > 0:
                self._fail_list(change, message)

    def _tag_not_found(self, op: Op) -> None:
        change = op.change
        self.store.update(change.key, status="missing", input_digest=None)
        self._fail_list(
            change,
            f"Infobip has no list {self.list_ids.get(change.key)} any more (TAG_NOT_FOUND); "
            "marked missing in the state, the next plan creates it again",
        )

    def _fail_list(self, change: ListChange, message: str) -> None:
        """Stop all work on ``change``'s list; what succeeded stays committed."""
        self.failed.add(change.key)
        for kind, queue in self.queues.items():
            self.queues[kind] = deque(op for op in queue if op.change.key != change.key)
        self.pending[change.key] = 0
        with self.lock:
            self.result.failed.append(Failure(change.destination, change.name, message))
        self.emit(Event("failed", change.destination, change.name, message=message))

    def _record_remaining(self) -> None:
        left: dict[str, dict[str, int]] = {}
        for op in (op for queue in self.queues.values() for op in queue):
            label = f"{op.change.destination}/{op.change.name}"
            counts = left.setdefault(label, {"create": 0, "add": 0, "remove": 0, "requests": 0})
            counts[op.kind] += 1 if op.kind == "create" else len(op.ids)
            counts["requests"] += 1
        with self.lock:
            self.result.remaining.update(left)


def _rejected_ids(sent: Sequence[str], rejected: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Map the ids the server rejected back to the ids we sent (id -> error type)."""
    if not rejected:
        return {}
    by_folded = {user_id.casefold(): user_id for user_id in sent}
    result = {}
    for kind, ids in rejected.items():
        for returned in ids:
            original = by_folded.get(str(returned).strip().casefold())
            if original is not None:
                result[original] = kind
    return result


def finish_list(store: StateStore, change: ListChange, clock: Clock) -> None:
    """Every request of a list succeeded: remember its inputs."""
    changes: dict[str, object] = {"applied_at": _now_iso(clock)}
    if change.reason == "prune":
        changes["status"] = "pruned"
    else:
        # A pruned list named by the specs again is back in use.
        changes.update(input_digest=change.input_digest, status="active")
    store.update(change.key, **changes)


def housekeep(store: StateStore, plan: Plan, clock: Clock) -> None:
    """State-only changes of a plan: forget rejected ids, note lists that need no request."""
    for change in plan.changes:
        if change.forget_rejected and store.record(change.key) is not None:
            store.forget_rejected(change.key, change.forget_rejected)
        if not change.has_requests and store.record(change.key) is not None:
            finish_list(store, change, clock)


def _run_lane(run: _LaneRun, done: threading.Event) -> None:
    try:
        run.run()
    finally:
        done.set()


def apply_plan(
    plan: Plan,
    store: StateStore,
    targets: Mapping[str, Target],
    *,
    clock: Clock,
    sleep: Sleep,
    on_event: Callable[[Event], None] = lambda event: None,
    stop: threading.Event | None = None,
    rng: random.Random | None = None,
) -> ApplyResult:
    """Send ``plan``'s requests and commit each confirmed one to ``store``.

    ``targets`` maps each destination name with changes to where its requests
    go; destinations whose targets share an API key share one lane. Lanes
    run concurrently, one thread each. Setting ``stop`` ends every lane after
    its request in flight. Errors of single requests become ``failed``
    entries of the result, never exceptions.
    """
    stop = stop or threading.Event()
    rng = rng or random.Random()
    result = ApplyResult()
    lock = threading.Lock()

    def emit(event: Event) -> None:
        with lock:
            on_event(event)

    housekeep(store, plan, clock)
    lanes: dict[str, tuple[Target, list[ListChange]]] = {}
    for change in plan.request_changes:
        target = targets[change.destination]
        slot = f"{target.client.base_url}#{target.client.fingerprint}"
        lanes.setdefault(slot, (target, []))[1].append(change)
    for change in plan.request_changes:
        emit(Event("start", change.destination, change.name, total=change.requests))
    runs = [
        _LaneRun(
            target,
            changes,
            store,
            result,
            clock=clock,
            sleep=sleep,
            emit=emit,
            stop=stop,
            rng=rng,
            lock=lock,
        )
        for target, changes in lanes.values()
    ]
    # Lanes always run in worker threads: a Ctrl-C reaches only this thread,
    # which then lets each lane finish and commit its request in flight. Each
    # lane signals its own end: Thread.join() interrupted by a Ctrl-C can
    # wrongly report a live thread as finished (CPython bpo-45274).
    finished = [threading.Event() for _ in runs]
    for run, done in zip(runs, finished, strict=True):
        threading.Thread(target=_run_lane, args=(run, done), name="lane", daemon=True).start()
    try:
        for done in finished:
            while not done.wait(0.1):
                pass
    except KeyboardInterrupt:
        stop.set()
        for done in finished:
            done.wait()
    result.interrupted = stop.is_set() and bool(result.remaining)
    # Compaction costs O(list size): done once the lanes are idle, never between requests.
    for change in plan.changes:
        if store.needs_compaction(change.key):
            store.compact(change.key)
    return result
