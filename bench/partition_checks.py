"""Benchmark: what the per-partition contract verdicts (contract_by_partition) add to a raw range
rebuild, on a copy of a synced home, side by side with the asset-level checks in the same process.

    .venv/bin/python bench/partition_checks.py --home DIR [--workdir DIR]

For each partitioned source: rebuild every built partition as one range (as a range run does), then
time, in CPU seconds of this process: the asset-level checks' read (checks.observe without the day
findings) and judgement (checks.judge, Great Expectations), against the day findings (checks._days)
and the per-partition verdicts (checks.day_verdicts). Events are not timed here: each verdict is one
ASSET_CHECK_EVALUATION, one per partition and asset; bench/sync.py counts them and times store_event.
It prints figures and exits 0 whatever they are.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--home", type=Path, required=True, help="a synced PLUMBLINE_HOME (not changed: copied)")
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-pchecks-"))
    work.mkdir(parents=True, exist_ok=True)
    for name in ("warehouse.duckdb", "bronze"):
        src, dst = args.home / name, work / name
        shutil.copytree(src, dst, dirs_exist_ok=True) if src.is_dir() else shutil.copy2(src, dst)
    os.environ["PLUMBLINE_HOME"] = str(work)

    from orchestration import catalog
    from orchestration.quality import checks
    from orchestration.rebuild import partitions
    from orchestration.warehouse_resource import Warehouse

    rows = []
    for contract in (c for c in catalog.contracts().values() if c.partitioning):
        with Warehouse().connect() as con:
            keys = [r[0] for r in con.execute(
                f"SELECT DISTINCT strftime(event_date, '%Y-%m-%d') FROM {contract.table} ORDER BY 1").fetchall()]
            accounts = partitions.rebuild(con, contract, keys, "bench").accounts
            t = time.process_time()
            seen = checks.observe(con, contract, accounts)  # includes the day findings
            t_observe = time.process_time() - t
            t = time.process_time()
            checks._days(con, contract, accounts)
            t_days = time.process_time() - t
        t = time.process_time()
        checks.judge(contract, seen)
        t_judge = time.process_time() - t
        t = time.process_time()
        verdicts = checks.day_verdicts(contract, seen)
        t_verdicts = time.process_time() - t
        base = t_observe - t_days + t_judge
        added = t_days + t_verdicts
        rows.append((contract.name, len(keys), sum(not v.passed for v in verdicts.values()), base, t_days, t_verdicts, added / base))
    print(f"home {args.home}, copy in {work}")
    print("| source | partitions | failed days | asset-level checks CPU s | day findings CPU s | day verdicts CPU s | added / asset-level |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, n, bad, base, days, verdicts, ratio in rows:
        print(f"| {name} | {n} | {bad} | {base:.2f} | {days:.2f} | {verdicts:.3f} | {ratio:.2f}x |")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
