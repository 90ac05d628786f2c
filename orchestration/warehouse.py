"""The DuckDB warehouse: one place that opens connections, owns the ops tables' DDL, and renders
SQL text (quoting, partition-key lists, date ranges, transactions) for every other module."""

from __future__ import annotations

import contextlib
import datetime as dt
import random
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb


_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

OPS_DDL = """
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS core;
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS ml;
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.landed_files (
    source VARCHAR NOT NULL,
    path VARCHAR NOT NULL,            -- relative to the landing zone
    file_id VARCHAR NOT NULL,         -- sha256 of the content
    size_bytes BIGINT,
    format VARCHAR,
    compression VARCHAR,
    delivered_at TIMESTAMPTZ,         -- from the file name; orders deliveries deterministically
    observed_schema JSON,             -- [{name, type}] as delivered
    rows BIGINT,
    event_dates JSON,                 -- sorted ISO dates the file touches
    status VARCHAR NOT NULL,          -- loaded | duplicate | unreadable | rejected | empty | quarantined
    reason VARCHAR,
    bronze_path VARCHAR,
    landed_at TIMESTAMPTZ NOT NULL,   -- when plumbline first took this content at this path
    PRIMARY KEY (source, path, file_id)
);
-- lines the reader could not turn into rows (dead-lettered, stage read): delivered lines = rows + this
ALTER TABLE ops.landed_files ADD COLUMN IF NOT EXISTS rejected_at_read BIGINT;
CREATE TABLE IF NOT EXISTS ops.dead_letter (
    source VARCHAR NOT NULL,
    partition_date DATE,              -- null when the event date itself is unreadable (even from a rejected line)
    file_id VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL,
    row_offset BIGINT NOT NULL,       -- 0-based data row in the file; csv line number for unparseable lines
    rule_id VARCHAR NOT NULL,
    stage VARCHAR NOT NULL,           -- read (a line the reader could not parse) | bronze (event date, lateness, schema) | raw (contract row rules)
    reason VARCHAR NOT NULL,
    severity VARCHAR NOT NULL,
    payload JSON,
    contract_version VARCHAR,
    run_id VARCHAR,
    first_seen TIMESTAMPTZ NOT NULL,
    last_seen TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL,
    status VARCHAR NOT NULL,          -- open | resolved
    resolved_by_run VARCHAR,
    PRIMARY KEY (source, file_id, row_offset, rule_id)
);
CREATE TABLE IF NOT EXISTS ops.partition_accounting (
    source VARCHAR NOT NULL,
    partition_date DATE NOT NULL,     -- 1970-01-01 for unpartitioned snapshots
    delivered BIGINT NOT NULL,
    accepted BIGINT NOT NULL,
    dead_lettered BIGINT NOT NULL,
    superseded BIGINT NOT NULL,
    built_from JSON NOT NULL,         -- sorted file ids the partition was rebuilt from
    contract_version VARCHAR NOT NULL,
    PRIMARY KEY (source, partition_date)
);
CREATE TABLE IF NOT EXISTS ops.schema_versions (
    source VARCHAR NOT NULL,
    schema_hash VARCHAR NOT NULL,
    observed_schema JSON NOT NULL,    -- [{name, type}]: types observed from the values (schema_changes)
    first_file VARCHAR NOT NULL,      -- first and last delivery by delivery time, not arrival
    first_delivered_at TIMESTAMPTZ,
    last_file VARCHAR NOT NULL,
    last_delivered_at TIMESTAMPTZ,
    files BIGINT NOT NULL,
    partitions JSON NOT NULL,         -- sorted event dates the version's deliveries touch
    quarantined_files BIGINT NOT NULL,
    PRIMARY KEY (source, schema_hash)
);
CREATE TABLE IF NOT EXISTS ops.restatements (
    asset VARCHAR NOT NULL,           -- raw.<source>
    partition_date DATE NOT NULL,     -- 1970-01-01 for unpartitioned snapshots
    rows_before BIGINT NOT NULL,
    rows_after BIGINT NOT NULL,
    measures_before JSON NOT NULL,    -- {column: sum} of the contract's restatement.keyMeasures
    measures_after JSON NOT NULL,
    caused_by JSON NOT NULL,          -- [{file_id, path, change: added|removed}] or [{change: revalidated, ...}]
    contract_version VARCHAR NOT NULL,
    run_id VARCHAR NOT NULL,
    restated_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS ops.model_promotions (  -- every change of the champion model, and every rejection
    decided_at TIMESTAMPTZ NOT NULL,
    action VARCHAR NOT NULL,          -- promote, reject, rollback
    model VARCHAR NOT NULL,           -- registered model name
    version VARCHAR NOT NULL,         -- the version promoted, rejected or restored
    previous_champion VARCHAR,
    actor VARCHAR NOT NULL,           -- promotion_gate, or who ran plumbline model promote/rollback
    reason VARCHAR NOT NULL
);
"""

