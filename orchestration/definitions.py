"""The plumbline code location: assets from every contract, the jobs that run them, resources, and
the platform policy applied to every asset in one place (owners, layer tag, freshness, automation)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from assets import policy
from assets.bronze import bronze_asset
from assets.core import core_flights
from assets.marts import carrier_daily
from assets import ml, operational, table_checks
from assets.raw import raw_asset
from orchestration import catalog, code_references, names
from orchestration.automation import sensors
from orchestration.automation.lineage_sensors import sensors as lineage_sensors
from orchestration.automation import alerts, ml_sensors
from orchestration.lineage import impact
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


ASSETS = [
    *(bronze_asset(c) for c in CONTRACTS.values()), *(raw_asset(c) for c in CONTRACTS.values()),
    core_flights, carrier_daily,
    ml.flight_features, ml.training_set, ml.delay_model, ml.model_evaluation, ml.flight_predictions]
# Retrained when the split windows' features change, not on a clock: no freshness SLA.
ON_DEMAND = {ml.TRAINING_SET, ml.MODEL, ml.EVALUATION}
SNAPSHOT_KEYS = [dg.AssetKey(["raw", c.name]) for c in SNAPSHOTS]
# Snapshots land at most daily; each evaluation weighs every core partition, so it runs at most this often.
SNAPSHOT_CHECK_SECONDS = 60
# What core and marts follow besides the rebuild jobs they are part of (assets/policy.py says why).
AUTOMATION = {"core": policy.follows_snapshots(SNAPSHOT_KEYS), "marts": policy.FOLLOWS_REQUESTED_INPUTS}


def freshness_windows(assets: list[dg.AssetsDefinition]) -> dict[dg.AssetKey, timedelta]:
    """How old each asset may get. raw.<source>: its contract's SLA latency, else its delivery
    frequency (the snapshots'). Anything built from raw: the tightest window among its inputs, since
    it is rebuilt with them. Bronze (every ingest run writes all of it) and ON_DEMAND: none."""
    specs = {s.key: s for a in assets for s in a.specs}
    windows: dict[dg.AssetKey, timedelta | None] = {}

    def window(key: dg.AssetKey) -> timedelta | None:
        if key not in windows:
            spec = specs[key]
            if spec.group_name == "raw":
                contract = CONTRACTS[spec.tags[names.SOURCE_TAG]]
                windows[key] = contract.sla_duration("latency") or contract.sla_duration("frequency")
            elif spec.group_name == "bronze" or key in ON_DEMAND:
                windows[key] = None
            else:
                windows[key] = min(filter(None, (window(d.asset_key) for d in spec.deps)), default=None)
        return windows[key]

    return {key: w for key in specs if (w := window(key))}


FRESHNESS = freshness_windows(ASSETS)
EXPECTED_PARTITIONS = "plumbline/expected_partitions"  # metadata: the partitions meant to exist, and why the rest do not
EXPECTED = {ml.PREDICTIONS: {
    "start": ml.CFG.scoring_start.isoformat(), "end": ml.DAILY.get_last_partition_key(),
    "why": "scoring starts at scoring.start (orchestration/ml/config.yaml): earlier days are training and "
           "validation data, never scored, so their partitions stay empty on purpose"},
    # raw sources whose contract says where their data starts or ends (sourceCoverage)
    **{dg.AssetKey(["raw", c.name]): e for c in PARTITIONED if (e := catalog.expected_partitions(c))}}


def platform_policy(spec: dg.AssetSpec) -> dg.AssetSpec:
    """Every asset's owners are those of the contract it is built from, its layer tag is its group
    (its pool and backfill policy: assets/policy.py), its freshness comes from the SLAs it is built
    from, core and marts carry their automation condition, and an asset with partitions empty on
    purpose says which are meant to exist."""
    contract = CONTRACTS[spec.tags.get(names.SOURCE_TAG, BUILT_ON)]
    window = FRESHNESS.get(spec.key)
    expected = {EXPECTED_PARTITIONS: dg.MetadataValue.json(EXPECTED[spec.key])} if spec.key in EXPECTED else {}
    return spec.merge_attributes(owners=catalog.owners(contract), tags={names.LAYER_TAG: spec.group_name},
                                 metadata=expected).replace_attributes(
        freshness_policy=dg.FreshnessPolicy.time_window(fail_window=window) if window else None,
        automation_condition=AUTOMATION.get(spec.group_name, spec.automation_condition))


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
    dg.build_schedule_from_partitioned_job(
        job, hour_of_day=6, name=f"{job.name}_daily", default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Off by default: the rebuild sensors already rebuild every partition a delivery changes. Turned "
                    f"on, it runs {job.name} every day at 06:00 (the partitions' time zone) for the latest complete "
                    "day, whether or not a delivery changed it, so that day is rebuilt and checked even when its "
                    "delivery never came (nothing after the partitions' end date).")
    for job in jobs if job.name.startswith("rebuild_")
] + [dg.ScheduleDefinition(
    name=f"{OBSERVE_JOB}_hourly", job_name=OBSERVE_JOB, cron_schedule="0 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Off by default: the UI's Observe button reads the operational tables on demand. Turned on, it runs "
                f"{OBSERVE_JOB} every hour: row counts and columns of the ops tables and ml.drift, and the "
                "open-dead-letter checks of every source (a WARN while rows wait).")]

defs = dg.Definitions(
    # raw assets show each column's downstream impact in the UI (from the declared column lineage)
    assets=code_references.with_code_references(
        impact.annotate(dg.map_asset_specs(platform_policy, [*ASSETS, operational.operational_tables]))),
    asset_checks=[ml.promotion_gate, *table_checks.asset_checks],
    jobs=jobs,
    sensors=[*lineage_sensors, sensors.landing_sensor(INGEST_JOB),
             *(sensors.rebuild_sensor(c.name, rebuild_job_name(c.name), True) for c in PARTITIONED),
             *(sensors.rebuild_sensor(c.name, SNAPSHOTS_JOB, False) for c in SNAPSHOTS),
             *ml_sensors.sensors(FEATURES_JOB, TRAIN_JOB, SCORE_JOB), *alerts.sensors,
             dg.AutomationConditionSensorDefinition(
                 "follow_snapshots_sensor", target=dg.AssetSelection.groups(*AUTOMATION), default_status=dg.DefaultSensorStatus.RUNNING,
                 minimum_interval_seconds=max(sensors.interval_seconds(), SNAPSHOT_CHECK_SECONDS),
                 description="Evaluates the automation conditions of core and marts: when a dimension snapshot (planes, "
                             "airlines, airports) changes, every built partition of core.flights is rebuilt, with "
                             "marts.carrier_daily in the same run.")],
    schedules=schedules,
    resources=resources(),
    executor=executor(),  # the deployment's: Celery workers in production (orchestration/resources.py)
)
