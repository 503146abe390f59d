"""Rotated stacks against the floor: alternating runs in one process.

    python benchmarks/warp_cost.py [FOLDER] [FRAMES] [REPEATS] [--baseline KERNELS.py]

FOLDER is a rotated set ``benchmarks/run.py --dir D`` made (``D-rotated``, ``truth.json``
beside the frames; default ``/tmp/bsb400-rotated``), FRAMES how many of its frames to stack
(default all), REPEATS the rounds (default 4). A round runs the ``floor`` row (one read of
every byte and a float add, :func:`bench.methods.floor`) and ``bigstack.stack`` of the
frames with their true transforms into a fresh store, ``memory="512MB"``, with
``subpixel="bilinear"`` and ``"lanczos3"`` (the ``rotated-bilinear`` and
``rotated-lanczos3`` rows). With ``--baseline`` a round also runs both stacks with
``bigstack._kernels.warp_accumulate`` taken from another copy of ``_kernels.py`` (e.g.
``git show main:bigstack/_kernels.py > /tmp/old.py``), so the two kernels are compared on
the same machine state. Each run is timed in wall and in process CPU time (steadier on a
shared machine); the best of each and its ratio to the floor's best are printed.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

import bigstack
from bigstack import _kernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.methods import Job, floor  # noqa: E402


def _load(path):
    """The module at ``path``, imported under its file's name (numba's cache of its
    kernels names the module, so a cached kernel loads only under the same name)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main(argv):
    baseline = None
    if "--baseline" in argv:
        k = argv.index("--baseline")
        baseline = _load(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
    folder = argv[1] if len(argv) > 1 else "/tmp/bsb400-rotated"
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    n = int(argv[2]) if len(argv) > 2 else len(paths)
    repeats = int(argv[3]) if len(argv) > 3 else 4
    paths = paths[:n]
    with open(os.path.join(folder, "truth.json")) as f:
        transforms = np.asarray(json.load(f)["transforms"])[:n]
    shape = bigstack.open_frames(paths[:1]).shape[1:]
    job = Job(method="floor", paths=paths, shape=shape, shifts=transforms[:, :, 2],
              ref_star=(0, 0))
    store = os.path.join(tempfile.mkdtemp(), "warp.zarr")
    current = _kernels.warp_accumulate

    def timed(fn):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    def stack(subpixel, kernels=None):
        def run():
            shutil.rmtree(store, ignore_errors=True)
            _kernels.warp_accumulate = current if kernels is None else kernels.warp_accumulate
            try:
                bigstack.stack(bigstack.open_frames(paths), transforms, subpixel=subpixel,
                               store=store, memory="512MB")
            finally:
                _kernels.warp_accumulate = current
        return run

    runs = {"floor": lambda: floor(job)}
    for subpixel in ("bilinear", "lanczos3"):
        runs[subpixel] = stack(subpixel)
        if baseline is not None:
            runs[f"{subpixel} (baseline)"] = stack(subpixel, baseline)
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