SNAPSHOT_PARTITION = "1970-01-01"  # the single "partition" of an unpartitioned snapshot source


def ident(name: str) -> str:
    """Quote an identifier after checking it; names from data never reach SQL unchecked."""
    if not _IDENT.match(name):
        raise ValueError(f"not a safe SQL identifier: {name!r}")
    return f'"{name}"'


def delivered_ident(name: str) -> str:
    """Quote a column name exactly as a delivery spells it (it may be anything, including SQL)."""
    return '"' + name.replace('"', '""') + '"'


def literal(value) -> str:
    """A SQL literal for a contract value (strings quoted, numbers validated)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def date_literal(value) -> str:
    """A DATE literal from an ISO date string or a date: '2013-01-01'::DATE. The key is parsed here:
    DuckDB's cast would read a date from the front of '2013-01-01 junk' and drop the rest."""
    text = str(value)
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a partition key (YYYY-MM-DD): {text!r}") from None
    return f"{literal(text)}::DATE"


def key_list(keys) -> str:
    """Daily partition keys as a parenthesised list for IN: ('2013-01-01'::DATE, ...); an empty
    subquery when there are none (IN matches nothing, NOT IN everything; DuckDB 1.5 refuses `IN ()`)."""
    if isinstance(keys, str):  # one key passed bare would be read as its characters
        raise TypeError(f"key_list takes a list of partition keys, not the string {keys!r}")
    keys = list(keys)
    if not keys:
        return "(SELECT NULL::DATE WHERE false)"
    return "(" + ", ".join(date_literal(k) for k in keys) + ")"


def date_range(column: str, start, end=None) -> str:
    """A predicate on a DATE column (SQL text) for the half-open range [start, end), or from start on."""
    upper = f" AND {column} < {date_literal(end)}" if end is not None else ""
    return f"{column} >= {date_literal(start)}{upper}"


class WriteConflict(RuntimeError):
    """Another writer committed a conflicting change first; nothing of this transaction was applied."""


