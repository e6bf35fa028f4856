"""The Ray engine on a local Ray instance with 2 CPUs: exact equivalence of sharded and local
fits (uneven shards included), bulk scoring with bad images, resumption after a killed job,
and fit-many. Skipped without Ray, unless PADIM_REQUIRE_RAY=1 (as .ci/run sets)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SIZE, make_category, save, texture
from PIL import Image

from padim import Padim
from padim.cli import main
from padim.core.gaussian import GaussianStats
from padim.errors import PadimError
from padim.model.fitting import Fitter, build_embedder

if os.environ.get("PADIM_REQUIRE_RAY") == "1":
    import ray
else:
    ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from padim import ray_engine  # noqa: E402 (needs ray)

pytestmark = pytest.mark.slow  # a local Ray per session: about 2 minutes

FAST = ["--size", str(SIZE), "--crop", "none", "--quiet", "--device", "cpu"]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray with 2 CPUs for this module; its address lets CLI subprocesses join it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def one_thread():
    """Ray tasks run torch on 1 thread (1 CPU each); local fits compared with them do too,
    since some kernels round differently with another thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_category(tmp_path_factory.mktemp("ray") / "widget", n_train=23, seed=4)


def test_split_evenly():
    runs = ray_engine.split_evenly(list(range(11)), 4)
    assert [len(r) for r in runs] == [3, 3, 2, 3]
    assert [x for run in runs for x in run] == list(range(11))
    assert ray_engine.split_evenly([1, 2], 5) == [[1], [2]]  # never an empty shard


def test_unreachable_address_fails_fast():
    started = time.monotonic()
    with pytest.raises(PadimError, match=r"cannot reach the Ray cluster at 127\.0\.0\.1:1"):
        ray_engine.check_reachable("127.0.0.1:1")
    assert time.monotonic() - started < 10
    ray_engine.check_reachable("auto")  # left to Ray


def _local_stats(fitter: Fitter, plan, embedder) -> tuple[GaussianStats, torch.Tensor]:
    """The local fit's accumulation, batch by batch."""
    with torch.inference_mode():
        stats = GaussianStats.from_batches(
            embedder(x) for x in fitter.tensor_batches(plan.fit_items)
        )
        held = torch.cat([embedder(x) for x in fitter.tensor_batches(plan.hold_items)])
    return stats, held


