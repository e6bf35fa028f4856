"""Video: frames from files, camera devices and network streams (PyAV, the `video` extra).

`read_frames` decodes a source in order (every Nth frame, with its index and time); `FrameRef`
names one frame of a file so that training sets can list frames without holding them (they are
decoded when read, in order, by one reader per thread); `write_video` encodes frames (tests and
synthetic sets). Torch-free.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim.errors import PadimError, first_line

VIDEO_EXTENSIONS = (
    ".mp4",
    ".avi",
    ".mov",
    ".mkv",
    ".webm",
    ".m4v",
    ".mpg",
    ".mpeg",
    ".ts",
    ".wmv",
    ".flv",
)
URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


def av_module() -> Any:
    """PyAV, or a one-line install hint."""
    try:
        import av
    except ImportError:
        raise PadimError("video needs PyAV: pip install 'padim[video]'") from None
    return av


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_EXTENSIONS


def is_live(source: str) -> bool:
    """A camera device or a network stream (not a file to be read at its own pace)."""
    return bool(URL.match(source)) or source.isdigit() or source.startswith("/dev/video")


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its index in the stream (from 0), its time in seconds from the
    stream's start, and the picture."""

    index: int
    time: float
    image: Image.Image


def open_source(source: str | Path) -> Any:
    """An opened PyAV container for a video file, a camera (`0` or `/dev/video0`) or a
    stream URL (rtsp://, http://...); a clear one-line error when it cannot be opened."""
    av = av_module()
    text = str(source)
    kwargs: dict[str, Any] = {}
    if text.isdigit() or text.startswith("/dev/video"):
        text = f"/dev/video{text}" if text.isdigit() else text
        kwargs["format"] = "v4l2"
    elif URL.match(text):
        kwargs["timeout"] = 10.0
        if text.lower().startswith("rtsp"):
            kwargs["options"] = {"rtsp_transport": "tcp"}
    elif not Path(text).is_file():
        raise PadimError(f"video not found: {text}")
    try:
        container = av.open(text, **kwargs)
    except Exception as exc:
        raise PadimError(f"cannot open video {text}: {video_error(exc)}") from None
    if not container.streams.video:
        container.close()
        raise PadimError(f"{text} has no video stream")
    return container


MAX_BAD_PACKETS = 100  # packets that fail to decode before a source is given up
MAX_FRAME_PIXELS = 50_000_000  # as --max-pixels for images: an 8000x8000 video is refused


def video_error(exc: BaseException) -> str:
    """A decoder's error as one readable line (PyAV's start "[Errno 1094995529] ...")."""
    return re.sub(r"^\[Errno -?\d+\]\s*", "", first_line(exc))


def read_frames(
    source: str | Path,
    every: int = 1,
    on_error: Callable[[str], None] | None = None,
    max_pixels: int = MAX_FRAME_PIXELS,
) -> Iterator[Frame]:
    """Every `every`-th frame of a source, in order, as RGB images with index and time.

    A packet that does not decode is skipped and reported to `on_error` (one corrupt packet
    must not end a line's video); more than MAX_BAD_PACKETS of them, or frames of more than
    `max_pixels`, end the source with a clear error."""
    if every < 1:
        raise PadimError(f"every must be a whole number >= 1, got {every}")
    container = open_source(source)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pixels = (stream.codec_context.width or 0) * (stream.codec_context.height or 0)
        if pixels > max_pixels:
            raise PadimError(_too_large(source, pixels, max_pixels))
        start = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
        rate = float(stream.average_rate or stream.guessed_rate or 25)
        index, bad = -1, 0
        for packet in _packets(container, stream, source):
            try:
                decoded = packet.decode()
            except Exception as exc:
                bad += 1
                if on_error is not None:
                    on_error(f"a packet after frame {index} did not decode: {video_error(exc)}")
                if bad > MAX_BAD_PACKETS:
                    raise PadimError(
                        f"{source}: more than {MAX_BAD_PACKETS} packets did not decode "
                        f"(the last after frame {index}): {video_error(exc)}"
                    ) from None
                continue
            for frame in decoded:
                index += 1
                if index % every:
                    continue
                if frame.width * frame.height > max_pixels:
                    raise PadimError(_too_large(source, frame.width * frame.height, max_pixels))
                t = frame.time - start if frame.time is not None else index / rate
                yield Frame(index, round(float(t), 6), frame.to_image())
    finally:
        container.close()


def _packets(container: Any, stream: Any, source: str | Path) -> Iterator[Any]:
    """The stream's packets (the last, empty one flushes the decoder); a container that
    cannot be read further is a clear error."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            return
        except Exception as exc:
            raise PadimError(f"{source}: reading failed: {video_error(exc)}") from None
        yield packet


def _too_large(source: str | Path, pixels: int, limit: int) -> str:
    return f"{source}: frames of {pixels:,} pixels are over the limit of {limit:,}"


def frame_count(path: str | Path) -> int:
    """The number of frames of a video file, from its packets (no decoding)."""
    container = open_source(path)
    try:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)
    except Exception as exc:
        raise PadimError(f"cannot read video {path}: {video_error(exc)}") from None
    finally:
        container.close()


@dataclass(frozen=True)
class FrameRef:
    """Frame `index` of video file `video`, decoded when read (see `load_image`)."""

    video: Path
    index: int

    def load_image(self) -> Image.Image:
        return _reader().get(self.video, self.index)

    def __str__(self) -> str:
        return f"{self.video}#frame={self.index}"


def video_frames(path: str | Path, every: int = 1) -> list[FrameRef]:
    """References to every `every`-th frame of a video file."""
    return [FrameRef(Path(path), i) for i in range(0, frame_count(path), every)]


class _SequentialReader:
    """Decodes one video forward and hands out asked-for frames: reading a file's frames in
    increasing order decodes it once; going back reopens it."""

    def __init__(self) -> None:
        self.video: Path | None = None
        self.frames: Iterator[Frame] | None = None
        self.last: Frame | None = None

    def get(self, video: Path, index: int) -> Image.Image:
        if video != self.video or self.last is None or index < self.last.index:
            self.close()
            self.video, self.frames = video, read_frames(video)
            self.last = None
        assert self.frames is not None
        while self.last is None or self.last.index < index:
            try:
                self.last = next(self.frames)
            except StopIteration:
                self.close()
                raise PadimError(f"{video} has no frame {index}") from None
        return self.last.image

    def close(self) -> None:
        if self.frames is not None and hasattr(self.frames, "close"):
            self.frames.close()
        self.video = self.frames = self.last = None


_local = threading.local()


def _reader() -> _SequentialReader:
    if not hasattr(_local, "reader"):
        _local.reader = _SequentialReader()
    return _local.reader


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    codec: str = "libx264",
    quality: int = 18,
) -> Path:
    """Encode HxWx3 uint8 frames (even sides for yuv420p) as a video file; `quality` is x264's
    CRF (0 lossless, 18 visually lossless, 23 its default)."""
    av = av_module()
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faststart = {"movflags": "faststart"} if path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    with av.open(str(path), mode="w", options=faststart) as container:  # streamable MP4
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(quality)}
        for i, array in enumerate(frames):
            if i == 0:
                stream.height, stream.width = array.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
