"""The sandbox behaves like Infobip: in-process through its transport and over real HTTP."""

from __future__ import annotations

import contextlib
import json
import logging
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from reconciler.sandbox import FAULT_KINDS, Faults, Limits, RequestRecord, Sandbox, SandboxList

KEY = "sandbox-key-one"
OTHER_KEY = "sandbox-key-two"
FP = key_fingerprint(KEY)
LISTS = "/saas/amplitude/1/lists"
NO_LIMITS = Limits(create=0, add=0, remove=0)


class FakeTime:
    """A clock that only moves when told to, and a sleep that moves it."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeTime:
    return FakeTime()


@pytest.fixture
def make_sandbox(tmp_path: Path, clock: FakeTime) -> Iterator[Callable[..., Sandbox]]:
    opened: list[Sandbox] = []

    def make(data_dir: Path | None = None, **kwargs: object) -> Sandbox:
        kwargs.setdefault("keys", (KEY, OTHER_KEY))
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("sleep", clock.sleep)
        sandbox = Sandbox(data_dir or tmp_path / "sandbox", **kwargs)  # type: ignore[arg-type]
        opened.append(sandbox)
        return sandbox

    yield make
    for sandbox in opened:
        sandbox.close()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    """Infobip's documented limits, on a fake clock."""
    return make_sandbox()


def client(sandbox: Sandbox, key: str = KEY, timeout: float = 30.0) -> InfobipClient:
    return InfobipClient("http://sandbox", key, transport=sandbox.transport(), timeout=timeout)


def raw(sandbox: Sandbox, path: str, body: object, key: str | None = KEY, method: str = "POST"):
    """One request exactly as written, to check status codes and JSON shapes."""
    headers = {"Authorization": f"App {key}"} if key is not None else {}
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with httpx.Client(transport=sandbox.transport(), base_url="http://sandbox") as http:
        return http.request(method, path, content=content, headers=headers)


def service_error(message_id: str, text: str, **extra: object) -> dict:
    return {"requestError": {"serviceException": {"messageId": message_id, "text": text, **extra}}}


# --- the three endpoints ------------------------------------------------------------------


def test_create_add_remove_round_trip(sandbox: Sandbox, clock: FakeTime) -> None:
    api = client(sandbox)
    list_id = api.create_list("churn-risk-eu")
    assert list_id == 1001

    result = api.add(list_id, ["Ann@Example.com", "bob@example.com", "crm-42"])
    assert result == AddResult(modified=0, created=3, rejected={})
    assert sandbox.members(list_id) == {"ann@example.com", "bob@example.com", "crm-42"}

    clock.now += 10
    again = api.add(list_id, ["ann@example.com", "dora@example.com"])
    assert (again.modified, again.created) == (1, 1)

    api.remove(list_id, ["ANN@example.com", "nobody@example.com", "crm-42"])
    assert sandbox.members(list_id) == {"bob@example.com", "dora@example.com"}
    assert sandbox.lists() == [SandboxList(1001, "churn-risk-eu", FP, 2)]


def test_wire_shapes_of_success(sandbox: Sandbox, clock: FakeTime) -> None:
    created = raw(sandbox, LISTS, {"name": "a"})
    assert (created.status_code, created.json()) == (200, {"listId": 1001})
    assert created.headers["content-type"] == "application/json"
    added = raw(sandbox, f"{LISTS}/1001/add", {"userIds": ["a@example.com", "invalid@mail"]})
    assert added.json() == {
        "modifiedCount": 0,
        "createdCount": 1,
        "errors": {"count": 1, "failed": {"VALIDATION_ERROR": ["invalid@mail"]}},
    }
    clock.now += 10
    assert "errors" not in raw(sandbox, f"{LISTS}/1001/add", {"userIds": ["b@example.com"]}).json()
    removed = raw(sandbox, f"{LISTS}/1001/remove", {"userIds": ["a@example.com"]})
    assert (removed.status_code, removed.json()) == (200, {})


