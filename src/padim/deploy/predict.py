"""Local `padim predict` (one process, any `Scorer` runtime, torch-free): results.csv /
results.json and per-image pictures (per scored frame for videos), staged atomically. (Bulk
jobs that resume and run on Ray write Parquet parts instead: `padim.deploy.bulk`.)

Everything is written into a temporary folder beside the output folder and moved into place
only when every image has been scored, so a failure leaves no partial results behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from padim import options
from padim.data.pictures import PICTURES
from padim.data.sources import output_names, source_paths
from padim.data.video import frame_count, is_video, read_frames
from padim.deploy.scorers import (
    ALIGNMENT_COLUMNS,
    RESULT_COLUMNS,
    Scorer,
    decide_scored,
    read_photo,
    resolve_threshold,
    save_scored_pictures,
    score_images,
)
from padim.errors import PadimError
from padim.files import check_output_folder
from padim.progress import progress_bar


@dataclass
class ResultRow:
    """One input's line of results.csv / results.json (an unreadable image: `error`, no score).
    `regions`: the largest-peak ones (at most options.MAX_REGIONS), `n_regions`: all of them."""

    path: str
    score: float | None
    is_anomalous: bool | None
    threshold: float
    error: str = ""
    overlay: str = ""
    heatmap: str = ""
    mask: str = ""
    normalised_score: float | None = None
    n_regions: int | None = None
    regions: list[dict] = field(default_factory=list)
    frame: int | None = None  # a video frame's index (from 0) and time (s)
    time: float | None = None
    verdict: str | None = None  # good, anomalous or cannot_align (then `reason` says why)
    reason: str | None = None
    alignment: dict | None = None  # shift, angle, scale, quality (models that align)

    def to_dict(self) -> dict:
        """The JSON record (an image's has no frame or time)."""
        out = dict(self.__dict__)
        if self.frame is None:
            del out["frame"], out["time"]
        if self.alignment is None:
            del out["alignment"]
        return out


@dataclass
class _Photo:
    """One thing to score: an image file or a video frame (or why it could not be read)."""

    path: str
    name: str  # for its picture files
    photo: Image.Image | str  # a string: the reading error
    frame: int | None = None
    time: float | None = None


def _photos(paths: list[Path], videos: list[Path], every: int) -> Iterator[_Photo]:
    """The images, then every `every`-th frame of each video, decoded one at a time; a video
    that cannot be read (or stops decoding) becomes an error entry and the rest go on."""
    names = dict(zip(paths + videos, output_names(paths + videos), strict=True))
    for path in paths:
        yield _Photo(str(path), names[path], read_photo(path))
    for video in videos:
        skipped: list[str] = []
        frames = 0
        try:
            for f in read_frames(video, every, skipped.append):
                frames += 1
                yield _Photo(str(video), f"{names[video]}_f{f.index:06d}", f.image, f.index, f.time)
        except PadimError as exc:
            yield _Photo(str(video), names[video], f"unreadable_video: {exc}")
            continue
        if skipped:
            why = f"corrupt_packets: {len(skipped)} skipped, the first: {skipped[0]}"
            yield _Photo(str(video), names[video], why)
        elif not frames:
            yield _Photo(str(video), names[video], "no_frames: the video has no frames to score")


def frames_or_zero(video: Path) -> int:
    """A video's frame count for the progress bar; 0 for one that cannot be read (it becomes
    an error row when its turn comes, and the run goes on)."""
    try:
        return frame_count(video)
    except PadimError:
        return 0


def _chunks(items: Iterator[_Photo], size: int) -> Iterator[list[_Photo]]:
    chunk: list[_Photo] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def write_predictions(
    scorer: Scorer,
    inputs: list[Path],
    out: Path,
    threshold: float | None = None,
    images: bool = True,
    batch_size: int = 16,
    progress: bool = False,
    operating_point: str | None = None,
    min_area: int = options.MIN_AREA.default,
    every: int = options.EVERY.default,
) -> list[ResultRow]:
    """Score every input with any runtime (torch, ONNX, OpenVINO) and write the outputs: score,
    normalised score, verdict and defect regions (at each photo's resolution, at least
    `min_area` pixels) per image, or per scored frame of a video (every `every`-th, with its
    index and time); an image that cannot be read or scored becomes a row with an `error`, and
    the rest go on."""
    check_output_folder(out, inputs)
    thr = resolve_threshold(scorer, threshold, operating_point)
    scale = scorer.score_scale.at(thr)
    videos = [p for p in inputs if p.is_file() and is_video(p)]
    others = [p for p in inputs if p not in videos]
    paths = [p for p in source_paths(others) if not is_video(p)] if others else []
    total = len(paths) + sum(-(-frames_or_zero(v) // every) for v in videos)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    rows: list[ResultRow] = []
    bar = progress_bar(total, "predict", enabled=progress)
    try:
        for chunk in _chunks(_photos(paths, videos, every), batch_size):
            photos = [(c.path, c.photo) for c in chunk]
            for item, scored in zip(chunk, score_images(scorer, photos, images), strict=True):
                row = ResultRow(item.path, None, None, thr, frame=item.frame, time=item.time)
                rows.append(row)
                if scored.score is None or scored.image is None or scored.anomaly_map is None:
                    row.error = scored.error or "unknown"
                    continue
                decision = decide_scored(scorer, scored, thr, scale, min_area)
                row.verdict, row.reason = decision.verdict, decision.reason
                if scored.transform is not None:
                    row.alignment = scored.transform.to_dict()
                regions = decision.regions
                row.score, row.is_anomalous = decision.score, decision.is_anomalous
                row.normalised_score = decision.normalised_score
                row.n_regions = len(regions)
                row.regions = [r.to_dict() for r in regions[: options.MAX_REGIONS]]
                if images:  # at the photo's own resolution
                    files = save_scored_pictures(
                        scorer, scored, stage, item.name, thr, PICTURES, regions
                    )
                    row.overlay, row.heatmap, row.mask = (files[k] for k in PICTURES)
            bar.update(len(chunk))
        (stage / "results.csv").write_text(_csv(rows, bool(videos)), encoding="utf-8")
        (stage / "results.json").write_text(
            json.dumps(
                {
                    "threshold": thr,
                    "operating_point": operating_point,
                    "score_scale": scale.to_dict(),
                    "min_area": min_area,
                    "every": every if videos else None,
                    "model_id": scorer.model_id,
                    "results": [r.to_dict() for r in rows],
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        out.mkdir(parents=True, exist_ok=True)
        stale = previous_outputs(out)  # an earlier run's pictures must not sit beside these
        for done in stage.iterdir():
            os.replace(done, out / done.name)
            stale.discard(done.name)
        for name in stale:
            (out / name).unlink(missing_ok=True)
    finally:
        bar.close()
        shutil.rmtree(stage, ignore_errors=True)
    return rows


def previous_outputs(out: Path) -> set[str]:
    """The picture files an earlier `padim predict` wrote into `out`, as its results.csv lists
    them (only those: anything else in the folder is the user's)."""
    try:
        with (out / "results.csv").open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return set()
    names = {row.get(k) or "" for row in rows for k in PICTURES}
    return {n for n in names if n and "/" not in n and not n.startswith(".")}


def _alignment_cells(alignment: dict | None) -> list[str]:
    """The CSV's alignment columns (empty for models that do not align)."""
    if alignment is None:
        return [""] * len(ALIGNMENT_COLUMNS)
    (dx, dy), values = alignment["shift"], (alignment["angle"], alignment["scale"])
    return [f"{v:g}" for v in (dx, dy, *values, alignment["quality"])]


def _csv(rows: list[ResultRow], frames: bool = False) -> str:
    """results.csv; with videos, `frame` and `time` columns follow `path`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    extra = ("frame", "time") if frames else ()
    writer.writerow((RESULT_COLUMNS[0], *extra, *RESULT_COLUMNS[1:]))
    for r in rows:
        where = ["" if r.frame is None else r.frame, "" if r.time is None else f"{r.time:.6f}"]
        writer.writerow(
            [
                r.path,
                *(where if frames else []),
                "" if r.score is None else f"{r.score:.6f}",
                "" if r.normalised_score is None else f"{r.normalised_score:.6f}",
                "" if r.is_anomalous is None else int(r.is_anomalous),
                "" if r.n_regions is None else r.n_regions,
                f"{r.threshold:.6f}",
                r.error,
                r.overlay,
                r.heatmap,
                r.mask,
                r.verdict or "",
                r.reason or "",
                *_alignment_cells(r.alignment),
            ]
        )
    return buf.getvalue()
