"""Spec validation, through the command a user runs: every problem, located, at once."""

from __future__ import annotations

import pytest

from tests.helpers import emails

HEADER = """\
version: 1
destinations:
  prod:
    base_url: https://xyz.api.infobip.com
    api_key_env: INFOBIP_API_KEY
"""


@pytest.fixture
def cohort(ws):
    ws.cohort("a.csv", emails(0, 5))
    return "cohorts/a.csv"


def validate(ws, text: str):
    ws.spec(text)
    return ws.run("validate")


def test_valid_workspace_is_summarised(ws, cohort):
    result = validate(ws, HEADER + "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n")
    assert result.code == 0
    assert "1 spec file, 1 destination(s), 1 list" in result.out


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n    id_colum: email\n",
            "main.yaml:9:5: unknown key 'id_colum' in lists.churn (did you mean 'id_column'?)",
        ),
        (
            "lists:\n  churn:\n    cohorts: cohorts/a.csv\n",
            "main.yaml:8:14: lists.churn.cohorts must be a list, not a string",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n    max_removal: 1.5\n",
            "main.yaml:9:18: lists.churn.max_removal must be at most 1",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n    id_type: mail\n",
            "lists.churn.id_type must be one of: email, external_id, phone",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts/missing.csv]\n",
            "main.yaml:8:15: cohort file 'cohorts/missing.csv' not found",
        ),
        (
            "lists:\n  churn:\n    destination: prd\n    cohorts: [cohorts/a.csv]\n",
            "main.yaml:8:18: unknown destination 'prd' (did you mean 'prod'?)",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n"
            "  Churn:\n    cohorts: [cohorts/a.csv]\n",
            "main.yaml:9:3: list 'Churn' collides with 'churn'",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts/a.csv]\n    cohorts: [cohorts/a.csv]\n",
            "main.yaml:9:5: duplicate key 'cohorts' (first defined on line 8)",
        ),
        (
            f"lists:\n  {'x' * 257}:\n    cohorts: [cohorts/a.csv]\n",
            "list name is 257 characters; Infobip allows 256",
        ),
        (
            "lists:\n  '  ':\n    cohorts: [cohorts/a.csv]\n",
            "main.yaml:7:3: list name is blank",
        ),
        (
            "lists:\n  churn:\n    cohorts: [../../../etc/passwd]\n",
            "leads outside the workspace",
        ),
        (
            "lists:\n  churn:\n    cohorts: [/etc/passwd]\n",
            "leads outside the workspace",
        ),
        (
            "lists:\n  churn:\n    cohorts: [cohorts]\n",
            "cohort path 'cohorts' is not a file",
        ),
        (
            "lists:\n  churn:\n    cohorts: []\n",
            "lists.churn.cohorts must name at least 1 file",
        ),
    ],
)
def test_each_problem_is_located_and_explained(ws, cohort, body, expected):
    result = validate(ws, HEADER + body)
    assert result.code == 1
    assert expected in result.err
    assert "Traceback" not in result.err


def test_all_problems_are_reported_together(ws, cohort):
    result = validate(
        ws,
        HEADER
        + "    batch_sise: 5\n"
        + "lists:\n  a:\n    cohorts: [cohorts/nope.csv]\n  b:\n    cohorts: [cohorts/a.csv]\n"
        + "    allow_empty: yes please\n",
    )
    assert result.code == 1
    assert "3 problems in the specs" in result.err
    assert "did you mean 'batch_size'?" in result.err
    assert "cohort file 'cohorts/nope.csv' not found" in result.err
    assert "lists.b.allow_empty must be true or false, not a string" in result.err


def test_version_other_than_1_is_refused(ws, cohort):
    result = validate(ws, HEADER.replace("version: 1", "version: 2"))
    assert result.code == 1
    assert "main.yaml:1:10: unsupported spec version 2 (this reconciler reads 'version: 1')" in (
        result.err
    )


