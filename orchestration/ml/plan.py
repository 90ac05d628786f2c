"""Which ML partitions a change in the data makes stale, in one place for `plumbline sync` and the
sensors: feature days that read a changed day (its rolling window included), whether the training
set's windows are touched, and which days need scoring. Then, once those features are built,
whether the change is worth retraining for (retraining): a late file of a hundred flights does not
make a model trained on a few hundred thousand stale, so below training.retrain_min_changed_share
retraining is deferred and said so (record_deferral: the same record from sync and the training sensor)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import dagster as dg

from orchestration import names
from orchestration.ml import features, training_set
from orchestration.ml.config import MlConfig
from orchestration.ml.layer import FEATURES, MODEL, TRAINING_SET
from orchestration.warehouse import table_exists


@dataclass(frozen=True)
class MlPlan:
    feature_days: list[str]
    retrain: bool
    score_days: list[str]
    waiting: str = ""  # why training waits, when it does


def coverage(cfg: MlConfig, featured: set[str]) -> dict[str, float]:
    """Share of each split window's days that have features."""
    return {w.name: len(featured & set(w.days())) / len(w.days()) for w in cfg.windows}


def days_in(con, table: str) -> set[str]:
    """Event dates present in schema.table (none when the table does not exist yet)."""
    if not table_exists(con, *table.split(".")):
        return set()
    return {str(d) for (d,) in con.execute(f"SELECT DISTINCT strftime(event_date, '%Y-%m-%d') FROM {table}").fetchall()}


def plan(con, cfg: MlConfig, partitions_def: dg.PartitionsDefinition, changed_flights: list[str],
         changed_other: list[str], has_training_set: bool) -> MlPlan:
    """changed_flights: core.flights days rebuilt; changed_other: days whose other inputs (weather) changed."""
    built = days_in(con, "core.flights")
    featured = days_in(con, "ml.flight_features")
    days = set(features.affected_days(changed_flights, partitions_def, cfg.rolling_days)) | set(changed_other)
    days |= built - featured  # days loaded but never featured (a first run, or a run that failed)
    feature_days = sorted(days & built)
    split_days = {d for w in cfg.windows for d in w.days()}
    retrain = not has_training_set or bool(split_days & set(feature_days))
    covered = coverage(cfg, featured | set(feature_days))
    short = {n: c for n, c in covered.items() if c < cfg.min_window_coverage}
    waiting = ("training waits until every split window is at least "
               f"{cfg.min_window_coverage:.0%} featured: " + ", ".join(f"{n} {c:.0%}" for n, c in short.items())) if short else ""
    scored = days_in(con, "ml.flight_predictions")
    start = cfg.scoring_start.isoformat()
    score_days = sorted(d for d in (set(feature_days) | (built - scored)) if d >= start and d in built)
    return MlPlan(feature_days, retrain and not short, score_days, waiting)


@dataclass(frozen=True)
class Retraining:
    """How far the features have moved from the training set the model was last trained on."""
    changed: dict[str, int]  # day -> labelled flights added, removed or relabelled since the training set
    reshaped: dict[str, int]  # day -> flights whose features alone changed (rolling aggregates of a restated day)
    shares: dict[str, float]  # split window -> changed flights / the window's flights in the training set
    threshold: float  # training.retrain_min_changed_share
    reason: str = ""  # set when retraining is due whatever the shares (no training set, other windows)

    @property
    def due(self) -> bool:
        return bool(self.reason) or any(share > self.threshold for share in self.shares.values())

    @property
    def flights(self) -> int:
        return sum(self.changed.values())

    def summary(self) -> str:
        shares = ", ".join(f"{w} {s:.2%}" for w, s in self.shares.items() if s) or "no window"
        return (f"{self.flights} labelled flight(s) added, removed or relabelled on {len(self.changed)} day(s) since the "
                f"last training set ({shares}; retraining above {self.threshold:.2%} of a split window), "
                f"{sum(self.reshaped.values())} more with changed features only")


