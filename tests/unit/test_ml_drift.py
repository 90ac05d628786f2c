"""ml/drift: PSI on known distributions, the reference's bins (values beyond the training range and
missing values counted apart), a day drawn like training against a shifted one, and the way the
checks rank and describe what they grade."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchestration.ml import drift, features


def test_psi_of_identical_distributions_is_zero():
    assert drift.psi([0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]) == 0.0


def test_psi_of_a_known_shift():
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)  # 0.8789
    assert drift.psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected, abs=1e-12)
    assert drift.psi([0.9, 0.1], [0.5, 0.5]) == pytest.approx(expected, abs=1e-12), "PSI is symmetric"


def test_an_empty_bin_gives_a_large_finite_psi():
    value = drift.psi([1.0, 0.0], [0.5, 0.5])
    eps = drift.EPSILON
    assert value == pytest.approx((0.5 - 1) * math.log(0.5) + (0.5 - eps) * math.log(0.5 / eps))
    assert 4 < value < 5


NUMERIC_REF = {"kind": "numeric", "min": 0.0, "max": 10.0, "edges": [2.5, 5.0, 7.5]}


def test_numeric_shares_count_below_inside_above_and_missing_apart():
    values = pd.Series([-1, 0, 2.5, 3, 7.5, 10, 11, np.nan])
    # [< 0] [0, 2.5) [2.5, 5) [5, 7.5) [7.5, 10] (> 10] missing
    assert list(drift.shares(NUMERIC_REF, values)) == [1 / 8, 1 / 8, 2 / 8, 0, 2 / 8, 1 / 8, 1 / 8]


def test_categorical_shares_put_unseen_categories_in_other():
    ref = {"kind": "categorical", "categories": ["AA", drift.MISSING, "UA"]}
    assert list(drift.shares(ref, pd.Series(["AA", "AA", "DL", None]))) == [0.5, 0.25, 0.0, 0.25]


def test_a_feature_that_had_no_value_in_training_counts_only_missing():
    ref = {"kind": "numeric", "edges": []}
    assert list(drift.shares(ref, pd.Series([1.0, np.nan]))) == [0.0, 0.0, 0.0, 0.5]


def training_frame(rng: np.random.Generator, days: int = 15, per_day: int = 300) -> pd.DataFrame:
    n = days * per_day
    frame = {c: rng.normal(50, 10, n) for c in features.MODEL_NUMERIC}
    for c in features.CATEGORICAL:
        frame[c] = rng.choice(["AA", "B6", "UA"], n, p=[0.5, 0.3, 0.2])
    frame["event_date"] = np.repeat(pd.date_range("2013-03-01", periods=days).date, per_day)
    return pd.DataFrame(frame)


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(13)
    train = training_frame(rng)
    predictions = rng.uniform(0, 1, len(train))
    return rng, drift.reference(train, predictions, bins=10, quantile=0.95)


def test_the_reference_has_quantile_bins_training_shares_and_a_typical_daily_psi(trained):
    _, ref = trained
    assert set(ref) == set(features.MODEL_INPUTS) | {"prediction"}
    temp = ref["temp"]
    assert temp["kind"] == "numeric" and len(temp["edges"]) == 9 and temp["edges"] == sorted(temp["edges"])
    assert temp["edges"][4] == pytest.approx(50, abs=1)  # the median of N(50, 10)
    assert sum(temp["shares"]) == pytest.approx(1)
    assert len(temp["shares"]) == 1 + 10 + 2
    assert temp["shares"][0] == temp["shares"][-2] == temp["shares"][-1] == 0, "nothing below min, above max or missing"
    assert all(s == pytest.approx(0.1, abs=0.001) for s in temp["shares"][1:-2])
    assert ref["carrier"]["categories"] == ["AA", "B6", "UA"]
    assert ref["carrier"]["shares"] == pytest.approx([0.5, 0.3, 0.2, 0.0], abs=0.02)
    # a day of 300 rows against 4,500: sampling noise only, small but not zero
    assert 0 < temp["typical_daily_psi"] < 0.2


def test_a_day_like_training_is_stable_and_a_shifted_feature_is_named(trained):
    rng, ref = trained
    day = training_frame(rng, days=1)
    predictions = rng.uniform(0, 1, len(day))
    ordinary = drift.stability(ref, day, predictions)
    assert set(ordinary) == set(ref)
    assert all(value - typical < 0.1 for value, typical in ordinary.values()), ordinary

    celsius = day.assign(temp=(day.temp - 32) / 1.8)  # a source switched units: every value below the training minimum
    shifted = drift.stability(ref, celsius, predictions)
    value, typical = shifted["temp"]
    assert typical == ref["temp"]["typical_daily_psi"]
    assert drift.grade(value - typical, 0.5, 2.0) == "fail" and value > 8
    assert {name for name, (v, t) in shifted.items() if drift.grade(v - t, 0.5, 2.0) != "ok"} == {"temp"}


@pytest.mark.parametrize("value,grade", [(0.0, "ok"), (0.499, "ok"), (0.5, "warn"), (1.99, "warn"), (2.0, "fail"), (9.0, "fail")])
def test_grades_at_the_thresholds(value, grade):
    assert drift.grade(value, 0.5, 2.0) == grade


MEASURED = pd.DataFrame([
    ("2013-12-10", "3", "psi", "temp", 3.0, 0.5, "fail"),
    ("2013-12-10", "3", "psi", "carrier", 0.2, 0.1, "ok"),
    ("2013-12-11", "3", "psi", "temp", 0.9, 0.1, "warn"),
    ("2013-12-10", "3", "psi", "prediction", 0.7, 0.1, "warn"),
    ("2013-12-10", "3", "auc", "prediction", 0.50, 0.64, "warn"),
    ("2013-12-11", "3", "auc", "prediction", 0.66, 0.64, "ok"),
], columns=["partition", "model_version", "measure", "feature", "value", "reference", "grade"])


def test_each_check_grades_its_own_measurements_ranked_by_their_excess():
    feature = drift.for_check(MEASURED, "feature_drift")
    assert list(zip(feature.partition, feature.feature)) == [("2013-12-10", "temp"), ("2013-12-11", "temp"), ("2013-12-10", "carrier")]
    assert list(feature.excess) == pytest.approx([2.5, 0.8, 0.1])
    prediction = drift.for_check(MEASURED, "prediction_drift")
    assert list(prediction.feature) == ["prediction"] and list(prediction.measure) == ["psi"]
    performance = drift.for_check(MEASURED, "performance_drift")
    assert list(performance.partition) == ["2013-12-10", "2013-12-11"]
    assert list(performance.excess) == pytest.approx([0.14, -0.02]), "an AUC is graded on its drop below the reference"


def test_a_measurement_is_described_with_fields_named_for_what_they_hold():
    psi_row = next(drift.for_check(MEASURED, "feature_drift").itertuples())
    assert drift.described(psi_row) == {"partition": "2013-12-10", "feature": "temp", "grade": "fail", "model_version": "3",
                                        "psi": 3.0, "typical_training_day_psi": 0.5, "excess": 2.5}
    auc_row = next(drift.for_check(MEASURED, "performance_drift").itertuples())
    assert drift.described(auc_row) == {"partition": "2013-12-10", "feature": "prediction", "grade": "warn", "model_version": "3",
                                        "auc": 0.5, "reference_auc": 0.64, "drop": 0.14}


def test_each_scored_partition_gets_its_own_drift_verdict_naming_what_drifted():
    from assets import ml

    measured = pd.DataFrame([
        # partition, model_version, measure, feature, value, reference, grade
        ("2013-12-10", "3", "psi", "temp", 2.5, 0.1, "fail"),
        ("2013-12-10", "3", "psi", "carrier", 0.1, 0.1, "ok"),
        ("2013-12-10", "3", "psi", "prediction", 0.3, 0.1, "warn"),
        ("2013-12-11", "3", "psi", "temp", 0.1, 0.1, "ok"),
        ("2013-12-11", "3", "auc", "auc", 0.70, 0.71, "ok"),
        ("2013-12-12", "3", "auc", "auc", 0.60, 0.71, "warn"),
    ], columns=["partition", "model_version", "measure", "feature", "value", "reference", "grade"])
    days = ml.drift_verdicts(measured, ["2013-12-10", "2013-12-11", "2013-12-12"])
    bad = days["2013-12-10"]
    assert not bad.passed and bad.error, "a fail grade makes the day an ERROR"
    assert bad.description.startswith("2 of 3 drift measurement(s) beyond the thresholds: feature_drift temp excess 2.400 (fail)")
    assert [w["feature"] for w in bad.metadata["worst"].value] == ["temp", "prediction"]
    assert days["2013-12-11"].passed and days["2013-12-11"].metadata["measurements"] == 2
    warned = days["2013-12-12"]
    assert not warned.passed and not warned.error and "performance_drift auc excess 0.110 (warn)" in warned.description
