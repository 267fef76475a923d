"""A faithful local Infobip: the Amplitude-integration API as a WSGI app, on disk.

Same paths, methods, bodies, status codes and JSON shapes as the wire contract
(DESIGN.md section 2), per-key rate limits, per-id validation, membership persisted
in SQLite, and seeded fault injection. Use it in-process through ``Sandbox.transport()``
(no port, no thread) or over real HTTP with ``serve()``.

Choices where Infobip's documentation is silent (each is an assumption, not a fact):

* Each API key is one account. List ids are global integers starting at 1001; a list
  of another key is "not found" for this key.
* Names are unique per key, case-insensitively. Creating a name that already exists
  for the key answers 200 with the existing ``listId`` (Amplitude's destination
  re-sends creates; Infobip tags are unique by name).
* Order of checks: authentication (401), route (404/405), rate limit (429), body and
  list (400/413), then faults, then the change. Every authenticated request to a known
  endpoint that passes the rate limit moves that endpoint's clock, even if it then
  fails validation or meets a fault (a spurious 429 does not).
* ``userIds`` must be a non-empty array of strings; more than ``max_batch`` -> 413.
"""

from __future__ import annotations

import hashlib
import http
import io
import json
import logging
import math
import os
import random
import re
import socket
import socketserver
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import ServerHandler, WSGIRequestHandler, WSGIServer

import attrs
import httpx

from reconciler.errors import ReconcilerError
from reconciler.infobip import key_fingerprint
from reconciler.masking import mask

__all__ = [
    "FAULT_KINDS",
    "Faults",
    "Limits",
    "RequestRecord",
    "Sandbox",
    "SandboxList",
    "SandboxServer",
    "serve",
]

logger = logging.getLogger(__name__)

FAULT_KINDS = ("error_before", "error_after", "reset", "slow", "spurious_429")
FIRST_LIST_ID = 1001
MAX_NAME_LENGTH = 256
MAX_ID_LENGTH = 256
DB_NAME = "sandbox.db"

_PREFIX = "/saas/amplitude/1/lists"
_MEMBER_PATH = re.compile(re.escape(_PREFIX) + r"/([^/]+)/(add|remove)")
# Environ key through which the in-process transport tells the app the client's read timeout.
_READ_TIMEOUT_KEY = "reconciler.sandbox.read_timeout"
_EMAIL_IN_TEXT = re.compile(r"[^\s/@]+@[^\s/]+")


# --- configuration ---------------------------------------------------------------


def _non_negative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{attribute.name} must be a number >= 0, got {value!r}")


