"""What an exported model carries besides its graph: the `padim` metadata (geometry,
normalisation, threshold, operating points, versions), written by `padim export` and read by
the torch-free runtimes (`padim.deploy.scorers`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from padim import __version__
from padim.errors import PadimError
from padim.model.modelfile import model_header

ONNX_FORMAT = "padim-onnx"
ONNX_FORMAT_VERSION = 1
REFERENCE_SUFFIX = ".reference.png"
ALIGN_ROI_SUFFIX = ".align-roi.png"


def model_metadata(model: Any, model_id: str, stem: str | None = None) -> dict[str, Any]:
    """What a runtime needs besides the graph (stored in exports; describes torch models).
    A model that aligns names its reference image (and matching mask), PNG files written
    beside the export as `<stem>.reference.png` (`<stem>.align-roi.png`)."""
    cfg = model.config
    header = model_header(model.state())
    aligner = getattr(model, "aligner_", None)
    alignment = None
    if aligner is not None:
        alignment = {
            "mode": cfg.align,
            "max_shift": cfg.align_max_shift,
            "max_angle": cfg.align_max_angle,
            "max_scale": cfg.align_max_scale,
            "min_quality": cfg.align_min_quality,
            "reference": f"{stem or 'model'}{REFERENCE_SUFFIX}",
            "roi": f"{stem or 'model'}{ALIGN_ROI_SUFFIX}" if aligner.mask_ is not None else None,
        }
    return {
        "format": ONNX_FORMAT,
        "format_version": ONNX_FORMAT_VERSION,
        "library_version": __version__,
        "source_model_id": model_id,
        "backbone": cfg.backbone,
        "resize": cfg.size,
        "crop": cfg.crop,
        "input_size": header["input_size"],
        "embedding_dim": header["embedding_dim"],
        "normalisation": header["backbone"]["normalisation"],
        "sigma": cfg.sigma,
        "score_mode": cfg.score_mode,
        "threshold": model.threshold_,
        "info": model.info,
        "neighbourhood": cfg.neighbourhood,  # inside the graph
        "covariance": cfg.covariance,  # inside the graph too (minor: its components)
        **({"components": cfg.components} if cfg.covariance == "minor" else {}),
        **({"alignment": alignment} if alignment else {}),  # outside it (every runtime)
    }


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The `padim` metadata of an exported file, with clear errors for foreign or corrupt ones."""
    import onnx

    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise PadimError(f"not a readable ONNX file: {path} ({exc})") from None
    props = {p.key: p.value for p in graph.metadata_props}
    return parse_metadata(props, path)


def parse_metadata(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    if "padim" not in props:
        raise PadimError(f"ONNX file has no padim metadata (not written by padim export): {path}")
    try:
        meta = json.loads(props["padim"])
    except json.JSONDecodeError:
        raise PadimError(f"ONNX file's padim metadata is corrupt: {path}") from None
    if not isinstance(meta, dict) or meta.get("format") != ONNX_FORMAT:
        raise PadimError(f"ONNX file's metadata is not padim's: {path}")
    if meta.get("format_version") != ONNX_FORMAT_VERSION:
        raise PadimError(
            f"ONNX export format {meta.get('format_version')} (padim "
            f"{meta.get('library_version', '?')}) is not supported by this padim "
            f"(reads {ONNX_FORMAT_VERSION}); export the model again"
        )
    return meta
