"""find_shifts (the tutorial's single-star registration) on the cases where it used to fail.

Run from the repository root, with the bigstack to measure first on the path::

    PYTHONPATH=$PWD python benchmarks/find_shifts_cases.py [case ...] [--sweep]

``PYTHONPATH=<another checkout>`` measures that checkout's bigstack with the
same cases (the script itself, and ``tests/helpers.py`` for the trail, come
from this repository). Every case is made by :mod:`bigstack.synthetic` and
measured against its truth; per case it prints how many frames are valid,
how many of them are wrong by more than the case's limit (the number that
must be zero), how many frames within it were flagged, and the largest
error of a valid frame.

Cases: ``crowded`` (the generator's crowded case, a star with a brighter
one 18 px away, a 30 px box, ``track=True``), ``trail`` (trails at 10, 30
and 100% of the star's peak, 1.5 or 3 px beside it), ``xcorr_bias`` (RMS
of ``method="xcorr"`` over fractional shifts 0..1 at FWHM 2 and 3),
``big_box`` (the generator's faint defocused case, 1024 x 1024, boxes of
300 to 700 px), ``sensor`` (a box where only warm pixels and a column
pattern correlate), ``track_flagged`` (a frame of another field amid a
tracked night), ``jump`` (the mount slips by 9 px and stays). ``--sweep``
adds the crowded case over the 150 brightest stars of seeds 0, 1 and 2.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

import bigstack
from bigstack import BigstackWarning, StarNotFoundError, find_shifts, synthetic

_spec = importlib.util.spec_from_file_location(
    "helpers", Path(__file__).resolve().parents[1] / "tests" / "helpers.py")
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


def _run(cube, **kwargs):
    """find_shifts quietly; the Dataset, or the StarNotFoundError's message."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BigstackWarning)
        try:
            return find_shifts(cube, **kwargs)
        except StarNotFoundError as err:
            return str(err).split("\n")[0]


def _row(name, ds, truth_shifts, limit):
    if isinstance(ds, str):
        print(f"  {name:34s} raises: {ds[:110]}")
        return
    error = np.hypot(*(ds["shift"].values - truth_shifts).T)
    valid = ds["valid"].values
    worst = np.nanmax(np.where(valid, error, np.nan)) if valid.any() else np.nan
    print(f"  {name:34s} valid {valid.sum():3d}/{valid.size:<3d} valid with error > {limit} px: "
          f"{int((valid & (error > limit)).sum()):3d}  flagged within it: "
          f"{int((~valid & (error <= limit)).sum()):3d}  largest valid error {worst:.3f} px")


def crowded(folder):
    print("crowded: make_case('crowded', n_frames=20, seed=0), star_pos=[86, 317], search=30")
    truth = synthetic.make_case("crowded", folder, n_frames=20, seed=0)
    cube = bigstack.open_frames(truth.paths)
    for track in (True, False):
        ds = _run(cube, star_pos=[86, 317], search=30, track=track)
        _row(f"track={track}", ds, truth.shifts, 0.5)


def sweep(folder):
    print("crowded sweep: the 150 brightest stars (inside 40 px of the edges) of seeds 0-2, "
          "search=30, track=True")
    runs = raised = bad = valid_total = flagged_good = 0
    for seed in range(3):
        truth = synthetic.make_case("crowded", Path(folder) / str(seed), n_frames=20, seed=seed)
        cube = np.stack([fits.getdata(p).astype(np.float32) for p in truth.paths])
        s = truth.stars
        inside = np.flatnonzero((s["x"] > 40) & (s["x"] < 472) & (s["y"] > 40) & (s["y"] < 472))
        for k in inside[np.argsort(-s["flux"][inside])][:150]:
            ds = _run(cube, star_pos=[round(s["x"][k]), round(s["y"][k])], search=30, track=True)
            if isinstance(ds, str):
                raised += 1
                continue
            runs += 1
            error = np.hypot(*(ds["shift"].values - truth.shifts).T)
            valid = ds["valid"].values
            bad += int((valid & (error > 0.5)).sum())
            valid_total += int(valid.sum())
            flagged_good += int((~valid & (error <= 0.5)).sum())
    print(f"  {runs} runs ({raised} refused the reference star): {valid_total} frames valid, "
          f"{bad} of them wrong by > 0.5 px; {flagged_good} frames within 0.5 px flagged")


def trail(folder):
    print("trail: 12 frames, reference star peak 3000, a trail (FWHM 3) in the odd frames "
          "beside it; search=40")
    truth = synthetic.make_frames(folder, n_frames=12, shape=(160, 160), seed=21,
                                  motion=synthetic.Motion(subpixel=True),
                                  stars=synthetic.Stars(ref_peak=3000.0, ref_isolation=30))
    base = np.stack([fits.getdata(p).astype(np.float32) for p in truth.paths])
    for ratio in (0.1, 0.3, 1.0):
        for offset in (1.5, 3.0):
            cube = base.copy()
            for i in range(1, 12, 2):
                angle = 20.0 + 37.0 * i
                th = np.radians(angle)
                x, y = np.array(truth.ref_star) + truth.shifts[i]
                cube[i] += helpers.trail_image(cube.shape[1:], x - offset * np.sin(th),
                                               y + offset * np.cos(th), angle, ratio * 3000.0,
                                               3.0).astype(np.float32)
            ds = _run(cube, star_pos=truth.ref_star, search=40)
            _row(f"trail {ratio:.0%} of the peak, {offset} px", ds, truth.shifts, 0.3)


