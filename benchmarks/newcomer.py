"""The newcomer's path, timed: `./run.sh studio` in a checkout, then only the browser (headless
Chromium, 1366x768) from an empty catalogue to a promoted model: the admin token the studio
prints, a new product, a folder of good images and some defects uploaded, the cost estimated,
a version trained and judged, a threshold picked on the histogram and made a version, that
version promoted. Prints the seconds each step took (machine time: a person reading the pages
adds theirs) and the clicks it needed.

    python benchmarks/newcomer.py --checkout . --good ../shared/data/bsdata/ball_screw/train/good \
        --defects ../shared/data/bsdata/ball_screw/test/pitting --n-good 100 --n-defects 10
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from load_test import free_port, wait_healthy

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", type=Path, default=Path("."))
    parser.add_argument("--good", type=Path, required=True)
    parser.add_argument("--defects", type=Path, required=True)
    parser.add_argument("--n-good", type=int, default=100)
    parser.add_argument("--n-defects", type=int, default=10)
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    goods = sorted(args.good.iterdir())[: args.n_good]
    defects = sorted(args.defects.iterdir())[: args.n_defects]
    steps: dict[str, float] = {}
    clicks = 0
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        log = Path(tmp) / "studio.log"
        started = time.perf_counter()
        cmd = ["./run.sh", "studio", "--catalogue", f"{tmp}/catalogue", "--port", str(port)]
        with log.open("w") as out:
            server = subprocess.Popen(cmd, cwd=args.checkout, stdout=out, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        mark = time.perf_counter()

        def step(name: str) -> None:
            nonlocal mark
            now = time.perf_counter()
            steps[name] = round(now - mark, 1)
            mark = now

        try:
            wait_healthy(url, server, timeout=900)
            token = re.search(r"padim_[A-Za-z0-9_-]+", log.read_text()).group(0)
            step("./run.sh studio until the page answers")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1366, "height": 768})
                answers = {"token": token, "product": "ball_screw"}

                def answer(dialog) -> None:
                    key = next((k for k in answers if k in dialog.message), None)
                    dialog.accept(answers[key]) if key else dialog.accept()

                page.on("dialog", answer)
                page.goto(url + "/studio")
                page.wait_for_selector("body[data-ready=true]")
                page.click("[data-testid=new-product]")
                clicks += 1
                page.wait_for_selector("option[value=ball_screw]", state="attached")
                page.set_input_files("[data-testid=files]", [str(x) for x in goods])
                clicks += 1
                page.wait_for_function(
                    "() => document.querySelectorAll('[data-testid=grid] figure').length > 0"
                    " && document.querySelector('[data-testid=status]').textContent"
                    ".includes('added')",
                    timeout=300_000,
                )
                page.select_option("[data-testid=kind]", "defect")
                page.fill("[data-testid=defect-type]", "pitting")
                page.set_input_files("[data-testid=files]", [str(x) for x in defects])
                clicks += 3
                page.wait_for_function(
                    "() => document.querySelector('[data-testid=image-summary]').dataset.defects"
                    f" === '{len(defects)}'",
                    timeout=300_000,
                )
                step("token, new product, images uploaded")
                page.click("[data-testid=tab-train]")
                page.click("[data-testid=propose]")
                page.wait_for_selector("[data-testid=proposal] tbody tr", timeout=120_000)
                step("cost estimated")
                page.click("[data-testid=train]")
                clicks += 3
                page.wait_for_selector("[data-testid=job][data-state=done]", timeout=900_000)
                step("trained and judged")
                page.click("[data-testid=tab-judge]")
                page.wait_for_selector(".judged-row", timeout=60_000)
                page.fill(
                    "[data-testid=threshold-value]",
                    page.input_value("[data-testid=threshold-value]"),
                )
                page.click("[data-testid=set-point]")
                clicks += 3
                page.wait_for_function(
                    "() => document.querySelector('[data-testid=judge-version]').value === '2'",
                    timeout=120_000,
                )
                step("operating point made a version")
                page.click("[data-testid=tab-versions]")
                page.locator("tr[data-version='2'] [data-testid=promote]").click()
                clicks += 2
                page.wait_for_function(
                    "() => document.querySelector(\"tr[data-version='2']\")?.textContent"
                    ".includes('production')"
                )
                step("promoted")
                browser.close()
        finally:
            server.terminate()
            server.wait(30)
        total = round(time.perf_counter() - started, 1)
    print(json.dumps({"steps_s": steps, "total_s": total, "clicks": clicks,
                      "good_images": len(goods), "defects": len(defects)}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
