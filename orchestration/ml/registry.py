"""The model registry: MLflow, where ML engineers already look.

`ModelRegistry` is a resource: the deployment mapping (orchestration/resources.py) says where its
tracking store, registry and artifacts are, and every MLflow call is given those URIs explicitly;
none is exported to the environment. Left empty (the embedded deployment), tracking and registry
are MLFLOW_TRACKING_URI and MLFLOW_REGISTRY_URI when the user set them, else a SQLite store with
artifacts under $PLUMBLINE_HOME/mlflow. MLflow records absolute artifact URIs, so a home that was
copied or moved has them re-based onto where it is now before the store is opened. The production
deployment (`from_environment`) reads its store from PLUMBLINE_MLFLOW_URL (a PostgreSQL URL: MLflow's
SQLAlchemy store, tracking and registry in one database) and keeps artifacts under the shared data
path, $PLUMBLINE_MLFLOW_ARTIFACTS else $PLUMBLINE_DATA_PATH/mlflow, where every worker reads them;
nothing is re-based there. Addresses are shown through location(), which drops credentials. The champion is
the MLflow alias `champion`; every promotion, rejection and rollback is recorded twice: as tags on
the model version (what the MLflow UI shows) and as a row in ops.model_promotions (who, when, why).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import pickle
import platform
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import dagster as dg
import psycopg2

from orchestration import settings
from orchestration.warehouse import transaction
from orchestration.ml.config import MlConfig

CHAMPION = "champion"
STATUS_TAG = "plumbline.status"      # candidate, champion, rejected, retired, rolled_back
REASON_TAG = "plumbline.reason"
TRAINING_SET_TAG = "plumbline.training_set_version"
FINGERPRINT_TAG = "plumbline.fingerprint"  # training set + parameters + code: same fingerprint, same model
LIBRARIES = ("scikit-learn", "numpy", "pandas", "duckdb", "dagster", "mlflow-skinny", "pyarrow")
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"  # MLflow's only switch for its progress bars
# The production store (from_environment): where tracking and registry are, and where artifacts go.
STORE_VARIABLE = "PLUMBLINE_MLFLOW_URL"            # postgresql://user@host:5432/mlflow (password: PGPASSWORD or ~/.pgpass)
ARTIFACTS_VARIABLE = "PLUMBLINE_MLFLOW_ARTIFACTS"  # a directory or an object-store URL; default below
DATA_PATH_VARIABLE = "PLUMBLINE_DATA_PATH"         # the shared data path (the lakehouse's too): artifacts under mlflow/

class RegistryError(RuntimeError):
    pass


class RegistryNotConfigured(RegistryError):
    """The production registry was chosen without saying where its store is."""


def without_credentials(uri: str) -> str:
    """A store's URI as it may be shown (lineage namespaces, metadata, messages): no user or password,
    no query (libpq takes password=... there too), no SQLAlchemy driver (postgresql+psycopg2 is shown
    as postgresql). Rebuilt only when there is something to drop, as urlunsplit would turn sqlite:////
    into sqlite://."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc and not parts.query and not parts.fragment and "+" not in parts.scheme:
        return uri
    return urlunsplit(parts._replace(scheme=parts.scheme.split("+", 1)[0], netloc=parts.netloc.rsplit("@", 1)[-1],
                                     query="", fragment=""))


