"""How close does ``reconciler apply`` come to its pacing lower bound?

Target: the apply's wall time within 10 % of the lower bound (wall / bound <= 1.10), with
zero 429 answers and exactly the minimum number of requests.

The lower bound (DESIGN.md section 5): per API key, the max over kinds of
(requests of that kind x interval); overall, the max over keys, since keys run
concurrently. The bound counts n intervals per kind while the last request needs no
trailing wait, so a good apply can finish just under it.

Each run builds a fresh workspace (two destinations on the in-process sandbox, each with
its own API key, so two lanes) and goes through two phases:

1. untimed: bring the lists to a starting membership. Default: an apply with fast pacing
   and large batches. ``--large``: seed the state (``StateStore.seed_list``) and the
   sandbox (its own HTTP app, with no rate limits) directly, which is much cheaper.
2. timed: rewrite the cohort files (drop some ids, add others, add new lists) and run
   ``python -m reconciler apply --auto-approve --format json`` as a separate process,
   as a user would.

The sandbox's request log then gives per-key request counts, 429s and the request span,
and its lists (and the state's) are compared with the desired sets. This prints figures;
it exits 1 only when an apply fails or the resulting membership is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import pairwise
from pathlib import Path

import attrs

from reconciler.infobip import InfobipClient, key_fingerprint
from reconciler.sandbox import Limits, RequestRecord, Sandbox
from reconciler.spec import KINDS, list_key
from reconciler.store import StateStore

TARGET_RATIO = 1.10
SANDBOX_URL = "http://sandbox.invalid"  # the in-process transport answers any host
ANONYMOUS_ROWS = 3  # rows with an empty user_id per cohort file, as Amplitude exports have
MIXED_CASE_EVERY = 5  # every n-th id is written upper-case; the reader lower-cases emails


# --- the workload --------------------------------------------------------------------


@attrs.frozen
class Account:
    """One destination and the API key behind it (one pacing lane)."""

    destination: str
    key_env: str
    key: str

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key)


@attrs.frozen
class ListLoad:
    """One list: ``seed`` members before the timed phase, then ``remove`` out, ``add`` in.

    A list with ``seed == 0`` does not exist before the timed phase, which creates it.
    ``exclude`` ids sit in the cohort file and in the exclude file: never sent.
    """

    name: str
    account: Account
    seed: int
    remove: int
    add: int
    exclude: int = 10

    @property
    def key(self) -> str:
        return list_key(self.account.destination, self.name)


@attrs.frozen
class Scenario:
    name: str
    accounts: tuple[Account, ...]
    lists: tuple[ListLoad, ...]
    pacing: Mapping[str, float]  # the timed phase's intervals, per key and kind
    batch_size: int  # the timed phase's batch size
    seed_directly: bool  # phase 1 without HTTP (state + sandbox written directly)
    # Phase 1 by apply: fast pacing and large batches, so it takes a second.
    start_pacing: Mapping[str, float] = attrs.field(
        factory=lambda: {"create": 0.05, "add": 0.05, "remove": 0.05}
    )
    start_batch_size: int = 1000


def _accounts() -> tuple[Account, Account]:
    return (
        Account("team-a", "BENCH_INFOBIP_KEY_A", "bench-key-a"),
        Account("team-b", "BENCH_INFOBIP_KEY_B", "bench-key-b"),
    )


def default_scenario() -> Scenario:
    """Four lists per key (one new), creates + adds + removes; kinds must interleave.

    team-a is add-bound (12 adds x 0.5 s = 6.0 s; removes 15 x 0.3 s = 4.5 s), team-b
    remove-bound (21 removes x 0.3 s = 6.3 s; adds 8 x 0.5 s = 4.0 s). Sending the kinds
    one after the other would take 10.7 s on each key.
    """
    a, b = _accounts()
    lists = (
        ListLoad("a-churn-risk", a, seed=1000, remove=250, add=100),
        ListLoad("a-winback", a, seed=1000, remove=250, add=100),
        ListLoad("a-power-users", a, seed=1000, remove=250, add=100),
        ListLoad("a-trial", a, seed=0, remove=0, add=300),
        ListLoad("b-dormant", b, seed=1200, remove=350, add=50),
        ListLoad("b-newsletter", b, seed=1200, remove=350, add=50),
        ListLoad("b-vip", b, seed=1200, remove=350, add=100),
        ListLoad("b-onboarding", b, seed=0, remove=0, add=200),
    )
    return Scenario(
        name="default",
        accounts=(a, b),
        lists=lists,
        pacing={"create": 0.2, "add": 0.5, "remove": 0.3},
        batch_size=50,
        seed_directly=False,
    )


def large_scenario() -> Scenario:
    """1,000,000 adds and 100,000 removes over three lists on two keys, 10,000 ids a request.

    Each key gets 50 adds and a few removes: the bound is 50 x 0.3 s = 15 s per key.
    """
    a, b = _accounts()
    lists = (
        ListLoad("large-a1", a, seed=150_000, remove=20_000, add=250_000, exclude=100),
        ListLoad("large-a2", a, seed=150_000, remove=20_000, add=250_000, exclude=100),
        ListLoad("large-b1", b, seed=300_000, remove=60_000, add=500_000, exclude=100),
    )
    return Scenario(
        name="large",
        accounts=(a, b),
        lists=lists,
        pacing={"create": 0.2, "add": 0.3, "remove": 0.3},
        batch_size=10_000,
        seed_directly=True,
    )


# --- ids and files -------------------------------------------------------------------


def user_id(list_no: int, i: int) -> str:
    """The normalized (lower-case) id number ``i`` of list number ``list_no``."""
    return f"u{list_no:02d}.{i:07d}@example.com"


def _range(load: ListLoad, phase: int) -> range:
    """Members wanted in ``phase``: 1 = the starting membership, 2 = after the edit."""
    return range(0, load.seed) if phase == 1 else range(load.remove, load.seed + load.add)


def _excluded(load: ListLoad) -> range:
    start = load.seed + load.add
    return range(start, start + load.exclude)


def cohort_ids(list_no: int, load: ListLoad, phase: int) -> Iterator[str]:
    """The ids of a list's cohort file as exported: some upper-case, excluded ones too."""
    for i in (*_range(load, phase), *_excluded(load)):
        uid = user_id(list_no, i)
        yield uid.upper() if i % MIXED_CASE_EVERY == 0 else uid