@contextlib.contextmanager
def transaction(con):
    """All or nothing: a crash or error anywhere inside leaves the tables as they were."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        con.execute("ROLLBACK")
        raise
    try:
        con.execute("COMMIT")
    except duckdb.TransactionException as e:
        if "conflict" not in str(e).lower():
            raise
        raise WriteConflict(f"{e}. Nothing of this transaction was applied; running it again applies it "
                            "(the production instance retries the run)") from e


CONFLICT_ATTEMPTS = 8  # a writer loses at most this many commits in a row to writers of other partitions


def retry_conflicts(write, what: str, attempts: int = CONFLICT_ATTEMPTS):
    """write() (one whole transaction, read to commit) again after a WriteConflict, with a short
    random backoff. DuckLake checks conflicts per table: an insert conflicts with any other
    transaction's delete from the same table committed meanwhile, even of other partitions (and
    every partition replace also rewrites its rows in the shared ops tables). Nothing of a conflicting
    transaction was applied, so running it again from the new snapshot is the same replace done later.
    The embedded file has one writer and never conflicts."""
    for attempt in range(1, attempts + 1):
        try:
            return write()
        except WriteConflict as e:
            if attempt == attempts:
                raise
            print(f"{what}: another writer's commit conflicted with this one (attempt {attempt} of {attempts}); "
                  f"nothing was applied, retrying: {str(e).splitlines()[-1][:200]}", file=sys.stderr, flush=True)
            time.sleep(random.uniform(0.05, 0.25) * attempt)


def create_if_absent(con, ddl: str, attempts: int = CONFLICT_ATTEMPTS) -> None:
    """Run CREATE ... IF NOT EXISTS, again when another writer created the same thing at the same
    moment (a DuckLake commit conflict; the second attempt finds it there)."""
    for attempt in range(1, attempts + 1):
        try:
            con.execute(ddl)
            return
        except duckdb.TransactionException as e:
            if "conflict" not in str(e).lower() or attempt == attempts:
                raise
            time.sleep(random.uniform(0.05, 0.25) * attempt)


# Writers of the same partitions on a warehouse that takes concurrent writers (DuckLake) are
# serialized per connection by a locker the warehouse registers; the embedded file needs none.
_LOCKERS: dict[int, object] = {}


def register_locker(con, locker) -> None:
    _LOCKERS[id(con)] = locker


def unregister_locker(con) -> None:
    _LOCKERS.pop(id(con), None)


@contextlib.contextmanager
def partition_lock(con, table: str, keys) -> Iterator[None]:
    """Hold the partitions `keys` of `table` against other writers from before the transaction that
    replaces them begins until after it ends: a later writer then starts from what the first wrote."""
    locker = _LOCKERS.get(id(con))
    if locker is None:
        yield
        return
    with locker.hold(table, sorted(str(k) for k in keys)):
        yield


def insert_absent(con, table: str, columns: str, key: tuple[str, ...], rows_sql: str, params=None) -> None:
    """INSERT the rows of `rows_sql` (named as `columns`) whose key `table` does not hold yet. The
    same SQL on every warehouse: DuckLake has no primary keys, so no ON CONFLICT."""
    match = " AND ".join(f"_t.{ident(k)} IS NOT DISTINCT FROM _n.{ident(k)}" for k in key)
    sql = (f"INSERT INTO {table} ({columns}) SELECT {columns} FROM ({rows_sql}) AS _n "
           f"WHERE NOT EXISTS (SELECT 1 FROM {table} AS _t WHERE {match})")
    if params is None:
        con.execute(sql)
    else:
        con.executemany(sql, params)


def insert_absent_values(con, table: str, columns: str, key: tuple[str, ...], rows: list) -> None:
    """insert_absent for parameter rows, one statement per row (dead letters of unreadable lines, a landed file)."""
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(f"?::{_PARAM_TYPE.get(n, 'VARCHAR')} AS {ident(n)}" for n in names)
    insert_absent(con, table, columns, key, f"SELECT {values}", rows)


def insert_absent_rows(con, table: str, columns: str, key: tuple[str, ...], rows: list) -> None:
    """insert_absent_values in one statement for all the rows (the landed files of a batch)."""
    if not rows:
        return
    names = [c.strip() for c in columns.split(",")]
    values = ", ".join(f"?::{_PARAM_TYPE.get(n, 'VARCHAR')} AS {ident(n)}" for n in names)
    insert_absent(con, table, columns, key, " UNION ALL ".join([f"SELECT {values}"] * len(rows)),
                  [[v for row in rows for v in row]])


# Parameter types of the ops columns written from Python rows (anything else binds as VARCHAR).
_PARAM_TYPE = {"partition_date": "DATE", "row_offset": "BIGINT", "payload": "JSON", "first_seen": "TIMESTAMPTZ",
               "last_seen": "TIMESTAMPTZ", "attempts": "INTEGER", "size_bytes": "BIGINT", "delivered_at": "TIMESTAMPTZ",
               "observed_schema": "JSON", "rows": "BIGINT", "event_dates": "JSON", "landed_at": "TIMESTAMPTZ",
               "rejected_at_read": "BIGINT"}


def table_exists(con, schema: str, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
                            [schema, table]).fetchall()[0][0])


@dataclass(frozen=True)
class DuckDBFile:
    """A warehouse in one DuckDB file, opened with DuckDB alone: the embedded Warehouse resource
    connects through it, and read commands open it without loading Dagster."""

    path: Path

    def exists(self) -> bool:
        """Whether a sync has created the warehouse."""
        return self.path.is_file()

    def location(self) -> str:
        """Where the warehouse is: for lineage namespaces and messages."""
        return f"duckdb://{self.path}"

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = _connect_with_retry(self.path, read_only, LOCK_WAIT_S if wait_s is None else wait_s)
        try:
            con.execute("SET TimeZone = 'UTC'")
            if not read_only:
                con.execute(OPS_DDL)
            yield con
        finally:
            con.close()


LOCK_WAIT_S = 1800.0   # a writer rebuilding a long range holds the file for minutes
LOCK_REPORT_EVERY_S = 15.0
_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*?)(?:\. See also|$)")


def _connect_with_retry(path: Path, read_only: bool, timeout_s: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """DuckDB allows one writing process per file: wait for the lock instead of failing the run, and
    say on stderr which process holds it (DuckDB names it), at once and then every few seconds."""
    started = time.monotonic()
    delay, reported = 0.1, None
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as e:
            if "lock" not in str(e).lower() or timeout_s <= 0:  # no wait asked for: the caller handles the lock
                raise
            holder = m.group(1) if (m := _LOCK_HOLDER.search(str(e))) else "another process"
            waited = time.monotonic() - started
            if waited > timeout_s:
                raise RuntimeError(f"{path} stayed locked by {holder} for {waited:.0f}s; DuckDB allows one writing "
                                   "process per file: wait for that process or stop it") from e
            if reported is None or time.monotonic() - reported >= LOCK_REPORT_EVERY_S:
                print(f"waiting for {path}: held open by {holder} ({waited:.0f}s so far; "
                      "DuckDB allows one writing process per file)", file=sys.stderr, flush=True)
                reported = time.monotonic()
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
