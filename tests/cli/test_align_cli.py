"""Alignment through the front ends: `padim fit --align`, `padim predict` (verdict and
transform columns), the REST service and `padim watch`; an image that cannot be aligned is a
"cannot_align" verdict everywhere, never good."""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest

pytest.importorskip("cv2")

from conftest import moved, part, save
from PIL import Image

from padim.cli import main

SIZE = (128, 96)


@pytest.fixture(scope="module")
def aligned_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("aligned")
    rng = np.random.default_rng(1)
    for i in range(16):
        angle, dx, dy = rng.uniform(-6, 6), *rng.uniform(-5, 5, size=2)
        save(root / "train" / f"{i:02d}.png", moved(part(SIZE, seed=i), angle, 1.0, (dx, dy))[0])
    reference = save(root / "reference.png", part(SIZE, seed=40))
    model = root / "m.safetensors"
    args = ["fit", str(root / "train"), "--out", str(model), "--size", "128x96", "--crop", "none"]
    assert main([*args, "--align", "rigid", "--align-reference", str(reference), "--quiet"]) == 0
    return model


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("photos")
    good = save(root / "good.png", moved(part(SIZE, seed=41), 4.0, 1.0, (3.0, -2.0))[0])
    noise = np.random.default_rng(2).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    return good, save(root / "noise.png", noise)


def test_predict_reports_verdicts_and_transforms(aligned_file, photos, tmp_path):
    out = tmp_path / "pred"
    assert main(["predict", str(aligned_file), *map(str, photos), "--out", str(out)]) == 0
    rows = {r["path"].split("/")[-1]: r for r in csv.DictReader((out / "results.csv").open())}
    assert rows["good.png"]["verdict"] == "good" and rows["good.png"]["label"] == "0"
    assert abs(float(rows["good.png"]["align_angle"]) - 4.0) < 0.5
    assert rows["noise.png"]["verdict"] == "cannot_align" and rows["noise.png"]["label"] == "1"
    assert "quality" in rows["noise.png"]["reason"]
    records = json.loads((out / "results.json").read_text())["results"]
    assert {r["alignment"]["aligned"] for r in records} == {True, False}


def test_the_service_shows_the_alignment(aligned_file, photos):
    from fastapi.testclient import TestClient

    from padim.deploy.scorers import load_scorer
    from padim.service.app import create_app
    from padim.service.settings import ServeSettings

    with TestClient(create_app(load_scorer(aligned_file), ServeSettings())) as client:
        bodies = []
        for path in photos:
            files = {"file": (path.name, path.read_bytes(), "image/png")}
            res = client.post("/v1/predict?include=overlay,input", files=files)
            assert res.status_code == 200
            bodies.append(res.json())
    good, noise = bodies
    assert good["verdict"] == "good" and good["alignment"]["aligned"]
    assert abs(good["alignment"]["angle"] - 4.0) < 0.5
    assert noise["verdict"] == "cannot_align" and noise["is_anomalous"] and noise["reason"]
    overlay = Image.open(io.BytesIO(base64.b64decode(good["pictures"]["overlay"])))
    assert overlay.size == SIZE  # on the photo, not on the reference


def test_watch_sends_frames_that_cannot_be_aligned(aligned_file, photos, tmp_path):
    pytest.importorskip("av")
    from padim.data.video import write_video

    good, noise = (np.asarray(Image.open(p).convert("RGB")) for p in photos)
    clip = tmp_path / "clip.mp4"
    write_video(clip, [good] * 4 + [noise] * 8 + [good] * 4, fps=20)
    out = tmp_path / "events"
    assert main(["watch", str(aligned_file), str(clip), "--out", str(out)]) == 0
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert events and {e["verdict"] for e in events} == {"cannot_align"}
    assert {e["frame"] for e in events} <= set(range(4, 12))
    assert not any(e["alignment"]["aligned"] for e in events)
