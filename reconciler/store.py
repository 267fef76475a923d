"""The state store: what Infobip confirmed, kept on disk with diskcache.

Infobip's API cannot read a list back, so the state is the only record of
what each list holds. It records only what the API confirmed, and each
confirmed request is committed in one SQLite transaction before the next is
sent. Members of a list are a compressed base snapshot plus append-only
deltas, so a commit costs O(batch) whatever the list size; ``compact`` folds
the deltas into a new base.

Layout (all values are str, bytes or numbers: nothing is pickled)::

    meta                          {"format", "lineage", "serial"}
    list/<key>                    the list record (JSON), see ListRecord
    set/<key>/<set>/<gen>/base    zlib("\\n".join(sorted items))
    set/<key>/<set>/<gen>/<seq>   zlib("+" or "-", "\\n", items)
    lock                          {"id", "pid", "host", "started"}
    pacing/<fingerprint>/<kind>   wall-clock time of the last request start

``<set>`` is ``members`` (user ids), ``rejected`` (``id\\tERROR_TYPE``) or
``pending`` (ids whose remove was sent but not yet confirmed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
import uuid
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import diskcache

from reconciler.errors import LockHeld, StateCorrupt, StateError

log = logging.getLogger(__name__)

STATE_FORMAT = 1
COMPACT_AFTER = 64  # deltas per set before a commit folds them into a new base
DB_NAME = "cache.db"

MEMBERS = "members"
REJECTED = "rejected"
# Ids whose remove request is in flight: committed before the request is sent,
# so that after a crash the state never claims a member Infobip may have dropped.
PENDING = "pending"


class _PlainDisk(diskcache.Disk):
    """A diskcache Disk that never pickles: state values are str, bytes or numbers."""

    def store(self, value: Any, read: bool, key: Any = diskcache.UNKNOWN) -> Any:
        if not isinstance(value, (str, bytes, int, float)) or isinstance(value, bool):
            raise TypeError(f"state values must be str, bytes or numbers, not {type(value)}")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: str, value: Any, read: bool) -> Any:
        if mode == diskcache.core.MODE_PICKLE:
            raise StateCorrupt("the state holds a pickled value, which reconciler never writes")
        return super().fetch(mode, filename, value, read)


@attrs.frozen
class ListRecord:
    """What the state knows of one Infobip list, without its member set."""

    key: str
    destination: str
    name: str
    list_id: int | None = None
    # active: exists in Infobip; missing: Infobip said TAG_NOT_FOUND;
    # pruned: emptied after leaving the specs, kept so its id is reused.
    status: str = "active"
    # False after ``import``: Infobip may hold ids the state never saw.
    membership_known: bool = True
    # The name Infobip knows the list by; differs from ``name`` after ``state mv``.
    remote_name: str | None = None
    member_count: int = 0
    rejected_count: int = 0
    pending_count: int = 0
    input_digest: str | None = None
    applied_at: str | None = None
    sets: Mapping[str, Mapping[str, int]] = attrs.field(factory=dict)

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ListRecord:
        data = json.loads(text)
        return cls(**data)


@attrs.frozen
class ListState:
    """A list record with its members and rejected ids, for the planner."""

    record: ListRecord
    members: frozenset[str]
    rejected: Mapping[str, str]  # id -> error type
    # removes sent but never confirmed (a crash): maybe still in Infobip, maybe not
    pending: frozenset[str] = frozenset()

    @property
    def claimed(self) -> frozenset[str]:
        """The members the state vouches for: confirmed, with no remove in flight."""
        return self.members - self.pending if self.pending else self.members

    @property
    def key(self) -> str:
        return self.record.key


@attrs.frozen
class Snapshot:
    """An immutable view of the whole state at one serial."""

    lineage: str | None
    serial: int
    lists: Mapping[str, ListState]
    # every list of the state (also those not loaded): key -> (destination, Infobip name, id)
    remote: Mapping[str, tuple[str, str, int | None]] = attrs.field(factory=dict)

    def owner(self, destination: str, remote_name: str) -> str | None:
        """The key of the list that Infobip knows as ``remote_name`` on ``destination``."""
        folded = remote_name.casefold()
        for key, (dest, name, _) in self.remote.items():
            if dest == destination and name.casefold() == folded:
                return key
        return None


@attrs.frozen
class LockInfo:
    id: str
    pid: int
    host: str
    started: float

    def describe(self, now: float) -> str:
        age = max(0, int(now - self.started))
        return f"lock {self.id} held by pid {self.pid} on {self.host} for {age} s"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)


def _private_file(path: Path) -> None:
    # SQLite gives its -wal and -shm files the mode of the database file.
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


class StateStore:
    """The state of one workspace, in a directory.

    Raises StateError (or StateCorrupt) when the directory cannot be used.
    """

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = Path(directory)
        self._clock = clock
        fresh = not (self.directory / DB_NAME).exists()
        try:
            _private_dir(self.directory)
            _private_file(self.directory / DB_NAME)
            self._cache = diskcache.Cache(
                str(self.directory),
                disk=_PlainDisk,
                eviction_policy="none",
                size_limit=2**62,
                cull_limit=0,
                statistics=False,
                disk_min_file_size=2**40,  # keep every value inside the 0600 database
            )
        except sqlite3.DatabaseError as exc:
            raise StateCorrupt(self._corrupt_message(exc)) from None
        except OSError as exc:
            raise StateError(f"cannot open the state at {self.directory}: {exc.strerror}") from None
        if fresh:
            self._init_meta()
        else:
            self._meta()  # fail now, not halfway through an apply

    @staticmethod
    def exists(directory: Path) -> bool:
        return (Path(directory) / DB_NAME).exists()

    def close(self) -> None:
        self._cache.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- raw access, with corruption mapped once -------------------------

    def _corrupt_message(self, exc: BaseException) -> str:
        return (
            f"the state at {self.directory} is unreadable ({exc}). Restore it from a backup "
            "or the CI cache; do not delete it, or every list would be created again"
        )

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except (
            sqlite3.DatabaseError,
            zlib.error,
            json.JSONDecodeError,
            TypeError,
            KeyError,
            ValueError,
        ) as exc:
            raise StateCorrupt(self._corrupt_message(exc)) from None
        except OSError as exc:
            raise StateError(f"cannot use the state at {self.directory}: {exc}") from None

    def _get(self, key: str) -> Any:
        with self._guard():
            return self._cache.get(key)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic change of the state; bumps the serial."""
        with self._guard(), self._cache.transact():
            meta = self._meta()
            yield
            meta["serial"] += 1
            self._cache.set("meta", json.dumps(meta))

    def _init_meta(self) -> None:
        meta = {"format": STATE_FORMAT, "lineage": str(uuid.uuid4()), "serial": 0}
        with self._guard(), self._cache.transact():
            if self._cache.get("meta") is None:
                if any(True for _ in self._cache.iterkeys()):
                    raise StateCorrupt(self._corrupt_message(ValueError("no meta record")))
                self._cache.set("meta", json.dumps(meta))

    def _meta(self) -> dict[str, Any]:
        text = self._get("meta")
        if text is None:
            raise StateCorrupt(self._corrupt_message(ValueError("no meta record")))
        with self._guard():
            meta = json.loads(text)
        if meta.get("format") != STATE_FORMAT:
            raise StateCorrupt(
                f"the state at {self.directory} has format {meta.get('format')!r}; this "
                f"reconciler reads format {STATE_FORMAT}. Use the reconciler that wrote it"
            )
        return meta

    @property
    def lineage(self) -> str:
        return str(self._meta()["lineage"])

    @property
    def serial(self) -> int:
        return int(self._meta()["serial"])

    # --- id sets: base + deltas ------------------------------------------

    def _set_prefix(self, record: ListRecord, name: str) -> str:
        gen = record.sets.get(name, {}).get("gen", 0)
        return f"set/{record.key}/{name}/{gen}"

    def _load_frozen(self, record: ListRecord, name: str) -> frozenset[str]:
        """A set built once: base and deltas, without copying a large set again."""
        info = record.sets.get(name)
        if not info:
            return frozenset()
        prefix = self._set_prefix(record, name)
        with self._guard():
            base = _unpack(self._cache[f"{prefix}/base"])
            if not info.get("deltas", 0):
                return frozenset(base)
            items = set(base)
            for seq in range(info.get("deltas", 0)):
                op, *delta = _unpack(self._cache[f"{prefix}/{seq}"])
                if op == "+":
                    items.update(delta)
                else:
                    items.difference_update(delta)
        return frozenset(items)

    def _append(self, record: ListRecord, name: str, op: str, items: Collection[str]) -> ListRecord:
        """Write one delta (inside a transaction) and return the updated record."""
        if not items:
            return record
        info = dict(record.sets.get(name) or {"gen": 0, "deltas": 0})
        if "gen" not in record.sets.get(name, {}):
            self._cache.set(f"set/{record.key}/{name}/0/base", _pack([]))
        prefix = f"set/{record.key}/{name}/{info['gen']}"
        self._cache.set(f"{prefix}/{info['deltas']}", _pack([op, *items]))
        info["deltas"] += 1
        return attrs.evolve(record, sets={**record.sets, name: info})

    def _write_base(self, record: ListRecord, name: str, items: Iterable[str]) -> ListRecord:
        """Replace a set by a new base generation (inside a transaction)."""
        old = record.sets.get(name)
        gen = (old["gen"] + 1) if old else 0
        self._cache.set(f"set/{record.key}/{name}/{gen}/base", _pack(sorted(items)))
        if old:
            self._drop_generation(record.key, name, old)
        return attrs.evolve(record, sets={**record.sets, name: {"gen": gen, "deltas": 0}})

    def _drop_generation(self, key: str, name: str, info: Mapping[str, int]) -> None:
        prefix = f"set/{key}/{name}/{info['gen']}"
        self._cache.delete(f"{prefix}/base")
        for seq in range(info.get("deltas", 0)):
            self._cache.delete(f"{prefix}/{seq}")

    # --- reading -------------------------------------------------------------

    def records(self) -> dict[str, ListRecord]:
        """Every list record, by key (no member sets: cheap)."""
        result = {}
        with self._guard():
            for key in self._cache.iterkeys():
                if isinstance(key, str) and key.startswith("list/"):
                    record = ListRecord.from_json(self._cache[key])
                    result[record.key] = record
        return dict(sorted(result.items()))

    def record(self, key: str) -> ListRecord | None:
        text = self._get(f"list/{key}")
        if text is None:
            return None
        with self._guard():
            return ListRecord.from_json(text)

    def members(self, key: str) -> frozenset[str]:
        record = self.record(key)
        return self._load_frozen(record, MEMBERS) if record else frozenset()

    def rejected(self, key: str) -> dict[str, str]:
        record = self.record(key)
        if record is None:
            return {}
        return dict(item.split("\t", 1) for item in self._load_frozen(record, REJECTED))

    def list_state(self, key: str) -> ListState | None:
        record = self.record(key)
        if record is None:
            return None
        return self._list_state(record)

    def _list_state(self, record: ListRecord) -> ListState:
        rejected = dict(i.split("\t", 1) for i in self._load_frozen(record, REJECTED))
        pending = self._load_frozen(record, PENDING) if record.pending_count else frozenset()
        return ListState(record, self._load_frozen(record, MEMBERS), rejected, pending)

    def snapshot(self, keys: Iterable[str] | None = None) -> Snapshot:
        """The whole state (or the lists in ``keys``) as immutable values."""
        meta = self._meta()
        wanted = None if keys is None else set(keys)
        lists, remote = {}, {}
        for key, record in self.records().items():
            remote[key] = (record.destination, record.remote_name or record.name, record.list_id)
            if wanted is None or key in wanted:
                lists[key] = self._list_state(record)
        return Snapshot(meta["lineage"], meta["serial"], lists, remote)

    # --- writing: one transaction each, each bumps the serial -----------------

    def _put(self, record: ListRecord) -> None:
        self._cache.set(f"list/{record.key}", record.to_json())

    def _require(self, key: str) -> ListRecord:
        record = self.record(key)
        if record is None:
            raise StateError(f"the state has no list {key!r}")
        return record

    def record_created(self, key: str, destination: str, name: str, list_id: int) -> ListRecord:
        """Infobip confirmed a list (new, re-created or imported) under ``list_id``."""
        with self._transaction():
            old = self.record(key)
            if old is None:
                record = ListRecord(key=key, destination=destination, name=name, list_id=list_id)
            else:
                # A re-created list starts empty in Infobip.
                record = attrs.evolve(
                    old,
                    name=name,
                    remote_name=None,
                    list_id=list_id,
                    status="active",
                    input_digest=None,
                )
                record = self._write_base(record, MEMBERS, [])
                record = attrs.evolve(record, member_count=0)
            self._put(record)
        return record

    def record_added(
        self, key: str, ids: Collection[str], rejected: Mapping[str, str] | None = None
    ) -> ListRecord:
        """Infobip confirmed an add: ``ids`` minus ``rejected`` (id -> error type) are members."""
        rejected = rejected or {}
        accepted = [i for i in ids if i not in rejected]
        with self._transaction():
            record = self._require(key)
            record = self._append(record, MEMBERS, "+", accepted)
            record = self._append(
                record, REJECTED, "+", [f"{i}\t{kind}" for i, kind in rejected.items()]
            )
            record = attrs.evolve(
                record,
                member_count=record.member_count + len(accepted),
                rejected_count=record.rejected_count + len(rejected),
            )
            record = self._clear_pending(record, ids)
            self._put(record)
        return record

    def _clear_pending(self, record: ListRecord, ids: Collection[str]) -> ListRecord:
        if not record.pending_count:
            return record
        record = self._append(record, PENDING, "-", ids)
        return attrs.evolve(record, pending_count=max(0, record.pending_count - len(ids)))

    def record_removing(self, key: str, ids: Collection[str]) -> ListRecord:
        """A remove of ``ids`` is about to be sent: stop vouching for them until confirmed."""
        with self._transaction():
            record = self._require(key)
            record = self._append(record, PENDING, "+", ids)
            record = attrs.evolve(record, pending_count=record.pending_count + len(ids))
            self._put(record)
        return record

    def record_removed(self, key: str, ids: Collection[str]) -> ListRecord:
        """Infobip confirmed a remove of ``ids``."""
        with self._transaction():
            record = self._require(key)
            record = self._append(record, MEMBERS, "-", ids)
            record = attrs.evolve(record, member_count=max(0, record.member_count - len(ids)))
            record = self._clear_pending(record, ids)
            self._put(record)
        return record

    def forget_rejected(self, key: str, rejected: Mapping[str, str]) -> ListRecord:
        """Drop rejected ids (id -> type, as stored) so they are sent again when desired."""
        with self._transaction():
            record = self._require(key)
            items = [f"{i}\t{kind}" for i, kind in rejected.items()]
            record = self._append(record, REJECTED, "-", items)
            count = max(0, record.rejected_count - len(items))
            record = attrs.evolve(record, rejected_count=count)
            self._put(record)
        return record

    def update(self, key: str, **changes: Any) -> ListRecord:
        """Change fields of a list record (status, input_digest, applied_at, ...)."""
        with self._transaction():
            record = attrs.evolve(self._require(key), **changes)
            self._put(record)
        return record

    def compact(self, key: str) -> None:
        """Fold a list's deltas into new bases; costs O(list size), so run it rarely."""
        record = self.record(key)
        if record is None:
            return
        counts = {}
        with self._transaction():
            for name in (MEMBERS, REJECTED, PENDING):
                items = self._load_frozen(record, name)
                counts[name] = len(items)
                if record.sets.get(name, {}).get("deltas", 0):
                    record = self._write_base(record, name, items)
            # Counts kept per commit are upper bounds (a resent id counts twice); exact here.
            record = attrs.evolve(
                record,
                member_count=counts[MEMBERS],
                rejected_count=counts[REJECTED],
                pending_count=counts[PENDING],
            )
            self._put(record)

    def needs_compaction(self, key: str) -> bool:
        record = self.record(key)
        if record is None:
            return False
        return any(info.get("deltas", 0) >= COMPACT_AFTER for info in record.sets.values())

    def remove_list(self, key: str) -> None:
        """Forget a list entirely (Infobip is untouched)."""
        with self._transaction():
            record = self._require(key)
            for name, info in record.sets.items():
                self._drop_generation(key, name, info)
            self._cache.delete(f"list/{key}")

    def rename_list(self, old: str, new: str, *, destination: str, name: str) -> ListRecord:
        """Move a list record to a new key, keeping its Infobip id and members."""
        with self._transaction():
            if self.record(new) is not None:
                raise StateError(f"the state already has a list {new!r}")
            record = self._require(old)
            members, rejected = (
                self._load_frozen(record, MEMBERS),
                self._load_frozen(record, REJECTED),
            )
            pending = self._load_frozen(record, PENDING)
            for set_name, info in record.sets.items():
                self._drop_generation(old, set_name, info)
            self._cache.delete(f"list/{old}")
            moved = ListRecord(
                key=new,
                destination=destination,
                name=name,
                list_id=record.list_id,
                status=record.status,
                membership_known=record.membership_known,
                remote_name=record.remote_name or record.name,
                member_count=len(members),
                rejected_count=len(rejected),
                pending_count=len(pending),
            )
            moved = self._write_base(moved, MEMBERS, members)
            moved = self._write_base(moved, REJECTED, rejected)
            moved = self._write_base(moved, PENDING, pending)
            self._put(moved)
        return moved

    def seed_list(
        self, key: str, destination: str, name: str, list_id: int, members: Iterable[str]
    ) -> ListRecord:
        """Write a list with a known member set in one go (benchmarks, imports, tests)."""
        with self._transaction():
            record = ListRecord(key=key, destination=destination, name=name, list_id=list_id)
            members = set(members)
            record = self._write_base(record, MEMBERS, members)
            record = attrs.evolve(record, member_count=len(members))
            self._put(record)
        return record

    def import_list(self, key: str, destination: str, name: str, list_id: int) -> ListRecord:
        """Adopt an existing Infobip list whose membership is unknown."""
        with self._transaction():
            if self.record(key) is not None:
                raise StateError(f"the state already has a list {key!r}")
            record = ListRecord(
                key=key,
                destination=destination,
                name=name,
                list_id=list_id,
                membership_known=False,
            )
            self._put(record)
        return record

    # --- pacing clocks -------------------------------------------------------

    def last_request(self, fingerprint: str, kind: str) -> float | None:
        value = self._get(f"pacing/{fingerprint}/{kind}")
        return float(value) if value is not None else None

    def set_last_request(self, fingerprint: str, kind: str, when: float) -> None:
        # Not a change of the lists, so no serial bump: a saved plan stays valid.
        with self._guard():
            self._cache.set(f"pacing/{fingerprint}/{kind}", float(when))

    # --- the lock ------------------------------------------------------------

    def lock_info(self) -> LockInfo | None:
        text = self._get("lock")
        if text is None:
            return None
        with self._guard():
            return LockInfo(**json.loads(text))

    def acquire_lock(
        self,
        *,
        timeout: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> LockInfo:
        """Take the state lock, waiting up to ``timeout`` seconds.

        A lock left by a dead process on this host is taken over with a
        warning. Raises LockHeld naming the owner and its age otherwise.
        """
        deadline = monotonic() + timeout
        while True:
            mine = LockInfo(uuid.uuid4().hex[:12], os.getpid(), socket.gethostname(), self._clock())
            with self._guard():
                if self._cache.add("lock", json.dumps(attrs.asdict(mine))):
                    return mine
            held = self.lock_info()
            if held is not None and _abandoned(held):
                log.warning("taking over %s: that process is gone", held.describe(self._clock()))
                self._release_if(held.id)
                continue
            if monotonic() >= deadline:
                describe = held.describe(self._clock()) if held else "a lock"
                raise LockHeld(
                    f"the state is locked: {describe}. Wait for that run to finish, pass "
                    f"--lock-timeout SECONDS, or if it is dead run: reconciler force-unlock "
                    f"{held.id if held else 'LOCK_ID'}",
                    attrs.asdict(held) if held else {},
                )
            sleep(min(1.0, max(0.0, deadline - monotonic())))

    def _release_if(self, lock_id: str) -> bool:
        with self._guard(), self._cache.transact():
            held = self.lock_info()
            if held is None or held.id != lock_id:
                return False
            self._cache.delete("lock")
            return True

    def release_lock(self, lock: LockInfo) -> None:
        self._release_if(lock.id)

    def force_unlock(self, lock_id: str) -> LockInfo:
        """Remove the lock with ``lock_id``; StateError when no such lock is held."""
        held = self.lock_info()
        if held is None or held.id != lock_id or not self._release_if(lock_id):
            current = f"the current lock is {held.id}" if held else "no lock is held"
            raise StateError(f"no lock with id {lock_id} ({current})")
        return held

    @contextlib.contextmanager
    def locked(self, **kwargs: Any) -> Iterator[LockInfo]:
        lock = self.acquire_lock(**kwargs)
        try:
            yield lock
        finally:
            self.release_lock(lock)


def _abandoned(lock: LockInfo) -> bool:
    """True when the lock's owner ran on this host and is no longer alive."""
    if lock.host != socket.gethostname() or lock.pid == os.getpid():
        return False
    try:
        os.kill(lock.pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _pack(items: Iterable[str]) -> bytes:
    return zlib.compress("\n".join(items).encode("utf-8"), 1)


def _unpack(blob: bytes) -> list[str]:
    text = zlib.decompress(blob).decode("utf-8")
    return text.split("\n") if text else []
