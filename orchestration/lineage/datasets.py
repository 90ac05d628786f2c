"""Where each asset's data lives, as OpenLineage datasets, and its column lineage, derived from the
asset graph in one place. Plain data: the code location reads it when it loads (impact.py), without
OpenLineage's client; events.py turns it and the rest of what is known before a run into facets.

Names come from the deployment's resources (`Naming`: its warehouse and model registry), which the
callers hand over (the lineage sensors and `plumbline sync` have them); nothing here chooses a
deployment. Warehouse tables are named the way dbt's OpenLineage integration names DuckDB tables:
namespace the warehouse's location(), name <database>.<schema>.<table>. Embedded, that is
duckdb://<absolute path of the database file> and warehouse.<schema>.<table> (the file's stem);
production (DuckLake), ducklake:postgres://<catalog host>:<port>/<catalog database> (no credentials)
and lake.<schema>.<table> (the name the catalog is attached as). Files (bronze, deliveries) use
openlineage-python's local file system naming: namespace "file", name the path.

Models live in the MLflow model registry: an asset whose static metadata has
`plumbline/registered_model` materializes versions of that registered model. Each registered
version is a dataset of its own: namespace the registry's URI without credentials, query or
SQLAlchemy driver (a registry set apart from tracking, MLFLOW_REGISTRY_URI in the embedded
deployment; else the `mlflow_tracking_uri` the run recorded; else the model registry resource's:
MLFLOW_TRACKING_URI or the SQLite store under $PLUMBLINE_HOME embedded, PLUMBLINE_MLFLOW_URL in
production), name
`models/<registered model>/versions/<N>` (the version's path in MLflow's UI and REST API). The registered model without a version,
`models/<registered model>`, names the asset in the static asset graph and the output of a run
that failed before it registered a version. Which version a materialization is about is in its
metadata: `model_version` on the asset that registers it; an asset that reads versions says so
with `model_version`, `challenger_version` or `champion_version`, versions of the registered model
upstream of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg

from orchestration import catalog, names, settings
from orchestration.lakehouse import DATABASE as LAKE_DATABASE
from orchestration.lakehouse import Lakehouse
from orchestration.ml.registry import ModelRegistry, without_credentials
from orchestration.names import REGISTERED_MODEL
from orchestration.warehouse_resource import Warehouse

TABLE_NAME = "dagster/table_name"
VERSION_WRITTEN = names.MODEL_VERSION  # materialization metadata of a REGISTERED_MODEL asset: the version it registered
# Materialization metadata of an asset that reads registered versions: the role it read each in.
VERSIONS_READ = (names.MODEL_VERSION, names.CHALLENGER_VERSION, names.CHAMPION_VERSION)


@dataclass(frozen=True)
class Place:
    namespace: str
    name: str


class Naming:
    """Where one deployment's data lives, from its resources: the warehouse (the embedded DuckDB file or
    DuckLake; anything with location()) and the MLflow model registry. Left out, each is the embedded
    deployment's. Every place a lineage event names is derived from here."""

    def __init__(self, warehouse=None, model_registry: ModelRegistry | None = None):
        self.warehouse = warehouse if warehouse is not None else Warehouse()
        self.model_registry = model_registry if model_registry is not None else ModelRegistry()
        self._warehouse: tuple[str, str] | None = None  # (namespace, database), read once: see table()

    def warehouse_namespace(self) -> str:
        """duckdb://<file> embedded; ducklake:postgres://<host>:<port>/<catalog db> for DuckLake (no credentials)."""
        return self.warehouse.location()

    def database(self) -> str:
        """The database part of a table's name, as DuckDB names it: the attached lake, or the file's stem."""
        if isinstance(self.warehouse, Lakehouse):
            return LAKE_DATABASE
        return Path(self.warehouse.db_path()).stem

    def table(self, table_name: str) -> Place:
        """A table by its dagster/table_name (<database>.<schema>.<table>, as the asset declares it for the
        embedded file), named in this deployment's warehouse: <its database>.<schema>.<table>."""
        # one Naming names the tables of one run or command, many times over: its warehouse stays put meanwhile
        if self._warehouse is None:
            self._warehouse = (self.warehouse_namespace(), self.database())
        namespace, database = self._warehouse
        parts = table_name.split(".")
        if len(parts) == 3:
            parts[0] = database
        return Place(namespace, ".".join(parts))

    def registry_namespace(self, recorded_uri: str | None = None) -> str:
        """The MLflow registry's URI, without credentials: a namespace is shown to every lineage reader."""
        uri = without_credentials(self.model_registry.registry_override() or recorded_uri or self.model_registry.registry())
        return uri.rstrip("/") if urlsplit(uri).scheme in ("http", "https") else uri


