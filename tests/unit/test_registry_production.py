"""The production model registry's settings, read at call time: the store from PLUMBLINE_MLFLOW_URL
(opened with psycopg2), artifacts from PLUMBLINE_MLFLOW_ARTIFACTS else the shared data path, and
every address shown without credentials. (tests/scenarios/test_production_registry.py runs it on
PostgreSQL.)"""

from __future__ import annotations

import pytest

from orchestration.ml.registry import ModelRegistry, RegistryNotConfigured, without_credentials
from orchestration.resources import resources_by_deployment

URL = "postgresql://ml:s3cret@db.example:5432/mlflow"


@pytest.fixture
def env(tmp_path, monkeypatch):
    for var in ("PLUMBLINE_MLFLOW_URL", "PLUMBLINE_MLFLOW_ARTIFACTS", "PLUMBLINE_DATA_PATH", "MLFLOW_TRACKING_URI",
                "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "home"))
    return monkeypatch


def production() -> ModelRegistry:
    return resources_by_deployment["production"]["model_registry"]


def test_the_store_is_read_from_the_environment_at_call_time(env):
    registry = production()
    with pytest.raises(RegistryNotConfigured, match="PLUMBLINE_MLFLOW_URL"):
        registry.tracking()
    env.setenv("PLUMBLINE_MLFLOW_URL", URL)
    env.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")  # the embedded deployment's setting: not this one's
    env.setenv("MLFLOW_REGISTRY_URI", "http://elsewhere:5000")
    assert registry.tracking() == registry.registry() == "postgresql+psycopg2://ml:s3cret@db.example:5432/mlflow"
    assert registry.location() == "postgresql://db.example:5432/mlflow"
    assert not registry.is_local(), "no SQLite store under the home, nothing re-based"
    env.setenv("PLUMBLINE_MLFLOW_URL", "postgres://db.example/other")
    assert registry.tracking() == "postgresql+psycopg2://db.example/other"


def test_artifacts_go_to_the_shared_data_path_unless_set_apart(env, tmp_path):
    registry = production()
    assert registry.artifacts() == (tmp_path / "home" / "lake" / "mlflow").as_uri(), "the lakehouse's default data path"
    env.setenv("PLUMBLINE_DATA_PATH", str(tmp_path / "shared"))
    assert registry.artifacts() == (tmp_path / "shared" / "mlflow").as_uri()
    env.setenv("PLUMBLINE_DATA_PATH", "s3://bucket/plumbline/")
    assert registry.artifacts() == "s3://bucket/plumbline/mlflow"
    env.setenv("PLUMBLINE_MLFLOW_ARTIFACTS", str(tmp_path / "models"))
    assert registry.artifacts() == (tmp_path / "models").as_uri()
    env.setenv("PLUMBLINE_MLFLOW_ARTIFACTS", "gs://models/mlflow/")
    assert registry.artifacts() == "gs://models/mlflow"
    assert ModelRegistry(from_environment=True, artifact_location="file:///x").artifacts() == "file:///x"


def test_the_embedded_registry_is_unchanged(env, tmp_path):
    embedded = resources_by_deployment["embedded"]["model_registry"]
    env.setenv("PLUMBLINE_MLFLOW_URL", URL)  # the production store is not the embedded one's
    assert embedded.is_local() and embedded.tracking().startswith("sqlite:///")
    assert embedded.artifacts() == (tmp_path / "home" / "mlflow" / "artifacts").as_uri()


@pytest.mark.parametrize("uri, shown", [
    ("postgresql://u:pw@h:5432/db", "postgresql://h:5432/db"),
    ("postgresql+psycopg2://u:pw@h/db?sslmode=require&password=pw", "postgresql://h/db"),
    ("postgresql://h/db?password=pw", "postgresql://h/db"),
    ("https://token:pw@mlflow.example/", "https://mlflow.example/"),
    ("sqlite:////abs/path/mlflow.db", "sqlite:////abs/path/mlflow.db"),
    ("databricks", "databricks"),
])
def test_addresses_are_shown_without_credentials(uri, shown):
    assert without_credentials(uri) == shown and "pw" not in shown
