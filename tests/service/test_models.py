"""The multi-model service: a folder of models with their own thresholds, lazy loading with an
LRU bound, and hot reload of a replaced file under load with zero failed requests."""

from __future__ import annotations

import copy
import os
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import texture, with_defect
from fastapi.testclient import TestClient
from test_app import assert_error, png, post_file

from padim.service.app import create_app
from padim.service.server import model_sources
from padim.service.settings import ServeSettings


def save_with_threshold(model, factor: float, path: Path) -> float:
    """`model` with its threshold scaled by `factor`, written atomically to `path`."""
    other = copy.deepcopy(model)
    threshold = float(model.threshold_) * factor
    other.set_threshold(threshold, name="line")
    tmp = path.with_name(f".{path.name}.tmp")
    other.save(tmp)
    os.replace(tmp, path)
    return threshold


@pytest.fixture()
def folder(fitted, tmp_path) -> tuple[Path, dict[str, float]]:
    """Two models of the same fit with different thresholds, as a plant would keep them."""
    root = tmp_path / "models"
    root.mkdir()
    thresholds = {
        "cap": save_with_threshold(fitted, 1.0, root / "cap.safetensors"),
        "label": save_with_threshold(fitted, 3.0, root / "label.safetensors"),
    }
    (root / "notes.txt").write_text("not a model")
    return root, thresholds


@pytest.fixture(scope="module")
def image() -> bytes:
    rng = np.random.default_rng(7)
    return png(with_defect(texture(rng), rng)[0])


def serve(folder: Path, **settings) -> TestClient:
    sources = model_sources([folder], "cpu", None, load_now=True)
    return TestClient(create_app(sources, ServeSettings(**settings)))


def test_two_models_with_their_own_thresholds(folder, image):
    root, thresholds = folder
    with serve(root) as c:
        listed = c.get("/v1/models").json()
        assert [m["name"] for m in listed["models"]] == ["cap", "label"]
        assert not any(m["loaded"] for m in listed["models"])  # lazily loaded
        scores = {}
        for name, threshold in thresholds.items():
            body = post_file(c, image, path=f"/v1/models/{name}/predict").json()
            assert body["model"] == name and body["threshold"] == pytest.approx(threshold)
            assert (body["normalised_score"] > 0.5) == body["is_anomalous"]
            scores[name] = body["score"]
            info = c.get(f"/v1/models/{name}").json()
            assert info["name"] == name and info["threshold"] == pytest.approx(threshold)
            assert "line" in info["operating_points"]
        assert scores["cap"] == pytest.approx(scores["label"], rel=1e-6)  # same fit
        batch = c.post(
            "/v1/models/label/predict/batch",
            files=[("files", ("a.png", image, "image/png")), ("files", ("b.png", b"x", "a/b"))],
        ).json()
        assert batch["model"] == "label" and batch["count"] == 2 and batch["errors"] == 1
        # one model per product: the single-model routes refuse to guess
        assert_error(post_file(c, image), 409, "several_models", "2 models .*cap, label")
        assert_error(c.get("/v1/model"), 409, "several_models", "/v1/models/")
        assert_error(
            post_file(c, image, path="/v1/models/nope/predict"), 404, "unknown_model", "cap"
        )
        res = post_file(c, image, path="/v1/models/label/predict", operating_point="line")
        assert res.json()["threshold"] == pytest.approx(thresholds["label"])
        text = c.get("/metrics").text
        for name in thresholds:
            assert re.search(rf'padim_images_scored_total\{{model="{name}",verdict=', text)
            assert f'padim_model_loads_total{{model="{name}",outcome="loaded"}} 1.0' in text
        health = c.get("/v1/health").json()
        assert health["models"] == 2 and sorted(health["loaded"]) == ["cap", "label"]


