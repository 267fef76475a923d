"""The one exception tree of reconciler.

Every error a user can cause or meet is a ``ReconcilerError``; the CLI turns
each into one clear message and exit code 1. Library errors (YAML, CSV, httpx,
sqlite) are mapped to this tree once, at the module that meets them.

    ReconcilerError
    ├── InputError                 bad specs or cohort files
    │   ├── SpecError              one or more located problems
    │   └── CohortError            an unreadable cohort file
    ├── StateError                 the state store cannot be used
    │   ├── StateCorrupt           torn, foreign or unreadable state
    │   └── LockHeld               another run holds the lock
    ├── PlanRefused                the plan failed a safety check
    ├── PlanFileError              a saved plan cannot be applied
    └── InfobipError               the API said no, or could not be reached
        ├── Unauthorized           401: wrong or missing key
        ├── TagNotFound            400 TAG_NOT_FOUND: the list is gone
        ├── BadRequest             400 with validation errors
        ├── PayloadTooLarge        413: the batch must be split
        ├── TooManyRequests        429: slow down and resend
        └── TransientError         5xx, timeouts, connection errors
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import attrs


class ReconcilerError(Exception):
    """Base of every error reconciler reports to a user."""


# --- input -----------------------------------------------------------------


@attrs.frozen(order=True)
class Problem:
    """One located problem in an input file."""

    file: str
    line: int
    column: int
    message: str
    hint: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        fix = f" ({self.hint})" if self.hint else ""
        return _printable(f"{where}: {self.message}{fix}")


def _printable(text: str) -> str:
    """Escape control characters: input echoed into a CI log must not forge log lines."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class InputError(ReconcilerError):
    """Bad input files: specs or cohorts."""


class SpecError(InputError):
    """The specs are invalid; ``problems`` lists every reason, sorted."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems: tuple[Problem, ...] = tuple(sorted(set(problems)))
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the specs:"
        super().__init__("\n".join([head, *map(str, self.problems)]))


class CohortError(InputError):
    """A cohort file cannot be read; the message names file and line."""

    def __init__(self, file: str, line: int, message: str, hint: str = "") -> None:
        self.problem = Problem(file, line, 1, message, hint)
        super().__init__(str(self.problem))


# --- state -----------------------------------------------------------------


class StateError(ReconcilerError):
    """The state store cannot be used."""


class StateCorrupt(StateError):
    """The state is torn, foreign or unreadable. Never treated as empty."""


class LockHeld(StateError):
    """Another run holds the state lock."""

    def __init__(self, message: str, lock: Mapping[str, object]) -> None:
        self.lock = dict(lock)
        super().__init__(message)


# --- plans -----------------------------------------------------------------


class PlanRefused(ReconcilerError):
    """The plan failed a safety check; ``reasons`` says which and how to proceed."""

    def __init__(self, reasons: Sequence[str]) -> None:
        self.reasons = tuple(reasons)
        super().__init__("\n".join(["Plan refused:", *self.reasons]))


class PlanFileError(ReconcilerError):
    """A saved plan file is stale, corrupt or from an unknown format."""


# --- Infobip ---------------------------------------------------------------


class InfobipError(ReconcilerError):
    """The Infobip API refused a request or could not be reached.

    Messages never contain the API key or user ids.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class Unauthorized(InfobipError):
    """401: the API key is wrong, revoked or missing."""


class TagNotFound(InfobipError):
    """400 TAG_NOT_FOUND: the list id does not exist (any more)."""

    def __init__(self, message: str, *, list_id: int, status: int | None = 400) -> None:
        self.list_id = list_id
        super().__init__(message, status=status)


class BadRequest(InfobipError):
    """400 with field validation errors (``fields`` maps field -> messages)."""

    def __init__(
        self,
        message: str,
        *,
        fields: Mapping[str, Sequence[str]] | None = None,
        status: int | None = 400,
    ) -> None:
        self.fields = {k: tuple(v) for k, v in (fields or {}).items()}
        super().__init__(message, status=status)


class PayloadTooLarge(InfobipError):
    """413: the batch is too large; split it and resend the halves."""


class TooManyRequests(InfobipError):
    """429: too fast. ``retry_after`` is seconds from a Retry-After header, if any."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, status: int | None = 429
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status=status)


class TransientError(InfobipError):
    """5xx, timeout or connection error: worth a bounded number of retries.

    ``outcome_unknown`` is True when the request may have reached Infobip and
    taken effect (a 5xx, a read timeout, a dropped connection), False when it
    certainly did not (the connection could not be opened).
    """

    def __init__(
        self, message: str, *, outcome_unknown: bool = True, status: int | None = None
    ) -> None:
        self.outcome_unknown = outcome_unknown
        super().__init__(message, status=status)
