"""Property: any sequence of cohort and spec edits, applied through faults, converges."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.apply import Target, apply_plan
from reconciler.errors import InfobipError
from reconciler.infobip import InfobipClient
from reconciler.plan import DesiredList, make_plan
from reconciler.sandbox import Faults, Limits, Sandbox
from reconciler.spec import Destination, ListSpec, Pacing, Workspace
from reconciler.store import StateStore
from tests.helpers import FakeClock

KEY = "prop-key"
INTERVALS = {"create": 1.0, "add": 1.0, "remove": 1.0}
UNIVERSE = [f"u{i}@example.com" for i in range(30)]

ids = st.frozensets(st.sampled_from(UNIVERSE), max_size=20)
names = st.sampled_from(["a", "b", "c", "d"])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("edit"), names, ids),
        st.tuples(st.just("add_list"), names, ids),
        st.tuples(st.just("rename"), names, names),
        st.tuples(st.just("drop"), names, st.booleans()),
        st.tuples(st.just("apply"), st.integers(0, 2**16), st.just(None)),
    ),
    min_size=1,
    max_size=12,
)


class World:
    """Specs (a dict of name -> desired ids), a state and a faulty sandbox on one fake clock."""

    def __init__(self, root: Path, seed: int) -> None:
        self.clock = FakeClock()
        self.box = Sandbox(
            root / "sandbox",
            keys=[KEY],
            limits=Limits(create=1, add=1, remove=1, tolerance=0),
            faults=Faults(rate=0.3, seed=seed, slow_seconds=5),
            clock=self.clock,
            sleep=self.clock.sleep,
        )
        self.store = StateStore(root / "state", clock=self.clock)
        self.client = InfobipClient(
            "http://sandbox.invalid", KEY, transport=self.box.transport(), timeout=2.0
        )
        self.lists: dict[str, frozenset[str]] = {}
        self.prune = False

    def workspace(self) -> Workspace:
        dest = Destination(
            "prod", "sandbox", None, batch_size=4, pacing=Pacing(1, 1, 1), prune=self.prune
        )
        specs = tuple(ListSpec(name, "prod", ()) for name in sorted(self.lists))
        return Workspace(Path("."), (), (dest,), specs)

    def plan(self):
        ws = self.workspace()
        desired = {
            s.key: DesiredList(s, self.lists[s.name], input_digest=str(hash(self.lists[s.name])))
            for s in ws.lists
        }
        return make_plan(ws, desired, self.store.snapshot(), allow_mass_removal=True)

    def plan_with(self, name: str, ids: frozenset[str]):
        saved = dict(self.lists)
        self.lists[name] = ids
        try:
            return self.plan()
        finally:
            self.lists = saved

    def apply(self) -> bool:
        target = Target("prod", self.client, INTERVALS)
        result = apply_plan(
            self.plan(), self.store, {"prod": target}, clock=self.clock, sleep=self.clock.sleep
        )
        return result.ok

    def converge(self) -> None:
        for _ in range(60):
            if self.apply():
                return
        raise AssertionError("no convergence")

    def reserved(self, name: str) -> bool:
        """A name Infobip still gives a renamed list: the planner refuses to create it."""
        key = self.store.snapshot([]).owner("prod", name)
        return key is not None and key != f"prod/{name}"

    def step(self, op: str, a, b) -> None:
        if op in ("edit", "add_list"):
            if a not in self.lists and self.reserved(a):
                assert self.plan_with(a, b).refused  # tested here, then skipped
                return
            self.lists[a] = b
        elif op == "rename" and a in self.lists and b not in self.lists and not self.reserved(b):
            self.lists[b] = self.lists.pop(a)
            if self.store.record(f"prod/{a}") is not None:
                self.store.rename_list(f"prod/{a}", f"prod/{b}", destination="prod", name=b)
        elif op == "drop" and a in self.lists:
            del self.lists[a]
            self.prune = b
        elif op == "apply":
            self.apply()  # faulty: may fail halfway, and that is fine

    def check(self) -> None:
        records = self.store.records()
        for name, desired in self.lists.items():
            record = records[f"prod/{name}"]
            assert self.box.members(record.list_id) == desired, name
        for key, record in records.items():
            claimed = self.store.list_state(key).claimed
            assert claimed <= self.box.members(record.list_id)
            if record.name not in self.lists and self.prune:
                assert self.box.members(record.list_id) == frozenset()
        plan = self.plan()
        assert not plan.has_changes, plan.request_changes

    def close(self) -> None:
        self.store.close()
        self.box.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, seed=st.integers(0, 1000))
def test_edits_interleaved_with_faulty_applies_converge(steps, seed):
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp), seed)
        try:
            for op, a, b in steps:
                world.step(op, a, b)
            world.converge()
            world.check()
        finally:
            world.close()


def test_world_is_not_trivially_converged():
    """The harness can fail: a sandbox change behind the state's back is detected."""
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp), seed=1)
        world.lists["a"] = frozenset(UNIVERSE[:5])
        world.converge()
        list_id = world.store.record("prod/a").list_id
        for _ in range(20):  # behind the state's back, through the sandbox's own faults
            world.clock.sleep(1)
            try:
                world.client.remove(list_id, [UNIVERSE[0]])
                break
            except InfobipError:
                continue
        try:
            world.check()
        except AssertionError:
            pass
        else:
            raise AssertionError("check() missed a divergence")
        finally:
            world.close()
