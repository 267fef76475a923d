"""Spec files: loading, validation with locations, and the frozen models.

A workspace is every ``*.yaml``/``*.yml`` file of the specs directory (or one
file). Structure is checked against ``SCHEMA`` (also what ``reconciler
schema`` prints, so editors and this loader agree); meaning (destinations that
exist, files that exist inside the workspace, names that do not collide) is
checked here. Every problem is collected and reported at once.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import math
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import jsonschema

from reconciler.errors import Problem, SpecError
from reconciler.ids import ID_TYPES
from reconciler.yamlsource import LocatedDict, LocatedList, Location, load_yaml

SPEC_VERSION = 1
MAX_LIST_NAME = 256  # Infobip tag names
DEFAULT_BATCH_SIZE = 10_000  # what Amplitude sends per call
KINDS = ("create", "add", "remove")
SANDBOX = "sandbox"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Keys that would hold a secret if someone tried to put one in a spec.
_SECRET_KEY = re.compile(r"(^|_)(api_?key|apikey|key|token|secret|password|authorization)$", re.I)

_PACING = {
    "type": "object",
    "description": "Seconds between request starts, per API key and kind.",
    "additionalProperties": False,
    "properties": {
        kind: {"type": "number", "exclusiveMinimum": 0, "maximum": 3600} for kind in KINDS
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://reconciler.dev/schema/spec-v1.json",
    "title": "reconciler spec",
    "description": "Which Amplitude cohort files feed which Infobip lists.",
    "type": "object",
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"const": SPEC_VERSION, "description": "Spec format version."},
        "destinations": {
            "type": "object",
            "description": "Infobip accounts, by name.",
            "additionalProperties": {"$ref": "#/$defs/destination"},
        },
        "lists": {
            "type": "object",
            "description": "Infobip lists, by the name they have in Infobip.",
            "additionalProperties": {"$ref": "#/$defs/list"},
        },
    },
    "$defs": {
        "destination": {
            "type": "object",
            "additionalProperties": False,
            "required": ["base_url"],
            "properties": {
                "base_url": {
                    "type": "string",
                    "pattern": r"^(sandbox|https?://[^\s/]+(/[^\s]*)?)$",
                    "description": "https://<xxxxx>.api.infobip.com, or sandbox.",
                },
                "api_key_env": {
                    "type": "string",
                    "pattern": _ENV_NAME.pattern,
                    "description": "Name of the environment variable holding the API key.",
                },
                "batch_size": {"type": "integer", "minimum": 1, "maximum": 100_000},
                "pacing": _PACING,
                "prune": {
                    "type": "boolean",
                    "description": "Empty lists that were removed from the specs.",
                },
            },
        },
        "list": {
            "type": "object",
            "additionalProperties": False,
            "required": ["cohorts"],
            "properties": {
                "destination": {"type": "string"},
                "cohorts": {
                    "type": "array",
                    "minItems": 1,
                    "items": {"type": "string", "minLength": 1},
                    "description": "Cohort files; the list holds their union.",
                },
                "exclude": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": "Cohort files subtracted from the union.",
                },
                "id_column": {"type": "string", "minLength": 1},
                "id_type": {"enum": list(ID_TYPES)},
                "max_removal": {"type": "number", "minimum": 0, "maximum": 1},
                "allow_empty": {"type": "boolean"},
            },
        },
    },
}


def _is_finite_number(checker: Any, value: Any) -> bool:
    # YAML has .inf and .nan, and 1.0e+400 reads as inf; NaN passes every minimum and maximum,
    # so "a number" means a finite one here.
    return jsonschema.Draft202012Validator.TYPE_CHECKER.is_type(value, "number") and (
        not isinstance(value, float) or math.isfinite(value)
    )


_VALIDATOR = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("number", _is_finite_number),
)(SCHEMA)


# --- models ----------------------------------------------------------------


@attrs.frozen
class Pacing:
    """Minimum seconds between request starts, per API key and kind."""

    create: float = 2.0
    add: float = 10.0
    remove: float = 5.0

    def interval(self, kind: str) -> float:
        return float(getattr(self, kind))


@attrs.frozen
class Destination:
    """One Infobip account (base URL and the environment variable of its key)."""

    name: str
    base_url: str
    api_key_env: str | None
    batch_size: int = DEFAULT_BATCH_SIZE
    pacing: Pacing = Pacing()
    prune: bool = False
    where: Location | None = attrs.field(default=None, eq=False)

    @property
    def is_sandbox(self) -> bool:
        return self.base_url == SANDBOX

    @property
    def lane(self) -> str:
        """What identifies the API key before it is known: requests of one lane share pacing."""
        return f"{self.base_url}#{self.api_key_env or ''}"


@attrs.frozen
class CohortRef:
    """A cohort file named by a spec: its resolved path and how to show it."""

    path: Path
    display: str


@attrs.frozen
class ListSpec:
    """One Infobip list and the cohort files that define its members."""

    name: str
    destination: str
    cohorts: tuple[CohortRef, ...]
    exclude: tuple[CohortRef, ...] = ()
    id_column: str = "user_id"
    id_type: str = "email"
    max_removal: float | None = None
    allow_empty: bool = False
    where: Location | None = attrs.field(default=None, eq=False)

    @property
    def key(self) -> str:
        return list_key(self.destination, self.name)


@attrs.frozen
class SpecFile:
    """A spec file that was read, with a digest of its bytes (for saved plans)."""

    path: Path
    display: str
    digest: str


@attrs.frozen
class Workspace:
    """Every spec file of a workspace, validated."""

    root: Path
    files: tuple[SpecFile, ...]
    destinations: tuple[Destination, ...]
    lists: tuple[ListSpec, ...]

    def destination(self, name: str) -> Destination:
        for destination in self.destinations:
            if destination.name == name:
                return destination
        raise KeyError(name)


def list_key(destination: str, name: str) -> str:
    """The identity of a list: Infobip tag names are case-insensitive per account."""
    return f"{destination}/{name.casefold()}"


# --- loading ---------------------------------------------------------------


def load_workspace(specs: Path, *, root: Path | None = None) -> Workspace:
    """Load and validate every spec file under ``specs`` (a directory or one file).

    ``root`` is the directory every cohort path must stay inside; by default
    the directory that holds the specs directory.

    Raises SpecError listing every problem found, each with file:line:column.
    """
    specs = Path(specs)
    spec_dir = specs if specs.is_dir() else specs.parent
    root = (Path(root) if root is not None else spec_dir.resolve().parent).resolve()
    problems: list[Problem] = []
    files = _spec_files(specs, problems)
    loaded: list[tuple[SpecFile, LocatedDict]] = []
    for path in files:
        if _leads_outside(path, root):
            # a symlinked spec would print another file's keys and names into the CI log
            problems.append(
                Problem(
                    _display(path),
                    1,
                    1,
                    f"spec file is a link that leads outside the workspace ({_display(root)})",
                    "keep spec files inside the repository",
                )
            )
            continue
        spec_file, document = _read(path, problems)
        if spec_file is not None and document is not None:
            loaded.append((spec_file, document))
    workspace = _build(loaded, root, problems)
    if problems:
        raise SpecError(map(_printable, problems))
    return workspace


def _printable(problem: Problem) -> Problem:
    """``problem`` with control characters escaped in its message and hint."""
    # Messages quote keys, names and paths from the spec: a line break in one would forge
    # lines of the CI log (a "::error ::" line is a GitHub Actions command).
    return attrs.evolve(problem, message=_escape(problem.message), hint=_escape(problem.hint))


def _escape(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def _display(path: Path) -> str:
    """How a path is shown in messages and plans: relative, control characters escaped."""
    try:
        return _escape(os.path.relpath(path))
    except ValueError:  # another drive on Windows
        return _escape(str(path))


def _leads_outside(path: Path, root: Path) -> bool:
    try:
        return not path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop: reading it reports the problem
        return False


def _spec_files(specs: Path, problems: list[Problem]) -> list[Path]:
    display = _display(specs)
    if specs.is_dir():
        found = sorted(p for p in specs.iterdir() if p.suffix in (".yaml", ".yml"))
        if not found:
            problems.append(
                Problem(display, 1, 1, "no *.yaml or *.yml spec files here", "pass --specs PATH")
            )
        return found
    if specs.is_file():
        return [specs]
    problems.append(
        Problem(display, 1, 1, "spec path not found", "run from the workspace root or pass --specs")
    )
    return []


def _read(path: Path, problems: list[Problem]) -> tuple[SpecFile | None, Any]:
    display = _display(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        problems.append(Problem(display, 1, 1, f"cannot read: {exc.strerror}", "check the path"))
        return None, None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problems.append(Problem(display, line, 1, "not UTF-8 text", "save the file as UTF-8"))
        return None, None
    document, found = load_yaml(text, display)
    problems.extend(found)
    if document is None and not found:
        problems.append(Problem(display, 1, 1, "empty spec file", "add 'version: 1' or remove it"))
    elif document is not None and not isinstance(document, LocatedDict):
        problems.append(
            Problem(display, 1, 1, "a spec must be a mapping", "start with 'version: 1'")
        )
        return None, None
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    return SpecFile(path.resolve(), display, digest), document


def _build(
    loaded: list[tuple[SpecFile, LocatedDict]], root: Path, problems: list[Problem]
) -> Workspace:
    broken: set[str] = set()
    for _, document in loaded:
        problems.extend(_secret_problems(document))
        for problem, path in _schema_problems(document):
            if problem is not None:
                problems.append(problem)
            _prune_invalid(document, path, broken)
    # What is left is structurally valid, so its meaning can be checked too and
    # every problem reported in one go.
    destinations = _destinations(loaded, problems)
    lists = _lists(loaded, {d.name: d for d in destinations}, broken, root, problems)
    return Workspace(
        root=root,
        files=tuple(spec_file for spec_file, _ in loaded),
        destinations=tuple(destinations),
        lists=tuple(lists),
    )


def _walk(node: Any) -> Iterator[tuple[str, LocatedDict]]:
    """Yield (key, mapping) for every key of every mapping in the document."""
    if isinstance(node, LocatedDict):
        for key, value in node.items():
            yield key, node
            yield from _walk(value)
    elif isinstance(node, LocatedList):
        for item in node:
            yield from _walk(item)


def _secret_problems(document: LocatedDict) -> Iterator[Problem]:
    for key, mapping in _walk(document):
        if key != "api_key_env" and _SECRET_KEY.search(key):
            yield mapping.key_where[key].problem(
                f"'{key}' looks like a literal secret; API keys never belong in a spec",
                "export the key as an environment variable and set api_key_env: to its name",
            )
    for key, mapping in _walk(document):
        value = mapping[key]
        if key == "api_key_env" and isinstance(value, str) and not _ENV_NAME.match(value):
            # Never echo the value: it may be the key itself.
            yield mapping.value_where[key].problem(
                "api_key_env must be the NAME of an environment variable, not a key",
                "e.g. api_key_env: INFOBIP_API_KEY, then export INFOBIP_API_KEY=...",
            )


def _node_at(document: Any, path: Any) -> tuple[Any, Location]:
    """Follow a jsonschema path into the document; return the node and where it is."""
    node, where = document, document.where
    for step in path:
        if isinstance(node, LocatedDict):
            where = node.value_where[step]
        elif isinstance(node, LocatedList):
            where = node.item_where[step]
        node = node[step]
    return node, where


_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "a string",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
    "infinite": "infinity",
    "nan": "NaN",
}


def _schema_problems(document: LocatedDict) -> list[tuple[Problem | None, list[Any]]]:
    """Every schema violation as (problem, path of the value to drop)."""
    found: list[tuple[Problem | None, list[Any]]] = []
    for error in _VALIDATOR.iter_errors(document):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties":
            drop = []  # the builder ignores unknown keys
        elif error.validator == "required" or (len(path) > 2 and path[2] in _REQUIRED):
            drop = path[:2]
        else:
            drop = path[:3]
        if path and path[-1] == "api_key_env" and error.validator == "pattern":
            # _secret_problems reports it without echoing the value.
            found.append((None, drop))
            continue
        node, where = _node_at(document, path)
        found.extend((problem, drop) for problem in _describe(error, node, where, path))
    return found


_REQUIRED = ("base_url", "cohorts")


def _prune_invalid(document: LocatedDict, path: list[Any], broken: set[str]) -> None:
    """Drop an invalid value so the rest can still be checked for meaning.

    Dropping a whole destination records its name in ``broken`` so its lists
    are not reported again as pointing at an unknown destination.
    """
    if not path:
        return
    if len(path) == 1:
        if path[0] == "destinations":
            broken.add("*")
        document.pop(path[0], None)
        return
    node: Any = document
    for step in path[:-1]:
        node = node.get(step) if isinstance(node, dict) else None
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        if len(path) == 2 and path[0] == "destinations":
            broken.add(path[1])


def _field(path: list[Any]) -> str:
    return ".".join(str(step) for step in path) or "the document"


def _describe(
    error: jsonschema.ValidationError, node: Any, where: Location, path: list[Any]
) -> Iterator[Problem]:
    kind, expected = error.validator, error.validator_value
    field = _field(path)
    if kind == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        for key in node:
            if key in allowed or _SECRET_KEY.search(key):
                continue
            close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
            yield node.key_where[key].problem(f"unknown key '{key}' in {field}", hint)
    elif kind == "required":
        for key in expected:
            if key not in node:
                yield where.problem(f"{field} is missing '{key}'", f"add '{key}:'")
    elif kind == "const" and path == ["version"]:
        yield where.problem(
            f"unsupported spec version {node!r}", f"this reconciler reads 'version: {expected}'"
        )
    elif kind == "type" and node is None:  # "key:" with nothing after it
        yield where.problem(f"{field} is empty; it must be {_TYPE_NAMES[expected]}")
    elif kind == "type":
        got = _TYPE_NAMES.get(_json_type(node), type(node).__name__)
        yield where.problem(f"{field} must be {_TYPE_NAMES[expected]}, not {got}")
    elif kind == "enum":
        yield where.problem(f"{field} must be one of: {', '.join(map(str, expected))}")
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        words = {
            "minimum": "at least",
            "maximum": "at most",
            "exclusiveMinimum": "greater than",
            "exclusiveMaximum": "less than",
        }
        yield where.problem(f"{field} must be {words[kind]} {expected}")
    elif kind == "minItems":
        yield where.problem(f"{field} must name at least {expected} file", "add a cohort file")
    elif kind == "minLength":
        yield where.problem(f"{field} must not be empty")
    elif kind == "pattern" and path[-1] == "base_url":
        yield where.problem(
            f"{field} must be an http(s) URL or 'sandbox'",
            "e.g. https://xxxxx.api.infobip.com",
        )
    else:
        yield where.problem(f"{field}: {error.message}")


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return "number" if math.isfinite(value) else "infinite"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null" if value is None else type(value).__name__


def _destinations(
    loaded: list[tuple[SpecFile, LocatedDict]], problems: list[Problem]
) -> list[Destination]:
    seen: dict[str, Destination] = {}
    for _, document in loaded:
        section = document.get("destinations") or LocatedDict()
        for name, data in section.items():
            where = section.key_where[name]
            if name in seen:
                problems.append(
                    where.problem(
                        f"destination '{name}' is defined twice (also at {seen[name].where})",
                        "keep one definition",
                    )
                )
                continue
            seen[name] = _destination(name, data, where, problems)
    return list(seen.values())


def _destination(
    name: str, data: Mapping[str, Any], where: Location, problems: list[Problem]
) -> Destination:
    base_url = data["base_url"].rstrip("/") if data["base_url"] != SANDBOX else SANDBOX
    api_key_env = data.get("api_key_env")
    if base_url != SANDBOX and not api_key_env:
        problems.append(
            where.problem(
                f"destination '{name}' needs api_key_env",
                "name the environment variable that holds its API key",
            )
        )
    return Destination(
        name=name,
        base_url=base_url,
        api_key_env=api_key_env,
        # the schema's "integer" also admits 5.0, which range() and slicing do not
        batch_size=int(data.get("batch_size", DEFAULT_BATCH_SIZE)),
        # unknown keys were reported and stay in the document: take only the known ones
        pacing=Pacing(**{k: float(v) for k, v in (data.get("pacing") or {}).items() if k in KINDS}),
        prune=data.get("prune", False),
        where=where,
    )


def _lists(
    loaded: list[tuple[SpecFile, LocatedDict]],
    destinations: Mapping[str, Destination],
    broken: set[str],
    root: Path,
    problems: list[Problem],
) -> list[ListSpec]:
    result: dict[str, ListSpec] = {}
    for spec_file, document in loaded:
        section = document.get("lists") or LocatedDict()
        for name, data in section.items():
            where = section.key_where[name]
            spec = _list(name, data, where, spec_file, destinations, broken, root, problems)
            if spec is None:
                continue
            if spec.key in result:
                other = result[spec.key]
                problems.append(
                    where.problem(
                        f"list '{name}' collides with '{other.name}' at {other.where} on "
                        f"destination '{spec.destination}' (Infobip list names ignore case)",
                        "rename one of them",
                    )
                )
                continue
            result[spec.key] = spec
    return list(result.values())


def _list(
    name: str,
    data: LocatedDict,
    where: Location,
    spec_file: SpecFile,
    destinations: Mapping[str, Destination],
    broken: set[str],
    root: Path,
    problems: list[Problem],
) -> ListSpec | None:
    ok = True
    if not name.strip():
        problems.append(where.problem("list name is blank", "give the list a name"))
        ok = False
    elif len(name) > MAX_LIST_NAME:
        problems.append(
            where.problem(
                f"list name is {len(name)} characters; Infobip allows {MAX_LIST_NAME}",
                "shorten it",
            )
        )
        ok = False
    elif _CONTROL.search(name):
        # not echoed: a line break in it would forge lines of the CI log
        problems.append(
            where.problem(
                "list name contains a control character (a line break, tab or escape)",
                "use printable characters only",
            )
        )
        ok = False
    destination = _list_destination(data, where, destinations, broken, problems)
    base = spec_file.path.parent
    cohorts = _cohort_refs(data, "cohorts", base, root, problems)
    exclude = _cohort_refs(data, "exclude", base, root, problems)
    if not ok or destination is None or cohorts is None or exclude is None:
        return None
    return ListSpec(
        name=name,
        destination=destination,
        cohorts=cohorts,
        exclude=exclude,
        id_column=data.get("id_column", "user_id"),
        id_type=data.get("id_type", "email"),
        max_removal=data.get("max_removal"),
        allow_empty=data.get("allow_empty", False),
        where=where,
    )


def _list_destination(
    data: LocatedDict,
    where: Location,
    destinations: Mapping[str, Destination],
    broken: set[str],
    problems: list[Problem],
) -> str | None:
    if "*" in broken or (broken and "destination" not in data):
        return None  # the destinations already have errors of their own
    defined = ", ".join(sorted(set(destinations) | broken - {"*"})) or "none"
    if "destination" in data:
        name = data["destination"]
        if name in destinations:
            return name
        if name in broken:
            return None
        close = difflib.get_close_matches(name, list(destinations), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"defined: {defined}"
        problems.append(
            data.value_where["destination"].problem(f"unknown destination '{name}'", hint)
        )
        return None
    if len(destinations) == 1:
        return next(iter(destinations))
    message = "no destination is defined" if not destinations else "which destination?"
    problems.append(
        where.problem(
            message,
            f"set destination: to one of: {defined}"
            if destinations
            else "add a destinations: section",
        )
    )
    return None


def _cohort_refs(
    data: LocatedDict, key: str, base: Path, root: Path, problems: list[Problem]
) -> tuple[CohortRef, ...] | None:
    items = data.get(key) or LocatedList()
    refs, ok = [], True
    for index, text in enumerate(items):
        where = items.item_where[index]
        ref = _cohort_ref(text, where, base, root, problems)
        ok = ok and ref is not None
        if ref is not None:
            refs.append(ref)
    return tuple(refs) if ok else None


def _cohort_ref(
    text: str, where: Location, base: Path, root: Path, problems: list[Problem]
) -> CohortRef | None:
    raw = Path(os.path.expanduser(text)) if text.startswith("~") else Path(text)
    try:
        path = (base / raw).resolve()  # follows symlinks, so a link cannot smuggle a path out
        exists, is_file = path.exists(), path.is_file()
    except (OSError, ValueError, RuntimeError) as exc:
        shown = text if len(text) <= 80 else f"{text[:40]}...{text[-20:]}"
        problems.append(where.problem(f"cohort path {shown!r} {_unusable(exc)}", "fix the path"))
        return None
    if not path.is_relative_to(root):
        problems.append(
            where.problem(
                f"cohort path '{text}' leads outside the workspace ({_display(root)})",
                "keep cohort files inside the repository, with a relative path",
            )
        )
        return None
    display = _display(path)
    if not exists:
        problems.append(
            where.problem(
                f"cohort file '{text}' not found (looked for {display})",
                "paths are relative to the spec file; export the cohort or fix the path",
            )
        )
        return None
    if not is_file:
        problems.append(where.problem(f"cohort path '{text}' is not a file", "name a file"))
        return None
    return CohortRef(path=path, display=display)


def _unusable(exc: Exception) -> str:
    """Why a path cannot even be looked up, without the absolute path the exception holds."""
    if isinstance(exc, ValueError):  # "embedded null byte"
        return "contains a NUL character"
    if isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP:
        return "is a loop of symbolic links"
    return f"cannot be looked up: {getattr(exc, 'strerror', None) or exc}"
