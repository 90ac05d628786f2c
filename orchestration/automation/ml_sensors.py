"""The ML layer over time: what `plumbline sync` does after its data runs, done by the daemon.

ml_features_sensor  core/flights and raw/weather materializations -> build_features runs for the
                    feature days that read them (for core.flights, the days whose rolling window
                    covers a changed day too), one run per contiguous range; it waits until every
                    table the features read (weather, planes, airports too) has been loaded.
ml_training_sensor  ml/flight_features materializations inside the split windows -> one train_model
                    run (training set, model, evaluation, promotion gate), once no build_features or
                    train_model run is still pending and every split window is featured enough
                    (training.min_window_coverage, as `plumbline sync` waits for), and when the change
                    is worth it by sync's rule (plan.retraining: training.retrain_min_changed_share);
                    else no run, the deferral recorded on ml/delay_model's training_data_current.
ml_scoring_sensor   ml/flight_features materializations from scoring.start on -> score_flights runs
                    for those days; a promotion by the promotion gate -> every featured day from
                    scoring.start re-scored, so each partition says which version scored it.

Why sensors and not automation conditions: training waits for coverage thresholds and for pending
runs of other jobs, and scoring re-scores on a promotion, which is the promotion gate's metadata
(the check passes too when the champion is kept), with scoring.start read from the configuration
at every tick; no condition reads either. The features sensor could be a condition (any input
updated, through the rolling-window mapping, none missing); it stays a sensor for now because
`plumbline sync`'s ML plan mirrors its ranges and tests/scenarios/test_ml_sensors.py pins its run keys.
They read the Dagster instance, never the MLflow registry; only the training sensor reads the
warehouse (the training set, to judge a restatement), read-only and without waiting: while a writer
holds the file it skips the tick with its cursor kept. Like the ML runs they read the configuration (split windows,
scoring.start) at every tick; the feature window (rolling_days) is the asset's own. Each cursor
remembers where every stream was read up to; run keys are built from the events a tick saw, so a
tick evaluated twice submits nothing twice. What the events point at is asked for only while the
instance says it is still out of date (an input's latest materialization is newer than the
partition's own), so a sensor whose cursor is empty, or behind a `plumbline sync` that did the work,
starts from that state instead of replaying history.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

import dagster as dg
import duckdb

from orchestration import names
from orchestration.automation.sensors import interval_seconds
from orchestration.ml import config, features, plan
from orchestration.ml.layer import (CFG, CORE_FLIGHTS, DAILY, EVALUATION, FEATURE_INPUTS, FEATURES, PREDICTIONS,
                                    TRAINING_SET, WEATHER)
from orchestration.rebuild.ranges import RANGE_END, RANGE_START, contiguous_ranges
from orchestration.warehouse_resource import Warehouse

PROMOTION_GATE = dg.AssetCheckKey(EVALUATION, names.PROMOTION_GATE)
PAGE = 1000  # materialization records read per query; a tick reads every page there is
GATE_HISTORY = 100  # completed promotion-gate results remembered in the scoring sensor's cursor
# Statuses of a run that has not finished yet (queued by the daemon, or launched and running).
PENDING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
           dg.DagsterRunStatus.STARTED]
RUNNING = dg.DefaultSensorStatus.RUNNING


def _since(instance: dg.DagsterInstance, key: dg.AssetKey, cursor: str | None) -> tuple[list, str | None]:
    """Every materialization record of key after cursor, oldest first, and the cursor after them."""
    records = []
    while True:
        result = instance.fetch_materializations(key, limit=PAGE, cursor=cursor, ascending=True)
        records += result.records
        cursor = result.cursor if result.records else cursor
        if not result.has_more:
            return records, cursor


def _days(records: Iterable) -> list[str]:
    return sorted({r.partition_key for r in records if r.partition_key})


def _seen(*ids: Iterable[int]) -> str:
    """A short digest of the event ids a tick acted on: the same events give the same run keys."""
    return hashlib.sha256(",".join(str(i) for group in ids for i in group).encode()).hexdigest()[:16]


def _ranges(prefix: str, days: Iterable[str], tags: dict | None = None) -> list[dg.RunRequest]:
    return [dg.RunRequest(run_key=f"{prefix}:{start}:{end}", tags={RANGE_START: start, RANGE_END: end, **(tags or {})})
            for start, end in contiguous_ranges(sorted(days))]


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, int]:
    """partition -> storage id of its latest materialization: what is newer than what, with no replay."""
    return dict(instance.event_log_storage.get_latest_storage_id_by_partition(key, dg.DagsterEventType.ASSET_MATERIALIZATION))


def stale_feature_days(instance: dg.DagsterInstance) -> set[str]:
    """Feature days (with core.flights built) whose core.flights window or weather day was
    materialized after the day's own features."""
    flights, weather, featured = (_latest(instance, k) for k in (CORE_FLIGHTS, WEATHER, FEATURES))
    newest_input: dict[str, int] = dict(weather)
    for day, storage_id in flights.items():
        for d in features.affected_days([day], DAILY, CFG.rolling_days):
            newest_input[d] = max(newest_input.get(d, 0), storage_id)
    return {d for d in flights if newest_input.get(d, 0) > featured.get(d, 0)}


