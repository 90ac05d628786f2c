"""The embedded Dagster instance: Dagster's SQLite storage, with event-log connections kept open.

Dagster's SQLiteEventLogStorage opens a new engine and connection for every event and closes it
after the commit. Closing the last connection to a WAL database checkpoints the WAL into the
database and fsyncs it, so every event (one per partition and asset in a range run, twice: planned
and materialized) pays a commit, a checkpoint and the fsyncs of both. Kept open, commits append to
the WAL and SQLite checkpoints it every 1000 pages; with synchronous=NORMAL (the setting SQLite
recommends for WAL) a commit is not fsynced, so a power cut can lose the last events but never
corrupts the database, and a crashed process loses nothing. The files, tables and layout are
Dagster's own (a home made before this class opens unchanged, and `dagster dev` reads it).

orchestration/dagster.yaml names EmbeddedInstance as its instance_class; DagsterInstance asks it
for the default storage of the instance's folder (config_defaults)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import yaml
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, _event_logs_directory
from dagster._serdes import ConfigurableClassData
from sqlalchemy import event
from sqlalchemy.pool import QueuePool

SQLITE_BUSY_TIMEOUT_SECONDS = 30  # as Dagster's own SQLite storages wait for a writer in another process
OPEN_SHARDS = 4  # the index shard and the few runs being written; older run shards are closed


class KeptOpenSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose shard engines (one pooled connection each) outlive an event."""

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None):
        super().__init__(base_dir, inst_data)
        self._engines: OrderedDict[str, object] = OrderedDict()
        self._engines_lock = threading.Lock()

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
        with self._db_lock:
            engine = self._engine(shard)
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn:
                with conn.begin():
                    yield conn

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
        super().__init__(base_dir, inst_data)
        self._event_log_storage = KeptOpenSqliteEventLogStorage(_event_logs_directory(base_dir))

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value) -> EmbeddedSqliteStorage:
        return cls.from_local(inst_data=inst_data, **config_value)


class EmbeddedInstance(DagsterInstance):
    """DagsterInstance whose default storage, in the instance's folder, is EmbeddedSqliteStorage."""

    @classmethod
    def config_schema(cls):
        return {}

    @staticmethod
    def config_defaults(base_dir: str):
        defaults = dict(InstanceRef.config_defaults(base_dir))
        defaults["storage"] = ConfigurableClassData(__name__, EmbeddedSqliteStorage.__name__,
                                                    yaml.dump({"base_dir": base_dir}, default_flow_style=False))
        return defaults
