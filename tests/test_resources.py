"""Peak resident memory as the stages record it."""

import subprocess
import sys

import numpy as np

from pipeline import resources


def test_peak_rss_sees_a_large_allocation_and_finished_children():
    before = resources.peak_rss()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = resources.peak_rss()
    assert after["peak_rss_mib"] >= before["peak_rss_mib"]
    assert after["peak_rss_mib"] >= 64 and block.sum() > 0
    subprocess.run([sys.executable, "-c", "b = b'x' * (48 * 2**20)"], check=True)
    assert resources.peak_rss()["children_peak_rss_mib"] >= 48
