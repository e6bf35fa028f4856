"""Studio page load with a product of many records: `padim serve --product P` on a catalogue
holding N records with their images kept (real images), and headless Chromium timing /studio
from navigation to the page ready (versions, queue, audit trail, drift drawn) and to every
queue image shown. Five loads, fresh browser page each.

    python benchmarks/studio_load.py --model bottle.safetensors \
        --images ../shared/data/mvtec_ad/bottle/test --records 1000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load_test import find_images, free_port, wait_healthy

from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, RecordBook, Retention
from padim.lifecycle.registry import Registry

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--images", type=Path, nargs="+", required=True)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    images = [p.read_bytes() for p in find_images(args.images)]
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) / "catalogue"
        catalogue = open_catalogue(where)
        registry = Registry(catalogue)
        registry.register("bottle", args.model, actor="bench")
        registry.promote("bottle", 1, actor="bench")
        book = RecordBook(catalogue, Retention(keep_good=1.0, budget_bytes=1 << 34))
        entries = []
        for i in range(args.records):
            data = images[i % len(images)]
            verdict = "anomalous" if i % 3 == 0 else "good"
            digest = hashlib.sha256(data).hexdigest()
            entries.append(
                Entry(
                    "bottle", 1, "m", "bench", f"{i}.png", 1.0, 0.5, 2.0, verdict, [], digest, data
                )
            )
        for start in range(0, len(entries), 100):
            book.write(entries[start : start + 100])
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        serve = [sys.executable, "-m", "padim", "serve", "--product", "bottle", "--catalogue"]
        serve += [str(where), "--auth", "off", "--port", str(port), "--log-level", "warning"]
        server = subprocess.Popen(serve)
        try:
            wait_healthy(url, server)
            rows = []
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                for _ in range(args.loads):
                    page = browser.new_page(viewport={"width": 1366, "height": 768})
                    started = time.perf_counter()
                    page.goto(url + "/studio")
                    page.wait_for_selector("body[data-ready=true]", timeout=60_000)
                    ready = time.perf_counter() - started
                    page.wait_for_function(
                        "() => [...document.querySelectorAll('[data-testid=record] img')]"
                        ".every((i) => i.complete && i.naturalWidth > 0)"
                    )
                    shown = time.perf_counter() - started
                    count = page.locator("[data-testid=record]").count()
                    rows.append({"ready_s": round(ready, 3), "images_shown_s": round(shown, 3),
                                 "queue_items": count})  # fmt: skip
                    page.close()
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
    result = {"records": args.records, "loads": rows,
              "ready_s_max": max(r["ready_s"] for r in rows),
              "images_shown_s_max": max(r["images_shown_s"] for r in rows)}  # fmt: skip
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
