"""The ML configuration (orchestration/ml/config.yaml, or $PLUMBLINE_ML_CONFIG), checked on load."""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT = Path(__file__).with_name("config.yaml")
SPLITS = ("train", "validation", "test")
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")  # registered model and experiment names reach MLflow filters


class MlConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Window:
    name: str
    start: dt.date
    end: dt.date

    def overlaps(self, other: "Window") -> bool:
        return self.start <= other.end and other.start <= self.end

    def days(self) -> list[str]:
        return [(self.start + dt.timedelta(days=i)).isoformat() for i in range((self.end - self.start).days + 1)]


@dataclass(frozen=True)
class MlConfig:
    path: Path
    model_name: str
    experiment: str
    params: dict
    rolling_days: int
    delay_minutes: int
    windows: tuple[Window, ...]
    promotion: dict
    scoring_start: dt.date
    drift: dict
    min_window_coverage: float
    retrain_min_changed_share: float

    def window(self, name: str) -> Window:
        return next(w for w in self.windows if w.name == name)

    def overlapping_windows(self) -> list[tuple[str, str]]:
        return [(a.name, b.name) for i, a in enumerate(self.windows) for b in self.windows[i + 1:] if a.overlaps(b)]


def path() -> Path:
    return Path(os.environ.get("PLUMBLINE_ML_CONFIG") or DEFAULT)


def load(file: Path | None = None) -> MlConfig:
    file = Path(file or path())
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise MlConfigError(f"{file}: cannot read the ML configuration: {e}") from e

    def get(*keys, kind=None):
        node = raw
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise MlConfigError(f"{file}: missing {'.'.join(keys)} (see {DEFAULT} for the expected shape)")
            node = node[k]
        if kind is not None and not isinstance(node, kind):
            expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise MlConfigError(f"{file}: {'.'.join(keys)} must be {expected}, got {node!r}")
        return node

    def date(*keys) -> dt.date:
        value = get(*keys)
        try:
            return value if isinstance(value, dt.date) else dt.date.fromisoformat(str(value))
        except ValueError:
            raise MlConfigError(f"{file}: {'.'.join(keys)} is not a date (YYYY-MM-DD): {value!r}") from None

    def share(*keys, absent: float) -> float:
        if keys[-1] not in (raw.get(keys[0]) or {}):
            return absent
        value = float(get(*keys, kind=(int, float)))
        if not 0 <= value <= 1:
            raise MlConfigError(f"{file}: {'.'.join(keys)} is a share of rows, between 0 and 1: {value!r}")
        return value

    windows = []
    for name in SPLITS:
        w = Window(name, date("split", name, "start"), date("split", name, "end"))
        if w.end < w.start:
            raise MlConfigError(f"{file}: split.{name} ends ({w.end}) before it starts ({w.start})")
        windows.append(w)
    for key in ("name", "experiment"):
        if not NAME.match(str(get("model", key))):
            raise MlConfigError(f"{file}: model.{key} {get('model', key)!r} must be letters, digits, '_', '.' or '-', "
                                "starting with a letter")
    return MlConfig(
        path=file, model_name=get("model", "name", kind=str), experiment=get("model", "experiment", kind=str),
        params=dict(get("model", "params", kind=dict)), rolling_days=get("features", "rolling_days", kind=int),
        delay_minutes=get("features", "delay_minutes", kind=int), windows=tuple(windows),
        promotion=dict(get("promotion", kind=dict)), scoring_start=date("scoring", "start"), drift=dict(get("drift", kind=dict)),
        min_window_coverage=float(get("training", "min_window_coverage", kind=(int, float))),
        retrain_min_changed_share=share("training", "retrain_min_changed_share", absent=0.0))  # a file from before it: any change retrains
