"""Star detection on raw frames: a matched filter, shape tests, windowed centroids.

:func:`detect_stars` finds the stars in one or more row bands of a frame
(or a whole image) and returns the best of them with sub-pixel positions.
It is made for uncalibrated frames: a sky gradient, a fixed column/row
pattern of the sensor, hot pixels and cosmic rays, and faint, wide
(defocused) stars whose peak is only a few sigma above the noise.

Stages, per call (all bands of a frame together):

1. **Background and noise**: :func:`bigstack._measure.background_map`
   (cells of 64 pixels) is subtracted from each band; the noise is the
   median of the cells' clipped MAD sigma.
2. **Fixed pattern**: the median of every column over all the band rows,
   then of every row, is subtracted. A sensor's column or row structure
   does not move with the sky and would otherwise give "stars" that match
   at zero shift.
3. **Sharp peaks**: a pixel more than 4 sigma above the background that
   stands above the median of its 8 neighbours by more than 70% of its
   value is a hot pixel or a cosmic ray (a star of FWHM >= 2 px spreads
   at least 40% of its peak into its neighbours): it is replaced by that
   median. This is a test of shape, not of brightness.
4. **Matched filter**: the band is binned (``b`` x ``b`` sums, ``b =
   fwhm // 2.5``) and smoothed with a Gaussian of the expected FWHM. The
   FWHM is given, or chosen per frame from a ladder of 2.5, 5, 10 and 20
   px as the one that yields the most detections (a matched filter gives a
   star its highest signal to noise at its own width, so faint wide stars
   are found at the wide rungs). Detections are the local maxima of the
   filtered image more than ``threshold`` times its own (MAD) noise.
5. **Shape**: the curvature of the filtered image at a detection along x,
   y and both diagonals must be alike (``|2 (h1 - h2) / (h1 + h2)| <= 1``
   for both pairs): a round star passes; a trail, a column or a row, at
   any angle, does not.
6. **Positions**: an iterated Gaussian-windowed centroid at native
   resolution on the cleaned, background-free band
   (:func:`bigstack._measure.windowed_centroids`, window sigma from the
   filter's FWHM). Stars within 1.5 FWHM of a band's cut or the frame's
   edge are dropped (their window is truncated), and two detections that
   end on the same star count once.
7. The ``n_stars`` brightest by windowed flux are returned.
"""

from __future__ import annotations

import numpy as np

from ._measure import (
    FWHM_PER_SIGMA,
    background_map,
    subsample,
    window_max,
    windowed_centroids,
)

#: FWHMs (pixels) the matched filter tries when none is given
LADDER = (2.5, 5.0, 10.0, 20.0)
_STAR_FIELDS = ("x", "y", "flux", "snr", "fwhm")


