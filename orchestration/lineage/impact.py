"""Impact analysis: everything that depends on one column, before it is dropped, renamed or retyped.

The column graph is the column lineage the OpenLineage events carry (datasets.column_lineage_facet,
over the asset graph: each asset's dagster/column_lineage, and raw's contract), read edge by edge in
the other direction; there is no second map. Walking it down from <schema>.<table>.<column> gives the
downstream columns with their transformation, the assets that hold them, the asset checks that read
them (contract rules on the column, schema conformance), the ML features derived from them and the
registered model versions trained on those features (the model inputs reached in the table each
model is trained from). Assets downstream that declare no column lineage (the model, evaluation,
predictions) depend on the whole upstream table: they are listed as asset-level impact. With a
synced home, the warehouse says which partitions and how many rows hold values of each column, and
the model registry which versions (stage, alias, training window) were trained on the features
reached.
"""

from __future__ import annotations

import difflib
import json
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import dagster as dg

from orchestration import catalog
from orchestration.lineage import datasets
from orchestration.ml import features, registry
from orchestration.ml.layer import FEATURES
from orchestration.rebuild.ranges import contiguous_ranges
from orchestration.warehouse import ident, table_exists

PARTITION_COLUMN = "event_date"  # the daily partition column of every partitioned table
CONFORMANCE_RULES = ("type", "required")  # folded into the schema_conformance check


class UnknownColumn(LookupError):
    """A table or column impact analysis does not know, with the nearest names that exist."""


@dataclass(frozen=True)
class Edge:
    table: str           # the downstream table, <schema>.<table>
    column: str
    transformation: str  # TYPE/SUBTYPE as the OpenLineage columnLineage facet says it


@dataclass
class Reached:
    table: str
    column: str
    asset: str
    via: str             # the upstream column, <schema>.<table>.<column>
    transformation: str
    depth: int
    rows: dict | None = None

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass
class Impact:
    column: str                  # <schema>.<table>.<column>
    asset: str
    type: str | None
    rows: dict | None
    columns: list[Reached]
    assets: list[dict]           # {"asset", "level": "column" | "asset", "columns"}
    checks: list[dict]           # {"check", "asset", "reads", "why"}
    features: list[dict]         # {"feature", "model_input"}
    models: list[dict]           # {"asset", "registered_model", "trained_on", "versions"}
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["columns"] = [{**asdict(r), "name": r.name} for r in self.columns]
        return out

    def downstream_names(self) -> list[str]:
        return [r.name for r in self.columns]


def _table_of(node) -> str:
    """<schema>.<table> as users write it: dagster/table_name without its database, else the asset key."""
    table = node.metadata.get(datasets.TABLE_NAME)
    if table is not None:
        return ".".join(str(getattr(table, "value", table)).split(".")[-2:])
    return ".".join(node.key.path)


def _schema_columns(node) -> dict[str, str | None]:
    """column -> type, from the asset's dagster/column_schema or, for raw, its contract."""
    schema = node.metadata.get("dagster/column_schema")
    if schema is not None:
        table_schema = schema.schema if hasattr(schema, "schema") else schema
        return {c.name: c.type for c in table_schema.columns}
    if node.key.path[0] == "raw":
        return {c.name: c.duckdb_type for c in catalog.contracts()[node.key.path[-1]].columns}
    return {}


