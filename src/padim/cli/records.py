"""`padim records`: query and export the inspection records of a catalogue. Its arguments and
its run, side by side."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.catalogue_args import actor_of, add_actor, add_catalogue, open_from
from padim.errors import PadimError
from padim.files import check_output_file

NAME = "records"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "records",
        help="query and export inspection records (every verdict the service and watch gave)",
        description="The inspection records of a catalogue: every verdict of 'padim serve "
        "--record' and 'padim watch --record' (time, product, model version, score, "
        "normalised score, verdict, regions, the image's SHA-256, and the kept image if the "
        "retention rule kept it). Needs padim[lifecycle].",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("list", help="print records, newest first")
    export = actions.add_parser("export", help="write records to a .csv or .parquet file")
    export.add_argument("out", type=Path, help="the file (.csv or .parquet)")
    for q in (show, export):
        q.add_argument("--product", default=None)
        q.add_argument("--version", type=int, default=None, help="model version")
        q.add_argument("--verdict", default=None, help="good, anomalous or cannot_align")
        q.add_argument("--since", default=None, help="ISO time, e.g. 2026-12-07T06:00")
        q.add_argument("--until", default=None, help="ISO time (exclusive)")
        add_catalogue(q, options.CATALOGUE.default)
    show.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    fb = actions.add_parser("feedback", help="label a record: false_alarm, defect, missed_defect")
    fb.add_argument("record", type=int, help="the record's id")
    fb.add_argument("label", choices=options.FEEDBACK_LABELS)
    fb.add_argument("--note", default="")
    fb.add_argument("--image", type=Path, default=None, help="the image, when it was not kept")
    fb.add_argument("--mask", type=Path, default=None, help="a defect mask image")
    add_catalogue(fb, options.CATALOGUE.default)
    add_actor(fb)
    export.add_argument("--limit", type=int, default=None, help="at most this many (default all)")


def give_feedback(args: argparse.Namespace) -> int:
    from padim.lifecycle.feedback import FeedbackBook

    def read(path: Path | None) -> bytes | None:
        return None if path is None else path.read_bytes()

    suffix = args.image.suffix.lower() if args.image else ".png"
    done = FeedbackBook(open_from(args)).give(
        args.record,
        args.label,
        actor_of(args),
        args.note,
        read(args.image),
        read(args.mask),
        suffix,
    )
    print(f"record {args.record}: {done['label']} (feedback {done['id']})")
    return 0


def run(args: argparse.Namespace) -> int:
    from padim.lifecycle.records import Query, RecordBook, parse_time

    if args.action == "feedback":
        return give_feedback(args)
    if args.limit is not None and args.limit < 1:
        raise PadimError("--limit must be at least 1")
    query = Query(
        args.product,
        args.version,
        args.verdict,
        parse_time(args.since, "--since", naive_is_local=True),
        parse_time(args.until, "--until", naive_is_local=True),
        args.limit,
    )
    if args.action == "export":
        check_output_file(args.out)
    book = RecordBook(open_from(args))
    if args.action == "export":
        count = book.export(args.out, query)
        print(f"wrote {count} records to {args.out}")
        return 0
    for r in book.query(query):
        version = f"v{r['version']}" if r["version"] is not None else "-"
        kept = ("  image kept" if r["image"] else "") + (
            f"  operator: {r['feedback']}" if r["feedback"] else ""
        )
        print(
            f"{r['id']:>8}  {r['at']:%Y-%m-%d %H:%M:%S}  {r['product']} {version}  "
            f"{r['verdict']:<10} score {r['score']:.3f} ({r['normalised_score']:.2f})  "
            f"{r['n_regions']} regions  {r['name']}{kept}"
        )
    return 0
