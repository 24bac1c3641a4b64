"""Peak resident memory, recorded by each stage in what it writes (``make bench`` reads it)."""

from __future__ import annotations

import resource
import sys

# ru_maxrss is in KiB on Linux and in bytes on macOS
_MAXRSS_PER_MIB = 2**20 if sys.platform == "darwin" else 2**10


def peak_rss() -> dict[str, float]:
    """Peak resident set size so far, in MiB: this process (imports and model included), and
    the largest of its finished child processes (workers; 0 when it started none)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "peak_rss_mib": round(own / _MAXRSS_PER_MIB, 1),
        "children_peak_rss_mib": round(children / _MAXRSS_PER_MIB, 1),
    }
