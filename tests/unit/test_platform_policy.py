"""The platform policy orchestration/definitions.py applies to every asset, schedule and sensor:
freshness from the contracts' SLAs, the automation conditions core and marts follow (evaluated on a
real persistent instance, tick after tick, as the automation-condition sensor does), and schedules
and sensors that say whether they run by default and what turning them on does."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg
import pytest

from orchestration import definitions
from orchestration.definitions import defs

CORE, MARTS = dg.AssetKey(["core", "flights"]), dg.AssetKey(["marts", "carrier_daily"])
BUILT = ["2013-01-01", "2013-01-02", "2013-01-03"]


@pytest.fixture(scope="module")
def specs() -> dict[str, dg.AssetSpec]:
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def window(spec: dg.AssetSpec) -> timedelta | None:
    return spec.freshness_policy.fail_window.to_timedelta() if spec.freshness_policy else None


def test_raw_freshness_is_the_contract_sla_and_everything_built_from_it_inherits_the_tightest(specs):
    assert window(specs["raw/flights"]) == timedelta(hours=30)  # contracts/flights.yaml: latency 30 h
    assert window(specs["raw/weather"]) == timedelta(days=8)  # latency 8 d
    assert window(specs["raw/planes"]) == timedelta(days=365)  # a snapshot: its frequency, 365 d
    for derived in ("core/flights", "marts/carrier_daily", "ml/flight_features", "ml/flight_predictions"):
        assert window(specs[derived]) == timedelta(hours=30), derived
    for none in ("bronze/flights", "ml/training_set", "ml/delay_model", "ml/model_evaluation"):
        assert specs[none].freshness_policy is None, none


def test_every_schedule_or_sensor_off_by_default_says_so_and_what_turning_it_on_does():
    stopped = [s for s in defs.schedules if s.default_status == dg.DefaultScheduleStatus.STOPPED]
    stopped += [s for s in defs.sensors if s.default_status == dg.DefaultSensorStatus.STOPPED]
    assert {s.name for s in stopped} == {"rebuild_flights_daily", "rebuild_weather_daily",
                                         "observe_operational_tables_hourly"}
    for s in stopped:
        assert s.description.startswith("Off by default") and "Turned on, it runs" in s.description, s.name


def test_alert_and_automation_sensors_run_by_default():
    running = {s.name for s in defs.sensors if s.default_status == dg.DefaultSensorStatus.RUNNING}
    assert {"alert_on_run_failure", "alert_on_check_failure", "follow_snapshots_sensor"} <= running
    # the automation-condition sensor of core and marts is ours, so Dagster adds no default one (stopped) for them
    assert "default_automation_condition_sensor" not in {s.name for s in defs.get_repository_def().sensor_defs}


@pytest.fixture
def instance(dagster_home_dir):
    with dg.DagsterInstance.local_temp(tempdir=str(dagster_home_dir("automation"))) as inst:
        yield inst


def materialized(instance: dg.DagsterInstance, key: dg.AssetKey, partitions=(None,)) -> None:
    for p in partitions:
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=p))


def test_a_changed_snapshot_rebuilds_every_built_core_partition_with_marts_and_nothing_else(instance):
    select = dg.AssetSelection.assets(CORE, MARTS)
    for key in (CORE, MARTS):
        materialized(instance, key, BUILT)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select)
    assert result.total_requested == 0, "a first tick replays nothing"

    materialized(instance, dg.AssetKey(["raw", "airlines"]))
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select, cursor=result.cursor)
    assert result.get_requested_partitions(CORE) == set(BUILT), "every built partition, none never built"
    assert result.get_requested_partitions(MARTS) == set(BUILT), "marts in the same tick, so in the same run"

    for key in (CORE, MARTS):  # the run the tick requested
        materialized(instance, key, BUILT)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select, cursor=result.cursor)
    assert result.total_requested == 0, "handled: nothing twice"

    # a delivery restating raw.flights is the rebuild sensor's: its rebuild job runs core and marts too
    materialized(instance, dg.AssetKey(["raw", "flights"]), ["2013-01-02"])
    materialized(instance, dg.AssetKey(["raw", "weather"]), ["2013-01-02"])
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select, cursor=result.cursor)
    assert result.total_requested == 0


def test_snapshots_followed_are_the_contracts_without_partitions():
    assert {k.path[1] for k in definitions.SNAPSHOT_KEYS} == {"airlines", "airports", "planes"}


def test_predictions_say_which_partitions_are_meant_to_exist(specs):
    from orchestration.ml import config

    expected = specs["ml/flight_predictions"].metadata[definitions.EXPECTED_PARTITIONS].value
    assert expected["start"] == config.load().scoring_start.isoformat() == "2013-10-16"
    assert expected["end"] == "2013-12-31" and "scoring.start" in expected["why"]


def test_raw_weather_says_its_source_ends_before_its_partitions(specs):
    weather = specs["raw/weather"]
    expected = weather.metadata[definitions.EXPECTED_PARTITIONS].value
    assert (expected["start"], expected["end"]) == ("2013-01-01", "2013-12-30") and "2013-12-31" in expected["why"]
    # the partitions keep the last day: ml/flight_features 2013-12-31 reads raw/weather 2013-12-31
    assert weather.partitions_def.get_last_partition_key() == "2013-12-31"
    assert definitions.EXPECTED_PARTITIONS not in specs["raw/flights"].metadata  # its source fills every partition


def test_sla_durations_are_read_in_fixed_length_units_only():
    import dataclasses

    flights = definitions.CONTRACTS["flights"]
    assert flights.sla_duration("latency") == timedelta(hours=30) and flights.sla_duration("frequency") == timedelta(days=1)
    assert flights.sla_duration("retention") is None
    odd = dataclasses.replace(flights, sla={"latency": (2, "weeks"), "frequency": (1, "month")})
    assert odd.sla_duration("latency") == timedelta(days=14) and odd.sla_duration("frequency") is None


def test_a_run_that_rebuilt_a_snapshot_and_core_together_is_not_followed_again(instance):
    from orchestration.ml.layer import DAILY

    # stand-ins with the real keys: one real run rebuilds raw/airlines and core/flights 2013-01-02
    airlines = dg.AssetSpec(["raw", "airlines"])

    @dg.multi_asset(specs=[airlines])
    def stand_in_airlines():
        pass

    @dg.asset(key=CORE, partitions_def=DAILY, deps=[airlines.key])
    def stand_in_core():
        pass

    select = dg.AssetSelection.assets(CORE, MARTS)
    for key in (CORE, MARTS):
        materialized(instance, key, BUILT)
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select)
    assert dg.materialize([stand_in_airlines, stand_in_core], instance=instance, partition_key="2013-01-02").success
    result = dg.evaluate_automation_conditions(defs, instance, asset_selection=select, cursor=result.cursor)
    assert result.get_requested_partitions(CORE) == {"2013-01-01", "2013-01-03"}, "2013-01-02 was rebuilt in that run"
