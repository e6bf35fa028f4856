"""`padim watch`'s sinks under faults: a webhook that redirects, an event in flight when the run
ends, a folder sink with a backlog, events whose pictures are large (hardening, round two)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from padim.deploy import watch


@pytest.fixture()
def redirecting():
    """A receiver that answers every POST with 302 to /moved and every GET with 200."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append("POST")
            self.send_response(302)
            self.send_header("Location", "/moved")
            self.end_headers()

        def do_GET(self) -> None:
            seen.append("GET")
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    server.shutdown()


def test_a_redirected_alarm_is_failed_not_sent(redirecting):
    """urllib turns a 302 to a POST into a GET without the body: the alarm was lost and
    counted as sent."""
    url, seen = redirecting
    sink = watch.WebhookSink(url, retries=0, timeout=2.0)
    sink.send({"id": "a"})
    sink.close(5.0)
    assert (sink.stats.sent, sink.stats.failed, sink.stats.dropped) == (0, 1, 0)
    assert seen == ["POST"] and "302" in sink.last_error and "/moved" in sink.last_error


class Slow(watch.Sink):
    name = "slow"

    def __init__(self, seconds: float) -> None:
        self.seconds, self.delivered = seconds, 0
        super().__init__()

    def deliver(self, event, payload) -> bool:
        time.sleep(self.seconds)
        self.delivered += 1
        return True


def test_the_event_in_flight_at_the_end_is_counted():
    sink = Slow(2.5)  # longer than close waits for its thread
    for i in range(3):
        sink.send({"id": i})
    time.sleep(0.2)  # the first is being delivered, two wait
    sink.close(timeout=0.3)
    s = sink.stats
    assert s.sent + s.failed + s.dropped == 3 and s.dropped >= 2


def test_a_folder_like_sink_drains_everything_at_the_end():
    """The folder sink had 10 s and then dropped what a slow disk had not written yet."""
    sink = Slow(0.05)
    sink.drain_timeout = None
    for i in range(40):
        sink.send({"id": i})
    sink.close()
    assert (sink.stats.sent, sink.stats.dropped, sink.delivered) == (40, 0, 40)
    assert watch.FolderSink.drain_timeout is None


def test_the_queue_is_bounded_by_bytes(monkeypatch):
    """256 4K events (~60 MB each) could wait in memory; now the payload bytes are capped."""
    monkeypatch.setattr(watch, "SINK_QUEUE_BYTES", 100 << 20)
    gate = threading.Event()

    class Held(watch.Sink):
        def deliver(self, event, payload) -> bool:
            gate.wait(10)
            return True

    sink = Held()
    frame = np.zeros((2160, 3840, 3), np.uint8)  # 24.9 MB
    for i in range(10):
        sink.send({"id": i}, (frame,))
    assert sink.stats.dropped >= 5  # at most 100 MB (4 frames) may wait
    gate.set()
    sink.close(5.0)
    assert sink.stats.sent + sink.stats.dropped == 10


def test_the_webhook_queue_holds_no_pictures():
    sink = watch.WebhookSink("http://127.0.0.1:9/none", retries=0, timeout=0.2)
    big = np.zeros((8000, 8000), np.float32)
    for i in range(20):
        sink.send({"id": i}, (big,))
    assert sink._bytes == 0
    sink.close(2.0)
