"""Star detection on raw frames: a matched filter, shape tests, windowed centroids.

:func:`detect_stars` finds the stars in one or more row bands of a frame
(or a whole image) and returns the best of them with sub-pixel positions.
It is made for uncalibrated frames: a sky gradient, a fixed column/row
pattern of the sensor, hot pixels and cosmic rays, and faint, wide
(defocused) stars whose peak is only a few sigma above the noise.

Stages, per call (all bands of a frame together):

1. **Background and fixed pattern**: a background map (cells of 64 px,
   :func:`bigstack._measure.background_grids`, not median-filtered across
   cells, so that it follows a nebula or galaxy a few cells wide), then
   every column's level over all the band rows of what is left (a median
   of a sample of rows, then the mean of the values within 3 sigma of it),
   then every row's clipped mean, are subtracted. The pixel noise is the
   median over cells of the MAD sigma of differences of rows two apart
   (:func:`_diff_sigma`): what is smooth cancels in them (a bright
   object, what the cells left of it, the column pattern), so neither
   sets the noise (a globular cluster's core, measured as the MAD of what
   the cells left, made it three times too high). A sensor's column or row
   structure does not move with the sky and would otherwise give "stars"
   that match at zero shift; measuring it once the sky is gone keeps a
   bright object's light out of it (the object would otherwise leave a
   cross of residuals over the frame).
2. **Sharp peaks**: a pixel more than 4 sigma above the background that
   stands above the median of its 8 neighbours by more than 70% of its
   value is a hot pixel or a cosmic ray (a star of FWHM >= 2 px spreads
   at least 40% of its peak into its neighbours): it is replaced by that
   median, in passes until none is left (a demosaiced hot pixel needs two).
   This is a test of shape, not of brightness.
3. **Matched filter**: the band is binned (``b`` x ``b`` sums, ``b`` a
   power of two near ``fwhm / 2.5``, at least 2) and smoothed with a
   Gaussian of the expected FWHM. The FWHM is given, or chosen per frame
   from a ladder of 2.5, 5, 10 and 20 px as the rung whose ten best
   detections have the highest summed signal to noise, each counted up to
   twice the ten's median (a matched filter gives a star its highest
   signal to noise at its own width, so faint wide stars and defocused
   rings are found at the wide rungs; the cap keeps one bright object, a
   galaxy's or cluster's core that the wide rungs see at hundreds of
   sigma, from outweighing the stars; the ladder is climbed until the
   score falls); then the FWHM of the 25 best
   is measured, and the band filtered again at that FWHM when it is off
   the rung by more than a factor of two. The filtered image is then made
   local: less the median and over the MAD sigma of its cells of 32
   binned pixels (about 13 FWHM), interpolated between cell centres, so
   that what is left of a bright nebula or galaxy, and its photon noise,
   is judged against its own surroundings, and correlated noise is
   measured rather than assumed white. Detections are the local maxima
   of that map more than ``threshold``.
4. **Shape**: the curvature of the filtered image at a detection along x,
   y and both diagonals must be alike (``|2 (h1 - h2) / (h1 + h2)| <= 1``
   for both pairs): a round star passes; a trail, a column or a row, at
   any angle, does not.
5. **Positions**: an iterated Gaussian-windowed centroid at native
   resolution on the cleaned, background-free band
   (:func:`bigstack._measure.windowed_centroids`, window sigma from the
   stars' measured FWHM, which converges in a few steps). Stars within 1.5
   FWHM of a band's cut or the frame's edge are dropped (their window is
   truncated), and of two detections that end within one FWHM of each
   other (one star, or a blend) only the brighter is kept.
   Only the ``2 * n_stars`` detections of highest signal to noise are
   centroided.
6. The ``n_stars`` brightest by windowed flux are returned.

Every pass over the pixels (column and row pattern, background cells,
sharp peaks, binning, smoothing, peaks, centroids) is a compiled kernel
in :mod:`bigstack._kernels` with a numpy reference in
``tests/test_detect_kernels.py``. On a crowded 2048 x 2048 frame the
whole detection takes about 75 ms on one core, a band of 192 rows 11 ms
(``benchmarks/detect_compare.py``; sep takes 695 ms and photutils 1.56 s
for the same frame).
"""

