"""automation/alerts: a real failed run and a real run with a failed check on a persistent Dagster
instance, handed to the alert sensors as the daemon hands them (a run-status sensor context built
from the run's own terminal event), posting to a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from orchestration import catalog
from orchestration.automation import alerts
from orchestration.quality import partition_checks

TOKEN = "T0KEN-s3cret-9f8e7d"
DAILY = catalog.partitions_def(catalog.contracts()["flights"])


class Receiver:
    """A webhook receiver: keeps every JSON body it is sent, answers with `status`."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.paths.append(self.path)
                receiver.bodies.append(json.loads(body))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/{TOKEN}?token={TOKEN}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    r = Receiver()
    monkeypatch.setenv(alerts.WEBHOOK_ENV, r.url)
    monkeypatch.setenv("PLUMBLINE_DAGSTER_URL", "http://ui.example:3000/")
    yield r
    r.close()


@pytest.fixture
def instance(dagster_home_dir):
    with dg.DagsterInstance.local_temp(tempdir=str(dagster_home_dir("alerts"))) as inst:
        yield inst


@dg.asset(key=["raw", "upstream"], partitions_def=DAILY)
def upstream() -> None:
    pass


@dg.asset(key=["core", "breaks"], deps=[upstream], partitions_def=DAILY)
def breaks() -> None:
    raise ValueError("core.breaks: the join found no airports")


@dg.asset(key=["marts", "after_breaks"], deps=[breaks], partitions_def=DAILY)
def after_breaks() -> None:
    pass


@dg.asset(key=["raw", "checked"], partitions_def=DAILY,
          check_specs=[dg.AssetCheckSpec("row_count_in_range", asset=["raw", "checked"]),
                       dg.AssetCheckSpec("has_rows", asset=["raw", "checked"])])
def checked():
    yield dg.MaterializeResult()
    yield dg.AssetCheckResult(check_name="row_count_in_range", passed=False, severity=dg.AssetCheckSeverity.WARN,
                              description="12 rows, expected at least 100")
    yield dg.AssetCheckResult(check_name="has_rows", passed=True)


def terminal(instance, run_id, sensor, event_type):
    """The run-status sensor context the daemon would build for this run's terminal event."""
    record = instance.get_records_for_run(run_id, of_type=event_type).records[0]
    return dg.build_run_status_sensor_context(sensor_name=sensor.name, dagster_event=record.event_log_entry.dagster_event,
                                              dagster_instance=instance, dagster_run=instance.get_run_by_id(run_id))


def failed_run(instance) -> str:
    result = dg.materialize([upstream, breaks, after_breaks], instance=instance, partition_key="2013-01-02", raise_on_error=False)
    assert not result.success
    return result.run_id


def test_a_failed_run_is_posted_with_its_steps_assets_partition_error_and_link(receiver, instance, caplog):
    run_id = failed_run(instance)
    context = terminal(instance, run_id, alerts.alert_on_run_failure, dg.DagsterEventType.RUN_FAILURE).for_run_failure()
    with caplog.at_level(logging.DEBUG):
        assert alerts.alert_on_run_failure(context) is None
    [body] = receiver.bodies
    assert receiver.paths == [f"/hooks/{TOKEN}?token={TOKEN}"]
    assert body["kind"] == "run_failure" and body["run_id"] == run_id and body["status"] == "FAILURE"
    assert body["job"] == "__ephemeral_asset_job__"
    assert body["failed_steps"] == ["core__breaks"]
    assert sorted(body["failed_assets"], key=lambda a: a["asset"]) == [
        {"asset": "core/breaks", "partition": "2013-01-02"},
        {"asset": "marts/after_breaks", "partition": "2013-01-02"}]
    assert body["failed_assets_total"] == 2 and body["partitions"] == ["2013-01-02"]
    assert "the join found no airports" in body["error"]
    assert body["url"] == f"http://ui.example:3000/runs/{run_id}"
    assert TOKEN not in caplog.text


