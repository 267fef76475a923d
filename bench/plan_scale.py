"""How does ``reconciler plan`` scale with the size of a cohort, next to sort + comm?

Targets (from the issue):

- at 1 M ids, ``reconciler plan`` takes at most the time of the baseline a user could write
  instead (ratio <= 1.0), and its peak memory (RSS) is at most 400 MB;
- time and memory grow linearly from 100 k to 5 M ids;
- a plan whose inputs and state did not change since the last apply costs little more than
  hashing the file.

For each size N this writes, into a temp dir (or ``--keep DIR``):

- ``cohorts/original.csv``: an Amplitude export of N emails (``firstname.lastname1234@domain``,
  some upper-case or padded with spaces, which the reader trims and lower-cases), a few
  anonymous ``""`` rows and two property columns; every field quoted, CRLF;
- ``cohorts/churn.csv``: the same export with 5 % of the ids gone and 5 % new ones;
- ``cohorts/original-ids.txt``: the original ids, normalised, one a line (what the baseline
  diffs against, standing in for the state);
- ``state-churn/``: a state seeded with the original set (``StateStore.seed_list``) and
  ``specs-churn/``, one list on a ``sandbox`` destination whose cohort is ``churn.csv``;
- ``state-same/``: the same state marked as applied with the digest of ``original.csv``,
  and ``specs-same/`` naming ``original.csv``: the plan's unchanged fast path.

Then, best of ``--repeat`` runs each (minimum wall time; peak RSS is the largest seen):

- plan: ``python -m reconciler plan --format json`` as a separate process;
- baseline: one ``bash -c`` that extracts, trims and lower-cases the user_id column of
  ``churn.csv``, runs ``LC_ALL=C sort -u`` on it and on ``original-ids.txt`` (the two sorts
  concurrently) and ``comm -3`` on the results;
- unchanged: the plan of ``specs-same`` against ``state-same``, next to ``sha256sum`` of
  ``original.csv`` and to the interpreter start (``python -m reconciler --version``);
- the set reference: a fresh interpreter builds two sets of N ids and diffs them. Its cost per
  id grows with N on real hardware (hash tables outgrow the CPU caches), which is the yardstick
  for how linear the plan's own growth can be.

Every command runs from a small launcher process, which times it (fork to ``os.wait4``) and
reads its peak RSS from ``os.wait4``: the largest resident set of that process or of any
process it waited for (for the baseline: its largest stage, usually ``sort``; the stages of a
pipeline run at the same time, so their sum may be higher). Not from this process: Linux
carries the peak RSS across exec, so a child of this process, which holds millions of ids,
would report at least this process's size. Linux only.

This prints figures; it exits 1 only when a command fails or the plan's and the baseline's
adds and removes differ from the known churn.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import attrs
from sizes import size_list  # bench/ is on sys.path when a script runs

from reconciler import cohorts, engine
from reconciler.cli import main as reconciler_main
from reconciler.spec import list_key
from reconciler.store import StateStore

DEFAULT_SIZES = "100k,1m,5m"
DESTINATION = "bench"
LIST_NAME = "scale-test"
LIST_ID = 4242
CHURN_EVERY = 20  # 1 id in 20 (5 %) leaves the cohort, and 1 new id per 20 joins it
CHURN_SLOT = 7  # the ids with i % CHURN_EVERY == CHURN_SLOT leave
ANONYMOUS_EVERY = 1000  # one anonymous ("" user_id) row per this many ids
UPPER_EVERY = 10  # i % 10 == 0: FIRST.LAST1234@DOMAIN.COM
TITLE_SLOT = 3  # i % 10 == 3: First.Last1234@Domain.com
PADDED_EVERY = 17  # i % 17 == 5: "  first.last1234@domain.com "

# Targets of the issue.
TARGET_SIZE = 1_000_000  # the size the ratio and memory targets apply to
TARGET_RATIO = 1.0
TARGET_RSS_MB = 400.0
LINEAR_TOLERANCE = 1.25  # net cost per million ids at the largest size vs the smallest
UNCHANGED_FACTOR = 2.0  # unchanged plan minus interpreter start <= this x sha256sum
UNCHANGED_MIN_SIZE = 1_000_000  # below this, fixed costs (spec, state) dominate the hash


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Prime lengths (53, 41, 11), so that consecutive ids get unrelated names: the file is not
# sorted, as exports are not.
FIRST = _words(
    "anna ben carla david eva felix greta hugo ida jonas klara leon mia noah olga paul quinn "
    "rosa simon tina uwe vera walter xenia yusuf zoe amir bianca chen dana emil fatima gustav "
    "hana ivan julia kai lena marco nina oskar petra rafael sofia theo ulla viktor wanda yara "
    "zeno aiko bruno celine"
)
LAST = _words(
    "schmidt mueller garcia rossi novak kowalski jensen silva martin dubois weber fischer "
    "wagner becker hoffmann lopez moreau bernard nielsen larsen kovacs horvat popescu ivanova "
    "petrov smith jones brown taylor wilson evans walker wright thompson white hughes edwards "
    "green hall wood harris"
)
DOMAINS = (
    "gmail.com",
    "yahoo.com",
    "outlook.com",
    "web.de",
    "gmx.net",
    "example.org",
    "mail.co.uk",
    "acme-corp.io",
    "posteo.de",
    "icloud.com",
    "free.fr",
)
COUNTRIES = ("DE", "US", "FR", "GB", "IT", "ES", "PL")
PLANS = ("free", "pro", "team", "enterprise", "trial")
HEADER = '"amplitude_id","user_id","gp:country","gp:plan"\r\n'

BASELINE_SCRIPT = r"""
set -euo pipefail
export LC_ALL=C
sort -u cohorts/original-ids.txt > baseline-old.txt &
old=$!
tail -n +2 cohorts/churn.csv | cut -d, -f2 | tr -d '"\r ' | tr A-Z a-z | grep -v '^$' \
    | sort -u > baseline-new.txt &
