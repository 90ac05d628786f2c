"""Benchmark: the same backfill of raw → core → marts over the demo year, split in 4 ranges launched
at once, on the embedded profile (one DuckDB file, one writer at a time) and on the production
profile (DuckLake on a PostgreSQL catalog, a PostgreSQL Dagster instance, steps on Celery workers
over RabbitMQ) with 1 worker and with 2 workers. This is a benchmark, not a test.

    .venv/bin/python bench/scale.py [--days 365] [--ranges 4] [--workdir DIR]

Needs PostgreSQL (PLUMBLINE_TEST_POSTGRES, default postgresql://postgres@127.0.0.1:5432) and RabbitMQ
(PLUMBLINE_TEST_AMQP, default amqp://guest:guest@127.0.0.1:5672) with `rabbitmqctl` for a vhost of
its own; it creates its databases, vhost and directories and removes them at the end, with the
production tests' support module (tests/production_support.py).

Setup, not timed: the demo feed written once; for each mode a fresh home whose deliveries are
ingested into bronze and whose dimension snapshots are built. Timed: the 4 `rebuild_flights` runs
(raw.flights, core.flights, marts.carrier_daily), each a `plumbline`-style Runner in its own process,
started together and waited for. Peak memory is the largest sum of the resident set sizes of every
process of the mode (runner processes, workers and their children), sampled every 0.2 s. Then the
DuckLake commit overhead: one day of marts.carrier_daily replaced 20 times on each warehouse.
Every mode must leave the same rows in the three tables; the script checks it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from production_support import clean_env, services, start_workers, stop  # noqa: E402 (after the path)

TABLES = ("raw.flights", "core.flights", "marts.carrier_daily")


# ----------------------------------------------------------------------------- child processes

def child(job: str, label: str, start: str | None, end: str | None) -> int:
    """One run in this process, as `plumbline sync` would run it; exit 0 when it succeeded."""
    from orchestration.ops.sync import Runner
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START

    tags = {RANGE_START: start, RANGE_END: end} if start else None
    return 0 if Runner(lambda *_: None).run(job, label, tags=tags) else 1


def replace_timing(repeats: int, day: str) -> float:
    """Seconds per replace of one day of marts.carrier_daily on this process's warehouse."""
    from assets.marts import COLUMNS, SELECT
    from orchestration.rebuild import partitions
    from orchestration.resources import resources

    ddl = "CREATE TABLE IF NOT EXISTS marts.carrier_daily (" + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")"
    with resources()["warehouse"].connect() as con:
        partitions.replace_partitions(con, "marts.carrier_daily", ddl, [day], SELECT)  # warm
        t0 = time.perf_counter()
        for _ in range(repeats):
            partitions.replace_partitions(con, "marts.carrier_daily", ddl, [day], SELECT)
        return (time.perf_counter() - t0) / repeats


def tables_hash() -> dict[str, str]:
    from orchestration.resources import resources

    out = {}
    with resources()["warehouse"].connect(read_only=True) as con:
        for t in TABLES:
            cols = [c for (c,) in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ? "
                "AND table_catalog = current_database() ORDER BY ordinal_position", t.split(".")).fetchall()]
            rows = con.execute(f"SELECT {', '.join(cols)} FROM {t} ORDER BY ALL").fetchall()
            out[t] = f"{len(rows)} rows {hashlib.sha256(repr(rows).encode()).hexdigest()[:16]}"
    return out


# ----------------------------------------------------------------------------- the parent