def xcorr_bias(folder):
    print("xcorr_bias: 21 frames, shifts x = f, y = -f for f in 0..1, float32, search=64")
    n = 21
    fraction = np.linspace(0.0, 1.0, n)
    shifts = np.column_stack([fraction, -fraction])
    for fwhm in (2.0, 3.0):
        for noise in ("poisson", "none"):
            truth = synthetic.make_frames(Path(folder) / f"{fwhm}{noise}", n_frames=n,
                                          shape=(160, 160), seed=3, dtype="float32",
                                          motion=synthetic.Motion(shifts=shifts, subpixel=True),
                                          stars=synthetic.Stars(fwhm=fwhm, ref_isolation=30),
                                          camera=synthetic.Camera(noise=noise))
            cube = bigstack.open_frames(truth.paths)
            t0 = time.perf_counter()
            ds = _run(cube, star_pos=truth.ref_star, search=64, method="xcorr")
            seconds = (time.perf_counter() - t0) / n
            error = ds["shift"].values[1:] - truth.shifts[1:]
            rms = np.sqrt(np.nanmean(error**2))
            print(f"  FWHM {fwhm}, noise {noise:8s} RMS per axis {rms:.4f} px, largest "
                  f"{np.nanmax(np.abs(error)):.4f} px, valid {int(ds['valid'].sum())}/{n} "
                  f"({seconds * 1e3:.0f} ms a frame)")


def big_box(folder):
    print("big_box: make_case('faint_defocused', n_frames=8, shape=(1024, 1024), seed=0): "
          "FWHM 11, stars 2.5-15 sigma, hot pixels to 30000, column/row pattern, 12 px a frame")
    truth = synthetic.make_case("faint_defocused", folder, n_frames=8, shape=(1024, 1024),
                                seed=0)
    cube = bigstack.open_frames(truth.paths)
    for search in (300, 600, 700):
        for method in ("xcorr", "peak", "centroid"):
            ds = _run(cube, star_pos=truth.ref_star, search=search, method=method)
            _row(f"{method} search={search}", ds, truth.shifts, 2.0)
            if not isinstance(ds, str):
                still = ds["valid"].values[1:] & (np.hypot(*ds["shift"].values[1:].T) < 1)
                print(f"  {'':34s} valid frames with a shift under 1 px (truth >= 12): "
                      f"{int(still.sum())}")


def sensor(folder):
    print("sensor: no field stars, reference star peak 300, 6000 warm pixels of 60-120 ADU, "
          "column pattern 10, row 4; xcorr search=200")
    truth = synthetic.make_frames(folder, n_frames=6, shape=(256, 256), seed=4,
                                  motion=synthetic.Motion(subpixel=True, drift_step=4.0),
                                  stars=synthetic.Stars(n_stars=0, ref_peak=300.0),
                                  camera=synthetic.Camera(hot_pixels=6000,
                                                          hot_level=(60.0, 120.0),
                                                          column_pattern=10.0, row_pattern=4.0))
    ds = _run(bigstack.open_frames(truth.paths), star_pos=truth.ref_star, search=200,
              method="xcorr")
    _row("xcorr", ds, truth.shifts, 1.0)
    if not isinstance(ds, str):
        print(f"  {'':34s} reason of frame 1: {ds['reason'].values[1][:90]!r}")


def track_flagged(folder):
    print("track_flagged: frame 4 of 10 shows another field; drift 2 px a frame, search=40, "
          "track=True; seeds 0-7")
    for seed in range(8):
        truth = synthetic.make_frames(Path(folder) / str(seed), n_frames=10, shape=(200, 200),
                                      seed=seed,
                                      motion=synthetic.Motion(subpixel=True, drift_step=2.0,
                                                              jitter=0.3),
                                      stars=synthetic.Stars(n_stars=400, ref_isolation=25),
                                      artefacts=synthetic.Artefacts(other_field=(4,)))
        ds = _run(bigstack.open_frames(truth.paths), star_pos=truth.ref_star, search=40,
                  track=True)
        _row(f"seed {seed}", ds, truth.shifts, 0.1)


def jump(folder):
    print("jump: the mount slips by [9, -4] px at frame 6 of 12 and stays; search=60, jump=2")
    shifts = np.array([[0.4 * i, 0.3 * i] for i in range(12)])
    shifts[6:] += [9.0, -4.0]
    truth = synthetic.make_frames(folder, n_frames=12, shape=(160, 160), seed=8,
                                  motion=synthetic.Motion(shifts=shifts, subpixel=True),
                                  stars=synthetic.Stars(ref_isolation=40))
    ds = _run(bigstack.open_frames(truth.paths), star_pos=truth.ref_star, search=60, jump=2.0)
    _row("centroid", ds, truth.shifts, 0.1)


CASES = {"crowded": crowded, "trail": trail, "xcorr_bias": xcorr_bias, "big_box": big_box,
         "sensor": sensor, "track_flagged": track_flagged, "jump": jump}

if __name__ == "__main__":
    names = [a for a in sys.argv[1:] if not a.startswith("--")] or list(CASES)
    print(f"bigstack from {Path(bigstack.__file__).parent}")
    for name in names:
        with tempfile.TemporaryDirectory() as folder:
            CASES[name](folder)
    if "--sweep" in sys.argv:
        with tempfile.TemporaryDirectory() as folder:
            sweep(folder)