@pytest.mark.parametrize("shards", [1, 3, 7])
def test_sharded_statistics_equal_local(cluster, data, one_thread, shards):
    """23 images, 5 held out, batches of 4: 5 batches (the last one of 2 images) over uneven
    shards; mean and covariance equal to float64 round-off, held-out embeddings exactly."""
    fitter = Padim(size=SIZE, crop=None, batch_size=4, device="cpu").fitter()
    plan = fitter.plan(data)
    embedder = build_embedder(fitter.config, None).eval()
    local, local_held = _local_stats(fitter, plan, embedder)
    with ExitStack() as stores:
        merged, held = ray_engine.sharded_statistics(fitter, plan, embedder, stores, shards)
        assert merged.count == local.count == 18
        torch.testing.assert_close(merged.mean(), local.mean(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(merged.covariance(), local.covariance(), rtol=1e-10, atol=1e-12)
        n, d, h, w = local_held.shape  # on disk, in input order, like the local fit's
        by_position = local_held.reshape(n, d, h * w).permute(2, 0, 1)
        assert held.n == n and torch.equal(held.chunk(slice(0, h * w)), by_position)
    assert not held.directory.exists()


def _assert_same_model_file(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    from padim.model.modelfile import read_model_config

    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        if key.startswith(("gaussian.", "scoring.", "calibration.")):  # round-off only
            torch.testing.assert_close(ta[key].float(), tb[key].float(), rtol=1e-3, atol=1e-5)
        else:
            assert torch.equal(ta[key], tb[key]), key
    ca, cb = read_model_config(a), read_model_config(b)
    ia, ib = ca.pop("info"), cb.pop("info")
    assert ca["threshold"] == pytest.approx(cb.pop("threshold"), rel=1e-6)
    ca.pop("threshold")
    assert ca == cb
    ia.pop("fit_seconds"), ib.pop("fit_seconds")
    assert ia.keys() == ib.keys()
    for key in ia:
        if key in ("thresholds", "good_score_summary", "score_scales"):
            for k in ia[key]:
                assert ia[key][k] == pytest.approx(ib[key][k], rel=1e-6), (key, k)
        elif key == "operating_points":  # the same points, made a moment apart
            for point in (*ia[key].values(), *ib[key].values()):
                point.pop("created")
            for point in ib[key].values():
                point["threshold"] = pytest.approx(point["threshold"], rel=1e-6)
            assert ia[key] == ib[key]
        else:
            assert ia[key] == ib[key], key


def test_cli_ray_fit_equals_local_fit(cluster, data, tmp_path, one_thread, capsys):
    local, remote = tmp_path / "local.safetensors", tmp_path / "ray.safetensors"
    common = [str(data), *FAST, "--batch-size", "3"]
    assert main(["fit", *common, "--out", str(local), "--threads", "1"]) == 0
    assert (
        main(
            [
                "fit",
                *common,
                "--out",
                str(remote),
                "--engine",
                "ray",
                "--address",
                cluster,
                "--shards",
                "4",
            ]
        )
        == 0
    )
    assert "on ray" in capsys.readouterr().out
    _assert_same_model_file(local, remote)


def test_cli_ray_fit_aligns_like_the_local_fit(cluster, data, tmp_path, one_thread):
    """The reference chosen on the driver travels with the tasks: a Ray fit that aligns its
    images equals the local one."""
    pytest.importorskip("cv2")
    local, remote = tmp_path / "local.safetensors", tmp_path / "ray.safetensors"
    common = [str(data), *FAST, "--batch-size", "3", "--align", "translation"]
    assert main(["fit", *common, "--out", str(local), "--threads", "1"]) == 0
    ray_args = ["--engine", "ray", "--address", cluster, "--shards", "3"]
    assert main(["fit", *common, "--out", str(remote), *ray_args]) == 0
    _assert_same_model_file(local, remote)


def test_ray_fit_few_images_and_errors(cluster, tmp_path, one_thread):
    rng = np.random.default_rng(0)
    few = [save(tmp_path / "few" / f"{i}.png", texture(rng)) for i in range(3)]
    local = Padim(size=SIZE, crop=None, batch_size=2, device="cpu").fit(few)
    remote = ray_engine.fit(Padim(size=SIZE, crop=None, batch_size=2, device="cpu"), few)
    assert remote.threshold_ == pytest.approx(local.threshold_, rel=1e-6)  # in-sample threshold
    assert "warning" in remote.info
    with pytest.raises(PadimError, match=r"^a Ray fit task failed: TypeError: "):
        ray_engine.fit(Padim(size=SIZE, crop=None, batch_size=2, device="cpu"), [*few, 5])
    (tmp_path / "few" / "1.png").write_bytes(b"broken")
    with pytest.raises(PadimError, match=r"^not an image file .*1\.png$"):
        ray_engine.fit(Padim(size=SIZE, crop=None, batch_size=2, device="cpu"), few)


def test_bottle_ray_fit_equals_local(cluster, bottle, tmp_path, one_thread):
    """The real category: a 3-shard fit gives the local fit's model, threshold included."""
    from padim.data.datasets import training_images

    images = training_images(bottle)[:60]
    local = Padim(size=128, crop=None, device="cpu").fit(images)
    remote = ray_engine.fit(Padim(size=128, crop=None, device="cpu"), images, shards=3)
    local.save(tmp_path / "local.safetensors")
    remote.save(tmp_path / "ray.safetensors")
    _assert_same_model_file(tmp_path / "local.safetensors", tmp_path / "ray.safetensors")


# ----------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def scored_folder(tmp_path_factory, data):
    """Nested good and defective images plus a bad file of every kind."""
    root = tmp_path_factory.mktemp("inputs")
    for sub in ("good", "square"):
        for p in sorted((data / "test" / sub).iterdir()):
            save(root / "line1" / sub / p.name, np.asarray(Image.open(p)))
    (root / "line2").mkdir()
    (root / "line2" / "garbage.png").write_bytes(b"not an image at all")
    (root / "line2" / "empty.png").write_bytes(b"")
    good = (root / "line1" / "good" / "000.png").read_bytes()
    (root / "line2" / "truncated.png").write_bytes(good[: len(good) // 2])
    return root


def _rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    with path.open() as f:
        return list(csv.DictReader(f))


def test_ray_predict_scores_and_bad_images(
    cluster, model_file, fitted, scored_folder, tmp_path, capsys
):
    out = tmp_path / "job"
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(scored_folder),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--address",
                cluster,
                "--batch-size",
                "3",
                "--maps",
                "--raw-maps",
                "--quiet",
            ]
        )
        == 0
    )
    assert "3 errors of 13" in capsys.readouterr().out
    rows = _rows(out / "results.parquet")
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # input order
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert errors["garbage.png"].startswith("not_an_image: ")
    assert errors["empty.png"].startswith("empty: ")
    assert errors["truncated.png"].startswith("unreadable: ")
    scored = [r for r in rows if not r["error"]]
    expected = fitted.score([r["path"] for r in scored])[0]
    np.testing.assert_allclose([r["score"] for r in scored], expected, rtol=1e-4)
    assert [r["label"] for r in scored] == [int(s > fitted.threshold_) for s in expected]
    assert all((out / r["heatmap"]).is_file() and (out / r["mask"]).is_file() for r in scored)
    raw = np.load(out / scored[0]["map"]).astype(np.float32)
    assert raw.max() == pytest.approx(scored[0]["score"], rel=1e-2)  # image score = map max
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == 13 and summary["errors"] == 3 and summary["scored_now"] == 13
    # a re-run has nothing left to do; --retry-errors scores the 3 failures again
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(scored_folder),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--address",
                cluster,
                "--quiet",
                "--retry-errors",
            ]
        )
        == 0
    )
    assert "scored 3 images (10 already done)" in capsys.readouterr().out


