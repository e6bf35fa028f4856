"""Background jobs of the studio (training, judging, capturing): one runs at a time per service
process (each takes the CPUs), in a child process of its own, with live progress (stage,
images done, time left) and a cancel that stops it at its next image or chunk. A child
process, not a thread: the fit's OpenMP threads then do not share a runtime with the
service's inference threads (measured on 2 cores: a fit run in a thread of the service took
5-10x longer), a fit's memory goes back to the system when it ends, and a fit killed for
memory is a failed job, not a dead service. A job's result or one-line error stays readable
until the service stops."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from padim.errors import PadimError

LOG = logging.getLogger("padim.service")
KEPT_JOBS = 100  # finished jobs remembered


class Cancelled(PadimError):
    """A job stopped because someone cancelled it."""


@dataclass
class Job:
    """One background job and what it has reported."""

    id: int
    kind: str  # train, judge
    product: str
    actor: str
    estimate_s: float | None = None  # the proposal's estimate, when there is one
    state: str = "running"  # running, done, failed, cancelled
    stage: str = "starting"
    done: int = 0
    total: int | None = None
    started: float = field(default_factory=time.time)
    stage_started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    result: Any = None
    error: str | None = None
    cancel: Any = None  # a multiprocessing Event: the child stops at its next report

    def report(self, stage: str, done: int, total: int | None) -> None:
        """What the child reported last."""
        if stage != self.stage:
            self.stage, self.stage_started = stage, time.monotonic()
        self.done, self.total = done, total

    def time_left(self) -> float | None:
        """Seconds left in this stage, from its pace so far (None: not known yet)."""
        if self.state != "running" or not self.total or not self.done:
            return None
        spent = time.monotonic() - self.stage_started
        return round(spent * (self.total - self.done) / self.done, 1)

    def to_dict(self) -> dict[str, Any]:
        elapsed = (self.finished or time.time()) - self.started
        return {
            "id": self.id,
            "kind": self.kind,
            "product": self.product,
            "actor": self.actor,
            "state": self.state,
            "stage": self.stage,
            "done": self.done,
            "total": self.total,
            "elapsed_s": round(elapsed, 1),
            "stage_left_s": self.time_left(),
            "estimate_s": self.estimate_s,
            "result": self.result,
            "error": self.error,
        }


class JobBoard:
    """The studio's jobs in this process (see the module's docstring)."""

    def __init__(self) -> None:
        self.jobs: dict[int, Job] = {}
        self.lock = threading.Lock()
        self.ids = itertools.count(1)

    def start(
        self,
        kind: str,
        product: str,
        actor: str,
        work: Callable[..., Any],
        args: tuple,
        estimate_s: float | None = None,
    ) -> Job:
        """Run `work(*args, sink)` (a module-level function) in a child process; refused
        while another job runs."""
        context = multiprocessing.get_context("spawn")
        with self.lock:
            busy = [j for j in self.jobs.values() if j.state == "running"]
            if busy:
                j = busy[0]
                raise PadimError(f"a job is running ({j.kind} of {j.product}): wait or cancel it")
            job = Job(next(self.ids), kind, product, actor, estimate_s, cancel=context.Event())
            self.jobs[job.id] = job
            for old in sorted(self.jobs)[:-KEPT_JOBS]:
                del self.jobs[old]
        messages = context.Queue()
        child = context.Process(
            target=run_child, args=(work, args, messages, job.cancel), daemon=True
        )
        child.start()
        threading.Thread(target=self._follow, args=(job, child, messages), daemon=True).start()
        return job

    def _follow(self, job: Job, child: Any, messages: Any) -> None:
        """Read the child's reports until its last word (or its death)."""
        try:
            while True:
                try:
                    what, *rest = messages.get(timeout=1.0)
                except queue.Empty:
                    if child.is_alive():
                        continue
                    job.state = "failed"
                    code = child.exitcode
                    job.error = f"the job's process ended without a result (exit code {code})"
                    return
                if what == "progress":
                    job.report(*rest)
                    continue
                if what == "done":
                    job.state, job.result = "done", rest[0]
                else:
                    job.state, job.error = what, rest[0]
                return
        finally:
            job.finished = time.time()
            child.join(timeout=30)

    def cancel(self, job_id: int) -> Job:
        job = self.get(job_id)
        job.cancel.set()
        return job

    def get(self, job_id: int) -> Job:
        from padim.errors import NotFound

        job = self.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        return job

    def listing(self, product: str | None = None) -> list[dict[str, Any]]:
        jobs = [j for j in self.jobs.values() if product is None or j.product == product]
        return [j.to_dict() for j in sorted(jobs, key=lambda j: -j.id)]


def run_child(work: Callable[..., Any], args: tuple, messages: Any, cancel: Any) -> None:
    """A job's process: `work(*args, sink)`, its reports and its last word on `messages`."""

    def sink(stage: str, done: int, total: int | None) -> None:
        if cancel.is_set():
            raise Cancelled("cancelled")
        messages.put(("progress", stage, done, total))

    try:
        messages.put(("done", work(*args, sink)))
    except Cancelled:
        messages.put(("cancelled", "cancelled: nothing was registered"))
    except Exception as exc:  # the job's one-line error, for the page
        text = str(exc).strip().splitlines()[0][:500] if str(exc).strip() else repr(exc)
        if not isinstance(exc, PadimError):
            LOG.exception("studio job failed")
        messages.put(("failed", text))
