"""The embedded instance stores Dagster's event batches (a range run's planned events, a range
step's per-partition materializations) in one transaction per shard: the same rows as storing them
one at a time, and a partitions view that still shows materialized, in-progress and failed days."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from itertools import groupby
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.partition_status_cache import get_and_update_asset_status_cache_value

from orchestration.embedded_instance import BATCH_SIZE_VARIABLE, EVENT_BATCH_SIZE, KeptOpenSqliteEventLogStorage
from orchestration.ops.sync import DAGSTER_YAML
from orchestration.quality import partition_checks
from orchestration.rebuild.ranges import RANGE_END, RANGE_START

DAILY = dg.DailyPartitionsDefinition(start_date="2013-01-01", end_date="2013-03-01")
DAYS = DAILY.get_partition_keys()[:12]
RAW = dg.AssetKey(["raw", "flights"])
CORE = dg.AssetKey(["core", "flights"])
CHECK = "contract_by_partition"
FAIL_TAG = "test/fail"
INDEX_TABLES = ("event_logs", "asset_keys", "asset_event_tags", "asset_check_executions")
# columns the database fills with its own clock at insert
DATABASE_CLOCK = ("create_timestamp", "updated_timestamp")


@dg.asset(key=RAW, partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[partition_checks.spec(CHECK, RAW, DAILY, "rows of each day")])
def raw_flights(context):
    yield dg.MaterializeResult(metadata={"rows": len(context.partition_keys)})
    verdicts = {p: partition_checks.Verdict(passed=p != DAYS[3], description=p) for p in context.partition_keys}
    yield from partition_checks.verdicts(context, CHECK, verdicts)


@dg.asset(key=CORE, deps=[RAW], partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run())
def core_flights(context) -> dg.MaterializeResult:
    if context.run.tags.get(FAIL_TAG):
        raise RuntimeError("core.flights fails this range")
    return dg.MaterializeResult(metadata={"rows": len(context.partition_keys)})


JOB = dg.define_asset_job("rebuild_flights", selection=[RAW, CORE])
DEFS = dg.Definitions(assets=[raw_flights, core_flights], jobs=[JOB])


def embedded_instance(home: Path) -> dg.DagsterInstance:
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, home / "dagster.yaml")
    return dg.DagsterInstance.from_config(str(home))


def range_run(instance: dg.DagsterInstance, days: list[str], fail: bool = False) -> dg.ExecutionResult:
    tags = {RANGE_START: days[0], RANGE_END: days[-1], **({FAIL_TAG: "1"} if fail else {})}
    return DEFS.resolve_job_def(JOB.name).execute_in_process(instance=instance, tags=tags, raise_on_error=False)


@pytest.fixture
def batches(monkeypatch) -> list[int]:
    """The sizes of the batches the storage is handed (the real store_event_batch still runs)."""
    sizes: list[int] = []
    store = KeptOpenSqliteEventLogStorage.store_event_batch

    def counted(self, events):
        sizes.append(len(events))
        return store(self, events)

    monkeypatch.setattr(KeptOpenSqliteEventLogStorage, "store_event_batch", counted)
    monkeypatch.delenv(BATCH_SIZE_VARIABLE, raising=False)
    return sizes


def rows(db: Path, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        columns = [c[1] for c in con.execute(f"PRAGMA table_info({table})") if c[1] not in DATABASE_CLOCK]
        return con.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY id").fetchall()
    finally:
        con.close()


def event_types(db: Path) -> Counter:
    con = sqlite3.connect(db)
    try:
        return Counter(dict(con.execute("SELECT dagster_event_type, count(*) FROM event_logs GROUP BY 1").fetchall()))
    finally:
        con.close()


def dagster_batches(records) -> list[list]:
    """The run's events grouped as Dagster hands them over: consecutive planned events, consecutive materializations."""
    groups = []
    for event_type, group in groupby(records, key=lambda r: r.event_log_entry.dagster_event_type):
        group = [r.event_log_entry for r in group]
        batched = event_type in (dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
                                 dg.DagsterEventType.ASSET_MATERIALIZATION)
        groups.extend([group] if batched else [[e] for e in group])
    return groups


def test_a_range_run_is_stored_in_batches(tmp_path, batches):
    instance = embedded_instance(tmp_path / "home")
    assert range_run(instance, DAYS).success
    assert EVENT_BATCH_SIZE >= 2 * len(DAYS)
    # one planned event per day of both assets and one for the check's days, then each asset's materializations
    assert batches == [2 * len(DAYS) + 1, len(DAYS), len(DAYS)]


