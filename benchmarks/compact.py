"""Compact models (`--covariance minor`) against the full covariance, as users run them: every
step is a whole `padim` command in its own process (import, model loading and metrics
included), one representation after another in the same run on the same machine.

Per data set/geometry and representation: `padim fit` (seconds, peak RSS, model file size),
`padim export` to ONNX and OpenVINO (file sizes), `padim evaluate` (image/pixel AUROC, AUPRO,
peak RSS of a process that loads the model and scores the test set), and batch-1 latency /
batch-8 throughput with torch, onnxruntime and OpenVINO taking turns in one process
(`benchmarks/onnx_latency.py`). Then 50 copies of one model served by `padim serve
--max-loaded 50`, each asked once: the server's peak RSS.

    python benchmarks/compact.py --out /tmp/compact [--cases bottle,bs-auto] [--skip-latency]

Writes DIR/results.json, DIR/table.md and DIR/curve.png (size against AUROC), prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from alignment import cpu_name  # the benchmarks folder's helpers (on sys.path when run)
from video_and_models import serve
from workflow import timed

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PADIM_SHARED", REPO.parent / "shared")) / "data"
BOTTLE = SHARED / "mvtec_ad" / "bottle"
BSDATA = SHARED / "bsdata" / "ball_screw"
FULL = ("full", ["--covariance", "full", "--storage", "float16"])  # today's default


def minor(r: int, storage: str = "int8") -> tuple[str, list[str]]:
    name = f"minor r={r} {storage}"
    return name, ["--covariance", "minor", "--components", str(r), "--storage", storage]


CASES: dict[str, tuple[Path, list[str], list[tuple[str, list[str]]]]] = {
    "bottle": (
        BOTTLE,
        ["--size", "256", "--crop", "none"],
        [FULL, minor(4), minor(8), minor(8, "float16"), minor(16), minor(32)],
    ),
    "bs-auto": (BSDATA, ["--size", "auto"], [FULL, minor(4), minor(8), minor(16)]),
    "bs-800x320": (BSDATA, ["--size", "800x320"], [FULL, minor(8), minor(16)]),
    "bs-native-tiled": (BSDATA, ["--size", "native", "--tile", "256"], [FULL, minor(8)]),
}


def padim(*args: str) -> list[str]:
    return [sys.executable, "-m", "padim", *args]


def size_mb(*paths: Path) -> float:
    return sum(p.stat().st_size for p in paths if p.exists()) / 1e6


def run_case(
    name: str, out: Path, threads: int, latency: bool, only: str | None = None
) -> list[dict]:
    data, geometry, reps = CASES[name]
    rows = []
    for rep, flags in reps:
        if only is not None and only not in rep:
            continue
        stem = f"{name}-{rep.replace(' ', '-').replace('=', '')}"
        model = out / f"{stem}.safetensors"
        fit = timed(
            padim(
                "fit",
                str(data),
                "--out",
                str(model),
                *geometry,
                *flags,
                "--threads",
                str(threads),
                "--quiet",
            )
        )
        metrics = out / f"{stem}.json"
        evaluation = timed(
            padim(
                "evaluate",
                str(model),
                str(data),
                "--json",
                str(metrics),
                "--threads",
                str(threads),
                "--quiet",
            )
        )
        found = json.loads(metrics.read_text())
        onnx, xml = out / f"{stem}.onnx", out / f"{stem}.xml"
        timed(padim("export", str(model), "--out", str(onnx)))
        timed(padim("export", str(model), "--format", "openvino", "--out", str(xml)))
        row = {
            "case": name,
            "representation": rep,
            "fit_s": round(fit["wall_s"], 1),
            "fit_peak_mib": round(fit["peak_rss_gib"] * 1024),
            "model_mb": round(size_mb(model), 2),
            "onnx_mb": round(size_mb(onnx, out / f"{onnx.name}.data"), 2),
            "openvino_mb": round(size_mb(xml, xml.with_suffix(".bin")), 2),
            "evaluate_peak_mib": round(evaluation["peak_rss_gib"] * 1024),
            "image_auroc": found["image_auroc"],
            "pixel_auroc": found["pixel_auroc"],
            "aupro": found.get("aupro"),
        }
        if latency:
            row.update(measure_latency(model, threads))
            if rep == FULL[0]:  # as padim ran before this change: glibc's own malloc settings
                before = measure_latency(model, threads, {"PADIM_DEFAULT_MALLOC": "1"})
                row["b1_torch_ms_default_malloc"] = before["b1_torch_ms"]
        for path in (onnx, xml, xml.with_suffix(".bin"), out / f"{onnx.name}.data"):
            path.unlink(missing_ok=True)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def measure_latency(model: Path, threads: int, env: dict | None = None) -> dict:
    """torch / onnxruntime / OpenVINO at batch 1 (median ms) and batch 8 (images/s), taking
    turns in one fresh process."""
    code = (
        "import json, sys; sys.path.insert(0, 'benchmarks'); from onnx_latency import measure; "
        f"print(json.dumps(measure(__import__('pathlib').Path({str(model)!r}), 30, {threads})))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env={**os.environ, **(env or {})},
    )
    out = {}
    for r in json.loads(proc.stdout.strip().splitlines()[-1]):
        out[f"b1_{r['runtime']}_ms"] = round(r["b1_median_ms"], 1)
        out[f"b8_{r['runtime']}_img_s"] = round(r["b8_img_per_s"], 1)
    return out


def serve_many(model: Path, out: Path, n: int = 50) -> dict:
    """n copies of `model` in one folder, `padim serve --max-loaded n`, one request each: the
    server process's peak RSS (VmHWM) once every model is loaded."""
    import httpx

    folder = out / "fifty"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    for i in range(n):
        shutil.copy(model, folder / f"product{i:02d}.safetensors")
    server, url = serve(folder, 2, "--max-loaded", str(n))
    image = next((BOTTLE / "test" / "good").iterdir())
    try:
        started = time.perf_counter()
        for i in range(n):
            with open(image, "rb") as fh:
                res = httpx.post(
                    f"{url}/v1/models/product{i:02d}/predict", files={"file": fh}, timeout=120
                )
            res.raise_for_status()
        seconds = time.perf_counter() - started
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmHWM"))
        rss = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "models": n,
        "model_mb": round(size_mb(model), 2),
        "peak_rss_mib": round(peak / 1024),
        "rss_mib": round(rss / 1024),
        "first_requests_s": round(seconds, 1),
    }


