"""Convergence under faults: 5xx before and after the change, resets, slow answers, 429s."""

from __future__ import annotations

import itertools
import random
from collections import defaultdict

import pytest

from reconciler.sandbox import Sandbox
from reconciler.store import StateStore
from tests.helpers import KEY, emails

INTERVAL = 0.08
# Loopback arrival jitter forgiven by the sandbox; the client's own send times are exact
# (see the fake-clock tests in test_apply.py). The sandbox runs in its own process, so
# the client's work never delays its clock.
JITTER = 0.04
SPEC = """\
version: 1
destinations:
  prod:
    base_url: {url}
    api_key_env: INFOBIP_API_KEY
    batch_size: 7
    pacing: {{create: {i}, add: {i}, remove: {i}}}
lists:
  churn:
    cohorts: [cohorts/churn.csv]
  power:
    cohorts: [cohorts/power.csv]
"""
ENV = {"INFOBIP_API_KEY": KEY, "RECONCILER_HTTP_TIMEOUT": "0.3", "NO_COLOR": "1"}
MAX_RUNS = 40


def converge(ws, env) -> int:
    """Run apply until it succeeds; return how many runs it took."""
    for run in range(1, MAX_RUNS + 1):
        result = ws.run("apply", "--auto-approve", env=env)
        assert "Traceback" not in result.err
        assert KEY not in result.out + result.err
        if result.code == 0:
            return run
        assert result.code == 1, result.err
    raise AssertionError(f"no convergence after {MAX_RUNS} runs")


@pytest.mark.e2e
@pytest.mark.parametrize("seed", range(20))
def test_apply_converges_under_faults(ws, sandbox_process, seed):
    url, data, _ = sandbox_process(
        "--faults",
        f"rate=0.35,seed={seed},slow_seconds=0.4",
        limits=f"create={INTERVAL},add={INTERVAL},remove={INTERVAL},tolerance={JITTER}",
    )
    ws.spec(SPEC.format(url=url, i=INTERVAL))
    rng = random.Random(seed)
    churn, power = set(emails(0, 40)), set(emails(100, 120))

    for _ in range(2):  # fill, then follow a cohort change
        ws.cohort("churn.csv", sorted(churn))
        ws.cohort("power.csv", sorted(power))
        converge(ws, ENV)
        with Sandbox(data, keys=()) as box:
            names = {item.name: item.id for item in box.lists()}
            assert box.members(names["churn"]) == churn
            assert box.members(names["power"]) == power
        assert "No changes." in ws.run("plan").out
        churn = set(rng.sample(sorted(churn), 28)) | set(emails(200, 200 + rng.randrange(1, 9)))
        power = set(rng.sample(sorted(power), 15))

    with Sandbox(data, keys=()) as box:
        log = box.request_log()
        lists = {item.id: box.members(item.id) for item in box.lists()}
    # no request was sent faster than the pacing allows
    starts = defaultdict(list)
    for record in log:
        if record.kind in ("create", "add", "remove") and record.status != 429:
            starts[record.kind].append(record.time)
    for kind, times in starts.items():
        gaps = [b - a for a, b in itertools.pairwise(sorted(times))]
        assert min(gaps, default=INTERVAL) >= INTERVAL - JITTER, (kind, sorted(gaps)[:3])
    assert sum(1 for r in log if r.fault) >= 3, "the faults were injected"
    provoked = [r for r in log if r.status == 429 and not r.fault]
    assert provoked == [], provoked

    with StateStore(ws.state) as store:
        for key, record in store.records().items():
            assert store.list_state(key).claimed <= lists[record.list_id]
