"""Three overlapping backfills of raw/flights and downstream, launched at once over GraphQL on a
production deployment: a dagster-webserver and dagster-daemon on the PostgreSQL instance, the
warehouse in DuckLake, every step on one of two `plumbline worker` Celery workers over RabbitMQ.

The backfills replace the same partitions concurrently: no key may be written twice, every
partition's accounting must balance, the tables must be exactly those the sequential `plumbline sync`
built before (same deliveries), and every run must succeed or fail with a write conflict whose retry
(run_retries of the production instance) succeeded.

The module makes its own PostgreSQL databases, RabbitMQ virtual host and data directories and
removes them at the end (the pattern of test_production.py, whose helpers it uses)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from scenarios.test_production import (AMQP, BIN, ENV_PREFIXES, PG, WORKERS, _admin, _clean_env, _die_with_parent,
                                       _fingerprints, _rabbitmqctl, _sync, _wait_for_workers)

pytestmark = pytest.mark.slow

# January only (its last day is delivered on the morning of February 1st): small and fast.
CUTOFF = "20130201T1200Z"
RANGES = [("2013-01-01", "2013-01-20"), ("2013-01-10", "2013-01-31"), ("2013-01-05", "2013-01-25")]
ASSETS = (("raw", "flights"), ("core", "flights"), ("marts", "carrier_daily"))
SERVER_S = 300
BACKFILL_S = 1800


def _cut_feed(home: Path) -> None:
    for path in (home / "landing").rglob("*"):
        stamp = re.search(r"_(\d{8}T\d{4}Z)", path.name)
        if stamp and stamp.group(1) > CUTOFF:
            path.unlink()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A production home synced from January's deliveries by `plumbline sync` (2 workers), then a
    webserver and a daemon on its instance. Yields its env, the webserver URL and the logs folder."""
    from celery import Celery

    from orchestration.demo.feed import write_feed

    tag = f"plumbline_b{os.getpid()}_{uuid.uuid4().hex[:8]}"
    dbs = {role: f"{tag}_{role}" for role in ("instance", "catalog", "mlflow")}
    vhost = tag
    root = tmp_path_factory.mktemp("production_backfills")
    feed = root / "feed"
    write_feed(feed, profile="demo", seed=13)
    _cut_feed(feed)
    home = root / "home"
    shutil.copytree(feed / "landing", home / "landing")
    logs = root / "logs"
    logs.mkdir()

    admin = _admin()
    procs: list[subprocess.Popen] = []
    made_vhost = False
    try:
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'CREATE DATABASE "{db}"')
        _rabbitmqctl("add_vhost", vhost)
        made_vhost = True
        _rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        broker = f"{AMQP}/{vhost}"
        env = {**_clean_env(), "PLUMBLINE_SETTLE_SECONDS": "0", "PLUMBLINE_HOME": str(home),
               "PLUMBLINE_DEPLOYMENT": "production",
               "PLUMBLINE_INSTANCE_URL": f"{PG}/{dbs['instance']}",
               "PLUMBLINE_CATALOG_URL": f"{PG}/{dbs['catalog']}",
               "PLUMBLINE_MLFLOW_URL": f"{PG}/{dbs['mlflow']}",
               "PLUMBLINE_DATA_PATH": str(home / "lake"),
               "PLUMBLINE_BROKER_URL": broker,
               # the instance's dagster.yaml (the production one, copied there by `plumbline sync`)
               "DAGSTER_HOME": str(home / "dagster-production")}

        names = [f"{tag}-w{i}" for i in range(WORKERS)]
        worker_logs = [logs / f"{name}.log" for name in names]
        for name, log in zip(names, worker_logs):
            procs.append(_start([str(BIN / "plumbline"), "worker", "--name", name], env, home, log))
        _wait_for_workers(Celery(broker=broker), names, procs, worker_logs)

        synced = _sync(env, home)
        (logs / "sync.log").write_text(synced.output)
        assert (home / "dagster-production" / "dagster.yaml").exists()

        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        server = [_start([str(BIN / "dagster-webserver"), "-m", "orchestration.definitions", "-h", "127.0.0.1",
                          "-p", str(port)], env, home, logs / "webserver.log"),
                  _start([str(BIN / "dagster-daemon"), "run", "-m", "orchestration.definitions"], env, home,
                         logs / "daemon.log")]
        procs.extend(server)
        deadline = time.monotonic() + SERVER_S
        while True:
            try:
                if requests.get(url + "/server_info", timeout=5).ok:
                    break
            except requests.RequestException:
                pass
            assert all(p.poll() is None for p in server), (logs / "webserver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (logs / "webserver.log").read_text()[-3000:]
            time.sleep(2)
        yield {"env": env, "url": url, "logs": logs, "sync_seconds": synced.seconds, "catalog_db": dbs["catalog"],
               "workers": [p.pid for p in procs[:WORKERS]]}
    finally:
        _stop(procs)
        with admin.cursor() as cur:
            for db in dbs.values():
                cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()
        if made_vhost:
            _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture
def production_env(deployment, monkeypatch):
    """This process sees the deployment as its processes do (Lakehouse, instance)."""
    for k in [k for k in os.environ if k.startswith(ENV_PREFIXES)]:
        monkeypatch.delenv(k)
    for k, v in deployment["env"].items():
        if k.startswith(("PLUMBLINE_", "DAGSTER_")):
            monkeypatch.setenv(k, v)
    return deployment


def _read(check) -> object:
    from orchestration.lakehouse import Lakehouse

    with Lakehouse().connect(read_only=True) as con:
        return check(con)


def _duplicates(con) -> dict[str, int]:
    from contracts.loader import load_contracts

    flights_key = ", ".join(load_contracts()["flights"].primary_key)
    keys = {"raw.flights": flights_key, "core.flights": flights_key,
            "marts.carrier_daily": "event_date, carrier, origin",
            "ops.partition_accounting": "source, partition_date"}
    return {t: con.execute(f"SELECT count(*) FROM (SELECT {k} FROM {t} GROUP BY ALL HAVING count(*) > 1)").fetchone()[0]
            for t, k in keys.items()}


def _unbalanced(con) -> list:
    out = []
    for p, delivered, accepted, dead, superseded in con.execute(
            "SELECT partition_date, delivered, accepted, dead_lettered, superseded FROM ops.partition_accounting "
            "WHERE source = 'flights' ORDER BY 1").fetchall():
        in_raw = con.execute("SELECT count(*) FROM raw.flights WHERE event_date = ?", [p]).fetchone()[0]
        if delivered != accepted + dead + superseded or superseded < 0 or accepted != in_raw:
            out.append((str(p), delivered, accepted, dead, superseded, in_raw))
    return out


def _wait_settled(instance, logs: Path, timeout: float) -> list:
    """All runs terminal, and every failed run either retried (a run names it as parent) or out of retries."""
    import dagster as dg

    terminal = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
    deadline = time.monotonic() + timeout
    while True:
        runs = instance.get_runs()
        parents = {r.tags.get("dagster/parent_run_id") for r in runs}
        pending = [r for r in runs if r.status not in terminal or (
            r.status == dg.DagsterRunStatus.FAILURE and r.run_id not in parents
            and int(r.tags.get("dagster/retry_number", "0")) < 3)]
        if not pending:
            return runs
        assert time.monotonic() < deadline, ([(r.job_name, r.run_id, r.status) for r in pending],
                                             (logs / "daemon.log").read_text()[-4000:])
        time.sleep(3)


def test_three_overlapping_backfills_over_graphql(production_env):
    import dagster as dg

    from orchestration.ops import sync
    from orchestration.ops.backfill import DONE, Plan, Server
    from orchestration.rebuild.partitions import partition_range

    dep = production_env
    before = _read(_fingerprints)
    assert before["raw.flights"][0] > 0 and before["marts.carrier_daily"][0] > 0
    assert not _unbalanced_or_dup_free(before)

    server = Server(dep["url"], timeout=120)
    keys = [dg.AssetKey(list(k)) for k in ASSETS]
    plans = [Plan(keys, {k: partition_range(a, b) for k in keys}) for a, b in RANGES]
    ids: list = [None] * len(plans)
    errors: list = []

    def launch(i: int) -> None:
        try:
            ids[i] = server.launch(plans[i], f"overlap {RANGES[i][0]}..{RANGES[i][1]}")
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=launch, args=(i,)) for i in range(len(plans))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and all(ids), errors

    statuses = [server.follow(i, say=lambda _: None, poll=5.0, timeout=BACKFILL_S) for i in ids]
    instance = sync.instance()
    try:
        runs = _wait_settled(instance, dep["logs"], timeout=BACKFILL_S)
        seconds = time.monotonic() - t0
        backfill_runs = [r for r in runs if r.tags.get("dagster/backfill") in ids]
        by_id = {r.run_id: r for r in runs}
        children = {r.tags["dagster/parent_run_id"]: r for r in runs if "dagster/parent_run_id" in r.tags}
        failed = {}
        for r in backfill_runs:
            if r.status == dg.DagsterRunStatus.SUCCESS:
                continue
            failures = [e.dagster_event.event_specific_data.error.to_string()
                        for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
            retry, final = children.get(r.run_id), r
            while final.run_id in children:
                final = children[final.run_id]
            failed[r.run_id] = (r.status, retry is not None, final.status, [f[:300] for f in failures])
        print(f"\n3 overlapping backfills of {len(ASSETS)} assets over January: {seconds:.1f}s, "
              f"{len(backfill_runs)} runs, statuses {statuses}, failed runs {len(failed)}", flush=True)
        for run_id, (status, retried, final, failures) in failed.items():
            assert status == dg.DagsterRunStatus.FAILURE, (run_id, status)
            assert retried and final == dg.DagsterRunStatus.SUCCESS, (run_id, failed[run_id])
            assert failures and all("WriteConflict" in f for f in failures), (run_id, failures)
        assert backfill_runs and len({r.tags["dagster/backfill"] for r in backfill_runs}) == len(ids)
        assert all(s in DONE for s in statuses), statuses
        built = instance.get_materialized_partitions(dg.AssetKey(["marts", "carrier_daily"]))
        assert set(partition_range("2013-01-01", "2013-01-31")) <= set(built)
        assert by_id  # the instance holds the runs
    finally:
        instance.dispose()

    assert _read(_duplicates) == {"raw.flights": 0, "core.flights": 0, "marts.carrier_daily": 0,
                                  "ops.partition_accounting": 0}
    assert _read(_unbalanced) == []
    after = _read(_fingerprints)
    differ = {t: (before.get(t), after.get(t)) for t in set(before) | set(after) if before.get(t) != after.get(t)}
    assert not differ, differ


def _unbalanced_or_dup_free(fingerprints: dict) -> list:
    """Before the backfills: the sync's tables are themselves clean (the baseline is worth comparing to)."""
    return [*_read(_unbalanced), *[t for t, n in _read(_duplicates).items() if n]]


def _day_counts(con) -> dict[str, int]:
    return {str(d): n for d, n in con.execute(
        "SELECT event_date, count(*) FROM raw.flights GROUP BY 1").fetchall()}


def _parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _holding_lock(catalog_db: str, pid: int) -> bool:
    """Whether process `pid` (its PartitionLocker's connection names it) holds an advisory partition lock."""
    import psycopg2

    with psycopg2.connect(f"{PG}/{catalog_db}") as pg, pg.cursor() as cur:
        cur.execute("""SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE l.locktype = 'advisory' AND l.granted AND a.application_name = %s""", [f"plumbline pid {pid}"])
        held = cur.fetchone()[0] > 0
    pg.close()
    return held


def test_a_worker_killed_mid_rebuild_fails_its_run_and_the_retry_restores_the_tables(production_env):
    import dagster as dg

    from orchestration.ops import sync
    from orchestration.ops.backfill import DONE, Plan, Server
    from orchestration.rebuild.partitions import partition_range

    dep = production_env
    before = _read(_fingerprints)
    counts = _read(_day_counts)
    january = partition_range("2013-01-01", "2013-01-31")
    assert all(counts.get(d, 0) > 0 for d in january), counts

    # readers, all along: every day's row count is the full one (the old and new counts are the same
    # deliveries'); a half-written partition would show fewer rows, or none
    stop, reads, torn, read_errors = threading.Event(), [0], [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen = _read(_day_counts)
            except Exception as e:  # a read must never fail either
                read_errors.append(repr(e)[:300])
                continue
            reads[0] += 1
            torn.extend((d, seen.get(d, 0), counts[d]) for d in january if seen.get(d, 0) != counts[d])

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    raw = dg.AssetKey(["raw", "flights"])
    server = Server(dep["url"], timeout=120)
    backfill = server.launch(Plan([raw], {raw: january}), "rebuild January, a worker dies")
    instance = sync.instance()
    try:
        deadline = time.monotonic() + BACKFILL_S
        run, step_pid = None, None
        while step_pid is None:  # the run's raw.flights step has started on a worker
            assert time.monotonic() < deadline, (run and run.status, (dep["logs"] / "daemon.log").read_text()[-3000:])
            runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill}))
            run = runs[0] if runs else None
            if run is not None:
                started = [r.event_log_entry.dagster_event for r in instance.get_records_for_run(
                    run.run_id, of_type=dg.DagsterEventType.STEP_START).records]
                step_pid = next((e.pid for e in started if e.step_key == "raw__flights"), None)
            time.sleep(0.5)
        assert _parent_pid(step_pid) in dep["workers"], "the step runs in a Celery pool process of this test's workers"
        while not _holding_lock(dep["catalog_db"], step_pid):  # ... and is replacing its partitions
            assert time.monotonic() < deadline
            assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED, \
                "the step finished before it was seen holding its partition lock"
            time.sleep(0.05)
        reads_before_kill = reads[0]
        os.kill(step_pid, signal.SIGKILL)
        killed_at = time.monotonic()

        while (status := instance.get_run_by_id(run.run_id).status) not in (
                dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.CANCELED):
            assert time.monotonic() - killed_at < 600, f"run still {status} 600 s after its worker process died"
            time.sleep(1)
        assert status == dg.DagsterRunStatus.FAILURE, status
        failed_after = time.monotonic() - killed_at
        runs = _wait_settled(instance, dep["logs"], timeout=BACKFILL_S)
        retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == run.run_id]
        assert [r.status for r in retries] == [dg.DagsterRunStatus.SUCCESS], [(r.run_id, r.status) for r in retries]
        assert server.follow(backfill, say=lambda _: None, poll=5.0, timeout=BACKFILL_S) in DONE
        assert not [r for r in instance.get_runs() if r.status == dg.DagsterRunStatus.STARTED]
        # slots: no pool limits in this profile, and the dead run holds none
        storage = instance.event_log_storage
        holding = [k for k, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items()
                   if any(s.run_id == run.run_id for s in info.claimed_slots)]
        assert not holding, holding
        print(f"\nworker process killed mid-rebuild: run FAILURE {failed_after:.1f}s later, retry SUCCESS; "
              f"{reads[0]} reads ({reads[0] - reads_before_kill} after the kill), none torn", flush=True)
    finally:
        stop.set()
        watcher.join(timeout=120)
        instance.dispose()
    assert not read_errors, read_errors[:3]
    assert reads[0] > reads_before_kill > 0
    assert not torn, torn[:10]
    assert _read(_fingerprints) == before
