"""Adding good images to a fitted model (`Padim.partial_fit`, `padim update`) and choosing
operating points (`padim calibrate --target-fpr/--target-recall`), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, make_category

from padim import Padim
from padim.cli import main
from padim.errors import PadimError

SETTINGS = {"size": SIZE, "crop": None, "batch_size": 5, "device": "cpu", "storage": "float32"}


@pytest.fixture(scope="module")
def widget(tmp_path_factory) -> Path:
    return make_category(tmp_path_factory.mktemp("update") / "widget", n_train=24, n_bad=4)


def _split(widget: Path) -> tuple[list[Path], list[Path], list[Path]]:
    train = sorted((widget / "train" / "good").glob("*.png"))
    return train[:14], train[14:], sorted((widget / "test").rglob("*.png"))


def test_update_equals_a_fit_on_the_union(widget, tmp_path):
    old, new, test = _split(widget)
    first = Padim(**SETTINGS, statistics="keep").fit(old)
    path = first.save(tmp_path / "old.safetensors")
    updated = Padim.load(path, device="cpu", statistics=True).partial_fit(new)
    union = Padim(**SETTINGS).fit(old + new)
    s_up, m_up = updated.score(test)
    s_all, m_all = union.score(test)
    assert np.max(np.abs(s_up - s_all) / np.abs(s_all)) < 1e-4
    assert np.max(np.abs(m_up - m_all)) < 1e-4 * np.abs(m_all).max()
    assert updated.training_.n_train == len(old) + len(new)
    # the lineage: the digests of every image, old and new, as a fit on all would record
    assert updated.training_.image_digests == union.training_.image_digests
    assert len(set(union.training_.image_digests or [])) == len(old) + len(new)
    (step,) = updated.training_.updates
    assert step["added"] == len(new) and step["held_out"] == round(0.2 * len(new))
    assert len(updated.holdout_scores_["mahalanobis"]) == (
        len(first.holdout_scores_["mahalanobis"]) + step["held_out"]
    )
    assert updated.statistics_.count == len(old) + len(new)
    # saved and loaded again, the statistics still equal the union's: a second update works
    again = Padim.load(updated.save(tmp_path / "new.safetensors"), statistics=True)
    assert again.statistics_.count == len(old) + len(new)
    assert np.allclose(again.score(test)[0], s_up, rtol=1e-6)


def test_models_without_statistics_say_how_to_get_them(widget, tmp_path):
    old, new, _ = _split(widget)
    path = Padim(**SETTINGS).fit(old).save(tmp_path / "plain.safetensors")
    loaded = Padim.load(path, statistics=True)
    assert loaded.statistics_ is None
    with pytest.raises(PadimError, match="--statistics keep"):
        loaded.partial_fit(new)


def test_cli_update_calibrate_and_predict_with_regions(widget, tmp_path, capsys):
    old, new, _ = _split(widget)
    good = tmp_path / "old"
    good.mkdir()
    for p in old:
        (good / p.name).write_bytes(p.read_bytes())
    model, updated = tmp_path / "m.safetensors", tmp_path / "m2.safetensors"
    size = ["--size", str(SIZE), "--crop", "none", "--device", "cpu", "--quiet"]
    assert main(["fit", str(good), "--out", str(model), "--statistics", "keep", *size]) == 0
    newdir = tmp_path / "new"
    newdir.mkdir()
    for p in new:
        (newdir / p.name).write_bytes(p.read_bytes())
    capsys.readouterr()
    assert main(["update", str(model), str(newdir), "--out", str(updated), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert f"added {len(new)} images" in out and f"-> {len(old) + len(new)} training" in out
    # operating points: from the kept held-out good images, then on labelled data
    assert main(["calibrate", str(updated), "--target-fpr", "0.2", "--quiet"]) == 0
    out = capsys.readouterr()
    assert "operating point fpr-0.2" in out.out and "false alarms" in out.out
    assert "cannot pin" in out.err  # 5 held-out images show nothing at 20 %
    assert main(["calibrate", str(updated), str(widget), "--target-recall", "1", "--quiet"]) == 0
    assert "operating point recall-1" in capsys.readouterr().out
    header = json.loads(json.dumps(Padim.load(updated).info))
    points = header["operating_points"]
    assert set(points) >= {"fit", "fpr-0.2", "recall-1"} and header["operating_point"] == "recall-1"
    assert points["recall-1"]["misses"]["count"] == 0
    assert Padim.load(updated, statistics=True).statistics_ is not None  # calibrate kept them
    # predict: normalised scores and regions, at a named operating point
    res = tmp_path / "res"
    args = ["predict", str(updated), str(widget / "test"), "--out", str(res), "--quiet"]
    assert main([*args, "--operating-point", "fpr-0.2", "--no-images"]) == 0
    rows = json.loads((res / "results.json").read_text())
    assert rows["threshold"] == points["fpr-0.2"]["threshold"]
    for r in rows["results"]:
        assert (r["normalised_score"] > 0.5) == r["is_anomalous"]
        assert r["n_regions"] == len(r["regions"]) and (r["n_regions"] > 0) >= r["is_anomalous"]
    bad = [r for r in rows["results"] if "square" in r["path"]]
    assert all(r["regions"] and r["regions"][0]["area"] > 0 for r in bad)
    assert main([*args, "--operating-point", "nope"]) == 1
    assert "no operating point 'nope'" in capsys.readouterr().err


def test_update_refuses_images_of_another_geometry(widget, tmp_path):
    """1130x460 frames added to a square model moved its threshold 15.4 -> 40.8 silently."""
    from conftest import save, texture

    first, _, _ = _split(widget)
    model = Padim(**SETTINGS, statistics="keep").fit(first)
    rng = np.random.default_rng(0)
    wide = [save(tmp_path / f"w{i}.png", texture(rng, SIZE)[:, :].repeat(3, axis=1))
            for i in range(5)]  # fmt: skip
    with pytest.raises(PadimError, match="another aspect ratio"):
        model.partial_fit(wide)


def test_fit_refuses_a_thumbnail_among_camera_images(widget, tmp_path):
    from conftest import save, texture

    first, _, _ = _split(widget)
    tiny = save(tmp_path / "thumb.png", texture(np.random.default_rng(1), SIZE)[:3, :3])
    with pytest.raises(PadimError, match=r"far smaller than the others.*thumb\.png \(3x3\)"):
        Padim(**SETTINGS).fit([*first, tiny])


def test_an_update_that_moves_the_threshold_far_says_so(widget, tmp_path, capsys):
    from padim.model.fitting import threshold_moved

    assert threshold_moved(160.9, 231.7) and "+44%" in threshold_moved(160.9, 231.7)
    assert threshold_moved(160.9, 170.0) is None
    first, rest, _ = _split(widget)
    model = Padim(**SETTINGS, statistics="keep").fit(first)
    model.calibration.current = model.threshold_ * 3  # as if chosen far from the pool
    model.calibration.active = None
    path = model.save(tmp_path / "m.safetensors")
    assert (
        main(["update", str(path), *map(str, rest), "--out", str(tmp_path / "m2.safetensors")]) == 0
    )
    assert "the threshold moved" in capsys.readouterr().err
