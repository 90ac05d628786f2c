"""Drift: how far a scored partition has moved from what the model was trained on.

The reference is taken from the training split when the model is trained (bin edges and shares of
each feature and of the prediction) and travels with the model version in MLflow. Per partition:
the population stability index (PSI) of each feature and of the prediction, and, where labels are
known, the partition's AUC against the AUC measured on the test window.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from orchestration.ml import features

MISSING = "<missing>"
OTHER = "<other>"
EPSILON = 1e-4  # a bin empty on one side would make PSI infinite


def _numeric_reference(values: pd.Series, bins: int) -> dict:
    known = values.dropna().to_numpy(dtype=float)
    edges = np.unique(np.quantile(known, np.linspace(0, 1, bins + 1)[1:-1])) if len(known) else np.array([])
    return {"kind": "numeric", "edges": [float(e) for e in edges], "shares": _numeric_shares(values, edges)}


def _numeric_shares(values: pd.Series, edges) -> list[float]:
    v = values.to_numpy(dtype=float)
    missing = np.isnan(v)
    idx = np.searchsorted(np.asarray(edges, dtype=float), v[~missing], side="right")
    counts = np.bincount(idx, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return [float(c) for c in counts / max(len(v), 1)]


def _categorical_reference(values: pd.Series) -> dict:
    shares = values.fillna(MISSING).astype(str).value_counts(normalize=True)
    return {"kind": "categorical", "shares": {str(k): float(s) for k, s in sorted(shares.items())}}


def _categorical_shares(values: pd.Series, categories: list[str]) -> list[float]:
    v = values.fillna(MISSING).astype(str)
    v = v.where(v.isin(categories), OTHER)
    counts = v.value_counts()
    return [float(counts.get(c, 0)) / max(len(v), 1) for c in [*categories, OTHER]]


def reference(train: pd.DataFrame, predictions: np.ndarray, bins: int) -> dict:
    out = {c: _categorical_reference(train[c]) for c in features.CATEGORICAL}
    out.update({c: _numeric_reference(train[c], bins) for c in features.NUMERIC})
    out["prediction"] = _numeric_reference(pd.Series(predictions, dtype=float), bins)
    return out


def psi(expected: list[float], actual: list[float]) -> float:
    e = np.clip(np.asarray(expected, dtype=float), EPSILON, None)
    a = np.clip(np.asarray(actual, dtype=float), EPSILON, None)
    return float(np.sum((a - e) * np.log(a / e)))


def stability(ref: dict, df: pd.DataFrame, predictions: np.ndarray) -> dict[str, float]:
    """PSI of every feature and of the prediction for one partition's rows."""
    out = {}
    for name, r in ref.items():
        values = pd.Series(predictions, dtype=float) if name == "prediction" else df[name]
        if r["kind"] == "numeric":
            out[name] = psi(r["shares"], _numeric_shares(values.astype(float), r["edges"]))
        else:
            cats = list(r["shares"])
            out[name] = psi([*r["shares"].values(), 0.0], _categorical_shares(values, cats))
    return out


def grade(value: float, warn: float, fail: float) -> str:
    return "fail" if value >= fail else "warn" if value >= warn else "ok"
