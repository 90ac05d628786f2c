"""The embedded Dagster instance: Dagster's SQLite storage, with event-log connections kept open.

Dagster's SQLiteEventLogStorage opens a new engine and connection for every event and closes it
after the commit. Closing the last connection to a WAL database checkpoints the WAL into the
database and fsyncs it, so every event (one per partition and asset in a range run, twice: planned
and materialized) pays a commit, a checkpoint and the fsyncs of both. Kept open, commits append to
the WAL and SQLite checkpoints it every 1000 pages; with synchronous=NORMAL (the setting SQLite
recommends for WAL) a commit is not fsynced, so a power cut can lose the last events but never
corrupts the database, and a crashed process loses nothing. The files, tables and layout are
Dagster's own (a home made before this class opens unchanged, and `dagster dev` reads it).

A batch of events (the planned events of a run, the per-partition materializations of a range
step; Dagster sends them to store_event_batch when the instance's event batch size is above 0, as
EmbeddedInstance's is) is written by Dagster's own per-event code, each event as store_event writes
it, but into one transaction per shard: the run's shard and the index shard commit once per batch.
Two writes are made once where Dagster repeats them, with the same rows: an asset's asset_keys row
(once per batch, not per event) and a planned partitioned check's event (serialized once, not per partition).

orchestration/dagster.yaml names EmbeddedInstance as its instance_class; DagsterInstance asks it
for the default storage of the instance's folder (config_defaults)."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager

import yaml
from dagster import DagsterInstance
from dagster._core.events.log import EventLogEntry
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable, AssetKeyTable
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._serdes import ConfigurableClassData, serialize_value
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import QueuePool

SQLITE_BUSY_TIMEOUT_SECONDS = 30  # as Dagster's own SQLite storages wait for a writer in another process
OPEN_SHARDS = 4  # the index shard and the few runs being written; older run shards are closed
# Events per store_event_batch: a range run's planned events and a range step's materializations
# (one per partition) in a few transactions, a bounded buffer for the year's range runs.
EVENT_BATCH_SIZE = 500
BATCH_SIZE_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"  # Dagster's own setting; when set, it wins (0 turns batches off)


class KeptOpenSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose shard engines (one pooled connection each) outlive an event."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        self._engines: OrderedDict[str, object] = OrderedDict()
        self._engines_lock = threading.Lock()
        self._batch = threading.local()  # .connections: shard -> the open transaction of the batch being stored
        self._tables_present: set[str] = set()
        self._asset_key_index_cols = False
        super().__init__(base_dir, inst_data)  # last: it already connects (migrations of the index shard)

    def _engine(self, shard: str):
        with self._engines_lock:
            engine = self._engines.pop(shard, None)
            if engine is None:
                engine = create_engine(self.conn_string_for_shard(shard), poolclass=QueuePool, pool_size=1,
                                       max_overflow=4, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                                                                     "check_same_thread": False})
                event.listen(engine, "connect", _wal_normal)
            self._engines[shard] = engine  # most recently used last
            while len(self._engines) > OPEN_SHARDS:
                _, old = self._engines.popitem(last=False)
                old.dispose()
            return engine

    @contextmanager
    def _connect(self, shard: str) -> Iterator:
        batch = getattr(self._batch, "connections", None)
        if batch is not None:  # inside store_event_batch: the batch's transaction on that shard
            yield self._batch_connection(batch, shard)
            return
        with self._db_lock, self._transaction(shard) as conn:
            yield conn

    @contextmanager
    def _transaction(self, shard: str) -> Iterator:
        engine = self._engine(shard)
        if shard not in self._initialized_dbs:
            self._initdb(engine)
            self._initialized_dbs.add(shard)
        with engine.connect() as conn:
            with conn.begin():
                yield conn

    def _batch_connection(self, batch: dict, shard: str):
        if shard not in batch:
            batch[shard] = self._batch.stack.enter_context(self._transaction(shard))
        return batch[shard]

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        """Each event written by Dagster's store_event, all in one transaction per shard. The index
        shard's transaction opens first and commits last, as store_event writes the run's shard
        first; an error rolls every shard back, so Dagster's fallback (one event at a time) starts clean."""
        with self._db_lock, ExitStack() as stack:
            self._batch.stack = stack
            self._batch.connections = {}
            self._batch.asset_rows = {}
            try:
                index = self._batch_connection(self._batch.connections, INDEX_SHARD_NAME)
                for entry in events:
                    super().store_event(entry)
                self._write_asset_rows(index, self._batch.asset_rows)
            finally:
                self._batch.connections = None
                self._batch.stack = None
                self._batch.asset_rows = None

    def _store_asset_event(self, conn, event: EventLogEntry, event_id: int) -> None:
        """Inside a batch, an asset's asset_keys row is written once, after the batch's events: Dagster
        rewrites it per event (a range step's 365 materializations serialize and store 364 rows that the
        next one replaces)."""
        rows = getattr(self._batch, "asset_rows", None)
        if rows is None or not (event.dagster_event and event.dagster_event.asset_key):
            return super()._store_asset_event(conn, event, event_id)
        by_type = rows.setdefault(event.dagster_event.asset_key, {})
        by_type.pop(event.dagster_event_type, None)  # the last event of each type, in the order they came
        by_type[event.dagster_event_type] = (event, event_id)

    def _write_asset_rows(self, conn, rows: dict) -> None:
        """The asset_keys rows as Dagster's per-event writes leave them: an event type always sets the same
        columns, so each column holds what the last event of the batch that sets it gives."""
        has_index_cols = self._has_asset_key_index_cols_on_connection(conn)
        for asset_key, by_type in rows.items():  # in the order of each asset's first event, as Dagster inserts them
            values = {}
            for entry, event_id in by_type.values():
                values.update(self._get_asset_entry_values(entry, event_id, has_index_cols))
            if not values:
                continue
            try:
                conn.execute(AssetKeyTable.insert().values(asset_key=asset_key.to_string(), **values))
            except IntegrityError:
                conn.execute(AssetKeyTable.update().values(**values).where(AssetKeyTable.c.asset_key == asset_key.to_string()))

    def _store_asset_check_evaluation_planned(self, event: EventLogEntry, event_id: int | None) -> None:
        """Dagster's rows (one per partition of the planned check), with the event serialized once and
        inserted as one executemany: Dagster serializes the whole event, its partitions subset included,
        once per partition into a multi-row VALUES statement (365 x 365 keys for a year's range run)."""
        planned = event.dagster_event.event_specific_data
        keys = planned.partitions_subset.get_partition_keys() if planned.partitions_subset else [None]
        if not keys:
            return super()._store_asset_check_evaluation_planned(event, event_id)
        row = dict(asset_key=planned.asset_key.to_string(), check_name=planned.check_name, run_id=event.run_id,
                   execution_status=AssetCheckExecutionRecordStatus.PLANNED.value,
                   evaluation_event=serialize_value(event),
                   evaluation_event_timestamp=self._event_insert_timestamp(event),
                   evaluation_event_storage_id=event_id)
        with self.index_connection() as conn:
            conn.execute(AssetCheckExecutionsTable.insert(), [dict(row, partition=key) for key in keys])

    def has_table(self, table_name: str) -> bool:
        # Dagster asks per asset event with tags, on a new engine each time; a table, once there, stays
        if table_name not in self._tables_present and super().has_table(table_name):
            self._tables_present.add(table_name)
        return table_name in self._tables_present

    def _has_asset_key_index_cols_on_connection(self, conn) -> bool:
        # Dagster inspects the asset_keys table per asset event; its migrated columns, once there, stay
        if not self._asset_key_index_cols:
            self._asset_key_index_cols = super()._has_asset_key_index_cols_on_connection(conn)
        return self._asset_key_index_cols

    def dispose(self) -> None:
        with self._engines_lock:
            for engine in self._engines.values():
                engine.dispose()
            self._engines.clear()
        super().dispose()


def _wal_normal(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class EmbeddedSqliteStorage(DagsterSqliteStorage):
    """DagsterSqliteStorage (same folders and databases) with the kept-open event log."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        # DagsterSqliteStorage.__init__ minus its plain event log, which it would open, check and migrate for nothing
        self.base_dir = base_dir
        self._run_storage = SqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = KeptOpenSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value) -> EmbeddedSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class EmbeddedInstance(DagsterInstance):
    """DagsterInstance whose default storage, in the instance's folder, is EmbeddedSqliteStorage, and
    which hands Dagster's event batches to it (store_event_batch) unless DAGSTER_EVENT_BATCH_SIZE says otherwise."""

    def _get_event_batch_size(self) -> int:
        return int(os.environ.get(BATCH_SIZE_VARIABLE, EVENT_BATCH_SIZE))

    @classmethod
    def config_schema(cls):
        return {}

    @staticmethod
    def config_defaults(base_dir: str):
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(__name__, EmbeddedSqliteStorage.__name__,
                                                    yaml.dump({"base_dir": base_dir}, default_flow_style=False))
        return defaults
