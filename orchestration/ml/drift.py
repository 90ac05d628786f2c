"""Drift: how far a scored partition has moved from what the model was trained on.

The reference is taken from the training split when the model is trained and travels with the
model version in MLflow: per feature (and for the prediction) the bins of the training
distribution, with two extra bins below the training minimum and above its maximum, and the
share of training rows in each.

A daily partition is not a sample of the whole training window: one day has one month, one
weekday and a few dozen weather observations, so its PSI against the whole window is high even
for an ordinary day. Each feature's reference therefore also records its typical daily PSI (a
quantile of the PSI of every training day), and a partition is graded on its excess over that:
a day that looks like no training day did. Values outside the training range always count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestration import names
from orchestration.ml import features

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# numpy and pandas load inside the functions that use them: the code location imports this module,
# and only the steps that train, evaluate or score need them (tests/unit/test_architecture.py).

MISSING = "<missing>"
OTHER = "<other>"
EPSILON = 1e-4  # a bin empty on one side would make PSI infinite


def _numeric(values: pd.Series, bins: int) -> dict:
    import numpy as np

    known = values.dropna().to_numpy(dtype=float)
    if not len(known):
        return {"kind": "numeric", "edges": []}
    inner = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1]))
    # [< min] [min, q1) ... [q_last, max] (> max]: values beyond the training range get bins of their own
    return {"kind": "numeric", "min": float(known.min()), "max": float(known.max()), "edges": [float(e) for e in inner]}


def shares(ref: dict, values: pd.Series) -> np.ndarray:
    """The share of values in each of the reference's bins (missing values last)."""
    return _shares(ref, bin_of(ref, values), len(values))


def bin_of(ref: dict, values: pd.Series) -> np.ndarray:
    """Each value's bin in the reference, in shares' order; bin_count(ref) for a value no bin counts."""
    import numpy as np

    if ref["kind"] == "categorical":
        v = values.astype(object).where(values.notna(), MISSING).astype(str)
        cats = list(ref["categories"])
        return v.map(dict(zip(cats, range(len(cats))))).fillna(len(cats)).to_numpy(dtype=np.int64)  # not listed: other
    v = values.to_numpy(dtype=float)
    edges = np.asarray(ref["edges"], dtype=float)
    missing = np.isnan(v)
    if "min" not in ref:  # no training value: only the missing ones are counted
        return np.where(missing, len(edges) + 3, len(edges) + 4)
    # [< min] [min, q1) ... [q_last, max] (> max] [missing]
    inside = 1 + np.searchsorted(edges, np.where(missing, 0.0, v), side="right")
    return np.select([missing, v < ref["min"], v > ref["max"]], [len(edges) + 3, 0, len(edges) + 2], inside)


def bin_count(ref: dict) -> int:
    return len(ref["categories"]) + 1 if ref["kind"] == "categorical" else len(ref["edges"]) + 4


def _shares(ref: dict, binned: np.ndarray, n: int) -> np.ndarray:
    import numpy as np

    count = bin_count(ref)
    return np.bincount(binned, minlength=count + 1)[:count].astype(float) / max(n, 1)


def psi(expected, actual) -> float:
    import numpy as np

    e = np.clip(np.asarray(expected, dtype=float), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def reference(train: pd.DataFrame, predictions: np.ndarray, bins: int, quantile: float) -> dict:
    """Bins and training shares of every feature and of the prediction, and their typical daily PSI."""
    import numpy as np
    import pandas as pd

    columns = {c: train[c] for c in features.MODEL_INPUTS}
    columns["prediction"] = pd.Series(predictions, index=train.index, dtype=float)
    out = {}
    for name, values in columns.items():
        if name in features.CATEGORICAL:
            cats = sorted(values.astype(object).where(values.notna(), MISSING).astype(str).unique())
            ref = {"kind": "categorical", "categories": cats}
        else:
            ref = _numeric(values, bins)
        binned = bin_of(ref, values)
        ref["shares"] = [float(s) for s in _shares(ref, binned, len(binned))]
        daily = [psi(ref["shares"], _shares(ref, binned[at], len(at))) for at in train.groupby("event_date").indices.values()]
        ref["typical_daily_psi"] = float(np.quantile(daily, quantile)) if daily else 0.0
        out[name] = ref
    return out


def stability(ref: dict, df: pd.DataFrame, predictions: np.ndarray) -> dict[str, tuple[float, float]]:
    """feature -> (PSI of this partition, typical daily PSI in training)."""
    import numpy as np

    return daily_stability(ref, df.reset_index(drop=True), predictions, {None: np.arange(len(df))})[None]


def daily_stability(ref: dict, df: pd.DataFrame, predictions: np.ndarray, days: dict) -> dict:
    """day -> stability() of the rows at those positions (days: day -> positions); each value binned once."""
    import pandas as pd

    binned = {name: bin_of(r, pd.Series(predictions, dtype=float) if name == "prediction" else df[name]) for name, r in ref.items()}
    return {day: {name: (psi(r["shares"], _shares(r, binned[name][at], len(at))), float(r.get("typical_daily_psi", 0.0)))
                  for name, r in ref.items()} for day, at in days.items()}


def grade(value: float, warn: float, fail: float) -> str:
    return "fail" if value >= fail else "warn" if value >= warn else "ok"


# ml.drift holds both kinds of measurement in (value, reference): name them for what they are.
CHECKS = {
    names.FEATURE_DRIFT: "psi",      # PSI of a feature against the training reference
    names.PREDICTION_DRIFT: "psi",   # PSI of the predicted probability
    names.PERFORMANCE_DRIFT: "auc",  # the partition's AUC against the version's test-window AUC
}


def scored(con) -> pd.DataFrame:
    """Every scored partition's measurements in ml.drift: the asset as it stands, not one run."""
    return con.execute("SELECT strftime(event_date, '%Y-%m-%d') AS partition, model_version, measure, feature, value, "
                       "reference, grade FROM ml.drift ORDER BY event_date, measure, feature").df()


def for_check(measured: pd.DataFrame, check: str) -> pd.DataFrame:
    """The measurements one drift check grades, with the graded excess (what the thresholds apply to)."""
    rows = measured[measured.measure == CHECKS[check]]
    if check != names.PERFORMANCE_DRIFT:
        rows = rows[(rows.feature == "prediction") == (check == names.PREDICTION_DRIFT)]
    # PSI is graded on its excess over a typical training day; AUC on its drop below the reference
    excess = rows.value - rows.reference if CHECKS[check] == "psi" else rows.reference - rows.value
    return rows.assign(excess=excess).sort_values(["excess", "partition", "feature"], ascending=[False, True, True])


def described(r) -> dict:
    """One measurement as the check's metadata shows it, fields named for what they hold."""
    common = {"partition": r.partition, "feature": r.feature, "grade": r.grade, "model_version": r.model_version}
    if r.measure == "auc":
        return {**common, "auc": round(float(r.value), 4), "reference_auc": round(float(r.reference), 4),
                "drop": round(float(r.excess), 4)}
    return {**common, "psi": round(float(r.value), 4), "typical_training_day_psi": round(float(r.reference), 4),
            "excess": round(float(r.excess), 4)}
