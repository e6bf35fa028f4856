"""Safetensors files written a piece at a time.

`safetensors.torch.save_file` needs every tensor whole in memory, so saving a model whose
whitening matrices are converted to float16 for the file would hold both copies at once (130 MB
extra for efficientnet_lite0 at 256x256, about 1 GB for wide_resnet50_2): the peak memory of
a fit. The format is simple enough to stream (8-byte little-endian header length, a JSON header
of dtypes, shapes and byte offsets, then the raw little-endian bytes), so a `Chunked` tensor is
converted and written a block of rows at a time. Files are read back with plain file reads
(`read_safetensors`), never memory-mapped: a model file overwritten in place while a service
reloads it must give an error, not a SIGBUS (tests check that the safetensors library reads
what this writes, and this reads what it writes, tensor for tensor).
"""

from __future__ import annotations

import io
import json
import math
import os
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

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


SAFETENSORS_DTYPES = {name: dtype for dtype, name in DTYPES.items()}
MAX_HEADER_BYTES = 100 << 20  # a model's JSON header is a few kB; refuse absurd lengths


def read_header(fh: BinaryIO, size: int) -> tuple[dict[str, Any], int]:
    """The JSON header of an open safetensors file of `size` bytes and where its data starts;
    a clear error on anything that is not such a header."""
    head = fh.read(8)
    if len(head) != 8:
        raise PadimError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER_BYTES, size - 8):
        raise PadimError(f"header length {length} does not fit a file of {size} bytes")
    try:
        header = json.loads(fh.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PadimError("the header is not JSON") from None
    if not isinstance(header, dict):
        raise PadimError("the header is not a JSON object")
    return header, 8 + length


def read_safetensors(
    path: str | Path, wanted: Callable[[str], bool] = lambda name: True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of a safetensors file that `wanted` names, and its string metadata, read
    with ordinary file reads into tensors of their own: the file is never memory-mapped, so
    a file replaced or truncated while it is read gives a clear error, never a SIGBUS, and
    tensors that are not wanted (or unknown) are never read at all."""
    if sys.byteorder != "little":
        raise PadimError("reading model files needs a little-endian machine")
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        header, start = read_header(fh, size)
        metadata = header.pop("__metadata__", None) or {}
        out: dict[str, torch.Tensor] = {}
        for name, spec in header.items():
            if not wanted(name):
                continue
            out[name] = _read_tensor(fh, name, spec, start, size)
    if not isinstance(metadata, dict):
        raise PadimError("the header's metadata is not a JSON object")
    return out, metadata


def _read_tensor(
    fh: io.BufferedReader, name: str, spec: Any, start: int, size: int
) -> torch.Tensor:
    try:
        dtype = SAFETENSORS_DTYPES[spec["dtype"]]
        shape = [int(s) for s in spec["shape"]]
        begin, end = (int(o) for o in spec["data_offsets"])
    except (KeyError, TypeError, ValueError):
        raise PadimError(f"tensor {name}: damaged entry in the header") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if min(shape, default=0) < 0 or end - begin != nbytes or begin < 0 or start + end > size:
        raise PadimError(f"tensor {name}: its bytes do not fit the file (truncated?)")
    tensor = torch.empty(shape, dtype=dtype)
    fh.seek(start + begin)
    got = fh.readinto(tensor.view(-1).view(torch.uint8).numpy().data) if nbytes else 0
    if got != nbytes:
        raise PadimError(f"tensor {name}: the file ended after {got} of {nbytes} bytes")
    return tensor
