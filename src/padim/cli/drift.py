"""`padim drift`: replay a product's inspection records through the drift monitor and report
when the line left its model's calibration (and came back). Its arguments and its run, side
by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import add, positive_int
from padim.cli.catalogue_args import add_catalogue, open_from
from padim.errors import PadimError

NAME = "drift"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "drift",
        help="report when a product's line drifted from its model's calibration (records)",
        description="Replay the records of a product (oldest first, per model version) through "
        "the drift monitor the service runs: drift while the median score of the last "
        "--drift-window results is above the held-out good scores' 95 % quantile of the "
        "version that judged them. Prints each alarm and its end, and the state now. Needs "
        "padim[lifecycle].",
    )
    p.add_argument("product")
    p.add_argument("--version", type=int, default=None, help="only this model version")
    p.add_argument("--since", default=None, help="ISO time, e.g. 2026-12-07T06:00")
    p.add_argument(
        "--model", type=Path, default=None, help="the model file, for records of no version"
    )
    add(p, options.DRIFT_WINDOW, type=positive_int)
    p.add_argument("--json", action="store_true")
    add_catalogue(p, options.CATALOGUE.default)


def run(args: argparse.Namespace) -> int:
    from padim.lifecycle.drift import replay
    from padim.lifecycle.records import Query, RecordBook, parse_time
    from padim.lifecycle.registry import Registry

    catalogue = open_from(args)
    since = parse_time(args.since, "--since", naive_is_local=True)
    rows = RecordBook(catalogue).query(Query(args.product, args.version, since=since, limit=None))
    if not rows:
        raise PadimError(f"no records of {args.product} to look at")
    registry = Registry(catalogue)
    report = replay(rows[::-1], args.drift_window, registry, args.model)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return 0
    for part in report["versions"]:
        print(
            f"{args.product} {part['version_label']}: {part['results']} results, "
            f"{len(part['alarms'])} alarm(s), now {part['state']} "
            f"(window median {part['window_median']}, held-out 95 % quantile "
            f"{part['reference_upper']})"
        )
        for alarm in part["alarms"]:
            end = alarm["cleared_at"] or "still on"
            print(f"  drift from {alarm['at']} (record {alarm['record']}) to {end}")
    return 0
