"""Microbenchmarks of the compiled kernels (``bigstack._kernels``), as ratios to a floor.

The floor is measured in the same run (the machine may be shared): adding a
band of 64 x 2048 big-endian uint16 rows into a float32 sum with numpy
(``total += rows``, the conversion included). Every timing is the fastest
of several repeats on one core, in ns per output pixel per frame (ns per
value for rejection).

    python benchmarks/kernels.py               # warps, rejection, alternatives
    python benchmarks/kernels.py --compile     # first-call compile and cached start-up
    python benchmarks/kernels.py --clamp       # Lanczos clamp: star FWHM, hot pixel ringing
    python benchmarks/kernels.py --angles      # warp cost against the rotation angle
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bigstack import _combine, _kernels, _reject  # noqa: E402

WIDTH, ROWS, FRAME_ROWS = 2048, 64, 2048


def best(f, repeat=7, number=5):
    """Fastest time of one call of ``f`` (seconds)."""
    f()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        times.append((time.perf_counter() - t0) / number)
    return min(times)


def interleaved(cases, floor, rounds=10):
    """Fastest time of each case and of the floor, measured in turns (the machine is
    shared: a slow spell then hits the floor and the cases alike)."""
    for f in cases.values():
        f()
    fastest = dict.fromkeys(cases, math.inf)
    floor_time = math.inf
    for _ in range(rounds):
        for name, f in cases.items():
            floor_time = min(floor_time, best(floor, repeat=1, number=5))
            fastest[name] = min(fastest[name], best(f, repeat=1, number=2))
    return fastest, floor_time


def rotation(degrees):
    th = math.radians(degrees)
    return np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])


def stored_frame(seed=0):
    """A 16-bit camera frame as FITS stores it: big-endian int16 with BZERO 32768."""
    rng = np.random.default_rng(seed)
    physical = rng.normal(2000, 30, (FRAME_ROWS, WIDTH)).clip(0, 65535)
    return (physical - 32768).astype(">i2")


def warp_case(frame, A, t, interpolation, y0=1000, total=None, work=None, rows=None,
              zero=32768.0, clamp=True):
    """A callable warping the band of rows [y0, y0 + 64) of ``frame`` (the rows it needs;
    ``rows=(r0, r1)``: ``frame`` holds only those)."""
    if rows is None:
        r0, r1, _, _ = _kernels.source_window(A, t, frame.shape, (y0, y0 + ROWS), (0, WIDTH),
                                              interpolation)
        rows, shape = frame[r0:r1], frame.shape
    else:
        r0, shape, rows = rows[0], (FRAME_ROWS, WIDTH), frame
    total = np.zeros((ROWS, WIDTH), np.float32) if total is None else total
    coverage = np.zeros((ROWS, WIDTH), np.int32)
    work = {} if work is None else work

    def run():
        _kernels.warp_accumulate(rows, r0, shape, A, t, (y0, 0), total, coverage, interpolation,
                                 zero=zero, clamp=clamp, work=work)
    return run


def floor_case():
    rows = stored_frame()[:ROWS].view(">u2")
    total = np.zeros((ROWS, WIDTH), np.float32)

    def run():
        total.__iadd__(rows)
    return run


def report(name, seconds, floor, pixels=ROWS * WIDTH):
    ns = seconds / pixels * 1e9
    print(f"  {name:44s} {ns:7.3f} ns/px  {seconds / floor:6.2f}x floor")


def warps():
    frame = stored_frame()
    shift = np.array([0.37, -1.62])
    centre = np.array([WIDTH / 2, 1032.0])

    def turned(degrees):  # about the band's centre, so that the band stays in the frame
        A = rotation(degrees)
        return A, centre - A @ centre + shift

    cases = {}
    for interp in ("nearest", "bilinear", "lanczos3", "lanczos4"):
        cases[f"(b) shift, {interp}"] = warp_case(frame, np.eye(2), shift, interp)
    for interp in ("nearest", "bilinear", "lanczos3", "lanczos4"):
        cases[f"(b) 1 deg rotation, {interp}"] = warp_case(frame, *turned(1.0), interp)
    cases["(b) 1 deg rotation, lanczos3 clamp=False"] = warp_case(frame, *turned(1.0),
                                                                   "lanczos3", clamp=False)
    cases["(b) 180.3 deg (meridian flip), bilinear"] = warp_case(frame, *turned(180.3),
                                                                  "bilinear")
    cases["(b) 90.5 deg (transposed), bilinear"] = warp_case(frame, *turned(90.5), "bilinear")
    # the conversion decision: the caller converts to native float32 first, or the kernel
    # reads the stored big-endian integers (the default above)
    A, t = turned(1.0)
    r0, r1, _, _ = _kernels.source_window(A, t, frame.shape, (1000, 1064), (0, WIDTH),
                                          "bilinear")
    native = np.empty((r1 - r0, WIDTH), np.float32)
    converted = warp_case(native, A, t, "bilinear", rows=(r0, r1), zero=0.0)

    def caller_converts():
        np.add(frame[r0:r1], np.float32(32768.0), out=native, casting="unsafe")
        converted()
    cases["(b) 1 deg bilinear, caller converts to float32"] = caller_converts
    cases["(b) 1 deg bilinear into a float64 total"] = warp_case(
        frame, A, t, "bilinear", total=np.zeros((ROWS, WIDTH), np.float64))
    # (c) today's numpy bilinear of a shift, and its add
    block = frame[1000:1000 + ROWS + 1, :WIDTH]
    total = np.zeros((ROWS, WIDTH - 1), np.float32)

    def numpy_bilinear():
        total[...] += _combine._bilinear(block, None, np.float32(0.37), np.float32(0.38), 1, 1)
    cases["(c) today's numpy bilinear + add (_combine)"] = numpy_bilinear
    # a library alternative: scipy on the band, from float32 rows
    from scipy import ndimage

    src = frame[r0:r1].astype(np.float32) + np.float32(32768)
    matrix = A[::-1, ::-1]
    offset = (A @ np.array([0.0, 1000.0]) + t)[::-1] - np.array([r0, 0.0])
    cases["    scipy affine_transform order 1, 1 deg"] = lambda: ndimage.affine_transform(
        src, matrix, offset, output_shape=(ROWS, WIDTH), order=1, mode="nearest")
    fastest, floor = interleaved(cases, floor_case())
    print(f"band {ROWS} x {WIDTH}, rows stored >i2 with BZERO; floor (numpy total += >u2 "
          f"rows): {floor / (ROWS * WIDTH) * 1e9:.3f} ns/px")
    for name, seconds in fastest.items():
        report(name, seconds, floor)
    tiny = np.zeros((1, 16), np.float32), np.zeros((1, 16), np.int32)
    r0, r1, _, _ = _kernels.source_window(A, t, frame.shape, (1000, 1001), (1000, 1016),
                                          "bilinear")
    overhead = best(lambda: _kernels.warp_accumulate(frame[r0:r1], r0, frame.shape, A, t,
                                                     (1000, 1000), *tiny, "bilinear"))
    print(f"  per-call overhead (a 1 x 16 band, bilinear): {overhead * 1e6:.1f} us")
    return floor


def rejection(frames=400, rows=4):
    rng = np.random.default_rng(1)
    block = rng.normal(2000, 30, (frames, rows, WIDTH)).astype(np.float32)
    hits = rng.random(block.shape) < 0.01
    block[hits] += rng.uniform(200, 20000, hits.sum()).astype(np.float32)
    block[rng.random(block.shape) < 0.02] = np.nan
    values = block.size
    print(f"(d) rejection, block {frames} x {rows} x {WIDTH} float32 (1% outliers, 2% NaN), "
          "per value:")
    methods = (("median", {}), ("sigma_clip", {}), ("sigma_clip", {"centre": "mean"}),
               ("winsorized", {}))
    cases = {}
    for method, options in methods:
        label = method + (" centre=mean" if options else "")
        cases[label] = lambda m=method, o=options: _kernels.reject_block(block, m, **o)
        cases[label + " (combine_block)"] = (
            lambda m=method, o=options: _reject.combine_block(block, m, **o))
    fastest, floor = interleaved(cases, floor_case(), rounds=3)
    per_px = floor / (ROWS * WIDTH)
    for label, seconds in fastest.items():
        if label.endswith("(combine_block)"):
            continue
        today = fastest[label + " (combine_block)"]
        print(f"  {label:22s} kernel {seconds / values * 1e9:6.2f} ns/value "
              f"({seconds / values / per_px:5.2f}x floor per px), combine_block "
              f"{today / values * 1e9:6.2f} ns/value: {today / seconds:4.1f}x faster")


def angles():
    frame = stored_frame()
    floor = best(floor_case())
    print("warp cost against the rotation angle (x floor):")
    print("  angle  " + "  ".join(f"{k:>9s}" for k in ("nearest", "bilinear", "lanczos3")))
    for deg in (0.0, 0.2, 1.0, 3.0, 10.0, 30.0, 45.0, 89.0, 90.0, 180.0):
        A = np.eye(2) if deg == 0 else rotation(deg)
        t = np.array([0.37, -1.62])
        if deg:  # keep the band inside the frame: turn about its centre
            c = np.array([WIDTH / 2, 1032.0])
            t = c - A @ c + t
        cells = []
        for interp in ("nearest", "bilinear", "lanczos3"):
            cells.append(best(warp_case(frame, A, t, interp), repeat=3, number=2) / floor)
        print(f"  {deg:5.1f}  " + "  ".join(f"{c:9.2f}" for c in cells))


def fwhm(image, x0, y0):
    """FWHM (px) of a round star from its second moments, background 0."""
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    box = (np.abs(xx - x0) <= 8) & (np.abs(yy - y0) <= 8)
    w = np.clip(np.where(box, image, 0), 0, None)
    mx, my = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    var = (w * ((xx - mx) ** 2 + (yy - my) ** 2)).sum() / w.sum() / 2
    return 2.3548 * math.sqrt(var)


def clamp_effect():
    """Lanczos with and without the clamp: a star's FWHM, a hot pixel's ringing."""
    n = 64
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    A = rotation(1.0)
    c = np.array([31.5, 31.5])
    t = c - A @ c + [0.4, 0.3]
    print("clamp: star FWHM (second moments) after a 1 deg + (0.4, 0.3) px warp, relative to "
          "the star sampled on the output grid; peak and flux relative to it:")
    for sigma in (0.7, 1.0, 1.5):
        # the star as the warp should give it: sampled at the output pixels
        sx, sy = 31.3, 30.6
        cx, cy = np.linalg.solve(A, np.array([sx, sy]) - t)
        truth = 1000 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        star = 1000 * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sigma**2))
        want = fwhm(truth, cx, cy)
        line = [f"  sigma {sigma} (FWHM {want:.2f} px):"]
        for interp, clamp in (("bilinear", True), ("lanczos3", False), ("lanczos3", True),
                              ("lanczos4", False), ("lanczos4", True)):
            total = np.zeros((n, n), np.float32)
            cov = np.zeros((n, n), np.int32)
            _kernels.warp_accumulate(star.astype(np.float32), 0, (n, n), A, t, (0, 0), total,
                                     cov, interp, clamp=clamp)
            label = interp if interp == "bilinear" else f"{interp}{'' if clamp else ' raw'}"
            line.append(f"{label} {fwhm(total, cx, cy) / want:.3f} "
                        f"(peak {total.max() / truth.max():.2f}, "
                        f"flux {total.sum() / truth.sum():.3f})")
        print(line[0])
        print("    " + ", ".join(line[1:]))
    hot = np.full((n, n), 100.0, np.float32)
    hot[32, 32] = 10000.0
    for interp, clamp in (("bilinear", True), ("lanczos3", False), ("lanczos3", True),
                          ("lanczos4", False), ("lanczos4", True)):
        total = np.zeros((n, n), np.float32)
        cov = np.zeros((n, n), np.int32)
        _kernels.warp_accumulate(hot, 0, (n, n), np.eye(2), (0.5, 0.5), (0, 0), total, cov,
                                 interp, clamp=clamp)
        print(f"  hot pixel 10000 on 100, shift (0.5, 0.5), {interp:8s} clamp={clamp!s:5s}: "
              f"min {total[20:44, 20:44].min():8.1f}, max {total.max():8.1f}")


def compile_times():
    """First call in a fresh process with an empty cache, then a second fresh process."""
    code = ("import time; t0 = time.perf_counter(); import numpy as np; "
            "from bigstack import _kernels as k; t1 = time.perf_counter(); "
            "f = (np.arange(64 * 80, dtype='>i2').reshape(64, 80)); "
            "tot = np.zeros((64, 80), np.float32); cov = np.zeros((64, 80), np.int32); "
            "A = np.array([[0.9998, -0.0175], [0.0175, 0.9998]]); "
            "[k.warp_accumulate(f, 0, (64, 80), a, (0.3, 0.2), (0, 0), tot, cov, i) "
            " for i in k.INTERPOLATIONS for a in (np.eye(2), A)]; "
            "[k.reject_block(np.ones((5, 2, 3), np.float32), m) for m in k.REJECTIONS]; "
            "t2 = time.perf_counter(); print(f'{t1 - t0:.2f} {t2 - t1:.2f}')")
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=root)
        for label in ("first call, empty cache", "fresh process, cached"):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                                 text=True, check=True).stdout.split()
            print(f"  {label:24s} import {float(out[0]):5.2f} s, first calls of every "
                  f"interpolation (shift and rotation) and rejection {float(out[1]):6.2f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--clamp", action="store_true")
    parser.add_argument("--angles", action="store_true")
    args = parser.parse_args()
    if args.compile:
        compile_times()
        return
    if args.clamp:
        clamp_effect()
        return
    if args.angles:
        angles()
        return
    warps()
    rejection()


if __name__ == "__main__":
    main()
