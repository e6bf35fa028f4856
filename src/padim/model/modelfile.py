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
from padim.errors import PadimError
from padim.files import write_atomic

if TYPE_CHECKING:
    import torch

    from padim.core.net import PadimNet
    from padim.model.estimator import Padim

FORMAT_NAME = "padim-model"
FORMAT_VERSION = 3  # 3: + per-channel std and score mode; 2: packed lower-triangular
READABLE_VERSIONS = (1, 2, 3)  # whitening; 1: full matrices
_META_KEY = "padim"


def save_model_file(path: str | Path, tensors: dict[str, torch.Tensor], config: dict) -> None:
    """Write tensors + config (JSON) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **config}
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    write_atomic(
        path, lambda tmp: save_file(contiguous, str(tmp), metadata={_META_KEY: json.dumps(header)})
    )


def read_model_config(path: str | Path) -> dict[str, Any]:
    """Only the JSON config of a model file (cheap: the tensors are not read)."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise PadimError(f"not a padim model file (unreadable header): {path} ({exc})") from None
    return _parse_header(meta, path)


def load_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and config of a model file; fails clearly on corrupt or incompatible files."""
    from safetensors.torch import load_file

    config = read_model_config(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:
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
    except json.JSONDecodeError:
        raise PadimError(f"model file header is corrupt: {path}") from None
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


# ----------------------------------------------------------------------------- Padim <-> file


def model_header(model: Padim) -> dict[str, Any]:
    """The JSON side of a model file: config, backbone, geometry, threshold and learned info."""
    import dataclasses

    from padim.core.backbones import get_backbone

    net = model.fitted_net()
    spec = get_backbone(model.config.backbone)
    grid = math.isqrt(net.gauss_mean.shape[0])  # inputs are square
    return {
        "library_version": __version__,
        "config": model.config.to_dict(),
        "backbone": {
            "name": spec.name,
            "layer_channels": list(spec.channels),
            "taps": list(net.embedder.extractor.taps),
            "normalisation": dataclasses.asdict(spec.normalisation),
        },
        "embedding_dim": net.embedder.dim,
        "grid": [grid, grid],
        "input_size": model.preprocess.output_size,
        "threshold": model.threshold_,
        "info": model.info,
    }


def write_model(model: Padim, path: str | Path) -> None:
    """Save a fitted model: backbone weights, channel selection, Gaussians (lower triangles of
    the whitening matrices in the configured precision) and the JSON header."""
    import torch

    net = model.fitted_net()
    tensors = {f"backbone.{k}": v for k, v in net.embedder.extractor.state_dict().items()}
    tensors["embedding.channel_idx"] = net.embedder.channel_idx
    tensors["gaussian.mean"] = net.gauss_mean
    dtype = getattr(torch, model.config.storage)  # validated: float16 or float32
    tensors["gaussian.whitening_tril"] = net.gaussian.tril().to(dtype)  # float16 halves it
    if net.gauss_std is not None:
        tensors["gaussian.std"] = net.gauss_std
    tensors["scoring.term_stats"] = net.term_stats
    save_model_file(path, tensors, model_header(model))


def read_model(cls: type[Padim], path: str | Path, device: str, batch_size: int) -> Padim:
    """Rebuild a fitted `cls` from a model file (formats 1-3)."""
    tensors, header = load_model_file(path)
    try:
        model = _from_header(cls, header, device, batch_size)
        model.net_ = _build_net(model, tensors, header)
    except PadimError:
        raise
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PadimError(f"model file is incompatible or damaged: {path} ({exc})") from None
    return model


def _from_header(cls: type[Padim], header: dict[str, Any], device: str, batch_size: int) -> Padim:
    from padim.model.config import PadimConfig, TrainingSummary

    cfg = PadimConfig(**header["config"])
    model = cls.from_config(cfg, weights="random", batch_size=batch_size, device=device)
    info = dict(header.get("info", {}))
    model.threshold_ = None if header["threshold"] is None else float(header["threshold"])
    model.threshold_source_ = info.get("threshold_source")
    model.thresholds_ = {k: float(v) for k, v in (info.get("thresholds") or {}).items()}
    if not model.thresholds_ and model.threshold_ is not None:  # files before format 3
        model.thresholds_ = {cfg.score_mode: model.threshold_}
    model.training_ = TrainingSummary.from_dict(info)
    return model


def _build_net(model: Padim, tensors: dict[str, torch.Tensor], header: dict[str, Any]) -> PadimNet:
    from padim.core.backbones import Normalisation, get_backbone
    from padim.core.features import Embedder
    from padim.core.gaussian import GaussianModel
    from padim.core.net import PadimNet

    spec = get_backbone(model.config.backbone)
    extractor = spec.build("random", seed=model.config.seed)
    backbone_state = {
        k.removeprefix("backbone."): v for k, v in tensors.items() if k.startswith("backbone.")
    }
    extractor.load_state_dict(backbone_state, strict=True)
    stored = header["backbone"]["normalisation"]
    norm = Normalisation(tuple(stored["mean"]), tuple(stored["std"]))
    idx = tensors["embedding.channel_idx"]
    embedder = Embedder(extractor, norm, spec.channels, idx, spec.cpu_batch)
    mean = tensors["gaussian.mean"]
    dim = int(header["embedding_dim"])
    if idx.numel() != dim or mean.shape[1] != dim:
        raise PadimError("model file tensors do not match its config (embedding size)")
    if "gaussian.whitening_tril" in tensors:
        tril = tensors["gaussian.whitening_tril"]
        if tril.shape != (mean.shape[0], dim * (dim + 1) // 2):
            raise PadimError("model file tensors do not match each other (whitening)")
        gaussian = GaussianModel.from_tril(mean, tril)
    else:  # format 1: full float32 whitening matrices
        full = tensors["gaussian.whitening"]
        if full.shape != (mean.shape[0], dim, dim):
            raise PadimError("model file tensors do not match each other (whitening)")
        gaussian = GaussianModel.from_full(mean, full)
    gaussian.std = tensors.get("gaussian.std")
    if gaussian.std is not None and gaussian.std.shape != mean.shape:
        raise PadimError("model file tensors do not match each other (std)")
    return (
        PadimNet(
            embedder,
            gaussian,
            model.config.sigma,
            model.config.score_mode,
            tensors.get("scoring.term_stats"),
        )
        .to(model.device)
        .eval()
    )
