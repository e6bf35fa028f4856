"""Re-make docs/serve-page.png, the README's picture of the web page.

Serves the demo model (`padim demo --out padim-demo` writes it; its example images are built
from CC0 texture photos shipped with scikit-image), opens the page in Debian's Chromium with
Playwright, scores three example images and saves a screenshot.

    python docs/make_screenshot.py padim-demo/model.safetensors docs/serve-page.png
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main(model: str, out: str, port: int = 8791) -> None:
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "padim",
            "serve",
            model,
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    )
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]")
            for n, name in enumerate(("good/000.png", "stain/000.png", "scratch/000.png")):
                page.locator("[data-testid=example]", has_text=name).click()
                page.locator("[data-testid=result]").nth(n).wait_for()
            page.screenshot(path=out, full_page=False)
            browser.close()
    finally:
        server.terminate()
        server.wait(15)
    print(f"wrote {Path(out)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
