"""What the warehouse records about the model, read with DuckDB alone: the champion (every change of
it is a row of ops.model_promotions) and which version scored which partitions. `plumbline summary`
reads these without loading Dagster or MLflow."""

from __future__ import annotations

from orchestration.warehouse import table_exists


def champion(con, model_name: str) -> str | None:
    """The version the last promotion or rollback made champion, None when none did."""
    if not table_exists(con, "ops", "model_promotions"):
        return None
    rows = con.execute("SELECT version FROM ops.model_promotions WHERE model = ? AND action IN ('promote', 'rollback') "
                       "ORDER BY decided_at DESC LIMIT 1", [model_name]).fetchall()
    return rows[0][0] if rows else None


def scored_by(con) -> list[tuple[str, str, str, int]]:
    """(model_version, first partition, last partition, partitions) of ml.flight_predictions."""
    if not table_exists(con, "ml", "flight_predictions"):
        return []
    return [(v, str(a), str(b), n) for v, a, b, n in con.execute(
        "SELECT model_version, min(event_date), max(event_date), count(DISTINCT event_date) FROM ml.flight_predictions "
        "GROUP BY ALL ORDER BY 2").fetchall()]
