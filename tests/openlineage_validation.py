"""Validate OpenLineage events offline: the core schema (2-0-2) and every facet against the schema
its own _schemaURL names. Official schemas come from tests/openlineage_spec/ (a copy of the
specification); plumbline's custom facets from orchestration/lineage/schemas/."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from orchestration.lineage.facets import SCHEMAS_DIR

SPEC_DIR = Path(__file__).parent / "openlineage_spec"
CORE = "https://openlineage.io/spec/2-0-2/OpenLineage.json"


@lru_cache(maxsize=1)
def registry() -> Registry:
    resources = []
    for path in [*SPEC_DIR.rglob("*.json"), *SCHEMAS_DIR.glob("*.json")]:
        doc = json.loads(path.read_text())
        resources.append((doc["$id"], Resource.from_contents(doc, default_specification=DRAFT202012)))
    return Registry().with_resources(resources)


@lru_cache(maxsize=None)
def _validator(ref: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": ref}, registry=registry(), format_checker=Draft202012Validator.FORMAT_CHECKER)


def _facets(event: dict):
    yield "run", (event.get("run") or {}).get("facets") or {}
    yield "job", (event.get("job") or {}).get("facets") or {}
    for side in ("inputs", "outputs"):
        for ds in event.get(side) or []:
            for kind in ("facets", "inputFacets", "outputFacets"):
                yield f"{side}[{ds['namespace']}:{ds['name']}].{kind}", ds.get(kind) or {}


def errors(event: dict) -> list[str]:
    """Every schema violation in one event; [] when it is valid."""
    out = [f"core: {e.json_path}: {e.message[:300]}" for e in _validator(CORE).iter_errors(event)]
    for where, facets in _facets(event):
        for name, facet in facets.items():
            url = facet.get("_schemaURL") if isinstance(facet, dict) else None
            if not url:
                out.append(f"{where}.{name}: no _schemaURL")
                continue
            try:
                out += [f"{where}.{name} ({url}): {e.json_path}: {e.message}" for e in _validator(url).iter_errors(facet)]
            except Exception as e:  # an unresolvable _schemaURL is a failure, not a skip
                out.append(f"{where}.{name}: cannot resolve {url}: {type(e).__name__}: {e}")
    return out


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def rebuilt_edges(events: list[dict]) -> set:
    """Dataset edges read from COMPLETE events alone: input -> output, where the input is itself
    written by some asset job (delivered files are sources, not assets)."""
    done = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["facets"]["jobType"]["jobType"] == "ASSET"]
    written = {(o["namespace"], o["name"]) for e in done for o in e["outputs"]}
    return {((i["namespace"], i["name"]), (o["namespace"], o["name"]))
            for e in done for o in e["outputs"] for i in e["inputs"] if (i["namespace"], i["name"]) in written}


def asset_graph_edges(naming=None) -> set:
    """The Dagster asset graph's edges, each asset named by where its data lives (`naming`: a
    deployment's datasets.Naming, default the embedded one's)."""
    from orchestration.definitions import defs
    from orchestration.lineage import datasets

    graph = defs.resolve_asset_graph()
    place = {k: datasets.place(graph.get(k), naming) for k in graph.get_all_asset_keys()}
    return {((place[p].namespace, place[p].name), (place[k].namespace, place[k].name))
            for k in graph.get_all_asset_keys() for p in graph.get(k).parent_keys}


def data_edges(edges: set) -> set:
    """Edges between data-layer datasets only (the ML layer has its own lineage tests)."""
    def ml(ds) -> bool:
        return ds[1].startswith("models/") or ds[1].split(".")[1:2] == ["ml"]  # warehouse.ml.*, lake.ml.*
    return {(a, b) for a, b in edges if not ml(a) and not ml(b)}
