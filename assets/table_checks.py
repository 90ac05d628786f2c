"""The invariants core.flights and marts.carrier_daily promise, as asset checks run in the warehouse.

Each check is a query for the rows that break its invariant, over the partitions of the run that
materialized the asset (every partition when the check is executed on its own, from the UI). A check
passes when the query finds nothing; its metadata counts what it found and shows a few examples.
The row-count checks state the documented exclusions: none. core.flights keeps every row of
raw.flights (cancelled and diverted flights are flagged, not dropped; its joins to the dimensions are
LEFT joins on their primary keys), and marts.carrier_daily counts every core.flights row once.
"""

import datetime as dt
from dataclasses import dataclass

import dagster as dg

from assets import policy
from orchestration import catalog
from orchestration.warehouse import key_list, table_exists
from orchestration.warehouse_resource import Warehouse

CORE = dg.AssetKey(["core", "flights"])
MART = dg.AssetKey(["marts", "carrier_daily"])
EXAMPLES = 5
PARTITIONS = catalog.partitions_def(catalog.contracts()["flights"])  # core and marts are partitioned like raw.flights


@dataclass(frozen=True)
class TableCheck:
    name: str
    asset: dg.AssetKey
    description: str
    violations: str  # SELECT of the offending rows; {scope} filters a table's event_date to the run's partitions
    reads: tuple[str, ...]  # the tables the query reads: a check of a table not built yet has nothing to judge


CHECKS = [
    TableCheck("core_flights_key_unique", CORE,
               "No two rows share a flight's key (event_date, carrier, flight, origin), the primary key of raw.flights.",
               "SELECT event_date, carrier, flight, origin, count(*) AS copies FROM core.flights WHERE {scope} "
               "GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL", ("core.flights",)),
    TableCheck("core_flights_arrival_after_departure", CORE,
               "Every flight arrives after it departs, in UTC: arr_utc > dep_utc and sched_arr_utc > sched_dep_utc "
               "wherever both are known (an arrival local time past midnight belongs to the next day).",
               "SELECT event_date, carrier, flight, origin, dep_utc, arr_utc, sched_dep_utc, sched_arr_utc "
               "FROM core.flights WHERE {scope} AND (arr_utc <= dep_utc OR sched_arr_utc <= sched_dep_utc) "
               "ORDER BY event_date, carrier, flight, origin", ("core.flights",)),
    TableCheck("core_flights_rows_match_raw", CORE,
               "Each partition holds exactly the rows of raw.flights: no documented exclusion (cancelled and "
               "diverted flights are flagged, dimensions are LEFT-joined on their keys).",
               "SELECT coalesce(r.event_date, c.event_date) AS event_date, coalesce(r.n, 0) AS raw_rows, "
               "coalesce(c.n, 0) AS core_rows "
               "FROM (SELECT event_date, count(*) AS n FROM raw.flights WHERE {scope} GROUP BY 1) r "
               "FULL JOIN (SELECT event_date, count(*) AS n FROM core.flights WHERE {scope} GROUP BY 1) c "
               "ON c.event_date = r.event_date WHERE coalesce(r.n, 0) <> coalesce(c.n, 0) ORDER BY 1",
               ("core.flights", "raw.flights")),
    TableCheck("carrier_daily_key_unique", MART,
               "No two rows share a key (event_date, carrier, origin).",
               "SELECT event_date, carrier, origin, count(*) AS copies FROM marts.carrier_daily WHERE {scope} "
               "GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL", ("marts.carrier_daily",)),
    TableCheck("carrier_daily_shares_in_range", MART,
               "on_time_share is in [0, 1] and 0 <= cancellations <= flights, with at least one flight per row.",
               "SELECT event_date, carrier, origin, flights, cancellations, on_time_share FROM marts.carrier_daily "
               "WHERE {scope} AND (on_time_share NOT BETWEEN 0 AND 1 OR cancellations < 0 OR cancellations > flights "
               "OR flights < 1) ORDER BY event_date, carrier, origin", ("marts.carrier_daily",)),
    TableCheck("carrier_daily_flights_match_core", MART,
               "Each partition's flights add up to its rows in core.flights: every flight counted once, none excluded.",
               "SELECT coalesce(c.event_date, m.event_date) AS event_date, coalesce(c.n, 0) AS core_rows, "
               "coalesce(m.n, 0) AS mart_flights "
               "FROM (SELECT event_date, count(*) AS n FROM core.flights WHERE {scope} GROUP BY 1) c "
               "FULL JOIN (SELECT event_date, sum(flights) AS n FROM marts.carrier_daily WHERE {scope} GROUP BY 1) m "
               "ON m.event_date = c.event_date WHERE coalesce(c.n, 0) <> coalesce(m.n, 0) ORDER BY 1",
               ("core.flights", "marts.carrier_daily")),
]


def run_partitions(context: dg.AssetCheckExecutionContext) -> list[str] | None:
    """The partition keys of the run (a range backfill is one run), or None when it has none. Read from
    the run's range, which a run of the check alone carries too (it has no partitions definition)."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return None
    return list(PARTITIONS.get_partition_keys_in_range(context.partition_key_range))


def evaluate(con, table_check: TableCheck, keys: list[str] | None) -> dg.AssetCheckResult:
    """Run one check's query over `keys` (every partition when None) and judge it."""
    scope = "TRUE" if keys is None else f"event_date IN {key_list(keys)}"
    where = "every partition" if keys is None else f"{len(keys)} partition(s) of this run"
    missing = [t for t in table_check.reads if not table_exists(con, *t.split("."))]
    if missing:
        return dg.AssetCheckResult(passed=True, description=f"nothing to judge yet: {', '.join(missing)} not built",
                                   metadata={"violations": 0, "partitions_checked": where})
    sql = table_check.violations.format(scope=scope)
    found = con.execute(f"SELECT count(*) FROM ({sql})").fetchall()[0][0]
    cursor = con.execute(f"SELECT * FROM ({sql}) LIMIT {EXAMPLES}")
    names = [d[0] for d in cursor.description]
    examples = [{n: _plain(v) for n, v in zip(names, row)} for row in cursor.fetchall()]
    return dg.AssetCheckResult(
        passed=found == 0,
        description=(f"holds in {where}" if not found else
                     f"{found} row(s) break it in {where}; first: {examples[0]}"),
        metadata={"violations": found, "partitions_checked": where, "examples": dg.MetadataValue.json(examples)})


def _plain(value):
    """JSON-ready: dates and instants as ISO text."""
    return value.isoformat() if isinstance(value, (dt.date, dt.datetime)) else value


def _asset_check(table_check: TableCheck) -> dg.AssetChecksDefinition:
    # ERROR and blocking: a broken core partition must not feed the marts or the ML layer
    @dg.asset_check(asset=table_check.asset, name=table_check.name, description=table_check.description,
                    blocking=True, pool=policy.WAREHOUSE_POOL)
    def _check(context: dg.AssetCheckExecutionContext, warehouse: Warehouse) -> dg.AssetCheckResult:
        with warehouse.connect(read_only=True) as con:
            return evaluate(con, table_check, run_partitions(context))

    return _check


asset_checks = [_asset_check(c) for c in CHECKS]
