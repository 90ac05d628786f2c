"""The operational tables as observable assets: ops.dead_letter, ops.landed_files, ops.restatements,
ops.schema_versions, ops.partition_accounting, ops.model_promotions and ml.drift.

They are written as side effects of the bronze, raw and ml assets; here they are only read, so the
asset graph shows their columns and row counts where engineers look. "Observe" in the UI reads them
(read only, through the deployment's warehouse resource) and runs one check per source: its open
dead letters, how many wait and since when.
"""

import datetime as dt
import warnings

import dagster as dg

from orchestration import catalog
from orchestration.ml.scoring import DRIFT_COLUMNS
from orchestration.warehouse import table_exists
from orchestration.warehouse_resource import Warehouse

# multi_observable_source_asset is Dagster's way to observe several tables in one step; its beta notice is noise
warnings.filterwarnings("ignore", category=dg.BetaWarning, message=".*multi_observable_source_asset.*")

# (column, type, description) of each table, as orchestration/warehouse.py and ml/scoring.py create it.
TABLES: dict[str, tuple[str, list[tuple[str, str, str]]]] = {
    "ops.dead_letter": ("Every rejected record with the file, row, rule and reason; open until a rebuild accepts "
                        "the row again (resolved) or an operator releases it (plumbline dlq).", [
        ("source", "VARCHAR", "contract (source) the row was delivered for"),
        ("partition_date", "DATE", "event date of the row; null when it is unreadable"),
        ("file_id", "VARCHAR", "sha256 of the delivery"),
        ("file_path", "VARCHAR", "the delivery's path in the landing zone"),
        ("row_offset", "BIGINT", "0-based data row in the file; csv line number for unparseable lines"),
        ("rule_id", "VARCHAR", "the contract rule (or reader, lateness, schema rule) the row broke"),
        ("stage", "VARCHAR", "read (unparseable line), bronze (event date, lateness, schema) or raw (row rules)"),
        ("reason", "VARCHAR", "why, with the offending value"),
        ("severity", "VARCHAR", "the rule's severity"),
        ("payload", "JSON", "the row as delivered"),
        ("contract_version", "VARCHAR", "contract version that rejected it"),
        ("run_id", "VARCHAR", "Dagster run that first rejected it"),
        ("first_seen", "TIMESTAMPTZ", "when it was first rejected"),
        ("last_seen", "TIMESTAMPTZ", "when a rebuild last rejected it (or it changed status)"),
        ("attempts", "INTEGER", "how many rebuilds rejected it"),
        ("status", "VARCHAR", "open, released (by an operator, loaded by the next rebuild) or resolved"),
        ("resolved_by_run", "VARCHAR", "run that accepted the row again"),
    ]),
    "ops.landed_files": ("One row per delivery taken from the landing zone, with its verdict.", [
        ("source", "VARCHAR", "contract (source) the file was delivered for"),
        ("path", "VARCHAR", "path relative to the landing zone"),
        ("file_id", "VARCHAR", "sha256 of the content"),
        ("size_bytes", "BIGINT", "file size"),
        ("format", "VARCHAR", "csv, jsonl or parquet"),
        ("compression", "VARCHAR", "gzip or none"),
        ("delivered_at", "TIMESTAMPTZ", "delivery time from the file name; orders deliveries deterministically"),
        ("observed_schema", "JSON", "[{name, type}] as delivered"),
        ("rows", "BIGINT", "rows read from the file"),
        ("event_dates", "JSON", "sorted ISO event dates the file touches"),
        ("status", "VARCHAR", "loaded, duplicate, unreadable, rejected, empty or quarantined"),
        ("reason", "VARCHAR", "why the file was not loaded, when it was not"),
        ("bronze_path", "VARCHAR", "the immutable bronze copy"),
        ("landed_at", "TIMESTAMPTZ", "when plumbline first took this content at this path"),
        ("rejected_at_read", "BIGINT", "lines the reader could not turn into rows (dead-lettered)"),
    ]),
    "ops.restatements": ("Each rebuild that changed a partition already published, with what caused it.", [
        ("asset", "VARCHAR", "raw.<source>"),
        ("partition_date", "DATE", "the partition; 1970-01-01 for unpartitioned snapshots"),
        ("rows_before", "BIGINT", "rows before the rebuild"),
        ("rows_after", "BIGINT", "rows after it"),
        ("measures_before", "JSON", "{column: sum} of the contract's restatement key measures, before"),
        ("measures_after", "JSON", "the same sums after"),
        ("caused_by", "JSON", "the deliveries added or removed, or a revalidation"),
        ("contract_version", "VARCHAR", "contract version of the rebuild"),
        ("run_id", "VARCHAR", "Dagster run of the rebuild"),
        ("restated_at", "TIMESTAMPTZ", "when"),
    ]),
    "ops.schema_versions": ("Every schema a source has been delivered in, with the files and partitions it touched.", [
        ("source", "VARCHAR", "contract (source)"),
        ("schema_hash", "VARCHAR", "hash of the observed schema"),
        ("observed_schema", "JSON", "[{name, type}]: types observed from the values"),
        ("first_file", "VARCHAR", "first delivery in this schema, by delivery time"),
        ("first_delivered_at", "TIMESTAMPTZ", "its delivery time"),
        ("last_file", "VARCHAR", "last delivery in this schema, by delivery time"),
        ("last_delivered_at", "TIMESTAMPTZ", "its delivery time"),
        ("files", "BIGINT", "deliveries in this schema"),
        ("partitions", "JSON", "sorted event dates those deliveries touch"),
        ("quarantined_files", "BIGINT", "deliveries quarantined by a breaking schema change"),
    ]),
    "ops.partition_accounting": ("Per rebuilt partition: delivered = accepted + dead-lettered + superseded.", [
        ("source", "VARCHAR", "contract (source)"),
        ("partition_date", "DATE", "the partition; 1970-01-01 for unpartitioned snapshots"),
        ("delivered", "BIGINT", "rows delivered for the partition across its bronze files"),
        ("accepted", "BIGINT", "rows in raw.<source>"),
        ("dead_lettered", "BIGINT", "rows in ops.dead_letter"),
        ("superseded", "BIGINT", "duplicates of a key replaced by a later delivery"),
        ("built_from", "JSON", "sorted ids of the bronze files the partition was rebuilt from"),
        ("contract_version", "VARCHAR", "contract version of the rebuild"),
    ]),
    "ops.model_promotions": ("Every change of the champion model, and every rejected challenger.", [
        ("decided_at", "TIMESTAMPTZ", "when"),
        ("action", "VARCHAR", "promote, reject or rollback"),
        ("model", "VARCHAR", "registered model name"),
        ("version", "VARCHAR", "the version promoted, rejected or restored"),
        ("previous_champion", "VARCHAR", "the champion before"),
        ("actor", "VARCHAR", "promotion_gate, or who ran plumbline model promote or rollback"),
        ("reason", "VARCHAR", "why"),
    ]),
    "ml.drift": ("Drift of each scored partition against the training reference, written by ml/flight_predictions.", [
        (name, type_, description) for (name, type_), description in zip(DRIFT_COLUMNS, [
            "scored partition (local scheduled-departure date)",
            "champion version that scored it",
            "psi (population stability of a feature or of the prediction) or auc (where labels are known)",
            "the feature measured, or 'prediction'",
            "the partition's PSI or AUC",
            "PSI of a typical training day, or the test-window AUC",
            "ok, warn or fail: the excess over the reference against the configured thresholds",
        ], strict=True)
    ]),
}
DEAD_LETTER = dg.AssetKey(["ops", "dead_letter"])
SOURCES = sorted(catalog.contracts())


