"""runs.Watch: its thread ends as soon as the run it watches ends, not at the loop's next look at
the pool (which would add up to CHECK_EVERY_S to every run of a sync)."""

from __future__ import annotations

import threading

import dagster as dg

from orchestration.ops import runs


def test_the_watch_ends_with_its_run_not_at_its_next_look(monkeypatch):
    monkeypatch.setattr(runs, "CHECK_EVERY_S", 3600.0)  # a loop left to its select would outlive the test
    instance = dg.DagsterInstance.ephemeral()
    watches = []

    def watched_run():
        with runs.Watch(instance, "r" * 36, "ingest_deliveries", print, "plumbline sync", lambda run_id: None) as w:
            watches.append(w)

    t = threading.Thread(target=watched_run, daemon=True)
    t.start()
    t.join(timeout=120)
    assert not t.is_alive(), "the watch's thread still waits in its select after the run ended"
    assert watches[0].signum is None and not watches[0]._thread.is_alive()
