"""Example images for the web page: given files and folders, or the built-in demo images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from padim.data.images import list_images
from padim.data.pictures import png_bytes
from padim.errors import PadimError

MAX_EXAMPLES = 12


@dataclass
class Example:
    name: str
    data: bytes
    media_type: str


def _media_type(path: Path) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return {"jpg": "image/jpeg", "tif": "image/tiff"}.get(suffix, f"image/{suffix}")


def load_examples(sources: Sequence[Path]) -> list[Example]:
    """Example images for the page: the given files / folders (folders: their images, and the
    images one level down, named `<subfolder>/<file>`); `demo` for a few built-in demo images;
    none by default (the demo's gravel pictures are no example of a served bottle model)."""
    if not sources:
        return []
    if [str(s) for s in sources] == ["demo"] and not Path("demo").exists():
        return demo_examples()
    files: list[tuple[str, Path]] = []
    for source in map(Path, sources):
        if source.is_file():
            files.append((source.name, source))
        elif source.is_dir():
            files += [(p.name, p) for p in list_images(source)]
            for sub in sorted(d for d in source.iterdir() if d.is_dir()):
                files += [(f"{sub.name}/{p.name}", p) for p in list_images(sub)]
        else:
            raise PadimError(f"examples not found: {source}")
    if not files:
        raise PadimError("no example images found in " + ", ".join(map(str, sources)))
    return [
        Example(name, path.read_bytes(), _media_type(path))
        for name, path in _spread(files, MAX_EXAMPLES)
    ]


def _spread(items: list, n: int) -> list:
    """At most n items, evenly spread over the list (so every subfolder shows up)."""
    if len(items) <= n:
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def demo_examples() -> list[Example]:
    """The demo set's images; none where scikit-image (their source) is not installed."""
    from padim.data.demo_set import example_images

    try:
        arrays = example_images()
    except PadimError:  # scikit-image (padim[demo]) is not installed
        return []
    return [Example(name, png_bytes(array), "image/png") for name, array in arrays]
