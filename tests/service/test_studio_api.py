"""The studio's REST routes against a real `padim serve --studio` (as users start it): roles
(an operator reads, an engineer changes), bounded uploads, server folders only under
--import-root, training as a job followed to its version, the evaluation and its rates, heat
maps, an operating point, and a first admin token printed once for a catalogue without any."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
from conftest import encoded, save, serving, texture, with_defect

pytestmark = pytest.mark.slow


def follow(client: httpx.Client, job: dict, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while job["state"] == "running":
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
        job = client.get(f"/v1/studio/jobs/{job['id']}").json()
    return job


def test_studio_routes_roles_bounds_and_a_training(tmp_path):
    pytest.importorskip("sqlalchemy")
    from padim.lifecycle.database import open_catalogue
    from padim.lifecycle.tokens import TokenStore

    where = tmp_path / "catalogue"
    tokens = TokenStore(open_catalogue(where))
    operator = tokens.create("line", "operator", "root")
    engineer = tokens.create("ana", "engineer", "root")
    rng = np.random.default_rng(0)
    folder = tmp_path / "shared" / "good"
    for i in range(20):
        save(folder / f"{i}.png", texture(rng, 96))
    defects = [encoded(with_defect(texture(rng, 96), rng)[0]) for _ in range(4)]
    args = ["--studio", "--catalogue", str(where), "--import-root", str(tmp_path / "shared"),
            "--max-batch-images", "4", "--max-upload-mb", "0.05"]  # fmt: skip
    with (
        serving(args, tmp_path / "serve.log") as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {operator}"}) as op,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {engineer}"}) as eng,
    ):
        assert httpx.get(url + "/v1/studio/products").status_code == 401
        assert op.post("/v1/studio/products", json={"product": "widget"}).status_code == 403
        assert eng.post("/v1/studio/products", json={"product": "widget"}).status_code == 200
        assert eng.post("/v1/studio/products", json={"product": "widget"}).status_code == 409
        # server folders: only under --import-root
        outside = eng.post("/v1/studio/products/widget/import", json={"folder": str(tmp_path)})
        assert outside.status_code == 403 and "import-root" in outside.json()["error"]["message"]
        sneaky = str(folder / ".." / ".." / "catalogue")
        assert (
            eng.post("/v1/studio/products/widget/import", json={"folder": sneaky}).status_code
            == 403
        )
        imported = eng.post("/v1/studio/products/widget/import", json={"folder": str(folder)})
        assert imported.status_code == 200 and len(imported.json()["added"]) == 20
        # uploads: at most --max-batch-images files, each at most --max-upload-mb
        files = [("file", (f"d{i}.png", d)) for i, d in enumerate(defects)]
        too_many = [*files, ("file", ("x.png", defects[0]))]
        path = "/v1/studio/products/widget/images?kind=defect&defect_type=spot"
        assert eng.post(path, files=too_many).status_code == 400
        big = [
            (
                "file",
                (
                    "big.png",
                    encoded(np.random.default_rng(1).integers(0, 255, (200, 200, 3), np.uint8)),
                ),
            )
        ]
        assert eng.post(path, files=big).status_code == 413
        assert op.post(path, files=files).status_code == 403
        added = eng.post(path, files=files).json()
        assert len(added["added"]) == 4
        summary = op.get("/v1/studio/products/widget").json()
        assert summary["counts"]["defect"] == 4 and summary["defect_types"] == {"spot": 4}
        thumb = op.get(f"/v1/studio/images/{added['added'][0]}/thumb")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
        assert op.get("/v1/studio/images/999/image").status_code == 404
        # train: the proposal, then a job followed to its judged version
        assert op.get("/v1/studio/products/widget/proposal").status_code == 403
        offer = eng.get("/v1/studio/products/widget/proposal").json()["geometries"][0]
        bad = eng.post("/v1/studio/products/widget/train", json={"geometry": "huge"})
        assert bad.status_code == 409 and "geometry" in bad.json()["error"]["message"]
        job = eng.post(
            "/v1/studio/products/widget/train", json={"estimate_s": offer["seconds"]["total"]}
        ).json()
        busy = eng.post("/v1/studio/products/widget/train", json={})
        assert busy.status_code == 409 and "a job is running" in busy.json()["error"]["message"]
        job = follow(op, job)
        assert job["state"] == "done", job
        version = job["result"]["version"]
        evaluation = op.get(f"/v1/studio/products/widget/versions/{version}/evaluation").json()
        n_test = summary["counts"]["good_test"] + 4
        assert len(evaluation["images"]) == n_test
        assert evaluation["rates"]["caught"]["of"] == 4
        low = min(i["score"] for i in evaluation["images"]) - 1
        rates = op.get(
            f"/v1/studio/products/widget/versions/{version}/rates", params={"threshold": low}
        ).json()
        assert rates["caught"]["count"] == 4 and rates["false_alarms"]["rate"] == 1.0
        image = evaluation["images"][-1]["id"]
        heat = op.get(f"/v1/studio/products/widget/versions/{version}/heatmap/{image}").json()
        assert heat["overlay"][:8] == "iVBORw0K" and heat["verdict"] in ("good", "anomalous")
        point = {"threshold": low}
        assert (
            op.post(
                f"/v1/studio/products/widget/versions/{version}/operating-point", json=point
            ).status_code
            == 403
        )
        made = eng.post(
            f"/v1/studio/products/widget/versions/{version}/operating-point", json=point
        ).json()
        assert made == {"product": "widget", "version": version + 1, "parent": version}
        # promoted, the line serves it (the studio serves every product's production)
        assert (
            eng.post("/v1/products/widget/promote", json={"version": version + 1}).status_code
            == 200
        )
        verdict = op.post(
            "/v1/models/widget/predict", files={"file": ("g.png", encoded(texture(rng, 96)))}
        ).json()
        assert verdict["model_version"] == version + 1
        assert verdict["threshold"] == pytest.approx(low, abs=1e-3)
        assert "record_id" in verdict  # the studio records every verdict
        # retrain is a job too; with no false alarms marked yet it says so, in one line
        job = follow(op, eng.post("/v1/studio/products/widget/retrain").json())
        assert job["state"] == "failed" and "no false alarms" in job["error"], job
        assert "\n" not in job["error"]
        # frames of a stream (a video file under --import-root) as good images, as a job
        pytest.importorskip("av")
        from padim.data.video import write_video

        video = write_video(tmp_path / "shared" / "line.mp4", [texture(rng, 96) for _ in range(6)],
                            fps=5, quality=0)  # fmt: skip
        elsewhere = write_video(tmp_path / "line.mp4", [texture(rng, 96)] * 2, fps=5)
        refused = eng.post("/v1/studio/products/widget/capture", json={"source": str(elsewhere)})
        assert refused.status_code == 403
        job = eng.post(
            "/v1/studio/products/widget/capture", json={"source": str(video), "frames": 4}
        )
        job = follow(op, job.json())
        assert job["state"] == "done" and len(job["result"]["added"]) == 4, job
        assert job["done"] == job["total"] == 4


def test_the_first_admin_token_is_printed_once(tmp_path):
    pytest.importorskip("sqlalchemy")
    where = tmp_path / "catalogue"
    log = tmp_path / "serve.log"
    with serving(["--studio", "--catalogue", str(where)], log) as url:
        text = log.read_text()
        token = text.split("keep it; the page asks for it): ")[1].split()[0]
        assert "/studio" in text
        mine = {"Authorization": f"Bearer {token}"}
        assert httpx.get(url + "/v1/tokens", headers=mine).json()["tokens"][0]["role"] == "admin"
    with serving(["--studio", "--catalogue", str(where)], tmp_path / "again.log"):
        assert "admin token" not in (tmp_path / "again.log").read_text()