def _cursor(context: dg.SensorEvaluationContext) -> dict:
    return json.loads(context.cursor) if context.cursor else {}


def _pending(instance: dg.DagsterInstance, job_names: Iterable[str]) -> list[dg.DagsterRun]:
    return [run for job in job_names for run in instance.get_runs(dg.RunsFilter(job_name=job, statuses=PENDING))]


def feature_days(changed_flights: list[str], changed_weather: list[str], built: set[str]) -> list[str]:
    """Feature partitions to rebuild: those that read a changed core.flights day through the asset's
    partition mapping (its own day and the next rolling_days), and the days whose weather changed;
    only days with core.flights built (a feature day is its flights)."""
    days = set(features.affected_days(changed_flights, DAILY, CFG.rolling_days)) | set(changed_weather)
    return sorted(days & built)


def features_sensor(job_name: str) -> dg.SensorDefinition:
    @dg.sensor(name="ml_features_sensor", job_name=job_name, minimum_interval_seconds=interval_seconds(), default_status=RUNNING,
               description=f"Rebuilds the ml.flight_features partitions that read a changed core.flights day (and the "
                           f"{CFG.rolling_days} days after it, whose rolling window covers it) or a changed raw.weather day.")
    def _sensor(context: dg.SensorEvaluationContext):
        # the feature query reads every input table: until each has been loaded once, a run could only
        # fail, so wait and keep the cursor (the changes seen so far are featured when they are)
        inputs = sorted(FEATURE_INPUTS)
        latest = context.instance.get_latest_materialization_events(inputs)  # leaves out keys it never saw
        missing = [key.to_user_string() for key in inputs if latest.get(key) is None]
        if missing:
            return dg.SkipReason(f"waiting for {', '.join(missing)} to be loaded: ml.flight_features reads them")
        cursor = _cursor(context)
        first = not cursor  # no history to follow yet: the state below decides alone
        flights, cursor["core/flights"] = _since(context.instance, CORE_FLIGHTS, cursor.get("core/flights"))
        weather, cursor["raw/weather"] = _since(context.instance, WEATHER, cursor.get("raw/weather"))
        stale = stale_feature_days(context.instance)
        days = sorted(stale) if first else [d for d in feature_days(
            _days(flights), _days(weather), context.instance.get_materialized_partitions(CORE_FLIGHTS)) if d in stale]
        context.update_cursor(json.dumps(cursor))
        seen = _seen((r.storage_id for r in flights), (r.storage_id for r in weather))
        return _ranges(f"features:{seen}", days) or dg.SkipReason(
            f"no feature partition to rebuild ({len(flights)} new core/flights and {len(weather)} new raw/weather "
            "materialization(s), none on a day with core.flights built and features older than them)")

    return _sensor


