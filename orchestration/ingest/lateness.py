"""Late data: a watermark per source decides whether a late record restates its partition or waits.

The watermark is the highest event date loaded by earlier ingestions of the source minus the
contract's allowedLateness. Rows of a new delivery inside the window simply make their partition
stale (a restatement); rows older than the window are held in ops.dead_letter under the rule
`<source>_allowed_lateness` and stay out of raw until an engineer releases them on purpose.
"""

from __future__ import annotations

import datetime as dt
import json

from contracts.model import Contract
from orchestration import catalog
from orchestration.quality.dead_letter import COLUMNS
from orchestration.warehouse import ident, literal

REASON = "late beyond allowed lateness"


def rule_id(contract: Contract) -> str:
    return f"{contract.name}_allowed_lateness"


def watermark(con, contract: Contract) -> dt.date | None:
    """Oldest event date still accepted without a release; None when nothing is held back."""
    if contract.partitioning is None or contract.allowed_lateness is None:
        return None
    dates = [d for (ev,) in con.execute(
        "SELECT event_dates FROM ops.landed_files WHERE source = ? AND status = 'loaded'", [contract.name]).fetchall()
        for d in json.loads(ev or "[]")]
    if not dates:
        return None
    return dt.date.fromisoformat(max(dates)) - contract.allowed_lateness


def hold(con, contract: Contract, mark: dt.date, run_id: str, in_range_sql: str) -> list[str]:
    """Dead-letter the rows of the temp view _bronze older than the watermark; return their dates."""
    cols = ", ".join(f"{literal(c.name)}, _b.{ident(c.name)}" for c in contract.columns)
    held = f"_event_date < {literal(mark.isoformat())}::DATE AND {in_range_sql}"
    days = contract.allowed_lateness.days
    reason = (f"{literal(REASON + ': event date ')} || _event_date || "
              + literal(f" is older than the watermark {mark} (the latest event date loaded minus allowedLateness of "
                        f"{days} days in {catalog.shown_path(contract)}); it is held out of {contract.table}. Release it on purpose with: "
                        f"plumbline dlq release --source {contract.name} --partition ")
              + " || _event_date")
    con.execute(
        f"""INSERT INTO ops.dead_letter ({COLUMNS})
        SELECT {literal(contract.name)}, _event_date, _file_id, _file_path, _row_offset, {literal(rule_id(contract))},
               'bronze', {reason},
               'error', json_object({cols}, '_extra', _b._extra::JSON), {literal(contract.version)}, {literal(run_id)},
               now(), now(), 1, 'open'
        FROM _bronze AS _b WHERE {held}
        ON CONFLICT DO NOTHING""")
    return [str(d) for (d,) in con.execute(f"SELECT DISTINCT _event_date FROM _bronze WHERE {held} ORDER BY 1").fetchall()]


def held_filter(con, contract: Contract) -> str:
    """A predicate on bronze rows that keeps held (not yet released) late rows out of a rebuild."""
    if not con.execute("SELECT count(*) FROM ops.dead_letter WHERE source = ? AND rule_id = ? AND status = 'open'",
                       [contract.name, rule_id(contract)]).fetchone()[0]:
        return "TRUE"
    return (f"NOT EXISTS (SELECT 1 FROM ops.dead_letter h WHERE h.source = {literal(contract.name)} "
            f"AND h.rule_id = {literal(rule_id(contract))} AND h.status = 'open' "
            "AND h.file_id = _file_id AND h.partition_date = _event_date)")


def release(con, contract: Contract, partitions: list[str] | None) -> list[str]:
    """Let held rows in: their files now touch those partitions, so the partitions are stale.

    The rows stay 'released' until the rebuild that loads them marks them resolved with its run id.
    """
    where, params = "source = ? AND rule_id = ? AND status = 'open'", [contract.name, rule_id(contract)]
    if partitions:
        where += " AND partition_date IN (" + ", ".join("?::DATE" for _ in partitions) + ")"
        params += partitions
    pairs = con.execute(f"SELECT DISTINCT file_id, strftime(partition_date, '%Y-%m-%d') FROM ops.dead_letter WHERE {where}",
                        params).fetchall()
    by_file: dict[str, set[str]] = {}
    for fid, day in pairs:
        by_file.setdefault(fid, set()).add(day)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(f"UPDATE ops.dead_letter SET status = 'released', last_seen = now() WHERE {where}", params)
        for fid, days in by_file.items():
            for (ev,) in con.execute("SELECT event_dates FROM ops.landed_files WHERE source = ? AND file_id = ? AND status = 'loaded'",
                                     [contract.name, fid]).fetchall():
                merged = sorted(set(json.loads(ev or "[]")) | days)
                con.execute("UPDATE ops.landed_files SET event_dates = ? WHERE source = ? AND file_id = ? AND status = 'loaded'",
                            [json.dumps(merged), contract.name, fid])
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return sorted({d for days in by_file.values() for d in days})


def resolve_released(con, contract: Contract, partitions_sql: str, run_id: str) -> None:
    """Called inside rebuild's transaction: the released rows of these partitions are now loaded."""
    con.execute(
        f"""UPDATE ops.dead_letter AS d SET status = 'resolved', resolved_by_run = {literal(run_id)}, last_seen = now()
        WHERE d.source = {literal(contract.name)} AND d.rule_id = {literal(rule_id(contract))}
          AND d.status = 'released' AND ({partitions_sql})""")