def test_ray_predict_manifest_csv(cluster, model_file, scored_folder, tmp_path, capsys):
    images = sorted((scored_folder / "line1" / "square").iterdir())
    manifest = tmp_path / "list.csv"
    manifest.write_text("path,line\n" + "".join(f"{p},1\n" for p in images))
    out = tmp_path / "job"
    assert (
        main(
            [
                "predict",
                str(model_file),
                str(manifest),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--address",
                cluster,
                "--format",
                "csv",
                "--workers",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    rows = _rows(out / "results.csv")
    assert [r["path"] for r in rows] == [str(p) for p in images]
    assert all(float(r["score"]) > 0 and r["error"] == "" for r in rows)
    other = tmp_path / "other.safetensors"  # another file: another model id
    assert main(["calibrate", str(model_file), "--threshold", "1.5", "--out", str(other)]) == 0
    assert (
        main(
            [
                "predict",
                str(other),
                str(manifest),
                "--out",
                str(out),
                "--engine",
                "ray",
                "--address",
                cluster,
            ]
        )
        == 1
    )
    assert "holds results of another job" in capsys.readouterr().err


def test_ray_predict_resumes_after_kill(cluster, model_file, fitted, tmp_path):
    """Kill the job (driver and its process group) while it writes parts; the re-run keeps
    every part written before the kill and scores only the rest."""
    rng = np.random.default_rng(7)
    for i in range(240):
        save(tmp_path / "many" / f"{i:03d}.png", texture(rng))
    out = tmp_path / "job"
    cmd = [
        sys.executable,
        "-m",
        "padim",
        "predict",
        str(model_file),
        str(tmp_path / "many"),
        "--out",
        str(out),
        "--engine",
        "ray",
        "--address",
        cluster,
        "--batch-size",
        "1",
        "--workers",
        "1",
        "--quiet",
    ]
    proc = subprocess.Popen(
        cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    parts = out / "parts"
    while time.monotonic() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (out / "results.parquet").exists()
    time.sleep(2)  # the killed job's actor may finish the part it was writing
    before = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    done_before = sum(pq.read_table(parts / name).num_rows for name in before)
    assert 5 <= done_before < 240
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"({done_before} already done)" in done.stdout
    after = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*.parquet")}
    assert all(after[name] == mtime for name, mtime in before.items())  # kept, not rewritten
    rows = _rows(out / "results.parquet")
    assert len(rows) == 240 and len({r["path"] for r in rows}) == 240
    expected = fitted.score([r["path"] for r in rows])[0]
    np.testing.assert_allclose([r["score"] for r in rows], expected, rtol=1e-4)


# ----------------------------------------------------------------------------- fit-many


def test_ray_fit_many(cluster, data, tmp_path, one_thread, capsys):
    make_category(tmp_path / "gear", n_train=7, seed=9)
    manifest = tmp_path / "models.csv"
    manifest.write_text(f"model,path\nwidget,{data}\ngear,gear\nbroken,nowhere\n")
    out = tmp_path / "models"
    assert (
        main(
            [
                "fit-many",
                str(manifest),
                "--out",
                str(out),
                *FAST,
                "--batch-size",
                "4",
                "--engine",
                "ray",
                "--address",
                cluster,
            ]
        )
        == 1
    )
    assert "1 of 3 models failed (broken)" in capsys.readouterr().err
    with (out / "fit-many.csv").open() as f:
        rows = {r["model"]: r for r in csv.DictReader(f)}
    assert [rows[m]["status"] for m in ("widget", "gear", "broken")] == [
        "fitted",
        "fitted",
        "failed",
    ]
    local = Padim(size=SIZE, crop=None, batch_size=4, device="cpu").fit(data)
    local.save(tmp_path / "widget_local.safetensors")
    _assert_same_model_file(tmp_path / "widget_local.safetensors", out / "widget.safetensors")
    assert not list(out.glob(".*"))  # no temporary files left
