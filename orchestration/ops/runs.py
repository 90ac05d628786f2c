"""Runs plumbline executes in its own process (sync, dlq replay/release, backfill --in-process): who
owns them, whether that process still lives, what a run waiting for a pool slot waits for, and how
it stops on SIGTERM or SIGINT.

Such a run has no run worker that Dagster's run monitoring could watch: when its process dies
(kill -9, out of memory) nothing ends the run, and the slot it claimed in the `warehouse` pool is
held for ever. So each run records its process in its tags, and any later plumbline command that
finds that process gone marks the run failed, frees its slots and emits its lineage. Runs launched
by the daemon or the webserver carry no such tags; Dagster's run monitoring stays in charge of them.
"""

from __future__ import annotations

import datetime as dt
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg

PID_TAG = "plumbline/pid"
HOST_TAG = "plumbline/host"
PROCESS_START_TAG = "plumbline/process_start"  # tells a reused pid (a container's pid 1) from the run's process

IN_PROGRESS = [dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
               dg.DagsterRunStatus.CANCELING]
CHECK_EVERY_S = 2.0      # how often a waiting run looks at the pool
FIRST_REPORT_S = 3.0     # a wait shorter than this (a slot passed between two steps) is not worth a line
REPORT_EVERY_S = 15.0    # then one line per this many seconds while the wait lasts
STOP_GRACE_S = 10.0      # a step that is running gets this long to end the run itself after a signal


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGINT stopped a plumbline command; its run (if any) is canceled and freed."""

    def __init__(self, signum: int, run_id: str | None = None, job: str | None = None):
        super().__init__(signum)
        self.signum, self.run_id, self.job = signum, run_id, job

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def line(self, command: str) -> str:
        what = (f"; run {self.run_id} ({self.job}) marked canceled, its pool slots freed, ABORT lineage emitted"
                if self.run_id else "")
        return f"{command}: stopped by {signal.Signals(self.signum).name}{what}"


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner_tags() -> dict[str, str]:
    """Tags naming this process as the one executing a run."""
    tags = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    if (started := _process_start(os.getpid())) is not None:
        tags[PROCESS_START_TAG] = started
    return tags


def process_alive(tags: dict) -> bool | None:
    """Whether the process named in a run's tags still runs; None when that cannot be known here
    (a run not started by plumbline, or started on another host)."""
    pid, host = tags.get(PID_TAG), tags.get(HOST_TAG)
    if not pid or host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    started, now = tags.get(PROCESS_START_TAG), _process_start(int(pid))
    return started is None or now is None or started == now


def owner(run: dg.DagsterRun) -> str:
    """'pid 123 on host' for a plumbline run, or who launched it otherwise."""
    if PID_TAG in run.tags:
        return f"pid {run.tags[PID_TAG]} on {run.tags.get(HOST_TAG, '?')}"
    return "launched by the Dagster daemon or webserver"


# emit_lineage(run_id) emits the lineage of a run ended here (its terminal FAIL or ABORT event); the
# caller passes it because it knows the code location the run belongs to.
EmitLineage = Callable[[str], object]


def reclaim(instance: dg.DagsterInstance, run: dg.DagsterRun, say, emit_lineage: EmitLineage) -> None:
    """End a run whose process is gone: failed, slots freed, lineage emitted, and say so."""
    message = (f"The process that executed this run ({owner(run)}) is gone: killed or crashed before the run ended. "
               "Marked failed by plumbline; its pool slots were freed.")
    instance.report_run_failed(run, message=message)
    instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    emit_lineage(run.run_id)
    say(f"run {run.run_id} ({run.job_name}, {owner(run)}) died before it finished: marked failed, "
        "its warehouse pool slot freed, FAIL lineage emitted")


def reclaim_dead_runs(instance: dg.DagsterInstance, say, emit_lineage: EmitLineage) -> list[str]:
    """Fail and free every unfinished plumbline run on this host whose process is gone, and free
    the slots a finished run still holds."""
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_PROGRESS, tags={HOST_TAG: socket.gethostname()}))
    dead = []
    for record in records:
        run = record.dagster_run
        if process_alive(run.tags) is False:
            reclaim(instance, run, say, emit_lineage)
            dead.append(run.run_id)
    storage = instance.event_log_storage
    holding = {s.run_id for info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).values()
               for s in [*info.claimed_slots, *info.pending_steps]}
    for run_id in holding - set(dead):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            say(f"run {run_id} ({run.job_name if run else 'deleted'}) had ended but still held a pool slot: freed")
    return dead


def cancel(instance: dg.DagsterInstance, run_id: str, signum: int, emit_lineage: EmitLineage) -> bool:
    """Mark a run stopped by a signal canceled, free its slots and emit its lineage. False when
    there was nothing to cancel: the run was never created, or it succeeded before the signal."""
    run = instance.get_run_by_id(run_id)
    if run is None or run.status == dg.DagsterRunStatus.SUCCESS:
        return False
    # a step interrupted before the CANCELING mark was seen ends the run FAILURE: it was canceled all the same
    if run.status != dg.DagsterRunStatus.CANCELED:
        instance.report_run_canceled(run, message=f"{signal.Signals(signum).name} received: run stopped by plumbline")
    emit_lineage(run_id)
    # last: a step still queued in this process re-queues itself until the process exits
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)
    return True


def _since(ts: dt.datetime | float | None) -> str:
    if ts is None:
        return "?"
    when = ts if isinstance(ts, dt.datetime) else dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return f"{when.astimezone(dt.timezone.utc):%H:%M:%S} UTC, {time.time() - when.timestamp():.0f}s ago"


def install_signal_handlers() -> None:
    """Outside a run, SIGTERM and SIGINT raise Stopped (inside one, Dagster's own handlers take over
    and the Watch below acts). Only in the main thread, and never over a handler someone else set."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop(signum, _frame):
        raise Stopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        if signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler):
            signal.signal(sig, stop)


