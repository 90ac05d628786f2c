"""The plumbline code location: assets from every contract, the jobs that run them, resources."""

from __future__ import annotations

import dagster as dg

from assets.bronze import bronze_asset
from assets.core import core_flights
from assets.marts import carrier_daily
from assets.raw import raw_asset
from orchestration import catalog, sensors
from orchestration.lineage.sensors import sensors as lineage_sensors
from orchestration.warehouse import Warehouse

CONTRACTS = catalog.contracts()
PARTITIONED = [c for c in CONTRACTS.values() if c.partitioning]
SNAPSHOTS = [c for c in CONTRACTS.values() if not c.partitioning]

INGEST_JOB = "ingest_deliveries"
SNAPSHOTS_JOB = "refresh_snapshots"


def rebuild_job_name(source: str) -> str:
    return f"rebuild_{source}"


jobs = [
    dg.define_asset_job(INGEST_JOB, selection=dg.AssetSelection.groups("bronze"),
                        description="Take every new delivery in the landing zone into bronze."),
    dg.define_asset_job(SNAPSHOTS_JOB, selection=dg.AssetSelection.assets(*[["raw", c.name] for c in SNAPSHOTS]),
                        description="Rebuild the snapshot dimensions (planes, airlines, airports) from bronze."),
    *[
        dg.define_asset_job(
            rebuild_job_name(c.name),
            selection=dg.AssetSelection.assets(["raw", c.name]).downstream(),
            description=f"Rebuild raw.{c.name} partitions and everything downstream of them.",
        )
        for c in PARTITIONED
    ],
]

schedules = [
    dg.build_schedule_from_partitioned_job(job, hour_of_day=6, name=f"{job.name}_daily")
    for job in jobs if job.name.startswith("rebuild_")
]

defs = dg.Definitions(
    assets=[*(bronze_asset(c) for c in CONTRACTS.values()), *(raw_asset(c) for c in CONTRACTS.values()),
            core_flights, carrier_daily],
    jobs=jobs,
    sensors=[*lineage_sensors, sensors.landing_sensor(INGEST_JOB),
             *(sensors.rebuild_sensor(c.name, rebuild_job_name(c.name), True) for c in PARTITIONED),
             *(sensors.rebuild_sensor(c.name, SNAPSHOTS_JOB, False) for c in SNAPSHOTS)],
    schedules=schedules,
    resources={"warehouse": Warehouse()},
)