def exclude_ids(scenario: Scenario) -> Iterator[str]:
    for list_no, load in enumerate(scenario.lists):
        for i in _excluded(load):
            yield user_id(list_no, i)


def desired(scenario: Scenario, phase: int) -> dict[str, frozenset[str]]:
    """List key -> desired set: cohort ids minus excluded ids, normalized to lower case."""
    excluded = {uid.strip().lower() for uid in exclude_ids(scenario)}
    result = {}
    for list_no, load in enumerate(scenario.lists):
        if phase == 1 and load.seed == 0:
            continue
        ids = {uid.strip().lower() for uid in cohort_ids(list_no, load, phase)}
        result[load.key] = frozenset(ids - excluded)
    return result


def write_cohort(path: Path, ids: Iterable[str]) -> None:
    """An Amplitude cohort export: every field quoted, CRLF, a few anonymous users."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write('"amplitude_id","user_id"\r\n')
        number = 1000
        for number, uid in enumerate(ids, start=1000):
            out.write(f'"{number}","{uid}"\r\n')
        for extra in range(ANONYMOUS_ROWS):
            out.write(f'"{number + 1 + extra}",""\r\n')


def _flow(mapping: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in mapping.items()) + "}"


def spec_text(scenario: Scenario, phase: int) -> str:
    pacing = scenario.start_pacing if phase == 1 else scenario.pacing
    batch = scenario.start_batch_size if phase == 1 else scenario.batch_size
    lines = [f"# bench/apply_makespan.py, scenario {scenario.name}, phase {phase}", "version: 1"]
    lines.append("destinations:")
    for account in scenario.accounts:
        lines += [
            f"  {account.destination}:",
            "    base_url: sandbox",
            f"    api_key_env: {account.key_env}",
            f"    batch_size: {batch}",
            f"    pacing: {_flow(pacing)}",
        ]
    lines.append("lists:")
    for load in scenario.lists:
        if phase == 1 and load.seed == 0:
            continue
        lines += [
            f"  {load.name}:",
            f"    destination: {load.account.destination}",
            f"    cohorts: [cohorts/{load.name}.csv]",
            "    exclude: [cohorts/unsubscribed.csv]",
        ]
    return "\n".join(lines) + "\n"


def write_workspace(root: Path, scenario: Scenario, phase: int) -> None:
    """Write specs/bench.yaml and the cohort files of ``phase`` under ``root``."""
    specs = root / "specs"
    specs.mkdir(parents=True, exist_ok=True)
    (specs / "bench.yaml").write_text(spec_text(scenario, phase), encoding="utf-8")
    write_cohort(specs / "cohorts" / "unsubscribed.csv", exclude_ids(scenario))
    for list_no, load in enumerate(scenario.lists):
        if phase == 1 and load.seed == 0:
            continue
        write_cohort(specs / "cohorts" / f"{load.name}.csv", cohort_ids(list_no, load, phase))


# --- running -------------------------------------------------------------------------


@attrs.frozen
class ApplyRun:
    wall: float  # seconds, process start to exit
    launched: float  # wall-clock time (time.time) just before the process started
    returncode: int
    stdout: str
    stderr: str

    def result(self) -> dict[str, object] | None:
        try:
            data = json.loads(self.stdout)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    @property
    def ok(self) -> bool:
        data = self.result()
        return self.returncode == 0 and data is not None and not data.get("failed")


def environment(root: Path, scenario: Scenario) -> dict[str, str]:
    env = dict(os.environ)
    env.update({account.key_env: account.key for account in scenario.accounts})
    env["RECONCILER_SANDBOX_DIR"] = str(sandbox_dir(root))
    env["NO_COLOR"] = "1"
    env.pop("RECONCILER_STATE", None)
    return env


def sandbox_dir(root: Path) -> Path:
    return root / "state" / "sandbox"


def run_apply(
    root: Path, env: Mapping[str, str], log_name: str, planfile: str | None = None
) -> ApplyRun:
    """``python -m reconciler apply [PLANFILE]`` in ``root``, timed from launch to exit."""
    argv = [sys.executable, "-m", "reconciler", "apply", "--format", "json"]
    argv += [planfile] if planfile else ["--auto-approve"]
    argv += ["--specs", "specs", "--state", "state"]
    launched = time.time()
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=root, env=dict(env), capture_output=True, text=True)
    wall = time.perf_counter() - start
    (root / log_name).write_text(done.stderr, encoding="utf-8")
    return ApplyRun(wall, launched, done.returncode, done.stdout, done.stderr)


def seed_directly(root: Path, scenario: Scenario, start: Mapping[str, frozenset[str]]) -> None:
    """Phase 1 without pacing: lists made through the sandbox's own app, state seeded to match."""
    keys = [account.key for account in scenario.accounts]
    no_limits = Limits(create=0, add=0, remove=0, tolerance=0)
    with (
        Sandbox(sandbox_dir(root), keys=keys, limits=no_limits) as box,
        StateStore(root / "state") as store,
    ):
        for load in scenario.lists:
            if load.key not in start:
                continue
            members = sorted(start[load.key])
            with InfobipClient(SANDBOX_URL, load.account.key, transport=box.transport()) as client:
                list_id = client.create_list(load.name)
                for offset in range(0, len(members), scenario.batch_size):
                    client.add(list_id, members[offset : offset + scenario.batch_size])
            store.seed_list(load.key, load.account.destination, load.name, list_id, members)


