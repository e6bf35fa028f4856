"""Model files: one safetensors file holding every tensor plus a JSON config in its header,
and the conversion between a `Padim` and such a file (format 3; formats 1 and 2 still read).

No pickle anywhere: loading parses a JSON header and raw tensor bytes. Writes are atomic
(temporary file in the same folder, then rename), so a crash never leaves a half-written model.
The format is described in docs/design.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim import __version__
from padim.data.preprocess import to_json
from padim.errors import PadimError
from padim.files import write_atomic
from padim.model.gaussian_file import gaussian_tensors, read_gaussian

if TYPE_CHECKING:
    import torch

    from padim.core.net import PadimNet
    from padim.data.align import Aligner
    from padim.model.config import PadimConfig
    from padim.model.state import ModelState
    from padim.model.tensorfile import Chunked

FORMAT_NAME = "padim-model"
FORMAT_VERSION = 3  # 3: + per-channel std and score mode; 2: packed lower-triangular
PROJECTION_VERSION = 4  # 4: a semi-orthogonal embedding (written only by models that have one)
ALIGNMENT_VERSION = 5  # 5: alignment and/or a scoring neighbourhood (only models that have them)
MINOR_VERSION = 6  # 6: minor-component Gaussians (only models that have them)
READABLE_VERSIONS = (1, 2, 3, 4, 5, 6)  # whitening; 1: full matrices
_META_KEY = "padim"
MAX_HEADER_DEPTH = 16  # a real header is 4 levels deep
MAX_SIGMA = 64.0  # pixels of anomaly-map smoothing; more is a damaged or hostile file


def json_depth(value: Any) -> int:
    """Nesting depth of parsed JSON (iterative: no recursion limit to trip)."""
    depth, level = 0, [value]
    while level:
        depth += 1
        level = [
            v
            for item in level
            if isinstance(item, dict | list)
            for v in (item.values() if isinstance(item, dict) else item)
        ]
    return depth - 1


def save_model_file(
    path: str | Path, tensors: dict[str, torch.Tensor | Chunked], config: dict
) -> None:
    """Write tensors + config (JSON) as one safetensors file, atomically. A model with a
    projection is format 4, so older padim versions refuse it instead of misreading it."""
    from padim.model.tensorfile import write_safetensors

    version = PROJECTION_VERSION if "embedding.projection" in tensors else FORMAT_VERSION
    settings = config.get("config", {})
    if settings.get("align", "none") != "none" or settings.get("neighbourhood", 0):
        version = ALIGNMENT_VERSION  # older padims refuse it instead of scoring unaligned
    if settings.get("covariance", "full") != "full":
        version = MINOR_VERSION  # older padims refuse it instead of failing on its tensors
    header = {"format": FORMAT_NAME, "format_version": version, **config}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            write_safetensors(fh, tensors, {_META_KEY: json.dumps(header)})

    write_atomic(path, write)


def read_model_config(path: str | Path) -> dict[str, Any]:
    """Only the JSON config of a model file (cheap: the tensors are not read)."""
    from padim.model.tensorfile import read_header

    path = _existing(path)
    try:
        with path.open("rb") as fh:
            header, _ = read_header(fh, path.stat().st_size)
    except (PadimError, OSError) as exc:
        raise PadimError(_not_a_model(path, exc)) from None
    meta = header.get("__metadata__")
    return _parse_header(meta if isinstance(meta, dict) else {}, path)


def _not_a_model(path: Path, exc: Exception) -> str:
    if path.suffix.lower() in (".onnx", ".xml", ".bin"):
        return (
            f"{path} is an exported model (ONNX/OpenVINO): predict, serve and info run it, but "
            "calibrate, update and export need the padim model file (.safetensors) it was "
            "exported from"
        )
    return f"not a padim model file (unreadable header): {path} ({exc})"


STATISTICS_PREFIX = "statistics."  # the training sums: read only to add images (padim update)
GOOD_SCORES_PREFIX = "calibration.good_scores."  # held-out good images' scores, per score mode


KNOWN_TENSORS = (
    "backbone.",
    "embedding.",
    "gaussian.",
    "scoring.",
    "roi.",
    "align.",
    GOOD_SCORES_PREFIX,
    STATISTICS_PREFIX,
)  # anything else in a file is not read (an unknown 3 GB tensor costs nothing)


def load_model_file(
    path: str | Path, statistics: bool = False
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and config of a model file (the training statistics only when asked: scoring
    never needs them), read without a memory map (a file overwritten while it is read is an
    error, not a crash); fails clearly on corrupt or incompatible files."""
    from padim.model.tensorfile import read_safetensors

    config = read_model_config(path)

    def wanted(name: str) -> bool:
        if name.startswith(STATISTICS_PREFIX):
            return statistics
        return name.startswith(KNOWN_TENSORS)

    try:
        tensors, _ = read_safetensors(path, wanted)
    except (PadimError, OSError) as exc:
        raise PadimError(f"model file is corrupt or truncated: {path} ({exc})") from None
    return tensors, config


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise PadimError(f"model file not found: {path}")
    return path


