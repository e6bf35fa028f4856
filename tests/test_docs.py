"""Every Python snippet of the README and docs runs (hardening, round two: the README's own
`padim.load(..., statistics=True)` was a TypeError). Snippets fenced as ```python run as they
are, in order, in a folder holding the files they name; ```python excerpt ones are quotes of
code shown elsewhere and are only parsed."""

from __future__ import annotations

import ast
import os
import re
import shutil
from pathlib import Path

import pytest
from conftest import SIZE

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python( excerpt)?\n(.*?)^```", re.S | re.M)


def snippets(path: Path) -> list[tuple[bool, str]]:
    return [(bool(m.group(1)), m.group(2)) for m in FENCE.finditer(path.read_text())]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_snippet_is_python(doc):
    for _, code in snippets(doc):
        ast.parse(code)


@pytest.mark.slow
def test_the_readme_snippets_run(category, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ray")
    from padim import Padim

    train = sorted((category / "train" / "good").glob("*.png"))
    tests = sorted((category / "test").rglob("*.png"))
    (tmp_path / "good_images").mkdir()
    (tmp_path / "new_good").mkdir()
    (tmp_path / "test_images").mkdir()
    for i, path in enumerate(train):
        shutil.copy(
            path, tmp_path / ("good_images" if i < len(train) - 3 else "new_good") / path.name
        )
    for path in tests[:4]:
        shutil.copy(path, tmp_path / "test_images" / f"{path.parent.name}_{path.name}")
    shutil.copy(tests[0], tmp_path / "part_001.png")
    shutil.copy(tests[-1], tmp_path / "part_002.png")
    kept = Padim(size=SIZE, crop=None, statistics="keep", device="cpu")
    kept.fit(tmp_path / "good_images").save(tmp_path / "kept.safetensors")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_ADDRESS", "")
    blocks = [code for excerpt, code in snippets(ROOT / "README.md") if not excerpt]
    assert len(blocks) >= 2
    scope: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), scope)
    assert os.path.isfile("model.onnx") and scope["model"].threshold_ is not None
