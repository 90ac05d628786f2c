"""OpenLineage for the ML layer on the real demo year, built once per session (feed demo + one
`plumbline sync`): every event validates against the official schemas; the registered model
version is ml/delay_model's output dataset and the exact input of evaluation and scoring; features
and predictions say which partitions they wrote and read; the dataset graph the events describe is
the asset graph; sync reports no lineage error."""

from __future__ import annotations

import datetime as dt
import re
from types import SimpleNamespace

import dagster as dg
import pytest
from openlineage.client.serde import Serde

from assets import ml
from openlineage_validation import asset_graph_edges, errors, read_events, rebuilt_edges
from orchestration.ops import sync as sync_module
from orchestration.definitions import TRAIN_JOB, defs
from orchestration import names
from orchestration.lineage import datasets, events

MODEL_NAME = ml.CFG.model_name
VERSION_NAME = re.compile(rf"^models/{re.escape(MODEL_NAME)}/versions/(\d+)$")


@pytest.fixture(scope="module")
def demo(demo_year, tmp_path_factory):
    """The session's demo year (one sync, MLflow in its default local store), read only; what sync
    said and what the lineage emitter logged are kept."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path_factory.mktemp("ml-lineage-cwd"))  # no openlineage.yml here
        yield SimpleNamespace(home=demo_year.home, said=demo_year.said, logged=demo_year.logged,
                              events=read_events(demo_year.home / "lineage" / "events.jsonl"), instance=sync_module.instance())


def asset_events(demo, job: str, kind: str | None = None) -> list[dict]:
    return [e for e in demo.events if e["job"]["name"] == job and (kind is None or e["eventType"] == kind)]


def latest(demo, key: dg.AssetKey) -> dict:
    mat = demo.instance.get_latest_materialization_event(key).asset_materialization
    return {k: v.value for k, v in mat.metadata.items()}


def registry_namespace(demo) -> str:
    return f"sqlite:///{demo.home / 'mlflow' / 'mlflow.db'}"


def test_sync_reports_no_lineage_error(demo):
    assert demo.logged == []
    assert [line for line in demo.said if "lineage" in line.lower()] == []


def test_every_event_validates_and_every_ml_asset_is_traced(demo):
    assert [f"{e['job']['name']} {e['eventType']}: {p}" for e in demo.events for p in errors(e)] == []
    for key in (ml.FEATURES, ml.TRAINING_SET, ml.MODEL, ml.EVALUATION, ml.PREDICTIONS):
        runs: dict[str, list[str]] = {}
        for e in asset_events(demo, ".".join(key.path)):
            runs.setdefault(e["run"]["runId"], []).append(e["eventType"])
        assert runs and all(types == ["START", "COMPLETE"] for types in runs.values()), (key, runs)


def test_delay_model_outputs_the_registered_model_version(demo):
    version = str(latest(demo, ml.MODEL)[ml.MODEL_VERSION])
    start, end = asset_events(demo, "ml.delay_model", "START")[-1], asset_events(demo, "ml.delay_model", "COMPLETE")[-1]
    [out] = end["outputs"]
    assert (out["namespace"], out["name"]) == (registry_namespace(demo), f"models/{MODEL_NAME}/versions/{version}")
    assert [(o["namespace"], o["name"]) for o in start["outputs"]] == [(out["namespace"], out["name"])]
    facets = out["facets"]
    assert facets["version"]["datasetVersion"] == version
    assert facets["datasetType"] == {**facets["datasetType"], "datasetType": "MODEL", "subType": "MODEL_VERSION"}
    assert [(h["type"], h["name"]) for h in facets["hierarchy"]["hierarchy"]] == [("REGISTERED_MODEL", MODEL_NAME),
                                                                                  ("MODEL_VERSION", version)]
    node = defs.resolve_asset_graph().get(ml.MODEL)
    assert facets["documentation"]["description"] == node.description
    assert [o["name"] for o in facets["ownership"]["owners"]] == list(node.owners)
    training_set = datasets.place(defs.resolve_asset_graph().get(ml.TRAINING_SET))
    assert [(i["namespace"], i["name"]) for i in end["inputs"]] == [(training_set.namespace, training_set.name)]


def test_evaluation_and_predictions_read_the_exact_version(demo):
    evaluated = latest(demo, ml.EVALUATION)
    scored = latest(demo, ml.PREDICTIONS)
    for job, versions in (("ml.model_evaluation", {str(evaluated["challenger_version"]), str(evaluated["champion_version"])}),
                          ("ml.flight_predictions", {str(scored[ml.MODEL_VERSION])})):
        versions.discard("none")
        end = asset_events(demo, job, "COMPLETE")[-1]
        models = [i for i in end["inputs"] if VERSION_NAME.match(i["name"])]
        assert {VERSION_NAME.match(i["name"]).group(1) for i in models} == versions, job
        assert all(i["namespace"] == registry_namespace(demo) for i in models)
        assert all(i["facets"]["version"]["datasetVersion"] == VERSION_NAME.match(i["name"]).group(1) for i in models)
        assert all(i["facets"]["datasetType"]["datasetType"] == "MODEL" for i in models)
        assert not [i for i in end["inputs"] if i["name"] == f"models/{MODEL_NAME}"], "the registered model is named by version"
        start = asset_events(demo, job, "START")[-1]
        assert sorted(i["name"] for i in start["inputs"]) == sorted(i["name"] for i in end["inputs"])
    # the version scoring read is the one delay_model wrote: the graph joins at the model version
    written = asset_events(demo, "ml.delay_model", "COMPLETE")[-1]["outputs"][0]["name"]
    assert written in {i["name"] for i in asset_events(demo, "ml.flight_predictions", "COMPLETE")[-1]["inputs"]}


def test_evaluation_names_challenger_and_champion_as_two_inputs():
    """A champion other than the challenger is a second input; "none" (no champion yet) is none."""
    graph = defs.resolve_asset_graph()
    node = graph.get(ml.EVALUATION)
    both = datasets.models_read(graph, node, {"challenger_version": dg.MetadataValue.text("2"), "champion_version": "1"})
    assert [(m.place.name, m.version) for m in both] == [(f"models/{MODEL_NAME}/versions/2", "2"),
                                                         (f"models/{MODEL_NAME}/versions/1", "1")]
    assert [m.version for m in datasets.models_read(graph, node, {"challenger_version": "3", "champion_version": "none"})] == ["3"]
    assert [m.version for m in datasets.models_read(graph, node, {"challenger_version": "3", "champion_version": "3"})] == ["3"]
    assert datasets.models_read(graph, graph.get(ml.FEATURES), {}) == []


def test_a_feature_day_reads_its_look_back_window_of_core_flights():
    """A day of features reads that day and the `rolling_days` before it, through the asset's partition mapping."""
    graph = defs.resolve_asset_graph()
    read = events._partitions_read(graph, graph.get(ml.FEATURES), dg.AssetKey(["core", "flights"]), ["2013-03-10"])
    day = dt.date(2013, 3, 10)
    assert read == [(day - dt.timedelta(days=n)).isoformat() for n in range(ml.CFG.rolling_days, -1, -1)]
    assert events._partitions_read(graph, graph.get(ml.FEATURES), dg.AssetKey(["raw", "weather"]), ["2013-03-10"]) == ["2013-03-10"]
    assert events._partitions_read(graph, graph.get(ml.FEATURES), dg.AssetKey(["raw", "planes"]), ["2013-03-10"]) == []


