"""The flight-delay classifier and the measures it is judged by.

scikit-learn's histogram gradient boosting (categorical carrier/origin/destination natively,
missing weather and plane data as missing), every random choice fixed by random_state, so the
same training set gives the same model and the same metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestration.ml import features

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

# numpy, pandas and scikit-learn load inside the functions that use them: the code location imports
# this module, and only the steps that train, evaluate or score need them (tests/unit/test_architecture.py).

CALIBRATION_BINS = 10


def frame(con, relation: str, where: str = "TRUE") -> pd.DataFrame:
    """Key, features and label from a training-set or features relation, in key order."""
    import pandas as pd

    cols = ", ".join(dict.fromkeys([*features.KEY, *features.FEATURES, "delayed"]))
    df = con.execute(f"SELECT {cols} FROM {relation} WHERE {where} ORDER BY {', '.join(features.KEY)}").df()
    for c in features.CATEGORICAL:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    for c in features.NUMERIC:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


def build(params: dict, inputs: list[str] | None = None) -> Pipeline:
    """The pipeline over `inputs` (default every model input, in features.MODEL_INPUTS order)."""
    import numpy as np
    from sklearn.compose import make_column_transformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OrdinalEncoder

    inputs = features.MODEL_INPUTS if inputs is None else inputs
    categorical = [c for c in features.CATEGORICAL if c in inputs]
    encode = make_column_transformer(
        (OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=np.nan, encoded_missing_value=np.nan),
         categorical),
        ("passthrough", [c for c in features.MODEL_NUMERIC if c in inputs]), verbose_feature_names_out=False)
    classifier = HistGradientBoostingClassifier(categorical_features=categorical or None, **params)
    return make_pipeline(encode, classifier).set_output(transform="pandas")


def fit(train: pd.DataFrame, params: dict, inputs: list[str] | None = None) -> Pipeline:
    inputs = features.MODEL_INPUTS if inputs is None else inputs
    return build(params, inputs).fit(train[inputs], train["delayed"].astype(int))


def inputs_of(model: Pipeline) -> list[str]:
    """The features a fitted model was trained on (a feature with no values is left out of training)."""
    return list(model.feature_names_in_)


def predict(model: Pipeline, df: pd.DataFrame) -> np.ndarray:
    """P(delayed) per row, from the features the model was trained on."""
    import numpy as np

    if df.empty:
        return np.zeros(0)
    return model.predict_proba(df[inputs_of(model)])[:, 1]


def calibration(y: np.ndarray, p: np.ndarray, bins: int = CALIBRATION_BINS) -> tuple[float, list[dict]]:
    """Expected calibration error and the reliability table (equal-width bins of the prediction)."""
    import numpy as np

    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        mask = idx == b
        if not mask.any():
            continue
        mean_p, rate = float(p[mask].mean()), float(y[mask].mean())
        ece += mask.mean() * abs(mean_p - rate)
        table.append({"bin": f"{edges[b]:.1f}-{edges[b + 1]:.1f}", "flights": int(mask.sum()),
                      "mean_predicted": round(mean_p, 4), "observed_rate": round(rate, 4)})
    return float(ece), table


def metrics(y, p) -> dict:
    """AUC, log loss, Brier score and calibration error; AUC is None when only one class is present."""
    import numpy as np
    from sklearn.metrics import brier_score_loss, log_loss

    y, p = np.asarray(y, dtype=int), _clipped(p)
    if len(y) == 0:
        return {"flights": 0, "auc": None, "log_loss": None, "brier": None, "ece": None}
    two = len(np.unique(y)) == 2
    ece, _ = calibration(y, p)
    return {"flights": int(len(y)), "auc": auc(y, p) if two else None,
            "log_loss": float(log_loss(y, p, labels=[0, 1])), "brier": float(brier_score_loss(y, p)), "ece": ece}


def auc(y, p) -> float:
    """metrics()' AUC alone (both classes present), on the same clipped probabilities."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(y, dtype=int), _clipped(p)))


def _clipped(p):
    import numpy as np

    return np.clip(np.asarray(p, dtype=float), 1e-6, 1 - 1e-6)


class Baseline:
    """Historical on-time share: P(delayed) = the delayed share of the carrier at the origin in training."""

    def __init__(self, train: pd.DataFrame):
        self.overall = float(train["delayed"].mean())
        self.rates = train.groupby(["carrier", "origin"])["delayed"].mean().astype(float).to_dict()

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        import numpy as np

        return np.array([self.rates.get((c, o), self.overall) for c, o in zip(df["carrier"], df["origin"])], dtype=float)
