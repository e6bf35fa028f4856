"""Catalogue benchmark: inspection records written per second by 4 writer processes (SQLite
and PostgreSQL), and `padim serve` throughput with recording on vs off, as users run them.

Writers: each process opens the catalogue and records N verdicts one transaction at a time,
as the service does per request (10 % anomalous with their image kept, the default 2 % of good
images kept; images are real PNGs). Service: the same model served by `padim serve` in its own
process, alternately without a catalogue and with `--record` into SQLite and PostgreSQL (`--auth
off`, so the clients need no token), K clients posting images back to back; rounds alternate
to spread drift.

    python benchmarks/lifecycle.py --model bottle.safetensors \
        --images ../shared/data/mvtec_ad/bottle/test --postgres postgresql+psycopg://... \
        --out docs/lifecycle_results.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from alignment import cpu_name
from load_test import Server, find_images, run_clients

WRITER = """
import hashlib, json, sys, time
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, RecordBook
location, files, count, seed = json.loads(sys.argv[1])
images = [open(p, "rb").read() for p in json.loads(sys.argv[2])]
book = RecordBook(open_catalogue(location, files))
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()  # start together
latencies = []
for i in range(count):
    data = images[(seed * 7919 + i) % len(images)]
    bad = (seed * 31 + i) % 10 == 0
    entry = Entry("bottle", 1, "bottle-abc", f"bench {seed}", f"{seed}-{i}.png", 1.0 + i,
                  0.3, 2.0, "anomalous" if bad else "good",
                  [{"x": 1, "y": 2, "width": 3, "height": 4}] if bad else [],
                  hashlib.sha256(data + i.to_bytes(4, "big")).hexdigest(), data)
    started = time.perf_counter()
    book.write([entry])
    latencies.append(time.perf_counter() - started)
print(json.dumps(latencies))
"""


def writers(location: str, files: str, images: list[Path], n: int, count: int) -> dict:
    """`n` writer processes of `count` records each, started together: records/s overall."""
    from padim.lifecycle.database import open_catalogue

    open_catalogue(location, files)  # the schema, before the clock starts
    args = [json.dumps([location, files, count, seed]) for seed in range(n)]
    paths = json.dumps([str(p) for p in images])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, a, paths],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for a in args
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    started = time.perf_counter()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    outputs = [p.communicate()[0] for p in procs]
    seconds = time.perf_counter() - started
    if any(p.returncode for p in procs):
        raise SystemExit("a writer failed")
    latencies = np.array([x for out in outputs for x in json.loads(out)]) * 1000
    return {
        "writers": n,
        "records": n * count,
        "seconds": round(seconds, 2),
        "records_per_s": round(n * count / seconds, 1),
        "write_p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "write_p99_ms": round(float(np.percentile(latencies, 99)), 2),
    }


def service(args: argparse.Namespace, payloads: list[tuple[str, bytes]], work: Path) -> list:
    """Throughput with recording off and on, alternating rounds (fresh server each round)."""
    rows = []
    modes = ("off", "sqlite", "postgresql") if args.postgres else ("off", "sqlite")
    for round_ in range(args.rounds):
        for mode in modes:
            extra = ["--auth", "off"]
            if mode == "sqlite":
                extra += ["--record", "--catalogue", str(work / f"served-{round_}")]
            elif mode == "postgresql":
                extra += ["--record", "--catalogue", args.postgres, "--files", str(work / "pg")]
            server = Server(args.model, True, args.threads, extra)
            try:
                server.wait_ready()
                asyncio.run(run_clients(server.url, payloads, 2, 5.0, 0))  # warm up
                row = asyncio.run(
                    run_clients(server.url, payloads, args.clients, args.duration, round_)
                )
            finally:
                server.stop()
            row |= {"recording": mode, "round": round_}
            rows.append(row)
            print(
                f"recording {mode:10s} round {round_}: {row['throughput_rps']:6.2f} img/s  "
                f"p50 {row['p50_ms']:6.1f} ms  p99 {row['p99_ms']:6.1f} ms  "
                f"errors {row['errors']}",
                file=sys.stderr,
                flush=True,
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--postgres", default=os.environ.get("PADIM_TEST_POSTGRES"))
    parser.add_argument("--records", type=int, default=1000, help="per writer")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    images = find_images(args.images)
    payloads = [(p.name, p.read_bytes()) for p in images]
    results: dict = {"cpu": cpu_name(), "cores": os.cpu_count(), "writers": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        targets = [("sqlite", str(work / "bench"), str(work / "bench"))]
        if args.postgres:  # a database of its own: the benchmark adds records to it
            targets.append(("postgresql", args.postgres, str(work / "pg")))
        for kind, location, files in targets:
            for n in (1, 4):
                row = writers(location, files, images, n, args.records) | {"database": kind}
                results["writers"].append(row)
                print(
                    f"{kind:10s} {n} writer(s): {row['records_per_s']:8.1f} records/s  "
                    f"p50 {row['write_p50_ms']} ms  p99 {row['write_p99_ms']} ms",
                    file=sys.stderr,
                    flush=True,
                )
        results["service"] = service(args, payloads, work)

    def mean(mode: str) -> float:
        return float(
            np.mean([r["throughput_rps"] for r in results["service"] if r["recording"] == mode])
        )

    results["recording_cost"] = {
        mode: round(1 - mean(mode) / mean("off"), 4)
        for mode in {r["recording"] for r in results["service"]} - {"off"}
    }
    for mode, cost in results["recording_cost"].items():
        print(f"recording in {mode} costs {100 * cost:.1f} % of throughput", flush=True)
    text = json.dumps(results, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
