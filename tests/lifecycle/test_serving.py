"""The service with a catalogue, on SQLite and PostgreSQL: serving a registry alias, who may do
what (401/403, roles, tokens never stored in clear), every verdict recorded, promotion and
rollback under load with zero failed requests, and a server killed with SIGKILL losing no
acknowledged record."""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import ssl
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

pytest.importorskip("sqlalchemy")
from conftest import serving, texture, with_defect
from fastapi.testclient import TestClient
from sqlalchemy import select

from padim.lifecycle.audit import read_events
from padim.lifecycle.records import Query, RecordBook
from padim.lifecycle.registry import Registry
from padim.lifecycle.schema import tokens
from padim.lifecycle.tokens import TokenStore
from padim.service.app import create_app
from padim.service.server import served
from padim.service.settings import ServeSettings


def with_threshold(fitted, factor: float, path: Path) -> Path:
    other = copy.deepcopy(fitted)
    other.set_threshold(float(fitted.threshold_) * factor, name="line")
    return other.save(path)


def png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def plant(catalogue, fitted, tmp_path) -> dict:
    """Two registered versions of 'widget' (v1 in production), and a token per role."""
    registry = Registry(catalogue)
    for factor in (1.0, 2.0):
        path = with_threshold(fitted, factor, tmp_path / f"w{factor}.safetensors")
        registry.register("widget", path, actor="ana")
    registry.promote("widget", 1, actor="ana")
    store = TokenStore(catalogue)
    made = {role: store.create(f"{role}-1", role, actor="root") for role in ROLES}
    return {"catalogue": catalogue, "registry": registry, "tokens": made}


ROLES = ("operator", "engineer", "admin")


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    rng = np.random.default_rng(5)
    good = texture(rng)
    return {"good": png_bytes(good), "bad": png_bytes(with_defect(good, rng)[0])}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def app_for(location: tuple[str, str], **extra) -> TestClient:
    fields = {"products": ("widget",), "record": True, "auth": True, "reload_s": 0.2}
    settings = ServeSettings(catalogue=location[0], files=location[1], **(fields | extra))
    sources, lifecycle = served([], settings, "cpu", None)
    return TestClient(create_app(sources, settings, lifecycle))


def predict(client, image: bytes, token: str | None, name: str = "x.png"):
    headers = bearer(token) if token else {}
    files = {"file": (name, image, "image/png")}
    return client.post("/v1/predict", files=files, headers=headers)


