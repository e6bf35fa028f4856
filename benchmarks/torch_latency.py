"""Batch-1 latency of the torch runtime alone, as `padim predict` and `padim serve` run it
(one process, torch only, the model loaded from its file), with padim's malloc settings or with
glibc's own (--default-malloc): the difference is page faults on torch's temporaries. With
PYTHONPATH pointing at another checkout's src/ it measures that version (the baseline).

    python benchmarks/torch_latency.py MODEL.safetensors [MODEL ...] [--default-malloc]

Prints one JSON line per model: median and p90 ms per image, minor page faults per call."""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import numpy as np


def measure(path: Path, runs: int, threads: int, default_malloc: bool) -> dict:
    import torch

    from padim.deploy.scorers import TorchScorer
    from padim.model.estimator import Padim

    if not default_malloc:  # (imported here: padim versions before it can be measured too)
        from padim.memory import reuse_freed_memory

        reuse_freed_memory()
    torch.set_num_threads(threads)
    scorer = TorchScorer(Padim.load(path, device="cpu"))
    h, w = scorer.model.preprocess.output_hw
    x = np.random.default_rng(0).random((1, 3, h, w), dtype=np.float32)
    for _ in range(5):
        scorer.score_batch(x)
    times = []
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(runs):
        started = time.perf_counter()
        scorer.score_batch(x)
        times.append((time.perf_counter() - started) * 1000)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {
        "model": path.name,
        "malloc": "glibc default" if default_malloc else "padim",
        "b1_median_ms": round(statistics.median(times), 2),
        "b1_p90_ms": round(float(np.percentile(times, 90)), 2),
        "page_faults_per_call": round(faults / runs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--default-malloc", action="store_true")
    args = parser.parse_args()
    for path in args.models:
        print(json.dumps(measure(path, args.runs, args.threads, args.default_malloc)), flush=True)


if __name__ == "__main__":
    main()
