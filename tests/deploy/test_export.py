"""ONNX / OpenVINO export: parity with torch, metadata, external data, clear errors, and the
torch-free runtime (predict and serve) in a process where importing torch fails."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SIZE

from padim.cli import main
from padim.deploy.export import export_onnx
from padim.deploy.exported import OnnxScorer
from padim.deploy.scorers import load_scorer
from padim.errors import PadimError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def onnx_file(model_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "widget.onnx"
    assert main(["export", str(model_file), "--out", str(out)]) == 0
    return out


def random_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 3, SIZE, SIZE), dtype=np.float32)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch_at_any_batch_size(fitted, onnx_file, batch):
    import torch

    x = random_images(batch, seed=batch)
    t_scores, t_maps = fitted.score_tensors(torch.from_numpy(x))
    o_scores, o_maps = OnnxScorer(onnx_file).score_batch(x)
    assert o_scores.shape == (batch,) and o_maps.shape == (batch, SIZE, SIZE)
    np.testing.assert_allclose(o_scores, t_scores, rtol=1e-4)
    np.testing.assert_allclose(o_maps, t_maps, rtol=1e-4, atol=1e-4 * float(t_maps.max()))


def test_metadata_describes_the_model(fitted, onnx_file, capsys):
    graph = onnx.load(str(onnx_file), load_external_data=False)
    props = {p.key: p.value for p in graph.metadata_props}
    meta = json.loads(props["padim"])
    assert float(props["threshold"]) == pytest.approx(fitted.threshold_)
    assert int(props["input_size"]) == SIZE and props["library_version"]
    assert meta["normalisation"]["mean"] and meta["backbone"] == fitted.config.backbone
    assert meta["resize"] == SIZE and meta["crop"] is None
    assert [i.name for i in graph.graph.input] == ["images"]
    assert [o.name for o in graph.graph.output] == ["score", "anomaly_map"]
    assert main(["info", str(onnx_file)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["runtime"] == "onnxruntime" and info["n_train"] == fitted.info["n_train"]


def test_external_data_format(fitted, tmp_path):
    import torch

    out = export_onnx(fitted, tmp_path / "split.onnx", external_data=True)
    data = tmp_path / "split.onnx.data"
    assert data.is_file() and data.stat().st_size > 10 * out.stat().st_size
    x = random_images(2, seed=7)
    np.testing.assert_allclose(
        OnnxScorer(out).score_batch(x)[0], fitted.score_tensors(torch.from_numpy(x))[0], rtol=1e-4
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no leftovers


def test_predict_with_onnx_matches_predict_with_torch(model_file, onnx_file, category, tmp_path):
    images = category / "test" / "square"
    assert (
        main(["predict", str(model_file), str(images), "--out", str(tmp_path / "t"), "--quiet"])
        == 0
    )
    assert (
        main(
            [
                "predict",
                str(onnx_file),
                str(images),
                "--out",
                str(tmp_path / "o"),
                "--quiet",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    torch_rows = json.loads((tmp_path / "t" / "results.json").read_text())["results"]
    onnx_rows = json.loads((tmp_path / "o" / "results.json").read_text())["results"]
    assert [r["path"] for r in onnx_rows] == [r["path"] for r in torch_rows]
    for t, o in zip(torch_rows, onnx_rows, strict=True):
        assert o["score"] == pytest.approx(t["score"], rel=1e-4)
        assert o["is_anomalous"] == t["is_anomalous"]
    assert (tmp_path / "o" / onnx_rows[0]["heatmap"]).is_file()


# ----------------------------------------------------------------------------- bad files


def test_corrupt_and_foreign_onnx_files(onnx_file, tmp_path, capsys):
    from onnx import TensorProto, helper

    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_file.read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"definitely not protobuf" * 10)
    node = helper.make_node("Identity", ["images"], ["score"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    for path, words in [
        (truncated, "cannot load ONNX model"),
        (garbage, "cannot load ONNX model"),
        (foreign, "no padim metadata"),
        (tmp_path / "missing.onnx", "not found"),
    ]:
        with pytest.raises(PadimError, match=words):
            load_scorer(path)
        assert main(["predict", str(path), str(tmp_path), "--out", str(tmp_path / "x")]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("padim: error:") and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def _edit_metadata(src, dst, **changes) -> None:
    graph = onnx.load(str(src))
    props = {p.key: p for p in graph.metadata_props}
    meta = json.loads(props["padim"].value)
    meta.update(changes)
    props["padim"].value = json.dumps(meta)
    onnx.save(graph, str(dst))


def test_mismatched_metadata_is_refused(onnx_file, tmp_path):
    _edit_metadata(onnx_file, tmp_path / "size.onnx", input_size=SIZE * 2)
    with pytest.raises(PadimError, match="does not match its metadata"):
        load_scorer(tmp_path / "size.onnx")
    _edit_metadata(onnx_file, tmp_path / "future.onnx", format_version=99)
    with pytest.raises(PadimError, match="export format 99"):
        load_scorer(tmp_path / "future.onnx")


def test_export_refuses_a_wrong_suffix(model_file, tmp_path, capsys):
    assert main(["export", str(model_file), "--out", str(tmp_path / "m.xml")]) == 1
    assert "writes a .onnx file" in capsys.readouterr().err


# ----------------------------------------------------------------------------- torch-free


TORCH_FREE = """
import importlib.abc, json, sys

