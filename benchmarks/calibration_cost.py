"""What calibration adds to a stack: calibrated against uncalibrated, alternating runs.

    python benchmarks/calibration_cost.py [FOLDER] [FRAMES] [REPEATS]

FOLDER is a set ``benchmarks/run.py --dir`` made (``truth.json`` beside the frames;
default ``/tmp/bsb400``), FRAMES how many of its frames to stack (default all), REPEATS
the pairs of runs (default 5). Each run is ``bigstack.stack`` of the frames with their
whole-pixel shifts into a fresh store, ``memory="512MB"``; the calibrated run first calls
``bigstack.calibrate`` with the ``bigstack-calibrated`` row's masters (bias, dark, flat,
``dark_scale="none"``), so the masters' fixed costs count. Runs alternate (uncalibrated,
calibrated, ...) in one process after one warm-up run of each; the ratio of the best of
each is printed, in wall time and in process CPU time (steadier on a shared machine).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import bigstack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.references import masters  # noqa: E402


def main(argv):
    folder = argv[1] if len(argv) > 1 else "/tmp/bsb400"
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    n = int(argv[2]) if len(argv) > 2 else len(paths)
    repeats = int(argv[3]) if len(argv) > 3 else 5
    paths = paths[:n]
    with open(os.path.join(folder, "truth.json")) as f:
        shifts = np.asarray(json.load(f)["shifts"])[:n]
    bias, dark, flat = masters(bigstack.open_frames(paths[:1]).shape[1:])
    store = os.path.join(tempfile.mkdtemp(), "calibration.zarr")

    def run(calibrated):
        shutil.rmtree(store, ignore_errors=True)
        wall, cpu = time.perf_counter(), time.process_time()
        cube = bigstack.open_frames(paths)
        if calibrated:
            cube = bigstack.calibrate(cube, bias=bias, dark=dark, flat=flat, dark_scale="none")
        bigstack.stack(cube, shifts, subpixel="nearest", store=store, memory="512MB")
        return time.perf_counter() - wall, time.process_time() - cpu

    try:
        run(False)
        run(True)
        plain, calibrated = [], []
        for _ in range(repeats):
            plain.append(run(False))
            calibrated.append(run(True))
            print(f"uncalibrated {plain[-1][0]:.2f} s ({plain[-1][1]:.2f} s CPU), "
                  f"calibrated {calibrated[-1][0]:.2f} s ({calibrated[-1][1]:.2f} s CPU)",
                  flush=True)
    finally:
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    for k, what in enumerate(("wall", "CPU")):
        a = min(t[k] for t in plain)
        b = min(t[k] for t in calibrated)
        print(f"{n} frames, {what}: best uncalibrated {a:.2f} s, calibrated {b:.2f} s, "
              f"ratio {b / a:.3f}")


if __name__ == "__main__":
    main(sys.argv)