def warehouse_namespace(naming: Naming | None = None) -> str:
    return (naming or Naming()).warehouse_namespace()


def file_place(path: Path | str) -> Place:
    """openlineage-python's LocalFileSystem naming: namespace "file", name the path."""
    return Place("file", str(path))


def _value(metadata: Mapping, key: str):
    v = metadata.get(key)
    return getattr(v, "value", v)


def registry_namespace(recorded_uri: str | None = None, naming: Naming | None = None) -> str:
    return (naming or Naming()).registry_namespace(recorded_uri)


def registered_model(node) -> str | None:
    """The MLflow registered model an asset materializes versions of, from its static metadata."""
    name = _value(node.metadata, REGISTERED_MODEL)
    return str(name) if name else None


def model_place(namespace: str, model: str, version: str | None = None) -> Place:
    return Place(namespace, f"models/{model}" + (f"/versions/{version}" if version else ""))


def place(node, naming: Naming | None = None) -> Place:
    """node: an asset graph node. Tables by their dagster/table_name in the deployment's warehouse,
    bronze by its directory, registered models by their name in the registry (model_written() names
    one run's version). `naming`: the deployment's resources (default: the embedded deployment's)."""
    naming = naming or Naming()
    table = node.metadata.get(TABLE_NAME)
    if table is not None:
        return naming.table(str(table.value if hasattr(table, "value") else table))
    if (model := registered_model(node)) is not None:
        return model_place(naming.registry_namespace(), model)
    if node.key.path[0] == "bronze":
        return file_place(settings.bronze_dir() / node.key.path[-1])
    raise ValueError(f"asset {node.key.to_user_string()} has no {TABLE_NAME} or {REGISTERED_MODEL} metadata and is not "
                     f"bronze: say where its data lives ({TABLE_NAME}, or {REGISTERED_MODEL} for an MLflow model) so "
                     "lineage can name it")


@dataclass(frozen=True)
class ModelVersion:
    """A registered model version as a dataset; version None names the registered model itself."""

    place: Place
    model: str
    version: str | None


def _version(value) -> str | None:
    """A registered version number from metadata ("none" where there was none, e.g. no champion yet)."""
    text = str(value).strip() if value is not None else ""
    return text if text.isdigit() else None


def _model_version(model: str, version: str | None, metadata: Mapping, naming: Naming | None) -> ModelVersion:
    namespace = (naming or Naming()).registry_namespace(_value(metadata, names.MLFLOW_TRACKING_URI))
    return ModelVersion(model_place(namespace, model, version), model, version)


def model_written(node, metadata: Mapping, naming: Naming | None = None) -> ModelVersion | None:
    """For an asset that registers model versions, the version one materialization registered (its
    metadata's model_version), or the registered model when the run registered none; else None."""
    model = registered_model(node)
    if model is None:
        return None
    return _model_version(model, _version(_value(metadata, VERSION_WRITTEN)), metadata, naming)


def _upstream_models(graph, node) -> list[str]:
    """The registered models nearest upstream of `node` (the search stops at each one)."""
    found, seen, frontier = set(), set(), list(node.parent_keys)
    while frontier:
        key = frontier.pop()
        if key in seen:
            continue
        seen.add(key)
        parent = graph.get(key)
        if (model := registered_model(parent)) is not None:
            found.add(model)
        else:
            frontier.extend(parent.parent_keys)
    return sorted(found)


