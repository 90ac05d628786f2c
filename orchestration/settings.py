"""Where plumbline keeps its state: everything lives under PLUMBLINE_HOME (default ./data)."""

from __future__ import annotations

import os
from pathlib import Path


class NothingSynced(RuntimeError):
    """A read command on a home that no sync has written yet."""

    def __init__(self) -> None:
        super().__init__("nothing synced yet: run plumbline sync")


DEPLOYMENT_VARIABLE = "PLUMBLINE_DEPLOYMENT"  # resources.py maps each deployment to its resources
EMBEDDED = "embedded"  # the default deployment: one DuckDB file at warehouse_path()


def embedded() -> bool:
    """Whether this process runs the embedded deployment, whose warehouse read commands open with DuckDB alone."""
    return (os.environ.get(DEPLOYMENT_VARIABLE) or EMBEDDED) == EMBEDDED


def plumbline_home() -> Path:
    """The root of every file plumbline writes; read at call time so tests can point it elsewhere."""
    return Path(os.environ.get("PLUMBLINE_HOME", "./data")).resolve()


def landing_dir(home: Path | None = None) -> Path:
    return (home or plumbline_home()) / "landing"


def bronze_dir(home: Path | None = None) -> Path:
    return (home or plumbline_home()) / "bronze"


def warehouse_path(home: Path | None = None) -> Path:
    return (home or plumbline_home()) / "warehouse.duckdb"


def cache_dir(home: Path | None = None) -> Path:
    """Files derived from the code that any process may rebuild (the compiled contracts)."""
    return (home or plumbline_home()) / "cache"


def dagster_home(home: Path | None = None) -> Path:
    """The Dagster instance used by `plumbline sync` and `make ui` unless DAGSTER_HOME is set."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env) if env else (home or plumbline_home()) / "dagster"


def dagster_ui_url() -> str | None:
    """The Dagster UI's address, when one is configured: $PLUMBLINE_DAGSTER_URL, else $DAGSTER_WEBSERVER_URL."""
    url = os.environ.get("PLUMBLINE_DAGSTER_URL") or os.environ.get("DAGSTER_WEBSERVER_URL")
    return url.rstrip("/") if url else None


def run_ref(run_id: str) -> str:
    """A run as the CLI prints it: the whole id, which the UI's search opens, and a link when the UI is known."""
    url = dagster_ui_url()
    return f"{run_id} {url}/runs/{run_id}" if url else run_id
