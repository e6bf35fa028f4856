"""`padim watch`: score a live source (a camera, a stream URL, or a video file played in real
time) as frames arrive, and send each anomalous verdict to sinks.

A reader thread decodes frames and keeps only the newest one; the scorer takes it when it is
free, so scoring never falls behind the source: frames the scorer had no time for are dropped
and counted. Sinks (a folder of frames + JSON lines, a webhook) run in their own threads with
bounded queues: a slow disk or an unreachable webhook never blocks scoring (what they could not
take is counted as dropped, what failed after its retries as failed).
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from padim import options
from padim.data.decision import Decision
from padim.data.pictures import render_pictures
from padim.data.video import Frame, is_live, read_frames
from padim.deploy.scorers import Scorer, decide_scored, item_geometry, score_images
from padim.errors import PadimError
from padim.files import write_text_atomic

SINK_QUEUE = 256  # verdicts waiting for a sink; more are dropped (and counted)
SINK_QUEUE_BYTES = 512 << 20  # and the pictures they carry: a 4K event is about 60 MB


@dataclass
class SinkStats:
    sent: int = 0
    failed: int = 0
    dropped: int = 0


class Sink:
    """A background thread delivering events from a bounded queue (`SINK_QUEUE` events and
    `SINK_QUEUE_BYTES` of payload); `deliver` does the work. Every event sent is counted once,
    as sent, failed or dropped, including the one being delivered when the run ends."""

    name = "sink"
    drain_timeout: float | None = 10.0  # seconds `close` waits for the queue; None: all of it
    wants_payload = True  # False: the pictures are not needed (not queued, not counted)

    def __init__(self) -> None:
        self.stats = SinkStats()
        self._queue: queue.Queue[tuple[dict, Any, int] | None] = queue.Queue(SINK_QUEUE)
        self._bytes = 0
        self._abandoned = False  # close gave up waiting: what is left is counted as dropped
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"padim-{self.name}", daemon=True)
        self._thread.start()

    def send(self, event: dict, payload: Any = None) -> None:
        """Queue an event without waiting; a full queue (events or bytes) drops it (counted)."""
        payload = payload if self.wants_payload else None
        size = payload_bytes(payload)
        with self._lock:
            if self._bytes + size > SINK_QUEUE_BYTES and self._bytes:
                self.stats.dropped += 1
                return
            try:
                self._queue.put_nowait((event, payload, size))
            except queue.Full:
                self.stats.dropped += 1
                return
            self._bytes += size

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued, waiting at most `timeout` seconds (default: the sink's
        `drain_timeout`); what is still queued or in delivery then is counted as dropped."""
        timeout = self.drain_timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._queue.all_tasks_done.wait(left)
        with self._lock:
            self.stats.dropped += self._queue.unfinished_tasks  # queued, or stuck in delivery
            self._abandoned = True
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
        self._queue.put(None)
        self._thread.join(1.0)

    def deliver(self, event: dict, payload: Any) -> bool:
        raise NotImplementedError

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            event, payload, size = item
            try:
                ok = self.deliver(event, payload)
            except Exception:  # a sink's failure is counted, never raised into scoring
                ok = False
            with self._lock:
                if not self._abandoned:  # else close counted it as dropped already
                    self.stats.sent += ok
                    self.stats.failed += not ok
                    self._bytes -= size
                    self._queue.task_done()


def payload_bytes(payload: Any) -> int:
    """What an event's pictures hold in memory (photo, map): the queue's byte budget."""
    if payload is None:
        return 0
    total = 0
    for part in payload if isinstance(payload, tuple) else (payload,):
        if isinstance(part, np.ndarray):
            total += part.nbytes
        elif isinstance(part, Image.Image):
            total += part.width * part.height * len(part.getbands())
    return total


class FolderSink(Sink):
    """Each anomalous frame and its overlay (regions boxed) as JPEG files, plus one line of
    `events.jsonl`; files are written whole (temporary name, then renamed). JPEG, not PNG:
    encoding a camera frame as PNG costs tens of milliseconds of CPU the scorer needs."""

    name = "folder"
    drain_timeout = None  # a local disk: every queued frame is written before the run ends

    def __init__(self, folder: Path, scorer: Scorer) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.scorer = folder, scorer
        self.log = folder / "events.jsonl"
        super().__init__()

    def deliver(self, event: dict, payload: Any) -> bool:
        photo, small_map, regions, geometry = payload
        amap = geometry.map_to_image(small_map, photo.size)
        hidden = geometry.uninspected(photo.size)
        name = event["id"]
        scale = self.scorer.score_scale.at(event["threshold"])
        overlay = render_pictures(
            np.asarray(photo), amap, event["threshold"], ("overlay",), scale, regions, hidden
        )["overlay"]
        files = {"frame_file": f"{name}.jpg", "overlay_file": f"{name}_overlay.jpg"}
        for picture, file in ((photo, files["frame_file"]), (overlay, files["overlay_file"])):
            image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
            tmp = self.folder / f".{file}"
            image.save(tmp, format="JPEG", quality=92)
            os.replace(tmp, self.folder / file)
        with self.log.open("a", encoding="utf-8") as f:
            f.write(json.dumps({**event, **files}) + "\n")
        return True


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error for an alarm: urllib would follow a 302 as a GET without the
    body, and the alarm would be lost while counted as sent."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises HTTPError with the 3xx status


