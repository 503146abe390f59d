"""A one-line progress bar for dask's local schedulers.

Each redraw returns to the start of the line (``\\r``) and clears what an
earlier, longer line left behind: with ``\\x1b[K`` (erase to the end of the
line) when the stream is a terminal, else by padding with spaces to the
longest line drawn so far, which leaves the same picture in a log file
viewed with ``\\r`` honoured. Every computation ends its line with the
elapsed time and a newline::

    stack: [##############################] 100%  64/64 tasks  done in 12.3 s

Used as ``with progress_bar(): dask.compute(...)``; each computation in the
block gets its own line (dask does not call the callbacks of computations
started from inside a task, so those do not draw).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

from dask.callbacks import Callback

__all__ = ["progress_bar", "format_seconds"]


def format_seconds(seconds: float) -> str:
    """Elapsed time as ``"4.2 s"``, ``"3 min 07 s"`` or ``"2 h 05 min"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class ProgressLine(Callback):
    """dask callback drawing the progress of a computation on one line of ``out``.

    Parameters
    ----------
    out : file-like
        Text stream to write to.
    label : str, optional
        Written before the bar.
    width : int
        Characters of the bar.
    interval : float
        Seconds between redraws while tasks run.
    """

    def __init__(self, out, label=None, width=30, interval=0.1):
        super().__init__()
        self._out = out
        self._prefix = f"{label}: " if label else ""
        self._width = width
        self._interval = interval
        self._lock = threading.Lock()
        self._state = None
        self._drawn = 0  # longest line drawn since the last newline
        try:
            self._terminal = bool(out.isatty())
        except (AttributeError, ValueError):  # no isatty, or a closed stream
            self._terminal = False

    # dask's callback hooks -------------------------------------------------

    def _start(self, dsk):
        self._state = None
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._redraw_loop, daemon=True)
        self._thread.start()

    def _pretask(self, key, dsk, state):
        self._state = state

    def _finish(self, dsk, state, errored):
        self._stop.set()
        self._thread.join()
        elapsed = time.perf_counter() - self._t0
        if errored:
            done, total = self._counts()
            self._draw(self._line(done, total, f"failed after {format_seconds(elapsed)}"),
                       end=True)
        else:
            total = self._counts()[1]
            self._draw(self._line(total, total, f"done in {format_seconds(elapsed)}",
                                  fraction=1.0), end=True)

    # drawing -----------------------------------------------------------------

    def _redraw_loop(self):
        while not self._stop.is_set():
            done, total = self._counts()
            elapsed = format_seconds(time.perf_counter() - self._t0)
            self._draw(self._line(done, total, elapsed))
            self._stop.wait(self._interval)

    def _counts(self):
        state = self._state
        if not state:
            return 0, 0
        done = len(state.get("finished", ()))
        rest = sum(len(state.get(k, ())) for k in ("ready", "waiting", "running"))
        return done, done + rest

    def _line(self, done, total, tail, fraction=None):
        if fraction is None:
            fraction = done / total if total else 0.0
        bar = "#" * int(self._width * fraction)
        return (f"{self._prefix}[{bar:<{self._width}}] {int(100 * fraction):3d}%  "
                f"{done}/{total} tasks  {tail}")

    def _draw(self, text, end=False):
        with self._lock:
            if self._terminal:
                out = f"\r{text}\x1b[K"
            else:
                out = f"\r{text:<{self._drawn}}"
            self._drawn = 0 if end else max(self._drawn, len(text))
            with contextlib.suppress(ValueError):  # the stream was closed under us
                self._out.write(out + ("\n" if end else ""))
                self._out.flush()


@contextlib.contextmanager
def progress_bar(out=None, label=None):
    """Show a progress line for the dask computations run inside the block.

    For the local (threaded, process or synchronous) schedulers; on a
    ``dask.distributed`` cluster use ``distributed.progress`` instead.

    Parameters
    ----------
    out : file-like, optional
        Text stream to write to; default ``sys.stderr`` (looked up on entry).
    label : str, optional
        Written before the bar, e.g. ``"stack"``.

    Yields
    ------
    ProgressLine
        The active callback.

    Examples
    --------
    >>> import io
    >>> import dask.array as da
    >>> out = io.StringIO()
    >>> with progress_bar(out, label="sum"):
    ...     total = da.ones(100, chunks=10).sum().compute()
    >>> out.getvalue().split("\\r")[-1].startswith("sum: [###")
    True
    """
    line = ProgressLine(sys.stderr if out is None else out, label=label)
    with line:
        yield line
