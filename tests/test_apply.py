"""Apply on a fake clock: exact pacing, retries, errors, rejections, interruption."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from reconciler.apply import MAX_RETRIES, Target, apply_plan
from reconciler.infobip import InfobipClient
from reconciler.plan import DesiredList, make_plan
from reconciler.sandbox import Limits, Sandbox
from reconciler.spec import Destination, ListSpec, Pacing, Workspace
from reconciler.store import StateStore
from tests.helpers import FakeClock, emails

KEY = "test-key"
PACING = Pacing(create=2, add=10, remove=5)


class Scripted(httpx.BaseTransport):
    """Passes requests to ``inner`` unless ``script(n, request)`` answers first."""

    def __init__(self, inner: httpx.BaseTransport, script) -> None:
        self.inner, self.script, self.sent = inner, script, []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        answer = self.script(len(self.sent), request)
        if answer is None:
            return self.inner.handle_request(request)
        if isinstance(answer, Exception):
            raise answer
        return answer


def body(request: httpx.Request) -> dict:
    return json.loads(request.content) if request.content else {}


class Rig:
    """A sandbox and a state on one fake clock, and helpers to plan and apply."""

    def __init__(self, tmp: Path, batch_size: int = 2, script=None) -> None:
        self.clock = FakeClock()
        self.box = Sandbox(
            tmp / "sandbox",
            keys=[KEY],
            limits=Limits(create=2, add=10, remove=5, tolerance=0),
            clock=self.clock,
            sleep=self.clock.sleep,
        )
        self.transport = Scripted(self.box.transport(), script or (lambda n, r: None))
        self.store = StateStore(tmp / "state", clock=self.clock)
        self.dest = Destination(
            "prod", "sandbox", "INFOBIP_KEY", batch_size=batch_size, pacing=PACING
        )
        self.client = InfobipClient("http://sandbox.invalid", KEY, transport=self.transport)
        self.events = []

    def plan(self, lists: dict[str, set[str]], **kwargs):
        specs = [ListSpec(name, "prod", ()) for name in lists]
        ws = Workspace(Path("."), (), (self.dest,), tuple(specs))
        desired = {s.key: DesiredList(s, frozenset(lists[s.name]), input_digest="d") for s in specs}
        return make_plan(ws, desired, self.store.snapshot(), **kwargs)

    def apply(self, plan, stop=None):
        intervals = {"create": 2.0, "add": 10.0, "remove": 5.0}
        target = Target("prod", self.client, intervals, api_key_env="INFOBIP_KEY")
        return apply_plan(
            plan,
            self.store,
            {"prod": target},
            clock=self.clock,
            sleep=self.clock.sleep,
            on_event=self.events.append,
            stop=stop,
        )

    def sends(self):
        """(seconds since the first request, kind) of every request the sandbox saw."""
        log = self.box.request_log()
        start = log[0].time
        return [(round(r.time - start, 3), r.kind) for r in log]


@pytest.fixture
def rig(tmp_path):
    r = Rig(tmp_path)
    yield r
    r.store.close()
    r.box.close()


def test_send_times_interleave_kinds_at_exact_intervals(rig):
    # list c exists with 3 members that must go; a and b are new
    rig.apply(rig.plan({"c": set(emails(0, 3))}))
    rig.clock.now += 100
    first = len(rig.box.request_log())
    plan = rig.plan(
        {"a": set(emails(10, 15)), "b": {"b@example.com"}, "c": set()}, allow_mass_removal=True
    )
    result = rig.apply(plan)
    assert result.ok, result.failed
    log = rig.box.request_log()[first:]
    t0 = log[0].time
    sends = [(round(r.time - t0, 3), r.kind) for r in log]
    # creates every 2 s, adds every 10 s, removes every 5 s; kinds interleave; a list's
    # create comes before its adds
    assert sends == [
        (0.0, "remove"),  # c 1/2 (removes were idle longest)
        (0.0, "create"),  # a
        (0.0, "add"),  # a 1/3, right after its create
        (2.0, "create"),  # b
        (5.0, "remove"),  # c 2/2
        (10.0, "add"),  # a 2/3
        (20.0, "add"),  # a 3/3
        (30.0, "add"),  # b
    ]
    assert all(r.status == 200 for r in log)
    assert rig.box.members(rig.store.record("prod/c").list_id) == frozenset()
    assert rig.box.members(rig.store.record("prod/a").list_id) == frozenset(emails(10, 15))
    assert rig.plan({"a": set(emails(10, 15)), "b": {"b@example.com"}, "c": set()}).changes == ()


def test_a_run_right_after_another_still_waits_out_the_interval(rig):
    rig.apply(rig.plan({"a": {"x@example.com"}}))
    last_add = rig.clock.now
    rig.clock.now += 3  # a new run 3 s later: the add interval is 10 s
    rig.apply(rig.plan({"a": {"x@example.com", "y@example.com"}}))
    assert rig.box.request_log()[-1].time == pytest.approx(last_add + 10)
    assert all(r.status == 200 for r in rig.box.request_log())


def test_429_honours_retry_after(tmp_path):
    def script(n, request):
        if n == 2:
            return httpx.Response(
                429,
                headers={"Retry-After": "17"},
                json={"requestError": {"serviceException": {"messageId": "TOO_MANY_REQUESTS"}}},
            )
        return None

    rig = Rig(tmp_path, script=script)
    result = rig.apply(rig.plan({"a": {"x@example.com"}}))
    assert result.ok and result.adds == 1
    sent_add = [s for s in rig.sends() if s[1] == "add"]
    assert sent_add == [(17.0, "add")]  # the header wins over the 10 s interval
    assert any(e.type == "retry" and "429" in e.message for e in rig.events)


def test_429_in_the_newer_shape_backs_off_from_the_interval(tmp_path):
    def script(n, request):
        if n == 2:
            return httpx.Response(429, json={"errorCode": "E429", "description": "slow down"})
        return None

    rig = Rig(tmp_path, script=script)
    assert rig.apply(rig.plan({"a": {"x@example.com"}})).ok
    ((add_time, _),) = [s for s in rig.sends() if s[1] == "add"]
    assert 10.0 <= add_time <= 12.5  # the add interval, plus at most 25 % jitter


def test_server_errors_are_retried_a_bounded_number_of_times(tmp_path):
    def script(n, request):
        if request.url.path.endswith("/add"):
            return httpx.Response(503, text="unavailable")
        return None

    rig = Rig(tmp_path, script=script)
    result = rig.apply(rig.plan({"a": set(emails(0, 4))}))
    assert not result.ok
    assert "gave up after 5 retries" in result.failed[0].message
    adds = [r for r in rig.transport.sent if r.url.path.endswith("/add")]
    assert len(adds) == 1 + MAX_RETRIES
    # the create succeeded and is kept; the adds remain for the next run
    assert rig.store.record("prod/a").list_id is not None
    assert rig.store.members("prod/a") == set()


def test_unknown_create_outcome_warns_of_an_orphan(tmp_path):
    def script(n, request):
        if n == 1:
            return httpx.ReadTimeout("timed out", request=request)
        return None

    rig = Rig(tmp_path, script=script)
    result = rig.apply(rig.plan({"churn": {"x@example.com"}}))
    assert result.ok
    assert "prod/churn: a create may have succeeded" in result.warnings[0]
    assert "two lists named 'churn'" in result.warnings[0]


def test_401_stops_the_destination_and_names_the_variable(tmp_path):
    rig = Rig(tmp_path)
    rig.client = InfobipClient("http://sandbox.invalid", "wrong-key", transport=rig.transport)
    result = rig.apply(rig.plan({"a": {"x@example.com"}, "b": {"y@example.com"}}))
    assert len(result.failed) == 2
    assert "$INFOBIP_KEY" in result.failed[0].message
    assert "wrong-key" not in json.dumps([f.message for f in result.failed])
    assert len(rig.transport.sent) == 1
    assert rig.store.records() == {}


def test_tag_not_found_marks_the_list_missing_and_the_next_plan_recreates_it(rig):
    rig.apply(rig.plan({"a": {"x@example.com"}}))
    rig.store.update("prod/a", list_id=999_999)  # a list Infobip does not know
    result = rig.apply(rig.plan({"a": {"x@example.com", "y@example.com"}}))
    assert "TAG_NOT_FOUND" in result.failed[0].message
    assert rig.store.record("prod/a").status == "missing"
    (change,) = rig.plan({"a": {"x@example.com", "y@example.com"}}).changes
    assert change.create and change.add == ("x@example.com", "y@example.com")


def test_413_splits_the_batch(tmp_path):
    def script(n, request):
        if len(body(request).get("userIds", [])) > 1:
            return httpx.Response(413, text="too large")
        return None

    rig = Rig(tmp_path, batch_size=4, script=script)
    result = rig.apply(rig.plan({"a": set(emails(0, 4))}))
    assert result.ok and result.adds == 4
    assert rig.store.members("prod/a") == set(emails(0, 4))


def test_rejected_ids_are_recorded_and_not_resent(rig):
    wanted = {"ok@example.com", "bad@shop.invalid"}
    result = rig.apply(rig.plan({"a": wanted}))
    assert result.ok
    assert dict(result.rejected) == {"VALIDATION_ERROR": 1}
    assert rig.store.rejected("prod/a") == {"bad@shop.invalid": "VALIDATION_ERROR"}
    plan = rig.plan({"a": wanted})
    assert not plan.has_changes
    retry = rig.plan({"a": wanted}, retry_rejected=True)
    assert retry.changes[0].add == ("bad@shop.invalid",)
    # it leaves the cohort: forgotten, so re-entering sends it again
    rig.apply(rig.plan({"a": {"ok@example.com"}}))
    assert rig.store.rejected("prod/a") == {}
    assert rig.plan({"a": wanted}).changes[0].add == ("bad@shop.invalid",)


def test_stop_ends_after_the_request_in_flight(rig):
    stop = threading.Event()

    def on_event(event):
        if event.type == "request" and event.kind == "add":
            stop.set()

    target = Target("prod", rig.client, {"create": 2.0, "add": 10.0, "remove": 5.0})
    result = apply_plan(
        rig.plan({"a": set(emails(0, 10))}),
        rig.store,
        {"prod": target},
        clock=rig.clock,
        sleep=rig.clock.sleep,
        on_event=on_event,
        stop=stop,
    )
    assert result.interrupted
    assert rig.store.members("prod/a") == set(emails(0, 10)[:2])
    assert result.remaining["prod/a"]["add"] == 8
