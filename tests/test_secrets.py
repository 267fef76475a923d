"""Secrets and personal data: the key nowhere, emails masked, private files, no pickle."""

from __future__ import annotations

import re
import sqlite3
import stat
from pathlib import Path

import pytest

from tests.helpers import KEY, Project, emails

pytestmark = pytest.mark.e2e

EMAIL = re.compile(r"[a-z0-9][a-z0-9._-]*@example\.com")  # unmasked: more than one char before @


def written_files(*roots: Path):
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                yield path


def assert_no_secret(texts, files):
    for text in texts:
        assert KEY not in text
    for path in files:
        assert KEY.encode() not in path.read_bytes(), path


@pytest.fixture
def project(tmp_path, sandbox_process):
    url, data, proc = sandbox_process(
        "--faults",
        "rate=0.4,seed=3,slow_seconds=0.4",
        limits="create=0.02,add=0.02,remove=0.02",
        verbose=True,
    )
    p = Project(tmp_path / "repo", url, data, batch_size=4)
    spec = p.root / "specs" / "prod.yaml"
    spec.write_text(
        spec.read_text().replace(
            "{create: 0.1, add: 0.2, remove: 0.1}", "{create: 0.02, add: 0.02, remove: 0.02}"
        )
    )
    p.env["RECONCILER_HTTP_TIMEOUT"] = "0.3"
    p.env["GITHUB_STEP_SUMMARY"] = str(tmp_path / "summary.md")
    p.sandbox_proc = proc
    return p


def test_key_and_emails_stay_out_of_everything_a_run_writes(project, tmp_path):
    project.cohorts([*emails(0, 30), "someone@shop.invalid"], emails(100, 110))
    outputs = []
    # debug logging, faults (5xx, resets, timeouts, 429s) and every command
    for args in (
        ("validate", "-vv"),
        ("plan", "-vv", "--out", "plan.bin"),
        ("plan", "--format", "markdown"),
        ("plan", "--format", "json"),
        ("show", "plan.bin"),
    ):
        result = project.run(*args, check=False)
        outputs += [result.stdout, result.stderr]
    for _ in range(30):
        result = project.run("apply", "-vv", "--auto-approve", check=False)
        outputs += [result.stdout, result.stderr]
        if result.returncode == 0:
            break
    assert result.returncode == 0
    for args in (
        ("state", "list"),
        ("state", "show", "churn-risk-eu"),
        ("sandbox", "show", "--data", str(project.data)),
    ):
        result = project.run(*args, "-vv", check=False)
        outputs += [result.stdout, result.stderr]
    # a wrong key: the 401 path
    wrong = dict(project.env, INFOBIP_API_KEY=KEY[::-1])
    project.cohorts(emails(0, 31), emails(100, 110))
    project.env, saved = wrong, project.env
    result = project.run("apply", "-vv", "--auto-approve", check=False)
    project.env = saved
    outputs += [result.stdout, result.stderr]
    assert result.returncode == 1 and "$INFOBIP_API_KEY" in result.stdout + result.stderr
    assert KEY[::-1] not in result.stdout + result.stderr

    files = list(written_files(project.root, tmp_path / "summary.md", project.data))
    assert_no_secret(outputs, files)
    for text in outputs:
        assert not EMAIL.findall(text), EMAIL.findall(text)[:3]
    assert not EMAIL.findall((tmp_path / "summary.md").read_text())


def test_the_sandbox_logs_mask_emails(project):
    project.cohorts(emails(0, 8), emails(100, 104))
    for _ in range(20):
        if project.run("apply", "--auto-approve", check=False).returncode == 0:
            break
    proc = project.sandbox_proc
    proc.terminate()
    log = proc.stderr.read()
    assert "INFO" in log  # it did log each request
    assert not EMAIL.findall(log)
    assert KEY not in log


def test_state_and_plan_files_are_private_and_never_pickled(project):
    project.cohorts(emails(0, 5), emails(100, 104))
    project.run("plan", "--out", "plan.bin")
    for _ in range(20):
        if project.run("apply", "--auto-approve", check=False).returncode == 0:
            break
    state = project.root / "state"
    for path in [state, *state.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    assert stat.S_IMODE((project.root / "plan.bin").stat().st_mode) == 0o600
    with sqlite3.connect(state / "cache.db") as db:
        pickled = db.execute("SELECT count(*) FROM Cache WHERE mode = 4").fetchone()[0]
    assert pickled == 0