class ColumnGraph:
    """Every asset's columns and the lineage edges between them, upstream column -> downstream column."""

    def __init__(self, graph, naming: datasets.Naming | None = None):
        naming = naming or datasets.Naming()
        self.graph = graph
        self.asset_of: dict[str, dg.AssetKey] = {}
        self.columns: dict[str, dict[str, str | None]] = {}
        self.edges: dict[tuple[str, str], list[Edge]] = {}
        self.declares: set[str] = set()  # tables whose columns have declared lineage
        by_place: dict[str, str] = {}
        for node in graph.asset_nodes:
            table = _table_of(node)
            self.asset_of[table] = node.key
            self.columns[table] = _schema_columns(node)
            by_place[datasets.place(node, naming).name] = table
        for node in graph.asset_nodes:
            facet = datasets.column_lineage_facet(graph, node, naming)
            if facet is None:
                continue
            table = _table_of(node)
            self.declares.add(table)
            for column, fields in facet.fields.items():
                self.columns[table].setdefault(column, None)
                for f in fields.inputFields:
                    source = by_place.get(f.name)
                    if source is None:
                        continue
                    self.columns[source].setdefault(f.field, None)
                    how = "/".join(filter(None, [f.transformations[0].type, f.transformations[0].subtype])) if f.transformations else "DIRECT"
                    self.edges.setdefault((source, f.field), []).append(Edge(table, column, how))

    def resolve(self, target: str) -> tuple[str, str]:
        """<schema>.<table>.<column> -> (table, column); an unknown one raises with the nearest names."""
        table, _, column = target.rpartition(".")
        if not table or not column:
            raise UnknownColumn(f"{target!r} is not <schema>.<table>.<column>, e.g. raw.flights.tailnum")
        if table not in self.columns:
            near = difflib.get_close_matches(table, list(self.columns), n=3, cutoff=0.5) or sorted(self.columns)
            raise UnknownColumn(f"no table {table!r}; nearest: {', '.join(near)}")
        if column not in self.columns[table]:
            known = sorted(self.columns[table])
            near = difflib.get_close_matches(column, known, n=3, cutoff=0.5)
            raise UnknownColumn(f"{table} has no column {column!r}" + (f"; nearest: {', '.join(near)}" if near else "")
                                + f"; its columns: {', '.join(known)}")
        return table, column

    def walk(self, table: str, column: str) -> list[Reached]:
        """Every column downstream, nearest first, each once (by the first path that reaches it)."""
        seen, out = {(table, column)}, []
        queue = deque([(table, column, 0)])
        while queue:
            t, c, depth = queue.popleft()
            for e in sorted(self.edges.get((t, c), []), key=lambda e: (e.table, e.column)):
                if (e.table, e.column) in seen:
                    continue
                seen.add((e.table, e.column))
                out.append(Reached(e.table, e.column, self.asset_of[e.table].to_user_string(), f"{t}.{c}",
                                   e.transformation, depth + 1))
                queue.append((e.table, e.column, depth + 1))
        return out

    def asset_level(self, tables: set[str]) -> list[dg.AssetKey]:
        """Assets downstream of `tables` that declare no column lineage: they read the whole table."""
        found, queue = [], deque(self.asset_of[t] for t in sorted(tables))
        seen = set(queue)
        while queue:
            for child in sorted(self.graph.get(queue.popleft()).child_keys, key=lambda k: k.to_user_string()):
                if child in seen or _table_of(self.graph.get(child)) in self.declares:
                    continue
                seen.add(child)
                found.append(child)
                queue.append(child)
        return found


def _contract_checks(table: str, column: str) -> list[dict]:
    """The contract checks that read raw <table>.<column>: its own rules, and other sources' foreign keys into it."""
    schema, name = table.split(".", 1)
    if schema != "raw":
        return []
    contracts = catalog.contracts()
    out = []
    own = contracts[name].rules if name in contracts else ()
    if any(r.column == column and r.kind in CONFORMANCE_RULES for r in own):
        out.append(("schema_conformance", name, "its type and required values"))
    out += [(r.id, name, f"{r.kind} rule on it") for r in own if r.column == column and r.kind not in CONFORMANCE_RULES]
    for other in contracts.values():
        out += [(r.id, other.name, f"foreign key {other.table}.{r.column} -> {table}.{column}") for r in other.rules
                if r.kind == "foreign_key" and r.reference == (name, column)]
    return [{"check": check, "asset": f"raw/{owner}", "reads": f"{table}.{column}", "why": why} for check, owner, why in out]


def _checks(graph, columns: list[tuple[str, str]], whole: list[dg.AssetKey]) -> list[dict]:
    """Checks that read a reached column (contract rules of raw tables), and every check of an asset
    impacted as a whole (a check declares no columns)."""
    out = [c for table, column in columns for c in _contract_checks(table, column)
           if dg.AssetCheckKey(dg.AssetKey.from_user_string(c["asset"]), c["check"]) in graph.get(
               dg.AssetKey.from_user_string(c["asset"])).check_keys]  # only checks the asset declares
    for key in whole:
        out += [{"check": check.name, "asset": key.to_user_string(), "reads": "the whole asset",
                 "why": "on an asset impacted as a whole (checks declare no columns)"}
                for check in sorted(graph.get(key).check_keys, key=lambda k: k.name)]
    return list({(c["check"], c["asset"]): c for c in out}.values())


