"""ml/scoring: what a scored partition's drift rows hold (PSI per feature and of the prediction,
graded on the excess over a typical training day; AUC only where enough labels of both classes are
known) and which AUC a version is compared with. `score` itself needs a registered champion in
MLflow: tests/scenarios/test_ml.py runs it on the demo year."""

from __future__ import annotations

import datetime as dt

import duckdb
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from orchestration.ml import config, drift, evaluation, features
from orchestration.ml.scoring import DRIFT_COLUMNS, DRIFT_DDL, evaluation_auc, measure

DAY1, DAY2 = dt.date(2013, 12, 10), dt.date(2013, 12, 11)


def frame(rng: np.random.Generator, day: dt.date, n: int, labelled: int, temp_shift: float = 0.0) -> pd.DataFrame:
    df = pd.DataFrame({c: rng.normal(50, 10, n) for c in features.MODEL_NUMERIC})
    for c in features.CATEGORICAL:
        df[c] = rng.choice(["AA", "B6", "UA"], n)
    df["temp"] += temp_shift
    df["event_date"] = day
    delayed = pd.Series(rng.uniform(0, 1, n) < 0.3, dtype="boolean")
    delayed[labelled:] = pd.NA  # cancelled or not yet landed: no label
    df["delayed"] = delayed
    return df


@pytest.fixture(scope="module")
def setup():
    rng = np.random.default_rng(7)
    train = pd.concat([frame(rng, dt.date(2013, 3, 1) + dt.timedelta(days=i), 300, 300) for i in range(10)], ignore_index=True)
    ref = drift.reference(train, rng.uniform(0, 1, len(train)), bins=10, quantile=0.95)
    df = pd.concat([frame(rng, DAY1, 300, 250, temp_shift=80.0), frame(rng, DAY2, 300, 60)], ignore_index=True)
    # predictions that separate the known labels; unlabelled flights drawn like the training predictions
    known = df["delayed"].notna().to_numpy()
    late = df["delayed"].fillna(False).to_numpy(dtype=bool)
    p = np.select([known & late, known & ~late], [rng.uniform(0.3, 1, len(df)), rng.uniform(0, 0.7, len(df))],
                  rng.uniform(0, 1, len(df)))
    scored = df[["event_date"]].assign(p_delayed=p, model_version="4")
    return config.load(), ref, scored, df


def test_every_partition_gets_one_graded_psi_per_feature_and_for_the_prediction(setup):
    cfg, ref, scored, df = setup
    out = measure(cfg, ref, scored, df, reference_auc=None)
    assert list(out.columns) == [c for c, _ in DRIFT_COLUMNS]
    psi = out[out.measure == "psi"]
    for day in (DAY1, DAY2):
        assert sorted(psi[psi.event_date == day].feature) == sorted([*features.MODEL_INPUTS, "prediction"])
    assert set(out.model_version) == {"4"}
    assert out[out.measure == "auc"].empty, "no reference AUC: nothing to compare a day with"
    # the value and reference are the PSI and the typical training day's PSI; the grade is on the excess
    temp1 = psi[(psi.event_date == DAY1) & (psi.feature == "temp")].iloc[0]
    value, typical = drift.stability(ref, df[df.event_date == DAY1].reset_index(drop=True),
                                     scored.p_delayed[scored.event_date == DAY1].to_numpy())["temp"]
    assert (temp1.value, temp1.reference) == (pytest.approx(value), pytest.approx(typical))
    assert temp1.grade == "fail" and temp1.value > float(cfg.drift["psi_fail"])
    graded = psi[psi.grade != "ok"]
    assert set(zip(graded.event_date, graded.feature)) == {(DAY1, "temp")}


def test_a_days_auc_is_measured_on_its_labelled_flights_when_there_are_enough(setup):
    cfg, ref, scored, df = setup
    assert int(cfg.drift["min_labelled_flights"]) == 100  # DAY1 has 250 labelled flights, DAY2 only 60
    out = measure(cfg, ref, scored, df, reference_auc=0.64)
    auc = out[out.measure == "auc"]
    assert list(auc.event_date) == [DAY1] and list(auc.feature) == ["prediction"]
    day = df.event_date == DAY1
    labelled = day & df.delayed.notna()
    expected = roc_auc_score(df.delayed[labelled].astype(int), scored.p_delayed[labelled])
    row = auc.iloc[0]
    assert (row.value, row.reference) == (pytest.approx(expected), 0.64)
    assert row.grade == drift.grade(0.64 - expected, float(cfg.drift["auc_drop_warn"]), float(cfg.drift["auc_drop_fail"]))
    assert row.grade == "ok" and expected > 0.75, "predictions that separate the labels do not drop"


def test_a_day_with_one_class_only_has_no_auc(setup):
    cfg, ref, scored, df = setup
    on_time = df.assign(delayed=pd.Series(False, index=df.index, dtype="boolean"))
    assert measure(cfg, ref, scored, on_time, reference_auc=0.64).query("measure == 'auc'").empty


def test_nothing_scored_measures_nothing(setup):
    cfg, ref, scored, df = setup
    out = measure(cfg, ref, scored.iloc[0:0], df.iloc[0:0], reference_auc=0.64)
    assert out.empty and list(out.columns) == [c for c, _ in DRIFT_COLUMNS]


def test_the_reference_auc_is_the_versions_own_median_daily_auc_on_the_test_window(setup):
    cfg, ref, scored, df = setup
    con = duckdb.connect()
    con.execute("CREATE SCHEMA ml")
    assert evaluation_auc(con, "4") is None, "no evaluation yet (the table is created empty)"
    con.executemany("INSERT INTO ml.model_evaluation (challenger_version, model, scope, auc, daily_auc) VALUES (?, ?, ?, ?, ?)", [
        ("4", "challenger", evaluation.OVERALL, 0.70, 0.66),
        ("4", "challenger", "UA", 0.71, 0.61),
        ("4", "baseline", evaluation.OVERALL, 0.60, 0.58),
        ("3", "challenger", evaluation.OVERALL, 0.69, 0.65),
        ("5", "challenger", evaluation.OVERALL, 0.69, None),
    ])
    assert evaluation_auc(con, "4") == 0.66
    assert evaluation_auc(con, "3") == 0.65
    assert evaluation_auc(con, "5") is None


def test_measured_rows_fit_the_drift_table(setup):
    cfg, ref, scored, df = setup
    con = duckdb.connect()
    con.execute("CREATE SCHEMA ml")
    con.execute(DRIFT_DDL)
    out = measure(cfg, ref, scored, df, reference_auc=0.64)
    con.register("_drift", out)
    con.execute("INSERT INTO ml.drift SELECT * FROM _drift")
    assert con.execute("SELECT count(*), count(DISTINCT event_date) FROM ml.drift").fetchone() == (len(out), 2)
