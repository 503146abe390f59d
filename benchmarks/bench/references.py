"""The references: plain-numpy stacks on bands of rows, read with astropy.

Every method's output is checked on three bands of rows (top, middle and
bottom of the frame, 64 rows in all, so edges with partial coverage are
included) against one of these, computed by the parent process, written
with index arrays and masks independently of bigstack's window arithmetic.
"""

from __future__ import annotations

import math

import numpy as np

TOLERANCE = 1e-4  # relative

#: The reference kinds and what a match with each means.
KINDS = {
    "unshifted": "plain mean of the unshifted frames",
    "nearest-count": "shifted mean, whole-pixel shifts, zero fill, divided by N",
    "nearest-coverage": "shifted mean, whole-pixel shifts, divided by coverage (NaN where none)",
    "bilinear-coverage": "bilinear-shifted mean, divided by coverage (NaN where none)",
    "nearest-median": "np.nanmedian of the whole-pixel-shifted frames",
    "nearest-sigma_clip": "mean kept by astropy sigma_clip (3, 3 sigma, median centre, std, "
                          "5 iterations) of the whole-pixel-shifted frames",
    "bilinear-transform": "scipy.ndimage.map_coordinates (order 1) of every frame at its true "
                          "transform, divided by coverage (source point inside the frame)",
    "nearest-calibrated": "shifted mean of (frame - bias - dark) / flat in float64, whole-pixel "
                          "shifts, divided by coverage",
}


def masters(shape, seed=7):
    """Bias, dark and flat masters for the calibration row (float32, seeded): a bias with a
    column pattern, a dark with hot pixels and a flat with vignetting and a dust donut."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y, x = np.mgrid[0:ny, 0:nx]
    bias = (300 + 5 * np.sin(x / 7.0) + rng.normal(0, 1, shape)).astype(np.float32)
    dark = np.abs(rng.normal(2, 0.5, shape)).astype(np.float32)
    dark.flat[rng.choice(dark.size, dark.size // 2000, replace=False)] = 500
    r2 = ((y - ny / 2) ** 2 + (x - nx / 2) ** 2) / (0.5 * max(ny, nx)) ** 2
    flat = 1 - 0.25 * r2
    d2 = (y - ny / 3) ** 2 + (x - nx / 3) ** 2
    flat *= 1 - 0.1 * ((d2 > (0.02 * nx) ** 2) & (d2 < (0.04 * nx) ** 2))
    return bias, dark, flat.astype(np.float32)


def whole_shifts(shifts):
    """Integer shifts as bigstack's ``subpixel="nearest"`` rounds them."""
    return np.floor(np.asarray(shifts, dtype=np.float64) + 0.5).astype(np.int64)


