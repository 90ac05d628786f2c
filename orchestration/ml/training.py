"""Training and evaluation of the flight-delay model from ml.training_set, recorded in MLflow."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from orchestration.ml import drift, evaluation, features, model, registry, training_set
from orchestration.ml.config import MlConfig

# Bump when the features, the model or its training change in a way that alters the model.
MODEL_CODE_VERSION = "1"


@dataclass(frozen=True)
class Trained:
    version: str
    reused: bool
    metrics: dict
    provenance: dict
    fingerprint: str


def fingerprint(cfg: MlConfig, provenance: dict) -> str:
    """Same training set, parameters, features and model code: the same model, so it is not trained twice."""
    spec = {"training_set": provenance["version"], "params": cfg.params, "features": features.MODEL_INPUTS,
            "code": MODEL_CODE_VERSION, "model": cfg.model_name}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fit(con, cfg: MlConfig):
    """The model and its train/validation metrics; deterministic for a given training set."""
    train = model.frame(con, "ml.training_set", "split = 'train'")
    validation = model.frame(con, "ml.training_set", "split = 'validation'")
    if train.empty or train["delayed"].nunique() < 2:
        raise ValueError(f"ml.training_set has {len(train)} labelled training flights in "
                         f"{cfg.window('train').start}..{cfg.window('train').end}: need both delayed and on-time flights "
                         f"(load that window: plumbline sync, or check split.train in {cfg.path})")
    m = model.fit(train, cfg.params)
    p_train = model.predict(m, train)
    metrics = {f"train_{k}": v for k, v in model.metrics(train["delayed"], p_train).items()}
    metrics.update({f"validation_{k}": v for k, v in model.metrics(validation["delayed"], model.predict(m, validation)).items()})
    return m, metrics, drift.reference(train, p_train, int(cfg.drift["bins"]), float(cfg.drift["typical_daily_quantile"]))


def train(con, cfg: MlConfig) -> Trained:
    provenance = training_set.current_provenance(con)
    if provenance is None:
        raise ValueError("ml.training_set has not been built yet: materialize ml/training_set first")
    fp = fingerprint(cfg, provenance)
    existing = registry.find(cfg, fp)
    if existing is not None:
        import mlflow

        run = mlflow.get_run(existing.run_id)
        return Trained(str(existing.version), True, dict(run.data.metrics), provenance, fp)
    m, metrics, reference = fit(con, cfg)
    version = registry.register(cfg, m, fingerprint=fp, provenance=provenance, metrics=metrics, reference=reference)
    return Trained(version, False, metrics, provenance, fp)


def evaluate(con, cfg: MlConfig, challenger: str) -> tuple[list[dict], str | None, list[dict]]:
    """Measure challenger, champion and baseline on the test window; store the rows and return them,
    the champion, and the challenger's reliability table (predicted against observed delay rate)."""
    test = model.frame(con, "ml.training_set", "split = 'test'")
    train = model.frame(con, "ml.training_set", "split = 'train'")
    daily = int(cfg.drift["min_labelled_flights"])
    p = model.predict(registry.load(cfg, challenger), test)
    rows = evaluation.measure("challenger", challenger, test, p, daily)
    rows += evaluation.measure("baseline", None, test, model.Baseline(train).predict(test), daily)
    champion = registry.champion(cfg)
    if champion and champion != challenger:
        rows += evaluation.measure("champion", champion, test, model.predict(registry.load(cfg, champion), test), daily)
    evaluation.store(con, challenger, rows)
    return rows, champion, model.calibration(test["delayed"].astype(int).to_numpy(), p)[1]
