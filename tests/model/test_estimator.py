import json

import numpy as np
import pytest
import torch
from conftest import SIZE, make_category, texture, with_defect
from PIL import Image

from padim import Padim, PadimError, load
from padim.data.datasets import mvtec_test_set
from padim.model.modelfile import MINOR_VERSION, load_model_file, save_model_file


def test_fit_calibrates_a_threshold_on_held_out_good_images(fitted):
    assert fitted.is_fitted
    assert fitted.info["n_train"] == 12
    assert fitted.info["n_holdout"] == 2  # 20 % of 12, rounded
    summary = fitted.info["good_score_summary"]
    assert summary["min"] <= fitted.threshold_ <= summary["max"]


def test_defects_score_higher_and_maps_localise_them(fitted):
    rng = np.random.default_rng(42)
    good = texture(rng)
    bad, mask = with_defect(texture(rng), rng)
    preds = fitted.predict([good, bad])
    assert preds[1].score > preds[0].score
    amap = preds[1].anomaly_map
    assert amap.shape == (SIZE, SIZE)
    assert amap[mask].mean() > amap[~mask].mean()
    assert preds[1].is_anomalous and preds[1].label == 1
    assert preds[1].mask.dtype == bool
    assert np.array_equal(preds[1].mask, amap > fitted.threshold_)


def test_score_equals_max_of_map(fitted, category):
    scores, maps = fitted.score(category / "test" / "square")
    np.testing.assert_allclose(scores, maps.reshape(len(maps), -1).max(axis=1))


@pytest.mark.slow
def test_batch_size_does_not_change_the_model(category):
    a = Padim(size=SIZE, crop=None, batch_size=1, device="cpu", covariance="full").fit(category)
    b = Padim(size=SIZE, crop=None, batch_size=7, device="cpu", covariance="full").fit(category)
    # Only float32 convolution round-off differs between batch sizes.
    assert torch.allclose(a.net_.gauss_mean, b.net_.gauss_mean, atol=1e-4)
    assert torch.allclose(a.net_.gauss_whitening, b.net_.gauss_whitening, rtol=1e-3, atol=2e-3)
    assert a.threshold_ == pytest.approx(b.threshold_, rel=1e-3)


def test_save_load_round_trip(fitted, model_file, category, tmp_path):
    """float16 storage (default) changes scores by far less than 1e-4; a reloaded model saves
    and reloads bit-identically; float32 storage reloads bit-identically."""
    again = load(model_file, device="cpu")
    assert again.threshold_ == fitted.threshold_
    assert again.config == fitted.config
    imgs = list((category / "test" / "square").iterdir())[:3]
    a, b = fitted.score(imgs), again.score(imgs)
    np.testing.assert_allclose(a[0], b[0], rtol=1e-4)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-4, atol=1e-3)
    third = load(again.save(tmp_path / "again.safetensors"), device="cpu")
    np.testing.assert_array_equal(third.score(imgs)[1], b[1])

    stored, fitted.config.storage = fitted.config.storage, "float32"
    try:
        exact = load(fitted.save(tmp_path / "f32.safetensors"), device="cpu")
    finally:
        fitted.config.storage = stored
    assert exact.config.storage == "float32"
    c = exact.score(imgs)
    np.testing.assert_array_equal(a[0], c[0])
    np.testing.assert_array_equal(a[1], c[1])


def test_model_file_holds_config_and_no_pickle(model_file):
    tensors, config = load_model_file(model_file)
    assert config["format_version"] == MINOR_VERSION  # the default: minor Gaussians
    assert config["backbone"]["name"] == "efficientnet_lite0"
    assert config["embedding_dim"] == 176
    assert config["input_size"] == SIZE
    assert config["backbone"]["normalisation"]["mean"][0] == pytest.approx(127 / 255)
    assert tensors["embedding.channel_idx"].numel() == 176
    assert tensors["gaussian.minor_rows"].shape == (16 * 16, 8, 176)  # default: 8 components
    assert tensors["gaussian.minor_rows"].dtype == torch.int8
    raw = model_file.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])  # safetensors layout
    assert json.loads(header["__metadata__"]["padim"])["threshold"] == config["threshold"]


def test_model_file_gets_ordinary_permissions(model_file):
    assert model_file.stat().st_mode & 0o644 == 0o644


def test_truncated_and_foreign_model_files_fail_clearly(model_file, tmp_path):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    with pytest.raises(PadimError, match=r"corrupt|truncated|unreadable"):
        load(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 100)
    with pytest.raises(PadimError, match="not a padim model"):
        load(junk)
    with pytest.raises(PadimError, match="not found"):
        load(tmp_path / "absent.safetensors")


def test_model_from_another_format_version_fails_clearly(model_file, tmp_path):
    from safetensors.torch import save_file

    tensors, config = load_model_file(model_file)
    config.update(format_version=9, library_version="9.0.0")
    other = tmp_path / "future.safetensors"
    save_file(tensors, str(other), metadata={"padim": json.dumps(config)})
    with pytest.raises(PadimError, match=r"format 9 .*padim 9\.0\.0.*re-fit"):
        load(other)