BLOCKED = ("torch", "torchvision", "timm", "matplotlib", "sklearn", "scipy", "skimage")

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: this runtime must not need it")

sys.meta_path.insert(0, NoTorch())
from padim.cli import main
code = main(["predict", MODEL, IMAGES, "--out", OUT, "--quiet"])
assert code == 0, code

from fastapi.testclient import TestClient
from padim.deploy.scorers import load_scorer
from padim.service.app import create_app
with TestClient(create_app(load_scorer(MODEL))) as client:
    with open(IMAGE, "rb") as f:
        res = client.post("/v1/predict?include=heatmap", files={"file": ("a.png", f)})
    assert res.status_code == 200, res.text
    model = client.get("/v1/model").json()
assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED]
print(json.dumps({"score": res.json()["score"], "runtime": model["runtime"]}))
"""


def test_onnx_runtime_needs_no_torch(onnx_file, fitted, category, tmp_path):
    image = sorted((category / "test" / "square").iterdir())[0]
    script = (
        TORCH_FREE.replace("MODEL", repr(str(onnx_file)))
        .replace("IMAGES", repr(str(image.parent)))
        .replace("OUT", repr(str(tmp_path / "out")))
        .replace("IMAGE", repr(str(image)))
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["runtime"] == "onnxruntime"
    assert result["score"] == pytest.approx(fitted.predict([image])[0].score, rel=1e-4)
    assert (tmp_path / "out" / "results.csv").is_file()


# ----------------------------------------------------------------------------- OpenVINO


def test_openvino_export_matches_torch(fitted, model_file, tmp_path):
    pytest.importorskip("openvino")
    import torch

    out = tmp_path / "widget.xml"
    assert main(["export", str(model_file), "--format", "openvino", "--out", str(out)]) == 0
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert not list(tmp_path.glob("*.onnx*"))  # the intermediate ONNX is gone
    scorer = load_scorer(out)
    x = random_images(2, seed=3)
    np.testing.assert_allclose(
        scorer.score_batch(x)[0], fitted.score_tensors(torch.from_numpy(x))[0], rtol=1e-4
    )
    assert scorer.describe()["runtime"] == "openvino"
    out.with_suffix(".bin").unlink()  # a missing .bin was a 3-line error (serve: its first line)
    with pytest.raises(PadimError, match=r"widget\.bin are missing") as info:
        load_scorer(out)
    assert len(str(info.value).splitlines()) == 1


# ----------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_bottle_onnx_parity(bottle, bottle_model_file, tmp_path):
    """Exported vs torch on every bottle test image: scores within 1e-4 relative, image and
    pixel AUROC equal to 3 decimals."""
    from padim import load
    from padim.data.datasets import mvtec_test_set
    from padim.data.images import read_image
    from padim.evaluation.evaluate import ground_truth_masks
    from padim.evaluation.metrics import image_auroc, pixel_auroc

    model = load(bottle_model_file, device="cpu")
    out = export_onnx(model, tmp_path / "bottle.onnx")
    scorer = OnnxScorer(out)
    samples = mvtec_test_set(bottle)
    t_scores, t_maps = model.score([s.path for s in samples])
    parts = [
        scorer.score_batch(
            np.stack([scorer.preprocess(read_image(s.path)) for s in samples[i : i + 16]])
        )
        for i in range(0, len(samples), 16)
    ]
    o_scores = np.concatenate([p[0] for p in parts])
    o_maps = np.concatenate([p[1] for p in parts])
    assert np.max(np.abs(o_scores - t_scores) / np.abs(t_scores)) <= 1e-4
    labels = np.array([s.label for s in samples])
    masks = ground_truth_masks(model, samples)
    assert round(image_auroc(labels, o_scores), 3) == round(image_auroc(labels, t_scores), 3)
    assert round(pixel_auroc(masks, o_maps), 3) == round(pixel_auroc(masks, t_maps), 3)


def test_exported_score_mode_is_built_in(model_file, tmp_path, capsys):
    """A Chebyshev-hybrid model exports with its mode; asking an export for another fails."""
    import torch

    from padim import load

    out = tmp_path / "hybrid.onnx"
    model = load(model_file, device="cpu", score_mode="hybrid-scaled")
    export_onnx(model, out)
    x = random_images(2, seed=5)
    np.testing.assert_allclose(
        OnnxScorer(out).score_batch(x)[0],
        model.score_tensors(torch.from_numpy(x))[0],
        rtol=1e-4,
        atol=1e-5,
    )
    assert OnnxScorer(out).threshold == pytest.approx(model.info["thresholds"]["hybrid-scaled"])
    with pytest.raises(PadimError, match="exported with score mode hybrid-scaled"):
        load_scorer(out, score_mode="mahalanobis")


def test_an_export_that_fails_its_check_leaves_the_old_file_alone(model_file, tmp_path, capsys):
    """Hardening: `export --out prod.onnx` that fails its parity check used to have replaced
    the good prod.onnx already (and a served folder hot-reloaded the rejected model)."""
    from padim import load

    other = load(model_file)
    other.set_threshold(123.0)  # another model: its export differs from prod's
    candidate = other.save(tmp_path / "candidate.safetensors")
    prod = tmp_path / "prod.onnx"
    assert main(["export", str(model_file), "--out", str(prod)]) == 0
    good = prod.read_bytes()
    capsys.readouterr()
    assert main(["export", str(candidate), "--out", str(prod), "--tolerance", "1e-30"]) == 1
    err = capsys.readouterr().err
    assert "is unchanged" in err and "prod.onnx.rejected" in err
    assert prod.read_bytes() == good
    assert (tmp_path / "prod.onnx.rejected" / "prod.onnx").is_file()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["candidate.safetensors", "prod.onnx", "prod.onnx.rejected"]


def test_an_export_with_wrong_output_shapes_is_one_line_everywhere(onnx_file, tmp_path, capsys):
    """An ONNX file with padim's metadata whose outputs have the wrong shapes gave a 17-line
    traceback in predict and watch (only serve checked it)."""
    from onnx import TensorProto, helper

    real = onnx.load(str(onnx_file))
    graph = helper.make_graph(
        [helper.make_node("Identity", ["images"], ["score"]),
         helper.make_node("Identity", ["images"], ["anomaly_map"])],
        "wrong",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 3, SIZE, SIZE]),
         helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = real.ir_version
    for p in real.metadata_props:
        entry = model.metadata_props.add()
        entry.key, entry.value = p.key, p.value
    wrong = tmp_path / "wrong.onnx"
    onnx.save(model, str(wrong))
    with pytest.raises(PadimError, match="damaged"):
        load_scorer(wrong)
    image = tmp_path / "in"
    image.mkdir()
    from PIL import Image

    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(image / "a.png")
    assert main(["predict", str(wrong), str(image), "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("padim: error:") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_the_neighbourhood_is_inside_the_exported_graph(category, tmp_path, fmt):
    """Shift-tolerant scoring (pads, slices, a running minimum) exports as part of the graph:
    onnxruntime and OpenVINO score like torch."""
    if fmt == "openvino":
        pytest.importorskip("openvino")
    import torch

    from padim import Padim

    model = Padim(size=SIZE, crop=None, neighbourhood=2, batch_size=5, device="cpu")
    path = model.fit(category).save(tmp_path / "k2.safetensors")
    out = tmp_path / ("k2.onnx" if fmt == "onnx" else "k2.xml")
    assert main(["export", str(path), "--format", fmt, "--out", str(out)]) == 0
    scorer = load_scorer(out)
    assert scorer.describe()["runtime"] in ("onnxruntime", "openvino")
    x = random_images(2, seed=4)
    t_scores, t_maps = model.score_tensors(torch.from_numpy(x))
    o_scores, o_maps = scorer.score_batch(x)
    np.testing.assert_allclose(o_scores, t_scores, rtol=1e-4)
    np.testing.assert_allclose(o_maps, t_maps, rtol=1e-4, atol=1e-4 * float(t_maps.max()))
