"""Warehouse-level scenario tests that drive ingestion and partition rebuilds through one
`warehouse_con` (schema changes and their MERGE, time zones, lateness), run again with that
connection on the production warehouse: DuckLake on the machine's PostgreSQL, a fresh catalog per
test. Same tests, same assertions; only the warehouse differs.

PLUMBLINE_LAKEHOUSE_SUITES=all adds test_bad_input and test_ingest_trust (68 tests, ~10 minutes on
2 cores; all passed on DuckLake when this module was written)."""

from __future__ import annotations

import inspect
import os

import pytest

import scenarios.test_schema_changes
import scenarios.test_timezones
import unit.test_lateness
from lakehouse_support import fresh_lake, point_at

# Their fixtures and helpers, and each of their tests that takes `warehouse_con` (the others do not
# touch the warehouse through it, and keep running on the embedded file in their own module).
_MODULES = [scenarios.test_schema_changes, scenarios.test_timezones, unit.test_lateness]
if os.environ.get("PLUMBLINE_LAKEHOUSE_SUITES") == "all":
    import scenarios.test_bad_input
    import scenarios.test_ingest_trust
    _MODULES += [scenarios.test_bad_input, scenarios.test_ingest_trust]
for _module in _MODULES:
    for _name, _value in vars(_module).items():
        if _name.startswith("__") or _name in ("pytestmark", "warehouse_con"):
            continue
        if _name.startswith("test_") and not (callable(_value) and "warehouse_con" in inspect.signature(_value).parameters):
            continue
        globals().setdefault(_name, _value)

pytestmark = pytest.mark.slow  # 27 tests, each with its own catalog database: ~4 minutes


@pytest.fixture
def warehouse_con(plumbline_home, tmp_path, monkeypatch):
    """The conftest fixture's connection, on DuckLake instead of the embedded file."""
    from orchestration.lakehouse import Lakehouse

    with fresh_lake(tmp_path) as lake:
        point_at(monkeypatch, lake)
        with Lakehouse().connect() as con:
            yield con