def asset_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(table.split("."))


def column_schema(columns: list[tuple[str, str, str]]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in columns])


def open_dead_letters_check(source: str) -> str:
    return f"open_dead_letters_{source}"


SPECS = [
    dg.AssetSpec(asset_key(table), description=description, group_name=table.split(".")[0], kinds={"duckdb"},
                 code_version="1", metadata={"dagster/column_schema": column_schema(columns),
                                             "dagster/table_name": f"warehouse.{table}"})
    for table, (description, columns) in TABLES.items()
]
CHECK_SPECS = [
    dg.AssetCheckSpec(open_dead_letters_check(s), asset=DEAD_LETTER,
                      description=f"No dead letters of {s} wait: fails (a warning) while open rows do, with how many and since when.")
    for s in SOURCES
]


@dg.multi_observable_source_asset(specs=SPECS, check_specs=CHECK_SPECS, can_subset=True, name="operational_tables")
def operational_tables(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Row counts and column schemas of the operational tables as they stand, and open dead letters per source."""
    if not warehouse.exists():  # nothing synced yet: every table is empty
        yield from (dg.ObserveResult(asset_key=k, metadata={"dagster/row_count": 0}) for k in context.selected_asset_keys)
        yield from (open_dead_letters_result(c.name, {}) for c in context.selected_asset_check_keys)
        return
    with warehouse.connect(read_only=True) as con:
        for key in sorted(context.selected_asset_keys):
            yield observe(con, ".".join(key.path))
        if context.selected_asset_check_keys:
            waiting = open_dead_letters(con)
            for check_key in sorted(context.selected_asset_check_keys):
                yield open_dead_letters_result(check_key.name, waiting.get(check_key.name.removeprefix("open_dead_letters_"), {}))


def observe(con, table: str) -> dg.ObserveResult:
    """The table's row count and its columns as the warehouse has them (descriptions from TABLES)."""
    schema, name = table.split(".")
    if not table_exists(con, schema, name):
        return dg.ObserveResult(asset_key=asset_key(table), metadata={"dagster/row_count": 0, "exists": False})
    described = {n: d for n, _, d in TABLES[table][1]}
    columns = con.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = ? "
                          "AND table_name = ? ORDER BY ordinal_position", [schema, name]).fetchall()
    rows = con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]  # table is one of TABLES' names
    return dg.ObserveResult(asset_key=asset_key(table), metadata={
        "dagster/row_count": rows, "exists": True,
        "dagster/column_schema": column_schema([(n, t, described.get(n, "")) for n, t in columns])})


