"""The plumbline code location: assets from every contract, the jobs that run them, resources."""

from __future__ import annotations

import dagster as dg

from assets.bronze import bronze_asset
from assets.core import core_flights
from assets.marts import carrier_daily
from assets import ml, operational, table_checks
from assets.raw import raw_asset
from orchestration import catalog, code_references, names
from orchestration.automation import sensors
from orchestration.automation.lineage_sensors import sensors as lineage_sensors
from orchestration.automation import ml_sensors
from orchestration.resources import executor, resources

CONTRACTS = catalog.contracts()
PARTITIONED = [c for c in CONTRACTS.values() if c.partitioning]
SNAPSHOTS = [c for c in CONTRACTS.values() if not c.partitioning]

INGEST_JOB = "ingest_deliveries"
SNAPSHOTS_JOB = "refresh_snapshots"
FEATURES_JOB = "build_features"
TRAIN_JOB = "train_model"
SCORE_JOB = "score_flights"
OBSERVE_JOB = "observe_operational_tables"
ML = dg.AssetSelection.groups("ml")
BUILT_ON = "flights"  # the contract core, marts and ml are built from: its owners own them


def platform_policy(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Every asset's owners are those of the contract it is built from, and its layer tag is its group
    (its pool and backfill policy: assets/policy.py)."""
    contract = CONTRACTS[spec.tags.get(names.SOURCE_TAG, BUILT_ON)]
    return spec.merge_attributes(owners=catalog.owners(contract), tags={names.LAYER_TAG: spec.group_name})


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
            # ML partitions read a rolling window of days, so they run as their own ranges (build_features)
            selection=dg.AssetSelection.assets(["raw", c.name]).downstream() - ML,
            description=f"Rebuild raw.{c.name} partitions and everything downstream of them, up to the ML layer.",
        )
        for c in PARTITIONED
    ],
    dg.define_asset_job(FEATURES_JOB, selection=dg.AssetSelection.assets(ml.FEATURES),
                        description="Rebuild ml.flight_features partitions (a changed flights day changes the next "
                                    f"{ml.CFG.rolling_days} days' rolling features too)."),
    dg.define_asset_job(TRAIN_JOB, selection=dg.AssetSelection.assets(ml.TRAINING_SET, ml.MODEL, ml.EVALUATION),
                        description="Build the training set, train (or reuse) the model, evaluate it and run the promotion gate."),
    dg.define_asset_job(SCORE_JOB, selection=dg.AssetSelection.assets(ml.PREDICTIONS),
                        description="Score partitions with the champion model and measure their drift."),
    dg.define_asset_job(OBSERVE_JOB, selection=dg.AssetSelection.assets(operational.operational_tables),
                        description="Read the operational tables' row counts and columns, and the open dead letters of each source."),
]

# Jobs of daily-partitioned assets, which an in-process backfill runs as partition ranges.
PARTITIONED_JOBS = [rebuild_job_name(c.name) for c in PARTITIONED] + [FEATURES_JOB, SCORE_JOB]

schedules = [
    dg.build_schedule_from_partitioned_job(job, hour_of_day=6, name=f"{job.name}_daily")
    for job in jobs if job.name.startswith("rebuild_")
] + [dg.ScheduleDefinition(name=f"{OBSERVE_JOB}_hourly", job_name=OBSERVE_JOB, cron_schedule="0 * * * *",
                           default_status=dg.DefaultScheduleStatus.STOPPED)]  # turned on in the UI where wanted

defs = dg.Definitions(
    assets=code_references.with_code_references(dg.map_asset_specs(platform_policy, [
        *(bronze_asset(c) for c in CONTRACTS.values()), *(raw_asset(c) for c in CONTRACTS.values()),
        core_flights, carrier_daily,
        ml.flight_features, ml.training_set, ml.delay_model, ml.model_evaluation, ml.flight_predictions,
        operational.operational_tables])),
    asset_checks=[ml.promotion_gate, *table_checks.asset_checks],
    jobs=jobs,
    sensors=[*lineage_sensors, sensors.landing_sensor(INGEST_JOB),
             *(sensors.rebuild_sensor(c.name, rebuild_job_name(c.name), True) for c in PARTITIONED),
             *(sensors.rebuild_sensor(c.name, SNAPSHOTS_JOB, False) for c in SNAPSHOTS),
             *ml_sensors.sensors(FEATURES_JOB, TRAIN_JOB, SCORE_JOB)],
    schedules=schedules,
    resources=resources(),
    executor=executor(),  # the deployment's: Celery workers in production (orchestration/resources.py)
)