def test_roles_tokens_and_records(plant, location, images):
    tok = plant["tokens"]
    with app_for(location) as client:
        missing = predict(client, images["good"], None)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert predict(client, images["good"], "padim_wrong").status_code == 401
        assert client.get("/v1/records").status_code == 401  # reads need a token too
        first = predict(client, images["bad"], tok["operator"], "bad.png").json()
        assert first["model_version"] == 1 and first["verdict"] == "anomalous"
        promote = "/v1/products/widget/promote"
        denied = client.post(promote, json={"version": 2}, headers=bearer(tok["operator"]))
        assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
        made = client.post(
            "/v1/tokens", json={"name": "x", "role": "admin"}, headers=bearer(tok["engineer"])
        )
        assert made.status_code == 403
        done = client.post(promote, json={"version": 2}, headers=bearer(tok["engineer"]))
        assert done.status_code == 200 and done.json()["version"] == 2
        assert predict(client, images["good"], tok["operator"]).json()["model_version"] == 2
        records = client.get("/v1/records", headers=bearer(tok["operator"])).json()["records"]
        assert [r["version"] for r in records] == [2, 1] and records[1]["id"] == first["record_id"]
        assert records[1]["image"] and records[1]["n_regions"] >= 1
        kept = client.get(f"/v1/records/{first['record_id']}/image", headers=bearer(tok["admin"]))
        assert kept.status_code == 200 and kept.content == images["bad"]
        csv_text = client.get(
            "/v1/records?format=csv&verdict=anomalous", headers=bearer(tok["operator"])
        ).text
        assert csv_text.count("\n") == 2 and "bad.png" in csv_text
        bad_time = client.get("/v1/records?since=yesterday", headers=bearer(tok["operator"]))
        assert bad_time.status_code == 422 and "ISO time" in bad_time.json()["error"]["message"]
        # feedback over REST: the author is the token's holder; a missed defect needs its image
        fb = f"/v1/records/{first['record_id']}/feedback"
        given = client.post(fb, data={"label": "defect"}, headers=bearer(tok["operator"]))
        assert given.status_code == 200 and given.json()["author"] == "operator-1 (api)"
        assert client.post(fb, data={"label": "defect"}).status_code == 401
        wrong = client.post(fb, data={"label": "missed_defect"}, headers=bearer(tok["operator"]))
        assert wrong.status_code == 409 and "cannot be a missed_defect" in wrong.text
        good_id = records[0]["id"]
        missed = f"/v1/records/{good_id}/feedback"
        data = {"label": "missed_defect", "note": "scratch at the rim"}
        files = {"image": ("x.png", images["good"], "image/png")}
        res = client.post(missed, data=data, files=files, headers=bearer(tok["operator"]))
        assert res.status_code == 200, res.text
        labels = client.get("/v1/feedback", headers=bearer(tok["operator"])).json()["feedback"]
        now = client.get("/v1/records", headers=bearer(tok["operator"])).json()["records"]
        assert [r["feedback"] for r in now] == ["missed_defect", "defect"]  # in the records
        assert [(f["record_id"], f["label"]) for f in labels] == [
            (good_id, "missed_defect"),
            (first["record_id"], "defect"),
        ]
        listed = client.get("/v1/tokens", headers=bearer(tok["admin"])).json()["tokens"]
        assert {t["name"] for t in listed} == {"operator-1", "engineer-1", "admin-1"}
        assert client.delete("/v1/tokens/operator-1", headers=bearer(tok["admin"])).is_success
    events = read_events(plant["catalogue"].engine)
    assert ("engineer-1 (api)", "promote") in {(e["actor"], e["action"]) for e in events}
    assert ("admin-1 (api)", "token-revoke") in {(e["actor"], e["action"]) for e in events}
    with plant["catalogue"].engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(select(tokens))]
    for token in tok.values():  # only hashes: no column of any row holds a token
        assert not any(token in str(value) for row in stored for value in row)
    if plant["catalogue"].kind == "sqlite":
        database = Path(plant["catalogue"].url.removeprefix("sqlite:///"))
        raw = b"".join(p.read_bytes() for p in database.parent.glob("catalogue.db*"))
        assert not any(token.encode() in raw for token in tok.values())


def test_open_reads_and_a_service_without_tokens(plant, location, images):
    with app_for(location, open_reads=True) as client:
        assert client.get("/v1/records").status_code == 200
        assert client.get("/v1/products/widget/versions").json()["aliases"] == {"production": 1}
        assert predict(client, images["good"], None).status_code == 401  # scoring still not
    with app_for(location, auth=False) as client:
        assert predict(client, images["good"], None).status_code == 200


