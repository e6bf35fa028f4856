"""Peak memory of whole commands on large videos (hardening, round two): `padim watch` on a
4K video whose every frame is an alarm (the folder sink's queue), and `padim predict` on an
8000x8000 video. Each command is a separate process; its peak RSS comes from the kernel.

    python benchmarks/hardening_memory.py MODEL.safetensors [--frames 100] [--speed 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_video(path: Path, width: int, height: int, frames: int) -> Path:
    from padim.data.video import write_video

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height // 8, width // 8, 3), dtype=np.uint8)
    big = np.kron(base, np.ones((8, 8, 1), np.uint8))
    return write_video(path, (np.roll(big, 8 * i, axis=1) for i in range(frames)), fps=25)


WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, rc)\n"
)  # a process of its own per command, so each peak is that command's alone


def peak(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS GiB, seconds, exit status) of one command."""
    started = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", WRAPPER, sys.executable, "-m", "padim", *args],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    kib, rc = run.stdout.split()
    if int(rc):
        print("   ", (run.stderr.strip().splitlines() or [""])[-1][:200])
    return int(kib) / 2**20, seconds, int(rc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--speed", default="1", help="watch --speed (1: real time)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        uhd = make_video(folder / "uhd.mp4", 3840, 2160, args.frames)
        gib, s, rc = peak(["watch", str(args.model), str(uhd), "--out", str(folder / "alarms"),
                           "--threshold", "0", "--speed", args.speed, "--quiet"])  # fmt: skip
        written = len(list((folder / "alarms").glob("*_overlay.jpg")))
        summary = folder / "alarms" / "summary.json"
        counts = json.loads(summary.read_text()) if summary.is_file() else {}
        sink = counts.get("sinks", {}).get("folder", {})
        print(f"watch 4K ({args.frames} frames, threshold 0: every scored frame an alarm): "
              f"peak {gib:.2f} GiB, {s:.1f} s, exit {rc}; scored {counts.get('scored')}, "
              f"anomalous {counts.get('anomalous')}, folder sink sent {sink.get('sent')} "
              f"dropped {sink.get('dropped')}, {written} overlays on disk")  # fmt: skip
        huge = make_video(folder / "huge.mp4", 8000, 8000, 3)
        gib, s, rc = peak(["predict", str(args.model), str(huge), "--out", str(folder / "p"),
                           "--no-images", "--quiet"])  # fmt: skip
        print(f"predict 8000x8000 video (3 frames): peak {gib:.2f} GiB, {s:.1f} s, exit {rc}")


if __name__ == "__main__":
    main()
