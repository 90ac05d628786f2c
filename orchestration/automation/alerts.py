"""Alerts to a webhook: every failed run, and every run that ended with a failed asset check, is
posted as one JSON document to $PLUMBLINE_ALERT_WEBHOOK_URL (any receiver that takes a JSON POST:
a chat incoming webhook, an incident tool, a small relay). Besides OpenLineage, which records what
ran, this tells on-call that something needs them.

alert_on_run_failure    a run ended FAILURE: its failed steps, the assets (and partitions) they did
                        not materialize, the first error, the checks that failed in it.
alert_on_check_failure  a run ended SUCCESS but one of its asset checks failed (a WARN check, or an
                        ERROR check that does not block): which checks, on which assets and partitions.

With no URL set the sensors skip and say so. The URL often carries a token, so it is never logged:
messages name only its scheme and host. A receiver that stays down after a few attempts fails the
sensor's evaluation; Dagster writes that error (without the URL) into the run's own event log.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable

import dagster as dg

from orchestration import settings

WEBHOOK_ENV = "PLUMBLINE_ALERT_WEBHOOK_URL"
TIMEOUT_SECONDS = 10
ATTEMPTS = 3  # a receiver that restarts gets a second and a third chance, 0.5 s and 1 s later
MAX_ERROR_CHARS = 2000  # an error message is cut here: a chat receiver rejects huge documents
MAX_LISTED = 50  # failed assets or checks listed; a year's range run can fail 365 partitions of each
PARTITION_TAG, RANGE_START, RANGE_END = ("dagster/partition", "dagster/asset_partition_range_start",
                                         "dagster/asset_partition_range_end")
NO_URL = f"{WEBHOOK_ENV} is not set: no alert sent (set it to a webhook URL that takes a JSON POST)"
RUN_EVENTS = {dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
              dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED, dg.DagsterEventType.ASSET_MATERIALIZATION,
              dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.DagsterEventType.RUN_FAILURE}


class AlertNotDelivered(Exception):
    """The receiver did not take the alert; the message names its host, never the whole URL."""


def webhook_url() -> str | None:
    return os.environ.get(WEBHOOK_ENV) or None


def destination(url: str) -> str:
    """What may be shown of a webhook URL: its scheme and host, never the path or query holding a token."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "")


def post(url: str, payload: dict) -> None:
    """POST payload as JSON; retried a few times, then AlertNotDelivered."""
    body = json.dumps(payload, sort_keys=True, default=str).encode()
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "plumbline-alerts"})
    problem = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.5 * 2 ** (attempt - 1))
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                response.read()
                return
        except urllib.error.HTTPError as e:  # its text may repeat the URL: keep only the status
            problem = f"HTTP {e.code}"
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            problem = type(reason).__name__ if isinstance(reason, BaseException) else "unreachable"
    raise AlertNotDelivered(f"alert webhook at {destination(url)} did not take the alert after {ATTEMPTS} attempts: {problem}")


def _message(error) -> str:
    """A SerializableErrorInfo's message and its causes', without stack traces."""
    parts = []
    while error is not None and len(parts) < 5:
        parts.append(error.message.strip())
        error = error.cause
    return "\n".join(parts)[:MAX_ERROR_CHARS]


def _partitions(run: dg.DagsterRun) -> dict:
    tags = run.tags
    if tags.get(PARTITION_TAG):
        return {"partitions": [tags[PARTITION_TAG]]}
    if tags.get(RANGE_START):
        return {"partitions": [], "partition_range": {"start": tags[RANGE_START], "end": tags.get(RANGE_END)}}
    return {"partitions": []}


def _asset(key: dg.AssetKey, partition: str | None) -> dict:
    return {"asset": key.to_user_string(), "partition": partition}


def _check(evaluation) -> dict:
    return {"asset": evaluation.asset_key.to_user_string(), "check": evaluation.check_name,
            "severity": evaluation.severity.value, "partition": evaluation.partition,
            "description": evaluation.description}


def _failed_checks(events: Iterable) -> list[dict]:
    return [_check(e.event_specific_data) for e in events
            if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION and not e.event_specific_data.passed]


