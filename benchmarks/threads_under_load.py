"""Whole `padim predict` commands idle and beside busy processes, with torch's OpenMP spin
default (GOMP_SPINCOUNT=300000) and padim's (1000), taking turns.

    python benchmarks/threads_under_load.py MODEL.safetensors IMAGES/ [--repeat 2] [--hogs 2]

Prints the wall seconds of each run and the medians per setting and load."""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = {"torch default (300000)": "300000", "padim default (1000)": "1000"}


def busy(seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def predict(model: Path, images: Path, spin: str) -> float:
    env = {**os.environ, "GOMP_SPINCOUNT": spin}
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "padim", "predict", str(model), str(images), "--out",
             f"{out}/o", "--no-images", "--quiet"],
            check=True, env=env, capture_output=True,
        )  # fmt: skip
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("images", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--hogs", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    results: dict[tuple[str, str], list[float]] = {}
    for load in ("idle", f"{args.hogs} busy processes"):
        hogs = []
        if load != "idle":
            hogs = [multiprocessing.Process(target=busy, args=(3600,)) for _ in range(args.hogs)]
            for h in hogs:
                h.start()
        try:
            for _ in range(args.repeat):
                for name, spin in SETTINGS.items():
                    seconds = predict(args.model, args.images, spin)
                    results.setdefault((load, name), []).append(seconds)
                    print(f"{load:>18} | {name:<24} | {seconds:6.2f} s", flush=True)
        finally:
            for h in hogs:
                h.terminate()
    for (load, name), values in results.items():
        print(f"median {load:>18} | {name:<24} | {statistics.median(values):6.2f} s")


if __name__ == "__main__":
    main()
