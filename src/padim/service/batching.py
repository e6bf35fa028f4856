"""Dynamic micro-batching: requests that arrive together share one forward pass.

One inference thread runs the model; the event loop never blocks on it. When the thread is
free it takes every queued image (up to `max_batch`); if other images are still being decoded
(`expecting`), it waits at most `max_wait_ms` for them. A lone client therefore never waits,
and under load the batches grow by themselves while the previous batch runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

ScoreFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class BatchResult:
    """One image's share of a batch: its score and map, and how it was served."""

    score: float
    anomaly_map: np.ndarray
    batch_size: int
    queue_seconds: float
    inference_seconds: float


@dataclass
class _Job:
    image: np.ndarray
    future: asyncio.Future
    queued_at: float


class MicroBatcher:
    """Queue images from many coroutines; score them in batches on one worker thread.

    `on_batch(size, seconds)` is called after each batch (for metrics)."""

    def __init__(
        self,
        score: ScoreFn,
        max_batch: int = 16,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.score = score
        self.max_batch = max_batch
        self.max_wait = max(0.0, max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self.expecting = 0  # images being decoded that will be submitted soon
        self._queue: asyncio.Queue[_Job] | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="padim-infer")
        self._task = asyncio.create_task(self._run(), name="padim-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._queue is not None:
            queued = []
            while not self._queue.empty():
                queued.append(self._queue.get_nowait())
            _fail(queued, RuntimeError("server shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._task = self._queue = self._executor = None

    async def submit(self, image: np.ndarray) -> BatchResult:
        """Score one preprocessed image (3, S, S); resolves when its batch is done."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Job(image, future, time.perf_counter()))
        return await future

    async def _collect(self) -> list[_Job]:
        assert self._queue is not None
        jobs = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or self.expecting <= 0:
                break
            try:
                jobs.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return [j for j in jobs if not j.future.done()]  # drop clients that went away

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._collect()
            if not jobs:
                continue
            started = time.perf_counter()
            batch = np.stack([j.image for j in jobs])
            try:
                scores, maps = await loop.run_in_executor(self._executor, self.score, batch)
            except asyncio.CancelledError:
                _fail(jobs, RuntimeError("server shutting down"))
                raise
            except Exception as exc:  # reported to each waiting request; the loop goes on
                _fail(jobs, exc)
                continue
            seconds = time.perf_counter() - started
            if self.on_batch is not None:
                self.on_batch(len(jobs), seconds)
            for j, s, m in zip(jobs, scores, maps, strict=True):
                if not j.future.done():
                    j.future.set_result(
                        BatchResult(float(s), m, len(jobs), started - j.queued_at, seconds)
                    )


def _fail(jobs: list[_Job], exc: BaseException) -> None:
    for j in jobs:
        if not j.future.done():
            j.future.set_exception(exc)
