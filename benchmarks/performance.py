"""Speed, memory and accuracy of padim's PaDiM, side by side with anomalib's when installed.

    python benchmarks/performance.py --data ../shared/data/mvtec_ad/bottle --threads 2 \
        --backbones efficientnet_lite0 resnet18 wide_resnet50_2 --out perf.json

Each (implementation, backbone) runs in its own subprocess, so peak RSS is that run's alone.
Both implementations get the identical preprocessed tensors (resize 256x256, no crop, the
backbone's normalisation), the identical backbone weights (ImageNet for the offline Lite
backbones, the same seeded random init for ResNets, whose ImageNet weights cannot be
downloaded here) and the identical channel subset. Image decoding is done before timing.

Measured per run: backbone-only forward (layers 1-3, batch 1), fit time and peak RSS, predict
latency at batch 1 (median) and throughput at batch 16, peak RSS while predicting, model size,
image and pixel AUROC. anomalib is never a dependency of padim: its column is filled only when
`import anomalib` works (`pip install anomalib==2.7.0` in the same environment).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LITE_LAYERS = ["blocks.1", "blocks.2", "blocks.4"]
RESNET_LAYERS = ["layer1", "layer2", "layer3"]
TIMM_NAMES = {
    "efficientnet_lite0": "tf_efficientnet_lite0",
    "efficientnet_lite2": "tf_efficientnet_lite2",
}


# ----------------------------------------------------------------------------- shared inputs


def load_inputs(data: Path) -> dict:
    """Preprocessed train/test tensors (256x256, no crop, [0, 1]) and test labels/masks."""
    from padim.data.datasets import mvtec_test_set, read_mask, training_images
    from padim.data.images import read_image
    from padim.data.preprocess import Preprocess

    pre = Preprocess(256, None)
    train = torch.from_numpy(np.stack([pre.image(read_image(p)) for p in training_images(data)]))
    samples = mvtec_test_set(data)
    test = torch.from_numpy(np.stack([pre.image(read_image(s.path)) for s in samples]))
    masks = np.stack(
        [
            pre.mask(read_mask(s.mask_path)) if s.mask_path else np.zeros((256, 256), bool)
            for s in samples
        ]
    )
    labels = np.array([s.label for s in samples])
    return {"train": train, "test": test, "masks": masks, "labels": labels}


def full_backbone(name: str, weights: str | None, seed: int = 0) -> torch.nn.Module:
    """The whole backbone network with the weights padim's registry would give it."""
    from padim.core.backbones import get_backbone

    spec = get_backbone(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.architecture()
    if weights is None:
        model.load_state_dict(spec.pretrained())
    return model.eval()


def median_ms(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def aurocs(labels, masks, scores, maps) -> dict:
    from padim.evaluation.metrics import image_auroc, pixel_auroc

    return {
        "image_auroc": round(image_auroc(labels, scores), 4),
        "pixel_auroc": round(pixel_auroc(masks, maps), 4),
    }


# ----------------------------------------------------------------------------- workers


def run_ours(backbone: str, inputs: dict, weights: str | None, runs: int) -> dict:
    from padim.memory import PeakRSS
    from padim.model.estimator import Padim

    out: dict = {}
    model = Padim(backbone=backbone, size=256, crop=None, weights=weights, device="cpu")
    train = inputs["train"]
    with PeakRSS() as mem:
        start = time.perf_counter()
        model.fit([f"train_{i}" for i in range(len(train))], loader=lambda i, _: train[i])
        out["fit_s"] = round(time.perf_counter() - start, 2)
    out["fit_peak_rss_mib"] = round(mem.peak_bytes / 2**20)
    net = model.fitted_net()
    extractor = net.embedder.extractor
    x1 = (inputs["test"][:1] - net.embedder.mean) / net.embedder.std
    with torch.inference_mode():
        out["backbone_ms"] = round(median_ms(lambda: extractor(x1), runs), 1)
    with tempfile.TemporaryDirectory() as tmp:
        out["model_mb"] = round(model.save(Path(tmp) / "m.safetensors").stat().st_size / 1e6, 1)
    out.update(_predict(lambda x: net(x), inputs, runs))
    return out


def run_anomalib(
    backbone: str, inputs: dict, weights: str | None, runs: int, channel_idx: torch.Tensor
) -> dict:
    from anomalib.models.image.padim.torch_model import PadimModel

    from padim.core.backbones import get_backbone
    from padim.memory import PeakRSS

    _guard_batched_inverse()

    spec = get_backbone(backbone)
    timm_name = TIMM_NAMES.get(backbone, backbone)
    layers = LITE_LAYERS if backbone in TIMM_NAMES else RESNET_LAYERS
    model = PadimModel(
        backbone=timm_name, layers=layers, pre_trained=False, n_features=len(channel_idx)
    )
    missing = model.feature_extractor.feature_extractor.load_state_dict(
        full_backbone(backbone, weights).state_dict(), strict=False
    ).missing_keys
    if missing:
        raise RuntimeError(f"anomalib backbone weights not covered: {missing[:3]}")
    model.idx = channel_idx.clone()
    mean = torch.tensor(spec.normalisation.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.normalisation.std).view(1, 3, 1, 1)
    out: dict = {}
    train = (inputs["train"] - mean) / std
    with PeakRSS() as mem:
        start = time.perf_counter()
        model.train()
        for batch in train.split(32):
            model(batch)
        model.fit()
        out["fit_s"] = round(time.perf_counter() - start, 2)
    out["fit_peak_rss_mib"] = round(mem.peak_bytes / 2**20)
    model.eval()
    x1 = train[:1]
    with torch.inference_mode():
        out["backbone_ms"] = round(median_ms(lambda: model.feature_extractor(x1), runs), 1)
    state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    out["model_mb"] = round(state_bytes / 1e6, 1)

    def forward(x):
        res = model((x - mean) / std)
        return res.pred_score, res.anomaly_map

    out.update(_predict(forward, inputs, runs))
    return out


def _guard_batched_inverse() -> None:
    """anomalib inverts all covariances with one batched `torch.linalg.inv`, which fails on
    some CPU builds of torch (oneMKL pivot error with 2 threads). Keep its algorithm (LU
    inverse) but redo a failed call in one thread, so the comparison can run at all."""
    original = torch.linalg.inv

    def inv(a, *args, **kwargs):
        try:
            return original(a, *args, **kwargs)
        except RuntimeError:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                return original(a, *args, **kwargs)
            finally:
                torch.set_num_threads(threads)

    torch.linalg.inv = inv


def _predict(forward, inputs: dict, runs: int) -> dict:
    from padim.memory import PeakRSS

    test = inputs["test"]
    out: dict = {}
    with torch.inference_mode(), PeakRSS() as mem:
        lat = [
            median_ms(lambda i=i: forward(test[i : i + 1]), 1) for i in range(min(runs, len(test)))
        ]
        start = time.perf_counter()
        scores, maps = [], []
        for batch in test.split(16):
            s, m = forward(batch)
            scores.append(s.reshape(-1).float())
            maps.append(m.reshape(len(batch), 256, 256).float())
        elapsed = time.perf_counter() - start
    out["predict_ms_b1"] = round(statistics.median(lat), 1)
    out["throughput_img_s_b16"] = round(len(test) / elapsed, 1)
    out["predict_peak_rss_mib"] = round(mem.peak_bytes / 2**20)
    out.update(
        aurocs(
            inputs["labels"], inputs["masks"], torch.cat(scores).numpy(), torch.cat(maps).numpy()
        )
    )
    return out


def worker(args: argparse.Namespace) -> None:
    from padim.core.backbones import get_backbone
    from padim.core.features import select_channels

    torch.set_num_threads(args.threads)
    spec = get_backbone(args.backbone)
    weights = None if spec.offline else "random"
    inputs = load_inputs(args.data)
    if args.worker == "ours":
        result = run_ours(args.backbone, inputs, weights, args.runs)
    else:
        idx = select_channels(spec.total_channels, spec.default_keep, 0)
        result = run_anomalib(args.backbone, inputs, weights, args.runs, idx)
    result["weights"] = "imagenet" if weights is None else "random init (same for both)"
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- driver


def spawn(impl: str, backbone: str, args: argparse.Namespace) -> dict | None:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        impl,
        "--backbone",
        backbone,
        "--data",
        str(args.data),
        "--threads",
        str(args.threads),
        "--runs",
        str(args.runs),
    ]
    print(f"... {impl} / {backbone}", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"    {impl} / {backbone} failed (exit {proc.returncode}): {tail}", file=sys.stderr)
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1].removeprefix("RESULT "))


