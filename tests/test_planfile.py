"""Saved plan files: exact round trips, private atomic writes, and every refusal."""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import hashlib
import json
import os
import pickle
import stat
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler import __version__
from reconciler.errors import PlanFileError
from reconciler.plan import ListChange, Orphan, Plan
from reconciler.planfile import (
    PLAN_FORMAT_VERSION,
    SavedPlan,
    check_fresh,
    current_inputs,
    read_plan,
    write_plan,
)
from reconciler.spec import KINDS, load_workspace
from tests.helpers import emails

LINEAGE = "3f2b8c1e-4a57-4d6e-9a0b-7c1d2e3f4a5b"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
PACING = {"prod": ("https://xyz.api.infobip.com#INFOBIP_API_KEY", {k: 1.5 for k in KINDS})}


def change(name: str = "churn", **kwargs) -> ListChange:
    values = {
        "destination": "prod",
        "name": name,
        "key": f"prod/{name.casefold()}",
        "list_id": 7,
        "create": False,
        "add": (),
        "remove": (),
        "batch_size": 100,
        "known": 0,
        "desired": 0,
        **kwargs,
    }
    return ListChange(**values)


def full_plan() -> Plan:
    """A plan using every kind of change and every field, ids included."""
    return Plan(
        changes=(
            change(
                "New-List",
                list_id=None,
                create=True,
                add=tuple(emails(0, 250)),
                desired=250,
                skipped_invalid=2,
                invalid_sample=("not-an-email", "Zoë@@example"),
                input_digest=DIGEST_A,
            ),
            change(
                "churn",
                add=("a@example.com",),
                remove=("b@example.com", "c@example.com"),
                known=12,
                desired=11,
                skipped_rejected=1,
                forget_rejected={"gone@example.com": "VALIDATION_ERROR"},
                membership_known=False,
                input_digest=DIGEST_B,
            ),
            change("old", remove=tuple(emails(0, 20)), known=20, reason="prune"),
        ),
        orphans=(
            Orphan("prod/old", "prod", "old", 9, 20, "active", True),
            Orphan("prod/lost", "prod", "lost", None, 0, "missing", False),
        ),
        refused=("prod/old: too many removals, pruning it removes 100.00% of its members",),
        lineage=LINEAGE,
        serial=41,
        pacing=PACING,
    )


def saved_plan(plan: Plan | None = None, **kwargs) -> SavedPlan:
    values = {
        "plan": full_plan() if plan is None else plan,
        "inputs": {"specs/main.yaml": DIGEST_A, "specs/cohorts/churn.csv": DIGEST_B},
        "tool_version": __version__,
        "created_at": "2024-05-01T12:00:00Z",
        "options": {
            "allow_mass_removal": False,
            "retry_rejected": False,
            "targets": [],
            "excludes": [],
        },
        **kwargs,
    }
    return SavedPlan(**values)


@pytest.fixture
def written(tmp_path: Path) -> Path:
    path = tmp_path / "plan.bin"
    write_plan(path, saved_plan())
    return path


def document(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def rewrite(path: Path, doc: dict, *, fix_checksum: bool = True) -> None:
    """Store an edited document, recompressed, with a checksum that matches it."""
    if fix_checksum:
        rest = {k: v for k, v in doc.items() if k != "checksum"}
        canonical = json.dumps(rest, sort_keys=True, separators=(",", ":")).encode()
        doc["checksum"] = "sha256:" + hashlib.sha256(canonical).hexdigest()
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))


def refusal(path: Path) -> str:
    with pytest.raises(PlanFileError) as caught:
        read_plan(path)
    message = str(caught.value)
    assert str(path) in message
    return message


# --- round trips -------------------------------------------------------------


def test_round_trip_is_exact(written):
    assert read_plan(written) == saved_plan()
    back = read_plan(written).plan
    assert isinstance(back.changes[0].add, tuple)
    assert isinstance(back.pacing["prod"], tuple)


def test_round_trip_of_a_plan_made_without_state(tmp_path):
    plan = Plan(changes=(change("new", list_id=None, create=True, add=("x@example.com",)),))
    assert plan.lineage is None
    assert plan.serial == 0
    path = tmp_path / "plan.bin"
    write_plan(path, saved_plan(plan))
    assert read_plan(path).plan == plan