def _parse_header(meta: dict[str, str], path: Path) -> dict[str, Any]:
    if _META_KEY not in meta:
        raise PadimError(f"not a padim model file (no padim header): {path}")
    try:
        config = json.loads(meta[_META_KEY])
    except (json.JSONDecodeError, RecursionError):
        raise PadimError(f"model file header is corrupt: {path}") from None
    if json_depth(config) > MAX_HEADER_DEPTH:
        raise PadimError(f"model file header is nested too deeply: {path}")
    if not isinstance(config, dict) or config.get("format") != FORMAT_NAME:
        raise PadimError(f"not a padim model file: {path}")
    version = config.get("format_version")
    if version not in READABLE_VERSIONS:
        made_by = config.get("library_version", "an unknown version")
        raise PadimError(
            f"model file format {version} (written by padim {made_by}) is not supported by this "
            f"padim, which reads formats {', '.join(map(str, READABLE_VERSIONS))}; re-fit the "
            "model with this version"
        )
    return config


# ----------------------------------------------------------------------------- state <-> file


def model_header(state: ModelState) -> dict[str, Any]:
    """The JSON side of a model file: config, backbone, geometry, threshold and learned info."""
    import dataclasses

    from padim.core.backbones import get_backbone

    net = state.net
    spec = get_backbone(state.config.backbone)
    pre = state.sizing.preprocess
    return {
        "library_version": __version__,
        "config": {  # "keep" only when the file really holds the training statistics
            **state.config.to_dict(),
            "statistics": "keep" if state.keeps_statistics else "drop",
        },
        "backbone": {
            "name": spec.name,
            "batchnorm_fused": True,  # the weights hold the batch norms folded into the convs
            "layer_channels": list(spec.channels),
            "taps": list(net.embedder.extractor.taps),
            "normalisation": dataclasses.asdict(spec.normalisation),
        },
        "embedding_dim": net.embedder.dim,
        "grid": [spec.grid_side(side) for side in pre.output_hw],
        "input_size": to_json(pre.output_wh),  # a side when square (as always), else [w, h]
        "positions": int(net.gauss_mean.shape[0]),  # Gaussians: the grid's, or a tile's
        **({"tiling": state.sizing.geometry()["tiling"]} if state.config.tile is not None else {}),
        "threshold": state.calibration.current,
        "info": state.info(),
    }


def write_model(state: ModelState, path: str | Path) -> None:
    """Save a fitted model: backbone weights, channel selection, Gaussians (lower triangles of
    the whitening matrices in the configured precision), the alignment reference (when it
    aligns) and the JSON header."""
    import numpy as np
    import torch

    net = state.net
    tensors: dict[str, torch.Tensor | Chunked] = {
        f"backbone.{k}": v for k, v in net.embedder.extractor.state_dict().items()
    }
    tensors["embedding.channel_idx"] = net.embedder.channel_idx
    projection = net.embedder.projection_matrix()
    if projection is not None:
        tensors["embedding.projection"] = projection
    tensors["gaussian.mean"] = net.gauss_mean
    tensors.update(gaussian_tensors(net.gaussian, state.config.storage))
    if net.gauss_std is not None:
        tensors["gaussian.std"] = net.gauss_std
    tensors["scoring.term_stats"] = net.term_stats
    if net.roi is not None:
        tensors["roi.mask"] = net.roi[0, 0].to(torch.uint8)
    if state.aligner is not None:
        tensors["align.reference"] = torch.from_numpy(state.aligner.reference_image_.copy())
        if state.aligner.mask_ is not None:
            tensors["align.roi"] = torch.from_numpy(state.aligner.mask_.astype(np.uint8))
    for mode, scores in state.calibration.holdout_scores.items():
        tensors[GOOD_SCORES_PREFIX + mode] = torch.from_numpy(scores).to(torch.float64)
    if state.statistics is not None and state.keeps_statistics:
        for key, value in state.statistics.file_tensors().items():
            tensors[STATISTICS_PREFIX + key] = value
    save_model_file(path, tensors, model_header(state))


