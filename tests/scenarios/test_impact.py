"""`plumbline impact`: what depends on a column, from a contract's column down to registered model
versions, read from the column lineage the OpenLineage events carry; and `plumbline contracts diff`
naming the downstream impact of each breaking change."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import yaml

from contracts.loader import CONTRACTS_DIR
from orchestration.lineage import impact
from orchestration.ml import config
from orchestration.ml.registry import ModelRegistry
from orchestration.ops.cli import main
from orchestration.warehouse_resource import Warehouse

PLANE_FEATURES = {"ml.flight_features.plane_age", "ml.flight_features.seats"}


@pytest.fixture(scope="module")
def graph():
    from orchestration.definitions import defs

    return defs.resolve_asset_graph()


def test_declarations_reach_the_plane_features_and_the_model_but_not_the_marts(graph):
    found = impact.analyse(graph, "raw.flights.tailnum")
    names = set(found.downstream_names())
    assert {"core.flights.tailnum", "core.flights.plane_model", "ml.flight_features.tailnum"} | PLANE_FEATURES <= names
    assert not any(n.startswith("marts.") for n in names)  # carrier_daily declares no column built from tailnum
    assert "marts/carrier_daily" not in {a["asset"] for a in found.assets}
    assert {f["feature"]: f["model_input"] for f in found.features} == {"tailnum": False, "plane_age": True, "seats": True}
    assert [(m["asset"], m["trained_on"]) for m in found.models] == [("ml/delay_model", ["plane_age", "seats"])]
    assert {("flights_tailnum_pattern", "raw/flights"), ("flights_tailnum_in_planes", "raw/flights"),
            ("training_set_split", "ml/training_set")} <= {(c["check"], c["asset"]) for c in found.checks}
    # a column nothing is built from has no downstream impact
    alone = impact.analyse(graph, "raw.flights.hour")
    assert alone.columns == [] and alone.models == [] and alone.assets == []


def test_the_foreign_key_into_a_dimension_is_impact_of_its_key(graph):
    found = impact.analyse(graph, "raw.planes.tailnum")
    assert ("flights_tailnum_in_planes", "raw/flights") in {(c["check"], c["asset"]) for c in found.checks}
    assert PLANE_FEATURES | {"core.flights.plane_model"} <= set(found.downstream_names())


def test_an_unknown_column_names_the_nearest(capsys):
    assert main(["impact", "raw.flights.tailnumber"]) == 2
    err = capsys.readouterr().err
    assert "raw.flights has no column 'tailnumber'" in err and "nearest: tailnum" in err
    assert main(["impact", "raw.flight.tailnum"]) == 2
    assert "no table 'raw.flight'; nearest: raw.flights" in capsys.readouterr().err


def test_contracts_diff_names_the_downstream_impact_of_a_removed_column(tmp_path, capsys):
    doc = yaml.safe_load((CONTRACTS_DIR / "flights.yaml").read_text())
    paths = []
    for name in ("old", "new"):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "flights.yaml")
        paths[-1].write_text(yaml.safe_dump(doc, sort_keys=False))
        doc["schema"][0]["properties"] = [p for p in doc["schema"][0]["properties"] if p["name"] != "tailnum"]
    assert main(["contracts", "diff", *map(str, paths)]) == 1
    out = capsys.readouterr().out.splitlines()
    removed = out.index(next(line for line in out if "column_removed" in line))
    impact_line = out[removed + 1]
    assert impact_line.strip().startswith("downstream of raw.flights.tailnum:")
    assert "core.flights.tailnum" in impact_line and all(f in impact_line for f in PLANE_FEATURES)
    assert "model plumbline_flight_delay via plane_age, seats" in impact_line
    assert not any("downstream of" in line for line in out if line.startswith("ok"))


def test_raw_assets_show_each_columns_impact_in_the_ui(graph):
    md = graph.get(dg.AssetKey(["raw", "flights"])).metadata[impact.IMPACT_METADATA].value
    row = next(line for line in md.splitlines() if line.startswith("| tailnum |"))
    assert "core.flights.tailnum" in row and "plane_age" in row and "plumbline_flight_delay" in row
    assert not any(line.startswith("| hour |") for line in md.splitlines())  # nothing is built from it


def test_the_ui_table_read_from_the_declarations_is_the_one_the_whole_code_location_gives(graph):
    # annotate reads the assets' specs, not a resolved graph: both must say the same of every raw table
    columns = impact.ColumnGraph(graph)
    raw = [n for n in graph.asset_nodes if n.key.path[0] == "raw"]
    assert len(raw) == 5
    for node in raw:
        assert node.metadata[impact.IMPACT_METADATA].value == impact.markdown(graph, columns, ".".join(node.key.path))


def test_impact_on_a_synced_year_lists_rows_partitions_and_model_versions(demo_year, capsys):
    assert main(["impact", "raw.flights.tailnum", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    with Warehouse().connect(read_only=True) as con:
        raw = con.execute("SELECT count(*), count(tailnum), count(DISTINCT event_date) FILTER (WHERE tailnum IS NOT NULL) "
                          "FROM raw.flights").fetchall()[0]
        core = con.execute("SELECT count(plane_model) FROM core.flights").fetchall()[0][0]
        seats = con.execute("SELECT count(seats) FROM ml.flight_features").fetchall()[0][0]
    assert (found["rows"]["rows"], found["rows"]["non_null"], found["rows"]["partitions"]) == raw
    assert sum(r["non_null"] for r in found["rows"]["ranges"]) == raw[1]
    by_name = {c["name"]: c for c in found["columns"]}
    assert by_name["core.flights.plane_model"]["rows"]["non_null"] == core > 0
    assert by_name["ml.flight_features.seats"]["rows"]["non_null"] == seats > 0
    cfg = config.load()
    registry = ModelRegistry()
    (model,) = found["models"]
    assert [v["version"] for v in model["versions"]] == [str(v.version) for v in registry.versions(cfg)] != []
    champion = registry.champion(cfg)
    for v in model["versions"]:
        assert set(v["trained_on"]) == {"plane_age", "seats"} and v["windows"]["train"] == f"{cfg.window('train').start}..{cfg.window('train').end}"
        assert ("champion" in v["aliases"]) == (v["version"] == champion)

    assert main(["impact", "raw.flights.tailnum"]) == 0
    text = capsys.readouterr().out
    assert "core.flights.tailnum" in text and "ml.flight_features.plane_age" in text and "ml.flight_features.seats" in text
    assert f"version {model['versions'][0]['version']}" in text and "note:" not in text
