"""The ML layer: features, training set, model, evaluation with its promotion gate, predictions.

Assets say what is built; how lives in orchestration.ml. Configuration (split windows, model
parameters, promotion margins, drift thresholds) comes from orchestration/ml/config.yaml or
$PLUMBLINE_ML_CONFIG.
"""

import dagster as dg

from assets import core, policy
from orchestration import catalog, names
from orchestration.quality import partition_checks
from orchestration.rebuild import partition_metadata, partitions
from orchestration.ml import config, drift, evaluation, features, scoring, training
from orchestration.ml import training_set as split
from orchestration.ml.layer import (AIRPORTS, CFG, CORE_FLIGHTS, DAILY, EVALUATION, FEATURES, MODEL, PLANES, PREDICTIONS,
                                    TRAINING_SET, WEATHER)
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse import key_list
from orchestration.warehouse_resource import Warehouse

MODEL_VERSION = names.MODEL_VERSION  # materialization metadata of ml/delay_model: the registered version

# Column descriptions: a flight's key and features are described as in ml.flight_features.
_FEATURE = {n: (t, d) for n, t, d in features.COLUMNS}
_THRESHOLD = f"arrival delay above {CFG.delay_minutes} minutes (ml config delay_minutes)"
PREDICTION_DESCRIPTIONS = {
    **{n: _FEATURE[n][1] for n in features.KEY},
    "p_delayed": f"The champion model's probability of an {_THRESHOLD}.",
    "model_version": "Registered version of the model that scored the row (the champion when scored).",
    "outcome": _FEATURE["outcome"][1] + ", as far as known when scored",
    "delayed": _FEATURE["delayed"][1],
}
EVALUATION_DESCRIPTIONS = {
    "challenger_version": "Version of ml/delay_model this evaluation was made for (a re-evaluation replaces "
                          "its rows).",
    "model": "challenger, champion (the champion at evaluation time, when another version) or baseline (historical on-time share).",
    "model_version": "Registered version measured; null for the baseline.",
    "scope": "overall, or a carrier code: the test-window flights measured.",
    "flights": "Test-window flights in the scope (cancelled and diverted flights have no label and are left out).",
    "auc": "Area under the ROC curve of P(delayed) against the label.",
    "log_loss": "Mean log loss of P(delayed).",
    "brier": "Brier score: mean squared error of P(delayed).",
    "ece": "Expected calibration error: the gap between mean predicted and observed delay rate in equal-width bins "
           "of P(delayed), weighted by the bins' flights.",
    "daily_auc": "Median AUC of single test days with enough flights (overall scope only): what a scored "
                 "partition's AUC is compared with.",
}
# ml.training_set as orchestration/ml/training_set.py builds it: the split, the flight's key, its features, its label.
TRAINING_SET_COLUMNS = [
    ("split", "VARCHAR", "train, validation or test: the configured window the flight's day falls in."),
    *((n, *_FEATURE[n]) for n in ["event_date", *features.KEY[1:], *[c for c in features.FEATURES if c not in features.KEY],
                                  "delayed"]),
]


def _schema(columns) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(n, t, description=d) for n, t, d in columns])


def _column_lineage() -> dg.TableColumnLineage:
    return dg.TableColumnLineage(deps_by_column={
        col: [dg.TableColumnDep(dg.AssetKey([schema, table]), c) for schema, table, c in deps]
        for col, deps in features.SOURCES.items()})


def _training_set_lineage() -> dg.TableColumnLineage:
    """Each column is its ml.flight_features column as is; split is the configured window event_date falls in."""
    return dg.TableColumnLineage(deps_by_column={
        n: [dg.TableColumnDep(FEATURES, "event_date" if n == "split" else n)] for n, _, _ in TRAINING_SET_COLUMNS})


