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
from bench.methods import Job, floor  # noqa: E402


def main(argv):
    folder = argv[1] if len(argv) > 1 else "/tmp/bsb400"
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    n = int(argv[2]) if len(argv) > 2 else len(paths)
    repeats = int(argv[3]) if len(argv) > 3 else 3
    methods = argv[4].split(",") if len(argv) > 4 else ["median", "sigma_clip"]
    paths = paths[:n]
    with open(os.path.join(folder, "truth.json")) as f:
        shifts = np.asarray(json.load(f)["shifts"])[:n]
    shape = bigstack.open_frames(paths[:1]).shape[1:]
    job = Job(method="floor", paths=paths, shape=shape, shifts=shifts, ref_star=(0, 0))
    store = os.path.join(tempfile.mkdtemp(), "reject.zarr")
    print(f"bigstack from {os.path.dirname(bigstack.__file__)}", flush=True)

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def stack(method):
        def run():
            shutil.rmtree(store, ignore_errors=True)
            bigstack.stack(bigstack.open_frames(paths), shifts, subpixel="nearest",
                           store=store, memory="512MB", method=method)
        return run

    runs = {"floor": lambda: floor(job), **{m: stack(m) for m in methods}}
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
