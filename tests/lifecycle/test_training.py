"""The studio's model work (`padim.lifecycle.training`) on synthetic images: the proposal's
numbers, a fit on exactly the train split that is registered with its lineage and progress, a
cancel that registers nothing, judging on exactly the test split, rates counted with their
intervals, and a version at another operating point."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import encoded, texture, with_defect

from padim.errors import NotFound, PadimError
from padim.lifecycle import training
from padim.lifecycle.registry import Registry
from padim.lifecycle.workshop import DEFECT, GOOD, NewImage, Workshop

PIXELS = 50_000_000

pytestmark = pytest.mark.slow


@pytest.fixture
def product(catalogue) -> Workshop:
    shop = Workshop(catalogue)
    shop.create("widget", "ana")
    rng = np.random.default_rng(0)
    good = [NewImage(f"g{i}.png", encoded(texture(rng, 96))) for i in range(24)]
    shop.add("widget", good, GOOD, "ana", PIXELS)
    bad = [NewImage(f"d{i}.png", encoded(with_defect(texture(rng, 96), rng)[0]), "spot")
           for i in range(5)]  # fmt: skip
    shop.add("widget", bad, DEFECT, "ana", PIXELS)
    return shop


def test_too_few_images_are_refused_before_any_work(catalogue):
    shop = Workshop(catalogue)
    shop.create("tiny", "ana")
    rng = np.random.default_rng(1)
    shop.add("tiny", [NewImage(f"{i}.png", encoded(texture(rng, 96))) for i in range(5)], GOOD,
             "ana", PIXELS)  # fmt: skip
    with pytest.raises(PadimError, match="at least 10"):
        training.propose(catalogue, "tiny")


def test_proposal_measures_each_geometry(product, catalogue):
    found = training.propose(catalogue, "widget")
    assert found["image_size"] == [96, 96] and found["images"] > 10
    (standard,) = found["geometries"]  # small images: no tiled "detail" offer
    assert standard["geometry"] == "standard" and standard["positions"] > 0
    assert standard["model_file_bytes"] > 0 and standard["fit_memory_bytes"] > 0
    s = standard["seconds"]
    assert s["embed"] > 0 and s["factorise"] > 0 and s["total"] >= s["embed"] + s["factorise"]
    assert training.geometry_params("detail", (1130, 460))["tile"] == training.DETAIL_TILE
    with pytest.raises(PadimError, match="geometry"):
        training.geometry_params("huge", (10, 10))


def test_train_judge_rates_and_operating_point(product, catalogue):
    stages: list[tuple[str, int, int | None]] = []
    version = training.Training(catalogue, "widget").run("ana", lambda *a: stages.append(a))
    train_rows = product.images("widget", GOOD, "train")
    test_rows = product.images("widget", split="test")
    registry = Registry(catalogue)
    digests = registry.image_digests("widget", version.number)
    assert sorted(digests) == sorted(r["sha256"] for r in train_rows)  # the train split only
    assert not set(digests) & {r["sha256"] for r in test_rows}
    assert {s for s, _, _ in stages} >= {"reading", "fit", "factorise", "registering"}
    assert ("fit", len(train_rows), len(train_rows)) in stages
    with pytest.raises(NotFound, match="not been judged"):
        training.evaluation(catalogue, "widget", version.number)

    result = training.judge(catalogue, "widget", version.number, lambda *a: None)
    assert [i["id"] for i in result["images"]] == [r["id"] for r in test_rows]
    assert training.evaluation(catalogue, "widget", version.number) == result
    good = [i["score"] for i in result["images"] if i["kind"] == GOOD]
    bad = [i["score"] for i in result["images"] if i["kind"] == DEFECT]
    assert np.mean(bad) > np.mean(good)
    t = float(np.median(good))
    r = training.rates(result, t)
    assert r["false_alarms"]["count"] == sum(s > t for s in good)
    assert r["caught"]["count"] == sum(s > t for s in bad) and r["caught"]["of"] == 5
    lo, hi = r["caught"]["ci95"]
    assert lo <= r["caught"]["rate"] <= hi
    assert r["per_type"]["spot"] == r["caught"]

    moved = training.with_operating_point(catalogue, "widget", version.number, t, "ana")
    assert moved.parent == version.number and moved.operating_points["studio"] == pytest.approx(t)
    assert moved.evaluation["studio"]["false_alarms"] == r["false_alarms"]
    again = training.evaluation(catalogue, "widget", moved.number)
    assert again["threshold"] == t and again["images"] == result["images"]
    from padim.model.estimator import Padim

    assert float(Padim.load(moved.path).threshold_) == pytest.approx(t)


def test_a_cancelled_fit_registers_nothing(product, catalogue):
    def stop(stage: str, done: int, total: int | None) -> None:
        if stage == "factorise" and done > 0:
            raise KeyboardInterrupt  # what a job's cancel raises, at the next chunk

    with pytest.raises(KeyboardInterrupt):
        training.Training(catalogue, "widget").run("ana", stop)
    assert Registry(catalogue).versions("widget") == []
