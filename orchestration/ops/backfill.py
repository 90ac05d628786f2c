"""`plumbline backfill`: an asset backfill over a date range, on a running Dagster webserver or here.

Everything is checked before anything runs: the dates, the asset selection (Dagster's selection
syntax, e.g. `key:raw/flights+` for raw.flights and everything downstream) and that every selected
asset has daily partitions covering the range. On a server the backfill is launched with the GraphQL
mutation launchPartitionBackfill (the Python GraphQL client has no backfill call) and followed until
the daemon finishes it; --in-process runs the same partitions as one run per range here.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import dagster as dg
import requests

from orchestration import definitions
from orchestration.rebuild.partitions import partition_range
from orchestration.rebuild.ranges import RANGE_END, RANGE_START, contiguous_ranges

DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
SUCCESS = {"COMPLETED", "COMPLETED_SUCCESS"}

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
    ... on UnauthorizedError { message }
  }
}"""

STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      numPartitions
      assetBackfillData {
        assetBackfillStatuses {
          ... on AssetPartitionsStatusCounts {
            assetKey { path } numPartitionsTargeted numPartitionsInProgress numPartitionsMaterialized numPartitionsFailed
          }
        }
      }
    }
    ... on PythonError { message }
    ... on BackfillNotFoundError { message }
  }
}"""

PARTITION_STATUS = """
query Failed($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) {
    __typename
    ... on AssetNode { assetPartitionStatuses { ... on TimePartitionStatuses { ranges { status startKey endKey } } } }
  }
}"""


class BackfillError(Exception):
    """A request that cannot run; the message says what to change."""


@dataclass(frozen=True)
class Plan:
    assets: list[dg.AssetKey]
    partitions: dict[dg.AssetKey, list[str]]  # asset -> partition keys to run, in order
    skipped: tuple[dg.AssetKey, ...] = ()     # selected but not partitioned: not part of a date-range backfill

    @property
    def keys(self) -> list[str]:
        return sorted({k for ks in self.partitions.values() for k in ks})


def _date(text: str, flag: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise BackfillError(f"{flag} {text!r} is not a date like 2013-01-31") from None


def plan(defs: dg.Definitions, selection: str, start: str, end: str) -> Plan:
    """Resolve and check the request against the code location; raise BackfillError before any run."""
    first, last = _date(start, "--from"), _date(end, "--to")
    if last < first:
        raise BackfillError(f"--to {last} is before --from {first}")
    graph = defs.resolve_asset_graph()
    known = ", ".join(sorted(k.to_user_string() for k in graph.get_all_asset_keys()))
    try:
        keys = sorted(dg.AssetSelection.from_string(selection).resolve(graph), key=lambda k: k.to_user_string())
    except Exception as e:  # Dagster raises several types for unknown keys and bad syntax
        raise BackfillError(f"--assets {selection!r}: {e}. Known assets: {known}") from None
    if not keys:
        raise BackfillError(f"--assets {selection!r} matches no known asset (e.g. key:raw/flights+ is raw.flights and "
                            f"everything downstream). Known assets: {known}")
    partitions: dict[dg.AssetKey, list[str]] = {}
    # a selection such as key:raw/flights+ reaches unpartitioned assets (the model): they are left out
    skipped = tuple(k for k in keys if not isinstance(graph.get(k).partitions_def, dg.TimeWindowPartitionsDefinition))
    if skipped and len(skipped) == len(keys):
        raise BackfillError(f"{', '.join(k.to_user_string() for k in skipped)} has no daily partitions; a date-range "
                            "backfill cannot select it (snapshots are refreshed by `plumbline sync`, the model by the "
                            "train_model job)")
    keys = [k for k in keys if k not in skipped]
    for key in keys:
        pdef = graph.get(key).partitions_def
        all_keys = pdef.get_partition_keys()
        lo, hi = all_keys[0], all_keys[-1]
        if first.isoformat() < lo or last.isoformat() > hi:
            raise BackfillError(f"{first} .. {last} is outside the partitions of {key.to_user_string()} ({lo} .. {hi})")
        partitions[key] = [k for k in all_keys if first.isoformat() <= k <= last.isoformat()]
    return Plan(keys, partitions, skipped)


def only_failed(p: Plan, failed: dict[dg.AssetKey, set[str]]) -> Plan:
    return Plan(p.assets, {k: [x for x in ks if x in failed.get(k, set())] for k, ks in p.partitions.items()}, p.skipped)


class Server:
    """A running dagster-webserver, spoken to over GraphQL."""

    def __init__(self, url: str, timeout: float = 60.0):
        self.url = url.rstrip("/") + "/graphql"
        self.timeout = timeout

    def query(self, text: str, variables: dict) -> dict:
        try:
            r = requests.post(self.url, json={"query": text, "variables": variables}, timeout=self.timeout)
        except requests.RequestException as e:
            raise BackfillError(f"cannot reach the Dagster webserver at {self.url}: {e}; start it (make ui) or use --in-process") from None
        if r.status_code != 200:
            raise BackfillError(f"{self.url} answered HTTP {r.status_code}: {r.text[:300]}")
        body = r.json()
        if body.get("errors"):
            raise BackfillError(f"GraphQL error from {self.url}: {body['errors'][0].get('message')}")
        return body["data"]

    def failed_partitions(self, keys: list[dg.AssetKey]) -> dict[dg.AssetKey, set[str]]:
        out = {}
        for key in keys:
            node = self.query(PARTITION_STATUS, {"key": {"path": list(key.path)}})["assetNodeOrError"]
            spans = ((node.get("assetPartitionStatuses") or {}).get("ranges")) or []
            failed = set()
            for s in spans:
                if s["status"] == "FAILED":
                    failed.update(partition_range(s["startKey"], s["endKey"]))
            out[key] = failed
        return out

    def launch(self, p: Plan, title: str) -> str:
        params = {"title": title, "partitionsByAssets": [
            {"assetKey": {"path": list(k.path)}, "partitions": {"ranges": [{"start": a, "end": b} for a, b in contiguous_ranges(ks)]}}
            for k, ks in p.partitions.items() if ks]}
        result = self.query(LAUNCH, {"params": params})["launchPartitionBackfill"]
        if result["__typename"] != "LaunchBackfillSuccess":
            raise BackfillError(f"launchPartitionBackfill refused: {result}")
        return result["backfillId"]

    def follow(self, backfill_id: str, say=print, poll: float = 2.0, timeout: float = 3600.0) -> str:
        """Print progress whenever it changes; return the final status."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            b = self.query(STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            if b["__typename"] != "PartitionBackfill":
                raise BackfillError(f"backfill {backfill_id}: {b.get('message', b['__typename'])}")
            counts = [(s["assetKey"]["path"], s["numPartitionsTargeted"], s["numPartitionsMaterialized"],
                       s["numPartitionsFailed"], s["numPartitionsInProgress"])
                      for s in (b.get("assetBackfillData") or {}).get("assetBackfillStatuses") or [] if "assetKey" in s]
            line = f"{b['status']}: " + "; ".join(
                f"{'/'.join(path)} {done}/{total} materialized, {failed} failed, {running} in progress"
                for path, total, done, failed, running in counts)
            if line != last:
                say(line)
                last = line
            if b["status"] in DONE:
                return b["status"]
            if time.monotonic() > deadline:
                raise BackfillError(f"backfill {backfill_id} still {b['status']} after {timeout:.0f}s; follow it in the UI")
            time.sleep(poll)


