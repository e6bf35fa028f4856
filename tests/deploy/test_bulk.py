"""Bulk job folders and manifests (torch-free, Ray-free): parts, resume bookkeeping, results."""

import csv
import json
from typing import ClassVar

import numpy as np
import pytest
from conftest import save, texture

from padim.data.images import read_image
from padim.data.preprocess import Preprocess, resize_crop
from padim.data.sources import manifest_paths, read_table, source_paths
from padim.deploy.bulk import BulkJob, score_part
from padim.errors import PadimError
from padim.normalise import ScoreScale

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


class MeanScorer:
    """A stand-in runtime: score = mean brightness, map = brightness (16 x 16)."""

    model_id = "mean-0"
    threshold = 0.5
    input_size = 16
    input_hw = (16, 16)
    geometry = Preprocess(16, None)
    score_scale = ScoreScale(0.5, 0.1)
    operating_points: ClassVar[dict[str, float]] = {}
    aligner = None

    def preprocess(self, image):
        return resize_crop(image, 16, None)

    def score_batch(self, x):
        maps = x.mean(axis=1)
        return maps.mean(axis=(1, 2)), maps


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    good = [save(tmp_path / "in" / "a" / f"{i}.png", texture(rng, 24)) for i in range(3)]
    nested = save(tmp_path / "in" / "b" / "deep" / "x.png", np.full((20, 20, 3), 250, np.uint8))
    bad = tmp_path / "in" / "b" / "bad.png"
    bad.write_bytes(b"not a png")
    (tmp_path / "in" / ".hidden").mkdir()
    save(tmp_path / "in" / ".hidden" / "skip.png", texture(rng, 24))
    return tmp_path / "in", [*good, bad, nested]


def test_manifests_csv_and_parquet(tmp_path, images):
    folder, paths = images
    rel = [p.relative_to(tmp_path) for p in paths]
    (tmp_path / "m.csv").write_text("path,extra\n" + "".join(f"{p},x\n" for p in rel))
    assert manifest_paths(tmp_path / "m.csv") == paths  # relative to the manifest's folder
    pq.write_table(pa.table({"path": [str(p) for p in paths]}), tmp_path / "m.parquet")
    assert manifest_paths(tmp_path / "m.parquet") == paths
    assert source_paths([folder]) == sorted(paths)  # recursive, hidden folders skipped
    assert source_paths([tmp_path / "m.csv", folder]) == paths  # no repeats


@pytest.mark.parametrize(
    "text, message",
    [
        ("file\na.png\n", "no column 'path'"),
        ('path\na.png\n""\n', "row 3: empty path"),
    ],
)
def test_bad_manifests(tmp_path, text, message):
    (tmp_path / "m.csv").write_text(text)
    with pytest.raises(PadimError, match=message):
        read_table(tmp_path / "m.csv", ["path"])


def test_manifest_errors(tmp_path):
    with pytest.raises(PadimError, match="manifest not found"):
        manifest_paths(tmp_path / "none.csv")
    (tmp_path / "m.txt").write_text("path\n")
    with pytest.raises(PadimError, match=r"\.csv or \.parquet"):
        manifest_paths(tmp_path / "m.txt")
    (tmp_path / "m.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(PadimError, match="cannot read Parquet manifest"):
        manifest_paths(tmp_path / "m.parquet")


def test_score_part_records_bad_images(tmp_path, images):
    _, paths = images
    job = BulkJob(tmp_path / "job")
    job.start({"model_id": "mean-0", "threshold": 0.5})
    names = [p.stem for p in paths]
    rows = score_part(
        MeanScorer(),
        [str(p) for p in paths],
        names,
        0.5,
        job.maps_dir,
        job.parts_dir,
        ("heatmap", "mask", "map"),
    )
    assert rows["error"][3].startswith("not_an_image: ")
    assert rows["score"][3] is None and rows["label"][3] is None
    assert rows["label"][4] == 1 and rows["score"][4] > 0.9  # the bright image
    assert all(rows["error"][i] is None for i in (0, 1, 2, 4))
    assert (job.maps_dir / "x_heatmap.png").is_file() and rows["mask"][4] == "maps/x_mask.png"
    assert rows["overlay"][4] is None and not (job.maps_dir / "x_overlay.png").exists()
    raw = np.load(job.maps_dir / "x_map.npy")  # the raw map, to re-threshold later
    assert raw.dtype == np.float16 and raw.shape == (16, 16) and rows["map"][4] == "maps/x_map.npy"
    scorer = MeanScorer()
    expected = scorer.score_batch(scorer.preprocess(read_image(paths[4]))[None])[1][0]
    assert np.allclose(raw, expected, atol=1e-3)
    parts = list(job.parts_dir.glob("part-*.parquet"))
    assert len(parts) == 1 and pq.read_table(parts[0]).num_rows == 5
    assert not list(job.parts_dir.glob(".*"))  # no temporary files left


def test_job_resume_bookkeeping(tmp_path, images):
    _, paths = images
    job = BulkJob(tmp_path / "job", "csv")
    job.start({"model_id": "mean-0", "threshold": 0.5})
    score_part(MeanScorer(), [str(p) for p in paths[:2]], ["0", "1"], 0.5, None, job.parts_dir)
    assert set(job.done()) == {str(p) for p in paths[:2]}
    score_part(MeanScorer(), [str(p) for p in paths[2:]], ["2", "3", "4"], 0.5, None, job.parts_dir)
    bad = str(paths[3])
    assert job.done()[bad]["error"] and bad not in job.done(retry_errors=True)
    job.parts_dir.joinpath("part-x.parquet").write_bytes(b"")  # unreadable parts are ignored
    summary = job.finish([str(p) for p in reversed(paths)], {"engine": "test"})
    assert summary["images"] == 5 and summary["errors"] == 1
    with (tmp_path / "job" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [str(p) for p in reversed(paths)]  # input order
    assert rows[1]["error"].startswith("not_an_image") and rows[1]["score"] == ""
    # fixed and retried: the scored row wins over the earlier error row
    save(paths[3], texture(np.random.default_rng(1), 24))
    score_part(MeanScorer(), [bad], ["3"], 0.5, None, job.parts_dir)
    assert job.done()[bad]["error"] is None
    assert job.finish([str(p) for p in paths], {"engine": "again"})["errors"] == 0
    assert json.loads((tmp_path / "job" / "summary.json").read_text())["engine"] == "again"
    with pytest.raises(PadimError, match="no result"):
        job.finish([str(tmp_path / "never.png")], {})


def test_job_folder_belongs_to_one_model(tmp_path):
    BulkJob(tmp_path / "job").start({"model_id": "a-1", "threshold": 1.0})
    BulkJob(tmp_path / "job").start({"model_id": "a-1", "threshold": 1.0})  # same job: fine
    with pytest.raises(PadimError, match=r"another job.*model_id"):
        BulkJob(tmp_path / "job").start({"model_id": "b-2", "threshold": 1.0})
    with pytest.raises(PadimError, match=r"another job.*threshold"):
        BulkJob(tmp_path / "job").start({"model_id": "a-1", "threshold": 2.0})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(PadimError, match="not empty and holds no padim job"):
        BulkJob(tmp_path / "other").start({"model_id": "a-1", "threshold": 1.0})
    with pytest.raises(PadimError, match="format"):
        BulkJob(tmp_path / "new", "json").start({})