def open_dead_letters(con) -> dict[str, dict]:
    """Per source with open dead letters: how many, the oldest first_seen, and how many per rule."""
    out: dict[str, dict] = {}
    if not table_exists(con, "ops", "dead_letter"):
        return out
    for source, rule, n, oldest in con.execute(
            "SELECT source, rule_id, count(*), min(first_seen) FROM ops.dead_letter WHERE status = 'open' "
            "GROUP BY ALL ORDER BY source, rule_id").fetchall():
        entry = out.setdefault(source, {"rows": 0, "since": oldest, "by_rule": {}})
        entry["rows"] += n
        entry["since"] = min(entry["since"], oldest)
        entry["by_rule"][rule] = n
    return out


def open_dead_letters_result(check_name: str, waiting: dict) -> dg.AssetCheckResult:
    source = check_name.removeprefix("open_dead_letters_")
    rows, since = waiting.get("rows", 0), waiting.get("since")
    since_text = since.astimezone(dt.timezone.utc).isoformat() if since else None
    return dg.AssetCheckResult(
        asset_key=DEAD_LETTER, check_name=check_name, passed=rows == 0, severity=dg.AssetCheckSeverity.WARN,
        description=(f"no dead letters of {source} wait" if not rows else
                     f"{rows} dead-lettered row(s) of {source} wait, the oldest since {since_text}: "
                     f"plumbline dlq list --source {source}"),
        metadata={"open_rows": rows, "oldest_open_since": dg.MetadataValue.timestamp(since) if since else "none",
                  "open_rows_by_rule": dg.MetadataValue.json(waiting.get("by_rule", {}))})
