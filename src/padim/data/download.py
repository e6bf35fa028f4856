"""`padim download mvtec`: fetch MVTec AD categories from MVTec's official links.

Needs internet access. Archives are downloaded to a temporary file, extracted with tarfile's
safe `data` filter into a temporary folder, and only then renamed into place.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from padim.errors import PadimError

_SHARE = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download"
MVTEC_URLS: dict[str, str] = {
    "bottle": f"{_SHARE}/420937370-1629951468/bottle.tar.xz",
    "cable": f"{_SHARE}/420937413-1629951498/cable.tar.xz",
    "capsule": f"{_SHARE}/420937454-1629951595/capsule.tar.xz",
    "carpet": f"{_SHARE}/420937484-1629951672/carpet.tar.xz",
    "grid": f"{_SHARE}/420937487-1629951814/grid.tar.xz",
    "hazelnut": f"{_SHARE}/420937545-1629951845/hazelnut.tar.xz",
    "leather": f"{_SHARE}/420937607-1629951964/leather.tar.xz",
    "metal_nut": f"{_SHARE}/420937637-1629952063/metal_nut.tar.xz",
    "pill": "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"
    "420938129-1629953099/pill.tar.xz",
    "screw": f"{_SHARE}/420938130-1629953152/screw.tar.xz",
    "tile": f"{_SHARE}/420938133-1629953189/tile.tar.xz",
    "toothbrush": f"{_SHARE}/420938134-1629953256/toothbrush.tar.xz",
    "transistor": f"{_SHARE}/420938166-1629953277/transistor.tar.xz",
    "wood": f"{_SHARE}/420938383-1629953354/wood.tar.xz",
    "zipper": f"{_SHARE}/420938385-1629953449/zipper.tar.xz",
}
MVTEC_CATEGORIES = tuple(MVTEC_URLS)
LICENSE_NOTE = "MVTec AD is licensed CC BY-NC-SA 4.0 (non-commercial); see mvtec.com."


def download_mvtec(
    root: str | Path,
    categories: list[str] | None = None,
    timeout: float = 60.0,
    progress: bool = True,
) -> list[Path]:
    """Download and extract the given categories (all 15 by default) under `root`."""
    root = Path(root)
    wanted = categories or list(MVTEC_CATEGORIES)
    unknown = [c for c in wanted if c not in MVTEC_URLS]
    if unknown:
        raise PadimError(
            f"unknown MVTec AD category {unknown[0]!r}; choose from {', '.join(MVTEC_CATEGORIES)}"
        )
    root.mkdir(parents=True, exist_ok=True)
    done = []
    for category in wanted:
        target = root / category
        if (target / "train" / "good").is_dir():
            done.append(target)
            continue
        done.append(_fetch_category(category, root, timeout, progress))
    return done


def _fetch_category(category: str, root: Path, timeout: float, progress: bool) -> Path:
    url = MVTEC_URLS[category]
    with tempfile.TemporaryDirectory(prefix=f".{category}-", dir=root) as tmp:
        archive = Path(tmp) / f"{category}.tar.xz"
        try:
            with (
                urllib.request.urlopen(url, timeout=timeout) as response,
                open(archive, "wb") as fh,
            ):
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=category, disable=not progress
                ) as bar:
                    while block := response.read(1 << 20):
                        fh.write(block)
                        bar.update(len(block))
        except OSError as exc:  # URLError, timeouts, HTTP errors, disk errors
            raise PadimError(
                f"cannot download MVTec AD {category} from {url} ({exc}); this needs internet "
                f"access; otherwise download it by hand from mvtec.com and unpack it under {root}"
            ) from None
        extract_dir = Path(tmp) / "x"
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(extract_dir, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PadimError(f"downloaded archive for {category} is damaged: {exc}") from None
        source = extract_dir / category
        if not (source / "train" / "good").is_dir():
            raise PadimError(f"archive for {category} does not have the MVTec AD layout")
        target = root / category
        if target.exists():
            shutil.rmtree(target)
        source.rename(target)
    return target
