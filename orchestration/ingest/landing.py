"""The landing zone: which files are deliveries, for which source, and what they are."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
# The delivery time a feed stamps into a name, e.g. flights_20130102T0600Z.csv
_DELIVERED_AT = re.compile(r"(\d{8})T(\d{4})(\d{2})?Z")
_SAFE_NAME = re.compile(r"^[^\x00-\x1f\x7f]+$")


@dataclass(frozen=True)
class Delivery:
    source: str
    path: Path            # absolute
    relative: str         # POSIX path relative to the landing zone
    format: str | None    # csv | jsonl | parquet; None when the name is not a delivery
    compression: str | None
    problem: str | None = None  # set when the file must be rejected before it is read

    @property
    def delivered_at(self) -> dt.datetime | None:
        m = _DELIVERED_AT.search(self.path.name)
        if not m:
            return None
        day, hhmm, ss = m.group(1), m.group(2), m.group(3) or "00"
        try:
            return dt.datetime.strptime(day + hhmm + ss, "%Y%m%d%H%M%S").replace(tzinfo=dt.timezone.utc)
        except ValueError:
            return None


def classify(name: str) -> tuple[str | None, str | None]:
    """(format, compression) from a file name, or (None, None) when it is not a delivery."""
    lower = name.lower()
    compression = None
    if lower.endswith(".gz"):
        compression, lower = "gzip", lower[:-3]
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt, compression
    return None, None


def is_in_progress(name: str) -> bool:
    return name.startswith((".", "_"))


def discover(landing: Path, source: str) -> list[Delivery]:
    """Every delivery under landing/<source>/, sorted by path; unsafe files come back with a problem."""
    root = landing / source
    if not root.is_dir():
        return []
    real_root = root.resolve()
    found = []
    for path in sorted(root.rglob("*")):
        rel_parts = path.relative_to(root).parts
        if any(is_in_progress(p) for p in rel_parts):
            continue
        if path.is_dir():
            if path.is_symlink():  # never followed: it could lead anywhere; say so instead of skipping silently
                found.append(Delivery(source, path, path.relative_to(landing).as_posix(), None, None,
                                      "a symlinked directory is not followed: move its files into the landing zone"))
            continue
        fmt, compression = classify(path.name)
        if fmt is None:
            continue
        relative = path.relative_to(landing).as_posix()
        problem = None
        resolved = path.resolve()
        if not resolved.is_relative_to(real_root):
            problem = f"path resolves to {resolved}, outside the landing zone {real_root}: refused (move the file into landing/{source}/)"
        elif not _SAFE_NAME.match(relative):
            problem = "file name contains control characters: refused (rename the file)"
        elif not resolved.is_file():
            problem = "not a regular file"
        found.append(Delivery(source, path, relative, fmt, compression, problem))
    return found


SETTLE_SECONDS_DEFAULT = 2.0


def settle_seconds() -> float:
    """How long a file must stay unchanged before it is taken (PLUMBLINE_SETTLE_SECONDS)."""
    raw = os.environ.get("PLUMBLINE_SETTLE_SECONDS", "")
    try:
        return max(0.0, float(raw)) if raw.strip() else SETTLE_SECONDS_DEFAULT
    except ValueError:
        raise ValueError(f"PLUMBLINE_SETTLE_SECONDS={raw!r} is not a number of seconds") from None


def file_state(path: Path) -> tuple[int, int] | None:
    """(size, mtime_ns), or None when the file cannot be stat'ed (it vanished, or is not reachable)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def still_being_written(seconds: float) -> str:
    return (f"still being written: its size or modification time changed within the last {seconds:g}s "
            "(PLUMBLINE_SETTLE_SECONDS); not taken yet, the next ingest takes it once it stops changing")


def settle(deliveries: list[Delivery], seconds: float | None = None,
           sleep=time.sleep) -> tuple[list[Delivery], list[Delivery]]:
    """(settled, still being written), each in the given order.

    A file last modified `seconds` or more ago is settled. Younger ones (or ones dated in the future)
    are watched together, once, for the rest of the interval: those that did not change are settled.
    """
    seconds = settle_seconds() if seconds is None else seconds
    if seconds <= 0:
        return list(deliveries), []
    now = time.time()
    young: dict[str, tuple[Delivery, tuple[int, int]]] = {}
    for d in deliveries:
        state = None if d.problem else file_state(d.path)
        if state is not None and now - state[1] / 1e9 < seconds:
            young[d.relative] = (d, state)
    if young:
        newest = max(state[1] for _, state in young.values()) / 1e9
        sleep(seconds - (now - newest) if now >= newest else seconds)  # until the newest is `seconds` old
    moving = {rel for rel, (d, state) in young.items() if file_state(d.path) != state}
    return [d for d in deliveries if d.relative not in moving], [d for d in deliveries if d.relative in moving]


def content_hash(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
