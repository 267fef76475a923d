"""End to end: the installed command against the sandbox served over real HTTP."""

from __future__ import annotations

import itertools
import json
import signal
from pathlib import Path

import pytest

from reconciler.store import StateStore
from tests.helpers import KEY, Project, emails, requests_sent, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def project(tmp_path, server):
    url, data = server
    return Project(tmp_path / "repo", url, data)


def test_apply_fills_then_follows_cohort_changes(project):
    churn, power = emails(0, 30), emails(100, 125)
    project.cohorts(churn, power, unsub=["user3@example.com"])

    first = project.run("apply", "--auto-approve", "--format", "json")
    data = json.loads(first.stdout)
    assert data["applied"] == {"creates": 2, "adds": 54, "removes": 0, "requests": 2 + 3 + 3}
    assert project.sandbox_lists() == {
        "churn-risk-eu": frozenset(churn) - {"user3@example.com"},
        "power-users": frozenset(power),
    }

    # cohorts move: 5 leave churn, 7 join; power loses 4
    churn2 = emails(5, 37)
    power2 = emails(100, 121)
    project.cohorts(churn2, power2, unsub=["user3@example.com"])
    plan = json.loads(project.run("plan", "--format", "json").stdout)
    counts = {c["list"]: (c["add"], c["remove"], c["requests"]) for c in plan["changes"]}
    assert counts == {"churn-risk-eu": (7, 4, 2), "power-users": (0, 4, 1)}

    second = json.loads(project.run("apply", "--auto-approve", "--format", "json").stdout)
    assert second["applied"] == {"creates": 0, "adds": 7, "removes": 8, "requests": 3}
    assert project.sandbox_lists() == {
        "churn-risk-eu": frozenset(churn2),
        "power-users": frozenset(power2),
    }

    again = project.run("plan", "--detailed-exitcode")
    assert "No changes." in again.stdout
    third = project.run("apply", "--auto-approve")
    assert "No changes." in third.stdout

    log = project.request_log()
    assert [r.status for r in log if r.status != 200] == [], "no 429 at the configured pacing"
    for kind, interval in (("create", 0.1), ("add", 0.2), ("remove", 0.1)):
        times = [r.time for r in log if r.kind == kind]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(g >= interval - 0.05 for g in gaps), (kind, gaps)


def test_key_never_reaches_output_or_state(project):
    project.cohorts(emails(0, 5), emails(5, 10))
    out = project.run("apply", "--auto-approve")
    assert KEY not in out.stdout + out.stderr
    for path in (project.root / "state").rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_killed_apply_converges_on_rerun(project):
    churn, power = emails(0, 200), emails(1000, 1100)
    project.cohorts(churn, power)
    proc = project.start("apply", "--auto-approve")
    wait_until(lambda: requests_sent(project) >= 5, what="a few paced requests")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    # the state never claims a member the sandbox does not have
    with StateStore(project.root / "state") as store:
        for key, record in store.records().items():
            claimed = store.members(key)
            assert claimed <= project.sandbox_lists().get(record.name, frozenset())

    rerun = project.run("apply", "--auto-approve")
    assert "that process is gone" in rerun.stderr or "Apply complete" in rerun.stdout
    assert project.sandbox_lists() == {
        "churn-risk-eu": frozenset(churn),
        "power-users": frozenset(power),
    }
    assert "No changes." in project.run("plan").stdout


def test_second_apply_is_refused_while_the_first_holds_the_lock(project):
    project.cohorts(emails(0, 100), emails(1000, 1050))
    first = project.start("apply", "--auto-approve")
    wait_until(lambda: requests_sent(project) >= 2, what="the first apply to send")
    second = project.run("apply", "--auto-approve", check=False)
    assert second.returncode == 1
    assert "the state is locked" in second.stderr and "held by pid" in second.stderr
    assert first.wait(60) == 0
    assert "No changes." in project.run("apply", "--auto-approve").stdout


def test_example_workflow_commands_in_order(project):
    """The commands of examples/github-actions.yml, in order, against the served sandbox."""
    workflow = (Path(__file__).parents[1] / "examples" / "github-actions.yml").read_text()
    steps = [
        "reconciler validate",
        "reconciler plan --out plan.bin --format markdown --detailed-exitcode",
        "reconciler apply plan.bin",
    ]
    for step in steps:
        assert step in workflow
    summary = project.root / "step-summary.md"
    project.env["GITHUB_STEP_SUMMARY"] = str(summary)
    project.env["RECONCILER_STATE"] = "state"
    project.cohorts(emails(0, 40), emails(200, 230))

    # pull request: validate, plan with the markdown summary, plan.bin as the artifact
    project.run("validate")
    planned = project.run(*steps[1].split()[1:], check=False)
    assert planned.returncode == 2, planned.stderr
    assert planned.stdout.startswith("**Plan: 2 lists to create, 70 ids to add")
    artifact = (project.root / "plan.bin").read_bytes()

    # merge: apply exactly the reviewed plan (no prompt), then it is spent
    (project.root / "plan.bin").write_bytes(artifact)
    applied = project.run(*steps[2].split()[1:])
    assert "Apply complete: 2 lists created, 70 ids added" in applied.stdout
    assert project.sandbox_lists() == {
        "churn-risk-eu": frozenset(emails(0, 40)),
        "power-users": frozenset(emails(200, 230)),
    }
    text = summary.read_text()
    assert "**Plan: 2 lists to create" in text and "**Apply complete" in text
    stale = project.run(*steps[2].split()[1:], check=False)
    assert stale.returncode == 1 and "Saved plan is stale" in stale.stderr
    assert project.run("plan", "--detailed-exitcode").returncode == 0