@dg.asset(
    key=FEATURES,
    deps=[dg.AssetDep(CORE_FLIGHTS, partition_mapping=features.partition_mapping(CFG.rolling_days)),
          dg.AssetDep(WEATHER), PLANES, AIRPORTS],
    kinds={"duckdb"}, code_version=training.MODEL_CODE_VERSION,
    metadata={"dagster/column_schema": features.COLUMN_SCHEMA, "dagster/column_lineage": _column_lineage(),
              "dagster/table_name": "warehouse.ml.flight_features",
              names.AGGREGATED_COLUMNS: dg.MetadataValue.json(features.AGGREGATED),
              names.JOIN_KEYS: dg.MetadataValue.json(features.JOIN_KEYS)},
    group_name="ml", **policy.warehouse_writer(DAILY),
)
def flight_features(context: dg.AssetExecutionContext, warehouse: Warehouse) -> dg.MaterializeResult:
    """Per flight: scheduled hour, weekday, month, carrier, origin, destination, distance, plane age
    and seats, the origin's weather at the scheduled (UTC) hour, and carrier-at-origin aggregates of
    the previous days only. Label: arrival delay above the threshold; cancelled and diverted flights
    have outcome 'cancelled'/'diverted' and no label."""
    keys = list(context.partition_keys)
    with warehouse.connect() as con:
        # weather or a dimension may not have landed yet: build with what there is (NULL features)
        con.execute(core.DDL)
        for source in ("weather", "planes", "airports"):
            con.execute(partitions.raw_table_ddl(catalog.contracts()[source]))
        rows = partitions.replace_partitions(con, "ml.flight_features", features.DDL, keys,
                                             features.select(CFG.rolling_days, CFG.delay_minutes))
        outcomes = {k: {} for k in keys}
        for day, outcome, n in con.execute(f"SELECT strftime(event_date, '%Y-%m-%d'), outcome, count(*) FROM ml.flight_features "
                                           f"WHERE event_date IN {key_list(keys)} GROUP BY ALL ORDER BY 1, 2").fetchall():
            outcomes[day][outcome] = n
    context.log.info(f"ml.flight_features: {sum(rows.values())} flights in {len(keys)} partition(s)")
    partition_metadata.record(context, {k: {"dagster/row_count": rows[k], "outcomes": dg.MetadataValue.json(outcomes[k])}
                                        for k in keys})
    return dg.MaterializeResult(metadata={"rolling_days": CFG.rolling_days})


@dg.asset(
    key=TRAINING_SET, deps=[FEATURES], kinds={"duckdb"}, code_version=training.MODEL_CODE_VERSION,
    check_specs=[dg.AssetCheckSpec(names.TRAINING_SET_SPLIT, asset=TRAINING_SET, blocking=True,
                                   description="Train, validation and test windows do not overlap and no flight is in two of them.")],
    metadata={"dagster/table_name": "warehouse.ml.training_set", "dagster/column_schema": _schema(TRAINING_SET_COLUMNS),
              "dagster/column_lineage": _training_set_lineage()},
    group_name="ml", **policy.warehouse_writer(),
)
def training_set(context: dg.AssetExecutionContext, warehouse: Warehouse):
    """Labelled flights of the train, validation and test windows (config split), with provenance:
    each feature partition's content hash, contract versions, row counts and label balance."""
    cfg = config.load()
    with warehouse.connect() as con:
        provenance = split.build(con, cfg)
        problems = split.split_problems(con, cfg)
    splits = provenance["splits"]
    context.log.info("ml.training_set " + provenance["version"] + ": " +
                     ", ".join(f"{n} {s['rows']} rows ({s['delayed_share']} delayed)" for n, s in splits.items()))
    yield dg.MaterializeResult(
        metadata={"dagster/row_count": sum(s["rows"] for s in splits.values()), "training_set_version": provenance["version"],
                  "provenance": dg.MetadataValue.json(provenance), "config": str(cfg.path)},
        data_version=dg.DataVersion(provenance["version"]))
    ok = not problems["overlapping_windows"] and not problems["keys_in_two_splits"]
    yield dg.AssetCheckResult(
        check_name=names.TRAINING_SET_SPLIT, passed=ok, severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"train, validation and test windows of {cfg.path.name} are disjoint and no flight is in two of them" if ok else
            f"the split in {cfg.path} is unsound: windows overlapping: {problems['overlapping_windows'] or 'none'}; "
            f"{problems['keys_in_two_splits']} flight(s) in two splits. Fix split.* so the windows are disjoint."),
        metadata={"overlapping_windows": dg.MetadataValue.json(problems["overlapping_windows"]),
                  "keys_in_two_splits": problems["keys_in_two_splits"],
                  "examples": dg.MetadataValue.json(problems["examples"])})


