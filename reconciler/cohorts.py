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
import functools
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
from reconciler.ids import normalize_block, normalizer
from reconciler.masking import mask

# Invalid ids kept as samples for the plan (shown masked); the rest are only counted.
MAX_INVALID_SAMPLES = 20
# Header columns named in a "missing id column" message; Amplitude exports can have hundreds.
_MAX_COLUMNS_SHOWN = 20
_CHUNK = 1 << 16
# Bytes read at once while the rows are simple (see _split_block): large enough that the
# per-block work is noise, small enough to stay a few MB of memory.
BLOCK_SIZE = 1 << 20
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
    # the csv reader, whose line_num (after line_base lines it never saw) tells which line
    # failed to decode
    reader: object = None
    line_base: int = 0


def _valid_ids(
    values: Iterable[str], normalize: Callable[[str], str | None], tally: _Tally
) -> Iterator[str]:
    """Yield the normalized valid ids of ``values``, counting empty and invalid ones."""
    # locals, not attributes, in the loop that runs once per row; written back even on errors
    rows, empty, invalid_count = tally.rows, tally.empty, tally.invalid_count
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


def _csv_reader(lines: Iterable[str], tally: _Tally) -> Iterator[list[str]]:
    # strict: an unclosed quote is an error instead of silently swallowing the rest of the file
    reader = csv.reader(lines, strict=True)
    tally.reader, tally.line_base = reader, tally.line
    return reader


def _header_index(lines: Iterable[str], id_column: str, display: str, tally: _Tally) -> int:
    """Read the header record from ``lines``; return the index of ``id_column`` in it."""
    reader = _csv_reader(lines, tally)
    # never empty: the caller checked the content has a byte, and a blank line reads as []
    header = next(reader, [])
    names = [name.strip() for name in header]
    if id_column not in names:
        raise CohortError(display, 1, *_missing_column(id_column, names))
    tally.line = reader.line_num  # type: ignore[attr-defined]
    return names.index(id_column)  # the first one: property column names may repeat


def _csv_values(
    lines: Iterable[str], index: int, id_column: str, display: str, tally: _Tally
) -> Iterator[str]:
    """The ``index`` field of each record of ``lines``, which start after ``tally.line``."""
    reader = _csv_reader(lines, tally)
    base = tally.line_base
    for row in reader:
        if not row:
            # a blank line, e.g. an extra newline at the end of a hand-edited file
            tally.line = base + reader.line_num  # type: ignore[attr-defined]
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
        tally.line = base + reader.line_num  # type: ignore[attr-defined]
        yield value


# --- reading a block at a time ------------------------------------------------
#
# Row by row, a million-row file spends seconds in the interpreter. So the rows are read in
# blocks of whole lines: a block in the simple form every export has is split with one regex
# pass, and its ids are normalized at once by ids.normalize_block (or one by one, when that
# declines, e.g. for an invalid id). From the first block not in the simple form (a quote inside
# a field, a blank line, a ragged row, bad UTF-8, ...), the rest of the file is read row by row
# with the csv module, which stays the reference for every result and every message.


@functools.lru_cache(maxsize=16)
def _record_patterns(index: int, limit: int) -> tuple[re.Pattern[str], ...]:
    r"""Patterns matching one record a line and capturing its field ``index``.

    A record is either all double-quoted fields without quotes inside, or all unquoted fields
    without quotes, commas or "\r"; either way the csv module reads exactly the captured field.
    A match starts at the "\n" ending the line before and stops short of the one ending its own
    line, so a block of n lines in the simple form has exactly n matches. ``limit`` is the csv
    module's field size limit: a longer field is an error there, so it must not match here.
    """
    # possessive (*+): a field's characters exclude what ends it, so giving any back never
    # helps a match, and not keeping the states to do so makes the pass faster
    quoted = f'"([^"]{{0,{limit}}}+)"'
    unquoted = f'([^",\\r\\n]{{0,{limit}}}+)'
    patterns = []
    # a blank line is a record of its own for a pattern of unquoted fields; csv skips it
    for field, not_blank in ((quoted, ""), (unquoted, r"(?!\r?\n)")):
        other = field.replace("(", "(?:", 1)
        line = rf"\n{not_blank}(?:{other},){{{index}}}{field}(?:,{other})*+\r?(?=\n)"
        patterns.append(re.compile(line))
    return tuple(patterns)


