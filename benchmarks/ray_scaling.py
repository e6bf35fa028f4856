"""Throughput of `padim predict --engine ray` against the number of Ray workers, beside the
local engine, on this machine; optionally the fit time of `padim fit --engine ray`.

    python benchmarks/ray_scaling.py --model bottle.safetensors \
        --images ../shared/data/mvtec_ad/bottle/test --copies 4 --workers 1 2 \
        --fit ../shared/data/mvtec_ad/bottle --out runs/ray_scaling

The images are linked `--copies` times into a scratch folder so each run has enough work; each
worker count runs as a fresh job (actors start, load the model, score everything). Reported:
wall time, time to the first finished batch (actor start-up and model loading) and the steady
rate after it. Writes OUT/ray_scaling.json and OUT/ray_scaling.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from padim import ray_engine
from padim.data.sources import find_images
from padim.deploy.predict import write_predictions
from padim.deploy.scorers import load_scorer
from padim.model.estimator import Padim


def link_copies(images: list[Path], copies: int, folder: Path) -> Path:
    for c in range(copies):
        target = folder / f"copy{c}"
        target.mkdir(parents=True)
        for i, image in enumerate(images):
            os.symlink(image.resolve(), target / f"{i:05d}{image.suffix}")
    return folder


def bench_local(model: Path, folder: Path, threads: int, batch: int) -> dict:
    torch.set_num_threads(threads)
    scorer = load_scorer(model, "cpu", threads)
    inputs = sorted(p for p in folder.iterdir() if p.is_dir())
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        rows = write_predictions(scorer, inputs, Path(tmp) / "out", images=False, batch_size=batch)
        seconds = time.perf_counter() - started
    return {
        "engine": "local",
        "workers": 1,
        "threads": threads,
        "images": len(rows),
        "seconds": round(seconds, 2),
        "first_batch_seconds": None,
        "images_per_second": round(len(rows) / seconds, 2),
    }


def bench_ray(model: Path, folder: Path, workers: int, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = ray_engine.BulkOptions(workers=workers, batch_size=batch, progress=False)
        started = time.perf_counter()
        summary = ray_engine.predict(model, [folder], Path(tmp) / "job", opts)
        seconds = time.perf_counter() - started
    return {
        "engine": "ray",
        "workers": summary["workers"],
        "threads": 1,
        "images": summary["images"],
        "seconds": round(seconds, 2),
        "first_batch_seconds": summary["first_batch_seconds"],
        "images_per_second": summary["images_per_second"],
    }


def bench_fit(data: Path, size: int, shards: list[int], threads: int) -> list[dict]:
    rows = []
    torch.set_num_threads(threads)
    started = time.perf_counter()
    Padim(size=size, crop=None, device="cpu").fit(data)
    rows.append(
        {
            "engine": "local",
            "shards": None,
            "threads": threads,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    for n in shards:
        started = time.perf_counter()
        ray_engine.fit(Padim(size=size, crop=None, device="cpu"), data, shards=n)
        rows.append(
            {
                "engine": "ray",
                "shards": n,
                "threads": 1,
                "seconds": round(time.perf_counter() - started, 2),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--images", type=Path, required=True, help="folder of images (recursive)")
    ap.add_argument("--copies", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--fit", type=Path, default=None, help="also time fits on this data")
    ap.add_argument("--fit-size", type=int, default=256)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    images = find_images(args.images)
    local_threads = torch.get_num_threads()
    scratch = Path(tempfile.mkdtemp(prefix="padim-bench-"))
    try:
        folder = link_copies(images, args.copies, scratch / "images")
        results = [
            bench_local(args.model, folder, t, args.batch_size) for t in sorted({1, local_threads})
        ]
        with ray_engine.ray_session(num_cpus=os.cpu_count()):
            for w in args.workers:
                results.append(bench_ray(args.model, folder, w, args.batch_size))
                print(json.dumps(results[-1]), file=sys.stderr)
            fits = (
                bench_fit(args.fit, args.fit_size, sorted(set(args.workers)), local_threads)
                if args.fit
                else []
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "cpus": os.cpu_count(),
        "model": args.model.name,
        "images": len(images) * args.copies,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
    }
    (args.out / "ray_scaling.json").write_text(
        json.dumps({"meta": meta, "predict": results, "fit": fits}, indent=2) + "\n"
    )
    lines = [
        f"{meta['images']} images, model {meta['model']}, batch {args.batch_size}, "
        f"{meta['cpus']} CPUs",
        "",
        "| engine | workers | threads each | wall s | first batch s | img/s after start |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['engine']} | {r['workers']} | {r['threads']} | {r['seconds']} | "
            f"{r['first_batch_seconds'] or '-'} | {r['images_per_second']} |"
        )
    if fits:
        lines += ["", "| fit engine | shards | seconds |", "|---|---:|---:|"]
        lines += [f"| {f['engine']} | {f['shards'] or '-'} | {f['seconds']} |" for f in fits]
    (args.out / "ray_scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
