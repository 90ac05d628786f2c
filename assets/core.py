"""core.flights: conformed flights with timezone-correct UTC times and their dimensions joined."""

import dagster as dg

from assets import policy
from orchestration import catalog, names
from orchestration.rebuild import partition_metadata, partitions
from orchestration.warehouse_resource import Warehouse

FLIGHTS = catalog.contracts()["flights"]

# Local HHMM at an airport on a local date, as a UTC instant (NULL when the zone is unknown).
_LOCAL = "timezone({tz}, make_date(f.year, f.month, f.day)::TIMESTAMP + to_minutes(({hhmm} // 100) * 60 + {hhmm} % 100))"
SELECT = f"""
SELECT f.year, f.month, f.day, f.carrier, al.name AS carrier_name, f.flight, f.origin, f.dest, f.tailnum,
       pl.model AS plane_model, pl.manufacturer AS plane_manufacturer,
       sched_dep_utc, dep_utc, sched_arr_utc, arr_utc,
       f.dep_delay, f.arr_delay, f.air_time, f.distance,
       f.dep_time IS NULL AS cancelled,
       f.dep_time IS NOT NULL AND f.arr_delay IS NULL AS diverted,
       f.event_date
FROM (
    SELECT f.*, sched_dep_utc, dep_utc,
           sched_arr_base + to_days(CAST(ceil(greatest(0, epoch(sched_dep_utc) - epoch(sched_arr_base)) / 86400) AS INTEGER)) AS sched_arr_utc,
           arr_base + to_days(CAST(ceil(greatest(0, epoch(dep_utc) - epoch(arr_base)) / 86400) AS INTEGER)) AS arr_utc
    FROM (
        SELECT f.*,
               {_LOCAL.format(tz="o.tzone", hhmm="f.sched_dep_time")} AS sched_dep_utc,
               {_LOCAL.format(tz="o.tzone", hhmm="f.sched_dep_time")} + to_minutes(f.dep_delay) AS dep_utc,
               {_LOCAL.format(tz="d.tzone", hhmm="f.sched_arr_time")} AS sched_arr_base,
               {_LOCAL.format(tz="d.tzone", hhmm="f.arr_time")} AS arr_base
        FROM raw.flights f
        LEFT JOIN raw.airports o ON o.faa = f.origin
        LEFT JOIN raw.airports d ON d.faa = f.dest
        WHERE {{partition_filter}}
    ) f
) f
LEFT JOIN raw.airlines al ON al.carrier = f.carrier
LEFT JOIN raw.planes pl ON pl.tailnum = f.tailnum
"""

COLUMNS = [
    ("year", "SMALLINT", ["year"]), ("month", "SMALLINT", ["month"]), ("day", "SMALLINT", ["day"]),
    ("carrier", "VARCHAR", ["carrier"]), ("carrier_name", "VARCHAR", ["carrier"]), ("flight", "INTEGER", ["flight"]),
    ("origin", "VARCHAR", ["origin"]), ("dest", "VARCHAR", ["dest"]), ("tailnum", "VARCHAR", ["tailnum"]),
    ("plane_model", "VARCHAR", ["tailnum"]), ("plane_manufacturer", "VARCHAR", ["tailnum"]),
    ("sched_dep_utc", "TIMESTAMPTZ", ["year", "month", "day", "sched_dep_time", "origin"]),
    ("dep_utc", "TIMESTAMPTZ", ["year", "month", "day", "sched_dep_time", "dep_delay", "origin"]),
    ("sched_arr_utc", "TIMESTAMPTZ", ["year", "month", "day", "sched_arr_time", "sched_dep_time", "dest"]),
    ("arr_utc", "TIMESTAMPTZ", ["year", "month", "day", "arr_time", "dep_delay", "dest"]),
    ("dep_delay", "INTEGER", ["dep_delay"]), ("arr_delay", "INTEGER", ["arr_delay"]),
    ("air_time", "SMALLINT", ["air_time"]), ("distance", "SMALLINT", ["distance"]),
    ("cancelled", "BOOLEAN", ["dep_time"]), ("diverted", "BOOLEAN", ["dep_time", "arr_delay"]),
    ("event_date", "DATE", ["event_date"]),
]
# Columns that come from the dimension snapshots rather than raw.flights. A column looked up by a key
# lists the key on both sides (carrier, tailnum) as a source, so impact analysis follows the join.
DIMENSION_LINEAGE = {
    "carrier_name": [("airlines", "name"), ("airlines", "carrier")], "plane_model": [("planes", "model"), ("planes", "tailnum")],
    "plane_manufacturer": [("planes", "manufacturer"), ("planes", "tailnum")], "sched_dep_utc": [("airports", "tzone")],
    "dep_utc": [("airports", "tzone")], "sched_arr_utc": [("airports", "tzone")], "arr_utc": [("airports", "tzone")],
}