def _probability(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _fault_kinds(instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    unknown = [k for k in value if k not in FAULT_KINDS]
    if unknown or not value:
        raise ValueError(
            f"fault kinds must be a non-empty selection of {', '.join(FAULT_KINDS)}; "
            f"got {'+'.join(value) or 'nothing'}"
        )


def _parse_pairs(text: str, what: str, names: Iterable[str]) -> dict[str, str]:
    """Split ``a=1,b=2`` into a dict, refusing unknown or repeated names."""
    names = tuple(names)
    pairs: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not value:
            raise ValueError(f"bad sandbox {what} {text!r}: expected name=value, got {part!r}")
        if name not in names:
            raise ValueError(
                f"bad sandbox {what} {text!r}: unknown name {name!r} (expected {', '.join(names)})"
            )
        if name in pairs:
            raise ValueError(f"bad sandbox {what} {text!r}: {name!r} given twice")
        pairs[name] = value
    return pairs


def _number(text: str, name: str, what: str, convert: Callable[[str], Any] = float) -> Any:
    try:
        return convert(text)
    except ValueError:
        raise ValueError(f"bad sandbox {what}: {name}={text!r} is not a number") from None


@attrs.frozen
class Limits:
    """Minimum seconds between request starts, per API key and kind (Infobip's defaults).

    A request that arrives earlier than ``last + interval - tolerance`` gets a 429.
    """

    create: float = attrs.field(default=2.0, validator=_non_negative)
    add: float = attrs.field(default=10.0, validator=_non_negative)
    remove: float = attrs.field(default=5.0, validator=_non_negative)
    tolerance: float = attrs.field(default=0.05, validator=_non_negative)

    @classmethod
    def parse(cls, text: str) -> Limits:
        """Read ``"create=0.2,add=0.5,remove=0.3"`` (any subset, plus ``tolerance``).

        Raises ``ValueError`` naming the bad part.
        """
        names = ("create", "add", "remove", "tolerance")
        pairs = _parse_pairs(text, "limits", names)
        values = {k: _number(v, k, "limits") for k, v in pairs.items()}
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"bad sandbox limits {text!r}: {exc}") from None

    def interval(self, kind: str) -> float:
        """The interval for ``kind`` (``create``, ``add`` or ``remove``)."""
        return {"create": self.create, "add": self.add, "remove": self.remove}[kind]


@attrs.frozen
class Faults:
    """Seeded fault injection; off unless ``rate`` > 0.

    Each authenticated, rate-allowed, valid request draws from ``random.Random(seed)``;
    with probability ``rate`` it meets one of ``kinds``:

    * ``error_before``: 500, 502 or 503 and nothing changes;
    * ``error_after``: the change is made, then 500;
    * ``reset``: the connection is dropped without an answer, before or after the change;
    * ``slow``: the change is made, then the answer waits ``slow_seconds``;
    * ``spurious_429``: 429 without the change and without moving the rate clock.
    """

    rate: float = attrs.field(default=0.0, validator=_probability)
    seed: int = 0
    kinds: tuple[str, ...] = attrs.field(
        default=FAULT_KINDS, converter=tuple, validator=_fault_kinds
    )
    slow_seconds: float = attrs.field(default=3.0, validator=_non_negative)

    @classmethod
    def parse(cls, text: str) -> Faults:
        """Read ``"rate=0.3,seed=7,kinds=reset+slow,slow_seconds=2"`` (any subset).

        Raises ``ValueError`` naming the bad part.
        """
        pairs = _parse_pairs(text, "faults", ("rate", "seed", "kinds", "slow_seconds"))
        values: dict[str, Any] = {}
        for name, value in pairs.items():
            if name == "kinds":
                values[name] = tuple(k.strip() for k in value.split("+") if k.strip())
            elif name == "seed":
                values[name] = _number(value, name, "faults", int)
            else:
                values[name] = _number(value, name, "faults")
        try:
            return cls(**values)
        except ValueError as exc:
            raise ValueError(f"bad sandbox faults {text!r}: {exc}") from None


# --- values read back ------------------------------------------------------------


@attrs.frozen
class SandboxList:
    """One list (People tag) in the sandbox."""

    id: int
    name: str
    key_fingerprint: str
    size: int


@attrs.frozen
class RequestRecord:
    """One request the sandbox received.

    ``kind`` is ``create``, ``add``, ``remove`` or ``other``; ``status`` is None when the
    connection was dropped; ``ids`` is the number of user ids in the body; ``applied``
    says whether the request's change was made (a fault may come after it).
    """

    time: float
    key_fingerprint: str | None
    kind: str
    list_id: int | None
    status: int | None
    ids: int
    fault: str | None
    applied: bool


# --- id validation -----------------------------------------------------------------

_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")
_DOMAIN_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TOP_LABEL = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}")
# Reserved names (RFC 2606) that can never receive mail; Infobip-like strictness.
_RESERVED_TLDS = frozenset({"invalid", "test"})


def _valid_email(user_id: str) -> bool:
    local, at, domain = user_id.rpartition("@")
    if not at or "@" in local or len(user_id) > 254:
        return False
    if not _LOCAL_PART.fullmatch(local) or local[0] == "." or local[-1] == "." or ".." in local:
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(_DOMAIN_LABEL.fullmatch(label) for label in labels):
        return False
    return bool(_TOP_LABEL.fullmatch(labels[-1])) and labels[-1].lower() not in _RESERVED_TLDS


def _valid_id(user_id: str) -> bool:
    if "@" in user_id:
        return _valid_email(user_id)
    return bool(user_id.strip()) and len(user_id) <= MAX_ID_LENGTH


def _normalize(user_id: str) -> str:
    # Infobip treats emails case-insensitively; other ids are kept exactly.
    return user_id.lower() if "@" in user_id else user_id


# --- answers -----------------------------------------------------------------------


def _service_error(message_id: str, text: str, **extra: Any) -> dict[str, Any]:
    return {"requestError": {"serviceException": {"messageId": message_id, "text": text, **extra}}}


