"""Reading cohort files the way users have them: Amplitude exports and plain id lists."""

from __future__ import annotations

import csv
import gzip
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import cohorts
from reconciler.cohorts import CohortRead, desired_ids, file_digest, read_cohort
from reconciler.errors import CohortError
from reconciler.ids import ID_TYPES, normalizer

HEADER = '"amplitude_id","user_id"'


def export(*rows: str, header: str = HEADER, eol: str = "\n", trailing: bool = True) -> bytes:
    """An Amplitude export: every field double-quoted, one record a line."""
    text = eol.join([header, *rows]) + (eol if trailing else "")
    return text.encode("utf-8")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def cohort_error(path: Path, **kwargs: str) -> CohortError:
    with pytest.raises(CohortError) as info:
        read_cohort(path, **kwargs)
    return info.value


def assert_clean(error: CohortError, display: str, line: int) -> None:
    """The message a user sees: located, with a way out, and no Python internals."""
    text = str(error)
    assert text.startswith(f"{display}:{line}:1: "), text
    assert text.endswith(")") and " (" in text, f"no hint in: {text}"
    for internal in ("Traceback", "Error", "b'", "\\x", "errno", "newline=''"):
        assert internal not in text, text


# --- Amplitude exports --------------------------------------------------------


def test_export_ids_are_trimmed_lower_cased_and_counted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "churn.csv",
        export('"1","Ann@Example.COM"', '"2"," bob@example.com "', '"3","ann@example.com"'),
    )
    read = read_cohort(path)
    assert read.ids == {"ann@example.com", "bob@example.com"}
    assert (read.rows, read.empty, read.invalid_count, read.invalid) == (3, 0, 0, ())
    assert read.path == str(path)


