"""`reconciler plan` and friends, through main() as a user runs them."""

from __future__ import annotations

import pytest

from reconciler.cli import build_parser
from reconciler.store import StateStore
from tests.helpers import emails

SPEC = """\
version: 1
destinations:
  prod:
    base_url: https://xyz.api.infobip.com
    api_key_env: INFOBIP_API_KEY
    batch_size: 100
    pacing: {create: 2, add: 10, remove: 5}
lists:
  churn-risk-eu:
    cohorts: [cohorts/churn.csv]
    exclude: [cohorts/unsub.csv]
"""


@pytest.fixture
def churn(ws):
    ws.spec(SPEC)
    ws.cohort("churn.csv", [*emails(0, 1200), "", "not-an-email", " User5@Example.COM "])
    ws.cohort("unsub.csv", emails(1190, 1200))
    return ws


def seed(ws, members):
    with StateStore(ws.state) as store:
        store.seed_list("prod/churn-risk-eu", "prod", "churn-risk-eu", 2568, members)


def test_first_plan_creates_and_fills(churn):
    result = churn.run("plan")
    assert result.code == 0, result.err
    assert "+ prod/churn-risk-eu  create list, add 1,190 ids" in result.out
    assert "1 invalid id skipped, never sent" in result.out
    assert (
        "Plan: 1 list to create, 1,190 ids to add, 0 ids to remove in 13 requests "
        "(about 2 min at the configured pacing)." in result.out
    )
    assert not churn.state.exists(), "plan must not write a state"


def test_plan_masks_emails_unless_show_ids(churn):
    masked = churn.run("plan").out
    assert "user0@example.com" not in masked
    assert "u***@example.com" in masked
    shown = churn.run("plan", "--show-ids").out
    assert "user0@example.com" in shown


def test_plan_json_has_the_documented_keys(churn):
    seed(churn, emails(0, 100) + emails(5000, 5030))
    result = churn.run("plan", "--format", "json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["format_version"] == 1
    assert data["summary"] == {
        "creates": 0,
        "adds": 1090,
        "removes": 30,
        "requests": 12,
        "estimated_seconds": 110.0,
    }
    (change,) = data["changes"]
    assert change["list"] == "churn-risk-eu" and change["list_id"] == 2568
    assert (change["add"], change["remove"], change["skipped_invalid"]) == (1090, 30, 1)
    assert data["orphans"] == [] and data["refused"] == []
    assert "user5000@example.com" not in result.out


def test_markdown_has_summary_warning_table_and_details(churn):
    seed(churn, emails(0, 1190) + emails(5000, 5030))
    out = churn.run("plan", "--format", "markdown").out
    lines = out.splitlines()
    assert lines[0].startswith("**Plan: 0 lists to create, 0 ids to add, 30 ids to remove")
    assert "> [!WARNING]" in out
    assert "30 ids will be removed from 1 list: prod/churn-risk-eu (30)." in out
    assert "| ~ | churn-risk-eu | 2568 | 0 | 30 | 1 |" in out
    assert "<details><summary>Per-list detail</summary>" in out
    assert "user5000@example.com" not in out


def test_no_changes_and_detailed_exitcode(churn):
    assert churn.run("plan", "--detailed-exitcode").code == 2
    seed(churn, emails(0, 1190))
    result = churn.run("plan", "--detailed-exitcode")
    assert result.code == 0
    assert "No changes." in result.out


def test_mass_removal_is_refused_with_the_numbers(churn):
    seed(churn, emails(0, 1190) + emails(5000, 6000))
    result = churn.run("plan")
    assert result.code == 1
    assert "too many removals" in result.out
    assert "Plan refused" in result.err and "--allow-mass-removal" in result.err
    assert churn.run("plan", "--allow-mass-removal").code == 0


def test_orphans_are_reported(churn):
    seed(churn, emails(0, 1190))
    with StateStore(churn.state) as store:
        store.seed_list("prod/legacy", "prod", "legacy", 99, emails(0, 3))
    out = churn.run("plan").out
    assert "prod/legacy (list 99), 3 members: left alone" in out


def test_target_and_exclude_select_lists(churn):
    churn.spec("version: 1\nlists:\n  other:\n    cohorts: [cohorts/unsub.csv]\n", "other.yaml")
    data = churn.run("plan", "--format", "json", "--target", "other").json()
    assert [c["list"] for c in data["changes"]] == ["other"]
    data = churn.run("plan", "--format", "json", "--exclude", "other").json()
    assert [c["list"] for c in data["changes"]] == ["churn-risk-eu"]
    result = churn.run("plan", "--target", "nope")
    assert result.code == 1 and "no list named 'nope'" in result.err


def test_cohort_errors_are_one_clear_line(churn):
    (churn.specs / "cohorts" / "churn.csv").write_text('"amplitude_id","email"\n"1","a@b.com"\n')
    result = churn.run("plan")
    assert result.code == 1
    assert "churn.csv:1:1:" in result.err and "id_column" in result.err
    assert "Traceback" not in result.err


def test_state_from_environment_variable(churn):
    seed(churn, emails(0, 1190))
    result = churn.run("plan", "--state", str(churn.root / "elsewhere"))
    assert "1 list to create" in result.out
    env_state = churn.root / "env-state"
    with StateStore(env_state) as store:
        store.seed_list("prod/churn-risk-eu", "prod", "churn-risk-eu", 1, emails(0, 1190))
    import io

    from reconciler.cli import main

    out = io.StringIO()
    code = main(
        ["plan", "--specs", str(churn.specs)],
        stdout=out,
        stderr=io.StringIO(),
        env={"RECONCILER_STATE": str(env_state)},
    )
    assert code == 0 and "No changes." in out.getvalue()


def test_usage_errors_exit_1(churn, capsys):
    assert churn.run("plan", "--format", "yaml").code == 1
    assert "invalid choice" in capsys.readouterr().err


def _subcommands(parser):
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield name, sub
                yield from ((f"{name} {n}", s) for n, s in _subcommands(sub))


def test_every_command_has_help_text_with_an_example():
    commands = dict(_subcommands(build_parser()))
    assert {"validate", "plan", "schema"} <= set(commands)
    for name, parser in commands.items():
        text = parser.format_help()
        assert parser.description, f"{name} has no description"
        assert "examples:\n  reconciler " in text, f"{name} has no example"


def test_a_state_path_that_is_a_file_is_an_error(churn):
    (churn.root / "statefile").write_text("not a state")
    for command in ("plan", "apply"):
        result = churn.run(command, "--state", str(churn.root / "statefile"))
        assert result.code == 1
        assert "is not a directory" in result.err