@dataclass
class _Reach:
    """What the declarations alone say depends on one column (analyse adds checks, rows and versions)."""
    table: str
    column: str
    columns: list[Reached]
    tables: set[str]
    whole: list[dg.AssetKey]
    features: list[dict]
    models: list[dict]


def _reach(graph, columns: ColumnGraph, target: str) -> _Reach:
    table, column = columns.resolve(target)
    reached = columns.walk(table, column)
    tables = {table} | {r.table for r in reached}
    whole = columns.asset_level(tables)
    features_table = _table_of(graph.get(FEATURES)) if graph.has(FEATURES) else None
    derived = [{"feature": r.column, "model_input": r.column in features.MODEL_INPUTS}
               for r in reached if r.table == features_table]

    def trained_on(model: dg.AssetKey) -> list[str]:
        """The model inputs reached in the tables the model is trained from (its inputs' columns)."""
        read = {_table_of(graph.get(k)) for k in graph.get(model).parent_keys}
        return [r.column for r in reached if r.table in read and r.column in features.MODEL_INPUTS]

    models = [{"asset": k.to_user_string(), "registered_model": name, "trained_on": trained_on(k), "versions": None}
              for k in whole if (name := datasets.registered_model(graph.get(k))) is not None]
    return _Reach(table, column, reached, tables, whole, derived, models)


def analyse(graph, target: str, *, con=None, model_registry=None, naming: datasets.Naming | None = None,
            columns: ColumnGraph | None = None) -> Impact:
    """The downstream impact of <schema>.<table>.<column>. `con`: a read-only warehouse connection for
    partitions and rows (None: declarations only); `model_registry`: where registered versions are
    (None: none listed); `columns`: the graph's ColumnGraph, when the caller analyses many columns."""
    columns = columns or ColumnGraph(graph, naming)
    found = _reach(graph, columns, target)
    table, column, reached, whole, models = found.table, found.column, found.columns, found.whole, found.models
    assets = [{"asset": columns.asset_of[t].to_user_string(), "level": "column",
               "columns": sorted(r.column for r in reached if r.table == t)} for t in sorted(found.tables - {table})]
    assets += [{"asset": k.to_user_string(), "level": "asset", "columns": []} for k in whole]
    source_asset = columns.asset_of[table].to_user_string()
    checks = _checks(graph, [(table, column)] + [(r.table, r.column) for r in reached], whole)
    impact = Impact(target, source_asset, columns.columns[table].get(column), None, reached, assets, checks, found.features, models)
    if con is not None:
        _rows(con, impact, table, column)
    else:
        impact.notes.append("partitions and rows: no synced warehouse (run plumbline sync)")
    for m in models:
        m["versions"] = _versions(model_registry, m["registered_model"], m["trained_on"], impact.notes)
    return impact


def _rows(con, impact: Impact, table: str, column: str) -> None:
    """Per table, for each impacted column: rows holding a value, and the partitions (as ranges) that hold them."""
    by_table: dict[str, list[str]] = {table: [column]}
    for r in impact.columns:
        by_table.setdefault(r.table, []).append(r.column)
    found: dict[tuple[str, str], dict] = {}
    for t, cols in by_table.items():
        schema, name = t.split(".", 1)
        if not table_exists(con, schema, name):
            continue
        present = {c for (c,) in con.execute("SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
                                             "AND table_name = ?", [schema, name]).fetchall()}
        cols = [c for c in cols if c in present]
        target = f"{ident(schema)}.{ident(name)}"
        if PARTITION_COLUMN in present:
            counted = con.execute(f"SELECT strftime({PARTITION_COLUMN}, '%Y-%m-%d'), count(*)"
                                  + "".join(f", count({ident(c)})" for c in cols)
                                  + f" FROM {target} GROUP BY 1 ORDER BY 1").fetchall()
            for i, c in enumerate(cols):
                days = {d: row[2 + i] for row in counted if (d := row[0]) and row[2 + i]}
                found[(t, c)] = {"rows": sum(r[1] for r in counted), "non_null": sum(days.values()),
                                 "partitions": len(days),
                                 "ranges": [{"from": a, "to": b, "non_null": sum(n for d, n in days.items() if a <= d <= b)}
                                            for a, b in contiguous_ranges(list(days))]}
        else:
            total, *counts = con.execute("SELECT count(*)" + "".join(f", count({ident(c)})" for c in cols)
                                         + f" FROM {target}").fetchall()[0]
            for c, n in zip(cols, counts):
                found[(t, c)] = {"rows": total, "non_null": n, "partitions": None, "ranges": []}
    impact.rows = found.get((table, column))
    for r in impact.columns:
        r.rows = found.get((r.table, r.column))


