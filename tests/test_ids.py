"""What a valid id is, one at a time and a block at a time (the two must agree exactly)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.ids import ID_TYPES, normalize_block, normalize_id


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  John.Doe+tag@Example.COM\t", "john.doe+tag@example.com"),
        ("a@b.co", "a@b.co"),
        ("x@mail.xn--p1ai", "x@mail.xn--p1ai"),
        ("user@sub-domain.example.org", "user@sub-domain.example.org"),
        ("", ""),
        ("   ", ""),
        ("no-at-sign", None),
        ("two@@example.com", None),
        ("a@b@example.com", None),
        ("@example.com", None),
        ("user@localhost", None),
        ("user@example.c", None),
        ("user@example.c0m", None),
        ("user@-example.com", None),
        ("user@exa_mple.com", None),
        ("user@example..com", None),
        ("us er@example.com", None),
        ("x" * 65 + "@example.com", None),
        ("x@" + "a" * 250 + ".com", None),
    ],
)
def test_normalize_email(raw: str, expected: str | None) -> None:
    assert normalize_id(raw, "email") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+49 151 1234-5678", "4915112345678"),
        ("(030) 123.456", "030123456"),
        ("491511234567", "491511234567"),
        ("", ""),
        ("12345", None),
        ("1234567890123456", None),
        ("++491511234567", None),
        ("49151x234567", None),
        ("4915+1234567", None),
        ("\u0664\u0669\u0661\u0665\u0661\u0662", None),
    ],
)
def test_normalize_phone(raw: str, expected: str | None) -> None:
    assert normalize_id(raw, "phone") == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("  Cust-42 ", "Cust-42"),
        ("", ""),
        ("a\x00b", None),
        ("a\x1bb", None),
        ("x" * 256, "x" * 256),
        ("x" * 257, None),
    ],
)
def test_normalize_external_id(raw: str, expected: str | None) -> None:
    assert normalize_id(raw, "external_id") == expected


def test_normalize_id_defaults_to_email_and_rejects_unknown_types() -> None:
    assert normalize_id(" A@Example.com") == "a@example.com"
    assert ID_TYPES == ("email", "external_id", "phone")
    with pytest.raises(ValueError, match="sms"):
        normalize_id("x", "sms")


# --- a block at a time ----------------------------------------------------------


def one_by_one(values: list[str], id_type: str) -> tuple[list[str], int, int]:
    """The reference: valid ids in order, blank count, invalid count."""
    normalized = [normalize_id(value, id_type) for value in values]
    valid = [value for value in normalized if value]
    return valid, normalized.count(""), normalized.count(None)


def assert_block_agrees(values: list[str], id_type: str) -> bool:
    """The block answer equals the one-by-one answer; returns whether there was one."""
    valid, blank, invalid = one_by_one(values, id_type)
    block = normalize_block(values, id_type)
    if block is not None:
        assert (sorted(block[0]), block[1]) == (sorted(valid), blank)
        assert invalid == 0
    return block is not None


# Characters where the rules have edges: case mapping outside ASCII (the Kelvin sign lower-cases
# to "k", dotted I to two characters), whitespace str.strip() removes but a regex \s might not
# (and the reverse), what an email may not hold, and the block's own "\n".
_TRICKY = " \t\r\n\x0b\x0c\x1c\x1f\x85\xa0\u2028\u3000\x00\x7f\x9f\u212aİΣé" + '@."(),:;<>[]\\_+-'
_LABEL = st.text("abcxyz019-", min_size=1, max_size=64)
_LOCAL = st.text("abcXYZ0189._+-!#$%&'*/=?^`{|}~", min_size=0, max_size=66)


@st.composite
def emails(draw: st.DrawFn) -> str:
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4))
    tld = draw(st.one_of(st.text("abcCOM", min_size=1, max_size=64), st.just("xn--p1ai")))
    domain = ".".join([*labels, tld])
    pad = draw(st.sampled_from(["", " ", "\t", "\r", "\xa0", "\x1c"]))
    email = f"{draw(_LOCAL)}@{domain}"
    if draw(st.booleans()):
        email = email.upper()
    return pad + email + pad


_VALUES = st.lists(
    st.one_of(
        emails(),
        st.text(_TRICKY + "abcAB01", max_size=12),
        st.text(max_size=8),
        st.sampled_from(
            ["", "  ", "A@Example.COM", "a@b.co", "x" * 257, "a@" + "b" * 250 + ".com"]
        ),
    ),
    max_size=12,
)


@settings(max_examples=600, deadline=None)
@given(values=_VALUES, id_type=st.sampled_from(ID_TYPES))
def test_a_block_answer_is_always_the_one_by_one_answer(values: list[str], id_type: str) -> None:
    assert_block_agrees(values, id_type)


@settings(max_examples=300, deadline=None)
@given(values=st.lists(emails(), min_size=1, max_size=20))
def test_blocks_of_generated_emails_agree(values: list[str]) -> None:
    assert_block_agrees(values, "email")


@pytest.mark.parametrize(
    "values",
    [
        ["a@b.co", "x@y.co", "a@b.co"],
        [" Anna.Schmidt@GMAIL.com ", "", "ben+tag@mail.example.co.uk\r", "  "],
        ["o'brien@example.ie", "x@example.xn--p1ai", "a" * 64 + "@example.com"],
        ["x@" + ("a" * 63 + ".") * 3 + "b" * 60],  # 254 characters
        [""],
        [],
    ],
)
def test_plainly_valid_emails_are_answered_as_a_block(values: list[str]) -> None:
    assert assert_block_agrees(values, "email")


@pytest.mark.parametrize(
    "values",
    [
        ["a@b.co", "not-an-email"],  # one invalid id: the caller counts and samples it
        ["a@b.co", "a@b@c.co", "plain"],  # two "@" in one, none in another
        ["a" * 65 + "@example.com"],
        ["x@" + ("a" * 63 + ".") * 3 + "b" * 61],  # 255 characters
        ["@example.com"],
        ["a@b.co", "@b.co"],
        ["jürgen@example.de"],  # mostly outside ASCII: one by one
        [*(f"u{i}@example.de" for i in range(8)), "jürgen@example.de", "jü rgen@example.de"],
        ["\u212a@example.com"],  # the Kelvin sign lower-cases to "k"
        ["a@b.co", "a\nb@c.co"],  # a "\n" inside a value
        ["us er@example.com"],
    ],
)
def test_blocks_with_anything_unusual_are_left_to_one_by_one(values: list[str]) -> None:
    assert not assert_block_agrees(values, "email")


def test_a_few_ids_outside_ascii_do_not_send_the_block_one_by_one() -> None:
    values = [f"User{i}@Example.com" for i in range(20)] + ["Jürgen@Example.DE", " ΣΑΣ@x.gr "]
    assert assert_block_agrees(values, "email")
    block = normalize_block(values, "email")
    assert block is not None and {"jürgen@example.de", "σας@x.gr"} <= set(block[0])


def test_external_id_blocks_and_their_limits() -> None:
    assert assert_block_agrees(["  Cust-42 ", "", "x" * 256, "ключ"], "external_id")
    assert not assert_block_agrees(["ok", "x" * 257], "external_id")
    assert not assert_block_agrees(["ok", "a\x1bb"], "external_id")
    assert not assert_block_agrees(["ok", "a\x85b"], "external_id")


def test_phone_blocks_are_always_one_by_one() -> None:
    assert normalize_block(["+49 151 1234-5678"], "phone") is None


def test_strip_and_the_block_see_the_same_whitespace() -> None:
    # the block joins by "\n" and trims with str.strip: every character strip() removes is one
    # the email block either removes the same way or refuses
    spaces = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert "\n" in spaces and "\x1c" in spaces and "\u3000" in spaces
    for space in spaces:
        assert_block_agrees([f"{space}a@b.co{space}", "c@d.co"], "email")
        assert_block_agrees([f"{space}id{space}"], "external_id")
    # and the loop is not vacuous: ASCII padding, \x1c included, is trimmed within a block
    assert assert_block_agrees([" \t\x1ca@b.co\x1c\r", "c@d.co"], "email")