def test_promote_and_rollback_under_load_with_zero_failed_requests(plant, location, tmp_path):
    """A real `padim serve --product` with 4 clients scoring without pause: the production
    alias moves v1 -> v2 -> v1 over REST; every request succeeds, answers switch version, and
    every answer is a record."""
    tok = plant["tokens"]
    args = ["--product", "widget", "--catalogue", location[0], "--files", location[1]]
    args += ["--record", "--reload-interval", "0.2"]
    image = png_bytes(texture(np.random.default_rng(1)))
    statuses: list[int] = []
    versions: list[int] = []
    stop = threading.Event()

    def client(url: str) -> None:
        with httpx.Client(base_url=url, headers=bearer(tok["operator"]), timeout=60) as http:
            while not stop.is_set():
                res = http.post("/v1/predict", files={"file": ("p.png", image, "image/png")})
                statuses.append(res.status_code)
                if res.status_code == 200:
                    versions.append(res.json()["model_version"])

    def wait_for(version: int) -> None:
        seen = len(versions)
        deadline = time.monotonic() + 60
        while not (len(versions) > seen + 10 and versions[-1] == version):
            assert time.monotonic() < deadline, f"never served version {version}"
            time.sleep(0.05)

    with serving(args, tmp_path / "serve.log") as url:
        threads = [threading.Thread(target=client, args=(url,)) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(1)
            engineer = bearer(tok["engineer"])
            res = httpx.post(
                f"{url}/v1/products/widget/promote", json={"version": 2}, headers=engineer
            )
            assert res.status_code == 200
            wait_for(2)
            res = httpx.post(f"{url}/v1/products/widget/rollback", json={}, headers=engineer)
            assert res.status_code == 200 and res.json()["version"] == 1
            wait_for(1)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}
    assert 2 in versions and versions[-1] == 1
    book = RecordBook(plant["catalogue"])
    assert len(book.query(Query(limit=None))) == len(statuses)


def test_a_killed_server_loses_no_acknowledged_record(plant, location, tmp_path, images):
    tok = plant["tokens"]
    args = ["--product", "widget", "--catalogue", location[0], "--files", location[1]]
    args += ["--record", "--keep-good", "1"]
    processes: list = []
    acked: list[int] = []
    headers = bearer(tok["operator"])
    with (
        serving(args, tmp_path / "serve.log", processes) as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as http,
    ):
        killer = threading.Timer(3.0, os.kill, (processes[0].pid, signal.SIGKILL))
        killer.start()
        try:
            while True:
                files = {"file": (f"{len(acked)}.png", images["good"], "image/png")}
                res = http.post("/v1/predict", files=files)
                acked.append(res.json()["record_id"])
        except httpx.TransportError:
            pass  # the server is gone
        killer.join()
    assert processes[0].wait(10) == -signal.SIGKILL and len(acked) > 5
    book = RecordBook(plant["catalogue"])
    found = {r["id"]: r for r in book.query(Query(limit=None))}
    assert set(acked) <= set(found)
    for record_id in acked:  # and each kept image is whole
        path = book.image_path(record_id)
        assert path is not None and path.read_bytes() == images["good"]


def test_concurrent_requests_share_commits_and_get_their_own_ids(catalogue):
    from padim.lifecycle.records import Entry
    from padim.service.catalogue import GroupCommit

    book = RecordBook(catalogue)
    sizes: list[int] = []
    write = book.write

    def counted(entries):
        sizes.append(len(entries))
        return write(entries)

    book.write = counted  # type: ignore[method-assign]
    commits = GroupCommit(book)

    def entry(i: int) -> Entry:
        return Entry("p", None, "m", "t", f"n{i}", float(i), 0.1, 1.0, "good", [], "ab" * 32)

    async def requests() -> list[list[int]]:
        return await asyncio.gather(*(commits.write([entry(i)] * (1 + i % 2)) for i in range(30)))

    answers = asyncio.run(requests())
    rows = {r["id"]: r for r in book.query(Query(limit=None))}
    for i, ids in enumerate(answers):
        assert len(ids) == 1 + i % 2 and all(rows[j]["name"] == f"n{i}" for j in ids)
    assert sum(sizes) == 45 and len(sizes) < 30  # grouped

    book.write = lambda entries: (_ for _ in ()).throw(OSError("disk full"))  # type: ignore
    with pytest.raises(OSError, match="disk full"):
        asyncio.run(commits.write([entry(0)]))


def test_tls_by_uvicorns_options(model_file, tmp_path):
    """--ssl-keyfile/--ssl-certfile: the same service over HTTPS (a self-signed certificate)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a certificate")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    make = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    make += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run([*make, "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    args = [str(model_file), "--ssl-keyfile", str(key), "--ssl-certfile", str(cert)]
    with serving(args, tmp_path / "serve.log", scheme="https") as url:
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(cert))
        assert httpx.get(url + "/v1/health", verify=trusted).status_code == 200
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https", "http") + "/v1/health", timeout=5)