def read_model(path: str | Path, device: torch.device, statistics: bool = False) -> ModelState:
    """Rebuild a fitted model's state from its file (formats 1-3); with `statistics`, also the
    training sums (for `update`)."""
    from padim.model.config import PadimConfig, TrainingSummary
    from padim.model.state import ModelState
    from padim.model.thresholds import Thresholds

    tensors, header = load_model_file(path, statistics)
    try:
        try:
            config = PadimConfig(**{"covariance": "full", **header["config"]})  # older: full
            config.validate()
            info = dict(header.get("info", {}))
            calibration = Thresholds.from_info(info, header["threshold"], config.score_mode)
            validate_model(config, calibration, header, tensors)
        except PadimError as exc:
            raise PadimError(f"model file {path} is damaged or inconsistent: {exc}") from None
        net = _build_net(config, tensors, header).to(device).eval()
        training = TrainingSummary.from_dict(info)
        aligner = read_aligner(config, tensors)
        state = ModelState(config, net, calibration, training, None, device, aligner)
        _read_calibration(state, tensors, statistics)
    except PadimError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError, IndexError) as exc:
        raise PadimError(f"model file is incompatible or damaged: {path} ({exc})") from None
    return state


def read_aligner(config: PadimConfig, tensors: dict[str, torch.Tensor]) -> Aligner | None:
    """The registration a model aligns with, rebuilt from its reference (and matching mask)."""
    import torch

    from padim.data.preprocess import MAX_SIDE, MIN_SIDE

    if config.align == "none":
        return None
    reference = tensors.get("align.reference")
    if reference is None:
        raise PadimError("the model aligns images but its file holds no reference image")
    h, w = reference.shape[:2]
    if (
        reference.dtype != torch.uint8
        or reference.ndim != 3
        or reference.shape[2] != 3
        or not (min(h, w) >= MIN_SIDE and max(h, w) <= MAX_SIDE)
    ):
        raise PadimError(f"the alignment reference {tuple(reference.shape)} is not an RGB image")
    roi = tensors.get("align.roi")
    return config.aligner(None if roi is None else roi.numpy()).fit([], reference.numpy())