def bands_for(ny):
    """Rows checked against the reference: a top, a middle and a bottom band."""
    h = max(1, min(16, ny // 8))
    mid = ny // 2
    return [(0, h), (mid - h, mid + h), (ny - h, ny)]


def reference_bands(frames, kind, bands):
    """Bands ``[(a, b), ...]`` of rows of a plain-numpy stack.

    ``kind``: ``"unshifted"`` (plain mean), ``"nearest-count"`` (whole-pixel
    shifts, zero fill, divide by N: the tutorial), ``"nearest-coverage"`` and
    ``"bilinear-coverage"`` (divide by the frames covering each pixel, NaN
    where none does: bigstack). Output pixel (x, y) takes frame i's pixel
    (x + dx, y + dy); written with index arrays and masks, independently of
    bigstack's window arithmetic. Each file is opened once.
    """
    from astropy.io import fits

    ny, nx = frames.shape
    if kind in ("nearest-median", "nearest-sigma_clip"):
        return _rejection_bands(frames, kind, bands)
    if kind == "bilinear-transform":
        return _transform_bands(frames, bands)
    calibrated = kind == "nearest-calibrated"
    if calibrated:
        bias, dark, flat = (np.asarray(m, np.float64) for m in masters(frames.shape))
    totals = [np.zeros((b - a, nx)) for a, b in bands]
    covers = [np.zeros((b - a, nx), np.int64) for a, b in bands]
    x = np.arange(nx)[None, :]
    for path, (dx, dy) in zip(frames.paths, frames.shifts, strict=True):
        if kind == "unshifted":
            ix = iy = 0
            fx = fy = 0.0
        elif kind.startswith("nearest"):
            ix, iy = (int(v) for v in np.floor(np.array([dx, dy]) + 0.5))
            fx = fy = 0.0
        else:
            ix, iy = math.floor(dx), math.floor(dy)
            fx, fy = dx - ix, dy - iy
        ex, ey = int(fx > 0), int(fy > 0)
        with fits.open(path, memmap=False) as hdul:  # section reads only the rows asked for
            for (a, b), total, cover in zip(bands, totals, covers, strict=True):
                ys, xs = np.arange(a, b)[:, None] + iy, x + ix
                ok = (ys >= 0) & (ys + ey <= ny - 1) & (xs >= 0) & (xs + ex <= nx - 1)
                lo, hi = min(max(a + iy, 0), ny), min(max(b + iy + ey, 0), ny)
                if hi <= lo or not ok.any():
                    continue
                rows = np.asarray(hdul[0].section[lo:hi, :], dtype=np.float64)
                if calibrated:
                    rows = (rows - bias[lo:hi] - dark[lo:hi]) / flat[lo:hi]
                r0 = np.clip(ys - lo, 0, hi - lo - 1)
                r1 = np.clip(ys - lo + 1, 0, hi - lo - 1)
                c0 = np.clip(xs, 0, nx - 1)
                c1 = np.clip(xs + 1, 0, nx - 1)
                value = ((1 - fx) * (1 - fy) * rows[r0, c0] + fx * (1 - fy) * rows[r0, c1]
                         + (1 - fx) * fy * rows[r1, c0] + fx * fy * rows[r1, c1])
                total += np.where(ok, value, 0.0)
                cover += ok
    if kind in ("unshifted", "nearest-count"):
        return [total / frames.n for total in totals]
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(cover > 0, total / cover, np.nan)
                for total, cover in zip(totals, covers, strict=True)]


def _transform_bands(frames, bands):
    """Bilinear warp of every frame by scipy at its true transform (output pixel [x, y] takes
    frame point A @ [x, y] + t), averaged over the frames whose point lies in the frame."""
    from astropy.io import fits
    from scipy.ndimage import map_coordinates

    ny, nx = frames.shape
    totals = [np.zeros((b - a, nx)) for a, b in bands]
    covers = [np.zeros((b - a, nx), np.int64) for a, b in bands]
    for path, m in zip(frames.paths, frames.transforms, strict=True):
        image = fits.getdata(path).astype(np.float64)
        for (a, b), total, cover in zip(bands, totals, covers, strict=True):
            y, x = np.mgrid[a:b, 0:nx].astype(np.float64)
            sx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
            sy = m[1, 0] * x + m[1, 1] * y + m[1, 2]
            ok = (sx >= 0) & (sx <= nx - 1) & (sy >= 0) & (sy <= ny - 1)
            value = map_coordinates(image, [sy, sx], order=1, mode="nearest")
            total += np.where(ok, value, 0.0)
            cover += ok
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(cover > 0, total / cover, np.nan)
                for total, cover in zip(totals, covers, strict=True)]


def _rejection_bands(frames, kind, bands):
    """Median or sigma-clipped mean of the whole-pixel-shifted frames, band by band."""
    import warnings

    from astropy.io import fits
    from astropy.stats import sigma_clip

    ny, nx = frames.shape
    planes = [np.full((frames.n, b - a, nx), np.nan, np.float32) for a, b in bands]
    x = np.arange(nx)
    for k, (path, (dx, dy)) in enumerate(zip(frames.paths, frames.shifts, strict=True)):
        ix, iy = (int(v) for v in np.floor(np.array([dx, dy]) + 0.5))
        with fits.open(path, memmap=False) as hdul:
            for (a, b), plane in zip(bands, planes, strict=True):
                ys = np.arange(a, b) + iy
                okr = (ys >= 0) & (ys < ny)
                okc = (x + ix >= 0) & (x + ix < nx)
                if not okr.any() or not okc.any():
                    continue
                rows = np.asarray(hdul[0].section[ys[okr].min():ys[okr].max() + 1, :],
                                  dtype=np.float32)
                plane[k][np.ix_(okr, okc)] = rows[:, (x + ix)[okc]]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        for plane in planes:
            if kind == "nearest-median":
                out.append(np.nanmedian(plane, axis=0).astype(np.float64))
            else:
                clipped = sigma_clip(np.ma.masked_invalid(plane), sigma=3, maxiters=5,
                                     cenfunc="median", stdfunc="std", axis=0)
                out.append(clipped.mean(axis=0).filled(np.nan).astype(np.float64))
    return out


class References:
    """Reference bands per kind, computed once per frame set (lazily)."""

    def __init__(self, frames):
        self.frames = frames
        self.bands = bands_for(frames.shape[0])
        self._cache = {}

    def get(self, kind):
        if kind not in self._cache:
            self._cache[kind] = reference_bands(self.frames, kind, self.bands)
        return self._cache[kind]


def compare(out_bands, ref_bands):
    """``(matches, max relative error)``: same NaN pattern, finite values within TOLERANCE."""
    worst = 0.0
    for out, ref in zip(out_bands, ref_bands, strict=True):
        if out.shape != ref.shape:
            return False, math.inf
        nan_out, nan_ref = np.isnan(out), np.isnan(ref)
        if (nan_out != nan_ref).any():
            return False, math.inf
        good = ~nan_ref
        if good.any():
            rel = np.abs(out[good] - ref[good]) / np.maximum(np.abs(ref[good]), 1.0)
            worst = max(worst, float(rel.max()))
    return worst <= TOLERANCE, worst


