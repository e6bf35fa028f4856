"""PaDiM variants on one MVTec AD category: every score mode, Ledoit-Wolf shrinkage, few-shot.

For each backbone and shrinkage setting: fit on all training images and report image AUROC,
pixel AUROC and AUPRO for every score mode (one fit; the modes share its Gaussians and only
combine the patch terms differently); then fit on random subsets of 1, 5, 10 and 20 good images
(seeds 0, 1, 2) and report the mean image / pixel AUROC per mode. Writes DIR/variants.json,
DIR/variants.md and DIR/few_shot.png.

    python benchmarks/variants.py --data ../shared/data/mvtec_ad/bottle --out runs/variants
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from padim import Padim
from padim.core.scoring import SCORE_MODES
from padim.data.datasets import mvtec_test_set, training_images
from padim.evaluation.evaluate import ground_truth_masks
from padim.evaluation.metrics import aupro, image_auroc, pixel_auroc


def score_all_modes(model: Padim, samples, masks: np.ndarray, with_aupro: bool) -> dict:
    """Metrics per score mode from one pass over the test images."""
    net = model.fitted_net()
    size = (model.preprocess.output_size,) * 2
    terms: list[tuple[torch.Tensor, torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(samples), 16):
            x = torch.from_numpy(
                model.preprocess.stack([s.path for s in samples[start : start + 16]])
            )
            terms.append(net.terms(net.embedder(x), "hybrid"))
        maha = torch.cat([t[0] for t in terms])
        cheb = torch.cat([t[1] for t in terms])
        labels = np.array([s.label for s in samples])
        out = {}
        for mode in SCORE_MODES:
            scores, maps = net.maps_from_terms(maha, cheb, size, mode)
            maps = maps[:, 0].numpy()
            out[mode] = {
                "image_auroc": image_auroc(labels, scores.numpy()),
                "pixel_auroc": pixel_auroc(masks, maps),
            }
            if with_aupro:
                out[mode]["aupro"] = aupro(masks, maps)
    return out


def fit(data, backbone: str, shrinkage: str, images=None, seed: int = 0) -> Padim:
    model = Padim(
        backbone=backbone, size=256, crop=None, device="cpu", shrinkage=shrinkage, seed=seed
    )
    return model.fit(images if images is not None else data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec AD category folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_lite2"]
    )
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shrinkage", nargs="+", default=["none", "ledoit-wolf"])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    samples = mvtec_test_set(args.data)
    train = training_images(args.data)
    results: dict = {"full": [], "few_shot": []}

    def save() -> None:
        (args.out / "variants.json").write_text(json.dumps(results, indent=2) + "\n")

    for backbone in args.backbones:
        for shrinkage in args.shrinkage:
            started = time.perf_counter()
            model = fit(args.data, backbone, shrinkage)
            masks = ground_truth_masks(model, samples)
            metrics = score_all_modes(model, samples, masks, with_aupro=True)
            results["full"].append(
                {
                    "backbone": backbone,
                    "shrinkage": shrinkage,
                    "n_train": len(train),
                    "modes": metrics,
                }
            )
            print(
                f"{backbone} {shrinkage} full: {time.perf_counter() - started:.0f} s "
                f"{json.dumps(metrics)}",
                file=sys.stderr,
                flush=True,
            )
            save()
            for n in args.shots:
                for seed in args.seeds:
                    pick = np.random.default_rng(1000 + seed).choice(len(train), n, replace=False)
                    model = fit(args.data, backbone, shrinkage, [train[i] for i in pick], seed)
                    metrics = score_all_modes(model, samples, masks, with_aupro=False)
                    results["few_shot"].append(
                        {
                            "backbone": backbone,
                            "shrinkage": shrinkage,
                            "n_train": n,
                            "seed": seed,
                            "modes": metrics,
                        }
                    )
                    print(
                        f"{backbone} {shrinkage} n={n} seed={seed}: {json.dumps(metrics)}",
                        file=sys.stderr,
                        flush=True,
                    )
                    save()
    (args.out / "variants.md").write_text(markdown(results, args))
    plot(results, args, args.out / "few_shot.png")
    print((args.out / "variants.md").read_text())


def _mean(rows: list[dict], mode: str, metric: str) -> float:
    return float(np.mean([r["modes"][mode][metric] for r in rows]))


def markdown(results: dict, args) -> str:
    lines = [
        "| backbone | shrinkage | score mode | image AUROC | pixel AUROC | AUPRO |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in results["full"]:
        for mode in SCORE_MODES:
            m = r["modes"][mode]
            lines.append(
                f"| {r['backbone']} | {r['shrinkage']} | {mode} | "
                f"{m['image_auroc']:.3f} | {m['pixel_auroc']:.3f} | {m['aupro']:.3f} |"
            )
    lines += [
        "",
        f"Few-shot (mean of seeds {', '.join(map(str, args.seeds))}), image AUROC / pixel AUROC:",
        "",
    ]
    header = (
        "| backbone | shrinkage | score mode | " + " | ".join(f"n={n}" for n in args.shots) + " |"
    )
    lines += [header, "|---|---|---|" + "---:|" * len(args.shots)]
    for backbone in args.backbones:
        for shrinkage in args.shrinkage:
            for mode in SCORE_MODES:
                cells = []
                for n in args.shots:
                    rows = [
                        r
                        for r in results["few_shot"]
                        if r["backbone"] == backbone
                        and r["shrinkage"] == shrinkage
                        and r["n_train"] == n
                    ]
                    cells.append(
                        f"{_mean(rows, mode, 'image_auroc'):.3f} / "
                        f"{_mean(rows, mode, 'pixel_auroc'):.3f}"
                    )
                lines.append(f"| {backbone} | {shrinkage} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(args.backbones), figsize=(5.5 * len(args.backbones), 7.5), squeeze=False
    )
    for j, backbone in enumerate(args.backbones):
        for i, metric in enumerate(("image_auroc", "pixel_auroc")):
            ax = axes[i, j]
            for shrinkage, style in zip(args.shrinkage, ("-", "--"), strict=False):
                for mode, colour in zip(SCORE_MODES, ("C0", "C1", "C2", "C3"), strict=True):
                    ys = [
                        _mean(
                            [
                                r
                                for r in results["few_shot"]
                                if r["backbone"] == backbone
                                and r["shrinkage"] == shrinkage
                                and r["n_train"] == n
                            ],
                            mode,
                            metric,
                        )
                        for n in args.shots
                    ]
                    ax.plot(
                        args.shots,
                        ys,
                        style,
                        color=colour,
                        marker="o",
                        label=f"{mode}, {shrinkage}",
                    )
            ax.set_xscale("log")
            ax.set_xticks(args.shots, [str(n) for n in args.shots])
            ax.set_xlabel("good training images")
            ax.set_ylabel(metric.replace("_", " "))
            ax.set_title(backbone, fontsize=10)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Few-shot PaDiM on {args.data.name} (mean of {len(args.seeds)} seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