new=$!
wait "$old"
wait "$new"
comm -3 baseline-old.txt baseline-new.txt > baseline-diff.txt
"""


# --- the files -----------------------------------------------------------------------


def email(i: int) -> str:
    """Id number ``i``, normalised (lower case): ``firstname.lastname<i>@domain``."""
    return f"{FIRST[i % len(FIRST)]}.{LAST[i % len(LAST)]}{i}@{DOMAINS[i % len(DOMAINS)]}"


def exported(i: int, uid: str) -> str:
    """``uid`` as an Amplitude export may hold it: some upper-case, title-case or padded."""
    slot = i % UPPER_EVERY
    if slot == 0:
        uid = uid.upper()
    elif slot == TITLE_SLOT:
        local, _, domain = uid.partition("@")
        uid = f"{local.title()}@{domain.capitalize()}"
    if i % PADDED_EVERY == 5:
        uid = f"  {uid} "
    return uid


def _row(amplitude_id: int, uid: str) -> str:
    country = COUNTRIES[amplitude_id % 7]
    plan = PLANS[amplitude_id % 5]
    return f'"{amplitude_id}","{uid}","{country}","{plan}"\r\n'


@attrs.frozen
class Files:
    """One size's workspace: where things are and what the diff must be."""

    root: Path
    size: int
    removed: int  # ids of the original that churn.csv lacks
    added: int  # ids of churn.csv that the original lacks
    csv_bytes: int
    seconds: float  # time to write the files

    @property
    def original_csv(self) -> Path:
        return self.root / "cohorts" / "original.csv"

    @property
    def churn_csv(self) -> Path:
        return self.root / "cohorts" / "churn.csv"

    @property
    def original_txt(self) -> Path:
        return self.root / "cohorts" / "original-ids.txt"


def _chunks(size: int, step: int = 100_000) -> Iterator[range]:
    for start in range(0, size, step):
        yield range(start, min(size, start + step))


