"""The deployment mapping: one place chooses the warehouse, the model registry and the lineage transport."""

from __future__ import annotations

import os

import pytest

from orchestration.lineage.transport import LineageTransport
from orchestration.ml.registry import ModelRegistry
from orchestration.resources import UnknownDeployment, deployment, resources, resources_by_deployment
from orchestration.warehouse import Warehouse

MLFLOW_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.delenv("PLUMBLINE_DEPLOYMENT", raising=False)
    for var in MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_default_deployment_is_embedded_with_its_three_resources(home):
    assert deployment() == "embedded"
    found = resources()
    assert {k: type(v) for k, v in found.items()} == {
        "warehouse": Warehouse, "model_registry": ModelRegistry, "lineage_transport": LineageTransport}
    assert found == resources("embedded") and found["warehouse"] is resources_by_deployment["embedded"]["warehouse"]
    found.clear()  # a caller's copy: the mapping itself is untouched
    assert set(resources()) == {"warehouse", "model_registry", "lineage_transport"}


@pytest.mark.parametrize("name", ["production-typo", "Embedded"])
def test_an_unknown_deployment_names_the_variable_and_the_deployments_there_are(home, monkeypatch, name):
    monkeypatch.setenv("PLUMBLINE_DEPLOYMENT", name)
    for ask in (deployment, resources):
        with pytest.raises(UnknownDeployment) as raised:
            ask()
        assert f"PLUMBLINE_DEPLOYMENT={name!r}" in str(raised.value) and "embedded" in str(raised.value)
    with pytest.raises(UnknownDeployment, match="one of embedded"):
        resources(name)


def test_the_registry_points_mlflow_under_the_home_without_touching_the_environment(home):
    before = dict(os.environ)
    registry = resources()["model_registry"]
    db = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    assert registry.tracking() == db and registry.registry() == db
    assert registry.artifacts() == (home / "mlflow" / "artifacts").as_uri() and registry.is_local()
    assert dict(os.environ) == before, "the URIs are handed to MLflow's calls, not exported for MLflow to find"
    # (opening the store takes MLflow seconds: tests/test_home.py registers and loads a model through it)


def test_the_users_mlflow_settings_and_the_mappings_own_uris_win_over_the_home(home, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    embedded = resources()["model_registry"]
    assert embedded.tracking() == embedded.registry() == "http://mlflow.example:5000"
    assert embedded.artifacts() is None, "a remote server decides where artifacts go"
    configured = ModelRegistry(tracking_uri="postgresql://db/mlflow", artifact_location="file:///shared/mlflow")
    assert configured.tracking() == configured.registry() == "postgresql://db/mlflow"
    assert configured.artifacts() == "file:///shared/mlflow"


def test_the_warehouse_follows_plumbline_home(home, tmp_path, monkeypatch):
    warehouse = resources()["warehouse"]
    assert warehouse.db_path() == home.resolve() / "warehouse.duckdb"
    with warehouse.connect() as con:
        assert con.execute("SELECT count(*) FROM ops.landed_files").fetchall() == [(0,)]
    assert (home / "warehouse.duckdb").is_file()
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "other"))
    assert resources()["warehouse"].db_path() == (tmp_path / "other").resolve() / "warehouse.duckdb"
