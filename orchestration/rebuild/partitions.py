"""Partition replacement: the one mechanism that rebuilds raw.<source> partitions from bronze.

A partition is rebuilt from every bronze row whose event date falls in it, whatever file delivered
it: contract casts, row rules, dedup by primary key with a deterministic winner (WINNER_ORDER).
Delete, insert, dead-letter and accounting commit in one transaction, so readers see the old
partition or the new one. Lines the reader rejected in a partition count in its accounting as
delivered and dead-lettered.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from dataclasses import dataclass

from contracts.model import Contract
from orchestration.quality import dead_letter
from orchestration.ingest import lateness
from orchestration.rebuild import restatements
from orchestration import settings
from orchestration.rebuild.conform import stage_select
from orchestration.warehouse import (SNAPSHOT_PARTITION, create_if_absent, date_literal, ident, key_list, literal,
                                    partition_lock, retry_conflicts, transaction)

@dataclass(frozen=True)
class PartitionAccount:
    partition: str
    delivered: int
    accepted: int
    dead_lettered: int
    superseded: int
    built_from: tuple[str, ...]


def raw_table_ddl(contract: Contract) -> str:
    cols = [f"{ident(c.name)} {c.duckdb_type}" for c in contract.columns]
    if contract.partitioning:
        cols.append("event_date DATE NOT NULL")
    cols += ["_source_file VARCHAR NOT NULL", "_source_row BIGINT NOT NULL"]
    return f"CREATE TABLE IF NOT EXISTS {contract.table} ({', '.join(cols)})"


def loaded_files(con, source: str) -> list[tuple[str, str, list[str]]]:
    """(file_id, bronze path, event dates) of every loaded delivery of a source."""
    return [(fid, bp, json.loads(ev or "[]")) for fid, bp, ev in con.execute(
        "SELECT file_id, bronze_path, event_dates FROM ops.landed_files WHERE source = ? AND status = 'loaded' "
        "ORDER BY file_id", [source]).fetchall()]


def quarantined_files(con, source: str) -> list[tuple[str, str, list[str], str]]:
    """(file_id, path, event dates, reason) of every delivery held back by a schema change."""
    return [(fid, path, json.loads(ev or "[]"), reason) for fid, path, ev, reason in con.execute(
        "SELECT file_id, path, event_dates, reason FROM ops.landed_files WHERE source = ? AND status = 'quarantined' "
        "ORDER BY path", [source]).fetchall()]


QUARANTINED = "quarantined:"  # marks a held-back delivery in built_from, so its partition is built (and checked) once


def files_by_partition(con, contract: Contract) -> dict[str, set[str]]:
    """partition -> file ids that touch it (quarantined ones marked), from the manifest alone."""
    out: dict[str, set[str]] = {}
    for fid, _, dates in loaded_files(con, contract.name):
        for d in (dates if contract.partitioning else [SNAPSHOT_PARTITION]):
            out.setdefault(d, set()).add(fid)
    for fid, _, dates, _ in quarantined_files(con, contract.name):
        for d in (dates if contract.partitioning else [SNAPSHOT_PARTITION]):
            out.setdefault(d, set()).add(QUARANTINED + fid)
    return out


def stale_partitions(con, contract: Contract) -> list[str]:
    """Partitions whose set of delivering files differs from the set they were last built from."""
    built = {str(p): set(json.loads(b)) for p, b in con.execute(
        "SELECT partition_date, built_from FROM ops.partition_accounting WHERE source = ?", [contract.name]).fetchall()}
    return sorted(p for p, files in files_by_partition(con, contract).items() if built.get(p) != files)


# The deterministic winner among rows with the same key: the latest delivery time in the file's name;
# then, among contents delivered under one path, the one plumbline took last (_arrival, the rank of
# the content among those taken at its path, so other paths' arrival order never matters); then
# file id, then the later row of the file.
WINNER_ORDER = "_delivered_at DESC NULLS LAST, _arrival DESC, _file_id DESC, _row_offset DESC"


def arrivals_sql(source: str) -> str:
    """file id -> _arrival: 1 for the first content taken at its path, 2 for the next, ..."""
    return f"""SELECT file_id AS _file_id, max(_arrival) AS _arrival FROM (
        SELECT file_id, status, row_number() OVER (PARTITION BY path ORDER BY landed_at, file_id) AS _arrival
        FROM ops.landed_files WHERE source = {literal(source)} AND status <> 'duplicate')
    WHERE status = 'loaded' GROUP BY ALL"""


@dataclass(frozen=True)
class Rebuilt:
    accounts: list[PartitionAccount]
    restated: list[dict]  # the ops.restatements rows this rebuild wrote


def rebuild(con, contract: Contract, partitions: list[str] | None, run_id: str) -> Rebuilt:
    """Replace the given daily partitions (or the whole snapshot when partitions is None)."""
    create_if_absent(con, raw_table_ddl(contract))
    home = settings.plumbline_home()
    snapshot = contract.partitioning is None
    keys = [SNAPSHOT_PARTITION] if snapshot else sorted(partitions or [])
    if not keys:
        return Rebuilt([], [])

    date_list = key_list(keys)  # keys is [SNAPSHOT_PARTITION] for a snapshot
    part_filter = "TRUE" if snapshot else f"event_date IN {date_list}"
    dlq_partitions = None if snapshot else keys  # a snapshot's dead letters have no partition

    def stage() -> None:
        """Under the lock, before the transaction: the partitions' bronze rows, cast and judged, in
        the temp table _stage (local to this connection). A retried commit starts again from here
        rather than from bronze: nobody else replaces these partitions while the lock is held."""
        wanted = set(keys)
        files = [(fid, bp) for fid, bp, dates in loaded_files(con, contract.name)
                 if snapshot or wanted.intersection(dates)]
        if files:
            paths = ", ".join(literal(str(home / bp)) for _, bp in files)
            where = "" if snapshot else f" WHERE _event_date IN {date_list} AND {lateness.held_filter(con, contract)}"
            source_sql = f"SELECT * FROM read_parquet([{paths}], union_by_name = true){where}"
        else:
            source_sql = stage_empty_source(contract)
        con.execute(f"CREATE OR REPLACE TEMP TABLE _stage AS {stage_select(contract, source_sql)}")

    def replace() -> Rebuilt:
        previous = {str(p): set(json.loads(b)) for p, b in con.execute(
            f"SELECT partition_date, built_from FROM ops.partition_accounting WHERE source = ? AND partition_date IN {date_list}",
            [contract.name]).fetchall()}

        with transaction(con):
            before = restatements.measure(con, contract, sorted(previous)) if previous else {}
            con.execute(f"DELETE FROM {contract.table} WHERE {part_filter}")
            insert_deduplicated(con, contract, snapshot)
            dead_letter.record_stage_failures(con, contract, run_id, dlq_partitions)
            if not snapshot:
                lateness.resolve_released(con, contract, keys, run_id)
            accounts = _account(con, contract, keys, snapshot)
            held = files_by_partition(con, contract)  # a quarantined delivery stays part of what a partition was built from
            accounts = [dataclasses.replace(a, built_from=tuple(sorted(
                set(a.built_from) | {f for f in held.get(a.partition, ()) if f.startswith(QUARANTINED)}))) for a in accounts]
            if previous:
                after = restatements.measure(con, contract, sorted(previous))
                restated = restatements.record(con, contract, previous, before, after,
                                               {a.partition: a.built_from for a in accounts}, run_id)
            else:
                restated = []
            con.execute(f"DELETE FROM ops.partition_accounting WHERE source = ? AND partition_date IN {date_list}",
                        [contract.name])
            # one statement for the whole range: a statement per partition is most of a one-row day's cost
            con.execute(
                "INSERT INTO ops.partition_accounting SELECT ?, unnest(?::DATE[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]), "
                "unnest(?::BIGINT[]), unnest(?::BIGINT[]), unnest(?::VARCHAR[]), ?",
                [contract.name, [a.partition for a in accounts], [a.delivered for a in accounts], [a.accepted for a in accounts],
                 [a.dead_lettered for a in accounts], [a.superseded for a in accounts],
                 [json.dumps(list(a.built_from)) for a in accounts], contract.version])
        return Rebuilt(accounts, restated)

    with partition_lock(con, contract.table, keys):  # a concurrent writer of these partitions waits
        stage()
        return retry_conflicts(replace, f"{contract.table} {keys[0]}..{keys[-1]}")


# Rows of _stage sorted by one INSERT: the sort holds every column of its rows, so a large rebuild is
# inserted a range of partitions at a time, each range sorted alone, in partition order.
ROWS_PER_INSERT = 500_000


def insert_batches(con, snapshot: bool, limit: int | None = None) -> list[tuple | None]:
    """(first, last) event dates of consecutive partitions of _stage holding about `limit` (by default
    ROWS_PER_INSERT) passing rows each, a partition never split, in date order; [None] (everything at
    once) for a snapshot."""
    if snapshot:
        return [None]
    limit = ROWS_PER_INSERT if limit is None else limit
    batches, first, last, rows = [], None, None, 0
    for day, n in con.execute("SELECT _event_date, count(*) FROM _stage WHERE _failed = '' "
                              "GROUP BY ALL ORDER BY 1").fetchall():
        if first is not None and rows + n > limit:
            batches.append((first, last))
            first, rows = None, 0
        first, last, rows = first or day, day, rows + n
    if first is not None:
        batches.append((first, last))
    return batches


def insert_deduplicated(con, contract: Contract, snapshot: bool) -> None:
    """INSERT the passing rows of _stage into the raw table, one row per primary key (WINNER_ORDER
    picks it among the rows of a key delivered more than once), ORDER BY event date, primary key.

    Only keys delivered more than once are ranked (sorting every row by key is the expensive part):
    _dup holds those keys and _winners the row each keeps. The joins are uncorrelated: a correlated
    EXISTS makes DuckDB group every staged key again. Equality on the key never matches a NULL, so a
    key with a NULL part is never ranked and all its rows are kept."""
    pk = ", ".join(ident(c) for c in contract.primary_key)
    match = " AND ".join(f"s.{ident(c)} = d.{ident(c)}" for c in contract.primary_key)
    names = [ident(c.name) for c in contract.columns] + ([] if snapshot else ["_event_date"]) + ["_file_id", "_row_offset"]
    out, staged = ", ".join(names), ", ".join(f"s.{n}" for n in names)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _dup AS SELECT {pk} FROM _stage WHERE _failed = '' GROUP BY ALL HAVING count(*) > 1")
    con.execute(f"""CREATE OR REPLACE TEMP TABLE _winners AS SELECT {out} FROM (
        SELECT s.*, a._arrival, row_number() OVER (PARTITION BY {pk} ORDER BY {WINNER_ORDER}) AS _rank
        FROM _stage s SEMI JOIN _dup d ON ({match}) LEFT JOIN ({arrivals_sql(contract.name)}) a USING (_file_id)
        WHERE _failed = '') WHERE _rank = 1""")
    for batch in insert_batches(con, snapshot):
        within = "" if batch is None else f" AND _event_date BETWEEN {date_literal(batch[0])} AND {date_literal(batch[1])}"
        con.execute(f"""
            INSERT INTO {contract.table}
            SELECT {out} FROM (
                SELECT {staged} FROM _stage s ANTI JOIN _dup d ON ({match}) WHERE _failed = ''{within}
                UNION ALL
                SELECT {out} FROM _winners WHERE TRUE{within})
            ORDER BY {'' if snapshot else '_event_date, '}{pk}""")
    con.execute("DROP TABLE _winners")
    con.execute("DROP TABLE _dup")


def replace_partitions(con, table: str, ddl: str, keys: list[str], select_template: str) -> dict[str, int]:
    """Delete-then-insert the event_date partitions `keys` of a derived table in one transaction.

    select_template holds `{partition_filter}`, the predicate on event_date to build from.
    Returns rows per partition.
    """
    create_if_absent(con, ddl)
    partition_filter = f"event_date IN {key_list(keys)}"
    def replace() -> dict:
        with transaction(con):
            con.execute(f"DELETE FROM {table} WHERE {partition_filter}")
            con.execute(f"INSERT INTO {table} {select_template.format(partition_filter=partition_filter)}")
            return dict(con.execute(f"SELECT strftime(event_date, '%Y-%m-%d'), count(*) FROM {table} "
                                    f"WHERE {partition_filter} GROUP BY ALL ORDER BY 1").fetchall())

    with partition_lock(con, table, keys):
        counts = retry_conflicts(replace, f"{table} {keys[0]}..{keys[-1]}")
    return {k: counts.get(k, 0) for k in keys}


def stage_empty_source(contract: Contract) -> str:
    """An empty bronze-shaped relation, so a partition with no deliveries rebuilds to empty."""
    cols = ", ".join(f"NULL::VARCHAR AS {ident(c.name)}" for c in contract.columns)
    return (f"SELECT {cols}, NULL::VARCHAR AS _extra, NULL::BIGINT AS _row_offset, NULL::VARCHAR AS _file_id, "
            "NULL::VARCHAR AS _file_path, NULL::TIMESTAMPTZ AS _delivered_at, NULL::DATE AS _event_date WHERE FALSE")


def _account(con, contract: Contract, keys: list[str], snapshot: bool) -> list[PartitionAccount]:
    group = date_literal(SNAPSHOT_PARTITION) if snapshot else "_event_date"
    staged = {str(p): (n, dl, files) for p, n, dl, files in con.execute(
        f"""SELECT {group} AS p, count(*), count(*) FILTER (WHERE _failed <> ''), list(DISTINCT _file_id ORDER BY _file_id)
        FROM _stage GROUP BY ALL""").fetchall()}
    table_group = date_literal(SNAPSHOT_PARTITION) if snapshot else "event_date"
    key_filter = "TRUE" if snapshot else f"event_date IN {key_list(keys)}"
    accepted = {str(p): n for p, n in con.execute(
        f"SELECT {table_group}, count(*) FROM {contract.table} WHERE {key_filter} GROUP BY ALL").fetchall()}
    unread = dead_letter.read_rejects(con, contract.name, None if snapshot else keys)
    out = []
    for k in keys:
        delivered, dead, files = staged.get(k, (0, 0, []))
        lines, reject_files = unread.get(k, (0, []))
        delivered, dead = delivered + lines, dead + lines
        acc = accepted.get(k, 0)
        out.append(PartitionAccount(k, delivered, acc, dead, delivered - acc - dead, tuple(sorted({*files, *reject_files}))))
    return out


def partition_range(start: str, end: str) -> list[str]:
    """Every daily partition key from start to end, inclusive."""
    a, b = dt.date.fromisoformat(start), dt.date.fromisoformat(end)
    return [(a + dt.timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]
