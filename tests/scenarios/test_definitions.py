"""The plumbline code location: its Dagster+ config, the Dagster CLIs' own checks, and what every asset declares."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.container_context import process_shared_container_context_config

from contracts.loader import load_contracts
from orchestration.quality import checks as quality_checks

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the project venv's bin: dg, dagster and dagster-cloud sit beside python
JOBS = ("ingest_deliveries", "refresh_snapshots", "rebuild_flights", "rebuild_weather")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment that writes nothing under the repo and never phones home."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    # Telemetry off: the checks must run offline and leave no trace outside tmp_path.
    (dagster_home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_CLOUD_", "DAGSTER_HOME"))}
    out.update(PLUMBLINE_HOME=str(tmp_path / "home"), DAGSTER_HOME=str(dagster_home),
               VIRTUAL_ENV=str(BIN.parent), NO_COLOR="1")
    return out


def run(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------------------- dagster_cloud.yaml


def cloud_check(project_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    # Connection check skipped: this validates the file alone, without network or an organization.
    return run([str(BIN / "dagster-cloud"), "ci", "check", "--project-dir", str(project_dir),
                "--dagster-cloud-yaml-check", "error", "--dagster-cloud-connect-check", "skip"], env)


def test_dagster_cloud_yaml_describes_the_plumbline_location():
    config = yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())
    [location] = config["locations"]
    assert location["location_name"] == "plumbline"
    assert location["code_source"] == {"module_name": "orchestration.definitions"}
    assert location["attribute"] == "defs"
    assert location["working_directory"] == "."
    assert location["build"]["directory"] == "."


# What a run of the production profile reads from its environment (docs/deploy.md); the instance is
# Dagster+'s own in a hybrid deployment, so PLUMBLINE_INSTANCE_URL is not among them.
PRODUCTION_SETTINGS = ("PLUMBLINE_CATALOG_URL", "PLUMBLINE_DATA_PATH", "PLUMBLINE_MLFLOW_URL", "PLUMBLINE_BROKER_URL")
# The container_context fields the Kubernetes and Docker agents take (dagster_k8s.K8sContainerContext,
# dagster_docker.DockerContainerContext; neither package is a dependency, so they are named here).
K8S_FIELDS = {"image_pull_policy", "image_pull_secrets", "service_account_name", "env_config_maps", "env_secrets",
              "env_vars", "volume_mounts", "volumes", "labels", "namespace", "resources", "scheduler_name",
              "security_context", "server_k8s_config", "run_k8s_config", "env"}
DOCKER_FIELDS = {"registry", "env_vars", "networks", "container_kwargs"}


def test_dagster_cloud_yaml_runs_the_production_profile_on_hybrid_agents():
    [location] = yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())["locations"]
    context = location["container_context"]
    # Dagster's own parsing of the part every agent reads: env_vars as KEY or KEY=VALUE strings.
    shared = process_shared_container_context_config(context)
    assert "PLUMBLINE_DEPLOYMENT=production" in shared["env_vars"]
    assert set(context) <= {"env_vars", "k8s", "docker", "ecs"}, context
    assert set(context["k8s"]) <= K8S_FIELDS and set(context["docker"]) <= DOCKER_FIELDS
    # Kubernetes takes the settings from a ConfigMap and a Secret; Docker from the agent's environment.
    assert context["k8s"]["env_config_maps"] and context["k8s"]["env_secrets"]
    docker = context["docker"]["env_vars"]
    assert set(PRODUCTION_SETTINGS) <= set(docker), docker
    # No value in the file: secrets and addresses come from where each agent keeps them.
    assert all("=" not in v for v in docker), docker
    assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", (ROOT / "dagster_cloud.yaml").read_text())


def test_dagster_cloud_yaml_passes_the_dagster_cloud_check(env):
    result = cloud_check(ROOT, env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Checked OK" in result.stdout


@pytest.mark.parametrize("breakage", ["unknown_key", "no_location_name", "two_code_sources", "missing_build_dir",
                                      "container_context_not_a_mapping"])
def test_a_broken_dagster_cloud_yaml_fails_the_same_check(tmp_path, env, breakage):
    config = yaml.safe_load((ROOT / "dagster_cloud.yaml").read_text())
    location = config["locations"][0]
    if breakage == "unknown_key":
        location["python_module"] = "orchestration.definitions"
    elif breakage == "no_location_name":
        del location["location_name"]
    elif breakage == "container_context_not_a_mapping":
        location["container_context"] = ["PLUMBLINE_DEPLOYMENT=production"]
    elif breakage == "two_code_sources":
        location["code_source"]["python_file"] = "orchestration/definitions.py"
    else:
        location["build"]["directory"] = "does_not_exist"
    project = tmp_path / "project"
    project.mkdir()
    (project / "dagster_cloud.yaml").write_text(yaml.safe_dump(config))
    result = cloud_check(project, env)
    assert result.returncode != 0, result.stdout
    assert "Failed: 1" in result.stdout


# ------------------------------------------------------------------------------ Dagster's own checks


def test_dg_check_defs(env):
    result = run([str(BIN / "dg"), "check", "defs"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout


def test_dagster_definitions_validate(env):
    result = run([str(BIN / "dagster"), "definitions", "validate", "-m", "orchestration.definitions"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


# ---------------------------------------------------------------------------------- in-process defs


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from orchestration.definitions import defs

    return defs


@pytest.fixture(scope="module")
def specs(defs) -> dict[str, dg.AssetSpec]:
    return {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}


def test_every_contract_has_bronze_and_raw_assets_plus_core_marts_and_ml(specs):
    sources = load_contracts()
    expected = {f"{layer}/{s}" for s in sources for layer in ("bronze", "raw")} | {"core/flights", "marts/carrier_daily"}
    expected |= {f"ml/{a}" for a in ("flight_features", "training_set", "delay_model", "model_evaluation", "flight_predictions")}
    # the operational tables, observed (assets/operational.py)
    expected |= {f"ops/{t}" for t in ("dead_letter", "landed_files", "restatements", "schema_versions",
                                      "partition_accounting", "model_promotions")} | {"ml/drift"}
    assert set(specs) == expected


def test_every_asset_declares_description_owners_kinds_group_and_code_version(specs):
    for key, spec in specs.items():
        assert spec.description and spec.description.strip(), key
        assert spec.owners, key
        assert all("@" in o or o.startswith("team:") for o in spec.owners), (key, spec.owners)
        assert spec.kinds, key
        assert spec.group_name == key.split("/")[0], key
        assert spec.code_version, key


def test_raw_assets_carry_the_contract_column_schema(specs):
    for name, contract in load_contracts().items():
        spec = specs[f"raw/{name}"]
        schema = spec.metadata.get("dagster/column_schema")
        assert isinstance(schema, dg.TableSchema), name
        columns = {c.name: c for c in schema.columns}
        for col in contract.columns:
            assert columns[col.name].type == col.duckdb_type, (name, col.name)
            assert columns[col.name].constraints.nullable is (not col.required), (name, col.name)
        assert {"_source_file", "_source_row"} <= set(columns), name
        assert ("event_date" in columns) is (contract.partitioning is not None), name
        assert spec.metadata["dagster/table_name"] == f"warehouse.{contract.table}"


def test_partitioned_raw_core_and_marts_backfill_in_a_single_run(defs, specs):
    graph = defs.resolve_asset_graph()
    partitioned_raw = [f"raw/{n}" for n, c in load_contracts().items() if c.partitioning]
    assert partitioned_raw, "expected at least one partitioned contract"
    for key in [*partitioned_raw, "core/flights", "marts/carrier_daily"]:
        node = graph.get(dg.AssetKey.from_user_string(key))
        assert node.partitions_def is not None, key
        # single_run() is the policy with no cap on partitions per run
        assert node.backfill_policy == dg.BackfillPolicy.single_run(), key


def test_raw_assets_get_an_asset_check_per_rule_blocking_on_error(defs):
    graph = defs.resolve_asset_graph()
    for name, contract in load_contracts().items():
        key = dg.AssetKey(["raw", name])
        checks = {k.name: graph.get_check_spec(k) for k in graph.asset_check_keys if k.asset_key == key}
        assert checks[quality_checks.ACCOUNTING].blocking
        assert quality_checks.CONFORMANCE in checks
        for rule in quality_checks.checked_rules(contract):
            assert checks[rule.id].blocking is (rule.severity == "error"), rule.id


@pytest.mark.parametrize("job_name", JOBS)
def test_jobs_resolve(defs, job_name):
    job = defs.resolve_job_def(job_name)
    assert job.asset_layer.selected_asset_keys, job_name


def test_job_selections(defs):
    def selected(name):
        return {k.to_user_string() for k in defs.resolve_job_def(name).asset_layer.selected_asset_keys}

    sources = load_contracts()
    assert selected("ingest_deliveries") == {f"bronze/{s}" for s in sources}
    assert selected("refresh_snapshots") == {f"raw/{n}" for n, c in sources.items() if not c.partitioning}
    assert selected("rebuild_flights") == {"raw/flights", "core/flights", "marts/carrier_daily"}
    assert selected("rebuild_weather") == {"raw/weather"}
    assert defs.resolve_job_def("rebuild_flights").partitions_def is not None