ROWS = [
    ("backbone_ms", "backbone forward, batch 1 (ms)"),
    ("fit_s", "fit (s)"),
    ("fit_peak_rss_mib", "peak RSS during fit (MiB)"),
    ("predict_ms_b1", "predict latency, batch 1 (ms)"),
    ("throughput_img_s_b16", "throughput, batch 16 (img/s)"),
    ("predict_peak_rss_mib", "peak RSS during predict (MiB)"),
    ("model_mb", "model size (MB)"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
]


def table(backbone: str, ours: dict, theirs: dict | None) -> str:
    lines = [
        f"#### {backbone} ({ours.get('weights', '')})",
        "",
        "| measure | padim | anomalib | padim / anomalib |",
        "|---|---|---|---|",
    ]
    for key, title in ROWS:
        a = ours.get(key)
        b = None if not theirs or "error" in theirs else theirs.get(key)
        ratio = f"{a / b:.2f}" if isinstance(a, int | float) and b else "-"
        lines.append(
            f"| {title} | {'-' if a is None else a} | {'-' if b is None else b} | {ratio} |"
        )
    if ours.get("backbone_ms") and ours.get("predict_ms_b1"):
        overhead = ours["predict_ms_b1"] - ours["backbone_ms"]
        lines.append(
            f"| padim overhead over the backbone, batch 1 | {overhead:.1f} ms "
            f"({100 * overhead / ours['backbone_ms']:.0f} %) | | |"
        )
    if theirs and "error" in theirs:
        lines.append(f"\nanomalib failed: {theirs['error']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="MVTec AD category folder")
    parser.add_argument(
        "--backbones", nargs="+", default=["efficientnet_lite0", "resnet18", "wide_resnet50_2"]
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20, help="timed repetitions (latency)")
    parser.add_argument("--no-anomalib", action="store_true")
    parser.add_argument("--out", type=Path, help="write all numbers as JSON here")
    parser.add_argument("--worker", choices=["ours", "anomalib"], help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    try:
        import anomalib  # noqa: F401

        have_anomalib = not args.no_anomalib
    except ImportError:
        have_anomalib = False
        print("anomalib is not importable: padim only", file=sys.stderr)
    report = {
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "torch": torch.__version__,
        },
        "runs": {},
    }
    for backbone in args.backbones:
        ours = spawn("ours", backbone, args)
        print(f"    padim / {backbone}: {json.dumps(ours)}", file=sys.stderr, flush=True)
        theirs = spawn("anomalib", backbone, args) if have_anomalib else None
        report["runs"][backbone] = {"padim": ours, "anomalib": theirs}
        print(table(backbone, ours, theirs) + "\n", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
