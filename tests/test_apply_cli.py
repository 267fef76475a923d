"""`reconciler apply` and `reconciler sandbox show` through main(), on the in-process sandbox."""

from __future__ import annotations

import io

import pytest

from reconciler.store import StateStore
from tests.helpers import emails

SPEC = """\
version: 1
destinations:
  demo:
    base_url: sandbox
    batch_size: 10
    pacing: {create: 0.01, add: 0.01, remove: 0.01}
lists:
  churn:
    cohorts: [cohorts/churn.csv]
"""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def demo(ws):
    ws.spec(SPEC)
    ws.cohort("churn.csv", [*emails(0, 25), "vip@shop.invalid"])
    return ws


def test_apply_refuses_without_a_terminal_or_auto_approve(demo):
    result = demo.run("apply")
    assert result.code == 1
    assert "--auto-approve" in result.err
    assert "create list" in result.out  # the plan was shown
    with StateStore(demo.state) as store:
        assert store.records() == {}


def test_apply_asks_for_yes_on_a_terminal(demo, monkeypatch):
    from reconciler.cli import main

    out, err = io.StringIO(), io.StringIO()
    args = ["apply", "--specs", str(demo.specs), "--state", str(demo.state)]
    assert main(args, stdout=out, stderr=err, stdin=Terminal("no\n"), env={}) == 1
    assert "cancelled: nothing was changed" in err.getvalue()
    out = io.StringIO()
    assert main(args, stdout=out, stderr=err, stdin=Terminal("yes\n"), env={}) == 0
    assert "Apply complete: 1 list created, 25 ids added" in out.getvalue()


def test_apply_json_result_and_rejections(demo):
    result = demo.run("apply", "--auto-approve", "--format", "json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["format_version"] == 1
    assert data["applied"] == {"creates": 1, "adds": 25, "removes": 0, "requests": 4}
    assert data["rejected"] == {"VALIDATION_ERROR": 1}
    assert data["failed"] == []
    text = demo.run("apply", "--auto-approve")
    assert "No changes." in text.out


def test_apply_text_summarises_rejections_masked(demo):
    result = demo.run("apply", "--auto-approve")
    assert "VALIDATION_ERROR: 1 id (e.g. v***@shop.invalid)" in result.out
    assert "vip@shop.invalid" not in result.out + result.err
    assert "churn: add 10 ids (2/4 requests" in result.err  # one line per request off a tty


def test_sandbox_show(demo):
    demo.run("apply", "--auto-approve")
    result = demo.run("sandbox", "show")
    assert "'churn': 25 members" in result.out
    assert "user0@example.com" not in result.out
    data = demo.run("sandbox", "show", "--format", "json", "--show-ids").json()
    assert sorted(data["lists"][0]["members"]) == sorted(emails(0, 25))


def test_missing_api_key_is_reported_before_any_request(ws):
    ws.spec(
        SPEC.replace(
            "base_url: sandbox",
            "base_url: https://xyz.api.infobip.com\n    api_key_env: INFOBIP_API_KEY",
        )
    )
    ws.cohort("churn.csv", emails(0, 3))
    result = ws.run("apply", "--auto-approve")
    assert result.code == 1
    assert "the environment variable INFOBIP_API_KEY is not set" in result.err


def test_held_lock_is_refused_with_owner_and_way_out(demo):
    with StateStore(demo.state) as store:
        lock = store.acquire_lock()
        result = demo.run("apply", "--auto-approve")
        assert result.code == 1
        assert "the state is locked" in result.err
        assert f"reconciler force-unlock {lock.id}" in result.err


def test_mass_removal_is_refused_by_apply_too(demo):
    demo.run("apply", "--auto-approve")
    demo.cohort("churn.csv", emails(0, 5))
    result = demo.run("apply", "--auto-approve")
    assert result.code == 1
    assert "too many removals" in result.err
    assert demo.run("apply", "--auto-approve", "--allow-mass-removal").code == 0


def test_live_progress_on_a_terminal(demo):
    from reconciler.cli import main

    out, err = io.StringIO(), Terminal()
    args = ["apply", "--auto-approve", "--specs", str(demo.specs), "--state", str(demo.state)]
    assert main(args, stdout=out, stderr=err, env={"NO_COLOR": "1"}) == 0
    screen = err.getvalue()
    assert (
        "demo" in screen and "4/4" in screen and "26 ids sent" in screen
    )  # the rejected one was sent too
    assert "\x1b[3" not in screen  # NO_COLOR: no colour codes
