"""Latency per image: torch vs onnxruntime (and OpenVINO when installed), same model, same input.

Exports each model file to a temporary ONNX (and OpenVINO) file, then times the whole
inference path (normalisation to smoothed map) at batch 1 and the throughput at batch 8, the
runtimes taking turns call by call, and prints each runtime's median against torch's.

    python benchmarks/onnx_latency.py bottle_lite0.safetensors bottle_r18.safetensors --threads 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def interleaved(fns: dict, x: np.ndarray, runs: int, turn: int = 5) -> dict[str, list[float]]:
    """Milliseconds per call of each function, the functions taking turns (`turn` timed calls
    each, after one untimed call and a pause that lets the previous runtime's worker threads
    stop spinning), so a slow spell of a shared machine hits every runtime alike."""
    for fn in fns.values():
        for _ in range(3):
            fn(x)
    out: dict[str, list[float]] = {name: [] for name in fns}
    while min(len(v) for v in out.values()) < runs:
        for name, fn in fns.items():
            time.sleep(0.3)
            fn(x)
            for _ in range(turn):
                started = time.perf_counter()
                fn(x)
                out[name].append((time.perf_counter() - started) * 1000.0)
    return out


def measure(path: Path, runs: int, threads: int) -> list[dict]:
    import torch

    from padim.deploy.export import export_onnx, export_openvino
    from padim.deploy.exported import OnnxScorer, OpenVinoScorer
    from padim.deploy.model_info import file_id
    from padim.deploy.scorers import TorchScorer
    from padim.memory import reuse_freed_memory
    from padim.model.estimator import Padim

    torch.set_num_threads(threads)
    if not os.environ.get("PADIM_DEFAULT_MALLOC"):
        reuse_freed_memory()  # as every padim command does (PADIM_DEFAULT_MALLOC=1: glibc's own)
    model = Padim.load(path, device="cpu")
    h, w = model.preprocess.output_hw
    size = f"{w}x{h}"
    rng = np.random.default_rng(0)
    one = rng.random((1, 3, h, w), dtype=np.float32)
    eight = rng.random((8, 3, h, w), dtype=np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(model, Path(tmp) / "m.onnx", model_id=file_id(path))
        runtimes = {"torch": TorchScorer(model), "onnxruntime": OnnxScorer(onnx_path, threads)}
        try:
            xml = export_openvino(onnx_path, Path(tmp) / "m.xml")
            runtimes["openvino"] = OpenVinoScorer(xml, threads)
        except Exception as exc:  # optional
            print(f"openvino skipped: {exc}", file=sys.stderr)
        calls = {n: sc.score_batch for n, sc in runtimes.items()}
        b1 = interleaved(calls, one, runs)
        b8 = interleaved(calls, eight, max(3, runs // 4))
        for name in runtimes:
            rows.append(
                {
                    "model": path.name,
                    "backbone": model.config.backbone,
                    "input": size,
                    "runtime": name,
                    "b1_median_ms": statistics.median(b1[name]),
                    "b1_p90_ms": float(np.percentile(b1[name], 90)),
                    "b8_img_per_s": 8000.0 / statistics.median(b8[name]),
                }
            )
            print(
                f"{path.name} {name}: batch 1 median {rows[-1]['b1_median_ms']:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+", help="padim model files")
    parser.add_argument("--runs", type=int, default=40, help="timed batch-1 runs per runtime")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every runtime")
    args = parser.parse_args()
    rows = [row for path in args.models for row in measure(path, args.runs, args.threads)]
    print(
        "| backbone | input | runtime | batch 1 median ms | batch 1 p90 ms | torch / runtime "
        "| batch 8 img/s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    torch_ms = {r["model"]: r["b1_median_ms"] for r in rows if r["runtime"] == "torch"}
    for r in rows:
        print(
            f"| {r['backbone']} | {r['input']} | {r['runtime']} | {r['b1_median_ms']:.1f} | "
            f"{r['b1_p90_ms']:.1f} | {torch_ms[r['model']] / r['b1_median_ms']:.2f} | "
            f"{r['b8_img_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
