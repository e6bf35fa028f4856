"""Dynamic micro-batching: who waits, who shares a batch, what a failure does."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from padim.service.batching import MicroBatcher


def fake_score(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Score = the image's mean; map = its first channel (so results are traceable)."""
    return x.mean(axis=(1, 2, 3)), x[:, 0]


def image(value: float) -> np.ndarray:
    return np.full((3, 4, 4), value, dtype=np.float32)


async def with_batcher(batcher: MicroBatcher, body):
    await batcher.start()
    try:
        return await body()
    finally:
        await batcher.stop()


def test_lone_request_does_not_wait():
    b = MicroBatcher(fake_score, max_batch=8, max_wait_ms=2000)

    async def body():
        started = time.perf_counter()
        r = await b.submit(image(0.5))
        return r, time.perf_counter() - started

    r, seconds = asyncio.run(with_batcher(b, body))
    assert r.score == pytest.approx(0.5) and r.batch_size == 1
    assert seconds < 1.0  # far below max_wait: nothing else was on its way


def test_expected_images_join_the_batch_and_results_stay_matched():
    sizes: list[int] = []

    def score(x):
        sizes.append(len(x))
        return fake_score(x)

    b = MicroBatcher(score, max_batch=8, max_wait_ms=2000)

    async def late(value: float, delay: float):
        await asyncio.sleep(delay)  # still "decoding"
        try:
            return await b.submit(image(value))
        finally:
            b.expecting -= 1

    async def body():
        b.expecting = 2
        first = b.submit(image(0.1))
        return await asyncio.gather(first, late(0.2, 0.05), late(0.3, 0.1))

    results = asyncio.run(with_batcher(b, body))
    assert sizes == [3]
    assert [r.score for r in results] == pytest.approx([0.1, 0.2, 0.3])
    assert all(r.batch_size == 3 for r in results)
    np.testing.assert_allclose(results[2].anomaly_map, 0.3)


def test_queued_images_are_capped_at_max_batch():
    sizes: list[int] = []

    def slow(x):
        sizes.append(len(x))
        time.sleep(0.05)
        return fake_score(x)

    b = MicroBatcher(slow, max_batch=3, max_wait_ms=0)

    async def body():
        return await asyncio.gather(*(b.submit(image(i / 10)) for i in range(7)))

    results = asyncio.run(with_batcher(b, body))
    assert sum(sizes) == 7 and max(sizes) <= 3
    assert [r.score for r in results] == pytest.approx([i / 10 for i in range(7)])


def test_a_failing_batch_fails_its_requests_and_the_loop_goes_on():
    calls = {"n": 0}

    def flaky(x):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("backbone exploded")
        return fake_score(x)

    b = MicroBatcher(flaky, max_batch=4, max_wait_ms=0)

    async def body():
        with pytest.raises(RuntimeError, match="exploded"):
            await b.submit(image(0.1))
        return await b.submit(image(0.2))

    assert asyncio.run(with_batcher(b, body)).score == pytest.approx(0.2)


def test_invalid_settings():
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(fake_score, max_batch=0)