def test_names_are_unique_per_key_case_insensitively(sandbox: Sandbox, clock: FakeTime) -> None:
    mine, theirs = client(sandbox), client(sandbox, OTHER_KEY)
    first = mine.create_list("Churn")
    clock.now += 2
    assert mine.create_list("churn") == first  # an existing name answers its listId
    assert theirs.create_list("churn") != first  # another account, another list
    assert [lst.name for lst in sandbox.lists()] == ["Churn", "churn"]
    assert [lst.key_fingerprint for lst in sandbox.lists()] == [FP, key_fingerprint(OTHER_KEY)]


def test_another_keys_list_is_not_found(sandbox: Sandbox) -> None:
    list_id = client(sandbox).create_list("mine")
    with pytest.raises(TagNotFound) as info:
        client(sandbox, OTHER_KEY).add(list_id, ["a@example.com"])
    assert info.value.list_id == list_id
    assert sandbox.members(list_id) == frozenset()


@pytest.mark.parametrize("action", ["add", "remove"])
def test_unknown_list_is_tag_not_found_with_the_documented_body(
    make_sandbox: Callable[..., Sandbox], action: str
) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    response = raw(sandbox, f"{LISTS}/87881/{action}", {"userIds": ["a@example.com"]})
    assert response.status_code == 400
    assert response.json() == {
        "statusCode": "TAG_NOT_FOUND",
        "message": 'Tag with id "87881" does not exist',
    }
    with pytest.raises(TagNotFound):
        getattr(client(sandbox), action)(87881, ["a@example.com"])


@pytest.mark.parametrize("key", [None, "wrong-key", f"{KEY}x"])
def test_unknown_key_is_401_with_the_documented_body(sandbox: Sandbox, key: str | None) -> None:
    response = raw(sandbox, LISTS, {"name": "x"}, key=key)
    assert response.status_code == 401
    assert response.json() == service_error("UNAUTHORIZED", "Invalid login details")
    assert sandbox.lists() == []
    assert sandbox.request_log()[-1].key_fingerprint is None


def test_bearer_scheme_is_refused(sandbox: Sandbox) -> None:
    with httpx.Client(transport=sandbox.transport()) as http:
        response = http.post(
            f"http://sandbox{LISTS}", json={"name": "x"}, headers={"Authorization": f"Bearer {KEY}"}
        )
    assert response.status_code == 401


def test_client_maps_401_to_unauthorized(sandbox: Sandbox) -> None:
    with pytest.raises(Unauthorized, match="Invalid login details"):
        client(sandbox, "not-a-key").create_list("x")


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "   "}, {"name": 5}, [1]])
def test_blank_name_is_the_documented_400(sandbox: Sandbox, body: object) -> None:
    response = raw(sandbox, LISTS, body)
    assert response.status_code == 400
    assert response.json() == service_error(
        "BAD_REQUEST", "Bad request", validationErrors={"name": ["property not found or blank"]}
    )


def test_client_maps_blank_name_to_bad_request(sandbox: Sandbox) -> None:
    with pytest.raises(BadRequest) as info:
        client(sandbox).create_list(" ")
    assert info.value.fields == {"name": ("property not found or blank",)}


def test_name_longer_than_256_is_refused(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    with pytest.raises(BadRequest):
        client(sandbox).create_list("x" * 257)
    assert client(sandbox).create_list("x" * 256) == 1001


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"",
        {"ids": ["a"]},
        {"userIds": []},
        {"userIds": "a@example.com"},
        {"userIds": [1]},
    ],
    ids=["bad-json", "empty", "missing", "empty-list", "string", "numbers"],
)
def test_bad_member_bodies_are_400_in_the_request_error_shape(
    make_sandbox: Callable[..., Sandbox], body: object
) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    list_id = client(sandbox).create_list("x")
    response = raw(sandbox, f"{LISTS}/{list_id}/add", body)
    assert response.status_code == 400
    assert response.json()["requestError"]["serviceException"]["messageId"] == "BAD_REQUEST"
    assert sandbox.members(list_id) == frozenset()