from __future__ import annotations

import math

import numpy as np

from ._measure import (
    FWHM_PER_SIGMA,
    background_grids,
    cut_stamps,
    fwhm_from_m2,
    iterate_centroids,
    subsample,
)

#: background cells (pixels) of the raw band: a nebula or galaxy a few cells wide is followed
CELL = 64
#: local cells of the matched-filtered image, in binned pixels (about 13 FWHM of the filter's
#: star): its level and noise there, so that what the background cells leave of a bright
#: object is judged against its own surroundings
LOCAL_CELL = 32
#: FWHMs (pixels) the matched filter tries when none is given
LADDER = (2.5, 5.0, 10.0, 20.0)
#: a pixel more than this fraction of its value above its neighbours' median is
#: sharp (a hot pixel or cosmic ray); a star of FWHM 2.5 px never is, one of
#: FWHM 2 px centred on a pixel corner is just over it
SHARP = 0.7
#: the stricter test for one star's pixels and for correlation: no star of FWHM
#: 1.6 px or more, at any sub-pixel position, is this sharp
SPIKE = 0.85
#: stars measured narrower than this (px) after cleaning at SHARP had their peaks
#: taken for hot pixels (a star of FWHM 1.4 px centred on a pixel is sharp at
#: SHARP): the frame is cleaned again at SPIKE, which no such star is
UNDERSAMPLED = 2.5
_STAR_FIELDS = ("x", "y", "flux", "snr", "fwhm")
#: RMS of a unit Gaussian's central 98% (|x| <= 2.326): its noise from the RMS left after
#: the largest 2% of differences are dropped
_RMS98 = 0.9346


def _fill(data):
    """``data`` as float32 with NaNs replaced by the median: ``data`` itself when it is float32
    and finite, else a copy (the input is never changed)."""
    from ._kernels import all_finite

    data = np.asarray(data)
    if data.dtype == np.float32 and data.ndim == 2 and all_finite(data):
        return data
    data = np.array(data, dtype=np.float32)
    bad = ~np.isfinite(data)
    if bad.any():
        data[bad] = np.median(data[~bad]) if (~bad).any() else 0.0
    return data


def sharp_pixels(resid, ys, xs, ratio=SHARP):
    """Which of the pixels ``(ys, xs)`` of background-free ``resid`` are sharp peaks.

    A pixel is sharp when it stands above the median of its 8 neighbours
    by more than ``ratio`` times its own value: a hot pixel or a cosmic
    ray (see :data:`SHARP` and :data:`SPIKE` for what passes). Returns
    ``(sharp, median of the neighbours)``, arrays over the pixels given.
    """
    med = np.median(neighbours(resid, ys, xs), axis=0)
    value = resid[ys, xs]
    return value - med > ratio * value, med


def neighbours(data, ys, xs):
    """The 8 neighbours of each pixel ``(ys, xs)`` of ``data``, ``(8, m)`` (edges repeated)."""
    ny, nx = data.shape
    return np.stack([data[np.clip(ys + dy, 0, ny - 1), np.clip(xs + dx, 0, nx - 1)]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx])


