"""The Ray engine (`--engine ray`): a fit sharded over Ray tasks, bulk scoring as a Ray Data
pipeline of actors holding the model, and many models fitted in parallel.

Training statistics are sums, so every shard returns partial `GaussianStats` and a tree of merge
tasks adds them exactly; the driver then factorises and calibrates as the local fit does (the
same `Padim.plan_fit` / `finish_fit`). Ray is an optional extra (`pip install 'padim[ray]'`);
nothing outside this module imports it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from padim.data import Preprocess, as_image, batches
from padim.errors import PadimError
from padim.gaussian import GaussianStats
from padim.model import FitPlan, Padim


def require_ray():
    """The `ray` module, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise PadimError("the Ray engine needs Ray: pip install 'padim[ray]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None) -> Iterator[Any]:
    """Connect to the cluster at `address` ('auto': the local node's), or start a local Ray with
    `num_cpus` CPUs; shut it down afterwards. An already initialised Ray (Python API callers)
    is used as it is and left running."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                              "log_to_driver": True}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=num_cpus, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise PadimError(f"cannot start or reach {where}: {str(exc).splitlines()[0]}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or address == "auto":
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as exc:
        raise PadimError(f"cannot reach the Ray cluster at {address}: "
                         f"{exc.strerror or exc}") from None


def cluster_cpus() -> int:
    ray = require_ray()
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _unwrap(exc: BaseException, what: str) -> PadimError:
    """One line for the driver: a task's PadimError as it was raised (Ray wraps it, sometimes
    twice: the task's error, then Ray Data's user-code error), anything else as `what` failed
    with the innermost error's first line."""
    current: BaseException = exc
    for _ in range(8):
        cause = getattr(current, "cause", None)
        if isinstance(cause, PadimError) or (cause is None and isinstance(current, PadimError)):
            return PadimError(str(cause or current).strip().splitlines()[0])
        nxt = cause if isinstance(cause, BaseException) else current.__cause__
        if nxt is None:
            break
        current = nxt
    first = (str(current).strip().splitlines() or [""])[0][:300]
    return PadimError(f"{what}: {type(current).__name__}: {first}")


