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

import functools
import os
import shutil
import sys

import bigstack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.alternating import alternate, frame_set, scratch_store  # noqa: E402
from bench.references import masters  # noqa: E402


def _stack(frames, store, calibration=None):
    cube = bigstack.open_frames(frames.paths)
    if calibration is not None:
        bias, dark, flat = calibration
        cube = bigstack.calibrate(cube, bias=bias, dark=dark, flat=flat, dark_scale="none")
    bigstack.stack(cube, frames.shifts, subpixel="nearest", store=store, memory="512MB")


def main(argv):
    frames, repeats = frame_set(argv, "/tmp/bsb400", repeats=5)
    calibration = masters(frames.shape)
    with scratch_store("calibration.zarr") as store:
        runs = {"uncalibrated": functools.partial(_stack, frames, store),
                "calibrated": functools.partial(_stack, frames, store, calibration)}
        # the store is removed before each run, untimed
        times = alternate(runs, repeats,
                          before=functools.partial(shutil.rmtree, store, ignore_errors=True))
    for k, what in enumerate(("wall", "CPU")):
        a = min(t[k] for t in times["uncalibrated"])
        b = min(t[k] for t in times["calibrated"])
        print(f"{frames.n} frames, {what}: best uncalibrated {a:.2f} s, calibrated {b:.2f} s, "
              f"ratio {b / a:.3f}")


if __name__ == "__main__":
    main(sys.argv)
