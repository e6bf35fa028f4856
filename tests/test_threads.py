"""The OpenMP spin default that keeps commands fast on a shared machine (hardening, round two:
with torch's default every command ran 2-10x slower when other work used the cores)."""

from __future__ import annotations

import os
import subprocess
import sys


def _spin(env: dict[str, str]) -> str:
    code = "import padim, os; print(os.environ['GOMP_SPINCOUNT'])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    return run.stdout.strip()


def test_padim_sets_a_short_openmp_spin_before_torch_loads():
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    assert _spin(env) == "1000"


def test_a_users_own_setting_wins():
    assert _spin({**os.environ, "GOMP_SPINCOUNT": "300000"}) == "300000"
