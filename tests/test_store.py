"""The state store: confirmed membership, O(batch) commits, privacy, the lock."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from reconciler.errors import LockHeld, StateCorrupt, StateError
from reconciler.store import COMPACT_AFTER, StateStore

KEY = "prod/churn"


@pytest.fixture
def store(tmp_path):
    with StateStore(tmp_path / "state") as s:
        yield s


def test_new_state_has_lineage_and_serial(store):
    assert len(store.lineage) == 36
    assert store.serial == 0


def test_files_are_private(store):
    store.record_created(KEY, "prod", "churn", 7)
    assert stat.S_IMODE(store.directory.stat().st_mode) == 0o700
    files = [p for p in store.directory.rglob("*") if p.is_file()]
    assert files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_every_change_bumps_the_serial_and_persists(tmp_path):
    with StateStore(tmp_path / "s") as store:
        lineage = store.lineage
        store.record_created(KEY, "prod", "churn", 7)
        store.record_added(KEY, ["a@x.com", "b@x.com", "bad@x"], {"bad@x": "VALIDATION_ERROR"})
        store.record_removed(KEY, ["a@x.com"])
        assert store.serial == 3
    with StateStore(tmp_path / "s") as store:
        assert store.lineage == lineage
        assert store.serial == 3
        assert store.members(KEY) == {"b@x.com"}
        assert store.rejected(KEY) == {"bad@x": "VALIDATION_ERROR"}
        record = store.record(KEY)
        assert (record.list_id, record.member_count, record.rejected_count) == (7, 1, 1)


def test_compaction_keeps_membership(store):
    store.record_created(KEY, "prod", "churn", 7)
    for i in range(COMPACT_AFTER + 3):
        store.record_added(KEY, [f"u{i}@x.com", f"v{i}@x.com"])
        store.record_removed(KEY, [f"v{i}@x.com"])
    before = store.members(KEY)
    assert store.needs_compaction(KEY)
    store.compact(KEY)
    assert not store.needs_compaction(KEY)
    assert store.members(KEY) == before == {f"u{i}@x.com" for i in range(COMPACT_AFTER + 3)}


def test_a_commit_into_a_large_list_writes_only_the_batch(store, monkeypatch):
    """Invariant 2: committing a batch costs O(batch), not O(list size)."""
    store.seed_list(KEY, "prod", "churn", 7, (f"member{i}@example.com" for i in range(200_000)))
    written: list[int] = []
    real_set = store._cache.set

    def spy(key, value, *args, **kwargs):
        written.append(len(value) if isinstance(value, (str, bytes)) else 8)
        return real_set(key, value, *args, **kwargs)

    monkeypatch.setattr(store._cache, "set", spy)
    store.record_added(KEY, [f"new{i}@example.com" for i in range(10)])
    # the delta, the list record and the meta record: a few hundred bytes, not megabytes
    assert sum(written) < 2_000
    assert len(store.members(KEY)) == 200_010


def test_rename_keeps_the_list_id_and_members(store):
    store.record_created(KEY, "prod", "churn", 7)
    store.record_added(KEY, ["a@x.com"])
    store.rename_list(KEY, "prod/churn-eu", destination="prod", name="churn-EU")
    assert store.record(KEY) is None
    moved = store.record("prod/churn-eu")
    assert (moved.list_id, moved.name) == (7, "churn-EU")
    assert store.members("prod/churn-eu") == {"a@x.com"}


def test_recreated_list_starts_empty(store):
    store.record_created(KEY, "prod", "churn", 7)
    store.record_added(KEY, ["a@x.com"])
    store.update(KEY, status="missing")
    store.record_created(KEY, "prod", "churn", 8)
    assert store.members(KEY) == set()
    assert store.record(KEY).status == "active"


def test_a_corrupt_state_is_an_error_not_an_empty_state(tmp_path):
    directory = tmp_path / "state"
    with StateStore(directory) as store:
        store.record_created(KEY, "prod", "churn", 7)
    db = directory / "cache.db"
    db.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StateCorrupt, match="do not delete it"):
        StateStore(directory)


def test_the_lock_names_its_owner_and_can_be_forced(store):
    lock = store.acquire_lock()
    with pytest.raises(LockHeld, match=f"force-unlock {lock.id}") as info:
        store.acquire_lock(timeout=0)
    assert f"pid {os.getpid()}" in str(info.value)
    with pytest.raises(StateError, match="no lock with id nope"):
        store.force_unlock("nope")
    store.force_unlock(lock.id)
    store.release_lock(store.acquire_lock())


def test_a_lock_of_a_dead_process_is_taken_over(store, caplog):
    code = (
        "import sys; from reconciler.store import StateStore; "
        f"s = StateStore({str(store.directory)!r}); print(s.acquire_lock().id)"
    )
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert store.lock_info().id == dead.stdout.strip()
    lock = store.acquire_lock()
    assert lock.id != dead.stdout.strip()
    assert "that process is gone" in caplog.text


def test_waiting_for_the_lock_uses_the_injected_clock(store):
    store.acquire_lock()
    now = [0.0]
    naps: list[float] = []

    def sleep(seconds):
        naps.append(seconds)
        now[0] += seconds

    with pytest.raises(LockHeld):
        store.acquire_lock(timeout=3, sleep=sleep, monotonic=lambda: now[0])
    assert sum(naps) == pytest.approx(3)


def test_pacing_clocks_do_not_move_the_serial(store):
    store.set_last_request("sha256:abc", "add", 12.5)
    assert store.last_request("sha256:abc", "add") == 12.5
    assert store.last_request("sha256:abc", "remove") is None
    assert store.serial == 0


def test_a_remove_in_flight_is_not_claimed(store):
    """After a crash between sending a remove and its answer, the state vouches for neither."""
    store.record_created(KEY, "prod", "churn", 7)
    store.record_added(KEY, ["a@x.com", "b@x.com"])
    store.record_removing(KEY, ["a@x.com"])
    # ... the process dies here ...
    state = store.list_state(KEY)
    assert state.members == {"a@x.com", "b@x.com"}
    assert state.claimed == {"b@x.com"}
    store.record_removed(KEY, ["a@x.com"])
    state = store.list_state(KEY)
    assert state.members == state.claimed == {"b@x.com"}
    assert not state.pending


def test_missing_delta_is_corruption_not_an_empty_list(store):
    store.record_created(KEY, "prod", "churn", 7)
    store.record_added(KEY, ["a@x.com"])
    store._cache.delete(f"set/{KEY}/members/0/0")
    with pytest.raises(StateCorrupt, match="unreadable"):
        store.members(KEY)


def test_a_torn_database_file_is_reported(tmp_path):
    directory = tmp_path / "state"
    with StateStore(directory) as store:
        store.seed_list(KEY, "prod", "churn", 7, (f"m{i}@x.com" for i in range(20_000)))
    db = directory / "cache.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(StateCorrupt, match="Restore it from a backup"), StateStore(directory) as s:
        s.snapshot()


def test_a_lock_from_another_host_is_never_taken_over(store):
    import json

    foreign = {"id": "abc123", "pid": 999_999_999, "host": "ci-runner-7", "started": 0.0}
    store._cache.set("lock", json.dumps(foreign))
    with pytest.raises(LockHeld, match="held by pid 999999999 on ci-runner-7") as info:
        store.acquire_lock()
    assert "reconciler force-unlock abc123" in str(info.value)
    store.force_unlock("abc123")
    store.release_lock(store.acquire_lock())
