"""ModelRegistry.load keeps the model it deserialized from a version's artifact bytes in the home's
cache: the registry (a real local MLflow store here) still says which bytes are the version's model,
each version's bytes name their own cached model, and an unreadable cached model is read again
through MLflow."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from orchestration import settings
from orchestration.ml import config
from orchestration.ml.registry import MODEL_CACHE_KEEP, ModelRegistry, _prune_models


def fitted(seed: int) -> LogisticRegression:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(200, 3))
    return LogisticRegression().fit(x, (x[:, seed % 3] > 0).astype(int))


def register(registry: ModelRegistry, cfg, model, n: int) -> str:
    provenance = {"version": f"ts{n}", "features": ["a", "b", "c"], "contracts": {"flights": "1.0.0"},
                  "splits": {"train": {"start": "2013-01-01", "end": "2013-06-30"}}}
    return registry.register(cfg, model, fingerprint=f"fp{n}", provenance=provenance, metrics={"auc": 0.5}, reference={})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        mp.setenv("PLUMBLINE_HOME", str(home))
        registry, cfg = ModelRegistry(), config.load()
        models = [fitted(1), fitted(2)]
        versions = [register(registry, cfg, m, n) for n, m in enumerate(models)]
        yield registry, cfg, models, versions


def cached(home=None) -> list:
    return sorted((settings.cache_dir(home) / "models").glob("model-*.pickle"))


def test_each_version_is_served_as_registered_and_its_bytes_name_its_cached_model(store):
    registry, cfg, models, versions = store
    x = np.random.default_rng(0).normal(size=(50, 3))
    for model, number in zip(models, versions):
        first, again = registry.load(cfg, number), registry.load(cfg, number)
        assert np.array_equal(first.predict_proba(x), model.predict_proba(x))
        assert np.array_equal(again.predict_proba(x), model.predict_proba(x))
    assert len(cached()) == 2, "one cached model per distinct artifact"


def test_the_cached_model_is_what_load_serves_and_an_unreadable_one_is_read_again(store):
    registry, cfg, models, versions = store
    x = np.random.default_rng(0).normal(size=(50, 3))
    registry.load(cfg, versions[0])
    (stored,) = [p for p in cached() if _serves(p, models[0], x)]
    stored.write_bytes(pickle.dumps(models[1]))  # whatever is stored under the bytes' checksum is served
    assert np.array_equal(registry.load(cfg, versions[0]).predict_proba(x), models[1].predict_proba(x))
    stored.write_bytes(b"not a pickle")
    assert np.array_equal(registry.load(cfg, versions[0]).predict_proba(x), models[0].predict_proba(x))
    assert _serves(stored, models[0], x), "the model read through MLflow is stored again"


def _serves(path, model, x) -> bool:
    try:
        return np.array_equal(pickle.loads(path.read_bytes()).predict_proba(x), model.predict_proba(x))
    except Exception:  # noqa: BLE001 - another version's model or an unreadable file
        return False


def test_only_the_models_stored_last_are_kept(tmp_path):
    for n in range(MODEL_CACHE_KEEP + 2):
        p = tmp_path / f"model-{n}.pickle"
        p.write_bytes(b"x")
        os.utime(p, (1000 + n, 1000 + n))
    _prune_models(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("model-*.pickle")) == [f"model-{n}.pickle" for n in range(2, MODEL_CACHE_KEEP + 2)]


def test_a_registered_model_names_what_serving_it_needs(store):
    """The requirements MLflow records are plumbline's pinned list (no inference in a child process, so
    nothing that process happened to import), and MLflow's own loader serves the model from them."""
    import mlflow
    from importlib import metadata

    registry, cfg, models, versions = store
    uri = f"models:/{cfg.model_name}/{versions[0]}"
    with registry._fluent():
        path = mlflow.artifacts.download_artifacts(artifact_uri=f"{uri}/requirements.txt")
        pyfunc = mlflow.pyfunc.load_model(uri)
    listed = open(path).read().split()
    assert listed == [f"{lib}=={metadata.version(lib)}" for lib in ("mlflow-skinny", "scikit-learn", "skops", "numpy", "scipy", "pandas")]
    x = np.random.default_rng(0).normal(size=(20, 3))
    assert np.array_equal(pyfunc.predict(x), models[0].predict(x))