def test_a_run_with_a_failed_check_is_posted_and_a_run_whose_checks_pass_is_not(receiver, instance):
    result = dg.materialize([checked], instance=instance, partition_key="2013-03-04")
    assert result.success
    sensor = alerts.alert_on_check_failure
    assert sensor(terminal(instance, result.run_id, sensor, dg.DagsterEventType.RUN_SUCCESS)) is None
    [body] = receiver.bodies
    assert body["kind"] == "check_failure" and body["run_id"] == result.run_id and body["partitions"] == ["2013-03-04"]
    assert body["failed_checks_total"] == 1
    assert body["failed_checks"] == [{"asset": "raw/checked", "check": "row_count_in_range", "severity": "WARN",
                                      "partition": None, "description": "12 rows, expected at least 100"}]

    clean = dg.materialize([upstream], instance=instance, partition_key="2013-03-04")
    assert sensor(terminal(instance, clean.run_id, sensor, dg.DagsterEventType.RUN_SUCCESS)) is None
    assert len(receiver.bodies) == 1, "nothing to say about a run whose checks passed"


@dg.asset(key=["raw", "by_day"], partitions_def=DAILY, backfill_policy=dg.BackfillPolicy.single_run(),
          check_specs=[partition_checks.spec("day_ok", dg.AssetKey(["raw", "by_day"]), DAILY, "each day has rows")])
def by_day(context):
    yield dg.MaterializeResult()
    yield from partition_checks.verdicts(context, "day_ok", {
        day: partition_checks.Verdict(passed=day != "2013-03-05", description=f"{day}: rows" if day != "2013-03-05" else "0 rows")
        for day in context.partition_keys})


def test_a_range_run_with_a_bad_day_is_posted_with_that_day_and_the_runs_summary(receiver, instance):
    tags = {alerts.RANGE_START: "2013-03-04", alerts.RANGE_END: "2013-03-06"}
    result = dg.materialize([by_day], instance=instance, tags=tags)
    assert result.success, "a partitioned check never blocks"
    sensor = alerts.alert_on_check_failure
    assert sensor(terminal(instance, result.run_id, sensor, dg.DagsterEventType.RUN_SUCCESS)) is None
    [body] = receiver.bodies
    assert body["partition_range"] == {"start": "2013-03-04", "end": "2013-03-06"} and body["failed_checks_total"] == 2
    assert [(c["check"], c["partition"], c["description"]) for c in body["failed_checks"]] == [
        ("day_ok", "2013-03-05", "0 rows"),
        ("day_ok", None, "1 of 3 partition(s) of this run failed: 2013-03-05; 2013-03-05: 0 rows")]


def test_without_a_url_the_sensors_skip_and_say_why(instance, monkeypatch):
    monkeypatch.delenv(alerts.WEBHOOK_ENV, raising=False)
    context = terminal(instance, failed_run(instance), alerts.alert_on_run_failure,
                       dg.DagsterEventType.RUN_FAILURE).for_run_failure()
    skipped = alerts.alert_on_run_failure(context)
    assert isinstance(skipped, dg.SkipReason) and alerts.WEBHOOK_ENV in skipped.skip_message


def test_a_receiver_that_refuses_is_reported_by_host_never_with_the_token(receiver, instance, caplog):
    receiver.status = 500
    context = terminal(instance, failed_run(instance), alerts.alert_on_run_failure,
                       dg.DagsterEventType.RUN_FAILURE).for_run_failure()
    with caplog.at_level(logging.DEBUG), pytest.raises(alerts.AlertNotDelivered) as refused:
        alerts.alert_on_run_failure(context)
    assert len(receiver.bodies) == alerts.ATTEMPTS
    assert "HTTP 500" in str(refused.value) and "http://127.0.0.1:" in str(refused.value)
    assert TOKEN not in str(refused.value) and TOKEN not in caplog.text


def test_an_unreachable_receiver_is_named_by_host_only(instance, monkeypatch):
    receiver = Receiver()
    receiver.close()  # nothing listens on its port any more
    monkeypatch.setenv(alerts.WEBHOOK_ENV, receiver.url)
    with pytest.raises(alerts.AlertNotDelivered) as refused:
        alerts.post(receiver.url, {"kind": "test"})
    assert TOKEN not in str(refused.value) and "127.0.0.1" in str(refused.value)


def test_a_daemon_tick_posts_the_runs_that_failed_since_the_last_tick_once(receiver, instance):
    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor) as context:
            data = alerts.alert_on_run_failure.evaluate_tick(context)
            return context.cursor, data

    cursor, _ = tick(None)  # the first tick starts from now: history is not replayed
    assert receiver.bodies == []
    run_ids = [failed_run(instance), failed_run(instance)]
    cursor, _ = tick(cursor)
    assert [b["run_id"] for b in receiver.bodies] == run_ids
    tick(cursor)
    assert len(receiver.bodies) == 2, "each failed run is posted once"