def test_anonymous_users_are_skipped_and_counted_as_empty(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1",""', '"2","a@example.com"', '"3",""'))
    read = read_cohort(path)
    assert read.ids == {"a@example.com"}
    assert (read.rows, read.empty, read.invalid_count) == (3, 2, 0)


def test_header_only_is_an_empty_cohort(tmp_path: Path) -> None:
    read = read_cohort(write(tmp_path, "c.csv", export()))
    assert (read.ids, read.rows) == (frozenset(), 0)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_bom_line_endings_and_trailing_newline_read_alike(
    tmp_path: Path, bom: bytes, eol: str, trailing: bool
) -> None:
    # external ids are taken as they are, so a stray "\r" or BOM would show up in them;
    # amplitude_id is the first column, right after the BOM
    data = bom + export('"101","u-1"', '"102","u-2"', eol=eol, trailing=trailing)
    path = write(tmp_path, "c.csv", data)
    by_user = read_cohort(path, id_type="external_id")
    by_amplitude = read_cohort(path, id_column="amplitude_id", id_type="external_id")
    assert by_user.ids == {"u-1", "u-2"}
    assert by_amplitude.ids == {"101", "102"}
    assert (by_user.rows, by_user.invalid_count) == (2, 0)


def test_repeated_property_columns_and_the_first_id_column_wins(tmp_path: Path) -> None:
    header = '"amplitude_id","user_id","country","country","user_id"'
    path = write(
        tmp_path,
        "c.csv",
        export('"1","a@example.com","DE","FR","x@example.com"', header=header),
    )
    assert read_cohort(path).ids == {"a@example.com"}


def test_id_column_chooses_another_column(tmp_path: Path) -> None:
    header = '"amplitude_id","user_id","email"'
    path = write(tmp_path, "c.csv", export('"1","u-1","A@Example.com"', header=header))
    assert read_cohort(path, id_column="email").ids == {"a@example.com"}
    assert read_cohort(path, id_column="user_id", id_type="external_id").ids == {"u-1"}


def test_quoted_commas_quotes_and_line_breaks_in_properties(tmp_path: Path) -> None:
    header = '"amplitude_id","user_id","note"'
    path = write(
        tmp_path,
        "c.csv",
        export('"1","a@example.com","x, ""y""\nz"', '"2","b@example.com","-"', header=header),
    )
    read = read_cohort(path)
    assert read.ids == {"a@example.com", "b@example.com"}
    assert read.rows == 2


def test_blank_lines_in_an_export_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1","a@example.com"', "", "") + b"\n")
    read = read_cohort(path)
    assert (read.ids, read.rows, read.empty) == ({"a@example.com"}, 1, 0)


def test_missing_id_column_lists_the_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1","x"', header='"amplitude_id","email","plan"'))
    error = cohort_error(path)
    assert_clean(error, str(path), 1)
    assert "no column 'user_id'" in str(error)
    assert "'amplitude_id', 'email', 'plan'" in str(error)
    assert str(error).endswith("(set id_column: to one of them)")


def test_headerless_export_does_not_print_the_first_id(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", b'"john.doe@example.com"\n"jane@example.com"\n')
    error = cohort_error(path)
    assert_clean(error, str(path), 1)
    assert "john.doe" not in str(error)
    assert "j***@example.com" in str(error)
    assert '"amplitude_id","user_id"' in str(error)


def test_row_too_short_for_the_id_column_names_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1","a@example.com"', '"2"', '"3","c@example.com"'))
    error = cohort_error(path)
    assert_clean(error, str(path), 3)
    assert "1 field" in str(error) and "'user_id' is field 2" in str(error)


# --- gzip and plain text ----------------------------------------------------------


def test_gzip_export_reads_like_the_plain_one(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf" + export('"1","A@example.com"', '"2",""', eol="\r\n")
    plain = read_cohort(write(tmp_path, "c.csv", data))
    packed_path = write(tmp_path, "c.csv.gz", gzip.compress(data))
    packed = read_cohort(packed_path)
    assert packed.ids == plain.ids == {"a@example.com"}
    assert (packed.rows, packed.empty) == (plain.rows, plain.empty) == (2, 1)
    # the digest is of the file as stored, i.e. the compressed bytes
    assert packed.digest == "sha256:" + hashlib.sha256(packed_path.read_bytes()).hexdigest()
    assert packed.digest != plain.digest


def test_plain_text_one_id_a_line(tmp_path: Path) -> None:
    data = b"\xef\xbb\xbf Ann@Example.com \r\n\r\nbob@example.com\n   \nnot-an-email"
    read = read_cohort(write(tmp_path, "ids.txt", data))
    assert read.ids == {"ann@example.com", "bob@example.com"}
    assert (read.rows, read.empty, read.invalid_count) == (5, 2, 1)


def test_plain_text_gzip_and_names_without_csv_suffix(tmp_path: Path) -> None:
    # a .txt.gz (or any non-.csv name) is one id a line, even with commas or a header-like line
    data = b'"amplitude_id","user_id"\nu-1\n'
    read = read_cohort(write(tmp_path, "ids.txt.gz", gzip.compress(data)), id_type="external_id")
    assert read.ids == {'"amplitude_id","user_id"', "u-1"}


def test_csv_suffix_is_case_insensitive(tmp_path: Path) -> None:
    path = write(tmp_path, "EXPORT.CSV.GZ", gzip.compress(export('"1","a@example.com"')))
    assert read_cohort(path).ids == {"a@example.com"}


# --- ids ---------------------------------------------------------------------------


def test_invalid_ids_are_skipped_counted_and_sampled_in_file_order(tmp_path: Path) -> None:
    rows = [f'"{i}","bad{i}"' for i in range(25)] + ['"99","ok@example.com"']
    read = read_cohort(write(tmp_path, "c.csv", export(*rows)))
    assert read.ids == {"ok@example.com"}
    assert read.invalid_count == 25
    assert read.invalid == tuple(f"bad{i}" for i in range(20))


def test_phone_cohort_from_an_export(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1","+49 151 1234 5678"', '"2","call me"'))
    read = read_cohort(path, id_type="phone")
    assert read.ids == {"4915112345678"}
    assert (read.invalid_count, read.invalid) == (1, ("call me",))


# --- errors -------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    error = cohort_error(tmp_path / "nope.csv", display="cohorts/nope.csv")
    assert_clean(error, "cohorts/nope.csv", 1)
    assert "not found" in str(error)


def test_missing_file_for_file_digest(tmp_path: Path) -> None:
    with pytest.raises(CohortError, match="not found"):
        file_digest(tmp_path / "nope.csv")


def test_directory_instead_of_a_file(tmp_path: Path) -> None:
    (tmp_path / "cohorts.csv").mkdir()
    error = cohort_error(tmp_path / "cohorts.csv", display="cohorts.csv")
    assert_clean(error, "cohorts.csv", 1)
    assert "directory" in str(error)


def test_permission_denied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "c.csv", export())

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(self))

    # root reads any file whatever its mode, so the refusal is simulated
    monkeypatch.setattr(Path, "open", refuse)
    error = cohort_error(path, display="c.csv")
    assert_clean(error, "c.csv", 1)
    assert "permission denied" in str(error)


@pytest.mark.parametrize("name", ["c.csv", "ids.txt", "c.csv.gz"])
def test_zero_byte_file(tmp_path: Path, name: str) -> None:
    error = cohort_error(write(tmp_path, name, b""), display=name)
    assert_clean(error, name, 1)
    assert "the file is empty; an Amplitude export always has a header line" in str(error)
    assert "write just the header for an empty cohort" in str(error)


def test_gzip_of_nothing_is_empty_too(tmp_path: Path) -> None:
    error = cohort_error(write(tmp_path, "c.csv.gz", gzip.compress(b"")), display="c.csv.gz")
    assert_clean(error, "c.csv.gz", 1)
    assert "empty once decompressed" in str(error)


@pytest.mark.parametrize("name", ["c.csv", "ids.txt", "c.csv.gz"])
def test_binary_content_names_the_line_of_the_nul(tmp_path: Path, name: str) -> None:
    data = export('"1","a@example.com"', '"2","b@ex\x00ample.com"')
    if name.endswith(".gz"):
        data = gzip.compress(data)
    error = cohort_error(write(tmp_path, name, data), display=name)
    assert_clean(error, name, 3)
    assert "looks like a binary file, not a cohort export" in str(error)


def test_utf16_export_says_so(tmp_path: Path) -> None:
    data = export('"1","a@example.com"').decode().encode("utf-16")
    error = cohort_error(write(tmp_path, "c.csv", data), display="c.csv")
    assert_clean(error, "c.csv", 1)
    assert "UTF-16" in str(error)


@pytest.mark.parametrize("name", ["c.csv", "ids.txt", "c.csv.gz"])
def test_not_utf8_names_the_line(tmp_path: Path, name: str) -> None:
    # line 2 is a record spanning two lines: the csv line count must follow it
    data = export('"1","a@example.com","x\ny"', '"2","b@example.com"', '"3","J\xf6rg@example.com"')
    data = data.decode().encode("latin-1")
    if name.endswith(".gz"):
        data = gzip.compress(data)
    error = cohort_error(write(tmp_path, name, data), display=name)
    assert_clean(error, name, 5)
    assert "not valid UTF-8" in str(error) and "again as UTF-8" in str(error)
    assert "rg@example" not in str(error)


def test_unbalanced_quote_names_the_line_where_the_record_starts(tmp_path: Path) -> None:
    data = export('"1","a@example.com"', '"2","b@example.com', '"3","c@example.com"')
    error = cohort_error(write(tmp_path, "c.csv", data), display="c.csv")
    assert_clean(error, "c.csv", 3)
    assert "unbalanced quotes" in str(error)
    assert "b@example" not in str(error)


def test_stray_quote_inside_a_field_is_malformed(tmp_path: Path) -> None:
    data = export('"1","a@example.com"', '"2","b"@example.com"')
    error = cohort_error(write(tmp_path, "c.csv", data), display="c.csv")
    assert_clean(error, "c.csv", 3)
    assert "quote" in str(error)


@pytest.mark.parametrize("name", ["c.csv.gz", "ids.txt.gz"])
def test_truncated_gzip(tmp_path: Path, name: str) -> None:
    rows = [f'"{i}","user{i}@example.com"' for i in range(2000)]
    packed = gzip.compress(export(*rows))
    error = cohort_error(write(tmp_path, name, packed[: len(packed) // 2]), display=name)
    assert_clean(error, name, 1)
    assert "the gzip file is truncated or corrupt" in str(error)


def test_corrupt_gzip(tmp_path: Path) -> None:
    packed = bytearray(gzip.compress(export('"1","a@example.com"')))
    packed[-8] ^= 0xFF  # the CRC no longer matches
    error = cohort_error(write(tmp_path, "c.csv.gz", bytes(packed)), display="c.csv.gz")
    assert_clean(error, "c.csv.gz", 1)
    assert "truncated or corrupt" in str(error)


def test_gz_name_on_an_uncompressed_file(tmp_path: Path) -> None:
    error = cohort_error(write(tmp_path, "c.csv.gz", export('"1","a@example.com"')))
    assert "not a gzip file" in str(error) and "rename it without .gz" in str(error)
    assert "a@example" not in str(error)


def test_unknown_id_type_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        read_cohort(write(tmp_path, "c.csv", export()), id_type="sms")


# --- digest ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["c.csv", "c.csv.gz", "ids.txt"])
def test_digest_is_sha256_of_the_bytes_on_disk(tmp_path: Path, name: str) -> None:
    data = export('"1","a@example.com"', '"2","b@example.com"')
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path = write(tmp_path, name, data)
    expected = "sha256:" + hashlib.sha256(data).hexdigest()
    assert read_cohort(path).digest == file_digest(path) == expected


def test_digest_changes_with_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", export('"1","a@example.com"'))
    before = read_cohort(path).digest
    path.write_bytes(export('"1","a@example.com"', '"2",""'))
    assert read_cohort(path).digest != before


# --- desired ids ----------------------------------------------------------------------


def cohort(*ids: str) -> CohortRead:
    return CohortRead("x.csv", frozenset(ids), len(ids), 0, (), 0, "sha256:0")


def test_desired_ids_is_union_minus_exclusions() -> None:
    churn = cohort("a@x.de", "b@x.de")
    vip = cohort("b@x.de", "c@x.de")
    unsubscribed = cohort("b@x.de", "z@x.de")
    assert desired_ids([churn, vip], [unsubscribed]) == {"a@x.de", "c@x.de"}
    assert desired_ids([churn, vip], []) == {"a@x.de", "b@x.de", "c@x.de"}
    assert desired_ids([], [unsubscribed]) == frozenset()


def test_desired_ids_from_files(tmp_path: Path) -> None:
    cohort_file = write(tmp_path, "c.csv", export('"1","A@x.de"', '"2","b@x.de"'))
    exclude_file = write(tmp_path, "unsub.txt", b"a@X.DE\n")
    assert desired_ids([read_cohort(cohort_file)], [read_cohort(exclude_file)]) == {"b@x.de"}


# --- scale and robustness -------------------------------------------------------------


@pytest.fixture
def one_by_one(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The raw ids that go through the one-id normalizer instead of a block."""
    seen: list[str] = []

    def counting(id_type: str) -> Callable[[str], str | None]:
        normalize = normalizer(id_type)
        return lambda raw: seen.append(raw) or normalize(raw)

    monkeypatch.setattr(cohorts, "normalizer", counting)
    return seen


def test_a_large_gzip_export_is_read_in_blocks(tmp_path: Path, one_by_one: list[str]) -> None:
    header = HEADER + ',"country","country"'
    rows = [f'"{i}","User{i}@Example.com","DE","x"' for i in range(100_000)]
    path = write(tmp_path, "big.csv.gz", gzip.compress(export(*rows, header=header), 1))
    read = read_cohort(path)
    assert len(read.ids) == read.rows == 100_000
    assert "user99999@example.com" in read.ids
    assert one_by_one == []


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def read_or_error(path: Path, **kwargs: Any) -> CohortRead | str:
    try:
        return read_cohort(path, **kwargs)
    except CohortError as error:
        return str(error)


def _read_or_cohort_error(path: Path, data: bytes, id_type: str, block_size: int = 16) -> None:
    """A result or a CohortError, the same whether read a block at a time or row by row."""
    path.write_bytes(data)
    read = read_or_error(path, id_type=id_type, block_size=None)
    assert read_or_error(path, id_type=id_type, block_size=block_size) == read
    if isinstance(read, str):
        assert read.startswith(f"{path}:")
        return
    assert read.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert read.rows >= len(read.ids) and read.invalid_count >= len(read.invalid)


_BYTES = st.one_of(
    st.binary(max_size=300),
    st.text(alphabet='"\r\n,@ab\ufeff\x00é', max_size=60).map(lambda t: t.encode()),
    st.lists(
        st.sampled_from([b'"a@b.co"', b'""', b",", b'"', b"\r\n", b"\n", b"\xef\xbb\xbf"])
    ).map(b"".join),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_BYTES, id_type=st.sampled_from(ID_TYPES))
@pytest.mark.parametrize("name", ["fuzz.csv", "fuzz.txt", "fuzz.csv.gz"])
def test_arbitrary_bytes_give_a_result_or_a_cohort_error(
    scratch: Path, name: str, data: bytes, id_type: str
) -> None:
    _read_or_cohort_error(scratch / name, data, id_type)


@settings(max_examples=100, deadline=None)
@given(data=_BYTES, cut=st.integers(min_value=0, max_value=400))
def test_arbitrary_gzip_content_and_truncation(scratch: Path, data: bytes, cut: int) -> None:
    packed = gzip.compress(data)
    _read_or_cohort_error(scratch / "packed.csv.gz", packed, "email")
    _read_or_cohort_error(scratch / "cut.txt.gz", packed[:cut], "external_id")


# --- a block at a time and row by row read alike ------------------------------------------


_SIMPLE = st.integers(0, 99).map(lambda i: f'"{i}","User{i}@Example.com","DE"')
_ODD_FIELDS = st.one_of(
    st.sampled_from(
        [
            *('"a@b.co"', '" A@B.CO "', '""', '"x,y"', "a@b.co", "", '"a""b"', '"line\nbreak"'),
            *('"open', 'x"y', ' "a@b.co"', '"a@b.co"x', "bad", '"\u00e9@b.co"', '"a@b.co\r"'),
            '"\x85a@b.co"',
        ]
    ),
    st.text(alphabet='"\r,@ab\u00e9 \x1c', max_size=6),
)
_ODD = st.lists(_ODD_FIELDS, max_size=4).map(",".join)


@st.composite
def cohort_files(draw: st.DrawFn) -> bytes:
    """Exports that are mostly simple, with odd records and bytes here and there."""
    header = draw(
        st.sampled_from(
            ['"amplitude_id","user_id","country"', "user_id", "amplitude_id,user_id", '"user_id"']
        )
    )
    # a simple run first, so that blocks are read before the odd records send the rest row by row
    records = draw(st.lists(_SIMPLE, max_size=30))
    records += draw(st.lists(st.one_of(_SIMPLE, _SIMPLE, _ODD), max_size=10))
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    data = (eol.join([header, *records]) + draw(st.sampled_from(["", eol]))).encode()
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\n\n"])) + data[at:]
    return data


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=cohort_files(),
    id_type=st.sampled_from(ID_TYPES),
    block_size=st.integers(1, 300),
    name=st.sampled_from(["c.csv", "ids.txt", "c.csv.gz"]),
)
def test_block_reading_gives_the_row_by_row_result_or_message(
    scratch: Path, data: bytes, id_type: str, block_size: int, name: str
) -> None:
    if name.endswith(".gz"):
        data = gzip.compress(data)
    _read_or_cohort_error(scratch / name, data, id_type, block_size)


@pytest.mark.parametrize("column", [0, 1, 3])
@pytest.mark.parametrize("quoted", [True, False])
def test_fields_at_the_csv_size_limit(tmp_path: Path, column: int, quoted: bool) -> None:
    # the csv module refuses a field over its limit; a block must not read past it either
    limit = csv.field_size_limit()
    for size in (limit, limit + 1):
        fields = ["p"] * 4
        fields[column] = "user_id"
        header = ",".join(fields)
        cells = ["a@b.co"] * 4
        cells[(column + 1) % 4] = "x" * size
        row = ",".join(f'"{c}"' if quoted else c for c in cells)
        path = write(tmp_path, "c.csv", f"{header}\n{row}\n{row}\n".encode())
        read = read_or_error(path, block_size=None)
        assert read_or_error(path) == read
        assert isinstance(read, str) == (size > limit)


def test_simple_exports_never_go_row_by_row(tmp_path: Path, one_by_one: list[str]) -> None:
    header = HEADER + ',"country"'
    rows = [f'"{i}","User{i}@Example.com","DE"' for i in range(5_000)]
    path = write(tmp_path, "c.csv", export(*rows, header=header, eol="\r\n"))
    assert len(read_cohort(path, block_size=4096).ids) == 5_000
    assert one_by_one == []

    # an invalid id: only its block goes row by row, and it is counted and sampled
    rows[2_500] = '"2500","not an email","DE"'
    path.write_bytes(export(*rows, header=header))
    read = read_cohort(path, block_size=4096)
    assert (read.invalid_count, read.invalid) == (1, ("not an email",))
    assert "not an email" in one_by_one and 0 < len(one_by_one) < 200

    # a record the block pattern does not take: the rest of the file goes row by row
    one_by_one.clear()
    rows[4_000] = '"4000","a@b.co","say ""hi"""'
    path.write_bytes(export(*rows, header=header))
    assert read_cohort(path, block_size=4096).rows == 5_000
    assert 999 <= len(one_by_one) < 1_200
