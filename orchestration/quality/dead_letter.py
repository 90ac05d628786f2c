"""ops.dead_letter: the one place rejected records are written, resolved and read.

A row is keyed by (source, file, row offset, rule): re-running a partition finds it already there
and leaves it untouched, so the queue never holds duplicates and re-runs change nothing.
"""

from __future__ import annotations

import datetime as dt
import json

from contracts.model import Contract
from orchestration import catalog
from orchestration.ingest.readers import Reject
from orchestration.warehouse import ident, literal

COLUMNS = ("source, partition_date, file_id, file_path, row_offset, rule_id, stage, reason, severity, payload, "
           "contract_version, run_id, first_seen, last_seen, attempts, status")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


SHOWN_VALUE_CHARS = 200  # a reason quotes at most this much of a value; the payload keeps it whole
READ_STAGE = "read"      # lines the reader could not turn into rows


def shorten(text: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    """The first `limit` characters of a text, saying how long it was when it is cut."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def record_bronze_rejects(con, contract: Contract, file_id: str, path: str, rejects: list[Reject], run_id: str) -> None:
    """Lines the reader could not parse, in the partition their fields still give (else none); the
    raw line is the payload."""
    now = _now()
    rows = [
        (contract.name, r.partition, file_id, path, r.row_offset, f"{contract.name}_{r.kind}", READ_STAGE,
         f"{shorten(r.message, 1000)}; fix the line in the source and re-deliver", "error", json.dumps({"line": r.raw}),
         contract.version, run_id, now, now, 1, "open")
        for r in rejects
    ]
    if rows:
        con.executemany(f"INSERT INTO ops.dead_letter ({COLUMNS}) VALUES ({', '.join('?' * 16)}) ON CONFLICT DO NOTHING", rows)


def record_event_date_failures(con, contract: Contract, run_id: str, in_range_sql: str) -> None:
    """Rows of the temp table _bronze whose event date is unreadable or outside the partitions."""
    p = contract.partitioning
    cols = ", ".join(f"{literal(c.name)}, _b.{ident(c.name)}" for c in contract.columns)
    end = p.end.isoformat() if p.end else "open"
    con.execute(
        f"""INSERT INTO ops.dead_letter ({COLUMNS})
        SELECT {literal(contract.name)}, _event_date, _file_id, _file_path, _row_offset,
               CASE WHEN _event_date IS NULL THEN {literal(contract.name + '_event_date_valid')}
                    ELSE {literal(contract.name + '_event_date_in_range')} END, 'bronze',
               CASE WHEN _event_date IS NULL
                    THEN {literal(f"event date from {list(p.event_date)} is not a valid date; fix the values in the source and re-deliver")}
                    ELSE 'event date ' || _event_date || {literal(f" is outside the partitions [{p.start}, {end}) of {catalog.shown_path(contract)}")} END,
               'error', json_object({cols}, '_extra', _b._extra::JSON), {literal(contract.version)}, {literal(run_id)},
               now(), now(), 1, 'open'
        FROM _bronze AS _b WHERE _event_date IS NULL OR NOT ({in_range_sql})
        ON CONFLICT DO NOTHING"""
    )


def record_rows(con, contract: Contract, rows_sql: str, rule_id: str, reason: str, severity: str, run_id: str) -> None:
    """Rows of a bronze-shaped query (contract columns, _extra, provenance) a schema policy discarded."""
    cols = ", ".join(f"{literal(c.name)}, _b.{ident(c.name)}" for c in contract.columns)
    in_range = "TRUE"
    if contract.partitioning is not None:
        p = contract.partitioning
        in_range = f"_event_date >= {literal(p.start.isoformat())}::DATE" + (
            f" AND _event_date < {literal(p.end.isoformat())}::DATE" if p.end else "")
    con.execute(
        f"""INSERT INTO ops.dead_letter ({COLUMNS})
        SELECT {literal(contract.name)}, CASE WHEN {in_range} THEN _event_date END, _file_id, _file_path, _row_offset,
               {literal(rule_id)}, 'bronze', {literal(reason)}, {literal(severity)},
               json_object({cols}, '_extra', _b._extra::JSON), {literal(contract.version)}, {literal(run_id)},
               now(), now(), 1, 'open'
        FROM ({rows_sql}) AS _b
        ON CONFLICT DO NOTHING""")


def record_stage_failures(con, contract: Contract, run_id: str, partitions_sql: str) -> None:
    """Rows of the temp table _stage that broke an error rule; resolve open rows that now pass."""
    con.execute(
        f"""INSERT INTO ops.dead_letter ({COLUMNS})
        SELECT {literal(contract.name)}, _event_date, _file_id, _file_path, _row_offset,
               split_part(_failed, ',', 1), 'raw', _reason, 'error', _payload, {literal(contract.version)},
               {literal(run_id)}, now(), now(), 1, 'open'
        FROM _stage WHERE _failed <> ''
        ON CONFLICT DO NOTHING"""
    )
    # A row that no longer fails (say, after a contract fix) is resolved by this run, never deleted.
    con.execute(
        f"""UPDATE ops.dead_letter AS d SET status = 'resolved', resolved_by_run = {literal(run_id)}
        WHERE d.source = {literal(contract.name)} AND d.status = 'open' AND ({partitions_sql})
          AND d.stage = 'raw'
          AND NOT EXISTS (SELECT 1 FROM _stage s WHERE s._file_id = d.file_id AND s._row_offset = d.row_offset
                          AND split_part(s._failed, ',', 1) = d.rule_id)"""
    )


def list_rows(con, source: str | None = None, rule: str | None = None, partition: str | None = None,
              status: str = "open", limit: int = 50) -> list[tuple]:
    where, params = ["status = ?"], [status]
    if source:
        where.append("source = ?")
        params.append(source)
    if rule:
        where.append("rule_id = ?")
        params.append(rule)
    if partition:
        where.append("partition_date = ?::DATE")
        params.append(partition)
    return con.execute(
        f"""SELECT source, partition_date, rule_id, count(*) AS rows, min(reason) AS example
        FROM ops.dead_letter WHERE {' AND '.join(where)}
        GROUP BY ALL ORDER BY source, rule_id, partition_date NULLS FIRST LIMIT ?""", [*params, limit]).fetchall()


def show_rows(con, source: str | None, rule: str | None, partition: str | None, limit: int = 20) -> list[dict]:
    where, params = ["TRUE"], []
    for col, val in (("source", source), ("rule_id", rule)):
        if val:
            where.append(f"{col} = ?")
            params.append(val)
    if partition:
        where.append("partition_date = ?::DATE")
        params.append(partition)
    cur = con.execute(
        f"""SELECT source, partition_date, file_path, row_offset, rule_id, severity, reason, payload, status,
                   attempts, contract_version, run_id, first_seen
        FROM ops.dead_letter WHERE {' AND '.join(where)}
        ORDER BY source, partition_date NULLS FIRST, file_path, row_offset, rule_id LIMIT ?""", [*params, limit])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
