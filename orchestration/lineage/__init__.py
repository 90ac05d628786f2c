"""OpenLineage for every asset materialization, from one place: after a Dagster run finishes, its
event log becomes OpenLineage events (events.py), which are spooled on disk and delivered in order
through the standard-configured transport (spool.py, transport.py). Called by the run-status
sensors (runs from the UI, sensors, schedules, backfills) and by `plumbline sync` after each run.
"""

from __future__ import annotations

import logging

import dagster as dg
from openlineage.client.serde import Serde

from orchestration.lineage import spool, transport

log = logging.getLogger(__name__)


def _enrich(client, event):
    """What OpenLineageClient.emit adds before sending (sourceCodeLocation from git, tags, env)."""
    event = client.add_environment_facets(event)
    event = client.update_event_tags_facets(event)
    return client.add_source_code_location_facet(event)


def emit_run(instance: dg.DagsterInstance, run_id: str, defs: dg.Definitions | None = None) -> spool.FlushResult | None:
    """Spool the lineage of a finished Dagster run (once per run) and flush the spool. Never raises."""
    try:
        if transport.disabled():
            return None
        if defs is None:
            from orchestration.definitions import defs
        client = transport.client()
        if not spool.already_spooled(run_id):
            from orchestration.lineage import events

            built = [_enrich(client, e) for e in events.for_run(instance, run_id, defs)]
            spool.append([Serde.to_dict(e) for e in built if client.filter_event(e) is not None], marker=run_id)
        return spool.flush(client.transport)
    except Exception:  # lineage must never fail a run: say so loudly and carry on
        log.exception("OpenLineage events for run %s could not be built or spooled", run_id)
        return None


def flush() -> spool.FlushResult | None:
    """Deliver whatever an earlier unreachable backend left in the spool."""
    try:
        if transport.disabled():
            return None
        return spool.flush(transport.client().transport)
    except Exception:
        log.exception("OpenLineage spool could not be flushed")
        return None
