"""Training and evaluation of the flight-delay model from ml.training_set, recorded in MLflow."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from orchestration.ml import drift, evaluation, features, model, training_set
from orchestration.ml.config import MlConfig
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse import ident

# Bump when the features, the model or its training change in a way that alters the model.
MODEL_CODE_VERSION = "1"


@dataclass(frozen=True)
class Trained:
    version: str
    reused: bool
    metrics: dict
    provenance: dict
    fingerprint: str
    left_out: dict[str, str]  # feature -> why it is not a model input this time


class TrainingError(ValueError):
    """Training cannot run on this training set; the message says what to land or change."""


def fingerprint(cfg: MlConfig, provenance: dict) -> str:
    """Same training set, parameters, features and model code: the same model, so it is not trained twice."""
    spec = {"training_set": provenance["version"], "params": cfg.params, "features": features.MODEL_INPUTS,
            "code": MODEL_CODE_VERSION, "model": cfg.model_name}
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def left_out(con, cfg: MlConfig) -> dict[str, str]:
    """Model inputs with no value in the train window (their source has not landed), each with what to land."""
    counts = con.execute("SELECT " + ", ".join(f"count({ident(c)})" for c in features.MODEL_INPUTS)
                         + " FROM ml.training_set WHERE split = 'train'").fetchall()[0]
    window = f"{cfg.window('train').start}..{cfg.window('train').end}"
    out = {}
    for name, n in zip(features.MODEL_INPUTS, counts):
        if n == 0:
            tables = sorted({f"{schema}.{table}" for schema, table, _ in features.SOURCES[name]})
            landed = [t.split(".")[1] for t in tables if t.startswith("raw.")]
            todo = f"land {' and '.join(landed)} deliveries for that window" if landed else "load that window"
            out[name] = (f"no values in the train window {window} (from {', '.join(tables)}): "
                         f"{todo} and run plumbline sync to train with it")
    return out


def fit(con, cfg: MlConfig, unusable: dict[str, str] | None = None):
    """The model and its train/validation metrics; deterministic for a given training set."""
    unusable = left_out(con, cfg) if unusable is None else unusable
    train = model.frame(con, "ml.training_set", "split = 'train'")
    validation = model.frame(con, "ml.training_set", "split = 'validation'")
    if train.empty or train["delayed"].nunique() < 2:
        raise TrainingError(f"ml.training_set has {len(train)} labelled training flights in "
                            f"{cfg.window('train').start}..{cfg.window('train').end}: need both delayed and on-time flights "
                            f"(load that window: plumbline sync, or check split.train in {cfg.path})")
    inputs = [c for c in features.MODEL_INPUTS if c not in unusable]
    if not inputs:
        raise TrainingError("no feature has a value in the train window: " + "; ".join(f"{k}: {v}" for k, v in unusable.items()))
    try:
        m = model.fit(train, cfg.params, inputs)
    except ValueError as e:  # scikit-learn's own words name no feature and no fix: say what was being fitted
        raise TrainingError(f"fitting {cfg.model_name} on {len(train)} training flights with features {inputs} "
                            f"failed in scikit-learn: {e}. Check the features' values in ml.training_set "
                            f"and the model parameters in {cfg.path}") from e
    p_train = model.predict(m, train)
    metrics = {f"train_{k}": v for k, v in model.metrics(train["delayed"], p_train).items()}
    metrics.update({f"validation_{k}": v for k, v in model.metrics(validation["delayed"], model.predict(m, validation)).items()})
    return m, metrics, drift.reference(train, p_train, int(cfg.drift["bins"]), float(cfg.drift["typical_daily_quantile"]))


def train(con, cfg: MlConfig, model_registry: ModelRegistry) -> Trained:
    provenance = training_set.current_provenance(con)
    if provenance is None:
        raise ValueError("ml.training_set has not been built yet: materialize ml/training_set first")
    fp = fingerprint(cfg, provenance)
    existing = model_registry.find(cfg, fp)
    if existing is not None:
        run = model_registry.run(existing.run_id)
        return Trained(str(existing.version), True, dict(run.data.metrics), provenance, fp, left_out(con, cfg))
    unusable = left_out(con, cfg)
    m, metrics, reference = fit(con, cfg, unusable)
    # the model run's provenance is the training set's, corrected to the features the model really uses
    trained_on = {**provenance, "features": model.inputs_of(m), "left_out_features": unusable} if unusable else provenance
    version = model_registry.register(cfg, m, fingerprint=fp, provenance=trained_on, metrics=metrics, reference=reference)
    return Trained(version, False, metrics, provenance, fp, unusable)


def evaluate(con, cfg: MlConfig, model_registry: ModelRegistry, challenger: str) -> tuple[list[dict], str | None, list[dict]]:
    """Measure challenger, champion and baseline on the test window; store the rows and return them,
    the champion, and the challenger's reliability table (predicted against observed delay rate)."""
    test = model.frame(con, "ml.training_set", "split = 'test'")
    train = model.frame(con, "ml.training_set", "split = 'train'")
    daily = int(cfg.drift["min_labelled_flights"])
    p = model.predict(model_registry.load(cfg, challenger), test)
    rows = evaluation.measure("challenger", challenger, test, p, daily)
    rows += evaluation.measure("baseline", None, test, model.Baseline(train).predict(test), daily)
    champion = model_registry.champion(cfg)
    if champion and champion != challenger:
        rows += evaluation.measure("champion", champion, test, model.predict(model_registry.load(cfg, champion), test), daily)
    evaluation.store(con, challenger, rows)
    return rows, champion, model.calibration(test["delayed"].astype(int).to_numpy(), p)[1]
