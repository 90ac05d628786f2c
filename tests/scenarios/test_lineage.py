"""OpenLineage on the real bundled data: every asset in the Definitions is materialized and its
events are checked (START and terminal, inputs, outputs, facets), every event validates against
the specification, the dataset graph rebuilt from the events alone equals the asset graph, and a
real HTTP receiver on 127.0.0.1 gets every event in order, once each when nothing crashes, across an outage."""

from __future__ import annotations

import gzip
import http.server
import json
import threading
from collections import defaultdict
from pathlib import Path

import dagster as dg
import pytest
from openlineage.client.serde import Serde

from openlineage_validation import asset_graph_edges, data_edges, errors, read_events, rebuilt_edges
from orchestration import catalog, lineage
from orchestration.ops import sync
from orchestration.definitions import defs
from orchestration.demo.feed import write_feed
from orchestration.lineage import datasets, events, spool
from orchestration.lineage.transport import LineageTransport
from orchestration.rebuild.ranges import RANGE_END, RANGE_START
from orchestration.warehouse_resource import Warehouse

pytestmark = pytest.mark.slow  # the clean year is fed and synced for the module

RANGE = ("2013-01-01", "2013-01-02")
# The runs `plumbline sync` would make for a clean feed, limited to two days.
RUNS = [("ingest_deliveries", {}), ("refresh_snapshots", {}),
        ("rebuild_flights", {RANGE_START: RANGE[0], RANGE_END: RANGE[1]}),
        ("rebuild_weather", {RANGE_START: RANGE[0], RANGE_END: RANGE[1]})]


def job_name(key: dg.AssetKey) -> str:
    return ".".join(key.path)


def run_jobs(runs, inst) -> list[str]:
    ids = []
    for job, tags in runs:
        result = defs.resolve_job_def(job).execute_in_process(instance=inst, tags=tags, raise_on_error=False)
        assert result.success, job
        lineage.emit_run(inst, result.run_id, defs, LineageTransport())
        ids.append(result.run_id)
    return ids


@pytest.fixture(scope="module")
def lineage_home(tmp_path_factory, dagster_home_dir):
    home = tmp_path_factory.mktemp("lineage")
    mp = pytest.MonkeyPatch()
    mp.setenv("PLUMBLINE_HOME", str(home))
    mp.setenv("DAGSTER_HOME", str(dagster_home_dir("lineage")))
    for var in ("OPENLINEAGE_URL", "OPENLINEAGE_DISABLED", "OPENLINEAGE_CONFIG"):
        mp.delenv(var, raising=False)
    mp.chdir(home)  # no openlineage.yml in the working directory: the default transport applies
    write_feed(home, profile="clean", seed=13)
    inst = sync.instance()
    run_ids = run_jobs(RUNS, inst)
    yield home, inst, run_ids
    mp.undo()


@pytest.fixture(scope="module")
def emitted(lineage_home) -> list[dict]:
    home, _, _ = lineage_home
    return read_events(home / "lineage" / "events.jsonl")


def by_job(emitted) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for e in emitted:
        out[e["job"]["name"]].append(e)
    return out


def test_default_transport_writes_json_lines_under_plumbline_home(lineage_home, emitted):
    home, _, run_ids = lineage_home
    assert emitted, "no events under $PLUMBLINE_HOME/lineage/"
    parents = {e["run"]["runId"] for e in emitted if e["job"]["facets"]["jobType"]["jobType"] == "JOB"}
    assert parents == set(run_ids)
    assert spool.pending() == []


