"""`padim predict` outputs: results.csv / results.json and per-image pictures, staged atomically
(torch-free: any `Scorer` runtime).

Everything is written into a temporary folder beside the output folder and moved into place
only when every image has been scored, so a failure leaves no partial results behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from padim.bulk import source_paths
from padim.images import read_image
from padim.runtime import Scorer
from padim.viz import PICTURES, save_pictures


@dataclass
class ResultRow:
    path: str
    score: float
    is_anomalous: bool
    threshold: float
    overlay: str = ""
    heatmap: str = ""
    mask: str = ""


def output_names(paths: list[Path]) -> list[str]:
    """Unique, readable file stems: each path relative to the inputs' common folder, with '__'
    for '/' (stable: a resumed bulk job names every image as its first run did)."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    base = Path(os.path.commonpath([p.parent for p in resolved]))
    names = ["__".join(p.relative_to(base).with_suffix("").parts) for p in resolved]
    if len(set(names)) != len(names):  # same stem, different extensions
        names = ["__".join(p.relative_to(base).parts).replace(".", "_") for p in resolved]
    return names


def write_predictions(scorer: Scorer, inputs: list[Path], out: Path,
                      threshold: float | None = None, images: bool = True,
                      batch_size: int = 16, progress: bool = False) -> list[ResultRow]:
    """Score every input with any runtime (torch, ONNX, OpenVINO) and write the outputs."""
    paths = source_paths(inputs, recursive=False)
    names = dict(zip(paths, output_names(paths), strict=True))
    thr = scorer.threshold if threshold is None else float(threshold)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    rows: list[ResultRow] = []
    bar = tqdm(total=len(paths), desc="predict", unit="img", leave=False,
               disable=None if progress else True)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            x = np.stack([scorer.preprocess(read_image(p)) for p in chunk])
            scores, maps = scorer.score_batch(x)
            for path, img, score, amap in zip(chunk, x, scores, maps, strict=True):
                row = ResultRow(str(path), float(score), bool(score > thr), thr)
                if images:
                    files = save_pictures(stage, names[path], img, amap, thr)
                    row.overlay, row.heatmap, row.mask = (files[k] for k in PICTURES)
                rows.append(row)
            bar.update(len(chunk))
        (stage / "results.csv").write_text(_csv(rows), encoding="utf-8")
        (stage / "results.json").write_text(json.dumps(
            {"threshold": thr, "model_id": scorer.model_id,
             "results": [r.__dict__ for r in rows]}, indent=2) + "\n", encoding="utf-8")
        out.mkdir(parents=True, exist_ok=True)
        for item in stage.iterdir():
            os.replace(item, out / item.name)
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    return rows


def _csv(rows: list[ResultRow]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "score", "label", "threshold", "overlay", "heatmap", "mask"])
    for r in rows:
        writer.writerow([r.path, f"{r.score:.6f}", int(r.is_anomalous), f"{r.threshold:.6f}",
                         r.overlay, r.heatmap, r.mask])
    return buf.getvalue()
