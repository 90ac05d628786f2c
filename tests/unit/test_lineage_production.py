"""Lineage names datasets where the deployment keeps them: the embedded DuckDB file, or the DuckLake
catalog in production (ducklake:postgres://host:port/db, lake.<schema>.<table>), and the MLflow
registry of each. A small code location is run on an ephemeral instance and its events are built
from the event log, as the run-status sensors build them: every event validates against the
OpenLineage schemas, and no password given in any setting appears in any field of any event."""

from __future__ import annotations

import json
from collections import Counter

import dagster as dg
import pytest
from openlineage.client.serde import Serde

from openlineage_validation import errors, read_events
from orchestration import lineage, names
from orchestration.automation import lineage_sensors
from orchestration.lakehouse import Lakehouse
from orchestration.lineage import datasets, events, spool
from orchestration.lineage.transport import LineageTransport
from orchestration.ml.registry import ModelRegistry
from orchestration.resources import resources_by_deployment
from orchestration.warehouse_resource import Warehouse

SECRETS = ("catalog-secret", "mlflow-secret", "query-secret", "recorded-secret")
CATALOG_URL = "postgresql://plumbline:catalog-secret@db.example:6543/lake_catalog"
MLFLOW_URL = "postgresql://ml:mlflow-secret@mlflow-db.example:5432/mlflow?sslmode=require&password=query-secret"
RECORDED = "postgresql+psycopg2://ml:recorded-secret@mlflow-db.example:5432/mlflow"  # a run's metadata, as recorded
LAKE = "ducklake:postgres://db.example:6543/lake_catalog"
REGISTRY = "postgresql://mlflow-db.example:5432/mlflow"
MODEL = "toy_model"


@dg.asset(key=["src", "things"], metadata={"dagster/table_name": "warehouse.src.things",
                                             "dagster/column_schema": dg.TableSchema(columns=[dg.TableColumn("id", "BIGINT")])})
def raw_things() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 3})


@dg.asset(key=["core", "things"], deps=[raw_things],
          metadata={"dagster/table_name": "warehouse.core.things",
                    "dagster/column_lineage": dg.TableColumnLineage(deps_by_column={
                        "id": [dg.TableColumnDep(asset_key=dg.AssetKey(["src", "things"]), column_name="id")]})})
def core_things() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={"dagster/row_count": 3})


@dg.asset(key=["ml", "model"], deps=[core_things], metadata={names.REGISTERED_MODEL: MODEL})
def model() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={names.MODEL_VERSION: "3", names.MLFLOW_TRACKING_URI: RECORDED})


@dg.asset(key=["ml", "predictions"], deps=[model], metadata={"dagster/table_name": "warehouse.ml.predictions"})
def predictions() -> dg.MaterializeResult:
    return dg.MaterializeResult(metadata={names.CHAMPION_VERSION: "3", "dagster/row_count": 2})


@dg.asset(key=["marts", "broken"], deps=[core_things], metadata={"dagster/table_name": "warehouse.marts.broken"})
def broken() -> None:
    raise RuntimeError("the mart failed")


ASSETS = [raw_things, core_things, model, predictions, broken]


@pytest.fixture
def settings(tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "OPENLINEAGE_URL", "OPENLINEAGE_DISABLED",
                "OPENLINEAGE_CONFIG", "OPENLINEAGE_NAMESPACE", "PLUMBLINE_DEPLOYMENT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PLUMBLINE_CATALOG_URL", CATALOG_URL)
    monkeypatch.setenv("PLUMBLINE_MLFLOW_URL", MLFLOW_URL)
    monkeypatch.chdir(tmp_path)  # no openlineage.yml: the default JSON-lines transport under the home
    return tmp_path / "home"


@pytest.fixture
def finished_run(settings):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(ASSETS, instance=instance, raise_on_error=False)
    assert not result.success  # marts/broken fails: its step gets a FAIL event
    return instance, result.run_id


def production() -> datasets.Naming:
    found = resources_by_deployment["production"]
    return datasets.Naming(found["warehouse"], found["model_registry"])


def _places(built: list[dict]) -> set[tuple[str, str]]:
    out = set()
    for e in built:
        for side in ("inputs", "outputs"):
            for ds in e.get(side) or []:
                out.add((ds["namespace"], ds["name"]))
                for f in ((ds.get("facets") or {}).get("columnLineage") or {}).get("fields", {}).values():
                    out |= {(i["namespace"], i["name"]) for i in f["inputFields"]}
    return out


def _one_start_and_one_end_per_run(built: list[dict]) -> None:
    kinds = Counter((e["run"]["runId"], "START" if e["eventType"] == "START" else "END") for e in built)
    runs = {run for run, _ in kinds}
    assert all(kinds[(run, "START")] == 1 and kinds[(run, "END")] == 1 for run in runs), kinds


