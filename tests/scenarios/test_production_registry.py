"""The production model registry on this machine's PostgreSQL: MLflow's tracking and registry store
in a database of its own (PLUMBLINE_MLFLOW_URL), artifacts under the shared data path, and a model
registered, promoted, promoted again and rolled back through the production resources, with the
promotion record in the DuckLake catalog. The password in the URL reaches no table and no message."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg2
import pytest

from production_support import services

from orchestration.ml import config
from orchestration.ml.registry import CHAMPION, STATUS_TAG, history
from orchestration.resources import resources

pytestmark = pytest.mark.slow  # MLflow creates its schema in a new PostgreSQL database (~40 s of migrations)

PG = dict(host="127.0.0.1", port=5432, user="postgres")
PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"  # trust auth ignores it; it must show nowhere


@pytest.fixture
def databases():
    """Two fresh databases (MLflow's store, the DuckLake catalog), dropped after the test."""
    with services("plumbline_test_", ("mlflow", "catalog"), vhost=False) as svc:
        yield svc.databases


@pytest.fixture
def production(databases, tmp_path, monkeypatch):
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PLUMBLINE_MLFLOW_ARTIFACTS", "PLUMBLINE_ML_CONFIG"):
        monkeypatch.delenv(var, raising=False)
    data = tmp_path / "shared"
    monkeypatch.setenv("PLUMBLINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PLUMBLINE_DATA_PATH", str(data))
    monkeypatch.setenv("PLUMBLINE_MLFLOW_URL",
                       f"postgresql://{PG['user']}:{PASSWORD}@{PG['host']}:{PG['port']}/{databases['mlflow']}")
    monkeypatch.setenv("PLUMBLINE_CATALOG_URL", f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{databases['catalog']}")
    monkeypatch.chdir(tmp_path)  # MLflow's own default would be ./mlruns: nothing may land here
    return data, databases


def _model(threshold: float):
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])
    return LogisticRegression().fit(x, (x[:, 0] > threshold).astype(int))


def _register(registry, cfg, threshold: float) -> str:
    return registry.register(cfg, _model(threshold), fingerprint=f"threshold {threshold}", metrics={"auc": 1.0},
                             reference={"threshold": threshold},
                             provenance={"version": f"v{threshold}", "features": ["x"], "splits": {}, "contracts": {}})


def _query(db: str, sql: str) -> list[tuple]:
    con = psycopg2.connect(dbname=db, **PG)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        con.close()


def test_register_promote_and_roll_back_in_postgresql_with_artifacts_on_the_shared_path(production):
    import numpy as np

    data, dbs = production
    found = resources("production")
    registry, warehouse = found["model_registry"], found["warehouse"]
    cfg = config.load()
    assert not registry.is_local()
    assert registry.location() == f"postgresql://{PG['host']}:{PG['port']}/{dbs['mlflow']}"

    first, second = _register(registry, cfg, 1.5), _register(registry, cfg, 2.5)
    assert (first, second) == ("1", "2")
    with warehouse.connect() as con:
        assert registry.promote(con, cfg, first, actor="gate", reason="first champion") is None
        assert registry.promote(con, cfg, second, actor="oncall@example.com", reason="incident 7") == first
        assert registry.rollback(con, cfg, actor="oncall@example.com", reason="incident 7 over") == (first, second)
        recorded = [(action, version, previous) for _, action, version, previous, _, _ in history(con, cfg)]
    assert recorded == [("promote", first, None), ("promote", second, first), ("rollback", first, second)]
    assert registry.champion(cfg) == first
    assert registry.version(cfg, second).tags[STATUS_TAG] == "rolled_back"

    # the model and its JSON artifacts come back from the shared path, in a fresh resource as another worker has
    other = resources("production")["model_registry"]
    assert list(other.load(cfg, first).predict(np.array([[0.2], [3.8]]))) == [0, 1]
    assert other.reference(cfg, second) == {"threshold": 2.5}

    # tracking and registry are MLflow's tables in the PostgreSQL database
    assert _query(dbs["mlflow"], "SELECT name FROM registered_models") == [(cfg.model_name,)]
    assert sorted(_query(dbs["mlflow"], "SELECT version FROM model_versions")) == [(1,), (2,)]
    assert _query(dbs["mlflow"], "SELECT alias, version FROM registered_model_aliases") == [(CHAMPION, 1)]
    assert len(_query(dbs["mlflow"], "SELECT run_uuid FROM runs")) == 2
    root = (data / "mlflow").resolve().as_uri()
    assert _query(dbs["mlflow"], f"SELECT artifact_location FROM experiments WHERE name = '{cfg.experiment}'") == [(root,)]
    uris = [u for (u,) in _query(dbs["mlflow"], "SELECT artifact_uri FROM runs")]
    assert uris and all(u.startswith(root + "/") for u in uris), uris
    models = [u for (u,) in _query(dbs["mlflow"], "SELECT artifact_location FROM logged_models")]
    assert len(models) == 2 and all(u.startswith(root + "/") for u in models), models

    # artifacts are files under the data path; nothing under the home or the working directory
    files = {p.name for p in (data / "mlflow").rglob("*") if p.is_file()}
    assert {"MLmodel", "provenance.json", "drift_reference.json"} <= files, files
    home = Path.cwd() / "home"
    assert not (home / "mlflow").exists() and not (Path.cwd() / "mlruns").exists()

    # the password reaches no MLflow table and no promotion record
    dump = _query(dbs["mlflow"], "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM experiments) t") + \
        _query(dbs["mlflow"], "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM runs) t") + \
        _query(dbs["mlflow"], "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM model_versions) t") + \
        _query(dbs["mlflow"], "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM tags) t") + \
        _query(dbs["mlflow"], "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM model_version_tags) t")
    assert PASSWORD not in str(dump)
    with warehouse.connect(read_only=True) as con:
        assert PASSWORD not in str(con.execute("SELECT * FROM ops.model_promotions").fetchall())
    with pytest.raises(Exception) as raised:
        registry.version(cfg, "99")
    assert PASSWORD not in str(raised.value) and dbs["mlflow"] in str(raised.value)


OPEN_STORE = ("from orchestration.ml.registry import ModelRegistry; "
              "print(ModelRegistry(from_environment=True).client().search_experiments()[0].name)")


def test_workers_opening_an_empty_store_at_once_all_get_it(production):
    """MLflow creates its tables on first open: without plumbline's lock, two processes doing that at
    once collide (a duplicate key on alembic_version) and one fails."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE], cwd=repo, env=dict(os.environ),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    assert [(code, out.strip()) for code, out, _ in results] == [(0, "Default")] * 3, [err[-2000:] for _, _, err in results]
    assert PASSWORD not in "".join(out + err for _, out, err in results)
