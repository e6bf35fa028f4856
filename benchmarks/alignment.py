"""Parts that are never in the same place twice: alignment and shift-tolerant scoring measured.

For each data set and seed, one `padim benchmark` command (a separate process, as users run
it) fits and evaluates every variant on the aligned data and under the paper's Rd protocol
(random rotation of up to 10 degrees and a random 224/256 crop):

- `rd-mvtec-test`: the model of good parts, tested on perturbed test images (parts arriving
  misplaced at a deployed model);
- `rd-mvtec`: the paper's protocol (the training images are perturbed as well).

Variants: none (the paper), each alignment mode, neighbourhood K = 1, 2, and rigid + K = 1.
Then the cost: the alignment stage's time per image against the whole per-image time, in one
process (`Aligner.align` alone, then `Padim.predict` with and without alignment, batch 1),
and the whole `padim predict` command with and without alignment.

    python benchmarks/alignment.py --out bench/alignment              # 5 seeds, both data sets
    python benchmarks/alignment.py --datasets bottle --seeds 0 --out /tmp/a   # a quick look

Writes OUT/alignment.md (the tables) and OUT/alignment.json (every row).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
DATASETS = {
    "bottle": SHARED / "mvtec_ad" / "bottle",
    "bsdata": SHARED / "bsdata" / "ball_screw",
}
VARIANTS = {
    "none": "",
    "translation": ",align=translation",
    "rigid": ",align=rigid",
    "similarity": ",align=similarity",
    "homography": ",align=homography",
    "K=1": ",neighbourhood=1",
    "K=2": ",neighbourhood=2",
    "rigid + K=1": ",align=rigid,neighbourhood=1",
}
PROTOCOLS = ("aligned", "rd-mvtec-test", "rd-mvtec")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def run_benchmark(name: str, root: Path, seed: int, out: Path, variants: list[str]) -> list[dict]:
    """One `padim benchmark` process: the variants, clean and under both Rd protocols."""
    folder = out / name / f"seed{seed}"
    specs = [VARIANTS[v] for v in variants]
    geometries = [arg for v in specs for arg in ("--geometry", f"256,crop=224{v}")]
    cmd = [
        sys.executable, "-m", "padim", "benchmark", "--root", str(root),
        "--backbones", "efficientnet_lite0", *geometries,
        "--perturb", "rd-mvtec-test", "rd-mvtec", "--seed", str(seed),
        "--out", str(folder), "--no-figures", "--quiet",
    ]  # fmt: skip
    started = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"{name} seed {seed}: {time.perf_counter() - started:.0f} s", flush=True)
    rows = json.loads((folder / "results.json").read_text())["results"]
    labels = {f"256,crop=224{v}": k for k, v in VARIANTS.items()}
    for row in rows:
        row["variant"] = labels[row["geometry"]]
        row["protocol"] = row.get("perturbation") or "aligned"
        row["dataset"], row["seed"] = name, seed
    return rows


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def accuracy_table(rows: list[dict], name: str) -> list[str]:
    seeds = sorted({r["seed"] for r in rows if r["dataset"] == name})
    lines = [
        f"### {name} (efficientnet_lite0, 256 -> 224; mean ± std over seeds {seeds})",
        "",
        "| variant | " + " | ".join(f"{p}: image / pixel AUROC / AUPRO" for p in PROTOCOLS) + " |",
        "|---|" + "---:|" * len(PROTOCOLS),
    ]
    for variant in dict.fromkeys(r["variant"] for r in rows if r["dataset"] == name):
        cells = []
        for protocol in PROTOCOLS:
            picked = [
                r
                for r in rows
                if r["dataset"] == name and r["variant"] == variant and r["protocol"] == protocol
            ]
            cells.append(" / ".join(mean_std([r[m] for r in picked]) for m in METRICS))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def stage_timing(root: Path, n: int = 40) -> dict[str, float]:
    """ms per image, one process, batch 1: the alignment stage alone, and whole predictions
    of a model with and without it (reading, alignment, network, map, decision)."""
    import padim
    from padim.data.datasets import mvtec_test_set, training_images
    from padim.data.images import read_image

    train = training_images(root)
    tests = [s.path for s in mvtec_test_set(root)][:n]
    out: dict[str, float] = {}
    for mode in ("none", "rigid", "homography"):
        model = padim.Padim(align=mode, batch_size=1).fit(train)
        model.predict(tests[:2])  # warm
        started = time.perf_counter()
        for path in tests:
            model.predict([path])
        out[f"predict_{mode}_ms"] = 1000 * (time.perf_counter() - started) / len(tests)
        if model.aligner_ is not None:
            photos = [read_image(p) for p in tests]
            started = time.perf_counter()
            for photo in photos:
                model.aligner_.align(photo)
            out[f"align_{mode}_ms"] = 1000 * (time.perf_counter() - started) / len(tests)
    return out


def command_timing(root: Path, out: Path) -> dict[str, float]:
    """Whole `padim fit` and `padim predict` commands (separate processes) with and without
    alignment: seconds, and predict ms per test image."""
    from padim.data.datasets import mvtec_test_set

    n = len(mvtec_test_set(root))
    result: dict[str, float] = {}
    for mode in ("none", "rigid"):
        model = out / f"timing_{mode}.safetensors"
        for step, cmd in (
            ("fit", ["fit", str(root), "--out", str(model), "--align", mode, "--quiet"]),
            ("predict", ["predict", str(model), str(root / "test"), "--out",
                         str(out / f"pred_{mode}"), "--quiet"]),
        ):  # fmt: skip
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "padim", *cmd], check=True)
            result[f"{step}_{mode}_s"] = time.perf_counter() - started
        result[f"predict_{mode}_ms_per_image"] = 1000 * result[f"predict_{mode}_s"] / n
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--only-timing", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for name in [] if args.only_timing else args.datasets:
        for seed in args.seeds:
            rows.extend(run_benchmark(name, DATASETS[name], seed, args.out, args.variants))
            (args.out / "alignment.json").write_text(json.dumps({"rows": rows}, indent=1))
    timing: dict[str, float] = {}
    if not args.skip_timing:
        timing = {
            **stage_timing(DATASETS["bottle"]),
            **command_timing(DATASETS["bottle"], args.out),
        }
    cpu = f"{cpu_name()}, {os.cpu_count()} CPUs"
    lines = [f"# Alignment and shift-tolerant scoring ({cpu})", ""]
    for name in [] if args.only_timing else args.datasets:
        lines += accuracy_table(rows, name)
    if timing:
        lines += ["### Cost (bottle, 256 -> 224)", ""]
        lines += [f"- {k}: {v:.2f}" for k, v in timing.items()]
    (args.out / "alignment.md").write_text("\n".join(lines) + "\n")
    (args.out / "alignment.json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
