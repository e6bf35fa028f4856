"""Video frame rates and the multi-model service's hot swap, measured as users run them: every
command is a separate `padim` process (import, model loading and writing included).

1. fit a model on camera images (BSData ball screws, `--size auto`);
2. make a video of test images (x264, CRF 18) and the same frames as PNG files;
3. `padim predict` on the video (every frame, every 5th, with pictures) and on the PNG folder;
4. `padim watch` on the video played in real time: frames read, scored, dropped, sent;
5. `padim serve DIR` with two models: K clients post without pause while one model file is
   replaced (atomically): requests, failures, latency, how long until the new model answers;
   then `--max-loaded 1` with requests alternating between the models (load on switch).

    python benchmarks/video_and_models.py --data ../shared/data/bsdata/ball_screw --out bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from padim.data.video import write_video


def padim(*args: str, threads: int) -> float:
    """Run one padim command; its wall time in seconds."""
    started = time.perf_counter()
    cmd = [sys.executable, "-m", "padim", *args]
    if args[0] in ("fit", "predict", "watch", "calibrate", "export"):
        cmd += ["--threads", str(threads)]
    if args[0] in ("fit", "predict", "watch"):
        cmd += ["--quiet"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(models: Path, threads: int, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "padim", "serve", str(models), "--port", str(port)]
    cmd += ["--threads", str(threads), "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("padim serve did not start")


def with_threshold(model: Path, threshold: float, out: Path, threads: int) -> None:
    tmp = out.with_name(f".{out.name}.tmp")
    args = ["--threshold", str(threshold), "--out", str(tmp)]
    padim("calibrate", str(model), *args, threads=threads)
    os.replace(tmp, out)  # what a deployment script does: write, then rename over


def swap_under_load(
    model: Path, work: Path, frame: bytes, clients: int, seconds: float, threads: int
) -> dict:
    folder = work / "models"
    folder.mkdir()
    shutil.copy(model, folder / "cap.safetensors")
    with_threshold(model, 1e6, folder / "label.safetensors", threads)
    proc, url = serve(folder, threads, "--reload-interval", "1")
    statuses: list[int] = []
    latencies: list[float] = []
    answers: list[tuple[float, float]] = []  # (time, threshold)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stop.is_set():
                started = time.perf_counter()
                res = http.post(
                    url + "/v1/models/cap/predict", files={"file": ("f.png", frame, "image/png")}
                )
                latencies.append(time.perf_counter() - started)
                statuses.append(res.status_code)
                if res.status_code == 200:
                    answers.append((time.monotonic(), res.json()["threshold"]))

    try:
        threads_ = [threading.Thread(target=client) for _ in range(clients)]
        for t in threads_:
            t.start()
        time.sleep(seconds / 2)
        new = 123456.0
        with_threshold(model, new, folder / "cap.safetensors", threads)
        replaced = time.monotonic()
        time.sleep(seconds / 2)
        stop.set()
        for t in threads_:
            t.join(60)
        first_new = min((t for t, thr in answers if thr == new), default=None)
        # LRU: one model in memory, requests alternating between the two
        switch = []
        proc.terminate()
        proc.wait(30)
        proc, url = serve(folder, threads, "--max-loaded", "1")
        with httpx.Client(timeout=120) as http:
            for name in ["cap", "cap", "label", "label", "cap", "label", "cap"]:
                started = time.perf_counter()
                res = http.post(
                    url + f"/v1/models/{name}/predict",
                    files={"file": ("f.png", frame, "image/png")},
                )
                switch.append((name, res.status_code, time.perf_counter() - started))
    finally:
        stop.set()
        proc.terminate()
        proc.wait(30)
    lat = np.array(latencies) * 1000
    same = [ms for (n, _, ms), prev in zip(switch[1:], switch, strict=False) if n == prev[0]]
    changed = [ms for (n, _, ms), prev in zip(switch[1:], switch, strict=False) if n != prev[0]]
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(statuses),
        "failed": sum(s != 200 for s in statuses),
        "requests_per_s": round(len(statuses) / seconds, 1),
        "latency_ms_p50": round(float(np.percentile(lat, 50)), 1),
        "latency_ms_p99": round(float(np.percentile(lat, 99)), 1),
        "new_model_after_s": None if first_new is None else round(first_new - replaced, 2),
        "lru_same_model_ms": round(1000 * float(np.median(same)), 1),
        "lru_switch_ms": round(1000 * float(np.median(changed)), 1),
        "lru_statuses": sorted({s for _, s, _ in switch}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/bsdata/ball_screw"))
    parser.add_argument("--train", type=int, default=200, help="training images used")
    parser.add_argument("--frames", type=int, default=150, help="frames in the video")
    parser.add_argument("--fps", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0, help="load test length")
    parser.add_argument("--out", type=Path, default=Path("video-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"threads": args.threads, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train = work / "train"
        train.mkdir()
        for p in sorted((args.data / "train" / "good").iterdir())[: args.train]:
            (train / p.name).symlink_to(p.resolve())
        model = work / "model.safetensors"
        results["fit_s"] = round(
            padim("fit", str(train), "--size", "auto", "--out", str(model), threads=args.threads),
            1,
        )
        tests = sorted((args.data / "test").rglob("*.jpg")) + sorted(
            (args.data / "test").rglob("*.png")
        )
        rng = np.random.default_rng(0)
        picked = [tests[i] for i in rng.choice(len(tests), args.frames, replace=True)]
        arrays = [np.asarray(Image.open(p).convert("RGB")) for p in picked]
        h, w = (s - s % 2 for s in arrays[0].shape[:2])
        arrays = [a[:h, :w] for a in arrays]
        video = write_video(work / "line.mp4", arrays, fps=args.fps, quality=18)
        frames = work / "frames"
        frames.mkdir()
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(frames / f"{i:05d}.png")
        results["video"] = {"frames": len(arrays), "size": f"{w}x{h}", "fps": args.fps}

        def timed(name: str, *cmd: str, count: int) -> None:
            seconds = padim(*cmd, threads=args.threads)
            results[name] = {"wall_s": round(seconds, 1), "per_s": round(count / seconds, 1)}
            print(f"{name}: {seconds:.1f} s, {count / seconds:.1f} frames/s", flush=True)

        n = len(arrays)
        timed("predict_video", "predict", str(model), str(video), "--out", str(work / "p1"),
              "--no-images", count=n)  # fmt: skip
        timed("predict_video_every5", "predict", str(model), str(video), "--out",
              str(work / "p2"), "--no-images", "--every", "5", count=-(-n // 5))  # fmt: skip
        timed("predict_png_folder", "predict", str(model), str(frames), "--out",
              str(work / "p3"), "--no-images", count=n)  # fmt: skip
        timed("predict_video_pictures", "predict", str(model), str(video), "--out",
              str(work / "p4"), count=n)  # fmt: skip
        onnx = work / "model.onnx"
        padim("export", str(model), "--out", str(onnx), threads=args.threads)
        for name, runtime in (("watch", model), ("watch_onnx", onnx)):
            events = work / name
            wall = padim(
                "watch", str(runtime), str(video), "--out", str(events), threads=args.threads
            )
            summary = json.loads((events / "summary.json").read_text())
            summary["wall_s"] = round(wall, 1)
            results[name] = summary
            print(f"{name}: {json.dumps(summary)}", flush=True)
        frame = (frames / "00000.png").read_bytes()
        results["service"] = swap_under_load(
            model, work, frame, args.clients, args.seconds, args.threads
        )
        print(f"service: {json.dumps(results['service'])}", flush=True)
    (args.out / "video_and_models.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out / 'video_and_models.json'}")


if __name__ == "__main__":
    main()