def sqlalchemy_url(url: str) -> str:
    """A PostgreSQL URL as MLflow's SQLAlchemy store opens it: with the psycopg2 driver, which is
    installed (SQLAlchemy 2.1 takes a bare postgresql:// for psycopg 3, and no longer knows postgres://)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg2://" + url.removeprefix(scheme)
    return url


def local_dir() -> Path:
    return settings.plumbline_home() / "mlflow"


def _user_setting(var: str) -> str | None:
    return os.environ.get(var) or None


def tracking_uri() -> str:
    """The embedded deployment's tracking URI: the user's MLFLOW_TRACKING_URI, else SQLite under the home."""
    return _user_setting("MLFLOW_TRACKING_URI") or f"sqlite:///{local_dir() / 'mlflow.db'}"


# Where MLflow's SQL store keeps artifact URIs (experiments, runs, logged models, model versions).
ARTIFACT_URI_COLUMNS = [("experiments", "artifact_location"), ("runs", "artifact_uri"),
                        ("logged_models", "artifact_location"), ("model_versions", "source"),
                        ("model_versions", "storage_location")]


def rebase_local_store() -> int:
    """Point the local store's artifact URIs at this home's artifact folder when the home was copied
    or moved (MLflow stores them absolute); returns the rows changed."""
    db = local_dir() / "mlflow.db"
    if not db.is_file():
        return 0
    root = (local_dir() / "artifacts").as_uri()
    con = sqlite3.connect(db)
    try:
        old = [r for (r,) in con.execute("SELECT DISTINCT artifact_location FROM experiments "
                                         "WHERE artifact_location LIKE 'file:%/mlflow/artifacts'").fetchall() if r != root]
        changed = 0
        with con:  # one transaction: every URI moves, or none
            for prefix in old:
                for table, column in ARTIFACT_URI_COLUMNS:
                    if column not in {c for _, c, *_ in con.execute(f"PRAGMA table_info({table})").fetchall()}:
                        continue  # an older MLflow schema without this table or column
                    changed += con.execute(
                        f"UPDATE {table} SET {column} = ? || substr({column}, ?) "
                        f"WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                        [root, len(prefix) + 1, prefix, len(prefix) + 1, prefix + "/"]).rowcount
        return changed
    finally:
        con.close()


def shared_artifacts() -> str:
    """The production artifact root, read at call time: $PLUMBLINE_MLFLOW_ARTIFACTS, else mlflow/ under
    the shared data path ($PLUMBLINE_DATA_PATH, default $PLUMBLINE_HOME/lake as the lakehouse's). A
    URL (s3://, gs://, file://) is taken as it is; a directory becomes its absolute file:// URI."""
    root = os.environ.get(ARTIFACTS_VARIABLE)
    if not root:
        data = os.environ.get(DATA_PATH_VARIABLE) or str(settings.plumbline_home() / "lake")
        root = data.rstrip("/") + "/mlflow" if "://" in data else str(Path(data) / "mlflow")
    if "://" in root:
        return root.rstrip("/")
    return Path(root).expanduser().resolve().as_uri()


# MLflow creates its tables when a process first opens an empty store, and two processes doing so at
# once collide (a duplicate-key error on alembic_version): the first open of a PostgreSQL store in each
# process holds this advisory lock on that database. MLflow keeps the store per URI for the process.
SCHEMA_LOCK = 0x706C6D6C  # "plml": plumbline's MLflow schema
_schema_checked: set[str] = set()


@contextlib.contextmanager
def _schema_lock(sqlalchemy_uri: str) -> Iterator[None]:
    pg = psycopg2.connect(sqlalchemy_uri.replace("postgresql+psycopg2://", "postgresql://", 1),
                          application_name=f"plumbline mlflow schema pid {os.getpid()}")
    try:
        pg.autocommit = True
        with pg.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (SCHEMA_LOCK,))
        yield
    finally:
        pg.close()  # ends the session, which releases the lock


@contextlib.contextmanager
def _quiet_transfers() -> Iterator[None]:
    """No MLflow progress bars in run logs while artifacts move, unless the user asked for them;
    the variable is MLflow's only switch, so it is set for the block and put back after it."""
    if PROGRESS_BAR in os.environ:
        yield
        return
    os.environ[PROGRESS_BAR] = "false"
    try:
        yield
    finally:
        os.environ.pop(PROGRESS_BAR, None)


class ModelRegistry(dg.ConfigurableResource):
    """MLflow tracking and model registry. Empty settings are the embedded store (see the module
    docstring), resolved at call time like the warehouse path, so PLUMBLINE_HOME can change. With
    from_environment (the production deployment), empty settings are read at call time from
    PLUMBLINE_MLFLOW_URL (tracking and registry) and PLUMBLINE_MLFLOW_ARTIFACTS or
    $PLUMBLINE_DATA_PATH/mlflow (artifacts)."""

    tracking_uri: str = ""
    registry_uri: str = ""
    artifact_location: str = ""  # where new experiments keep their artifacts; empty: see artifacts()
    from_environment: bool = False  # the production store: PLUMBLINE_MLFLOW_URL, artifacts on the shared data path

    def tracking(self) -> str:
        """The tracking store's URI as MLflow takes it (credentials included: show location() instead)."""
        if self.tracking_uri:
            return self.tracking_uri
        if self.from_environment:
            url = os.environ.get(STORE_VARIABLE, "")
            if not url:
                raise RegistryNotConfigured(
                    f"the production model registry needs its MLflow store: set {STORE_VARIABLE} to a PostgreSQL URL "
                    "such as postgresql://plumbline@db:5432/plumbline_mlflow (password in PGPASSWORD or ~/.pgpass)")
            return sqlalchemy_url(url)
        return tracking_uri()

    def registry_override(self) -> str | None:
        """The registry's URI when it is set apart from the tracking store (else the registry is the tracking store)."""
        return self.registry_uri or (None if self.from_environment else _user_setting("MLFLOW_REGISTRY_URI"))

    def registry(self) -> str:
        return self.registry_override() or self.tracking()

    def location(self) -> str:
        """Where the tracking store is, without credentials: for metadata and messages."""
        return without_credentials(self.tracking())

    def is_local(self) -> bool:
        """The embedded SQLite store under PLUMBLINE_HOME (nothing configured elsewhere)."""
        return not self.from_environment and not self.tracking_uri and _user_setting("MLFLOW_TRACKING_URI") is None

    def artifacts(self) -> str | None:
        if self.artifact_location:
            return self.artifact_location
        if self.from_environment:
            return shared_artifacts()
        # with the local store, artifacts go under PLUMBLINE_HOME too (MLflow would use ./mlruns)
        return (local_dir() / "artifacts").as_uri() if self.is_local() else None

    def client(self):
        """An MLflow client on this registry's store."""
        import mlflow

        logging.getLogger("mlflow").setLevel(logging.WARNING)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if self.is_local():
            local_dir().mkdir(parents=True, exist_ok=True)
            rebase_local_store()
        tracking, registry = self.tracking(), self.registry()
        if tracking in _schema_checked or not tracking.startswith("postgresql+psycopg2://"):
            return mlflow.MlflowClient(tracking_uri=tracking, registry_uri=registry)
        # the first client of a process opens the tracking store, which creates MLflow's tables in an
        # empty database (the registry's store, opened later, finds them): one process at a time
        with _schema_lock(tracking):
            client = mlflow.MlflowClient(tracking_uri=tracking, registry_uri=registry)
        _schema_checked.add(tracking)
        return client

    @contextlib.contextmanager
    def _fluent(self) -> Iterator[None]:
        """MLflow's fluent logging API (start_run, log_model) takes no URI and reads a process-wide
        one; point it at this registry for the block only, without mlflow.set_tracking_uri, which
        would also export MLFLOW_TRACKING_URI to the environment."""
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        saved = tracking_utils._tracking_uri, registry_utils._registry_uri
        tracking_utils._tracking_uri, registry_utils._registry_uri = self.tracking(), self.registry()
        try:
            with _quiet_transfers():
                yield
        finally:
            tracking_utils._tracking_uri, registry_utils._registry_uri = saved

    def experiment_id(self, cfg: MlConfig) -> str:
        c = self.client()
        found = c.get_experiment_by_name(cfg.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return c.create_experiment(cfg.experiment, artifact_location=self.artifacts())
        except Exception as e:  # noqa: BLE001 - another worker created it first: use theirs
            if "RESOURCE_ALREADY_EXISTS" not in str(e) and "already exists" not in str(e):
                raise
            return c.get_experiment_by_name(cfg.experiment).experiment_id

    def versions(self, cfg: MlConfig) -> list:
        """Every registered version of the model, oldest first (none when it is not registered yet)."""
        c = self.client()
        try:
            found = c.search_model_versions(f"name = '{cfg.model_name}'")
        except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types per store
            if "RESOURCE_DOES_NOT_EXIST" in str(e):
                return []
            raise
        return sorted(found, key=lambda v: int(v.version))

    def find(self, cfg: MlConfig, fingerprint: str):
        return next((v for v in self.versions(cfg) if v.tags.get(FINGERPRINT_TAG) == fingerprint), None)

    def champion(self, cfg: MlConfig) -> str | None:
        c = self.client()
        try:
            return str(c.get_model_version_by_alias(cfg.model_name, CHAMPION).version)  # MLflow returns an int here
        except Exception as e:  # noqa: BLE001
            if "RESOURCE_DOES_NOT_EXIST" in str(e) or "not found" in str(e).lower():
                return None
            raise

    def version(self, cfg: MlConfig, number: str):
        c = self.client()
        try:
            return c.get_model_version(cfg.model_name, str(number))
        except Exception as e:  # noqa: BLE001
            raise RegistryError(f"model {cfg.model_name} has no version {number} in {self.location()} "
                                f"(list them: plumbline model list)") from e

    def run(self, run_id: str):
        return self.client().get_run(run_id)

    def load(self, cfg: MlConfig, number: str):
        """The version's fitted model, from the artifacts the registry serves for it now. The model
        deserialized from exactly those bytes is kept in the home's cache (_cached_model)."""
        import mlflow.artifacts

        # not a models:/ URI: MLflow resolves those on its process-wide registry, whatever URI it is given
        c = self.client()
        where = c.get_model_version_download_uri(cfg.model_name, str(number))
        if where.startswith("models:/"):  # a logged model's id: its artifacts are where that model says
            where = c.get_logged_model(where.removeprefix("models:/")).artifact_location
        with _quiet_transfers(), tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(artifact_uri=where, dst_path=tmp,
                                                       tracking_uri=self.tracking(), registry_uri=self.registry())
            return _cached_model(Path(path))

    def artifact(self, run_id: str, name: str) -> dict:
        """A JSON artifact logged with a run (provenance.json, drift_reference.json)."""
        import mlflow.artifacts

        self.client()
        with _quiet_transfers(), tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=tmp,
                                                       tracking_uri=self.tracking(), registry_uri=self.registry())
            return json.loads(Path(path).read_text())

    def register(self, cfg: MlConfig, model, *, fingerprint: str, provenance: dict, metrics: dict, reference: dict) -> str:
        """One MLflow run with everything needed to trace the model, and the model version it registers."""
        import mlflow
        import mlflow.sklearn
        import skops.io

        experiment = self.experiment_id(cfg)
        with self._fluent(), mlflow.start_run(experiment_id=experiment, run_name=f"train {provenance['version']}"):
            mlflow.log_params(cfg.params)
            mlflow.log_params({"features": ",".join(provenance["features"]), **{
                f"split.{name}": f"{s['start']}..{s['end']}" for name, s in provenance["splits"].items()}})
            mlflow.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            mlflow.set_tags({"plumbline.code_version": code_version(), TRAINING_SET_TAG: provenance["version"],
                             FINGERPRINT_TAG: fingerprint, **{f"plumbline.library.{k}": v for k, v in library_versions().items()},
                             **{f"plumbline.contract.{k}": v for k, v in provenance["contracts"].items()}})
            mlflow.log_dict(provenance, "provenance.json")
            mlflow.log_dict(reference, "drift_reference.json")
            # the model was built in this process: trust exactly the types it is made of, nothing else
            trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
            info = mlflow.sklearn.log_model(model, name="model", registered_model_name=cfg.model_name,
                                            skops_trusted_types=trusted, pip_requirements=model_requirements())
        number = str(info.registered_model_version)
        c = self.client()
        for key, value in {STATUS_TAG: "candidate", TRAINING_SET_TAG: provenance["version"], FINGERPRINT_TAG: fingerprint,
                           "plumbline.code_version": code_version()}.items():
            c.set_model_version_tag(cfg.model_name, number, key, value)
        return number

    def reference(self, cfg: MlConfig, number: str) -> dict:
        return self.artifact(self.version(cfg, number).run_id, "drift_reference.json")

    def promote(self, con, cfg: MlConfig, number: str, *, actor: str, reason: str) -> str | None:
        """Make `number` the champion; returns the previous champion."""
        c = self.client()
        self.version(cfg, number)  # refuses an unknown version with the list command
        previous = self.champion(cfg)
        with transaction(con):  # the record commits only once the alias has moved
            _record(con, cfg, "promote", number, previous, actor, reason)
            c.set_registered_model_alias(cfg.model_name, CHAMPION, str(number))
        c.set_model_version_tag(cfg.model_name, str(number), STATUS_TAG, "champion")
        c.set_model_version_tag(cfg.model_name, str(number), REASON_TAG, reason)
        if previous and previous != str(number):
            c.set_model_version_tag(cfg.model_name, previous, STATUS_TAG, "retired")
        return previous

    def reject(self, con, cfg: MlConfig, number: str, *, actor: str, reason: str) -> None:
        tags = self.version(cfg, number).tags
        if tags.get(STATUS_TAG) == "rejected" and tags.get(REASON_TAG) == reason:
            return  # a reused version judged again on the same evidence: already on record
        c = self.client()
        c.set_model_version_tag(cfg.model_name, str(number), STATUS_TAG, "rejected")
        c.set_model_version_tag(cfg.model_name, str(number), REASON_TAG, reason)
        _record(con, cfg, "reject", number, self.champion(cfg), actor, reason)

    def rollback(self, con, cfg: MlConfig, *, actor: str, reason: str) -> tuple[str, str]:
        """Restore the champion before the current one; returns (restored, replaced)."""
        current = self.champion(cfg)
        if current is None:
            raise RegistryError(f"model {cfg.model_name} has no champion to roll back")
        row = con.execute("""SELECT previous_champion FROM ops.model_promotions
            WHERE model = ? AND version = ? AND action = 'promote' ORDER BY decided_at DESC LIMIT 1""",
                          [cfg.model_name, current]).fetchall()
        previous = row[0][0] if row else None
        if not previous:
            raise RegistryError(f"model {cfg.model_name} version {current} was the first champion: there is nothing to roll "
                                "back to (promote a version instead: plumbline model promote <version>)")
        c = self.client()
        with transaction(con):
            _record(con, cfg, "rollback", previous, current, actor, reason)
            c.set_registered_model_alias(cfg.model_name, CHAMPION, previous)
        c.set_model_version_tag(cfg.model_name, previous, STATUS_TAG, "champion")
        c.set_model_version_tag(cfg.model_name, current, STATUS_TAG, "rolled_back")
        c.set_model_version_tag(cfg.model_name, current, REASON_TAG, reason)
        return previous, current


# Deserializing a skops model imports skops, which imports every scikit-learn estimator to list the
# types it may trust (about 2 s of CPU for each process that scores): a model deserialized once is
# kept under the home's cache, named by the checksum of the artifact bytes it was read from and the
# libraries that read it, so the registry still decides which bytes are the model. Only plumbline
# writes there, as it writes the compiled contracts (also pickles) next to it.
MODEL_CACHE_LIBRARIES = ("scikit-learn", "skops", "numpy", "scipy", "mlflow-skinny")
MODEL_CACHE_KEEP = 4


def _cached_model(artifacts: Path):
    """The model of a downloaded MLflow model directory: from the cache when these exact bytes were
    deserialized before, else through MLflow (skops, with the types the model was logged to trust)."""
    stored = settings.cache_dir() / "models" / f"model-{_artifact_checksum(artifacts)}.pickle"
    try:
        return pickle.loads(stored.read_bytes())
    except Exception:  # noqa: BLE001 - absent, truncated or unreadable: deserialize and store again
        pass
    import mlflow.sklearn

    fitted = mlflow.sklearn.load_model(str(artifacts))
    try:
        stored.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=stored.parent, prefix=".model-", delete=False) as f:
            f.write(pickle.dumps(fitted, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(f.name, stored)  # whole or absent: processes scoring together read one or the other
        _prune_models(stored.parent)
    except OSError:
        pass  # a read-only home still scores, deserializing every time
    return fitted


def _prune_models(folder: Path) -> None:
    """Keep the MODEL_CACHE_KEEP models stored last (the champion and the latest challengers)."""
    stored = sorted(folder.glob("model-*.pickle"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in stored[MODEL_CACHE_KEEP:]:
        old.unlink(missing_ok=True)


def _artifact_checksum(artifacts: Path) -> str:
    """sha256 of every file of the model directory (relative names and bytes) and of the versions of
    Python and the libraries that deserialize it."""
    h = hashlib.sha256(platform.python_version().encode())
    installed = _installed(MODEL_CACHE_LIBRARIES)
    for lib in MODEL_CACHE_LIBRARIES:
        h.update(f"\0{lib}={installed.get(lib, '')}".encode())
    for f in sorted(p for p in artifacts.rglob("*") if p.is_file()):
        h.update(f"\0{f.relative_to(artifacts).as_posix()}\0{f.stat().st_size}\0".encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def code_version() -> str:
    """plumbline's package version plus the git commit of the checkout when there is one."""
    version = metadata.version("plumbline")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{version}+{commit}" if commit else version


# What serving the model needs installed, pinned to this process's versions. Naming them spares MLflow's
# inference, which loads the model again in a child process (about 4 s per training) and lists whatever
# else that child happened to import (the test runner, the console library).
MODEL_REQUIREMENTS = ("mlflow-skinny", "scikit-learn", "skops", "numpy", "scipy", "pandas")


def model_requirements() -> list[str]:
    return [f"{lib}=={version}" for lib, version in _installed(MODEL_REQUIREMENTS).items()]


def library_versions() -> dict[str, str]:
    return {"python": platform.python_version(), **_installed(LIBRARIES)}


def _installed(libs) -> dict[str, str]:
    """lib -> its installed version, for those of `libs` that are installed, in their order."""
    out = {}
    for lib in libs:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            pass
    return out


def _record(con, cfg: MlConfig, action: str, number: str, previous: str | None, actor: str, reason: str) -> None:
    con.execute("INSERT INTO ops.model_promotions VALUES (?, ?, ?, ?, ?, ?, ?)",
                [dt.datetime.now(dt.timezone.utc), action, cfg.model_name, str(number), previous, actor, reason])


def history(con, cfg: MlConfig) -> list[tuple]:
    return con.execute("SELECT decided_at, action, version, previous_champion, actor, reason FROM ops.model_promotions "
                       "WHERE model = ? ORDER BY decided_at", [cfg.model_name]).fetchall()