@dg.asset(key=MODEL, deps=[TRAINING_SET], kinds={"scikit-learn", "mlflow"}, code_version=training.MODEL_CODE_VERSION,
          check_specs=[dg.AssetCheckSpec(names.TRAINING_DATA_CURRENT, asset=MODEL, description=(
              "The model was trained on the features as they are: WARN, naming the restated days and flights, while "
              "`plumbline sync` defers retraining for a change below training.retrain_min_changed_share"))],
          metadata={names.REGISTERED_MODEL: CFG.model_name}, group_name="ml", **policy.warehouse_writer())
def delay_model(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: ModelRegistry) -> dg.MaterializeResult:
    """A gradient-boosting classifier of P(arrival delay > threshold), trained with fixed seeds on the
    train window and registered in MLflow with its parameters, metrics, the training set's provenance,
    the code version and library versions. The same training set and parameters reuse the version."""
    cfg = config.load()
    with warehouse.connect(read_only=True) as con:
        trained = training.train(con, cfg, model_registry)
    v = model_registry.version(cfg, trained.version)
    context.log.info(f"{cfg.model_name} v{trained.version} ({'reused: same fingerprint' if trained.reused else 'trained'}); "
                     f"validation AUC {trained.metrics.get('validation_auc')}")
    if trained.left_out:
        context.log.warning(f"{len(trained.left_out)} feature(s) left out of training: "
                            + "; ".join(f"{name}: {why}" for name, why in trained.left_out.items()))
    return dg.MaterializeResult(
        metadata={MODEL_VERSION: trained.version, "model_uri": f"models:/{cfg.model_name}/{trained.version}",
                  "left_out_features": dg.MetadataValue.json(trained.left_out),
                  "mlflow_run_id": v.run_id, names.MLFLOW_TRACKING_URI: model_registry.location(), "reused": trained.reused,
                  "training_set_version": trained.provenance["version"], "fingerprint": trained.fingerprint,
                  **{k: float(val) for k, val in sorted(trained.metrics.items()) if isinstance(val, (int, float))}},
        data_version=dg.DataVersion(trained.fingerprint),
        check_results=[dg.AssetCheckResult(check_name=names.TRAINING_DATA_CURRENT, passed=True,
                                           severity=dg.AssetCheckSeverity.WARN,
                                           description=f"trained on training set {trained.provenance['version']}, "
                                                       "built from the features as they are now")])


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    mat = event.asset_materialization if event else None
    return {k: v.value for k, v in mat.metadata.items()} if mat else {}


@dg.asset(key=EVALUATION, deps=[MODEL, TRAINING_SET], kinds={"duckdb", "mlflow"}, code_version=training.MODEL_CODE_VERSION,
          metadata={"dagster/table_name": "warehouse.ml.model_evaluation",
                    "dagster/column_schema": _schema((n, t, EVALUATION_DESCRIPTIONS[n]) for n, t in evaluation.COLUMNS)},
          group_name="ml", **policy.warehouse_writer())
def model_evaluation(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: ModelRegistry) -> dg.MaterializeResult:
    """AUC, log loss, Brier score and calibration error on the test window, overall and per carrier,
    for the challenger (the latest ml/delay_model), the current champion and the baseline."""
    challenger = str(_latest(context.instance, MODEL)[MODEL_VERSION])
    with warehouse.connect() as con:
        rows, champion, reliability = training.evaluate(con, config.load(), model_registry, challenger)
    overall = {r["model"]: r for r in rows if r["scope"] == evaluation.OVERALL}
    table = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in rows if r["scope"] == evaluation.OVERALL]
    context.log.info("test window: " + "; ".join(f"{m} AUC {r['auc']:.4f}" for m, r in overall.items() if r["auc"] is not None))
    return dg.MaterializeResult(metadata={
        names.CHALLENGER_VERSION: challenger, names.CHAMPION_VERSION: champion or "none",
        "dagster/row_count": len(rows), "overall": dg.MetadataValue.json(table),
        "challenger_calibration": dg.MetadataValue.json(reliability),
        **{f"{m}_{k}": float(r[k]) for m, r in overall.items() for k in ("auc", "log_loss", "brier", "ece") if r[k] is not None}})


@dg.asset_check(asset=EVALUATION, blocking=True, name=names.PROMOTION_GATE,
                description="Promotes the challenger to champion only if it beats the champion (or the baseline) by the "
                            "configured margin with no carrier regressing beyond the configured amount.")
