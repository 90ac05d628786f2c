"""The embedded warehouse as a Dagster resource: the DuckDB file under PLUMBLINE_HOME. Kept apart from
orchestration/warehouse.py so that opening the file and rendering SQL load no Dagster (read commands)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb

from orchestration import settings
from orchestration.warehouse import DuckDBFile


class Warehouse(dg.ConfigurableResource):
    """DuckDB file under PLUMBLINE_HOME; every writer goes through connect()."""

    path: str = ""

    def db_path(self) -> Path:
        return Path(self.path) if self.path else settings.warehouse_path()

    def file(self) -> DuckDBFile:
        return DuckDBFile(self.db_path())  # the path is read at call time, so PLUMBLINE_HOME can change

    def exists(self) -> bool:
        """Whether a sync has created the warehouse."""
        return self.file().exists()

    def location(self) -> str:
        """Where the warehouse is: for lineage namespaces and messages."""
        return self.file().location()

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.file().connect(read_only, wait_s) as con:
            yield con