# The keys the dimension rows are looked up by (origin and dest: the airports' time zones).
JOIN_KEYS = {"raw/flights": ["carrier", "tailnum", "origin", "dest"], "raw/airlines": ["carrier"], "raw/planes": ["tailnum"]}


def column_lineage() -> dg.TableColumnLineage:
    deps = {}
    for name, _, sources in COLUMNS:
        deps[name] = [dg.TableColumnDep(asset_key=dg.AssetKey(["raw", "flights"]), column_name=s) for s in sources] + [
            dg.TableColumnDep(asset_key=dg.AssetKey(["raw", t]), column_name=c) for t, c in DIMENSION_LINEAGE.get(name, [])]
    return dg.TableColumnLineage(deps_by_column=deps)


# Columns computed here; every other column is described as its contract column (raw.flights or a dimension).
DERIVED = {
    "sched_dep_utc": "Scheduled departure as a UTC instant: the local date and sched_dep_time in the origin's time zone "
                     "(airports.tzone); null when the zone is unknown.",
    "dep_utc": "Actual departure as a UTC instant: sched_dep_utc plus dep_delay; null when cancelled.",
    "sched_arr_utc": "Scheduled arrival as a UTC instant: sched_arr_time in the destination's time zone on the departure "
                     "date, moved on by whole days until it is not before sched_dep_utc (arrivals past midnight).",
    "arr_utc": "Actual arrival as a UTC instant: arr_time in the destination's time zone on the departure date, moved on "
               "by whole days until it is not before dep_utc; null when cancelled or diverted.",
    "cancelled": "True when the flight never departed (no dep_time).",
    "diverted": "True when the flight departed but has no arrival delay (diverted: it landed elsewhere).",
    "event_date": "Partition: the scheduled-departure date local to the origin (year, month, day).",
}


def _description(name: str, sources: list[str]) -> str:
    if name in DERIVED:
        return DERIVED[name]
    source, column = DIMENSION_LINEAGE[name][0] if name in DIMENSION_LINEAGE else ("flights", sources[0])
    described = {c.name: c.description for c in catalog.contracts()[source].columns}[column]
    if source == "flights":
        return described
    return f"{described.rstrip('.')}, from raw.{source}.{column}; null when {source} has no row for it."


COLUMN_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(n, t, description=_description(n, s)) for n, t, s in COLUMNS])
DDL = "CREATE TABLE IF NOT EXISTS core.flights (" + ", ".join(f"{n} {t}" for n, t, _ in COLUMNS) + ")"


@dg.asset(
    key=["core", "flights"],
    deps=[dg.AssetKey(["raw", s]) for s in ("flights", "airlines", "airports", "planes")],
    group_name="core",
    kinds={"duckdb"},
    code_version="1",
    metadata={"dagster/column_schema": COLUMN_SCHEMA,
              "dagster/column_lineage": column_lineage(), names.JOIN_KEYS: dg.MetadataValue.json(JOIN_KEYS),
              "dagster/table_name": "warehouse.core.flights"},
    **policy.warehouse_writer(catalog.partitions_def(FLIGHTS)),
)
def core_flights(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Flights with departure and arrival as UTC instants computed from each airport's time zone
    (arrival times are local to the destination and may fall on a later day), cancelled and
    diverted flags, carrier name and plane model where known. Daily partitions by local
    scheduled-departure date, like raw.flights."""
    with warehouse.connect() as con:
        # Flights may land before a dimension has: build with empty dimensions, refreshed when they land.
        for source in ("flights", "airlines", "airports", "planes"):
            con.execute(partitions.raw_table_ddl(catalog.contracts()[source]))
        rows = partitions.replace_partitions(con, "core.flights", DDL, list(context.partition_keys), SELECT)
    partition_metadata.record(context, {k: {"dagster/row_count": n} for k, n in rows.items()})
    return dg.MaterializeResult(metadata={"dagster/column_schema": COLUMN_SCHEMA})
