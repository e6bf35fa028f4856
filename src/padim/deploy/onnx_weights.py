"""Smaller ONNX files that score exactly the same: float32 weights that float16 holds exactly
(a float16 model file's Gaussians) are stored as float16, and int8 minor components as their
int8 codes and per-row scales, each followed by the Cast (and Mul) that restores the float32
values. Runtimes fold those nodes once when they load the graph (onnxruntime's constant
folding, OpenVINO's weight decompression), so inference reads the same float32 numbers the
torch model does, from a file a half to a quarter of the size."""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_ELEMENTS = 1 << 14  # smaller weights are not worth a node


def compact_initializers(model: Any, int8_rows: tuple[np.ndarray, np.ndarray] | None) -> int:
    """Rewrite `model` (an onnx ModelProto) in place; `int8_rows` the (codes (P, r, d), scales
    (P, r)) of minor components stored as int8. Returns the bytes saved."""
    from onnx import TensorProto, helper, numpy_helper

    rows = None if int8_rows is None else _dequantised(*int8_rows)
    graph, saved, nodes = model.graph, 0, []
    for tensor in list(graph.initializer):
        if tensor.data_type != TensorProto.FLOAT or _elements(tensor) < MIN_ELEMENTS:
            continue
        values = numpy_helper.to_array(tensor)
        name = tensor.name
        if rows is not None and int8_rows is not None and _same(values, rows):
            codes, scales = int8_rows
            new = [
                numpy_helper.from_array(codes.astype(np.int8), f"{name}.int8"),
                numpy_helper.from_array(scales.astype(np.float32)[..., None], f"{name}.scale"),
            ]
            nodes += [
                helper.make_node("Cast", [f"{name}.int8"], [f"{name}.cast"], to=TensorProto.FLOAT),
                helper.make_node("Mul", [f"{name}.cast", f"{name}.scale"], [name]),
            ]
        elif _float16_exact(values):
            new = [numpy_helper.from_array(values.astype(np.float16), f"{name}.float16")]
            nodes.append(
                helper.make_node("Cast", [f"{name}.float16"], [name], to=TensorProto.FLOAT)
            )
        else:
            continue
        saved += values.nbytes - sum(t.ByteSize() for t in new)
        graph.initializer.remove(tensor)
        graph.initializer.extend(new)
    for node in reversed(nodes):  # before every node that reads them (topological order)
        graph.node.insert(0, node)
    return saved


def _elements(tensor: Any) -> int:
    return int(np.prod(tensor.dims)) if len(tensor.dims) else 1


def _dequantised(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """As `padim.core.minor.dequantise_rows` computes them (one float32 multiply)."""
    return codes.astype(np.float32) * scales.astype(np.float32)[..., None]


def _same(values: np.ndarray, rows: np.ndarray) -> bool:
    return values.shape == rows.shape and np.array_equal(values, rows)


def _float16_exact(values: np.ndarray) -> bool:
    with np.errstate(over="ignore"):
        return bool(np.array_equal(values.astype(np.float16).astype(np.float32), values))
