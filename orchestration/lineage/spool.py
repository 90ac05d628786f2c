"""Delivery of lineage events that never fails or stalls a run, and loses none.

Every event is first written durably to a spool on disk ($PLUMBLINE_HOME/lineage/spool/, one file
per event, numbered in emission order), before any transport is built; then the spool is flushed in
order through the configured client, each event rebuilt as a typed event. A file is deleted only
after the transport acknowledged its event (an asynchronous transport is waited on, within a bound,
and its failure count checked; an error a transport logs while sending counts as a failure), and the
first failure stops the flush so later events never overtake earlier ones; the next flush (the next
run, `plumbline sync` or the lineage_spool sensor) resumes where it stopped. A lock keeps two flushes
from sending the same event twice. Delivery is at least once: a crash between an acknowledgement and
the deletion re-sends that event, with the same identity facet.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from openlineage.client.transport.composite import CompositeTransport
from openlineage.client.transport.transform.transform import TransformTransport

from orchestration import settings
from orchestration.lineage import typed

log = logging.getLogger(__name__)


# Bounds that keep a slow backend from holding a run: per event, and per flush.
ACK_TIMEOUT = 30.0
FLUSH_BUDGET = 120.0
TRANSPORT_LOGGER = "openlineage.client.transport"  # every transport module logs under it


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


def _last_sequence(d: Path) -> int:
    """The highest number used so far; the files themselves count too, so a counter that a crash
    rolled back can never make a new event overwrite a spooled one."""
    counter = d / ".sequence"
    n = int(counter.read_text() or 0) if counter.exists() else 0
    return max([n, *(int(p.stem) for p in d.glob("*.json") if p.stem.isdigit())])


def already_spooled(marker: str) -> bool:
    return (spool_dir().parent / "emitted" / marker).exists()


def append(events: list[dict], marker: str | None = None) -> bool:
    """Write events to the spool in order; `marker` records a Dagster run as spooled, so a run that
    both a sensor and `plumbline sync` hand over is spooled once (checked under the lock)."""
    with _locked() as d:
        if marker and already_spooled(marker):
            return False
        n = _last_sequence(d)
        for event in events:
            n += 1
            path = d / f"{n:012d}.json"
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w") as f:
                f.write(json.dumps(event, sort_keys=True))
                f.flush()
                os.fsync(f.fileno())  # on disk before the run is marked spooled
            os.replace(tmp, path)  # a crash never leaves half an event under a final name
        (d / ".sequence").write_text(str(n))
        _sync_dir(d)
        if marker:
            done = d.parent / "emitted"
            done.mkdir(exist_ok=True)
            (done / marker).touch()
            _sync_dir(done)
        return True


def _sync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pending() -> list[Path]:
    d = spool_dir()
    return sorted(d.glob("*.json")) if d.is_dir() else []


def flush(client, ack_timeout: float = ACK_TIMEOUT, budget: float = FLUSH_BUDGET) -> FlushResult:
    """Send spooled events in order through `client` until the first failure, an event left
    unacknowledged after `ack_timeout` seconds, or `budget` seconds in all; never raises."""
    sent = 0
    deadline = time.monotonic() + budget
    try:
        with _locked():
            files = pending()
            for i, path in enumerate(files):
                left = len(files) - i
                if time.monotonic() > deadline:
                    return FlushResult(sent, left, f"flush stopped after {budget:.0f}s; the rest waits for the next flush")
                try:
                    _send(client, json.loads(path.read_text()), ack_timeout)
                except Exception as e:  # the backend is down or slow: keep this and every later event
                    log.warning("OpenLineage backend did not take event %s (%s: %s); %d event(s) kept in %s for the next flush",
                                path.name, type(e).__name__, e, left, spool_dir())
                    return FlushResult(sent, left, f"{type(e).__name__}: {e}")
                path.unlink()
                sent += 1
            return FlushResult(sent, 0)
    except Exception as e:  # a broken spool must not break a run either
        log.warning("OpenLineage spool flush failed: %s", e)
        return FlushResult(sent, len(pending()), f"{type(e).__name__}: {e}")


class NotAcknowledged(Exception):
    """An asynchronous transport failed the event or did not confirm it in time."""


def _send(client, event: dict, ack_timeout: float) -> None:
    """Emit one event and return once every transport acknowledged it; raise otherwise."""
    transports = _members(client.transport)
    failed_before = _failed(transports)
    with _transport_errors() as errors:
        try:
            typed_event = typed.run_event(event)
        except Exception as e:  # not a shape this client knows: send it as it was spooled rather than hold the spool
            log.warning("OpenLineage event could not be rebuilt as a typed event (%s); sent as spooled", e)
            client.transport.emit(event)
        else:
            client.emit(typed_event)
        for t in transports:
            wait = getattr(t, "wait_for_completion", None)
            if callable(wait) and not wait(ack_timeout):
                raise NotAcknowledged(f"{t.kind} transport did not confirm delivery within {ack_timeout:.0f}s")
    if _failed(transports) > failed_before:
        raise NotAcknowledged("the transport reported the event as failed")
    if errors.records:
        raise NotAcknowledged(f"the transport logged: {errors.records[0].getMessage()[:300]}")


class _ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _transport_errors() -> Iterator[_ErrorRecords]:
    """Errors the transports log while one event is sent: kafka reports a message the broker never
    took only in its delivery callback's log record, and returns as if it were delivered."""
    handler = _ErrorRecords()
    logger = logging.getLogger(TRANSPORT_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _members(transport) -> list:
    """The transports that actually send: a composite's members, a transform's inner transport."""
    if isinstance(transport, CompositeTransport):
        return [m for t in transport.transports for m in _members(t)]
    if isinstance(transport, TransformTransport):
        return _members(transport.transport)
    return [transport]


def _failed(transports: list) -> int:
    """Events the asynchronous transports counted as failed so far."""
    return sum(int(t.get_stats().get("failed", 0)) for t in transports if callable(getattr(t, "get_stats", None)))
