"""The deployment mapping: one place chooses the warehouse, the model registry and the lineage transport."""

from __future__ import annotations

import os

import pytest

from orchestration.lineage.transport import LineageTransport
from orchestration.ml.registry import ModelRegistry
from orchestration.resources import UnknownDeployment, deployment, resources, resources_by_deployment
from orchestration.warehouse_resource import Warehouse

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


# ---------------------------------------------------------------------------- executor and instance per deployment


def test_the_executor_is_dagsters_default_embedded_and_celery_in_production(home):
    from orchestration.resources import executor

    assert executor() is None and executor("embedded") is None
    celery = executor("production")
    assert celery is executor("production") and celery.name == "plumbline_celery"
    # the broker is an env reference, resolved by the process that orchestrates the run: no URL in the code location
    assert celery.config_schema._config_fn(None) == {"broker": {"env": "PLUMBLINE_BROKER_URL"}, "backend": "rpc://"}


def test_a_worker_without_a_broker_says_which_variable_to_set(home, monkeypatch, capsys):
    from orchestration.ops.cli import main

    monkeypatch.delenv("PLUMBLINE_BROKER_URL", raising=False)
    assert main(["worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "PLUMBLINE_BROKER_URL is not set" in err


def test_a_worker_refuses_the_embedded_deployment(home, monkeypatch, capsys):
    from orchestration.ops.cli import main

    monkeypatch.setenv("PLUMBLINE_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    monkeypatch.setenv("PLUMBLINE_DEPLOYMENT", "embedded")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "production profile only" in err and "guest:guest" not in err


def test_the_production_instance_needs_its_url_and_never_stores_it(home, monkeypatch, tmp_path):
    import yaml

    from orchestration.instance_storage import psycopg2_url
    from orchestration.ops import sync

    monkeypatch.setenv("PLUMBLINE_DEPLOYMENT", "production")
    monkeypatch.delenv("PLUMBLINE_INSTANCE_URL", raising=False)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(sync.InstanceNotConfigured, match="PLUMBLINE_INSTANCE_URL"):
        sync.instance()
    shipped = yaml.safe_load(sync.DAGSTER_PRODUCTION_YAML.read_text())
    assert shipped["storage"]["custom"]["config"] == {"postgres_url": {"env": "PLUMBLINE_INSTANCE_URL"}}
    assert shipped["run_retries"] == {"enabled": True, "max_retries": 3, "retry_on_asset_or_op_failure": True}
    assert shipped["run_coordinator"]["class"] == "QueuedRunCoordinator" and shipped["telemetry"] == {"enabled": False}
    assert "default_limit" not in shipped["concurrency"]["pools"], "DuckLake and the partition locks serialize writers"
    assert sync.production_dagster_home() == home.resolve() / "dagster-production"
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    assert sync.production_dagster_home() == tmp_path / "dh"
    assert psycopg2_url("postgresql://u:p@h:5432/d") == "postgresql+psycopg2://u:p@h:5432/d"
    assert psycopg2_url("postgres://h/d") == "postgresql+psycopg2://h/d"
    assert psycopg2_url("postgresql+psycopg2://h/d") == "postgresql+psycopg2://h/d"
