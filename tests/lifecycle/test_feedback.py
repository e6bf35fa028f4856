"""Operator feedback and retraining, on SQLite and PostgreSQL: labels land with their author
(checked against the verdict, images pinned), the retrained candidate equals an exact update
with the false alarms, and the gate blocks a candidate that lost a defect production caught
unless an override is given, which the audit trail keeps."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sqlalchemy")

from conftest import SIZE, texture, with_defect
from PIL import Image

from padim.errors import PadimError
from padim.lifecycle.audit import read_events
from padim.lifecycle.feedback import FeedbackBook
from padim.lifecycle.records import Entry, RecordBook, Retention
from padim.lifecycle.registry import Registry
from padim.lifecycle.retrain import Retraining


def png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def kept_model(category, tmp_path_factory) -> Path:
    """The small model, fitted with its training sums (so it can be updated)."""
    from padim import Padim

    model = Padim(size=SIZE, crop=None, batch_size=5, device="cpu", statistics="keep")
    return model.fit(category).save(tmp_path_factory.mktemp("kept") / "widget.safetensors")


@pytest.fixture(scope="module")
def pictures() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(11)
    goods = [png(texture(rng)) for _ in range(4)]
    defects = [png(with_defect(texture(rng), rng)[0]) for _ in range(3)]
    return {"good": goods, "defect": defects}


def record(book: RecordBook, data: bytes, verdict: str, version: int = 1) -> int:
    entry = Entry("widget", version, "m", "test", "x.png", 1.0, 0.5, 1.0, verdict, [],
                  hashlib.sha256(data).hexdigest(), data)  # fmt: skip
    return book.write([entry])[0]


@pytest.fixture
def line(catalogue, kept_model, pictures) -> dict:
    """v1 in production; records as the service would have written them: four good parts
    flagged (false alarms), three real defects flagged, one defect judged good (missed)."""
    registry = Registry(catalogue)
    registry.register("widget", kept_model, actor="ana")
    registry.promote("widget", 1, actor="ana")
    book = RecordBook(catalogue, Retention(keep_good=0.0))
    ids = {
        "false_alarms": [record(book, g, "anomalous") for g in pictures["good"]],
        "defects": [record(book, d, "anomalous") for d in pictures["defect"]],
        "missed": record(book, pictures["defect"][0], "good"),
    }
    return {"catalogue": catalogue, "registry": registry, "book": book, "ids": ids}


def test_labels_land_with_their_author_and_pin_the_image(line, pictures):
    feedback = FeedbackBook(line["catalogue"])
    ids = line["ids"]
    given = feedback.give(ids["false_alarms"][0], "false_alarm", "olga (api)", "dust")
    assert given["author"] == "olga (api)" and given["label"] == "false_alarm"
    with pytest.raises(PadimError, match="judged anomalous: it cannot be a missed_defect"):
        feedback.give(ids["defects"][0], "missed_defect", "olga")
    with pytest.raises(PadimError, match=r"not kept .* send the image"):
        feedback.give(ids["missed"], "missed_defect", "olga")
    with pytest.raises(PadimError, match="not the image of record"):
        feedback.give(ids["missed"], "missed_defect", "olga", image=pictures["good"][0])
    mask = png((np.arange(64 * 64).reshape(64, 64) % 2 * 255).astype(np.uint8))
    feedback.give(ids["missed"], "missed_defect", "olga", image=pictures["defect"][0], mask=mask)
    with pytest.raises(PadimError, match="no record 999"):
        feedback.give(999, "defect", "olga")
    labelled = {x.record_id: x for x in feedback.labelled("widget")}
    assert labelled[ids["missed"]].image.read_bytes() == pictures["defect"][0]
    assert labelled[ids["missed"]].mask is not None and labelled[ids["missed"]].is_defect
    events = read_events(line["catalogue"].engine, "widget")
    assert [(e["actor"], e["detail"]["label"]) for e in events if e["action"] == "feedback"] == [
        ("olga (api)", "false_alarm"),
        ("olga", "missed_defect"),
    ]
    # pinned images stay whatever the budget: a tiny budget prunes nothing pinned
    tiny = RecordBook(line["catalogue"], Retention(keep_good=0.0, budget_bytes=1))
    tiny.prune()
    assert all(x.image.is_file() for x in feedback.labelled("widget"))


def test_the_candidate_is_an_exact_update_with_the_false_alarms(line, kept_model, pictures):
    from padim import Padim

    feedback = FeedbackBook(line["catalogue"])
    for record_id in line["ids"]["false_alarms"]:
        feedback.give(record_id, "false_alarm", "olga")
    for record_id in line["ids"]["defects"]:
        feedback.give(record_id, "defect", "olga")
    version, report = Retraining(line["catalogue"], "widget").run("ben")
    assert version.number == 2 and version.parent == 1 and report["added_false_alarms"] == 4
    assert line["registry"].aliases("widget") == {"candidate": 2, "production": 1}
    images = [x.image for x in feedback.labelled("widget") if x.label == "false_alarm"]
    expected = Padim.load(kept_model, "cpu", statistics=True).partial_fit(images)
    candidate = Padim.load(version.path, "cpu")
    probe = [Image.open(io.BytesIO(d)).convert("RGB") for d in pictures["defect"]]
    assert np.allclose(candidate.score(probe)[0], expected.score(probe)[0], rtol=1e-5)
    assert candidate.threshold_ == pytest.approx(expected.threshold_, rel=1e-6)
    assert version.n_train == 12 + 4  # the lineage counts them
    assert report["labelled"] == {"defects": 3, "product_defects": 0, "false_alarms": 4}
    assert report["gate"]["passed"], report
    line["registry"].promote("widget", 2, actor="ben")  # a passed gate needs no override
    with pytest.raises(PadimError, match="nothing to retrain"):
        Retraining(line["catalogue"], "widget").run("ben")  # v2 knows every false alarm


def test_the_gate_blocks_a_candidate_that_lost_a_defect(line, pictures, location, capsys):
    """A defect image also marked a false alarm (operators disagreed): the candidate learns it
    as good and stops flagging it while production flags it: gate failed, promotion refused
    without an override; the override is audited."""
    feedback = FeedbackBook(line["catalogue"])
    defect_again = record(line["book"], pictures["defect"][1], "anomalous")
    feedback.give(line["ids"]["defects"][1], "defect", "olga")
    feedback.give(defect_again, "false_alarm", "pete")
    from padim.cli import main

    where = ["--catalogue", location[0], "--files", location[1]]
    assert main(["retrain", "widget", *where, "--actor", "ben"]) == 0  # as engineers run it
    printed = capsys.readouterr().out
    assert (
        "[FAIL] catches every labelled defect" in printed
        and "gate for production: FAILED" in printed
    )
    registry = line["registry"]
    version = registry.version("widget", "candidate")
    assert version.evaluation is not None
    lost = version.evaluation["gate"]["checks"][0]
    assert lost["missed_records"] == [line["ids"]["defects"][1]]
    with pytest.raises(PadimError, match="failed its gate for production"):
        registry.promote("widget", version.number, actor="ben")
    assert main(["registry", "promote", "widget", str(version.number), *where]) == 1
    assert "failed its gate" in capsys.readouterr().err
    registry.promote("widget", version.number, actor="ben", alias="staging")  # not gated there
    registry.promote("widget", version.number, actor="ben", override="line stopped, ok by QA")
    last = read_events(registry.catalogue.engine, "widget")[-1]
    assert last["action"] == "promote" and last["detail"]["override"] == "line stopped, ok by QA"