def test_format_1_files_with_full_whitening_matrices_still_load(
    full_model_file, tmp_path, category
):
    from safetensors.torch import save_file

    tensors, config = load_model_file(full_model_file)
    tril = tensors.pop("gaussian.whitening_tril").float()
    d = config["embedding_dim"]
    full = torch.zeros(tril.shape[0], d, d)
    rows, cols = torch.tril_indices(d, d)
    full[:, rows, cols] = tril
    tensors["gaussian.whitening"] = full
    config.update(format_version=1, library_version="0.1.0")
    old = tmp_path / "v1.safetensors"
    save_file(tensors, str(old), metadata={"padim": json.dumps(config)})
    imgs = list((category / "test" / "square").iterdir())[:2]
    np.testing.assert_array_equal(load(old).score(imgs)[0], load(full_model_file).score(imgs)[0])


def test_tensors_inconsistent_with_config_fail_clearly(model_file, tmp_path):
    tensors, config = load_model_file(model_file)
    tensors["gaussian.mean"] = tensors["gaussian.mean"][:, :10].contiguous()
    bad = tmp_path / "bad.safetensors"
    save_model_file(
        bad, tensors, {k: v for k, v in config.items() if k not in ("format", "format_version")}
    )
    with pytest.raises(PadimError, match="do not match"):
        load(bad)


