"""ml_training_sensor decides retraining as `plumbline sync` does (ml/plan.py retraining): on a real
Dagster instance and a DuckDB warehouse file holding a training set, a restatement that moves a split
window by less than training.retrain_min_changed_share asks for no run, records the
training_data_current WARN once and says why; a larger one asks for the training run."""

from __future__ import annotations

import subprocess
import sys

import dagster as dg
import pytest
import yaml

from orchestration import names
from orchestration.automation import ml_sensors
from orchestration.ml import config, training_set
from orchestration.ml.layer import FEATURES, MODEL, TRAINING_SET
from orchestration.warehouse_resource import Warehouse
from tests.unit.test_ml_plan import JANUARY, days, featured, warehouse

SPLIT_DAYS = days("2013-01-01", "2013-01-20")
CHECK = dg.AssetCheckKey(MODEL, names.TRAINING_DATA_CURRENT)


@pytest.fixture
def trained(tmp_path, monkeypatch):
    """A January ML configuration (share 10%), a warehouse file whose training set holds every split day
    (10 flights each), and an instance that saw those features materialized, then the training set."""
    doc = yaml.safe_load(config.DEFAULT.read_text())
    doc["split"] = {"train": {"start": "2013-01-01", "end": "2013-01-10"},
                    "validation": {"start": "2013-01-11", "end": "2013-01-15"},
                    "test": {"start": "2013-01-16", "end": "2013-01-20"}}
    doc["training"]["retrain_min_changed_share"] = 0.1
    (tmp_path / "ml.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(tmp_path / "ml.yaml"))
    path = tmp_path / "warehouse.duckdb"
    con = warehouse(JANUARY, path=str(path))
    featured(con, SPLIT_DAYS)
    training_set.build(con, config.load())
    con.close()
    with dg.DagsterInstance.ephemeral() as instance:
        for d in SPLIT_DAYS:
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=FEATURES, partition=d))
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=TRAINING_SET))
        yield instance, Warehouse(path=str(path))


def restate(instance: dg.DagsterInstance, wh: Warehouse, day: str, sql: str) -> None:
    """What a build_features run of a restated day leaves: its features changed, a materialization recorded."""
    with wh.connect() as con:
        con.execute(sql)
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=FEATURES, partition=day))


def tick(instance: dg.DagsterInstance, wh: Warehouse, cursor: str | None):
    sensor = ml_sensors.training_sensor("train_model", "build_features")
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources={"warehouse": wh}) as context:
        return sensor.evaluate_tick(context)


def checks(instance: dg.DagsterInstance) -> list[dg.AssetCheckEvaluation]:
    return [r.evaluation for r in instance.event_log_storage.get_asset_check_execution_history(CHECK, limit=10)]


def test_a_small_restatement_is_deferred_and_recorded_once_and_a_large_one_retrains(trained):
    instance, wh = trained
    start = tick(instance, wh, None)
    assert "none inside the split windows and newer than the last training set" in start.skip_message

    # two late flights on a test-window day: 2 of its 50 flights, below the 10% share
    restate(instance, wh, "2013-01-17",
            "INSERT INTO ml.flight_features (event_date, carrier, flight, origin, co_flights, outcome, delayed) "
            "VALUES ('2013-01-17', 'UA', 5001, 'EWR', 5, 'arrived', true), ('2013-01-17', 'UA', 5002, 'EWR', 5, 'arrived', false)")
    deferred = tick(instance, wh, start.cursor)
    assert not deferred.run_requests
    assert deferred.skip_message.startswith("retraining deferred: 2 labelled flight(s) added, removed or relabelled "
                                            "on 1 day(s) since the last training set (test 4.00%; retraining above 10.00%")
    assert "plumbline sync --retrain, or launch the train_model job from the UI" in deferred.skip_message
    (warn,) = checks(instance)
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    assert warn.metadata["restated_days"].value == ["2013-01-17"] and warn.metadata["changed_flights"].value == 2

    # the same tick evaluated again, or a later one with nothing new, records nothing more
    assert tick(instance, wh, start.cursor).skip_message == deferred.skip_message
    assert "none inside the split windows" in tick(instance, wh, deferred.cursor).skip_message
    assert len(checks(instance)) == 1

    # every flight of another test-window day relabelled: with the deferred two, 12 of 50 flights
    restate(instance, wh, "2013-01-19", "UPDATE ml.flight_features SET delayed = NOT delayed WHERE event_date = '2013-01-19'")
    due = tick(instance, wh, deferred.cursor)
    (request,) = due.run_requests
    assert request.run_key.startswith("train:")
    assert request.tags["plumbline/changed_feature_days"] == "2013-01-19 .. 2013-01-19 (1)"
    assert len(checks(instance)) == 1, "a retraining records no deferral"


def test_moved_split_windows_or_no_training_set_retrain_whatever_changed(trained, tmp_path, monkeypatch):
    instance, wh = trained
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=FEATURES, partition="2013-01-17"))
    assert "retraining deferred: 0 labelled flight(s)" in tick(instance, wh, None).skip_message, "features alone moved"

    doc = yaml.safe_load((tmp_path / "ml.yaml").read_text())
    doc["split"]["train"]["end"] = "2013-01-09"
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(tmp_path / "moved.yaml"))
    assert len(tick(instance, wh, None).run_requests) == 1
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(tmp_path / "ml.yaml"))

    with wh.connect() as con:
        con.execute("DROP TABLE ml.training_set_provenance")
    assert len(tick(instance, wh, None).run_requests) == 1


def test_a_tick_never_waits_for_a_writer_and_judges_the_change_later(trained):
    instance, wh = trained
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=FEATURES, partition="2013-01-19"))
    start = tick(instance, wh, None).cursor
    with wh.connect() as con:
        con.execute("UPDATE ml.flight_features SET delayed = NOT delayed WHERE event_date = '2013-01-19'")
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=FEATURES, partition="2013-01-19"))
    # DuckDB allows one writing process per file: another process holds it, as a rebuild run would
    writer = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; con = duckdb.connect(sys.argv[1]); "
                               "print('open', flush=True); sys.stdin.read()", str(wh.db_path())],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "open"
        busy = tick(instance, wh, start)
        assert busy.skip_message.startswith("the warehouse is busy, retraining is judged at a later tick")
        assert busy.cursor == start, "the cursor is kept, so the change is judged when the file is free"
    finally:
        writer.communicate("")
    assert len(tick(instance, wh, start).run_requests) == 1