def _judge(warehouse: Warehouse, cfg: config.MlConfig, instance: dg.DagsterInstance) -> plan.Retraining:
    """plan.retraining on the warehouse as it is, without waiting for a writer's lock (a tick must not block)."""
    if not warehouse.exists():
        return plan.Retraining({}, {}, {}, cfg.retrain_min_changed_share, "no warehouse yet")
    with warehouse.connect(read_only=True, wait_s=0) as con:
        return plan.retraining(con, cfg, plan.featured_since_training(instance))


def training_sensor(job_name: str, features_job: str) -> dg.SensorDefinition:
    @dg.sensor(name="ml_training_sensor", job_name=job_name, minimum_interval_seconds=interval_seconds(), default_status=RUNNING,
               description="Retrains, evaluates and runs the promotion gate when feature partitions inside the split "
                           "windows change, once every window is featured enough (training.min_window_coverage) and, "
                           "as `plumbline sync`, when a window's labelled flights changed by more than "
                           "training.retrain_min_changed_share (else the deferral is recorded on ml/delay_model).")
    def _sensor(context: dg.SensorEvaluationContext, warehouse: Warehouse):
        # train once on the finished features, not once per features run of a batch: while it waits
        # the cursor stays where it was, so the changes are still there when it stops waiting
        waiting = _pending(context.instance, [features_job, job_name])
        if waiting:
            return dg.SkipReason("waiting for " + ", ".join(f"{r.job_name} {r.run_id[:8]}" for r in waiting) + " to finish")
        cfg = config.load()
        covered = plan.coverage(cfg, context.instance.get_materialized_partitions(FEATURES))
        short = {name: share for name, share in covered.items() if share < cfg.min_window_coverage}
        if short:
            return dg.SkipReason(f"training waits until every split window is at least {cfg.min_window_coverage:.0%} "
                                 "featured: " + ", ".join(f"{name} {share:.0%}" for name, share in short.items()))
        cursor = _cursor(context)
        first = not cursor
        records, cursor["ml/flight_features"] = _since(context.instance, FEATURES, cursor.get("ml/flight_features"))
        split_days = {d for w in cfg.windows for d in w.days()}
        featured = _latest(context.instance, FEATURES)
        trained = context.instance.fetch_materializations(TRAINING_SET, limit=1, ascending=False).records
        trained_id = trained[0].storage_id if trained else 0
        # only features newer than the last training set are a reason to train
        days = sorted(d for d in (featured if first else _days(records))
                      if d in split_days and featured.get(d, 0) > trained_id)
        if not days:
            context.update_cursor(json.dumps(cursor))
            return dg.SkipReason(f"{len(records)} new ml/flight_features materialization(s), none inside the split "
                                 "windows and newer than the last training set")
        # the rule `plumbline sync` follows: a restatement that moves no window by more than
        # training.retrain_min_changed_share defers retraining (every feature day since the last training
        # set is judged, so deferred changes add up until one retrains)
        try:
            judged = _judge(warehouse, cfg, context.instance)
        except duckdb.IOException as e:  # a writer holds the file: judge at a later tick, cursor kept
            return dg.SkipReason(f"the warehouse is busy, retraining is judged at a later tick: {e}")
        context.update_cursor(json.dumps(cursor))
        if not judged.due:
            plan.record_deferral(context.instance, judged)
            return dg.SkipReason(f"retraining deferred: {judged.summary()}; the champion keeps serving "
                                 f"(retrain now: {plan.RETRAIN_WITH})")
        return dg.RunRequest(run_key=f"train:{_seen(featured[d] for d in days)}",
                             tags={"plumbline/changed_feature_days": f"{days[0]} .. {days[-1]} ({len(days)})"})

    return _sensor


