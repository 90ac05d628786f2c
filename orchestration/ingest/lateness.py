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
from orchestration.quality import dead_letter
from orchestration.warehouse import date_literal, literal, retry_conflicts, transaction

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
    held = f"_event_date < {date_literal(mark.isoformat())} AND {in_range_sql}"
    days = contract.allowed_lateness.days
    reason = (f"{literal(REASON + ': event date ')} || _event_date || "
              + literal(f" is older than the watermark {mark} (the latest event date loaded minus allowedLateness of "
                        f"{days} days in {catalog.shown_path(contract)}); it is held out of {contract.table}. Release it on purpose with: "
                        f"plumbline dlq release --source {contract.name} --partition ")
              + " || _event_date")
    dead_letter.hold(con, contract, held, rule_id(contract), reason, run_id)
    return [str(d) for (d,) in con.execute(f"SELECT DISTINCT _event_date FROM _bronze WHERE {held} ORDER BY 1").fetchall()]


def held_filter(con, contract: Contract) -> str:
    """A predicate on bronze rows that keeps held (not yet released) late rows out of a rebuild."""
    return dead_letter.excluding_open(con, contract.name, rule_id(contract))


def release(con, contract: Contract, partitions: list[str] | None) -> list[str]:
    """Let held rows in: their files now touch those partitions, so the partitions are stale.

    The rows stay 'released' until the rebuild that loads them marks them resolved with its run id.
    """
    by_file: dict[str, set[str]] = {}
    for fid, day in dead_letter.open_files(con, contract.name, rule_id(contract), partitions):
        by_file.setdefault(fid, set()).add(day)

    def mark_released() -> None:
        with transaction(con):
            dead_letter.release(con, contract.name, rule_id(contract), partitions)
            for fid, days in by_file.items():
                for (ev,) in con.execute("SELECT event_dates FROM ops.landed_files WHERE source = ? AND file_id = ? AND status = 'loaded'",
                                         [contract.name, fid]).fetchall():
                    merged = sorted(set(json.loads(ev or "[]")) | days)
                    con.execute("UPDATE ops.landed_files SET event_dates = ? WHERE source = ? AND file_id = ? AND status = 'loaded'",
                                [json.dumps(merged), contract.name, fid])

    retry_conflicts(mark_released, f"{contract.name}: releasing held late rows")
    return sorted({d for days in by_file.values() for d in days})


def resolve_released(con, contract: Contract, partitions: list[str], run_id: str) -> None:
    """Called inside rebuild's transaction: the released rows of these partitions are now loaded."""
    dead_letter.resolve_released(con, contract.name, rule_id(contract), partitions, run_id)
