"""Bulk scoring on Ray: a Ray Data pipeline of actors, each holding the model, writing a
resumable job folder (`padim.deploy.bulk`)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim import options
from padim.data.sources import output_names, source_paths
from padim.deploy.bulk import BulkJob, score_part
from padim.deploy.model_info import file_id
from padim.deploy.scorers import load_scorer, resolve_threshold
from padim.errors import PadimError
from padim.progress import progress_bar
from padim.ray_engine.fitting import split_evenly
from padim.ray_engine.session import cluster_cpus, require_ray, unwrap_error


class ScoreWorker:
    """A Ray Data actor: loads the model once (from a path every node sees), then scores
    batches of paths and writes their pictures and result part (`padim.deploy.bulk.score_part`)."""

    def __init__(
        self,
        model: str,
        threads: int,
        score_mode: str | None,
        threshold: float,
        out: str,
        maps: tuple[str, ...],
        min_area: int = 0,
    ) -> None:
        self.scorer = load_scorer(model, "cpu", threads, score_mode)
        self.threshold = threshold
        self.out = Path(out)
        self.maps = maps
        self.min_area = min_area

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = score_part(
            self.scorer,
            [str(p) for p in batch["path"]],
            [str(n) for n in batch["name"]],
            self.threshold,
            self.out / "maps" if self.maps else None,
            self.out / "parts",
            self.maps,
            self.min_area,
        )
        return {
            "path": np.array(rows["path"], dtype=object),
            "error": np.array([e or "" for e in rows["error"]], dtype=object),
        }


@dataclass
class BulkOptions:
    workers: int | None = None  # scoring actors (default: one per cluster CPU / cpus_per_worker)
    cpus_per_worker: int = 1
    batch_size: int = options.BATCH_SIZE.default
    threshold: float | None = None
    operating_point: str | None = None  # a stored threshold, by name (not with `threshold`)
    min_area: int = options.MIN_AREA.default  # smallest defect region counted, pixels
    score_mode: str | None = None
    maps: tuple[str, ...] = ()  # into DIR/maps: any of overlay, heatmap, mask (PNG), map (.npy)
    fmt: str = options.RESULT_FORMAT.default
    retry_errors: bool = False
    progress: bool = True


def predict(
    model_path: Path, sources: Sequence[Path], out: Path, opts: BulkOptions
) -> dict[str, Any]:
    """Score every image of `sources` (folders, manifests, files) into the job folder `out`,
    skipping those already done there; returns the job summary. Needs a running Ray session."""
    ray = require_ray()
    paths = [Path(os.path.abspath(p)) for p in source_paths(sources)]  # as workers see them
    if not paths:
        raise PadimError("no images to score")
    names = dict(zip(paths, output_names(paths), strict=True))
    probe = load_scorer(model_path, "cpu", 1, opts.score_mode)  # fails here, not in an actor
    threshold = resolve_threshold(probe, opts.threshold, opts.operating_point)
    identity = {
        "model_id": file_id(model_path),
        "threshold": threshold,
        "min_area": opts.min_area,
        "score_mode": probe.describe().get("score_mode"),
    }
    del probe
    job = BulkJob(out, opts.fmt)
    job.start(identity)
    done = job.done(opts.retry_errors)
    todo = [p for p in paths if str(p) not in done]
    workers = opts.workers or max(1, cluster_cpus() // opts.cpus_per_worker)
    workers = max(1, min(workers, n_blocks(len(todo), opts.batch_size)))  # no idle actors
    timing = (
        _run_pipeline(ray, model_path, todo, names, job, threshold, workers, opts) if todo else {}
    )
    return job.finish(
        [str(p) for p in paths],
        {
            **identity,
            "engine": "ray",
            "workers": workers,
            "scored_now": len(todo),
            "skipped_done": len(paths) - len(todo),
            **timing,
        },
    )


def n_blocks(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _run_pipeline(
    ray,
    model_path: Path,
    todo: list[Path],
    names: dict[Path, str],
    job,
    threshold: float,
    workers: int,
    opts: BulkOptions,
) -> dict[str, Any]:
    """Run the pipeline; timings: whole run, until the first batch (actors starting and
    loading the model) and the steady rate after it."""
    import pyarrow as pa
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # padim shows its own bar
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    if opts.maps:
        job.maps_dir.mkdir(parents=True, exist_ok=True)
    blocks = [
        pa.table({"path": [str(p) for p in part], "name": [names[p] for p in part]})
        for part in split_evenly(
            todo, min(n_blocks(len(todo), opts.batch_size), max(64, 4 * workers))
        )
    ]
    ds = ray.data.from_arrow(blocks)  # blocks made here: no task competes with the actors
    scored = ds.map_batches(
        ScoreWorker,
        fn_constructor_kwargs={
            "model": os.path.abspath(model_path),
            "threads": opts.cpus_per_worker,
            "score_mode": opts.score_mode,
            "threshold": threshold,
            "out": os.path.abspath(job.out),
            "maps": opts.maps,
            "min_area": opts.min_area,
        },
        batch_size=opts.batch_size,
        batch_format="numpy",
        num_cpus=opts.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers),
        udf_modifying_row_count=False,
    )
    bar = progress_bar(len(todo), f"predict on ray ({workers} workers)", enabled=opts.progress)
    started = time.perf_counter()
    first: tuple[float, int] | None = None
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(len(batch["path"]))
            first = first or (time.perf_counter(), len(batch["path"]))
    except Exception as exc:
        raise unwrap_error(
            exc,
            f"the Ray scoring job failed (parts written so far are kept in "
            f"{job.out}: run the command again to resume)",
        ) from None
    finally:
        bar.close()
    end = time.perf_counter()
    assert first is not None
    rest = len(todo) - first[1]
    return {
        "seconds": round(end - started, 3),
        "first_batch_seconds": round(first[0] - started, 3),
        "images_per_second": round(rest / (end - first[0]), 3) if rest else None,
    }
