"""Putting the pieces together: specs and cohorts in, a plan out.

The CLI calls these functions; they read files and the state, then hand
plain values to the pure planner. Nothing here prints or exits.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import attrs

from reconciler import cohorts
from reconciler.errors import Problem, ReconcilerError, SpecError, StateError
from reconciler.plan import DesiredList, Plan, make_plan
from reconciler.spec import CohortRef, ListSpec, Workspace, load_workspace
from reconciler.store import Snapshot, StateStore

SAMPLE_SIZE = 20


def load(specs: Path) -> Workspace:
    """Load and validate the workspace; SpecError lists every problem."""
    return load_workspace(specs)


def select(
    workspace: Workspace, targets: Collection[str] = (), excludes: Collection[str] = ()
) -> Workspace:
    """Keep only the lists named by ``targets`` (all when empty) minus ``excludes``.

    Names match case-insensitively, as ``name`` or ``destination/name``.
    Raises SpecError for a name that matches no list.
    """
    if not targets and not excludes:
        return workspace

    def matches(spec: ListSpec, wanted: str) -> bool:
        wanted = wanted.casefold()
        return wanted in (spec.name.casefold(), spec.key)

    unknown = [
        name
        for name in (*targets, *excludes)
        if not any(matches(spec, name) for spec in workspace.lists)
    ]
    if unknown:
        known = ", ".join(spec.name for spec in workspace.lists)
        raise SpecError(
            Problem("--target/--exclude", 1, 1, f"no list named '{n}'", f"lists: {known}")
            for n in unknown
        )
    kept = tuple(
        spec
        for spec in workspace.lists
        if (not targets or any(matches(spec, t) for t in targets))
        and not any(matches(spec, e) for e in excludes)
    )
    return attrs.evolve(workspace, lists=kept)


def input_digest(spec: ListSpec, file_digests: Mapping[Path, str]) -> str:
    """A digest of everything that decides a list's desired set."""
    material = {
        "destination": spec.destination,
        "name": spec.name,
        "id_column": spec.id_column,
        "id_type": spec.id_type,
        "cohorts": [file_digests[ref.path] for ref in spec.cohorts],
        "exclude": [file_digests[ref.path] for ref in spec.exclude],
    }
    blob = json.dumps(material, sort_keys=True).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


def read_desired(specs: Iterable[ListSpec]) -> dict[str, DesiredList]:
    """Read every cohort file the lists name (each file once) into desired sets.

    Raises CohortError for an unreadable file.
    """
    reads: dict[tuple[Path, str, str], cohorts.CohortRead] = {}

    def read(ref: CohortRef, spec: ListSpec) -> cohorts.CohortRead:
        slot = (ref.path, spec.id_column, spec.id_type)
        if slot not in reads:
            reads[slot] = cohorts.read_cohort(
                ref.path, id_column=spec.id_column, id_type=spec.id_type, display=ref.display
            )
        return reads[slot]

    result = {}
    for spec in specs:
        included = [read(ref, spec) for ref in spec.cohorts]
        excluded = [read(ref, spec) for ref in spec.exclude]
        digests = {ref.path: r.digest for ref, r in zip(spec.cohorts, included, strict=True)}
        digests.update({ref.path: r.digest for ref, r in zip(spec.exclude, excluded, strict=True)})
        sample: list[str] = []
        for r in included:
            sample.extend(r.invalid[: SAMPLE_SIZE - len(sample)])
        result[spec.key] = DesiredList(
            spec=spec,
            ids=cohorts.desired_ids(included, excluded),
            rows=sum(r.rows for r in included),
            empty=sum(r.empty for r in included),
            invalid_count=sum(r.invalid_count for r in included),
            invalid_sample=tuple(sample),
            input_digest=input_digest(spec, digests),
        )
    return result


def unchanged_lists(
    workspace: Workspace, store: StateStore | None, digests: dict[Path, str] | None = None
) -> set[str]:
    """Lists whose inputs hash to what was last applied in full: no need to read them.

    ``digests`` caches file digests already taken (and takes new ones), so a file is
    hashed once per command.
    """
    if store is None:
        return set()
    records = store.records()
    digests = {} if digests is None else digests
    same = set()
    for spec in workspace.lists:
        record = records.get(spec.key)
        if record is None or record.status != "active" or not record.input_digest:
            continue
        for ref in (*spec.cohorts, *spec.exclude):
            cohorts.cached_digest(digests, ref.path, display=ref.display)
        if input_digest(spec, digests) == record.input_digest:
            same.add(spec.key)
    return same


def open_state(directory: Path, *, create: bool) -> StateStore | None:
    """Open the state; without ``create`` a state that does not exist yet is None.

    Raises StateError when the path exists but is not a directory.
    """
    if Path(directory).exists() and not Path(directory).is_dir():
        raise StateError(
            f"the state path {directory} is not a directory; pass --state DIR "
            "(or set RECONCILER_STATE) to the state directory"
        )
    if not create and not StateStore.exists(directory):
        return None
    return StateStore(directory)


EMPTY = Snapshot(lineage=None, serial=0, lists={})


def build_plan(
    workspace: Workspace,
    store: StateStore | None,
    *,
    allow_mass_removal: bool = False,
    retry_rejected: bool = False,
    all_lists: Workspace | None = None,
    digests: dict[Path, str] | None = None,
) -> Plan:
    """Read what is needed and diff it against the state.

    ``workspace`` holds the lists to plan (maybe a --target subset);
    ``all_lists`` the whole workspace, so that lists left out by a subset are
    not mistaken for orphans.
    """
    everything = all_lists or workspace
    unchanged = set() if retry_rejected else unchanged_lists(workspace, store, digests)
    to_read = [spec for spec in workspace.lists if spec.key not in unchanged]
    desired = read_desired(to_read)
    if store is None:
        snapshot = EMPTY
    else:
        # Lists left out by --target/--exclude are neither planned nor orphans.
        spec_keys = {spec.key for spec in everything.lists}
        selected = {spec.key for spec in workspace.lists}
        wanted = {key for key in store.records() if key not in spec_keys or key in selected}
        snapshot = store.snapshot(wanted - unchanged)
    return make_plan(
        workspace,
        desired,
        snapshot,
        unchanged=unchanged,
        allow_mass_removal=allow_mass_removal,
        retry_rejected=retry_rejected,
    )


def resolve_list(store: StateStore, name: str) -> str:
    """The state key of the list called ``name`` (or ``destination/name``).

    Raises ReconcilerError when no list or more than one matches.
    """
    records = store.records()
    folded = name.casefold()
    matches = [key for key, record in records.items() if folded in (key, record.name.casefold())]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(f"{r.destination}/{r.name}" for r in records.values()) or "none"
    if not matches:
        raise ReconcilerError(f"the state has no list '{name}' (it has: {known})")
    raise ReconcilerError(f"'{name}' matches several lists; use destination/name ({known})")