def _versions(model_registry, model: str, inputs: list[str], notes: list[str]) -> list[dict] | None:
    """The registered versions trained on any of `inputs` (None when no registry store is there)."""
    if model_registry is None or (model_registry.is_local() and not (registry.local_dir() / "mlflow.db").is_file()):
        notes.append(f"model versions of {model}: no model registry (plumbline sync trains and registers one)")
        return None
    try:
        client = model_registry.client()
        found = client.search_model_versions(f"name = '{model}'")
    except Exception as e:  # noqa: BLE001 - MLflow raises its own exception types per store; impact is still worth reading
        if "RESOURCE_DOES_NOT_EXIST" in str(e):
            return []
        notes.append(f"model versions of {model}: the registry at {model_registry.location()} did not answer ({e})")
        return None
    aliases: dict[str, list[str]] = {}  # a version searched for does not carry its aliases: the registered model does
    for alias, version in (client.get_registered_model(model).aliases or {}).items() if found else ():
        aliases.setdefault(str(version), []).append(alias)
    out = []
    for v in sorted(found, key=lambda v: int(v.version)):
        params = client.get_run(v.run_id).data.params if v.run_id else {}
        trained = [f for f in params.get("features", "").split(",") if f]
        used = [f for f in inputs if f in trained]
        if not used:
            continue
        out.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                    "stage": v.tags.get(registry.STATUS_TAG),
                    "windows": {k.removeprefix("split."): w for k, w in sorted(params.items(), key=lambda p: p[1]) if k.startswith("split.")},
                    "trained_on": used, "training_set": v.tags.get(registry.TRAINING_SET_TAG)})
    return out


def _rows_text(rows: dict | None) -> str:
    if rows is None:
        return ""
    text = f"{rows['non_null']:,} of {rows['rows']:,} rows with a value"
    if rows["partitions"] is not None:
        spans = ", ".join(f"{r['from']}..{r['to']} ({r['non_null']:,})" if r["from"] != r["to"] else f"{r['from']} ({r['non_null']:,})"
                          for r in rows["ranges"][:4]) or "none"
        more = f", +{len(rows['ranges']) - 4} more range(s)" if len(rows["ranges"]) > 4 else ""
        text += f" in {rows['partitions']} partition(s): {spans}{more}"
    return text


def text(impact: Impact) -> str:
    """A readable tree: the column, what derives from it (by the path that first reaches each), then
    assets, checks, ML features and model versions."""
    lines = [f"{impact.column} ({impact.type or 'type unknown'}, asset {impact.asset})"]
    if impact.rows:
        lines.append(f"  {_rows_text(impact.rows)}")
    children: dict[str, list[Reached]] = {}
    for r in impact.columns:
        children.setdefault(r.via, []).append(r)

    def branch(name: str, indent: str) -> None:
        kids = children.get(name, [])
        for i, r in enumerate(kids):
            last = i == len(kids) - 1
            rows = f"  [{_rows_text(r.rows)}]" if r.rows else ""
            lines.append(f"{indent}{'└─' if last else '├─'} {r.name}  {r.transformation}  (asset {r.asset}){rows}")
            branch(r.name, indent + ("   " if last else "│  "))

    lines.append(f"downstream columns ({len(impact.columns)}):")
    if impact.columns:
        branch(impact.column, "  ")
    else:
        lines.append("  none")
    lines.append(f"assets ({len(impact.assets)}):")
    for a in impact.assets:
        lines.append(f"  {a['asset']:<22} " + (f"columns {', '.join(a['columns'])}" if a["level"] == "column"
                                                else "the whole asset (declares no column lineage)"))
    lines.append(f"checks ({len(impact.checks)}):")
    for c in impact.checks:
        lines.append(f"  {c['asset']:<22} {c['check']:<30} reads {c['reads']}: {c['why']}")
    lines.append(f"ML features ({len(impact.features)}):")
    for f in impact.features:
        lines.append(f"  {f['feature']:<22} {'model input' if f['model_input'] else 'kept in the table, not a model input'}")
    lines.append(f"registered models ({len(impact.models)}):")
    for m in impact.models:
        lines.append(f"  {m['registered_model']} (asset {m['asset']}), model inputs reached: {', '.join(m['trained_on']) or 'none'}")
        for v in m["versions"] or []:
            windows = ", ".join(f"{k} {w}" for k, w in v["windows"].items())
            aliases = f" @{','.join(v['aliases'])}" if v["aliases"] else ""
            lines.append(f"    version {v['version']}{aliases}  stage {v['stage'] or '-'}  trained on {', '.join(v['trained_on'])}  ({windows})")
        if m["versions"] == []:
            lines.append("    no registered version was trained on these features")
    lines += [f"note: {n}" for n in impact.notes]
    return "\n".join(lines)