def test_round_trip_of_a_large_list(tmp_path):
    ids = tuple(sorted(emails(0, 100_000)))
    plan = Plan(changes=(change("big", add=ids, desired=len(ids)),), lineage=LINEAGE, serial=1)
    path = tmp_path / "plan.bin"
    write_plan(path, saved_plan(plan))
    assert read_plan(path).plan == plan
    assert path.stat().st_size < len(ids) * 5  # compressed, not raw JSON


def test_file_holds_every_field_and_the_header(written):
    doc = document(written)
    assert doc["format_version"] == PLAN_FORMAT_VERSION == 1
    assert doc["tool_version"] == __version__
    assert (doc["lineage"], doc["serial"]) == (LINEAGE, 41)
    assert doc["checksum"].startswith("sha256:")
    assert set(doc["plan"]["changes"][0]) == {f.name for f in attrs.fields(ListChange)}
    assert set(doc["plan"]["orphans"][0]) == {f.name for f in attrs.fields(Orphan)}
    assert doc["plan"]["changes"][0]["add"][:2] == ["user0@example.com", "user1@example.com"]


def test_plan_file_is_json_never_pickle(written, monkeypatch):
    raw = gzip.decompress(written.read_bytes())
    assert raw.startswith(b"{")
    assert json.loads(raw)["plan"]["changes"]

    def no_pickle(*args, **kwargs):
        raise AssertionError("a plan file must never be unpickled")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, no_pickle)
    assert read_plan(written) == saved_plan()


def test_same_plan_writes_the_same_bytes(tmp_path):
    write_plan(tmp_path / "one", saved_plan())
    write_plan(tmp_path / "two", saved_plan())
    assert (tmp_path / "one").read_bytes() == (tmp_path / "two").read_bytes()


def test_new_stamps_time_and_version():
    now = dt.datetime(2024, 5, 1, 14, 30, 5, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    saved = SavedPlan.new(full_plan(), inputs={"a": DIGEST_A}, options={"targets": []}, now=now)
    assert saved.created_at == "2024-05-01T12:30:05Z"
    assert saved.tool_version == __version__
    assert (saved.lineage, saved.serial) == (LINEAGE, 41)


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
ids = st.frozensets(
    st.integers(0, 30).map(lambda i: f"u{i}@example.com") | st.text(max_size=6), max_size=12
).map(lambda s: tuple(sorted(s)))
counts = st.integers(0, 10**7)
digests = st.none() | st.binary(min_size=1, max_size=4).map(
    lambda b: "sha256:" + hashlib.sha256(b).hexdigest()
)
changes = st.builds(
    ListChange,
    destination=names,
    name=names,
    key=names,
    list_id=st.none() | st.integers(0, 2**53),
    create=st.booleans(),
    add=ids,
    remove=ids,
    batch_size=st.integers(1, 10_000),
    known=counts,
    desired=counts,
    skipped_invalid=counts,
    invalid_sample=ids,
    skipped_rejected=counts,
    forget_rejected=st.dictionaries(
        st.text(max_size=6), st.sampled_from(["VALIDATION_ERROR", "INVALID_EMAIL"]), max_size=4
    ),
    reason=st.sampled_from(["spec", "prune"]),
    membership_known=st.booleans(),
    input_digest=digests,
)
orphans = st.builds(
    Orphan,
    key=names,
    destination=names,
    name=names,
    list_id=st.none() | st.integers(0, 2**40),
    members=counts,
    status=st.sampled_from(["active", "missing", "pruned"]),
    will_prune=st.booleans(),
)
plans = st.builds(
    Plan,
    changes=st.lists(changes, max_size=3).map(tuple),
    orphans=st.lists(orphans, max_size=2).map(tuple),
    refused=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    lineage=st.none() | st.uuids().map(str),
    serial=st.integers(0, 2**53),
    pacing=st.dictionaries(
        names,
        st.tuples(
            st.text(max_size=10),
            st.dictionaries(st.sampled_from(KINDS), st.floats(0, 1e6, allow_nan=False), max_size=3),
        ),
        max_size=2,
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans, inputs=st.dictionaries(names, digests.filter(bool), max_size=3))
def test_round_trip_of_any_plan(tmp_path_factory, plan, inputs):
    path = tmp_path_factory.getbasetemp() / "hypothesis-plan.bin"
    saved = saved_plan(plan, inputs=inputs)
    write_plan(path, saved)
    assert read_plan(path) == saved


# --- writing: private and atomic ---------------------------------------------


def test_file_is_created_private(tmp_path, monkeypatch):
    def no_chmod(*args, **kwargs):
        raise AssertionError("the mode must be set when the file is created")

    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    old = os.umask(0)  # a default open would give 0666
    try:
        write_plan(tmp_path / "plan.bin", saved_plan())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "plan.bin").stat().st_mode) == 0o600


