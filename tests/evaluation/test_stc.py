"""The paper's video protocol on a synthetic ShanghaiTech Campus (STC) layout: moving textures
as normal activity, objects moving through the test videos as anomalies. Fit on the training
videos (frames decoded from MP4), evaluate frame-level and pixel AUROC, and benchmark by scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, save, texture

pytest.importorskip("av")

from padim.cli import main
from padim.data.datasets import is_stc, stc_test_set, stc_training_frames
from padim.data.video import FrameRef, write_video

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu", "--batch-size", "8"]


def scene_frames(rng: np.random.Generator, n: int, start: int) -> list[np.ndarray]:
    """A texture drifting one pixel per frame to the right (a camera's moving scene)."""
    wide = texture(rng, SIZE * 3)[:SIZE]
    return [np.roll(wide, start + t, axis=1)[:, :SIZE].copy() for t in range(n)]


def with_object(frames: list[np.ndarray], first: int, last: int):
    """A bright object crossing the scene in frames first..last-1; frame labels and masks."""
    labels = np.zeros(len(frames), np.uint8)
    masks = np.zeros((len(frames), SIZE, SIZE), np.uint8)
    out = [f.copy() for f in frames]
    for t in range(first, last):
        x = 4 + 5 * (t - first)
        out[t][20:32, x : x + 12] = (250, 60, 40)
        masks[t, 20:32, x : x + 12] = 1
        labels[t] = 1
    return out, labels, masks


def make_stc(root: Path) -> Path:
    """Two scenes: 01 (two training videos, two test videos) and 02 (one of each)."""
    rng = np.random.default_rng(11)
    tests = {"01": ["01_0001", "01_0002"], "02": ["02_0001"]}
    for scene, videos in tests.items():
        for k in range(1 if scene == "02" else 2):
            frames = scene_frames(rng, 30, 7 * k)
            video = root / "training" / "videos" / f"{scene}_{k + 1:03d}.mp4"
            write_video(video, frames, 10, quality=0)
        for j, video in enumerate(videos):
            frames, labels, masks = with_object(scene_frames(rng, 24, 50 + 9 * j), 10, 18)
            for t, frame in enumerate(frames):
                save(root / "testing" / "frames" / video / f"{t:03d}.png", frame)
            for folder, array in (("test_frame_mask", labels), ("test_pixel_mask", masks)):
                (root / "testing" / folder).mkdir(parents=True, exist_ok=True)
                np.save(root / "testing" / folder / f"{video}.npy", array)
    return root


@pytest.fixture(scope="module")
def stc(tmp_path_factory) -> Path:
    return make_stc(tmp_path_factory.mktemp("stc") / "shanghaitech")


def test_loader_reads_the_layout(stc):
    assert is_stc(stc)
    train = stc_training_frames(stc, every=3, scene="01")
    assert len(train) == 20 and all(isinstance(f, FrameRef) for f in train)
    assert {f.video.name for f in train} == {"01_001.mp4", "01_002.mp4"}
    test = stc_test_set(stc, every=2, scene="01")
    assert len(test) == 24 and sum(s.label for s in test) == 8
    assert str(test[5].mask_path).endswith("01_0001.npy[10]")
    assert len(stc_test_set(stc)) == 72


def test_fit_and_evaluate_scene_on_frame_level_and_pixel_auroc(stc, tmp_path, capsys):
    model = tmp_path / "scene01.safetensors"
    args = ["fit", str(stc), "--scene", "01", "--every", "2", "--out", str(model), *FAST]
    assert main(args) == 0
    assert "on 30 images" in capsys.readouterr().out  # 2 videos x 30 frames, every 2nd
    metrics = tmp_path / "metrics.json"
    args = ["evaluate", str(model), str(stc), "--scene", "01", "--json", str(metrics)]
    assert main([*args, "--quiet", "--device", "cpu"]) == 0
    m = json.loads(metrics.read_text())
    assert m["n_images"] == 48 and m["n_anomalous"] == 16
    assert m["image_auroc"] > 0.95  # frame-level AUROC
    assert m["pixel_auroc"] > 0.95


@pytest.mark.slow
def test_benchmark_runs_one_model_per_scene(stc, tmp_path):
    out = tmp_path / "bench"
    args = ["benchmark", "--root", str(stc), "--out", str(out), "--every", "3"]
    assert main([*args, "--backbones", "efficientnet_lite0", "--no-figures", *FAST]) == 0
    rows = json.loads((out / "results.json").read_text())["results"]
    assert [r["category"] for r in rows] == ["scene01", "scene02"]
    assert [r["n_train"] for r in rows] == [20, 10]
    assert all(r["image_auroc"] > 0.9 for r in rows)