def test_every_asset_has_start_and_terminal_events_with_inputs_outputs_and_facets(lineage_home, emitted):
    home, inst, run_ids = lineage_home
    graph = defs.resolve_asset_graph()
    jobs = by_job(emitted)
    parents = {e["run"]["runId"]: e for e in emitted if e["job"]["facets"]["jobType"]["jobType"] == "JOB"}
    # the runs here build the data layer; the ML layer's lineage is tested in test_ml_lineage.py
    # materialized ones: an observed operational table is read, not written (assets/operational.py)
    keys = sorted((k for k in graph.materializable_asset_keys if graph.get(k).group_name != "ml"), key=lambda k: k.to_user_string())
    assert len(keys) == 12
    for key in keys:
        node = graph.get(key)
        name = job_name(key)
        evs = jobs.get(name)
        assert evs, f"no lineage for {name}"
        runs = defaultdict(list)
        for e in evs:
            runs[e["run"]["runId"]].append(e["eventType"])
        assert all(types == ["START", "COMPLETE"] for types in runs.values()), (name, runs)
        end = [e for e in evs if e["eventType"] == "COMPLETE"][-1]

        # job
        facets = end["job"]["facets"]
        assert end["job"]["namespace"] == "plumbline"
        assert facets["jobType"]["integration"] == "DAGSTER" and facets["jobType"]["jobType"] == "ASSET"
        assert facets["jobType"]["processingType"] == "BATCH"
        assert facets["documentation"]["description"] == node.description
        assert [o["name"] for o in facets["ownership"]["owners"]] == list(node.owners)

        # parent: the Dagster run, with root, which has its own START and COMPLETE
        parent = end["run"]["facets"]["parent"]
        assert parent["run"]["runId"] in run_ids and parent["root"]["run"]["runId"] == parent["run"]["runId"]
        assert parents[parent["run"]["runId"]]["job"]["name"] == parent["job"]["name"]
        assert [e["eventType"] for e in emitted if e["run"]["runId"] == parent["run"]["runId"]] == ["START", "COMPLETE"]

        # inputs: upstream datasets, and for bronze the delivered files read
        inputs = {(i["namespace"], i["name"]) for i in end["inputs"]}
        upstream = {(datasets.place(graph.get(p)).namespace, datasets.place(graph.get(p)).name) for p in node.parent_keys}
        assert upstream <= inputs
        if key.path[0] == "bronze":
            files = inputs - upstream
            landing = home / "landing" / key.path[1]
            delivered = {str(p) for p in landing.rglob("*") if p.is_file() and not p.name.startswith((".", "_"))}
            assert {n for ns, n in files} == delivered and {ns for ns, _ in files} == {"file"}
            assert all(i["inputFacets"]["inputStatistics"]["rowCount"] >= 0 for i in end["inputs"])
        else:
            assert inputs == upstream
        if key.path[0] == "raw":
            [bronze_in] = end["inputs"]
            assert bronze_in["inputFacets"]["inputStatistics"]["fileCount"] >= 1

        # output: named by where the data lives
        [out] = end["outputs"]
        place = datasets.place(node)
        assert (out["namespace"], out["name"]) == (place.namespace, place.name)
        if key.path[0] != "bronze":
            assert out["namespace"] == f"duckdb://{home / 'warehouse.duckdb'}"
            assert out["name"] == "warehouse." + ".".join(key.path)
        schema = node.metadata["dagster/column_schema"]
        assert [f["name"] for f in out["facets"]["schema"]["fields"]] == [c.name for c in getattr(schema, "schema", schema).columns]
        assert out["facets"]["documentation"]["description"] == node.description
        assert out["facets"]["version"]["datasetVersion"]
        # the step's rows are the sum of its partitions' own row counts
        mats = [r.asset_materialization for r in inst.fetch_materializations(key, limit=1000).records
                if r.run_id == parent["run"]["runId"]]
        rows = sum(m.metadata["dagster/row_count"].value for m in mats)
        assert out["outputFacets"]["outputStatistics"]["rowCount"] == rows
        assert out["facets"]["dataQualityMetrics"]["rowCount"] == rows
        if node.partitions_def is not None:
            subset = out["outputFacets"]["subset"]["outputCondition"]
            assert [p["identifier"] for p in subset["partitions"]] == list(RANGE)
            nominal = end["run"]["facets"]["nominalTime"]
            assert nominal["nominalStartTime"].startswith("2013-01-01T00:00:00")
            assert nominal["nominalEndTime"].startswith("2013-01-03T00:00:00")
        else:
            assert "subset" not in out["outputFacets"] and "nominalTime" not in end["run"]["facets"]
        if key.path[0] in ("raw", "core", "marts"):
            lineage_fields = out["facets"]["columnLineage"]["fields"]
            assert set(lineage_fields) <= {f["name"] for f in out["facets"]["schema"]["fields"]}
            # DIRECT, or the key a join looks a row up by (INDIRECT/JOIN)
            assert all(t["type"] == "DIRECT" or (t["type"], t["subtype"]) == ("INDIRECT", "JOIN")
                       for f in lineage_fields.values() for i in f["inputFields"] for t in i["transformations"])
        if key.path[0] == "raw":
            checks = {s.name for s in defs.resolve_assets_def(key).check_specs}  # every check the asset declares
            assert {a["assertion"] for a in out["facets"]["dataQualityAssertions"]["assertions"]} == checks
            assert "deadLetter" in out["facets"]


