"""The production profile on this machine's real services: the demo feed up to the end of March
(and the dimensions) synced with the Dagster instance in PostgreSQL, the warehouse in DuckLake on a
PostgreSQL catalog and every step on one of two `plumbline worker` Celery workers over RabbitMQ,
gives the same tables, row for row, as the embedded profile synced from the same deliveries; and
its lineage validates, one START and one terminal event per run.

Each test session makes its own PostgreSQL databases, RabbitMQ virtual host (so parallel sessions
never take each other's tasks) and data directories, and removes them at the end."""

from __future__ import annotations

import os
import shutil
import sys
from collections import defaultdict

import pytest

from openlineage_validation import errors, read_events
from production_support import (clean_env, cut_feed, fingerprints, open_warehouse, plumbline, rows, seeing, services,
                                start_workers, steps_on_workers, stop)

pytestmark = pytest.mark.slow

# The feed as it stood at noon on April 1st: every flights day of January to March (delivered the
# next morning), the weather weeks delivered by then, the dimensions, and the demo's faults among them.
CUTOFF = os.environ.get("PLUMBLINE_TEST_CUTOFF", "20130401T1200Z")
WORKERS = 2


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    """The same feed synced twice: embedded (one process, a DuckDB file) and production (PostgreSQL
    instance, DuckLake, 2 Celery workers). Yields both homes with their wall times."""
    from orchestration.demo.feed import write_feed

    root = tmp_path_factory.mktemp("production")
    feed = root / "feed"
    write_feed(feed, profile="demo", seed=13)
    cut_feed(feed, CUTOFF)
    homes = {name: root / name for name in ("embedded", "production")}
    for home in homes.values():
        shutil.copytree(feed / "landing", home / "landing")

    with services("plumbline_t") as svc:
        embedded = {**clean_env(), "PLUMBLINE_SETTLE_SECONDS": "0", "PLUMBLINE_HOME": str(homes["embedded"])}
        production = svc.env(homes["production"])
        names = [f"{svc.tag}-w{i}" for i in range(WORKERS)]
        procs = start_workers(production, homes["production"], names, root)
        try:
            synced = {"production": plumbline(production, homes["production"], "sync"),
                      "embedded": plumbline(embedded, homes["embedded"], "sync")}
            for name, done in synced.items():
                (root / f"{name}-sync.log").write_text(done.output)
            print(f"\nJan-Mar sync wall time: embedded {synced['embedded'].seconds:.1f}s, production with {WORKERS} "
                  f"workers {synced['production'].seconds:.1f}s", file=sys.stderr)
            yield {**synced, "homes": homes, "env": production, "instance_url": production["PLUMBLINE_INSTANCE_URL"]}
        finally:
            stop(procs)


def test_production_profile_builds_the_same_tables_as_embedded(profiles, monkeypatch):
    found, samples = {}, {}
    for name in ("embedded", "production"):
        env = profiles["env"] if name == "production" else {"PLUMBLINE_HOME": str(profiles["homes"]["embedded"])}
        with seeing(monkeypatch, env):
            with open_warehouse(env) as con:
                found[name] = fingerprints(con)
                days = {str(d) for (d,) in con.execute(
                    "SELECT partition_date FROM ops.partition_accounting WHERE source = 'flights'").fetchall()}
                rules = dict(con.execute("SELECT rule_id, count(*) FROM ops.dead_letter GROUP BY 1").fetchall())
                samples[name] = {t: rows(con, *t.split(".")) for t in found[name] if not t.startswith("ml.")}
    for must in ("raw.flights", "raw.weather", "raw.planes", "raw.airlines", "raw.airports", "core.flights",
                 "marts.carrier_daily", "ops.partition_accounting", "ops.dead_letter"):
        assert must in found["production"] and found["production"][must][0] > 0, must
    assert set(found["production"]) == set(found["embedded"])
    differ = {t: (found["embedded"][t], found["production"][t]) for t in found["embedded"]
              if found["embedded"][t] != found["production"][t]}
    if differ:  # say how: the first rows that are in one profile and not the other
        for t in differ:
            if t in samples["embedded"] and t in samples["production"]:
                e, p = samples["embedded"][t], samples["production"][t]
                print(t, e[0], "\n  only embedded:", [r for r in e[1:] if r not in p][:3],
                      "\n  only production:", [r for r in p[1:] if r not in e][:3], file=sys.stderr)
    assert not differ, differ
    assert all(f"2013-{m:02d}-{d:02d}" in days for m, last in ((1, 31), (2, 28), (3, 31)) for d in range(1, last + 1)), \
        "every day of January to March was built"
    assert rules, "the demo faults of January to March dead-letter rows"


def test_every_step_ran_on_a_worker_and_the_runs_are_in_postgresql(profiles, monkeypatch):
    import dagster as dg

    from orchestration.ops import sync
    from orchestration.ops.runs import HOST_TAG, PID_TAG
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START

    with seeing(monkeypatch, profiles["env"]):
        instance = sync.instance()
        try:
            runs = instance.get_runs()
            assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.job_name, r.status) for r in runs]
            on_workers = steps_on_workers(instance, runs)
            # the runs keep the tags an in-process run has: who executes them (never-stuck), which partition range
            assert all(PID_TAG in r.tags and HOST_TAG in r.tags for r in runs)
            ranged = [r for r in runs if r.job_name.startswith("rebuild_") or r.job_name == "build_features"]
            assert ranged and all((r.tags.get(RANGE_START), r.tags.get(RANGE_END)) == ("2013-01-01", "2013-03-31")
                                  for r in ranged), [(r.job_name, r.tags.get(RANGE_START), r.tags.get(RANGE_END)) for r in ranged]
            built = instance.get_materialized_partitions(dg.AssetKey(["raw", "flights"]))
            assert len(built) == 90 and min(built) == "2013-01-01" and max(built) == "2013-03-31"
            steps = sum(1 for run in runs for s in instance.get_records_for_run(
                run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records)
        finally:
            instance.dispose()
    assert sum(on_workers.values()) == steps > 0, (on_workers, steps)
    assert len(on_workers) == WORKERS, f"both workers took steps: {on_workers}"
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"


def test_production_lineage_validates_with_one_start_and_one_end_per_run(profiles):
    emitted = read_events(profiles["homes"]["production"] / "lineage" / "events.jsonl")
    assert emitted
    problems = [f"{e['job']['name']} {e['eventType']}: {p}" for e in emitted for p in errors(e)]
    assert not problems, problems[:10]
    by_run = defaultdict(list)
    for e in emitted:
        by_run[e["run"]["runId"]].append(e["eventType"])
    bad = {run: types for run, types in by_run.items()
           if types.count("START") != 1 or sum(types.count(t) for t in ("COMPLETE", "FAIL", "ABORT")) != 1}
    assert not bad, bad
    secret_free = "guest:guest" not in (profiles["homes"]["production"] / "lineage" / "events.jsonl").read_text()
    assert secret_free