_UNAUTHORIZED = _service_error("UNAUTHORIZED", "Invalid login details")
_TOO_MANY = _service_error("TOO_MANY_REQUESTS", "Too many requests")


@attrs.frozen
class _Answer:
    status: int | None  # None: drop the connection
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0
    fault: str | None = None
    applied: bool = False
    headers: tuple[tuple[str, str], ...] = ()
    list_id: int | None = None  # the list a create made or found

    @classmethod
    def json(cls, status: int, payload: Any, **kwargs: Any) -> _Answer:
        return cls(status, json.dumps(payload, separators=(",", ":")).encode(), **kwargs)


def _bad_request(field: str, message: str) -> _Answer:
    return _Answer.json(
        400, _service_error("BAD_REQUEST", "Bad request", validationErrors={field: [message]})
    )


def _tag_not_found(ref: str) -> _Answer:
    return _Answer.json(
        400, {"statusCode": "TAG_NOT_FOUND", "message": f'Tag with id "{ref}" does not exist'}
    )


def _server_error(status: int, *, fault: str | None, applied: bool) -> _Answer:
    if status == 500:
        payload = _service_error("GENERAL_ERROR", "Something went wrong. Please contact support.")
        return _Answer.json(500, payload, fault=fault, applied=applied)
    # Gateways in front of the API answer in plain text, not JSON: clients must cope.
    phrase = http.HTTPStatus(status).phrase
    return _Answer(
        status, f"{status} {phrase}\n".encode(), "text/plain", fault=fault, applied=applied
    )


class _ConnectionDropped(Exception):
    """Raised out of the app: the server must close the connection without answering."""


class _ClientGaveUp(Exception):
    """Raised out of the app in-process: the answer came later than the read timeout."""


