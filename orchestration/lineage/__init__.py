"""OpenLineage for every asset materialization, from one place: after a Dagster run finishes, its
event log becomes OpenLineage events (events.py), which are spooled on disk first and then delivered
in order through the standard-configured client (spool.py, transport.py). Called by the run-status
sensors (runs from the UI, sensors, schedules, backfills) and by `plumbline sync` after each run.

events.py and spool.py load OpenLineage's client (0.3 s of CPU with requests and httpx2): they are
imported when lineage is emitted, not when the code location loads, so a step process never pays it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import dagster as dg

from orchestration.lineage import datasets, transport

if TYPE_CHECKING:
    from orchestration.lineage.spool import FlushResult

log = logging.getLogger(__name__)
CLOSE_TIMEOUT = 5.0  # seconds an asynchronous transport may take to wind down after a flush


def emit_run(instance: dg.DagsterInstance, run_id: str, defs: dg.Definitions | dg.RepositoryDefinition,
             via: transport.LineageTransport, warehouse=None, model_registry=None) -> FlushResult | None:
    """Spool the lineage of a finished Dagster run (once per run), then flush the spool through the
    deployment's transport `via`. Never raises. `defs` is the code location the run belongs to (its
    Definitions, or a sensor's repository); `warehouse` and `model_registry` are the deployment's
    resources, which name the datasets (left out: the embedded deployment's)."""
    if via.disabled():
        return None
    from openlineage.client.serde import Serde

    from orchestration.lineage import events, spool

    try:
        if not spool.already_spooled(run_id):
            naming = datasets.Naming(warehouse, model_registry)
            spool.append([Serde.to_dict(e) for e in events.for_run(instance, run_id, defs, naming)], marker=run_id)
    except Exception:  # lineage must never fail a run: say so loudly and carry on
        log.exception("OpenLineage events for run %s could not be built or spooled", run_id)
    return flush(via)


def flush(via: transport.LineageTransport) -> FlushResult | None:
    """Deliver what the spool holds through the configured transport; built here, after spooling,
    so a transport that cannot be built keeps the events for a later flush. Never raises."""
    if via.disabled():
        return None
    from orchestration.lineage import spool

    try:
        client = via.client()
    except Exception as e:
        kind, waiting = via.kind(), len(spool.pending())
        log.warning("OpenLineage transport `%s` could not be built (%s: %s)%s; %d event(s) kept in %s until it can",
                    kind, type(e).__name__, e, transport.install_hint(kind), waiting, spool.spool_dir())
        return spool.FlushResult(0, waiting, f"{type(e).__name__}: {e}")
    try:
        return spool.flush(client)
    finally:
        try:
            client.close(CLOSE_TIMEOUT)
        except Exception:
            log.warning("OpenLineage transport did not close cleanly", exc_info=True)
