"""`padim predict` into a folder used before: the earlier run's pictures go (as its results.csv
lists them), anything else of the user's stays (hardening, round two: 249 stale pictures
stayed beside a new results.csv)."""

from __future__ import annotations

import csv

from padim.cli import main


def test_a_reused_out_folder_holds_only_this_runs_pictures(model_file, category, tmp_path):
    tests = sorted((category / "test").rglob("*.png"))
    out = tmp_path / "out"
    assert main(["predict", str(model_file), *map(str, tests[:4]), "--out", str(out)]) == 0
    first = {p.name for p in out.iterdir()}
    (out / "notes.txt").write_text("mine")
    assert main(["predict", str(model_file), str(tests[-1]), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "results.csv").open()))
    listed = {row[k] for row in rows for k in ("overlay", "heatmap", "mask")}
    assert {p.name for p in out.iterdir()} == {"results.csv", "results.json", "notes.txt"} | listed
    assert len(first) == 2 + 4 * 3