def test_replacing_a_readable_file_leaves_a_private_one(tmp_path):
    path = tmp_path / "plan.bin"
    path.write_text("old")
    path.chmod(0o644)
    write_plan(path, saved_plan())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_plan(path) == saved_plan()


def test_replace_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "plan.bin"
    write_plan(path, saved_plan())
    newer = saved_plan(attrs.evolve(full_plan(), serial=42))
    write_plan(path, newer)
    assert read_plan(path) == newer
    assert os.listdir(tmp_path) == ["plan.bin"]


def _disk_full(monkeypatch):
    real_write = gzip.GzipFile.write

    def write(self, data):
        real_write(self, bytes(data)[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gzip.GzipFile, "write", write)


def _rename_fails(monkeypatch):
    def replace(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [(_disk_full, "No space left on device"), (_rename_fails, "Invalid cross-device link")],
)
def test_a_failed_write_keeps_the_old_plan(tmp_path, monkeypatch, fault, reason):
    path = tmp_path / "plan.bin"
    write_plan(path, saved_plan())
    fault(monkeypatch)
    with pytest.raises(PlanFileError, match=reason) as caught:
        write_plan(path, saved_plan(attrs.evolve(full_plan(), serial=42)))
    assert str(path) in str(caught.value)
    monkeypatch.undo()
    assert read_plan(path) == saved_plan()
    assert os.listdir(tmp_path) == ["plan.bin"]


def test_a_failed_first_write_leaves_nothing(tmp_path, monkeypatch):
    _disk_full(monkeypatch)
    with pytest.raises(PlanFileError):
        write_plan(tmp_path / "plan.bin", saved_plan())
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_refused_with_a_way_out(tmp_path):
    path = tmp_path / "plans" / "plan.bin"
    with pytest.raises(PlanFileError, match="does not exist") as caught:
        write_plan(path, saved_plan())
    assert f"mkdir -p {tmp_path / 'plans'}" in str(caught.value)
    assert not (tmp_path / "plans").exists()


# --- reading: every refusal --------------------------------------------------


def test_missing_file(tmp_path):
    message = refusal(tmp_path / "nope.bin")
    assert "does not exist" in message
    assert "reconciler plan --out" in message


def test_directory_instead_of_file(tmp_path):
    assert "cannot read the saved plan" in refusal(tmp_path)


@pytest.mark.parametrize("cut", [1, 3, 8, 20, 0.5])
def test_truncated_file(written, cut):
    data = written.read_bytes()
    keep = int(len(data) * cut) if isinstance(cut, float) else len(data) - cut
    written.write_bytes(data[:keep])
    message = refusal(written)
    assert "corrupted or truncated" in message
    assert "Re-run reconciler plan --out" in message


@pytest.mark.parametrize("where", [0.3, 0.5, 0.8, -6])
def test_flipped_byte_in_the_compressed_data(written, where):
    data = bytearray(written.read_bytes())
    at = int(len(data) * where) if isinstance(where, float) else len(data) + where
    data[at] ^= 0xFF
    written.write_bytes(bytes(data))
    assert "corrupted or truncated" in refusal(written)


def test_trailing_garbage(written):
    written.write_bytes(written.read_bytes() + b"garbage!")
    assert "corrupted or truncated" in refusal(written)


def test_edited_json_is_caught_by_the_checksum(written):
    text = gzip.decompress(written.read_bytes())
    edited = text.replace(b'"user17@example.com"', b'"user71@example.com"', 1)
    assert edited != text
    written.write_bytes(gzip.compress(edited))
    assert "corrupted: checksum mismatch" in refusal(written)


def test_missing_checksum(written):
    doc = document(written)
    del doc["checksum"]
    rewrite(written, doc, fix_checksum=False)
    assert "corrupted: no checksum" in refusal(written)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_other_format_version(written, version):
    doc = document(written)
    doc["format_version"] = version
    rewrite(written, doc)
    message = refusal(written)
    shown = json.dumps(version)
    assert f"written by a different reconciler version (format {shown}" in message
    assert "Re-run reconciler plan" in message


def test_plain_json_plan_output_is_not_a_saved_plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text('{"format_version": 1, "summary": {}, "changes": []}')
    message = refusal(path)
    assert "plain JSON" in message
    assert "reconciler plan --out" in message


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04zip", b"\x80\x04\x95pickle"])
def test_not_gzip(tmp_path, content):
    path = tmp_path / "plan.bin"
    path.write_bytes(content)
    assert "is not a saved plan" in refusal(path)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"not json at all", "corrupted: its content is not JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        (b'{"serial": NaN}', "not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not JSON"),
        (b"[1, 2]", "no JSON object"),
        (b'{"plan": {}}', "no format_version"),
    ],
)
def test_gzip_of_something_else(tmp_path, content, expected):
    path = tmp_path / "plan.bin"
    path.write_bytes(gzip.compress(content))
    assert expected in refusal(path)


