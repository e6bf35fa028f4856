"""The web page in a real browser: `padim serve` on 127.0.0.1, Debian's Chromium driven by
Playwright. Skipped when Chromium or Playwright is missing, unless PADIM_REQUIRE_BROWSER=1
(as .ci/run sets, after installing the chromium package)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import serving

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("PADIM_CHROMIUM", "/usr/bin/chromium")
# The closed network refuses Chromium's background connections; these keep it quiet.
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def _need_browser():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed (pip install playwright)"
    if reason is None and not shutil.which(CHROMIUM):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason:
        if os.environ.get("PADIM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + " (PADIM_REQUIRE_BROWSER=1)")
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def models(bottle_model_file, tmp_path_factory) -> Path:
    """A folder of two models: the bottle model and a lenient copy (threshold x 20)."""
    from padim import Padim

    root = tmp_path_factory.mktemp("models")
    shutil.copy(bottle_model_file, root / "bottle.safetensors")
    lenient = Padim.load(bottle_model_file)
    lenient.set_threshold(float(lenient.threshold_) * 20, name="lenient")
    lenient.save(root / "bottle-lenient.safetensors")
    return root


@pytest.fixture(scope="module")
def server(models, bottle, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with serving([str(models), "--examples", str(bottle / "test")], log) as url:
        yield url


def test_page_scores_an_uploaded_bottle_image(server, bottle, artifacts: Path):
    sync_playwright = _need_browser()
    defect = bottle / "test" / "broken_large" / "000.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            failed: list[str] = []
            page.on("requestfailed", lambda r: failed.append(r.url))
            external: list[str] = []
            page.on(
                "request",
                lambda r: (
                    None
                    if r.url.startswith(server) or r.url.startswith("data:")
                    else external.append(r.url)
                ),
            )
            page.goto(server + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            assert page.locator("[data-testid=example]").count() >= 3

            # two models: none is chosen for the user (the first alphabetically was), and
            # nothing is scored until one is
            assert page.locator("[data-testid=model-picker]").input_value() == ""
            page.set_input_files("[data-testid=file-input]", str(defect))
            assert page.locator("[data-testid=result]").count() == 0
            page.select_option("[data-testid=model-picker]", "bottle")
            page.wait_for_function(
                "() => document.querySelector('[data-testid=model]').textContent"
                ".includes('threshold')"
            )
            page.set_input_files("[data-testid=file-input]", str(defect))
            card = page.locator("[data-testid=result]").first
            card.wait_for(timeout=60_000)
            verdict = card.locator("[data-testid=verdict]")
            assert verdict.inner_text() == "ANOMALOUS"
            assert "score" in card.locator("[data-testid=score]").inner_text()
            heat_pixels = page.evaluate("""() => {
                const c = document.querySelector('[data-testid=result] canvas.overlay');
                const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                let lit = 0;
                for (let i = 0; i < d.length; i += 4) if (d[i] + d[i + 1] + d[i + 2] > 30) lit++;
                return [lit, c.width * c.height];
            }""")
            assert heat_pixels[1] == 128 * 128 and heat_pixels[0] > 0.5 * heat_pixels[1]
            masked = int(card.get_attribute("data-mask-pixels"))
            assert 0 < masked < 128 * 128
            assert int(card.get_attribute("data-regions")) >= 1  # boxed on the overlay
            assert "normalised" in card.locator("[data-testid=score]").inner_text()

            # the slider re-draws the mask and verdict in place, with no new request
            page.evaluate("""() => {
                const s = document.querySelector('[data-testid=threshold]');
                s.value = s.max; s.dispatchEvent(new Event('input'));
            }""")
            assert int(card.get_attribute("data-mask-pixels")) < masked
            assert card.get_attribute("data-regions") is not None
            page.click("#reset")
            assert int(card.get_attribute("data-mask-pixels")) == masked

            page.locator("[data-testid=example]", has_text="good/").first.click()
            page.locator("[data-testid=result]").nth(1).wait_for(timeout=60_000)

            # drag and drop: a file dropped on the drop zone is scored like a picked one
            page.evaluate("""async () => {
                const url = document.querySelector('[data-testid=example] img').src;
                const blob = await (await fetch(url)).blob();
                const dt = new DataTransfer();
                dt.items.add(new File([blob], 'dropped.png', { type: blob.type }));
                const zone = document.querySelector('[data-testid=drop]');
                zone.dispatchEvent(new DragEvent('drop', { dataTransfer: dt, bubbles: true }));
            }""")
            dropped = page.locator("[data-testid=result]").nth(2)
            dropped.wait_for(timeout=60_000)
            assert page.locator("[data-testid=result] .name").first.inner_text() == "dropped.png"
            page.screenshot(path=str(artifacts / "web-page.png"), full_page=True)
            assert page.locator("[data-testid=result]").count() == 3

            # the model picker: the lenient model calls the same defect good; the first
            # card keeps the verdict of the model that scored it
            options = page.locator("[data-testid=model-picker] option").all_inner_texts()
            assert options[1:] == ["bottle", "bottle-lenient"]
            page.select_option("[data-testid=model-picker]", "bottle-lenient")
            page.wait_for_function(
                "() => document.querySelector('[data-testid=model]').textContent"
                ".includes('threshold')"
            )
            page.set_input_files("[data-testid=file-input]", str(defect))
            page.locator("[data-testid=result]").nth(3).wait_for(timeout=60_000)
            latest = page.locator("[data-testid=result]").first
            assert latest.get_attribute("data-model") == "bottle-lenient"
            assert latest.locator("[data-testid=verdict]").inner_text() == "GOOD"
            first_defect = page.locator("[data-testid=result]").nth(3)
            assert first_defect.get_attribute("data-model") == "bottle"
            assert first_defect.locator("[data-testid=verdict]").inner_text() == "ANOMALOUS"
            assert not failed, failed
            assert not external, f"the page reached outside the service: {external}"
        finally:
            browser.close()


def test_page_shows_the_alignment_and_never_calls_an_unaligned_part_good(tmp_path, artifacts):
    """A model that aligns: the card shows the aligned model input and the transform; a photo
    that cannot be aligned says CANNOT ALIGN whatever the threshold slider says."""
    sync_playwright = _need_browser()
    pytest.importorskip("cv2")
    from conftest import moved, part, save, serving

    from padim import Padim

    size = (128, 96)
    rng = np.random.default_rng(3)
    train = [
        moved(part(size, seed=i), rng.uniform(-6, 6), 1.0, tuple(rng.uniform(-4, 4, 2)))[0]
        for i in range(12)
    ]
    model = Padim(size=size, crop=None, align="rigid", align_reference=part(size, seed=30))
    model.fit(train).save(tmp_path / "part.safetensors")
    good = save(tmp_path / "good.png", moved(part(size, seed=31), 5.0, 1.0, (3.0, -2.0))[0])
    noise = np.random.default_rng(4).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    bad = save(tmp_path / "noise.png", noise)
    served = serving([str(tmp_path / "part.safetensors")], tmp_path / "serve.log")
    with served as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            cards = page.locator("[data-testid=result]")
            for i, photo in enumerate((good, bad)):
                page.set_input_files("[data-testid=file-input]", str(photo))
                cards.nth(i).wait_for(timeout=60_000)
            unaligned, aligned = cards.nth(0), cards.nth(1)  # newest first
            line = aligned.locator("[data-testid=alignment]").inner_text()
            assert "aligned onto the reference" in line and "angle 5." in line
            assert aligned.locator("[data-testid=verdict]").inner_text() == "GOOD"
            assert unaligned.locator("[data-testid=verdict]").inner_text() == "CANNOT ALIGN"
            assert "CANNOT ALIGN" in unaligned.locator("[data-testid=alignment]").inner_text()
            page.evaluate("""() => {
                    const s = document.querySelector('[data-testid=threshold]');
                    s.value = s.max; s.dispatchEvent(new Event('input'));
                }""")  # the most lenient threshold: still not good
            assert unaligned.get_attribute("data-verdict") == "cannot_align"
            page.screenshot(path=str(artifacts / "web-page-aligned.png"), full_page=True)
        finally:
            browser.close()


def test_page_asks_for_a_token_and_sends_feedback(model_file, tmp_path, artifacts):
    """A service with tokens and records: the page asks for the operator's token once, scores,
    and the operator's 'Confirm defect' and 'Missed defect' land in the catalogue with the
    token holder as author (the missed one with its image, which good verdicts do not keep)."""
    sync_playwright = _need_browser()
    pytest.importorskip("sqlalchemy")
    from conftest import save, texture, with_defect

    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.feedback import FeedbackBook
    from padim.lifecycle.registry import Registry
    from padim.lifecycle.tokens import TokenStore

    where = tmp_path / "catalogue"
    catalogue = open_catalogue(where)
    Registry(catalogue).register("widget", model_file, actor="ana")
    Registry(catalogue).promote("widget", 1, actor="ana")
    token = TokenStore(catalogue).create("line3", "operator", actor="root")
    rng = np.random.default_rng(8)
    good = save(tmp_path / "good.png", texture(rng))
    bad = save(tmp_path / "bad.png", with_defect(texture(rng), rng)[0])
    args = ["--product", "widget", "--record", "--catalogue", str(where), "--keep-good", "0"]
    with serving(args, tmp_path / "serve.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            asked: list[str] = []
            page.on("dialog", lambda d: (asked.append(d.message), d.accept(token)))
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready=true]", timeout=30_000)
            cards = page.locator("[data-testid=result]")
            for i, photo in enumerate((bad, good)):
                page.set_input_files("[data-testid=file-input]", str(photo))
                cards.nth(i).wait_for(timeout=60_000)
            on_good, on_bad = cards.nth(0), cards.nth(1)  # newest first
            assert on_bad.locator("[data-testid=verdict]").inner_text() == "ANOMALOUS"
            assert on_good.locator("[data-testid=verdict]").inner_text() == "GOOD"
            assert on_good.locator("[data-testid=confirm-defect]").is_hidden()
            on_bad.locator("[data-testid=confirm-defect]").click()
            on_good.locator("[data-testid=missed-defect]").click()
            for card in (on_bad, on_good):
                card.locator(".feedback[data-saved]").wait_for(timeout=15_000)
            assert "by line3 (api)" in on_good.locator("[data-testid=feedback-state]").inner_text()
            page.screenshot(path=str(artifacts / "page-feedback.png"), full_page=True)
        finally:
            browser.close()
    assert len(asked) == 1 and "token" in asked[0]  # asked once, then kept for the tab
    given = FeedbackBook(catalogue).listing("widget")
    assert [(f["label"], f["author"]) for f in given] == [
        ("missed_defect", "line3 (api)"),
        ("defect", "line3 (api)"),
    ]
    assert all(x.image.is_file() for x in FeedbackBook(catalogue).labelled("widget"))
