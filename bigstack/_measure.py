"""Measurements on pixels: background, noise, local maxima, centroids and FWHM.

The one place where bigstack measures a sky level, a noise, a star's
position or its width; registration (:mod:`bigstack._register`,
:mod:`bigstack._detect`) and frame quality (:mod:`bigstack._quality`) call
these. Images are indexed ``[y, x]``; positions are ``[x, y]``; a pixel's
centre has integer coordinates.

- :func:`box_stats`: median and MAD sigma of a box (a quarter of its
  pixels when large); no clipping, for a box around one star.
- :func:`subsample` and :func:`clipped_stats`: sigma-clipped median and
  MAD sigma of at most :data:`STATS_SAMPLE` pixels spread over a frame's
  row bands (integer pixels dithered so the estimate does not step by
  half an ADU).
- :func:`background_map`: a coarse background and noise map, one clipped
  median and MAD sigma per cell, smoothed and interpolated to every pixel;
  for detection.
- :func:`window_max`: the maximum over a square window (local maxima).
- :func:`windowed_centroid` (one star, iterated) and
  :func:`windowed_centroids` (many stars at once): Gaussian-windowed
  centroids, unbiased for a symmetric star.
- :func:`fwhm_from_halfmax` and :func:`adaptive_shapes`: a star's width.
"""

from __future__ import annotations

import math

import numpy as np

#: pixels the frame background and noise are computed from
STATS_SAMPLE = 1 << 15
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------
# background and noise


def box_stats(box):
    """Sky level and noise of a box: median and MAD-based sigma of its pixels.

    A quarter of the pixels (every other row and column) is used when the
    box has more than 4096; NaNs are ignored.
    """
    values = box[::2, ::2] if box.size > 4096 else box
    values = values[np.isfinite(values)]
    median = float(np.median(values))
    noise = _MAD_TO_SIGMA * float(np.median(np.abs(values - median)))
    return median, noise