def test_least_recently_used_model_is_unloaded(folder, image):
    root, _ = folder
    with serve(root, max_loaded=1) as c:
        for name in ("cap", "label", "cap"):
            res = post_file(c, image, path=f"/v1/models/{name}/predict")
            assert res.status_code == 200 and res.json()["model"] == name
            loaded = [m["name"] for m in c.get("/v1/models").json()["models"] if m["loaded"]]
            assert loaded == [name]
        text = c.get("/metrics").text
        assert 'padim_model_loads_total{model="cap",outcome="loaded"} 2.0' in text
        assert "padim_models_loaded 1.0" in text


def test_replaced_file_is_swapped_under_load_with_no_failed_request(fitted, folder, image):
    """Four clients post without pause while cap.safetensors is replaced twice (atomically),
    once by a damaged file: every request succeeds, the new threshold is served after the
    swap, and the damaged file is reported while the previous version goes on serving."""
    root, thresholds = folder
    statuses: list[int] = []
    served: list[float] = []
    stop = threading.Event()
    with serve(root, reload_s=0.05) as c:

        def client() -> None:
            while not stop.is_set():
                res = post_file(c, image, path="/v1/models/cap/predict")
                statuses.append(res.status_code)
                if res.status_code == 200:
                    served.append(res.json()["threshold"])

        workers = [threading.Thread(target=client) for _ in range(4)]
        for w in workers:
            w.start()
        try:
            deadline = time.monotonic() + 60
            while len(statuses) < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
            new = save_with_threshold(fitted, 2.0, root / "cap.safetensors")
            while not (served and served[-1] == pytest.approx(new)):
                assert time.monotonic() < deadline, "the replaced model was never served"
                time.sleep(0.02)
            swapped_at = len(statuses)

            bad = root / ".cap.tmp"
            bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{damaged")
            os.replace(bad, root / "cap.safetensors")
            while not c.get("/v1/models").json()["models"][0]["error"]:
                assert time.monotonic() < deadline, "the damaged file was never reported"
                time.sleep(0.02)
            while len(statuses) < swapped_at + 20:
                time.sleep(0.02)
        finally:
            stop.set()
            for w in workers:
                w.join(30)
        listed = c.get("/v1/models").json()["models"][0]
    assert statuses and set(statuses) == {200}, f"{len(statuses)} requests: {set(statuses)}"
    assert served[0] == pytest.approx(thresholds["cap"]) and served[-1] == pytest.approx(new)
    assert listed["reloads"] == 1 and "cannot be loaded" in listed["error"]
    assert listed["loaded"] and listed["threshold"] == pytest.approx(new)


def test_files_added_and_removed_while_serving(fitted, folder, image):
    root, _ = folder
    with serve(root, reload_s=0.05) as c:
        assert post_file(c, image, path="/v1/models/cap/predict").status_code == 200
        threshold = save_with_threshold(fitted, 5.0, root / "seal.safetensors")
        res = post_file(c, image, path="/v1/models/seal/predict")  # served at once
        assert res.status_code == 200 and res.json()["threshold"] == pytest.approx(threshold)
        (root / "cap.safetensors").unlink()
        deadline = time.monotonic() + 30
        while "cap" in [m["name"] for m in c.get("/v1/models").json()["models"]]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert_error(
            post_file(c, image, path="/v1/models/cap/predict"), 404, "unknown_model", "seal"
        )


def test_a_model_that_cannot_load_is_a_503_and_the_others_serve(folder, image):
    root, _ = folder
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with serve(root) as c:
        for _ in range(2):  # the second answer comes from memory, not a second load
            res = post_file(c, image, path="/v1/models/broken/predict")
            assert_error(res, 503, "model_unavailable", "broken.*cannot be loaded")
        assert post_file(c, image, path="/v1/models/cap/predict").status_code == 200
        text = c.get("/metrics").text
        assert 'padim_model_loads_total{model="broken",outcome="failed"} 1.0' in text


def test_serve_command_checks_its_models(folder, tmp_path, capsys):
    from padim.cli import main

    root, _ = folder
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["serve", str(empty)]) == 1
    assert "no model files in" in capsys.readouterr().err
    assert main(["serve", str(root), str(root / "cap.safetensors")]) == 1
    assert "not both" in capsys.readouterr().err
    assert main(["serve", str(root / "cap.safetensors"), str(tmp_path / "cap.safetensors")]) == 1
    assert "model file not found" in capsys.readouterr().err
    (tmp_path / "cap.safetensors").write_bytes((root / "cap.safetensors").read_bytes())
    assert main(["serve", str(root / "cap.safetensors"), str(tmp_path / "cap.safetensors")]) == 1
    assert "is used by" in capsys.readouterr().err


