"""The model registry on SQLite and PostgreSQL: versions with lineage, aliases, promotion and
rollback, the audit trail, concurrent registrations."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("sqlalchemy")

from padim.data.images import image_digest
from padim.errors import PadimError
from padim.lifecycle.audit import read_events
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.registry import Registry


@pytest.fixture
def registry(catalogue) -> Registry:
    return Registry(catalogue)


def test_versions_are_numbered_copied_and_described(registry, model_file):
    first = registry.register("bottle", model_file, actor="ana", note="first fit")
    second = registry.register("bottle", model_file, actor="ana", parent=1)
    assert (first.number, second.number) == (1, 2) and second.parent == 1
    assert first.path.is_file() and first.path != model_file
    assert first.sha256 == image_digest(model_file) == image_digest(first.path)
    assert first.config["covariance"] == "minor" and first.n_train and first.note == "first fit"
    digests = registry.image_digests("bottle", 1)
    assert len(digests) == first.n_train and len(first.images_sha256 or "") == 64
    assert first.operating_points and first.operating_points["threshold"] > 0
    assert [v.number for v in registry.versions("bottle")] == [1, 2]
    assert registry.versions("other") == [] and registry.products() == ["bottle"]
    with pytest.raises(PadimError, match="no version 5"):
        registry.register("bottle", model_file, actor="ana", parent=5)


def test_promote_and_roll_back_with_an_audit_trail(registry, model_file):
    for _ in range(3):
        registry.register("bottle", model_file, actor="ana")
    registry.promote("bottle", 1, actor="ben")
    registry.promote("bottle", 2, actor="ben")
    registry.promote("bottle", "v3", actor="ben")
    assert registry.version("bottle", "production").number == 3
    assert registry.rollback("bottle", actor="carl") == 2
    assert registry.rollback("bottle", actor="carl") == 1
    assert registry.aliases("bottle") == {"production": 1}
    with pytest.raises(PadimError, match="no earlier version"):
        registry.rollback("bottle", actor="carl")
    events = read_events(registry.catalogue.engine, "bottle")
    actions = [(e["actor"], e["action"], e["detail"].get("version")) for e in events]
    assert actions[-5:] == [
        ("ben", "promote", 1),
        ("ben", "promote", 2),
        ("ben", "promote", 3),
        ("carl", "rollback", 2),
        ("carl", "rollback", 1),
    ]
    with pytest.raises(PadimError, match="no version 9"):
        registry.promote("bottle", 9, actor="ben")


def test_aliases_are_independent(registry, model_file):
    registry.register("bottle", model_file, actor="ana")
    registry.register("bottle", model_file, actor="ana")
    registry.promote("bottle", 1, actor="ben")
    registry.promote("bottle", 2, actor="ben", alias="candidate")
    assert registry.aliases("bottle") == {"candidate": 2, "production": 1}
    with pytest.raises(PadimError, match="no earlier version"):
        registry.rollback("bottle", actor="ben", alias="candidate")
    with pytest.raises(PadimError, match="alias 'staging'"):
        registry.version("bottle", "staging")


def test_bad_names_and_files_are_refused(registry, model_file, tmp_path):
    with pytest.raises(PadimError, match="product name"):
        registry.register("../etc", model_file, actor="ana")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(PadimError):
        registry.register("bottle", junk, actor="ana")
    assert registry.versions("bottle") == []


def test_concurrent_registrations_get_distinct_numbers(location, model_file):
    open_catalogue(*location)  # the schema, once
    numbers: list[int] = []

    def worker() -> None:
        registry = Registry(open_catalogue(*location))  # one engine per writer
        for _ in range(3):
            numbers.append(registry.register("bottle", model_file, actor="w").number)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(numbers) == list(range(1, 13))