@pytest.mark.slow
def test_one_training_image_gives_a_defined_model_and_a_warning(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(texture(rng)).save(tmp_path / "only.png")
    model = Padim(size=SIZE, crop=None, device="cpu").fit(tmp_path)
    assert "calibrate it" in model.info["warning"] and model.info["n_train"] == 1
    same, other = model.score([tmp_path / "only.png", texture(rng)])[0]
    assert same < 1e-2 < other  # covariance 0 + 0.01 I: distance to the one image


def test_few_images_calibrate_in_sample(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(texture(rng)).save(tmp_path / f"{i}.png")
    model = Padim(size=SIZE, crop=None, device="cpu").fit(tmp_path)
    assert model.info["n_holdout"] == 0
    assert "in-sample" in model.info["threshold_source"]


def test_mixed_sizes_and_modes_train_together(tmp_path):
    rng = np.random.default_rng(1)
    Image.fromarray(texture(rng, 64)).save(tmp_path / "a.png")
    Image.fromarray(texture(rng, 96)).convert("L").save(tmp_path / "b.jpg")
    Image.fromarray(texture(rng, 80)).convert("RGBA").save(tmp_path / "c.png")
    model = Padim(size=SIZE, crop=None, device="cpu").fit(tmp_path)
    assert model.info["n_train"] == 3


def test_invalid_configuration_is_rejected_by_fit(tmp_path):
    """The constructor only stores (scikit-learn's rule); fit validates, before any work."""
    images = [np.zeros((8, 8, 3), np.uint8)]
    for params, message in [
        ({"channels": 5000}, "--channels"),
        ({"backbone": "nope"}, "unknown backbone"),
        ({"batch_size": 0}, "batch-size"),
        ({"device": "tpu"}, "unknown device"),
    ]:
        model = Padim(**params)
        assert all(getattr(model, k) == v for k, v in params.items())
        with pytest.raises(PadimError, match=message):
            model.fit(images)
    with pytest.raises(PadimError, match="not fitted"):
        Padim().predict(images)


def test_parameters_follow_scikit_learns_contract():
    """get_params/set_params/clone work; a fit learns `config_` without touching the
    parameters, so a second fit of an "auto" model chooses its size again."""
    from sklearn.base import clone

    model = Padim(size="auto", crop=None, device="cpu", batch_size=5)
    params = model.get_params()
    assert params["size"] == "auto" and params["batch_size"] == 5 and len(params) == 32
    twin = clone(model)
    assert twin.get_params() == params and twin is not model
    assert model.set_params(seed=3) is model and model.seed == 3
    with pytest.raises(PadimError, match="unknown parameter"):
        model.set_params(colour="red")
    rng = np.random.default_rng(0)
    model.fit([texture(rng, SIZE) for _ in range(3)])
    square = model.config_.size
    assert model.size == "auto" and square[0] == square[1]
    wide = [np.concatenate([texture(rng, SIZE)] * 2, axis=1) for _ in range(3)]
    model.fit(wide)  # 2:1 images: "auto" chooses again
    width, height = model.config_.size
    assert model.size == "auto" and abs(width / height - 2) < 0.15


def test_calibrate_from_labelled_data(fitted, category):
    samples = mvtec_test_set(category)
    scores, _ = fitted.score([s.path for s in samples])
    labels = np.array([s.label for s in samples])
    copy = load_copy(fitted)
    thr = copy.calibrate(scores, labels)
    assert copy.threshold_ == thr and scores.min() <= thr < scores.max()
    assert (scores[labels == 1] > thr).mean() >= 0.5
    assert "F1-optimal" in copy.info["threshold_source"]


def load_copy(model: Padim) -> Padim:
    clone = Padim(size=SIZE, crop=None, device="cpu")
    clone.net_, clone.threshold_ = model.net_, model.threshold_
    clone.thresholds_, clone.training_ = dict(model.thresholds_), model.training_
    clone.threshold_source_ = model.threshold_source_
    return clone


def test_random_channel_subset_and_crop(tmp_path):
    cat = make_category(tmp_path / "c", n_train=6, n_good=1, n_bad=1)
    model = Padim(size=SIZE, crop=48, channels=50, seed=3, device="cpu").fit(cat)
    assert model.net_.embedder.dim == 50
    _, maps = model.score(cat / "test" / "good")
    assert maps.shape == (1, 48, 48)


def test_score_modes_have_their_own_thresholds_and_survive_save(tmp_path, category):
    from padim.core.scoring import SCORE_MODES

    model = Padim(size=SIZE, crop=None, device="cpu").fit(category)
    thresholds = model.info["thresholds"]
    assert set(thresholds) == set(SCORE_MODES)
    assert model.threshold_ == thresholds["mahalanobis"]
    assert 0 < thresholds["chebyshev"] <= 1 < thresholds["mahalanobis"]
    images = sorted((category / "test" / "square").iterdir())[:2]
    maha_scores, _ = model.score(images)
    model.set_score_mode("hybrid")
    assert model.threshold_ == thresholds["hybrid"]
    hybrid, _ = model.score(images)
    model.set_score_mode("chebyshev")
    cheb, _ = model.score(images)
    assert np.all((cheb > 0) & (cheb <= 1))
    np.testing.assert_allclose(hybrid, (maha_scores + cheb) / 2, rtol=0.05)  # maps are smoothed
    path = model.save(tmp_path / "cheb.safetensors")
    again = load(path)
    assert again.config.score_mode == "chebyshev" and again.threshold_ == thresholds["chebyshev"]
    np.testing.assert_allclose(again.score(images)[0], cheb, rtol=1e-4)
    back = load(path, score_mode="mahalanobis")
    np.testing.assert_allclose(back.score(images)[0], maha_scores, rtol=1e-3)


def test_format_2_files_score_with_mahalanobis_only(model_file, tmp_path):
    tensors, config = load_model_file(model_file)
    del tensors["gaussian.std"]
    config.pop("format")
    config.pop("format_version")
    config["info"].pop("thresholds")
    old = tmp_path / "old.safetensors"
    save_model_file(old, tensors, config)
    model = load(old)
    assert model.info["thresholds"] == {"mahalanobis": model.threshold_}
    with pytest.raises(PadimError, match="older padim"):
        model.set_score_mode("hybrid")


def test_ledoit_wolf_fit_records_intensities(category):
    model = Padim(size=SIZE, crop=None, device="cpu", shrinkage="ledoit-wolf").fit(category)
    summary = model.info["shrinkage_intensity"]
    assert 0 < summary["min"] <= summary["max"] <= 1


def test_semi_orthogonal_model_round_trips_and_exports(category, tmp_path):
    """The projection is stored (format 4), reloaded and exported; scores agree."""
    from padim.model.modelfile import read_model_config

    model = Padim(
        size=32,
        crop=None,
        device="cpu",
        channels=40,
        embedding="semi-orthogonal",
        covariance="full",
    )
    model.fit(category)
    images = sorted((category / "test").rglob("*.png"))
    path = model.save(tmp_path / "so.safetensors")
    header = read_model_config(path)
    assert header["format_version"] == 4 and header["config"]["embedding"] == "semi-orthogonal"
    assert header["embedding_dim"] == 40
    loaded = Padim.load(path)
    np.testing.assert_allclose(loaded.score(images)[0], model.score(images)[0], rtol=1e-3)
    pytest.importorskip("onnxruntime")
    from padim.cli import main
    from padim.deploy.exported import OnnxScorer

    assert main(["export", str(path), "--out", str(tmp_path / "so.onnx")]) == 0
    x = np.stack([loaded.preprocess.image(Image.open(p).convert("RGB")) for p in images])
    np.testing.assert_allclose(
        OnnxScorer(tmp_path / "so.onnx").score_batch(x)[0], loaded.score(images)[0], rtol=1e-4
    )


def test_fit_from_embeddings_on_disk_equals_the_in_memory_fit(category):
    """Small sets are fitted from embeddings on disk (less than the float64 sums); keeping the
    statistics forces the in-memory sums. Both give the same model."""
    on_disk = Padim(size=SIZE, crop=None, device="cpu")
    assert on_disk.sizing.embeddings_on_disk(10)
    assert not on_disk.sizing.embeddings_on_disk(1000)  # many images: the sums are smaller
    on_disk.fit(category)
    in_memory = Padim(size=SIZE, crop=None, device="cpu", statistics="keep").fit(category)
    assert not in_memory.sizing.embeddings_on_disk(10)
    images = sorted((category / "test").rglob("*.png"))
    np.testing.assert_allclose(on_disk.score(images)[0], in_memory.score(images)[0], rtol=1e-5)
    assert on_disk.threshold_ == pytest.approx(in_memory.threshold_, rel=1e-5)
