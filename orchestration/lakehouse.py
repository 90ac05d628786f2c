"""The production warehouse: DuckLake, with its catalog in PostgreSQL and its data files under a path
every worker reaches (a directory, or an object-store URL through the same setting).

The SQL is DuckDB's on both warehouses, so every asset runs unchanged; DuckLake commits several
tables in one transaction, which keeps a partition's delete+insert, its dead letters and its
accounting together. Snapshot isolation does not see two inserts into one empty partition as a
conflict, so writers of the same table and partitions are serialized by a PostgreSQL advisory lock
per (table, day), taken before the transaction starts (warehouse.partition_lock). Writers of disjoint
partitions run at once; DuckLake checks commit conflicts per table, though (an insert conflicts with
any other transaction's delete from that table, and restating a partition also rewrites its rows in
ops.partition_accounting), so of two overlapping restatements the later commit conflicts, is rolled
back whole and is run again (warehouse.retry_conflicts). First builds delete nothing and never
conflict. The extensions load from their PyPI wheels: nothing downloads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import duckdb
import duckdb_extension_ducklake
import duckdb_extension_postgres
import psycopg2

from orchestration import settings
from orchestration.warehouse import OPS_DDL, SNAPSHOT_PARTITION, literal, register_locker, unregister_locker

CATALOG_VARIABLE = "PLUMBLINE_CATALOG_URL"   # libpq URL or key=value string of the DuckLake catalog database
DATA_PATH_VARIABLE = "PLUMBLINE_DATA_PATH"   # where DuckLake writes data files; default $PLUMBLINE_HOME/lake
TABLES_FOLDER = "tables"                     # DuckLake's data files under the data path (MLflow's are in mlflow/)
DATABASE = "lake"                            # the name the DuckLake catalog is attached as: <lake>.<schema>.<table>
LOCK_REPORT_EVERY_S = 15.0
# DuckLake's own defaults are kept, measured on plumbline-shaped writes (a one-day replace of 900 rows
# on a 90-day table, plus its accounting and dead-letter rows; PostgreSQL 15 catalog, local data path):
# - data inlining (default: writes of at most 10 rows go into the catalog, not a parquet file) already
#   keeps a rebuild's accounting and dead letters out of the data path; a limit of 1000 on the ops
#   schema changed nothing measurable (231 vs 204 ms a step, same file count).
# - SET PARTITIONED BY (event_date) buys no concurrency: DuckLake checks commit conflicts per table
#   (an insert conflicts with any delete from the same table committed meanwhile), not per file. It
#   only multiplied files (110 vs 21 after a 90-day build and 20 replaces; the build took 0.97 s vs
#   0.47 s) without faster one-day reads (49 vs 52 ms). Each replace already writes one file holding
#   only its days, so min/max statistics prune reads as well.
# Disjoint-partition writers of one table therefore serialize at commit: the loser's WriteConflict
# is retried by warehouse.retry_conflicts (nothing of it was applied).
# DuckLake has no primary keys: the ops tables keep their keys by insert_absent, not by constraint.
LAKE_DDL = "\n".join(line for line in OPS_DDL.splitlines() if not line.strip().startswith("PRIMARY KEY")).replace(
    ",\n);", "\n);")


class LakehouseNotConfigured(RuntimeError):
    """The production profile was chosen without saying where its catalog is."""


def extension_files() -> dict[str, Path]:
    """The DuckLake and PostgreSQL extension binaries shipped in their wheels, by the name DuckDB
    loads them under (the postgres binary's internal name is postgres_scanner)."""
    def one(package, stem: str) -> Path:
        found = sorted(Path(package.__file__).parent.glob(f"extensions/v{duckdb.__version__}/{stem}.duckdb_extension"))
        if not found:
            raise RuntimeError(f"{package.__name__} has no build for DuckDB {duckdb.__version__}: install the "
                               f"{package.__name__.replace('_', '-')} wheel of the same version as duckdb (pyproject.toml pins both)")
        return found[0]

    return {"ducklake": one(duckdb_extension_ducklake, "ducklake"),
            "postgres_scanner": one(duckdb_extension_postgres, "postgres")}


def _loadable(name: str, binary: Path) -> Path:
    """A path DuckDB accepts for the extension `name`: it derives the name from the file name, so the
    postgres binary is linked as postgres_scanner.duckdb_extension (atomically: workers race here)."""
    if binary.name == f"{name}.duckdb_extension":
        return binary
    folder = Path(tempfile.gettempdir()) / f"plumbline-duckdb-{duckdb.__version__}-extensions"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.duckdb_extension"
    if not (target.is_symlink() and target.resolve() == binary.resolve()):
        staging = folder / f".{name}.{os.getpid()}"
        staging.unlink(missing_ok=True)
        staging.symlink_to(binary)
        os.replace(staging, target)
    return target


def libpq(url: str) -> str:
    """The catalog setting as DuckDB's postgres extension and psycopg2 both take it (a URL or key=value)."""
    return url.removeprefix("postgres:") if url.startswith("postgres:postgresql") else url


def redacted(url: str) -> str:
    """The catalog's address without credentials, for lineage, logs and messages: host:port/dbname
    only, from a URL, a key=value string, or either behind DuckLake's `ducklake:postgres:` prefixes."""
    url = url.strip()
    while url.startswith(("ducklake:", "postgres:")) and not url.startswith("postgres://"):
        url = url.split(":", 1)[1]  # 'postgres:postgresql://u:pw@h/d' would parse as scheme postgres, path the rest
    if "://" in url:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        return f"{host}:{parts.port or 5432}/{parts.path.lstrip('/')}"
    fields = dict(kv.split("=", 1) for kv in url.split() if "=" in kv)
    return f"{fields.get('host', 'localhost')}:{fields.get('port', '5432')}/{fields.get('dbname', '')}"


class Lakehouse(dg.ConfigurableResource):
    """DuckLake on a PostgreSQL catalog. Empty settings are read from the environment at call time
    ($PLUMBLINE_CATALOG_URL, $PLUMBLINE_DATA_PATH), like the embedded warehouse's PLUMBLINE_HOME."""

    catalog: str = ""
    data_path: str = ""

    def catalog_url(self) -> str:
        url = self.catalog or os.environ.get(CATALOG_VARIABLE, "")
        if not url:
            raise LakehouseNotConfigured(
                f"the production warehouse needs its DuckLake catalog: set {CATALOG_VARIABLE} to a PostgreSQL URL "
                "such as postgresql://plumbline@db:5432/plumbline_lake (password in PGPASSWORD or ~/.pgpass)")
        return libpq(url)

    def data_root(self) -> str:
        """Where DuckLake's data files go: tables/ under the shared data path, beside MLflow's mlflow/
        (DuckLake's orphan cleanup deletes any parquet file under its root that its catalog does not
        know). A local directory is created and given with a trailing slash."""
        root = self.data_path or os.environ.get(DATA_PATH_VARIABLE) or str(settings.plumbline_home() / "lake")
        if "://" in root:
            return root.rstrip("/") + f"/{TABLES_FOLDER}/"
        folder = Path(root) / TABLES_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        return str(folder.resolve()) + "/"

    def location(self) -> str:
        """Where the warehouse is, without credentials: for lineage namespaces and messages."""
        return f"ducklake:postgres://{redacted(self.catalog_url())}"

    def exists(self) -> bool:
        """Whether a sync has created the catalog (its DuckLake metadata tables are there)."""
        with contextlib.closing(psycopg2.connect(self.catalog_url())) as pg:
            with pg.cursor() as cur:
                cur.execute("SELECT to_regclass('ducklake_snapshot') IS NOT NULL")
                return bool(cur.fetchone()[0])

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, wait_s: float | None = None) -> Iterator[duckdb.DuckDBPyConnection]:
        # wait_s is the embedded file lock's; DuckLake takes concurrent writers, so nothing waits here
        con = duckdb.connect(config={"autoinstall_known_extensions": False})
        locker = PartitionLocker(self.catalog_url())
        try:
            for name, binary in extension_files().items():
                con.execute(f"LOAD {literal(str(_loadable(name, binary)))}")
            options = f"DATA_PATH {literal(self.data_root())}" + (", READ_ONLY" if read_only else "")
            # The first ATTACH creates DuckLake's metadata tables, and the ops DDL the schemas: two
            # workers doing either at once on a new catalog fail (PostgreSQL's duplicate-type error,
            # a DuckLake create conflict), so connecting is serialized by one advisory lock (~0.3 s).
            with locker.setting_up():
                con.execute(f"ATTACH {literal('ducklake:postgres:' + self.catalog_url())} AS {DATABASE} ({options})")
                con.execute(f"USE {DATABASE}")
                con.execute("SET TimeZone = 'UTC'")
                if not read_only:
                    _create_ops_tables(con)
            if read_only:
                locker.close()
            else:
                register_locker(con, locker)
            yield con
        finally:
            unregister_locker(con)
            locker.close()
            con.close()