# --- the sandbox -------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lists (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    UNIQUE (key_fingerprint, name_key)
);
CREATE TABLE IF NOT EXISTS members (
    list_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (list_id, user_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rate_clocks (
    key_fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    last REAL NOT NULL,
    PRIMARY KEY (key_fingerprint, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS requests (
    seq INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    key_fingerprint TEXT,
    method TEXT NOT NULL,
    kind TEXT NOT NULL,
    list_id INTEGER,
    status INTEGER,
    ids INTEGER NOT NULL,
    fault TEXT,
    applied INTEGER NOT NULL
);
"""


class Sandbox:
    """The sandbox: a WSGI app over a SQLite file ``sandbox.db`` in ``data_dir``.

    ``keys`` are the API keys it accepts (only their fingerprints are stored);
    ``clock`` times rate limits and the request log; ``sleep`` is used by slow faults.
    Thread-safe: one connection guarded by a lock; other processes may read the file.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        keys: Iterable[str],
        limits: Limits = Limits(),
        faults: Faults = Faults(),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_batch: int = 10_000,
    ) -> None:
        """Open (creating if needed) the sandbox in ``data_dir``.

        Raises ``ReconcilerError`` if the directory or database cannot be used.
        """
        self.data_dir = Path(data_dir)
        self.limits = limits
        self.faults = faults
        self.max_batch = max_batch
        # Generous byte cap (256-char ids, quoting) so a huge body is refused unparsed.
        self._max_body = max_batch * (MAX_ID_LENGTH + 8) + 65_536
        self._clock = clock
        self._sleep = sleep
        # Full digests to authenticate, short fingerprints to own lists and log.
        self._keys = {
            hashlib.sha256(k.encode("utf-8")).hexdigest(): key_fingerprint(k) for k in keys
        }
        self._rng = random.Random(faults.seed)
        self._lock = threading.RLock()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        path = self.data_dir / DB_NAME
        try:
            if not self.data_dir.exists():
                self.data_dir.mkdir(parents=True, mode=0o700)
                os.chmod(self.data_dir, 0o700)  # mkdir's mode is filtered by the umask
            # Create the file 0600 before SQLite does (its -wal/-shm copy this mode).
            os.close(os.open(path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(path, 0o600)
            db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        except OSError as exc:
            raise ReconcilerError(f"cannot open the sandbox in {self.data_dir}: {exc}") from exc
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            db.close()
            raise ReconcilerError(
                f"the sandbox database {path} is unreadable ({exc}); move it away to start afresh"
            ) from exc
        return db

    # --- reading ---------------------------------------------------------------------

    def lists(self) -> list[SandboxList]:
        """Every list of every key, sorted by id."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, key_fingerprint, size FROM lists ORDER BY id"
            ).fetchall()
        return [SandboxList(*row) for row in rows]

    def members(self, list_id: int) -> frozenset[str]:
        """The ids in list ``list_id`` (emails lower-cased). Raises ``KeyError`` if unknown."""
        with self._lock:
            if self._db.execute("SELECT 1 FROM lists WHERE id = ?", (list_id,)).fetchone() is None:
                raise KeyError(list_id)
            rows = self._db.execute("SELECT user_id FROM members WHERE list_id = ?", (list_id,))
            return frozenset(row[0] for row in rows)

    def request_log(self) -> list[RequestRecord]:
        """Every request received, oldest first (persisted across reopen)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT time, key_fingerprint, kind, list_id, status, ids, fault, applied "
                "FROM requests ORDER BY seq"
            ).fetchall()
        return [
            RequestRecord(
                time=row[0],
                key_fingerprint=row[1],
                kind=row[2],
                list_id=row[3],
                status=row[4],
                ids=row[5],
                fault=row[6],
                applied=bool(row[7]),
            )
            for row in rows
        ]

    def transport(self) -> httpx.BaseTransport:
        """An httpx transport that calls this app in-process: no socket, no thread.

        A dropped connection raises ``httpx.RemoteProtocolError``; a slow answer later
        than the request's read timeout raises ``httpx.ReadTimeout`` (after the change).
        """
        return _InProcessTransport(self)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the WSGI app -------------------------------------------------------------

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        """Answer one request (PEP 3333)."""
        now = self._clock()
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "") or "/"
        try:
            body = self._read_body(environ)
            answer, record = self._handle(now, method, path, environ, body)
        except Exception:
            logger.exception("sandbox: internal error on %s %s", method, _loggable(path))
            answer = _server_error(500, fault=None, applied=False)
            record = None
        if record is not None:
            logger.info(
                "%s %s -> %s ids=%d key=%s fault=%s",
                method,
                _loggable(path),
                record.status if record.status is not None else "dropped",
                record.ids,
                record.key_fingerprint or "-",
                record.fault or "-",
            )
        if answer.delay:
            read_timeout = environ.get(_READ_TIMEOUT_KEY)
            if read_timeout is not None and answer.delay > read_timeout:
                self._sleep(read_timeout)
                raise _ClientGaveUp
            self._sleep(answer.delay)
        if answer.status is None:
            raise _ConnectionDropped
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            *answer.headers,
        ]
        start_response(f"{answer.status} {http.HTTPStatus(answer.status).phrase}", headers)
        return [answer.body]

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        """The request body, or None when it is larger than any valid request."""
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        stream = environ["wsgi.input"]
        if length <= self._max_body:
            return stream.read(length) if length > 0 else b""
        while length > 0:  # drain, so the client can read the 413
            chunk = stream.read(min(length, 1 << 16))
            if not chunk:
                break
            length -= len(chunk)
        return None

    def _handle(
        self, now: float, method: str, path: str, environ: dict[str, Any], body: bytes | None
    ) -> tuple[_Answer, RequestRecord]:
        kind, ref = _route(path.rstrip("/") or "/")
        list_id = int(ref) if ref is not None and ref.isdigit() and len(ref) < 19 else None
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                fingerprint = self._authenticate(environ.get("HTTP_AUTHORIZATION", ""))
                answer, ids = self._decide(now, method, kind, ref, list_id, fingerprint, body)
                if method != "POST" or answer.status in (404, 405):
                    kind = "other"
                record = RequestRecord(
                    time=now,
                    key_fingerprint=fingerprint,
                    kind=kind,
                    list_id=list_id if answer.list_id is None else answer.list_id,
                    status=answer.status,
                    ids=ids,
                    fault=answer.fault,
                    applied=answer.applied,
                )
                self._db.execute(
                    "INSERT INTO requests (time, key_fingerprint, method, kind, list_id, status,"
                    " ids, fault, applied) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (now, fingerprint, method, kind, record.list_id, answer.status, ids,
                     answer.fault, answer.applied),
                )  # fmt: skip
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return answer, record

    def _authenticate(self, header: str) -> str | None:
        scheme, _, key = header.strip().partition(" ")
        if scheme.lower() != "app" or not key.strip():
            return None
        return self._keys.get(hashlib.sha256(key.strip().encode("utf-8")).hexdigest())

    def _decide(
        self,
        now: float,
        method: str,
        kind: str,
        ref: str | None,
        list_id: int | None,
        fingerprint: str | None,
        body: bytes | None,
    ) -> tuple[_Answer, int]:
        """The answer to one request, making its change; runs inside the transaction."""
        if fingerprint is None:
            return _Answer.json(401, _UNAUTHORIZED), 0
        if kind == "other":
            return _Answer.json(404, _service_error("NOT_FOUND", "Not found")), 0
        if method != "POST":
            payload = _service_error("METHOD_NOT_ALLOWED", f"Method {method} not allowed")
            return _Answer.json(405, payload, headers=(("Allow", "POST"),)), 0

        interval = self.limits.interval(kind)
        last = self._db.execute(
            "SELECT last FROM rate_clocks WHERE key_fingerprint = ? AND kind = ?",
            (fingerprint, kind),
        ).fetchone()
        if interval > 0 and last is not None and now < last[0] + interval - self.limits.tolerance:
            return _Answer.json(429, _TOO_MANY), _count_ids(body)

        invalid, payload = self._validate(kind, ref, list_id, fingerprint, body)
        ids = len(payload) if isinstance(payload, list) else 0
        if invalid is not None:
            self._move_clock(fingerprint, kind, now)
            return invalid, ids

        fault, pick = self._roll_fault()
        if fault == "spurious_429":
            return _Answer.json(429, _TOO_MANY, fault=fault), ids
        self._move_clock(fingerprint, kind, now)
        if fault == "error_before":
            return _server_error((500, 502, 503)[int(pick * 3)], fault=fault, applied=False), ids
        if fault == "reset" and pick < 0.5:
            return _Answer(None, fault=fault), ids

        result = self._apply(kind, fingerprint, list_id, payload, now)
        made = result.get("listId")
        if fault == "error_after":
            return attrs.evolve(_server_error(500, fault=fault, applied=True), list_id=made), ids
        if fault == "reset":
            return _Answer(None, fault=fault, applied=True, list_id=made), ids
        delay = self.faults.slow_seconds if fault == "slow" else 0.0
        return _Answer.json(200, result, fault=fault, applied=True, delay=delay, list_id=made), ids

    def _validate(
        self,
        kind: str,
        ref: str | None,
        list_id: int | None,
        fingerprint: str,
        body: bytes | None,
    ) -> tuple[_Answer | None, Any]:
        """(an error answer, None) or (None, the name or the list of user ids)."""
        if body is None:
            return self._too_large(), None
        try:
            data = json.loads(body) if body.strip() else None
        except ValueError:
            return _Answer.json(
                400, _service_error("BAD_REQUEST", "Bad request: the body is not valid JSON")
            ), None
        if kind == "create":
            name = data.get("name") if isinstance(data, dict) else None
            if not isinstance(name, str) or not name.strip():
                return _bad_request("name", "property not found or blank"), None
            if len(name) > MAX_NAME_LENGTH:
                return _bad_request("name", f"size must be between 1 and {MAX_NAME_LENGTH}"), None
            return None, name
        user_ids = data.get("userIds") if isinstance(data, dict) else None
        if not isinstance(user_ids, list) or not user_ids:
            return _bad_request("userIds", "property not found or blank"), None
        if not all(isinstance(u, str) for u in user_ids):
            return _bad_request("userIds", "must be an array of strings"), user_ids
        if len(user_ids) > self.max_batch:
            return self._too_large(), user_ids
        owned = list_id is not None and (
            self._db.execute(
                "SELECT 1 FROM lists WHERE id = ? AND key_fingerprint = ?", (list_id, fingerprint)
            ).fetchone()
        )
        if not owned:
            return _tag_not_found(ref or ""), user_ids
        return None, user_ids

    def _too_large(self) -> _Answer:
        text = f"Request entity too large: at most {self.max_batch} user ids per request"
        return _Answer.json(413, _service_error("PAYLOAD_TOO_LARGE", text))

    def _roll_fault(self) -> tuple[str | None, float]:
        if self.faults.rate <= 0:
            return None, 0.0
        # Always three draws per request, so the sequence depends only on the request count.
        hit = self._rng.random() < self.faults.rate
        kind = self.faults.kinds[self._rng.randrange(len(self.faults.kinds))]
        pick = self._rng.random()
        return (kind if hit else None), pick

    def _move_clock(self, fingerprint: str, kind: str, now: float) -> None:
        self._db.execute(
            "INSERT INTO rate_clocks (key_fingerprint, kind, last) VALUES (?, ?, ?) "
            "ON CONFLICT (key_fingerprint, kind) DO UPDATE SET last = max(last, excluded.last)",
            (fingerprint, kind, now),
        )

    def _apply(
        self, kind: str, fingerprint: str, list_id: int | None, payload: Any, now: float
    ) -> dict[str, Any]:
        """Make the change of a valid request; return the 200 body."""
        db = self._db
        if kind == "create":
            existing = db.execute(
                "SELECT id FROM lists WHERE key_fingerprint = ? AND name_key = ?",
                (fingerprint, payload.casefold()),
            ).fetchone()
            if existing is not None:
                return {"listId": existing[0]}
            (new_id,) = db.execute(
                "SELECT COALESCE(MAX(id) + 1, ?) FROM lists", (FIRST_LIST_ID,)
            ).fetchone()
            db.execute(
                "INSERT INTO lists (id, name, name_key, key_fingerprint, created) "
                "VALUES (?, ?, ?, ?, ?)",
                (new_id, payload, payload.casefold(), fingerprint, now),
            )
            return {"listId": new_id}

        if kind == "remove":
            wanted = {_normalize(u) for u in payload}
            before = db.total_changes
            db.executemany(
                "DELETE FROM members WHERE list_id = ? AND user_id = ?",
                ((list_id, u) for u in wanted),
            )
            removed = db.total_changes - before
            db.execute("UPDATE lists SET size = size - ? WHERE id = ?", (removed, list_id))
            return {}

        rejected = [u for u in payload if not _valid_id(u)]
        accepted = list(dict.fromkeys(_normalize(u) for u in payload if _valid_id(u)))
        before = db.total_changes
        db.executemany(
            "INSERT OR IGNORE INTO members (list_id, user_id) VALUES (?, ?)",
            ((list_id, u) for u in accepted),
        )
        created = db.total_changes - before
        db.execute("UPDATE lists SET size = size + ? WHERE id = ?", (created, list_id))
        result: dict[str, Any] = {"modifiedCount": len(accepted) - created, "createdCount": created}
        if rejected:
            result["errors"] = {"count": len(rejected), "failed": {"VALIDATION_ERROR": rejected}}
        return result


def _route(path: str) -> tuple[str, str | None]:
    """(kind, list reference as written in the path) for a request path."""
    if path == _PREFIX:
        return "create", None
    match = _MEMBER_PATH.fullmatch(path)
    if match:
        return match.group(2), match.group(1)
    return "other", None


def _count_ids(body: bytes | None) -> int:
    """Best-effort id count of a body that will not be processed (for the log)."""
    try:
        data = json.loads(body) if body else None
    except ValueError:
        return 0
    user_ids = data.get("userIds") if isinstance(data, dict) else None
    return len(user_ids) if isinstance(user_ids, list) else 0


def _loggable(path: str) -> str:
    # Known paths hold only list ids; anything else may hold an email, so mask it.
    return _EMAIL_IN_TEXT.sub(lambda m: mask(m.group()), path[:200])


# --- in-process transport ------------------------------------------------------------


class _InProcessTransport(httpx.BaseTransport):
    """Call a ``Sandbox`` directly from httpx, turning its drops and delays into httpx errors."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        timeout = (request.extensions.get("timeout") or {}).get("read")
        url = request.url
        environ: dict[str, Any] = {
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": url.scheme,
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": _NullWriter(),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": url.path,
            "QUERY_STRING": url.query.decode("ascii"),
            "SERVER_NAME": url.host,
            "SERVER_PORT": str(url.port or {"http": 80, "https": 443}.get(url.scheme, 80)),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_LENGTH": str(len(body)),
            _READ_TIMEOUT_KEY: timeout,
        }
        for name, value in request.headers.raw:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                key = "HTTP_" + key
            environ[key] = value.decode("latin-1")

        seen: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
            seen["status"], seen["headers"] = int(status.split()[0]), headers
            return lambda data: None

        try:
            content = b"".join(self._sandbox(environ, start_response))
        except _ConnectionDropped:
            raise httpx.RemoteProtocolError(
                "Server disconnected without sending a response.", request=request
            ) from None
        except _ClientGaveUp:
            raise httpx.ReadTimeout("timed out", request=request) from None
        return httpx.Response(
            seen["status"], headers=seen["headers"], stream=httpx.ByteStream(content)
        )


class _NullWriter:
    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


# --- real HTTP -------------------------------------------------------------------------


class _ServerHandler(ServerHandler):
    """wsgiref's handler that can drop a connection and logs instead of printing."""

    dropped = False
    request_handler: Any = None

    def handle_error(self) -> None:
        if isinstance(sys.exc_info()[1], _ConnectionDropped):
            self.dropped = True  # write nothing: the request handler closes the socket
            return
        super().handle_error()

    def log_exception(self, exc_info: Any) -> None:
        logger.error("sandbox: error while answering", exc_info=exc_info)


class _RequestHandler(WSGIRequestHandler):
    def handle(self) -> None:
        # wsgiref's handle(), with our ServerHandler (it hard-codes its own).
        self.raw_requestline = self.rfile.readline(65537)
        if len(self.raw_requestline) > 65536:
            self.requestline = self.request_version = self.command = ""
            self.send_error(414)
            return
        if not self.parse_request():
            return
        # typeshed wants IO[bytes] and a full error stream; buffers and write/flush serve
        handler = _ServerHandler(
            cast(Any, self.rfile),
            cast(Any, self.wfile),
            cast(Any, _NullWriter()),
            self.get_environ(),
            multithread=True,
        )
        handler.request_handler = self
        app = cast(WSGIServer, self.server).get_app()
        assert app is not None  # set by serve() before the first request
        handler.run(app)
        if handler.dropped:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # wsgiref writes an access log to stderr; the Sandbox logs each request itself.
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False  # daemon threads are tracked below instead

    def __init__(self, address: tuple[str, int]) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._request_threads: set[threading.Thread] = set()
        self._threads_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind calls socket.getfqdn(), a reverse DNS lookup that can stall.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)
        self.setup_environ()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_one, args=(request, client_address), daemon=True,
            name="sandbox-request",
        )  # fmt: skip
        with self._threads_lock:
            self._request_threads.add(thread)
        thread.start()

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._threads_lock:
                self._request_threads.discard(threading.current_thread())

    def join_requests(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._threads_lock:
            threads = list(self._request_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("sandbox: error while serving a connection")


class SandboxServer:
    """A threaded HTTP server around a ``Sandbox`` (see ``serve``)."""

    def __init__(self, sandbox: Sandbox, host: str, port: int) -> None:
        self.sandbox = sandbox
        self._server = _ThreadingWSGIServer((host, port))
        self._server.set_app(sandbox)
        bound_host, bound_port = map(str, self._server.server_address[:2])
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        self._state_lock = threading.Lock()
        self._serving = False
        self._closed = False

    def serve_forever(self, poll_interval: float = 0.1) -> None:
        """Answer requests until ``shutdown()`` is called (from another thread)."""
        with self._state_lock:
            if self._closed:
                raise RuntimeError("the sandbox server is shut down")
            self._serving = True
        self._server.serve_forever(poll_interval)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop serving, close the socket and wait up to ``timeout`` s for requests in flight."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
            serving = self._serving
        if serving:
            self._server.shutdown()  # blocks until serve_forever has returned
        self._server.server_close()
        self._server.join_requests(timeout)

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()


def serve(sandbox: Sandbox, host: str = "127.0.0.1", port: int = 0) -> SandboxServer:
    """Bind an HTTP server for ``sandbox`` on ``host:port`` (0: any free port).

    The socket is listening on return (``.url`` is final); call ``serve_forever()``
    (e.g. in a thread) to answer. Raises ``OSError`` if the address cannot be bound.
    """
    return SandboxServer(sandbox, host, port)
