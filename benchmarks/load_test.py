"""Load test of `padim serve`: K concurrent clients on loopback for a fixed time.

Starts the service in its own process (once with dynamic micro-batching, once without), then
for each client count runs K clients that post images to /v1/predict back to back for
--duration seconds, and reports throughput, p50/p95/p99 latency, errors and the mean batch size
the server formed (from its /metrics).

    python benchmarks/load_test.py --model bottle.safetensors \
        --images ../shared/data/mvtec_ad/bottle/test --clients 1 4 16 --duration 30
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def find_images(sources: list[Path]) -> list[Path]:
    found: list[Path] = []
    for src in sources:
        found += (
            [src]
            if src.is_file()
            else sorted(p for p in src.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        )
    if not found:
        raise SystemExit(f"no images in {', '.join(map(str, sources))}")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(
    url: str, proc: subprocess.Popen, timeout: float = 180, log: Path | None = None
) -> None:
    """Until the `padim serve` process `proc` answers /v1/health at `url`; stops the benchmark
    if it exits first or does not start in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text() if log else proc.returncode}")
        try:
            if httpx.get(url + "/v1/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start in time")


class Server:
    """`padim serve` in a subprocess, started and stopped around one batching mode."""

    def __init__(self, model: Path, batching: bool, threads: int, extra: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "padim",
            "serve",
            str(model),
            "--port",
            str(self.port),
            "--threads",
            str(threads),
            "--log-level",
            "warning",
            *extra,
        ]
        if not batching:
            cmd.append("--no-batching")
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        wait_healthy(self.url, self.proc, timeout, Path(self.log.name))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class RssSampler:
    """The server process's RSS (MiB), sampled twice a second while a run lasts."""

    def __init__(self, pid: int) -> None:
        self.path = Path(f"/proc/{pid}/status")
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> float:
        for line in self.path.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append(self.rss())

    def __enter__(self) -> RssSampler:
        self.samples.append(self.rss())
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(self.rss())

    def summary(self) -> dict:
        return {
            "rss_start_mib": round(self.samples[0]),
            "rss_end_mib": round(self.samples[-1]),
            "rss_max_mib": round(max(self.samples)),
        }


def batch_counters(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = re.search(r"^padim_batch_size_sum (\S+)", text, re.M)
    count = re.search(r"^padim_batch_size_count (\S+)", text, re.M)
    return (float(total.group(1)) if total else 0.0, float(count.group(1)) if count else 0.0)


async def run_clients(
    url: str, payloads: list[tuple[str, bytes]], clients: int, duration: float, seed: int
) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    stop_at = time.perf_counter() + duration

    async def client(http: httpx.AsyncClient, rng: random.Random) -> None:
        while time.perf_counter() < stop_at:
            name, data = payloads[rng.randrange(len(payloads))]
            started = time.perf_counter()
            try:
                res = await http.post(url + "/v1/predict", files={"file": (name, data)})
                ok = res.status_code == 200
                key = f"HTTP {res.status_code}"
            except httpx.HTTPError as exc:
                ok, key = False, type(exc).__name__
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=120) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http, random.Random(seed + i)) for i in range(clients)))
        elapsed = time.perf_counter() - began
    lat = np.array(latencies) * 1000.0
    pct = np.percentile(lat, [50, 95, 99]) if lat.size else [float("nan")] * 3
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": int(lat.size),
        "throughput_rps": round(lat.size / elapsed, 2),
        "p50_ms": round(float(pct[0]), 1),
        "p95_ms": round(float(pct[1]), 1),
        "p99_ms": round(float(pct[2]), 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
    }


def measure(args: argparse.Namespace, payloads: list[tuple[str, bytes]], batching: bool) -> list:
    server = Server(args.model, batching, args.threads, args.serve_args)
    rows = []
    try:
        server.wait_ready()
        asyncio.run(run_clients(server.url, payloads, 2, args.warmup, 0))  # warm caches
        for k in args.clients:
            before = batch_counters(server.url)
            with RssSampler(server.proc.pid) as rss:
                row = asyncio.run(run_clients(server.url, payloads, k, args.duration, 1000 * k))
            row.update(rss.summary())
            after = batch_counters(server.url)
            batches = after[1] - before[1]
            row["mean_batch"] = round((after[0] - before[0]) / batches, 2) if batches else None
            row["batching"] = "on" if batching else "off"
            rows.append(row)
            print(
                f"batching {row['batching']:3s} clients {k:3d}: {row['throughput_rps']:6.2f} "
                f"img/s  p50 {row['p50_ms']:7.1f} ms  p95 {row['p95_ms']:7.1f} ms  "
                f"p99 {row['p99_ms']:7.1f} ms  errors {row['errors']}  "
                f"mean batch {row['mean_batch']}  RSS {row['rss_start_mib']} -> "
                f"{row['rss_end_mib']} MiB (max {row['rss_max_mib']})",
                file=sys.stderr,
                flush=True,
            )
    finally:
        server.stop()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| batching | clients | throughput (img/s) | p50 ms | p95 ms | p99 ms | errors "
        "| mean batch | server RSS start -> end (max) MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batching']} | {r['clients']} | {r['throughput_rps']:.2f} | "
            f"{r['p50_ms']:.1f} | {r['p95_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['errors']} | {r['mean_batch']} | {r['rss_start_mib']} -> {r['rss_end_mib']} "
            f"({r['rss_max_mib']}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model file to serve")
    parser.add_argument(
        "--images",
        type=Path,
        nargs="+",
        required=True,
        help="image files / folders (searched recursively) to post",
    )
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per client count")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of warm-up")
    parser.add_argument("--batching", choices=["on", "off", "both"], default="both")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument(
        "--serve-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="passed to padim serve (last on the line)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    args = parser.parse_args()
    payloads = [(p.name, p.read_bytes()) for p in find_images(args.images)]
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.batching]
    rows = [row for batching in modes for row in measure(args, payloads, batching)]
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.write_text(
            json.dumps(
                {"rows": rows, "model": str(args.model), "duration_s": args.duration}, indent=2
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
