"""What the main job prints at the end: what was loaded, what was rejected and why. Read from the
warehouse with DuckDB alone (no Dagster, no MLflow), so `plumbline summary` answers at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import duckdb

from orchestration import settings
from orchestration.ml import config, recorded
from orchestration.quality import dead_letter
from orchestration.settings import NothingSynced
from orchestration.warehouse import DuckDBFile, table_exists


NOTED = 10  # loaded files with notes shown; the rest are counted


@contextlib.contextmanager
def synced_warehouse(warehouse=None) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to a warehouse that a sync has written; creates nothing on an empty home.
    `warehouse` is the deployment's (a Warehouse or Lakehouse resource); default the embedded file."""
    warehouse = warehouse or DuckDBFile(settings.warehouse_path())
    if not warehouse.exists():
        raise NothingSynced()
    with warehouse.connect(read_only=True) as con:
        if not table_exists(con, "ops", "landed_files"):
            raise NothingSynced()
        yield con


def summary_text(warehouse=None) -> str:
    lines = []
    with synced_warehouse(warehouse) as con:
        lines.append("Deliveries (ops.landed_files):")
        for source, status, files, rows in con.execute(
                "SELECT source, status, count(*), sum(rows) FROM ops.landed_files GROUP BY ALL ORDER BY 1, 2").fetchall():
            lines.append(f"  {source:<9} {status:<11} {files:>4} file(s) {rows or 0:>9} row(s)")
        problems = con.execute(
            "SELECT path, status, reason FROM ops.landed_files WHERE status NOT IN ('loaded') OR reason IS NOT NULL ORDER BY path").fetchall()
        noted = [p for p in problems if p[1] == "loaded"]
        for path, status, reason in [p for p in problems if p[1] != "loaded"] + noted[:NOTED]:
            shown = reason if (reason or "").startswith(path) else f"{path}: {reason}"  # unreadable reasons name their file
            lines.append(f"    {status}: {shown}")
        if len(noted) > NOTED:  # a schema change accepted by the contract is noted on every delivery carrying it
            lines.append(f"    ... and {len(noted) - NOTED} more loaded file(s) with notes (ops.landed_files.reason)")
        lines.append("")
        lines.append("Tables:")
        for schema, table in con.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema IN ('raw', 'core', 'marts') "
                "ORDER BY 1, 2").fetchall():
            n = con.execute(f'SELECT count(*) FROM "{schema}"."{table}"').fetchone()[0]
            lines.append(f"  {schema}.{table:<16} {n:>9} rows")
        lines.append("")
        acc = con.execute("SELECT source, sum(delivered), sum(accepted), sum(dead_lettered), sum(superseded) "
                          "FROM ops.partition_accounting GROUP BY ALL ORDER BY 1").fetchall()
        lines.append("Accounting (delivered = accepted + dead-lettered + superseded):")
        for source, d, a, dl, s in acc:
            lines.append(f"  {source:<9} {d:>9} = {a:>9} + {dl:>5} + {s:>5}{'' if d == a + dl + s else '   <-- MISMATCH'}")
        lines.append("")
        lines.append("Rejected (ops.dead_letter, open) by rule:")
        rows = dead_letter.open_by_rule(con)
        for source, rule, n, reason in rows:
            lines.append(f"  {source:<9} {rule:<34} {n:>5}  e.g. {reason[:110]}")
        if not rows:
            lines.append("  none")
        lines += model_lines(con)
    lines += ["", "Inspect rejects:  .venv/bin/plumbline dlq list   |   .venv/bin/plumbline dlq show --rule <rule_id>",
              "Model versions:   .venv/bin/plumbline model list   |   .venv/bin/plumbline model history",
              f"Open the UI:      make ui   (then http://127.0.0.1:3000; runs above are in {settings.dagster_home()})"]
    return "\n".join(lines)


def model_lines(con) -> list[str]:
    """The champion's test-window metrics against the baseline, what it scored, and drift."""
    if not table_exists(con, "ml", "model_evaluation"):
        return []
    cfg = config.load()
    champion = recorded.champion(con, cfg.model_name)  # ops.model_promotions records every change of MLflow's alias
    test = cfg.window("test")
    lines = ["", f"Model {cfg.model_name} (champion as recorded in ops.model_promotions; in MLflow: plumbline model list):"]
    if champion is None:
        return lines + ["  no champion: the promotion gate rejected every version (plumbline model list)"]
    latest = con.execute("SELECT challenger_version FROM ml.model_evaluation WHERE model = 'challenger' "
                         "ORDER BY CAST(challenger_version AS INTEGER) DESC LIMIT 1").fetchall()
    rows = con.execute("""SELECT model, model_version, flights, auc, log_loss, brier, ece FROM ml.model_evaluation
        WHERE challenger_version = ? AND scope = 'overall' ORDER BY CASE model WHEN 'challenger' THEN 0 WHEN 'champion' THEN 1 ELSE 2 END""",
                       [latest[0][0] if latest else champion]).fetchall()
    lines.append(f"  champion v{champion}; latest evaluation on the test window {test.start} .. {test.end}:")
    lines.append(f"    {'':<24} {'flights':>8} {'AUC':>7} {'log loss':>9} {'Brier':>7} {'calib. err':>10}")
    for model, version, flights, auc, ll, brier, ece in rows:
        # rows are named by their role in that evaluation; the current champion is starred
        name = f"{model} v{version}{' *' if version == champion else ''}" if version else "baseline (on-time share)"
        lines.append(f"    {name:<24} {flights:>8} {auc or float('nan'):>7.4f} {ll:>9.4f} {brier:>7.4f} {ece:>10.4f}")
    lines.append("    (* the current champion)")
    for version, first, last, n in recorded.scored_by(con):
        lines.append(f"  predictions {first} .. {last}: {n} partition(s) scored by v{version}")
    if table_exists(con, "ml", "drift"):
        graded = con.execute("""SELECT measure, grade, count(*) FROM ml.drift WHERE grade <> 'ok' GROUP BY ALL ORDER BY 1, 2""").fetchall()
        worst = con.execute("""SELECT feature, count(*) FROM ml.drift WHERE grade <> 'ok' AND measure = 'psi'
                               GROUP BY ALL ORDER BY 2 DESC, 1 LIMIT 3""").fetchall()
        lines.append("  drift beyond thresholds: " + (", ".join(f"{m} {g} {n}" for m, g, n in graded) or "none")
                     + (f" (most often: {', '.join(f'{f} {n}' for f, n in worst)}; table ml.drift)" if worst else ""))
    return lines