# ----------------------------------------------------------------------------- fitting


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """`items` in `parts` contiguous runs whose lengths differ by at most one (empty runs
    dropped): shards made of whole batches, in order."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds.tolist()) if b > a]


def _embed_batches(embedder: torch.nn.Module, pre: Preprocess, groups: list[list],
                   threads: int) -> Iterator[torch.Tensor]:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for chunk in groups:
            yield embedder(torch.stack([pre.image(as_image(item)) for item in chunk]))


def _shard_stats(embedder, pre: Preprocess, groups: list[list], threads: int) -> dict:
    """Partial sums over some whole batches of the fitted images."""
    return GaussianStats.from_batches(_embed_batches(embedder, pre, groups, threads)).state_dict()


def _shard_embeddings(embedder, pre: Preprocess, groups: list[list],
                      threads: int) -> torch.Tensor:
    """Embeddings of some held-out batches (scored on the driver by the merged model)."""
    return torch.cat(list(_embed_batches(embedder, pre, groups, threads)))


def _merge_stats(a: dict, b: dict) -> dict:
    """Exact union of two shards' sums (re-centred on the first one's shift)."""
    merged = GaussianStats.from_state_dict(a).merge(GaussianStats.from_state_dict(b))
    return merged.state_dict()


def _tree_merge(refs: list, merge) -> Any:
    """Merge in a fixed pairwise tree (deterministic, and no shard's sums travel to the driver
    before they are merged)."""
    while len(refs) > 1:
        paired = [merge.remote(refs[i], refs[i + 1]) for i in range(0, len(refs) - 1, 2)]
        refs = paired + ([refs[-1]] if len(refs) % 2 else [])
    return refs[0]


def fit(model: Padim, images, shards: int | None = None, cpus_per_task: int = 1) -> Padim:
    """Fit `model` on Ray: the same images, split and batches as `model.fit(images)`, the
    batches sharded over tasks (default: one per cluster CPU) and their sums merged exactly.
    Needs a running Ray session (`ray_session`); image paths must be readable by the workers."""
    plan = model.plan_fit(images)
    embedder = model.build_embedder().cpu().eval()
    stats, holdout = sharded_statistics(model, plan, embedder, shards, cpus_per_task)
    return model.finish_fit(plan, embedder.to(model.device), stats, holdout)


def sharded_statistics(model: Padim, plan: FitPlan, embedder: torch.nn.Module,
                       shards: int | None = None, cpus_per_task: int = 1
                       ) -> tuple[GaussianStats, torch.Tensor | None]:
    """The fitted images' merged statistics and the held-out images' embeddings, computed by
    Ray tasks over whole batches (the local fit's batches, so each embedding is the same)."""
    ray = require_ray()
    pre, size = model.preprocess, model.batch_size
    fit_batches = [[item for _, item in chunk] for chunk in batches(plan.fit_items, size)]
    hold_batches = [[item for _, item in chunk] for chunk in batches(plan.hold_items, size)]
    n_shards = shards or max(1, cluster_cpus() // cpus_per_task)
    remote = ray.remote(num_cpus=cpus_per_task, max_retries=1)
    stats_task, embed_task = remote(_shard_stats), remote(_shard_embeddings)
    merge_task = ray.remote(num_cpus=1, max_retries=1)(_merge_stats)
    emb_ref = ray.put(embedder)
    stat_groups = split_evenly(fit_batches, n_shards)
    hold_groups = split_evenly(hold_batches, n_shards) if hold_batches else []
    stat_refs = [stats_task.remote(emb_ref, pre, g, cpus_per_task) for g in stat_groups]
    hold_refs = [embed_task.remote(emb_ref, pre, g, cpus_per_task) for g in hold_groups]
    sizes = {ref: sum(map(len, g)) for ref, g in zip(stat_refs + hold_refs,
                                                      stat_groups + hold_groups, strict=True)}
    merged = _tree_merge(stat_refs, merge_task)
    bar = model._bar(plan.n, f"fit on ray ({len(stat_groups)} shards)")
    try:
        pending = list(sizes)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, fetch_local=False)
            ray.get(ready)  # a failed shard fails the fit now
            bar.update(sizes[ready[0]])
        stats = GaussianStats.from_state_dict(ray.get(merged))
        holdout = torch.cat(ray.get(hold_refs)) if hold_refs else None
    except ray.exceptions.RayError as exc:
        raise _unwrap(exc, "a Ray fit task failed") from None
    finally:
        bar.close()
    return stats, holdout


# ----------------------------------------------------------------------------- bulk scoring


class ScoreWorker:
    """A Ray Data actor: loads the model once (from a path every node sees), then scores
    batches of paths and writes their pictures and result part (`padim.bulk.score_part`)."""

    def __init__(self, model: str, threads: int, score_mode: str | None,
                 threshold: float, out: str, maps: tuple[str, ...]) -> None:
        from padim.runtime import load_scorer

        self.scorer = load_scorer(model, "cpu", threads, score_mode)
        self.threshold = threshold
        self.out = Path(out)
        self.maps = maps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from padim.bulk import score_part

        rows = score_part(self.scorer, [str(p) for p in batch["path"]],
                          [str(n) for n in batch["name"]], self.threshold,
                          self.out / "maps" if self.maps else None, self.out / "parts",
                          self.maps)
        return {"path": np.array(rows["path"], dtype=object),
                "error": np.array([e or "" for e in rows["error"]], dtype=object)}


@dataclass
class BulkOptions:
    workers: int | None = None  # scoring actors (default: one per cluster CPU / cpus_per_worker)
    cpus_per_worker: int = 1
    batch_size: int = 16
    threshold: float | None = None
    score_mode: str | None = None
    maps: tuple[str, ...] = ()  # into DIR/maps: any of overlay, heatmap, mask (PNG), map (.npy)
    fmt: str = "parquet"
    retry_errors: bool = False
    progress: bool = True


def predict(model_path: Path, sources: Sequence[Path], out: Path,
            opts: BulkOptions) -> dict[str, Any]:
    """Score every image of `sources` (folders, manifests, files) into the job folder `out`,
    skipping those already done there; returns the job summary. Needs a running Ray session."""
    ray = require_ray()
    from padim.bulk import BulkJob, source_paths
    from padim.predict_io import output_names
    from padim.runtime import file_id, load_scorer

    paths = [Path(os.path.abspath(p)) for p in source_paths(sources)]  # as workers see them
    if not paths:
        raise PadimError("no images to score")
    names = dict(zip(paths, output_names(paths), strict=True))
    probe = load_scorer(model_path, "cpu", 1, opts.score_mode)  # fails here, not in an actor
    threshold = probe.threshold if opts.threshold is None else float(opts.threshold)
    identity = {"model_id": file_id(model_path), "threshold": threshold,
                "score_mode": probe.describe().get("score_mode")}
    del probe
    job = BulkJob(out, opts.fmt)
    job.start(identity)
    done = job.done(opts.retry_errors)
    todo = [p for p in paths if str(p) not in done]
    workers = opts.workers or max(1, cluster_cpus() // opts.cpus_per_worker)
    workers = max(1, min(workers, n_blocks(len(todo), opts.batch_size)))  # no idle actors
    timing = _run_pipeline(ray, model_path, todo, names, job, threshold, workers,
                           opts) if todo else {}
    return job.finish([str(p) for p in paths], {
        **identity, "engine": "ray", "workers": workers, "scored_now": len(todo),
        "skipped_done": len(paths) - len(todo), **timing})


def n_blocks(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def _run_pipeline(ray, model_path: Path, todo: list[Path], names: dict[Path, str],
                  job, threshold: float, workers: int, opts: BulkOptions) -> dict[str, Any]:
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
    blocks = [pa.table({"path": [str(p) for p in part], "name": [names[p] for p in part]})
              for part in split_evenly(todo, min(n_blocks(len(todo), opts.batch_size),
                                                 max(64, 4 * workers)))]
    ds = ray.data.from_arrow(blocks)  # blocks made here: no task competes with the actors
    scored = ds.map_batches(
        ScoreWorker, fn_constructor_kwargs={
            "model": os.path.abspath(model_path), "threads": opts.cpus_per_worker,
            "score_mode": opts.score_mode, "threshold": threshold,
            "out": os.path.abspath(job.out), "maps": opts.maps},
        batch_size=opts.batch_size, batch_format="numpy", num_cpus=opts.cpus_per_worker,
        compute=ray.data.ActorPoolStrategy(size=workers), udf_modifying_row_count=False)
    bar = tqdm(total=len(todo), desc=f"predict on ray ({workers} workers)", unit="img",
               leave=False, disable=None if opts.progress else True)
    started = time.perf_counter()
    first: tuple[float, int] | None = None
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="numpy"):
            bar.update(len(batch["path"]))
            first = first or (time.perf_counter(), len(batch["path"]))
    except Exception as exc:
        raise _unwrap(exc, f"the Ray scoring job failed (parts written so far are kept in "
                           f"{job.out}: run the command again to resume)") from None
    finally:
        bar.close()
    end = time.perf_counter()
    assert first is not None
    rest = len(todo) - first[1]
    return {"seconds": round(end - started, 3),
            "first_batch_seconds": round(first[0] - started, 3),
            "images_per_second": round(rest / (end - first[0]), 3) if rest else None}


# ----------------------------------------------------------------------------- many models


def _fit_model_task(job, settings: dict[str, Any], threads: int) -> tuple[bytes | None, dict]:
    """Fit one model in a task; the file comes back as bytes for the driver to write."""
    from padim.fit_many import failed, fit_one

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="padim-fit-") as tmp:
        path = Path(tmp) / f"{job.name}.safetensors"
        try:
            row = fit_one(job, {**settings, "device": "cpu", "progress": False}, path)
        except PadimError as exc:
            return None, failed(job.name, exc)
        return path.read_bytes(), row


def fit_models(jobs: list, paths: dict[str, Path], settings: dict[str, Any],
               cpus_per_model: int = 1) -> Iterator[dict[str, Any]]:
    """Fit `jobs` (padim.fit_many.ModelJob) in parallel Ray tasks, writing each model to
    `paths[name]` as it arrives; yields the summary rows in completion order."""
    from padim.fit_many import failed
    from padim.modelfile import write_atomic

    ray = require_ray()
    task = ray.remote(num_cpus=cpus_per_model, max_retries=1)(_fit_model_task)
    refs = {task.remote(job, settings, cpus_per_model): job for job in jobs}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        job = refs[ready[0]]
        try:
            data, row = ray.get(ready[0])
        except ray.exceptions.RayError as exc:
            yield failed(job.name, _unwrap(exc, "the Ray task failed"))
            continue
        if data is not None:
            write_atomic(paths[job.name], lambda tmp, data=data: tmp.write_bytes(data))
        yield row
