"""Does committing one batch to the state cost the same whatever the list size?

Target (DESIGN.md section 4, invariant 2): committing one batch of 10,000 ids costs O(batch),
not O(list size): the median commit at the largest list within 2x of the one at the smallest.
apply commits after every request, so a commit that grew with the list would make a 5 M
list's apply slow and its crash window wide.

For each list size N this seeds a fresh state with N members (``StateStore.seed_list``, not
timed), then times, ``--repeat`` times, the commits apply makes for one request:

- add: ``record_added(key, batch)`` of ``--batch`` new ids;
- remove: ``record_removing(key, batch)`` then ``record_removed(key, batch)`` of ``--batch``
  current members (the ids the previous add brought in, so the list keeps N members).

It prints the median and the slowest of each, their ratio largest/smallest list, and for
information what ``compact`` (O(list size), run once after an apply) then costs. The
timings are printed, never asserted; it exits 1 only when the state ends up wrong.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from sizes import size_list  # bench/ is on sys.path when a script runs

from reconciler.spec import list_key
from reconciler.store import StateStore

DEFAULT_SIZES = "10k,1m,5m"
DESTINATION = "bench"
LIST_NAME = "commit-cost"
LIST_ID = 4343
TARGET_FACTOR = 2.0  # median commit at the largest list <= this x the one at the smallest


def member(i: int) -> str:
    """Member number ``i`` of the seeded list (normalised email)."""
    return f"member{i:08d}.{i % 97}@example.com"


def newcomer(rep: int, j: int) -> str:
    """Id ``j`` of the batch added in repetition ``rep``: never a member before."""
    return f"new{rep:04d}.{j:06d}@example.org"


@attrs.frozen
class SizeFigures:
    size: int
    seed_seconds: float
    add: tuple[float, ...]  # seconds per add commit
    remove: tuple[float, ...]  # seconds per remove (record_removing + record_removed)
    compact_seconds: float
    db_mb: float
    members_ok: bool


def _batches(size: int, batch: int, repeat: int) -> Iterator[tuple[list[str], list[str]]]:
    """(ids to add, ids to remove) per repetition; the removed ids are always members."""
    previous = [member(i) for i in range(min(batch, size))]
    for rep in range(repeat):
        added = [newcomer(rep, j) for j in range(batch)]
        yield added, previous
        previous = added


def measure(directory: Path, size: int, batch: int, repeat: int) -> SizeFigures:
    key = list_key(DESTINATION, LIST_NAME)
    with StateStore(directory) as store:
        began = time.perf_counter()
        store.seed_list(key, DESTINATION, LIST_NAME, LIST_ID, (member(i) for i in range(size)))
        seed_seconds = time.perf_counter() - began
        adds, removes = [], []
        expected_extra: list[str] = []
        for added, removed in _batches(size, batch, repeat):
            began = time.perf_counter()
            store.record_added(key, added)
            adds.append(time.perf_counter() - began)
            began = time.perf_counter()
            store.record_removing(key, removed)
            store.record_removed(key, removed)
            removes.append(time.perf_counter() - began)
            expected_extra = added
        began = time.perf_counter()
        store.compact(key)
        compact_seconds = time.perf_counter() - began
        members = store.members(key)
        # The list lost its first batch of seed members and kept the last batch added.
        first = {member(i) for i in range(min(batch, size))}
        members_ok = (
            len(members) == size - len(first) + len(expected_extra)
            and not first & members
            and members.issuperset(expected_extra)
        )
    db_mb = sum(p.stat().st_size for p in directory.iterdir() if p.is_file()) / 1e6
    return SizeFigures(
        size, seed_seconds, tuple(adds), tuple(removes), compact_seconds, db_mb, members_ok
    )


# --- the report ----------------------------------------------------------------------


def _label(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1000 == 0:
        return f"{size // 1000}k"
    return f"{size:,}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def report(results: Sequence[SizeFigures], batch: int, repeat: int) -> str:
    lines = [
        f"one commit of {batch:,} ids, {repeat} repetitions per list size "
        "(remove = record_removing + record_removed)",
        "",
        f"{'list size':>9} | {'seed s':>6} | {'add median ms':>13} | {'add max ms':>10} | "
        f"{'remove median ms':>16} | {'remove max ms':>13} | {'compact s':>9} | {'state MB':>8}",
    ]
    lines.append("-" * len(lines[-1]))
    for f in results:
        lines.append(
            f"{_label(f.size):>9} | {f.seed_seconds:>6.2f} | "
            f"{_ms(statistics.median(f.add)):>13} | {_ms(max(f.add)):>10} | "
            f"{_ms(statistics.median(f.remove)):>16} | {_ms(max(f.remove)):>13} | "
            f"{f.compact_seconds:>9.2f} | {f.db_mb:>8.1f}"
        )
    lines.append("")
    if len(results) < 2:
        lines.append("flatness: n/a (needs two list sizes)")
        return "\n".join(lines)
    small, large = results[0], results[-1]
    for what in ("add", "remove"):
        low = statistics.median(getattr(small, what))
        high = statistics.median(getattr(large, what))
        ratio = high / low
        verdict = "PASS" if ratio <= TARGET_FACTOR else "OVER"
        lines.append(
            f"{what} commit, median at {_label(large.size)} / at {_label(small.size)}: "
            f"{_ms(high)} / {_ms(low)} ms = {ratio:.2f} (target <= {TARGET_FACTOR:g})  [{verdict}]"
        )
    return "\n".join(lines)


# --- the benchmark -------------------------------------------------------------------


def benchmark(root: Path, sizes: Sequence[int], batch: int, repeat: int) -> int:
    results = []
    for size in sizes:
        print(f"{_label(size)} members: seeding, then {repeat} x (add, remove)...", flush=True)
        results.append(measure(root / f"state-{_label(size)}", size, batch, repeat))
    print()
    print(report(results, batch, repeat))
    wrong = [f for f in results if not f.members_ok]
    for f in wrong:
        problem = f"{_label(f.size)}: the state's members are not what was committed"
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if wrong else 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time the state commits apply makes per request (record_added; record_removing + "
            "record_removed) for one batch of 10,000 ids, on lists of 10 k to 5 M members."
        ),
        epilog=(
            "examples:\n"
            "  .venv/bin/python bench/commit_cost.py                  # 10k,1m,5m, ~1 min\n"
            "  .venv/bin/python bench/commit_cost.py --sizes 10k,1m --repeat 10\n"
            "  .venv/bin/python bench/commit_cost.py --batch 1000 --keep /tmp/commit-cost"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=size_list(1),
        default=size_list(1)(DEFAULT_SIZES),
        metavar="LIST",
        help=f"comma-separated list sizes, k and m suffixes allowed (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--batch", type=int, default=10_000, metavar="N", help="ids per commit (default 10000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=20,
        metavar="N",
        help="commits of each kind per list size (default 20)",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="write the states in DIR (new or empty) and keep them, instead of a temp dir",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeat < 1:
        parser.error("--batch and --repeat must be at least 1")
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="reconciler-commit-cost-") as tmp:
            return benchmark(Path(tmp), args.sizes, args.batch, args.repeat)
    root = args.keep.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        parser.error(f"--keep {root}: not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    code = benchmark(root, args.sizes, args.batch, args.repeat)
    print(f"states kept in {root}")
    return code


if __name__ == "__main__":
    sys.exit(main())
