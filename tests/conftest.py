"""Shared fixtures: an isolated PLUMBLINE_HOME per test and an open warehouse connection into it."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def plumbline_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh PLUMBLINE_HOME with an empty landing zone; settings read it at call time."""
    home = tmp_path / "home"
    (home / "landing").mkdir(parents=True)
    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    # Files written by a test are complete: take them at once (tests of settling set their own interval).
    monkeypatch.setenv("PLUMBLINE_SETTLE_SECONDS", "0")
    return home


@pytest.fixture
def warehouse_con(plumbline_home: Path):
    """A writable connection to the warehouse under plumbline_home, closed after the test."""
    from orchestration.warehouse import Warehouse

    with Warehouse().connect() as con:
        yield con



@pytest.fixture(scope="session")
def dagster_home_dir(tmp_path_factory: pytest.TempPathFactory):
    """Make real Dagster instance directories; on tmpfs when the machine has one, because the
    SQLite event log fsyncs every event and a year of partitions is thousands of events."""
    import shutil
    import tempfile

    made: list[Path] = []

    def make(name: str) -> Path:
        shm = Path("/dev/shm")
        path = Path(tempfile.mkdtemp(prefix=f"plumbline-{name}-", dir=shm)) if shm.is_dir() else tmp_path_factory.mktemp(name)
        made.append(path)
        return path

    yield make
    for path in made:
        shutil.rmtree(path, ignore_errors=True)
