"""`padim export`: the whole inference path as one ONNX graph (or OpenVINO IR), verified.

Graph: images (N, 3, H, W) in [0, 1] at the model's input geometry -> normalisation, backbone,
embedding, Mahalanobis distances, bilinear upsampling, Gaussian smoothing -> `score` (N) and
`anomaly_map` (N, 1, H, W); the batch size is dynamic. Resizing and cropping stay outside (the
runtime does them with `preprocess.resize_crop`, as the torch path does). The threshold, geometry,
normalisation and versions are stored as metadata (`padim` JSON). Models over the 2 GB protobuf
limit are written with their weights in `FILE.data` beside the graph.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from padim import __version__
from padim.data.pictures import save_png
from padim.deploy.metadata import (
    ALIGN_ROI_SUFFIX,
    REFERENCE_SUFFIX,
    model_metadata,
    read_onnx_metadata,
)
from padim.deploy.onnx_weights import compact_initializers
from padim.errors import PadimError
from padim.files import check_output_file, default_file_mode

PROTOBUF_LIMIT = 2_000_000_000  # bytes; above this the weights go to external data
DEFAULT_OPSET = 17


def export_onnx(
    model: Any,
    out: str | Path,
    model_id: str = "in-memory",
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    stem: str | None = None,
) -> Path:
    """Write `model` (a fitted `Padim`) as ONNX, atomically; `external_data` None: only when
    the weights exceed the protobuf limit. A model that aligns also gets its reference part
    (and matching mask) as PNG files beside it (`<stem>.reference.png`): the alignment runs
    outside the graph, in every runtime."""
    import onnx
    import torch

    net = model.fitted_net().to("cpu").eval()
    height, width = model.preprocess.output_hw
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        raw = work / "raw.onnx"
        example = torch.rand(2, 3, height, width)
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on constant shapes: expected here
            torch.onnx.export(
                net,
                (example,),
                str(raw),
                input_names=["images"],
                output_names=["score", "anomaly_map"],
                opset_version=opset,
                dynamo=False,
                dynamic_axes={
                    "images": {0: "batch"},
                    "score": {0: "batch"},
                    "anomaly_map": {0: "batch"},
                },
            )
        graph = onnx.load(str(raw))
        compact_initializers(graph, int8_rows(model))
        stem = stem or out.stem
        meta = model_metadata(model, model_id, stem)
        write_alignment_files(model, out.parent, stem)
        for key, value in {
            "padim": json.dumps(meta),
            "threshold": str(model.threshold_),
            "input_size": json.dumps(meta["input_size"]),
            "library_version": __version__,
            "normalisation": json.dumps(meta["normalisation"]),
        }.items():
            entry = graph.metadata_props.add()
            entry.key, entry.value = key, value
        graph.producer_name, graph.producer_version = "padim", __version__
        weights = sum(t.ByteSize() for t in graph.graph.initializer)
        split = external_data if external_data is not None else weights > PROTOBUF_LIMIT
        final = work / out.name
        data_name = out.name + ".data"
        onnx.save_model(
            graph,
            str(final),
            save_as_external_data=split,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        onnx.checker.check_model(str(final))
        mode = default_file_mode()  # the usual permissions (temporary files are private)
        if split:
            os.chmod(work / data_name, mode)
            os.replace(work / data_name, out.parent / data_name)
        os.chmod(final, mode)
        os.replace(final, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def int8_rows(model: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The int8 codes and scales of a model whose minor components the file stores as int8."""
    from padim.core.minor import MinorGaussianModel

    gaussian = model.fitted_net().gaussian
    codes = gaussian.int8_codes() if isinstance(gaussian, MinorGaussianModel) else None
    return None if codes is None else (codes[0].numpy(), codes[1].numpy())


def write_alignment_files(model: Any, folder: Path, stem: str) -> None:
    """The reference part (and its matching mask) of a model that aligns, as PNG files."""
    aligner = getattr(model, "aligner_", None)
    if aligner is None:
        return
    save_png(folder / f"{stem}{REFERENCE_SUFFIX}", aligner.reference_image_)
    if aligner.mask_ is not None:
        save_png(folder / f"{stem}{ALIGN_ROI_SUFFIX}", aligner.mask_.astype(bool))