def failed_in_instance(instance: dg.DagsterInstance, defs: dg.Definitions, keys: list[dg.AssetKey],
                       p: Plan) -> dict[dg.AssetKey, set[str]]:
    graph = defs.resolve_asset_graph()
    out = {}
    for key in keys:
        status = instance.get_status_by_partition(key, p.partitions[key], graph.get(key).partitions_def) or {}
        out[key] = {k for k, s in status.items() if s is not None and s.value == "FAILED"}
    return out


def run_in_process(runner, defs, p: Plan) -> bool:
    """One run per contiguous range of each partitioned job that holds the selected assets."""
    ok = True
    todo: dict[str, tuple[list[dg.AssetKey], set[str]]] = {}
    for key, ks in p.partitions.items():
        if not ks:
            continue
        job = next((j for j in definitions.PARTITIONED_JOBS if key in defs.resolve_job_def(j).asset_layer.selected_asset_keys), None)
        if job is None:
            raise BackfillError(f"no partitioned job holds {key.to_user_string()}: it cannot be backfilled in process")
        assets, keys = todo.setdefault(job, ([], set()))
        assets.append(key)
        keys.update(ks)
    for job, (assets, keys) in todo.items():
        for a, b in contiguous_ranges(sorted(keys)):
            ok &= runner.run(job, f"[{a} .. {b}] {', '.join(k.to_user_string() for k in assets)}",
                             tags={RANGE_START: a, RANGE_END: b}, selection=assets)
    return ok
