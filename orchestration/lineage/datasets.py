"""Where each asset's data lives, as OpenLineage datasets, and what is known about it before a run:
schema, documentation, ownership, column lineage. Derived from the asset graph in one place.

Warehouse tables are named the way dbt's OpenLineage integration names DuckDB tables: namespace
duckdb://<absolute path of the database file>, name <database>.<schema>.<table>. Files (bronze,
deliveries) use openlineage-python's local file system naming: namespace "file", name the path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from openlineage.client.facet_v2 import (
    column_lineage_dataset,
    documentation_dataset,
    ownership_dataset,
    schema_dataset,
)
from openlineage.client.naming.dataset import LocalFileSystem

from orchestration import catalog, settings

TABLE_NAME = "dagster/table_name"


@dataclass(frozen=True)
class Place:
    namespace: str
    name: str


def warehouse_namespace() -> str:
    return f"duckdb://{settings.warehouse_path()}"


def file_place(path: Path | str) -> Place:
    naming = LocalFileSystem(path=str(path))
    return Place(naming.get_namespace(), naming.get_name())


def place(node) -> Place:
    """node: an asset graph node. Tables by their dagster/table_name, bronze by its directory."""
    table = node.metadata.get(TABLE_NAME)
    if table is not None:
        return Place(warehouse_namespace(), str(table.value if hasattr(table, "value") else table))
    if node.key.path[0] == "bronze":
        return file_place(settings.bronze_dir() / node.key.path[-1])
    raise ValueError(f"asset {node.key.to_user_string()} has no {TABLE_NAME} metadata and is not bronze: "
                     "say where its data lives (dagster/table_name) so lineage can name it")


def _type_of(column: dg.TableColumn) -> str:
    return column.type


def schema_facet(node) -> schema_dataset.SchemaDatasetFacet | None:
    schema = node.metadata.get("dagster/column_schema")
    if schema is None:
        return None
    table_schema = schema.schema if hasattr(schema, "schema") else schema
    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=c.name, type=_type_of(c), description=c.description or None)
        for c in table_schema.columns])


def documentation_facet(node) -> documentation_dataset.DocumentationDatasetFacet | None:
    return documentation_dataset.DocumentationDatasetFacet(description=node.description) if node.description else None


def ownership_facet(node) -> ownership_dataset.OwnershipDatasetFacet | None:
    if not node.owners:
        return None
    return ownership_dataset.OwnershipDatasetFacet(owners=[ownership_dataset.Owner(name=o, type="MAINTAINER") for o in node.owners])


def _transformation(kind: str, subtype: str, description: str | None) -> column_lineage_dataset.Transformation:
    return column_lineage_dataset.Transformation(type=kind, subtype=subtype, description=description)


def column_lineage_facet(graph, node) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
    """From dagster/column_lineage where the asset declares it; for raw, from its contract."""
    fields: dict[str, list[tuple[Place, str, column_lineage_dataset.Transformation]]] = {}
    aggregated = set(node.metadata.get("plumbline/aggregated_columns").value
                     if node.metadata.get("plumbline/aggregated_columns") else [])
    declared = node.metadata.get("dagster/column_lineage")
    if declared is not None:
        lineage = declared.column_lineage if hasattr(declared, "column_lineage") else declared
        for column, deps in lineage.deps_by_column.items():
            for dep in deps:
                if column in aggregated:
                    t = _transformation("DIRECT", "AGGREGATION", "aggregated per partition, carrier and origin")
                elif dep.column_name == column and len(deps) == 1:
                    t = _transformation("DIRECT", "IDENTITY", None)
                else:
                    t = _transformation("DIRECT", "TRANSFORMATION", "computed from the input column")
                fields.setdefault(column, []).append((place(graph.get(dep.asset_key)), dep.column_name, t))
    elif node.key.path[0] == "raw":
        contract = catalog.contracts()[node.key.path[-1]]
        bronze = place(graph.get(dg.AssetKey(["bronze", contract.name])))
        cast = _transformation("DIRECT", "TRANSFORMATION", "contract cast of the delivered text, null sentinels removed")
        for c in contract.columns:
            fields[c.name] = [(bronze, c.name, cast)]
        if contract.partitioning:
            fields["event_date"] = [(bronze, "_event_date", _transformation("DIRECT", "IDENTITY", None))]
        fields["_source_file"] = [(bronze, "_file_id", _transformation("DIRECT", "IDENTITY", None))]
        fields["_source_row"] = [(bronze, "_row_offset", _transformation("DIRECT", "IDENTITY", None))]
    if not fields:
        return None
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields={
        column: column_lineage_dataset.Fields(inputFields=[
            column_lineage_dataset.InputField(namespace=p.namespace, name=p.name, field=f, transformations=[t])
            for p, f, t in deps])
        for column, deps in fields.items()})