def _run_events(instance: dg.DagsterInstance, run_id: str) -> list:
    records = instance.get_records_for_run(run_id, of_type=RUN_EVENTS).records
    return [r.event_log_entry.dagster_event for r in records if r.event_log_entry.dagster_event]


def _common(kind: str, run: dg.DagsterRun) -> dict:
    url = settings.dagster_ui_url()
    return {"kind": kind, "run_id": run.run_id, "job": run.job_name, "status": run.status.value,
            **_partitions(run), "sensor": run.tags.get("dagster/sensor_name"),
            "backfill": run.tags.get("dagster/backfill"), "url": f"{url}/runs/{run.run_id}" if url else None}


def failure_payload(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict:
    """What on-call needs about a failed run: which steps, which assets and partitions, why."""
    events = _run_events(instance, run.run_id)
    steps = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    failed_steps = {e.step_key for e in steps}
    # the assets of failed steps, and those downstream of them that were not run
    failed = [_asset(e.asset_key, e.partition) for e in events
              if e.event_type == dg.DagsterEventType.ASSET_FAILED_TO_MATERIALIZE]
    if not failed:  # a run that failed before its steps started: what it planned and did not write
        done = {(e.asset_key, e.partition) for e in events if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION}
        failed = [_asset(e.asset_key, e.partition) for e in events
                  if e.event_type == dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED and (e.asset_key, e.partition) not in done]
    checks = _failed_checks(events)
    errors = [_message(e.step_failure_data.error) for e in steps if e.step_failure_data.error]
    errors += [e.message or "" for e in events if e.event_type == dg.DagsterEventType.RUN_FAILURE]
    return {**_common("run_failure", run), "failed_steps": sorted(failed_steps),
            "failed_assets": failed[:MAX_LISTED], "failed_assets_total": len(failed),
            "failed_checks": checks[:MAX_LISTED], "failed_checks_total": len(checks),
            "error": next((m for m in errors if m), "")[:MAX_ERROR_CHARS]}


def check_payload(instance: dg.DagsterInstance, run: dg.DagsterRun) -> dict | None:
    """The failed checks of a run that succeeded, or None when every check passed."""
    checks = _failed_checks(_run_events(instance, run.run_id))
    if not checks:
        return None
    assets = sorted({c["asset"] for c in checks})
    return {**_common("check_failure", run), "failed_checks": checks[:MAX_LISTED], "failed_checks_total": len(checks),
            "error": f"{len(checks)} asset check(s) failed on {', '.join(assets)}"}


def _send(context: dg.RunStatusSensorContext, payload: dict | None, url: str | None) -> None:
    if payload is None:
        return
    post(url, payload)
    context.log.info(f"{payload['kind']} alert for run {payload['run_id']} posted to {destination(url)}")


def _alert(context, payload_of) -> dg.SkipReason | None:
    """Post the alert payload_of(instance, run) builds, or skip and say why when no webhook is set."""
    url = webhook_url()
    if url is None:
        return dg.SkipReason(NO_URL)
    _send(context, payload_of(context.instance, context.dagster_run), url)
    return None


@dg.run_failure_sensor(name="alert_on_run_failure", default_status=dg.DefaultSensorStatus.RUNNING,
                       description=f"Posts every failed run (failed steps, assets and partitions, the error, failed "
                                   f"checks, a link to the run) as JSON to ${WEBHOOK_ENV}; skips when it is not set.")
def alert_on_run_failure(context: dg.RunFailureSensorContext):
    return _alert(context, failure_payload)


@dg.run_status_sensor(run_status=dg.DagsterRunStatus.SUCCESS, name="alert_on_check_failure",
                      default_status=dg.DefaultSensorStatus.RUNNING,
                      description=f"Posts the failed asset checks of every run that succeeded (WARN checks, and ERROR "
                                  f"checks that do not block) as JSON to ${WEBHOOK_ENV}; skips when it is not set.")
def alert_on_check_failure(context: dg.RunStatusSensorContext):
    return _alert(context, check_payload)


sensors = [alert_on_run_failure, alert_on_check_failure]
