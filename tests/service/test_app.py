"""The REST service in-process: every endpoint, every bad input, batching and metrics."""

from __future__ import annotations

import base64
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import SIZE, png_declaring, texture, with_defect
from fastapi.testclient import TestClient
from PIL import Image

from padim.deploy.scorers import TorchScorer
from padim.service.app import create_app
from padim.service.settings import MB, ServeSettings


def png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def images() -> dict[str, bytes]:
    rng = np.random.default_rng(42)
    good = texture(rng)
    bad, _ = with_defect(texture(rng), rng)
    return {"good": png(good), "bad": png(bad), "jpeg": png(good, "JPEG")}


@pytest.fixture(scope="module")
def scorer(fitted) -> TorchScorer:
    return TorchScorer(fitted, model_id="widget-test")


def make_client(scorer, **settings) -> TestClient:
    return TestClient(create_app(scorer, ServeSettings(**settings)))


@pytest.fixture(scope="module")
def client(scorer):
    with make_client(scorer, max_upload_bytes=MB, max_pixels=4_000_000) as c:
        yield c


def post_file(client, data: bytes, name: str = "img.png", path: str = "/v1/predict", **params):
    return client.post(path, files={"file": (name, data, "image/png")}, params=params)


def assert_error(res, status: int, code: str, words: str) -> None:
    assert res.status_code == status, res.text
    err = res.json()["error"]
    assert err["status"] == status and err["code"] == code, err
    assert re.search(words, err["message"], re.I), err["message"]
    assert "Traceback" not in res.text


# ----------------------------------------------------------------------------- predicting


def test_predict_multipart_matches_the_model(client, fitted, images):
    res = post_file(client, images["bad"], "bad.png")
    assert res.status_code == 200, res.text
    body = res.json()
    expected = fitted.predict([Image.open(io.BytesIO(images["bad"]))])[0]
    assert body["score"] == pytest.approx(expected.score, rel=1e-5)
    assert body["threshold"] == pytest.approx(fitted.threshold_)
    assert body["is_anomalous"] == expected.is_anomalous
    assert body["verdict"] == ("anomalous" if expected.is_anomalous else "good")
    assert body["model_id"] == "widget-test" and body["filename"] == "bad.png"
    assert body["image"] == {"width": SIZE, "height": SIZE, "input_size": SIZE}
    assert set(body["timings_ms"]) == {"decode", "queue", "inference", "render", "total"}
    assert "pictures" not in body and "anomaly_map" not in body


def test_defect_scores_above_good(client, images):
    good = post_file(client, images["good"]).json()
    bad = post_file(client, images["bad"]).json()
    assert bad["score"] > good["score"]


def test_raw_body_and_jpeg(client, images):
    raw = client.post(
        "/v1/predict",
        content=images["jpeg"],
        headers={"Content-Type": "image/jpeg"},
        params={"filename": "cam1.jpg"},
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["filename"] == "cam1.jpg"
    octet = client.post(
        "/v1/predict", content=images["good"], headers={"Content-Type": "application/octet-stream"}
    )
    assert octet.status_code == 200 and octet.json()["filename"] == "body"


def test_pictures_and_raw_map(client, fitted, images):
    res = post_file(client, images["bad"], include="heatmap,mask,overlay,input,map")
    body = res.json()
    for name in ("heatmap", "mask", "overlay", "input"):
        pic = Image.open(io.BytesIO(base64.b64decode(body["pictures"][name])))
        assert pic.size == (SIZE, SIZE), name
    amap = body["anomaly_map"]
    values = np.frombuffer(base64.b64decode(amap["data"]), dtype="<f4").reshape(
        amap["height"], amap["width"]
    )
    _, maps = fitted.score([Image.open(io.BytesIO(images["bad"]))])
    np.testing.assert_allclose(values, maps[0], rtol=1e-5, atol=1e-4)
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["pictures"]["mask"]))))
    np.testing.assert_array_equal(mask > 0, values > body["threshold"])


def test_threshold_override_changes_verdict_and_mask(client, images):
    score = post_file(client, images["good"]).json()["score"]
    low = post_file(client, images["good"], threshold=score / 2, include="mask").json()
    high = post_file(client, images["good"], threshold=score * 2, include="mask").json()
    assert low["is_anomalous"] and not high["is_anomalous"]
    assert low["threshold"] == pytest.approx(score / 2)
    mask_low = np.asarray(Image.open(io.BytesIO(base64.b64decode(low["pictures"]["mask"]))))
    mask_high = np.asarray(Image.open(io.BytesIO(base64.b64decode(high["pictures"]["mask"]))))
    assert mask_low.sum() > mask_high.sum() == 0


