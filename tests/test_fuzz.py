"""Fuzzing the two readers of untrusted input: nothing but the project's own errors escapes.

The spec loader gets random text and bytes, YAML-ish token soup, and random documents built
from the real spec keys; the cohort reader gets random bytes and mutated Amplitude exports,
plain, gzip-compressed and truncated, with any id column. A spec problem must come out as a
SpecError, a cohort problem as a CohortError: never a traceback from PyYAML, jsonschema, csv,
gzip or the file system.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.cohorts import CohortRead, read_cohort
from reconciler.errors import CohortError, SpecError
from reconciler.ids import ID_TYPES
from reconciler.spec import Workspace, load_workspace

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- the spec loader ------------------------------------------------------------

SPEC_KEYS = (
    "version",
    "destinations",
    "lists",
    "base_url",
    "api_key_env",
    "api_key",
    "batch_size",
    "pacing",
    "create",
    "add",
    "remove",
    "prune",
    "destination",
    "cohorts",
    "exclude",
    "id_column",
    "id_type",
    "max_removal",
    "allow_empty",
    "prod",
    "sandbox",
    "churn",
    "Churn",
)
PATHS = (
    "cohorts/a.csv",
    "cohorts/b.txt.gz",
    "cohorts",
    "cohorts/missing.csv",
    "../outside.csv",
    "../../../../etc/passwd",
    "/etc/passwd",
    "~/.ssh/id_rsa",
    "~",
    "",
    "cohorts/a.csv\0",
    "x" * 300,
    "cohorts/loop.csv",
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # nan and infinities included
    st.sampled_from(("sandbox", "https://x.api.infobip.com", "INFOBIP_API_KEY", "email", 1)),
    st.sampled_from(PATHS),
    st.text(max_size=20),
)
KEYS = st.one_of(st.sampled_from(SPEC_KEYS), st.text(max_size=12), st.integers())


def _documents() -> st.SearchStrategy[object]:
    anything = st.recursive(
        SCALARS,
        lambda children: st.one_of(
            st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=5)
        ),
        max_leaves=30,
    )
    destination = st.fixed_dictionaries(
        {},
        optional={
            "base_url": st.one_of(
                st.sampled_from(("sandbox", "https://x.api.infobip.com")), anything
            ),
            "api_key_env": st.one_of(st.just("INFOBIP_API_KEY"), anything),
            "batch_size": st.one_of(st.integers(), st.floats(), anything),
            "pacing": st.one_of(
                st.dictionaries(st.sampled_from(("create", "add", "remove")), SCALARS), anything
            ),
            "prune": anything,
        },
    )
    a_list = st.fixed_dictionaries(
        {},
        optional={
            "destination": st.one_of(st.sampled_from(("prod", "sandbox", "eu")), anything),
            "cohorts": st.one_of(st.lists(st.sampled_from(PATHS), max_size=3), anything),
            "exclude": st.one_of(st.lists(st.sampled_from(PATHS), max_size=2), anything),
            "id_column": anything,
            "id_type": st.one_of(st.sampled_from((*ID_TYPES, "mail")), anything),
            "max_removal": st.one_of(st.floats(), anything),
            "allow_empty": anything,
        },
    )
    names = st.one_of(st.sampled_from(("churn", "Churn", "prod", "", " ", "x" * 300)), st.text())
    spec = st.fixed_dictionaries(
        {},
        optional={
            "version": st.one_of(st.just(1), SCALARS),
            "destinations": st.one_of(st.dictionaries(names, destination, max_size=3), anything),
            "lists": st.one_of(st.dictionaries(names, a_list, max_size=3), anything),
            "unknown": anything,
        },
    )
    return st.one_of(spec, anything)


# Fragments that make a YAML parser work: indentation, flow and block collections, anchors,
# aliases, merges, tags (safe, unsafe, malformed), documents, quotes and odd characters.
_TOKENS = (
    "\n",
    "\n  ",
    "\n    ",
    "\t",
    " ",
    "- ",
    ": ",
    "? ",
    ",",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "&b ",
    "*b",
    "<<: ",
    "!!int ",
    "!!float ",
    "!!bool ",
    "!!timestamp ",
    "!!binary ",
    "!!set ",
    "!!omap ",
    "!!map ",
    "!!seq ",
    "!!str ",
    "!!python/object/apply:os.system ",
    "!custom ",
    "!<tag:x> ",
    "%YAML 1.1\n",
    "---\n",
    "...\n",
    "|\n",
    ">-\n",
    '"',
    "'",
    "\\",
    "#",
    "2024-13-45",
    "0x",
    ".nan",
    "-.inf",
    "1e400",
    "~",
    "\x00",
    "\ufeff",
    "\x85",
    "\u2028",
    "\r",
    "é",
    *(f"{key}: " for key in SPEC_KEYS),
    *PATHS[:8],
)
YAMLISH = st.lists(st.sampled_from(_TOKENS), max_size=40).map("".join)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a couple of cohort files and a symlink loop for the paths to find."""
    root = tmp_path_factory.mktemp("fuzz-specs")
    cohorts = root / "specs" / "cohorts"
    cohorts.mkdir(parents=True)
    (cohorts / "a.csv").write_text('"amplitude_id","user_id"\n"1","a@example.com"\n')
    (cohorts / "b.txt.gz").write_bytes(gzip.compress(b"b@example.com\n"))
    with contextlib.suppress(OSError):  # no symlinks (Windows): the other paths still apply
        (cohorts / "loop.csv").symlink_to("loop.csv")
    return root


