"""OpenLineage events for one finished Dagster run, built from its event log alone.

The run is the parent job (START and its terminal event); every asset step in it is a child run
with one START and one terminal event (COMPLETE, FAIL or ABORT), a run id deterministic for
(asset, partition or range, Dagster run), inputs (upstream datasets with the partitions read
through the partition mapping; the registered model versions read; delivered files for bronze),
outputs named by where the data lives (for a model, the version registered), and the facets the
asset and its checks know. No asset code emits anything: the event log carries times, asset keys,
partitions, metadata, checks and errors, whichever process or worker ran each step (the instance's
event log, SQLite embedded or PostgreSQL in production, holds them all). Events are built once the
run is over, so a START event already names the model version its run went on to register or read.
Datasets are named where the deployment keeps them (datasets.Naming, from its resources).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field

import dagster as dg
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState, set_producer
from openlineage.client.facet_v2 import (
    base_subset_dataset,
    column_lineage_dataset,
    data_quality_assertions_dataset,
    dataset_type_dataset,
    dataset_version_dataset,
    documentation_dataset,
    documentation_job,
    error_message_run,
    hierarchy_dataset,
    input_statistics_input_dataset,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    ownership_dataset,
    ownership_job,
    parent_run,
    schema_dataset,
)

from orchestration import names
from orchestration.rebuild import partition_metadata
from orchestration.lineage import datasets
from orchestration.lineage.facets import PRODUCER, DataQualityMetricsDatasetFacet, DeadLetterDatasetFacet, EventIdentityRunFacet
from orchestration.lineage.transport import namespace

set_producer(PRODUCER)

ET = dg.DagsterEventType
TERMINAL_RUN = {ET.RUN_SUCCESS: RunState.COMPLETE, ET.RUN_FAILURE: RunState.FAIL, ET.RUN_CANCELED: RunState.ABORT}
# The event types lineage needs; reading only these keeps emission cheap on long range runs.
READ = {ET.RUN_START, *TERMINAL_RUN, ET.ASSET_MATERIALIZATION_PLANNED, ET.STEP_START, ET.STEP_SUCCESS,
        ET.STEP_FAILURE, ET.ASSET_MATERIALIZATION, ET.ASSET_CHECK_EVALUATION}
RUN_ID_NAMESPACE = uuid.UUID("0b5c4e36-5d1c-4f53-9d0e-6f1d1e6a9a13")  # plumbline's uuid5 namespace for lineage run ids
IDENTITY_FACET = "plumbline_event"  # custom facets carry their producer's prefix (OpenLineage naming)


@dataclass
class Step:
    key: str
    started: float | None = None
    ended: float | None = None
    error: object | None = None  # SerializableErrorInfo of a STEP_FAILURE
    materializations: dict = field(default_factory=lambda: defaultdict(list))  # asset key -> [AssetMaterialization]
    planned: dict = field(default_factory=lambda: defaultdict(set))  # asset key -> partition keys
    checks: dict = field(default_factory=lambda: defaultdict(list))  # asset key -> [AssetCheckEvaluation]


def _time(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat()


def lineage_run_id(dagster_run_id: str, asset: dg.AssetKey, partitions: list[str]) -> str:
    label = f"{partitions[0]}..{partitions[-1]}" if partitions else "unpartitioned"
    return str(uuid.uuid5(RUN_ID_NAMESPACE, f"{dagster_run_id}/{asset.to_user_string()}/{label}"))


def with_identity(event: RunEvent) -> RunEvent:
    """Stamp the event's stable id: a uuid5 of (run id, event type, event time), the triple that
    names one event of one run, so a rebuilt or re-sent event has the same id."""
    key = f"{event.run.runId}/{event.eventType.value}/{event.eventTime}"
    event.run.facets = {**(event.run.facets or {}),
                        IDENTITY_FACET: EventIdentityRunFacet(eventId=str(uuid.uuid5(RUN_ID_NAMESPACE, key)))}
    return event


def _value(metadata: dict, key: str, default=None):
    v = metadata.get(key)
    return default if v is None else getattr(v, "value", v)


def _asset_graph(defs: dg.Definitions | dg.RepositoryDefinition):
    """The asset graph of a code location, from its Definitions (sync) or its repository (a sensor's context)."""
    return defs.resolve_asset_graph() if isinstance(defs, dg.Definitions) else defs.asset_graph


def _steps_by_asset(defs: dg.Definitions | dg.RepositoryDefinition) -> dict[str, list[dg.AssetKey]]:
    out: dict[str, list[dg.AssetKey]] = {}
    graph = _asset_graph(defs)
    for ad in graph.assets_defs:
        out.setdefault(ad.node_def.name, []).extend(ad.keys)
    return out


def read_log(instance: dg.DagsterInstance, run_id: str, defs: dg.Definitions | dg.RepositoryDefinition):
    """(run start time, run end time, terminal state, run error, steps) from the event log."""
    step_assets = _steps_by_asset(defs)
    steps: dict[str, Step] = {}
    started = ended = None
    state, run_error = RunState.ABORT, None
    planned: dict[dg.AssetKey, set] = defaultdict(set)
    for entry in instance.all_logs(run_id, of_type=READ):
        ev = entry.dagster_event
        if ev is None:
            continue
        t = ev.event_type
        if t == ET.RUN_START:
            started = entry.timestamp
        elif t in TERMINAL_RUN:
            ended, state = entry.timestamp, TERMINAL_RUN[t]
            if t == ET.RUN_FAILURE:
                run_error = ev.message
        elif t == ET.ASSET_MATERIALIZATION_PLANNED:
            data = ev.event_specific_data
            keys = set(data.partitions_subset.get_partition_keys()) if data.partitions_subset else (
                {data.partition} if data.partition else set())
            planned[data.asset_key] |= keys
        elif ev.step_key:
            step = steps.setdefault(ev.step_key, Step(ev.step_key))
            if t == ET.STEP_START:
                step.started = entry.timestamp
            elif t == ET.STEP_SUCCESS:
                step.ended = entry.timestamp
            elif t == ET.STEP_FAILURE:
                step.ended, step.error = entry.timestamp, ev.event_specific_data.error
            elif t == ET.ASSET_MATERIALIZATION:
                m = ev.event_specific_data.materialization
                step.materializations[m.asset_key].append(m)
            elif t == ET.ASSET_CHECK_EVALUATION:
                c = ev.event_specific_data
                step.checks[c.asset_key].append(c)
    for step in steps.values():
        for key in step_assets.get(step.key.split("[")[0], []):
            if key in planned or key in step.materializations:
                step.planned[key] = planned.get(key, set()) | {
                    m.partition for m in step.materializations.get(key, []) if m.partition}
    return started, ended, state, run_error, steps


def _nominal_time(node, partitions: list[str]):
    part_def = node.partitions_def
    if not partitions or not isinstance(part_def, dg.TimeWindowPartitionsDefinition):
        return None
    first = part_def.time_window_for_partition_key(partitions[0])
    last = part_def.time_window_for_partition_key(partitions[-1])
    return nominal_time_run.NominalTimeRunFacet(nominalStartTime=first.start.isoformat(), nominalEndTime=last.end.isoformat())


def _job(name: str, job_type: str, node=None) -> Job:
    facets = {"jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="DAGSTER", jobType=job_type)}
    if node is not None and node.description:
        facets["documentation"] = documentation_job.DocumentationJobFacet(description=node.description)
    if node is not None and node.owners:
        facets["ownership"] = ownership_job.OwnershipJobFacet(
            owners=[ownership_job.Owner(name=o, type="MAINTAINER") for o in node.owners])
    return Job(namespace=namespace(), name=name, facets=facets)


def _partitions(keys) -> base_subset_dataset.PartitionSubsetCondition:
    return base_subset_dataset.PartitionSubsetCondition(partitions=[
        base_subset_dataset.Partition(dimensions={"event_date": k}, identifier=k) for k in keys])


def _partitions_read(graph, node, parent: dg.AssetKey, partitions: list[str]) -> list[str]:
    """The parent's partitions that these partitions of `node` read, through the asset's partition
    mapping (e.g. the look-back window of rolling features); [] when either side is unpartitioned."""
    parent_def = graph.get(parent).partitions_def
    if not partitions or node.partitions_def is None or parent_def is None:
        return []
    mapped = graph.get_partition_mapping(node.key, parent).get_upstream_mapped_partitions_result_for_partitions(
        node.partitions_def.subset_with_partition_keys(partitions), node.partitions_def, parent_def)
    return sorted(mapped.partitions_subset.get_partition_keys())


def _inputs(graph, node, partitions: list[str], models: list[datasets.ModelVersion], metadata: dict,
            naming: datasets.Naming) -> list[InputDataset]:
    """Upstream datasets with the partitions read; the registered model versions read (in place of
    the registered model, where one is a parent); for bronze the delivered files. `metadata` (terminal
    events only) adds the statistics."""
    out = []
    for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
        parent_node = graph.get(parent)
        if models and datasets.registered_model(parent_node) is not None:
            continue  # named below by the exact versions read
        p = datasets.place(parent_node, naming)
        input_facets = {}
        if read := _partitions_read(graph, node, parent, partitions):
            input_facets["subset"] = base_subset_dataset.InputSubsetInputDatasetFacet(inputCondition=_partitions(read))
        if parent.path[0] == "bronze" and _value(metadata, names.DELIVERED) is not None:
            input_facets["inputStatistics"] = input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                rowCount=int(_value(metadata, names.DELIVERED)), fileCount=_value(metadata, names.BRONZE_FILES))
        out.append(InputDataset(namespace=p.namespace, name=p.name, inputFacets=input_facets))
    for m in models:
        out.append(InputDataset(namespace=m.place.namespace, name=m.place.name,
                                facets={**model_facets(m), "version": version_facet(m.version)}))
    for delivery in _value(metadata, names.DELIVERIES, []) or []:
        p = datasets.file_place(delivery["path"])
        out.append(InputDataset(namespace=p.namespace, name=p.name, inputFacets={
            "inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                rowCount=delivery.get("rows"), size=delivery.get("size_bytes"), fileCount=1)}))
    return out


def model_facets(m: datasets.ModelVersion) -> dict:
    """What says a dataset is a registered model (version): its type and its place in the registry."""
    levels = [hierarchy_dataset.HierarchyDatasetFacetLevel(type="REGISTERED_MODEL", name=m.model)]
    if m.version:
        levels.append(hierarchy_dataset.HierarchyDatasetFacetLevel(type="MODEL_VERSION", name=m.version))
    return {"datasetType": dataset_type_dataset.DatasetTypeDatasetFacet(
                datasetType="MODEL", subType="MODEL_VERSION" if m.version else "REGISTERED_MODEL"),
            "hierarchy": hierarchy_dataset.HierarchyDatasetFacet(hierarchy=levels)}


def version_facet(version: str) -> dataset_version_dataset.DatasetVersionDatasetFacet:
    return dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version)


def schema_facet(node) -> schema_dataset.SchemaDatasetFacet | None:
    schema = node.metadata.get("dagster/column_schema")
    if schema is None:
        return None
    table_schema = schema.schema if hasattr(schema, "schema") else schema
    return schema_dataset.SchemaDatasetFacet(fields=[
        schema_dataset.SchemaDatasetFacetFields(name=c.name, type=c.type, description=c.description or None)
        for c in table_schema.columns])


def documentation_facet(node) -> documentation_dataset.DocumentationDatasetFacet | None:
    return documentation_dataset.DocumentationDatasetFacet(description=node.description) if node.description else None


def ownership_facet(node) -> ownership_dataset.OwnershipDatasetFacet | None:
    if not node.owners:
        return None
    return ownership_dataset.OwnershipDatasetFacet(owners=[ownership_dataset.Owner(name=o, type="MAINTAINER") for o in node.owners])


def column_lineage_facet(lineage: datasets.ColumnLineage | None) -> column_lineage_dataset.ColumnLineageDatasetFacet | None:
    if lineage is None:
        return None
    return column_lineage_dataset.ColumnLineageDatasetFacet(fields={
        column: column_lineage_dataset.Fields(inputFields=[
            column_lineage_dataset.InputField(namespace=f.namespace, name=f.name, field=f.field, transformations=[
                column_lineage_dataset.Transformation(type=t.type, subtype=t.subtype, description=t.description)
                for t in f.transformations])
            for f in fields.inputFields])
        for column, fields in lineage.fields.items()})


def _assertions(checks) -> data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet | None:
    if not checks:
        return None
    return data_quality_assertions_dataset.DataQualityAssertionsDatasetFacet(assertions=[
        data_quality_assertions_dataset.Assertion(
            assertion=c.check_name, success=bool(c.passed),
            severity=c.severity.value.lower() if c.severity else None,
            description=_value(c.metadata, names.RULE))
        for c in checks])


def _dead_letters(checks) -> DeadLetterDatasetFacet | None:
    """Per-rule dead-letter counts as the raw asset's checks report them."""
    by_rule: dict[str, int] = {}
    seen = False
    for c in checks:
        if names.DEAD_LETTERED_BY_RULE in c.metadata:
            seen = True
            by_rule.update({r: int(n) for r, n in (_value(c.metadata, names.DEAD_LETTERED_BY_RULE) or {}).items()})
        elif names.DEAD_LETTERED_ROWS in c.metadata:
            seen = True
            n = int(_value(c.metadata, names.DEAD_LETTERED_ROWS) or 0)
            if n:
                by_rule[c.check_name] = n
    if not seen:
        return None
    return DeadLetterDatasetFacet(rows=sum(by_rule.values()), byRule=dict(sorted(by_rule.items())))


def _output(graph, node, partitions: list[str], model: datasets.ModelVersion | None, materialization, meta: dict, checks,
            complete: bool, naming: datasets.Naming) -> OutputDataset:
    p = model.place if model is not None else datasets.place(node, naming)
    facets = {k: v for k, v in {
        "schema": schema_facet(node),
        "documentation": documentation_facet(node),
        "ownership": ownership_facet(node),
        "columnLineage": column_lineage_facet(datasets.column_lineage_facet(graph, node, naming)),
        **(model_facets(model) if model is not None else {}),
    }.items() if v is not None}
    output_facets = {}
    if partitions:
        output_facets["subset"] = base_subset_dataset.OutputSubsetOutputDatasetFacet(outputCondition=_partitions(partitions))
    if complete and materialization is not None:
        rows = _value(meta, "dagster/row_count")
        if rows is not None:
            output_facets["outputStatistics"] = output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=int(rows))
            facets["dataQualityMetrics"] = DataQualityMetricsDatasetFacet(columnMetrics={}, rowCount=int(rows))
        # a registered model's version is the registry's; a table's is Dagster's data version
        version = model.version if model is not None else (materialization.tags or {}).get("dagster/data_version")
        if version:
            facets["version"] = version_facet(version)
        if (a := _assertions(checks)) is not None:
            facets["dataQualityAssertions"] = a
        if (d := _dead_letters(checks)) is not None:
            facets["deadLetter"] = d
    return OutputDataset(namespace=p.namespace, name=p.name, facets=facets, outputFacets=output_facets)


def for_run(instance: dg.DagsterInstance, run_id: str, defs: dg.Definitions | dg.RepositoryDefinition,
            naming: datasets.Naming | None = None) -> list[RunEvent]:
    """The run's events: the job's START and terminal event, and a pair per asset step. `naming`: the
    deployment's warehouse and model registry (default: the embedded deployment's)."""
    naming = naming or datasets.Naming()
    run = instance.get_run_by_id(run_id)
    graph = _asset_graph(defs)
    started, ended, state, run_error, steps = read_log(instance, run_id, defs)
    parent_job = _job(run.job_name, "JOB")
    if started is None:  # a run canceled before it started still gets its pair of events
        started = min((s.started for s in steps.values() if s.started),
                      default=instance.get_run_record_by_id(run_id).create_timestamp.timestamp())
    ended = ended or max((s.ended for s in steps.values() if s.ended), default=started)
    parent = parent_run.ParentRunFacet(
        run=parent_run.Run(runId=run_id), job=parent_run.Job(namespace=parent_job.namespace, name=parent_job.name),
        root=parent_run.Root(run=parent_run.RootRun(runId=run_id),
                             job=parent_run.RootJob(namespace=parent_job.namespace, name=parent_job.name)))

    events = [RunEvent(eventType=RunState.START, eventTime=_time(started), run=Run(runId=run_id), job=parent_job)]
    checks = defaultdict(list)  # an asset's checks wherever they ran in the run (an @asset_check is a step of its own)
    for step in steps.values():
        for key, evaluations in step.checks.items():
            checks[key] += evaluations
    # one assertion per check: a partitioned check's last evaluation is the run's summary (or its one partition's verdict)
    checks = {key: list({c.check_name: c for c in evaluations}.values()) for key, evaluations in checks.items()}
    children = []
    for step in steps.values():
        if step.started is None:
            continue  # never ran (skipped after an upstream failure): nothing was materialized
        for key, partitions in step.planned.items():
            node = graph.get(key)
            if not node.is_materializable:
                continue  # an observed table (assets/operational.py) is read, not written: the run's pair says it ran
            partitions = sorted(partitions)
            mats = step.materializations.get(key, [])
            meta = partition_metadata.run_totals(mats)  # each partition's event has its own figures: the step's are their sum
            # the run is over, so START already names the model version it registered or read
            written, read = datasets.model_written(node, meta, naming), datasets.models_read(graph, node, meta, naming)
            terminal = RunState.FAIL if step.error is not None else (RunState.COMPLETE if step.ended else RunState.ABORT)
            lineage_id = lineage_run_id(run_id, key, partitions)
            run_facets = {"parent": parent}
            if (nominal := _nominal_time(node, partitions)) is not None:
                run_facets["nominalTime"] = nominal
            job = _job(key.to_user_string().replace("/", "."), "ASSET", node)
            start = RunEvent(eventType=RunState.START, eventTime=_time(step.started), run=Run(runId=lineage_id, facets=run_facets),
                             job=job, inputs=_inputs(graph, node, partitions, read, {}, naming),
                             outputs=[_output(graph, node, partitions, written, None, {}, [], False, naming)])
            end_facets = dict(run_facets)
            if step.error is not None:
                end_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                    message=step.error.message.strip(), programmingLanguage="python", stackTrace=step.error.to_string())
            end = RunEvent(eventType=terminal, eventTime=_time(step.ended or ended), run=Run(runId=lineage_id, facets=end_facets),
                           job=job, inputs=_inputs(graph, node, partitions, read, meta, naming),
                           outputs=[_output(graph, node, partitions, written, mats[0] if mats else None, meta,
                                            checks.get(key, []), terminal == RunState.COMPLETE, naming)])
            children.append((step.started, start))
            children.append((step.ended or ended, end))
    events += [e for _, e in sorted(children, key=lambda c: c[0])]
    end_facets = {}
    if state == RunState.FAIL and run_error:
        end_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(message=run_error, programmingLanguage="python")
    events.append(RunEvent(eventType=state, eventTime=_time(ended), run=Run(runId=run_id, facets=end_facets), job=parent_job))
    return [with_identity(e) for e in events]
