"""The feedback loop and the drift alarm on a real line, as users run them (docs/lifecycle.md):
a catalogue, `padim serve --product P --record` in its own process, and only HTTP after that.

1. version 1 (fitted with --statistics keep) in production; an operator and an engineer token;
2. half A of the good test images and all defective ones scored; the operator marks the false
   alarms (good parts flagged), confirms the flagged defects, reports the missed ones (with
   their image);
3. the engineer retrains over REST: the candidate and its gate; promoted if it passed;
4. half B of the good images (never labelled, never trained on) scored before and after: the
   false alarms the retraining removed on parts it has not seen;
5. the lights dim (brightness x0.85): parts scored until the drift alarm, seen in /v1/health,
   Prometheus and the webhook.

    python benchmarks/line_walkthrough.py --model bsdata.safetensors --product ball_screw \
        --data ../shared/data/bsdata/ball_screw --out docs/line_walkthrough.json
"""

from __future__ import annotations

import argparse
import io
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from load_test import free_port, wait_healthy
from PIL import Image, ImageEnhance

from padim.data.images import list_images

EVENTS: list[dict] = []


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        EVENTS.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def padim(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "padim", *args], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)
    return done.stdout.strip()


def predict(http: httpx.Client, name: str, data: bytes) -> dict:
    res = http.post("/v1/predict", files={"file": (name, data)})
    res.raise_for_status()
    return res.json()


def dimmed(path: Path) -> bytes:
    buffer = io.BytesIO()
    ImageEnhance.Brightness(Image.open(path).convert("RGB")).enhance(0.85).save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--product", default="ball_screw")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    report: dict = {}
    rng = random.Random(0)
    goods = list_images(args.data / "test" / "good")
    rng.shuffle(goods)
    half_a, half_b = goods[: len(goods) // 2], goods[len(goods) // 2 :]
    defects = [p for d in sorted((args.data / "test").iterdir()) if d.name != "good"
               for p in list_images(d)]  # fmt: skip
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        cat = ["--catalogue", str(Path(tmp) / "catalogue")]
        padim("registry", "register", args.product, str(args.model), *cat, "--promote")
        operator = padim("tokens", "create", "line-pc", "--role", "operator", *cat)
        engineer = padim("tokens", "create", "ana", "--role", "engineer", *cat)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        hook_url = f"http://127.0.0.1:{hook.server_address[1]}/drift"
        serve = [sys.executable, "-m", "padim", "serve", "--product", args.product, "--record"]
        serve += [*cat, "--port", str(port), "--drift-webhook", hook_url, "--log-level", "warning"]
        server = subprocess.Popen(serve)
        try:
            wait_healthy(url, server)
            op = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"},
                              timeout=120)  # fmt: skip
            eng = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {engineer}"},
                               timeout=600)  # fmt: skip
            # 2. a shift of parts, and the operator's feedback
            stream = [(p, False) for p in half_a] + [(p, True) for p in defects]
            rng.shuffle(stream)
            labels = {"false_alarm": 0, "defect": 0, "missed_defect": 0}
            for path, is_defect in stream:
                result = predict(op, path.name, path.read_bytes())
                flagged = result["verdict"] != "good"
                label = None
                files = None
                if flagged and not is_defect:
                    label = "false_alarm"
                elif flagged:
                    label = "defect"
                elif is_defect:
                    label, files = "missed_defect", {"image": (path.name, path.read_bytes())}
                if label:
                    res = op.post(f"/v1/records/{result['record_id']}/feedback",
                                  data={"label": label}, files=files)  # fmt: skip
                    res.raise_for_status()
                    labels[label] += 1
            report["scored"] = {"good": len(half_a), "defective": len(defects)}
            report["feedback"] = labels
            before_b = sum(predict(op, p.name, p.read_bytes())["verdict"] != "good" for p in half_b)
            # 3. retrain, gate, promote
            started = time.perf_counter()
            res = eng.post(f"/v1/products/{args.product}/retrain", json={})
            if res.status_code != 200:
                raise SystemExit(f"retrain: {res.status_code} {res.text}")
            retrained = res.json()
            report["retrain_seconds"] = round(time.perf_counter() - started, 1)
            keys = ("version", "added_false_alarms", "gate", "production", "candidate")
            report["retrain"] = {k: retrained[k] for k in keys}
            body = {"version": retrained["version"]}
            if not retrained["gate"]["passed"]:
                body["override"] = "walk-through: promoted to measure it anyway"
            eng.post(f"/v1/products/{args.product}/promote", json=body).raise_for_status()
            after_b = sum(predict(op, p.name, p.read_bytes())["verdict"] != "good" for p in half_b)
            report["false_alarms_on_unseen_good_half"] = {
                "images": len(half_b), "before": int(before_b), "after": int(after_b)}  # fmt: skip
            # 5. the lights dim
            health = op.get("/v1/health").json()
            report["drift_before"] = health["drift"].get(args.product)
            count = 0
            for path in (half_b + half_a) * 3:
                predict(op, path.name, dimmed(path))
                count += 1
                if op.get("/v1/health").json()["drift_alarm"]:
                    break
            metrics = op.get("/metrics").text
            report["drift"] = {
                "dimmed_parts_until_alarm": count,
                "health": op.get("/v1/health").json()["drift"].get(args.product),
                "prometheus": [
                    line for line in metrics.splitlines() if line.startswith("padim_drift")
                ],
            }
            time.sleep(2)  # the webhook's thread
            report["drift"]["webhook_events"] = [e["event"] for e in EVENTS]
            report["versions"] = padim("registry", "versions", args.product, *cat).splitlines()
            report["events"] = padim(
                "registry", "events", args.product, *cat, "--limit", "8"
            ).splitlines()
        finally:
            server.terminate()
            server.wait(30)
            hook.shutdown()
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