def test_batch_endpoint_keeps_order_and_reports_bad_items(client, images):
    files = [
        ("files", ("a.png", images["good"], "image/png")),
        ("files", ("broken.png", b"not an image", "image/png")),
        ("files", ("c.png", images["bad"], "image/png")),
    ]
    res = client.post("/v1/predict/batch", files=files)
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["count"] == 3 and body["errors"] == 1
    names = [r["filename"] for r in body["results"]]
    assert names == ["a.png", "broken.png", "c.png"]
    assert body["results"][1]["error"]["code"] == "not_an_image"
    single = post_file(client, images["bad"]).json()["score"]
    assert body["results"][2]["score"] == pytest.approx(single, rel=1e-5)


def test_batch_limits(scorer, images):
    with make_client(scorer, max_batch_images=2) as c:
        files = [("files", (f"{i}.png", images["good"], "image/png")) for i in range(3)]
        assert_error(
            c.post("/v1/predict/batch", files=files), 400, "bad_multipart", "too many files"
        )
        assert_error(
            c.post(
                "/v1/predict/batch", content=images["good"], headers={"Content-Type": "image/png"}
            ),
            415,
            "unsupported_media_type",
            "multipart",
        )


# ----------------------------------------------------------------------------- other endpoints


def test_health_and_model(client, fitted):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["model_loaded"] is True
    info = client.get("/v1/model").json()
    assert info["backbone"] == fitted.config.backbone
    assert info["input_size"] == SIZE and info["resize"] == SIZE and info["crop"] is None
    assert info["threshold"] == pytest.approx(fitted.threshold_)
    assert info["n_train"] == fitted.info["n_train"]
    assert info["library_version"] and info["model_id"] == "widget-test"


def test_metrics_count_requests_errors_and_batches(scorer, images):
    with make_client(scorer) as c:
        for _ in range(3):
            post_file(c, images["good"])
        post_file(c, b"garbage")
        text = c.get("/metrics").text
    assert re.search(
        r'padim_http_requests_total\{endpoint="/v1/predict",method="POST",'
        r'status="200"\} 3\.0',
        text,
    ), text
    assert re.search(
        r'padim_http_requests_total\{endpoint="/v1/predict",method="POST",'
        r'status="400"\} 1\.0',
        text,
    )
    assert re.search(r'padim_errors_total\{code="not_an_image",endpoint="/v1/predict"\} 1\.0', text)
    assert (
        'padim_http_request_duration_seconds_bucket{endpoint="/v1/predict",le="+Inf"} 4.0' in text
    )
    assert 'padim_batch_size_count{model="widget-test"} 3.0' in text
    assert re.search(
        r'padim_images_scored_total\{model="widget-test",verdict="(good|anomalous)"\}', text
    )
    assert 'padim_model_info{backbone="efficientnet_lite0"' in text
    assert "padim_models_loaded 1.0" in text


