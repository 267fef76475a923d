"""Reading cohort files: Amplitude export CSV or plain text, optionally gzip-compressed.

The format is decided by the file name: ``*.csv`` and ``*.csv.gz`` are Amplitude exports (every
field double-quoted, a header line, property columns whose names may repeat); anything else is
plain text, one id a line. ``.gz`` means gzip. Files are streamed: cohorts reach millions of
rows, so nothing holds a whole file, and the sha256 of the bytes on disk is computed while
reading.

Every problem is a ``CohortError`` naming file and line, with a way out. Ids never appear in a
message unmasked.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path

import attrs

from reconciler.errors import CohortError
from reconciler.masking import mask

ID_TYPES = ("email", "external_id", "phone")

# Invalid ids kept as samples for the plan (shown masked); the rest are only counted.
MAX_INVALID_SAMPLES = 20
# Header columns named in a "missing id column" message; Amplitude exports can have hundreds.
_MAX_COLUMNS_SHOWN = 20
_CHUNK = 1 << 16
# A first-line cell that might be an id rather than a column name (see _missing_column).
_COULD_BE_ID = re.compile(r"[@\d\s]|^.{33,}$")
_BOM = b"\xef\xbb\xbf"


@attrs.frozen
class CohortRead:
    """What one cohort file contributed: its valid ids and what was skipped."""

    path: str
    ids: frozenset[str]
    rows: int
    empty: int
    invalid: tuple[str, ...]
    invalid_count: int
    digest: str


# --- normalization ----------------------------------------------------------

# Local part: anything printable but the characters that make an address unparseable.
# Domain: dot-separated labels of letters, digits and inner hyphens; the TLD is letters, or an
# IDNA ("xn--") label so that internationalized domains are not dropped.
_EMAIL = re.compile(
    r"[^\s@\"(),:;<>\[\]\\\x00-\x1f\x7f]{1,64}"
    r"@(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PHONE_SEPARATORS = str.maketrans("", "", " \t\u00a0-.()")


def _normalize_email(raw: str) -> str | None:
    value = raw.strip().lower()
    if not value:
        return value
    if len(value) <= 254 and _EMAIL.fullmatch(value):
        return value
    return None


def _normalize_external_id(raw: str) -> str | None:
    value = raw.strip()
    if len(value) > 256 or _CONTROL.search(value):
        return None
    return value


def _normalize_phone(raw: str) -> str | None:
    value = raw.strip()
    if not value:
        return value
    if value[0] == "+":
        value = value[1:]
    value = value.translate(_PHONE_SEPARATORS)
    # isdigit() alone accepts "²" and other non-ASCII digits
    if 6 <= len(value) <= 15 and value.isascii() and value.isdigit():
        return value
    return None


_NORMALIZERS: dict[str, Callable[[str], str | None]] = {
    "email": _normalize_email,
    "external_id": _normalize_external_id,
    "phone": _normalize_phone,
}


def _normalizer(id_type: str) -> Callable[[str], str | None]:
    try:
        return _NORMALIZERS[id_type]
    except KeyError:
        raise ValueError(f"unknown id_type {id_type!r}; expected one of {ID_TYPES}") from None


def normalize_id(raw: str, id_type: str = "email") -> str | None:
    """Return ``raw`` normalized for ``id_type``, ``""`` when it is blank, ``None`` when invalid.

    - email: trimmed, lower-cased (Infobip compares emails case-insensitively) and checked for
      a plausible shape: one ``@``, a local part of 1..64 characters, a domain of
      letter/digit/hyphen labels with a TLD of at least two letters, at most 254 in all.
    - external_id: trimmed; invalid when it holds control characters or exceeds 256 characters.
    - phone: one leading ``+`` and spaces, dashes, dots and parentheses dropped; what remains
      must be 6..15 digits.

    Raises ValueError for an ``id_type`` not in ``ID_TYPES`` (the spec loader rejects those).
    """
    return _normalizer(id_type)(raw)


# --- streams ----------------------------------------------------------------


class _BinaryContent(Exception):
    """A NUL byte on ``line`` of the (decompressed) content.

    ``utf16`` when the content starts with a UTF-16 byte order mark: what spreadsheet programs
    save as "Unicode text".
    """

    def __init__(self, line: int, *, utf16: bool = False) -> None:
        super().__init__(line)
        self.line = line
        self.utf16 = utf16


class _HashingReader(io.RawIOBase):
    """Reads the file as stored on disk and hashes every byte on the way through."""

    def __init__(self, raw: io.RawIOBase) -> None:
        self._raw = raw
        self.sha256 = hashlib.sha256()
        self.size = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._raw.readinto(buffer) or 0
        if n:
            self.sha256.update(memoryview(buffer)[:n])
            self.size += n
        return n

    def drain(self) -> None:
        """Hash what the parser left unread, so the digest always covers the whole file.

        Defensive: the line reader and gzip both read to the end already.
        """
        buffer = bytearray(_CHUNK)
        while self.readinto(buffer):
            pass


class _NulGuard(io.RawIOBase):
    """Passes the content through, raising _BinaryContent at the first NUL byte.

    Checking whole chunks is far cheaper than checking each line, and a NUL never occurs in a
    text export (the csv module would silently accept it).
    """

    def __init__(self, source: io.IOBase) -> None:
        self._source = source
        self._newlines = 0
        self._start = True

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self._source.read(len(buffer))
        if not data:
            return 0
        nul = data.find(b"\0")
        if nul >= 0:
            utf16 = self._start and data.startswith((b"\xff\xfe", b"\xfe\xff"))
            raise _BinaryContent(self._newlines + data.count(b"\n", 0, nul) + 1, utf16=utf16)
        self._start = False
        self._newlines += data.count(b"\n")
        n = len(data)
        buffer[:n] = data
        return n


def _open_raw(path: Path, display: str) -> io.RawIOBase:
    """Open ``path`` unbuffered for reading, mapping OSError to CohortError."""
    try:
        if path.is_dir():
            # checked first: on some systems opening a directory is a PermissionError
            raise IsADirectoryError
        return path.open("rb", buffering=0)
    except (FileNotFoundError, NotADirectoryError):
        raise CohortError(
            display,
            1,
            "file not found",
            "check the path; it is relative to the spec file that names it",
        ) from None
    except IsADirectoryError:
        raise CohortError(
            display, 1, "is a directory, not a cohort file", "name the exported file itself"
        ) from None
    except PermissionError:
        raise CohortError(
            display, 1, "permission denied", "make the file readable by this user"
        ) from None
    except OSError as exc:
        raise CohortError(
            display, 1, f"cannot be opened: {exc.strerror or 'unknown error'}", "check the file"
        ) from exc


def file_digest(path: Path, *, display: str | None = None) -> str:
    """Return ``"sha256:<hex>"`` of the file's bytes, read in chunks.

    The value equals ``CohortRead.digest`` for the same file. Raises CohortError when the file
    cannot be opened or read.
    """
    shown = display if display is not None else str(path)
    with _open_raw(path, shown) as raw:
        reader = _HashingReader(raw)
        try:
            reader.drain()
        except OSError as exc:
            raise _read_failed(shown, exc) from exc
    return "sha256:" + reader.sha256.hexdigest()


def cached_digest(cache: dict[Path, str], path: Path, *, display: str | None = None) -> str:
    """``file_digest`` of ``path``, hashed at most once per ``cache``."""
    if path not in cache:
        cache[path] = file_digest(path, display=display)
    return cache[path]


def _read_failed(display: str, exc: OSError) -> CohortError:
    return CohortError(
        display,
        1,
        f"could not be read: {exc.strerror or 'input/output error'}",
        "check the disk or copy the file again",
    )


# --- reading ----------------------------------------------------------------


@attrs.define
class _Tally:
    """Counts of one read; mutable only while the file is being read."""

    rows: int = 0
    empty: int = 0
    invalid: list[str] = attrs.Factory(list)
    invalid_count: int = 0
    # last physical line of the last complete CSV record; a failing record starts on the next
    line: int = 0
    # the csv reader, whose line_num tells which line failed to decode
    reader: object = None


def _valid_ids(
    values: Iterable[str], normalize: Callable[[str], str | None], tally: _Tally
) -> Iterator[str]:
    """Yield the normalized valid ids of ``values``, counting empty and invalid ones."""
    # locals, not attributes, in the loop that runs once per row; written back even on errors
    rows = empty = invalid_count = 0
    samples = tally.invalid
    try:
        for raw in values:
            rows += 1
            value = normalize(raw)
            if value:
                yield value
            elif value is None:
                invalid_count += 1
                if len(samples) < MAX_INVALID_SAMPLES:
                    samples.append(raw.strip())
            else:
                empty += 1
    finally:
        tally.rows, tally.empty, tally.invalid_count = rows, empty, invalid_count


def _csv_values(lines: Iterable[str], id_column: str, display: str, tally: _Tally) -> Iterator[str]:
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file
    reader = csv.reader(lines, strict=True)
    tally.reader = reader
    # never empty: the caller checked the content has a byte, and a blank line reads as []
    header = next(reader, [])
    names = [name.strip() for name in header]
    if id_column not in names:
        raise CohortError(display, 1, *_missing_column(id_column, names))
    index = names.index(id_column)  # the first one: property column names may repeat
    tally.line = reader.line_num
    for row in reader:
        if not row:
            # a blank line, e.g. an extra newline at the end of a hand-edited file
            tally.line = reader.line_num
            continue
        try:
            value = row[index]
        except IndexError:
            raise CohortError(
                display,
                tally.line + 1,
                f"the row has {len(row)} field{'s' if len(row) != 1 else ''}, "
                f"but column {id_column!r} is field {index + 1}",
                "export the cohort again; the file looks cut short or edited",
            ) from None
        tally.line = reader.line_num
        yield value


def _missing_column(id_column: str, names: Sequence[str]) -> tuple[str, str]:
    """Message and hint for a header without ``id_column``, listing the columns it has."""
    example = 'the first line must be the header, e.g. "amplitude_id","user_id"'
    if not any(names):
        return f"no column {id_column!r}: the header line is empty", example
    # A file without a header has an id where the header should be, and ids are never printed
    # unmasked. An Amplitude header (it has amplitude_id) is shown as is; in any other first
    # line, cells that could be ids (an @, a digit, whitespace, long) are masked.
    genuine = "amplitude_id" in names
    shown = [
        name if genuine or not _COULD_BE_ID.search(name) else mask(name)
        for name in names[:_MAX_COLUMNS_SHOWN]
    ]
    listed = ", ".join(repr(name) for name in shown)
    more = len(names) - len(shown)
    if more:
        listed += f" and {more} more"
    hint = "set id_column: to one of them"
    if not genuine and shown != names[:_MAX_COLUMNS_SHOWN]:
        hint = f"{example}; or {hint}"
    return f"no column {id_column!r}; the header has {listed}", hint


def _is_csv(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(".csv") or name.endswith(".csv.gz")


def read_cohort(
    path: Path,
    *,
    id_column: str = "user_id",
    id_type: str = "email",
    display: str | None = None,
) -> CohortRead:
    """Read one cohort file and return its normalized valid ids with counts and digest.

    ``*.csv`` and ``*.csv.gz`` are read as Amplitude exports (the id is the first header column
    named ``id_column``); anything else as plain text, one id a line. ``.gz`` files are gzip.
    ``display`` is the path shown in messages (default ``str(path)``).

    Raises CohortError (naming ``display`` and a line) when the file is missing, a directory,
    unreadable, empty (0 bytes), binary, not UTF-8, malformed CSV, without the id column, or a
    truncated or corrupt gzip file. Raises ValueError for an unknown ``id_type``.
    """
    normalize = _normalizer(id_type)
    shown = display if display is not None else str(path)
    is_csv = _is_csv(path)
    is_gzip = path.name.lower().endswith(".gz")
    tally = _Tally()

    with _open_raw(path, shown) as raw:
        hashing = _HashingReader(raw)
        try:
            content: io.IOBase = hashing
            if is_gzip:
                content = gzip.GzipFile(fileobj=hashing, mode="rb")
            stream = io.BufferedReader(_NulGuard(content), _CHUNK)
            if not stream.peek(1):
                raise _empty(shown, compressed=is_gzip and hashing.size > 0)
            first = stream.readline()
            if first.startswith(_BOM):
                first = first[len(_BOM) :]
            # lines are split on b"\n" (CRLF keeps its "\r" for csv to drop); a UTF-8 sequence
            # never contains that byte, so decoding line by line is exact
            lines = map(bytes.decode, chain((first,), stream))
            values = _csv_values(lines, id_column, shown, tally) if is_csv else lines
            ids = frozenset(_valid_ids(values, normalize, tally))
            hashing.drain()
        except _BinaryContent as exc:
            if exc.utf16:
                raise CohortError(
                    shown, 1, "is UTF-16 encoded, not UTF-8", "save or export it again as UTF-8"
                ) from None
            raise CohortError(
                shown,
                exc.line,
                "looks like a binary file, not a cohort export",
                "export the cohort from Amplitude again, or check the spec names the right file",
            ) from None
        except UnicodeDecodeError:
            # "from None": the cause would carry the raw line, ids included
            raise CohortError(
                shown,
                _decode_error_line(tally, is_csv),
                "is not valid UTF-8",
                "export or save the file again as UTF-8",
            ) from None
        except csv.Error as exc:
            raise CohortError(shown, tally.line + 1, *_csv_problem(str(exc))) from exc
        except gzip.BadGzipFile as exc:
            if str(exc).startswith("Not a gzipped file"):
                raise CohortError(
                    shown,
                    1,
                    "is not a gzip file, although its name ends in .gz",
                    "rename it without .gz, or compress it with gzip",
                ) from None
            raise _corrupt_gzip(shown) from exc
        except (EOFError, zlib.error) as exc:
            raise _corrupt_gzip(shown) from exc
        except OSError as exc:
            raise _read_failed(shown, exc) from exc

    return CohortRead(
        path=shown,
        ids=ids,
        rows=tally.rows,
        empty=tally.empty,
        invalid=tuple(tally.invalid),
        invalid_count=tally.invalid_count,
        digest="sha256:" + hashing.sha256.hexdigest(),
    )


def _decode_error_line(tally: _Tally, is_csv: bool) -> int:
    if is_csv and tally.reader is not None:
        # line_num counts the lines the csv module received; the next one failed to decode
        return tally.reader.line_num + 1  # type: ignore[attr-defined]
    # plain text: every line is a row, so the rows counted so far decoded fine
    return tally.rows + 1


def _empty(display: str, *, compressed: bool) -> CohortError:
    what = "the file is empty once decompressed" if compressed else "the file is empty"
    return CohortError(
        display,
        1,
        f"{what}; an Amplitude export always has a header line",
        "export the cohort again, or write just the header for an empty cohort",
    )


def _corrupt_gzip(display: str) -> CohortError:
    return CohortError(
        display,
        1,
        "the gzip file is truncated or corrupt",
        "download or copy the file again, or test it with gzip -t",
    )


def _csv_problem(detail: str) -> tuple[str, str]:
    """Turn a csv.Error text into a message and hint a user can act on."""
    hint = "export the cohort again; every field of an Amplitude export is double-quoted"
    if "unexpected end of data" in detail:
        return "unbalanced quotes: a quoted field starting here is never closed", hint
    if "expected after" in detail:
        return "unbalanced quotes: a quote inside a field is not doubled", hint
    if "field limit" in detail:
        return f"a field is too long ({detail})", hint
    if "new-line character" in detail:
        return "a line break inside an unquoted field", hint
    return f"malformed CSV ({detail})", hint


def desired_ids(cohorts: Sequence[CohortRead], exclude: Sequence[CohortRead]) -> frozenset[str]:
    """Return the union of the ids of ``cohorts`` minus the union of those of ``exclude``."""
    if len(cohorts) == 1 and not exclude:
        return cohorts[0].ids  # the common case: no copy of a million-entry set
    union: set[str] = set()
    for cohort in cohorts:
        union |= cohort.ids
    for cohort in exclude:
        union -= cohort.ids
    return frozenset(union)
