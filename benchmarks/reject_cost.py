"""bigstack-median and bigstack-sigma_clip against the floor: alternating runs in one process.

    python benchmarks/reject_cost.py [FOLDER] [FRAMES] [REPEATS] [METHODS]

FOLDER is a set ``benchmarks/run.py --dir`` made (``truth.json`` beside the frames;
default ``/tmp/bsb400``), FRAMES how many of its frames to stack (default all), REPEATS
the rounds of runs (default 3), METHODS a comma-separated list of ``stack`` methods
(default ``median,sigma_clip``). A round runs the ``floor`` row (one read of every byte
and a float add, :func:`bench.methods.floor`) and, per method, ``bigstack.stack`` of the
frames with their whole-pixel shifts into a fresh store, ``memory="512MB"`` (the
``bigstack-median`` / ``bigstack-sigma_clip`` rows, ``open_frames`` included). Each run
is timed in wall and in process CPU time (steadier on a shared machine); the best of
each and its ratio to the floor's best are printed. ``bigstack`` is imported before the
``bench`` package, so ``PYTHONPATH=<another checkout>`` measures that checkout's code.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys

import bigstack

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.alternating import alternate, floor_run, frame_set, print_best, scratch_store  # noqa: E402


def _stack(frames, store, method):
    shutil.rmtree(store, ignore_errors=True)
    bigstack.stack(bigstack.open_frames(frames.paths), frames.shifts, subpixel="nearest",
                   store=store, memory="512MB", method=method)


def main(argv):
    frames, repeats = frame_set(argv, "/tmp/bsb400", repeats=3)
    methods = argv[4].split(",") if len(argv) > 4 else ["median", "sigma_clip"]
    with scratch_store("reject.zarr") as store:
        print(f"bigstack from {os.path.dirname(bigstack.__file__)}", flush=True)
        runs = {"floor": floor_run(frames, store),
                **{m: functools.partial(_stack, frames, store, m) for m in methods}}
        times = alternate(runs, repeats)
    print_best(times, frames.n)


if __name__ == "__main__":
    main(sys.argv)