NO_REDIRECTS = urllib.request.build_opener(_RefuseRedirects)


class WebhookSink(Sink):
    """HTTP POST of each verdict as JSON; a failed post is retried (`retries` times, waiting
    0.5 s, 1 s, 2 s, ... up to 10 s) in the sink's thread."""

    name = "webhook"
    wants_payload = False  # it posts the event's JSON only

    def __init__(self, url: str, retries: int = 3, timeout: float = 5.0) -> None:
        if not url.lower().startswith(("http://", "https://")):
            raise PadimError(f"--webhook must be an http:// or https:// URL, got {url!r}")
        self.url, self.retries, self.timeout = url, retries, timeout
        self.last_error = ""
        super().__init__()

    def deliver(self, event: dict, payload: Any) -> bool:
        body = json.dumps(event).encode("utf-8")
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(min(10.0, 0.5 * 2 ** (attempt - 1)))
            request = urllib.request.Request(
                self.url, body, {"Content-Type": "application/json"}, method="POST"
            )
            try:
                with NO_REDIRECTS.open(request, timeout=self.timeout) as response:
                    if 200 <= response.status < 300:
                        return True
                    self.last_error = f"HTTP {response.status}"
            except urllib.error.HTTPError as exc:
                where = exc.headers.get("Location") if 300 <= exc.code < 400 else None
                self.last_error = f"HTTP {exc.code}" + (
                    f" (redirect to {where}: give that URL; an alarm is never re-posted "
                    "to a redirect)"
                    if where
                    else ""
                )
            except (urllib.error.URLError, OSError) as exc:
                self.last_error = str(getattr(exc, "reason", exc))
        return False


class LatestFrame:
    """A one-frame mailbox: the reader puts, the scorer takes; a frame replaced before it was
    taken is a dropped frame."""

    def __init__(self) -> None:
        self._frame: Frame | None = None
        self._closed = False
        self._cond = threading.Condition()

    def put(self, frame: Frame, wait: bool = False) -> bool:
        """Offer a frame; True when it replaced one that was never scored. `wait`: first wait
        until the scorer took the previous one (a file at --speed 0: every frame is scored)."""
        with self._cond:
            while wait and self._frame is not None and not self._closed:
                self._cond.wait(0.5)
            replaced = self._frame is not None
            self._frame = frame
            self._cond.notify()
            return replaced

    def take(self, timeout: float = 0.5) -> Frame | None:
        """The newest frame, None when the source has ended (or nothing came in `timeout`)."""
        with self._cond:
            if self._frame is None and not self._closed:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()  # a reader waiting to put the next frame
            return frame

    @property
    def finished(self) -> bool:
        with self._cond:
            return self._closed and self._frame is None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


@dataclass
class WatchStats:
    """What `padim watch` reports: frames read, scored, dropped, anomalous; per sink."""

    source: str
    read: int = 0
    scored: int = 0
    dropped: int = 0
    anomalous: int = 0
    errors: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    source_error: str = ""
    sinks: dict[str, SinkStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "sinks"}
        out["scored_per_second"] = round(self.scored / self.seconds, 2) if self.seconds else None
        out["sinks"] = {name: s.__dict__ for name, s in self.sinks.items()}
        return out

    def line(self) -> str:
        rate = self.scored / self.seconds if self.seconds else 0.0
        sinks = "".join(
            f"; {name}: {s.sent} sent, {s.failed} failed, {s.dropped} dropped"
            for name, s in self.sinks.items()
        )
        return (
            f"{self.source}: {self.seconds:.1f} s, read {self.read} frames, scored "
            f"{self.scored} ({rate:.1f}/s), dropped {self.dropped}, anomalous "
            f"{self.anomalous}{sinks}"
        )


@dataclass
class WatchOptions:
    threshold: float
    min_area: int = options.MIN_AREA.default
    speed: float = 1.0  # files: 1 = real time; 0 = as fast as they decode
    duration: float | None = None  # seconds, then stop
    max_frames: int | None = None  # frames scored, then stop
    reconnects: int = 5  # live sources: reopen this many times after a failure
    report_every: float = 5.0  # seconds between progress lines (0: none)


