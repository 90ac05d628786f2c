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
TRAINED_ON = {"ml.training_set.plane_age", "ml.training_set.seats"}


@pytest.fixture(scope="module")
def graph():
    from orchestration.definitions import defs

    return defs.resolve_asset_graph()


def test_declarations_reach_the_plane_features_and_the_model_but_not_the_marts(graph):
    found = impact.analyse(graph, "raw.flights.tailnum")
    names = set(found.downstream_names())
    assert {"core.flights.tailnum", "core.flights.plane_model", "core.flights.plane_manufacturer", "ml.flight_features.tailnum"} \
        | PLANE_FEATURES | TRAINED_ON == names
    assert not any(n.startswith("marts.") for n in names)  # carrier_daily declares no column built from tailnum
    assert "marts/carrier_daily" not in {a["asset"] for a in found.assets}
    # the training set declares its columns: it is reached column by column, the model behind it as a whole
    levels = {a["asset"]: (a["level"], a["columns"]) for a in found.assets}
    assert levels["ml/training_set"] == ("column", ["plane_age", "seats"])
    assert {k for k, (level, _) in levels.items() if level == "asset"} == {
        "ml/delay_model", "ml/model_evaluation", "ml/flight_predictions"}
    assert {f["feature"]: f["model_input"] for f in found.features} == {"tailnum": False, "plane_age": True, "seats": True}
    assert [(m["asset"], m["trained_on"]) for m in found.models] == [("ml/delay_model", ["plane_age", "seats"])]
    checks = {(c["check"], c["asset"]) for c in found.checks}
    assert {("flights_tailnum_pattern", "raw/flights"), ("flights_tailnum_in_planes", "raw/flights"),
            ("promotion_gate", "ml/model_evaluation")} <= checks
    assert ("training_set_split", "ml/training_set") not in checks  # it reads the split and keys, not the plane columns
    # a column a join brings depends on the key INDIRECT/JOIN; a key copied as is, and a value, DIRECT
    how = {r.name: r.transformation for r in found.columns}
    assert how["core.flights.tailnum"] == how["ml.flight_features.tailnum"] == "DIRECT/IDENTITY"
    assert how["core.flights.plane_model"] == how["core.flights.plane_manufacturer"] == "INDIRECT/JOIN"
    assert how["ml.flight_features.plane_age"] == how["ml.flight_features.seats"] == "INDIRECT/JOIN"
    assert how["ml.training_set.plane_age"] == how["ml.training_set.seats"] == "DIRECT/IDENTITY"
    # a column nothing is built from has no downstream impact
    alone = impact.analyse(graph, "raw.flights.hour")
    assert alone.columns == [] and alone.models == [] and alone.assets == []


def test_the_foreign_key_into_a_dimension_is_impact_of_its_key(graph):
    found = impact.analyse(graph, "raw.planes.tailnum")
    assert ("flights_tailnum_in_planes", "raw/flights") in {(c["check"], c["asset"]) for c in found.checks}
    assert PLANE_FEATURES | TRAINED_ON | {"core.flights.plane_model"} <= set(found.downstream_names())
    assert {r.transformation for r in found.columns if r.via == "raw.planes.tailnum"} == {"INDIRECT/JOIN"}
    # the value the join brings is the column's DIRECT input
    seats = impact.analyse(graph, "raw.planes.seats")
    assert [(r.name, r.transformation) for r in seats.columns] == [
        ("ml.flight_features.seats", "DIRECT/IDENTITY"), ("ml.training_set.seats", "DIRECT/IDENTITY")]
    assert [m["trained_on"] for m in seats.models] == [["seats"]]


def test_a_split_column_is_computed_from_event_date_and_a_feature_kept_out_of_training_is_no_model_input(graph):
    found = impact.analyse(graph, "ml.flight_features.event_date")
    split = next(r for r in found.columns if r.name == "ml.training_set.split")
    assert split.transformation == "DIRECT/TRANSFORMATION"
    # the features table's tailnum is not in the training set: nothing past it, no model
    alone = impact.analyse(graph, "ml.flight_features.tailnum")
    assert alone.columns == [] and alone.models == []
    assert {a["asset"] for a in alone.assets} == {"ml/flight_predictions"}


def test_the_column_lineage_of_every_asset_validates_against_the_specification(graph):
    from openlineage.client.event_v2 import Job, OutputDataset, Run, RunEvent, RunState
    from openlineage.client.serde import Serde
    from openlineage_validation import errors

    from orchestration.lineage import datasets, events

    # the declarations as the events carry them: events turns them into OpenLineage's facet
    outputs = [OutputDataset(namespace=p.namespace, name=p.name, facets={"columnLineage": events.column_lineage_facet(declared)})
               for node in graph.asset_nodes if (declared := datasets.column_lineage_facet(graph, node)) is not None
               for p in [datasets.place(node)]]
    assert "warehouse.ml.training_set" in {o.name for o in outputs}
    event = RunEvent(eventType=RunState.COMPLETE, eventTime="2013-12-31T00:00:00Z",
                     run=Run(runId="01890f1e-0000-7000-8000-000000000000"), job=Job(namespace="plumbline", name="declarations"),
                     outputs=outputs)
    assert errors(Serde.to_dict(event)) == []
    core = Serde.to_dict(next(o for o in outputs if o.name == "warehouse.core.flights"))["facets"]["columnLineage"]["fields"]
    assert {(i["name"], i["field"], i["transformations"][0]["type"], i["transformations"][0].get("subtype"))
            for i in core["carrier_name"]["inputFields"]} == {
        ("warehouse.raw.flights", "carrier", "INDIRECT", "JOIN"), ("warehouse.raw.airlines", "name", "DIRECT", "TRANSFORMATION"),
        ("warehouse.raw.airlines", "carrier", "INDIRECT", "JOIN")}


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
