"""Where images come from: folders (searched recursively), CSV/Parquet manifests with a `path`
column, single files, or in-memory images; and readable output names for them. Torch-free."""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from padim.data.images import IMAGE_EXTENSIONS, ImageInput
from padim.errors import PadimError

MANIFEST_SUFFIXES = (".csv", ".parquet")


def pyarrow_modules() -> tuple[Any, Any]:
    """pyarrow and pyarrow.parquet, or a one-line install hint."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise PadimError("Parquet files need pyarrow: pip install 'padim[parquet]'") from None
    return pa, pq


def read_table(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    """Rows of a CSV (with a header) or Parquet manifest, restricted to `columns`, all required."""
    if not path.is_file():
        raise PadimError(f"manifest not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        _, pq = pyarrow_modules()
        try:
            table = pq.read_table(path)
        except Exception as exc:
            raise PadimError(f"cannot read Parquet manifest {path}: {exc}") from None
        found = table.column_names
        data = {c: table.column(c).to_pylist() for c in columns if c in found}
        rows = [dict(zip(data, values, strict=True)) for values in zip(*data.values(), strict=True)]
    elif suffix == ".csv":
        try:
            with path.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                found = list(reader.fieldnames or [])
                rows = [{c: r.get(c) for c in columns} for r in reader]
        except (UnicodeDecodeError, csv.Error) as exc:
            raise PadimError(f"cannot read CSV manifest {path}: {exc}") from None
    else:
        raise PadimError(f"a manifest is a .csv or .parquet file, got {path}")
    missing = [c for c in columns if c not in found]
    if missing:
        raise PadimError(
            f"manifest {path} has no column {', '.join(map(repr, missing))} "
            f"(columns: {', '.join(map(str, found)) or 'none'})"
        )
    for i, row in enumerate(rows, start=2):
        empty = [c for c in columns if row.get(c) in (None, "")]
        if empty:
            raise PadimError(f"manifest {path}, row {i}: empty {', '.join(empty)}")
    return [{c: str(row[c]) for c in columns} for row in rows]


def manifest_paths(path: Path) -> list[Path]:
    """Image paths of a manifest's `path` column; relative ones are relative to the manifest."""
    return [_resolve(path, row["path"]) for row in read_table(path, ["path"])]


def _resolve(manifest: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else manifest.parent / p


def find_images(folder: str | Path) -> list[Path]:
    """Every image under `folder`, sub-folders included, sorted (hidden entries skipped)."""
    folder = Path(folder)
    found = [
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    ]
    return sorted(found)


def folder_images(folder: str | Path) -> list[Path]:
    """`find_images`, failing clearly when the folder holds none."""
    found = find_images(folder)
    if not found:
        raise PadimError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {folder}")
    return found


def source_paths(sources: Sequence[Path]) -> list[Path]:
    """Images of folders (sub-folders included), of CSV/Parquet manifests (`path` column) and
    single files, in order, without repeats."""
    out: list[Path] = []
    for src in sources:
        if src.is_dir():
            out.extend(folder_images(src))
        elif src.suffix.lower() in MANIFEST_SUFFIXES:
            out.extend(manifest_paths(src))
        elif src.is_file():
            out.append(src)
        else:
            raise PadimError(f"input not found: {src}")
    return list(dict.fromkeys(out))


def output_names(paths: list[Path]) -> list[str]:
    """Unique, readable file stems: each path relative to the inputs' common folder, with '__'
    for '/' (stable: a resumed bulk job names every image as its first run did)."""
    resolved = [Path(os.path.abspath(p)) for p in paths]
    base = Path(os.path.commonpath([p.parent for p in resolved]))
    names = ["__".join(p.relative_to(base).with_suffix("").parts) for p in resolved]
    if len(set(names)) != len(names):  # same stem, different extensions
        names = ["__".join(p.relative_to(base).parts).replace(".", "_") for p in resolved]
    return names


def expand_inputs(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """A folder (searched recursively), one image, or an iterable of paths / PIL images / arrays
    -> a list of images."""
    if isinstance(images, str | Path):
        path = Path(images)
        return list(folder_images(path)) if path.is_dir() else [path]
    if isinstance(images, np.ndarray) and images.ndim in (2, 3) and images.dtype != object:
        return [images]
    if not isinstance(images, Iterable):
        return [images]
    out: list[ImageInput] = []
    for item in images:
        if isinstance(item, str | Path) and Path(item).is_dir():
            out.extend(folder_images(item))
        else:
            out.append(item)
    return out
