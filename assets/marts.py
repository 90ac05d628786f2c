"""marts.carrier_daily: the day's punctuality per carrier and origin airport."""

import dagster as dg

from assets import policy
from orchestration import catalog, names
from orchestration.rebuild import partition_metadata, partitions
from orchestration.warehouse_resource import Warehouse

ON_TIME_MINUTES = 15

COLUMNS = [
    ("event_date", "DATE"), ("carrier", "VARCHAR"), ("carrier_name", "VARCHAR"), ("origin", "VARCHAR"),
    ("flights", "BIGINT"), ("cancellations", "BIGINT"), ("on_time_share", "DOUBLE"),
    ("mean_dep_delay", "DOUBLE"), ("mean_arr_delay", "DOUBLE"),
]
SELECT = f"""
SELECT event_date, carrier, any_value(carrier_name) AS carrier_name, origin,
       count(*) AS flights,
       count(*) FILTER (WHERE cancelled) AS cancellations,
       avg(CASE WHEN arr_delay <= {ON_TIME_MINUTES} THEN 1.0 ELSE 0.0 END) FILTER (WHERE arr_delay IS NOT NULL) AS on_time_share,
       avg(dep_delay) AS mean_dep_delay,
       avg(arr_delay) AS mean_arr_delay
FROM core.flights
WHERE {{partition_filter}}
GROUP BY event_date, carrier, origin
"""


DESCRIPTIONS = {
    "event_date": "Partition: the scheduled-departure date local to the origin.",
    "carrier": "Two-character carrier code.",
    "carrier_name": "Full carrier name, from raw.airlines through core.flights; null when airlines has no row for it.",
    "origin": "Origin airport (FAA code).",
    "flights": "Flights of the carrier from the origin that day, cancelled and diverted ones included.",
    "cancellations": "Of those, flights that never departed.",
    "on_time_share": f"Share of the flights with a known arrival delay that arrived at most {ON_TIME_MINUTES} minutes late, "
                     "in [0, 1]; null when none has a known arrival delay.",
    "mean_dep_delay": "Mean departure delay in minutes over the flights with a known one; negative is early.",
    "mean_arr_delay": "Mean arrival delay in minutes over the flights with a known one; negative is early.",
}
COLUMN_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(n, t, description=DESCRIPTIONS[n]) for n, t in COLUMNS])


@dg.asset(
    key=["marts", "carrier_daily"],
    deps=[dg.AssetKey(["core", "flights"])],
    group_name="marts",
    kinds={"duckdb"},
    code_version="1",
    metadata={"dagster/column_schema": COLUMN_SCHEMA,
              "dagster/column_lineage": dg.TableColumnLineage(deps_by_column={
                  "event_date": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "event_date")],
                  "carrier": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "carrier")],
                  "carrier_name": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "carrier_name")],
                  "origin": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "origin")],
                  "flights": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "flight")],
                  "cancellations": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "cancelled")],
                  "on_time_share": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "arr_delay")],
                  "mean_dep_delay": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "dep_delay")],
                  "mean_arr_delay": [dg.TableColumnDep(dg.AssetKey(["core", "flights"]), "arr_delay")],
              }),
              "dagster/table_name": "warehouse.marts.carrier_daily",
              # Columns computed by GROUP BY aggregates, so lineage can say so (transformation subtype).
              names.AGGREGATED_COLUMNS: dg.MetadataValue.json(
                  ["flights", "cancellations", "on_time_share", "mean_dep_delay", "mean_arr_delay"])},
    **policy.warehouse_writer(catalog.partitions_def(catalog.contracts()["flights"])),
)
def carrier_daily(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Per day, carrier and origin: flights, cancellations, on-time share (arrival delay at most
    15 minutes, among flights with a known arrival delay) and mean departure and arrival delays."""
    ddl = "CREATE TABLE IF NOT EXISTS marts.carrier_daily (" + ", ".join(f"{n} {t}" for n, t in COLUMNS) + ")"
    with warehouse.connect() as con:
        rows = partitions.replace_partitions(con, "marts.carrier_daily", ddl, list(context.partition_keys), SELECT)
    partition_metadata.record(context, {k: {"dagster/row_count": n} for k, n in rows.items()})
    return dg.MaterializeResult(metadata={"dagster/column_schema": COLUMN_SCHEMA})