def _load_or_spec_error(workspace: Path, data: bytes) -> None:
    spec = workspace / "specs" / "main.yaml"
    spec.write_bytes(data)
    try:
        loaded = load_workspace(workspace / "specs")
    except SpecError as error:
        assert error.problems, "a SpecError without a problem"
        for problem in error.problems:
            assert problem.line >= 1 and problem.column >= 1
            assert problem.file, problem
        return
    assert isinstance(loaded, Workspace)
    for spec_list in loaded.lists:
        for ref in (*spec_list.cohorts, *spec_list.exclude):
            assert ref.path.is_relative_to(workspace.resolve())


@FAST
@given(document=_documents())
def test_random_spec_documents_load_or_raise_a_spec_error(workspace: Path, document) -> None:
    _load_or_spec_error(workspace, yaml.safe_dump(document, allow_unicode=True).encode())


@FAST
@given(text=YAMLISH)
def test_yaml_token_soup_loads_or_raises_a_spec_error(workspace: Path, text: str) -> None:
    _load_or_spec_error(workspace, text.encode("utf-8", "surrogatepass"))


@FAST
@given(data=st.one_of(st.text().map(lambda t: t.encode("utf-8", "surrogatepass")), st.binary()))
def test_arbitrary_text_and_bytes_load_or_raise_a_spec_error(workspace: Path, data: bytes) -> None:
    _load_or_spec_error(workspace, data)


# --- the cohort reader ------------------------------------------------------------

_FIELD = st.one_of(
    st.sampled_from(("user_id", "amplitude_id", "a@example.com", "", "+44 20 7946 0958")),
    st.text(max_size=12),
)


@st.composite
def _exports(draw: st.DrawFn) -> tuple[bytes, str]:
    """An Amplitude-like export, maybe broken afterwards, and the id column asked for."""
    columns = draw(st.lists(_FIELD, min_size=1, max_size=4))
    id_column = draw(st.one_of(st.sampled_from(columns), _FIELD))
    quote = draw(st.sampled_from(('"', "", "'")))
    eol = draw(st.sampled_from(("\n", "\r\n", "\r")))
    rows = draw(st.lists(st.lists(_FIELD, max_size=5), max_size=6))
    text = eol.join(",".join(f"{quote}{cell}{quote}" for cell in row) for row in [columns, *rows])
    data = draw(st.sampled_from((b"", b"\xef\xbb\xbf"))) + text.encode(
        draw(st.sampled_from(("utf-8", "utf-16", "latin-1", "cp1252"))), "replace"
    )
    for _ in range(draw(st.integers(0, 3))):  # damage: cut, insert or flip bytes
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(("cut", "insert", "flip")))
        if kind == "cut":
            data = data[:at]
        elif kind == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
        elif at < len(data):
            data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]
    return data, id_column


NAMES = ("fuzz.csv", "fuzz.txt", "fuzz.csv.gz", "fuzz.txt.gz", "FUZZ.CSV", "fuzz")


def _read_or_cohort_error(path: Path, data: bytes, id_column: str, id_type: str) -> None:
    path.write_bytes(data)
    try:
        read = read_cohort(path, id_column=id_column, id_type=id_type, display="shown.csv")
    except CohortError as error:
        assert str(error).startswith("shown.csv:"), str(error)
        assert "\n" not in str(error), str(error)
        return
    assert isinstance(read, CohortRead)
    assert read.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert read.rows >= len(read.ids)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-cohorts")


@FAST
@given(
    export=_exports(),
    name=st.sampled_from(NAMES),
    id_type=st.sampled_from(ID_TYPES),
    compress=st.sampled_from(("no", "gzip", "truncated gzip")),
    cut=st.integers(min_value=0, max_value=60),
)
def test_damaged_exports_read_or_raise_a_cohort_error(
    scratch: Path, export: tuple[bytes, str], name: str, id_type: str, compress: str, cut: int
) -> None:
    data, id_column = export
    if compress != "no":
        data = gzip.compress(data)
        if compress == "truncated gzip":
            data = data[: max(0, len(data) - 1 - cut)]
    _read_or_cohort_error(scratch / name, data, id_column, id_type)


@FAST
@given(
    data=st.binary(max_size=400),
    name=st.sampled_from(NAMES),
    id_column=_FIELD,
    id_type=st.sampled_from(ID_TYPES),
)
def test_arbitrary_bytes_with_any_id_column_read_or_raise_a_cohort_error(
    scratch: Path, data: bytes, name: str, id_column: str, id_type: str
) -> None:
    _read_or_cohort_error(scratch / name, data, id_column, id_type)