def test_decompression_is_bounded(tmp_path):
    path = tmp_path / "bomb.bin"
    path.write_bytes(gzip.compress(bytes(50 * 2**20)))
    with pytest.raises(PlanFileError, match="more than 1,048,576 bytes"):
        read_plan(path, max_size=2**20)


def _change0(doc):
    return doc["plan"]["changes"][0]


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d.pop("plan"), "plan is missing"),
        (lambda d: d.pop("inputs"), "inputs is missing"),
        (lambda d: d.update(serial="41"), "serial must be an integer"),
        (lambda d: d.update(serial=True), "serial must be an integer"),
        (lambda d: d.update(serial=-1), "serial must not be negative"),
        (lambda d: d.update(lineage=5), "lineage must be a string"),
        (lambda d: d.update(options=[]), "options must be an object"),
        (lambda d: d["inputs"].update(x=1), 'inputs["x"] must be a string'),
        (lambda d: d.update(extra=1), "extra is not a field of format 1"),
        (lambda d: d["plan"].pop("orphans"), "plan.orphans is missing"),
        (lambda d: d["plan"].update(changes={}), "plan.changes must be a list"),
        (lambda d: _change0(d)["add"].__setitem__(1, 5), "plan.changes[0].add[1] must be"),
        (lambda d: _change0(d).update(remove="x"), "plan.changes[0].remove must be a list"),
        (lambda d: _change0(d).pop("key"), "plan.changes[0].key is missing"),
        (lambda d: _change0(d).update(list_id=1.5), "list_id must be an integer"),
        (lambda d: _change0(d).update(create=1), "create must be true or false"),
        (lambda d: _change0(d).update(batch_size=0), "batch_size must be at least 1"),
        (lambda d: _change0(d).update(colour=1), "colour is not a field"),
        (lambda d: d["plan"]["orphans"][1].update(members=None), "orphans[1].members must be"),
        (lambda d: d["plan"]["pacing"].update(prod="lane"), "[lane, intervals] pair"),
        (lambda d: d["plan"]["pacing"]["prod"][1].update(add="1"), '["add"] must be a number'),
    ],
)
def test_missing_or_ill_typed_field(written, edit, expected):
    doc = document(written)
    edit(doc)
    rewrite(written, doc)
    message = refusal(written)
    assert "is not valid" in message
    assert expected in message


# --- freshness ---------------------------------------------------------------

INPUTS = saved_plan().inputs


