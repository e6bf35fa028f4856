"""`padim retrain`: a candidate version from the operators' false alarms (exact update), both
versions evaluated on every labelled image, and the gate the candidate must pass to be
promoted. Its arguments and its run, side by side."""

from __future__ import annotations

import argparse
import json
from typing import Any

from padim import options
from padim.cli.arguments import add
from padim.cli.catalogue_args import actor_of, add_actor, add_catalogue, open_from

NAME = "retrain"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "retrain",
        help="build a candidate from the operators' false alarms and state its gate",
        description="Update the base version (production by default; fitted with --statistics "
        "keep) exactly with the images operators marked as false alarms, re-estimate its "
        "threshold, score base and candidate on every labelled image, and state the gate: "
        "the candidate catches every labelled defect the base catches, and its held-out "
        "false-alarm rate is within the base's 95 % interval. The candidate is registered "
        "(parent: the base) and put at --alias; promoting it where its gate failed needs "
        "'padim registry promote ... --override REASON'. Needs padim[lifecycle].",
    )
    p.add_argument("product")
    p.add_argument(
        "--from",
        dest="base",
        default=options.ALIAS.default,
        help="base version or alias (default production)",
    )
    p.add_argument(
        "--alias", default="candidate", help="where the candidate goes (default candidate)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add(p, options.DEVICE)
    add_catalogue(p, options.CATALOGUE.default)
    add_actor(p)


def run(args: argparse.Namespace) -> int:
    from padim.lifecycle.retrain import Retraining

    job = Retraining(open_from(args), args.product, args.base, args.alias, device=args.device)
    version, report = job.run(actor_of(args))
    if args.json:
        print(json.dumps({"version": version.number, **report}, indent=2))
        return 0
    gate = report["gate"]
    labelled = report["labelled"]
    print(
        f"{args.product} version {version.number} ({args.alias}): version {report['base']} + "
        f"{report['added_false_alarms']} false alarm(s); labelled: "
        f"{labelled['defects']} defects, {labelled['false_alarms']} false alarms"
    )
    for name in ("production", "candidate"):
        r = report[name]
        print(
            f"  {name:<10} threshold {r['threshold']:.4g}  defects caught {r['defects_caught']}"
            f"  labelled false alarms still flagged {r['labelled_false_alarms']}"
        )
    for check in gate["checks"]:
        print(f"  [{'pass' if check['passed'] else 'FAIL'}] {check['check']}")
    verdict = "passed" if gate["passed"] else "FAILED (promotion needs --override REASON)"
    print(f"gate for {gate['for']}: {verdict}")
    return 0