def _gate_results(instance: dg.DagsterInstance) -> list[tuple[int, dict, str]]:
    """(id, metadata, run id) of the latest completed promotion-gate results, newest first."""
    records = instance.event_log_storage.get_asset_check_execution_history(PROMOTION_GATE, limit=GATE_HISTORY)
    return [(r.id, {k: v.value for k, v in r.evaluation.metadata.items()}, r.run_id)
            for r in records if isinstance(r.evaluation, dg.AssetCheckEvaluation)]  # planned ones have no result yet


def _promoted_at(instance: dg.DagsterInstance, gates: list[tuple[int, dict, str]]) -> int:
    """Storage id of the latest promotion's check evaluation: predictions older than it are stale."""
    run_id = next((run for _, meta, run in gates if meta.get(names.DECISION) == names.PROMOTED), None)
    if run_id is None:
        return 0
    events = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records
    return max((e.storage_id for e in events
                if e.event_log_entry.dagster_event.asset_check_evaluation_data.asset_check_key == PROMOTION_GATE), default=0)


def stale_score_days(instance: dg.DagsterInstance, gates: list[tuple[int, dict, str]], start: str) -> set[str]:
    """Featured days from scoring.start scored before their features changed or before the last promotion."""
    featured, scored = _latest(instance, FEATURES), _latest(instance, PREDICTIONS)
    promoted = _promoted_at(instance, gates)
    return {d for d, storage_id in featured.items()
            if d >= start and max(storage_id, promoted) > scored.get(d, 0)}


def scoring_sensor(job_name: str) -> dg.SensorDefinition:
    @dg.sensor(name="ml_scoring_sensor", job_name=job_name, minimum_interval_seconds=interval_seconds(), default_status=RUNNING,
               description="Scores changed ml.flight_features partitions from scoring.start on with the champion; when the "
                           "promotion gate promotes a new champion, re-scores every featured day from scoring.start.")
    def _sensor(context: dg.SensorEvaluationContext):
        start = config.load().scoring_start.isoformat()
        cursor = _cursor(context)
        first = not cursor
        records, cursor["ml/flight_features"] = _since(context.instance, FEATURES, cursor.get("ml/flight_features"))
        # results are keyed by execution id and an execution completes after it is planned, so a
        # watermark could skip one: remember the ids already seen instead
        gates = _gate_results(context.instance)
        seen_gates = set(cursor.get("promotion_gate", []))
        promoted = [(i, meta) for i, meta, _ in gates if i not in seen_gates and meta.get(names.DECISION) == names.PROMOTED]
        cursor["promotion_gate"] = [i for i, _, _ in gates]
        context.update_cursor(json.dumps(cursor))

        champion = next((meta.get(names.CHAMPION_VERSION) for _, meta, _ in gates), None)
        if champion in (None, "none"):
            return dg.SkipReason(f"no champion model yet ({len(records)} new feature partition(s)): the promotion "
                                 f"gate's first promotion scores every featured day from {start}")
        stale = stale_score_days(context.instance, gates, start)
        if first:
            days, why = stale, "scored before their features changed or before the champion was promoted"
        elif promoted:
            days = {d for d in context.instance.get_materialized_partitions(FEATURES) if d >= start} & stale
            why = f"champion v{promoted[0][1].get(names.CHAMPION_VERSION)} promoted: re-score from {start}"
        else:
            days = {d for d in _days(records) if d >= start} & stale
            why = "feature partitions changed"
        seen = _seen((r.storage_id for r in records), (i for i, _ in promoted), (days if first else ()))
        return _ranges(f"score:{seen}", days, {"plumbline/scoring": why}) or dg.SkipReason(
            f"{len(records)} new ml/flight_features materialization(s), none from {start} on, and no promotion")

    return _sensor


def sensors(features_job: str, train_job: str, score_job: str) -> list[dg.SensorDefinition]:
    return [features_sensor(features_job), training_sensor(train_job, features_job), scoring_sensor(score_job)]
