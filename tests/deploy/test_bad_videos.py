"""`padim predict` goes on past a video it cannot read, as it does past an image: an audio-only
file, random or truncated bytes named .mp4, a video with no frames, a corrupt packet
(hardening, round two: each of these used to end the whole run or give no row)."""

from __future__ import annotations

import csv
from fractions import Fraction

import numpy as np
import pytest
from conftest import save, texture

pytest.importorskip("av")

from padim.cli import main
from padim.data.video import read_frames, video_error, write_video


def _audio_only(path):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 16000), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _header_only(path):
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(10))
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        container.start_encoding()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    rng = np.random.default_rng(5)
    frames = [texture(rng) for _ in range(30)]
    return write_video(tmp_path_factory.mktemp("v") / "good.mp4", frames, fps=10, quality=10)


def test_bad_videos_become_error_rows_and_the_run_goes_on(model_file, clip, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    _audio_only(bad / "audio.mp4")
    (bad / "random.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    data = clip.read_bytes()
    (bad / "cut.mp4").write_bytes(data[: len(data) // 3])
    _header_only(bad / "empty.mkv")
    image = save(tmp_path / "part.png", texture(np.random.default_rng(1)))
    out = tmp_path / "out"
    code = main(["predict", str(model_file), str(image), *map(str, sorted(bad.iterdir())),
                 "--out", str(out), "--no-images"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader((out / "results.csv").open()))
    by_path = {}
    for row in rows:
        by_path.setdefault(row["path"].rsplit("/", 1)[-1], []).append(row)
    assert by_path["part.png"][0]["score"] and not by_path["part.png"][0]["error"]
    for name in ("audio.mp4", "random.mp4", "empty.mkv"):
        errors = [r["error"] for r in by_path[name] if r["error"]]
        assert errors, name
        assert "Errno" not in errors[0], errors[0]
    assert any(r["error"] or r["score"] for r in by_path["cut.mp4"])


def test_a_video_without_frames_gets_an_error_row(monkeypatch, tmp_path):
    from padim.deploy import predict

    monkeypatch.setattr(predict, "read_frames", lambda *args, **kwargs: iter(()))
    video = tmp_path / "none.mp4"
    video.write_bytes(b"")
    rows = list(predict._photos([], [video], 1))
    assert len(rows) == 1 and rows[0].photo.startswith("no_frames")


def test_a_corrupt_packet_is_skipped_not_the_end_of_the_video(clip, tmp_path):
    data = bytearray(clip.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 400] = bytes(400)  # zeros over a packet in the middle
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    errors: list[str] = []
    frames = list(read_frames(broken, on_error=errors.append))
    assert len(frames) >= 25  # the frames after the damage are still read


def test_video_errors_read_as_text():
    class Fake(Exception):
        pass

    assert video_error(Fake("[Errno 1094995529] Invalid data found: 'x.mp4'")) == (
        "Invalid data found: 'x.mp4'"
    )


def test_frames_over_the_pixel_limit_are_refused(clip):
    """An 8000x8000 video was decoded 16 frames a batch (6.3 GB); frames now have the images'
    pixel limit (50 MP), here lowered to the test clip's size."""
    from padim.errors import PadimError

    with pytest.raises(PadimError, match="over the limit"):
        next(read_frames(clip, max_pixels=64 * 64 - 1))
    assert next(read_frames(clip, max_pixels=64 * 64)).image.size == (64, 64)
