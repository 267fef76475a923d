"""The pull-request loop: saved plans, stale-plan refusal, step summaries, state operations."""

from __future__ import annotations

import gzip
import io
import stat

import pytest

from reconciler import render
from reconciler.cli import main
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
  power:
    cohorts: [cohorts/power.csv]
"""


@pytest.fixture
def demo(ws):
    ws.spec(SPEC)
    ws.cohort("churn.csv", emails(0, 25))
    ws.cohort("power.csv", emails(100, 112))
    return ws


def saved_plan(ws, *extra):
    path = ws.root / "plan.bin"
    result = ws.run("plan", "--out", str(path), *extra)
    assert result.code == 0, result.err
    return path


# --- saved plans ---------------------------------------------------------------


def test_saved_plan_is_private_and_applied_exactly(demo):
    path = saved_plan(demo)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "user0@example.com" not in path.read_bytes().decode("latin-1")  # compressed
    result = demo.run("apply", str(path), "--format", "json")  # no prompt, no --auto-approve
    assert result.code == 0, result.err
    assert result.json()["applied"] == {"creates": 2, "adds": 37, "removes": 0, "requests": 7}


def test_show_renders_a_saved_plan_in_every_format(demo):
    path = saved_plan(demo)
    assert "Plan: 2 lists to create, 37 ids to add" in demo.run("show", str(path)).out
    assert demo.run("show", str(path), "--format", "json").json()["summary"]["adds"] == 37
    markdown = demo.run("show", str(path), "--format", "markdown").out
    assert markdown.startswith("**Plan: 2 lists to create")


def test_plan_is_stale_after_another_apply(demo):
    path = saved_plan(demo)
    assert demo.run("apply", "--auto-approve").code == 0
    result = demo.run("apply", str(path))
    assert result.code == 1
    assert "Saved plan is stale" in result.err and "serial" in result.err


def test_plan_is_stale_when_a_cohort_file_changed(demo):
    path = saved_plan(demo)
    demo.cohort("churn.csv", emails(0, 26))
    result = demo.run("apply", str(path))
    assert result.code == 1
    assert "inputs changed since the plan" in result.err
    assert "churn.csv (changed)" in result.err


def test_plan_from_another_state_is_refused(demo):
    assert demo.run("apply", "--auto-approve").code == 0
    demo.cohort("churn.csv", emails(0, 26))
    path = saved_plan(demo)
    other = demo.root / "other-state"
    with StateStore(other) as store:
        for _ in range(store.serial, StateStore(demo.state).serial):
            store.set_last_request("x", "add", 0)
    result = demo.run("apply", str(path), "--state", str(other))
    assert result.code == 1
    assert "different state" in result.err or "stale" in result.err


def test_corrupted_plan_file_is_refused(demo):
    path = saved_plan(demo)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    result = demo.run("apply", str(path))
    assert result.code == 1
    assert "corrupted" in result.err
    path.write_bytes(bytes(data[:-20]))
    assert "corrupted or truncated" in demo.run("apply", str(path)).err


def test_unknown_format_version_is_refused(demo):
    path = saved_plan(demo)
    text = gzip.decompress(path.read_bytes()).decode()
    path.write_bytes(
        gzip.compress(text.replace('"format_version":1', '"format_version":9').encode())
    )
    result = demo.run("apply", str(path))
    assert result.code == 1
    assert "format 9" in result.err


def test_saved_plan_rejects_extra_selection_flags(demo):
    path = saved_plan(demo)
    result = demo.run("apply", str(path), "--target", "churn")
    assert result.code == 1 and "applied exactly as it was made" in result.err


def test_saved_subset_plan_keeps_its_subset(demo):
    path = saved_plan(demo, "--target", "churn")
    data = demo.run("apply", str(path), "--format", "json").json()
    assert data["applied"]["creates"] == 1


# --- CI summaries ----------------------------------------------------------------


def test_plan_and_apply_append_to_the_step_summary(demo):
    summary = demo.root / "summary.md"
    env = {"GITHUB_STEP_SUMMARY": str(summary)}
    demo.run("plan", env=env)
    text = summary.read_text()
    assert text.startswith("**Plan: 2 lists to create, 37 ids to add")
    demo.run("apply", "--auto-approve", env=env)
    text = summary.read_text()
    assert "**Apply complete: 2 lists created, 37 ids added" in text
    assert "user0@example.com" not in text


def test_summary_is_truncated_with_a_notice_never_the_totals(demo):
    summary = demo.root / "summary.md"
    summary.write_text("x" * (render.STEP_SUMMARY_LIMIT - 450))
    demo.cohort("churn.csv", emails(0, 3000))
    demo.run("plan", env={"GITHUB_STEP_SUMMARY": str(summary)})
    added = summary.read_bytes()[render.STEP_SUMMARY_LIMIT - 450 :].decode()
    assert len(summary.read_bytes()) <= render.STEP_SUMMARY_LIMIT
    assert added.startswith("**Plan: 2 lists to create, 3,012 ids to add")
    assert "Detail truncated" in added
    assert added.count("<details>") == added.count("</details>")


@pytest.mark.parametrize("limit", [300, 600, 1000, 5000])
def test_fit_markdown_respects_the_limit(limit):
    head = ["**Plan: 9 lists to create, 1,000 ids to add.**", ""]
    body = ["<details><summary>Per-list detail</summary>", ""]
    body += [f"- line {i} " + "y" * 50 for i in range(200)] + ["</details>"]
    text = render.fit_markdown(head, body, limit)
    assert len(text.encode()) <= limit
    assert text.startswith(head[0])
    assert "Detail truncated" in text
    assert text.count("<details>") == text.count("</details>")


def test_markdown_stdout_fits_a_pull_request_comment(demo):
    demo.cohort("churn.csv", emails(0, 20_000))
    out = demo.run("plan", "--format", "markdown", "--show-ids").out
    assert len(out) <= render.COMMENT_LIMIT


# --- state operations -------------------------------------------------------------


@pytest.fixture
def applied(demo):
    assert demo.run("apply", "--auto-approve").code == 0
    return demo


def serial(ws) -> int:
    with StateStore(ws.state) as store:
        return store.serial


def test_state_list_and_show(applied):
    out = applied.run("state", "list").out
    assert "LIST" in out and "churn" in out and "demo" in out
    rows = applied.run("state", "list", "--format", "json").json()["lists"]
    assert {r["list"]: r["members"] for r in rows} == {"churn": 25, "power": 12}
    shown = applied.run("state", "show", "churn").out
    assert "25 members" in shown and "u***@example.com" in shown
    assert "user0@example.com" not in shown
    assert "user0@example.com" in applied.run("state", "show", "churn", "--show-ids").out
    missing = applied.run("state", "show", "nope")
    assert missing.code == 1 and "has no list 'nope'" in missing.err


def test_state_rm_asks_then_forgets(applied):
    before = serial(applied)
    result = applied.run("state", "rm", "churn")
    assert result.code == 1 and "--yes" in result.err
    result = applied.run("state", "rm", "churn", "--yes")
    assert result.code == 0 and "Infobip is untouched" in result.out
    assert serial(applied) == before + 1
    assert "1 list to create" in applied.run("plan").out


def test_state_mv_keeps_the_list_id(applied):
    with StateStore(applied.state) as store:
        list_id = store.record("demo/churn").list_id
    applied.spec(SPEC.replace("  churn:\n", "  churn-eu:\n"))
    assert "1 list to create" in applied.run("plan").out
    result = applied.run("state", "mv", "churn", "churn-eu")
    assert result.code == 0, result.err
    assert f"keeping Infobip list {list_id}" in result.out
    assert "No changes." in applied.run("plan").out


def test_import_adopts_an_existing_list(demo):
    demo.run("apply", "--auto-approve", "--target", "power")
    with StateStore(demo.state) as store:
        power_id = store.record("demo/power").list_id
        store.remove_list("demo/power")
    result = demo.run("import", "power", str(power_id))
    assert result.code == 0, result.err
    plan = demo.run("plan", "--target", "power")
    assert "add 12 ids" in plan.out and "create" not in plan.out.split("Plan:")[0]
    assert "cannot be removed" in plan.out
    again = demo.run("import", "power", str(power_id))
    assert again.code == 1 and "already in the state" in again.err


def test_force_unlock(applied):
    with StateStore(applied.state) as store:
        lock = store.acquire_lock()
    assert applied.run("apply", "--auto-approve").code == 1
    result = applied.run("force-unlock", lock.id)
    assert result.code == 0 and "Removed lock" in result.out
    assert applied.run("force-unlock", lock.id).code == 1


def test_state_operations_make_saved_plans_stale(applied):
    applied.cohort("churn.csv", emails(0, 26))
    path = saved_plan(applied)
    applied.run("state", "mv", "power", "power-2")
    assert "Saved plan is stale" in applied.run("apply", str(path)).err


def test_yes_on_a_terminal_confirms_state_rm(applied):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out, err = io.StringIO(), io.StringIO()
    args = ["state", "rm", "churn", "--state", str(applied.state)]
    assert main(args, stdout=out, stderr=err, stdin=Terminal("yes\n"), env={}) == 0


def test_recreating_the_old_name_after_state_mv_is_refused(applied):
    applied.spec(SPEC.replace("  churn:\n", "  churn-eu:\n"))
    assert applied.run("state", "mv", "churn", "churn-eu").code == 0
    applied.spec(
        SPEC.replace("  churn:\n", "  churn-eu:\n    cohorts: [cohorts/churn.csv]\n  churn:\n")
    )
    result = applied.run("plan")
    assert result.code == 1
    assert "Infobip already has a list named 'churn'" in result.err
    assert "tracks as 'churn-eu'" in result.err


def test_a_pruned_list_that_returns_is_reused_and_active(applied):
    applied.spec(
        SPEC.replace("    batch_size: 10\n", "    batch_size: 10\n    prune: true\n").replace(
            "  power:\n    cohorts: [cohorts/power.csv]\n", ""
        )
    )
    result = applied.run("apply", "--auto-approve", "--allow-mass-removal")
    assert result.code == 0, result.err
    assert "prune: remove 12 ids" in result.out
    with StateStore(applied.state) as store:
        record = store.record("demo/power")
        assert (record.status, len(store.members("demo/power"))) == ("pruned", 0)
        list_id = record.list_id
    applied.spec(SPEC)
    result = applied.run("apply", "--auto-approve")
    assert "create" not in result.out.split("Plan:")[0]
    with StateStore(applied.state) as store:
        record = store.record("demo/power")
        assert (record.status, record.list_id, record.member_count) == ("active", list_id, 12)
    assert "No changes." in applied.run("plan").out


def test_the_ci_examples_are_valid_yaml_with_plan_and_apply_jobs():
    import pathlib

    import yaml

    examples = pathlib.Path(__file__).parents[1] / "examples"
    github = yaml.safe_load((examples / "github-actions.yml").read_text())
    assert set(github["jobs"]) == {"plan", "apply"}
    assert "secrets.INFOBIP_API_KEY" in str(github["jobs"]["apply"])
    assert "secrets" not in str(github["jobs"]["plan"])  # plans need no key (forks can plan)
    gitlab = yaml.safe_load((examples / "gitlab-ci.yml").read_text())
    assert {"plan", "apply"} <= set(gitlab)


def test_plan_out_hashes_each_cohort_file_once(applied, monkeypatch):
    from reconciler import cohorts

    hashed = []
    real = cohorts.file_digest

    def counting(path, **kwargs):
        hashed.append(path.name)
        return real(path, **kwargs)

    monkeypatch.setattr(cohorts, "file_digest", counting)
    result = applied.run("plan", "--out", str(applied.root / "plan.bin"))
    assert result.code == 0 and "No changes." in result.out
    assert sorted(hashed) == ["churn.csv", "power.csv"]
