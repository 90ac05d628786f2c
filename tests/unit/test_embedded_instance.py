"""The embedded instance (orchestration/dagster.yaml): Dagster's SQLite storage, same files, with
the event log's connections kept open and commits not fsynced."""

from __future__ import annotations

import shutil
import time

import dagster as dg
from dagster import DagsterEventType
from dagster._core.events import DagsterEvent, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME

from orchestration.embedded_instance import EmbeddedInstance, KeptOpenSqliteEventLogStorage
from orchestration.ops.sync import DAGSTER_YAML

KEY = dg.AssetKey(["raw", "flights"])
DAYS = [f"2013-01-{d:02d}" for d in range(1, 11)]


def materialize(instance: dg.DagsterInstance, run_id: str, partitions: list[str]) -> None:
    for p in partitions:
        event = DagsterEvent(DagsterEventType.ASSET_MATERIALIZATION.value, "job",
                             event_specific_data=StepMaterializationData(dg.AssetMaterialization(KEY, partition=p)))
        instance.event_log_storage.store_event(EventLogEntry(error_info=None, level=20, user_message="", run_id=run_id,
                                                             timestamp=time.time(), dagster_event=event, job_name="job"))


def test_the_shipped_configuration_is_the_embedded_instance_with_relaxed_commits(tmp_path):
    shutil.copyfile(DAGSTER_YAML, tmp_path / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(tmp_path))
    assert isinstance(instance, EmbeddedInstance)
    assert isinstance(instance.event_log_storage, KeptOpenSqliteEventLogStorage)
    assert instance.event_log_storage.supports_global_concurrency_limits  # the warehouse pool still works
    with instance.event_log_storage._connect(INDEX_SHARD_NAME) as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL: no fsync per commit


def test_its_events_are_dagsters_own_files_shared_with_a_plain_instance(tmp_path):
    """Both open at once on the same folders, as `plumbline sync` and a `dagster dev` on Dagster's default storage."""
    shutil.copyfile(DAGSTER_YAML, tmp_path / "dagster.yaml")
    embedded = dg.DagsterInstance.from_config(str(tmp_path))
    materialize(embedded, "run-a", DAYS[:5])
    plain_home = tmp_path / "plain"
    plain_home.mkdir()
    (plain_home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {tmp_path}\ntelemetry:\n  enabled: false\n")
    plain = dg.DagsterInstance.from_config(str(plain_home))
    assert type(plain.event_log_storage).__name__ == "SqliteEventLogStorage"
    assert plain.get_materialized_partitions(KEY) == set(DAYS[:5])
    materialize(plain, "run-b", DAYS[5:])
    assert embedded.get_materialized_partitions(KEY) == set(DAYS)
    embedded.dispose()
    assert dg.DagsterInstance.from_config(str(tmp_path)).get_materialized_partitions(KEY) == set(DAYS)