def test_raw_row_counts_match_the_warehouse(lineage_home, emitted):
    end = [e for e in by_job(emitted)["raw.flights"] if e["eventType"] == "COMPLETE"][-1]
    with Warehouse().connect(read_only=True) as con:
        n = con.execute("SELECT count(*) FROM raw.flights WHERE event_date BETWEEN ?::DATE AND ?::DATE", list(RANGE)).fetchone()[0]
    assert n > 0 and end["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == n
    cols = end["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert cols["dep_delay"]["inputFields"][0]["transformations"][0]["subtype"] == "TRANSFORMATION"
    marts = [e for e in by_job(emitted)["marts.carrier_daily"] if e["eventType"] == "COMPLETE"][-1]
    fields = marts["outputs"][0]["facets"]["columnLineage"]["fields"]
    assert fields["flights"]["inputFields"][0]["transformations"][0]["subtype"] == "AGGREGATION"
    assert fields["carrier"]["inputFields"][0]["transformations"][0]["subtype"] == "IDENTITY"


def test_every_event_validates_against_the_specification(emitted):
    problems = [f"{e['job']['name']} {e['eventType']}: {p}" for e in emitted for p in errors(e)]
    assert problems == []


def test_validator_rejects_a_broken_event_and_an_unknown_facet_schema(emitted):
    event = json.loads(json.dumps(emitted[1]))
    event["eventType"] = "FINISHED"
    event["outputs"][0]["facets"]["schema"]["fields"][0]["name"] = 7
    event["run"]["facets"]["mystery"] = {"_producer": "x", "_schemaURL": "https://example.invalid/x.json#/$defs/X"}
    found = errors(event)
    assert any(p.startswith("core:") for p in found)
    assert any("schema" in p and "is not of type 'string'" in p for p in found)
    assert any("mystery" in p and "cannot resolve" in p for p in found)


def test_dataset_graph_from_events_equals_the_asset_graph(emitted):
    expected = data_edges(asset_graph_edges())
    assert len(expected) == 10  # 5 bronze -> raw, 4 raw -> core.flights, core -> marts
    assert data_edges(rebuilt_edges(emitted)) == expected


def test_run_ids_are_deterministic_and_a_run_is_emitted_once(lineage_home, emitted):
    _, inst, run_ids = lineage_home
    first = [e.run.runId for e in events.for_run(inst, run_ids[2], defs)]
    again = [e.run.runId for e in events.for_run(inst, run_ids[2], defs)]
    assert first == again and len(set(first)) == 4  # the Dagster run and raw, core, marts flights
    assert first[0] == run_ids[2]
    before = len(emitted)
    lineage.emit_run(inst, run_ids[2], defs, LineageTransport())  # as the run-status sensor would, after sync already did
    home = lineage_home[0]
    assert len(read_events(home / "lineage" / "events.jsonl")) == before


def test_a_failed_materialization_emits_fail_with_the_stack_trace(lineage_home, tmp_path):
    home, inst, _ = lineage_home
    from assets.bronze import bronze_asset
    from orchestration import catalog

    not_a_database = tmp_path / "warehouse_is_a_directory"
    not_a_database.mkdir()
    asset = bronze_asset(catalog.contracts()["airlines"])
    result = dg.materialize([asset], instance=inst, resources={"warehouse": Warehouse(path=str(not_a_database))},
                            raise_on_error=False)
    assert not result.success
    built = [Serde.to_dict(e) for e in events.for_run(inst, result.run_id, defs)]
    assert [(e["job"]["name"], e["eventType"]) for e in built] == [
        (result.dagster_run.job_name, "START"), ("bronze.airlines", "START"), ("bronze.airlines", "FAIL"),
        (result.dagster_run.job_name, "FAIL")]
    fail = built[2]
    error = fail["run"]["facets"]["errorMessage"]
    assert error["programmingLanguage"] == "python" and error["message"]
    assert 'File "' in error["stackTrace"] and "warehouse.py" in error["stackTrace"]
    assert "outputStatistics" not in fail["outputs"][0]["outputFacets"]
    assert [p for e in built for p in errors(e)] == []


# ------------------------------------------------------------------ HTTP transport, outage, spool


class Receiver:
    """A real OpenLineage HTTP endpoint on 127.0.0.1 that records what it acknowledged."""

    def __init__(self, port: int = 0):
        self.received: list[dict] = []
        self.headers: list[dict] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                outer.headers.append(dict(self.headers))
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def test_http_receiver_gets_every_event_in_order_exactly_once_across_an_outage(tmp_path, monkeypatch, dagster_home_dir):
    home = tmp_path / "home"
    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home_dir("lineage-http")))
    monkeypatch.chdir(tmp_path)
    write_feed(home, profile="clean", seed=13)
    receiver = Receiver()
    secret = "pl-test-key-4f1d"
    for k, v in {"TYPE": "http", "URL": f"http://127.0.0.1:{receiver.port}", "COMPRESSION": "gzip",
                 "AUTH__TYPE": "api_key", "AUTH__APIKEY": secret, "TIMEOUT": "2"}.items():
        monkeypatch.setenv(f"OPENLINEAGE__TRANSPORT__{k}", v)
    inst = sync.instance()
    try:
        [ingest] = run_jobs(RUNS[:1], inst)
        assert len(receiver.received) == 12  # ingest run + 5 bronze assets, START and COMPLETE each
        assert all(h["Authorization"] == f"Bearer {secret}" and h["Content-Encoding"] == "gzip" for h in receiver.headers)
        receiver.stop()

        # Backend down: the runs still succeed, their events wait in the spool.
        [snapshots, flights] = run_jobs(RUNS[1:3], inst)
        assert len(spool.pending()) == 8 + 8
        assert not (home / "lineage" / "events.jsonl").exists()

        receiver = Receiver(receiver.port)
        result = lineage.flush(LineageTransport())
        assert result.sent == 16 and result.pending == 0 and spool.pending() == []
        assert lineage.flush(LineageTransport()).sent == 0  # nothing is sent twice
    finally:
        receiver.stop()
    expected = [Serde.to_dict(e) for run_id in (snapshots, flights) for e in events.for_run(inst, run_id, defs)]
    received = receiver.received  # the restarted receiver: exactly the spooled events, in emission order
    assert [(e["run"]["runId"], e["eventType"]) for e in received] == [(e["run"]["runId"], e["eventType"]) for e in expected]
    assert len({(e["run"]["runId"], e["eventType"]) for e in received}) == len(received)
    assert not any(secret in json.dumps(e) for e in received)
    assert [p for e in received for p in errors(e)] == []