def retraining(con, cfg: MlConfig, days: set[str]) -> Retraining:
    """Judge the split days whose features were rebuilt since the last training set (`days`) against
    that set: retraining is due when a window's labelled flights changed (added, removed, relabelled)
    by more than the configured share, or when there is no training set or its windows are not the
    configured ones. Rolling aggregates move for every flight a restated day feeds, so flights whose
    features alone changed are counted and shown but do not decide."""
    provenance = training_set.current_provenance(con)
    if provenance is None:
        return Retraining({}, {}, {}, cfg.retrain_min_changed_share, "no training set yet")
    held = provenance["splits"]
    configured = {w.name: {"start": w.start.isoformat(), "end": w.end.isoformat()} for w in cfg.windows}
    if {n: {"start": s["start"], "end": s["end"]} for n, s in held.items()} != configured:
        return Retraining({}, {}, {}, cfg.retrain_min_changed_share, "the split windows changed in the ML configuration")
    split_days = {d for w in cfg.windows for d in w.days()}
    found = training_set.changed_flights(con, sorted(days & split_days))
    changed = {d: n for d, (n, _) in found.items() if n}
    shares = {w.name: sum(n for d, n in changed.items() if w.start.isoformat() <= d <= w.end.isoformat())
              / max(held[w.name]["rows"], 1) for w in cfg.windows}
    return Retraining(changed, {d: n for d, (_, n) in found.items() if n}, shares, cfg.retrain_min_changed_share)


def _featured_ids(instance: dg.DagsterInstance) -> dict[str, int]:
    """Feature day -> storage id of its materialization, for the days materialized after the last training set."""
    featured = instance.event_log_storage.get_latest_storage_id_by_partition(FEATURES, dg.DagsterEventType.ASSET_MATERIALIZATION)
    trained = instance.fetch_materializations(TRAINING_SET, limit=1, ascending=False).records
    since = trained[0].storage_id if trained else 0
    return {day: storage_id for day, storage_id in featured.items() if storage_id > since}


def featured_since_training(instance: dg.DagsterInstance) -> set[str]:
    """Feature days materialized after the last training set: what the latest model has not seen as it is
    now (read from the instance, so deferred changes add up until a retraining)."""
    return set(_featured_ids(instance))


RETRAIN_WITH = "plumbline sync --retrain, or launch the train_model job from the UI"
JUDGED = "judged_features"  # the check's metadata: which feature materializations a deferral judged


def record_deferral(instance: dg.DagsterInstance, judged: Retraining) -> bool:
    """ml/delay_model's training_data_current check, reported without a run: WARN naming the restated
    days and flights while retraining waits, passing again when the features equal the training set.
    `plumbline sync` and the training sensor both record it here; a deferral already recorded for the
    same feature materializations is not recorded again. Returns whether it was recorded."""
    ids = _featured_ids(instance)
    seen = hashlib.sha256(",".join(f"{d}:{i}" for d, i in sorted(ids.items())).encode()).hexdigest()[:16]
    key = dg.AssetCheckKey(MODEL, names.TRAINING_DATA_CURRENT)
    latest = instance.event_log_storage.get_asset_check_execution_history(key, limit=1)
    if latest and isinstance(latest[0].evaluation, dg.AssetCheckEvaluation) \
            and latest[0].evaluation.metadata.get(JUDGED) == dg.MetadataValue.text(seen):
        return False
    if judged.flights:
        description = (f"trained on data restated since: {judged.summary()}. Retraining is deferred; "
                       f"{RETRAIN_WITH} retrains now")
    else:
        description = ("no labelled flight of the split windows was added, removed or relabelled since the training set "
                       f"the model was trained on ({sum(judged.reshaped.values())} with changed features only)")
    instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=MODEL, check_name=names.TRAINING_DATA_CURRENT, passed=not judged.flights,
        severity=dg.AssetCheckSeverity.WARN, description=description,
        metadata={"restated_days": dg.MetadataValue.json(sorted(judged.changed)), "changed_flights": judged.flights,
                  "changed_flights_by_day": dg.MetadataValue.json(judged.changed),
                  "features_changed_only_by_day": dg.MetadataValue.json(judged.reshaped),
                  "changed_share_by_window": dg.MetadataValue.json({w: round(v, 6) for w, v in judged.shares.items()}),
                  "retrain_min_changed_share": judged.threshold, "retrain_with": RETRAIN_WITH,
                  JUDGED: dg.MetadataValue.text(seen)}))
    return True
