"""`padim evaluate`: image and pixel metrics on a labelled test set. Its arguments and its run,
side by side."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from padim import options
from padim.cli.arguments import (
    add,
    add_labelled_data,
    add_runtime,
    add_score_mode,
    non_negative_int,
    positive_int,
)
from padim.cli.common import labelled_samples, load_model, progress
from padim.files import check_output_file, write_text_atomic

NAME = "evaluate"


def add_arguments(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate",
        help="image and pixel metrics on a labelled test set",
        description="Evaluate on an MVTec AD category folder (test/, "
        "ground_truth/) or on plain folders given with --good/--defective/--masks.",
    )
    p.add_argument("model", type=Path, help="model file")
    add_labelled_data(p, "labelled test data")
    p.add_argument("--masks", type=Path, help="folder of masks named like the defective images")
    p.add_argument("--json", type=Path, help="write the metrics to this JSON file")
    p.add_argument(
        "--figure",
        type=Path,
        help="write a picture grid of results to this PNG (needs padim[report])",
    )
    p.add_argument(
        "--perturb",
        metavar="NAME",
        default=None,
        help="evaluate on perturbed test images: rd-mvtec or rd-mvtec-test (random "
        "rotation +/-10 deg and random crop, seeded by --seed; for the paper's full "
        "protocol the model must also be fitted on perturbed images: see benchmark)",
    )
    p.add_argument("--seed", type=int, default=options.SEED.default, help="seed of --perturb")
    add(p, options.EVERY, type=positive_int, metavar="N")
    add(p, options.SCENE)
    p.add_argument(
        options.MIN_AREA.flag,
        type=non_negative_int,
        default=options.MIN_AREA.default,
        help="predicted regions smaller than this many pixels (of the evaluated maps, at the "
        "model's input size) are not counted as false regions",
    )
    add_score_mode(p, fitting=False)
    add_runtime(p)


def run(args: argparse.Namespace) -> int:
    from padim.evaluation.evaluate import add_metrics, score_run
    from padim.evaluation.metrics import format_metric
    from padim.memory import release_free_memory

    for path in (args.json, args.figure):
        if path is not None:
            check_output_file(path, "--json/--figure")
    samples = labelled_samples(args, args.masks)
    model = load_model(args)
    model.progress = progress(args)
    perturbation = None
    if args.perturb:
        from padim.evaluation.perturb import make_perturbation

        cfg = model.config
        perturbation = make_perturbation(args.perturb, cfg.size, cfg.crop, args.seed)
    run = score_run(model, samples, perturbation)
    del model  # its Gaussians are not needed for the metrics, whose pixel sort is the peak
    release_free_memory()
    m = add_metrics(run, args.min_area).metrics
    print(
        f"images {m['n_images']} ({m['n_good']} good, {m['n_anomalous']} anomalous), "
        f"threshold {m['threshold']:.3f}"
    )
    for key in (
        "image_auroc",
        "pixel_auroc",
        "aupro",
        "region_recall",
        "false_regions_per_good_image",
        "image_f1",
        "pixel_f1",
        "image_f1_at_threshold",
        "image_balanced_accuracy",
        "image_accuracy_at_threshold",
    ):
        print(f"  {key:28s} {format_metric(m.get(key), 4)}")
    for defect, value in (m.get("per_type_image_auroc") or {}).items():
        print(f"  {f'image_auroc[{defect}]':28s} {format_metric(value, 4)}")
    for note in m.get("notes", []):
        print(f"  note: {note}")
    print_mistakes(run)
    if args.json:
        write_text_atomic(args.json, json.dumps(m, indent=2) + "\n")
        print(f"wrote {args.json}")
    if args.figure:
        from padim.evaluation.figures import report_figure

        report_figure(run, args.figure)
        print(f"wrote {args.figure}")
    return 0


SHOWN_MISTAKES = 10  # per kind; the rest are counted


def print_mistakes(run: Any) -> None:
    """The images the threshold gets wrong, worst first: what an engineer looks at next."""
    labels, scores, threshold = run.labels, run.scores, run.threshold
    order = sorted(range(len(scores)), key=lambda i: -abs(float(scores[i]) - threshold))
    alarms = [i for i in order if labels[i] == 0 and scores[i] > threshold]
    misses = [i for i in order if labels[i] == 1 and scores[i] <= threshold]
    for kind, wrong in (
        ("false alarms (good, scored above the threshold)", alarms),
        ("misses (anomalous, scored at or below it)", misses),
    ):
        if not wrong:
            continue
        print(f"  {len(wrong)} {kind}:")
        for i in wrong[:SHOWN_MISTAKES]:
            print(f"    {run.samples[i].path}  score {float(scores[i]):.3f}")
        if len(wrong) > SHOWN_MISTAKES:
            print(f"    ... and {len(wrong) - SHOWN_MISTAKES} more")
