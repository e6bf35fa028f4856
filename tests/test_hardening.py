"""Issue 19's hostile and careless cases, replayed so they stay fixed: outputs that must never
clobber, interrupted writes, unreadable inputs and damaged models that must not say "good"."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from conftest import SIZE
from PIL import Image

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


# ----------------------------------------------------------------------------- the service


class _Failing:
    """A scorer whose model breaks with an internal message that must not reach clients."""

    model_id, threshold, input_size = "failing", 1.0, SIZE

    def preprocess(self, image):
        from padim.data.preprocess import resize_crop

        return resize_crop(image, SIZE, None)

    def score_batch(self, x):
        raise RuntimeError("secret internal detail /srv/models/x")

    def describe(self):
        return {"model_id": self.model_id}


def test_server_errors_say_nothing_internal_and_thresholds_are_checked(fitted, category):
    from fastapi.testclient import TestClient

    from padim.service.app import create_app

    image = sorted((category / "test" / "good").iterdir())[0].read_bytes()
    with TestClient(create_app(_Failing()), raise_server_exceptions=False) as client:
        res = client.post("/v1/predict", files={"file": ("a.png", image)})
    assert res.status_code == 500 and "secret" not in res.text and "RuntimeError" not in res.text
    with TestClient(create_app(TorchScorer(fitted))) as client:
        for bad in ("-1", "nan", "inf", "-0.5"):
            res = client.post(f"/v1/predict?threshold={bad}", files={"file": ("a.png", image)})
            assert res.status_code == 422 and res.json()["error"]["code"] == "bad_threshold"
        assert client.post("/v1/predict?threshold=0", files={"file": ("a", image)}).is_success


def test_serve_refuses_a_model_that_cannot_score(model_file, tmp_path, capsys):
    import padim

    broken = padim.load(model_file, device="cpu")
    with torch.no_grad():
        broken.fitted_net().gauss_mean[0, 0] = float("inf")
    path = broken.save(tmp_path / "broken.safetensors")
    assert main(["serve", str(path), "--port", "1"]) == 1
    assert "non-finite" in _one_error(capsys)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(server: subprocess.Popen, port: int, log: Path) -> str:
    """The base URL once `padim serve` answers /v1/health (its log if it exits first)."""
    import urllib.request

    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            urllib.request.urlopen(base + "/v1/health", timeout=1).read()
            return base
        except OSError:
            assert server.poll() is None, log.read_text()
            time.sleep(0.1)
    raise AssertionError(f"padim serve did not start: {log.read_text()[-2000:]}")


def _raw(port: int, data: bytes, wait: float = 6.0) -> tuple[bytes, float]:
    """Send raw bytes, read until the server closes or `wait` passes: (reply, seconds)."""
    import socket

    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as s:
        s.sendall(data)
        reply = b""
        try:
            while chunk := s.recv(65536):
                reply += chunk
        except TimeoutError:
            pass
    return reply, time.perf_counter() - started


@pytest.mark.slow
def test_slow_clients_disconnects_and_invented_methods(model_file, tmp_path):
    """A real server: header and body timeouts, a client leaving mid-upload (one log line, no
    500), and 300 invented HTTP methods that must not become 300 metric series."""
    import urllib.request

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "padim",
            "serve",
            str(model_file),
            "--port",
            str(port),
            "--header-timeout",
            "1",
            "--body-timeout",
            "1",
            "--device",
            "cpu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = _wait_until_serving(server, port, tmp_path / "serve.log")
        reply, seconds = _raw(port, b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n")
        assert reply == b"" and 0.8 < seconds < 4, (reply, seconds)
        head = (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        reply, seconds = _raw(port, head + b"x" * 10)
        assert reply.startswith(b"HTTP/1.1 408") and b"body_timeout" in reply, reply[:200]
        assert seconds < 4
        import socket

        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(head + b"x" * 1000)
        for i in range(300):
            _raw(
                port, f"FOO{i} / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode(), wait=2
            )
        time.sleep(0.5)
        metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
        series = [
            line for line in metrics.splitlines() if line.startswith("padim_http_requests_total{")
        ]
        assert "FOO" not in metrics and len(series) < 20, series
        assert not [line for line in series if 'status="500"' in line], series
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text, text[-3000:]
    assert text.count("went away during the upload") == 1, text[-3000:]


@pytest.mark.slow
def test_dripping_bodies_and_connection_floods_are_bounded(model_file, tmp_path):
    """1,100 connections dripping a byte every 20 s stayed open for ever (no deadline, no cap)
    until the server ran out of file handles and failed every request. Now a whole body has a
    deadline and connections beyond --max-connections get 503 at once."""
    import socket
    import urllib.error
    import urllib.request

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "padim", "serve", str(model_file), "--port", str(port),
         "--body-timeout", "1", "--body-deadline", "2.5", "--max-connections", "8",
         "--device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    held: list[socket.socket] = []
    try:
        base = _wait_until_serving(server, port, tmp_path / "serve.log")
        head = (
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        drip = socket.create_connection(("127.0.0.1", port), timeout=10)
        drip.sendall(head)
        started, reply = time.monotonic(), b""
        while not reply and time.monotonic() - started < 8:
            drip.sendall(b"x")  # never pauses for the 1 s body timeout
            time.sleep(0.5)
            drip.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                reply = drip.recv(65536)
            drip.setblocking(True)
        drip.close()
        assert reply.startswith(b"HTTP/1.1 408") and b"took longer than 2.5" in reply, reply[:300]
        assert time.monotonic() - started < 6
        for _ in range(30):  # more slow uploads than the cap allows
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(head)
            held.append(s)
        time.sleep(0.3)
        try:
            status = urllib.request.urlopen(base + "/v1/health", timeout=5).status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (200, 503)  # answered at once either way, never a hang
    finally:
        for s in held:
            s.close()
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in text and "Too many open files" not in text, text[-3000:]


# ----------------------------------------------------------------------------- model files


def _crafted(model_file, tmp_path, name, change):
    """A copy of the model file with `change(tensors, header)` applied (the header written as
    text, so it can be what json.dumps would refuse to write)."""
    import json

    from safetensors.torch import save_file

    from padim.model.modelfile import load_model_file

    tensors, header = load_model_file(model_file)
    text = change(tensors, header) or json.dumps(header)
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"padim": text})
    return path


def _deep_header(tensors, header):
    import json

    depth = 100_000  # json.loads would recurse past Python's limit
    return json.dumps(header)[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"


def _set(tensor_name, index, value):
    def change(tensors, header):
        tensors[tensor_name] = tensors[tensor_name].clone()
        tensors[tensor_name].view(-1)[index] = value

    return change


def _config(key, value):
    def change(tensors, header):
        header["config"][key] = value

    return change


CRAFTED = {
    "nan_threshold": lambda t, h: h.update(threshold=float("nan")),
    "inf_threshold": lambda t, h: h.update(threshold=float("inf")),
    "nan_mean": _set("gaussian.mean", 7, float("nan")),
    "inf_weights": _set("gaussian.minor_weights", 3, float("inf")),
    "zero_normalisation_std": lambda t, h: h["backbone"]["normalisation"].update(std=[0, 1, 1]),
    "crop_224_size_4000": lambda t, h: h["config"].update(size=4000, crop=224),
    "non_integer_size": _config("size", 64.5),
    "sigma_1e6": _config("sigma", 1e6),
    "channel_out_of_range": _set("embedding.channel_idx", -1, 10_000),
    "deep_header": _deep_header,
    "nested_header": lambda t, h: h["info"].update(
        deep=__import__("json").loads("[" * 20 + "]" * 20)
    ),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_model_files_fail_with_one_line(case, model_file, category, tmp_path, capsys):
    path = _crafted(model_file, tmp_path, case, CRAFTED[case])
    image = sorted((category / "test" / "good").iterdir())[0]
    out = tmp_path / "out"
    assert main(["predict", str(path), str(image), "--out", str(out), "--quiet"]) == 1
    assert "model file" in _one_error(capsys)
    assert not out.exists()
    assert main(["serve", str(path), "--port", "1"]) == 1  # refused before it listens
    _one_error(capsys)


# ----------------------------------------------------------------------------- decoding memory


@pytest.mark.slow
def test_small_decompression_bombs_cost_bounded_memory(fitted):
    """A 93 KB 16-bit 7000x7000 PNG (under the 50 M pixel limit) took 1.4 GB to decode, and a
    batch of three took the service from 1.4 to 5.6 GB. Now one decode holds about 0.4 GB and
    at most --max-decodes run at once."""
    import io

    from fastapi.testclient import TestClient

    from padim.memory import PeakRSS, release_free_memory
    from padim.service.app import create_app
    from padim.service.settings import ServeSettings

    buf = io.BytesIO()
    Image.new("I;16", (7000, 7000)).save(buf, format="PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 200_000
    with TestClient(create_app(TorchScorer(fitted), ServeSettings(max_decodes=2))) as client:
        small = io.BytesIO()
        Image.new("RGB", (64, 64)).save(small, format="PNG")
        assert client.post("/v1/predict", files={"file": ("w.png", small.getvalue())}).is_success
        release_free_memory()
        with PeakRSS() as one:
            res = client.post("/v1/predict", files={"file": ("bomb.png", bomb)})
        assert res.status_code == 200, res.text
        with PeakRSS() as three:
            files = [("files", (f"bomb{i}.png", bomb)) for i in range(3)]
            res = client.post("/v1/predict/batch", files=files)
        assert res.status_code == 200 and res.json()["errors"] == 0
    if not (one.exact and three.exact):
        pytest.skip("this kernel cannot reset the RSS high-water mark")
    base = one.start_bytes
    assert one.peak_bytes - base < 700 * 2**20, (one.peak_bytes - base) / 2**20
    assert three.peak_bytes - base < 1300 * 2**20, (three.peak_bytes - base) / 2**20


def test_repeated_or_unknown_query_parameters_are_refused(fitted, category):
    from fastapi.testclient import TestClient

    from padim.service.app import create_app

    image = sorted((category / "test" / "good").iterdir())[0].read_bytes()
    with TestClient(create_app(TorchScorer(fitted))) as client:
        for q in (
            "threshold=1&threshold=2",
            "threshold=2&threshold=1",
            "include=map&include=mask",
            "treshold=3",
        ):
            res = client.post(f"/v1/predict?{q}", files={"file": ("a.png", image)})
            assert res.status_code == 422 and res.json()["error"]["code"] == "bad_query", q
