"""Which ML partitions a change in the data makes stale, in one place for `plumbline sync` and the
sensors: feature days that read a changed day (its rolling window included), whether the training
set's windows are touched, and which days need scoring."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from orchestration.ml import features
from orchestration.ml.config import MlConfig
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
