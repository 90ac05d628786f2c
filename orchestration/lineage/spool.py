"""Delivery of lineage events that never fails or stalls a run, and loses none.

Every event is first written to a spool on disk ($PLUMBLINE_HOME/lineage/spool/, one file per
event, numbered in emission order), then the spool is flushed in order through the configured
transport. A file is deleted only after the backend acknowledged it, and the first failure stops
the flush so later events never overtake earlier ones; the next flush (the next run, `plumbline
sync` or the lineage_spool sensor) resumes where it stopped. A lock keeps two flushes from
sending the same event twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from orchestration import settings

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    sent: int
    pending: int
    error: str | None = None


def spool_dir() -> Path:
    return settings.plumbline_home() / "lineage" / "spool"


@contextlib.contextmanager
def _locked() -> Iterator[Path]:
    d = spool_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield d
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _next_sequence(d: Path) -> int:
    counter = d / ".sequence"
    n = int(counter.read_text() or 0) if counter.exists() else 0
    counter.write_text(str(n + 1))
    return n + 1


def already_spooled(marker: str) -> bool:
    return (spool_dir().parent / "emitted" / marker).exists()


def append(events: list[dict], marker: str | None = None) -> bool:
    """Write events to the spool in order; `marker` records a Dagster run as spooled, so a run that
    both a sensor and `plumbline sync` hand over is spooled once (checked under the lock)."""
    with _locked() as d:
        if marker and already_spooled(marker):
            return False
        for event in events:
            path = d / f"{_next_sequence(d):012d}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(event, sort_keys=True))
            os.replace(tmp, path)  # a crash never leaves half an event under a final name
        if marker:
            done = d.parent / "emitted"
            done.mkdir(exist_ok=True)
            (done / marker).touch()
        return True


def pending() -> list[Path]:
    d = spool_dir()
    return sorted(d.glob("*.json")) if d.is_dir() else []


def flush(transport) -> FlushResult:
    """Send spooled events in order until the first failure; never raises."""
    sent = 0
    try:
        with _locked():
            files = pending()
            for i, path in enumerate(files):
                try:
                    transport.emit(json.loads(path.read_text()))
                except Exception as e:  # the backend is down or slow: keep this and every later event
                    log.warning("OpenLineage backend did not take event %s (%s); %d event(s) kept in %s for the next flush",
                                path.name, type(e).__name__, len(files) - i, spool_dir())
                    return FlushResult(sent, len(files) - i, f"{type(e).__name__}: {e}")
                path.unlink()
                sent += 1
            return FlushResult(sent, 0)
    except Exception as e:  # a broken spool must not break a run either
        log.warning("OpenLineage spool flush failed: %s", e)
        return FlushResult(sent, len(pending()), f"{type(e).__name__}: {e}")
