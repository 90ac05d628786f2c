"""How `plumbline sync` ends: it closes the Dagster instance it opened (the run shards' write-ahead
logs are checkpointed then, not left to whatever the exit frees), and its process exempts the heap its
imports built from the exit's cycle collection (only its own process: a caller that goes on keeps collecting)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from orchestration.ops import cli


@pytest.fixture
def unfrozen():
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the test session collects as usual


def test_the_sync_command_closes_its_instance_and_its_process_spares_the_exit_collection(plumbline_home: Path, monkeypatch, unfrozen):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["sync"]) == 0  # called with its arguments: a caller that goes on, which keeps collecting
    assert gc.get_freeze_count() == 0, "a sync called from a longer-lived process froze its caller's heap"
    shards = plumbline_home / "dagster" / "history" / "runs"
    assert list(shards.glob("*.db")), "the sync ran no run"
    assert not list(shards.glob("*.db-wal")), "a run shard is still open after the sync"
    monkeypatch.setattr("sys.argv", ["plumbline", "sync"])
    assert cli.main() == 0  # the process's own command line, as the plumbline script calls it
    assert gc.get_freeze_count() > 0, "the sync command left its heap to the exit's collection"


def test_a_sync_given_an_instance_leaves_it_open(plumbline_home: Path, monkeypatch, dagster_home_dir):
    import dagster as dg

    from orchestration.ops.sync import DAGSTER_YAML, sync

    home = dagster_home_dir("given")
    (home / "dagster.yaml").write_bytes(DAGSTER_YAML.read_bytes())
    inst = dg.DagsterInstance.from_config(str(home))
    closed = []
    monkeypatch.setattr(inst, "dispose", lambda: closed.append(True))  # only counts: the instance stays the real one
    assert sync(say=lambda *_: None, dagster_instance=inst).ok
    assert closed == [], "sync closed an instance its caller owns"
    assert inst.get_runs(), "the run is in the caller's instance"