@pytest.mark.parametrize("grouping", ["as Dagster batches them", "the whole run in one batch"])
def test_a_batch_writes_the_rows_storing_one_event_at_a_time_writes(tmp_path, batches, grouping):
    source = embedded_instance(tmp_path / "source")
    # a second run over the same days: the assets' asset_keys rows exist already and are updated
    runs = [range_run(source, DAYS), range_run(source, DAYS)]
    assert all(run.success for run in runs)
    one_by_one, batched = embedded_instance(tmp_path / "one"), embedded_instance(tmp_path / "batch")
    del batches[:]
    groups = []
    for run in runs:
        records = source.get_records_for_run(run.run_id).records
        events = [r.event_log_entry for r in records]
        for event in events:
            one_by_one.event_log_storage.store_event(event)
        run_groups = dagster_batches(records) if grouping == "as Dagster batches them" else [events]
        for group in run_groups:
            batched.event_log_storage.store_event_batch(group)
        groups += run_groups
    assert len(batches) == len(groups)
    one_by_one.dispose()
    batched.dispose()

    shards = {**{f"run {i}": f"{run.run_id}.db" for i, run in enumerate(runs)}, "index": f"{INDEX_SHARD_NAME}.db"}
    for shard, name in shards.items():
        for table in INDEX_TABLES if shard == "index" else ("event_logs",):
            written = rows(tmp_path / "one" / "history" / "runs" / name, table)
            assert rows(tmp_path / "batch" / "history" / "runs" / name, table) == written, (shard, table)
            assert written, (shard, table)  # every table has rows to compare
    kinds = event_types(tmp_path / "batch" / "history" / "runs" / shards["run 1"])
    assert kinds["ASSET_MATERIALIZATION_PLANNED"] == kinds["ASSET_MATERIALIZATION"] == 2 * len(DAYS)
    assert kinds["ASSET_CHECK_EVALUATION"] == len(DAYS) + 1  # a verdict per day and the run's summary


def test_the_embedded_storage_writes_the_rows_dagsters_own_storage_writes(tmp_path):
    """Event by event, against Dagster's SqliteEventLogStorage: the planned check of a range (one row
    per day in asset_check_executions, its event serialized once here) and every other row."""
    source = embedded_instance(tmp_path / "source")
    run = range_run(source, DAYS)
    assert run.success
    events = [r.event_log_entry for r in source.get_records_for_run(run.run_id).records]
    stores = {"dagster": SqliteEventLogStorage(str(tmp_path / "dagster")),
              "embedded": KeptOpenSqliteEventLogStorage(str(tmp_path / "embedded"))}
    for store in stores.values():
        for event in events:
            store.store_event(event)
        store.dispose()
    for name in (f"{run.run_id}.db", f"{INDEX_SHARD_NAME}.db"):
        for table in INDEX_TABLES if name.startswith(INDEX_SHARD_NAME) else ("event_logs",):
            written = rows(tmp_path / "dagster" / name, table)
            assert rows(tmp_path / "embedded" / name, table) == written, (name, table)
            assert written, (name, table)
    checks = rows(tmp_path / "embedded" / f"{INDEX_SHARD_NAME}.db", "asset_check_executions")
    assert len(checks) == len(DAYS) + 1  # a row per day of the partitioned check, and the run's summary


def test_the_partitions_view_after_batched_range_runs(tmp_path, batches):
    instance = embedded_instance(tmp_path / "home")
    done, failed = DAYS[:6], DAYS[6:]
    assert range_run(instance, done).success
    assert not range_run(instance, failed, fail=True).success
    assert batches  # both runs went through store_event_batch

    assert instance.get_materialized_partitions(RAW) == set(DAYS)
    assert instance.get_materialized_partitions(CORE) == set(done)
    attempts = instance.event_log_storage.get_latest_asset_partition_materialization_attempts_without_materializations(CORE)
    assert set(attempts) == set(failed)
    for key, materialized, failing in ((RAW, DAYS, []), (CORE, done, failed)):
        status = get_and_update_asset_status_cache_value(instance, key, DAILY)
        assert set(status.deserialize_materialized_partition_subsets(DAILY).get_partition_keys()) == set(materialized)
        assert set(status.deserialize_failed_partition_subsets(DAILY).get_partition_keys()) == set(failing)
        assert not status.deserialize_in_progress_partition_subsets(DAILY).get_partition_keys()
    check_rows = instance.event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(RAW, CHECK), limit=100)
    by_partition = {r.partition: r.status.value for r in check_rows if r.partition}
    assert by_partition == {p: "FAILED" if p == DAYS[3] else "SUCCEEDED" for p in DAYS}


def test_dagsters_setting_still_turns_batches_off(tmp_path, batches, monkeypatch):
    monkeypatch.setenv(BATCH_SIZE_VARIABLE, "0")
    instance = embedded_instance(tmp_path / "home")
    assert range_run(instance, DAYS[:3]).success
    assert batches == []
    assert instance.get_materialized_partitions(CORE) == set(DAYS[:3])


def test_a_batch_that_fails_leaves_no_row_so_dagsters_fallback_starts_clean(tmp_path, batches):
    source = embedded_instance(tmp_path / "source")
    run = range_run(source, DAYS[:3])
    events = [r.event_log_entry for r in source.get_records_for_run(run.run_id).records]
    instance = embedded_instance(tmp_path / "home")
    instance.event_log_storage.store_event(events[0])  # the run's shard exists, with one event
    with pytest.raises(Exception):
        instance.event_log_storage.store_event_batch([*events[1:], "not an event"])
    assert [e.dagster_event_type for e in instance.all_logs(run.run_id)] == [events[0].dagster_event_type]
    assert not instance.get_materialized_partitions(RAW)
    for event in events[1:]:  # what Dagster does after a failed batch
        instance.event_log_storage.store_event(event)
    assert len(instance.all_logs(run.run_id)) == len(events)
    assert instance.get_materialized_partitions(RAW) == set(DAYS[:3])
