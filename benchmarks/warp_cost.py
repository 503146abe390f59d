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

import functools
import importlib.util
import os
import shutil
import sys

import bigstack
from bigstack import _kernels

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench.alternating import alternate, floor_run, frame_set, print_best, scratch_store  # noqa: E402

_CURRENT = _kernels.warp_accumulate


def _load(path):
    """The module at ``path``, imported under its file's name (numba's cache of its
    kernels names the module, so a cached kernel loads only under the same name)."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _stack(frames, store, subpixel, kernels=None):
    shutil.rmtree(store, ignore_errors=True)
    _kernels.warp_accumulate = _CURRENT if kernels is None else kernels.warp_accumulate
    try:
        bigstack.stack(bigstack.open_frames(frames.paths), frames.transforms, subpixel=subpixel,
                       store=store, memory="512MB")
    finally:
        _kernels.warp_accumulate = _CURRENT


def main(argv):
    baseline = None
    if "--baseline" in argv:
        k = argv.index("--baseline")
        baseline = _load(argv[k + 1])
        argv = argv[:k] + argv[k + 2:]
    frames, repeats = frame_set(argv, "/tmp/bsb400-rotated", repeats=4)
    with scratch_store("warp.zarr") as store:
        runs = {"floor": floor_run(frames, store)}
        for subpixel in ("bilinear", "lanczos3"):
            runs[subpixel] = functools.partial(_stack, frames, store, subpixel)
            if baseline is not None:
                runs[f"{subpixel} (baseline)"] = functools.partial(_stack, frames, store,
                                                                   subpixel, baseline)
        times = alternate(runs, repeats)
    print_best(times, frames.n)


if __name__ == "__main__":
    main(sys.argv)
