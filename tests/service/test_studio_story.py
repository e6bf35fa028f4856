"""The whole studio story in real headless Chromium at 1366x768, on BSData from ../shared, as an
inspection engineer does it with the browser only: create a product, upload good images (and
pitted ones, one mask drawn), estimate and train with live progress, open the evaluation, set
an operating point by dragging on the histogram, promote it, send images through the line
view, mark a false alarm, retrain, see the gate, promote the candidate, roll back.
Screenshots of every page: test-artifacts/studio-*.png (docs/ has copies)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import serving
from PIL import Image
from test_web import CHROMIUM, CHROMIUM_FLAGS, _need_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_GOOD, N_DEFECT, N_LINE = 45, 8, 10
WATCH_JOB = """() => {
  window.seenJob = [];
  new MutationObserver(() => window.seenJob.push(document.getElementById('job-text').textContent))
    .observe(document.getElementById('job-text'), {childList: true, characterData: true,
      subtree: true});
}"""


def test_studio_story_on_bsdata(bsdata, tmp_path, artifacts):
    sync_playwright = _need_browser()
    pytest.importorskip("sqlalchemy")
    from padim.lifecycle.audit import read_events
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.feedback import FeedbackBook
    from padim.lifecycle.registry import Registry
    from padim.lifecycle.tokens import TokenStore
    from padim.lifecycle.workshop import Workshop

    where = tmp_path / "catalogue"
    catalogue = open_catalogue(where)
    engineer = TokenStore(catalogue).create("ana", "engineer", actor="root")
    goods = sorted((bsdata / "train" / "good").iterdir())[:N_GOOD]
    pitted = sorted((bsdata / "test" / "pitting").iterdir())[:N_DEFECT]
    line_good = sorted((bsdata / "test" / "good").iterdir())[:N_LINE]
    args = ["--studio", "--catalogue", str(where)]
    with serving(args, tmp_path / "serve.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            dialogs: list[str] = []

            def answer(dialog) -> None:
                dialogs.append(f"{dialog.type}: {dialog.message}")
                if dialog.type == "prompt" and "token" in dialog.message:
                    dialog.accept(engineer)
                elif dialog.type == "prompt" and "product" in dialog.message:
                    dialog.accept("ball_screw")
                elif dialog.type == "prompt":
                    dialog.accept("accepted by QA in the test")
                else:
                    dialog.accept()

            page.on("dialog", answer)
            page.goto(url + "/studio")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)

            # 1. a product, its good images, pitted ones, a mask drawn on the page
            page.click("[data-testid=new-product]")
            page.wait_for_selector(
                "[data-testid=product-picker] option[value=ball_screw]", state="attached"
            )
            page.set_input_files("[data-testid=files]", [str(x) for x in goods])
            page.wait_for_function(
                "() => document.querySelector('[data-testid=image-summary]').dataset.goodTrain"
                " > 0 && document.querySelectorAll('[data-testid=grid] figure').length"
                f" === {N_GOOD}",
                timeout=60_000,
            )
            page.select_option("[data-testid=kind]", "defect")
            page.fill("[data-testid=defect-type]", "pitting")
            page.set_input_files("[data-testid=files]", [str(x) for x in pitted])
            page.wait_for_function(
                "() => document.querySelector('[data-testid=image-summary]').dataset.defects"
                f" === '{N_DEFECT}'",
                timeout=60_000,
            )
            page.wait_for_selector("[data-testid=near-duplicates]:not(:empty)")
            page.locator("[data-testid=draw-mask]").first.click()
            canvas = page.locator("[data-testid=mask-canvas]")
            canvas.wait_for()
            box = canvas.bounding_box()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.5)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.55, steps=8)
            page.mouse.up()
            page.click("[data-testid=mask-save]")
            page.wait_for_selector("[data-testid=mask-dialog]:not([open])", state="attached")
            page.wait_for_function(
                "() => document.querySelector('dd')?.parentElement"
                ".textContent.includes('1 with a mask')"
            )
            page.wait_for_function(
                "() => [...document.querySelectorAll('[data-testid=grid] img')]"
                ".every((i) => i.complete && i.naturalWidth > 0)"
            )
            page.screenshot(path=str(artifacts / "studio-images.png"))

            # 2. the cost first, then training with live progress
            page.click("[data-testid=tab-train]")
            page.click("[data-testid=propose]")
            page.wait_for_selector("[data-testid=proposal] tbody tr", timeout=60_000)
            assert "≈" in page.locator("[data-testid=proposal] tbody tr").first.inner_text()
            page.evaluate(WATCH_JOB)
            page.click("[data-testid=train]")
            page.wait_for_selector("[data-testid=job][data-state=done]", timeout=300_000)
            seen = page.evaluate("() => window.seenJob")
            page.screenshot(path=str(artifacts / "studio-train.png"))

            # 3. the evaluation; a threshold dragged on the histogram, made a version
            page.click("[data-testid=tab-judge]")
            page.wait_for_selector(".judged-row", timeout=30_000)
            rows = page.locator(".judged-row").count()
            page.locator(".judged-row").first.click()
            page.wait_for_selector("[data-testid=look] .heat img", timeout=60_000)
            own = float(page.input_value("[data-testid=threshold-value]"))
            hist = page.locator("[data-testid=histogram]").bounding_box()
            page.mouse.move(hist["x"] + hist["width"] * 0.5, hist["y"] + 40)
            page.mouse.down()
            page.mouse.move(hist["x"] + hist["width"] * 0.15, hist["y"] + 40, steps=6)
            page.mouse.up()
            # the service's count at the dragged threshold is the page's list of false alarms
            page.wait_for_function(
                "() => { const r = document.querySelector('[data-testid=rates]').dataset;"
                " return Number(r.threshold) === judging.threshold && Number(r.falseAlarms)"
                " === document.querySelectorAll('.judged-row[data-mistake=\"FALSE ALARM\"]')"
                ".length; }",
                timeout=10_000,
            )
            chosen = float(page.input_value("[data-testid=threshold-value]"))
            assert int(page.get_attribute("[data-testid=rates]", "data-false-alarms")) > 0
            page.screenshot(path=str(artifacts / "studio-judge.png"))
            page.click("[data-testid=set-point]")
            page.wait_for_function(
                "() => document.querySelector('[data-testid=judge-version]').value === '2'",
                timeout=60_000,
            )

            # 4. promote it; the line sees production v2
            page.click("[data-testid=tab-versions]")
            page.locator("tr[data-version='2'] [data-testid=promote]").click()
            page.wait_for_function(
                "() => document.querySelector(\"tr[data-version='2']\")?.textContent"
                ".includes('production')"
            )

            # 5. parts through the line view, a false alarm marked
            page.click("[data-testid=tab-line]")
            page.set_input_files("[data-testid=line-files]", [str(x) for x in line_good])
            page.wait_for_function(
                f"() => document.querySelectorAll('[data-testid=record]').length === {N_LINE}",
                timeout=120_000,
            )
            flagged = page.locator("[data-testid=record][data-verdict=anomalous]")
            assert flagged.count() >= 1, "the low threshold flags some good parts"
            flagged.first.locator("button[data-label=false_alarm]").click()
            page.wait_for_selector("[data-testid=record][data-feedback=false_alarm]")
            passed = page.locator("[data-testid=record][data-verdict=good]")
            for i in range(passed.count()):  # their images were not kept: the page has them
                assert passed.nth(i).locator("img[src^=blob]").count() == 1
                assert passed.nth(i).locator("button[data-label=missed_defect]").is_visible()
            page.screenshot(path=str(artifacts / "studio-line.png"))

            # 6. retrain from the feedback, the gate shown, promote, roll back
            page.click("[data-testid=tab-versions]")
            page.click("[data-testid=retrain]")
            page.wait_for_selector("[data-testid=gate][data-passed]", timeout=300_000)
            gate = page.locator("[data-testid=gate]").inner_text()
            page.locator("tr[data-version='3'] [data-testid=promote]").click()
            page.wait_for_function(
                "() => document.querySelector(\"tr[data-version='3']\")?.textContent"
                ".includes('production')"
            )
            page.screenshot(path=str(artifacts / "studio-versions.png"))
            page.click("[data-testid=rollback]")
            page.wait_for_function(
                "() => document.querySelector(\"tr[data-version='2']\")?.textContent"
                ".includes('production')"
            )
        finally:
            browser.close()

    # what the browser did is in the catalogue
    registry = Registry(catalogue)
    assert registry.aliases("ball_screw")["production"] == 2
    assert registry.aliases("ball_screw")["candidate"] == 3
    v2 = registry.version("ball_screw", 2)
    assert v2.parent == 1 and abs(v2.operating_points["studio"] - chosen) < 1e-3
    assert chosen < own  # dragged left of the fitted threshold
    workshop = Workshop(catalogue)
    summary = workshop.summary("ball_screw")
    assert summary["counts"]["defect"] == N_DEFECT and summary["masks"] == 1
    counts = summary["counts"]
    assert counts["good_train"] + counts["good_test"] == N_GOOD
    assert rows == counts["good_test"] + N_DEFECT
    mask_row = next(r for r in workshop.images("ball_screw", "defect") if r["mask"])
    mask = np.asarray(Image.open(workshop.file_of(mask_row["id"], "mask")))
    assert mask.shape == (460, 1130) and 0 < (mask > 0).mean() < 0.2
    assert registry.version("ball_screw", 1).n_train == counts["good_train"]
    assert any(" of " in s and "images" in s for s in seen), seen  # live progress
    assert any("Gaussians" in s for s in seen), seen
    labels = [f["label"] for f in FeedbackBook(catalogue).listing("ball_screw")]
    assert labels == ["false_alarm"]
    assert "Gate for production" in gate
    assert f"of {N_DEFECT}." in gate  # the product's pitted images are labelled defects too
    actions = [e["action"] for e in read_events(catalogue.engine, "ball_screw")]
    for action in ("create_product", "add_images", "draw_mask", "register", "promote", "rollback"):
        assert action in actions, action
    assert sum(d.startswith("confirm") for d in dialogs) >= 5  # train, point, 2 promotes, ...
    for name in ("images", "train", "judge", "line", "versions"):
        assert (artifacts / f"studio-{name}.png").is_file()