COLUMNS = [
    ("representation", "representation"),
    ("model_mb", "file MB"),
    ("onnx_mb", "ONNX MB"),
    ("openvino_mb", "OpenVINO MB"),
    ("fit_s", "fit s"),
    ("fit_peak_mib", "fit peak MiB"),
    ("evaluate_peak_mib", "evaluate peak MiB"),
    ("b1_torch_ms_default_malloc", "torch b1 ms, glibc default"),
    ("b1_torch_ms", "torch b1 ms"),
    ("b1_onnxruntime_ms", "ort b1 ms"),
    ("b1_openvino_ms", "OV b1 ms"),
    ("b8_torch_img_s", "torch b8 img/s"),
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("aupro", "AUPRO"),
]


def table(rows: list[dict]) -> str:
    lines = []
    for case in dict.fromkeys(r["case"] for r in rows):
        lines += [f"\n**{case}**\n", "| " + " | ".join(h for _, h in COLUMNS) + " |"]
        lines.append("|---" + "|---:" * (len(COLUMNS) - 1) + "|")
        for r in (r for r in rows if r["case"] == case):
            cells = [r.get(k) for k, _ in COLUMNS]
            lines.append(
                "| "
                + " | ".join(
                    f"{c:.4f}" if isinstance(c, float) and c < 1 else str(c) for c in cells
                )
                + " |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for case in dict.fromkeys(r["case"] for r in rows):
        mine = [r for r in rows if r["case"] == case]
        for ax, key in zip(axes, ("image_auroc", "pixel_auroc"), strict=True):
            ax.plot([r["model_mb"] for r in mine], [r[key] for r in mine], "o-", label=case)
            for r in mine:
                ax.annotate(
                    r["representation"].replace("minor ", ""),
                    (r["model_mb"], r[key]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
    for ax, key in zip(axes, ("image AUROC", "pixel AUROC"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("model file (MB, log scale)")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Compact Gaussians: model size against accuracy (lite0, 2 threads)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--serve-model", default="bottle-minor-r8-int8")
    parser.add_argument("--only", help="representations whose name contains this (e.g. minor)")
    parser.add_argument("--merge", type=Path, help="results.json of an earlier run to add to")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    model_name = cpu_name()
    rows = []
    for case in args.cases.split(","):
        rows += run_case(case, args.out, args.threads, not args.skip_latency, args.only)
    if args.merge is not None:  # rows of the earlier run that this one did not redo
        done = {(r["case"], r["representation"]) for r in rows}
        earlier = json.loads(args.merge.read_text())["rows"]
        rows = [r for r in earlier if (r["case"], r["representation"]) not in done] + rows
        order = [(case, rep) for case, (_, _, reps) in CASES.items() for rep, _ in reps]
        rows.sort(key=lambda r: order.index((r["case"], r["representation"])))
    served = None
    candidate = args.out / f"{args.serve_model}.safetensors"
    if candidate.exists():
        served = serve_many(candidate, args.out)
        print(json.dumps(served), flush=True)
    result = {"cpu": model_name, "python": platform.python_version(), "rows": rows, "serve": served}
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    text = f"CPU: {model_name}, {args.threads} threads\n" + table(rows)
    if served:
        text += (
            f"\n\n{served['models']} models of {served['model_mb']} MB served with --max-loaded "
            f"{served['models']}: peak RSS {served['peak_rss_mib']} MiB"
        )
    (args.out / "table.md").write_text(text + "\n")
    plot(rows, args.out / "curve.png")
    print(text)


if __name__ == "__main__":
    main()
