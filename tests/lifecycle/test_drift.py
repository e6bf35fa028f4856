"""Drift alarms: the monitor on streams (silent on 10,000 unshifted results with defects mixed
in, firing within a window on a shift, clearing after it), replayed over records by `padim
drift`, and in the service: /v1/health, Prometheus, the webhook and the audit trail."""

from __future__ import annotations

import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from conftest import texture
from fastapi.testclient import TestClient
from PIL import Image

from padim.cli import main
from padim.lifecycle.audit import read_events
from padim.lifecycle.drift import DRIFT, OK, DriftMonitor, Reference
from padim.lifecycle.records import Entry, RecordBook
from padim.lifecycle.registry import Registry

REFERENCE = Reference(median=10.0, upper=15.0)


def line(rng, n: int, factor: float = 1.0) -> np.ndarray:
    """Good parts scored like the held-out ones (median 10, 95 % quantile about 15), 2 %
    defects far above; `factor` scales the good parts' scores (a shifted line)."""
    good = 10.0 * np.exp(rng.normal(0.0, 0.25, n)) * factor
    return np.where(rng.random(n) < 0.02, rng.uniform(40, 200, n), good)


def test_silent_on_an_unshifted_line_and_fast_on_a_shifted_one():
    rng = np.random.default_rng(0)
    monitor = DriftMonitor(REFERENCE, window=25)
    for s in line(rng, 10_000):
        monitor.add(s)
    assert monitor.alarms == 0 and monitor.state == OK
    changes = [i for i, s in enumerate(line(rng, 100, factor=1.8), start=1) if monitor.add(s)]
    assert monitor.state == DRIFT and changes and changes[0] <= 25  # within one window
    cleared = [i for i, s in enumerate(line(rng, 100), start=1) if monitor.add(s)]
    assert monitor.state == OK and cleared and cleared[0] <= 25 and monitor.alarms == 1


def test_half_a_window_of_defects_is_not_drift():
    monitor = DriftMonitor(REFERENCE, window=25)
    for i in range(200):
        monitor.add(500.0 if i % 25 < 12 else 10.0)  # bursts of 12 defects in 25
    assert monitor.alarms == 0


def test_padim_drift_replays_the_records(location, catalogue, model_file, capsys):
    from padim.model.modelfile import read_model_config

    registry = Registry(catalogue)
    registry.register("widget", model_file, actor="ana")
    reference = Reference.of_info(read_model_config(model_file)["info"])
    assert reference is not None
    book = RecordBook(catalogue)
    scores = [reference.median] * 30 + [reference.upper * 3] * 30 + [reference.median] * 30
    for i, s in enumerate(scores):
        book.write([Entry("widget", 1, "m", "t", f"{i}", s, 0.5, 1.0, "good", [], "ab" * 32)])
    args = ["drift", "widget", "--catalogue", location[0], "--files", location[1]]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    (part,) = report["versions"]
    assert part["version"] == 1 and len(part["alarms"]) == 1 and part["state"] == OK
    assert 30 < part["alarms"][0]["record"] <= 30 + 13 and part["alarms"][0]["cleared_at"]
    assert main(args) == 0
    assert "1 alarm(s), now ok" in capsys.readouterr().out
    assert main(["drift", "nothing", "--catalogue", location[0], "--files", location[1]]) == 1


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_service_raises_the_alarm_everywhere(catalogue, model_file):
    from padim.service.app import create_app
    from padim.service.server import served
    from padim.service.settings import ServeSettings

    Hook.received = []
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    registry = Registry(catalogue)
    registry.register("widget", model_file, actor="ana")
    registry.promote("widget", 1, actor="ana")
    url = f"http://127.0.0.1:{hook.server_address[1]}/drift"
    settings = ServeSettings(
        catalogue=catalogue.url,
        files=str(catalogue.files),
        products=("widget",),
        drift_window=5,
        drift_webhook=url,
    )
    sources, lifecycle = served([], settings, "cpu", None)
    rng = np.random.default_rng(2)

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    good = [png(texture(rng)) for _ in range(6)]
    dark = [png((texture(rng) * 0.45).astype(np.uint8)) for _ in range(6)]  # lights dimmed
    try:
        with TestClient(create_app(sources, settings, lifecycle)) as client:
            for data in good:
                assert client.post("/v1/predict", files={"file": ("g.png", data)}).is_success
            health = client.get("/v1/health").json()
            assert health["drift_alarm"] is False and health["drift"]["widget"]["state"] == OK
            for data in dark:
                client.post("/v1/predict", files={"file": ("d.png", data)})
            health = client.get("/v1/health").json()
            assert health["drift_alarm"] is True and health["drift"]["widget"]["alarms"] == 1
            metrics = client.get("/metrics").text
            assert 'padim_drift{model="widget"} 1.0' in metrics
            assert 'padim_drift_alarms_total{model="widget"} 1.0' in metrics
    finally:
        hook.shutdown()
    assert [e["event"] for e in Hook.received] == ["drift"]
    assert Hook.received[0]["model"] == "widget" and Hook.received[0]["version"] == 1
    events = read_events(catalogue.engine, "widget")
    assert any(e["action"] == "drift" and e["actor"] == "service" for e in events)