# --- figures -------------------------------------------------------------------------


def minimum_requests(
    scenario: Scenario, before: Mapping[str, frozenset[str]], after: Mapping[str, frozenset[str]]
) -> dict[str, Counter[str]]:
    """Key fingerprint -> kind -> the fewest requests the timed phase can make."""
    result: dict[str, Counter[str]] = {a.fingerprint: Counter() for a in scenario.accounts}
    size = scenario.batch_size
    for load in scenario.lists:
        old, new = before.get(load.key), after[load.key]
        counts = result[load.account.fingerprint]
        counts["create"] += int(old is None)
        counts["add"] += math.ceil(len(new - (old or frozenset())) / size)
        counts["remove"] += math.ceil(len((old or frozenset()) - new) / size)
    return result


@attrs.frozen
class KeyFigures:
    account: Account
    sent: Counter[str]
    minimum: Counter[str]
    slip: dict[str, float]  # per kind: (last - first start) - (n - 1) x interval
    min_gap: dict[str, float]  # per kind: the shortest time between two starts, as received
    first: float | None
    last: float | None

    def busy(self, kind: str, pacing: Mapping[str, float]) -> float:
        return self.minimum[kind] * pacing[kind]

    def bound(self, pacing: Mapping[str, float]) -> float:
        return max(self.busy(kind, pacing) for kind in KINDS)


