"""Where one stack's time goes: cProfile of ``bigstack.stack`` on a benchmark frame set.

    python benchmarks/profile_stack.py nearest|bilinear|lanczos3 [FOLDER]

FOLDER is a set ``benchmarks/run.py --dir`` made (``truth.json`` beside the frames); for
``bilinear`` and ``lanczos3`` use the rotated set (``<dir>-rotated``). The stack runs once
to warm the caches and numba, once timed on the threaded scheduler, and once profiled on
the synchronous scheduler (one core, so the kernels' shares add up).
"""

from __future__ import annotations

import cProfile
import glob
import json
import os
import pstats
import shutil
import sys
import tempfile
import time

import dask
import numpy as np

import bigstack


def main(argv):
    which = argv[1] if len(argv) > 1 else "nearest"
    folder = argv[2] if len(argv) > 2 else "/tmp/bsb100" + ("" if which == "nearest"
                                                             else "-rotated")
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    with open(os.path.join(folder, "truth.json")) as f:
        truth = json.load(f)
    motion = np.asarray(truth["shifts"] if which == "nearest" else truth["transforms"])
    store = os.path.join(tempfile.mkdtemp(), "profile.zarr")

    def run():
        shutil.rmtree(store, ignore_errors=True)
        bigstack.stack(bigstack.open_frames(paths), motion, subpixel=which, store=store,
                       memory="512MB")

    run()
    t0 = time.perf_counter()
    run()
    print(f"{which}: {time.perf_counter() - t0:.2f} s on the threaded scheduler")
    profile = cProfile.Profile()
    with dask.config.set(scheduler="synchronous"):
        profile.runcall(run)
    pstats.Stats(profile).sort_stats("tottime").print_stats(10)
    shutil.rmtree(os.path.dirname(store), ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv)
