"""Compact models end to end (`--covariance minor`): fit, save and load with identical scores,
smaller files and exports with parity, `update` equal to a fit on the union, older files still
read as full models, clear errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import SIZE

from padim import Padim
from padim.cli import main
from padim.core.minor import MinorGaussianModel
from padim.errors import PadimError
from padim.model.modelfile import load_model_file

SETTINGS = {"size": SIZE, "crop": None, "batch_size": 5, "device": "cpu"}
MINOR = {"covariance": "minor", "components": 4}


@pytest.fixture(scope="module")
def compact(category):
    return Padim(**SETTINGS, **MINOR, storage="int8").fit(category)


@pytest.fixture(scope="module")
def compact_file(compact, tmp_path_factory):
    return compact.save(tmp_path_factory.mktemp("compact") / "minor.safetensors")


def _test_images(category):
    return sorted((category / "test").rglob("*.png"))


def test_a_minor_model_reloads_with_identical_scores(compact, compact_file, category):
    images = _test_images(category)
    again = Padim.load(compact_file, device="cpu")
    assert isinstance(again.fitted_net().gaussian, MinorGaussianModel)
    assert again.config_.covariance == "minor" and again.config_.components == 4
    a, b = compact.score(images), again.score(images)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-6)  # the same numbers; float rounding
    np.testing.assert_allclose(b[1], a[1], rtol=1e-6)  # of the maps' arithmetic aside
    tensors, header = load_model_file(compact_file)
    assert header["format_version"] == 6
    assert tensors["gaussian.minor_rows"].dtype == torch.int8
    assert tensors["gaussian.minor_rows"].shape[1:] == (4, compact.fitted_net().embedder.dim)


def test_a_minor_model_finds_the_defects_the_full_model_finds(compact, full_model_file, category):
    """Same ranking of good and defective images on the synthetic category."""
    labels = np.array(["good" not in p.parent.name for p in _test_images(category)])
    for model in (compact, Padim.load(full_model_file)):
        scores = model.score(_test_images(category))[0]
        assert scores[labels].min() > scores[~labels].max()


def test_the_file_is_a_fraction_of_the_full_models(compact_file, full_model_file):
    tensors, _ = load_model_file(compact_file)
    gaussians = sum(t.nbytes for k, t in tensors.items() if k.startswith("gaussian.minor"))
    full_tensors, _ = load_model_file(full_model_file)
    whitening = full_tensors["gaussian.whitening_tril"].nbytes
    assert gaussians * 4 < whitening  # r=4 of d=100 int8 vs the float16 triangle: ~1/12


@pytest.mark.parametrize("storage", ["float16", "float32"])
def test_float_storage_also_reloads_exactly(category, tmp_path, storage):
    model = Padim(**SETTINGS, **MINOR, storage=storage).fit(category)
    again = Padim.load(model.save(tmp_path / f"{storage}.safetensors"), device="cpu")
    images = _test_images(category)[:3]
    np.testing.assert_allclose(again.score(images)[0], model.score(images)[0], rtol=1e-6)


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exports_of_minor_models_score_like_torch_from_smaller_files(
    compact, compact_file, tmp_path, fmt
):
    pytest.importorskip("onnxruntime" if fmt == "onnx" else "openvino")
    onnx = pytest.importorskip("onnx")
    from padim.deploy.scorers import load_scorer

    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.xml")
    assert main(["export", str(compact_file), "--format", fmt, "--out", str(out)]) == 0
    x = np.random.default_rng(3).random((2, 3, SIZE, SIZE), dtype=np.float32)
    t_scores, t_maps = compact.score_tensors(torch.from_numpy(x))
    o_scores, o_maps = load_scorer(out).score_batch(x)
    np.testing.assert_allclose(o_scores, t_scores, rtol=1e-5)
    np.testing.assert_allclose(o_maps, t_maps, rtol=1e-5, atol=1e-5 * float(t_maps.max()))
    if fmt == "onnx":
        graph = onnx.load(str(out))
        kinds = {t.name: t.data_type for t in graph.graph.initializer}
        assert any(n.endswith(".int8") and k == onnx.TensorProto.INT8 for n, k in kinds.items())


def test_full_exports_store_float16_weights_exactly(full_model_file, tmp_path):
    """A float16 model file's whitening goes into the ONNX file as float16 (+ Cast): half the
    bytes, the same scores."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from padim.deploy.scorers import load_scorer

    out = tmp_path / "full.onnx"
    assert main(["export", str(full_model_file), "--out", str(out)]) == 0
    graph = onnx.load(str(out))
    halves = [t for t in graph.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    loaded = Padim.load(full_model_file, device="cpu")
    assert sum(np.prod(t.dims) for t in halves) > loaded.fitted_net().gauss_whitening.numel() / 2
    x = np.random.default_rng(4).random((1, 3, SIZE, SIZE), dtype=np.float32)
    np.testing.assert_allclose(
        load_scorer(out).score_batch(x)[0], loaded.score_tensors(torch.from_numpy(x))[0], rtol=1e-5
    )


def test_update_of_a_minor_model_equals_a_fit_on_the_union(category, tmp_path):
    train = sorted((category / "train" / "good").glob("*.png"))
    old, new = train[:8], train[8:]
    first = Padim(**SETTINGS, **MINOR, statistics="keep").fit(old)
    path = first.save(tmp_path / "old.safetensors")
    updated = Padim.load(path, device="cpu", statistics=True).partial_fit(new)
    union = Padim(**SETTINGS, **MINOR).fit(old + new)
    images = _test_images(category)
    s_up, m_up = updated.score(images)
    s_all, m_all = union.score(images)
    assert np.max(np.abs(s_up - s_all) / np.abs(s_all)) < 1e-4
    assert np.max(np.abs(m_up - m_all)) < 1e-4 * np.abs(m_all).max()


def test_files_written_before_compact_models_load_as_full(full_model_file, tmp_path, category):
    from safetensors.torch import save_file

    tensors, config = load_model_file(full_model_file)
    for key in ("covariance", "components"):
        config["config"].pop(key)
    config.update(format_version=5, library_version="0.9.0")
    old = tmp_path / "v5.safetensors"
    save_file(tensors, str(old), metadata={"padim": json.dumps(config)})
    model = Padim.load(old, device="cpu")
    assert model.config_.covariance == "full"
    images = _test_images(category)[:2]
    want = Padim.load(full_model_file).score(images)[0]
    np.testing.assert_array_equal(model.score(images)[0], want)


def test_bad_compact_settings_are_one_line_errors(category, tmp_path, capsys):
    with pytest.raises(PadimError, match="int8 needs --covariance minor"):
        Padim(**SETTINGS, covariance="full", storage="int8").fit(category)
    with pytest.raises(PadimError, match="exceeds the embedding"):
        Padim(**SETTINGS, covariance="minor", components=1000).fit(category)
    out = tmp_path / "m.safetensors"
    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(category), "--out", str(out), "--covariance", "diagonal"])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and len(err.splitlines()) == 1 and not out.exists(), err
    assert (
        main(
            [
                "fit",
                str(category),
                "--out",
                str(out),
                "--components",
                "0",
                "--covariance",
                "minor",
                "--size",
                str(SIZE),
                "--crop",
                "none",
            ]
        )
        == 1
    )
    err = capsys.readouterr().err.strip()
    assert "--components" in err and len(err.splitlines()) == 1
