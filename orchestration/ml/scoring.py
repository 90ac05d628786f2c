"""ml.flight_predictions and ml.drift: the champion's predictions per daily partition, and how far
each partition has drifted from the training reference."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from orchestration.rebuild import partitions
from orchestration.ml import drift, evaluation, features, model
from orchestration.ml.config import MlConfig
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse import key_list

if TYPE_CHECKING:
    import pandas as pd

# numpy and pandas load inside the functions that use them: the code location imports this module,
# and only the steps that train, evaluate or score need them (tests/unit/test_architecture.py).

PREDICTION_COLUMNS = [("event_date", "DATE"), ("carrier", "VARCHAR"), ("flight", "INTEGER"), ("origin", "VARCHAR"),
                      ("p_delayed", "DOUBLE"), ("model_version", "VARCHAR"), ("outcome", "VARCHAR"), ("delayed", "BOOLEAN")]
PREDICTIONS_DDL = "CREATE TABLE IF NOT EXISTS ml.flight_predictions (" + ", ".join(f"{n} {t}" for n, t in PREDICTION_COLUMNS) + ")"
DRIFT_COLUMNS = [("event_date", "DATE"), ("model_version", "VARCHAR"), ("measure", "VARCHAR"), ("feature", "VARCHAR"),
                 ("value", "DOUBLE"), ("reference", "DOUBLE"), ("grade", "VARCHAR")]
DRIFT_DDL = "CREATE TABLE IF NOT EXISTS ml.drift (" + ", ".join(f"{n} {t}" for n, t in DRIFT_COLUMNS) + ")"


class NoChampion(RuntimeError):
    pass


@dataclass(frozen=True)
class Scored:
    version: str
    rows: dict[str, int]  # rows per partition; the drift measured is in ml.drift


def evaluation_auc(con, version: str) -> float | None:
    """The version's median daily AUC on the test window in its own evaluation (None if it had none)."""
    con.execute(evaluation.DDL)
    rows = con.execute("""SELECT daily_auc FROM ml.model_evaluation WHERE challenger_version = ? AND model = 'challenger'
                          AND scope = 'overall' AND daily_auc IS NOT NULL""", [version]).fetchall()
    return rows[0][0] if rows else None


def score(con, cfg: MlConfig, model_registry: ModelRegistry, keys: list[str]) -> Scored:
    champion = model_registry.champion(cfg)
    if champion is None:
        raise NoChampion(f"model {cfg.model_name} has no champion in {model_registry.location()}: train and evaluate one "
                         "(materialize ml/delay_model and ml/model_evaluation; the promotion gate sets it) or "
                         "promote a version: plumbline model promote <version>")
    fitted, ref = model_registry.load(cfg, champion), model_registry.reference(cfg, champion)
    dates = key_list(keys)
    con.execute(features.DDL)
    df = model.frame(con, "ml.flight_features", f"event_date IN {dates}")
    outcome = con.execute(f"SELECT outcome FROM ml.flight_features WHERE event_date IN {dates} "
                          f"ORDER BY {', '.join(features.KEY)}").df()["outcome"]
    p = model.predict(fitted, df)
    scored = df[features.KEY].assign(p_delayed=p, model_version=champion, outcome=outcome.to_numpy(), delayed=df["delayed"])
    con.register("_scored", scored)
    try:
        rows = partitions.replace_partitions(con, "ml.flight_predictions", PREDICTIONS_DDL, keys,
                                             "SELECT event_date, carrier, flight, origin, p_delayed, model_version, outcome, delayed "
                                             "FROM _scored WHERE {partition_filter}")
        measured = measure(cfg, ref, scored, df, evaluation_auc(con, champion))
        con.register("_drift", measured)
        partitions.replace_partitions(con, "ml.drift", DRIFT_DDL, keys,
                                      "SELECT event_date, model_version, measure, feature, value, reference, grade "
                                      "FROM _drift WHERE {partition_filter}")
    finally:
        con.unregister("_scored")
        con.unregister("_drift")
    return Scored(champion, rows)


def measure(cfg: MlConfig, ref: dict, scored: pd.DataFrame, df: pd.DataFrame, reference_auc: float | None) -> pd.DataFrame:
    """PSI per feature and of the prediction per partition; AUC where enough labels are known."""
    import numpy as np
    import pandas as pd

    d = cfg.drift
    out = []
    version = scored["model_version"].iloc[0] if len(scored) else None
    days = scored.groupby("event_date").indices  # day -> row positions (scored and df share their rows)
    stable = drift.daily_stability(ref, df.reset_index(drop=True), scored["p_delayed"].to_numpy(), days)
    delayed, p = df["delayed"].to_numpy(dtype=float, na_value=np.nan), scored["p_delayed"].to_numpy()
    for day, at in days.items():
        for name, (value, typical) in stable[day].items():
            # graded on the excess over what an ordinary training day shows
            out.append((day, version, "psi", name, value, typical,
                        drift.grade(value - typical, float(d["psi_warn"]), float(d["psi_fail"]))))
        labelled = at[~np.isnan(delayed[at])]
        y = delayed[labelled].astype(int)
        if reference_auc is not None and len(labelled) >= int(d["min_labelled_flights"]) and len(np.unique(y)) == 2:
            auc = model.auc(y, p[labelled])
            out.append((day, version, "auc", "prediction", auc, reference_auc,
                        drift.grade(reference_auc - auc, float(d["auc_drop_warn"]), float(d["auc_drop_fail"]))))
    return pd.DataFrame(out, columns=[c for c, _ in DRIFT_COLUMNS])
