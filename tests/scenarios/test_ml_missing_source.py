"""The ML layer on a home where a source has not landed: a month of real flights with their
dimensions and no weather at all. Training leaves the empty weather features out and says so in the
run log, the model's materialization and its MLflow run; it never dies inside scikit-learn."""

from __future__ import annotations

import shutil

import dagster as dg
import pytest
import yaml

from orchestration.demo.feed import write_feed
from orchestration.ml import config, features
from orchestration.ops.sync import instance, sync
from orchestration.resources import resources

pytestmark = pytest.mark.slow  # a month synced and a model trained on it

WEATHER = ["temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib"]


@pytest.fixture
def january_without_weather(plumbline_home, tmp_path, dagster_home_dir, monkeypatch):
    """January's flights, planes, airlines and airports landed; weather not yet; split windows in January."""
    write_feed(plumbline_home, profile="clean")
    shutil.rmtree(plumbline_home / "landing" / "weather")
    for month in (plumbline_home / "landing" / "flights" / "2013").iterdir():
        if month.name != "01":
            shutil.rmtree(month)
    doc = yaml.safe_load(config.DEFAULT.read_text())
    doc["split"] = {"train": {"start": "2013-01-01", "end": "2013-01-20"},
                    "validation": {"start": "2013-01-21", "end": "2013-01-25"},
                    "test": {"start": "2013-01-26", "end": "2013-01-31"}}
    doc["scoring"]["start"] = "2013-01-26"
    doc["promotion"]["min_carrier_flights"] = 100
    cfg = tmp_path / "ml.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(cfg))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home_dir("ml-no-weather")))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    return plumbline_home


def test_features_with_no_values_are_left_out_of_training_with_a_note(january_without_weather):
    lines: list[str] = []
    report = sync(say=lines.append)
    assert report.ok, "\n".join(lines)

    inst = instance()
    model_key = dg.AssetKey(["ml", "delay_model"])
    mat = inst.get_latest_materialization_event(model_key).asset_materialization
    left_out = mat.metadata["left_out_features"].value
    assert sorted(left_out) == sorted(WEATHER)
    assert all("no values in the train window" in why and "raw.weather" in why for why in left_out.values())

    records = inst.get_records_for_run(mat_run_id(inst, model_key)).records
    messages = [r.event_log_entry.user_message for r in records]
    assert any("left out of training" in m and "wind_gust" in m and "land weather" in m for m in messages), messages

    cfg = config.load()
    version = str(mat.metadata["model_version"].value)
    models = resources()["model_registry"]
    provenance = models.artifact(models.version(cfg, version).run_id, "provenance.json")
    assert sorted(provenance["left_out_features"]) == sorted(WEATHER)
    assert provenance["features"] == [f for f in features.MODEL_INPUTS if f not in WEATHER]
    # the model scores the test window with the features it was trained on
    assert inst.get_latest_materialization_event(dg.AssetKey(["ml", "flight_predictions"])) is not None


def mat_run_id(inst: dg.DagsterInstance, key: dg.AssetKey) -> str:
    return inst.get_latest_materialization_event(key).run_id
