"""Fitting on Ray: one model's batches sharded over tasks whose sums merge exactly, and many
models (`padim fit-many`) fitted in parallel tasks."""

from __future__ import annotations

import functools
import itertools
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import torch

from padim.core.gaussian import GaussianStats
from padim.core.holdout import HoldoutStore
from padim.data.preprocess import Preprocess, batches
from padim.errors import PadimError
from padim.files import write_bytes_atomic
from padim.model.estimator import Padim
from padim.model.fit_many import ModelJob, failed, fit_one
from padim.model.fitting import FitPlan, Fitter
from padim.ray_engine.session import cluster_cpus, require_ray, unwrap_error


def split_evenly(items: Sequence, parts: int) -> list[list]:
    """`items` in `parts` contiguous runs whose lengths differ by at most one (empty runs
    dropped): shards made of whole batches, in order."""
    parts = max(1, min(parts, len(items)))
    bounds = np.linspace(0, len(items), parts + 1).round().astype(int)
    return [list(items[a:b]) for a, b in itertools.pairwise(bounds.tolist()) if b > a]


def _embed_batches(
    embedder: torch.nn.Module, pre: Preprocess, groups: list[list], threads: int
) -> Iterator[torch.Tensor]:
    torch.set_num_threads(threads)
    with torch.inference_mode():
        for chunk in groups:
            yield embedder(torch.from_numpy(pre.stack(chunk)))


def _shard_stats(embedder, pre: Preprocess, groups: list[list], threads: int) -> dict:
    """Partial sums over some whole batches of the fitted images."""
    return GaussianStats.from_batches(_embed_batches(embedder, pre, groups, threads)).state_dict()


def _shard_embeddings(embedder, pre: Preprocess, groups: list[list], threads: int) -> torch.Tensor:
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
    gather = functools.partial(sharded_statistics, shards=shards, cpus_per_task=cpus_per_task)
    return model.fit(images, gather=gather)


def sharded_statistics(
    fitter: Fitter,
    plan: FitPlan,
    embedder: torch.nn.Module,
    stores: ExitStack,
    shards: int | None = None,
    cpus_per_task: int = 1,
) -> tuple[GaussianStats, HoldoutStore]:
    """The fitted images' merged statistics and the held-out images' embeddings (on disk, in
    input order, closed with `stores`), computed by Ray tasks over whole batches (the local
    fit's batches, so each embedding is the same): a `padim.model.fitting.Gather`."""
    ray = require_ray()
    pre, size = fitter.sizing.preprocess, fitter.batch
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
    sizes = {
        ref: sum(map(len, g))
        for ref, g in zip(stat_refs + hold_refs, stat_groups + hold_groups, strict=True)
    }
    merged = _tree_merge(stat_refs, merge_task)
    holdout = stores.enter_context(HoldoutStore())
    bar = fitter.progress_bar(plan.n, f"fit on ray ({len(stat_groups)} shards)")
    try:
        pending = list(sizes)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, fetch_local=False)
            ray.get(ready)  # a failed shard fails the fit now
            bar.update(sizes[ready[0]])
        stats = GaussianStats.from_state_dict(ray.get(merged))
        for ref in hold_refs:  # in order, one shard at a time, onto disk like a local fit
            holdout.add(ray.get(ref))
    except ray.exceptions.RayError as exc:
        raise unwrap_error(exc, "a Ray fit task failed") from None
    finally:
        bar.close()
    return stats, holdout


def _fit_model_task(
    job: ModelJob, settings: dict[str, Any], threads: int
) -> tuple[bytes | None, dict]:
    """Fit one model in a task; the file comes back as bytes for the driver to write."""
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="padim-fit-") as tmp:
        path = Path(tmp) / f"{job.name}.safetensors"
        try:
            row = fit_one(job, {**settings, "device": "cpu", "progress": False}, path)
        except PadimError as exc:
            return None, failed(job.name, exc)
        return path.read_bytes(), row


def fit_models(
    jobs: list[ModelJob], paths: dict[str, Path], settings: dict[str, Any], cpus_per_model: int = 1
) -> Iterator[dict[str, Any]]:
    """Fit `jobs` (padim.fit_many.ModelJob) in parallel Ray tasks, writing each model to
    `paths[name]` as it arrives; yields the summary rows in completion order."""
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
            yield failed(job.name, unwrap_error(exc, "the Ray task failed"))
            continue
        if data is not None:
            write_bytes_atomic(paths[job.name], data)
        yield row
