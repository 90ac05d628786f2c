"""The production warehouse (orchestration.lakehouse) on the machine's real PostgreSQL: each test gets
its own catalog database and data directory. Extensions load from their wheels with no network,
the ops tables exist without primary keys, addresses never show a password, advisory-lock keys are
stable per (table, day), and insert_absent keeps keys unique on DuckLake."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg2
import pytest

from lakehouse_support import fresh_lake, point_at
from orchestration.lakehouse import LAKE_DDL, Lakehouse, LakehouseNotConfigured, lock_keys, redacted
from orchestration.warehouse import OPS_DDL, insert_absent, insert_absent_values

REPO = Path(__file__).resolve().parents[2]
OPS_TABLES = {"landed_files", "dead_letter", "partition_accounting", "schema_versions", "restatements", "model_promotions"}


@pytest.fixture
def lake(tmp_path, monkeypatch):
    with fresh_lake(tmp_path) as made:
        point_at(monkeypatch, made)
        yield made


def test_extensions_load_from_the_wheels_with_no_network_and_no_autoinstall(lake, tmp_path):
    # A fresh interpreter with no way to fetch anything: an unreachable repository, an empty
    # extension directory, and no proxy that could reach one. Connecting must still work.
    script = textwrap.dedent("""
        import duckdb, os
        from orchestration.lakehouse import Lakehouse
        real_connect = duckdb.connect
        def connect(*a, config=None, **k):
            config = dict(config or {})
            config.update(custom_extension_repository='http://127.0.0.1:9/nowhere', extension_directory=os.environ['EXT_DIR'])
            return real_connect(*a, config=config, **k)
        duckdb.connect = connect
        with Lakehouse().connect() as con:
            print(con.execute("SELECT current_setting('autoinstall_known_extensions')").fetchone()[0])
            print(sorted(r[0] for r in con.execute("SELECT extension_name FROM duckdb_extensions() WHERE loaded").fetchall()))
            print(con.execute("SELECT count(*) FROM ops.partition_accounting").fetchone()[0])
        """)
    empty = tmp_path / "no-extensions"
    empty.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "EXT_DIR": str(empty), "http_proxy": "http://127.0.0.1:9",
           "https_proxy": "http://127.0.0.1:9", "PLUMBLINE_CATALOG_URL": lake.catalog_url,
           "PLUMBLINE_DATA_PATH": str(lake.data_path), "PLUMBLINE_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    autoinstall, loaded, accounted = done.stdout.split("\n")[:3]
    assert autoinstall == "False"
    assert "'ducklake'" in loaded and "'postgres_scanner'" in loaded
    assert accounted == "0"
    assert list(empty.iterdir()) == []  # nothing was installed there either


def test_connect_needs_its_catalog_setting(monkeypatch):
    monkeypatch.delenv("PLUMBLINE_CATALOG_URL", raising=False)
    with pytest.raises(LakehouseNotConfigured, match="PLUMBLINE_CATALOG_URL"):
        with Lakehouse().connect():
            pass


def test_the_ops_ddl_creates_every_ops_table_without_primary_keys(lake):
    assert "PRIMARY KEY" not in LAKE_DDL and OPS_DDL.count("PRIMARY KEY") == 4
    assert not Lakehouse().exists()
    with Lakehouse().connect() as con:
        tables = {t for (t,) in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'lake' AND table_schema = 'ops'").fetchall()}
        assert tables == OPS_TABLES
        assert con.execute("SELECT count(*) FROM duckdb_constraints() WHERE database_name = 'lake' "
                           "AND constraint_type IN ('PRIMARY KEY', 'UNIQUE')").fetchone()[0] == 0
        # the column the ALTER in the DDL adds is there, and the DDL runs again on a second connect
        assert "rejected_at_read" in [r[0] for r in con.execute("DESCRIBE ops.landed_files").fetchall()]
        assert {s for (s,) in con.execute("SELECT schema_name FROM information_schema.schemata WHERE catalog_name = 'lake'").fetchall()} >= {
            "raw", "core", "marts", "ml", "ops"}
    with Lakehouse().connect() as con:
        assert con.execute("SELECT count(*) FROM ops.landed_files").fetchone()[0] == 0
    assert Lakehouse().exists()
    assert Lakehouse().location() == f"ducklake:postgres://127.0.0.1:5432/{lake.database}"


def test_a_read_only_connection_refuses_writes(lake):
    with Lakehouse().connect() as con:
        con.execute("CREATE TABLE raw.t AS SELECT 1 AS x")
    with Lakehouse().connect(read_only=True) as con:
        assert con.execute("SELECT x FROM raw.t").fetchall() == [(1,)]
        with pytest.raises(Exception, match="(?i)read.only"):
            con.execute("INSERT INTO raw.t VALUES (2)")


@pytest.mark.parametrize("url, shown", [
    ("postgresql://plumbline:s3cr3t@db.internal:6543/lake", "db.internal:6543/lake"),
    ("postgres://plumbline:s3cr3t@db.internal/lake?sslmode=require&password=s3cr3t", "db.internal:5432/lake"),
    ("postgresql://:s3cr3t@/lake?host=/run/postgresql", "localhost:5432/lake"),
    ("postgres:postgresql://u:s3cr3t@h:1/d", "h:1/d"),
    ("ducklake:postgres:postgresql://u:s3cr3t@h:1/d", "h:1/d"),
    ("ducklake:postgres:dbname=d host=h password=s3cr3t", "h:5432/d"),
    ("host=db.internal port=6543 dbname=lake user=plumbline password=s3cr3t", "db.internal:6543/lake"),
    ("dbname=lake password='s3cr3t' host=db", "db:5432/lake"),
    ("password=s3cr3t dbname=lake", "localhost:5432/lake"),
])
def test_redacted_never_shows_a_password(url, shown):
    assert redacted(url) == shown
    assert "s3cr3t" not in redacted(url) and "plumbline@" not in redacted(url)


def test_location_never_shows_a_password(monkeypatch):
    monkeypatch.setenv("PLUMBLINE_CATALOG_URL", "postgresql://plumbline:s3cr3t@db.internal:6543/lake")
    assert Lakehouse().location() == "ducklake:postgres://db.internal:6543/lake"
    assert "s3cr3t" not in Lakehouse(catalog="host=h password=s3cr3t dbname=d").location()


def test_lock_keys_are_stable_and_distinct_per_table_and_day():
    a = lock_keys("raw.flights", ["2013-01-02", "2013-01-01", "2013-01-02"])
    assert a == lock_keys("RAW.FLIGHTS", ["2013-01-01", "2013-01-02"])  # sorted, deduplicated, case-blind like SQL names
    assert a == [(a[0][0], 15706), (a[0][0], 15707)]  # days since 1970-01-01
    assert a[0][0] == -355827332  # crc32 as a signed int4: same in every process
    assert all(-2**31 <= t < 2**31 and -2**31 <= d < 2**31 for t, d in a)
    tables = ["raw.flights", "core.flights", "marts.carrier_daily", "raw.weather", "bronze.flights", "bronze.weather",
              "ml.features", "ml.scores"]
    keys = [k for t in tables for k in lock_keys(t, ["2013-01-01", "2013-12-31", "1970-01-01"])]
    assert len(keys) == len(set(keys))
    with pytest.raises(ValueError):
        lock_keys("raw.flights", ["2013-01-01'; --"])


def test_lock_keys_are_the_same_in_another_process():
    here = lock_keys("core.flights", ["2013-03-04"])
    there = subprocess.run([sys.executable, "-c", "from orchestration.lakehouse import lock_keys; "
                            "print(lock_keys('core.flights', ['2013-03-04']))"], cwd=REPO, capture_output=True,
                           text=True, env={"PYTHONHASHSEED": "123", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert there.stdout.strip() == str(here), there.stderr


def test_insert_absent_keeps_keys_unique_on_ducklake(lake):
    cols = "source, partition_date, delivered, accepted, dead_lettered, superseded, built_from, contract_version"
    rows = ("SELECT * FROM (VALUES ('flights', DATE '2013-01-01', 10, 9, 1, 0, '[]', '1'), "
            "('flights', DATE '2013-01-02', 5, 5, 0, 0, '[]', '1')) v(" + cols + ")")
    with Lakehouse().connect() as con:
        for _ in range(3):
            insert_absent(con, "ops.partition_accounting", cols, ("source", "partition_date"), rows)
        assert con.execute("SELECT count(*), count(DISTINCT (source, partition_date)) FROM ops.partition_accounting").fetchone() == (2, 2)
        # a NULL in a key matches NULL (IS NOT DISTINCT FROM): a snapshot's dead letter is recorded once
        dl_cols = ("source, partition_date, file_id, file_path, row_offset, rule_id, stage, reason, severity, payload, "
                   "contract_version, run_id, first_seen, last_seen, attempts, status")
        row = ("airlines", None, "f1", "airlines/a.csv", 3, "r", "raw", "bad", "error", '{"a": 1}', "1", "run",
               "2013-01-01T00:00:00+00:00", "2013-01-01T00:00:00+00:00", 1, "open")
        for _ in range(2):
            insert_absent_values(con, "ops.dead_letter", dl_cols, ("source", "file_id", "row_offset", "rule_id"), [row])
        insert_absent_values(con, "ops.dead_letter", dl_cols, ("source", "file_id", "row_offset", "rule_id"),
                             [row[:4] + (4,) + row[5:]])
        assert con.execute("SELECT count(*), count(DISTINCT row_offset) FROM ops.dead_letter").fetchone() == (2, 2)


def test_partition_lock_holds_a_postgres_advisory_lock_only_inside(lake):
    from orchestration.warehouse import partition_lock

    def held() -> set[tuple[int, int]]:
        with contextlib.closing(psycopg2.connect(lake.catalog_url)) as pg, pg.cursor() as cur:
            cur.execute("SELECT classid::int, objid::int FROM pg_locks WHERE locktype = 'advisory' AND granted "
                        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
            return set(cur.fetchall())

    with Lakehouse().connect() as con:
        assert held() == set()
        with partition_lock(con, "core.flights", ["2013-01-02", "2013-01-01"]):
            assert held() == set(lock_keys("core.flights", ["2013-01-01", "2013-01-02"]))
        assert held() == set()
        with pytest.raises(RuntimeError, match="boom"):
            with partition_lock(con, "core.flights", ["2013-01-03"]):
                raise RuntimeError("boom")
        assert held() == set()  # released on error too


def test_a_worker_with_another_data_path_is_refused_not_split(lake, tmp_path, monkeypatch):
    """The catalog records where its data files are: a worker pointed elsewhere (PLUMBLINE_DATA_PATH
    unset, so its own home) fails to connect instead of writing files other workers cannot read."""
    with Lakehouse().connect() as con:
        con.execute("CREATE TABLE raw.t AS SELECT 1 AS x")
    monkeypatch.setenv("PLUMBLINE_DATA_PATH", str(tmp_path / "elsewhere"))
    with pytest.raises(Exception, match="(?i)data.path"):
        with Lakehouse().connect():
            pass
    monkeypatch.setenv("PLUMBLINE_DATA_PATH", str(lake.data_path))
    with Lakehouse().connect(read_only=True) as con:
        assert con.execute("SELECT x FROM raw.t").fetchall() == [(1,)]
