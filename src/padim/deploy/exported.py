"""The torch-free runtimes: files written by `padim export`, run by onnxruntime (`OnnxScorer`)
or OpenVINO (`OpenVinoScorer`), with the alignment their metadata describes."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.data.align import Aligner
from padim.data.images import read_image
from padim.data.preprocess import Preprocess, as_wh, to_json
from padim.deploy.metadata import parse_metadata
from padim.deploy.model_info import describe, file_id, image_aspect, thresholds_of
from padim.errors import PadimError, first_line


def exported_aligner(meta: dict[str, Any], path: Path) -> Aligner | None:
    """The registration an export's metadata describes, its reference (and matching mask)
    read from the PNG files written beside it (torch-free)."""
    settings = meta.get("alignment")
    if not settings:
        return None
    try:
        reference = read_image(path.parent / settings["reference"])
        mask = None
        if settings.get("roi"):
            mask = np.asarray(Image.open(path.parent / settings["roi"]).convert("L")) > 0
        aligner = Aligner(
            settings["mode"],
            float(settings["max_shift"]),
            float(settings["max_angle"]),
            float(settings["max_scale"]),
            float(settings["min_quality"]),
            mask,
        )
        return aligner.fit([], np.asarray(reference))
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise PadimError(f"exported model's alignment is damaged: {path} ({exc})") from None


class ExportedScorer:
    """Shared part of the torch-free runtimes: metadata, preprocessing, description."""

    runtime = "exported"

    def __init__(self, path: str | Path, meta: dict[str, Any]) -> None:
        self.path = str(path)
        self.meta = meta
        self.model_id = file_id(path)
        try:
            self.threshold = float(meta["threshold"])
            w, h = as_wh(meta["input_size"])
            self.input_hw, self.input_size = (h, w), to_json((w, h))
            self.geometry = Preprocess(meta["resize"], meta["crop"])  # whole numbers in range
            self.thresholds = thresholds_of(meta, self.threshold)
        except (KeyError, TypeError, ValueError, PadimError) as exc:
            raise PadimError(f"exported model's metadata is damaged: {path} ({exc})") from None
        if not math.isfinite(self.threshold):
            raise PadimError(f"exported model's threshold is not finite: {path}")
        self.score_scale = self.thresholds.scale()
        self.operating_points = self.thresholds.usable()
        trained = (meta.get("info") or {}).get("image_size")
        self.image_aspect = image_aspect(trained, self.geometry)
        self.aligner = exported_aligner(meta, Path(path))

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return self.geometry.image(image)

    def describe(self) -> dict[str, Any]:
        return {
            **describe(
                self.meta, self.model_id, Path(self.path).name, self.runtime, self.threshold
            ),
            "source_model_id": self.meta.get("source_model_id"),
            "exported_with_version": self.meta.get("library_version"),
        }

    def _check_io(self, inputs: list[tuple[str, list]], outputs: list[str]) -> None:
        names = [name for name, _ in inputs]
        shape = inputs[0][1] if inputs else []
        ok = (
            names == ["images"]
            and sorted(outputs) == ["anomaly_map", "score"]
            and len(shape) == 4
            and list(shape[1:]) in ([3, *self.input_hw], [3, None, None])
        )
        if not ok:
            raise PadimError(
                f"exported model does not match its metadata (inputs {inputs}, "
                f"outputs {outputs}, input size {self.input_size}): {self.path}"
            )


class OnnxScorer(ExportedScorer):
    """An ONNX file written by `padim export`, run by onnxruntime (no torch)."""

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise PadimError("ONNX models need onnxruntime: pip install onnxruntime") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise PadimError(f"cannot load ONNX model {path}: {first_line(exc)}") from None
        meta = parse_metadata(self.session.get_modelmeta().custom_metadata_map, path)
        super().__init__(path, meta)
        self._check_io(
            [
                (i.name, [d if isinstance(d, int) else None for d in i.shape])
                for i in self.session.get_inputs()
            ],
            [o.name for o in self.session.get_outputs()],
        )

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores, maps = self.session.run(
            ["score", "anomaly_map"], {"images": np.ascontiguousarray(x, dtype=np.float32)}
        )
        return scores, maps[:, 0]


class OpenVinoScorer(ExportedScorer):
    """An OpenVINO IR (.xml + .bin) written by `padim export --format openvino`."""

    runtime = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError:
            raise PadimError("OpenVINO models need openvino: pip install openvino") from None
        weights = Path(path).with_suffix(".bin")
        if not weights.is_file():
            raise PadimError(
                f"OpenVINO model {path}: its weights {weights.name} are missing (an .xml needs "
                "the .bin written beside it by padim export)"
            )
        core = ov.Core()
        with contextlib.suppress(Exception):  # read the weights, do not map them: a .bin
            core.set_property({"ENABLE_MMAP": False})  # copied over in place must not crash
        try:
            model = core.read_model(str(path))
            raw = model.get_rt_info(["padim"]).astype(str)
        except Exception as exc:
            raise PadimError(f"cannot load OpenVINO model {path}: {first_line(exc)}") from None
        meta = parse_metadata({"padim": raw}, path)
        super().__init__(path, meta)
        # f32 on every CPU: OpenVINO's default on CPUs with bf16 (AMX, AVX-512 BF16) is bf16,
        # which moves scores by ~1e-3 and fails the export's own parity check
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = core.compile_model(model, "CPU", config)
        self._outputs = {o.get_any_name(): o for o in self.compiled.outputs}
        self._check_io(
            [
                (
                    i.get_any_name(),
                    [d.get_length() if d.is_static else None for d in i.get_partial_shape()],
                )
                for i in self.compiled.inputs
            ],
            list(self._outputs),
        )

    def score_batch(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.compiled(np.ascontiguousarray(x, dtype=np.float32))
        return result[self._outputs["score"]], result[self._outputs["anomaly_map"]][:, 0]
