"""Saved plan files: ``reconciler plan --out FILE`` and ``reconciler apply FILE``.

A saved plan is gzip-compressed JSON (never pickle) that holds the exact plan,
ids included, with what it was made from: the state lineage and serial, a
digest of every spec and cohort file read, the options and the tool version.
``apply`` refuses it when any of these no longer match (``check_fresh``).

The file holds customer ids, so it is created 0600 and written to a temporary
file beside its destination, then renamed: ``path`` holds either the old file
or the complete new one, never half a plan. A ``checksum`` over the canonical
JSON of every other field catches corruption that gzip's CRC cannot (an edit
followed by recompression); it is an integrity check, not a signature.

Layout (format 1)::

    {"checksum": "sha256:<hex>", "created_at": "2024-05-01T12:00:00Z",
     "format_version": 1, "inputs": {"specs/main.yaml": "sha256:<hex>", ...},
     "lineage": "<uuid>" | null, "options": {...}, "serial": 12,
     "plan": {"changes": [{<every ListChange field>}, ...],
              "orphans": [{<every Orphan field>}, ...], "refused": [...],
              "pacing": {"<destination>": ["<lane>", {"create": 2.0, ...}]}},
     "tool_version": "0.1.0"}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import json
import os
import shlex
import tempfile
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import attrs

from reconciler import __version__, cohorts
from reconciler.errors import PlanFileError
from reconciler.plan import ListChange, Orphan, Plan
from reconciler.spec import Workspace

PLAN_FORMAT_VERSION = 1

# A plan of ten million ids is a few hundred MB of JSON; far more is a gzip bomb.
MAX_DECOMPRESSED = 4 * 2**30
COMPRESS_LEVEL = 6
_CHUNK = 4 * 2**20
_GZIP_MAGIC = b"\x1f\x8b"
_LIST_SHOWN = 10  # changed inputs named in a staleness message before "and N more"


@attrs.frozen
class SavedPlan:
    """A plan with what it was made from, as written by ``plan --out``."""

    plan: Plan
    inputs: Mapping[str, str]  # workspace path -> "sha256:<hex>" of every spec and cohort file
    tool_version: str
    created_at: str  # ISO 8601 UTC
    options: Mapping[str, Any]  # JSON values: lists come back as lists

    @classmethod
    def new(
        cls,
        plan: Plan,
        *,
        inputs: Mapping[str, str],
        options: Mapping[str, Any],
        now: dt.datetime | None = None,
    ) -> SavedPlan:
        """A saved plan made now (or at ``now``) by this reconciler version."""
        when = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
        return cls(
            plan=plan,
            inputs=dict(inputs),
            tool_version=__version__,
            created_at=when.isoformat(timespec="seconds").replace("+00:00", "Z"),
            options=dict(options),
        )

    @property
    def lineage(self) -> str | None:
        return self.plan.lineage

    @property
    def serial(self) -> int:
        return self.plan.serial


# --- inputs ------------------------------------------------------------------


def current_inputs(workspace: Workspace, digests: dict[Path, str] | None = None) -> dict[str, str]:
    """Digests of every spec file and every cohort file the workspace's lists name.

    Keys are paths relative to the workspace root (so they do not depend on the
    directory reconciler runs from); values are ``"sha256:<hex>"``. Pass the
    workspace after ``--target``/``--exclude`` selection, as the plan was made.
    ``digests`` caches file digests already taken (and takes new ones).
    Raises CohortError when a cohort file cannot be read.
    """
    digests = {} if digests is None else digests
    inputs = {_input_name(workspace.root, f.path, f.display): f.digest for f in workspace.files}
    for spec in workspace.lists:
        for ref in (*spec.cohorts, *spec.exclude):
            name = _input_name(workspace.root, ref.path, ref.display)
            if name not in inputs:
                inputs[name] = cohorts.cached_digest(digests, ref.path, display=ref.display)
    return inputs


def _input_name(root: Path, path: Path, display: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return display


# --- writing -----------------------------------------------------------------


def write_plan(path: Path, saved: SavedPlan) -> None:
    """Write ``saved`` to ``path``: gzip-compressed JSON, mode 0600, atomically.

    The data goes to a temporary file (created 0600) in the same directory,
    is flushed to disk, then renamed over ``path``. Raises PlanFileError when
    the directory does not exist or the file cannot be written; ``path`` is
    then left as it was and no temporary file remains.
    """
    path = Path(path)
    directory = path.parent
    if not directory.is_dir():
        raise PlanFileError(
            f"cannot write the plan to {path}: the directory {directory} does not exist. "
            f"Create it first (mkdir -p {shlex.quote(str(directory))}) or choose another --out"
        )
    try:
        body = _canonical(_document(saved))
    except (TypeError, ValueError) as exc:  # not JSON-able: a caller's bug, named plainly
        raise PlanFileError(f"cannot save this plan as JSON: {exc}") from None
    checksum = "sha256:" + hashlib.sha256(body).hexdigest()
    # ``body`` is a canonical JSON object: the checksum goes in front of its members.
    head = b'{"checksum":' + json.dumps(checksum).encode() + b","
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise _write_failed(path, exc) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as raw:
            _compress(raw, head, memoryview(body)[1:])
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise _write_failed(path, exc) from None
        raise
    _sync_directory(directory)


def _compress(raw: BinaryIO, *parts: bytes | memoryview) -> None:
    # No file name and mtime 0 in the gzip header: the same plan gives the same bytes.
    with gzip.GzipFile(
        filename="", mode="wb", compresslevel=COMPRESS_LEVEL, fileobj=raw, mtime=0
    ) as gz:
        for part in parts:
            gz.write(part)


def _sync_directory(directory: Path) -> None:
    # Makes the rename durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_failed(path: Path, exc: OSError) -> PlanFileError:
    reason = exc.strerror or str(exc)
    return PlanFileError(
        f"cannot write the plan to {path}: {reason}. "
        "Check the directory's permissions and free space, or choose another --out"
    )


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _document(saved: SavedPlan) -> dict[str, Any]:
    plan = saved.plan
    return {
        "format_version": PLAN_FORMAT_VERSION,
        "tool_version": saved.tool_version,
        "created_at": saved.created_at,
        "lineage": plan.lineage,
        "serial": plan.serial,
        "inputs": dict(saved.inputs),
        "options": dict(saved.options),
        "plan": {
            "changes": [_encode(change, _CHANGE_FIELDS) for change in plan.changes],
            "orphans": [_encode(orphan, _ORPHAN_FIELDS) for orphan in plan.orphans],
            "refused": list(plan.refused),
            "pacing": {
                name: [lane, dict(intervals)] for name, (lane, intervals) in plan.pacing.items()
            },
        },
    }


def _encode(value: Any, fields: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for name in fields:
        item = getattr(value, name)
        out[name] = dict(item) if isinstance(item, Mapping) else item
    return out


# --- reading -----------------------------------------------------------------


def read_plan(path: Path, *, max_size: int = MAX_DECOMPRESSED) -> SavedPlan:
    """Read a plan written by ``write_plan``.

    Raises PlanFileError, naming the file and how to get a good one, when it is
    missing or unreadable, not a saved plan, corrupted or truncated, fails its
    checksum, has a format version other than ``PLAN_FORMAT_VERSION``, lacks a
    field or holds one of the wrong type, or decompresses to more than
    ``max_size`` bytes. Only JSON is ever parsed.
    """
    path = Path(path)
    remake = f"Re-run reconciler plan --out {shlex.quote(str(path))}"
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below, errors mapped apart
    except FileNotFoundError:
        raise PlanFileError(
            f"Saved plan {path} does not exist. Make one with: "
            f"reconciler plan --out {shlex.quote(str(path))}"
        ) from None
    except OSError as exc:
        raise PlanFileError(
            f"cannot read the saved plan {path}: {exc.strerror or exc}. "
            "Check the path and its permissions"
        ) from None
    with handle:
        raw = _decompress(handle, path, remake, max_size)
    data = _parse(raw, path, remake)
    if not isinstance(data, dict):
        raise PlanFileError(f"{path} is not a saved plan: it holds no JSON object. {remake}")
    _check_version(data, path, remake)
    _check_checksum(data, path, remake)
    try:
        return _decode(data)
    except _Invalid as exc:
        raise PlanFileError(f"Saved plan {path} is not valid: {exc}. {remake}") from None


def _decompress(handle: BinaryIO, path: Path, remake: str, max_size: int) -> bytes:
    try:
        magic = handle.read(2)
        handle.seek(0)
    except OSError as exc:
        raise PlanFileError(
            f"cannot read the saved plan {path}: {exc.strerror or exc}. "
            "Check the path and its permissions"
        ) from None
    if magic != _GZIP_MAGIC:
        if magic[:1] in (b"{", b"["):
            raise PlanFileError(
                f"{path} is not a saved plan: it is plain JSON (the output of "
                f"plan --format json cannot be applied). Save a plan with: "
                f"reconciler plan --out {shlex.quote(str(path))}"
            )
        raise PlanFileError(
            f"{path} is not a saved plan, or it is corrupted or truncated "
            f"(not gzip-compressed). {remake}"
        )
    chunks: list[bytes] = []
    total = 0
    try:
        with gzip.GzipFile(fileobj=handle, mode="rb") as gz:
            while chunk := gz.read(_CHUNK):
                total += len(chunk)
                if total > max_size:
                    raise PlanFileError(
                        f"Saved plan {path} decompresses to more than {max_size:,} bytes, "
                        f"more than any plan holds; refusing to read it. {remake}"
                    )
                chunks.append(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise PlanFileError(
            f"Saved plan {path} is corrupted or truncated ({_reason(exc)}). {remake}"
        ) from None
    return b"".join(chunks)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text or isinstance(exc, EOFError):
        return "the compressed data ends early"
    return text


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(raw: bytes, path: Path, remake: str) -> Any:
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError:
        problem = "its content is not UTF-8 JSON"
    except json.JSONDecodeError as exc:
        problem = f"its content is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    except (ValueError, RecursionError) as exc:
        problem = f"its content is not JSON ({exc or 'nested too deeply'})"
    raise PlanFileError(f"Saved plan {path} is corrupted: {problem}. {remake}")


def _check_version(data: dict[str, Any], path: Path, remake: str) -> None:
    if "format_version" not in data:
        raise PlanFileError(f"{path} is not a saved plan: it has no format_version. {remake}")
    version = data["format_version"]
    if version == PLAN_FORMAT_VERSION and type(version) is int:
        return
    tool = data.get("tool_version")
    by = f", reconciler {tool}" if isinstance(tool, str) else ""
    shown = json.dumps(version)
    shown = shown if len(shown) <= 20 else shown[:17] + "..."
    raise PlanFileError(
        f"Saved plan {path} was written by a different reconciler version (format {shown}{by}); "
        f"this reconciler reads format {PLAN_FORMAT_VERSION}. {remake}"
    )


def _check_checksum(data: dict[str, Any], path: Path, remake: str) -> None:
    rest = {key: value for key, value in data.items() if key != "checksum"}
    expected = data.get("checksum")
    try:
        actual = "sha256:" + hashlib.sha256(_canonical(rest)).hexdigest()
    except (ValueError, RecursionError):  # pragma: no cover - json.loads output always dumps
        actual = None
    if not isinstance(expected, str) or expected != actual:
        what = "checksum mismatch" if isinstance(expected, str) else "no checksum"
        raise PlanFileError(f"Saved plan {path} is corrupted: {what}. {remake}")


# --- decoding: every field present and of its type, or _Invalid naming it -----


class _Invalid(Exception):
    """A field is missing or of the wrong type; the message says where."""


def _str(value: Any, where: str) -> str:
    if type(value) is not str:
        raise _Invalid(f"{where} must be a string")
    return value


def _opt_str(value: Any, where: str) -> str | None:
    return None if value is None else _str(value, where)


def _int(value: Any, where: str) -> int:
    if type(value) is not int:
        raise _Invalid(f"{where} must be an integer")
    return value


def _count(value: Any, where: str) -> int:
    if _int(value, where) < 0:
        raise _Invalid(f"{where} must not be negative")
    return value


def _opt_int(value: Any, where: str) -> int | None:
    return None if value is None else _int(value, where)


def _bool(value: Any, where: str) -> bool:
    if type(value) is not bool:
        raise _Invalid(f"{where} must be true or false")
    return value


def _number(value: Any, where: str) -> float:
    if type(value) not in (int, float):
        raise _Invalid(f"{where} must be a number")
    return value


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if type(value) is not list:
        raise _Invalid(f"{where} must be a list of strings")
    # One pass in C for the common case; find the culprit only when it fails.
    if not all(type(item) is str for item in value):
        index = next(i for i, item in enumerate(value) if type(item) is not str)
        raise _Invalid(f"{where}[{index}] must be a string")
    return tuple(value)


def _object(value: Any, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Invalid(f"{where} must be an object")
    return value


def _string_map(value: Any, where: str) -> dict[str, str]:
    for key, item in _object(value, where).items():
        _str(item, f"{where}[{json.dumps(key)}]")
    return dict(value)


def _list(value: Any, where: str) -> list[Any]:
    if type(value) is not list:
        raise _Invalid(f"{where} must be a list")
    return value


def _positive(value: Any, where: str) -> int:
    if _int(value, where) < 1:
        raise _Invalid(f"{where} must be at least 1")
    return value


# Every field of ListChange and Orphan, with its reader; tests check nothing is left out.
_CHANGE_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "destination": _str,
    "name": _str,
    "key": _str,
    "list_id": _opt_int,
    "create": _bool,
    "add": _strings,
    "remove": _strings,
    "batch_size": _positive,
    "known": _count,
    "desired": _count,
    "skipped_invalid": _count,
    "invalid_sample": _strings,
    "skipped_rejected": _count,
    "forget_rejected": _string_map,
    "reason": _str,
    "membership_known": _bool,
    "input_digest": _opt_str,
}

_ORPHAN_FIELDS: dict[str, Callable[[Any, str], Any]] = {
    "key": _str,
    "destination": _str,
    "name": _str,
    "list_id": _opt_int,
    "members": _count,
    "status": _str,
    "will_prune": _bool,
}

_TOP_FIELDS = (
    "checksum",
    "created_at",
    "format_version",
    "inputs",
    "lineage",
    "options",
    "plan",
    "serial",
    "tool_version",
)
_PLAN_FIELDS = ("changes", "orphans", "pacing", "refused")


def _fields(data: dict[str, Any], names: Any, where: str) -> None:
    for name in names:
        if name not in data:
            raise _Invalid(f"{where}{name} is missing")
    extra = sorted(set(data) - set(names))
    if extra:
        raise _Invalid(f"{where}{extra[0]} is not a field of format {PLAN_FORMAT_VERSION}")


def _record(cls: type, value: Any, fields: Mapping[str, Any], where: str) -> Any:
    data = _object(value, where)
    _fields(data, fields, f"{where}.")
    return cls(**{name: read(data[name], f"{where}.{name}") for name, read in fields.items()})


def _pacing(value: Any, where: str) -> dict[str, tuple[str, dict[str, float]]]:
    pacing = {}
    for name, entry in _object(value, where).items():
        at = f"{where}[{json.dumps(name)}]"
        if type(entry) is not list or len(entry) != 2:
            raise _Invalid(f"{at} must be a [lane, intervals] pair")
        lane = _str(entry[0], f"{at}[0]")
        intervals = {
            kind: _number(seconds, f"{at}[1][{json.dumps(kind)}]")
            for kind, seconds in _object(entry[1], f"{at}[1]").items()
        }
        pacing[name] = (lane, intervals)
    return pacing


def _decode(data: dict[str, Any]) -> SavedPlan:
    _fields(data, _TOP_FIELDS, "")
    body = _object(data["plan"], "plan")
    _fields(body, _PLAN_FIELDS, "plan.")
    plan = Plan(
        changes=tuple(
            _record(ListChange, item, _CHANGE_FIELDS, f"plan.changes[{i}]")
            for i, item in enumerate(_list(body["changes"], "plan.changes"))
        ),
        orphans=tuple(
            _record(Orphan, item, _ORPHAN_FIELDS, f"plan.orphans[{i}]")
            for i, item in enumerate(_list(body["orphans"], "plan.orphans"))
        ),
        refused=_strings(body["refused"], "plan.refused"),
        lineage=_opt_str(data["lineage"], "lineage"),
        serial=_count(data["serial"], "serial"),
        pacing=_pacing(body["pacing"], "plan.pacing"),
    )
    return SavedPlan(
        plan=plan,
        inputs=_string_map(data["inputs"], "inputs"),
        tool_version=_str(data["tool_version"], "tool_version"),
        created_at=_str(data["created_at"], "created_at"),
        options=_object(data["options"], "options"),
    )


# --- freshness ---------------------------------------------------------------


def check_fresh(
    saved: SavedPlan, *, lineage: str | None, serial: int, inputs: Mapping[str, str]
) -> None:
    """Raise PlanFileError unless ``saved`` was made from this state and these inputs.

    ``lineage``/``serial`` describe the state now (``None``/0 when there is
    none); ``inputs`` are the digests now, as ``current_inputs`` gives them. A
    plan made before any state existed (lineage None, serial 0) fits a state
    that is still at serial 0, whatever lineage it was given on creation.
    """
    planned = saved.plan
    if planned.lineage is not None and planned.lineage != lineage:
        raise PlanFileError(
            f"Saved plan is for a different state (lineage {planned.lineage}, this state is "
            f"{lineage or 'none: no state exists yet'}): re-run reconciler plan against this state"
        )
    if planned.serial != serial:
        raise PlanFileError(
            "Saved plan is stale: the state changed since the plan was made "
            f"(serial {planned.serial}, now {serial}). Re-run reconciler plan"
        )
    changed = []
    for name in sorted(set(saved.inputs) | set(inputs)):
        before, now = saved.inputs.get(name), inputs.get(name)
        if before == now:
            continue
        what = "new" if before is None else "removed" if now is None else "changed"
        changed.append(f"{name} ({what})")
    if changed:
        shown = ", ".join(changed[:_LIST_SHOWN])
        if len(changed) > _LIST_SHOWN:
            shown += f" and {len(changed) - _LIST_SHOWN} more"
        raise PlanFileError(
            f"Saved plan is stale: inputs changed since the plan: {shown}. Re-run reconciler plan"
        )
