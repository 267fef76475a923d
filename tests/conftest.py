from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.helpers import KEY, Workspace, reconciler


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty workspace; the current directory is its root, as for a user."""
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path, env={"PATH": os.environ.get("PATH", "")})


@pytest.fixture
def served_sandbox(tmp_path: Path):
    """Factory: a ``Sandbox`` served over real HTTP on 127.0.0.1 (a free port), in a thread.

    ``served_sandbox(**kwargs) -> SandboxServer`` (``.url``, ``.sandbox``); kwargs go to
    ``Sandbox`` (default ``keys=("sandbox-key-one", "sandbox-key-two")``, short real limits
    of 0.05 s with 0.01 s tolerance, ``data_dir`` under tmp_path). Every server is shut
    down and its sandbox closed after the test.
    """
    import threading

    from reconciler.sandbox import Limits, Sandbox, serve

    started = []

    def start(**kwargs):
        kwargs.setdefault("keys", ("sandbox-key-one", "sandbox-key-two"))
        kwargs.setdefault("limits", Limits(create=0.05, add=0.05, remove=0.05, tolerance=0.01))
        data_dir = kwargs.pop("data_dir", None) or tmp_path / f"served-sandbox-{len(started)}"
        server = serve(Sandbox(data_dir, **kwargs))
        thread = threading.Thread(target=server.serve_forever, name="sandbox-server", daemon=True)
        thread.start()
        started.append((server, thread))
        return server

    yield start
    for server, thread in started:
        server.shutdown()
        thread.join(5)
        server.sandbox.close()


@pytest.fixture
def sandbox_process(tmp_path: Path):
    """Factory: `reconciler sandbox serve` in a subprocess; returns (url, data dir, process)."""
    started = []

    def start(*extra: str, limits: str = "create=0.1,add=0.2,remove=0.1", verbose=False):
        data = tmp_path / f"sandbox-data-{len(started)}"
        args = [reconciler(), "sandbox", "serve", "--port", "0", "--data", str(data)]
        args += ["--limits", limits, *extra] + (["-v"] if verbose else [])
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "RECONCILER_SANDBOX_KEYS": KEY},
        )
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, proc.stderr.read()
        started.append(proc)
        return line.split()[4], data, proc

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        assert KEY not in proc.stderr.read()


@pytest.fixture
def server(sandbox_process):
    """`reconciler sandbox serve` in a subprocess; yields (url, data dir)."""
    url, data, _ = sandbox_process()
    return url, data