def _create_ops_tables(con, attempts: int = 5) -> None:
    """The ops DDL, retried: two workers creating the same schema at once is a catalog conflict."""
    for attempt in range(attempts):
        try:
            con.execute(LAKE_DDL)
            return
        except duckdb.TransactionException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def _signed32(value: int) -> int:
    return (value ^ 0x80000000) - 0x80000000


def lock_keys(table: str, keys: list[str]) -> list[tuple[int, int]]:
    """(table, day) as PostgreSQL advisory-lock keys: crc32 of the table name, days since 1970-01-01."""
    table_key = _signed32(zlib.crc32(table.lower().encode()))
    epoch = dt.date.fromisoformat(SNAPSHOT_PARTITION)
    return sorted({(table_key, (dt.date.fromisoformat(str(k)) - epoch).days) for k in keys})


# (table, day) keys are (crc32 of a table name, days since 1970); no day is -1 (1969-12-31).
SETUP_LOCK = (_signed32(zlib.crc32(b"plumbline: DuckLake catalog set-up")), -1)


class PartitionLocker:
    """Advisory locks on the catalog database, one session per warehouse connection: a killed
    process's session ends, and PostgreSQL frees its locks with it."""

    def __init__(self, catalog_url: str):
        self._url = catalog_url
        self._pg = None

    @contextlib.contextmanager
    def setting_up(self) -> Iterator[None]:
        """Hold the catalog's set-up lock (one per catalog database) while attaching and creating."""
        cur = self._session().cursor()
        cur.execute("SELECT pg_advisory_lock(%s, %s)", SETUP_LOCK)
        try:
            yield
        finally:
            cur.execute("SELECT pg_advisory_unlock(%s, %s)", SETUP_LOCK)

    def _session(self):
        if self._pg is None:
            self._pg = psycopg2.connect(self._url, application_name=f"plumbline pid {os.getpid()}")
            self._pg.autocommit = True
        return self._pg

    @contextlib.contextmanager
    def hold(self, table: str, keys: list[str]) -> Iterator[None]:
        """All locks of (table, keys) or none: try them all, and on any busy one release what was
        taken and wait (no process holds some while waiting for others, so none deadlock)."""
        wanted = lock_keys(table, keys)
        cur = self._session().cursor()
        started = time.monotonic()
        reported = None
        while True:
            cur.execute("SELECT array_agg(ok ORDER BY n) FROM (SELECT n, pg_try_advisory_lock(t, d) AS ok FROM "
                        "unnest(%s::int[], %s::int[]) WITH ORDINALITY AS k(t, d, n) ORDER BY n) s",
                        ([t for t, _ in wanted], [d for _, d in wanted]))
            taken = cur.fetchone()[0] or []
            if all(taken):
                break
            self._release(cur, [w for w, ok in zip(wanted, taken) if ok])
            if reported is None or time.monotonic() - reported >= LOCK_REPORT_EVERY_S:
                print(f"waiting for {table} partitions {keys[0]}..{keys[-1]}: another writer holds some of them "
                      f"({time.monotonic() - started:.0f}s so far; {self._holders(cur, wanted)})",
                      file=sys.stderr, flush=True)
                reported = time.monotonic()
            time.sleep(0.2)
        try:
            yield
        finally:
            self._release(cur, wanted)

    @staticmethod
    def _release(cur, keys: list[tuple[int, int]]) -> None:
        if keys:
            cur.execute("SELECT count(pg_advisory_unlock(t, d)) FROM unnest(%s::int[], %s::int[]) AS k(t, d)",
                        ([t for t, _ in keys], [d for _, d in keys]))

    @staticmethod
    def _holders(cur, keys: list[tuple[int, int]]) -> str:
        cur.execute("""SELECT DISTINCT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                       WHERE l.locktype = 'advisory' AND l.granted AND (l.classid::int, l.objid::int) IN
                             (SELECT * FROM unnest(%s::int[], %s::int[]))""",
                    ([t for t, _ in keys], [d for _, d in keys]))
        names = [r[0] or "unnamed session" for r in cur.fetchall()]
        return "held by " + ", ".join(names) if names else "released just now"

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
            self._pg = None
