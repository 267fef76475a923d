"""The pure diff: specs + desired id sets + a state snapshot -> a Plan.

No I/O, no clock, no environment: everything arrives as values, so the
planner is exact to test and cheap to reason about. The plan is a closed set
of frozen values, sorted once, so every rendering is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import attrs

from reconciler.spec import KINDS, Destination, ListSpec, Workspace
from reconciler.store import ListState, Snapshot

DEFAULT_MAX_REMOVAL = 0.30
SAFETY_MIN_MEMBERS = 10  # smaller lists are exempt from the removal ratio, as in octoDNS


@attrs.frozen
class DesiredList:
    """What a list should hold, read from its cohort files."""

    spec: ListSpec
    ids: frozenset[str]
    rows: int = 0
    empty: int = 0
    invalid_count: int = 0
    invalid_sample: tuple[str, ...] = ()
    input_digest: str | None = None


@attrs.frozen
class ListChange:
    """The requests (and state housekeeping) one list needs."""

    destination: str
    name: str
    key: str
    list_id: int | None
    create: bool
    add: tuple[str, ...]
    remove: tuple[str, ...]
    batch_size: int
    known: int  # members the state knew before
    desired: int  # size of the desired set
    skipped_invalid: int = 0
    invalid_sample: tuple[str, ...] = ()
    skipped_rejected: int = 0
    # rejected ids to forget (id -> error type): they left the cohort, or --retry-rejected
    forget_rejected: Mapping[str, str] = attrs.field(factory=dict)
    reason: str = "spec"  # spec | prune
    membership_known: bool = True
    input_digest: str | None = None

    def requests_of(self, kind: str) -> int:
        if kind == "create":
            return int(self.create)
        ids = self.add if kind == "add" else self.remove
        return math.ceil(len(ids) / self.batch_size)

    @property
    def requests(self) -> int:
        return sum(self.requests_of(kind) for kind in KINDS)

    @property
    def has_requests(self) -> bool:
        return self.requests > 0

    @property
    def removal_ratio(self) -> float:
        return len(self.remove) / self.known if self.known else 0.0


@attrs.frozen
class Orphan:
    """A list the state knows that no spec names any more."""

    key: str
    destination: str
    name: str
    list_id: int | None
    members: int
    status: str
    will_prune: bool


@attrs.frozen
class Summary:
    creates: int
    adds: int
    removes: int
    requests: int
    estimated_seconds: float


@attrs.frozen
class Plan:
    """Every change an apply would make, in apply order, plus what is left alone."""

    changes: tuple[ListChange, ...]
    orphans: tuple[Orphan, ...] = ()
    refused: tuple[str, ...] = ()
    lineage: str | None = None
    serial: int = 0
    # destination name -> (lane, pacing intervals by kind), for estimates
    pacing: Mapping[str, tuple[str, Mapping[str, float]]] = attrs.field(factory=dict)

    @property
    def request_changes(self) -> tuple[ListChange, ...]:
        return tuple(c for c in self.changes if c.has_requests)

    @property
    def has_changes(self) -> bool:
        return bool(self.request_changes)

    @property
    def summary(self) -> Summary:
        changes = self.request_changes
        return Summary(
            creates=sum(c.create for c in changes),
            adds=sum(len(c.add) for c in changes),
            removes=sum(len(c.remove) for c in changes),
            requests=sum(c.requests for c in changes),
            estimated_seconds=self.estimated_seconds(),
        )

    def estimated_seconds(self) -> float:
        """Lower bound on apply time: per API key, max over kinds of requests x interval."""
        busy: dict[tuple[str, str], float] = {}
        for change in self.request_changes:
            lane, intervals = self.pacing.get(change.destination, ("", {}))
            for kind in KINDS:
                slot = (lane, kind)
                busy[slot] = busy.get(slot, 0.0) + change.requests_of(kind) * intervals.get(
                    kind, 0.0
                )
        lanes: dict[str, float] = {}
        for (lane, _), seconds in busy.items():
            lanes[lane] = max(lanes.get(lane, 0.0), seconds)
        return round(max(lanes.values(), default=0.0), 3)


def make_plan(
    workspace: Workspace,
    desired: Mapping[str, DesiredList],
    snapshot: Snapshot,
    *,
    unchanged: Collection[str] = (),
    allow_mass_removal: bool = False,
    retry_rejected: bool = False,
) -> Plan:
    """Diff ``desired`` (by list key) against ``snapshot``.

    ``unchanged`` names lists whose inputs match what was last applied: they
    need nothing and are absent from ``desired``. The returned plan carries
    its safety refusals in ``refused``; it never raises for them.
    """
    destinations = {d.name: d for d in workspace.destinations}
    changes = []
    for spec in workspace.lists:
        if spec.key in unchanged:
            continue
        change = _diff_list(
            desired[spec.key],
            snapshot.lists.get(spec.key),
            destinations[spec.destination],
            retry_rejected,
        )
        if change is not None:
            changes.append(change)
    orphans, prunes = _orphans(workspace, snapshot, destinations)
    changes.extend(prunes)
    changes.sort(key=lambda c: (c.destination, c.name.casefold(), c.key))
    plan = Plan(
        changes=tuple(changes),
        orphans=tuple(orphans),
        lineage=snapshot.lineage,
        serial=snapshot.serial,
        pacing={
            d.name: (d.lane, {k: d.pacing.interval(k) for k in KINDS})
            for d in workspace.destinations
        },
    )
    specs = {spec.key: spec for spec in workspace.lists}
    refused = tuple(
        reason
        for change in plan.changes
        if (reason := safety_refusal(change, specs.get(change.key), allow_mass_removal))
    )
    return attrs.evolve(plan, refused=refused + _name_clashes(plan.changes, snapshot))


def _name_clashes(changes: Sequence[ListChange], snapshot: Snapshot) -> tuple[str, ...]:
    """Creates whose name Infobip already gives to another list of the state.

    After ``state mv`` Infobip still shows the old name; creating a new list
    with that name could land on the same Infobip list (list names are unique
    per account), and two lists of the state would then fight over it.
    """
    reasons = []
    for change in changes:
        if not change.create:
            continue
        owner = snapshot.owner(change.destination, change.name)
        if owner is not None and owner != change.key:
            _, remote_name, list_id = snapshot.remote[owner]
            other = owner.split("/", 1)[1]
            reasons.append(
                f"{change.destination}/{change.name}: Infobip already has a list named "
                f"'{remote_name}' (list {list_id}), which the state tracks as '{other}' since a "
                "'state mv'. Give the new list another name, or rename the list in Infobip "
                "first and 'reconciler state rm' / 'import' to match."
            )
    return tuple(reasons)


def _diff_list(
    wanted: DesiredList,
    state: ListState | None,
    destination: Destination,
    retry_rejected: bool,
) -> ListChange | None:
    spec = wanted.spec
    record = state.record if state else None
    create = record is None or record.status == "missing" or record.list_id is None
    # A list re-created after TAG_NOT_FOUND starts empty in Infobip.
    members = frozenset() if create or state is None else state.members
    # Ids whose remove was cut short by a crash may or may not be in Infobip:
    # add them if desired, remove them if not (both are safe to resend).
    known = state.claimed if state is not None and not create else frozenset()
    rejected = dict(state.rejected) if state else {}
    desired = wanted.ids
    if retry_rejected:
        forget = rejected
        blocked: frozenset[str] = frozenset()
    else:
        forget = {i: t for i, t in rejected.items() if i not in desired}
        blocked = frozenset(rejected)
    add = desired - known
    skipped_rejected = len(add & blocked) if blocked else 0
    if skipped_rejected:
        add = add - blocked
    remove = members - desired
    change = ListChange(
        destination=spec.destination,
        name=spec.name,
        key=spec.key,
        list_id=None if create else record.list_id,  # type: ignore[union-attr]
        create=create,
        add=tuple(sorted(add)),
        remove=tuple(sorted(remove)),
        batch_size=destination.batch_size,
        known=len(members),
        desired=len(desired),
        skipped_invalid=wanted.invalid_count,
        invalid_sample=wanted.invalid_sample,
        skipped_rejected=skipped_rejected,
        forget_rejected=forget,
        membership_known=record.membership_known if record else True,
        input_digest=wanted.input_digest,
    )
    needs_digest = record is None or record.input_digest != wanted.input_digest
    if change.has_requests or forget or needs_digest:
        return change
    return None


def _orphans(
    workspace: Workspace, snapshot: Snapshot, destinations: Mapping[str, Destination]
) -> tuple[list[Orphan], list[ListChange]]:
    spec_keys = {spec.key for spec in workspace.lists}
    orphans, prunes = [], []
    for key, state in sorted(snapshot.lists.items()):
        if key in spec_keys:
            continue
        record = state.record
        destination = destinations.get(record.destination)
        prune = bool(destination and destination.prune and record.status != "missing")
        orphans.append(
            Orphan(
                key=key,
                destination=record.destination,
                name=record.name,
                list_id=record.list_id,
                members=len(state.members),
                status=record.status,
                will_prune=prune and bool(state.members),
            )
        )
        if prune and (state.members or record.status != "pruned"):
            prunes.append(
                ListChange(
                    destination=record.destination,
                    name=record.name,
                    key=key,
                    list_id=record.list_id,
                    create=False,
                    add=(),
                    remove=tuple(sorted(state.members)),
                    batch_size=destination.batch_size,  # type: ignore[union-attr]
                    known=len(state.members),
                    desired=0,
                    reason="prune",
                )
            )
    return orphans, prunes


def safety_refusal(
    change: ListChange, spec: ListSpec | None, allow_mass_removal: bool
) -> str | None:
    """Why ``change`` must not be applied without force, or None when it is safe.

    Creates and adds never count. Emptying a list whose cohorts gave no ids
    needs ``allow_empty`` (or force); removing more than ``max_removal`` of a
    list of at least 10 members needs a higher ``max_removal`` (or force).
    """
    if allow_mass_removal or not change.remove:
        return None
    where = f"{change.destination}/{change.name}"
    if change.reason == "spec" and change.desired == 0 and not (spec and spec.allow_empty):
        return (
            f"{where}: its cohort files gave no ids, so all {change.known:,} members would be "
            "removed. If the list really should be empty, set allow_empty: true on it or pass "
            "--allow-mass-removal; otherwise check the cohort export."
        )
    threshold = DEFAULT_MAX_REMOVAL
    if spec is not None and spec.max_removal is not None:
        threshold = spec.max_removal
    if change.known >= SAFETY_MIN_MEMBERS and change.removal_ratio > threshold:
        what = "pruning it removes" if change.reason == "prune" else "it would remove"
        return (
            f"{where}: too many removals, {what} {change.removal_ratio:.2%} of its members, "
            f"over the {threshold:.2%} limit ({len(change.remove):,}/{change.known:,}). "
            "Pass --allow-mass-removal, or raise max_removal: on the list if this is expected."
        )
    return None