def _read(
    source: str, mailbox: LatestFrame, stats: WatchStats, opts: WatchOptions, stop: threading.Event
) -> None:
    """The reader thread: decode, pace files to real time, keep the newest frame."""
    live = is_live(source)
    attempts = 0
    try:
        while not stop.is_set():
            started = time.monotonic()
            try:
                for frame in read_frames(source):
                    if stop.is_set():
                        return
                    if not live and opts.speed > 0:
                        wait = started + frame.time / opts.speed - time.monotonic()
                        if wait > 0:
                            stop.wait(wait)
                    stats.read += 1
                    if mailbox.put(frame, wait=not live and opts.speed == 0):
                        stats.dropped += 1
                    attempts = 0
                return  # the end of a file (or a stream that ended cleanly)
            except PadimError as exc:
                stats.source_error = str(exc)
                if not live or attempts >= opts.reconnects:
                    return
                attempts += 1
                stats.reconnects += 1
                stop.wait(min(30.0, 2.0**attempts))
    finally:
        mailbox.close()


Recorder = Callable[[int, Decision, Image.Image | None], None]  # frame index, verdict, photo


def watch(
    scorer: Scorer,
    source: str,
    sinks: list[Sink],
    opts: WatchOptions,
    report: Callable[[str], None] | None = None,
    recorder: Recorder | None = None,
) -> WatchStats:
    """Score `source` until it ends, `duration` passes, `max_frames` are scored or the user
    interrupts; return the counts (sinks flushed). `recorder` gets every scored frame's
    verdict (good ones too) before the next frame is taken."""
    stats = WatchStats(source, sinks={s.name: s.stats for s in sinks})
    mailbox, stop = LatestFrame(), threading.Event()
    reader = threading.Thread(
        target=_read, args=(source, mailbox, stats, opts, stop), name="padim-reader", daemon=True
    )
    scale = scorer.score_scale.at(opts.threshold)
    started = last_report = time.monotonic()
    reader.start()
    try:
        while not mailbox.finished:
            now = time.monotonic()
            if opts.duration is not None and now - started >= opts.duration:
                break
            if opts.max_frames is not None and stats.scored >= opts.max_frames:
                break
            if report and opts.report_every and now - last_report >= opts.report_every:
                stats.seconds = now - started
                report(stats.line())
                last_report = now
            frame = mailbox.take()
            if frame is None:
                continue
            scored = score_images(scorer, [(source, frame.image)], keep_originals=True)[0]
            if scored.score is None or scored.anomaly_map is None or scored.size is None:
                stats.errors += 1
                continue
            stats.scored += 1
            unaligned = scored.transform is not None and not scored.transform.ok
            if recorder is not None:
                decision = decide_scored(scorer, scored, opts.threshold, scale, opts.min_area)
                recorder(frame.index, decision, scored.original)
            if not unaligned and not scored.score > opts.threshold:  # good: nothing to send
                continue
            stats.anomalous += 1
            if recorder is None:
                decision = decide_scored(scorer, scored, opts.threshold, scale, opts.min_area)
            regions = decision.regions
            wall = datetime.now(UTC)
            event = {
                "id": f"{wall.strftime('%Y%m%dT%H%M%S.%f')[:-3]}Z_f{frame.index:06d}",
                "source": source,
                "frame": frame.index,
                "time": frame.time,
                "at": wall.isoformat(timespec="milliseconds"),
                "score": scored.score,
                "normalised_score": decision.normalised_score,
                "threshold": opts.threshold,
                "verdict": decision.verdict,
                **({"reason": decision.reason} if decision.reason else {}),
                **(
                    {"alignment": scored.transform.to_dict()}
                    if scored.transform is not None
                    else {}
                ),
                "model_id": scorer.model_id,
                "n_regions": len(regions),
                "regions": [r.to_dict() for r in regions[: options.MAX_REGIONS]],
            }
            # the map at the model's input (256 KB), brought to the photo's size by the sink's
            # thread: at 4K the native map is 33 MB more per queued alarm
            geometry = item_geometry(scorer, scored)
            payload = (scored.original, scored.anomaly_map, regions, geometry)
            for sink in sinks:
                sink.send(event, payload)
    except (KeyboardInterrupt, SystemExit):
        pass  # Ctrl-C, or SIGTERM (the CLI raises SystemExit for it): report what was done
    finally:
        stop.set()
        stats.seconds = time.monotonic() - started
        reader.join(5.0)
        for sink in sinks:
            sink.close()
    return stats


def write_summary(folder: Path, stats: WatchStats) -> Path:
    """The counts as folder/summary.json (written whole)."""
    path = folder / "summary.json"
    write_text_atomic(path, json.dumps(stats.to_dict(), indent=2) + "\n")
    return path