def test_literal_api_key_is_refused_without_echoing_it(ws, cohort):
    secret = "4f1b2c3d4e5f60718293a4b5c6d7e8f9-0a1b2c3d"
    result = validate(
        ws,
        HEADER + f"    api_key: {secret}\n" + "lists:\n  a:\n    cohorts: [cohorts/a.csv]\n",
    )
    assert result.code == 1
    assert "main.yaml:6:5: 'api_key' looks like a literal secret" in result.err
    assert "api_key_env" in result.err
    assert secret not in result.err + result.out


def test_a_key_pasted_into_api_key_env_is_not_echoed(ws, cohort):
    secret = "App 4f1b2c3d4e5f60718293a4b5c6d7e8f9"
    text = HEADER.replace("INFOBIP_API_KEY", f'"{secret}"')
    result = validate(ws, text + "lists:\n  a:\n    cohorts: [cohorts/a.csv]\n")
    assert result.code == 1
    assert "api_key_env must be the NAME of an environment variable" in result.err
    assert "4f1b2c3d" not in result.err


def test_real_destination_needs_api_key_env(ws, cohort):
    text = "version: 1\ndestinations:\n  prod:\n    base_url: https://x.api.infobip.com\n"
    result = validate(ws, text + "lists:\n  a:\n    cohorts: [cohorts/a.csv]\n")
    assert result.code == 1
    assert "main.yaml:3:3: destination 'prod' needs api_key_env" in result.err


def test_ambiguous_destination(ws, cohort):
    text = (
        HEADER + "  dev:\n    base_url: sandbox\n" + "lists:\n  a:\n    cohorts: [cohorts/a.csv]\n"
    )
    result = validate(ws, text)
    assert result.code == 1
    assert "which destination? (set destination: to one of: dev, prod)" in result.err


def test_yaml_syntax_error_names_the_line(ws, cohort):
    result = validate(ws, HEADER + "lists:\n\ta: 1\n")
    assert result.code == 1
    assert "main.yaml:7:1: YAML syntax error" in result.err
    assert "tabs" in result.err


def test_alias_bomb_is_refused(ws, cohort):
    bomb = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 9):
        prev = chr(ord("a") + n - 1)
        name = chr(ord("a") + n)
        bomb.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    result = validate(ws, "version: 1\n" + "\n".join(bomb) + "\n")
    assert result.code == 1
    assert "aliases" in result.err


def test_list_names_collide_across_files_case_insensitively(ws, cohort):
    ws.spec(HEADER + "lists:\n  Churn-EU:\n    cohorts: [cohorts/a.csv]\n", "a.yaml")
    ws.spec("version: 1\nlists:\n  churn-eu:\n    cohorts: [cohorts/a.csv]\n", "b.yaml")
    result = ws.run("validate")
    assert result.code == 1
    assert "b.yaml:3:3: list 'churn-eu' collides with 'Churn-EU'" in result.err


def test_symlink_out_of_the_workspace_is_refused(ws, cohort, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside") / "secret.csv"
    outside.write_text('"amplitude_id","user_id"\n"1","x@example.com"\n')
    (ws.specs / "cohorts" / "link.csv").symlink_to(outside)
    result = validate(ws, HEADER + "lists:\n  a:\n    cohorts: [cohorts/link.csv]\n")
    assert result.code == 1
    assert "leads outside the workspace" in result.err


def test_single_spec_file_and_empty_directory(ws, cohort):
    path = ws.spec(HEADER + "lists:\n  a:\n    cohorts: [cohorts/a.csv]\n")
    assert ws.run("validate", "--specs", str(path)).code == 0
    empty = ws.root / "empty"
    empty.mkdir()
    result = ws.run("validate", "--specs", str(empty))
    assert result.code == 1
    assert "no *.yaml or *.yml spec files here" in result.err


def test_schema_command_prints_the_json_schema(ws):
    result = ws.run("schema")
    assert result.code == 0
    schema = result.json()
    assert schema["$schema"].endswith("2020-12/schema")
    assert set(schema["$defs"]["list"]["properties"]) >= {"cohorts", "exclude", "max_removal"}
