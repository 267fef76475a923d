"""What a valid id is: normalization of one id, and of a whole block of ids at once.

``normalize_id`` is the rule, applied one id at a time. ``normalize_block`` applies the same rule
to a block of thousands of ids with a few C-level string operations (joins, ``translate``, one
regex pass), because a million-row cohort normalized id by id spends most of its time in the
interpreter. It only answers for blocks where every id is plainly valid or blank; for anything
else it returns None and the caller normalizes that block id by id. So a block's answer is always
the one ``normalize_id`` would give; the differential tests in ``tests/test_ids.py`` hold it to
that.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Sequence
from itertools import compress, repeat

ID_TYPES = ("email", "external_id", "phone")

# --- one id -----------------------------------------------------------------

# Local part: anything printable but the characters that make an address unparseable.
# Domain: dot-separated labels of letters, digits and inner hyphens; the TLD is letters, or an
# IDNA ("xn--") label so that internationalized domains are not dropped.
_LOCAL_CHAR = r"[^\s@\"(),:;<>\[\]\\\x00-\x1f\x7f]"
_DOMAIN_PATTERN = (
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+"
    r"(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})"
)
_EMAIL = re.compile(_LOCAL_CHAR + r"{1,64}@" + _DOMAIN_PATTERN)
_MAX_EMAIL = 254
_MAX_LOCAL = 64
_MAX_EXTERNAL_ID = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PHONE_SEPARATORS = str.maketrans("", "", " \t\u00a0-.()")


def _normalize_email(raw: str) -> str | None:
    value = raw.strip().lower()
    if not value:
        return value
    if len(value) <= _MAX_EMAIL and _EMAIL.fullmatch(value):
        return value
    return None


def _normalize_external_id(raw: str) -> str | None:
    value = raw.strip()
    if len(value) > _MAX_EXTERNAL_ID or _CONTROL.search(value):
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


def normalizer(id_type: str) -> Callable[[str], str | None]:
    """The one-id normalizer of ``id_type``; ValueError for a type not in ``ID_TYPES``."""
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
    return normalizer(id_type)(raw)


# --- a block of ids ---------------------------------------------------------

# The ASCII characters an email may hold (those of the local part; the domain's are a subset),
# and the "\n" that joins a block. Deleting them leaves nothing of a block of valid emails.
_EMAIL_BYTES = bytes(c for c in range(0x21, 0x7F) if chr(c) not in '@"(),:;<>[]\\') + b"@\n"
_DOMAIN = re.compile(_DOMAIN_PATTERN)
_AFTER_AT = re.compile(r"@([^\n]*)")
# control characters but the "\n" that joins a block
_CONTROL_IN_BLOCK = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")

Block = tuple[list[str], int]


def _trimmed(values: Sequence[str]) -> tuple[list[str], int, str] | None:
    """Trimmed non-blank values, the number of blank ones, and the values joined by "\\n".

    None when a value holds a "\\n" itself: the joined text could not be split back.
    """
    trimmed = list(map(str.strip, values))
    blank = trimmed.count("")
    if blank:
        trimmed = list(filter(None, trimmed))
    joined = "\n".join(trimmed)
    if joined.count("\n") != max(len(trimmed) - 1, 0):
        return None
    return trimmed, blank, joined


def _email_block(values: Sequence[str]) -> Block | None:
    found = _trimmed(values)
    if found is None:
        return None
    trimmed, blank, joined = found
    if joined.isascii():
        ids = _ascii_emails(joined)
        return None if ids is None else (ids, blank)
    # lower() and \s are Unicode-aware: ids outside ASCII (a few, in most exports) are
    # normalized one by one, the rest as a block
    is_ascii = list(map(str.isascii, trimmed))
    others = list(compress(trimmed, map(operator.not_, is_ascii)))
    if len(others) > len(trimmed) // 4:
        return None  # mostly outside ASCII: one by one is as fast
    valid = [email for email in map(_normalize_email, others) if email]
    if len(valid) < len(others):
        return None
    ids = _ascii_emails("\n".join(compress(trimmed, is_ascii)))
    return None if ids is None else (ids + valid, blank)


def _ascii_emails(joined: str) -> list[str] | None:
    """The lower-cased ids of ``joined`` (ASCII, trimmed, non-blank, one a line), if all valid."""
    if not joined:
        return []
    lowered = joined.lower()
    ids = lowered.split("\n")
    if lowered.encode().translate(None, _EMAIL_BYTES):
        return None  # a character no email has (space, comma, control, ...)
    # Exactly one "@" each: as many as ids, and none with two, since a domain (all after the
    # first "@" of a line) holds none. A block holds few distinct domains: check each once.
    if lowered.count("@") != len(ids):
        return None
    if not all(map(_DOMAIN.fullmatch, set(_AFTER_AT.findall(lowered)))):
        return None
    # the local part: not empty, at most 64 (an id of at most 69 cannot have a longer one, as
    # the shortest domain has four characters: "a.bc")
    if lowered.startswith("@") or "\n@" in lowered:
        return None
    longest = max(map(len, ids))
    if longest > _MAX_EMAIL:
        return None
    if longest > _MAX_LOCAL + len("@a.bc") and max(map(str.index, ids, repeat("@"))) > _MAX_LOCAL:
        return None
    return ids


def _external_id_block(values: Sequence[str]) -> Block | None:
    found = _trimmed(values)
    if found is None:
        return None
    trimmed, blank, joined = found
    if trimmed and (max(map(len, trimmed)) > _MAX_EXTERNAL_ID or _CONTROL_IN_BLOCK.search(joined)):
        return None
    return trimmed, blank


_BLOCK_NORMALIZERS: dict[str, Callable[[Sequence[str]], Block | None]] = {
    "email": _email_block,
    "external_id": _external_id_block,
}


def normalize_block(values: Sequence[str], id_type: str) -> Block | None:
    """Normalize a block of raw ids at once: ``(valid ids, number of blank ones)``.

    The answer equals ``normalize_id`` applied to each value (the ids maybe in another order),
    and it is given only when no value is invalid; otherwise (and for id types without a block
    rule) the result is None and the caller normalizes id by id, which also counts and samples
    the invalid ones.
    """
    block = _BLOCK_NORMALIZERS.get(id_type)
    return block(values) if block else None
