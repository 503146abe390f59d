"""Accuracy of find_transforms on hard cases, against the truth the frames were made from.

Run from the repository root::

    PYTHONPATH=$PWD python benchmarks/registration.py [case ...]

``generator`` as the case name runs the generator's hard cases instead
(:func:`bigstack.synthetic.make_case`, 10 FITS frames of 512 x 512 each,
frame 0 the reference), with the same report.

Each case renders frames in memory (tests/helpers.py: pixel-integrated
stars seen through a known reference -> frame transform, noise, sensor
pattern, hot pixels, cosmic rays, trails), runs
:func:`bigstack.find_transforms` on the array cube and prints, per case:
frames valid / invalid, the RMS and the largest transform error at the
bright stars inside the frame, the largest error anywhere on the overlap
(a grid that includes the corners), and the number of frames marked valid
with an error over 0.1 px (the number that must be zero).
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bigstack import BigstackWarning, find_transforms  # noqa: E402
from tests.helpers import (  # noqa: E402
    render_frame,
    similarity,
    sky_field,
    transform_error,
)

SHAPE = (1024, 1024)
CENTRE = (511.5, 511.5)


def _drift(rng, n, step):
    walk = np.cumsum(rng.normal(0, 1, (n, 2)) * 0.3 + step, axis=0)
    return walk - walk[0]


def _peak_flux(peak, fwhm):
    s = fwhm / 2.3548
    return peak * 2 * np.pi * s * s


def case(name, n=12, seed=0):
    """``(frames (n, ny, nx), truth matrices (n, 2, 3), stars, notes)`` of a named case."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    extent = (-1500, nx + 1500, -1500, ny + 1500)
    area = (extent[1] - extent[0]) * (extent[3] - extent[2]) / (nx * ny)
    fwhm, noise = 3.0, 10.0
    kw = {}
    per_frame = [{} for _ in range(n)]
    density = 400
    peak = 50.0 * noise
    shifts = _drift(rng, n, (3.0, 1.5))
    rotation = np.zeros(n)
    flip = np.zeros(n, bool)
    if name == "snr500":
        peak = 500 * noise
    elif name == "snr50":
        peak = 50 * noise
    elif name == "faint_defocused":
        fwhm, peak, density = 11.0, 3 * noise, 600
        kw = {"pattern": 11.0, "hot": 1000, "cosmics": 20}
        shifts = _drift(rng, n, (12.0, 4.0))
    elif name == "crowded":
        density = 15000
        peak = 20 * noise
    elif name == "trail":
        pass
    elif name == "cloud":
        for k in range(2, n, 3):
            per_frame[k]["transparency"] = 0.2
    elif name == "flip":
        flip_frames = np.arange(n) >= n // 2
        rotation[flip_frames] = 180.0
    elif name == "rot0.2":
        rotation = np.linspace(0, 0.2, n)
    elif name == "rot1":
        rotation = np.linspace(0, 1.0, n)
    elif name == "mirror":
        flip[n // 2:] = True
    elif name == "big_drift":
        shifts = _drift(rng, n, (60.0, 20.0))  # > half the frame over the night
    elif name == "hot_pattern":
        for k in range(n):
            if k % 3 == 1:
                per_frame[k].update(hot=3000, hot_level=(500.0, 30000.0), sensor_seed=7)
    elif name == "other_field":
        pass
    else:
        raise ValueError(name)
    stars = sky_field(seed + 1, int(density * area), extent,
                      flux_min=_peak_flux(peak, fwhm) / 4)
    truth = np.stack([similarity(rotation[k], 1.0, flip[k], shifts[k], CENTRE)
                      for k in range(n)])
    frames = []
    for k in range(n):
        opts = dict(kw, **per_frame[k])
        field = stars
        if name == "other_field" and k == n - 1:
            field = sky_field(seed + 1000, int(density * area), extent,
                              flux_min=_peak_flux(peak, fwhm) / 4)
        if name == "trail" and k % 2 == 1:
            # through the brightest star inside the frame
            fx = truth[k, 0, 0] * stars[0] + truth[k, 0, 1] * stars[1] + truth[k, 0, 2]
            fy = truth[k, 1, 0] * stars[0] + truth[k, 1, 1] * stars[1] + truth[k, 1, 2]
            inside = (fx > 20) & (fx < nx - 20) & (fy > 20) & (fy < ny - 20)
            b = np.flatnonzero(inside)[np.argmax(stars[2][inside])]
            opts["trail"] = (fx[b] + 1.5, fy[b], 30.0 + 40 * k, 3000.0, 3.0)
        frames.append(render_frame(SHAPE, field, truth[k], fwhm, seed=seed * 1000 + k,
                                   noise=noise, **opts))
    return np.stack(frames), truth, stars, fwhm


def _relative(truth, ref):
    """Truth transforms relative to frame ``ref``: maps ref-frame pixels to frame pixels."""
    r = np.vstack([truth[ref], [0, 0, 1]])
    inv = np.linalg.inv(r)
    return np.stack([(np.vstack([t, [0, 0, 1]]) @ inv)[:2] for t in truth])


def evaluate(name, n=12, seed=0, **kwargs):
    frames, truth, stars, fwhm = case(name, n, seed)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BigstackWarning)
        ds = find_transforms(frames, **kwargs)
    seconds = time.perf_counter() - t0
    ref = int(ds.attrs["reference"])
    rel = _relative(truth, ref)
    ny, nx = SHAPE
    gy, gx = np.mgrid[0:ny:32j, 0:nx:32j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    # bright stars in the reference frame's coordinates
    sx = truth[ref, 0, 0] * stars[0] + truth[ref, 0, 1] * stars[1] + truth[ref, 0, 2]
    sy = truth[ref, 1, 0] * stars[0] + truth[ref, 1, 1] * stars[1] + truth[ref, 1, 2]
    order = np.argsort(-stars[2])
    sxy = np.column_stack([sx, sy])[order]
    rows = []
    bad_valid = 0
    for k in range(n):
        if not ds["valid"].values[k]:
            rows.append((k, False, np.nan, np.nan, str(ds["reason"].values[k])))
            continue
        if name == "other_field" and k == n - 1:
            rows.append((k, True, np.inf, np.inf, "VALID BUT OTHER FIELD"))
            bad_valid += 1
            continue
        found = ds["transform"].values[k]
        # points of the reference grid that land inside frame k
        def inside(xy, k=k):
            p = xy @ rel[k][:, :2].T + rel[k][:, 2]
            return ((p >= 0) & (p < [nx, ny])).all(axis=1) & \
                ((xy >= 0) & (xy < [nx, ny])).all(axis=1)
        g = grid[inside(grid)]
        s = sxy[inside(sxy)][:100]
        corner = transform_error(found, rel[k], g).max() if len(g) else np.nan
        at_stars = transform_error(found, rel[k], s)
        rms = float(np.sqrt(np.mean(at_stars**2))) if len(s) else np.nan
        if corner > 0.1:
            bad_valid += 1
        rows.append((k, True, rms, corner, str(ds["reason"].values[k])))
    valid = [r for r in rows if r[1]]
    rms = np.array([r[2] for r in valid if r[0] != ref])
    corner = np.array([r[3] for r in valid if r[0] != ref])
    print(f"{name:16s} valid {len(valid):3d}/{n}  rms@stars median {np.nanmedian(rms):.4f} "
          f"max {np.nanmax(rms):.4f}  max error on overlap {np.nanmax(corner):.4f}  "
          f"valid with error > 0.1 px: {bad_valid}  ({seconds / n * 1e3:.0f} ms/frame, "
          f"ref {ref})")
    for k, ok, r, c, reason in rows:
        if not ok or reason:
            print(f"    frame {k:3d} {'valid' if ok else 'INVALID'} {reason}"
                  + (f" rms {r:.4f} max {c:.4f}" if ok else ""))
    del caught
    return ds, rows


def generator_cases(n=10, size=512):
    """The generator's hard cases, against ``truth.transforms``."""
    import tempfile

    from bigstack import open_frames, synthetic

    gy, gx = np.mgrid[0:size - 1:17j, 0:size - 1:17j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    for name in synthetic.CASES:
        with tempfile.TemporaryDirectory() as folder:
            truth = synthetic.make_case(name, folder, n_frames=n, shape=(size, size))
            t0 = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", BigstackWarning)
                ds = find_transforms(open_frames(truth.paths), reference=0)
            seconds = time.perf_counter() - t0
        errors, bad, notes = [], 0, []
        for k in range(n):
            reason = str(ds["reason"].values[k])
            if not ds["valid"].values[k]:
                notes.append(f"frame {k} INVALID {reason}")
                continue
            if truth.other_field[k]:
                bad += 1
                notes.append(f"frame {k} VALID BUT OTHER FIELD")
                continue
            t = truth.transforms[k]
            p = grid @ t[:, :2].T + t[:, 2]
            inside = ((p >= 0) & (p <= size - 1)).all(axis=1)
            e = transform_error(ds["transform"].values[k], t, grid[inside]).max()
            errors.append(e)
            bad += e > 0.1
        print(f"{name:20s} valid {int(ds['valid'].sum()):2d}/{n}  max error on overlap "
              f"{max(errors):.4f}  median {np.median(errors):.4f}  valid with error > 0.1 px: "
              f"{bad}  ({seconds / n * 1e3:.0f} ms/frame, predicted error max "
              f"{np.nanmax(ds['error'].values):.3f})")
        for line in notes:
            print("    " + line)


CASES = ("snr500", "snr50", "faint_defocused", "crowded", "trail", "cloud", "flip", "mirror",
         "rot0.2", "rot1", "other_field", "big_drift", "hot_pattern")

if __name__ == "__main__":
    names = sys.argv[1:] or CASES
    if names == ["generator"]:
        generator_cases()
        names = []
    for name in names:
        n = 50 if name == "snr500" else 12
        evaluate(name, n=n)
