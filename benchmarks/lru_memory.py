"""Resident memory of `padim serve DIR --max-loaded 1` while requests alternate between two
models (each switch unloads one model and loads the other), in one process.

    python benchmarks/lru_memory.py MODEL.safetensors [--rounds 100]

Prints RSS after loading, then every 10 alternations, and the peak: an unloaded model's memory
must come back (it waited for the garbage collector before, growing to 3.7 GB for 130 MB
models)."""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    from fastapi.testclient import TestClient

    from padim.service.app import create_app
    from padim.service.server import model_sources, prepare_process
    from padim.service.settings import ServeSettings

    prepare_process(ServeSettings())  # as padim serve does (malloc arenas, logging)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("a", "b"):
            shutil.copy(args.model, folder / f"{name}.safetensors")
        buf = io.BytesIO()
        Image.fromarray(np.full((256, 256, 3), 128, np.uint8)).save(buf, format="PNG")
        png = buf.getvalue()
        app = create_app(model_sources([folder], "cpu", None, False), ServeSettings(max_loaded=1))
        peak = 0.0
        with TestClient(app) as client:
            for i in range(args.rounds):
                name = "ab"[i % 2]
                res = client.post(f"/v1/models/{name}/predict", files={"file": ("x.png", png)})
                assert res.status_code == 200, res.text
                peak = max(peak, rss_mib())
                if i % 10 == 0 or i == args.rounds - 1:
                    print(f"after {i + 1:4d} requests: RSS {rss_mib():7.0f} MiB (peak {peak:.0f})")
        print(f"model file {args.model.stat().st_size / 2**20:.0f} MiB; peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