def write_files(root: Path, size: int) -> tuple[Files, list[str]]:
    """Write the three cohort files in one pass; return them and the original ids (normalised)."""
    began = time.perf_counter()
    (root / "cohorts").mkdir(parents=True, exist_ok=True)
    original_ids: list[str] = []
    removed = added = 0
    new_id = size  # new ids are numbered from size on
    base = 100_000_000_000  # Amplitude ids are 12-digit numbers
    with (
        (root / "cohorts" / "original.csv").open("w", encoding="utf-8", newline="") as orig,
        (root / "cohorts" / "churn.csv").open("w", encoding="utf-8", newline="") as churn,
        (root / "cohorts" / "original-ids.txt").open("w", encoding="utf-8", newline="") as txt,
    ):
        orig.write(HEADER)
        churn.write(HEADER)
        for chunk in _chunks(size):
            orig_rows, churn_rows = [], []
            ids = [email(i) for i in chunk]
            for i, uid in zip(chunk, ids, strict=True):
                row = _row(base + i, exported(i, uid))
                orig_rows.append(row)
                slot = i % CHURN_EVERY
                if slot != CHURN_SLOT:
                    churn_rows.append(row)
                else:
                    removed += 1
                if slot == CHURN_EVERY - 1:
                    churn_rows.append(_row(base + new_id, exported(new_id, email(new_id))))
                    new_id += 1
                    added += 1
                if i % ANONYMOUS_EVERY == ANONYMOUS_EVERY // 2:
                    anonymous = _row(base * 9 + i, "")
                    orig_rows.append(anonymous)
                    churn_rows.append(anonymous)
            orig.writelines(orig_rows)
            churn.writelines(churn_rows)
            txt.write("\n".join(ids) + "\n")
            original_ids.extend(ids)
    csv_bytes = (root / "cohorts" / "original.csv").stat().st_size
    files = Files(root, size, removed, added, csv_bytes, time.perf_counter() - began)
    return files, original_ids


def spec_text(cohort: str) -> str:
    return (
        "# bench/plan_scale.py\n"
        "version: 1\n"
        "destinations:\n"
        f"  {DESTINATION}:\n"
        "    base_url: sandbox\n"
        "lists:\n"
        f"  {LIST_NAME}:\n"
        f"    cohorts: [../cohorts/{cohort}]\n"
        "    max_removal: 1\n"
    )


def prepare_state(files: Files, original_ids: Sequence[str]) -> float:
    """Seed state-churn with the original set; copy it as state-same, marked as applied.

    Returns the seconds it took.
    """
    began = time.perf_counter()
    root = files.root
    for name, cohort in (("specs-churn", "churn.csv"), ("specs-same", "original.csv")):
        (root / name).mkdir(exist_ok=True)
        (root / name / "bench.yaml").write_text(spec_text(cohort), encoding="utf-8")
    key = list_key(DESTINATION, LIST_NAME)
    with StateStore(root / "state-churn") as store:
        store.seed_list(key, DESTINATION, LIST_NAME, LIST_ID, original_ids)
    shutil.copytree(root / "state-churn", root / "state-same")
    workspace = engine.load(root / "specs-same")
    spec = workspace.lists[0]
    digests = {ref.path: cohorts.file_digest(ref.path) for ref in spec.cohorts}
    with StateStore(root / "state-same") as store:
        store.update(key, input_digest=engine.input_digest(spec, digests))
        if key not in engine.unchanged_lists(workspace, store):
            raise RuntimeError("state-same does not take the plan's unchanged fast path")
    return time.perf_counter() - began


# --- measuring -----------------------------------------------------------------------


@attrs.frozen
class Run:
    wall: float  # seconds, launch to exit
    rss_mb: float  # peak resident set of the child (or of its largest waited-for descendant)
    code: int


def _maxrss_mb(kib_or_bytes: int) -> float:
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    return kib_or_bytes / (1024 * 1024 if sys.platform == "darwin" else 1024)


