"""Atomic writes: the temporary files of a write killed with SIGKILL are cleaned by the next
write of the same file (hardening, round two: they stayed forever)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from padim.files import STALE_AFTER_S, write_text_atomic


def test_a_killed_writes_temporary_file_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "results.json"
    code = (
        "import sys, time\n"
        "from padim.files import write_atomic\n"
        "def slow(tmp):\n"
        "    tmp.write_text('half')\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
        f"write_atomic({str(target)!r}, slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
    proc.kill()
    proc.wait()
    left = list(tmp_path.glob(".results.json.*.tmp"))
    assert len(left) == 1 and not target.exists()
    old = time.time() - STALE_AFTER_S - 5
    os.utime(left[0], (old, old))
    write_text_atomic(target, "whole")
    assert target.read_text() == "whole"
    assert list(tmp_path.glob(".results.json.*.tmp")) == []


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    target = tmp_path / "m.bin"
    mine = tmp_path / f".m.bin.{os.getpid()}.abc.tmp"  # this process: alive
    mine.write_text("in progress")
    old = time.time() - 3600
    os.utime(mine, (old, old))
    write_text_atomic(target, "x")
    assert mine.exists()