def test_unusable_names_are_logged_once_and_unknown_names_are_cheap(folder, image, caplog):
    """2,000 unusable names logged 9 lines each per rescan, every unknown-model request rescanned
    the folder and answered with every name (24 kB)."""
    root, _ = folder
    for i in range(300):
        (root / f"bad name {i}.onnx").write_bytes(b"x")
        (root / f"m{i:03d}.onnx").symlink_to(root / "cap.safetensors")  # many servable names
    caplog.set_level("WARNING", logger="padim.service")
    with serve(root, reload_s=0) as c:
        for _ in range(5):
            c.app.state.service.pool.rescan()
        started = time.perf_counter()
        answers = [post_file(c, image, path=f"/v1/models/nope{i}/predict") for i in range(50)]
        seconds = time.perf_counter() - started
    skipped = [r for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 300  # once per file, not once per scan
    assert all(a.status_code == 404 for a in answers)
    assert len(answers[0].content) < 2000 and "more (GET /v1/models)" in answers[0].text
    assert seconds < 5


def test_links_leading_outside_the_folder_are_not_served(folder, fitted, tmp_path, image):
    root, _ = folder
    elsewhere = tmp_path / "private"
    elsewhere.mkdir()
    save_with_threshold(fitted, 1.0, elsewhere / "secret.safetensors")
    (root / "secret.safetensors").symlink_to(elsewhere / "secret.safetensors")
    (root / "alias.safetensors").symlink_to(root / "cap.safetensors")  # inside: served
    with serve(root) as c:
        names = [m["name"] for m in c.get("/v1/models").json()["models"]]
    assert "secret" not in names and "alias" in names


def test_errors_name_files_not_server_folders(folder, image):
    root, _ = folder
    (root / "broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with serve(root) as c:
        res = post_file(c, image, path="/v1/models/broken/predict")
        listing = c.get("/v1/models").text
    assert res.status_code == 503 and "broken.safetensors" in res.text
    assert str(root) not in res.text and str(root) not in listing


def test_reload_interval_must_be_sane(folder, capsys):
    from padim.cli import main

    root, _ = folder
    for bad in ("1e-9", "nan", "inf", "-1"):
        assert main(["serve", str(root), "--reload-interval", bad]) == 1, bad
        assert "--reload-interval" in capsys.readouterr().err


def test_an_unloaded_model_is_freed_at_once(folder, image):
    """Retired models waited in reference cycles for the garbage collector: with
    --max-loaded 1, two alternating 130 MB models grew a server to 3.7 GB."""
    import gc
    import weakref

    from padim.deploy import scorers

    root, _ = folder
    made: list[weakref.ref] = []
    original = scorers.TorchScorer.__init__

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        made.append(weakref.ref(self))

    gc.disable()  # only the service's own collection may free them
    try:
        scorers.TorchScorer.__init__ = tracked
        with serve(root, max_loaded=1) as c:
            for i in range(6):
                name = ("cap", "label")[i % 2]
                assert post_file(c, image, path=f"/v1/models/{name}/predict").status_code == 200
            deadline = time.monotonic() + 10
            while sum(r() is not None for r in made) > 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert sum(r() is not None for r in made) == 1  # the loaded one only
    finally:
        scorers.TorchScorer.__init__ = original
        gc.enable()
