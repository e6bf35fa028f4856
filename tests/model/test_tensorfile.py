import io
import struct

import pytest
import torch
from safetensors import safe_open

from padim.errors import PadimError
from padim.model.tensorfile import Chunked, write_safetensors


def _tensors() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {
        "f64": torch.randn(3, 5, generator=gen, dtype=torch.float64),
        "f32": torch.randn(7, generator=gen),
        "f16": torch.randn(2, 3, 4, generator=gen).half(),
        "bf16": torch.randn(5, generator=gen).bfloat16(),
        "i64": torch.arange(9),
        "i32": torch.arange(4, dtype=torch.int32),
        "u8": torch.tensor([0, 1, 255], dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "strided": torch.randn(6, 4, generator=gen).t(),  # not contiguous
    }


def test_safetensors_reads_what_is_written_tensor_for_tensor(tmp_path):
    tensors = _tensors()
    big = torch.randn(1000, 33, generator=torch.Generator().manual_seed(1))
    chunked = Chunked(torch.float16, (1000, 33), lambda: (c for c in big.split(128)))
    path = tmp_path / "m.safetensors"
    with open(path, "wb") as fh:
        write_safetensors(fh, {**tensors, "chunked": chunked}, {"padim": '{"a": 1}'})
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"padim": '{"a": 1}'}
        assert set(fh.keys()) == {*tensors, "chunked"}
        for name, want in tensors.items():
            got = fh.get_tensor(name)
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got, want), name
        assert torch.equal(fh.get_tensor("chunked"), big.half())
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0  # tensors start aligned


def test_a_chunked_tensor_that_gives_the_wrong_size_is_an_error():
    short = Chunked(torch.float32, (10, 2), lambda: iter([torch.zeros(9, 2)]))
    with pytest.raises(PadimError, match="internal error"):
        write_safetensors(io.BytesIO(), {"x": short}, {})


def test_unsupported_dtypes_are_refused():
    with pytest.raises(PadimError, match="cannot store"):
        write_safetensors(io.BytesIO(), {"c": torch.zeros(2, dtype=torch.complex64)}, {})


def test_read_safetensors_reads_what_safetensors_writes(tmp_path):
    """Plain file reads (no memory map) give the tensors the safetensors library wrote, and
    read only the wanted ones."""
    from safetensors.torch import save_file

    from padim.model.tensorfile import read_safetensors

    tensors = {k: v.contiguous() for k, v in _tensors().items()}
    path = tmp_path / "lib.safetensors"
    save_file(tensors, str(path), metadata={"padim": "{}"})
    got, meta = read_safetensors(path)
    assert meta == {"padim": "{}"} and set(got) == set(tensors)
    for name, want in tensors.items():
        assert got[name].dtype == want.dtype and torch.equal(got[name], want), name
    some, _ = read_safetensors(path, lambda name: name.startswith("f"))
    assert set(some) == {"f64", "f32", "f16", "flag"}


def test_a_file_cut_or_replaced_while_read_is_an_error_not_a_crash(tmp_path):
    from padim.model.tensorfile import read_safetensors

    path = tmp_path / "m.safetensors"
    with open(path, "wb") as fh:
        write_safetensors(fh, {"x": torch.randn(1000, 50)}, {"padim": "{}"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # as `cp new m.safetensors` leaves it mid-copy
    with pytest.raises(PadimError, match="truncated"):
        read_safetensors(path)
    path.write_bytes(struct.pack("<Q", 10**12) + data[8:])
    with pytest.raises(PadimError, match="header length"):
        read_safetensors(path)
    path.write_bytes(b"")
    with pytest.raises(PadimError, match="shorter than"):
        read_safetensors(path)


def test_unknown_tensors_in_a_model_file_are_not_read(model_file, tmp_path):
    """A model file with an extra unknown tensor was accepted and copied into memory whole."""
    from padim.model.modelfile import load_model_file
    from padim.model.tensorfile import read_safetensors

    tensors, meta = read_safetensors(model_file)
    padded = tmp_path / "padded.safetensors"
    with open(padded, "wb") as fh:
        write_safetensors(fh, {**tensors, "junk.blob": torch.zeros(4_000_000)}, meta)
    loaded, _ = load_model_file(padded)
    assert "junk.blob" not in loaded and set(loaded) == set(load_model_file(model_file)[0])
