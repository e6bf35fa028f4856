"""Videos on the line: `padim predict` on an MP4 (one row per scored frame, scores equal to
scoring the frames), and `padim watch` on a file played in real time (frames scored, dropped
and sent to a folder and a webhook that fails once)."""

from __future__ import annotations

import csv
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest
from conftest import texture, with_defect

pytest.importorskip("av")

from padim.cli import main
from padim.data.video import read_frames, write_video
from padim.deploy import watch
from padim.deploy.scorers import TorchScorer

FPS = 20
DEFECTIVE = set(range(16, 24))  # frames with a defect


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(40):
        image = texture(rng)
        out.append(with_defect(image, rng)[0] if i in DEFECTIVE else image)
    return out


@pytest.fixture(scope="module")
def threshold(fitted, frames) -> str:
    """Halfway (geometrically) between this small model's good frames and its defects: the
    two groups are far apart (about 3x), so the codec's loss cannot move a frame across."""
    scores = fitted.score(frames)[0]
    defect = np.array([i in DEFECTIVE for i in range(len(frames))])
    good, bad = scores[~defect].max(), scores[defect].min()
    assert bad > 2 * good
    return f"{np.sqrt(good * bad):.1f}"


@pytest.fixture(scope="module")
def clip(frames, tmp_path_factory):
    # x264 at CRF 0 in yuv420p: luma kept, chroma halved (as cameras send it)
    return write_video(tmp_path_factory.mktemp("line") / "line.mp4", frames, fps=FPS, quality=0)


def test_predict_scores_every_nth_frame_like_the_frames_themselves(
    fitted, model_file, clip, frames, tmp_path, capsys, threshold
):
    out = tmp_path / "out"
    args = ["predict", str(model_file), str(clip), "--out", str(out), "--every", "3"]
    assert main([*args, "--threshold", threshold]) == 0
    assert "scored 14 images" in capsys.readouterr().out
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:4] == ["path", "frame", "time", "score"]
    assert [int(r["frame"]) for r in rows] == list(range(0, 40, 3))
    assert [float(r["time"]) for r in rows] == pytest.approx([i / FPS for i in range(0, 40, 3)])
    scores = np.array([float(r["score"]) for r in rows])

    # the decoded frames, scored as images: the same numbers
    decoded = [f.image for f in read_frames(clip, every=3)]
    np.testing.assert_allclose(scores, fitted.score(decoded)[0], rtol=1e-4)  # batch order
    # the frames before encoding: equal within the codec's loss (measured: at most 10 %,
    # median 2 %, on these fine 64x64 textures; CRF 18 gives a median of 18 %)
    original = fitted.score([frames[i] for i in range(0, 40, 3)])[0]
    loss = np.abs(scores - original) / original
    assert np.max(loss) < 0.15 and np.median(loss) < 0.05
    flagged = {int(r["frame"]) for r in rows if r["label"] == "1"}
    assert flagged == DEFECTIVE & set(range(0, 40, 3))

    result = json.loads((out / "results.json").read_text())
    assert result["every"] == 3 and result["results"][1]["frame"] == 3
    first = result["results"][0]
    assert (out / first["overlay"]).is_file() and "_f000000_" in first["overlay"]