def as_json(impact: Impact) -> str:
    return json.dumps(impact.as_dict(), indent=2, default=str)


def summary(impact: Impact) -> str:
    """One line for a contract diff: the downstream columns, then the models."""
    cols = impact.downstream_names()
    parts = [f"{len(cols)} downstream column(s)" + (f": {', '.join(cols[:8])}" + (", ..." if len(cols) > 8 else "") if cols else "")]
    whole = [a["asset"] for a in impact.assets if a["level"] == "asset"]
    if whole:
        parts.append(f"assets as a whole: {', '.join(whole)}")
    parts += [f"model {m['registered_model']} via {', '.join(m['trained_on'])}" for m in impact.models if m["trained_on"]]
    return "; ".join(parts)


IMPACT_METADATA = "plumbline/downstream_impact"  # raw assets' metadata entry: each column's downstream impact


def markdown(graph, columns: ColumnGraph, table: str) -> str:
    """The IMPACT_METADATA of `table`: each column nothing is built from is left out."""
    rows = ["| column | downstream columns | model inputs derived | registered models |", "|---|---|---|---|"]
    for column in sorted(columns.columns.get(table, {})):
        found = _reach(graph, columns, f"{table}.{column}")
        if not found.columns:
            continue
        models = [m["registered_model"] for m in found.models if m["trained_on"]]
        rows.append(f"| {column} | {', '.join(r.name for r in found.columns)} | "
                    f"{', '.join(f['feature'] for f in found.features if f['model_input']) or '-'} | {', '.join(models) or '-'} |")
    return ("Columns of this table and what is built from them, from the declared column lineage. "
            "Partitions, rows and model versions: `plumbline impact " + table + ".<column>`.\n\n" + "\n".join(rows))


class DeclaredGraph:
    """The asset graph of a list of asset definitions, read from their specs alone: what ColumnGraph
    reads of a resolved one (nodes' keys, metadata, children, checks), without building Definitions."""

    @dataclass(frozen=True)
    class Node:
        key: dg.AssetKey
        metadata: Mapping
        parent_keys: frozenset
        child_keys: frozenset
        check_keys: frozenset

    def __init__(self, assets: list):
        specs = [s for a in assets for s in (a.specs if isinstance(a, dg.AssetsDefinition) else [a])]
        checks = [c for a in assets if isinstance(a, dg.AssetsDefinition) for c in a.check_specs]
        children: dict[dg.AssetKey, set] = {}
        for s in specs:
            for d in s.deps:
                children.setdefault(d.asset_key, set()).add(s.key)
        self.nodes = {s.key: self.Node(s.key, s.metadata, frozenset(d.asset_key for d in s.deps), frozenset(children.get(s.key, ())),
                                       frozenset(c.key for c in checks if c.asset_key == s.key)) for s in specs}

    @property
    def asset_nodes(self):
        return list(self.nodes.values())

    def get(self, key: dg.AssetKey) -> Node:
        return self.nodes[key]

    def has(self, key: dg.AssetKey) -> bool:
        return key in self.nodes


def annotate(assets: list) -> list:
    """The assets, raw ones with a markdown table of each column's downstream impact. Read from the
    assets' own declarations (no Definitions is built, no warehouse or registry is read): every
    process that loads the code location pays it."""
    graph = DeclaredGraph(assets)
    columns = ColumnGraph(graph)

    def with_impact(spec: dg.AssetSpec) -> dg.AssetSpec:
        if spec.key.path[0] != "raw":
            return spec
        md = markdown(graph, columns, _table_of(graph.get(spec.key)))
        return spec.merge_attributes(metadata={IMPACT_METADATA: dg.MetadataValue.md(md)})

    return dg.map_asset_specs(with_impact, assets)
