"""What the figures were measured on: cores, load, and the speed of one core.

Hosts of the same size differ by two or more times in the CPU a Python program needs
(docs/benchmarks.md), so each benchmark prints the time of a fixed pure-Python loop
beside its figures; two runs compare only when that reference is close.
"""

from __future__ import annotations

import os
import time


def reference_seconds(n: int = 10_000_000) -> float:
    """CPU seconds of ``n`` additions in a Python loop (best of three)."""
    best = float("inf")
    for _ in range(3):
        started, total = time.process_time(), 0
        for i in range(n):
            total += i
        best = min(best, time.process_time() - started)
    return best


def describe() -> str:
    return (f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
            f"reference loop (10M additions) {reference_seconds():.2f} s")
