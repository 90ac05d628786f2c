"""Lineage for runs launched from the UI, sensors, schedules and backfills: a run-status sensor per
terminal status hands the finished run to the emitter, and a sensor retries the spool while the
backend is down. The run itself never waits on a lineage backend."""

from __future__ import annotations

import dagster as dg

from orchestration import lineage
from orchestration.lineage.transport import LineageTransport
from orchestration.ml.registry import ModelRegistry
from orchestration.warehouse_resource import Warehouse


def _emitter(status: dg.DagsterRunStatus, name: str) -> dg.RunStatusSensorDefinition:
    @dg.run_status_sensor(run_status=status, name=name, default_status=dg.DefaultSensorStatus.RUNNING,
                          description=f"Emit OpenLineage events for every run that ends {status.value}.")
    def _sensor(context: dg.RunStatusSensorContext, lineage_transport: LineageTransport, warehouse: Warehouse,
                model_registry: ModelRegistry):
        # the run's asset graph comes from the code location this sensor belongs to; its datasets are
        # named where the deployment's warehouse and model registry keep them (the Lakehouse in production)
        result = lineage.emit_run(context.instance, context.dagster_run.run_id, context.repository_def,
                                  lineage_transport, warehouse, model_registry)
        if result and result.pending:
            context.log.warning(f"OpenLineage events not delivered yet; {result.pending} event(s) kept in the spool: {result.error}")

    return _sensor


@dg.sensor(name="lineage_spool", minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Deliver OpenLineage events kept in the spool while the backend was unreachable.")
def lineage_spool(context: dg.SensorEvaluationContext, lineage_transport: LineageTransport):
    result = lineage.flush(lineage_transport)
    return dg.SkipReason(f"lineage spool: {result.sent} sent, {result.pending} pending" if result else "lineage disabled")


sensors = [
    _emitter(dg.DagsterRunStatus.SUCCESS, "lineage_on_success"),
    _emitter(dg.DagsterRunStatus.FAILURE, "lineage_on_failure"),
    _emitter(dg.DagsterRunStatus.CANCELED, "lineage_on_cancel"),
    lineage_spool,
]
