"""The compiled form of a data contract: what ingestion, checks and assets read.

The ODCS document stays the source of truth; this is the small, typed view of it that plumbline
needs, built once per load by contracts.loader.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

# ODCS logical type -> the DuckDB type used when no physicalType is given.
LOGICAL_TO_DUCKDB = {
    "string": "VARCHAR",
    "integer": "BIGINT",
    "number": "DOUBLE",
    "boolean": "BOOLEAN",
    "date": "DATE",
    "timestamp": "TIMESTAMPTZ",
    "time": "TIME",
}

# physicalTypes a contract may ask for, per logical type; anything else is a lint error.
ALLOWED_PHYSICAL = {
    "string": {"VARCHAR"},
    "integer": {"TINYINT", "SMALLINT", "INTEGER", "BIGINT"},
    "number": {"FLOAT", "DOUBLE", "DECIMAL(18,3)"},
    "boolean": {"BOOLEAN"},
    "date": {"DATE"},
    "timestamp": {"TIMESTAMPTZ", "TIMESTAMP"},
    "time": {"TIME"},
}

SEVERITIES = ("error", "warning", "info")
DEFAULT_REJECT_TOLERANCE = 0.01  # customProperties.rejectTolerance when a contract does not set it
# customProperties.schemaEvolution (dlt's vocabulary): what each kind of change may do, and the default
EVOLUTION_KEYS = ("tables", "columns", "dataType", "primaryKey")
EVOLUTION_MODES = ("evolve", "freeze", "discard_row", "discard_value")
EVOLUTION_DEFAULTS = {"tables": "freeze", "columns": "discard_value", "dataType": "freeze",
                      "primaryKey": "evolve"}  # evolve: the later row of a repeated key wins


@dataclass(frozen=True)
class Column:
    name: str
    logical_type: str
    duckdb_type: str
    required: bool = False
    primary_key_position: int | None = None
    description: str = ""
    null_sentinels: tuple = ()
    source_names: tuple[str, ...] = ()
    source_timezone: str | None = None  # naive delivered times are local to this zone


@dataclass(frozen=True)
class Rule:
    """One quality rule; row rules decide dead-lettering, every rule becomes an asset check."""

    id: str
    kind: str  # required | type | range | allowed_values | pattern | not_null | row_count | foreign_key
    severity: str
    column: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    values: tuple = ()
    pattern: str | None = None
    reference: tuple[str, str] | None = None  # (source, column) for foreign_key
    threshold: float | None = None  # row_count lower bound (exclusive)
    description: str = ""
    reject_tolerance: float | None = None  # its own rejectTolerance; None: the contract's (Contract.tolerance)

    @property
    def is_row_rule(self) -> bool:
        return self.kind in {"required", "type", "range", "allowed_values", "pattern", "not_null"}

    @property
    def blocks(self) -> bool:
        return self.severity == "error"


@dataclass(frozen=True)
class Partitioning:
    event_date: tuple[str, ...]  # one date/timestamp column, or (year, month, day)
    granularity: str
    timezone: str
    start: dt.date
    end: dt.date | None


@dataclass(frozen=True)
class Coverage:
    """The days the source has data for, where its contract says (customProperties.sourceCoverage):
    partitions outside them stay empty on purpose. end None: up to the partitioning's end."""

    start: dt.date
    end: dt.date | None  # inclusive
    why: str


@dataclass(frozen=True)
class Restatement:
    """What a restatement records and when it is suspicious (customProperties.restatement)."""

    key_measures: tuple[str, ...] = ()  # numeric columns whose per-partition sum is recorded before and after
    max_restatements: int = 3           # a partition restated more often fails the restatements check
    max_change_percent: float = 5.0     # a row count or measure moving more than this fails it too


# ODCS slaProperties units plumbline reads, in hours.
SLA_UNIT_HOURS = {"min": 1 / 60, "minutes": 1 / 60, "h": 1, "hr": 1, "hours": 1,
                  "d": 24, "day": 24, "days": 24, "w": 168, "week": 168, "weeks": 168}


@dataclass(frozen=True)
class Contract:
    name: str
    id: str
    version: str
    path: str
    description: str
    table: str  # schema-qualified target, e.g. raw.flights
    owners: tuple[str, ...]
    columns: tuple[Column, ...]
    rules: tuple[Rule, ...]
    partitioning: Partitioning | None
    allowed_lateness: dt.timedelta | None
    dead_letter: dict = field(default_factory=dict)
    schema_evolution: dict = field(default_factory=dict)
    sla: dict = field(default_factory=dict)
    restatement: Restatement = field(default_factory=Restatement)
    reject_tolerance: float = DEFAULT_REJECT_TOLERANCE  # for rules without their own (customProperties.rejectTolerance)
    coverage: Coverage | None = None  # where the source starts or ends inside the partitions (customProperties.sourceCoverage)

    def sla_duration(self, prop: str) -> dt.timedelta | None:
        """An slaProperties entry (latency, frequency) as a duration; None when absent or in a unit
        that is not a fixed length (months, years vary)."""
        value, unit = self.sla.get(prop, (None, None))
        hours = SLA_UNIT_HOURS.get(str(unit).lower())
        if value is None or hours is None:
            return None
        return dt.timedelta(hours=float(value) * hours)

    def evolution_mode(self, key: str) -> str:
        """The schemaEvolution mode for one of EVOLUTION_KEYS: the contract's, else the default."""
        return self.schema_evolution.get(key, EVOLUTION_DEFAULTS[key])

    @property
    def primary_key(self) -> tuple[str, ...]:
        keyed = [c for c in self.columns if c.primary_key_position is not None]
        return tuple(c.name for c in sorted(keyed, key=lambda c: c.primary_key_position))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def row_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.is_row_rule)

    def tolerance(self, rule: Rule) -> float:
        """The share of a partition's delivered rows `rule` may reject before its check fails."""
        return self.reject_tolerance if rule.reject_tolerance is None else rule.reject_tolerance

    def rejecting_rules(self) -> tuple[Rule, ...]:
        """Row rules whose failure sends the row to the dead-letter queue."""
        return tuple(r for r in self.row_rules if r.severity == "error")
