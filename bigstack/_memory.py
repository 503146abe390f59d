"""Peak resident memory of this process over a block of code.

``ru_maxrss`` only ever grows over the life of a process, so it cannot
measure one step of a longer run; this samples the resident set size in a
background thread instead (every ``interval`` seconds, Linux
``/proc/self/statm``, else psutil when installed).
"""

from __future__ import annotations

import os
import threading
import time


def rss_bytes() -> int | None:
    """Current resident set size of this process, or None if unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss


class PeakMemory:
    """Context manager: ``peak`` is the largest RSS seen inside the block (bytes).

    Examples
    --------
    >>> with PeakMemory() as mem:
    ...     block = bytearray(50 * 2**20)
    >>> mem.peak >= 50 * 2**20
    True
    """

    def __init__(self, interval=0.02):
        self.interval = interval
        self.peak = None
        self.start = None
        self._stop = threading.Event()
        self._thread = None

    def _sample(self):
        while not self._stop.is_set():
            value = rss_bytes()
            if value is not None:
                self.peak = max(self.peak or 0, value)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.start = rss_bytes()
        self.peak = self.start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        value = rss_bytes()
        if value is not None:
            self.peak = max(self.peak or 0, value)
        return False
