"""Mistakes are said before the slow work (hardening, round two: a bad path, a busy port or an
--out inside the inputs were reported after 7-33 s of loading torch and the model), and usage
mistakes are one line too."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest


def run_padim(args: list[str]) -> tuple[int, str, bool]:
    """Exit status, stderr, and whether torch was imported by the time the command ended."""
    code = (
        "import sys\n"
        "from padim.cli import main\n"
        f"rc = main({args!r})\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = proc.stderr.strip().splitlines()
    return proc.returncode, "\n".join(lines[:-1]), lines[-1] == "TORCH"


def test_a_missing_training_folder_is_said_before_torch(tmp_path):
    rc, err, torch = run_padim(["fit", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert rc == 1 and err.startswith("padim: error:") and len(err.splitlines()) == 1
    assert not torch


def test_predict_checks_its_paths_before_loading_the_model(model_file, category, tmp_path):
    inside = category / "test" / "out"
    rc, err, torch = run_padim(["predict", str(model_file), str(category), "--out", str(inside)])
    assert rc == 1 and "inside the input folder" in err and not torch
    rc, err, torch = run_padim(["predict", str(model_file), str(tmp_path / "nope.png"),
                                "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 1 and "input not found" in err and not torch
    rc, err, torch = run_padim(["predict", str(tmp_path / "none.safetensors"), str(category),
                                "--out", str(tmp_path / "o")])  # fmt: skip
    assert rc == 1 and "model file not found" in err and not torch


def test_a_busy_port_is_said_before_the_models_load(model_file):
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc, err, torch = run_padim(["serve", str(model_file), "--port", str(port)])
    assert rc == 1 and f"cannot listen on 127.0.0.1:{port}" in err and not torch


def test_usage_mistakes_are_one_line(capsys):
    from padim.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", "--size"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("padim: error:") and len(err.splitlines()) == 1 and "--help" in err
