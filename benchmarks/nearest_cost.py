"""bigstack-nearest against the floor: alternating runs in one process.

    python benchmarks/nearest_cost.py [FOLDER] [FRAMES] [REPEATS] [--both]

FOLDER is a set ``benchmarks/run.py --dir`` made (``truth.json`` beside the frames;
default ``/tmp/bsb400``), FRAMES how many of its frames to stack (default all), REPEATS
the rounds of runs (default 5). A round runs the ``floor`` row (one read of every byte and
a float add, :func:`bench.methods.floor`) and ``bigstack.stack`` of the frames with their
whole-pixel shifts into a fresh store, ``memory="512MB"`` (the ``bigstack-nearest`` row,
``open_frames`` included). With ``--both`` a round also stacks with the grouped add of
plain frames switched off (``bigstack._combine._GROUP_PLAIN = False``: one numpy add per
frame over the whole tile), so the two paths are compared on the same machine state.
Each run is timed in wall and in process CPU time (steadier on a shared machine); the
best of each and its ratio to the floor's best are printed.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys

import bigstack
from bigstack import _combine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.alternating import alternate, floor_run, frame_set, print_best, scratch_store  # noqa: E402


def _stack(frames, store, grouped):
    shutil.rmtree(store, ignore_errors=True)
    _combine._GROUP_PLAIN = grouped
    try:
        bigstack.stack(bigstack.open_frames(frames.paths), frames.shifts, subpixel="nearest",
                       store=store, memory="512MB")
    finally:
        _combine._GROUP_PLAIN = True


def main(argv):
    both = "--both" in argv
    argv = [a for a in argv if a != "--both"]
    frames, repeats = frame_set(argv, "/tmp/bsb400", repeats=5)
    with scratch_store("nearest.zarr") as store:
        runs = {"floor": floor_run(frames, store),
                "nearest": functools.partial(_stack, frames, store, True)}
        if both:
            runs["nearest (frame by frame)"] = functools.partial(_stack, frames, store, False)
        times = alternate(runs, repeats)
    print_best(times, frames.n)


if __name__ == "__main__":
    main(sys.argv)