def promotion_gate(context: dg.AssetCheckExecutionContext, warehouse: Warehouse, model_registry: ModelRegistry) -> dg.AssetCheckResult:
    cfg = config.load()
    challenger = str(_latest(context.instance, EVALUATION)[names.CHALLENGER_VERSION])
    with warehouse.connect() as con:
        rows = evaluation.load(con, challenger)
        champion = model_registry.champion(cfg)
        decision = evaluation.decide(rows, challenger, champion, cfg.promotion)
        if decision.promote:
            model_registry.promote(con, cfg, challenger, actor=names.PROMOTION_GATE, reason=decision.reason)
        elif champion != challenger:
            model_registry.reject(con, cfg, challenger, actor=names.PROMOTION_GATE, reason=decision.reason)
    now = model_registry.champion(cfg)
    context.log.info(f"promotion gate: v{challenger} {'promoted' if decision.promote else 'not promoted'}: {decision.reason}")
    kept = decision.promote or champion == challenger
    return dg.AssetCheckResult(
        passed=kept,
        # a rejected challenger leaves the champion serving (a warning); with no champion at all, scoring must stop
        severity=dg.AssetCheckSeverity.WARN if now else dg.AssetCheckSeverity.ERROR,
        description=decision.reason,
        metadata={names.CHALLENGER_VERSION: challenger, names.CHAMPION_VERSION: now or "none", "previous_champion": champion or "none",
                  names.DECISION: names.PROMOTED if decision.promote else ("already champion" if champion == challenger else "rejected"),
                  "compared_with": decision.compared_with, "auc_gain": decision.auc_gain if decision.auc_gain is not None else float("nan"),
                  "regressed_carriers": dg.MetadataValue.json(decision.regressed_carriers)})


DRIFT_CHECKS = {
    names.FEATURE_DRIFT: "PSI of each feature against the training reference, graded on its excess over a typical "
                         "training day, across every scored partition in ml.drift (not only the last run's)",
    names.PREDICTION_DRIFT: "PSI of the predicted probability against its training distribution, graded on its excess over "
                            "a typical training day, across every scored partition in ml.drift (not only the last run's)",
    names.PERFORMANCE_DRIFT: "each scored partition's AUC against the test-window AUC, where labels are known, graded on "
                             "the drop, across every scored partition in ml.drift (not only the last run's)",
}


@dg.asset(
    key=PREDICTIONS, deps=[dg.AssetDep(FEATURES), EVALUATION],
    kinds={"duckdb", "scikit-learn"},
    code_version=training.MODEL_CODE_VERSION,
    check_specs=[*(dg.AssetCheckSpec(name, asset=PREDICTIONS, description=d) for name, d in DRIFT_CHECKS.items()),
                 partition_checks.spec(names.DRIFT_BY_PARTITION, PREDICTIONS, DAILY,
                                       "Each partition a run scores, graded on its own drift measurements in ml.drift (the "
                                       "three drift checks' thresholds): fails when one is beyond them (ERROR at a fail grade), "
                                       "naming the features and their excess")],
    metadata={"dagster/table_name": "warehouse.ml.flight_predictions",
              "dagster/column_schema": _schema((n, t, PREDICTION_DESCRIPTIONS[n]) for n, t in scoring.PREDICTION_COLUMNS)},
    group_name="ml", **policy.warehouse_writer(DAILY),
)
def flight_predictions(context: dg.AssetExecutionContext, warehouse: Warehouse, model_registry: ModelRegistry):
    """The champion's P(delayed) for every flight of the partition, with the model version that
    scored it; drift of the partition against the training reference in ml.drift. When the
    champion changes, re-scoring is a backfill of these partitions."""
    keys = list(context.partition_keys)
    cfg = config.load()
    with warehouse.connect() as con:
        scored = scoring.score(con, cfg, model_registry, keys)
        measured = drift.scored(con)  # the drift checks grade every scored partition, not only this run's
    context.log.info(f"ml.flight_predictions: {sum(scored.rows.values())} flights in {len(keys)} partition(s) scored by "
                     f"{cfg.model_name} v{scored.version}")
    partition_metadata.record(context, {k: {"dagster/row_count": scored.rows[k]} for k in keys})
    yield dg.MaterializeResult(metadata={
        MODEL_VERSION: scored.version, "model_uri": f"models:/{cfg.model_name}/{scored.version}",
        names.MLFLOW_TRACKING_URI: model_registry.location()})
    yield from drift_results(measured, cfg.drift, keys)
    yield from partition_checks.verdicts(context, names.DRIFT_BY_PARTITION, drift_verdicts(measured, keys))


