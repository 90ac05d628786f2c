"""Three overlapping backfills of raw/flights and downstream, launched at once over GraphQL on a
production deployment: a dagster-webserver and dagster-daemon on the PostgreSQL instance, the
warehouse in DuckLake, every step on one of two `plumbline worker` Celery workers over RabbitMQ.

The backfills replace the same partitions concurrently: no key may be written twice, every
partition's accounting must balance, the tables must be exactly those the sequential `plumbline sync`
built before (same deliveries), and every run must succeed or fail with a write conflict whose retry
(run_retries of the production instance) succeeded.

The module makes its own PostgreSQL databases, RabbitMQ virtual host and data directories and
removes them at the end (tests/production_support.py)."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from production_support import (PG, cut_feed, fingerprints, plumbline, seeing, services, start_server, start_workers,
                                stop)

pytestmark = pytest.mark.slow

# January only (its last day is delivered on the morning of February 1st): small and fast.
CUTOFF = "20130201T1200Z"
WORKERS = 2
RANGES = [("2013-01-01", "2013-01-20"), ("2013-01-10", "2013-01-31"), ("2013-01-05", "2013-01-25")]
ASSETS = (("raw", "flights"), ("core", "flights"), ("marts", "carrier_daily"))
BACKFILL_S = 1800


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A production home synced from January's deliveries by `plumbline sync` (2 workers), then a
    webserver and a daemon on its instance. Yields its env, the webserver URL and the logs folder."""
    from orchestration.demo.feed import write_feed

    root = tmp_path_factory.mktemp("production_backfills")
    feed = root / "feed"
    write_feed(feed, profile="demo", seed=13)
    cut_feed(feed, CUTOFF)
    home = root / "home"
    shutil.copytree(feed / "landing", home / "landing")
    logs = root / "logs"
    logs.mkdir()

    with services("plumbline_b") as svc:
        # the instance's dagster.yaml: the production one, copied there by `plumbline sync`
        env = {**svc.env(home), "DAGSTER_HOME": str(home / "dagster-production")}
        procs = start_workers(env, home, [f"{svc.tag}-w{i}" for i in range(WORKERS)], logs)
        try:
            synced = plumbline(env, home, "sync")
            (logs / "sync.log").write_text(synced.output)
            assert (home / "dagster-production" / "dagster.yaml").exists()
            server, url = start_server(env, home, logs)
            procs.extend(server)
            yield {"env": env, "url": url, "logs": logs, "sync_seconds": synced.seconds,
                   "catalog_db": svc.databases["catalog"], "workers": [p.pid for p in procs[:WORKERS]]}
        finally:
            stop(procs)


@pytest.fixture
def production_env(deployment, monkeypatch):
    """This process sees the deployment as its processes do (Lakehouse, instance)."""
    with seeing(monkeypatch, deployment["env"], ("PLUMBLINE_", "DAGSTER_")):
        yield deployment


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
    before = _read(fingerprints)
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
    after = _read(fingerprints)
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
    before = _read(fingerprints)
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
    assert _read(fingerprints) == before