class Hook(BaseHTTPRequestHandler):
    """A webhook that answers 500 to its first post and 200 afterwards."""

    received: ClassVar[list[dict]] = []
    calls = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Hook.calls += 1
        if Hook.calls == 1:
            self.send_response(500)
        else:
            Hook.received.append(body)
            self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def webhook():
    Hook.received, Hook.calls = [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/events"
    server.shutdown()


def test_watch_plays_a_file_in_real_time_and_sends_anomalies(
    model_file, clip, webhook, tmp_path, capsys, threshold
):
    out = tmp_path / "events"
    started = time.monotonic()
    args = ["watch", str(model_file), str(clip), "--out", str(out), "--webhook", webhook]
    code = main([*args, "--threshold", threshold])
    seconds = time.monotonic() - started
    assert code == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert seconds >= 40 / FPS * 0.9  # played at the file's own pace
    assert summary["read"] == 40 and summary["scored"] + summary["dropped"] == 40
    assert f"scored {summary['scored']}" in printed and "dropped" in printed
    events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
    assert summary["anomalous"] == len(events) > 0
    assert {e["frame"] for e in events} <= DEFECTIVE
    for e in events:
        assert (out / e["frame_file"]).is_file() and (out / e["overlay_file"]).is_file()
        assert e["normalised_score"] > 0.5 and e["time"] == pytest.approx(e["frame"] / FPS)
    hook = summary["sinks"]["webhook"]
    assert hook == {"sent": len(events), "failed": 0, "dropped": 0}
    assert Hook.calls == len(events) + 1  # the first post was retried
    assert sorted(e["frame"] for e in Hook.received) == sorted(e["frame"] for e in events)


class Slow:
    """A scorer that takes 0.1 s per frame: the source (20 fps) outpaces it."""

    def __init__(self, scorer):
        self.scorer = scorer
        names = ("model_id", "threshold", "input_hw", "geometry", "score_scale", "thresholds")
        for name in (*names, "aligner"):
            setattr(self, name, getattr(scorer, name))
        self.preprocess = scorer.preprocess

    def score_batch(self, x):
        time.sleep(0.1)
        return self.scorer.score_batch(x)


def test_watch_drops_frames_rather_than_falling_behind(fitted, clip, threshold):
    scorer = Slow(TorchScorer(fitted))
    failing = watch.WebhookSink("http://127.0.0.1:9/none", retries=0, timeout=0.5)
    opts = watch.WatchOptions(threshold=float(threshold), report_every=0)
    started = time.monotonic()
    stats = watch.watch(scorer, str(clip), [failing], opts)
    assert time.monotonic() - started < 40 / FPS + 3  # kept up with the source
    assert stats.read == 40 and stats.dropped > 10
    assert stats.scored + stats.dropped == 40
    assert failing.stats.failed == stats.anomalous and failing.stats.sent == 0


@pytest.mark.slow
def test_watch_reads_a_stream_url(model_file, clip, tmp_path, capsys, threshold):
    """An http:// source is read as it arrives (a live stream: no pacing); one that cannot be
    opened is one error line, after the asked reconnects."""
    import functools
    from http.server import SimpleHTTPRequestHandler

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(clip.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        args = ["watch", str(model_file), f"{url}/{clip.name}", "--threshold", threshold]
        assert main([*args, "--out", str(tmp_path / "ev"), "--quiet"]) == 0
        summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
        assert summary["read"] == 40 and summary["scored"] + summary["dropped"] == 40
        assert main(["watch", str(model_file), f"{url}/missing.mp4", "--reconnects", "1"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot open video" in err[0] and "404" in err[0]
    finally:
        server.shutdown()


def test_watch_errors(model_file, tmp_path, capsys):
    assert main(["watch", str(model_file), str(tmp_path / "nope.mp4")]) == 1
    assert "video not found" in capsys.readouterr().err
    assert main(["watch", str(model_file), "x.mp4", "--webhook", "ftp://x"]) == 1
    assert "http://" in capsys.readouterr().err


@pytest.mark.slow
def test_sigterm_ends_watch_like_ctrl_c(model_file, clip, tmp_path, threshold):
    """SIGTERM (a service manager stopping the line) ended watch with 143, no summary.json and
    no output; now it stops like Ctrl-C: the counts are printed and written."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "alarms"
    proc = subprocess.Popen(
        [sys.executable, "-m", "padim", "watch", str(model_file), str(clip), "--out", str(out),
         "--threshold", threshold, "--speed", "0.2", "--quiet", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not out.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # scoring frames by now
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    assert "watched" in stdout and (out / "summary.json").is_file()
    assert json.loads((out / "summary.json").read_text())["scored"] >= 1
    assert os.path.basename(str(clip)) in stdout


def test_a_summary_path_taken_by_a_folder_is_refused_before_the_run(
    model_file, clip, tmp_path, capsys, threshold
):
    out = tmp_path / "alarms"
    (out / "summary.json").mkdir(parents=True)
    args = ["watch", str(model_file), str(clip), "--out", str(out), "--threshold", threshold]
    assert main([*args, "--speed", "0"]) == 1
    assert "summary.json" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["summary.json"]  # no alarm was written first


def test_watch_says_why_frames_of_a_file_were_not_scored(fitted, clip, monkeypatch, capsys):
    """watch on a file scored 3 of 100 frames, 0 alarms, and gave no hint why."""
    from padim.deploy import scorers

    monkeypatch.setattr(scorers, "load_scorer", lambda *a, **k: Slow(TorchScorer(fitted)))
    assert main(["watch", "model.safetensors", str(clip), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "frames were not scored" in err and "--speed 0" in err


def test_watch_records_every_frame_with_its_registry_version(
    model_file, clip, tmp_path, capsys, threshold
):
    """--record: every scored frame is a record (good ones too), named by the registry version
    whose file the model is; defective frames keep their image, good ones are sampled."""
    pytest.importorskip("sqlalchemy")
    catalogue = str(tmp_path / "catalogue")
    assert main(["registry", "register", "line", str(model_file), "--catalogue", catalogue]) == 0
    args = ["watch", str(model_file), str(clip), "--speed", "0", "--quiet", "--record"]
    args += ["--product", "line", "--catalogue", catalogue, "--keep-good", "0"]
    assert main([*args, "--threshold", threshold, "--out", str(tmp_path / "ev")]) == 0
    capsys.readouterr()
    summary = json.loads((tmp_path / "ev" / "summary.json").read_text())
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.records import Query, RecordBook

    rows = RecordBook(open_catalogue(catalogue)).query(Query(limit=None))
    assert len(rows) == summary["scored"] == 40 and {r["version"] for r in rows} == {1}
    bad = {int(r["name"].split()[-1]) for r in rows if r["verdict"] == "anomalous"}
    assert summary["dropped"] == 0 and bad == DEFECTIVE  # --speed 0: every frame is scored
    assert all(bool(r["image"]) == (r["verdict"] != "good") for r in rows)
