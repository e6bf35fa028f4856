"""Local `padim predict` (one process, any `Scorer` runtime, torch-free): results.csv /
results.json and per-image pictures, staged atomically. (Bulk jobs that resume and run on Ray
write Parquet parts instead: `padim.deploy.bulk`.)

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
from dataclasses import dataclass, field
from pathlib import Path

from padim import options
from padim.data.pictures import PICTURES
from padim.data.sources import output_names, source_paths
from padim.deploy.scorers import (
    RESULT_COLUMNS,
    Scorer,
    resolve_threshold,
    save_scored_pictures,
    score_files,
)
from padim.files import check_output_folder
from padim.progress import progress_bar


@dataclass
class ResultRow:
    """One input's line of results.csv / results.json (an unreadable image: `error`, no score).
    `regions`: the largest-peak ones (at most options.MAX_REGIONS), `n_regions`: all of them."""

    path: str
    score: float | None
    is_anomalous: bool | None
    threshold: float
    error: str = ""
    overlay: str = ""
    heatmap: str = ""
    mask: str = ""
    normalised_score: float | None = None
    n_regions: int | None = None
    regions: list[dict] = field(default_factory=list)


def write_predictions(
    scorer: Scorer,
    inputs: list[Path],
    out: Path,
    threshold: float | None = None,
    images: bool = True,
    batch_size: int = 16,
    progress: bool = False,
    operating_point: str | None = None,
    min_area: int = options.MIN_AREA.default,
) -> list[ResultRow]:
    """Score every input with any runtime (torch, ONNX, OpenVINO) and write the outputs: score,
    normalised score, verdict and defect regions (at each photo's resolution, at least
    `min_area` pixels) per image; an image that cannot be read or scored becomes a row with an
    `error`, and the rest go on."""
    check_output_folder(out, inputs)
    thr = resolve_threshold(scorer, threshold, operating_point)
    scale = scorer.score_scale.at(thr)
    paths = source_paths(inputs)
    names = dict(zip(paths, output_names(paths), strict=True))
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    rows: list[ResultRow] = []
    bar = progress_bar(len(paths), "predict", enabled=progress)
    try:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            for path, scored in zip(chunk, score_files(scorer, chunk, images), strict=True):
                if scored.score is None or scored.image is None or scored.anomaly_map is None:
                    rows.append(ResultRow(str(path), None, None, thr, scored.error or "unknown"))
                    continue
                assert scored.size is not None
                regions = scorer.geometry.regions(
                    scored.anomaly_map, thr, scored.size, min_area, scale
                )
                row = ResultRow(
                    str(path),
                    scored.score,
                    scored.score > thr,
                    thr,
                    normalised_score=scale.one(scored.score),
                    n_regions=len(regions),
                    regions=[r.to_dict() for r in regions[: options.MAX_REGIONS]],
                )
                if images:  # at the photo's own resolution
                    files = save_scored_pictures(
                        scorer, scored, stage, names[path], thr, PICTURES, regions
                    )
                    row.overlay, row.heatmap, row.mask = (files[k] for k in PICTURES)
                rows.append(row)
            bar.update(len(chunk))
        (stage / "results.csv").write_text(_csv(rows), encoding="utf-8")
        (stage / "results.json").write_text(
            json.dumps(
                {
                    "threshold": thr,
                    "operating_point": operating_point,
                    "score_scale": scale.to_dict(),
                    "min_area": min_area,
                    "model_id": scorer.model_id,
                    "results": [r.__dict__ for r in rows],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
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
    writer.writerow(RESULT_COLUMNS)
    for r in rows:
        writer.writerow(
            [
                r.path,
                "" if r.score is None else f"{r.score:.6f}",
                "" if r.normalised_score is None else f"{r.normalised_score:.6f}",
                "" if r.is_anomalous is None else int(r.is_anomalous),
                "" if r.n_regions is None else r.n_regions,
                f"{r.threshold:.6f}",
                r.error,
                r.overlay,
                r.heatmap,
                r.mask,
            ]
        )
    return buf.getvalue()
