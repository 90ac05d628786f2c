"""The production profile on this machine's real services, for the tests and bench/scale.py: PostgreSQL
databases and a RabbitMQ virtual host of one's own (unique names, removed afterwards), the
environment every process of the profile reads, `plumbline worker` Celery workers, a
dagster-webserver with its dagster-daemon, and `plumbline sync` as a subprocess.

Plain Python (no pytest), so that bench/scale.py imports it too; a failure raises AssertionError."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PG = os.environ.get("PLUMBLINE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
AMQP = os.environ.get("PLUMBLINE_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672")
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
# Variables of plumbline and the libraries it configures: a profile's processes get only their own.
ENV_PREFIXES = ("PLUMBLINE_", "OPENLINEAGE", "MLFLOW_", "DAGSTER_", "CELERY_")
DATABASES = ("instance", "catalog", "mlflow")
READY_S = 120   # a worker answers a ping within this
SERVER_S = 300  # the webserver answers /server_info within this


def admin():
    """An autocommit connection to the server's maintenance database (CREATE/DROP DATABASE)."""
    import psycopg2

    con = psycopg2.connect(f"{PG}/postgres")
    con.autocommit = True
    return con


def rabbitmqctl(*args: str) -> None:
    if shutil.which("rabbitmqctl") is None:
        raise AssertionError("rabbitmqctl is needed to give the production profile its own RabbitMQ virtual host")
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@dataclass(frozen=True)
class Services:
    tag: str
    databases: dict[str, str]  # role (instance, catalog, mlflow) -> database name
    broker: str | None          # the AMQP URL of the private virtual host, if one was made

    def env(self, home: Path, base: dict | None = None) -> dict:
        """The environment of every process of a production deployment whose shared home is `home`."""
        return {**(clean_env() if base is None else base), "PLUMBLINE_SETTLE_SECONDS": "0",
                "PLUMBLINE_HOME": str(home), "PLUMBLINE_DEPLOYMENT": "production",
                "PLUMBLINE_INSTANCE_URL": f"{PG}/{self.databases['instance']}",
                "PLUMBLINE_CATALOG_URL": f"{PG}/{self.databases['catalog']}",
                "PLUMBLINE_MLFLOW_URL": f"{PG}/{self.databases['mlflow']}",
                "PLUMBLINE_DATA_PATH": str(home / "lake"),
                "PLUMBLINE_BROKER_URL": self.broker}


@contextlib.contextmanager
def services(prefix: str = "plumbline_t", roles: tuple[str, ...] = DATABASES, vhost: bool = True) -> Iterator[Services]:
    """Create one database per role and (vhost) a RabbitMQ virtual host, so parallel sessions never
    take each other's tasks, all named prefix + pid + random; drop them, and only them, afterwards."""
    tag = f"{prefix}{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dbs = {role: f"{tag}_{role}" for role in roles}
    created: list[str] = []
    made_vhost = False
    try:
        with contextlib.closing(admin()) as con, con.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'CREATE DATABASE "{db}"')
                created.append(db)
        if vhost:
            rabbitmqctl("add_vhost", tag)
            made_vhost = True
            rabbitmqctl("set_permissions", "-p", tag, "guest", ".*", ".*", ".*")
        yield Services(tag, dbs, f"{AMQP}/{tag}" if vhost else None)
    finally:
        if created:
            with contextlib.closing(admin()) as con, con.cursor() as cur:
                for db in created:
                    cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        if made_vhost:
            rabbitmqctl("delete_vhost", tag)


def clean_env() -> dict:
    """This process's environment without any plumbline, Dagster, MLflow, OpenLineage or Celery setting."""
    return {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIXES)}


def cut_feed(home: Path, cutoff: str) -> None:
    """Remove every delivery made after cutoff (e.g. 20130401T1200Z; the delivery time is in the file name)."""
    for path in (home / "landing").rglob("*"):
        stamp = re.search(r"_(\d{8}T\d{4}Z)", path.name)
        if stamp and stamp.group(1) > cutoff:
            path.unlink()


def _die_with_parent() -> None:
    """In a child before it starts: SIGTERM it when the process that started it dies without its
    teardown (killed), so no worker or server outlives the session."""
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(args: list[str], env: dict, cwd: Path, log: Path | None) -> subprocess.Popen:
    """A long-running child in its own session (stop() ends its whole group), output to log."""
    out = open(log, "wb") if log else subprocess.DEVNULL
    try:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    finally:
        if log:
            out.close()


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each child's group (a worker finishes its steps), SIGKILL what is left after 30 s."""
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # what they started in their group (a webserver's code server, a worker's pool) goes with them
    deadline = time.monotonic() + 30
    for proc in procs:
        while _group_alive(proc.pid):
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.5)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _tail(log: Path | None, n: int = 3000) -> str:
    return log.read_text(errors="replace")[-n:] if log and log.exists() else ""


def wait_for_workers(broker: str, names: list[str], procs: list[subprocess.Popen], logs: list[Path | None],
                     timeout_s: float = READY_S) -> None:
    """Until every named worker answers a Celery ping; fail at once if one exits."""
    from celery import Celery

    app = Celery(broker=broker)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for proc, log in zip(procs, logs):
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{_tail(log)}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {name for reply in replies for name in reply}
        if all(any(a.startswith(n + "@") for a in answered) for n in names):
            return
    raise AssertionError("workers not ready in time:\n" + "\n".join(_tail(log, 2000) for log in logs))


