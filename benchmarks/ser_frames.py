"""Stack one SER video of many frames: time, peak memory and file opens vs frame count.

    python benchmarks/ser_frames.py                       # 1000, 3000, 10000 frames of 640x480
    python benchmarks/ser_frames.py --frames 500,2000 --size 480x640 --depth 8
    python benchmarks/ser_frames.py --find-shifts         # also measure find_shifts

Each count is written once into ``--dir`` (default a folder under /tmp; the
10,000-frame 16-bit video is 6.1 GB, deleted at the end unless ``--keep``)
and stacked in a fresh process: ``open_frames`` on the one file, then
``stack`` with the frames' known whole-pixel jitter as shifts (and, with
``--find-shifts``, ``find_shifts`` first). The child reports its wall time,
its peak resident memory (``ru_maxrss``) and how many times the SER file
was opened (``os.open`` counted), so "flat memory" and "no per-frame file
opens" are numbers, not claims.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def write_video(path, n, shape, depth, seed=0):
    """A star field jittering by whole pixels, with noise; returns the shifts ([x, y])."""
    sys.path.insert(0, ROOT)
    from bigstack._ser import write_ser

    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    base = np.full(shape, 800.0)
    for _ in range(40):
        x, y, flux = rng.uniform(20, nx - 20), rng.uniform(20, ny - 20), rng.uniform(2e3, 3e4)
        base += flux * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.5**2))
    top = 255 if depth == 8 else 65535
    if depth == 8:
        base *= 200.0 / base.max()
    noise = [rng.normal(0, 3 if depth == 8 else 20, shape) for _ in range(8)]
    shifts = rng.integers(-4, 5, size=(n, 2))
    dtype = np.uint8 if depth == 8 else np.uint16

    def frames():
        for k in range(n):
            dx, dy = shifts[k]
            frame = np.roll(base, (dy, dx), axis=(0, 1)) + noise[k % len(noise)]
            yield np.clip(frame, 0, top).astype(dtype)

    write_ser(path, frames(), overwrite=True)
    return shifts


CHILD = r"""
import json, os, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
path, shifts_path, store, find = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
opens = [0]
real_open = os.open
def counting_open(p, *a, **k):
    if os.fspath(p) == path:
        opens[0] += 1
    return real_open(p, *a, **k)
os.open = counting_open
import builtins
real_builtin_open = builtins.open
def counting_builtin_open(p, *a, **k):
    if isinstance(p, (str, os.PathLike)) and os.fspath(p) == path:
        opens[0] += 1
    return real_builtin_open(p, *a, **k)
builtins.open = counting_builtin_open
import bigstack
t0 = time.perf_counter()
cube = bigstack.open_frames(path)
t_open = time.perf_counter() - t0
opened = opens[0]
shifts = np.load(shifts_path)
t_find = None
if find:
    t1 = time.perf_counter()
    centre = [cube.sizes["x"] // 2, cube.sizes["y"] // 2]
    found = bigstack.find_shifts(cube, method="xcorr", star_pos=centre, search=64)
    t_find = time.perf_counter() - t1
t1 = time.perf_counter()
out = bigstack.stack(cube, shifts, store=store, memory="512MB")
total = float(np.nansum(out["stack"].values))
t_stack = time.perf_counter() - t1
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"open_s": t_open, "find_s": t_find, "stack_s": t_stack, "peak_rss_mb": rss,
                  "opens_at_open": opened, "opens_total": opens[0], "sum": total}}))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1000,3000,10000")
    parser.add_argument("--size", default="480x640", help="NYxNX")
    parser.add_argument("--depth", type=int, default=16, choices=(8, 16))
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--find-shifts", action="store_true")
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.size.lower().split("x"))
    folder = args.dir or tempfile.mkdtemp(prefix="bigstack-ser-")
    os.makedirs(folder, exist_ok=True)
    rows = []
    try:
        for n in (int(v) for v in args.frames.split(",")):
            path = os.path.join(folder, f"video-{n}-{shape[0]}x{shape[1]}-{args.depth}.ser")
            t0 = time.perf_counter()
            shifts = write_video(path, n, shape, args.depth)
            t_write = time.perf_counter() - t0
            shifts_path = path + ".shifts.npy"
            np.save(shifts_path, shifts.astype(float))
            store = os.path.join(folder, f"stack-{n}.zarr")
            shutil.rmtree(store, ignore_errors=True)
            child = subprocess.run(
                [sys.executable, "-c", CHILD.format(root=ROOT), path, shifts_path, store,
                 "1" if args.find_shifts else "0"],
                capture_output=True, text=True, check=False)
            if child.returncode:
                sys.stderr.write(child.stderr)
                raise SystemExit(f"{n} frames: the stacking process failed")
            result = json.loads(child.stdout.strip().splitlines()[-1])
            result.update(frames=n, gb=os.path.getsize(path) / 1e9, write_s=t_write)
            rows.append(result)
            print(f"{n:6d} frames {result['gb']:.2f} GB: open {result['open_s']:.2f} s, "
                  + (f"find_shifts {result['find_s']:.1f} s, " if result["find_s"] else "")
                  + f"stack {result['stack_s']:.1f} s "
                  f"({result['gb'] / result['stack_s']:.2f} GB/s), peak RSS "
                  f"{result['peak_rss_mb']:.0f} MB, opens of the file: "
                  f"{result['opens_at_open']} at open, {result['opens_total']} in all",
                  flush=True)
            if not args.keep:
                os.remove(path)
                shutil.rmtree(store, ignore_errors=True)
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return rows


if __name__ == "__main__":
    main()
