"""ops.dead_letter: the one place rejected records are written, resolved and read.

A row is keyed by (source, file, row offset, rule): re-running a partition finds it already there
and leaves it untouched, so the queue never holds duplicates and re-runs change nothing. Every
other module writes and reads the queue through the functions here; `partitions` arguments are
daily keys, or None for an unpartitioned snapshot (whose dead letters have no partition).
"""

from __future__ import annotations

import datetime as dt
import json

from contracts.model import Contract
from orchestration import catalog
from orchestration.ingest.readers import Reject
from orchestration.warehouse import SNAPSHOT_PARTITION, date_range, ident, insert_absent, insert_absent_values, key_list, literal

KEY = ("source", "file_id", "row_offset", "rule_id")  # a dead letter is recorded once per row and rule
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
        insert_absent_values(con, "ops.dead_letter", COLUMNS, KEY, rows)


def _record_bronze_rows(con, contract: Contract, rows_sql: str, partition_sql: str, rule_sql: str, reason_sql: str,
                        severity_sql: str, run_id: str) -> None:
    """Bronze-shaped rows (contract columns, _extra, provenance) of `rows_sql`, aliased _b, with the
    delivered values as the payload; partition, rule, reason and severity are SQL expressions."""
    cols = ", ".join(f"{literal(c.name)}, _b.{ident(c.name)}" for c in contract.columns)
    insert_absent(con, "ops.dead_letter", COLUMNS, KEY, f"""
        SELECT {literal(contract.name)} AS source, {partition_sql} AS partition_date, _file_id AS file_id,
               _file_path AS file_path, _row_offset AS row_offset, {rule_sql} AS rule_id, 'bronze' AS stage,
               {reason_sql} AS reason, {severity_sql} AS severity,
               json_object({cols}, '_extra', _b._extra::JSON) AS payload, {literal(contract.version)} AS contract_version,
               {literal(run_id)} AS run_id, now() AS first_seen, now() AS last_seen, 1 AS attempts, 'open' AS status
        FROM {rows_sql}""")


def record_event_date_failures(con, contract: Contract, run_id: str, in_range_sql: str) -> None:
    """Rows of the temp table _bronze whose event date is unreadable or outside the partitions."""
    p = contract.partitioning
    end = p.end.isoformat() if p.end else "open"
    _record_bronze_rows(
        con, contract, f"_bronze AS _b WHERE _event_date IS NULL OR NOT ({in_range_sql})", "_event_date",
        f"""CASE WHEN _event_date IS NULL THEN {literal(contract.name + '_event_date_valid')}
                    ELSE {literal(contract.name + '_event_date_in_range')} END""",
        f"""CASE WHEN _event_date IS NULL
                    THEN {literal(f"event date from {list(p.event_date)} is not a valid date; fix the values in the source and re-deliver")}
                    ELSE 'event date ' || _event_date || {literal(f" is outside the partitions [{p.start}, {end}) of {catalog.shown_path(contract)}")} END""",
        "'error'", run_id)


def record_rows(con, contract: Contract, rows_sql: str, rule_id: str, reason: str, severity: str, run_id: str) -> None:
    """Rows of a bronze-shaped query (contract columns, _extra, provenance) a schema policy discarded."""
    p = contract.partitioning
    in_range = "TRUE" if p is None else date_range("_event_date", p.start, p.end)
    _record_bronze_rows(con, contract, f"({rows_sql}) AS _b", f"CASE WHEN {in_range} THEN _event_date END",
                        literal(rule_id), literal(reason), literal(severity), run_id)


def hold(con, contract: Contract, where_sql: str, rule_id: str, reason_sql: str, run_id: str) -> None:
    """Rows of the temp view _bronze matching `where_sql`, held out of raw (open, stage bronze) under
    rule_id until they are released; reason_sql is an SQL expression over the row."""
    _record_bronze_rows(con, contract, f"_bronze AS _b WHERE {where_sql}", "_event_date", literal(rule_id),
                        reason_sql, "'error'", run_id)


def _in_partitions(partitions: list[str] | None, column: str = "d.partition_date") -> str:
    return f"{column} IS NULL" if partitions is None else f"{column} IN {key_list(partitions)}"


