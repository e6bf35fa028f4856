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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padim.data.datasets import training_images
from padim.data.images import IMAGE_EXTENSIONS
from padim.data.sources import read_table
from padim.errors import PadimError, first_line
from padim.files import write_text_atomic

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SUMMARY_COLUMNS = ("model", "status", "n_train", "threshold", "seconds", "file", "error")


@dataclass
class ModelJob:
    name: str
    sources: list[Path] = field(default_factory=list)

    def images(self) -> list[Path]:
        """The job's training images: folders expanded (MVTec train/good), files as they are."""
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
            raise PadimError(
                f"manifest {manifest}: model name {name!r} must be letters, digits, "
                "'.', '_' or '-' (it becomes a file name)"
            )
        path = Path(row["path"]).expanduser()
        jobs.setdefault(name, ModelJob(name)).sources.append(
            path if path.is_absolute() else manifest.parent / path
        )
    if not jobs:
        raise PadimError(f"manifest {manifest} lists no models")
    return list(jobs.values())


def summary_row(name: str, status: str, **values: Any) -> dict[str, Any]:
    """One row of fit-many.csv (columns not given are empty)."""
    return {
        **dict.fromkeys(SUMMARY_COLUMNS),
        "file": "",
        "error": "",
        "model": name,
        "status": status,
        **values,
    }


def fit_one(job: ModelJob, settings: dict[str, Any], out: Path) -> dict[str, Any]:
    """Fit and save one model; returns its summary row."""
    from padim.model.estimator import Padim

    started = time.perf_counter()
    model = Padim(**settings).fit(job.images())
    model.save(out)
    return summary_row(
        job.name,
        "fitted",
        n_train=model.info["n_train"],
        threshold=model.threshold_,
        seconds=round(time.perf_counter() - started, 3),
        file=out.name,
    )


def failed(name: str, exc: BaseException) -> dict[str, Any]:
    return summary_row(name, "failed", error=first_line(exc, 500))


def fit_locally(
    jobs: list[ModelJob], paths: dict[str, Path], settings: dict[str, Any]
) -> Iterator[dict[str, Any]]:
    """The local engine: one model after the other; yields their summary rows."""
    for job in jobs:
        try:
            yield fit_one(job, settings, paths[job.name])
        except PadimError as exc:
            yield failed(job.name, exc)


def run(
    manifest: Path,
    out: Path,
    settings: dict[str, Any],
    overwrite: bool = False,
    fit_remote: Callable | None = None,
    report: Callable[[dict[str, Any]], None] = lambda row: None,
) -> list[dict[str, Any]]:
    """Fit every model of the manifest into `out`, one after the other, or with
    `fit_remote(jobs, paths)` (the Ray engine: in parallel, yielding rows as they finish)."""
    jobs = read_jobs(manifest)
    if out.exists() and not out.is_dir():
        raise PadimError(f"--out must be a folder: {out}")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, Any]] = {}
    pending = []
    for job in jobs:
        path = out / f"{job.name}.safetensors"
        if path.is_file() and not overwrite:
            rows[job.name] = summary_row(job.name, "kept", file=path.name)
            report(rows[job.name])
        else:
            pending.append(job)
    paths = {job.name: out / f"{job.name}.safetensors" for job in pending}
    fitted = (
        fit_remote(pending, paths)
        if fit_remote and pending
        else fit_locally(pending, paths, settings)
    )
    for row in fitted:
        rows[row["model"]] = row
        report(row)
    ordered = [rows[job.name] for job in jobs]
    write_text_atomic(out / "fit-many.csv", _csv(ordered))
    return ordered


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row[k] for k in SUMMARY_COLUMNS})
    return buf.getvalue()