# the daemon hands a run-status sensor its repository; building that context by hand is a beta parameter
@pytest.mark.filterwarnings("ignore:Parameter `repository_def`:dagster.BetaWarning")
def test_run_status_sensor_emits_for_runs_dagster_launched(lineage_home):
    """Runs from the UI, schedules, sensors and backfills reach lineage through the run-status sensor."""
    home, inst, _ = lineage_home
    from orchestration.automation.lineage_sensors import sensors

    sensor = next(s for s in sensors if s.name == "lineage_on_success")
    result = defs.resolve_job_def("refresh_snapshots").execute_in_process(instance=inst, raise_on_error=False)
    assert result.success
    events_file = home / "lineage" / "events.jsonl"
    assert result.run_id not in events_file.read_text()
    success = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.RUN_SUCCESS)
    context = dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=success, dagster_instance=inst,
                                                 dagster_run=result.dagster_run, repository_def=defs.get_repository_def(),
                                                 resources=dict(defs.resources))  # as the daemon gives them
    sensor(context)
    mine = [e for e in read_events(events_file) if e["run"]["runId"] == result.run_id
            or e["run"]["facets"].get("parent", {}).get("run", {}).get("runId") == result.run_id]
    seen = [(e["job"]["name"], e["eventType"]) for e in mine]
    assert seen[0] == ("refresh_snapshots", "START") and seen[-1] == ("refresh_snapshots", "COMPLETE")
    assert sorted(seen[1:-1]) == sorted((f"raw.{s}", t) for s in ("airlines", "airports", "planes") for t in ("START", "COMPLETE"))
    assert all(seen.index((n, "START")) < seen.index((n, "COMPLETE")) for n, _ in seen)
