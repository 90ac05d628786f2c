"""`plumbline sync`: in one process, what the sensors do over time.

Ingest every pending delivery, then materialize every partition that the ingest made stale (and
everything downstream of it), one Dagster run per contiguous range of partitions. Runs are
recorded in the Dagster instance, so they show in the UI like any other run.

Embedded, each run executes in this process. In the production profile this process creates and
orchestrates each run against the PostgreSQL instance and its steps run on the Celery workers
(`plumbline worker`), which rebuild the job from this module (job_for).
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from dagster._core.execution.api import execute_run  # dg.execute_job's second half: runs a run created under our id

from orchestration import definitions, lineage, settings
from orchestration.ml import config, plan, training_set
from orchestration.ml.layer import DAILY
from orchestration.ml.registry import ModelRegistry
from orchestration.ops import runs
from orchestration.rebuild import partitions
from orchestration.rebuild.ranges import RANGE_END, RANGE_START, contiguous_ranges
from orchestration.resources import deployment, resources
from orchestration.warehouse_resource import Warehouse

# The console shows plumbline's progress lines; Dagster's step events stay in the instance (UI).
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

# The instance configuration shipped with the project (pools that serialize warehouse writers).
DAGSTER_YAML = Path(__file__).parents[1] / "dagster.yaml"
# The production profile's: PostgreSQL storage, queued runs, run retries, no warehouse pool limit.
DAGSTER_PRODUCTION_YAML = Path(__file__).parents[1] / "dagster_production.yaml"
INSTANCE_VARIABLE = "PLUMBLINE_INSTANCE_URL"
# dagster-celery registers its step task again for every step it submits; Celery warns each time
warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")


class InstanceNotConfigured(RuntimeError):
    """The production profile needs PLUMBLINE_INSTANCE_URL."""


@dataclass
class SyncReport:
    runs: list[tuple[str, str, bool]] = field(default_factory=list)  # (job, partitions, success)
    stale: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(success for _, _, success in self.runs)


def instance() -> dg.DagsterInstance:
    """The deployment's persistent instance, created on first use. Embedded: SQLite under
    PLUMBLINE_HOME/dagster (or DAGSTER_HOME). Production: PostgreSQL at $PLUMBLINE_INSTANCE_URL, its
    dagster.yaml in DAGSTER_HOME or PLUMBLINE_HOME/dagster-production. Built from that folder, so the
    environment stays as it was (a child process is told DAGSTER_HOME by whoever starts it)."""
    production = deployment() == "production"
    if production and not os.environ.get(INSTANCE_VARIABLE):
        raise InstanceNotConfigured(f"the production profile keeps its runs in PostgreSQL: set {INSTANCE_VARIABLE} "
                                    "(e.g. postgresql://user@host:5432/dagster)")
    home = (production_dagster_home() if production else settings.dagster_home()).expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(DAGSTER_PRODUCTION_YAML if production else DAGSTER_YAML, config)
    return dg.DagsterInstance.from_config(str(home))


def production_dagster_home() -> Path:
    """Where the production instance's dagster.yaml lives: DAGSTER_HOME, else PLUMBLINE_HOME/dagster-production
    (its runs and events are in PostgreSQL; only this file, and step compute logs, are here)."""
    env = os.environ.get("DAGSTER_HOME")
    return Path(env) if env else settings.plumbline_home() / "dagster-production"


def job_for(name: str) -> dg.JobDefinition:
    """A job of the code location by name: how a Celery worker rebuilds the job of a step it runs."""
    return definitions.defs.resolve_job_def(name)


def reconstructable_job(name: str):
    """A pointer to job `name` that another process (a Celery worker) rebuilds by importing this module."""
    return dg.build_reconstructable_job(__name__, job_for.__name__, reconstructable_args=(name,))


def _execute(instance: dg.DagsterInstance, job_name: str, run_id: str, tags: dict, selection) -> dg.ExecutionResult:
    """Execute one run under a known run id with the deployment's executor: in this process when
    embedded; in production this process orchestrates and every step is a task for the workers."""
    job = definitions.defs.resolve_job_def(job_name)
    if deployment() != "production":
        return job.execute_in_process(run_config=RUN_CONFIG, instance=instance, run_id=run_id, tags=tags,
                                      asset_selection=selection, raise_on_error=False)
    recon = reconstructable_job(job_name)
    run = instance.create_run_for_job(job_def=recon.get_definition(), run_id=run_id, run_config=RUN_CONFIG, tags=tags,
                                      asset_selection=frozenset(selection) if selection else None,
                                      job_code_origin=recon.get_python_origin())
    return execute_run(recon, run, instance, raise_on_error=False)


class Runner:
    """Runs plumbline jobs in this process against the instance, printing one line per run.

    First it ends the runs of earlier plumbline processes that died holding a pool slot (runs.py);
    every run it starts names this process in its tags and stops on SIGTERM or SIGINT (runs.Stopped)."""

    def __init__(self, say=print, dagster_instance: dg.DagsterInstance | None = None, command: str = "plumbline"):
        self.defs = definitions.defs
        self.resources = resources()  # the deployment's warehouse and model registry, as the runs get them
        self.owns_instance = dagster_instance is None  # opened here, so closed here (close())
        self.instance = dagster_instance or instance()
        self.say = say
        self.command = command  # names the command in the line a signal prints
        self.started = time.monotonic()
        self.runs: list[tuple[str, str, bool, str]] = []  # (job, label, success, run id)
        runs.install_signal_handlers()
        runs.reclaim_dead_runs(self.instance, say, self.emit_lineage)
        if deployment() == "production":
            # create the DuckLake catalog here, once, before steps on several workers would all find it
            # empty and race to create its tables
            with self.resources["warehouse"].connect():
                pass

    def close(self) -> None:
        """Close the instance this runner opened: its storages' connections, so the run shards'
        write-ahead logs are checkpointed now rather than whenever the process's exit frees them."""
        if self.owns_instance:
            self.instance.dispose()

    def emit_lineage(self, run_id: str) -> lineage.spool.FlushResult | None:
        return lineage.emit_run(self.instance, run_id, self.defs, self.resources["lineage_transport"],  # the same emitter the run-status sensors use
                                self.resources["warehouse"], self.resources["model_registry"])

    def run(self, job_name: str, label: str, tags: dict | None = None, selection=None) -> bool:
        t0 = time.monotonic()
        self.say(f"[{time.monotonic() - self.started:6.1f}s] {job_name} {label} ...")
        run_id = str(uuid.uuid4())
        try:
            with runs.Watch(self.instance, run_id, job_name, self.say, self.command, self.emit_lineage) as watch:
                result = _execute(self.instance, job_name, run_id, {**(tags or {}), **runs.owner_tags()}, selection)
        except runs.Stopped as e:  # the signal came before Dagster took over its handling
            canceled = runs.cancel(self.instance, run_id, e.signum, self.emit_lineage)
            raise runs.Stopped(e.signum, *((run_id, job_name) if canceled else ())) from None
        if watch.signum is not None:  # a running step was interrupted and the run ended here
            canceled = runs.cancel(self.instance, run_id, watch.signum, self.emit_lineage)
            raise runs.Stopped(watch.signum, *((run_id, job_name) if canceled else ()))
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        self.say(f"[{time.monotonic() - self.started:6.1f}s]   {'ok' if result.success else 'FAILED ' + str(failed)} "
                 f"in {time.monotonic() - t0:.1f}s (run {settings.run_ref(result.run_id)})")
        self.runs.append((job_name, label, result.success, result.run_id))
        emitted = self.emit_lineage(result.run_id)
        if emitted and emitted.pending:
            self.say(f"  lineage backend unreachable: {emitted.pending} event(s) spooled ({emitted.error})")
        return result.success

    def rematerialize(self, source: str, keys: list[str] | None, selection=None) -> bool:
        """Rebuild these partitions of raw.<source> and everything downstream (the ML layer too), one
        run per contiguous range."""
        if not definitions.CONTRACTS[source].partitioning:
            ok = self.run(definitions.SNAPSHOTS_JOB, f"({source})", selection=selection or [dg.AssetKey(["raw", source])])
            return refresh_ml(self.resources["warehouse"], self.resources["model_registry"], self.instance, self.run, self.say,
                              {}, snapshots_changed=True) and ok
        ok = True
        for start, end in contiguous_ranges(keys or []):
            ok &= self.run(definitions.rebuild_job_name(source), f"[{start} .. {end}]",
                           tags={RANGE_START: start, RANGE_END: end}, selection=selection)
        return refresh_ml(self.resources["warehouse"], self.resources["model_registry"], self.instance, self.run, self.say,
                          {source: list(keys or [])}, snapshots_changed=False) and ok


