"""Issue 19's hostile and careless cases, replayed so they stay fixed: outputs that must never
clobber, interrupted writes, unreadable inputs and damaged models that must not say "good"."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from conftest import SIZE

from padim.cli import main
from padim.deploy.predict import write_predictions
from padim.deploy.scorers import TorchScorer

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu"]


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("padim: error: "), err
    return err[0]


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_fit_never_replaces_what_is_not_a_regular_file(tmp_path, category, capsys, kind):
    target = tmp_path / "target"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    started = time.perf_counter()
    assert main(["fit", str(category), "--out", str(target), *FAST]) == 1
    assert "refusing to replace it" in _one_error(capsys)
    assert time.perf_counter() - started < 5  # refused before any work
    assert target.is_fifo() if kind == "fifo" else target.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == ["target"]  # no temp file left


def test_calibrate_and_evaluate_check_outputs_first(tmp_path, model_file, category, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["calibrate", str(model_file), "--threshold", "3", "--out", str(fifo)]) == 1
    assert "refusing" in _one_error(capsys)
    assert main(["evaluate", str(model_file), str(category), "--json", str(fifo), "--quiet"]) == 1
    assert "refusing" in _one_error(capsys)
    assert fifo.is_fifo()


def test_predict_refuses_an_output_folder_inside_an_input_folder(
    tmp_path, model_file, category, capsys
):
    inputs = category / "test"
    out = inputs / "predictions"
    assert main(["predict", str(model_file), str(inputs), "--out", str(out), "--quiet"]) == 1
    assert "inside the input folder" in _one_error(capsys)
    assert not out.exists()
    existing_file = tmp_path / "results"
    existing_file.write_text("keep me")
    assert main(["predict", str(model_file), str(inputs), "--out", str(existing_file)]) == 1
    assert "not a folder" in _one_error(capsys)
    assert existing_file.read_text() == "keep me"


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    """SIGTERM is handled like Ctrl-C: finally blocks run, the temporary file goes away."""
    target = tmp_path / "model.safetensors"
    code = textwrap.dedent(f"""
        import os, signal
        from padim.cli import terminate_cleanly
        from padim.files import atomic_path
        with terminate_cleanly():
            with atomic_path({str(target)!r}) as tmp:
                tmp.write_bytes(b"x" * 1000)
                os.kill(os.getpid(), signal.SIGTERM)
                raise AssertionError("SIGTERM did not stop the write")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_model_never_gives_a_verdict(model_file, category, tmp_path):
    """One NaN in the Gaussian means: every score is NaN, so every row is an error, not 'good'."""
    import padim

    broken = padim.load(model_file, device="cpu")
    with torch.no_grad():
        broken.fitted_net().gauss_mean[0, 0] = float("nan")
    rows = write_predictions(
        TorchScorer(broken), [category / "test" / "good"], tmp_path / "out", images=False
    )
    assert rows and all(r.error.startswith("non_finite") for r in rows)
    assert all(r.score is None and r.is_anomalous is None for r in rows)
    text = (tmp_path / "out" / "results.csv").read_text()
    assert "nan" not in text.lower().replace("non_finite", "")


def test_the_service_answers_an_error_not_good_for_a_non_finite_score(model_file, category):
    from fastapi.testclient import TestClient

    import padim
    from padim.service.app import create_app

    broken = padim.load(model_file, device="cpu")
    with torch.no_grad():
        broken.fitted_net().gauss_mean[0, 0] = float("inf")
    image = sorted((category / "test" / "good").iterdir())[0]
    with TestClient(create_app(TorchScorer(broken))) as client:
        res = client.post("/v1/predict", files={"file": ("a.png", image.read_bytes())})
        batch = client.post("/v1/predict/batch", files=[("files", ("b.png", image.read_bytes()))])
    assert res.status_code == 500 and res.json()["error"]["code"] == "non_finite_score"
    assert "verdict" not in res.json() and "score" not in res.json()
    assert batch.json()["results"][0]["error"]["code"] == "non_finite_score"
