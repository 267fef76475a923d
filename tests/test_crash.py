"""Crash safety and concurrency with real processes: SIGKILL, two applies, lanes per key."""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time

import pytest

from reconciler.apply import Target, apply_plan
from reconciler.infobip import InfobipClient
from reconciler.plan import DesiredList, make_plan
from reconciler.sandbox import Limits, Sandbox
from reconciler.spec import Destination, ListSpec, Pacing, Workspace
from reconciler.store import StateStore
from tests.helpers import Project, emails, requests_sent, wait_until

pytestmark = pytest.mark.e2e


def claims_hold(project: Project) -> None:
    """The state never claims a member the sandbox does not have."""
    lists = project.sandbox_lists()
    with StateStore(project.root / "state") as store:
        for key, record in store.records().items():
            claimed = store.list_state(key).claimed
            assert claimed <= lists.get(record.remote_name or record.name, frozenset()), key


@pytest.fixture
def fast(tmp_path, sandbox_process):
    url, data, _ = sandbox_process(limits="create=0.05,add=0.05,remove=0.05")
    project = Project(tmp_path / "repo", url, data, batch_size=5)
    spec = project.root / "specs" / "prod.yaml"
    faster = "{create: 0.05, add: 0.05, remove: 0.05}"
    spec.write_text(spec.read_text().replace("{create: 0.1, add: 0.2, remove: 0.1}", faster))
    return project


def test_sigkill_at_random_moments_then_rerun_converges(fast):
    rng = random.Random(20261204)
    churn, power = emails(0, 120), emails(500, 560)
    for round_ in range(3):  # fill; then removes and adds; then more of both
        fast.cohorts(churn, power)
        for _ in range(3):
            proc = fast.start("apply", "--auto-approve", "--allow-mass-removal")
            time.sleep(rng.uniform(0.3, 1.2))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            claims_hold(fast)
        rerun = fast.run("apply", "--auto-approve", "--allow-mass-removal")
        assert "Traceback" not in rerun.stderr
        assert fast.sandbox_lists() == {
            "churn-risk-eu": frozenset(churn),
            "power-users": frozenset(power),
        }
        assert "No changes." in fast.run("plan").stdout
        churn = sorted(
            set(rng.sample(churn, len(churn) // 2))
            | set(emails(1000 + 100 * round_, 1040 + 100 * round_))
        )
        power = sorted(set(rng.sample(power, 40)))


def test_second_apply_waits_for_the_lock_with_a_timeout(fast):
    fast.cohorts(emails(0, 100), emails(500, 540))
    first = fast.start("apply", "--auto-approve")
    wait_until(lambda: requests_sent(fast) >= 2, what="the first apply to send")
    second = fast.run("apply", "--auto-approve", "--lock-timeout", "60")
    assert first.wait(60) == 0
    assert "No changes." in second.stdout  # it planned after the first finished
    claims_hold(fast)


def _lane_rig(tmp_path, shared_key: bool):
    box = Sandbox(tmp_path / "box", keys=["k1", "k2"], limits=Limits(0.1, 0.1, 0.1, tolerance=0.02))
    store = StateStore(tmp_path / "state")
    pacing = Pacing(0.1, 0.1, 0.1)
    dests = (
        Destination("one", "sandbox", "K1", batch_size=1, pacing=pacing),
        Destination("two", "sandbox", "K2", batch_size=1, pacing=pacing),
    )
    specs = (ListSpec("a", "one", ()), ListSpec("b", "two", ()))
    ws = Workspace(tmp_path, (), dests, specs)
    desired = {s.key: DesiredList(s, frozenset(emails(0, 4))) for s in specs}
    plan = make_plan(ws, desired, store.snapshot())
    intervals = {"create": 0.1, "add": 0.1, "remove": 0.1}
    c1 = InfobipClient("http://sandbox.invalid", "k1", transport=box.transport())
    c2 = (
        c1
        if shared_key
        else InfobipClient("http://sandbox.invalid", "k2", transport=box.transport())
    )
    targets = {"one": Target("one", c1, intervals), "two": Target("two", c2, intervals)}
    result = apply_plan(plan, store, targets, clock=time.time, sleep=threading.Event().wait)
    assert result.ok, result.failed
    log = [r for r in box.request_log() if r.kind == "add"]
    store.close()
    box.close()
    return log


def test_two_keys_run_concurrently_and_one_key_shares_a_lane(tmp_path):
    apart = _lane_rig(tmp_path / "apart", shared_key=False)
    shared = _lane_rig(tmp_path / "shared", shared_key=True)
    # two keys: the lanes run side by side, each starting before the other finishes
    by_key: dict[str, list[float]] = {}
    for record in apart:
        by_key.setdefault(record.key_fingerprint, []).append(record.time)
    one, two = by_key.values()
    assert min(one) < max(two) and min(two) < max(one)
    # one key: one lane, so all 8 adds are paced one interval apart
    times = sorted(r.time for r in shared)
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.1 - 0.02
    assert times[-1] - times[0] >= 7 * 0.1 - 0.02
    assert all(r.status == 200 for r in apart + shared)


def test_ctrl_c_commits_the_request_in_flight_and_exits_130(fast):
    fast.cohorts(emails(0, 200), emails(500, 600))
    proc = fast.start("apply", "--auto-approve")
    wait_until(lambda: requests_sent(fast) >= 5, what="a few requests")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "Apply interrupted after the request in flight" in out
    assert "Not applied yet" in out
    assert "Traceback" not in err
    claims_hold(fast)
    with StateStore(fast.root / "state") as store:
        assert store.lock_info() is None  # released on the way out
    fast.run("apply", "--auto-approve")
    assert "No changes." in fast.run("plan").stdout
