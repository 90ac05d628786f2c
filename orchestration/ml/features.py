"""ml.flight_features: one row per flight, with what was known before it left and its label.

Every rolling aggregate is computed from the previous `rolling_days` days of core.flights, never
from the flight's own day or later, so a day's features do not change when later days load (the
leakage test rebuilds a day with every later partition removed). Weather is the origin's
observation at the scheduled departure hour, joined on the UTC hour so the DST hour is right.
Cancelled and diverted flights keep their features with outcome 'cancelled' or 'diverted' and a
NULL label: the training set leaves them out and counts them.
"""

from __future__ import annotations

import dagster as dg

CATEGORICAL = ["carrier", "origin", "dest"]
NUMERIC = ["sched_hour", "weekday", "month", "distance", "plane_age", "seats",
           "temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib",
           "co_on_time_share", "co_flights", "co_cancel_share", "origin_mean_dep_delay"]
FEATURES = CATEGORICAL + NUMERIC
# Kept in the table, left out of the model: with a time-based split the months scored are never
# months trained on, so the model could only extrapolate (and every scored day would show as drift).
NOT_MODEL_INPUTS = {"month"}
MODEL_NUMERIC = [c for c in NUMERIC if c not in NOT_MODEL_INPUTS]
MODEL_INPUTS = CATEGORICAL + MODEL_NUMERIC
KEY = ["event_date", "carrier", "flight", "origin"]  # the flight's primary key in raw.flights

COLUMNS = [
    ("event_date", "DATE", "local scheduled-departure date (partition)"),
    ("carrier", "VARCHAR", "carrier code"), ("flight", "INTEGER", "flight number"),
    ("origin", "VARCHAR", "origin airport"), ("dest", "VARCHAR", "destination airport"),
    ("tailnum", "VARCHAR", "plane tail number"),
    ("sched_dep_utc", "TIMESTAMPTZ", "scheduled departure (UTC)"),
    ("sched_hour", "SMALLINT", "scheduled departure hour, local to the origin"),
    ("weekday", "SMALLINT", "ISO weekday of the event date (1 = Monday)"),
    ("month", "SMALLINT", "month of the event date"),
    ("distance", "SMALLINT", "great-circle distance (miles)"),
    ("plane_age", "SMALLINT", "years since the plane was built, where planes knows it"),
    ("seats", "SMALLINT", "seats on the plane, where planes knows it"),
    ("temp", "DOUBLE", "origin temperature at the scheduled hour (F)"),
    ("dewp", "DOUBLE", "origin dew point at the scheduled hour (F)"),
    ("humid", "DOUBLE", "origin relative humidity at the scheduled hour"),
    ("wind_speed", "DOUBLE", "origin wind speed at the scheduled hour (mph)"),
    ("wind_gust", "DOUBLE", "origin wind gust at the scheduled hour (mph)"),
    ("precip", "DOUBLE", "origin precipitation at the scheduled hour (inches)"),
    ("pressure", "DOUBLE", "origin sea-level pressure at the scheduled hour (mb)"),
    ("visib", "DOUBLE", "origin visibility at the scheduled hour (miles)"),
    ("co_on_time_share", "DOUBLE", "carrier at origin: share of flights on time over the previous days"),
    ("co_flights", "BIGINT", "carrier at origin: flights over the previous days"),
    ("co_cancel_share", "DOUBLE", "carrier at origin: share cancelled over the previous days"),
    ("origin_mean_dep_delay", "DOUBLE", "origin: mean departure delay over the previous days (minutes)"),
    ("outcome", "VARCHAR", "on_time, delayed, cancelled or diverted"),
    ("delayed", "BOOLEAN", "label: arrival delay above the threshold; NULL for cancelled and diverted flights"),
]
COLUMN_SCHEMA = dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in COLUMNS])
DDL = "CREATE TABLE IF NOT EXISTS ml.flight_features (" + ", ".join(f"{n} {t}" for n, t, _ in COLUMNS) + ")"

