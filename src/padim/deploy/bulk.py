"""Bulk scoring jobs: resumable result parts out (torch-free and Ray-free; the Ray engine runs
`score_part` inside its actors). Local `padim predict` writes one results table at the end
instead: `padim.deploy.predict`.

An output folder holds `job.json` (which model and threshold the results belong to), `parts/`
(one Parquet file per scored batch, each written atomically, so a killed job leaves only whole
parts behind), optional `maps/` (PNG pictures, raw float16 maps), and at the end
`results.parquet` or `results.csv` with one row per input in input order plus `summary.json`.
A re-run scores only the inputs that no part covers yet: that is how a killed job resumes and
how a growing folder is topped up.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim import options
from padim.data.pictures import PICTURES
from padim.data.sources import pyarrow_modules
from padim.deploy.scorers import (
    ALIGNMENT_COLUMNS,
    RESULT_COLUMNS,
    Scorer,
    alignment_columns,
    decide_scored,
    save_scored_pictures,
    score_files,
)
from padim.errors import PadimError
from padim.files import atomic_path, write_atomic, write_text_atomic

RESULT_FORMATS = options.RESULT_FORMATS
COLUMNS = (*RESULT_COLUMNS, "map")


# ----------------------------------------------------------------------------- one part


def score_part(
    scorer: Scorer,
    paths: Sequence[str],
    names: Sequence[str],
    threshold: float,
    maps_dir: Path | None,
    parts_dir: Path,
    outputs: Sequence[str] = PICTURES,
    min_area: int = options.MIN_AREA.default,
) -> dict[str, list]:
    """Score one batch, write its `outputs` into `maps_dir` (if given: PNG pictures at each
    photo's resolution, and "map", the raw anomaly map at the model input as float16 .npy) and
    then its part file (with the normalised score and the number of defect regions of at
    least `min_area` pixels); an image that cannot be read becomes a row with an `error` and
    no score, never a failed batch."""
    pictures = [kind for kind in outputs if kind != "map"] if maps_dir is not None else []
    scale = scorer.score_scale.at(threshold)
    found: list[dict[str, Any]] = []
    for item, name in zip(score_files(scorer, paths, bool(pictures)), names, strict=True):
        row: dict[str, Any] = {"path": item.path, "threshold": threshold, "error": item.error}
        if item.score is None or item.anomaly_map is None:
            found.append(row)
            continue
        decision = decide_scored(scorer, item, threshold, scale, min_area)
        regions = decision.regions
        row.update(
            score=decision.score,
            normalised_score=decision.normalised_score,
            label=int(decision.is_anomalous),
            regions=len(regions),
            verdict=decision.verdict,
            reason=decision.reason,
            **alignment_columns(item.transform),
        )
        if maps_dir is not None:
            files = save_scored_pictures(scorer, item, maps_dir, name, threshold, pictures, regions)
            row.update({kind: f"maps/{file}" for kind, file in files.items()})
            if "map" in outputs:
                save_npy(maps_dir / f"{name}_map.npy", item.anomaly_map)
                row["map"] = f"maps/{name}_map.npy"
        found.append(row)
    rows = {c: [row.get(c) for row in found] for c in COLUMNS}
    write_part(parts_dir, rows)
    return rows


def save_npy(path: Path, amap: np.ndarray) -> None:
    """A raw anomaly map as float16 .npy, atomically."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.save(f, amap.astype(np.float16))

    write_atomic(path, write)


def _table(rows: dict[str, list]):
    pa, _ = pyarrow_modules()
    schema = pa.schema(
        [
            ("path", pa.string()),
            ("score", pa.float64()),
            ("normalised_score", pa.float64()),
            ("label", pa.int8()),
            ("regions", pa.int32()),
            ("threshold", pa.float64()),
            ("error", pa.string()),
            ("overlay", pa.string()),
            ("heatmap", pa.string()),
            ("mask", pa.string()),
            ("verdict", pa.string()),
            ("reason", pa.string()),
            *((c, pa.float64()) for c in ALIGNMENT_COLUMNS),
            ("map", pa.string()),
        ]
    )
    return pa.table({c: rows[c] for c in COLUMNS}, schema=schema)


def write_part(parts_dir: Path, rows: dict[str, list]) -> Path:
    """One batch's rows as parts/part-<uuid>.parquet, atomically."""
    _, pq = pyarrow_modules()
    path = parts_dir / f"part-{uuid.uuid4().hex}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(_table(rows), tmp)
    return path


# ----------------------------------------------------------------------------- the job folder


@dataclass
class BulkJob:
    """An output folder of a bulk scoring job (see the module docstring)."""

    out: Path
    fmt: str = options.RESULT_FORMAT.default

    @property
    def parts_dir(self) -> Path:
        return self.out / "parts"

    @property
    def maps_dir(self) -> Path:
        return self.out / "maps"

    @property
    def results_path(self) -> Path:
        return self.out / f"results.{self.fmt}"

    def start(self, identity: dict[str, Any]) -> None:
        """Create the folder, or check that its earlier results come from the same model,
        threshold and score mode (mixing them would make one table of incomparable scores)."""
        if self.fmt not in RESULT_FORMATS:
            raise PadimError(f"--format must be one of {', '.join(RESULT_FORMATS)}")
        if self.out.exists() and not self.out.is_dir():
            raise PadimError(f"--out must be a folder: {self.out}")
        record = self.out / "job.json"
        if record.is_file():
            try:
                before = json.loads(record.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                raise PadimError(f"{record} is damaged; use a new --out folder") from None
            changed = [k for k in identity if before.get(k) != identity[k]]
            if changed:
                raise PadimError(
                    f"{self.out} holds results of another job ({', '.join(changed)} differ: "
                    f"{before.get(changed[0])!r} vs {identity[changed[0]]!r}); use a new --out "
                    "folder"
                )
        elif self.out.exists() and any(self.out.iterdir()):
            raise PadimError(
                f"{self.out} is not empty and holds no padim job; use a new --out folder"
            )
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(record, json.dumps(identity, indent=2) + "\n")

    def done(self, retry_errors: bool = False) -> dict[str, dict[str, Any]]:
        """The rows already written, by path (a scored row wins over an error row); with
        `retry_errors`, paths that only have error rows count as not done."""
        _, pq = pyarrow_modules()
        rows: dict[str, dict[str, Any]] = {}
        for part in sorted(self.parts_dir.glob("part-*.parquet")):
            try:
                table = pq.read_table(part)
            except Exception:  # not written by an atomic rename: cannot happen, but never fatal
                continue
            for row in table.to_pylist():
                kept = rows.get(row["path"])
                if kept is None or (kept["error"] and not row["error"]):
                    rows[row["path"]] = row
        if retry_errors:
            rows = {p: r for p, r in rows.items() if not r["error"]}
        return rows

    def finish(self, paths: Sequence[str], summary: dict[str, Any]) -> dict[str, Any]:
        """Write results.<fmt> (one row per input, input order) and summary.json, atomically."""
        done = self.done()
        missing = [p for p in paths if p not in done]
        if missing:
            raise PadimError(f"{len(missing)} inputs have no result (first: {missing[0]})")
        rows = {c: [done[p][c] for p in paths] for c in COLUMNS}
        errors = sum(e is not None for e in rows["error"])
        summary = {
            **summary,
            "images": len(paths),
            "errors": errors,
            "anomalous": sum(v == 1 for v in rows["label"]),
            "results": self.results_path.name,
        }
        with atomic_path(self.results_path) as tmp:
            if self.fmt == "parquet":
                pyarrow_modules()[1].write_table(_table(rows), tmp)
            else:
                _write_csv(tmp, rows)
        write_text_atomic(self.out / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary


def _write_csv(path: Path, rows: dict[str, list]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for values in zip(*(rows[c] for c in COLUMNS), strict=True):
            writer.writerow(
                ["" if v is None else (f"{v:.6f}" if isinstance(v, float) else v) for v in values]
            )