def _clean_sharp(resid, sigma, ratio=SHARP, passes=3, undo=None):
    """Replace hot pixels and cosmic rays (sharp peaks, by shape) in place; return the count.

    ``undo``, a list, gets a ``(flat indices, former values)`` per pass: putting them
    back in reverse order restores ``resid`` (:func:`_restore`).

    A pass can leave a sharp pixel behind: a hot pixel of a Bayer mosaic, through a
    bilinear demosaic, is a plus of five pixels (the arms a quarter of the centre),
    all five are sharp, and the centre's replacement, the median of its original
    neighbours, is half an arm: a lone peak of hundreds of sigma. Later passes, up
    to ``passes`` in all while one replaces something, test again only the pixels
    just replaced (a pixel once found not sharp is left as it is), so they cost
    little.
    """
    from ._kernels import clean_sharp

    cap = resid.size // 64 + 256
    where = np.empty(cap, np.int64)
    former = np.empty(cap, np.float32)
    n = clean_sharp(resid, 4.0 * sigma, ratio, where, former)
    if n < 0:  # more than the scratch holds: once more, with room for all
        where = np.empty(-n, np.int64)
        former = np.empty(-n, np.float32)
        n = clean_sharp(resid, 4.0 * sigma, ratio, where, former)
    total = int(n)
    changed = where[:n]
    if undo is not None:
        undo.append((changed.copy(), former[:n].copy()))
    nx = resid.shape[1]
    for _ in range(passes - 1):
        if changed.size == 0:
            break
        near = changed[resid.ravel()[changed] > 4.0 * sigma]
        ys, xs = np.divmod(near, nx)
        sharp, med = sharp_pixels(resid, ys, xs, ratio)
        if undo is not None:
            undo.append((near[sharp], resid[ys[sharp], xs[sharp]]))
        resid[ys[sharp], xs[sharp]] = med[sharp]
        changed = near[sharp]
        total += int(changed.size)
    return total


def _restore(resid, undo):
    """Put back what :func:`_clean_sharp` replaced (its ``undo`` list), last pass first."""
    for where, former in reversed(undo):
        np.put(resid, where, former)