class Watch:
    """Beside a run executing in this process: while it waits for a pool slot, say who holds it
    (and reclaim the slot of a holder whose process is gone); on SIGTERM or SIGINT, stop it.

    Dagster's in-process executor notes a signal but does not look at it while a step waits for a
    slot, so the watch learns of signals through a wakeup fd and, if the run does not end by itself
    within seconds, cancels it, frees its slots, emits its lineage and exits the process."""

    def __init__(self, instance: dg.DagsterInstance, run_id: str, job: str, say, command: str, emit_lineage: EmitLineage):
        self.instance, self.run_id, self.job, self.say, self.command = instance, run_id, job, say, command
        self.emit_lineage = emit_lineage
        self.signum: int | None = None
        self._done = threading.Event()
        self._old_fd: int | None = None

    def __enter__(self) -> Watch:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)
        if threading.current_thread() is threading.main_thread():
            self._old_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._loop, name=f"plumbline-watch-{self.run_id[:8]}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._wake()
        self._thread.join()
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
        self._r.close()
        self._w.close()

    def _wake(self) -> None:
        """End the loop's select now rather than at its next CHECK_EVERY_S: every run would otherwise
        end up to that long after its last step (0 is no signal number, so it reads as none)."""
        try:
            self._w.send(b"\0")
        except OSError:
            pass  # the buffer is full of signal numbers: the loop is awake already

    def _loop(self) -> None:
        last_report = None
        while not self._done.is_set():
            ready, _, _ = select.select([self._r], [], [], CHECK_EVERY_S)
            if ready:
                signums = [s for s in self._r.recv(64) if s in (signal.SIGTERM, signal.SIGINT)]
                if signums:
                    self._stop(signums[-1])
                    return
            if self._done.is_set():
                return
            try:
                last_report = self._look_at_the_pool(last_report)
            except Exception as e:  # the watch must never break the run it watches
                self.say(f"  (could not read the pool state: {type(e).__name__}: {e})")

    def _waits(self) -> list[tuple]:
        """(pool, our oldest queued step, the slots' holders, the pool's state) for every pool this run waits on."""
        storage = self.instance.event_log_storage
        out = []
        for key, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
            queued = [p for p in info.pending_steps if p.run_id == self.run_id and p.assigned_timestamp is None]
            if queued:
                holders = [s for s in info.claimed_slots if s.run_id != self.run_id]
                out.append((key, min(queued, key=lambda p: p.enqueued_timestamp), holders, info))
        return out

    def _look_at_the_pool(self, last_report: float | None) -> float | None:
        for key, queued, holders, info in self._waits():
            lines = []
            for slot in holders:
                run = self.instance.get_run_by_id(slot.run_id)
                if run is None:
                    continue
                if not run.is_finished and process_alive(run.tags) is False:
                    reclaim(self.instance, run, self.say, self.emit_lineage)
                    continue
                assigned = next((p.assigned_timestamp for p in info.pending_steps
                                 if p.run_id == slot.run_id and p.step_key == slot.step_key and p.assigned_timestamp), None)
                started = assigned or (self.instance.get_run_record_by_id(run.run_id).start_time)
                lines.append(f"run {run.run_id} ({run.job_name}, step {slot.step_key}, {owner(run)}) since {_since(started)}")
            waited = time.time() - queued.enqueued_timestamp.timestamp()
            due = last_report is None and waited >= FIRST_REPORT_S or (
                last_report is not None and time.monotonic() - last_report >= REPORT_EVERY_S)
            if lines and due:
                self.say(f"  waiting for the {key} pool for step {queued.step_key} ({waited:.0f}s so far); held by "
                         + "; ".join(lines))
                last_report = time.monotonic()
        return last_report

    def _stop(self, signum: int) -> None:
        self.signum = signum
        run = self.instance.get_run_by_id(self.run_id)
        if run is not None and not run.is_finished:
            self.instance.report_run_canceling(run, message=f"{signal.Signals(signum).name} received: stopping the run")
        # a running step is interrupted by Dagster and ends the run; a step queued for a slot never is
        deadline = time.monotonic() + STOP_GRACE_S
        while not self._done.wait(0.2):
            if time.monotonic() > deadline or self._waits():
                break
        if self._done.is_set():
            return  # the run ended in the main thread, which finishes the stop
        cancel(self.instance, self.run_id, signum, self.emit_lineage)
        print(Stopped(signum, self.run_id, self.job).line(self.command), file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(128 + signum)