def test_more_than_max_batch_ids_is_413(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS, max_batch=3)
    api = client(sandbox)
    list_id = api.create_list("x")
    with pytest.raises(PayloadTooLarge):
        api.add(list_id, [f"u{i}" for i in range(4)])
    assert sandbox.members(list_id) == frozenset()
    assert api.add(list_id, ["u1", "u2", "u3"]).created == 3


def test_a_body_too_large_to_parse_is_413(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS, max_batch=2)
    response = raw(sandbox, f"{LISTS}/1001/add", b"x" * 100_000)
    assert response.status_code == 413


def test_unknown_paths_and_methods(sandbox: Sandbox) -> None:
    assert raw(sandbox, "/saas/amplitude/1/other", {}).status_code == 404
    response = raw(sandbox, LISTS, b"", method="GET")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert {r.kind for r in sandbox.request_log()} == {"other"}


# --- per-id validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        "a@example.com",
        "First.Last+tag@sub.example.co.uk",
        "o'brien@example.ie",
        "x@xn--bcher-kva.example",
        "crm-000042",
        "491511234567",
        "x" * 256,
    ],
)
def test_valid_ids_are_accepted(make_sandbox: Callable[..., Sandbox], user_id: str) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    api = client(sandbox)
    list_id = api.create_list("x")
    assert api.add(list_id, [user_id]) == AddResult(0, 1, {})