def sync(say=print, dagster_instance: dg.DagsterInstance | None = None, retrain: bool = False) -> SyncReport:
    """retrain: train even when the data changed too little since the last training set (training is deferred then)."""
    runner = Runner(say, dagster_instance, command="plumbline sync")
    try:
        return _sync(runner, say, retrain)
    finally:
        runner.close()


def _sync(runner: Runner, say, retrain: bool) -> SyncReport:
    report = SyncReport()
    started = runner.started

    def run(job_name: str, label: str, tags: dict | None = None, selection=None) -> bool:
        ok = runner.run(job_name, label, tags, selection)
        report.runs.append((job_name, label, ok))
        return ok

    lineage.flush(runner.resources["lineage_transport"])  # deliver what an unreachable backend left behind last time, before anything new
    run(definitions.INGEST_JOB, "(every pending delivery)")
    warehouse = runner.resources["warehouse"]
    with warehouse.connect() as con:
        held: dict[str, set[str]] = {}
        for c in definitions.CONTRACTS.values():
            report.stale[c.name] = partitions.stale_partitions(con, c)
            held[c.name] = {d for _, _, dates, _ in partitions.quarantined_files(con, c.name) for d in dates}

    stale_snapshots = [c.name for c in definitions.SNAPSHOTS if report.stale[c.name]]
    if stale_snapshots:
        run(definitions.SNAPSHOTS_JOB, f"({', '.join(stale_snapshots)})",
            selection=[dg.AssetKey(["raw", s]) for s in stale_snapshots])

    for c in definitions.PARTITIONED:
        keys = report.stale[c.name]
        if not keys:
            say(f"raw.{c.name}: no stale partitions")
            continue
        # a quarantined delivery fails its partitions' blocking check: run them apart, so the rest load downstream
        blocked = [k for k in keys if k in held[c.name]]
        ranges = contiguous_ranges([k for k in keys if k not in held[c.name]]) + contiguous_ranges(blocked)
        say(f"raw.{c.name}: {len(keys)} stale partition(s) in {len(ranges)} range(s)"
            + (f"; {len(blocked)} held back by quarantined deliveries (plumbline summary)" if blocked else ""))
        for start, end in ranges:
            run(definitions.rebuild_job_name(c.name), f"[{start} .. {end}]", tags={RANGE_START: start, RANGE_END: end})

    if stale_snapshots:
        _refresh_downstream_of_snapshots(con_factory=warehouse, run=run, stale_partitioned=report.stale)
    refresh_ml(warehouse, runner.resources["model_registry"], runner.instance, run, say, report.stale, bool(stale_snapshots),
               retrain)
    say(f"sync finished in {time.monotonic() - started:.1f}s: {len(report.runs)} run(s), "
        f"{'all succeeded' if report.ok else 'SOME FAILED'}")
    return report


