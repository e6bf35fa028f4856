"""Video frames: reading every Nth frame with index and time, frame references decoded in
order, writing, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("av")

from padim.data.images import as_image
from padim.data.video import (
    FrameRef,
    frame_count,
    is_live,
    is_video,
    read_frames,
    video_frames,
    write_video,
)
from padim.errors import PadimError


def ramp(n: int = 30) -> list[np.ndarray]:
    """Frames of one grey level each (8 apart), easy to tell apart after compression."""
    return [np.full((48, 64, 3), 8 * i, np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("video") / "ramp.mp4", ramp(), fps=10)


def test_every_nth_frame_with_index_and_time(clip):
    frames = list(read_frames(clip, every=4))
    assert [f.index for f in frames] == list(range(0, 30, 4))
    assert [f.time for f in frames] == pytest.approx([i / 10 for i in range(0, 30, 4)])
    assert frames[0].image.size == (64, 48) and frames[0].image.mode == "RGB"
    for f in frames:  # each frame is the one written at that index (within codec loss)
        assert np.asarray(f.image).astype(int).mean() == pytest.approx(8 * f.index, abs=3)
    assert frame_count(clip) == 30


def test_frame_references_decode_the_right_frames_in_any_order(clip):
    refs = video_frames(clip, every=7)
    assert refs == [FrameRef(clip, i) for i in (0, 7, 14, 21, 28)]
    levels = [np.asarray(as_image(r)).mean() for r in [*refs, refs[1]]]  # back: reopened
    assert levels == pytest.approx([8 * i for i in (0, 7, 14, 21, 28, 7)], abs=3)
    with pytest.raises(PadimError, match="has no frame 99"):
        FrameRef(clip, 99).load_image()


def test_sources_and_errors(tmp_path):
    assert is_video("a/b.MP4") and is_video("x.avi") and not is_video("x.png")
    assert is_live("rtsp://cam/1") and is_live("0") and is_live("/dev/video2")
    assert not is_live("clip.mp4")
    with pytest.raises(PadimError, match="video not found"):
        list(read_frames(tmp_path / "missing.mp4"))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 this is not a video")
    with pytest.raises(PadimError, match="cannot open video"):
        list(read_frames(bad))
    with pytest.raises(PadimError, match="every"):
        list(read_frames(bad, every=0))
