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

import glob
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import bigstack
from bigstack import _combine

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.methods import Job, floor  # noqa: E402


def main(argv):
    both = "--both" in argv
    argv = [a for a in argv if a != "--both"]
    folder = argv[1] if len(argv) > 1 else "/tmp/bsb400"
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    n = int(argv[2]) if len(argv) > 2 else len(paths)
    repeats = int(argv[3]) if len(argv) > 3 else 5
    paths = paths[:n]
    with open(os.path.join(folder, "truth.json")) as f:
        shifts = np.asarray(json.load(f)["shifts"])[:n]
    shape = bigstack.open_frames(paths[:1]).shape[1:]
    job = Job(method="floor", paths=paths, shape=shape, shifts=shifts, ref_star=(0, 0))
    store = os.path.join(tempfile.mkdtemp(), "nearest.zarr")

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def stack(grouped):
        def run():
            shutil.rmtree(store, ignore_errors=True)
            _combine._GROUP_PLAIN = grouped
            try:
                bigstack.stack(bigstack.open_frames(paths), shifts, subpixel="nearest",
                               store=store, memory="512MB")
            finally:
                _combine._GROUP_PLAIN = True
        return run

    runs = {"floor": lambda: floor(job), "nearest": stack(True)}
    if both:
        runs["nearest (frame by frame)"] = stack(False)
    times = {name: [] for name in runs}
    try:
        for fn in runs.values():  # warm up: page cache, numba, imports
            fn()
        for _ in range(repeats):
            line = []
            for name, fn in runs.items():
                times[name].append(timed(fn))
                line.append(f"{name} {times[name][-1][0]:.2f} s ({times[name][-1][1]:.2f} s CPU)")
            print(", ".join(line), flush=True)
    finally:
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)
    for k, what in enumerate(("wall", "CPU")):
        base = min(t[k] for t in times["floor"])
        parts = [f"floor {base:.2f} s"]
        for name in list(runs)[1:]:
            best = min(t[k] for t in times[name])
            parts.append(f"{name} {best:.2f} s = {best / base:.2f}x")
        print(f"{n} frames, best {what}: " + ", ".join(parts))


if __name__ == "__main__":
    main(sys.argv)
