"""Inspection records on SQLite and PostgreSQL: written and read back, the retention rule
(every anomalous image, a sample of good ones, the disk budget), export, concurrent writers,
and a writer killed with SIGKILL losing no acknowledged record."""

from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

pytest.importorskip("sqlalchemy")

from padim.errors import PadimError
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, Query, RecordBook, Retention


def entry(i: int, verdict: str = "good", size: int = 1000, product: str = "bottle") -> Entry:
    data = i.to_bytes(4, "big") * (size // 4)
    return Entry(
        product=product,
        version=1,
        model_id="m-1",
        source="test",
        name=f"img{i}.png",
        score=float(i),
        normalised_score=i / 10,
        threshold=5.0,
        verdict=verdict,
        regions=[{"x": i, "y": 0, "width": 3, "height": 4}] if verdict != "good" else [],
        image_sha256=hashlib.sha256(data).hexdigest(),
        image=data,
    )


def kept_bytes(book: RecordBook) -> int:
    files = [p for p in book.catalogue.images.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def test_records_are_written_queried_and_exported(catalogue, tmp_path):
    book = RecordBook(catalogue, Retention(keep_good=0.0, budget_bytes=10**9))
    ids = book.write([entry(1), entry(2, "anomalous"), entry(3, product="cap")])
    assert len(set(ids)) == 3
    rows = book.query(Query(product="bottle"))
    assert [r["name"] for r in rows] == ["img2.png", "img1.png"]  # newest first
    bad = book.query(Query(verdict="anomalous"))[0]
    assert bad["n_regions"] == 1 and bad["regions"][0]["x"] == 2 and bad["image"]
    assert book.image_path(bad["id"]).read_bytes() == entry(2).image
    assert book.image_path(ids[0]) is None  # a good one, not sampled
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert book.query(Query(since=later)) == [] and len(book.query(Query(until=later))) == 3
    assert book.export(tmp_path / "r.csv", Query()) == 3
    with open(tmp_path / "r.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert {r["verdict"] for r in table} == {"good", "anomalous"} and table[0]["at"]
    pq = pytest.importorskip("pyarrow.parquet")
    assert book.export(tmp_path / "r.parquet", Query(product="cap")) == 1
    assert pq.read_table(tmp_path / "r.parquet").column("product").to_pylist() == ["cap"]
    with pytest.raises(PadimError, match=r"\.csv or \.parquet"):
        book.export(tmp_path / "r.txt", Query())


def test_the_retention_rule_keeps_anomalies_samples_good_and_holds_the_budget(catalogue):
    budget = 25_000  # 25 of the 40 anomalous images
    book = RecordBook(catalogue, Retention(keep_good=0.25, budget_bytes=budget))
    for start in range(0, 400, 20):
        batch = [entry(i, "anomalous" if i % 10 == 0 else "good") for i in range(start, start + 20)]
        book.write(batch)
        assert book.usage() <= budget and kept_bytes(book) <= budget
    rows = book.query(Query(limit=None))
    assert len(rows) == 400  # every record stays; only images go
    kept = [r for r in rows if r["image"]]
    assert kept_bytes(book) == book.usage() == 1000 * len(kept) > budget - 1000
    anomalous = [r for r in kept if r["verdict"] == "anomalous"]
    assert len(anomalous) == len(kept)  # good ones were pruned first ...
    assert min(r["id"] for r in anomalous) > 100  # ... then the oldest anomalous
    sampled = [r for r in rows if r["verdict"] == "good"]
    share = sum(Retention(0.25).keeps("good", r["image_sha256"]) for r in sampled) / len(sampled)
    assert 0.1 < share < 0.4


def test_four_writer_processes_lose_nothing(location, tmp_path):
    open_catalogue(*location)
    script = WRITER.format(location=location, count=50, src=os.path.abspath("src"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    acked = {int(i) for out in outs for i in out}
    book = RecordBook(open_catalogue(*location))
    assert len(acked) == 200 and {r["id"] for r in book.query(Query(limit=None))} == acked


def test_a_killed_writer_loses_no_acknowledged_record(location):
    open_catalogue(*location)
    script = WRITER.format(location=location, count=100_000, src=os.path.abspath("src"))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    acked: list[int] = []
    assert proc.stdout is not None
    started = time.monotonic()
    while len(acked) < 300 and time.monotonic() - started < 60:
        acked.append(int(proc.stdout.readline()))
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of writing
    proc.wait()
    catalogue = open_catalogue(*location)
    if catalogue.kind == "sqlite":
        from sqlalchemy import text

        with catalogue.engine.connect() as conn:
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    book = RecordBook(catalogue)
    found = {r["id"] for r in book.query(Query(limit=None))}
    assert len(acked) == 300 and set(acked) <= found
    assert book.write([entry(1)])  # and the catalogue takes writes again


WRITER = """
import sys
sys.path.insert(0, {src!r})
from padim.lifecycle.database import open_catalogue
from padim.lifecycle.records import Entry, RecordBook, Retention
book = RecordBook(open_catalogue(*{location!r}), Retention(keep_good=0.5))
for i in range({count}):
    data = i.to_bytes(4, "big") * 256
    import hashlib
    e = Entry("bottle", 1, "m", "w", f"{{i}}", 1.0, 0.1, 2.0, "good" if i % 3 else "anomalous",
              [], hashlib.sha256(data).hexdigest(), data)
    (rid,) = book.write([e])
    print(rid, flush=True)  # acknowledged: committed
"""
