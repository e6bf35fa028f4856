"""The studio in real headless Chromium: an engineer's token asked once; the line's results in
the review queue with their kept images; false alarms and defects marked; retrain shows the
gate; promote (with an override if the gate failed) and roll back, each confirmed first and
audited. Screenshot: test-artifacts/studio.png."""

from __future__ import annotations

import copy
import io

import httpx
import numpy as np
import pytest
from conftest import SIZE, serving, texture, with_defect
from PIL import Image
from test_web import CHROMIUM, CHROMIUM_FLAGS, _need_browser

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_studio_review_retrain_promote_roll_back(category, tmp_path, artifacts):
    sync_playwright = _need_browser()
    pytest.importorskip("sqlalchemy")
    from padim import Padim
    from padim.lifecycle.audit import read_events
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.registry import Registry
    from padim.lifecycle.tokens import TokenStore

    strict = Padim(size=SIZE, crop=None, batch_size=5, device="cpu", statistics="keep")
    strict.fit(category)
    strict = copy.deepcopy(strict)
    strict.set_threshold(float(strict.threshold_) * 0.5, name="strict")  # flags good parts too
    path = strict.save(tmp_path / "widget.safetensors")
    where = tmp_path / "catalogue"
    catalogue = open_catalogue(where)
    registry = Registry(catalogue)
    registry.register("widget", path, actor="ana", note="<b>first</b> model")
    registry.promote("widget", 1, actor="ana")
    tokens = TokenStore(catalogue)
    operator = tokens.create("line-pc", "operator", actor="root")
    engineer = tokens.create("ana", "engineer", actor="root")
    rng = np.random.default_rng(4)
    goods = [png(texture(rng)) for _ in range(5)]
    defects = [png(with_defect(texture(rng), rng)[0]) for _ in range(3)]
    args = ["--product", "widget", "--record", "--catalogue", str(where), "--keep-good", "1"]
    with serving(args, tmp_path / "serve.log") as url, sync_playwright() as p:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}) as op:
            verdicts = [
                op.post("/v1/predict", files={"file": (f"{i}.png", data)}).json()["verdict"]
                for i, data in enumerate(goods + defects)
            ]
            # and a defect the line let through (scored at a threshold nothing passes)
            missed = {"file": ("missed.png", defects[0])}
            res = op.post("/v1/predict", files=missed, params={"threshold": 1e9})
            assert res.json()["verdict"] == "good"
        assert verdicts.count("anomalous") >= 5, verdicts  # a strict line: false alarms
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            dialogs: list[str] = []

            def answer(dialog) -> None:
                dialogs.append(dialog.type)
                if dialog.type == "prompt" and "token" in dialog.message:
                    dialog.accept(engineer)
                elif dialog.type == "prompt":
                    dialog.accept("accepted by QA in the test")
                else:
                    dialog.accept()

            page.on("dialog", answer)
            page.goto(url + "/studio#widget/versions")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert page.locator("[data-testid=versions] tbody tr").count() == 1
            note = page.locator("[data-testid=versions] td.note").first.inner_text()
            assert note == "<b>first</b> model"  # shown as text, never as HTML
            page.click("[data-testid=tab-line]")
            records = page.locator("[data-testid=record]")
            records.nth(8).wait_for(timeout=30_000)
            assert records.count() == 9
            page.wait_for_function(
                "() => document.querySelectorAll('[data-testid=record] img[src^=blob]').length"
                " === 9"
            )
            newest = records.nth(0)  # the missed defect: judged good, its image kept
            assert newest.locator("button[data-label=false_alarm]").is_hidden()
            newest.locator("button[data-label=missed_defect]").click()
            page.wait_for_selector("[data-testid=record][data-feedback=missed_defect]")
            # the five good parts are the oldest records (the queue shows the newest first)
            for i in range(4, 9):
                item = records.nth(i)
                if item.get_attribute("data-verdict") != "good":
                    item.locator("button[data-label=false_alarm]").click()
                    page.wait_for_selector(
                        f"[data-record='{item.get_attribute('data-record')}'][data-feedback]"
                    )
            for i in range(1, 4):
                assert records.nth(i).locator("button[data-label=missed_defect]").is_hidden()
                records.nth(i).locator("button[data-label=defect]").click()
            page.wait_for_function(
                "() => document.querySelectorAll('[data-feedback=defect]').length === 3"
            )
            page.click("[data-testid=tab-versions]")
            page.click("[data-testid=retrain]")
            page.wait_for_selector("[data-testid=gate][data-passed]", timeout=120_000)
            assert page.locator("[data-testid=versions] tbody tr").count() == 2
            page.locator("tr[data-version='2'] [data-testid=promote]").click()
            page.wait_for_function(
                "() => document.querySelector(\"tr[data-version='2']\").textContent"
                ".includes('production')"
            )
            page.screenshot(path=str(artifacts / "studio.png"))
            page.click("[data-testid=rollback]")
            page.wait_for_function(
                "() => document.querySelector(\"tr[data-version='1']\").textContent"
                ".includes('production')"
            )
        finally:
            browser.close()
    assert dialogs.count("prompt") >= 1 and dialogs.count("confirm") >= 3
    actions = [(e["actor"], e["action"]) for e in read_events(catalogue.engine, "widget")]
    assert ("ana (api)", "register") in actions and ("ana (api)", "rollback") in actions
    assert registry.aliases("widget") == {"candidate": 2, "production": 1}
    labels = {
        f["label"]
        for f in __import__("padim.lifecycle.feedback", fromlist=["x"])
        .FeedbackBook(catalogue)
        .listing("widget")
    }
    assert labels == {"false_alarm", "defect", "missed_defect"}
    assert (artifacts / "studio.png").is_file()
