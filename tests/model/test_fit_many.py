"""`padim fit-many` on the local engine, manifests of models, and Ray staying optional."""

import csv
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import SIZE, make_category, save, texture

from padim import Padim
from padim.cli import main
from padim.errors import PadimError
from padim.model.fit_many import read_jobs

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu", "--batch-size", "4"]


@pytest.fixture(scope="module")
def products(tmp_path_factory):
    root = tmp_path_factory.mktemp("products")
    make_category(root / "cap", n_train=8, seed=1)
    make_category(root / "gear", n_train=6, seed=2)
    rng = np.random.default_rng(3)
    extra = save(root / "loose" / "extra.png", texture(rng))
    manifest = root / "models.csv"
    manifest.write_text(
        "model,path\ncap,cap\ngear,gear/train/good\ngear,loose/extra.png\nbroken,missing_folder\n"
    )
    return root, manifest, extra


def test_read_jobs_groups_rows(products):
    root, manifest, extra = products
    jobs = read_jobs(manifest)
    assert [j.name for j in jobs] == ["cap", "gear", "broken"]
    assert jobs[1].sources == [root / "gear" / "train" / "good", extra]
    assert len(jobs[1].images()) == 7
    with pytest.raises(PadimError, match="not found"):
        jobs[2].images()
    bad = root / "bad.csv"
    bad.write_text("model,path\n../escape,cap\n")
    with pytest.raises(PadimError, match="must be letters"):
        read_jobs(bad)


@pytest.mark.slow
def test_fit_many_local(products, tmp_path, capsys):
    root, manifest, _ = products
    out = tmp_path / "models"
    assert main(["fit-many", str(manifest), "--out", str(out), *FAST]) == 1
    captured = capsys.readouterr()
    assert "1 of 3 models failed (broken)" in captured.err.splitlines()[-1]
    assert "cap: fitted on 8 images" in captured.out
    with (out / "fit-many.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert rows["cap"]["status"] == "fitted" and rows["gear"]["n_train"] == "7"
    assert rows["broken"]["status"] == "failed" and "not found" in rows["broken"]["error"]
    # the same model as a plain fit of the same images and options
    single = Padim(size=SIZE, crop=None, device="cpu", batch_size=4).fit(root / "cap")
    cap = Padim.load(out / "cap.safetensors")
    assert cap.threshold_ == pytest.approx(single.threshold_, rel=1e-6)
    # a re-run keeps what is there (resume), --overwrite re-fits
    before = (out / "cap.safetensors").stat().st_mtime_ns
    manifest2 = root / "ok.csv"
    manifest2.write_text("model,path\ncap,cap\n")
    assert main(["fit-many", str(manifest2), "--out", str(out), *FAST]) == 0
    assert "cap: kept" in capsys.readouterr().out
    assert (out / "cap.safetensors").stat().st_mtime_ns == before
    assert main(["fit-many", str(manifest2), "--out", str(out), *FAST, "--overwrite"]) == 0
    assert (out / "cap.safetensors").stat().st_mtime_ns != before


def test_ray_options_need_the_ray_engine(products, tmp_path, capsys):
    _, manifest, _ = products
    assert (
        main(
            [
                "fit-many",
                str(manifest),
                "--out",
                str(tmp_path / "m"),
                *FAST,
                "--cpus-per-model",
                "2",
            ]
        )
        == 1
    )
    assert "--cpus-per-model need --engine ray" in capsys.readouterr().err
    assert (
        main(["predict", "m.safetensors", "x", "--out", str(tmp_path / "p"), "--workers", "2"]) == 1
    )
    assert "--workers need --engine ray" in capsys.readouterr().err


NO_RAY = """
import importlib.abc, sys

class NoRay(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "ray":
            raise ImportError("ray is blocked: the local engine must not need it")

sys.meta_path.insert(0, NoRay())
from padim.cli import main
assert main(["fit", DATA, "--out", OUT, *FAST]) == 0
assert main(["predict", OUT, DATA + "/test/good", "--out", PRED, "--no-images", "--quiet"]) == 0
assert main(["fit-many", MANIFEST, "--out", MANY, *FAST]) == 0
assert "ray" not in sys.modules
code = main(["fit", DATA, "--out", OUT + "2", *FAST, "--engine", "ray"])
assert code == 1, code
"""


@pytest.mark.slow
def test_local_engine_has_no_ray_dependency(products, tmp_path):
    root, _, _ = products
    (tmp_path / "one.csv").write_text(f"model,path\ncap,{root / 'cap'}\n")
    script = (
        NO_RAY.replace("DATA", repr(str(root / "cap")))
        .replace("OUT", repr(str(tmp_path / "m.safetensors")))
        .replace("PRED", repr(str(tmp_path / "pred")))
        .replace("MANIFEST", repr(str(tmp_path / "one.csv")))
        .replace("MANY", repr(str(tmp_path / "many")))
        .replace("FAST", repr(FAST))
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        "padim: error: the Ray engine needs Ray: pip install 'padim[ray]'"
    )