def key_figures(
    account: Account,
    records: Sequence[RequestRecord],
    minimum: Counter[str],
    pacing: Mapping[str, float],
) -> KeyFigures:
    mine = [r for r in records if r.key_fingerprint == account.fingerprint]
    sent = Counter(r.kind for r in mine)
    slip, min_gap = {}, {}
    for kind in KINDS:
        times = [r.time for r in mine if r.kind == kind]
        if len(times) > 1:
            slip[kind] = (times[-1] - times[0]) - (len(times) - 1) * pacing[kind]
            min_gap[kind] = min(b - a for a, b in pairwise(times))
    times = [r.time for r in mine]
    first, last = min(times, default=None), max(times, default=None)
    return KeyFigures(account, sent, minimum, slip, min_gap, first, last)


def membership_problems(
    root: Path, scenario: Scenario, wanted: Mapping[str, frozenset[str]]
) -> list[str]:
    """Where the sandbox's lists or the state's member sets differ from ``wanted``."""
    problems = []
    with (
        Sandbox(sandbox_dir(root), keys=()) as box,
        StateStore(root / "state") as store,
    ):
        ids = {(lst.key_fingerprint, lst.name.casefold()): lst.id for lst in box.lists()}
        for load in scenario.lists:
            label = f"{load.account.destination}/{load.name}"
            list_id = ids.get((load.account.fingerprint, load.name.casefold()))
            if list_id is None:
                problems.append(f"{label}: no such list in the sandbox")
                continue
            members = box.members(list_id)
            if members != wanted[load.key]:
                missing, extra = len(wanted[load.key] - members), len(members - wanted[load.key])
                problems.append(f"{label}: sandbox has {missing:,} missing, {extra:,} extra ids")
            record = store.record(load.key)
            if record is None or record.list_id != list_id:
                problems.append(f"{label}: the state's list id differs from the sandbox's")
            elif store.members(load.key) != wanted[load.key]:
                problems.append(f"{label}: the state's member set differs from the desired set")
    return problems


def peak_child_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    # ru_maxrss is in KiB on Linux (bytes on macOS; this is a rough figure either way).
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def report(
    scenario: Scenario,
    run: ApplyRun,
    figures: Sequence[KeyFigures],
    records: Sequence[RequestRecord],
    problems: Sequence[str],
    ids_total: int,
) -> str:
    pacing = scenario.pacing
    lines = [
        f"timed phase: {len(scenario.lists)} lists on {len(figures)} keys, "
        f"batch_size {scenario.batch_size:,}",
        "",
        f"{'key':<24}{'kind':<8}{'sent':>6}{'minimum':>9}{'interval':>10}{'busy':>10}"
        f"{'min gap':>10}{'slip':>9}",
    ]
    for f in figures:
        label = f"{f.account.destination} {f.account.fingerprint[7:]}"
        for index, kind in enumerate(KINDS):
            slip = f"{f.slip[kind]:.2f} s" if kind in f.slip else "-"
            gap = f"{f.min_gap[kind]:.3f} s" if kind in f.min_gap else "-"
            lines.append(
                f"{label if index == 0 else '':<24}{kind:<8}{f.sent[kind]:>6}"
                f"{f.minimum[kind]:>9}{pacing[kind]:>8.2f} s{f.busy(kind, pacing):>8.2f} s"
                f"{gap:>10}{slip:>9}"
            )
        span = (f.last - f.first) if f.first is not None and f.last is not None else 0.0
        lines.append(f"{'':<24}{'bound':<8}{'':>25}{f.bound(pacing):>8.2f} s   (span {span:.2f} s)")
    bound = max(f.bound(pacing) for f in figures)
    times = [r.time for r in records]
    span = max(times) - min(times) if times else 0.0
    first = min(times) - run.launched if times else 0.0
    tail = run.launched + run.wall - max(times) if times else 0.0
    throttled = sum(1 for r in records if r.status == 429)
    other = sum(1 for r in records if r.status not in (200, 429))
    sent = len(records)
    minimum = sum(sum(f.minimum.values()) for f in figures)
    ratio = run.wall / bound if bound else math.nan
    span_ratio = span / bound if bound else math.nan
    rss = peak_child_rss_mb()
    lines += [
        "",
        f"{'overall lower bound':<30}{bound:>8.2f} s",
        f"{'apply wall time':<30}{run.wall:>8.2f} s   ratio {ratio:.3f}",
        f"{'request span (first-last)':<30}{span:>8.2f} s   ratio {span_ratio:.3f}",
        f"{'  launch -> first request':<30}{first:>8.2f} s   (interpreter start, plan)",
        f"{'  last request -> exit':<30}{tail:>8.2f} s",
        f"{'429 answers':<30}{throttled:>8}",
        f"{'other non-200 answers':<30}{other:>8}",
        f"{'requests sent / minimum':<30}{sent:>8} / {minimum}",
        f"{'membership':<30}"
        + ("ok" if not problems else "WRONG")
        + f" (sandbox and state, {len(scenario.lists)} lists, {ids_total:,} ids)",
    ]
    if rss is not None:
        lines.append(f"{'peak RSS of apply processes':<30}{rss:>8.0f} MB")
    lines += [f"  {problem}" for problem in problems]
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    lines += [
        "",
        f"makespan: {run.wall:.2f} s vs lower bound {bound:.2f} s -> ratio {ratio:.2f}, "
        f"{throttled} x 429, {sent}/{minimum} requests (minimum {minimum})"
        f"  [{verdict} target {TARGET_RATIO:.2f}]",
    ]
    return "\n".join(lines)