def test_examples_are_none_by_default_and_the_demo_on_request(client, scorer):
    """Every model's page offered the demo's gravel pictures as its examples."""
    assert client.get("/v1/examples").json() == []
    with make_client(scorer, examples=(Path("demo"),)) as c:
        listing = c.get("/v1/examples").json()
        assert len(listing) >= 3 and any("scratch" in e["name"] for e in listing)
        img = c.get(listing[0]["url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    Image.open(io.BytesIO(img.content)).verify()
    assert_error(client.get("/v1/examples/999"), 404, "not_found", "no example")


def test_a_photo_of_another_shape_is_scored_with_a_warning(client):
    """A bottle photo squeezed into a 400x160 model was scored silently."""
    rng = np.random.default_rng(3)
    square = post_file(client, png(texture(rng))).json()
    wide = post_file(client, png(np.concatenate([texture(rng)] * 3, axis=1))).json()
    assert square["warnings"] == []
    assert len(wide["warnings"]) == 1 and "stretched" in wide["warnings"][0]


def test_examples_from_folders(scorer, tmp_path, images):
    (tmp_path / "crack").mkdir()
    (tmp_path / "crack" / "x.png").write_bytes(images["bad"])
    (tmp_path / "top.png").write_bytes(images["good"])
    with make_client(scorer, examples=(tmp_path,)) as c:
        names = [e["name"] for e in c.get("/v1/examples").json()]
    assert names == ["top.png", "crack/x.png"]


def test_page_is_self_contained(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert "/static/app.js" in assets and "/static/style.css" in assets
    for url in assets:
        assert not re.match(r"(https?:)?//", url), f"external resource {url}"
        if url.startswith("/"):
            assert client.get(url).status_code == 200, url
    script = client.get("/static/app.js").text + client.get("/static/style.css").text
    assert not re.search(r"https?://", script)


# ----------------------------------------------------------------------------- bad input


BAD_IMAGES = [
    (b"", 400, "empty", "empty"),
    (b"this is plain text, not a picture", 400, "not_an_image", "not an image"),
    (png_declaring(0, 0), 400, "not_an_image", "not an image"),
    (png_declaring(1, 1), 400, "too_small", r"too small \(1x1\)"),
    (png_declaring(40000, 40000), 400, "too_many_pixels", "too many pixels"),
]


@pytest.mark.parametrize(("data", "status", "code", "words"), BAD_IMAGES)
def test_bad_images_are_4xx_and_service_goes_on(client, images, data, status, code, words):
    assert_error(post_file(client, data), status, code, words)
    assert post_file(client, images["good"]).status_code == 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images(client, images, fmt):
    rng = np.random.default_rng(1)
    data = png(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8), fmt)
    assert_error(post_file(client, data[: len(data) // 2]), 400, "unreadable", "cannot read")
    assert post_file(client, images["good"]).status_code == 200


def test_file_over_the_size_limit(client, images):
    big = images["good"] + b"\0" * (MB + 10)
    assert_error(post_file(client, big), 413, "too_large", "limit of 1 MB")
    raw = client.post("/v1/predict", content=big, headers={"Content-Type": "image/png"})
    assert_error(raw, 413, "too_large", "limit of 1 MB")
    assert post_file(client, images["good"]).status_code == 200


@pytest.mark.parametrize("ctype", ["application/json", "text/plain", None])
def test_wrong_content_type(client, images, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    res = client.post("/v1/predict", content=images["good"], headers=headers)
    assert_error(res, 415, "unsupported_media_type", "not accepted")


def test_form_without_file_and_bad_parameters(client, images):
    assert_error(
        client.post(
            "/v1/predict", data={"note": "x"}, files={"other": ("a.txt", b"", "text/plain")}
        ),
        400,
        "empty",
        "empty",
    )
    assert_error(
        client.post("/v1/predict", data={"note": "x"}, files={}),
        415,
        "unsupported_media_type",
        "x-www-form-urlencoded",
    )
    form = b'--zz\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--zz--\r\n'
    assert_error(
        client.post(
            "/v1/predict",
            content=form,
            headers={"Content-Type": "multipart/form-data; boundary=zz"},
        ),
        400,
        "no_file",
        "field 'file'",
    )
    assert_error(
        client.post(
            "/v1/predict",
            content=b"garbage",
            headers={"Content-Type": "multipart/form-data; boundary=zz"},
        ),
        400,
        "bad_multipart",
        "multipart",
    )
    assert_error(
        post_file(client, images["good"], include="heatmap,x-ray"), 422, "bad_include", "x-ray"
    )
    assert_error(post_file(client, images["good"], threshold="nan"), 422, "bad_threshold", "finite")
    two = [("file", ("a.png", images["good"], "image/png"))] * 2
    assert_error(
        client.post("/v1/predict", files=two),
        400,
        "bad_multipart",
        "too many files.*/v1/predict/batch",
    )


def test_unknown_route_and_method(client):
    assert_error(client.get("/v2/nothing"), 404, "not_found", "not found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed", "not allowed")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_bad_input_does_not_grow_memory(client, images):
    bad = [data for data, *_ in BAD_IMAGES] + [images["good"] + b"\0" * (MB + 10)]

    def round_of_bad_requests() -> None:
        for data in bad:
            assert post_file(client, data).status_code >= 400

    for _ in range(5):  # warm-up: allocator pools, lazy imports
        round_of_bad_requests()
    before = _rss_mb()
    for _ in range(40):
        round_of_bad_requests()
    grown = _rss_mb() - before
    assert grown < 25, f"RSS grew {grown:.1f} MB over {40 * len(bad)} bad requests"
    assert post_file(client, images["good"]).status_code == 200


# ----------------------------------------------------------------------------- batching


def test_concurrent_requests_share_forward_passes(scorer, client, images):
    """Requests in flight together are scored in one batch, with the same scores as alone."""
    import threading

    release = threading.Event()
    real = scorer.score_batch
    sizes: list[int] = []

    class Gate:  # holds the first batch until every request is queued behind it
        model_id, threshold, input_size = scorer.model_id, scorer.threshold, scorer.input_size
        geometry, score_scale = scorer.geometry, scorer.score_scale
        operating_points, image_aspect = scorer.operating_points, scorer.image_aspect
        aligner = None
        preprocess = staticmethod(scorer.preprocess)
        describe = staticmethod(scorer.describe)

        @staticmethod
        def score_batch(x):
            sizes.append(len(x))
            release.wait(10)
            return real(x)

    with make_client(Gate(), max_batch=8, max_wait_ms=0) as c:
        results: list = [None] * 6
        threads = [
            threading.Thread(
                target=lambda i=i: results.__setitem__(
                    i, post_file(c, images["bad" if i % 2 else "good"])
                )
            )
            for i in range(6)
        ]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            sizes and sizes[0] + c.get("/v1/health").json()["queue_depth"] == 6
        ):
            time.sleep(0.01)
        release.set()
        for t in threads:
            t.join(20)
    assert len(sizes) == 2 and sum(sizes) == 6, sizes  # the rest queued behind the first
    assert [r.status_code for r in results] == [200] * 6
    batch_sizes = sorted(r.json()["batch_size"] for r in results)
    assert batch_sizes == sorted([sizes[0]] * sizes[0] + [sizes[1]] * sizes[1])
    alone = {k: post_file(client, images[k]).json()["score"] for k in ("good", "bad")}
    for i, r in enumerate(results):
        assert r.json()["score"] == pytest.approx(alone["bad" if i % 2 else "good"], rel=1e-5)


def test_no_batching_scores_one_at_a_time(scorer, images):
    with make_client(scorer, batching=False) as c:
        info = c.get("/v1/model").json()
        assert info["batching"] is False and info["max_batch"] == 1
        assert post_file(c, images["good"]).json()["batch_size"] == 1


# ----------------------------------------------------------------------------- start-up


def test_serve_refuses_a_model_that_does_not_load(tmp_path, capsys):
    from padim.cli import main

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert main(["serve", str(bad), "--port", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("padim: error:") and "broken.safetensors" in err
    assert len(err.splitlines()) == 1
    assert main(["serve", str(tmp_path / "missing.safetensors")]) == 1
    assert "model file not found" in capsys.readouterr().err


def test_serve_refuses_missing_examples(model_file, tmp_path, capsys):
    from padim.cli import main

    assert main(["serve", str(model_file), "--examples", str(tmp_path / "nope")]) == 1
    assert "examples not found" in capsys.readouterr().err


def test_normalised_scores_regions_and_operating_points(fitted, images):
    """Every result has a normalised score (0.5 at the threshold used) and its defect regions
    in the photo's pixels; a stored operating point is chosen by name."""
    import copy

    model = copy.deepcopy(fitted)
    model.set_threshold(float(model.threshold_) * 0.5, name="strict")
    model.use_operating_point("fit")
    with make_client(TorchScorer(model, model_id="ops")) as c:
        for params in ({}, {"operating_point": "strict"}, {"threshold": "3.5", "min_area": "4"}):
            body = post_file(c, images["bad"], **params).json()
            chosen = model.operating_points_.get(params.get("operating_point", "fit"))
            if "threshold" not in params:
                assert chosen is not None and body["threshold"] == chosen.threshold
            assert (body["normalised_score"] > 0.5) == body["is_anomalous"]
            assert body["n_regions"] == len(body["regions"])
            for region in body["regions"]:
                assert region["area"] >= int(params.get("min_area", 0))
                assert region["peak"] > body["threshold"]
        res = post_file(c, images["bad"], operating_point="nope")
        assert_error(res, 422, "bad_operating_point", "no operating point 'nope'")
        res = post_file(c, images["bad"], operating_point="strict", threshold="2")
        assert_error(res, 422, "bad_query", "not both")
        assert_error(post_file(c, images["bad"], min_area="-1"), 422, "bad_min_area", "whole")
        described = c.get("/v1/model").json()
        assert set(described["operating_points"]) == {"fit", "strict"}
        assert described["score_scale"]["kind"] == "logistic"


def test_the_page_has_its_policy_under_static_too(client):
    """/static/index.html served the page without its Content-Security-Policy."""
    for path in ("/", "/static/index.html", "/static/app.js"):
        res = client.get(path)
        assert res.status_code == 200, path
        assert "default-src 'self'" in res.headers["content-security-policy"], path
