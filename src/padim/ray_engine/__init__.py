"""The Ray engine (`--engine ray`, `pip install 'padim[ray]'`): a fit sharded over Ray tasks,
bulk scoring as a Ray Data pipeline of actors holding the model, and many models fitted in
parallel. Nothing outside this folder imports Ray.

Training statistics are sums, so every shard returns partial `GaussianStats` and a tree of merge
tasks adds them exactly; the driver then factorises and calibrates as the local fit does (the
same `Fitter`, with `sharded_statistics` as its `Gather`).
"""

from padim.ray_engine.fitting import fit, fit_models, sharded_statistics, split_evenly
from padim.ray_engine.scoring import BulkOptions, ScoreWorker, predict
from padim.ray_engine.session import check_reachable, cluster_cpus, ray_session, require_ray

__all__ = [
    "BulkOptions",
    "ScoreWorker",
    "check_reachable",
    "cluster_cpus",
    "fit",
    "fit_models",
    "predict",
    "ray_session",
    "require_ray",
    "sharded_statistics",
    "split_evenly",
]
