"""The HTTP client for Infobip's Amplitude-integration API (create list, add, remove).

One call is one attempt: no retries and no pacing here (the apply lanes do both).
Every httpx error and every non-2xx answer is mapped once, at this boundary, to the
``reconciler.errors`` tree:

    401                                   -> Unauthorized
    400 {"statusCode": "TAG_NOT_FOUND"}   -> TagNotFound(list_id)
    400 requestError...validationErrors   -> BadRequest(fields)
    413                                   -> PayloadTooLarge
    429 (any body)                        -> TooManyRequests(retry_after)
    5xx                                   -> TransientError(outcome_unknown=True)
    connect error / connect timeout       -> TransientError(outcome_unknown=False)
    other transport errors                -> TransientError(outcome_unknown=True)
    anything else unexpected              -> InfobipError

Messages never contain the API key (only its fingerprint) nor user ids.
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import json
import logging
import math
import re
import time
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import httpx

from reconciler import __version__
from reconciler.errors import (
    BadRequest,
    InfobipError,
    PayloadTooLarge,
    TagNotFound,
    TooManyRequests,
    TransientError,
    Unauthorized,
)
from reconciler.masking import mask

__all__ = ["AddResult", "InfobipClient", "key_fingerprint"]

logger = logging.getLogger(__name__)

_PREFIX = "/saas/amplitude/1/lists"
# Longest piece of server text quoted in an exception message.
_MAX_TEXT = 200
_EMAIL_RE = re.compile(r"[^\s\"'<>,;:()\[\]{}]+@[^\s\"'<>,;:()\[\]{}]+")
_TAG_ID_RE = re.compile(r'Tag with id "(\d+)"')
# Header-safe key: visible ASCII only, so httpx/h11 never echo it in an encoding error.
_KEY_RE = re.compile(r"[!-~]+")


def key_fingerprint(api_key: str) -> str:
    """Return a short, non-reversible name for ``api_key``: ``sha256:`` + 12 hex chars."""
    return "sha256:" + hashlib.sha256(api_key.encode("utf-8")).hexdigest()[:12]


def _freeze_rejected(value: Mapping[str, Sequence[str]]) -> Mapping[str, tuple[str, ...]]:
    return types.MappingProxyType({str(k): tuple(v) for k, v in value.items()})


@attrs.frozen
class AddResult:
    """The answer to one add request.

    ``rejected`` maps an error type (e.g. ``VALIDATION_ERROR``) to the ids exactly as
    the server returned them; it is empty when the answer had no ``errors``.
    """

    modified: int
    created: int
    rejected: Mapping[str, tuple[str, ...]] = attrs.field(
        factory=dict, converter=_freeze_rejected, hash=False
    )

    @property
    def rejected_count(self) -> int:
        """Number of ids the server refused, over all error types."""
        return sum(len(ids) for ids in self.rejected.values())


class InfobipClient:
    """A synchronous client for one Infobip base URL and one API key.

    ``transport`` replaces the network (``httpx.MockTransport`` in tests, the sandbox's
    in-process transport for ``base_url: sandbox``). ``clock`` is only used to turn a
    ``Retry-After`` HTTP date into seconds.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Prepare the client; no request is sent.

        Raises ``InfobipError`` for a base URL that is not http(s)://host[:port][/path]
        and ``Unauthorized`` for an empty key or one that cannot be sent in a header.
        """
        self.fingerprint = key_fingerprint(api_key)
        if not _KEY_RE.fullmatch(api_key):
            raise Unauthorized(
                f"The Infobip API key ({self.fingerprint}) is empty or contains spaces or "
                "non-ASCII characters; check the environment variable that holds it"
            )
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise InfobipError(f"Invalid Infobip base URL {base_url!r}: {exc}") from None
        if url.scheme not in ("http", "https") or not url.host or url.query or url.fragment:
            raise InfobipError(
                f"Invalid Infobip base URL {base_url!r}: expected http(s)://host[:port]"
            )
        self.base_url = base_url.rstrip("/")
        self._key = api_key  # kept only to scrub it from server text quoted in errors
        self._clock = clock
        self._client = httpx.Client(
            transport=transport,
            timeout=timeout,
            follow_redirects=False,
            headers={
                "Authorization": f"App {api_key}",
                "Accept": "application/json",
                "User-Agent": f"reconciler/{__version__}",
            },
        )

    # --- the three endpoints ---------------------------------------------------

    def create_list(self, name: str) -> int:
        """Create the list (an Infobip People tag) ``name`` and return its ``listId``.

        Raises the ``InfobipError`` subclass matching the failure (see the module doc);
        a 200 without an integer ``listId`` raises ``InfobipError`` ("unexpected response").
        """
        response = self._post(_PREFIX, {"name": name}, what="create list", list_id=None, ids=0)
        data = self._json(response, what="create list")
        list_id = data.get("listId") if isinstance(data, dict) else None
        # bool is an int subclass: true/false is not a list id.
        if not isinstance(list_id, int) or isinstance(list_id, bool):
            raise InfobipError(
                "Infobip create list: unexpected response (no integer listId)",
                status=response.status_code,
            )
        return list_id

    def add(self, list_id: int, user_ids: Sequence[str]) -> AddResult:
        """Add ``user_ids`` to list ``list_id``; return the server's counts and rejections.

        Raises the ``InfobipError`` subclass matching the failure (see the module doc);
        a 200 whose body is not the documented shape raises ``InfobipError``.
        """
        what = f"add to list {list_id}"
        response = self._post(
            f"{_PREFIX}/{int(list_id)}/add",
            {"userIds": list(user_ids)},
            what=what,
            list_id=list_id,
            ids=len(user_ids),
        )
        return _parse_add(self._json(response, what=what), what=what, status=response.status_code)

    def remove(self, list_id: int, user_ids: Sequence[str]) -> None:
        """Remove ``user_ids`` from list ``list_id`` (absent ids are ignored by Infobip).

        Raises the ``InfobipError`` subclass matching the failure (see the module doc);
        a 200 whose body is neither empty nor JSON raises ``InfobipError``.
        """
        what = f"remove from list {list_id}"
        response = self._post(
            f"{_PREFIX}/{int(list_id)}/remove",
            {"userIds": list(user_ids)},
            what=what,
            list_id=list_id,
            ids=len(user_ids),
        )
        if response.content.strip():
            self._json(response, what=what)

    # --- lifecycle ---------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __enter__(self) -> InfobipClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InfobipClient({self.base_url!r}, key={self.fingerprint})"

    # --- internals -----------------------------------------------------------------

    def _post(
        self, path: str, payload: dict[str, Any], *, what: str, list_id: int | None, ids: int
    ) -> httpx.Response:
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        started = time.monotonic()
        try:
            response = self._client.post(
                self.base_url + path,
                content=body,
                headers={"Content-Type": "application/json"},
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # The request never left this machine: Infobip cannot have acted on it.
            raise TransientError(
                f"Infobip {what}: could not connect to {self.base_url} ({_describe(exc)})",
                outcome_unknown=False,
            ) from exc
        except httpx.UnsupportedProtocol as exc:
            raise InfobipError(
                f"Infobip {what}: unsupported URL {self.base_url} ({_describe(exc)})"
            ) from exc
        except httpx.TransportError as exc:
            # Sent (maybe only partly), no answer: the change may or may not have happened.
            raise TransientError(
                f"Infobip {what}: no answer from {self.base_url} ({_describe(exc)}); "
                "the request may have taken effect",
                outcome_unknown=True,
            ) from exc
        logger.debug(
            "POST %s -> %d (%d ids, %.3fs)",
            path,
            response.status_code,
            ids,
            time.monotonic() - started,
        )
        if not response.is_success:
            raise self._error(response, what=what, list_id=list_id, ids=ids)
        return response

    def _json(self, response: httpx.Response, *, what: str) -> Any:
        try:
            return json.loads(response.content)
        except ValueError:
            raise InfobipError(
                f"Infobip {what}: unexpected response (not JSON, "
                f"{response.headers.get('content-type', 'no content type')})",
                status=response.status_code,
            ) from None

    def _error(
        self, response: httpx.Response, *, what: str, list_id: int | None, ids: int
    ) -> InfobipError:
        status = response.status_code
        try:
            data = json.loads(response.content)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            data = {}
        exception = data.get("requestError", {})
        exception = exception.get("serviceException", {}) if isinstance(exception, dict) else {}
        if not isinstance(exception, dict):
            exception = {}
        text = self._scrub(
            exception.get("text")
            or data.get("message")
            or data.get("errorMessage")
            or data.get("description")
            or ""
        )
        said = f": {text}" if text else ""

        if status == 401:
            return Unauthorized(
                f"Infobip refused the API key {self.fingerprint} (401){said}; "
                "check the key and its API scopes",
                status=status,
            )
        if status == 429:
            retry_after = _retry_after(response.headers.get("Retry-After"), self._clock)
            hint = f"; retry after {retry_after:g}s" if retry_after is not None else ""
            return TooManyRequests(
                f"Infobip {what}: too many requests (429) for key {self.fingerprint}{hint}",
                retry_after=retry_after,
                status=status,
            )
        if status == 413:
            return PayloadTooLarge(
                f"Infobip {what}: a batch of {ids} ids is too large (413); split it",
                status=status,
            )
        if status >= 500:
            return TransientError(
                f"Infobip {what}: server error {status}{said}; the request may have taken effect",
                outcome_unknown=True,
                status=status,
            )
        if data.get("statusCode") == "TAG_NOT_FOUND":
            missing = list_id
            if missing is None:
                found = _TAG_ID_RE.search(str(data.get("message", "")))
                missing = int(found.group(1)) if found else None
            if missing is not None:
                return TagNotFound(
                    f"Infobip {what}: list {missing} does not exist (TAG_NOT_FOUND)",
                    list_id=missing,
                    status=status,
                )
        errors = exception.get("validationErrors")
        if status == 400 and isinstance(errors, dict) and errors:
            fields = {
                str(field): tuple(
                    self._scrub(m) for m in (msgs if isinstance(msgs, list) else [msgs])
                )
                for field, msgs in errors.items()
            }
            detail = "; ".join(f"{field}: {', '.join(msgs)}" for field, msgs in fields.items())
            return BadRequest(f"Infobip {what}: bad request: {detail}", fields=fields)
        reason = response.reason_phrase or "error"
        return InfobipError(f"Infobip {what}: {status} {reason}{said}", status=status)

    def _scrub(self, text: object) -> str:
        """Server text made safe to quote: no key, emails masked, one short line."""
        out = str(text).replace(self._key, self.fingerprint)
        out = _EMAIL_RE.sub(lambda m: mask(m.group()), out)
        return " ".join(out.split())[:_MAX_TEXT]


def _parse_add(data: Any, *, what: str, status: int) -> AddResult:
    def unexpected(why: str) -> InfobipError:
        return InfobipError(f"Infobip {what}: unexpected response ({why})", status=status)

    if not isinstance(data, dict):
        raise unexpected("not a JSON object")
    counts = []
    for field in ("modifiedCount", "createdCount"):
        value = data.get(field, 0)
        if not isinstance(value, int) or isinstance(value, bool):
            raise unexpected(f"{field} is not an integer")
        counts.append(value)
    errors = data.get("errors") or {}
    failed = errors.get("failed", {}) if isinstance(errors, dict) else None
    if not isinstance(failed, dict) or not all(isinstance(v, list) for v in failed.values()):
        raise unexpected("errors.failed is not a mapping of lists")
    rejected = {str(kind): tuple(str(i) for i in ids) for kind, ids in failed.items() if ids}
    return AddResult(modified=counts[0], created=counts[1], rejected=rejected)


def _retry_after(value: str | None, clock: Callable[[], float]) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date), or None."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:  # pragma: no cover - older Pythons returned None
            return None
        if when.tzinfo is None:
            # RFC 9110 dates are GMT; a date without a zone is read as UTC.
            when = when.replace(tzinfo=datetime.UTC)
        return max(0.0, when.timestamp() - clock())
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def _describe(exc: Exception) -> str:
    detail = " ".join(str(exc).split())[:_MAX_TEXT]
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