def drift_verdicts(measured, keys: list[str]) -> dict[str, partition_checks.Verdict]:
    """Each scored partition's own verdict over its measurements of the three drift checks."""
    graded = {check: drift.for_check(measured, check) for check in DRIFT_CHECKS}
    # each check's measurements and those beyond its thresholds, by partition (in the check's order)
    counts = {check: rows.partition.value_counts().to_dict() for check, rows in graded.items()}
    beyond_by = {check: dict(tuple(rows[rows.grade != "ok"].groupby("partition", sort=False))) for check, rows in graded.items()}
    out = {}
    for key in keys:
        beyond = [(check, r) for check, parts in beyond_by.items() if key in parts for r in parts[key].itertuples()]
        measurements = sum(int(c.get(key, 0)) for c in counts.values())
        worst = sorted(beyond, key=lambda cr: -float(cr[1].excess))
        out[key] = partition_checks.Verdict(
            passed=not beyond, error=any(r.grade == "fail" for _, r in beyond),
            description=(f"{len(beyond)} of {measurements} drift measurement(s) beyond the thresholds: " + ", ".join(
                f"{check} {r.feature} excess {float(r.excess):.3f} ({r.grade})" for check, r in worst[:3])
                if beyond else f"none of {measurements} drift measurement(s) is beyond the thresholds"),
            metadata={"measurements": measurements, "beyond_threshold": len(beyond),
                      "worst": dg.MetadataValue.json([{"check": c, **drift.described(r)} for c, r in worst[:5]])})
    return out


def drift_results(measured, d: dict, keys: list[str]) -> list[dg.AssetCheckResult]:
    """One result per drift check over every scored partition; "worst" lists only measurements beyond
    a threshold, ranked by the graded excess."""
    out = []
    for check in DRIFT_CHECKS:
        rows = drift.for_check(measured, check)
        beyond = rows[rows.grade != "ok"]
        worst = [drift.described(r) for r in beyond.head(10).itertuples()]
        fields = ("drop", "auc") if check == names.PERFORMANCE_DRIFT else ("excess", "psi")
        thresholds = ({"warn_drop": d["auc_drop_warn"], "fail_drop": d["auc_drop_fail"]} if check == names.PERFORMANCE_DRIFT
                      else {"warn_excess": d["psi_warn"], "fail_excess": d["psi_fail"]})
        partitions, in_run = rows.partition.nunique(), beyond[beyond.partition.isin(keys)]
        reason = (f"none of {len(rows)} measurement(s) of {partitions} scored partition(s) in ml.drift is beyond the "
                  f"thresholds (this run scored {len(keys)})" if beyond.empty else
                  f"{len(beyond)} of {len(rows)} measurement(s) beyond the thresholds, in {beyond.partition.nunique()} of "
                  f"{partitions} scored partition(s) in ml.drift ({len(in_run)} of them in the {len(keys)} partition(s) this run "
                  "scored); worst: " +
                  ", ".join(f"{w['feature']} {fields[0]} {w[fields[0]]} on {w['partition']} ({w['grade']})" for w in worst[:3]))
        out.append(dg.AssetCheckResult(
            check_name=check, passed=beyond.empty,
            severity=dg.AssetCheckSeverity.ERROR if (beyond.grade == "fail").any() else dg.AssetCheckSeverity.WARN,
            description=reason,
            metadata={"worst": dg.MetadataValue.json(worst),
                      "worst_in_this_run": dg.MetadataValue.json([drift.described(r) for r in in_run.head(10).itertuples()]),
                      "partitions_beyond_threshold": dg.MetadataValue.json(sorted(beyond.partition.unique().tolist())[:100]),
                      "partitions_beyond_threshold_by_feature": dg.MetadataValue.json(
                          {str(k): int(v) for k, v in beyond.groupby("feature").partition.nunique().sort_values(ascending=False).items()}),
                      "thresholds": dg.MetadataValue.json(thresholds), "measurements": len(rows),
                      "partitions_scored": int(partitions), "partitions_in_this_run": len(keys)}))
    return out