def _binned(pyramid, b):
    """``b`` x ``b`` sums of the band (``pyramid[1]``), 2 x 2 sums of the next finer level
    (an odd last row or column is dropped)."""
    if b not in pyramid:
        from ._kernels import bin2

        finer = _binned(pyramid, b // 2)
        out = np.empty((finer.shape[0] // 2, finer.shape[1] // 2), np.float32)
        bin2(finer, out)
        pyramid[b] = out
    return pyramid[b]


def bin_factor(fwhm):
    """Binning before the matched filter: a power of two, at least 2, about ``fwhm / 2.5``."""
    return max(2, 1 << int(math.log2(max(fwhm / 2.5, 1.0))))


def _filtered(pyramid, fwhm, sigma):
    """``(snr map, bin factor)``: the band matched-filtered at ``fwhm``, in noise units.

    The band is binned by :func:`bin_factor` first (a star of FWHM 2.5 px
    or more keeps its shape at that sampling; the position comes from the
    native pixels later). The noise of the filtered image follows from the
    pixel noise ``sigma`` (white once the pattern is removed): a sum of ``b
    * b`` pixels has ``b * sigma``, and the Gaussian kernel scales it by
    its L2 norm.
    """
    from ._kernels import smooth

    b = bin_factor(fwhm)
    while b > 1 and min(pyramid[1].shape) // b < 8:
        b //= 2
    binned = _binned(pyramid, b)
    if min(binned.shape) < 3:
        return None, b
    s = fwhm / FWHM_PER_SIGMA / b
    radius = int(3.0 * s + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / s) ** 2)
    k /= k.sum()
    noise = b * sigma * float(np.sum(k * k))  # 2-D kernel norm = (1-D norm)^2
    work = pyramid.setdefault(("work", b), np.empty_like(binned))
    out = np.empty_like(binned)
    smooth(binned, k.astype(np.float32), 1.0 / noise, work, out)
    return out, b


def _local(maps):
    """In place: each filtered map of ``maps`` less its local level, over its local noise.

    Cells of :data:`LOCAL_CELL` binned pixels (about 13 FWHM of the
    filter's star, so the stars in a cell do not set its level): each
    cell's clipped median and MAD sigma, interpolated between cell
    centres (:func:`bigstack._measure.local_scale`; the maps of one shape,
    a frame's bands, in one call). What the background cells leave
    of a bright nebula or galaxy, and its photon noise, are thus judged
    against their own surroundings, not the frame's sky; correlated noise
    (a demosaiced frame) is measured, not assumed white. A cell's noise is
    at least the lower quartile of the cells' (one cell's MAD can come out
    low by chance) and at least half the white-noise figure the maps are
    in units of (a flat or filled region has none).
    """
    from ._kernels import normalise_cells
    from ._measure import local_scale

    for shape in {m.shape for m in maps if min(m.shape) >= 8}:
        same = [m for m in maps if m.shape == shape]
        step = 4 if min(shape) >= 4 * LOCAL_CELL else 2
        for m, pieces in zip(same, local_scale(same, LOCAL_CELL, step, 0.5), strict=True):
            normalise_cells(m, *pieces)


def _peaks(snr, threshold):
    """``(iy, ix)`` of the round local maxima of ``snr`` above ``threshold``.

    A peak is at least each of its 8 neighbours, off the border; round: its
    curvatures along x, y and both diagonals are positive and alike
    (:func:`bigstack._kernels.round_peaks`).
    """
    from ._kernels import round_peaks

    cap = 4096
    while True:
        iy = np.empty(cap, np.int64)
        ix = np.empty(cap, np.int64)
        n = round_peaks(snr, threshold, iy, ix)
        if n <= cap:
            return iy[:n], ix[:n]
        cap = n


def _mad_sigma(arrays):
    sample = subsample(arrays, 1 << 13)
    if sample.size == 0:
        return 0.0
    return 1.4826 * float(np.median(np.abs(sample - np.median(sample))))


def _prepare(bands, sharp=SHARP, undo=None):
    """Background-free, pattern-free, cleaned bands; frame background and noise.

    In this order: a background map (cells of :data:`CELL` px, not
    median-filtered across cells, so that it follows a nebula or galaxy a
    few cells wide) is subtracted; then every column's level over all the
    band rows of what is left (the median of a sample of rows, robust to a
    strong column, then the mean of the values within 3 sigma of it, less
    noisy than a median), then every row's clipped mean: a sensor's column
    and row pattern, measured once the sky is gone. The cells sample a
    column pattern and pass part of it into the map; as that part does not
    change along a column, the column levels take it out again. Measuring
    the columns first would take a bright object's mean out of every
    column across it and leave a cross of residuals. Last, sharp pixels
    (more than ``sharp`` of their value above their neighbours' median,
    see :func:`sharp_pixels`) over 4 sigma are replaced by that median
    (``undo``: one list per band, for :func:`_clean_sharp`'s record of it).
    The noise (:func:`_diff_sigma`, of differences of nearby rows) is taken once,
    before the column levels for their clip: the column and row levels removed
    after cancel in it. Each step is one
    compiled pass over the rows (:mod:`bigstack._kernels`).
    """
    from ._kernels import column_clipped_sums, remove_rows, subtract_background

    resids = [_fill(data) for _, data in bands]
    level = float(np.median(subsample(resids, 1 << 12)))
    for shape in {r.shape for r in resids}:  # the bands of one shape together
        idx = [k for k, r in enumerate(resids) if r.shape == shape]
        if min(shape) < 32:  # too small for cells
            for k in idx:
                resids[k] = np.subtract(resids[k], np.float32(level), dtype=np.float32)
            continue
        grids = background_grids([resids[k] for k in idx], cell=CELL, step=4, noise=False,
                                 despike=False)
        for k, grid in zip(idx, grids, strict=True):
            out = np.empty(shape, np.float32)  # the bands given stay as they are
            subtract_background(resids[k], *grid[:5], out)
            resids[k] = out
    sigma = _diff_sigma(resids)
    nrows = sum(r.shape[0] for r in resids)
    if sigma > 0 and nrows >= 16 and resids[0].shape[1] >= 16:
        step = max(1, nrows // 16)
        sample = np.sort(np.concatenate([r[::step] for r in resids]), axis=0)  # ~16 rows
        k = len(sample)
        start = (0.5 * (sample[(k - 1) // 2] + sample[k // 2])).astype(np.float32)  # median
        sums = np.zeros(start.size, np.float32)
        counts = np.zeros(start.size, np.int32)
        for r in resids:
            column_clipped_sums(r, start, 3 * sigma, sums, counts)
        column = (sums / np.maximum(counts, 1) + start).astype(np.float32)
        for r in resids:
            remove_rows(r, column, 3 * sigma)
    cleaned = 0
    if sigma > 0:
        for k, r in enumerate(resids):
            cleaned += _clean_sharp(r, sigma, sharp, undo=None if undo is None else undo[k])
    return resids, level, sigma, cleaned


def _diff_sigma(resids, lag=2, rows=32, cell=64):
    """The pixel noise from differences of rows ``lag`` apart: the median over cells of
    their MAD sigma (over the square root of 2).

    A difference of nearby rows takes out what is smooth (a sky gradient, a nebula or
    galaxy, what the background cells left of it) and the column pattern; the median of
    each sampled difference row (every 16th value) takes out its row pattern. The median
    over cells of about ``rows / 4`` sampled row pairs by ``cell`` columns (every fourth
    sampled) keeps out a bright object's photon noise unless it covers half the frame.
    The cells' statistics are :func:`bigstack._kernels.cell_stats`' (clipped at 3 sigma:
    a hot pixel is left out).

    Where the differences pile up at one value (whole counts: an 8-bit frame whose sky is
    a few counts has most of them 0, and the MAD is then 0 or a rounding's worth), the
    noise is the RMS of their central 98% instead (the quantisation is noise too), over
    what that is for a Gaussian; and at least the rounding's own noise (the smallest step
    over the square root of 12, for each of the two pixels) where nearly all are 0 (a sky
    clipped to one value).
    """
    from ._kernels import cell_stats

    pairs = [(r, r.shape[0] - lag) for r in resids if r.shape[0] > lag]
    total = sum(n for _, n in pairs)
    if total == 0:
        return _mad_sigma(resids)
    every = max(1, total // rows)
    diffs = []
    for r, n in pairs:
        at = np.arange(0, n, every)
        diffs.append(r[at + lag] - r[at])
    d = np.concatenate(diffs)  # (~rows, nx)
    d -= np.median(d[:, ::16], axis=1, keepdims=True)  # a row pair's own offset (row pattern)
    ngy = max(d.shape[0] // 4, 1)
    ncx = max(d.shape[1] // cell, 1)
    hy, hx = d.shape[0] // ngy, d.shape[1] // ncx
    ys = np.arange(ngy * hy).reshape(ngy, hy)
    xs = np.arange(ncx * hx).reshape(ncx, hx)[:, ::4]  # 64 values a cell: enough for a median
    level = np.empty((ngy, ncx), np.float32)
    mad = np.empty((ngy, ncx), np.float32)
    cell_stats(d, ys, xs, level, mad)
    sigma = float(np.median(mad))
    a = np.abs(d[:, xs.ravel()]).ravel()
    if not sigma > 0 or sigma < 1e-4 * a.mean() or np.mean(a <= 0.1 * sigma) > 0.3:
        # piled up at one value (a Gaussian has 8% within 0.1 sigma); what float rounding
        # of the background left is 0
        a = np.where(a > 1e-4 * np.percentile(a, 99), a, 0.0)
        quantum = a[a > 0].min() if (a > 0).any() else 0.0
        a = a[a <= np.percentile(a, 98)]  # hot pixels and stars out
        sigma = math.sqrt(float(np.mean(a * a))) / _RMS98 if a.size else 0.0
        sigma = max(sigma, quantum / math.sqrt(6.0))
    return sigma / math.sqrt(2.0)


def _candidates(pyramids, fwhm, threshold, sigma):
    """Per band, the ``(y, x, snr)`` of detections at ``fwhm`` (native pixel coordinates)."""
    filtered = [_filtered(pyramid, fwhm, sigma) for pyramid in pyramids]
    _local([snr for snr, _ in filtered if snr is not None])
    out = []
    for snr, b in filtered:
        if snr is None:
            out.append((np.empty(0), np.empty(0), np.empty(0)))
            continue
        iy, ix = _peaks(snr, threshold)
        out.append((iy * b + (b - 1) / 2, ix * b + (b - 1) / 2, snr[iy, ix].astype(np.float64)))
    return out


def _score(found, top=10):
    """A rung's score: the summed signal to noise of its ``top`` best detections, each
    counted up to twice their median (missing ones count 0): one bright object, a galaxy's
    or cluster's core that the wide rungs see at hundreds of sigma, does not outweigh the
    stars, and a rung that sees little but such an object scores little."""
    snr = np.zeros(top)
    best = np.sort(np.concatenate([c[2] for c in found]))[::-1][:top]
    snr[:best.size] = best
    return float(np.minimum(snr, 2.0 * np.median(snr)).sum())


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
        values: ``background`` (median of a sample of the pixels), ``noise``
        (pixel sigma), ``fwhm`` is per star; ``frame_fwhm`` (median over
        the stars with snr >= 10, else over all; NaN without stars),
        ``filter_fwhm`` (the matched filter's), ``n_found`` (stars that
        passed every test, before the cut to ``n_stars``; only the ``2 *
        n_stars`` detections of highest signal to noise are centroided,
        any beyond them count as found), ``cleaned`` (sharp pixels
        replaced), ``rows`` (rows examined).
    """
    bands = [(int(r0), np.asarray(data)) for r0, data in bands]
    nrows = sum(d.shape[0] for _, d in bands)
    undo = [[] for _ in bands]  # what the cleaning replaced, should it be done again
    resids, background, sigma, cleaned = _prepare(bands, undo=undo)
    out = {k: np.empty(0) for k in _STAR_FIELDS}
    out.update(background=background, noise=sigma, frame_fwhm=np.nan, filter_fwhm=np.nan,
               n_found=0, cleaned=cleaned, rows=nrows)
    if not sigma > 0:
        return out
    asked = fwhm
    given = asked is not None
    fwhm, found, cand, star_fwhm = _first_pass(bands, resids, asked, threshold, sigma)
    if np.isfinite(star_fwhm) and star_fwhm < UNDERSAMPLED:
        # stars this sharp lose their peaks to the SHARP test: clean only spikes (the
        # bands as before cleaning, the same background and noise)
        cleaned = 0
        for r, steps in zip(resids, undo, strict=True):
            _restore(r, steps)
            cleaned += _clean_sharp(r, sigma, SPIKE)
        out.update(cleaned=cleaned)
        fwhm, found, cand, star_fwhm = _first_pass(bands, resids, asked, threshold, sigma)
    pyramids = [{1: r} for r in resids]
    if not given and np.isfinite(star_fwhm) and not 0.5 <= star_fwhm / fwhm <= 2.0:
        fwhm = max(star_fwhm, 2.0)
        found = _candidates(pyramids, fwhm, threshold, sigma)
        cand = _clear(bands, resids, found, 1.5 * fwhm)
        star_fwhm = _measure_fwhm(resids, cand[:25], fwhm)
    out.update(filter_fwhm=fwhm, frame_fwhm=star_fwhm)
    # positions: a window of the stars' own width converges in a few steps
    window = max(star_fwhm if np.isfinite(star_fwhm) else fwhm, 2.0) / FWHM_PER_SIGMA
    margin = 1.5 * max(fwhm, star_fwhm if np.isfinite(star_fwhm) else 0.0)
    todo = 2 * int(n_stars)
    x, y, flux, snr, fw = _positions(bands, resids, cand[:todo], window, margin)
    if x.size == 0:
        return out
    order = np.argsort(-flux, kind="stable")
    x, y, flux, snr, fw = x[order], y[order], flux[order], snr[order], fw[order]
    keep = _unique(x, y, fwhm)
    out["n_found"] = int(keep.size + max(len(cand) - todo, 0))
    keep = keep[:int(n_stars)]
    out.update(x=x[keep], y=y[keep], flux=flux[keep], snr=snr[keep], fwhm=fw[keep])
    return out


def _first_pass(bands, resids, fwhm, threshold, sigma):
    """Detections at the given FWHM (or the ladder's best rung) and the stars' own FWHM.

    Returns ``(filter fwhm, detections per band, candidates clear of the edges,
    the FWHM measured on the 25 best)``.
    """
    pyramids = [{1: r} for r in resids]
    if fwhm is not None:
        fwhm = float(fwhm)
        found = _candidates(pyramids, fwhm, threshold, sigma)
    else:
        best = None
        for f in LADDER:  # climb while the score rises (it peaks at the stars' width)
            found = _candidates(pyramids, f, threshold, sigma)
            score = _score(found)
            if best is not None and score <= best[0]:
                break
            best = (score, f, found)
        _, fwhm, found = best
    cand = _clear(bands, resids, found, 1.5 * fwhm)
    # the stars' own FWHM from the brightest
    return fwhm, found, cand, _measure_fwhm(resids, cand[:25], fwhm)


def _clear(bands, resids, found, margin):
    """Detections clear of the band edges: ``(snr, band, y, x)``, best first."""
    cand = []
    for k, (r, (cy, cx, snr)) in enumerate(zip(resids, found, strict=True)):
        h, w = r.shape
        ok = (cx >= margin) & (cx <= w - 1 - margin) & (cy >= margin) & (cy <= h - 1 - margin)
        cand += [(float(v), k, float(y), float(x)) for v, y, x in
                 zip(snr[ok], cy[ok], cx[ok], strict=True)]
    cand.sort(reverse=True)
    return cand


def _stamps(resids, cand, window):
    """Stamps of the candidates, over all bands: ``(stamps, gx, gy, x0, y0, band)``."""
    parts = []
    for k in sorted({c[1] for c in cand}):
        mine = [c for c in cand if c[1] == k]
        cx = np.array([c[3] for c in mine])
        cy = np.array([c[2] for c in mine])
        parts.append((*cut_stamps(resids[k], cx, cy, window), cx, cy, np.full(cx.size, k)))
    return tuple(np.concatenate(v) for v in zip(*parts, strict=True))


def _measure_fwhm(resids, cand, fwhm):
    """Median FWHM of the candidates (windowed second moments); NaN if none measures."""
    if not cand:
        return np.nan
    window = max(fwhm, 2.0) / FWHM_PER_SIGMA
    stamps, gx, gy, cx, cy, _ = _stamps(resids, cand, window)
    _, _, _, m2 = iterate_centroids(stamps, gx, gy, cx, cy, window, iterations=12, tol=1e-2)
    values = fwhm_from_m2(m2, window)
    values = values[np.isfinite(values)]
    return float(np.median(values)) if values.size else np.nan


def _positions(bands, resids, cand, window, margin):
    """Windowed centroids of the candidates at native resolution; those that hold up."""
    if not cand:
        return (np.empty(0),) * 5
    stamps, gx, gy, cx, cy, band = _stamps(resids, cand, window)
    snr = np.array([c[0] for k in sorted({c[1] for c in cand}) for c in cand if c[1] == k])
    x, y, flux, m2 = iterate_centroids(stamps, gx, gy, cx, cy, window)
    h = np.array([r.shape[0] for r in resids])[band]
    w = np.array([r.shape[1] for r in resids])[band]
    r0 = np.array([b[0] for b in bands])[band]
    keep = (np.isfinite(x) & (x >= margin) & (x <= w - 1 - margin) & (y >= margin)
            & (y <= h - 1 - margin)
            & (np.hypot(x - cx, y - cy) <= 2.5 * window * FWHM_PER_SIGMA / 2)
            & (flux > 0))
    return x[keep], y[keep] + r0[keep], flux[keep], snr[keep], fwhm_from_m2(m2[keep], window)


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


def measure_at(stamps, gx, gy, x, y, fwhm, noise, threshold=5.0):
    """Stars measured where they are expected, from stamps of a frame's values.

    ``stamps``, ``gx``, ``gy``: as :func:`bigstack._measure.cut_stamps` cuts
    them around ``(x, y)`` (float64 values with their background; NaN where a
    pixel has no value). Each stamp's background is the median of its outer
    two pixels; a sharp pixel well above the noise (a hot pixel or cosmic
    ray, :data:`SHARP`, or :data:`SPIKE` for undersampled stars) is replaced
    by its neighbours' median; the star is then centroided in a window of its
    width (``fwhm``), as :func:`detect_stars` does. A star is found when its
    stamp has a value at every pixel, its centroid converges within 1.25
    window FWHM of the start, and its windowed signal to noise (the matched
    filter's at the star's width, with ``noise`` the pixel sigma) is at least
    ``threshold``. Returns ``(index, x, y, flux, snr)`` of the stars found,
    ``index`` into ``x``/``y``.
    """
    window = max(float(fwhm), 2.0) / FWHM_PER_SIGMA
    st = np.array(stamps, np.float64)
    m, n, _ = st.shape
    empty = (np.empty(0, np.int64),) + (np.empty(0),) * 4
    if m == 0 or n < 5:
        return empty
    edge = np.ones((n, n), bool)
    edge[2:-2, 2:-2] = False
    # a plane through the border (a glow's or a cluster's gradient), refitted without the
    # border pixels well above it (a neighbour's light)
    yy, xx = np.mgrid[0:n, 0:n] - (n - 1) / 2
    design = np.column_stack([np.ones(edge.sum()), xx[edge], yy[edge]])
    border = st[:, edge]
    use = np.isfinite(border)
    values = np.where(use, border, 0.0)
    for _ in range(2):
        w = use.astype(np.float64)
        normal = np.einsum("kp,pi,pj->kij", w, design, design)
        normal[np.linalg.det(normal) <= 0] = np.eye(3)  # too few pixels: NaN below
        coef = np.linalg.solve(normal, np.einsum("kp,pi->ki", w * values, design)[..., None])
        coef = coef[..., 0]
        left = np.where(use, values - coef @ design.T, np.nan)
        with np.errstate(invalid="ignore"):
            scale = 1.4826 * np.nanmedian(np.abs(left), axis=1)
            use = np.isfinite(border) & (left < 3 * np.maximum(scale, noise)[:, None])
    st -= coef[:, 0, None, None] + coef[:, 1, None, None] * xx + coef[:, 2, None, None] * yy
    whole = np.isfinite(st).all(axis=(1, 2))
    st[~whole] = 0.0
    s, iy, ix = np.nonzero(st > 3.0 * noise)  # only these can be sharp
    if s.size:
        med = np.median(np.stack([st[s, np.clip(iy + dy, 0, n - 1), np.clip(ix + dx, 0, n - 1)]
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]),
                        axis=0)
        value = st[s, iy, ix]
        sharp = value - med > (SPIKE if fwhm < UNDERSAMPLED else SHARP) * value
        st[s[sharp], iy[sharp], ix[sharp]] = med[sharp]
    x0 = np.asarray(x, np.float64)
    y0 = np.asarray(y, np.float64)
    x1, y1, flux, _ = iterate_centroids(st, gx, gy, x0, y0, window)
    with np.errstate(invalid="ignore"):
        wx = np.exp(-(gx - x1[:, None]) ** 2 / (2 * window * window))
        wy = np.exp(-(gy - y1[:, None]) ** 2 / (2 * window * window))
        signal = np.einsum("ki,kij,kj->k", wy, st, wx)
        spread = np.sqrt(np.sum(wy * wy, axis=1) * np.sum(wx * wx, axis=1))
        snr = signal / (noise * spread)
        keep = (whole & np.isfinite(x1) & np.isfinite(y1) & (flux > 0) & (snr >= threshold)
                & (np.hypot(x1 - x0, y1 - y0) <= 2.5 * window * FWHM_PER_SIGMA / 2))
    k = np.flatnonzero(keep)
    return k, x1[k], y1[k], flux[k], snr[k]