def test_fresh_plan_passes():
    check_fresh(saved_plan(), lineage=LINEAGE, serial=41, inputs=dict(INPUTS))


def test_other_lineage_is_refused():
    with pytest.raises(PlanFileError) as caught:
        check_fresh(saved_plan(), lineage="other", serial=41, inputs=INPUTS)
    assert str(caught.value) == (
        f"Saved plan is for a different state (lineage {LINEAGE}, this state is other): "
        "re-run reconciler plan against this state"
    )


def test_plan_against_a_state_that_is_gone_is_refused():
    with pytest.raises(PlanFileError, match=r"different state .* this state is none"):
        check_fresh(saved_plan(), lineage=None, serial=0, inputs=INPUTS)


@pytest.mark.parametrize("now", [40, 42, 100])
def test_moved_serial_is_stale(now):
    with pytest.raises(PlanFileError) as caught:
        check_fresh(saved_plan(), lineage=LINEAGE, serial=now, inputs=INPUTS)
    assert str(caught.value) == (
        "Saved plan is stale: the state changed since the plan was made "
        f"(serial 41, now {now}). Re-run reconciler plan"
    )


def test_plan_made_before_any_state_fits_a_new_empty_state():
    saved = saved_plan(Plan(changes=(change(create=True, list_id=None),)))
    check_fresh(saved, lineage=None, serial=0, inputs=INPUTS)
    check_fresh(saved, lineage="created-by-apply", serial=0, inputs=INPUTS)
    with pytest.raises(PlanFileError, match=r"stale: .*\(serial 0, now 3\)"):
        check_fresh(saved, lineage="created-by-apply", serial=3, inputs=INPUTS)


def test_changed_new_and_removed_inputs_are_named():
    now = {"specs/cohorts/churn.csv": DIGEST_A, "specs/x.yaml": DIGEST_B}
    with pytest.raises(PlanFileError) as caught:
        check_fresh(saved_plan(), lineage=LINEAGE, serial=41, inputs=now)
    assert str(caught.value) == (
        "Saved plan is stale: inputs changed since the plan: specs/cohorts/churn.csv (changed), "
        "specs/main.yaml (removed), specs/x.yaml (new). Re-run reconciler plan"
    )


def test_many_changed_inputs_are_cut_short():
    before = {f"specs/cohorts/{i:02}.csv": DIGEST_A for i in range(13)}
    after = {name: DIGEST_B for name in before}
    with pytest.raises(PlanFileError) as caught:
        check_fresh(saved_plan(inputs=before), lineage=LINEAGE, serial=41, inputs=after)
    message = str(caught.value)
    assert "specs/cohorts/09.csv (changed) and 3 more. Re-run" in message
    assert "10.csv" not in message


def test_current_inputs_digests_specs_and_cohorts(ws, tmp_path, monkeypatch):
    ws.spec(
        """
        version: 1
        destinations:
          prod: {base_url: sandbox}
        lists:
          churn: {cohorts: [cohorts/churn.csv], exclude: [cohorts/unsub.csv]}
          all: {cohorts: [cohorts/churn.csv]}
        """
    )
    churn = ws.cohort("churn.csv", emails(0, 5))
    ws.cohort("unsub.csv", emails(0, 1))
    inputs = current_inputs(load_workspace(ws.specs))
    assert sorted(inputs) == [
        "specs/cohorts/churn.csv",
        "specs/cohorts/unsub.csv",
        "specs/main.yaml",
    ]
    assert (
        inputs["specs/cohorts/churn.csv"]
        == "sha256:" + hashlib.sha256(churn.read_bytes()).hexdigest()
    )
    monkeypatch.chdir(ws.specs / "cohorts")  # the names do not depend on where reconciler runs
    assert current_inputs(load_workspace(ws.specs)) == inputs
    ws.cohort("churn.csv", emails(0, 6))
    with pytest.raises(PlanFileError, match=r"specs/cohorts/churn\.csv \(changed\)\. Re-run"):
        check_fresh(
            saved_plan(inputs=inputs),
            lineage=LINEAGE,
            serial=41,
            inputs=current_inputs(load_workspace(ws.specs)),
        )
