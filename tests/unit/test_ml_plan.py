"""ml/plan: which feature days a change makes stale (its rolling window included), whether training
runs (a split window touched, every window covered enough) and which days are scored. On an
in-memory DuckDB holding the days each table has, with a January-sized ML configuration."""

from __future__ import annotations

import datetime as dt

import duckdb
import pytest
import yaml

from orchestration import catalog
from orchestration.ml import config
from orchestration.ml.plan import MlPlan, coverage, days_in, plan


def days(first: str, last: str) -> list[str]:
    start, end = dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    return [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory):
    doc = yaml.safe_load(config.DEFAULT.read_text())
    doc["split"] = {"train": {"start": "2013-01-01", "end": "2013-01-10"},
                    "validation": {"start": "2013-01-11", "end": "2013-01-15"},
                    "test": {"start": "2013-01-16", "end": "2013-01-20"}}
    doc["scoring"]["start"] = "2013-01-16"
    path = tmp_path_factory.mktemp("ml") / "ml.yaml"
    path.write_text(yaml.safe_dump(doc))
    loaded = config.load(path)
    assert (loaded.rolling_days, loaded.min_window_coverage) == (7, 0.9)  # what the expectations below assume
    return loaded


@pytest.fixture(scope="module")
def daily():
    return catalog.partitions_def(catalog.contracts()["flights"])


def warehouse(built: list[str], featured: list[str] | None = None, scored: list[str] | None = None):
    con = duckdb.connect()
    con.execute("CREATE SCHEMA core; CREATE SCHEMA ml")
    for table, present in (("core.flights", built), ("ml.flight_features", featured), ("ml.flight_predictions", scored)):
        if present is not None:
            con.execute(f"CREATE TABLE {table} (event_date DATE, carrier VARCHAR)")
            con.executemany(f"INSERT INTO {table} VALUES (?::DATE, 'UA'), (?::DATE, 'AA')", [[d, d] for d in present])
    return con


JANUARY = days("2013-01-01", "2013-01-31")


def test_days_in_reads_distinct_event_dates_and_nothing_from_a_missing_table():
    con = warehouse(["2013-01-02", "2013-01-01"])
    assert days_in(con, "core.flights") == {"2013-01-01", "2013-01-02"}
    assert days_in(con, "ml.flight_features") == set()


def test_coverage_is_the_share_of_each_split_windows_days_that_have_features(cfg):
    assert coverage(cfg, set(days("2013-01-01", "2013-01-17"))) == {"train": 1.0, "validation": 1.0, "test": 0.4}


def test_a_first_run_features_every_built_day_trains_and_scores_from_scoring_start(cfg, daily):
    p = plan(warehouse(JANUARY), cfg, daily, JANUARY, [], has_training_set=False)
    assert p.feature_days == JANUARY
    assert p.retrain and p.waiting == ""
    assert p.score_days == days("2013-01-16", "2013-01-31")


def test_a_changed_day_restates_the_feature_days_whose_window_reads_it(cfg, daily):
    con = warehouse(JANUARY, JANUARY, days("2013-01-16", "2013-01-31"))
    p = plan(con, cfg, daily, ["2013-01-25"], [], has_training_set=True)
    assert p.feature_days == days("2013-01-25", "2013-01-31"), "the day and the 7 after it, as far as flights are built"
    assert not p.retrain, "no split window reads those days"
    assert p.score_days == p.feature_days


def test_a_change_inside_a_split_window_retrains(cfg, daily):
    con = warehouse(JANUARY, JANUARY, days("2013-01-16", "2013-01-31"))
    p = plan(con, cfg, daily, ["2013-01-05"], [], has_training_set=True)
    assert p.feature_days == days("2013-01-05", "2013-01-12")
    assert p.retrain and p.score_days == []


def test_another_input_changes_only_its_own_day(cfg, daily):
    con = warehouse(JANUARY, JANUARY, days("2013-01-16", "2013-01-31"))
    p = plan(con, cfg, daily, [], ["2013-01-28"], has_training_set=True)
    assert (p.feature_days, p.retrain, p.score_days) == (["2013-01-28"], False, ["2013-01-28"])


def test_nothing_changed_plans_nothing_and_a_missing_training_set_is_still_built(cfg, daily):
    con = warehouse(JANUARY, JANUARY, days("2013-01-16", "2013-01-31"))
    assert plan(con, cfg, daily, [], [], has_training_set=True) == MlPlan([], False, [], "")
    assert plan(con, cfg, daily, [], [], has_training_set=False).retrain


def test_built_days_never_featured_or_scored_are_caught_up_and_unbuilt_days_are_not_planned(cfg, daily):
    con = warehouse(JANUARY, days("2013-01-01", "2013-01-20"), days("2013-01-16", "2013-01-18"))
    p = plan(con, cfg, daily, ["2013-02-03"], [], has_training_set=True)  # February is not built yet
    assert p.feature_days == days("2013-01-21", "2013-01-31")
    assert p.score_days == days("2013-01-19", "2013-01-31")


def test_training_waits_while_a_split_window_is_not_covered_enough(cfg, daily):
    built = days("2013-01-01", "2013-01-17")
    p = plan(warehouse(built), cfg, daily, built, [], has_training_set=False)
    assert p.feature_days == built and not p.retrain
    assert p.waiting == "training waits until every split window is at least 90% featured: test 40%"
    assert p.score_days == ["2013-01-16", "2013-01-17"], "scoring does not wait for training"
