"""The pure planner: exact diffs, minimal requests, safety thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.plan import DesiredList, make_plan
from reconciler.spec import Destination, ListSpec, Pacing, Workspace
from reconciler.store import ListRecord, ListState, Snapshot


def workspace(*specs: ListSpec, batch_size: int = 10_000, prune: bool = False) -> Workspace:
    dest = Destination("prod", "sandbox", None, batch_size=batch_size, prune=prune)
    return Workspace(Path("."), (), (dest,), tuple(specs))


def spec(name: str = "churn", **kwargs) -> ListSpec:
    return ListSpec(name=name, destination="prod", cohorts=(), **kwargs)


def state(
    s: ListSpec, members=(), rejected=None, list_id=7, status="active", digest=None
) -> ListState:
    record = ListRecord(
        key=s.key,
        destination=s.destination,
        name=s.name,
        list_id=list_id,
        status=status,
        input_digest=digest,
    )
    return ListState(record, frozenset(members), dict(rejected or {}))


def snapshot(*states: ListState) -> Snapshot:
    return Snapshot("lineage", 3, {st.key: st for st in states})


def plan_for(s, desired, known=(), rejected=None, **kwargs):
    ws = kwargs.pop("ws", None) or workspace(s)
    snap = snapshot(state(s, known, rejected)) if known is not None else snapshot()
    return make_plan(ws, {s.key: DesiredList(s, frozenset(desired))}, snap, **kwargs)


ids = st.frozensets(st.integers(0, 60).map(lambda i: f"u{i}@example.com"), max_size=40)


def apply_to_snapshot(plan, snap: Snapshot, digest=None) -> Snapshot:
    """What a fully successful apply leaves in the state."""
    lists = dict(snap.lists)
    for change in plan.changes:
        old = lists.get(change.key)
        members = set() if change.create or old is None else set(old.members)
        rejected = dict(old.rejected) if old else {}
        for i in change.forget_rejected:
            rejected.pop(i, None)
        members |= set(change.add)
        members -= set(change.remove)
        record = ListRecord(
            key=change.key,
            destination=change.destination,
            name=change.name,
            list_id=change.list_id or 99,
            input_digest=change.input_digest,
        )
        lists[change.key] = ListState(record, frozenset(members), rejected)
    return Snapshot(snap.lineage, snap.serial + 1, lists)


@settings(max_examples=300, deadline=None)
@given(
    desired=ids,
    known=ids,
    rejected=ids,
    batch=st.integers(1, 7),
    is_new=st.booleans(),
)
def test_applying_a_plan_converges_with_minimal_requests(desired, known, rejected, batch, is_new):
    s = spec()
    ws = workspace(s, batch_size=batch)
    rejected = {i: "VALIDATION_ERROR" for i in rejected - known}
    snap = snapshot() if is_new else snapshot(state(s, known, rejected))
    plan = make_plan(
        ws, {s.key: DesiredList(s, desired, input_digest="d1")}, snap, allow_mass_removal=True
    )
    if is_new:
        known, rejected = frozenset(), {}

    result = apply_to_snapshot(plan, snap)
    assert result.lists[s.key].members == desired - rejected.keys()

    for change in plan.request_changes:
        assert change.requests == (
            int(change.create)
            + math.ceil(len(change.add) / batch)
            + math.ceil(len(change.remove) / batch)
        )
        assert not set(change.add) & set(change.remove)

    again = make_plan(ws, {s.key: DesiredList(s, desired, input_digest="d1")}, result)
    assert not again.has_changes
    assert again.changes == ()


def test_diff_is_exact():
    s = spec()
    plan = plan_for(s, {"a@x.com", "b@x.com", "c@x.com"}, {"b@x.com", "d@x.com"})
    (change,) = plan.changes
    assert (change.create, change.add, change.remove) == (
        False,
        ("a@x.com", "c@x.com"),
        ("d@x.com",),
    )
    assert change.list_id == 7


def test_unknown_list_is_created_then_filled():
    s = spec()
    plan = plan_for(s, {"a@x.com"}, known=None)
    (change,) = plan.changes
    assert change.create and change.list_id is None and change.requests == 2
    assert plan.summary.creates == 1


def test_missing_list_is_recreated_and_refilled():
    s = spec()
    snap = snapshot(state(s, {"a@x.com"}, status="missing"))
    plan = make_plan(workspace(s), {s.key: DesiredList(s, frozenset({"a@x.com"}))}, snap)
    (change,) = plan.changes
    assert change.create and change.add == ("a@x.com",) and change.remove == ()


def test_rejected_ids_are_not_resent_until_asked():
    s = spec()
    rejected = {"bad@x.com": "VALIDATION_ERROR", "gone@x.com": "VALIDATION_ERROR"}
    plan = plan_for(s, {"bad@x.com", "ok@x.com"}, set(), rejected)
    (change,) = plan.changes
    assert change.add == ("ok@x.com",)
    assert change.skipped_rejected == 1
    assert change.forget_rejected == {"gone@x.com": "VALIDATION_ERROR"}

    plan = plan_for(s, {"bad@x.com", "ok@x.com"}, set(), rejected, retry_rejected=True)
    assert plan.changes[0].add == ("bad@x.com", "ok@x.com")


def test_unchanged_lists_are_omitted():
    s = spec()
    snap = snapshot(state(s, {"a@x.com"}, digest="d1"))
    plan = make_plan(
        workspace(s), {s.key: DesiredList(s, frozenset({"a@x.com"}), input_digest="d1")}, snap
    )
    assert plan.changes == () and not plan.has_changes


def test_orphans_are_left_alone_unless_prune():
    kept, gone = spec("kept"), spec("gone")
    snap = snapshot(state(kept, {"a@x.com"}), state(gone, {"b@x.com", "c@x.com"}))
    desired = {kept.key: DesiredList(kept, frozenset({"a@x.com"}))}
    plan = make_plan(workspace(kept), desired, snap)
    assert [o.name for o in plan.orphans] == ["gone"]
    assert not plan.orphans[0].will_prune
    assert not plan.has_changes

    plan = make_plan(workspace(kept, prune=True), desired, snap)
    (change,) = plan.request_changes
    assert (change.name, change.reason, change.remove) == ("gone", "prune", ("b@x.com", "c@x.com"))


def members(n: int) -> set[str]:
    return {f"m{i}@x.com" for i in range(n)}


@pytest.mark.parametrize(
    ("known", "removed", "refused"),
    [(10, 3, False), (10, 4, True), (9, 8, False), (100, 30, False), (100, 31, True)],
)
def test_removal_threshold_walks_step_by_step(known, removed, refused):
    s = spec()
    current = members(known)
    desired = set(sorted(current)[removed:]) | {"new@x.com"}
    plan = plan_for(s, desired, current)
    assert bool(plan.refused) is refused
    if refused:
        assert f"over the 30.00% limit ({removed}/{known})" in plan.refused[0]
        assert "--allow-mass-removal" in plan.refused[0]
        assert not plan_for(s, desired, current, allow_mass_removal=True).refused


def test_list_max_removal_overrides_the_default():
    s = spec(max_removal=0.5)
    current = members(10)
    assert not plan_for(s, set(sorted(current)[5:]), current).refused
    assert plan_for(s, set(sorted(current)[6:]), current).refused


def test_empty_cohort_never_empties_a_list_silently():
    s = spec()
    plan = plan_for(s, set(), {"a@x.com"})
    assert "cohort files gave no ids" in plan.refused[0]
    assert "allow_empty: true" in plan.refused[0]
    assert not plan_for(spec(allow_empty=True), set(), {"a@x.com"}).refused
    assert not plan_for(s, set(), {"a@x.com"}, allow_mass_removal=True).refused


def test_creates_and_adds_never_count_against_safety():
    s = spec()
    assert not plan_for(s, members(1000), set()).refused
    assert not plan_for(s, members(5), known=None).refused


def test_estimate_is_the_pacing_lower_bound_per_key():
    s1, s2 = spec("a"), spec("b")
    dest = Destination("prod", "sandbox", None, batch_size=2, pacing=Pacing(2, 10, 5))
    ws = Workspace(Path("."), (), (dest,), (s1, s2))
    desired = {
        s1.key: DesiredList(s1, frozenset(members(5))),  # create + 3 adds
        s2.key: DesiredList(s2, frozenset()),
    }
    snap = snapshot(state(s2, {"x@x.com"}))
    plan = make_plan(ws, desired, snap, allow_mass_removal=True)
    # adds: 3 requests x 10 s dominate creates (2 s) and removes (5 s)
    assert plan.summary.estimated_seconds == 30.0
    assert plan.summary.requests == 5


def test_plan_is_deterministic_and_frozen():
    s1, s2 = spec("b"), spec("a")
    ws = workspace(s1, s2)
    desired = {x.key: DesiredList(x, frozenset({"z@x.com", "a@x.com"})) for x in (s1, s2)}
    plan = make_plan(ws, desired, snapshot())
    assert [c.name for c in plan.changes] == ["a", "b"]
    assert plan.changes[0].add == ("a@x.com", "z@x.com")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan.changes[0].create = False  # type: ignore[misc]


def test_ids_of_a_remove_cut_short_are_resent_either_way():
    s = spec()
    st_ = ListState(
        state(s).record,
        frozenset({"a@x.com", "b@x.com", "c@x.com"}),
        {},
        frozenset({"a@x.com", "b@x.com"}),
    )
    desired = {"a@x.com", "c@x.com"}  # a is wanted back, b is still to go
    plan = make_plan(workspace(s), {s.key: DesiredList(s, frozenset(desired))}, snapshot(st_))
    (change,) = plan.changes
    assert change.add == ("a@x.com",)
    assert change.remove == ("b@x.com",)
