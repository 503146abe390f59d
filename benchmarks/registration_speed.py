"""Cost of find_transforms per frame against reading and adding every byte of the frame.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/registration_speed.py [n_frames] [size]

Writes ``n_frames`` synthetic 16-bit FITS frames of ``size`` x ``size``
(default 40 x 2048) to a temporary folder, then times, with a warm page
cache and on the threaded scheduler:

- the baseline: every frame read whole (one ``source.raw`` call) and added
  into a float32 accumulator, as the stack's hot path does;
- ``find_transforms`` on the cube;

and counts the bytes each reads (``/proc/self/io`` rchar). The machine
is shared, so the ratio of the two times is the number to compare.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigstack import BigstackWarning, find_transforms, open_frames, synthetic  # noqa: E402
from bigstack._io import cube_source  # noqa: E402
from tests.helpers import bytes_read  # noqa: E402


def baseline(cube):
    source, n, (ny, nx), _ = cube_source(cube, "baseline")
    total = np.zeros((ny, nx), np.float32)
    buffers = {}
    for i in range(n):
        rows, scale, zero, _, _ = source.raw(i, 0, ny, buffers)
        total += rows.astype(np.float32) * np.float32(scale) + np.float32(zero)
    return total


def main(n_frames=40, size=2048):
    with tempfile.TemporaryDirectory() as folder:
        truth = synthetic.make_frames(
            folder, n_frames=n_frames, shape=(size, size),
            stars=synthetic.Stars(n_stars=int(300 * (size / 512) ** 2)),
            motion=synthetic.Motion(subpixel=True, drift_step=3.0))
        cube = open_frames(truth.paths)
        file_bytes = size * size * 2
        baseline(cube)  # warm the cache
        times = {}
        for name, run in (("read+add", lambda: baseline(cube)),
                          ("find_transforms", lambda: find_transforms(cube, reference=0))):
            best = np.inf
            for _ in range(2):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", BigstackWarning)
                    with bytes_read() as counter:
                        t0 = time.perf_counter()
                        out = run()
                        best = min(best, time.perf_counter() - t0)
            times[name] = best
            print(f"{name:16s} {best / n_frames * 1e3:7.2f} ms/frame  "
                  f"{counter.value / n_frames / 1e6:7.3f} MB read/frame "
                  f"({counter.value / n_frames / file_bytes:.1%} of the frame)")
        ds = out
        err = np.abs(ds["shift"].values - truth.shifts).max()
        ratio = times["find_transforms"] / times["read+add"]
        print(f"ratio find_transforms / read+add: {ratio:.1f}"
              f"; {int(ds['valid'].sum())}/{n_frames} valid, max shift error {err:.4f} px, "
              f"rows read per frame {float(ds['rows_read'].mean()):.0f} of {size}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    main(*args)
