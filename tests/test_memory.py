"""Peak-RSS measurement used by the benchmark reports."""

import numpy as np

from padim.memory import PeakRSS, process_peak_bytes


def test_peak_rss_sees_a_temporary_allocation():
    size = 300 * 2**20
    with PeakRSS() as idle:
        pass
    with PeakRSS() as busy:
        block = np.ones(size // 8)  # touched, so resident
        del block
    assert busy.peak_bytes >= size * 0.9
    if busy.exact:  # Linux: the high-water mark was reset, so the idle block saw no spike
        assert busy.peak_bytes - idle.peak_bytes >= size * 0.9
    assert process_peak_bytes() >= busy.peak_bytes * 0.99
