"""Safetensors files written a piece at a time.

`safetensors.torch.save_file` needs every tensor whole in memory, so saving a model whose
whitening matrices are converted to float16 for the file would hold both copies at once (130 MB
extra for efficientnet_lite0 at 256x256, about 1 GB for wide_resnet50_2): the peak memory of
a fit. The format is simple enough to stream (8-byte little-endian header length, a JSON header
of dtypes, shapes and byte offsets, then the raw little-endian bytes), so a `Chunked` tensor is
converted and written a block of rows at a time. Files are read back with the safetensors
library (tests check that it reads what this writes, tensor for tensor).
"""

from __future__ import annotations

import json
import math
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import torch

from padim.errors import PadimError

DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class Chunked:
    """A tensor of `shape` and `dtype` produced as consecutive row blocks by `chunks()`."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[torch.Tensor]]


def _spec(value: torch.Tensor | Chunked) -> tuple[torch.dtype, tuple[int, ...]]:
    if isinstance(value, Chunked):
        return value.dtype, value.shape
    return value.dtype, tuple(value.shape)


def write_safetensors(
    fh: BinaryIO, tensors: dict[str, torch.Tensor | Chunked], metadata: dict[str, str]
) -> None:
    """Write `tensors` and string `metadata` to an open binary file in the safetensors format;
    the widest dtypes first, as safetensors orders them, so every tensor is aligned."""
    if sys.byteorder != "little":  # the format is little-endian; so are torch's CPU tensors
        raise PadimError("writing model files needs a little-endian machine")
    order = sorted(tensors, key=lambda k: (-_spec(tensors[k])[0].itemsize, k))
    header: dict[str, object] = {"__metadata__": metadata}
    sizes: dict[str, int] = {}
    offset = 0
    for name in order:
        dtype, shape = _spec(tensors[name])
        if dtype not in DTYPES:
            raise PadimError(f"cannot store {name} of type {dtype} in a model file")
        sizes[name] = math.prod(shape) * dtype.itemsize
        header[name] = {
            "dtype": DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + sizes[name]],
        }
        offset += sizes[name]
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # data starts 8-byte aligned
    fh.write(struct.pack("<Q", len(blob)))
    fh.write(blob)
    for name in order:
        value = tensors[name]
        dtype, shape = _spec(value)
        pieces = value.chunks() if isinstance(value, Chunked) else iter([value])
        written = 0
        for piece in pieces:
            data = piece.detach().to("cpu", dtype).contiguous().reshape(-1)
            fh.write(data.view(torch.uint8).numpy().data)
            written += data.numel() * dtype.itemsize
        if written != sizes[name]:
            raise PadimError(f"internal error: {name} gave {written} bytes for shape {shape}")
