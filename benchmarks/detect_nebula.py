"""Star detection beside a bright nebula or galaxy: what is found, what is false.

Run from the repository root (``PYTHONPATH`` picks the checkout measured, so
two commits can be compared)::

    PYTHONPATH=$PWD python benchmarks/detect_nebula.py

One 600 x 800 float32 frame (tests/helpers.py renderer): 266 stars of FWHM 3
px peaking 30 sigma on a jittered 40 px grid, noise 10 ADU, a column pattern
of 11 ADU rms, 300 hot pixels and 30 cosmic rays, plus a round Gaussian glow
(``peak`` ADU, ``sigma`` px, centred at x 420, y 310) with photon noise (gain
2). Per glow, ``detect_stars`` on the whole frame (FWHM chosen by the ladder,
and given as 3 px) reports: stars found (within 0.5 px of a true star), false
detections, the stars found among those where the glow is under 10 sigma,
the pixel noise it measured, and the RMS position error of the stars found.

A second table: a globular cluster's core, ``peak / (1 + r^2 / core^2)``
centred at x 460, y 512 of a 1024 x 1024 frame, among 440 defocused stars
(FWHM 11 px, peaks of 3 sigma, scattered at least 25 px apart) with the same
sensor features; the stars counted "away" are those where the core's light
is under 3 sigma.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigstack._detect import detect_stars  # noqa: E402
from tests.helpers import render_frame, scattered_stars, similarity  # noqa: E402

SHAPE = (600, 800)
SIGMA = 10.0
GLOWS = [(0.0, 80.0), (1000.0, 150.0), (2000.0, 60.0), (5000.0, 80.0), (20000.0, 80.0),
         (3000.0, 300.0)]


def stars():
    rng = np.random.default_rng(7)
    gy, gx = np.mgrid[30:SHAPE[0] - 29:40, 30:SHAPE[1] - 29:40]
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    s = 3.0 / 2.3548
    return x, y, np.full(x.size, 30 * SIGMA * 2 * np.pi * s * s)


def frame(peak, width, x, y, flux):
    image = render_frame(SHAPE, (x, y, flux), similarity(), 3.0, seed=8, noise=SIGMA,
                         pattern=11.0, hot=300, cosmics=30)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    glow = peak * np.exp(-((xx - 420.0) ** 2 + (yy - 310.0) ** 2) / (2 * width**2))
    noise = np.random.default_rng(9).normal(0.0, 1.0, SHAPE) * np.sqrt(glow / 2.0)
    return (image + glow + noise).astype(np.float32), glow


CORES = [(0.0, 20.0), (5000.0, 20.0), (20000.0, 10.0), (5000.0, 40.0)]


def matched(found, x, y, tol):
    """``(hit per true star, false detections, position errors of the hits)``."""
    xy = np.column_stack([found["x"], found["y"]])
    if not len(xy):
        return np.zeros(x.size, bool), 0, np.empty(0)
    d, i = cKDTree(np.column_stack([x, y])).query(xy)
    hit = np.zeros(x.size, bool)
    hit[i[d < tol]] = True
    err = np.hypot(*(xy[d < tol] - np.column_stack([x, y])[i[d < tol]]).T)
    return hit, int((d >= tol).sum()), err


def cores():
    shape = (1024, 1024)
    x, y = scattered_stars(shape, 440, seed=7)
    s = 11.0 / 2.3548
    flux = np.full(x.size, 3 * SIGMA * 2 * np.pi * s * s)
    base = render_frame(shape, (x, y, flux), similarity(), 11.0, seed=8, noise=SIGMA,
                        pattern=11.0, hot=300, cosmics=30)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    usable = (x > 22) & (x < shape[1] - 23) & (y > 22) & (y < shape[0] - 23)
    print(f"\n{'core peak':>9} {'core':>5} {'found':>9} {'false':>5} {'away':>9} {'noise':>6} "
          f"{'filter':>6} {'RMS px':>7} {'ms':>6}")
    for peak, core in CORES:
        glow = peak / (1.0 + ((xx - 460.0) ** 2 + (yy - 512.0) ** 2) / core**2)
        noise = np.random.default_rng(9).normal(0.0, 1.0, shape) * np.sqrt(glow / 2.0)
        image = (base + glow + noise).astype(np.float32)
        detect_stars([(0, image)], n_stars=1000)  # compiled, warm
        start = time.perf_counter()
        found = detect_stars([(0, image)], n_stars=1000)
        ms = 1e3 * (time.perf_counter() - start)
        hit, false, err = matched(found, x, y, 2.0)
        under = peak / (1.0 + ((x - 460.0) ** 2 + (y - 512.0) ** 2) / core**2) < 3 * SIGMA
        away = usable & under
        rms = f"{np.sqrt(np.mean(err**2)):.3f}" if err.size else "-"
        print(f"{peak:9.0f} {core:5.0f} {hit[usable].sum():4d}/{usable.sum():<4d} {false:5d} "
              f"{hit[away].sum():4d}/{away.sum():<4d} {found['noise']:6.1f} "
              f"{found['filter_fwhm']:6.1f} {rms:>7} {ms:6.1f}")


def main():
    x, y, flux = stars()
    usable = (x > 10) & (x < SHAPE[1] - 11) & (y > 10) & (y < SHAPE[0] - 11)
    print(f"{'glow peak':>9} {'sigma':>5} {'FWHM':>5} {'found':>9} {'false':>5} "
          f"{'under 10 sigma':>14} {'noise':>6} {'RMS px':>7} {'ms':>6}")
    for peak, width in GLOWS:
        image, glow = frame(peak, width, x, y, flux)
        under = glow[np.round(y).astype(int), np.round(x).astype(int)] < 10 * SIGMA
        for fwhm in (None, 3.0):
            detect_stars([(0, image)], n_stars=1000, fwhm=fwhm)  # compiled, warm
            start = time.perf_counter()
            found = detect_stars([(0, image)], n_stars=1000, fwhm=fwhm)
            ms = 1e3 * (time.perf_counter() - start)
            hit, false, err = matched(found, x, y, 0.5)
            rms = f"{np.sqrt(np.mean(err**2)):.3f}" if err.size else "-"
            away = usable & under
            print(f"{peak:9.0f} {width:5.0f} {'auto' if fwhm is None else fwhm:>5} "
                  f"{hit[usable].sum():4d}/{usable.sum():<4d} {false:5d} "
                  f"{hit[away].sum():6d}/{away.sum():<7d} {found['noise']:6.1f} {rms:>7} "
                  f"{ms:6.1f}")


if __name__ == "__main__":
    main()
    cores()
