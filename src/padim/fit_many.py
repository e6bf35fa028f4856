"""`padim fit-many`: one model per product or category listed in a manifest, fitted one after
the other (local engine) or in parallel Ray tasks (`padim.ray_engine.fit_models`).

The manifest (CSV or Parquet) has a `model` column (the model's name, its file becomes
OUT/<model>.safetensors) and a `path` column: a folder of good images, an MVTec AD category
folder (its train/good is used) or one image; several rows may name the same model. Models
already in OUT are kept (the job resumes); one model failing is recorded and the others go on.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.bulk import read_table
from padim.errors import PadimError
from padim.images import IMAGE_EXTENSIONS
from padim.modelfile import write_text_atomic

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUMMARY_COLUMNS = ("model", "status", "n_train", "threshold", "seconds", "file", "error")


@dataclass
class ModelJob:
    name: str
    sources: list[Path] = field(default_factory=list)

    def images(self) -> list[Path]:
        """The job's training images: folders expanded (MVTec train/good), files as they are."""
        from padim.data import training_images

        out: list[Path] = []
        for src in self.sources:
            if src.is_dir():
                out.extend(training_images(src))
            elif src.is_file() and src.suffix.lower() in IMAGE_EXTENSIONS:
                out.append(src)
            else:
                raise PadimError(f"training data not found or not an image: {src}")
        return list(dict.fromkeys(out))


def read_jobs(manifest: Path) -> list[ModelJob]:
    """The manifest's models in order of first appearance, their sources grouped."""
    jobs: dict[str, ModelJob] = {}
    for row in read_table(manifest, ["model", "path"]):
        name = row["model"].strip()
        if not NAME.match(name):
            raise PadimError(f"manifest {manifest}: model name {name!r} must be letters, digits, "
                             "'.', '_' or '-' (it becomes a file name)")
        path = Path(row["path"]).expanduser()
        jobs.setdefault(name, ModelJob(name)).sources.append(
            path if path.is_absolute() else manifest.parent / path)
    if not jobs:
        raise PadimError(f"manifest {manifest} lists no models")
    return list(jobs.values())


def fit_one(job: ModelJob, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fit and save one model; returns its summary row."""
    from padim.model import Padim

    started = time.perf_counter()
    model = Padim(**settings).fit(job.images())
    model.save(out)
    return _row(job.name, "fitted", model, started, out)


def _row(name: str, status: str, model: Any, started: float, out: Path) -> dict[str, Any]:
    return {"model": name, "status": status, "n_train": model.info["n_train"],
            "threshold": model.threshold, "seconds": round(time.perf_counter() - started, 3),
            "file": out.name, "error": ""}


def failed(name: str, exc: BaseException) -> dict[str, Any]:
    return {"model": name, "status": "failed", "n_train": None, "threshold": None,
            "seconds": None, "file": "", "error": str(exc).strip().splitlines()[0][:500]}


def run(manifest: Path, out: Path, settings: dict[str, Any], engine: str = "local",
        overwrite: bool = False, fit_remote: Callable | None = None,
        report: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Fit every model of the manifest into `out`; `fit_remote(jobs, paths)` (the Ray engine)
    fits the pending ones in parallel and yields their rows as they finish."""
    jobs = read_jobs(manifest)
    if out.exists() and not out.is_dir():
        raise PadimError(f"--out must be a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        path = out / f"{job.name}.safetensors"
        if path.is_file() and not overwrite:
            rows[job.name] = {"model": job.name, "status": "kept", "n_train": None,
                              "threshold": None, "seconds": None, "file": path.name, "error": ""}
            _emit(report, rows[job.name])
        else:
            pending.append(job)
    paths = {job.name: out / f"{job.name}.safetensors" for job in pending}
    if engine == "ray" and pending:
        assert fit_remote is not None
        for row in fit_remote(pending, paths):
            rows[row["model"]] = row
            _emit(report, row)
    else:
        for job in pending:
            try:
                rows[job.name] = fit_one(job, settings, paths[job.name])
            except PadimError as exc:
                rows[job.name] = failed(job.name, exc)
            _emit(report, rows[job.name])
    ordered = [rows[job.name] for job in jobs]
    write_text_atomic(out / "fit-many.csv", _csv(ordered))
    return ordered


def _emit(report: Callable | None, row: dict[str, Any]) -> None:
    if report is not None:
        report(row)


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SUMMARY_COLUMNS})
    return buf.getvalue()