def _fill(data):
    data = np.asarray(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        data = np.where(bad, np.median(data[~bad]) if (~bad).any() else 0.0, data)
    return data


def _clean_sharp(resid, sigma):
    """Replace hot pixels and cosmic rays (sharp peaks, by shape) in place; return the count."""
    ny, nx = resid.shape
    ys, xs = np.nonzero(resid > 4.0 * sigma)
    if ys.size == 0:
        return 0
    near = np.stack([resid[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])
    med = np.median(near, axis=0)
    value = resid[ys, xs]
    sharp = value - med > 0.7 * value
    resid[ys[sharp], xs[sharp]] = med[sharp]
    return int(sharp.sum())


def _bin(data, b):
    if b == 1:
        return data
    ny, nx = data.shape
    h, w = ny // b, nx // b
    return data[:h * b, :w * b].reshape(h, b, w, b).sum(axis=(1, 3), dtype=np.float32)


def _filtered(resid, fwhm, sigma):
    """``(snr map, bin factor)``: the band matched-filtered at ``fwhm``, in noise units.

    The noise of the filtered image follows from the pixel noise ``sigma``
    (white after the pattern is removed): a sum of ``b * b`` pixels has
    ``b * sigma``, and the Gaussian kernel scales it by its L2 norm.
    """
    from scipy.ndimage import gaussian_filter

    b = max(1, int(fwhm // 2.5))
    binned = _bin(resid, b)
    if min(binned.shape) < 3:
        return None, b
    s = fwhm / FWHM_PER_SIGMA / b
    radius = int(3.0 * s + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
    k /= k.sum()
    noise = b * sigma * float(np.sum(k * k))  # 2-D kernel norm = (1-D norm)^2
    smooth = gaussian_filter(binned, s, truncate=3.0, mode="nearest")
    smooth *= np.float32(1.0 / noise)
    return smooth, b


def _peaks(snr, threshold):
    """``(iy, ix)`` of the round local maxima of ``snr`` above ``threshold``."""
    h, w = snr.shape
    peaks = (snr > threshold) & (snr == window_max(snr, 1))
    peaks[0] = peaks[-1] = False
    peaks[:, 0] = peaks[:, -1] = False
    iy, ix = np.nonzero(peaks)
    if iy.size == 0:
        return iy, ix
    c = 2 * snr[iy, ix]
    hx = c - snr[iy, ix - 1] - snr[iy, ix + 1]
    hy = c - snr[iy - 1, ix] - snr[iy + 1, ix]
    hd = c - snr[iy - 1, ix - 1] - snr[iy + 1, ix + 1]
    ha = c - snr[iy - 1, ix + 1] - snr[iy + 1, ix - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        r1 = 2 * (hx - hy) / (hx + hy)
        r2 = 2 * (hd - ha) / (hd + ha)
    round_ = (hx > 0) & (hy > 0) & (hd > 0) & (ha > 0) & (np.abs(r1) <= 1) & (np.abs(r2) <= 1)
    return iy[round_], ix[round_]


def _mad_sigma(arrays):
    sample = subsample(arrays, 1 << 14)
    if sample.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(sample - np.median(sample))))


def _clipped_mean(data, limit, axis):
    """Mean along ``axis`` of the values within ``limit`` of zero (0 where none)."""
    inside = np.abs(data) < limit
    total = np.where(inside, data, 0.0).sum(axis=axis, dtype=np.float64)
    count = inside.sum(axis=axis)
    return (total / np.maximum(count, 1)).astype(np.float32)


def _prepare(bands):
    """Background-free, pattern-free, cleaned bands; frame background and noise.

    The fixed pattern is the clipped mean (values within 3 sigma) of every
    column over all the band rows, then of every row: a mean of the sky
    pixels is a less noisy estimate than their median, and the clip keeps
    stars, hot pixels and cosmic rays out of it.
    """
    resids, levels = [], []
    for _, data in bands:
        data = _fill(data)
        background, _ = background_map(data, cell=64, step=4)
        resids.append(data - background)
        levels.append(float(np.median(background)))
    sigma = _mad_sigma(resids)
    nrows = sum(r.shape[0] for r in resids)
    if sigma > 0 and nrows >= 16:
        column = sum(_clipped_mean(r, 3 * sigma, 0) * r.shape[0] for r in resids) / nrows
        for r in resids:
            r -= column.astype(np.float32)
    for r in resids:
        if sigma > 0 and r.shape[1] >= 16:
            r -= _clipped_mean(r, 3 * sigma, 1)[:, None]
    sigma = _mad_sigma(resids)
    cleaned = 0
    if sigma > 0:
        for r in resids:
            cleaned += _clean_sharp(r, sigma)
    return resids, float(np.median(levels)), sigma, cleaned


def _candidates(resids, fwhm, threshold, sigma):
    """Per band, the ``(y, x, snr)`` of detections at ``fwhm`` (native pixel coordinates)."""
    out = []
    for r in resids:
        snr, b = _filtered(r, fwhm, sigma)
        if snr is None:
            out.append((np.empty(0), np.empty(0), np.empty(0)))
            continue
        iy, ix = _peaks(snr, threshold)
        out.append((iy * b + (b - 1) / 2, ix * b + (b - 1) / 2, snr[iy, ix].astype(np.float64)))
    return out


def _score(found, top=10):
    """A rung's score: the summed signal to noise of its ``top`` best detections."""
    snr = np.concatenate([c[2] for c in found])
    return float(np.sort(snr)[::-1][:top].sum())


def detect_stars(bands, *, fwhm=None, n_stars=100, threshold=5.0):
    """Find the stars in row bands of a frame.

    Parameters
    ----------
    bands : list of (int, numpy.ndarray)
        ``(r0, rows)``: the frame's rows ``[r0, r0 + len(rows))``, all of
        the frame's width, in value units (BSCALE/BZERO applied); NaNs are
        ignored. A single image is ``[(0, image)]``.
    fwhm : float, optional
        Expected star FWHM in pixels; default: chosen from :data:`LADDER`.
    n_stars : int
        Return at most this many stars, the brightest.
    threshold : float
        Detection threshold in sigmas of the matched-filtered noise.

    Returns
    -------
    dict
        ``x``, ``y`` (``[x, y]`` frame pixels), ``flux`` (windowed flux,
        background-free), ``snr`` (matched-filter signal to noise),
        ``fwhm`` (per star, from its windowed second moment; NaN where it
        cannot be measured): float64 arrays, brightest first. Frame
        values: ``background`` (median of the background map), ``noise``
        (pixel sigma), ``fwhm`` is per star; ``frame_fwhm`` (median over
        the stars with snr >= 10, else over all; NaN without stars),
        ``filter_fwhm`` (the matched filter's), ``n_found`` (stars that
        passed every test, before the cut to ``n_stars``), ``cleaned``
        (sharp pixels replaced), ``rows`` (rows examined).
    """
    bands = [(int(r0), np.asarray(data)) for r0, data in bands]
    nrows = sum(d.shape[0] for _, d in bands)
    resids, background, sigma, cleaned = _prepare(bands)
    out = {k: np.empty(0) for k in _STAR_FIELDS}
    out.update(background=background, noise=sigma, frame_fwhm=np.nan, filter_fwhm=np.nan,
               n_found=0, cleaned=cleaned, rows=nrows)
    if not sigma > 0:
        return out
    if fwhm is None:
        best = None
        for f in LADDER:
            found = _candidates(resids, f, threshold, sigma)
            score = _score(found)
            if best is None or score > best[0]:
                best = (score, f, found)
        _, fwhm, found = best
    else:
        fwhm = float(fwhm)
        found = _candidates(resids, fwhm, threshold, sigma)
    out["filter_fwhm"] = fwhm
    window = max(fwhm, 2.0) / FWHM_PER_SIGMA
    margin = 1.5 * fwhm
    xs, ys, fl, sn, fw = [], [], [], [], []
    for (r0, _), r, (cy, cx, snr) in zip(bands, resids, found, strict=True):
        if cy.size == 0:
            continue
        x, y, flux, m2 = windowed_centroids(r, cx, cy, window)
        h, w = r.shape
        keep = (np.isfinite(x) & (x >= margin) & (x <= w - 1 - margin) & (y >= margin)
                & (y <= h - 1 - margin)
                & (np.hypot(x - cx, y - cy) <= fwhm) & (flux > 0))
        xs.append(x[keep])
        ys.append(y[keep] + r0)
        fl.append(flux[keep])
        sn.append(snr[keep])
        with np.errstate(invalid="ignore", divide="ignore"):
            s2 = m2[keep] * window**2 / (window**2 - m2[keep])
        fw.append(np.where(s2 > 0, FWHM_PER_SIGMA * np.sqrt(np.abs(s2)), np.nan))
    if not xs:
        return out
    x, y, flux, snr, fw = (np.concatenate(v) for v in (xs, ys, fl, sn, fw))
    order = np.argsort(-flux, kind="stable")
    x, y, flux, snr, fw = x[order], y[order], flux[order], snr[order], fw[order]
    keep = _unique(x, y, 0.5 * fwhm)
    x, y, flux, snr, fw = x[keep], y[keep], flux[keep], snr[keep], fw[keep]
    out["n_found"] = int(x.size)
    bright = np.isfinite(fw) & (snr >= 10)
    pool = fw[bright] if bright.sum() >= 3 else fw[np.isfinite(fw)]
    out["frame_fwhm"] = float(np.median(pool)) if pool.size else np.nan
    n = int(n_stars)
    out.update(x=x[:n], y=y[:n], flux=flux[:n], snr=snr[:n], fwhm=fw[:n])
    return out


def _unique(x, y, radius):
    """Indices of points (in priority order) with no earlier point within ``radius``."""
    from scipy.spatial import cKDTree

    if x.size < 2:
        return np.arange(x.size)
    pairs = cKDTree(np.column_stack([x, y])).query_pairs(radius, output_type="ndarray")
    drop = np.zeros(x.size, bool)
    for i, j in sorted(map(tuple, pairs)):
        if not drop[i]:
            drop[max(i, j)] = True
    return np.flatnonzero(~drop)