def test_features_and_predictions_carry_partitions_and_column_lineage(demo):
    graph = defs.resolve_asset_graph()
    features = asset_events(demo, "ml.flight_features", "COMPLETE")
    assert features
    for end in features:
        [out] = end["outputs"]
        written = [p["identifier"] for p in out["outputFacets"]["subset"]["outputCondition"]["partitions"]]
        assert written and end["run"]["facets"]["nominalTime"]["nominalStartTime"].startswith(written[0])
        assert out["outputFacets"]["outputStatistics"]["rowCount"] > 0
        flights = next(i for i in end["inputs"] if i["name"] == "warehouse.core.flights")
        read = [p["identifier"] for p in flights["inputFacets"]["subset"]["inputCondition"]["partitions"]]
        # the rolling window reads the previous days too, from the first day of data on
        first = max(ml.DAILY.get_first_partition_key(),
                    (dt.date.fromisoformat(written[0]) - dt.timedelta(days=ml.CFG.rolling_days)).isoformat())
        assert read[0] == first and read[-1] == written[-1]
        lineage = out["facets"]["columnLineage"]["fields"]
        assert set(lineage) <= {f["name"] for f in out["facets"]["schema"]["fields"]}
        share = lineage["co_on_time_share"]["inputFields"]
        assert [(i["name"], i["field"], i["transformations"][0]["subtype"]) for i in share] == [
            ("warehouse.core.flights", "arr_delay", "AGGREGATION")]
        assert lineage["temp"]["inputFields"][0]["name"] == "warehouse.raw.weather"
    predictions = asset_events(demo, "ml.flight_predictions", "COMPLETE")[-1]
    [out] = predictions["outputs"]
    scored = [p["identifier"] for p in out["outputFacets"]["subset"]["outputCondition"]["partitions"]]
    assert scored[0] >= ml.CFG.scoring_start.isoformat()
    feature_input = next(i for i in predictions["inputs"] if i["name"] == "warehouse.ml.flight_features")
    assert [p["identifier"] for p in feature_input["inputFacets"]["subset"]["inputCondition"]["partitions"]] == scored
    assert {a["assertion"] for a in out["facets"]["dataQualityAssertions"]["assertions"]} == {*ml.DRIFT_CHECKS, names.DRIFT_BY_PARTITION}
    training = asset_events(demo, "ml.training_set", "COMPLETE")[-1]
    assert [i["name"] for i in training["inputs"]] == ["warehouse.ml.flight_features"]
    assert "subset" not in training["inputs"][0]["inputFacets"], "the training set reads the feature table, not a range"
    assert training["outputs"][0]["facets"]["version"]["datasetVersion"] == latest(demo, ml.TRAINING_SET)["training_set_version"]
    trained = training["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert set(trained) == {f["name"] for f in training["outputs"][0]["facets"]["schema"]["fields"]}
    assert [(i["name"], i["field"], i["transformations"][0]["subtype"]) for i in trained["seats"]["inputFields"]] == [
        ("warehouse.ml.flight_features", "seats", "IDENTITY")]
    # the promotion gate runs as a step of its own and still shows on the evaluation it judged
    evaluation = asset_events(demo, "ml.model_evaluation", "COMPLETE")[-1]["outputs"][0]
    assert [a["assertion"] for a in evaluation["facets"]["dataQualityAssertions"]["assertions"]] == ["promotion_gate"]
    assert graph.get(ml.PREDICTIONS).partitions_def is not None


def test_dataset_graph_from_events_is_the_asset_graph_joined_at_model_versions(demo):
    """Read with every model version as its registered model, the events give the asset graph,
    plus one edge the graph cannot show: scoring reads the champion version from the registry."""
    def registered(ds):
        ns, name = ds
        m = VERSION_NAME.match(name)
        return (ns, f"models/{MODEL_NAME}") if m else ds

    edges = {(registered(a), registered(b)) for a, b in rebuilt_edges(demo.events)}
    graph = defs.resolve_asset_graph()
    model = datasets.place(graph.get(ml.MODEL))
    predictions = datasets.place(graph.get(ml.PREDICTIONS))
    assert (model.namespace, model.name) == (registry_namespace(demo), f"models/{MODEL_NAME}")
    assert edges == asset_graph_edges() | {((model.namespace, model.name), (predictions.namespace, predictions.name))}


def test_a_model_run_that_registered_nothing_names_the_registered_model(demo_year_copy, monkeypatch):
    """With the registry unreachable ml/delay_model fails before any version exists: START and FAIL
    name the registered model itself, and the events still validate."""
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # MLflow itself exports both once a client was made
        monkeypatch.setenv(var, "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(demo_year_copy)  # no openlineage.yml here
    inst = sync_module.instance()  # the copy's: the failed run stays out of the shared year
    result = defs.resolve_job_def(TRAIN_JOB).execute_in_process(
        instance=inst, asset_selection=[ml.MODEL], run_config=sync_module.RUN_CONFIG, raise_on_error=False)
    assert not result.success
    built = [Serde.to_dict(e) for e in events.for_run(inst, result.run_id, defs)]
    model = [e for e in built if e["job"]["name"] == "ml.delay_model"]
    assert [e["eventType"] for e in model] == ["START", "FAIL"]
    for e in model:
        [out] = e["outputs"]
        assert (out["namespace"], out["name"]) == ("http://127.0.0.1:9", f"models/{MODEL_NAME}")
        assert out["facets"]["datasetType"]["subType"] == "REGISTERED_MODEL" and "version" not in out["facets"]
    assert "errorMessage" in model[-1]["run"]["facets"]
    assert [p for e in built for p in errors(e)] == []
