"""Every broken input of tests/data/bad/ gives exit 1 and one clear, located message.

Each case is a small workspace (``specs/*.yaml`` and cohort files) with:

- ``expect.txt``: substrings the error output must contain, one a line; a line starting with
  ``!`` is one it must NOT contain (a secret, the content of /etc/passwd).
- ``make.txt`` (optional): what git cannot hold, applied to the copy before the run:
  ``symlink PATH -> TARGET`` or ``mkdir PATH``.
- ``validate-passes`` (optional): the problem is in a cohort file's content, which only
  ``plan`` reads; ``validate`` (specs only) succeeds.

Before each run a state with one list is seeded; the run must leave it byte for byte alone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import pytest

from reconciler.spec import load_workspace
from reconciler.store import StateStore
from tests.helpers import Result, Workspace

CASES = Path(__file__).parent / "data" / "bad"
CASE_FILES = ("expect.txt", "make.txt", "validate-passes")
# "Error: " then the message; a spec error lists one located problem a line after its head.
LOCATED = re.compile(r"^\S+:\d+:\d+: \S")
NAMES_FILE_AND_LINE = re.compile(r"(^|\s)\S+:\d+:")


def _cases() -> list[Path]:
    return sorted(path for path in CASES.iterdir() if path.is_dir())


def test_the_corpus_covers_at_least_30_cases() -> None:
    assert len(_cases()) >= 30


def _make(root: Path, instructions: str) -> None:
    for line in instructions.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        verb, _, rest = line.partition(" ")
        if verb == "symlink":
            link, _, target = rest.partition(" -> ")
            path = root / link
            path.parent.mkdir(parents=True, exist_ok=True)
            if os.path.isabs(target) and not os.path.exists(target):
                pytest.skip(f"{target} does not exist on this system")
            try:
                path.symlink_to(target)
            except OSError as exc:  # Windows without the privilege
                pytest.skip(f"cannot create symlinks here: {exc}")
        elif verb == "mkdir":
            (root / rest).mkdir(parents=True)
        else:
            raise AssertionError(f"unknown make.txt instruction: {line!r}")


def _state_bytes(state: Path) -> dict[str, str]:
    return {
        str(path.relative_to(state)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(state.rglob("*"))
        if path.is_file()
    }


def _state_content(state: Path) -> dict[str, object]:
    """What the state says: serial, lineage, every list and its members, and no lock."""
    with StateStore(state) as store:
        records = store.records()
        return {
            "serial": store.serial,
            "lineage": store.lineage,
            "records": records,
            "members": {key: store.members(key) for key in records},
            "lock": store.lock_info(),
        }


@pytest.fixture(params=_cases(), ids=lambda path: path.name)
def case(request, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    source: Path = request.param
    root = tmp_path / "ws"
    shutil.copytree(source, root, symlinks=True, ignore=shutil.ignore_patterns(*CASE_FILES))
    make = source / "make.txt"
    if make.exists():
        _make(root, make.read_text())
    monkeypatch.chdir(root)
    with StateStore(root / "state") as store:
        store.seed_list("prod/churn-risk-eu", "prod", "churn-risk-eu", 2568, ["old@example.com"])
    lines = (source / "expect.txt").read_text().splitlines()
    return {
        "ws": Workspace(root, env={"PATH": os.environ.get("PATH", "")}),
        "must": [line for line in lines if line and not line.startswith("!")],
        "must_not": [line[1:] for line in lines if line.startswith("!")],
        "validate_passes": (source / "validate-passes").exists(),
    }


def _assert_one_clear_message(result: Result, case: dict) -> None:
    err = result.err
    assert result.code == 1, (result.code, err)
    assert "Traceback" not in err, err
    assert result.out == "", f"partial output on stdout: {result.out!r}"
    for expected in case["must"]:
        assert expected in err, f"{expected!r} not in:\n{err}"
    for forbidden in case["must_not"]:
        assert forbidden not in err, f"{forbidden!r} leaked into:\n{err}"
    assert NAMES_FILE_AND_LINE.search(err), f"no file:line in:\n{err}"
    # One message: "Error: ..." on the first line, then only located problems, if any.
    first, *rest = err.rstrip("\n").split("\n")
    assert first.startswith("Error: "), err
    for line in rest:
        assert LOCATED.match(line), f"not one clear message; stray line {line!r} in:\n{err}"
    assert len(err) < 2_000 + 2 * max(map(len, case["must"])), "the message is not short"


def test_bad_input_gives_one_located_message_and_leaves_the_state_alone(case: dict) -> None:
    ws: Workspace = case["ws"]
    content = _state_content(ws.state)
    # taken after opening it: opening the store rewrites its bookkeeping rows
    untouched = _state_bytes(ws.state)

    validate = ws.run("validate", "--specs", "specs")
    if case["validate_passes"]:
        assert validate.code == 0, validate.err
        assert "Traceback" not in validate.err
    else:
        _assert_one_clear_message(validate, case)

    plan = ws.run("plan", "--specs", "specs", "--state", "state")
    _assert_one_clear_message(plan, case)

    if not case["validate_passes"]:
        # refused while loading the specs, before the state was even opened
        assert _state_bytes(ws.state) == untouched
    assert _state_content(ws.state) == content


def test_a_whole_float_batch_size_is_read_as_an_int(ws) -> None:
    # YAML "5.0" is a whole number to JSON Schema; range() and slicing need an int
    ws.cohort("a.csv", ["ana@example.com"])
    ws.spec(
        """
        version: 1
        destinations:
          prod: {base_url: sandbox, batch_size: 5.0}
        lists:
          churn: {cohorts: [cohorts/a.csv]}
        """
    )
    (destination,) = load_workspace(ws.specs).destinations
    assert destination.batch_size == 5
    assert type(destination.batch_size) is int


def test_a_merge_key_can_be_overridden_but_a_key_written_twice_cannot(ws) -> None:
    # "<<: *base" then "base_url: ..." is how YAML merges are used, not a duplicate key
    ws.cohort("a.csv", ["ana@example.com"])
    ws.spec(
        """
        version: 1
        destinations:
          prod: &base
            base_url: https://a.api.infobip.com
            api_key_env: INFOBIP_API_KEY
          eu:
            <<: *base
            base_url: https://b.api.infobip.com
        lists:
          churn: {destination: eu, cohorts: [cohorts/a.csv]}
        """
    )
    eu = load_workspace(ws.specs).destination("eu")
    assert (eu.base_url, eu.api_key_env) == ("https://b.api.infobip.com", "INFOBIP_API_KEY")

    text = ws.specs.joinpath("main.yaml").read_text()
    ws.specs.joinpath("main.yaml").write_text(
        text.replace(
            "    base_url: https://b",
            "    base_url: https://c.api.infobip.com\n    base_url: https://b",
        )
    )
    result = ws.run("validate")
    assert result.code == 1
    assert "specs/main.yaml:9:5: duplicate key 'base_url' (first defined on line 8)" in result.err