# Runs the measured commands. Linux carries a process's peak RSS across exec, so a child
# forked (or vforked) straight from this process, which holds millions of ids, would report at
# least this process's size. The launcher is a small interpreter started before any id is
# made: children forked from it start from its ~10 MB. It times fork to wait4 and answers
# with the wait4 figures of that one child, one JSON line per job.
LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    out, err = os.open(job["out"], flags, 0o644), os.open(job["err"], flags, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        try:
            os.chdir(job["cwd"])
            os.dup2(null, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            os.execvpe(job["argv"][0], job["argv"], job["env"])
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    for fd in (out, err, null):
        os.close(fd)
    answer = {"wall": wall, "maxrss": usage.ru_maxrss, "code": os.waitstatus_to_exitcode(status)}
    print(json.dumps(answer), flush=True)
"""


class Launcher:
    """A small process that runs commands and reports each one's wall time and peak RSS."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, argv: Sequence[str], cwd: Path, log_name: str) -> Run:
        """Run ``argv`` in ``cwd``; its stdout and stderr go to ``log_name``.out/.err there."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RECONCILER_", "GITHUB_"))}
        env["NO_COLOR"] = "1"
        job = {
            "argv": list(argv),
            "cwd": str(cwd),
            "out": str(cwd / f"{log_name}.out"),
            "err": str(cwd / f"{log_name}.err"),
            "env": env,
        }
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        answer = json.loads(self._proc.stdout.readline())
        return Run(answer["wall"], _maxrss_mb(answer["maxrss"]), answer["code"])

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait()


def plan_argv(which: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "reconciler",
        "plan",
        "--format",
        "json",
        "--specs",
        f"specs-{which}",
        "--state",
        f"state-{which}",
    ]


def best(runs: Sequence[Run]) -> Run:
    """The fastest wall time; the largest peak RSS (it hardly varies)."""
    return Run(min(r.wall for r in runs), max(r.rss_mb for r in runs), max(r.code for r in runs))


@attrs.frozen
class Figures:
    size: int
    plan: Run
    baseline: Run
    unchanged: Run
    sha256sum: Run
    plan_counts: tuple[int, int]  # adds, removes
    baseline_counts: tuple[int, int]
    unchanged_counts: tuple[int, int]
    set_us: float  # the set reference: microseconds per id

    @property
    def ratio(self) -> float:
        return self.plan.wall / self.baseline.wall


def _plan_counts(path: Path) -> tuple[int, int]:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
        return int(summary["adds"]), int(summary["removes"])
    except (OSError, ValueError, KeyError, TypeError):
        return (-1, -1)


def _comm_counts(path: Path) -> tuple[int, int]:
    """comm -3: lines only in the new file start with a tab (adds), the rest are removes."""
    adds = removes = 0
    with path.open("rb") as lines:
        for line in lines:
            if line.startswith(b"\t"):
                adds += 1
            else:
                removes += 1
    return adds, removes


def _failure(what: str, cwd: Path, log_name: str, run: Run) -> str:
    err = (cwd / f"{log_name}.err").read_text(encoding="utf-8", errors="replace")
    return f"{what} failed (exit {run.code}): {err.strip()[-2000:]}"


def measure(launcher: Launcher, files: Files, repeat: int, problems: list[str]) -> Figures:
    cwd = files.root
    runs: dict[str, list[Run]] = {"plan": [], "baseline": [], "unchanged": [], "sha256sum": []}
    commands = {
        "plan": plan_argv("churn"),
        "baseline": ["bash", "-c", BASELINE_SCRIPT],
        "unchanged": plan_argv("same"),
        "sha256sum": ["sha256sum", str(files.original_csv)],
    }
    for _ in range(repeat):  # interleaved, so that both sides see the same machine
        for name, argv in commands.items():
            run = launcher.run(argv, cwd, name)
            if run.code != 0:
                problems.append(_failure(f"{name} at {files.size:,} ids", cwd, name, run))
            runs[name].append(run)
    expected = (files.added, files.removed)
    figures = Figures(
        size=files.size,
        plan=best(runs["plan"]),
        baseline=best(runs["baseline"]),
        unchanged=best(runs["unchanged"]),
        sha256sum=best(runs["sha256sum"]),
        plan_counts=_plan_counts(cwd / "plan.out"),
        baseline_counts=_comm_counts(cwd / "baseline-diff.txt"),
        unchanged_counts=_plan_counts(cwd / "unchanged.out"),
        set_us=min(set_reference(files.size) for _ in range(repeat)),
    )
    for what, counts in (("plan", figures.plan_counts), ("baseline", figures.baseline_counts)):
        if counts != expected:
            problems.append(
                f"{files.size:,} ids: {what} found {counts[0]:,} adds / {counts[1]:,} removes, "
                f"expected {expected[0]:,} / {expected[1]:,}"
            )
    if figures.unchanged_counts != (0, 0):
        problems.append(f"{files.size:,} ids: the unchanged plan is not empty")
    return figures


# What a plan does to its ids at the core, alone: build a set of n distinct email-like strings
# from split text, then the two differences against a set of the same size. Its cost per id
# grows with n although the work is linear, because hash tables larger than the CPU caches make
# every insert and lookup a cache miss; it shows how much of the plan's growth is the machine.
SET_REFERENCE = """
import sys, time
n = int(sys.argv[1])
old = "\\n".join(f"user{i * 7919 % n:09d}@example.com" for i in range(n))
new = old.replace("user", "usex", n // 20)
started = time.perf_counter()
a, b = frozenset(old.split("\\n")), frozenset(new.split("\\n"))
changes = len(a - b) + len(b - a)
print((time.perf_counter() - started) / n * 1e6)
"""


def set_reference(size: int) -> float:
    """Microseconds per id of SET_REFERENCE at ``size``, in a fresh interpreter."""
    argv = [sys.executable, "-c", SET_REFERENCE, str(size)]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)


def interpreter_start(launcher: Launcher, cwd: Path, repeat: int) -> Run:
    """``python -m reconciler --version``: the fixed cost of any reconciler command."""
    argv = [sys.executable, "-m", "reconciler", "--version"]
    return best([launcher.run(argv, cwd, "version") for _ in range(repeat)])


def profile_plan(files: Files, top: int) -> str:
    """cProfile of the churn plan run in-process (``reconciler.cli.main``); the top functions."""
    argv = ["plan", "--format", "json"]
    argv += ["--specs", str(files.root / "specs-churn"), "--state", str(files.root / "state-churn")]
    profiler = cProfile.Profile()
    sink = io.StringIO()
    began = time.perf_counter()
    profiler.enable()
    reconciler_main(argv, stdout=sink, stderr=sink, env={"NO_COLOR": "1"})
    profiler.disable()
    wall = time.perf_counter() - began
    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    body = re.sub(r"\n{3,}", "\n\n", text.getvalue()).strip()
    return f"in-process plan of {files.size:,} ids: {wall:.2f} s under cProfile\n{body}"


# --- the report ----------------------------------------------------------------------


def _label(size: int) -> str:
    if size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size % 1000 == 0:
        return f"{size // 1000}k"
    return f"{size:,}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "OVER"


def report(results: Sequence[Figures], start: Run) -> str:
    lines = [
        f"{'size':>6} | {'plan s':>7} | {'baseline s':>10} | {'ratio':>5} | "
        f"{'plan RSS MB':>11} | {'baseline RSS MB':>15} | {'unchanged-plan s':>16} | "
        f"{'sha256sum s':>11}",
    ]
    lines.append("-" * len(lines[0]))
    for f in results:
        lines.append(
            f"{_label(f.size):>6} | {f.plan.wall:>7.2f} | {f.baseline.wall:>10.2f} | "
            f"{f.ratio:>5.2f} | {f.plan.rss_mb:>11.0f} | {f.baseline.rss_mb:>15.0f} | "
            f"{f.unchanged.wall:>16.2f} | {f.sha256sum.wall:>11.3f}"
        )
    lines += [
        "",
        f"interpreter start (python -m reconciler --version): {start.wall:.2f} s, "
        f"{start.rss_mb:.0f} MB",
        "",
    ]
    at_target = [f for f in results if f.size == TARGET_SIZE]
    if at_target:
        f = at_target[0]
        lines.append(
            f"plan time vs baseline at {_label(TARGET_SIZE)}: ratio {f.ratio:.2f} "
            f"(target <= {TARGET_RATIO:.1f})  [{_verdict(f.ratio <= TARGET_RATIO)}]"
        )
        lines.append(
            f"plan peak RSS at {_label(TARGET_SIZE)}: {f.plan.rss_mb:.0f} MB "
            f"(target <= {TARGET_RSS_MB:.0f} MB)  [{_verdict(f.plan.rss_mb <= TARGET_RSS_MB)}]"
        )
    else:
        lines.append(f"ratio and memory targets: n/a (they apply at {_label(TARGET_SIZE)} ids)")
    lines.append(_linearity(results, start))
    for f in results:
        if f.size < UNCHANGED_MIN_SIZE:
            continue
        net = f.unchanged.wall - start.wall
        allowed = UNCHANGED_FACTOR * f.sha256sum.wall
        lines.append(
            f"unchanged plan at {_label(f.size)}: {f.unchanged.wall:.2f} s, "
            f"{net:.2f} s beyond interpreter start vs sha256sum {f.sha256sum.wall:.2f} s "
            f"(target <= {UNCHANGED_FACTOR:g}x)  [{_verdict(net <= allowed)}]"
        )
    return "\n".join(lines)


def _linearity(results: Sequence[Figures], start: Run) -> str:
    per_million = []
    for f in results:
        millions = f.size / 1e6
        per_million.append(
            (
                f.plan.wall / millions,
                f.plan.rss_mb / millions,
                (f.plan.wall - start.wall) / millions,
                (f.plan.rss_mb - start.rss_mb) / millions,
            )
        )
    cells = ", ".join(
        f"{_label(f.size)}: {s:.2f} s/M {mb:.0f} MB/M (net {ns:.2f} s/M {nmb:.0f} MB/M)"
        for f, (s, mb, ns, nmb) in zip(results, per_million, strict=True)
    )
    line = f"linearity, per million ids (net: minus interpreter start): {cells}"
    reference = ", ".join(f"{_label(f.size)}: {f.set_us:.2f} us/id" for f in results)
    line += f"\nset reference (build two sets of n ids, diff them): {reference}"
    if len(results) < 2:
        return line + "  [n/a: needs two sizes]"
    small, large = per_million[0], per_million[-1]
    time_growth = large[2] / small[2] if small[2] > 0 else float("inf")
    rss_growth = large[3] / small[3] if small[3] > 0 else float("inf")
    set_growth = results[-1].set_us / results[0].set_us
    ok = time_growth <= LINEAR_TOLERANCE and rss_growth <= LINEAR_TOLERANCE
    return (
        f"{line}\nlinearity: net cost per million ids at {_label(results[-1].size)} vs "
        f"{_label(results[0].size)}: time x{time_growth:.2f}, memory x{rss_growth:.2f} "
        f"(target <= x{LINEAR_TOLERANCE:g}; the set reference alone: x{set_growth:.2f})  "
        f"[{_verdict(ok)}]"
    )


# --- the benchmark -------------------------------------------------------------------


def check_resources(root: Path, sizes: Sequence[int], keep: bool) -> str | None:
    """A reason not to start, when disk (or memory) is clearly short; None when fine."""
    per_id_bytes = 2 * 80 + 40 + 2 * 30  # two CSVs, the id list, two states (compressed)
    needed = per_id_bytes * (sum(sizes) if keep else max(sizes))
    free = shutil.disk_usage(root).free
    if free < 1.5 * needed:
        return f"{root}: {free / 1e9:.1f} GB free, about {needed / 1e9:.1f} GB needed"
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    needed_memory = 700 * max(sizes)  # the generator's id list plus a plan's sets
    if available < needed_memory:
        return f"{available / 1e9:.1f} GB of memory available, about {needed_memory / 1e9:.1f} GB"
    return None


def benchmark(root: Path, sizes: Sequence[int], repeat: int, keep: bool, profile: int) -> int:
    launcher = Launcher()  # first, while this process is small
    try:
        return _benchmark(launcher, root, sizes, repeat, keep, profile)
    finally:
        launcher.close()


def _benchmark(
    launcher: Launcher, root: Path, sizes: Sequence[int], repeat: int, keep: bool, profile: int
) -> int:
    problems: list[str] = []
    results = []
    start = None
    for size in sizes:
        where = root / f"ids-{_label(size)}"
        where.mkdir(parents=True, exist_ok=False)
        files, original_ids = write_files(where, size)
        seeded = prepare_state(files, original_ids)
        del original_ids
        print(
            f"{_label(size)}: wrote {files.csv_bytes / 1e6:.0f} MB per CSV "
            f"(churn: -{files.removed:,} +{files.added:,}) in {files.seconds:.1f} s, "
            f"seeded the state in {seeded:.1f} s; timing (best of {repeat})...",
            flush=True,
        )
        if start is None:
            start = interpreter_start(launcher, where, max(repeat, 5))  # noisy: more runs
        results.append(measure(launcher, files, repeat, problems))
        if profile:
            print(profile_plan(files, profile), flush=True)
        if not keep:
            shutil.rmtree(where)
    assert start is not None
    print()
    print(report(results, start))
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return 1 if problems else 0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=(
            "Time `reconciler plan --format json` on Amplitude cohorts of 100 k to 5 M ids with "
            "5 % churn against a seeded state, next to `sort -u` + `comm -3` of the same ids, "
            "and the unchanged fast path next to `sha256sum`."
        ),
        epilog=(
            "examples:\n"
            "  .venv/bin/python bench/plan_scale.py                      # 100k,1m,5m\n"
            "  .venv/bin/python bench/plan_scale.py --sizes 100k,1m --repeat 1\n"
            "  .venv/bin/python bench/plan_scale.py --sizes 1m --profile 25\n"
            "  .venv/bin/python bench/plan_scale.py --sizes 100k --keep /tmp/plan-scale"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sizes",
        type=size_list(CHURN_EVERY),
        default=size_list(CHURN_EVERY)(DEFAULT_SIZES),
        metavar="LIST",
        help=f"comma-separated cohort sizes, k and m suffixes allowed (default {DEFAULT_SIZES})",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        metavar="N",
        help="runs per command; the fastest counts (default 3)",
    )
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="TOP",
        help="also run each churn plan in-process under cProfile and print the TOP functions",
    )
    parser.add_argument(
        "--keep",
        metavar="DIR",
        type=Path,
        help="write the workspaces in DIR (new or empty) and keep them, instead of a temp dir",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if not sys.platform.startswith("linux"):
        print("note: peak RSS figures assume Linux (os.wait4, ru_maxrss)", file=sys.stderr)
    if args.keep is None:
        with tempfile.TemporaryDirectory(prefix="reconciler-plan-scale-") as tmp:
            short = check_resources(Path(tmp), args.sizes, keep=False)
            if short:
                parser.error(f"not enough room: {short}")
            return benchmark(Path(tmp), args.sizes, args.repeat, False, args.profile)
    root = args.keep.resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        parser.error(f"--keep {root}: not an empty directory")
    root.mkdir(parents=True, exist_ok=True)
    short = check_resources(root, args.sizes, keep=True)
    if short:
        parser.error(f"not enough room: {short}")
    code = benchmark(root, args.sizes, args.repeat, True, args.profile)
    print(f"workspaces kept in {root}")
    return code


if __name__ == "__main__":
    sys.exit(main())