def record_stage_failures(con, contract: Contract, run_id: str, partitions: list[str] | None) -> None:
    """Rows of the temp table _stage that broke an error rule; resolve open rows of these partitions
    that now pass."""
    insert_absent(con, "ops.dead_letter", COLUMNS, KEY, f"""
        SELECT {literal(contract.name)} AS source, _event_date AS partition_date, _file_id AS file_id,
               _file_path AS file_path, _row_offset AS row_offset, split_part(_failed, ',', 1) AS rule_id,
               'raw' AS stage, _reason AS reason, 'error' AS severity, _payload AS payload,
               {literal(contract.version)} AS contract_version, {literal(run_id)} AS run_id, now() AS first_seen,
               now() AS last_seen, 1 AS attempts, 'open' AS status
        FROM _stage WHERE _failed <> ''""")
    # A row that no longer fails (say, after a contract fix) is resolved by this run, never deleted.
    con.execute(
        f"""UPDATE ops.dead_letter AS d SET status = 'resolved', resolved_by_run = {literal(run_id)}
        WHERE d.source = {literal(contract.name)} AND d.status = 'open' AND ({_in_partitions(partitions)})
          AND d.stage = 'raw'
          AND NOT EXISTS (SELECT 1 FROM _stage s WHERE s._file_id = d.file_id AND s._row_offset = d.row_offset
                          AND split_part(s._failed, ',', 1) = d.rule_id)"""
    )


def resolve_released(con, source: str, rule_id: str, partitions: list[str] | None, run_id: str) -> None:
    """The released rows of these partitions are loaded now: resolved by this run (inside its transaction)."""
    con.execute(
        f"""UPDATE ops.dead_letter AS d SET status = 'resolved', resolved_by_run = {literal(run_id)}, last_seen = now()
        WHERE d.source = {literal(source)} AND d.rule_id = {literal(rule_id)}
          AND d.status = 'released' AND ({_in_partitions(partitions)})""")


def excluding_open(con, source: str, rule_id: str) -> str:
    """A predicate on bronze rows (_file_id, _event_date) that leaves out the rows open under rule_id."""
    if not con.execute("SELECT count(*) FROM ops.dead_letter WHERE source = ? AND rule_id = ? AND status = 'open'",
                       [source, rule_id]).fetchone()[0]:
        return "TRUE"
    return (f"NOT EXISTS (SELECT 1 FROM ops.dead_letter h WHERE h.source = {literal(source)} "
            f"AND h.rule_id = {literal(rule_id)} AND h.status = 'open' "
            "AND h.file_id = _file_id AND h.partition_date = _event_date)")


def _open_under(source: str, rule_id: str, partitions: list[str] | None) -> tuple[str, list]:
    where, params = "source = ? AND rule_id = ? AND status = 'open'", [source, rule_id]
    if partitions:
        where += " AND partition_date IN (" + ", ".join("?::DATE" for _ in partitions) + ")"
        params += partitions
    return where, params


def open_files(con, source: str, rule_id: str, partitions: list[str] | None) -> list[tuple[str, str]]:
    """(file id, partition) pairs of the rows open under rule_id (all, or in these partitions)."""
    where, params = _open_under(source, rule_id, partitions)
    return con.execute(f"SELECT DISTINCT file_id, strftime(partition_date, '%Y-%m-%d') FROM ops.dead_letter WHERE {where}",
                       params).fetchall()


def release(con, source: str, rule_id: str, partitions: list[str] | None) -> None:
    """Mark the rows open under rule_id (all, or in these partitions) released: the next rebuild loads them."""
    where, params = _open_under(source, rule_id, partitions)
    con.execute(f"UPDATE ops.dead_letter SET status = 'released', last_seen = now() WHERE {where}", params)


def read_rejects(con, source: str, partitions: list[str] | None) -> dict[str, tuple[int, list[str]]]:
    """partition -> (lines the reader rejected there, their files); a snapshot's are those with no partition."""
    group = literal(SNAPSHOT_PARTITION) if partitions is None else "strftime(partition_date, '%Y-%m-%d')"
    return {p: (n, files or []) for p, n, files in con.execute(
        f"""SELECT {group}, count(DISTINCT (file_id, row_offset)), list(DISTINCT file_id ORDER BY file_id)
        FROM ops.dead_letter WHERE source = ? AND stage = 'read' AND {_in_partitions(partitions, "partition_date")} GROUP BY ALL""",
        [source]).fetchall()}


# Open contract-rule rejects, and every line the reader rejected (those never become rows).
COUNTED_IN_ACCOUNTING = "((stage = 'raw' AND status = 'open') OR stage = 'read')"


def counted_in_accounting(con, source: str, partition: str | None) -> int:
    """Rows a partition's accounting counts as dead-lettered (None: a snapshot's, which have no partition)."""
    return counted_by_partition(con, source, None if partition is None else [partition]).get(partition or SNAPSHOT_PARTITION, 0)


