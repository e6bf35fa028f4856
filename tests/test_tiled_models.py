"""Tiled models end to end: fit at native resolution (both kinds of statistics), find a defect in
any tile, save/load, predict pictures at native size, export, and a fit that keeps the
held-out embeddings off the heap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import save, texture

from padim.cli import main

W, H = 192, 64  # wider than the 64-pixel tiles: 4 tiles across with a 16-pixel overlap


def _strip(rng):
    return np.concatenate([texture(rng, 96)[:H] for _ in range(2)], axis=1)


@pytest.fixture(scope="module")
def strips(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiled") / "strip"
    rng = np.random.default_rng(0)
    for i in range(12):
        save(root / "train" / "good" / f"{i:03d}.png", _strip(rng))
    for i in range(3):
        save(root / "test" / "good" / f"{i:03d}.png", _strip(rng))
    for i, x in enumerate((8, 60, 100, 165)):  # one defect per tile column
        img, mask = _strip(rng), np.zeros((H, W), bool)
        img[24:36, x : x + 12] = (255, 40, 40)
        mask[24:36, x : x + 12] = True
        save(root / "test" / "square" / f"{i:03d}.png", img)
        save(root / "ground_truth" / "square" / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    return root


@pytest.mark.parametrize("statistics", ["location", "shared"])
def test_tiled_fit_finds_defects_in_every_tile(strips, tmp_path, statistics):
    import padim

    model = padim.Padim(
        tile=64, tile_overlap=16, tile_statistics=statistics, size="native", device="cpu"
    ).fit(strips)
    assert model.config.size == (W, H) and model.tile_grid.count == 4
    geometry = model.geometry()
    assert geometry["positions"] == (16 * 48 if statistics == "location" else 16 * 16)
    assert model.fitted_net().gauss_mean.shape[0] == geometry["positions"]
    scores, maps = model.score(strips / "test" / "square")
    good, _ = model.score(strips / "test" / "good")
    assert maps.shape == (4, H, W)
    assert scores.min() > good.max()
    for m, x in zip(maps, (8, 60, 100, 165), strict=True):
        y_peak, x_peak = np.unravel_index(m.argmax(), m.shape)
        assert 18 <= y_peak <= 42 and x - 6 <= x_peak <= x + 18  # the defect, in its tile
    again = padim.load(model.save(tmp_path / "t.safetensors"), device="cpu")
    assert again.tile_grid == model.tile_grid
    np.testing.assert_allclose(again.score(strips / "test" / "square")[0], scores, rtol=1e-3)


def test_tiled_cli_defaults_to_native_size_and_reports_the_geometry(strips, tmp_path, capsys):
    import padim

    path = tmp_path / "m.safetensors"
    args = ["--tile", "64", "--tile-overlap", "16", "--quiet", "--device", "cpu"]
    assert main(["fit", str(strips), "--out", str(path), *args]) == 0
    out = capsys.readouterr().out
    assert "input 192x64" in out and "4 tiles of 64x64" in out and "768 positions" in out
    assert padim.load(path).preprocess.output_wh == (W, H)
    assert main(["info", str(path)]) == 0
    header = json.loads(capsys.readouterr().out)
    assert header["tiling"] == {
        "tile": [64, 64],
        "overlap": 16,
        "tiles": [4, 1],
        "statistics": "location",
    }
    assert header["positions"] == 768 and header["grid"] == [16, 48]
    metrics = tmp_path / "m.json"
    assert main(["evaluate", str(path), str(strips), "--json", str(metrics), *args[4:]]) == 0
    m = json.loads(metrics.read_text())
    assert m["image_auroc"] == 1.0 and m["region_recall"] > 0.5
    bad = tmp_path / "bad.safetensors"
    assert main(["fit", str(strips), "--out", str(bad), "--size", "190x64", *args]) == 1
    assert "multiples of 4" in capsys.readouterr().err and not bad.exists()


@pytest.mark.slow
def test_tiled_model_exports_with_parity(strips, tmp_path):
    pytest.importorskip("onnxruntime")
    import padim
    from padim.deploy.export import export_model

    model = padim.Padim(tile=64, tile_overlap=16, size="native", device="cpu").fit(strips)
    path = model.save(tmp_path / "t.safetensors")
    report = export_model(path, tmp_path / "t.onnx", verify=[strips / "test" / "square"])
    assert report.max_rel_score_diff < 1e-4 and report.max_rel_map_diff < 1e-4


def test_held_out_embeddings_wait_on_disk_and_are_removed(strips, monkeypatch, tmp_path):
    """The held-out images' embeddings go to a temporary folder (and so do the fitted images',
    when they take less than the sums would); the folders are gone after the fit."""
    import tempfile

    import padim
    from padim.core import holdout

    spill = tmp_path / "spill"
    spill.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spill))
    seen: dict[int, list[list[str]]] = {}
    real_add = holdout.HoldoutStore.add

    def add(self, emb):
        real_add(self, emb)
        seen.setdefault(id(self), []).append(sorted(p.name for p in self.directory.iterdir()))

    monkeypatch.setattr(holdout.HoldoutStore, "add", add)
    model = padim.Padim(size=(W, H), crop=None, device="cpu", batch_size=2).fit(strips)
    assert seen
    for listings in seen.values():  # one file per batch, in each store
        assert listings[-1] == [f"batch{i:05d}.f32" for i in range(len(listings))]
    assert list(spill.iterdir()) == []
    assert model.training_.n_holdout == 2


def test_a_geometry_too_large_for_memory_is_refused_before_any_work(strips, tmp_path):
    import padim
    from padim.errors import PadimError

    model = padim.Padim(size=(W, H), crop=None, device="cpu")
    model.check_memory(available=2**40)  # plenty: no complaint
    with pytest.raises(PadimError, match="--tile-statistics shared, fewer --channels"):
        model.check_memory(available=2**20)
    shared = padim.Padim(size=(W, H), crop=None, tile=64, tile_statistics="shared")
    assert (
        shared.geometry()["fit_statistics_bytes"] * 3 == model.geometry()["fit_statistics_bytes"]
    )  # a tile's positions (16x16) against the whole input's (16x48)


def test_a_non_integer_overlap_is_one_clear_error():
    import padim
    from padim.errors import PadimError

    with pytest.raises(PadimError, match="--tile-overlap must be a whole number"):
        padim.Padim(size=(W, H), crop=None, tile=64, tile_overlap="16").fit([])