def _split_block(block: bytes, index: int | None) -> tuple[list[str], int] | None:
    """The raw ids of a block of whole lines, and its number of lines; None if not simple.

    ``index`` is the id's field in a CSV record; None for plain text, one id a line.
    """
    try:
        text = block.decode()
    except UnicodeDecodeError:
        return None
    if not text.endswith("\n"):
        text += "\n"  # the last line of a file without a final newline
    lines = text.count("\n")
    if index is None:
        values = text.split("\n")
        values.pop()
        return values, lines
    framed = "\n" + text
    for pattern in _record_patterns(index, csv.field_size_limit()):
        values = pattern.findall(framed)
        if len(values) == lines:
            return values, lines
    return None


def _blocks(first: bytes | None, stream: io.BufferedIOBase, size: int) -> Iterator[bytes]:
    """``first`` (a line, maybe empty), then blocks of about ``size`` bytes of whole lines."""
    if first is not None:
        yield first
    while block := stream.read(size):
        if not block.endswith(b"\n"):
            block += stream.readline()
        yield block


@attrs.define
class _IdReader:
    """Reads the rows of one file into valid ids: a block at a time while the rows are simple,
    then row by row."""

    display: str
    id_column: str
    id_type: str
    tally: _Tally
    ids: list[str] = attrs.Factory(list)

    def read(
        self, stream: io.BufferedIOBase, first: bytes, *, is_csv: bool, block_size: int | None
    ) -> frozenset[str]:
        """The valid ids of ``first`` (the first line, BOM removed) and the rest of ``stream``."""
        # lines are split on b"\n" (CRLF keeps its "\r" for csv to drop); a UTF-8 sequence
        # never contains that byte, so decoding line by line is exact
        rest: Iterable[bytes] = chain((first,), stream)
        index = None
        if is_csv:
            index = _header_index(map(bytes.decode, rest), self.id_column, self.display, self.tally)
            rest = stream
        if block_size:
            blocks = _blocks(None if is_csv else first, stream, block_size)
            rest = self._read_blocks(blocks, stream, index)
        self._read_rows(rest, index)
        return frozenset(self.ids)

    def _read_blocks(
        self, blocks: Iterable[bytes], stream: io.BufferedIOBase, index: int | None
    ) -> Iterable[bytes]:
        """Read the blocks up to the first that is not simple; return the lines left."""
        tally = self.tally
        for block in blocks:
            split = _split_block(block, index)
            if split is None:
                return chain(io.BytesIO(block), stream)
            values, lines = split
            normalized = normalize_block(values, self.id_type)
            if normalized is None:
                self.ids.extend(_valid_ids(values, normalizer(self.id_type), tally))
            else:
                valid, blank = normalized
                self.ids.extend(valid)
                tally.rows += len(values)
                tally.empty += blank
            tally.line += lines
        return ()

    def _read_rows(self, lines: Iterable[bytes], index: int | None) -> None:
        values: Iterable[str] = map(bytes.decode, lines)
        if index is not None:
            values = _csv_values(values, index, self.id_column, self.display, self.tally)
        self.ids.extend(_valid_ids(values, normalizer(self.id_type), self.tally))


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
    block_size: int | None = BLOCK_SIZE,
) -> CohortRead:
    """Read one cohort file and return its normalized valid ids with counts and digest.

    ``*.csv`` and ``*.csv.gz`` are read as Amplitude exports (the id is the first header column
    named ``id_column``); anything else as plain text, one id a line. ``.gz`` files are gzip.
    ``display`` is the path shown in messages (default ``str(path)``). ``block_size`` is the
    size of the blocks read at once while the rows are in a simple form; None reads row by row
    (the reference the block reading is tested against; the result is the same).

    Raises CohortError (naming ``display`` and a line) when the file is missing, a directory,
    unreadable, empty (0 bytes), binary, not UTF-8, malformed CSV, without the id column, or a
    truncated or corrupt gzip file. Raises ValueError for an unknown ``id_type``.
    """
    normalizer(id_type)  # ValueError for an unknown type, before the file is opened
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
            reader = _IdReader(shown, id_column, id_type, tally)
            ids = reader.read(stream, first, is_csv=is_csv, block_size=block_size)
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
        return tally.line_base + tally.reader.line_num + 1  # type: ignore[attr-defined]
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
    # million-entry sets: the common single cohort is not copied, nor built up in steps
    wanted = cohorts[0].ids if len(cohorts) == 1 else frozenset().union(*(c.ids for c in cohorts))
    if not exclude:
        return wanted
    return wanted.difference(*(c.ids for c in exclude))
