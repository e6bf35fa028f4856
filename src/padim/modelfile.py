"""Model files: one safetensors file holding every tensor plus a JSON config in its header.

No pickle anywhere: loading parses a JSON header and raw tensor bytes. Writes are atomic
(temporary file in the same folder, then rename), so a crash never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padim.errors import PadimError

if TYPE_CHECKING:
    import torch

FORMAT_NAME = "padim-model"
FORMAT_VERSION = 3  # 3: + per-channel std and score mode; 2: packed lower-triangular
READABLE_VERSIONS = (1, 2, 3)  # whitening; 1: full matrices
_META_KEY = "padim"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Path], None]) -> None:
    with atomic_path(path) as tmp:
        write(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


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