def _tree(pid: int) -> list[int]:
    """pid and its descendants, from /proc (Linux)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                todo.extend(int(c) for c in task.read_text().split())
            except OSError:
                pass
    return found


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Memory:
    """Peak total RSS of a set of process trees, sampled in a thread."""

    def __init__(self):
        self.roots: list[int] = []
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_rss(p) for root in list(self.roots) for p in _tree(root)))
            self._stop.wait(0.2)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_child(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, __file__, "--child", *args], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, what: str) -> bool:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        print(f"  {what} FAILED:\n{out[-3000:]}", flush=True)
    return proc.returncode == 0


def ranges(days: list[str], n: int) -> list[tuple[str, str]]:
    size = -(-len(days) // n)
    return [(days[i], days[min(i + size, len(days)) - 1]) for i in range(0, len(days), size)]


def measure(mode: str, env: dict, worker_procs: list, job: str, spans: list, days: list[str]) -> dict:
    """Setup (not timed), then the timed backfill of one mode, its tables' hashes and the replace timing."""
    from orchestration import definitions

    print(f"{mode}: setup (ingest and snapshots, not timed) ...", flush=True)
    for setup_job in (definitions.INGEST_JOB, definitions.SNAPSHOTS_JOB):
        assert finish(run_child(env, setup_job, "setup"), setup_job)
    memory = Memory()
    memory.roots.extend(p.pid for p in worker_procs)
    t0 = time.perf_counter()
    procs = [run_child(env, job, f"[{a} .. {b}]", a, b) for a, b in spans]
    memory.roots.extend(p.pid for p in procs)
    ok = all([finish(p, f"{job} {a}..{b}") for p, (a, b) in zip(procs, spans)])
    seconds = time.perf_counter() - t0
    peak = memory.stop()
    hashes = json.loads(subprocess.run([sys.executable, __file__, "--child", "hash"], env=env, cwd=REPO,
                                       capture_output=True, text=True, check=True).stdout)
    replace = json.loads(subprocess.run([sys.executable, __file__, "--child", "replace", "20", days[len(days) // 2]],
                                        env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout)
    print(f"{mode}: {seconds:.1f} s, peak {peak / 2**20:.0f} MB, {'ok' if ok else 'FAILED'}; "
          f"one-day replace {replace * 1000:.0f} ms", flush=True)
    return {"seconds": seconds, "ok": ok, "peak_mb": peak / 2**20, "hashes": hashes, "replace_s": replace}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--ranges", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stopped (timeout, kill): drop the databases and vhost on the way out
    if args.child:
        if args.child[0] == "replace":
            print(json.dumps(replace_timing(int(args.child[1]), args.child[2])))
            return 0
        if args.child[0] == "hash":
            print(json.dumps(tables_hash()))
            return 0
        job, label, *bounds = args.child
        return child(job, label, *(bounds or [None, None]))

    from orchestration import definitions
    from orchestration.demo.feed import write_feed
    from orchestration.rebuild.partitions import partition_range

    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    days = partition_range("2013-01-01", (dt.date(2013, 1, 1) + dt.timedelta(days=args.days - 1)).isoformat())
    spans = ranges(days, args.ranges)
    feed = work / "feed"
    if not (feed / "landing").is_dir():
        write_feed(feed, profile="demo", seed=13)
        # deliveries made after the last day's morning are left out: the setup ingests only what the backfill reads
        cutoff = (dt.date.fromisoformat(days[-1]) + dt.timedelta(days=1)).strftime("%Y%m%dT1200Z")
        for path in (feed / "landing").rglob("*_2013*"):
            if path.name.split("_", 1)[1][:14] > cutoff:
                path.unlink()
    job = definitions.rebuild_job_name("flights")
    results: dict[str, dict] = {}
    try:
        for mode, workers in (("embedded", 0), ("production, 1 worker", 1), ("production, 2 workers", 2)):
            home = work / f"home-{workers}"
            shutil.rmtree(home, ignore_errors=True)
            shutil.copytree(feed / "landing", home / "landing")
            env = {**clean_env(), "PLUMBLINE_HOME": str(home), "PLUMBLINE_SETTLE_SECONDS": "0"}
            with contextlib.ExitStack() as stack:
                worker_procs = []
                if workers:  # its own databases and vhost, dropped when the mode is done
                    svc = stack.enter_context(services("plumbline_bench_"))
                    env = svc.env(home, base=env)
                    worker_procs = start_workers(env, home, [f"{svc.tag}-w{i}" for i in range(workers)], None,
                                                 loglevel="WARNING")
                    stack.callback(stop, worker_procs)
                results[mode] = measure(mode, env, worker_procs, job, spans, days)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)

    base = results["embedded"]
    one = results.get("production, 1 worker")
    same = len({json.dumps(r["hashes"], sort_keys=True) for r in results.values()}) == 1
    print()
    print(f"{len(days)} partitions ({days[0]} .. {days[-1]}) in {len(spans)} ranges launched at once; "
          f"tables identical in every mode: {same}")
    for t in TABLES:
        print(f"  {t}: {base['hashes'][t]}")
    print()
    print("| mode | wall s | vs embedded | vs 1 worker | peak MB | one-day replace ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        vs_one = f"{one['seconds'] / r['seconds']:.2f}x faster" if one and mode.startswith("production") else ""
        print(f"| {mode} | {r['seconds']:.1f} | {r['seconds'] / base['seconds']:.2f}x | {vs_one} | "
              f"{r['peak_mb']:.0f} | {r['replace_s'] * 1000:.0f} |")
    if one:
        print(f"\nDuckLake commit overhead per partition replace: "
              f"{(one['replace_s'] - base['replace_s']) * 1000:.0f} ms (one day of marts.carrier_daily, 20 repeats)")
    return 0 if same and all(r["ok"] for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