# --- the benchmark -------------------------------------------------------------------


def _failed(what: str, run: ApplyRun) -> int:
    print(f"{what} failed (exit {run.returncode}):", file=sys.stderr)
    print(run.stdout[-2000:], file=sys.stderr)
    print(run.stderr[-4000:], file=sys.stderr)
    return 1


def benchmark(scenario: Scenario, root: Path, *, saved_plan: bool = False) -> int:
    env = environment(root, scenario)
    start = desired(scenario, 1)
    wanted = desired(scenario, 2)
    (root / "state").mkdir(parents=True, exist_ok=True)

    began = time.perf_counter()
    write_workspace(root, scenario, 1)
    if scenario.seed_directly:
        seed_directly(root, scenario, start)
        print(
            f"phase 1 (untimed): seeded {sum(map(len, start.values())):,} ids in "
            f"{len(start)} lists directly, {time.perf_counter() - began:.1f} s"
        )
    else:
        run = run_apply(root, env, "apply-phase1.log")
        if not run.ok:
            return _failed("phase 1 apply", run)
        print(
            f"phase 1 (untimed): apply of {sum(map(len, start.values())):,} ids into "
            f"{len(start)} lists, {run.wall:.2f} s"
        )

    began = time.perf_counter()
    write_workspace(root, scenario, 2)
    print(f"phase 2 workload written in {time.perf_counter() - began:.1f} s; applying...")
    planfile = None
    if saved_plan:
        # The CI workflow: the plan is made (and reviewed) first, then applied exactly.
        argv = [sys.executable, "-m", "reconciler", "plan", "--out", "plan.bin"]
        argv += ["--format", "json", "--specs", "specs", "--state", "state"]
        began = time.perf_counter()
        made = subprocess.run(argv, cwd=root, env=dict(env), capture_output=True, text=True)
        if made.returncode != 0:
            print(made.stderr, file=sys.stderr)
            return 1
        print(f"plan --out plan.bin (untimed): {time.perf_counter() - began:.2f} s")
        planfile = "plan.bin"
    run = run_apply(root, env, "apply-phase2.log", planfile)
    if not run.ok:
        return _failed("phase 2 apply", run)

    with Sandbox(sandbox_dir(root), keys=()) as box:
        records = [r for r in box.request_log() if r.time >= run.launched]
    minimum = minimum_requests(scenario, start, wanted)
    figures = [
        key_figures(account, records, minimum[account.fingerprint], scenario.pacing)
        for account in scenario.accounts
    ]
    problems = membership_problems(root, scenario, wanted)
    ids_total = sum(map(len, wanted.values()))
    print()
    print(report(scenario, run, figures, records, problems, ids_total))
    return 1 if problems else 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time `reconciler apply` on a two-key sandbox workload (creates, adds, removes) "
            "and compare it with the pacing lower bound."
        ),
        epilog=(
            "examples:\n"
            "  .venv/bin/python bench/apply_makespan.py\n"
            "  .venv/bin/python bench/apply_makespan.py --large --saved-plan\n"
            "  .venv/bin/python bench/apply_makespan.py --large --keep /tmp/bench-large"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="1,000,000 adds and 100,000 removes over three lists on two keys (about 30 s)",
    )
    parser.add_argument(
        "--saved-plan",
        action="store_true",
        help="time `apply plan.bin` of a plan saved beforehand, as the CI workflow does",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="build the workspace in DIR (new or empty) and keep it, instead of a temp dir",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    scenario = large_scenario() if args.large else default_scenario()
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
            return benchmark(scenario, Path(tmp), saved_plan=args.saved_plan)
    root = args.keep.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        parser.error(f"--keep {root}: not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    code = benchmark(scenario, root, saved_plan=args.saved_plan)
    print(f"workspace kept in {root}")
    return code


if __name__ == "__main__":
    sys.exit(main())
