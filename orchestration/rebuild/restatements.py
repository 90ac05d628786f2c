"""ops.restatements: a partition that was built before and now reads differently is a restatement.

rebuild() measures the partitions before and after it replaces them (row count and the sums of the
contract's restatement.keyMeasures) and records every partition that changed, with the deliveries
that caused the change; the raw asset shows them as metadata and judges them with an asset check.
"""

from __future__ import annotations

import json

import dagster as dg

from contracts.model import Contract
from orchestration import catalog, names
from orchestration.warehouse import SNAPSHOT_PARTITION, ident, key_list, literal

def measure(con, contract: Contract, keys: list[str]) -> dict[str, tuple[int, dict[str, float]]]:
    """partition -> (rows, {measure: sum}) as the table holds it now."""
    sums = "".join(f", sum({ident(m)})::DOUBLE" for m in contract.restatement.key_measures)
    if contract.partitioning:
        rows = con.execute(f"SELECT strftime(event_date, '%Y-%m-%d'), count(*){sums} FROM {contract.table} "
                           f"WHERE event_date IN {key_list(keys)} GROUP BY ALL").fetchall()
    else:
        rows = con.execute(f"SELECT {literal(SNAPSHOT_PARTITION)}, count(*){sums} FROM {contract.table}").fetchall()
    names = contract.restatement.key_measures
    out = {k: (0, {m: None for m in names}) for k in keys}
    for p, n, *values in rows:
        out[p] = (n, {m: (round(v, 6) if v is not None else None) for m, v in zip(names, values)})
    return out


def record(con, contract: Contract, previous_builds: dict[str, set[str]], before: dict, after: dict,
           built_from: dict[str, tuple[str, ...]], run_id: str) -> list[dict]:
    """Write one row per previously built partition whose rows, measures or deliveries changed."""
    paths = dict(con.execute("SELECT file_id, any_value(path) FROM ops.landed_files WHERE source = ? GROUP BY ALL",
                             [contract.name]).fetchall())
    rows = []
    for p, old_files in previous_builds.items():
        new_files = set(built_from.get(p, ()))
        if old_files == new_files and before[p] == after[p]:
            continue  # the same deliveries gave the same partition: a re-run, not a restatement
        caused = [{"file_id": f, "path": paths.get(f), "change": "added"} for f in sorted(new_files - old_files)]
        caused += [{"file_id": f, "path": paths.get(f), "change": "removed"} for f in sorted(old_files - new_files)]
        if not caused:
            caused = [{"change": "revalidated", "contract_version": contract.version}]
        rows.append({"asset": contract.table, "partition": p, "rows_before": before[p][0], "rows_after": after[p][0],
                     "measures_before": before[p][1], "measures_after": after[p][1], "caused_by": caused})
    if not rows:
        return rows
    con.execute(  # one statement for every restated partition, not one each
        "INSERT INTO ops.restatements SELECT ?, unnest(?::DATE[]), unnest(?::BIGINT[]), unnest(?::BIGINT[]), "
        "unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[]), ?, ?, now()",
        [contract.table, [r["partition"] for r in rows], [r["rows_before"] for r in rows], [r["rows_after"] for r in rows],
         [json.dumps(r["measures_before"]) for r in rows], [json.dumps(r["measures_after"]) for r in rows],
         [json.dumps(r["caused_by"]) for r in rows], contract.version, run_id])
    return rows


def change_percent(before, after) -> float:
    if before == after:
        return 0.0
    if not before:
        return float("inf")
    return abs(after - before) / abs(before) * 100.0


def largest_change(r: dict) -> float:
    changes = [change_percent(r["rows_before"], r["rows_after"])]
    changes += [change_percent(r["measures_before"].get(m), v) for m, v in r["measures_after"].items()
                if v is not None and r["measures_before"].get(m) is not None]
    return max(changes)


def check_spec(contract: Contract, asset_key: dg.AssetKey) -> dg.AssetCheckSpec:
    rs = contract.restatement
    return dg.AssetCheckSpec(names.RESTATEMENTS, asset=asset_key, blocking=False, description=(
        f"a partition restated more than {rs.max_restatements} times, or whose row count or key measures "
        f"{list(rs.key_measures)} moved more than {rs.max_change_percent:g}% in one restatement "
        f"(restatement in {catalog.shown_path(contract)})"))


def check_result(con, contract: Contract, keys: list[str], restated: list[dict]) -> dg.AssetCheckResult:
    """Judge this run's partitions against the contract's thresholds; the history is ops.restatements."""
    rs = contract.restatement
    counts = dict(con.execute(
        "SELECT strftime(partition_date, '%Y-%m-%d'), count(*) FROM ops.restatements WHERE asset = ? GROUP BY ALL",
        [contract.table]).fetchall())
    too_often = sorted(p for p in keys if counts.get(p, 0) > rs.max_restatements)
    too_large = sorted(r["partition"] for r in restated if largest_change(r) > rs.max_change_percent)
    problems = ([f"{len(too_often)} partition(s) restated more than {rs.max_restatements} times ({', '.join(too_often[:3])})"]
                if too_often else [])
    problems += ([f"{len(too_large)} partition(s) moved more than {rs.max_change_percent:g}% in this restatement "
                  f"({', '.join(too_large[:3])})"] if too_large else [])
    reason = "; ".join(problems) or (f"{len(restated)} partition(s) restated by this run, each within "
                                     f"{rs.max_change_percent:g}% and {rs.max_restatements} restatements")
    return dg.AssetCheckResult(
        check_name=names.RESTATEMENTS, passed=not (too_often or too_large), severity=dg.AssetCheckSeverity.WARN, description=reason,
        metadata={"restated_in_this_run": len(restated),
                  "restated_too_often": dg.MetadataValue.json(too_often[:50]),
                  "changed_too_much": dg.MetadataValue.json(too_large[:50]),
                  "max_restatements": rs.max_restatements, "max_change_percent": rs.max_change_percent})


def metadata(r: dict | None) -> dict:
    """A partition's materialization metadata: whether this rebuild restated it (r, its ops.restatements
    row, or None) and if so what it was and became."""
    if r is None:
        return {"restated": False}
    return {"restated": True, "rows_before": r["rows_before"], "rows_after": r["rows_after"],
            "change_percent": round(min(largest_change(r), 1e9), 3),
            "measures_before": dg.MetadataValue.json(r["measures_before"]),
            "measures_after": dg.MetadataValue.json(r["measures_after"]),
            "caused_by": ", ".join(c.get("path") or c["change"] for c in r["caused_by"])}
