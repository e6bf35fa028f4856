"""Studio page loads with a big product: `padim serve --studio` on a catalogue whose product
holds N images (real good images and their mirror images until there are N, plus the
defects), a version trained and judged on them in the studio's way, and R line records with
their images kept. Headless Chromium (1366x768) times each page from navigation to its content
drawn: images (summary and the first page of thumbnails shown), judge (histogram, rates and
every test image listed), line (the review queue and its pictures), versions. Five loads each,
a fresh browser page each time.

    python benchmarks/studio_load.py --good ../shared/data/bsdata/ball_screw/train/good \
        ../shared/data/bsdata/ball_screw/test/good \
        --defects ../shared/data/bsdata/ball_screw/test/pitting --images 1000 --records 1000
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load_test import find_images, free_port, wait_healthy
from PIL import Image, ImageOps

from padim.lifecycle import training
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, RecordBook, Retention
from padim.lifecycle.workshop import DEFECT, GOOD, NewImage, Workshop

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")
PRODUCT = "ball_screw"
PAGES = {  # page -> what "drawn" means there
    "images": "() => document.querySelectorAll('[data-testid=grid] img').length > 0 && "
    "[...document.querySelectorAll('[data-testid=grid] img')].every((i) => i.complete && "
    "i.naturalWidth > 0) && document.querySelector('[data-testid=image-summary] dd')",
    "judge": "() => document.querySelectorAll('.judged-row').length > 0 && "
    "document.querySelector('[data-testid=rates]').textContent.includes('caught')",
    "line": "() => document.querySelectorAll('[data-testid=record]').length > 0 && "
    "[...document.querySelectorAll('[data-testid=record] img')].every((i) => i.complete && "
    "i.naturalWidth > 0)",
    "versions": "() => document.querySelectorAll('[data-testid=versions] tbody tr').length > 0",
}


def variants(paths: list[Path], n: int) -> list[NewImage]:
    """`n` distinct good images: the files, then their mirror images (left-right, upside
    down), each a different picture of a good part."""
    out: list[NewImage] = []
    for flip in (None, ImageOps.mirror, ImageOps.flip):
        for path in paths:
            if len(out) == n:
                return out
            if flip is None:
                out.append(NewImage(path.name, path.read_bytes()))
                continue
            buffer = io.BytesIO()
            flip(Image.open(path).convert("RGB")).save(buffer, "PNG")
            out.append(NewImage(f"{flip.__name__}-{path.stem}.png", buffer.getvalue()))
    return out


def build(where: Path, args: argparse.Namespace) -> dict:
    catalogue = open_catalogue(where)
    shop = Workshop(catalogue)
    shop.create(PRODUCT, "bench")
    goods = variants(find_images(args.good), args.images)
    for start in range(0, len(goods), 50):
        shop.add(PRODUCT, goods[start : start + 50], GOOD, "bench", 10**9)
    defects = [NewImage(p.name, p.read_bytes(), "pitting") for p in find_images(args.defects)]
    shop.add(PRODUCT, defects, DEFECT, "bench", 10**9)
    started = time.perf_counter()
    version = training.Training(catalogue, PRODUCT).run("bench", lambda *a: None)
    result = training.judge(catalogue, PRODUCT, version.number, lambda *a: None)
    fitted = time.perf_counter() - started
    from padim.lifecycle.registry import Registry

    Registry(catalogue).promote(PRODUCT, version.number, "bench")
    book = RecordBook(catalogue, Retention(keep_good=1.0, budget_bytes=1 << 34))
    pictures = [g.data for g in goods[:50]]
    entries = [
        Entry(PRODUCT, 1, "m", "bench", f"{i}.png", 1.0, 0.5, 2.0,
              "anomalous" if i % 3 == 0 else "good", [],
              hashlib.sha256(pictures[i % 50]).hexdigest(), pictures[i % 50])
        for i in range(args.records)
    ]  # fmt: skip
    for start in range(0, len(entries), 100):
        book.write(entries[start : start + 100])
    summary = shop.summary(PRODUCT)
    return {"counts": summary["counts"], "judged_images": len(result["images"]),
            "train_and_judge_s": round(fitted, 1)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good", type=Path, nargs="+", required=True)
    parser.add_argument("--defects", type=Path, nargs="+", required=True)
    parser.add_argument("--images", type=int, default=1000, help="good images in the product")
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "catalogue"
        built = build(where, args)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "padim", "serve", "--studio", "--catalogue", str(where)]
        serve += ["--auth", "off", "--port", str(port), "--log-level", "warning"]
        server = subprocess.Popen(serve)
        try:
            wait_healthy(url, server)
            pages: dict[str, list[float]] = {name: [] for name in PAGES}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                for _ in range(args.loads):
                    for name, drawn in PAGES.items():
                        page = browser.new_page(viewport={"width": 1366, "height": 768})
                        started = time.perf_counter()
                        page.goto(f"{url}/studio#{PRODUCT}/{name}")
                        page.wait_for_selector("body[data-ready=true]", timeout=60_000)
                        page.wait_for_function(drawn, timeout=60_000)
                        pages[name].append(round(time.perf_counter() - started, 3))
                        page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "product": built,
        "records": args.records,
        "loads_s": pages,
        "max_s": {name: max(times) for name, times in pages.items()},
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