# Which core.flights / raw columns each feature comes from (for dagster/column_lineage).
SOURCES = {
    "event_date": [("core", "flights", "event_date")], "carrier": [("core", "flights", "carrier")],
    "flight": [("core", "flights", "flight")], "origin": [("core", "flights", "origin")],
    "dest": [("core", "flights", "dest")], "tailnum": [("core", "flights", "tailnum")],
    "sched_dep_utc": [("core", "flights", "sched_dep_utc")],
    "sched_hour": [("core", "flights", "sched_dep_utc"), ("raw", "airports", "tzone")],
    "weekday": [("core", "flights", "event_date")], "month": [("core", "flights", "event_date")],
    "distance": [("core", "flights", "distance")],
    # the plane's row is looked up by tailnum: the join key, on both sides, is a source too (impact analysis)
    "plane_age": [("raw", "planes", "year"), ("core", "flights", "event_date"), ("core", "flights", "tailnum"),
                  ("raw", "planes", "tailnum")],
    "seats": [("raw", "planes", "seats"), ("core", "flights", "tailnum"), ("raw", "planes", "tailnum")],
    **{w: [("raw", "weather", w), ("raw", "weather", "time_hour")]
       for w in ("temp", "dewp", "humid", "wind_speed", "wind_gust", "precip", "pressure", "visib")},
    "co_on_time_share": [("core", "flights", "arr_delay")], "co_flights": [("core", "flights", "flight")],
    "co_cancel_share": [("core", "flights", "cancelled")], "origin_mean_dep_delay": [("core", "flights", "dep_delay")],
    "outcome": [("core", "flights", "cancelled"), ("core", "flights", "diverted"), ("core", "flights", "arr_delay")],
    "delayed": [("core", "flights", "arr_delay"), ("core", "flights", "cancelled"), ("core", "flights", "diverted")],
}
# The keys the plane's and the weather's rows are looked up by (lineage: INDIRECT/JOIN).
JOIN_KEYS = {"core/flights": ["tailnum"], "raw/planes": ["tailnum"], "raw/weather": ["time_hour"]}
AGGREGATED = ["co_on_time_share", "co_flights", "co_cancel_share", "origin_mean_dep_delay"]


def select(rolling_days: int, delay_minutes: int) -> str:
    """The feature query for the event_date partitions in {partition_filter} (replace_partitions fills it)."""
    n, threshold = int(rolling_days), int(delay_minutes)
    return f"""
WITH day AS (
    SELECT * FROM core.flights WHERE {{partition_filter}}
), days AS (
    SELECT DISTINCT event_date FROM day
), history AS (  -- earlier days only: the window ends the day before the flight's day
    SELECT d.event_date, h.carrier, h.origin,
           count(*) AS flights,
           count(*) FILTER (WHERE h.arr_delay <= {threshold}) AS on_time,
           count(h.arr_delay) AS known,
           count(*) FILTER (WHERE h.cancelled) AS cancelled,
           sum(h.dep_delay) AS dep_delay_sum, count(h.dep_delay) AS dep_delay_n
    FROM days d JOIN core.flights h ON h.event_date >= d.event_date - {n} AND h.event_date < d.event_date
    GROUP BY ALL
), by_origin AS (
    SELECT event_date, origin, sum(dep_delay_sum) / nullif(sum(dep_delay_n), 0) AS mean_dep_delay
    FROM history GROUP BY ALL
)
SELECT f.event_date, f.carrier, f.flight, f.origin, f.dest, f.tailnum, f.sched_dep_utc,
       CAST(hour(timezone(o.tzone, f.sched_dep_utc)) AS SMALLINT) AS sched_hour,
       CAST(isodow(f.event_date) AS SMALLINT) AS weekday,
       CAST(month(f.event_date) AS SMALLINT) AS month,
       f.distance,
       CAST(year(f.event_date) - pl.year AS SMALLINT) AS plane_age,
       pl.seats,
       w.temp, w.dewp, w.humid, w.wind_speed, w.wind_gust, w.precip, w.pressure, w.visib,
       h.on_time / nullif(h.known, 0) AS co_on_time_share,
       coalesce(h.flights, 0) AS co_flights,
       h.cancelled / nullif(h.flights, 0) AS co_cancel_share,
       bo.mean_dep_delay AS origin_mean_dep_delay,
       CASE WHEN f.cancelled THEN 'cancelled' WHEN f.diverted THEN 'diverted'
            WHEN f.arr_delay > {threshold} THEN 'delayed' ELSE 'on_time' END AS outcome,
       CASE WHEN f.cancelled OR f.diverted THEN NULL ELSE f.arr_delay > {threshold} END AS delayed
FROM day f
LEFT JOIN raw.airports o ON o.faa = f.origin
LEFT JOIN raw.planes pl ON pl.tailnum = f.tailnum
LEFT JOIN raw.weather w ON w.origin = f.origin AND w.time_hour = date_trunc('hour', f.sched_dep_utc)
LEFT JOIN history h ON h.event_date = f.event_date AND h.carrier = f.carrier AND h.origin = f.origin
LEFT JOIN by_origin bo ON bo.event_date = f.event_date AND bo.origin = f.origin
"""


def partition_mapping(rolling_days: int) -> dg.TimeWindowPartitionMapping:
    """A feature day reads core.flights from rolling_days before it up to itself."""
    return dg.TimeWindowPartitionMapping(start_offset=-int(rolling_days), end_offset=0)


def affected_days(changed: list[str], partitions_def: dg.PartitionsDefinition, rolling_days: int) -> list[str]:
    """Feature partitions that read any changed core.flights day, as the partition mapping says."""
    subset = partitions_def.empty_subset().with_partition_keys(changed)
    mapped = partition_mapping(rolling_days).get_downstream_partitions_for_partitions(subset, partitions_def, partitions_def)
    return sorted(mapped.get_partition_keys())