def models_read(graph, node, metadata: Mapping, naming: Naming | None = None) -> list[ModelVersion]:
    """The registered model versions one materialization of `node` read, as its metadata names them
    (model_version, challenger_version, champion_version), of the registered model upstream of it."""
    if registered_model(node) is not None:
        return []  # its model_version is the version it registered, not one it read
    versions = list(dict.fromkeys(v for k in VERSIONS_READ if (v := _version(_value(metadata, k))) is not None))
    if not versions:
        return []
    models = _upstream_models(graph, node)
    if len(models) != 1:
        raise ValueError(f"asset {node.key.to_user_string()} reports model version(s) {versions} with "
                         f"{len(models)} registered models upstream ({models}): lineage cannot tell which it read")
    return [_model_version(models[0], v, metadata, naming) for v in versions]


@dataclass(frozen=True)
class Transformation:
    type: str
    subtype: str
    description: str | None


@dataclass(frozen=True)
class InputField:
    namespace: str
    name: str
    field: str
    transformations: tuple[Transformation, ...]


@dataclass(frozen=True)
class Fields:
    inputFields: tuple[InputField, ...]


@dataclass(frozen=True)
class ColumnLineage:
    """The content of OpenLineage's column lineage facet, with its field names: events carry it as the
    facet, and impact reads it when the code location loads, where OpenLineage's client is not loaded."""

    fields: dict[str, Fields]


def _transformation(kind: str, subtype: str, description: str | None) -> Transformation:
    return Transformation(type=kind, subtype=subtype, description=description)


def column_lineage_facet(graph, node, naming: Naming | None = None) -> ColumnLineage | None:
    """From dagster/column_lineage where the asset declares it; for raw, from its contract."""
    fields: dict[str, list[tuple[Place, str, Transformation]]] = {}
    aggregated = set(node.metadata.get(names.AGGREGATED_COLUMNS).value
                     if node.metadata.get(names.AGGREGATED_COLUMNS) else [])
    keys = {(asset, c) for asset, cols in (_value(node.metadata, names.JOIN_KEYS) or {}).items() for c in cols}
    declared = node.metadata.get("dagster/column_lineage")
    if declared is not None:
        lineage = declared.column_lineage if hasattr(declared, "column_lineage") else declared
        for column, deps in lineage.deps_by_column.items():
            # a join key where the join brings the column; a key copied as it is stays the column's DIRECT input
            joined = [(d.asset_key.to_user_string(), d.column_name) in keys for d in deps]
            if all(joined):
                joined = [False] * len(deps)
            direct = joined.count(False)
            for dep, by_key in zip(deps, joined):
                if by_key:
                    t = _transformation("INDIRECT", "JOIN", "the key the input row is looked up by")
                elif column in aggregated:
                    t = _transformation("DIRECT", "AGGREGATION", "aggregated over rows of the input (the asset's description says how)")
                elif dep.column_name == column and direct == 1:
                    t = _transformation("DIRECT", "IDENTITY", None)
                else:
                    t = _transformation("DIRECT", "TRANSFORMATION", "computed from the input column")
                fields.setdefault(column, []).append((place(graph.get(dep.asset_key), naming), dep.column_name, t))
    elif node.key.path[0] == "raw":
        contract = catalog.contracts()[node.key.path[-1]]
        bronze = place(graph.get(dg.AssetKey(["bronze", contract.name])), naming)
        cast = _transformation("DIRECT", "TRANSFORMATION", "contract cast of the delivered text, null sentinels removed")
        for c in contract.columns:
            fields[c.name] = [(bronze, c.name, cast)]
        if contract.partitioning:
            fields["event_date"] = [(bronze, "_event_date", _transformation("DIRECT", "IDENTITY", None))]
        fields["_source_file"] = [(bronze, "_file_id", _transformation("DIRECT", "IDENTITY", None))]
        fields["_source_row"] = [(bronze, "_row_offset", _transformation("DIRECT", "IDENTITY", None))]
    if not fields:
        return None
    return ColumnLineage(fields={
        column: Fields(inputFields=tuple(InputField(namespace=p.namespace, name=p.name, field=f, transformations=(t,))
                                         for p, f, t in deps))
        for column, deps in fields.items()})

