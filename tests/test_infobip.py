"""The Infobip client: exact requests, and every answer mapped to the errors tree."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest

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
from reconciler.infobip import AddResult, InfobipClient, key_fingerprint

KEY = "s3cr3t-4pi-k3y-0123456789abcdef"
BASE = "https://xyz123.api.infobip.com"


def client_for(
    handler: Callable[[httpx.Request], httpx.Response], base: str = BASE, **kwargs
) -> tuple[InfobipClient, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return InfobipClient(base, KEY, transport=httpx.MockTransport(record), **kwargs), seen


def answer(status: int, body: object = None, **kwargs) -> Callable[[httpx.Request], httpx.Response]:
    if body is None:
        return lambda request: httpx.Response(status, **kwargs)
    if isinstance(body, (bytes, str)):
        return lambda request: httpx.Response(status, content=body, **kwargs)
    return lambda request: httpx.Response(status, json=body, **kwargs)


def service_error(message_id: str, text: str, **extra: object) -> dict:
    return {"requestError": {"serviceException": {"messageId": message_id, "text": text, **extra}}}


def fails(call: Callable[[], object], kind: type[Exception]) -> Exception:
    with pytest.raises(kind) as info:
        call()
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.args)
    return info.value


# --- fingerprint -------------------------------------------------------------------


def test_key_fingerprint_is_a_short_sha256() -> None:
    digest = hashlib.sha256(KEY.encode()).hexdigest()
    assert key_fingerprint(KEY) == f"sha256:{digest[:12]}"
    assert key_fingerprint("a") != key_fingerprint("b")


# --- requests on the wire ------------------------------------------------------------


def test_create_list_sends_the_documented_request() -> None:
    client, seen = client_for(answer(200, {"listId": 2568}))
    assert client.create_list("churn-risk-eu") == 2568
    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == f"{BASE}/saas/amplitude/1/lists"
    assert request.headers["Authorization"] == f"App {KEY}"
    assert request.headers["Accept"] == "application/json"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"reconciler/{__version__}"
    assert json.loads(request.content) == {"name": "churn-risk-eu"}


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.infobip.com/", "https://api.infobip.com/saas/amplitude/1/lists/7/add"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123/saas/amplitude/1/lists/7/add"),
        ("http://127.0.0.1:8123/", "http://127.0.0.1:8123/saas/amplitude/1/lists/7/add"),
    ],
)
def test_base_url_may_have_a_trailing_slash_or_a_port(base: str, expected: str) -> None:
    client, seen = client_for(answer(200, {"modifiedCount": 0, "createdCount": 1}), base=base)
    client.add(7, ["a@example.com"])
    assert str(seen[0].url) == expected


def test_add_sends_user_ids_and_reads_counts() -> None:
    client, seen = client_for(answer(200, {"modifiedCount": 2, "createdCount": 3}))
    result = client.add(2568, ["a@example.com", "b@example.com", "42"])
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == "/saas/amplitude/1/lists/2568/add"
    assert json.loads(request.content) == {"userIds": ["a@example.com", "b@example.com", "42"]}
    assert result == AddResult(modified=2, created=3, rejected={})
    assert result.rejected_count == 0


def test_add_reads_rejected_ids_by_error_type() -> None:
    body = {
        "modifiedCount": 0,
        "createdCount": 3,
        "errors": {"count": 1, "failed": {"VALIDATION_ERROR": ["invalid_mail.com"]}},
    }
    client, _ = client_for(answer(200, body))
    result = client.add(1, ["a@x.com", "b@x.com", "c@x.com", "invalid_mail.com"])
    assert result.created == 3
    assert result.rejected == {"VALIDATION_ERROR": ("invalid_mail.com",)}
    assert result.rejected_count == 1
    assert hash(result)  # a frozen value, usable in sets


@pytest.mark.parametrize("body", [b"", b"{}", b"  \n"])
def test_remove_accepts_an_empty_object_or_an_empty_body(body: bytes) -> None:
    client, seen = client_for(answer(200, body))
    assert client.remove(2568, ["a@example.com"]) is None
    assert seen[0].url.path == "/saas/amplitude/1/lists/2568/remove"
    assert json.loads(seen[0].content) == {"userIds": ["a@example.com"]}


def test_the_client_closes_as_a_context_manager() -> None:
    client, _ = client_for(answer(200, {"listId": 1}))
    with client:
        client.create_list("x")
    with pytest.raises(RuntimeError):
        client.create_list("y")


# --- errors ------------------------------------------------------------------------


def test_401_is_unauthorized_with_the_server_text_and_the_fingerprint() -> None:
    client, _ = client_for(answer(401, service_error("UNAUTHORIZED", "Invalid login details")))
    exc = fails(lambda: client.add(1, ["a@example.com"]), Unauthorized)
    assert exc.status == 401
    assert "Invalid login details" in str(exc)
    assert key_fingerprint(KEY) in str(exc)


@pytest.mark.parametrize("call", ["add", "remove"])
def test_tag_not_found_names_the_list(call: str) -> None:
    body = {"statusCode": "TAG_NOT_FOUND", "message": 'Tag with id "87881" does not exist'}
    client, _ = client_for(answer(400, body))
    exc = fails(lambda: getattr(client, call)(87881, ["a@example.com"]), TagNotFound)
    assert exc.list_id == 87881
    assert exc.status == 400
    assert "87881" in str(exc)


def test_validation_errors_become_bad_request_with_fields() -> None:
    body = service_error(
        "BAD_REQUEST", "Bad request", validationErrors={"name": ["property not found or blank"]}
    )
    client, _ = client_for(answer(400, body))
    exc = fails(lambda: client.create_list(""), BadRequest)
    assert exc.fields == {"name": ("property not found or blank",)}
    assert "name: property not found or blank" in str(exc)


def test_413_is_payload_too_large() -> None:
    client, _ = client_for(answer(413, b"<html>Request Entity Too Large</html>"))
    exc = fails(lambda: client.add(1, ["a@example.com"] * 3), PayloadTooLarge)
    assert exc.status == 413
    assert "3 ids" in str(exc)


@pytest.mark.parametrize(
    "body",
    [
        service_error("TOO_MANY_REQUESTS", "Too many requests"),
        {"errorCode": "E429", "description": "Too many requests", "action": None},
        b"",
        b"slow down",
    ],
    ids=["requestError", "E429", "empty", "text"],
)
def test_any_429_is_too_many_requests(body: object) -> None:
    client, _ = client_for(answer(429, body))
    exc = fails(lambda: client.remove(1, ["a@example.com"]), TooManyRequests)
    assert exc.status == 429
    assert exc.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0", 0.0), ("1.5", 1.5), ("-3", None), ("soon", None), ("", None)],
)
def test_retry_after_in_seconds(header: str, expected: float | None) -> None:
    client, _ = client_for(answer(429, b"", headers={"Retry-After": header}))
    exc = fails(lambda: client.create_list("x"), TooManyRequests)
    assert exc.retry_after == expected


def test_retry_after_as_an_http_date_uses_the_injected_clock() -> None:
    now = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    later = format_datetime(datetime(2025, 3, 1, 12, 0, 42, tzinfo=UTC), usegmt=True)
    client, _ = client_for(answer(429, b"", headers={"Retry-After": later}), clock=lambda: now)
    assert fails(lambda: client.create_list("x"), TooManyRequests).retry_after == 42.0

    past = format_datetime(datetime(2025, 3, 1, 11, 0, 0, tzinfo=UTC), usegmt=True)
    client, _ = client_for(answer(429, b"", headers={"Retry-After": past}), clock=lambda: now)
    assert fails(lambda: client.create_list("x"), TooManyRequests).retry_after == 0.0


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_is_transient_with_unknown_outcome(status: int) -> None:
    client, _ = client_for(answer(status, b"<html>oops</html>"))
    exc = fails(lambda: client.add(1, ["a@example.com"]), TransientError)
    assert exc.outcome_unknown is True
    assert exc.status == status


@pytest.mark.parametrize(
    ("error", "outcome_unknown"),
    [
        (httpx.ConnectError, False),
        (httpx.ConnectTimeout, False),
        (httpx.ReadTimeout, True),
        (httpx.WriteTimeout, True),
        (httpx.RemoteProtocolError, True),
        (httpx.ReadError, True),
        (httpx.WriteError, True),
        (httpx.ProxyError, True),
    ],
)
def test_transport_errors_are_transient(error: type[Exception], outcome_unknown: bool) -> None:
    def raise_it(request: httpx.Request) -> httpx.Response:
        raise error("boom", request=request)

    client, _ = client_for(raise_it)
    exc = fails(lambda: client.add(1, ["a@example.com"]), TransientError)
    assert exc.outcome_unknown is outcome_unknown
    assert exc.status is None
    assert isinstance(exc.__cause__, error)


def test_a_refused_connection_to_a_real_port_is_transient_and_certainly_not_sent() -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = InfobipClient(f"http://127.0.0.1:{port}", KEY, timeout=2.0)
    exc = fails(lambda: client.create_list("x"), TransientError)
    assert exc.outcome_unknown is False


@pytest.mark.parametrize("status", [403, 404, 409, 302])
def test_other_statuses_are_plain_infobip_errors(status: int) -> None:
    client, _ = client_for(answer(status, {"message": "nope"}))
    exc = fails(lambda: client.add(1, ["a@example.com"]), InfobipError)
    assert type(exc) is InfobipError
    assert exc.status == status


def test_a_400_without_known_shape_is_a_plain_infobip_error() -> None:
    client, _ = client_for(answer(400, service_error("BAD_REQUEST", "Bad request")))
    exc = fails(lambda: client.add(1, ["a@example.com"]), InfobipError)
    assert type(exc) is InfobipError
    assert "Bad request" in str(exc)


@pytest.mark.parametrize(
    "body",
    [b"", b"<html>ok</html>", {"id": 5}, {"listId": "5"}, {"listId": True}, {"listId": None}],
    ids=["empty", "html", "no-listId", "string", "bool", "null"],
)
def test_create_without_an_integer_list_id_is_unexpected(body: object) -> None:
    client, _ = client_for(answer(200, body))
    exc = fails(lambda: client.create_list("x"), InfobipError)
    assert type(exc) is InfobipError
    assert "unexpected response" in str(exc)


@pytest.mark.parametrize(
    "body",
    [b"not json", [1, 2], {"createdCount": "3"}, {"createdCount": 1, "errors": {"failed": []}}],
    ids=["text", "array", "string-count", "bad-errors"],
)
def test_add_with_an_unexpected_body_is_an_error(body: object) -> None:
    client, _ = client_for(answer(200, body))
    exc = fails(lambda: client.add(1, ["a@example.com"]), InfobipError)
    assert "unexpected response" in str(exc)


def test_remove_with_a_non_json_body_is_an_error() -> None:
    client, _ = client_for(answer(200, b"<html>login</html>"))
    fails(lambda: client.remove(1, ["a@example.com"]), InfobipError)


def test_server_text_in_errors_never_shows_the_key_or_emails() -> None:
    text = f"key {KEY} cannot add john.doe@example.com"
    for status in (401, 403, 500):
        client, _ = client_for(answer(status, service_error("X", text)))
        exc = fails(lambda c=client: c.add(1, ["john.doe@example.com"]), InfobipError)
        assert "john.doe@example.com" not in str(exc)
        assert "j***@example.com" in str(exc)


@pytest.mark.parametrize("key", ["", "two words", "ключ", "line\nbreak"])
def test_a_key_that_cannot_be_sent_is_refused_without_echoing_it(key: str) -> None:
    with pytest.raises(Unauthorized) as info:
        InfobipClient(BASE, key)
    if key:
        assert key not in str(info.value)


@pytest.mark.parametrize("base", ["ftp://example.com", "example.com", "http://", "https://x?y=1"])
def test_a_bad_base_url_is_refused(base: str) -> None:
    with pytest.raises(InfobipError, match="base URL"):
        InfobipClient(base, KEY)
