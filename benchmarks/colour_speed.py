"""Colour stacking speed against the mono floor of the same files, measured in one run.

The mono floor stacks the Bayer mosaics as mono frames (``debayer=None``) with the
same transforms and resampling; the colour runs debayer (bilinear, superpixel)
and stack three planes. Printed: seconds and the ratio to the floor.

    python benchmarks/colour_speed.py [n_frames] [height] [width] [--rotate]
"""

import sys
import tempfile
import time

import numpy as np

from bigstack import open_frames, stack, synthetic
from bigstack.synthetic import Motion


def _timed(fn, repeat=2):
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    n, ny, nx = (int(v) for v in (args + ["16", "1024", "1536"][len(args):])[:3])
    rotate = "--rotate" in argv
    motion = Motion(rotation_rate=0.05, drift_step=0.7, subpixel=True) if rotate \
        else Motion(drift_step=2.0)
    with tempfile.TemporaryDirectory() as tmp:
        truth = synthetic.make_frames(tmp, n_frames=n, shape=(ny, nx), bayer="RGGB",
                                      motion=motion, seed=1)
        transforms = truth.transforms
        # the same motion on the half-size superpixel grid: x_half = (x - 0.5) / 2
        half = transforms.copy()
        half[:, :, 2] = (transforms[:, :, :2] @ [0.5, 0.5] + transforms[:, :, 2] - 0.5) / 2
        subpixel = "lanczos3" if rotate else "nearest"
        if not rotate:
            half[:, :, 2] = np.round(half[:, :, 2])
        runs = {
            "mono floor": (lambda: stack(open_frames(truth.paths, debayer=None), transforms,
                                         subpixel=subpixel).compute()),
            "bilinear": (lambda: stack(open_frames(truth.paths), transforms,
                                       subpixel=subpixel).compute()),
            "superpixel": (lambda: stack(open_frames(truth.paths, debayer="superpixel"), half,
                                         subpixel=subpixel).compute()),
            "cfa": (lambda: stack(open_frames(truth.paths, debayer="cfa"),
                                  np.round(transforms) if not rotate else transforms,
                                  subpixel="nearest").compute()),
        }
        times = {name: _timed(fn) for name, fn in runs.items()}
    floor = times["mono floor"]
    print(f"{n} frames of {ny} x {nx}, {'rotated, lanczos3' if rotate else 'shifted, nearest'}")
    for name, seconds in times.items():
        print(f"  {name:11s} {seconds:6.2f} s  {seconds / floor:4.2f} x the mono floor")


if __name__ == "__main__":
    main(sys.argv[1:])