def test_each_deployment_names_its_warehouse_tables_and_registry(settings):
    embedded = datasets.Naming()
    assert embedded.table("warehouse.raw.flights") == datasets.Place(f"duckdb://{settings.resolve() / 'warehouse.duckdb'}",
                                                                     "warehouse.raw.flights")
    assert embedded.registry_namespace() == f"sqlite:///{settings.resolve() / 'mlflow' / 'mlflow.db'}"
    lake = production()
    assert lake.table("warehouse.raw.flights") == datasets.Place(LAKE, "lake.raw.flights")
    assert lake.registry_namespace() == REGISTRY
    assert lake.registry_namespace(RECORDED) == REGISTRY, "a recorded URI is shown without its credentials or driver"
    # the catalog as key=value, and a namespace for every asset of the real code location
    keyvalue = datasets.Naming(Lakehouse(catalog="host=db.example port=6543 dbname=lake_catalog user=p password=catalog-secret"))
    assert keyvalue.warehouse_namespace() == LAKE
    from orchestration.definitions import defs

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        here, there = datasets.place(node, embedded), datasets.place(node, lake)
        if key.path[0] == "bronze":
            assert here == there and here.namespace == "file"
        elif datasets.registered_model(node):
            assert there.namespace == REGISTRY and here.name == there.name
        else:
            assert here.namespace.startswith("duckdb://") and here.name.startswith("warehouse.")
            assert there == datasets.Place(LAKE, "lake." + here.name.removeprefix("warehouse.")), key
        assert not any(s in there.namespace + there.name for s in SECRETS)


def test_an_unconfigured_production_registry_or_catalog_names_its_variable(settings, monkeypatch):
    monkeypatch.delenv("PLUMBLINE_MLFLOW_URL")
    monkeypatch.delenv("PLUMBLINE_CATALOG_URL")
    with pytest.raises(Exception, match="PLUMBLINE_MLFLOW_URL"):
        production().registry_namespace()
    with pytest.raises(Exception, match="PLUMBLINE_CATALOG_URL"):
        production().warehouse_namespace()


@pytest.mark.parametrize("deployment", ["embedded", "production"])
def test_events_name_the_deployments_places_validate_and_carry_no_password(finished_run, deployment, settings):
    instance, run_id = finished_run
    naming = production() if deployment == "production" else datasets.Naming()
    defs = dg.Definitions(assets=ASSETS)
    built = [Serde.to_dict(e) for e in events.for_run(instance, run_id, defs, naming)]
    assert built and all(errors(e) == [] for e in built), [errors(e) for e in built if errors(e)][:3]
    text = json.dumps(built)
    assert not any(s in text for s in SECRETS), [s for s in SECRETS if s in text]
    _one_start_and_one_end_per_run(built)
    places = _places(built)
    if deployment == "production":
        assert {(LAKE, "lake.src.things"), (LAKE, "lake.core.things"), (LAKE, "lake.ml.predictions"),
                (LAKE, "lake.marts.broken"), (REGISTRY, f"models/{MODEL}/versions/3")} == places
    else:
        wh = f"duckdb://{settings.resolve() / 'warehouse.duckdb'}"
        # the model's run recorded the production store; the predictions' run recorded none: the embedded registry
        registry = f"sqlite:///{settings.resolve() / 'mlflow' / 'mlflow.db'}"
        assert {(wh, "warehouse.src.things"), (wh, "warehouse.core.things"), (wh, "warehouse.ml.predictions"),
                (wh, "warehouse.marts.broken"), (REGISTRY, f"models/{MODEL}/versions/3"),
                (registry, f"models/{MODEL}/versions/3")} == places
    failed = [e for e in built if e["eventType"] == "FAIL" and e["job"]["name"] == "marts.broken"]
    assert len(failed) == 1 and "the mart failed" in failed[0]["run"]["facets"]["errorMessage"]["stackTrace"]


def test_the_run_status_sensor_names_datasets_with_the_code_locations_resources(finished_run, settings):
    """As the daemon runs it: the sensor gets the production resources and spools the run once,
    however often the run is handed over (the sensor, then `plumbline sync`)."""
    instance, run_id = finished_run
    found = dict(resources_by_deployment["production"])
    defs = dg.Definitions(assets=ASSETS, sensors=lineage_sensors.sensors, resources=found)
    run = instance.get_run_by_id(run_id)
    failure = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)[0].dagster_event
    sensor = next(s for s in lineage_sensors.sensors if s.name == "lineage_on_failure")
    context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=failure, dagster_instance=instance,
                                                 dagster_run=run, resources=found, repository_def=defs.get_repository_def())
    sensor(context)
    assert spool.already_spooled(run_id) and not spool.pending()
    again = lineage.emit_run(instance, run_id, defs, LineageTransport(), found["warehouse"], found["model_registry"])
    assert again.sent == 0, "the run was spooled once: handing it over again sends nothing"
    emitted = read_events(settings / "lineage" / "events.jsonl")
    assert emitted and all(errors(e) == [] for e in emitted)
    assert {e["run"]["runId"] for e in emitted if e["job"]["facets"]["jobType"]["jobType"] == "JOB"} == {run_id}
    _one_start_and_one_end_per_run(emitted)
    assert (LAKE, "lake.core.things") in _places(emitted)
    assert not any(s in json.dumps(emitted) for s in SECRETS)


def test_the_embedded_default_is_unchanged_for_callers_that_name_no_resources(settings):
    assert datasets.warehouse_namespace() == Warehouse().location()
    assert datasets.registry_namespace() == datasets.Naming(Warehouse(), ModelRegistry()).registry_namespace()
