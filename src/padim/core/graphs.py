"""Whether torch is recording a graph (tracing, ONNX export) rather than running eagerly."""

from __future__ import annotations

import torch


def in_graph() -> bool:
    """True while torch traces or exports: code that picks its path by shape, memory format or
    batch size must then take the plain one, which a graph can hold for any input."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