def counted_by_partition(con, source: str, partitions: list[str] | None) -> dict[str, int]:
    """partition -> rows its accounting counts as dead-lettered, for many partitions in one query (None: a
    snapshot's, under SNAPSHOT_PARTITION); a partition with none is absent."""
    group = literal(SNAPSHOT_PARTITION) if partitions is None else "strftime(partition_date, '%Y-%m-%d')"
    return dict(con.execute(
        f"""SELECT {group}, count(DISTINCT (file_id, row_offset, stage)) FROM ops.dead_letter WHERE source = ?
        AND {COUNTED_IN_ACCOUNTING} AND {_in_partitions(partitions, "partition_date")} GROUP BY ALL""", [source]).fetchall())


def open_rule_counts_outside(con, source: str, partitions: list[str]) -> dict[str, dict[str, int]]:
    """rule id -> {partition: open contract-rule rows} in every partition but these."""
    other = f"partition_date NOT IN {key_list(partitions)}" if partitions else "TRUE"
    out: dict[str, dict[str, int]] = {}
    for rule, p, n in con.execute(
            f"""SELECT rule_id, strftime(partition_date, '%Y-%m-%d'), count(*) FROM ops.dead_letter
            WHERE source = ? AND status = 'open' AND stage = 'raw' AND {other} GROUP BY ALL""", [source]).fetchall():
        out.setdefault(rule, {})[p] = n
    return out


def open_by_rule(con) -> list[tuple[str, str, int, str]]:
    """(source, rule id, open rows, an example reason), most frequent rule first within a source."""
    return con.execute("SELECT source, rule_id, count(*), min(reason) FROM ops.dead_letter WHERE status = 'open' "
                       "GROUP BY ALL ORDER BY 1, 3 DESC").fetchall()


def _selection(where: list[str], params: list, source: str | None, rule: str | None,
               partition: str | None) -> tuple[str, list]:
    """`where` narrowed to a source, a rule and a partition when given (an on-call selection)."""
    where, params = list(where), list(params)
    for col, val in (("source", source), ("rule_id", rule)):
        if val:
            where.append(f"{col} = ?")
            params.append(val)
    if partition:
        where.append("partition_date = ?::DATE")
        params.append(partition)
    return " AND ".join(where), params


def replayable(con, source: str | None, rule: str | None, partition: str | None) -> list[tuple]:
    """(source, file id, row offset, rule id, partition) of the open contract-rule rows selected."""
    where, params = _selection(["status = 'open'", "stage = 'raw'"], [], source, rule, partition)
    return con.execute(f"SELECT source, file_id, row_offset, rule_id, strftime(partition_date, '%Y-%m-%d') "
                       f"FROM ops.dead_letter WHERE {where}", params).fetchall()


def record_replay(con, rows: list[tuple], revalidated: bool) -> tuple[int, int]:
    """After the rebuild that replayed `rows` (as replayable gives them): one more attempt on those
    still open when the run re-validated them; returns (resolved, still open)."""
    con.execute("CREATE OR REPLACE TEMP TABLE _replayed (source VARCHAR, file_id VARCHAR, row_offset BIGINT, rule_id VARCHAR)")
    con.executemany("INSERT INTO _replayed VALUES (?, ?, ?, ?)", [r[:4] for r in rows])
    match = ("FROM _replayed r WHERE r.source = d.source AND r.file_id = d.file_id "
             "AND r.row_offset = d.row_offset AND r.rule_id = d.rule_id")
    if revalidated:  # a failed run re-validated nothing: leave the attempts alone
        con.execute(f"UPDATE ops.dead_letter d SET attempts = attempts + 1, last_seen = now() "
                    f"WHERE d.status = 'open' AND EXISTS (SELECT 1 {match})")
    return con.execute(
        f"SELECT count(*) FILTER (WHERE status = 'resolved'), count(*) FILTER (WHERE status = 'open') "
        f"FROM ops.dead_letter d WHERE EXISTS (SELECT 1 {match})").fetchone()


def list_rows(con, source: str | None = None, rule: str | None = None, partition: str | None = None,
              status: str = "open", limit: int = 50) -> list[tuple]:
    where, params = _selection(["status = ?"], [status], source, rule, partition)
    return con.execute(
        f"""SELECT source, partition_date, rule_id, count(*) AS rows, min(reason) AS example
        FROM ops.dead_letter WHERE {where}
        GROUP BY ALL ORDER BY source, rule_id, partition_date NULLS FIRST LIMIT ?""", [*params, limit]).fetchall()


def show_rows(con, source: str | None, rule: str | None, partition: str | None, limit: int = 20) -> list[dict]:
    where, params = _selection(["TRUE"], [], source, rule, partition)
    cur = con.execute(
        f"""SELECT source, partition_date, file_path, row_offset, rule_id, severity, reason, payload, status,
                   attempts, contract_version, run_id, first_seen
        FROM ops.dead_letter WHERE {where}
        ORDER BY source, partition_date NULLS FIRST, file_path, row_offset, rule_id LIMIT ?""", [*params, limit])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