def _refresh_downstream_of_snapshots(con_factory: Warehouse, run, stale_partitioned: dict) -> None:
    """A changed dimension changes every built partition downstream of it (minus those just rebuilt)."""
    todo = []
    with con_factory.connect(read_only=True) as con:
        for c in definitions.PARTITIONED:
            job = definitions.rebuild_job_name(c.name)
            downstream = [k for k in definitions.defs.resolve_job_def(job).asset_layer.selected_asset_keys
                          if k != dg.AssetKey(["raw", c.name])]
            built = [str(p) for (p,) in con.execute(
                "SELECT partition_date FROM ops.partition_accounting WHERE source = ? ORDER BY 1", [c.name]).fetchall()]
            keys = sorted(set(built) - set(stale_partitioned.get(c.name, [])))
            if downstream and keys:
                todo.append((job, downstream, keys))
    for job, downstream, keys in todo:
        for start, end in contiguous_ranges(keys):
            run(job, f"downstream [{start} .. {end}]", tags={RANGE_START: start, RANGE_END: end}, selection=downstream)


def refresh_ml(warehouse: Warehouse, model_registry: ModelRegistry, instance: dg.DagsterInstance, run, say,
               stale: dict[str, list[str]], snapshots_changed: bool, retrain: bool = False) -> bool:
    """Features for every day the data changed (and the days whose rolling window reads it), then
    training, evaluation and the promotion gate when the training windows changed by more than the
    configured share since the last training set (or always with retrain), then scoring.
    Returns whether every run succeeded."""
    cfg = config.load()
    with warehouse.connect(read_only=True) as con:
        built = sorted(plan.days_in(con, "core.flights"))
        has_set = training_set.current_provenance(con) is not None
        todo = plan.plan(con, cfg, DAILY, built if snapshots_changed else stale.get("flights", []),
                         stale.get("weather", []), has_set)
    if not built:
        return True
    ok = True
    for start, end in contiguous_ranges(todo.feature_days):
        ok &= run(definitions.FEATURES_JOB, f"[{start} .. {end}]", tags={RANGE_START: start, RANGE_END: end})
    if todo.waiting:
        say(f"ml: {todo.waiting}")
    train = not todo.waiting and (retrain or todo.retrain)
    if train and has_set and not retrain:
        with warehouse.connect(read_only=True) as con:
            judged = plan.retraining(con, cfg, plan.featured_since_training(instance))
        train = judged.due
        if not train:
            if judged.flights:
                say(f"ml: retraining deferred: {judged.summary()}; the champion keeps serving "
                    "(retrain now: plumbline sync --retrain)")
            plan.record_deferral(instance, judged)
    if not train and not todo.score_days:
        return ok
    before = model_registry.champion(cfg) if train else None
    if train:
        ok &= run(definitions.TRAIN_JOB, "(training set, model, evaluation, promotion gate)")
    after = model_registry.champion(cfg)
    score_days = todo.score_days
    if after is None:
        say("ml: no champion model, nothing scored (plumbline model list; plumbline summary)")
        return ok
    if train and after != before:  # a new champion re-scores every scoring partition, so each says which version scored it
        say(f"ml: champion is now v{after} (was {'v' + before if before else 'none'}): re-scoring from {cfg.scoring_start}")
        score_days = [d for d in built if d >= cfg.scoring_start.isoformat()]
    for start, end in contiguous_ranges(score_days):
        ok &= run(definitions.SCORE_JOB, f"[{start} .. {end}]", tags={RANGE_START: start, RANGE_END: end})
    return ok
