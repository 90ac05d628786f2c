"""Shared fixtures: an isolated PLUMBLINE_HOME per test and an open warehouse connection into it;
the demo year fed and synced once per session, pointed at by a module or copied for a test."""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
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
    from orchestration.warehouse_resource import Warehouse

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test on the session's synced demo year is slow, however it reaches it."""
    for item in items:
        if "synced_demo_year" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


# Settings the demo year is built and read without: lineage to the default JSON lines under the
# home, MLflow in its local store under the home, the shipped ML configuration.
DEMO_UNSET = ("OPENLINEAGE_URL", "OPENLINEAGE_DISABLED", "OPENLINEAGE_CONFIG",
              "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PLUMBLINE_ML_CONFIG")


@dataclass(frozen=True)
class SyncedHome:
    home: Path           # PLUMBLINE_HOME
    dagster_home: Path   # DAGSTER_HOME
    manifest: dict       # what write_feed planted
    report: object       # what sync returned
    said: list[str]      # what sync said
    logged: list[str]    # warnings the lineage emitter logged during sync


class _Recorder(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _point_at(mp: pytest.MonkeyPatch, home: Path, dagster_home: Path) -> None:
    mp.setenv("PLUMBLINE_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(dagster_home))
    for var in DEMO_UNSET:
        mp.setenv(var, "")  # recorded first, so undo also removes what MLflow or Dagster export meanwhile
        mp.delenv(var)


@pytest.fixture(scope="session")
def synced_demo_year(dagster_home_dir) -> SyncedHome:
    """`plumbline feed --profile demo` (seed 13) and one `plumbline sync` of the whole year, built
    once per session on tmpfs. The environment it was built in is undone before any test runs:
    use `demo_year` (a module points at it, read only) or `demo_year_copy` (a test's own copy)."""
    from orchestration.demo.feed import write_feed
    from orchestration.ops.sync import sync

    home, dagster_home = dagster_home_dir("demo-year-home"), dagster_home_dir("demo-year")
    said: list[str] = []
    logged = _Recorder()
    with pytest.MonkeyPatch.context() as mp:
        # built in whichever module asks first: none of that module's settings may leak into the year
        for var in [v for v in os.environ if v.startswith(("PLUMBLINE_", "OPENLINEAGE", "MLFLOW_"))]:
            mp.delenv(var)
        _point_at(mp, home, dagster_home)
        mp.chdir(home)  # no openlineage.yml here; anything written relative to the working directory stays in home
        manifest = write_feed(home, profile="demo", seed=13)
        logging.getLogger("orchestration.lineage").addHandler(logged)
        try:
            report = sync(say=said.append)
        finally:
            logging.getLogger("orchestration.lineage").removeHandler(logged)
    assert report.ok, report.runs
    return SyncedHome(home, dagster_home, manifest, report, said, logged.messages)


@pytest.fixture(scope="module")
def demo_year(synced_demo_year: SyncedHome):
    """PLUMBLINE_HOME and DAGSTER_HOME on the session's synced demo year for one module, which
    must not change it (a test that does takes `demo_year_copy`)."""
    with pytest.MonkeyPatch.context() as mp:
        _point_at(mp, synced_demo_year.home, synced_demo_year.dagster_home)
        yield synced_demo_year


@pytest.fixture
def demo_year_copy(demo_year: SyncedHome, tmp_path: Path, dagster_home_dir, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private copy of the synced demo year (warehouse, bronze, lineage, MLflow store, Dagster
    instance) for one test to change; MLflow's absolute artifact paths are re-based onto the copy
    when its store is opened there. Returns the copied PLUMBLINE_HOME."""
    home = tmp_path / "home"
    shutil.copytree(demo_year.home, home)
    dagster_home = dagster_home_dir("demo-year-copy")
    shutil.rmtree(dagster_home)
    shutil.copytree(demo_year.dagster_home, dagster_home)
    _point_at(monkeypatch, home, dagster_home)
    return home
