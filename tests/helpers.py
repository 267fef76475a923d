"""Test helpers: write workspaces the way users do, run the CLI in-process."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import attrs

from reconciler.cli import main
from reconciler.sandbox import Sandbox


def write_csv(path: Path, ids: Iterable[str], *, gz: bool = False) -> Path:
    """An Amplitude cohort export: every field quoted, CRLF, amplitude_id first."""
    lines = ['"amplitude_id","user_id"']
    lines += [f'"{n}","{user_id}"' for n, user_id in enumerate(ids, start=1000)]
    data = ("\r\n".join(lines) + "\r\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        import gzip

        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def emails(start: int, stop: int, domain: str = "example.com") -> list[str]:
    return [f"user{i}@{domain}" for i in range(start, stop)]


@attrs.define
class Result:
    code: int
    out: str
    err: str

    def json(self) -> dict:
        return json.loads(self.out)


@attrs.define
class Workspace:
    """A workspace directory: specs/, cohorts, state/; runs the CLI inside it."""

    root: Path
    env: dict[str, str] = attrs.field(factory=dict)

    @property
    def specs(self) -> Path:
        return self.root / "specs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    def spec(self, text: str, name: str = "main.yaml") -> Path:
        path = self.specs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
        return path

    def cohort(self, name: str, ids: Iterable[str], *, gz: bool = False) -> Path:
        return write_csv(self.specs / "cohorts" / name, ids, gz=gz)

    def run(self, *argv: str, env: dict[str, str] | None = None) -> Result:
        out, err = io.StringIO(), io.StringIO()
        args = list(argv)
        if args and args[0] not in ("schema",) and "--specs" not in args:
            args += ["--specs", str(self.specs)]
        if args and args[0] not in ("schema", "validate") and "--state" not in args:
            args += ["--state", str(self.state)]
        code = main(args, stdout=out, stderr=err, env={**self.env, **(env or {})})
        return Result(code, out.getvalue(), err.getvalue())


class FakeClock:
    """A clock that only moves when someone sleeps: exact, instant timing tests."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)


# --- end to end: the installed command ---------------------------------------

KEY = "e2e-secret-key-0123456789"
COMMAND = Path(sys.executable).with_name("reconciler")


def reconciler() -> str:
    found = str(COMMAND) if COMMAND.exists() else shutil.which("reconciler")
    assert found, "the reconciler command is not installed (pip install -e .)"
    return found


class Project:
    def __init__(self, root: Path, url: str, data: Path, batch_size: int = 10) -> None:
        self.root, self.data = root, data
        (root / "specs").mkdir(parents=True)
        (root / "specs" / "prod.yaml").write_text(
            f"""\
version: 1
destinations:
  prod:
    base_url: {url}
    api_key_env: INFOBIP_API_KEY
    batch_size: {batch_size}
    pacing: {{create: 0.1, add: 0.2, remove: 0.1}}
lists:
  churn-risk-eu:
    cohorts: [cohorts/churn.csv]
    exclude: [cohorts/unsub.txt]
  power-users:
    cohorts: [cohorts/power.csv.gz]
"""
        )
        self.env = {**os.environ, "INFOBIP_API_KEY": KEY, "NO_COLOR": "1"}

    def cohorts(self, churn, power, unsub=()) -> None:
        write_csv(self.root / "specs/cohorts/churn.csv", churn)
        write_csv(self.root / "specs/cohorts/power.csv.gz", power, gz=True)
        (self.root / "specs/cohorts/unsub.txt").write_text("\n".join(unsub) + "\n")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [reconciler(), *args], cwd=self.root, env=self.env, capture_output=True, text=True
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            [reconciler(), *args],
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def sandbox_lists(self) -> dict[str, frozenset[str]]:
        with Sandbox(self.data, keys=()) as box:
            return {item.name: box.members(item.id) for item in box.lists()}

    def request_log(self):
        with Sandbox(self.data, keys=()) as box:
            return box.request_log()


def wait_until(predicate, timeout: float = 30.0, what: str = "a condition") -> None:
    """Poll ``predicate`` until it holds: no fixed sleeps that a slow CI machine outruns."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def requests_sent(project: Project) -> int:
    """How many list requests the served sandbox has received so far."""
    if not (project.data / "sandbox.db").exists():
        return 0
    return sum(1 for r in project.request_log() if r.kind in ("create", "add", "remove"))