def start_workers(env: dict, cwd: Path, names: list[str], logs: Path | None, loglevel: str = "INFO") -> list[subprocess.Popen]:
    """One `plumbline worker` per name (logs in logs/<name>.log, or none), returned once all answer."""
    files = [logs / f"{name}.log" if logs else None for name in names]
    procs = [start([str(BIN / "plumbline"), "worker", "--name", name, "--loglevel", loglevel], env, cwd, log)
             for name, log in zip(names, files)]
    try:
        wait_for_workers(env["PLUMBLINE_BROKER_URL"], names, procs, files)
    except BaseException:
        stop(procs)
        raise
    return procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(env: dict, cwd: Path, logs: Path, timeout_s: float = SERVER_S) -> tuple[list[subprocess.Popen], str]:
    """A dagster-webserver on a free port and a dagster-daemon, both on orchestration.definitions with
    env's DAGSTER_HOME; returned with the webserver's URL once it answers."""
    import requests

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    procs = [start([str(BIN / "dagster-webserver"), "-m", "orchestration.definitions", "-h", "127.0.0.1", "-p", str(port)],
                   env, cwd, logs / "webserver.log"),
             start([str(BIN / "dagster-daemon"), "run", "-m", "orchestration.definitions"], env, cwd, logs / "daemon.log")]
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                if requests.get(url + "/server_info", timeout=5).ok:
                    return procs, url
            except requests.RequestException:
                pass
            assert all(p.poll() is None for p in procs), _tail(logs / "webserver.log") + _tail(logs / "daemon.log")
            assert time.monotonic() < deadline, _tail(logs / "webserver.log")
            time.sleep(1)
    except BaseException:
        stop(procs)
        raise


@dataclass
class Done:
    seconds: float
    output: str


def plumbline(env: dict, cwd: Path, *args: str, timeout_s: float = 3600) -> Done:
    """`plumbline <args>` in a subprocess with env; its output, and AssertionError unless it exits 0."""
    t0 = time.monotonic()
    done = subprocess.run([str(BIN / "plumbline"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout_s)
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"plumbline {' '.join(args)} exited {done.returncode}:\n{output[-6000:]}"
    return Done(time.monotonic() - t0, output)


# ----------------------------------------------------------------------------- comparing warehouses

# Columns that say when or by which run a row was written: different between any two syncs.
# (delivered_at comes from the file name: it stays.)
VOLATILE = ("first_seen", "last_seen", "resolved_by_run")


def volatile(column: str) -> bool:
    return column in VOLATILE or column.endswith(("run_id", "_at")) and not column.endswith("delivered_at")


def tables(con) -> list[tuple[str, str]]:
    return [(s, t) for s, t in con.execute(
        """SELECT table_schema, table_name FROM information_schema.tables
           WHERE table_catalog = current_database() AND table_schema IN ('raw', 'core', 'marts', 'ml', 'ops')
           ORDER BY 1, 2""").fetchall()]


def rows(con, schema: str, table: str) -> list[tuple]:
    """A table's header and rows ordered by every column, without the columns that say when or by
    which run a row was written."""
    cols = [c for (c,) in con.execute(
        """SELECT column_name FROM information_schema.columns
           WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?
           ORDER BY ordinal_position""", [schema, table]).fetchall()]
    listed = ", ".join(f'"{c}"' for c in cols if not volatile(c))
    return [tuple(cols), *con.execute(f'SELECT {listed} FROM {schema}."{table}" ORDER BY ALL').fetchall()]


def fingerprints(con) -> dict[str, tuple[int, str]]:
    """Per table: (rows, sha256 over its rows ordered by every column but the volatile ones)."""
    out = {}
    for schema, table in tables(con):
        header, *body = rows(con, schema, table)
        digest = hashlib.sha256(repr(header).encode())
        for row in body:
            digest.update(repr(row).encode())
        out[f"{schema}.{table}"] = (len(body), digest.hexdigest())
    return out


@contextlib.contextmanager
def seeing(monkeypatch, env: dict, prefixes: tuple[str, ...] = ("PLUMBLINE_",)) -> Iterator[None]:
    """This process sees one profile as its processes do: only env's variables with these prefixes."""
    with monkeypatch.context() as mp:
        for k in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
            mp.delenv(k)
        for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow exports them when a client opens a store:
            mp.setenv(k, "")                                      # recorded, so that leaving removes them
            mp.delenv(k)
        for k, v in env.items():
            if k.startswith(prefixes):
                mp.setenv(k, v)
        yield


def open_warehouse(env: dict):
    """A read-only connection to a profile's warehouse, chosen as its processes choose it (call
    inside seeing(…, env))."""
    from orchestration.lakehouse import Lakehouse
    from orchestration.warehouse_resource import Warehouse

    return (Lakehouse() if env.get("PLUMBLINE_DEPLOYMENT") == "production" else Warehouse()).connect(read_only=True)


def steps_on_workers(instance, runs) -> Counter:
    """Per Celery worker name: the step batches it reported executing ("Executing steps ... in celery
    worker") across these runs."""
    executed: Counter = Counter()
    for run in runs:
        for record in instance.all_logs(run.run_id):
            entry = record.dagster_event
            worker = entry.engine_event_data.metadata.get("Celery worker") if entry and entry.is_engine_event else None
            if worker is not None:
                executed[str(worker.value).split("@")[0]] += 1
    return executed
