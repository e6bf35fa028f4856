"""Peak-RSS measurement used by the benchmark reports."""

import numpy as np

from padim.memory import PeakRSS, process_peak_bytes


def test_peak_rss_sees_a_temporary_allocation():
    import gc
    import mmap

    size = 300 * 2**20
    # garbage left by earlier tests (models in reference cycles) must not be collected, and
    # its memory returned, between or inside the two blocks: that would hide the spike
    gc.collect()
    gc.disable()
    try:
        with PeakRSS() as idle:
            pass
        with PeakRSS() as busy:
            # fresh pages for sure: malloc may serve even 300 MB from free heap left resident
            # by earlier tests in this process (seen in CI: the spike looked 163 MB high)
            block = mmap.mmap(-1, size)
            np.frombuffer(block, np.uint8)[::4096] = 1  # every page touched, so resident
            block.close()
    finally:
        gc.enable()
    assert busy.peak_bytes >= size * 0.9
    if busy.exact:  # Linux: the high-water mark was reset, so the idle block saw no spike
        assert busy.peak_bytes - idle.peak_bytes >= size * 0.9
    assert process_peak_bytes() >= busy.peak_bytes * 0.99


def test_freed_temporaries_are_reused_without_page_faults():
    """With `reuse_freed_memory` (every padim command sets it) temporaries of a few MB
    allocated and freed per call come back from the heap; with glibc's own settings they are
    mapped afresh and their pages faulted in again on every call (what cost a full model's
    forward pass a quarter of its time)."""
    import subprocess
    import sys

    code = (
        "import resource, sys, numpy as np\n"
        "from padim.memory import reuse_freed_memory\n"
        "if sys.argv[1] == 'padim': assert reuse_freed_memory()\n"
        "def step():\n"  # a forward pass's temporaries: several sizes alive at once
        "    held = [np.ones(n, np.float32) for n in (1 << 19, 3 << 20, 1 << 22, 5 << 19)]\n"
        "    return sum(float(h[0]) for h in held)\n"
        "for _ in range(3): step()\n"
        "a = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20): step()\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - a)\n"
    )
    faults = {
        mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True,
                                 text=True, check=True).stdout)
        for mode in ("glibc", "padim")
    }  # fmt: skip
    assert faults["glibc"] > 20 * 1000 and faults["padim"] < 200, faults
