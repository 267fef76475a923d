from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import Workspace


@pytest.fixture
def ws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    """An empty workspace; the current directory is its root, as for a user."""
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path, env={"PATH": os.environ.get("PATH", "")})
