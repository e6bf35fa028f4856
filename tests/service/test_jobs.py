"""The studio's background jobs (`padim.service.jobs`): each in a child process, its progress
read live, its result or one-line error kept, a cancel that stops it at its next report, a
process that dies said so, and one job at a time."""

from __future__ import annotations

import os
import time

import pytest

from padim.errors import PadimError
from padim.service.jobs import JobBoard


def counting(n: int, pause: float, sink) -> dict:
    for i in range(n + 1):
        sink("counting", i, n)
        time.sleep(pause)
    return {"pid": os.getpid(), "n": n}


def failing(sink) -> None:
    sink("starting", 0, None)
    raise PadimError("the images are gone\nsecond line")


def dying(sink) -> None:
    os._exit(3)


def wait(job, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while job.state == "running":
        assert time.monotonic() < deadline, job.to_dict()
        time.sleep(0.05)
    return job


def test_a_job_runs_in_its_own_process_with_live_progress():
    board = JobBoard()
    job = board.start("count", "widget", "ana", counting, (20, 0.1), estimate_s=2.0)
    seen = set()
    while job.state == "running":
        seen.add(job.done)
        time.sleep(0.05)
    assert job.state == "done" and job.result["n"] == 20 and job.result["pid"] != os.getpid()
    assert len(seen) > 3  # progress arrived while it ran
    d = job.to_dict()
    assert d["done"] == d["total"] == 20 and d["estimate_s"] == 2.0 and d["stage"] == "counting"
    assert board.listing("widget")[0]["id"] == job.id and board.listing("other") == []


def test_one_job_at_a_time_and_cancel():
    board = JobBoard()
    job = board.start("count", "widget", "ana", counting, (1000, 0.02))
    with pytest.raises(PadimError, match="a job is running"):
        board.start("count", "widget", "ana", counting, (1, 0))
    while job.done < 3:
        time.sleep(0.02)
    board.cancel(job.id)
    assert wait(job).state == "cancelled" and job.done < 1000
    assert board.start("count", "w", "ana", counting, (1, 0)).id == job.id + 1


def test_errors_and_dead_processes_are_one_line():
    board = JobBoard()
    job = wait(board.start("fail", "widget", "ana", failing, ()))
    assert job.state == "failed" and job.error == "the images are gone"
    job = wait(board.start("die", "widget", "ana", dying, ()))
    assert job.state == "failed" and "exit code 3" in job.error
    with pytest.raises(PadimError):
        board.get(999)