def subsample(arrays, size=STATS_SAMPLE):
    """At most about ``size`` finite pixels of ``arrays``, an even stride through them."""
    total = sum(a.size for a in arrays)
    step = max(-(-total // size), 1)
    values = np.concatenate([np.asarray(a).ravel()[::step] for a in arrays]).astype(np.float64)
    return values[np.isfinite(values)]


def clipped_stats(arrays, size=STATS_SAMPLE):
    """Background and noise of the pixels of ``arrays`` (a list of arrays).

    The median and MAD-based sigma (:func:`astropy.stats.mad_std`) after
    3-sigma clipping about the median (at most 5 iterations), on
    :func:`subsample`'s pixels. When every pixel is an integer, each is
    first spread over its unit step by a fixed, seeded uniform dither and
    the dither's variance (1/12) is taken back out of the noise, so the
    estimates do not move in half-ADU steps. ``(nan, nan)`` when no pixel
    is finite.
    """
    from astropy.stats import mad_std, sigma_clip

    values = subsample(arrays, size)
    if values.size == 0:
        return np.nan, np.nan
    integers = bool(np.all(values == np.round(values))) and mad_std(values) > 0
    if integers:
        values = values + np.random.default_rng(0).uniform(-0.5, 0.5, values.size)
    kept = sigma_clip(values, sigma=3.0, maxiters=5, cenfunc="median", stdfunc="mad_std",
                      masked=False, axis=None)
    background = float(np.median(kept))
    noise = float(mad_std(kept))
    if integers:
        noise = math.sqrt(max(noise * noise - 1.0 / 12.0, 0.0))
    return background, noise


def background_map(data, cell=64, step=2):
    """Coarse background and noise map of ``data``, at every pixel.

    The image is cut into cells of ``cell`` x ``cell`` pixels (the last
    row and column of cells take the remainder); each cell's background
    is the clipped median and its noise the clipped MAD sigma (one
    3-sigma pass) of every ``step``-th pixel along each axis. A plane is
    fitted to the cell levels (least squares, cells off by more than 3
    MAD left out); the cells' departures from it are median-filtered over
    3 x 3 cells (a cell covered by a bright star or galaxy takes its
    neighbours' level) and interpolated bilinearly between cell centres,
    and the plane is added back. A linear gradient is thus followed
    exactly, up to the frame's edges.

    Parameters
    ----------
    data : numpy.ndarray
        2-D ``[y, x]``; NaNs are not allowed (fill them first).
    cell : int
        Cell size in pixels.
    step : int
        Sampling stride inside a cell.

    Returns
    -------
    background : numpy.ndarray
        float32, the shape of ``data``.
    noise : numpy.ndarray
        float32 ``(ncy, ncx)``, the noise of each cell (after the filter).
    """
    grid, i0, f, xterm, yterm, sigma = background_grid(data, cell, step)
    background = grid[i0]
    background += f[:, None] * (grid[i0 + 1] - background)
    background += xterm
    background += yterm[:, None]
    return background, sigma


def background_grid(data, cell=64, step=2):
    """:func:`background_map`'s pieces, for a caller that subtracts them in one pass.

    Returns ``(grid, i0, f, xterm, yterm, noise)``: the background at pixel
    ``[y, x]`` is ``grid[i0[y], x] + f[y] * (grid[i0[y] + 1, x] - grid[i0[y],
    x]) + xterm[x] + yterm[y]``; ``grid`` (float32, at least 2 rows) holds
    the cells' departures from the plane interpolated along each cell row,
    ``xterm``/``yterm`` the plane; ``noise`` is as :func:`background_map`'s.
    (:func:`bigstack._kernels.subtract_background` subtracts it.)
    """
    return background_grids([data], cell, step)[0]


def background_grids(datas, cell=64, step=2, noise=True, despike=True):
    """:func:`background_grid` of each of ``datas`` (2-D arrays of one shape), together.

    The same numbers as one call per array, in one numpy call per step for
    all of them (a frame's row bands cost one set of calls, not one each).
    ``noise=False`` skips the cells' noise (returned as NaN), a quarter of
    the cost, for a caller that only subtracts the background.
    ``despike=False`` leaves out the 3 x 3 median filter of the cells: the
    background then follows a nebula or galaxy a few cells wide (the
    filter cuts the top off any bump up to its own size), and a cell that
    a bright star fills is taken as it is (it can only be too high).
    """
    from scipy.ndimage import median_filter

    nb = len(datas)
    ny, nx = datas[0].shape
    level, sigma, cy, cx = _cell_stats(datas, cell, step, noise)
    ncy, ncx = len(cy), len(cx)
    level = level.astype(np.float64)  # (nb, ncy, ncx)
    plane = _planes(level.reshape(nb, -1), cx, cy)  # (nb, 3)
    resid = level - (plane[:, 0, None, None] + plane[:, 1, None, None] * cx
                     + plane[:, 2, None, None] * cy[:, None])
    if ncy * ncx > 1 and despike:
        resid = median_filter(resid, size=(1, 3, 3), mode="nearest")
        if noise:
            sigma = median_filter(sigma, size=(1, 3, 3), mode="nearest")
    grid = _grid_rows(resid, cx, nx)
    i0, f = _between(cy, ny)
    x = np.arange(nx, dtype=np.float64)
    y = np.arange(ny, dtype=np.float64)
    return [(grid[k], i0, f, (plane[k, 0] + plane[k, 1] * x).astype(np.float32),
             (plane[k, 2] * y).astype(np.float32), sigma[k].astype(np.float32))
            for k in range(nb)]


def _cell_stats(datas, cell, step, noise=True):
    """Each cell's clipped median and MAD sigma (:func:`bigstack._kernels.cell_stats`) of
    each of ``datas`` (one shape): ``(level, sigma, cy, cx)``, float32 ``(nb, ncy, ncx)``
    (``sigma`` NaN without ``noise``) and the cell centres. The last row and column of
    cells take the remainder; every ``step``-th pixel along each axis is sampled."""
    from ._kernels import cell_stats

    nb = len(datas)
    ny, nx = datas[0].shape
    ncy, ncx = max(ny // cell, 1), max(nx // cell, 1)
    hy, hx = ny // ncy, nx // ncx  # cell sides, remainder to the last cells
    ys = np.minimum(np.arange(ncy * hy).reshape(ncy, hy)[:, ::step], ny - 1)
    xs = np.minimum(np.arange(ncx * hx).reshape(ncx, hx)[:, ::step], nx - 1)
    level = np.empty((nb, ncy, ncx), np.float32)
    sigma = np.full((nb, ncy, ncx), np.nan, np.float32)
    for k, d in enumerate(datas):
        cell_stats(np.asarray(d, np.float32), ys, xs, level[k], sigma[k], noise)
    cy = (np.arange(ncy) + 0.5) * hy - 0.5
    cx = (np.arange(ncx) + 0.5) * hx - 0.5
    return level, sigma, cy, cx


def _between(cy, ny):
    """``(i0, f)``: each row ``0 .. ny - 1`` lies ``f`` of the way from cell row ``i0`` to
    ``i0 + 1`` (centres ``cy``; held beyond the end centres; one cell row is read twice)."""
    if len(cy) == 1:
        return np.zeros(ny, np.int64), np.zeros(ny, np.float32)
    iy = np.interp(np.arange(ny), cy, np.arange(len(cy)))
    i0 = np.minimum(iy.astype(np.int64), len(cy) - 2)
    return i0, (iy - i0).astype(np.float32)


def local_scale(datas, cell, step, floor):
    """Each of ``datas`` (one shape) less its cells' level, over their noise: the pieces.

    Cells as :func:`_cell_stats`'; no plane and no filter across cells (for
    a map whose sky is already gone, such as a matched-filtered image).
    Returns per array ``(level, i0, f, gain)`` for
    :func:`bigstack._kernels.normalise_cells`: ``level`` and ``gain`` (one
    over the noise) are each cell row interpolated along x, read between
    rows with ``i0`` and ``f``. A cell's noise is at least the lower quartile
    of all the cells' (of every array: a frame's bands together), and at
    least ``floor``: a cell's MAD from a few dozen values can come out a
    fifth low by chance, which would make its noise peaks "stars"; a cell
    whose noise is higher (a bright object's photon noise, what the
    background left of it) keeps its own. (The median would be safer from
    chance, but a bright object over half the frame would set it.)
    """
    ny, nx = datas[0].shape
    level, sigma, cy, cx = _cell_stats(datas, cell, step)
    i0, f = _between(cy, ny)
    finite = sigma[np.isfinite(sigma)]
    floor = max(float(np.percentile(finite, 25)) if finite.size else 0.0, floor)
    gain = 1.0 / np.maximum(np.nan_to_num(sigma, nan=floor), floor)
    level, gain = _grid_rows(level, cx, nx), _grid_rows(gain, cx, nx)
    return [(level[k], i0, f, gain[k]) for k in range(len(datas))]


def _grid_rows(values, cx, nx):
    """Cell values ``(nb, ncy, ncx)`` (centres ``cx``) interpolated along x: float32 ``(nb,
    max(ncy, 2), nx)``, a single cell row given twice (:func:`_between` reads rows ``i0``
    and ``i0 + 1``)."""
    nb, ncy, ncx = values.shape
    rows = _lerp_x(values.reshape(nb * ncy, ncx), cx, nx).reshape(nb, ncy, nx)
    return np.concatenate([rows, rows], axis=1) if ncy == 1 else rows


def _lerp_x(lines, cx, nx):
    """Each row of ``lines`` ``(m, len(cx))``, known at ``cx``, at ``0 .. nx - 1``: like
    ``np.interp`` (the end values held beyond the ends), all rows at once, float32 (no
    BLAS product, whose threads cost more than these few values)."""
    lines = np.asarray(lines, np.float32)
    n = len(cx)
    if n == 1:
        return np.repeat(lines, nx, axis=1)
    x = np.arange(nx, dtype=np.float64)
    j = np.clip(np.searchsorted(cx, x, side="right") - 1, 0, n - 2)
    t = np.clip((x - cx[j]) / (cx[j + 1] - cx[j]), 0.0, 1.0).astype(np.float32)
    a = np.take(lines, j, axis=1)
    return a + (np.take(lines, j + 1, axis=1) - a) * t


def _masked_median(values, mask):
    """The median of each row of ``values`` over its ``mask`` (at least one per row)."""
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    count = mask.sum(axis=1)
    rows = np.arange(len(values))
    return 0.5 * (ordered[rows, (count - 1) // 2] + ordered[rows, count // 2])


def _planes(values, cx, cy):
    """:func:`_plane` of each row of ``values`` ``(nb, ncy * ncx)``, together: ``(nb, 3)``."""
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    use = np.array([True, len(cx) > 1, len(cy) > 1])
    design = np.column_stack([np.ones(xx.size), xx.ravel(), yy.ravel()])[:, use]
    p = design.shape[1]
    nb = values.shape[0]
    finite = np.isfinite(values)
    keep = finite.copy()
    coef = np.zeros((nb, p))
    active = np.ones(nb, bool)
    for _ in range(2):
        active &= keep.sum(axis=1) >= p
        if not active.any():
            break
        w = (keep & active[:, None]).astype(np.float64)
        v = np.where(finite, values, 0.0) * w
        normal = np.einsum("bm,mp,mq->bpq", w, design, design)
        rhs = np.einsum("bm,mp->bp", v, design)  # einsum, not BLAS: see _lerp_x
        coef[active] = np.einsum("bpq,bq->bp", np.linalg.pinv(normal[active]), rhs[active])
        res = np.abs(values - np.einsum("bp,mp->bm", coef, design))[active]
        mad = 1.4826 * _masked_median(res, keep[active])
        keep[active] = finite[active] & (res <= 3 * mad[:, None] + 1e-9)
    out = np.zeros((nb, 3))
    out[:, use] = coef
    return out


# --------------------------------------------------------------------------
# local maxima


def window_max(data, radius):
    """Maximum over the ``(2 radius + 1)``-square around each pixel, edges repeated.

    The same as ``scipy.ndimage.maximum_filter(data, 2 * radius + 1,
    mode="nearest")``, by doubling spans along each axis (a few whole-array
    ``np.maximum`` calls, much faster than the filter on wide bands).
    """
    width = 2 * radius + 1
    span = 1 << (width.bit_length() - 1)  # the largest power of two <= width
    ny, nx = data.shape
    m = np.pad(data, [(0, 0), (radius, radius)], mode="edge")
    step = 1
    while step < span:
        m = np.maximum(m[:, :-step], m[:, step:])
        step *= 2
    out = np.maximum(m[:, :nx], m[:, width - span:width - span + nx])
    m = np.pad(out, [(radius, radius), (0, 0)], mode="edge")
    step = 1
    while step < span:
        m = np.maximum(m[:-step], m[step:])
        step *= 2
    return np.maximum(m[:ny], m[width - span:width - span + ny])


# --------------------------------------------------------------------------
# centroids


def windowed_centroid(data, x, y, sigma, iterations=30):
    """Iterative Gaussian-windowed centroid of background-free ``data`` near ``(x, y)``.

    Returns ``(x, y, second_moment)``; ``x``/``y`` are NaN when the window
    holds no positive flux. The window is a Gaussian of ``sigma`` pixels;
    each step moves by twice the weighted mean offset, which converges to
    the centre of a symmetric star (as SExtractor's windowed positions).
    """
    ny, nx = data.shape
    radius = max(3, int(np.ceil(4 * sigma)))
    m2 = np.nan
    for _ in range(iterations):
        ix, iy = int(round(x)), int(round(y))
        y0, y1 = max(iy - radius, 0), min(iy + radius + 1, ny)
        x0, x1 = max(ix - radius, 0), min(ix + radius + 1, nx)
        dy = np.arange(y0, y1)[:, None] - y
        dx = np.arange(x0, x1)[None, :] - x
        weights = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma)) * data[y0:y1, x0:x1]
        total = weights.sum()
        if not total > 0:
            return np.nan, np.nan, np.nan
        step_x = 2 * float((weights * dx).sum()) / total
        step_y = 2 * float((weights * dy).sum()) / total
        m2 = float((weights * (dx * dx + dy * dy)).sum()) / total / 2
        x += step_x
        y += step_y
        if abs(step_x) < 1e-5 and abs(step_y) < 1e-5:
            break
    return x, y, m2


def cut_stamps(data, x, y, sigma):
    """Stamps around ``(x, y)`` for :func:`iterate_centroids`: ``(stamps, gx, gy)``.

    Each stamp reaches ``3.5 sigma`` plus the slack a centroid may move
    by (``ceil(sigma) + 3`` px) around the rounded start; pixels off the
    image are 0.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    ny, nx = data.shape
    slack = int(math.ceil(sigma)) + 3
    r = max(3, int(math.ceil(3.5 * sigma))) + slack
    offs = np.arange(-r, r + 1)
    gx = np.rint(np.nan_to_num(x)).astype(np.int64)[:, None] + offs[None, :]
    gy = np.rint(np.nan_to_num(y)).astype(np.int64)[:, None] + offs[None, :]
    inside = ((gx >= 0) & (gx < nx))[:, None, :] & ((gy >= 0) & (gy < ny))[:, :, None]
    stamps = data[np.clip(gy, 0, ny - 1)[:, :, None], np.clip(gx, 0, nx - 1)[:, None, :]]
    stamps = np.where(inside, stamps, 0.0).astype(np.float64)
    return stamps, gx.astype(np.float64), gy.astype(np.float64)


def iterate_centroids(stamps, gx, gy, x, y, sigma, iterations=20, tol=1e-4):
    """The iteration of :func:`windowed_centroids` on stamps cut by :func:`cut_stamps`.

    Compiled (:func:`bigstack._kernels.centroid_stamps`, one star at a time);
    the numpy reference, all stars at once, is in the tests.
    """
    from ._kernels import centroid_stamps

    x = np.array(x, np.float64)
    y = np.array(y, np.float64)
    m = x.size
    flux = np.full(m, np.nan)
    m2 = np.full(m, np.nan)
    if m == 0:
        return x, y, flux, m2
    done = np.zeros(m, bool)
    slack = int(math.ceil(sigma)) + 3
    centroid_stamps(np.ascontiguousarray(stamps, np.float64), np.ascontiguousarray(gx),
                    np.ascontiguousarray(gy), x, y, float(sigma), float(slack),
                    int(iterations), float(tol), flux, m2, done)
    x[~done] = np.nan
    y[~done] = np.nan
    return x, y, 2 * flux, m2


def windowed_centroids(data, x, y, sigma, iterations=20, tol=1e-4):
    """Gaussian-windowed centroids of many stars at once (see :func:`windowed_centroid`).

    Parameters
    ----------
    data : numpy.ndarray
        Background-free image ``[y, x]`` (float32 or float64, no NaNs).
    x, y : numpy.ndarray
        Starting positions, pixels (within about ``sigma + 3`` px of the
        star).
    sigma : float
        Window sigma, pixels (the star's own sigma converges fastest).
    iterations : int
        At most this many steps; ``tol`` (pixels) stops a star earlier.

    Returns
    -------
    x, y : numpy.ndarray
        float64 positions; NaN where the window held no positive flux,
        the star walked off its stamp or did not converge.
    flux : numpy.ndarray
        Twice the Gaussian-weighted flux at the final position (the total
        flux of a Gaussian star of ``sigma``; a ranking for others).
    m2 : numpy.ndarray
        Windowed second moment per axis (px^2); for a Gaussian star of
        sigma ``s``, ``m2 = s^2 w^2 / (s^2 + w^2)`` with ``w = sigma``.

    Notes
    -----
    Each star's stamp is cut once (:func:`cut_stamps`); every step is then
    a few small matrix products per star on the separable window
    (:func:`iterate_centroids`).
    """
    stamps, gx, gy = cut_stamps(data, x, y, sigma)
    return iterate_centroids(stamps, gx, gy, x, y, sigma, iterations, tol)


def fwhm_from_m2(m2, sigma):
    """FWHM of a Gaussian star from its windowed second moment (see :func:`windowed_centroids`)."""
    m2 = np.asarray(m2, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        s2 = m2 * sigma * sigma / (sigma * sigma - m2)
        return np.where((m2 > 0) & (m2 < sigma * sigma), FWHM_PER_SIGMA * np.sqrt(s2), np.nan)


def fwhm_from_halfmax(data, iy, ix):
    """Rough FWHM from the number of pixels above half the peak near ``(iy, ix)``."""
    peak = data[iy, ix]
    if not peak > 0:
        return np.nan
    r = 10
    cut = data[max(iy - r, 0):iy + r + 1, max(ix - r, 0):ix + r + 1]
    area = np.count_nonzero(cut >= peak / 2)
    return 2 * np.sqrt(area / np.pi)


def adaptive_shapes(stamps, iterations=60):
    """``(fwhm, roundness)`` arrays from adaptive moments of background-free stamps.

    ``stamps`` is ``(m, h, w)``; all stamps are iterated together: each
    star's pixels are weighted by an elliptical Gaussian whose covariance
    is iterated to twice the weighted second moments (Bernstein & Jarvis
    2002), which converges to a Gaussian star's own covariance. The
    pixel's own width (1/12 px^2 per axis) is taken off; with eigenvalues
    ``a^2 >= b^2``, ``fwhm = 2.3548 * sqrt((a^2 + b^2) / 2)`` and
    ``roundness = 1 - b / a``. A stamp that does not converge gets NaN.
    """
    signal = np.where(np.isfinite(stamps), stamps, 0.0)
    m, h, w = signal.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    fwhm = np.full(m, np.nan)
    roundness = np.full(m, np.nan)
    cx = np.full(m, (w - 1) / 2)
    cy = np.full(m, (h - 1) / 2)
    a, b, c = np.full(m, 2.0), np.zeros(m), np.full(m, 2.0)
    todo = signal.reshape(m, -1).sum(axis=1) > 0
    converged = np.zeros(m, bool)
    for _ in range(iterations):
        if not todo.any():
            break
        det = a * c - b * b
        with np.errstate(invalid="ignore", divide="ignore"):
            ia, ib, ic = c / det, -b / det, a / det
            dx = xx[None] - cx[:, None, None]
            dy = yy[None] - cy[:, None, None]
            q = ia[:, None, None] * dx * dx + 2 * ib[:, None, None] * dx * dy \
                + ic[:, None, None] * dy * dy
            weighted = signal * np.exp(-0.5 * np.minimum(q, 700.0))
            total = weighted.sum(axis=(1, 2))
            ncx = (weighted * xx).sum(axis=(1, 2)) / total
            ncy = (weighted * yy).sum(axis=(1, 2)) / total
            dx = xx[None] - ncx[:, None, None]
            dy = yy[None] - ncy[:, None, None]
            na = 2 * (weighted * dx * dx).sum(axis=(1, 2)) / total
            nb = 2 * (weighted * dx * dy).sum(axis=(1, 2)) / total
            nc = 2 * (weighted * dy * dy).sum(axis=(1, 2)) / total
        valid = (total > 0) & (na > 0) & (na * nc - nb * nb > 0)
        todo &= valid
        change = np.maximum(np.maximum(np.abs(na - a), np.abs(nb - b)), np.abs(nc - c))
        done = todo & (change < 1e-6 * (na + nc))
        a, b, c = (np.where(todo, new, old) for new, old in ((na, a), (nb, b), (nc, c)))
        cx, cy = np.where(todo, ncx, cx), np.where(todo, ncy, cy)
        converged |= done
        todo &= ~done
    ok = converged & (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    a, c = a - 1.0 / 12.0, c - 1.0 / 12.0
    mean = (a + c) / 2
    spread = np.sqrt(((a - c) / 2) ** 2 + b * b)
    major, minor = mean + spread, mean - spread
    ok &= minor > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        fwhm[ok] = FWHM_PER_SIGMA * np.sqrt(mean[ok])
        roundness[ok] = 1.0 - np.sqrt(minor[ok] / major[ok])
    return fwhm, roundness
