"""The resources of each deployment, chosen from one mapping (as in hooli's `resource_def[get_env()]`):
the warehouse, the MLflow model registry and the OpenLineage transport, and the executor its runs'
steps go to. PLUMBLINE_DEPLOYMENT names the deployment; nothing else reads it, so another
deployment is one more entry here."""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import cache

import dagster as dg

from orchestration.lakehouse import Lakehouse
from orchestration.settings import DEPLOYMENT_VARIABLE, EMBEDDED
from orchestration.lineage.transport import LineageTransport
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse_resource import Warehouse

DEFAULT_DEPLOYMENT = EMBEDDED

resources_by_deployment: dict[str, dict] = {
    # one DuckDB file, MLflow in SQLite and lineage in JSON lines, all under $PLUMBLINE_HOME (read at
    # call time); MLFLOW_* and OpenLineage's own settings still point elsewhere the standard way
    "embedded": {"warehouse": Warehouse(), "model_registry": ModelRegistry(), "lineage_transport": LineageTransport()},
    # DuckLake on a PostgreSQL catalog with data files on a shared path, MLflow in PostgreSQL: several
    # workers on several machines (docs/deploy.md); settings from the environment at call time
    "production": {"warehouse": Lakehouse(), "model_registry": ModelRegistry(from_environment=True), "lineage_transport": LineageTransport()},
}


BROKER_VARIABLE = "PLUMBLINE_BROKER_URL"


@cache
def _celery() -> dg.ExecutorDefinition:
    """Every step is a Celery task on RabbitMQ, taken by whichever `plumbline worker` is free; the
    broker URL is read from the environment by the process that orchestrates the run (it is never
    part of the run's config or events), results come back over the broker (rpc://)."""
    from dagster_celery import celery_executor  # Celery and kombu (0.1 s of CPU): no embedded process needs them

    return celery_executor.configured({"broker": {"env": BROKER_VARIABLE}, "backend": "rpc://"}, name="plumbline_celery")


executor_by_deployment: dict[str, Callable[[], dg.ExecutorDefinition | None]] = {
    # Dagster's default: `plumbline sync` executes in its own process (one DuckDB writer), runs the
    # daemon or the UI launch use the multiprocess executor under the warehouse pool
    "embedded": lambda: None,
    "production": _celery,
}


class UnknownDeployment(ValueError):
    """PLUMBLINE_DEPLOYMENT names no entry of resources_by_deployment."""


def deployment() -> str:
    """The deployment this process runs as: $PLUMBLINE_DEPLOYMENT, default embedded."""
    return _known(os.environ.get(DEPLOYMENT_VARIABLE) or DEFAULT_DEPLOYMENT)


def resources(name: str | None = None) -> dict:
    """The resources of deployment `name` (default: deployment()) by resource key, as Definitions takes them."""
    return dict(resources_by_deployment[_known(name) if name else deployment()])


def executor(name: str | None = None) -> dg.ExecutorDefinition | None:
    """The executor of deployment `name` (default: deployment()), None for Dagster's default."""
    return executor_by_deployment[_known(name) if name else deployment()]()


def _known(name: str) -> str:
    if name not in resources_by_deployment:
        raise UnknownDeployment(f"{DEPLOYMENT_VARIABLE}={name!r} is not a plumbline deployment: set it to one of "
                                f"{', '.join(sorted(resources_by_deployment))} (unset means {DEFAULT_DEPLOYMENT})")
    return name
