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


def warehouse(built: list[str], featured: list[str] | None = None, scored: list[str] | None = None, path: str = ":memory:"):
    con = duckdb.connect(path)
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


# --- whether restated data is worth retraining for ------------------------------------------------

def featured(con, day_list: list[str], flights: int = 10) -> None:
    """ml.flight_features with `flights` labelled flights a day (every third one delayed)."""
    from orchestration.ml import features

    con.execute(features.DDL)
    con.executemany("INSERT INTO ml.flight_features (event_date, carrier, flight, origin, co_flights, outcome, delayed) "
                    "VALUES (?::DATE, 'UA', ?, 'EWR', 5, 'arrived', ?)",
                    [[d, n, n % 3 == 0] for d in day_list for n in range(flights)])


@pytest.fixture
def trained(cfg):
    """A warehouse whose training set was built from the features of every split day (10 flights each)."""
    from orchestration.ml import training_set

    con = warehouse(JANUARY)
    featured(con, days("2013-01-01", "2013-01-20"))
    training_set.build(con, cfg)
    return con


def with_share(cfg, share: float):
    import dataclasses

    return dataclasses.replace(cfg, retrain_min_changed_share=share)


def test_a_few_late_flights_in_a_window_defer_retraining_and_name_what_changed(cfg, trained):
    from orchestration.ml.plan import retraining

    trained.execute("INSERT INTO ml.flight_features (event_date, carrier, flight, origin, co_flights, outcome, delayed) "
                    "VALUES ('2013-01-17', 'UA', 5001, 'EWR', 5, 'arrived', true), ('2013-01-17', 'UA', 5002, 'EWR', 5, 'arrived', false)")
    trained.execute("UPDATE ml.flight_features SET co_flights = 7 WHERE event_date = '2013-01-18'")  # its rolling window moved
    judged = retraining(trained, with_share(cfg, 0.1), set(days("2013-01-16", "2013-01-20")))
    assert judged.changed == {"2013-01-17": 2} and judged.reshaped == {"2013-01-18": 10}
    assert judged.shares == {"train": 0.0, "validation": 0.0, "test": 2 / 50}
    assert not judged.due and judged.reason == ""
    assert "2 labelled flight(s) added, removed or relabelled on 1 day(s)" in judged.summary()
    assert "test 4.00%" in judged.summary() and "10 more with changed features only" in judged.summary()
    assert retraining(trained, with_share(cfg, 0.0), set(days("2013-01-16", "2013-01-20"))).due, "0 retrains on any change"


def test_relabelled_and_removed_flights_beyond_the_share_retrain(cfg, trained):
    from orchestration.ml.plan import retraining

    trained.execute("UPDATE ml.flight_features SET delayed = NOT delayed WHERE event_date = '2013-01-19' AND flight < 4")
    trained.execute("DELETE FROM ml.flight_features WHERE event_date = '2013-01-20' AND flight < 2")
    judged = retraining(trained, with_share(cfg, 0.1), set(days("2013-01-16", "2013-01-20")))
    assert judged.changed == {"2013-01-19": 4, "2013-01-20": 2} and judged.shares["test"] == 6 / 50
    assert judged.due


def test_only_the_days_given_are_compared_and_days_outside_the_windows_never_count(cfg, trained):
    from orchestration.ml.plan import retraining

    trained.execute("UPDATE ml.flight_features SET delayed = NOT delayed WHERE event_date = '2013-01-05'")
    featured(trained, ["2013-01-25"])  # after the test window: not in any split
    assert retraining(trained, with_share(cfg, 0.0), {"2013-01-25", "2013-01-17"}).changed == {}
    assert retraining(trained, with_share(cfg, 0.0), {"2013-01-05"}).shares["train"] == 10 / 100


def test_no_training_set_or_other_split_windows_retrain_whatever_changed(cfg, trained):
    import dataclasses

    from orchestration.ml.config import Window
    from orchestration.ml.plan import retraining

    empty = warehouse(JANUARY)
    assert retraining(empty, cfg, set()).reason == "no training set yet"
    moved = dataclasses.replace(cfg, windows=(Window("train", dt.date(2013, 1, 1), dt.date(2013, 1, 9)), *cfg.windows[1:]))
    judged = retraining(trained, moved, set())
    assert judged.due and judged.reason == "the split windows changed in the ML configuration"


def test_the_days_featured_since_the_last_training_set_come_from_the_instance():
    import dagster as dg

    from orchestration.ml.layer import FEATURES, TRAINING_SET
    from orchestration.ml.plan import featured_since_training

    with dg.DagsterInstance.ephemeral() as instance:
        def materialize(key, partition=None):
            instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=partition))

        for d in ("2013-01-01", "2013-01-02"):
            materialize(FEATURES, d)
        assert featured_since_training(instance) == {"2013-01-01", "2013-01-02"}, "never trained: every featured day"
        materialize(TRAINING_SET)
        assert featured_since_training(instance) == set()
        materialize(FEATURES, "2013-01-02")
        materialize(FEATURES, "2013-01-03")
        assert featured_since_training(instance) == {"2013-01-02", "2013-01-03"}


def test_the_retrain_share_is_read_checked_and_defaults_to_any_change_in_an_older_file(tmp_path):
    doc = yaml.safe_load(config.DEFAULT.read_text())
    assert config.load().retrain_min_changed_share == 0.01
    for value, expected in ((0.2, 0.2), (None, 0.0)):
        if value is None:
            del doc["training"]["retrain_min_changed_share"]
        else:
            doc["training"]["retrain_min_changed_share"] = value
        (tmp_path / "ml.yaml").write_text(yaml.safe_dump(doc))
        assert config.load(tmp_path / "ml.yaml").retrain_min_changed_share == expected
    doc["training"]["retrain_min_changed_share"] = 5
    (tmp_path / "ml.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(config.MlConfigError, match="retrain_min_changed_share is a share of rows, between 0 and 1"):
        config.load(tmp_path / "ml.yaml")