def export_openvino(onnx_path: str | Path, out: str | Path, fp16: bool = False) -> Path:
    """Convert an exported ONNX file to OpenVINO IR (`out` .xml + .bin); metadata kept."""
    try:
        import openvino as ov
    except ImportError:
        raise PadimError(
            "--format openvino needs the openvino package (pip install openvino)"
        ) from None
    out = Path(out).with_suffix(".xml")
    ov_model = ov.convert_model(str(onnx_path))
    meta = read_onnx_metadata(onnx_path)
    ov_model.set_rt_info(json.dumps(meta), ["padim"])
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        ov.save_model(ov_model, str(work / out.name), compress_to_fp16=fp16)
        os.replace(work / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        os.replace(work / out.name, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def publish(stage: Path, out: Path) -> None:
    """Move a checked export from `stage` beside `out`: its companion files (.data, .bin)
    first, the file a runtime opens last."""
    for part in sorted(stage.iterdir(), key=lambda p: p.name == out.name):
        os.replace(part, out.parent / part.name)


def reject(stage: Path, out: Path) -> Path:
    """Keep a failed export for inspection under a name no model folder serves
    (`OUT.rejected/`, replacing an older one); returns it."""
    rejected = out.parent / f"{out.name}.rejected"
    shutil.rmtree(rejected, ignore_errors=True)
    if rejected.exists():
        rejected.unlink()
    os.replace(stage, rejected)
    return rejected


def parity(model: Any, scorer: Any, images: np.ndarray) -> dict[str, float]:
    """Largest differences between the torch model and an exported runtime on `images`."""
    import torch

    t_scores, t_maps = model.score_tensors(torch.from_numpy(images))
    o_scores, o_maps = scorer.score_batch(images)
    return {
        "max_rel_score_diff": float(np.max(np.abs(o_scores - t_scores) / np.abs(t_scores))),
        "max_rel_map_diff": float(np.max(np.abs(o_maps - t_maps)) / np.max(np.abs(t_maps))),
    }


def aligned_parity(model: Any, scorer: Any, paths: Sequence[Path]) -> float:
    """Whole-image parity for a model that aligns: photos registered, scored and decided by
    the export's runtime against the torch model's `predict`."""
    from padim.deploy.scorers import score_files

    mine = model.predict(list(paths))
    theirs = score_files(scorer, paths)
    pairs = zip(mine, theirs, strict=True)
    return max(abs((t.score or 0.0) - m.score) / abs(m.score) for m, t in pairs)


@dataclass
class ExportReport:
    """What `export_model` wrote and how well it agrees with the torch model."""

    path: Path
    fmt: str
    n_checked: int
    checked_on: str  # "given" or "random" images
    max_rel_score_diff: float
    max_rel_map_diff: float


def export_model(
    model_path: Path,
    out: Path,
    fmt: str = "onnx",
    opset: int = DEFAULT_OPSET,
    external_data: bool | None = None,
    fp16: bool = False,
    verify: Sequence[Path] = (),
    tolerance: float = 1e-4,
    threads: int | None = None,
) -> ExportReport:
    """Export a model file as ONNX or OpenVINO IR and check its parity with the torch model on
    `verify` images (up to 16) or random inputs; fails if the relative score difference exceeds
    `tolerance` (x100 for fp16 weights), leaving the export for inspection."""
    from padim.data.images import read_image
    from padim.data.sources import source_paths
    from padim.deploy.model_info import file_id
    from padim.deploy.scorers import load_scorer
    from padim.model.estimator import Padim

    want = ".onnx" if fmt == "onnx" else ".xml"
    if out.suffix.lower() != want:
        raise PadimError(f"--format {fmt} writes a {want} file: got --out {out}")
    check_output_file(out)
    model = Padim.load(model_path, device="cpu")
    paths: list[Path] = []
    if verify:
        paths = source_paths(verify)[:16]
        aligner = model.aligner_
        photos = [read_image(p) for p in paths]
        if aligner is not None:
            photos = [aligner.align(photo)[0] for photo in photos]
        check = np.stack([model.preprocess.image(photo) for photo in photos])
    else:
        h, w = model.preprocess.output_hw
        check = np.random.default_rng(0).random((4, 3, h, w), dtype=np.float32)
    out.parent.mkdir(parents=True, exist_ok=True)
    # everything is written and checked in a staging folder: `out` (maybe a model being
    # served) is replaced only by an export that passed its parity check
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        staged = stage / out.name
        onnx_out = staged if fmt == "onnx" else stage / (out.stem + ".onnx.tmp")
        export_onnx(
            model,
            onnx_out,
            model_id=file_id(model_path),
            opset=opset,
            external_data=external_data,
            stem=out.stem,
        )
        if fmt == "openvino":
            export_openvino(onnx_out, staged, fp16=fp16)
            onnx_out.unlink()
            onnx_out.with_name(onnx_out.name + ".data").unlink(missing_ok=True)
        scorer = load_scorer(staged, threads=threads)
        diff = parity(model, scorer, check)
        if verify and model.aligner_ is not None:  # the alignment outside the graph, too
            whole = aligned_parity(model, scorer, paths)
            diff["max_rel_score_diff"] = max(diff["max_rel_score_diff"], whole)
        limit = tolerance * (100 if fp16 else 1)
        if diff["max_rel_score_diff"] > limit:
            rejected = reject(stage, out)
            raise PadimError(
                f"exported model disagrees with the torch model: relative score "
                f"difference {diff['max_rel_score_diff']:.2e} > {limit:g}; {out} is unchanged "
                f"and the rejected export is in {rejected} for inspection"
            )
        publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return ExportReport(
        out,
        fmt,
        len(check),
        "given" if verify else "random",
        diff["max_rel_score_diff"],
        diff["max_rel_map_diff"],
    )