def validate_model(
    cfg: PadimConfig, calibration: Any, header: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Everything a model file says must agree with its tensors and be usable: bounded numbers,
    the geometry's grid, channel indices in range, finite values. A file that fails here would
    otherwise score NaN (a silent "good") or crash mid-run."""
    import torch

    from padim.core.backbones import get_backbone
    from padim.model.sizing import Sizing

    sizing = Sizing(cfg)
    spec = get_backbone(cfg.backbone)
    if not 0 <= cfg.sigma <= MAX_SIGMA:
        raise PadimError(f"sigma {cfg.sigma} is outside [0, {MAX_SIGMA:g}]")
    pre = sizing.preprocess
    out_h, out_w = pre.output_hw
    grid = [spec.grid_side(out_h), spec.grid_side(out_w)]
    dim = header.get("embedding_dim")
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= spec.total_channels:
        raise PadimError(f"embedding size {dim!r} does not fit backbone {cfg.backbone}")
    if header.get("input_size") != to_json(pre.output_wh) or header.get("grid") != grid:
        raise PadimError(
            f"geometry ({header.get('input_size')!r}, grid {header.get('grid')!r}) "
            f"does not match size {cfg.size} / crop {cfg.crop}"
        )
    for name, value in [("threshold", header.get("threshold")), *calibration.by_mode.items()]:
        if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
            raise PadimError(f"{name} {value!r} is not a finite number")
    idx = tensors.get("embedding.channel_idx")
    projection = tensors.get("embedding.projection")
    semi = cfg.embedding == "semi-orthogonal"
    if semi != (projection is not None) or (
        projection is not None
        and (projection.shape != (spec.total_channels, dim) or not all_finite(projection))
    ):
        raise PadimError(
            f"the {cfg.embedding} embedding's projection does not fit "
            f"{spec.total_channels} channels -> {dim}"
        )
    if (
        idx is None
        or idx.dtype not in (torch.int64, torch.int32)
        or idx.shape != ((spec.total_channels,) if semi else (dim,))
        or int(idx.min()) < 0
        or int(idx.max()) >= spec.total_channels
        or (idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()))
    ):
        raise PadimError(
            f"channel indices are not {dim} increasing indices below {spec.total_channels}"
        )
    mean = tensors.get("gaussian.mean")
    positions = sizing.geometry()["positions"]  # the grid's, or a tile's (shared statistics)
    if mean is None or mean.shape != (positions, dim):
        raise PadimError(
            f"Gaussian means {tuple(mean.shape) if mean is not None else None} do "
            f"not match {positions} positions x {dim} channels"
        )
    std, stats = tensors.get("gaussian.std"), tensors.get("scoring.term_stats")
    if std is not None and not bool((std >= 0).all()):
        raise PadimError("a per-channel standard deviation is negative")
    backbone = header.get("backbone")
    norm = backbone.get("normalisation") if isinstance(backbone, dict) else None
    values = [*norm.get("mean", []), *norm.get("std", [])] if isinstance(norm, dict) else []
    if (
        len(values) != 6
        or not all(isinstance(v, int | float) and math.isfinite(v) for v in values)
        or min(values[3:]) <= 0
    ):
        raise PadimError(f"input normalisation {norm!r} is not 3 finite means and 3 positive stds")
    if stats is not None and (stats.shape != (4,) or not bool((stats[[1, 3]] > 0).all())):
        raise PadimError("score-term statistics are damaged")
    roi = tensors.get("roi.mask")
    if roi is not None and (
        roi.shape != pre.output_hw or not bool(roi.any()) or int(roi.max()) > 1
    ):
        raise PadimError(
            f"region of interest {tuple(roi.shape)} is not a 0/1 mask of {out_w}x{out_h} with "
            "something inside"
        )
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not all_finite(t)]
    if bad:
        raise PadimError(f"non-finite values in {', '.join(sorted(bad)[:3])}")


def all_finite(t: torch.Tensor) -> bool:
    """No NaN or infinity in `t`: its extremes are finite (NaN propagates into them). One
    reduction, no boolean copy of a large tensor."""
    import torch

    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


def _read_calibration(
    state: ModelState, tensors: dict[str, torch.Tensor], statistics: bool
) -> None:
    """The held-out good scores and (when asked) the training statistics."""
    from padim.core.statistics import GaussianStats

    state.calibration.holdout_scores = {
        key.removeprefix(GOOD_SCORES_PREFIX): tensor.double().numpy()
        for key, tensor in tensors.items()
        if key.startswith(GOOD_SCORES_PREFIX)
    }
    if not statistics:
        return
    stats = {
        k.removeprefix(STATISTICS_PREFIX): v
        for k, v in tensors.items()
        if k.startswith(STATISTICS_PREFIX)
    }
    if not stats:
        return
    state.statistics = GaussianStats.from_file_tensors(stats)
    expected = tuple(state.net.gauss_mean.shape)
    if tuple(state.statistics.shift.shape) != expected:
        raise PadimError(
            f"training statistics {tuple(state.statistics.shift.shape)} do not match the "
            f"Gaussians {expected}"
        )


def _build_net(
    config: PadimConfig, tensors: dict[str, torch.Tensor], header: dict[str, Any]
) -> PadimNet:
    from padim.core.backbones import Normalisation, fuse_batchnorm, get_backbone
    from padim.core.features import Embedder
    from padim.core.net import PadimNet
    from padim.model.sizing import Sizing

    spec = get_backbone(config.backbone)
    fused = bool(header["backbone"].get("batchnorm_fused"))  # older files: plain weights
    extractor = spec.build("random", seed=config.seed, fused=fused)
    backbone_state = {
        k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")
    }
    extractor.load_state_dict(backbone_state, strict=True)
    if not fused:
        fuse_batchnorm(extractor)
    stored = header["backbone"]["normalisation"]
    norm = Normalisation(tuple(stored["mean"]), tuple(stored["std"]))
    idx = tensors["embedding.channel_idx"]
    projection = tensors.get("embedding.projection")
    embedder = Sizing(config).with_tiles(
        Embedder(extractor, norm, spec.channels, idx, spec.cpu_batch, projection)
    )
    mean = tensors["gaussian.mean"]
    dim = int(header["embedding_dim"])
    if embedder.dim != dim or mean.shape[1] != dim:
        raise PadimError("model file tensors do not match its config (embedding size)")
    gaussian = read_gaussian(tensors, mean, dim, config.components)
    gaussian.std = tensors.get("gaussian.std")
    if gaussian.std is not None and gaussian.std.shape != mean.shape:
        raise PadimError("model file tensors do not match each other (std)")
    term_stats = tensors.get("scoring.term_stats")
    roi = tensors.get("roi.mask")
    return PadimNet(
        embedder,
        gaussian,
        config.sigma,
        config.score_mode,
        term_stats,
        roi=roi,
        neighbourhood=config.neighbourhood,
    )