@pytest.mark.parametrize(
    "user_id",
    [
        "invalid_mail@",
        "@example.com",
        "a@example",
        "a@@example.com",
        "a@b@example.com",
        "a b@example.com",
        "a@exa mple.com",
        ".a@example.com",
        "a.@example.com",
        "a..b@example.com",
        "a@example..com",
        "a@-example.com",
        "a@example.c",
        "a@example.invalid",
        "a@example.test",
        "a@EXAMPLE.TEST",
        "ü@example.com",
        "",
        "   ",
        "x" * 257,
    ],
)
def test_invalid_ids_are_rejected_per_id(
    make_sandbox: Callable[..., Sandbox], user_id: str
) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    api = client(sandbox)
    list_id = api.create_list("x")
    result = api.add(list_id, ["good@example.com", user_id])
    assert result == AddResult(0, 1, {"VALIDATION_ERROR": (user_id,)})
    assert sandbox.members(list_id) == {"good@example.com"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove"]),
            st.lists(
                st.sampled_from(["a@x.com", "A@X.COM", "b@x.com", "c-1", "C-1", "bad@x.test"])
            ),
        ),
        max_size=8,
    )
)
def test_membership_follows_a_set_model(steps: list[tuple[str, list[str]]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Sandbox(Path(tmp), keys=[KEY], limits=NO_LIMITS)
        api = client(sandbox)
        list_id = api.create_list("model")
        model: set[str] = set()
        for action, ids in steps:
            if not ids:
                continue
            wanted = {i.lower() if "@" in i else i for i in ids if not i.endswith(".test")}
            if action == "add":
                result = api.add(list_id, ids)
                assert result.created == len(wanted - model)
                assert result.modified == len(wanted & model)
                model |= wanted
            else:
                api.remove(list_id, ids)
                model -= wanted
            assert sandbox.members(list_id) == model
        assert sandbox.lists()[0].size == len(model)
        sandbox.close()


# --- rate limits ------------------------------------------------------------------------------


def test_too_fast_is_429_and_changes_nothing(sandbox: Sandbox, clock: FakeTime) -> None:
    api = client(sandbox)
    list_id = api.create_list("x")
    api.add(list_id, ["a@example.com"])

    clock.now += 9.0
    response = raw(sandbox, f"{LISTS}/{list_id}/add", {"userIds": ["b@example.com"]})
    assert response.status_code == 429
    assert response.json() == service_error("TOO_MANY_REQUESTS", "Too many requests")
    assert sandbox.members(list_id) == {"a@example.com"}
    with pytest.raises(TooManyRequests) as info:
        api.add(list_id, ["b@example.com"])
    assert info.value.retry_after is None  # Infobip documents no Retry-After

    # The refused requests did not move the clock: 10 s after the first add, minus jitter.
    clock.now += 1.0 - 0.04
    assert api.add(list_id, ["b@example.com"]).created == 1


def test_each_kind_and_each_key_has_its_own_clock(sandbox: Sandbox, clock: FakeTime) -> None:
    api, other = client(sandbox), client(sandbox, OTHER_KEY)
    list_id = api.create_list("x")
    other.create_list("x")  # another key: not limited by the first key's create
    api.add(list_id, ["a@example.com"])  # another kind: not limited by the create
    api.remove(list_id, ["a@example.com"])
    with pytest.raises(TooManyRequests):
        api.create_list("y")
    clock.now += 2.0
    api.create_list("y")
    clock.now += 3.0
    api.remove(list_id, ["a@example.com"])
    with pytest.raises(TooManyRequests):
        api.add(list_id, ["a@example.com"])


def test_pacing_at_the_documented_intervals_never_meets_429(
    sandbox: Sandbox, clock: FakeTime
) -> None:
    api = client(sandbox)
    list_id = api.create_list("x")
    for i in range(5):
        clock.now += 10.0
        api.add(list_id, [f"u{i}"])
    assert all(r.status == 200 for r in sandbox.request_log())


def test_invalid_requests_still_count_against_the_limit(sandbox: Sandbox) -> None:
    api = client(sandbox)
    with pytest.raises(BadRequest):
        api.create_list("")
    with pytest.raises(TooManyRequests):
        api.create_list("x")


def test_rate_clocks_survive_a_restart(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path, clock: FakeTime
) -> None:
    first = make_sandbox(tmp_path / "s")
    client(first).create_list("x")
    first.close()
    with pytest.raises(TooManyRequests):
        client(make_sandbox(tmp_path / "s")).create_list("y")


# --- faults ---------------------------------------------------------------------------------


def faulty(make_sandbox: Callable[..., Sandbox], kind: str, **kwargs: object) -> Sandbox:
    return make_sandbox(limits=NO_LIMITS, faults=Faults(rate=1.0, seed=7, kinds=(kind,), **kwargs))


def setup_list(sandbox: Sandbox) -> int:
    """A list made while faults are off (same directory, same database)."""
    clean = Sandbox(sandbox.data_dir, keys=[KEY], limits=NO_LIMITS)
    list_id = client(clean).create_list(f"list-{len(clean.lists())}")
    clean.close()
    return list_id


def test_error_before_is_a_5xx_without_the_change(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = faulty(make_sandbox, "error_before")
    list_id = setup_list(sandbox)
    statuses = set()
    for _ in range(12):
        with pytest.raises(TransientError) as info:
            client(sandbox).add(list_id, ["a@example.com"])
        assert info.value.outcome_unknown is True
        statuses.add(info.value.status)
    assert statuses == {500, 502, 503}
    assert sandbox.members(list_id) == frozenset()
    assert {(r.fault, r.applied) for r in sandbox.request_log()[1:]} == {("error_before", False)}


def test_error_after_makes_the_change_then_500(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = faulty(make_sandbox, "error_after")
    list_id = setup_list(sandbox)
    with pytest.raises(TransientError) as info:
        client(sandbox).add(list_id, ["a@example.com"])
    assert info.value.status == 500
    assert sandbox.members(list_id) == {"a@example.com"}
    with pytest.raises(TransientError):
        client(sandbox).create_list("made anyway")
    assert sandbox.lists()[-1].name == "made anyway"
    log = sandbox.request_log()[-1]
    assert (log.kind, log.status, log.fault, log.applied) == ("create", 500, "error_after", True)
    assert log.list_id == sandbox.lists()[-1].id


def test_reset_in_process_is_remote_protocol_error(make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = faulty(make_sandbox, "reset")
    list_id = setup_list(sandbox)
    for i in range(10):
        with pytest.raises(TransientError) as info:
            client(sandbox).add(list_id, [f"u{i}"])
        assert info.value.outcome_unknown is True
        assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    log = sandbox.request_log()[1:]
    assert all(r.status is None and r.fault == "reset" for r in log)
    applied = {f"u{i}" for i, r in enumerate(log) if r.applied}
    assert 0 < len(applied) < 10  # some before the change, some after
    assert sandbox.members(list_id) == applied


def test_slow_answer_beyond_the_read_timeout_is_a_timeout_after_the_change(
    make_sandbox: Callable[..., Sandbox], clock: FakeTime
) -> None:
    sandbox = faulty(make_sandbox, "slow", slow_seconds=3.0)
    list_id = setup_list(sandbox)
    with pytest.raises(TransientError) as info:
        client(sandbox, timeout=1.0).add(list_id, ["a@example.com"])
    assert info.value.outcome_unknown is True
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert clock.slept == [1.0]
    assert sandbox.members(list_id) == {"a@example.com"}

    assert client(sandbox, timeout=5.0).add(list_id, ["b@example.com"]).created == 1
    assert clock.slept == [1.0, 3.0]


def test_spurious_429_changes_nothing_and_keeps_the_clock(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    # Documented limits: a moved clock would refuse the clean create below.
    sandbox = make_sandbox(faults=Faults(rate=1.0, kinds=("spurious_429",)))
    with pytest.raises(TooManyRequests):
        client(sandbox).create_list("x")
    assert sandbox.lists() == []
    assert sandbox.request_log()[0].fault == "spurious_429"
    sandbox.close()
    assert client(make_sandbox(sandbox.data_dir)).create_list("x") == 1001


def run_faulty_session(data_dir: Path, faults: Faults) -> list[tuple[int | None, str | None]]:
    sandbox = Sandbox(data_dir, keys=[KEY], limits=NO_LIMITS, faults=faults, sleep=lambda s: None)
    api = client(sandbox)
    for i in range(40):
        with contextlib.suppress(InfobipError):
            api.create_list(f"list-{i}")
    out = [(r.status, r.fault) for r in sandbox.request_log()]
    sandbox.close()
    return out


def test_faults_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    faults = Faults(rate=0.5, seed=7, slow_seconds=0)
    first = run_faulty_session(tmp_path / "a", faults)
    assert first == run_faulty_session(tmp_path / "b", faults)
    assert {f for _, f in first} == {None, *FAULT_KINDS}
    assert first != run_faulty_session(tmp_path / "c", Faults(rate=0.5, seed=8, slow_seconds=0))


def test_faults_are_off_by_default(sandbox: Sandbox) -> None:
    assert Faults().rate == 0
    client(sandbox).create_list("x")
    assert sandbox.request_log()[0].fault is None


# --- request log, persistence, files, logging -------------------------------------------


def test_request_log_records_each_request(sandbox: Sandbox, clock: FakeTime) -> None:
    api = client(sandbox)
    list_id = api.create_list("x")
    clock.now += 1
    api.add(list_id, ["a@example.com", "b@example.com", "bad@x.test"])
    with pytest.raises(TooManyRequests):
        api.add(list_id, ["c@example.com"])
    with pytest.raises(Unauthorized):
        client(sandbox, "wrong").remove(list_id, ["a@example.com"])
    assert sandbox.request_log() == [
        RequestRecord(1000.0, FP, "create", list_id, 200, 0, None, True),
        RequestRecord(1001.0, FP, "add", list_id, 200, 3, None, True),
        RequestRecord(1001.0, FP, "add", list_id, 429, 1, None, False),
        RequestRecord(1001.0, None, "remove", list_id, 401, 0, None, False),
    ]


def test_everything_persists_across_reopen(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    first = make_sandbox(tmp_path / "s", limits=NO_LIMITS)
    api = client(first)
    list_id = api.create_list("x")
    api.add(list_id, ["a@example.com", "b@example.com"])
    first.close()

    second = make_sandbox(tmp_path / "s", limits=NO_LIMITS)
    assert second.members(list_id) == {"a@example.com", "b@example.com"}
    assert second.lists() == [SandboxList(list_id, "x", FP, 2)]
    assert len(second.request_log()) == 2
    assert client(second).create_list("X") == list_id
    assert client(second).create_list("y") == list_id + 1


def test_a_second_handle_reads_while_the_first_writes(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    writer = make_sandbox(tmp_path / "s", limits=NO_LIMITS)
    reader = make_sandbox(tmp_path / "s", keys=())
    list_id = client(writer).create_list("x")
    client(writer).add(list_id, ["a@example.com"])
    assert reader.members(list_id) == {"a@example.com"}


def test_members_of_an_unknown_list_is_a_key_error(sandbox: Sandbox) -> None:
    with pytest.raises(KeyError):
        sandbox.members(4242)


def test_files_are_private_and_hold_no_key(tmp_path: Path) -> None:
    data_dir = tmp_path / "deep" / "sandbox"
    sandbox = Sandbox(data_dir, keys=[KEY], limits=NO_LIMITS)
    client(sandbox).create_list("x")
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = list(data_dir.iterdir())
    assert data_dir / "sandbox.db" in files
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    sandbox.close()
    assert not any(KEY.encode() in path.read_bytes() for path in data_dir.iterdir())


def test_one_log_line_per_request_without_emails_or_keys(
    make_sandbox: Callable[..., Sandbox], caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = make_sandbox(limits=NO_LIMITS)
    caplog.set_level(logging.INFO, logger="reconciler.sandbox")
    api = client(sandbox)
    list_id = api.create_list("x")
    api.add(list_id, ["secret.person@example.com", "bad@x.test"])
    raw(sandbox, "/saas/amplitude/1/lists/leak@example.com/add", {"userIds": ["a"]})
    lines = [r.getMessage() for r in caplog.records if r.name == "reconciler.sandbox"]
    assert len(lines) == 3
    assert f"POST {LISTS}/{list_id}/add -> 200 ids=2" in lines[1]
    text = "\n".join(lines)
    assert "secret.person" not in text and "leak@" not in text and KEY not in text


# --- config parsing --------------------------------------------------------------------------


def test_limits_parse() -> None:
    assert Limits.parse("create=0.2,add=0.5,remove=0.3") == Limits(0.2, 0.5, 0.3)
    assert Limits.parse(" add = 1 ") == Limits(add=1.0)
    assert Limits.parse("") == Limits()
    assert Limits() == Limits(create=2.0, add=10.0, remove=5.0, tolerance=0.05)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("create", "expected name=value"),
        ("create=", "expected name=value"),
        ("delete=1", "unknown name 'delete'"),
        ("add=fast", "not a number"),
        ("add=-1", ">= 0"),
        ("add=1,add=2", "given twice"),
        ("add=nan", ">= 0"),
    ],
)
def test_limits_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Limits.parse(text)


def test_faults_parse() -> None:
    assert Faults.parse("rate=0.3,seed=7,kinds=reset+slow,slow_seconds=2") == Faults(
        rate=0.3, seed=7, kinds=("reset", "slow"), slow_seconds=2.0
    )
    assert Faults.parse("") == Faults()
    assert Faults().kinds == FAULT_KINDS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rate=2", "between 0 and 1"),
        ("seed=1.5", "not a number"),
        ("kinds=reset+explode", "explode"),
        ("kinds=+", "non-empty"),
        ("slow_seconds=-1", ">= 0"),
        ("speed=1", "unknown name"),
    ],
)
def test_faults_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Faults.parse(text)


# --- real HTTP ---------------------------------------------------------------------------------


@pytest.mark.e2e
def test_round_trip_over_http(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=NO_LIMITS)
    assert server.url.startswith("http://127.0.0.1:")
    with InfobipClient(server.url + "/", KEY, timeout=5) as api:
        list_id = api.create_list("churn")
        assert api.add(list_id, ["a@example.com", "bad@x.test"]) == AddResult(
            0, 1, {"VALIDATION_ERROR": ("bad@x.test",)}
        )
        api.remove(list_id, ["a@example.com"])
        with pytest.raises(TagNotFound):
            api.add(999_999, ["a@example.com"])
    with InfobipClient(server.url, "wrong", timeout=5) as api, pytest.raises(Unauthorized):
        api.create_list("x")
    assert server.sandbox.members(list_id) == frozenset()
    assert [r.status for r in server.sandbox.request_log()] == [200, 200, 200, 400, 401]


@pytest.mark.e2e
def test_rate_limit_over_http(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=Limits(create=0.05, add=0.3, remove=0.05, tolerance=0.01))
    with InfobipClient(server.url, KEY, timeout=5) as api:
        list_id = api.create_list("x")
        api.add(list_id, ["a"])
        with pytest.raises(TooManyRequests):
            api.add(list_id, ["b"])
        time.sleep(0.31)
        assert api.add(list_id, ["b"]).created == 1


@pytest.mark.e2e
def test_413_over_http(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=NO_LIMITS, max_batch=2)
    with InfobipClient(server.url, KEY, timeout=5) as api:
        list_id = api.create_list("x")
        with pytest.raises(PayloadTooLarge):
            api.add(list_id, ["a", "b", "c"])
        with pytest.raises(PayloadTooLarge):  # refused unparsed, body drained
            api.add(list_id, ["x" * 200] * 1000)


@pytest.mark.e2e
def test_reset_over_http_drops_the_connection(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=NO_LIMITS, faults=Faults(rate=1.0, seed=3, kinds=("reset",)))
    with InfobipClient(server.url, KEY, timeout=5) as api:
        for i in range(6):
            with pytest.raises(TransientError) as info:
                api.create_list(f"list-{i}")
            assert info.value.outcome_unknown is True
            assert isinstance(info.value.__cause__, (httpx.RemoteProtocolError, httpx.ReadError))
    log = server.sandbox.request_log()
    assert {r.applied for r in log} == {True, False}
    assert len(server.sandbox.lists()) == sum(r.applied for r in log)


@pytest.mark.e2e
def test_slow_over_http_times_out_after_the_change(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(
        limits=NO_LIMITS, faults=Faults(rate=1.0, kinds=("slow",), slow_seconds=0.4)
    )
    with InfobipClient(server.url, KEY, timeout=0.1) as api, pytest.raises(TransientError) as info:
        api.create_list("x")
    assert info.value.outcome_unknown is True
    assert isinstance(info.value.__cause__, httpx.ReadTimeout)
    assert [lst.name for lst in server.sandbox.lists()] == ["x"]


@pytest.mark.e2e
def test_error_after_over_http(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=NO_LIMITS, faults=Faults(rate=1.0, kinds=("error_after",)))
    with InfobipClient(server.url, KEY, timeout=5) as api, pytest.raises(TransientError) as info:
        api.create_list("x")
    assert info.value.status == 500
    assert len(server.sandbox.lists()) == 1


@pytest.mark.e2e
def test_concurrent_requests_over_http(served_sandbox: Callable[..., object]) -> None:
    server = served_sandbox(limits=NO_LIMITS)
    with InfobipClient(server.url, KEY, timeout=5) as api:
        list_id = api.create_list("x")

    def worker(n: int) -> None:
        with InfobipClient(server.url, KEY, timeout=5) as api:
            api.add(list_id, [f"w{n}-{i}" for i in range(50)])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.sandbox.members(list_id)) == 400


@pytest.mark.e2e
def test_shutdown_closes_the_socket_and_leaves_no_threads(tmp_path: Path) -> None:
    from reconciler.sandbox import serve

    sandbox = Sandbox(tmp_path / "s", keys=[KEY], limits=NO_LIMITS)
    server = serve(sandbox)
    before = set(threading.enumerate())
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    with InfobipClient(server.url, KEY, timeout=5) as api:
        api.create_list("x")
    server.shutdown()
    runner.join(2)
    assert set(threading.enumerate()) <= before
    with InfobipClient(server.url, KEY, timeout=2) as api, pytest.raises(TransientError) as info:
        api.create_list("y")
    assert info.value.outcome_unknown is False
    server.shutdown()  # idempotent
    sandbox.close()


def test_shutdown_without_serving_does_not_hang(tmp_path: Path) -> None:
    from reconciler.sandbox import serve

    sandbox = Sandbox(tmp_path / "s", keys=[KEY])
    serve(sandbox).shutdown()
    sandbox.close()
