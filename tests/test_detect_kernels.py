"""The compiled passes of star detection (``bigstack._kernels``) against plain numpy/scipy.

Each kernel that ``bigstack._detect`` and ``bigstack._measure`` call is compared with a
numpy reference written here (or scipy's filters), on small seeded data with the hard
cases of real frames: hot pixels, a column pattern, NaN-free edges, peaks on the border.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from bigstack import _kernels
from bigstack._detect import neighbours
from bigstack._measure import (
    background_grid,
    background_grids,
    background_map,
    cut_stamps,
    iterate_centroids,
    local_scale,
)

# --------------------------------------------------------------------------
# numpy references


def clipped_mean_ref(data, limit, axis):
    """Mean along ``axis`` of the values within ``limit`` of zero (0 where none)."""
    inside = np.abs(data) < limit
    total = np.where(inside, data, 0.0).sum(axis=axis, dtype=np.float64)
    return total / np.maximum(inside.sum(axis=axis), 1)


def clean_sharp_ref(resid, limit, ratio):
    out = resid.copy()
    ys, xs = np.nonzero(resid > limit)
    med = np.median(neighbours(resid, ys, xs), axis=0)
    sharp = resid[ys, xs] - med > ratio * resid[ys, xs]
    out[ys[sharp], xs[sharp]] = med[sharp]
    return out, int(sharp.sum())


def peaks_ref(snr, threshold):
    """Round local maxima: at least their 8 neighbours, alike curvatures, off the border."""
    local = snr == ndimage.maximum_filter(snr, 3, mode="nearest")
    peaks = (snr > threshold) & local
    peaks[0] = peaks[-1] = False
    peaks[:, 0] = peaks[:, -1] = False
    iy, ix = np.nonzero(peaks)
    c = 2.0 * snr[iy, ix].astype(np.float64)
    s = snr.astype(np.float64)
    hx = c - s[iy, ix - 1] - s[iy, ix + 1]
    hy = c - s[iy - 1, ix] - s[iy + 1, ix]
    hd = c - s[iy - 1, ix - 1] - s[iy + 1, ix + 1]
    ha = c - s[iy - 1, ix + 1] - s[iy + 1, ix - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ok = ((hx > 0) & (hy > 0) & (hd > 0) & (ha > 0)
              & (np.abs(2 * (hx - hy) / (hx + hy)) <= 1) & (np.abs(2 * (hd - ha) / (hd + ha)) <= 1))
    return iy[ok], ix[ok]


def centroids_ref(stamps, gx, gy, x, y, sigma, iterations=20, tol=1e-4):
    """Windowed centroids, all stars at once, as separable matrix products."""
    x = np.array(x, np.float64)
    y = np.array(y, np.float64)
    m = x.size
    flux = np.full(m, np.nan)
    m2 = np.full(m, np.nan)
    r = (gx.shape[1] - 1) // 2
    x0, y0 = gx[:, r].copy(), gy[:, r].copy()
    slack = math.ceil(sigma) + 3
    active = np.isfinite(x) & np.isfinite(y)
    done = np.zeros(m, bool)
    inv = 1.0 / (2 * sigma * sigma)
    for _ in range(iterations):
        idx = np.flatnonzero(active & ~done)
        if idx.size == 0:
            break
        dx = gx[idx] - x[idx][:, None]
        dy = gy[idx] - y[idx][:, None]
        wx = np.exp(-dx * dx * inv)
        wy = np.exp(-dy * dy * inv)
        rows = stamps[idx] @ np.stack([wx, wx * dx, wx * dx * dx], axis=-1)
        sums = np.stack([wy, wy * dy, wy * dy * dy], axis=1) @ rows
        total = sums[:, 0, 0]
        ok = total > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            sx = np.where(ok, 2 * sums[:, 0, 1] / total, 0.0)
            sy = np.where(ok, 2 * sums[:, 1, 0] / total, 0.0)
            m2[idx] = (sums[:, 0, 2] + sums[:, 2, 0]) / total / 2
        flux[idx] = total
        x[idx] += sx
        y[idx] += sy
        bad = ~ok | (np.abs(x[idx] - x0[idx]) > slack) | (np.abs(y[idx] - y0[idx]) > slack)
        active[idx[bad]] = False
        done[idx[~bad & (np.abs(sx) < tol) & (np.abs(sy) < tol)]] = True
    x[~done] = np.nan
    y[~done] = np.nan
    return x, y, 2 * flux, m2


def plane_ref(level, cx, cy):
    """``a + b x + c y`` fitted by lstsq, twice, cells off by more than 3 MAD left out."""
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    use = [True, len(cx) > 1, len(cy) > 1]
    design = np.column_stack([np.ones(level.size), xx.ravel(), yy.ravel()])[:, use]
    values = level.ravel()
    keep = np.isfinite(values)
    coef = np.zeros(design.shape[1])
    for _ in range(2):
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        res = values - design @ coef
        mad = 1.4826 * np.median(np.abs(res[keep]))
        keep = np.isfinite(values) & (np.abs(res) <= 3 * mad + 1e-9)
    out = np.zeros(3)
    out[use] = coef
    return out


def cell_stats_ref(cells):
    """Median and MAD sigma along the last axis; values over 3 sigma off set to the median;
    median and MAD sigma again."""
    centre = np.median(cells, axis=-1, keepdims=True)
    dev = np.abs(cells - centre)
    sigma = 1.4826 * np.median(dev, axis=-1, keepdims=True)
    cells = np.where(dev <= 3.0 * sigma, cells, centre)
    centre = np.median(cells, axis=-1, keepdims=True)
    sigma = 1.4826 * np.median(np.abs(cells - centre), axis=-1, keepdims=True)
    return centre[..., 0], sigma[..., 0]


def frame_rows(shape, seed, hot=40):
    """Noise with a column pattern, a gradient, a few stars and hot pixels (float32)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    data = rng.normal(0.0, 10.0, shape) + rng.normal(0.0, 11.0, nx)[None, :]
    data += np.linspace(0, 40, nx)[None, :] + np.linspace(0, 25, ny)[:, None]
    yy, xx = np.mgrid[0:ny, 0:nx]
    for _ in range(20):
        x, y = rng.uniform(0, nx), rng.uniform(0, ny)
        data += rng.uniform(50, 500) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.4 ** 2))
    data[rng.integers(0, ny, hot), rng.integers(0, nx, hot)] += rng.uniform(100, 3000, hot)
    data[0, 0] += 5000  # a hot pixel in a corner: its neighbours are the edge repeated
    return data.astype(np.float32)


# --------------------------------------------------------------------------
# the passes


@pytest.mark.parametrize("shape", [(48, 300), (17, 64), (200, 33)])
def test_column_and_row_clipped_means_match_numpy(shape):
    data = frame_rows(shape, 1)
    start = np.median(data, axis=0).astype(np.float32)
    sums = np.zeros(shape[1], np.float32)
    counts = np.zeros(shape[1], np.int32)
    _kernels.column_clipped_sums(data, start, 30.0, sums, counts)
    inside = np.abs(data - start) < 30.0
    np.testing.assert_array_equal(counts, inside.sum(axis=0))
    np.testing.assert_allclose(sums / np.maximum(counts, 1),
                               clipped_mean_ref(data - start, 30.0, 0), rtol=1e-5, atol=1e-4)
    column = (sums / np.maximum(counts, 1) + start).astype(np.float32)
    out = data.copy()
    _kernels.remove_rows(out, column, 30.0)
    want = data - column
    want = want - clipped_mean_ref(want, 30.0, 1)[:, None]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(("shape", "cell", "step"), [
    ((48, 2048), 128, 4), ((300, 700), 128, 4), ((1000, 260), 64, 2), ((40, 40), 128, 4)])
def test_background_grids_are_background_map_per_band(shape, cell, step):
    bands = [frame_rows(shape, seed) for seed in range(3)]
    grids = background_grids(bands, cell, step)
    for band, grid in zip(bands, grids, strict=True):
        # one band at a time gives the same (the batch does not mix bands)
        for a, b in zip(grid, background_grid(band, cell, step), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4)
        background, noise = background_map(band, cell, step)
        np.testing.assert_array_equal(noise, grid[5])
        assert np.isfinite(noise).all()
        out = np.empty_like(band)
        _kernels.subtract_background(band, *grid[:5], out)
        np.testing.assert_allclose(out, band - background, rtol=0, atol=1e-3)
        _kernels.subtract_background(out, *grid[:5], out)  # in place gives the same
        np.testing.assert_allclose(out, band - 2 * background, rtol=0, atol=2e-3)


def test_background_grids_without_the_noise_give_the_same_background():
    bands = [frame_rows((300, 700), seed) for seed in range(2)]
    for full, bare in zip(background_grids(bands, 128, 4),
                          background_grids(bands, 128, 4, noise=False), strict=True):
        for a, b in zip(full[:5], bare[:5], strict=True):
            np.testing.assert_array_equal(a, b)
        assert np.isnan(bare[5]).all()


def test_background_grids_without_despike_keep_a_bright_cell():
    """Without the median filter across cells, a cell raised by a bright object keeps its level
    (the filter takes its neighbours'); elsewhere both are the flat sky."""
    rng = np.random.default_rng(4)
    band = rng.normal(100.0, 5.0, (320, 320)).astype(np.float32)
    band[128:192, 128:192] += 400.0  # one 64 px cell, the middle of a 5 x 5 grid
    kept = background_map_pieces(background_grids([band], 64, 2, despike=False)[0], band.shape)
    filtered = background_map_pieces(background_grids([band], 64, 2)[0], band.shape)
    # (pixel 160 is half a pixel off the cell's centre, 159.5: bilinear takes 1.6% of the
    # step to the neighbours there)
    assert kept[160, 160] == pytest.approx(500.0, abs=10.0)
    assert filtered[160, 160] == pytest.approx(100.0, abs=3.0)
    assert kept[20, 20] == pytest.approx(100.0, abs=3.0)


def background_map_pieces(grid, shape):
    """The background at every pixel from :func:`background_grids`' pieces, in numpy."""
    g, i0, f, xterm, yterm = grid[:5]
    return g[i0] + f[:, None] * (g[i0 + 1] - g[i0]) + xterm[None, :] + yterm[:, None]


@pytest.mark.parametrize(("shape", "cell", "step"), [((536, 1024), 32, 4), ((24, 300), 32, 2),
                                                     ((70, 33), 32, 2)])
def test_local_scale_and_normalise_cells_match_numpy(shape, cell, step):
    """Each map less its cells' median over their clipped MAD sigma (at least the lower
    quartile of every map's cells, and the floor), both interpolated bilinearly between
    cell centres (np.interp along each axis)."""
    rng = np.random.default_rng(shape[0])
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    maps = [(rng.normal(0.0, 1.0 + 0.5 * k, shape) + 3.0 * np.sin(xx / 40.0) + yy / 50.0)
            .astype(np.float32) for k in range(2)]
    maps[1][:, :20] *= 0.01  # a quiet strip: its noise is held at the floor
    pieces = local_scale(maps, cell, step, 0.5)
    ny, nx = shape
    ncy, ncx = max(ny // cell, 1), max(nx // cell, 1)
    hy, hx = ny // ncy, nx // ncx
    cy = (np.arange(ncy) + 0.5) * hy - 0.5
    cx = (np.arange(ncx) + 0.5) * hx - 0.5
    cells = np.empty((len(maps), ncy, ncx, 2))
    for k, m in enumerate(maps):
        for i in range(ncy):
            for j in range(ncx):
                ys = np.arange(i * hy, (i + 1) * hy, step)
                xs = np.arange(j * hx, (j + 1) * hx, step)
                cells[k, i, j] = np.ravel(cell_stats_ref(m[np.ix_(ys, xs)].ravel()))
    floor = max(np.percentile(cells[..., 1], 25), 0.5)
    for k, (m, piece) in enumerate(zip(maps, pieces, strict=True)):
        gain = 1.0 / np.maximum(cells[k, ..., 1], floor)

        def bilinear(v):
            along_x = np.array([np.interp(np.arange(nx), cx, row) for row in v])
            return np.array([np.interp(np.arange(ny), cy, col) for col in along_x.T]).T

        want = (m - bilinear(cells[k, ..., 0])) * bilinear(gain)
        got = m.copy()
        _kernels.normalise_cells(got, *piece)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["noise", "few values", "constant", "sorted", "reversed"])
@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 18, 33, 100, 257, 1024, 1089])
def test_sample_median_is_numpys_median(kind, n):
    rng = np.random.default_rng(n)
    values = {"noise": lambda: rng.normal(100, 5, n),
              "few values": lambda: rng.integers(0, 4, n),  # a 16-bit camera's repeats
              "constant": lambda: np.full(n, 7.0),
              "sorted": lambda: np.sort(rng.normal(0, 1, n)),
              "reversed": lambda: np.sort(rng.normal(0, 1, n))[::-1]}[kind]()
    a = np.ascontiguousarray(values, dtype=np.float32)
    given = a.copy()
    got = _kernels._sample_median(a, n, np.empty((3, n), np.float32))
    assert got == np.median(a)
    np.testing.assert_array_equal(a, given)  # the input is left as it is


@pytest.mark.parametrize(("sy", "sx"), [(3, 5), (4, 4), (12, 32)])
def test_cell_stats_match_numpy(sy, sx):
    data = frame_rows((100, 150), 8)
    rng = np.random.default_rng(sy)
    ys = np.sort(rng.integers(0, 100, (4, sy)), axis=1)
    xs = np.sort(rng.integers(0, 150, (6, sx)), axis=1)
    level = np.empty((4, 6), np.float32)
    sigma = np.empty((4, 6), np.float32)
    _kernels.cell_stats(data, ys, xs, level, sigma)
    want_level, want_sigma = cell_stats_ref(data[ys[:, None, :, None], xs[None, :, None, :]]
                                            .reshape(4, 6, -1))
    np.testing.assert_allclose(level, want_level, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(sigma, want_sigma, rtol=1e-5, atol=1e-5)


def test_background_planes_match_lstsq():
    from bigstack._measure import _planes

    rng = np.random.default_rng(3)
    cx = np.arange(16) * 128 + 63.5
    cy = np.arange(5) * 128 + 63.5
    yy, xx = np.meshgrid(cy, cx, indexing="ij")
    levels = [100 + 0.01 * xx - 0.02 * yy + rng.normal(0, 0.3, xx.shape) for _ in range(4)]
    levels[1][2, 3] += 200  # a cell on a bright galaxy: left out by the clip
    got = _planes(np.stack([v.ravel() for v in levels]), cx, cy)
    for k, level in enumerate(levels):
        np.testing.assert_allclose(got[k], plane_ref(level, cx, cy), rtol=1e-9, atol=1e-9)
    one_row = _planes(np.stack([v[0] for v in levels]), cx, cy[:1])
    for k, level in enumerate(levels):
        np.testing.assert_allclose(one_row[k], plane_ref(level[:1], cx, cy[:1]), atol=1e-9)


@pytest.mark.parametrize("shape", [(64, 90), (5, 7)])
def test_clean_sharp_replaces_what_numpy_finds(shape):
    data = frame_rows(shape, 2, hot=shape[0] * shape[1] // 40)
    data -= np.median(data)
    want, n_want = clean_sharp_ref(data, 40.0, 0.7)
    got = data.copy()
    n = _kernels.clean_sharp(got, 40.0, 0.7, np.empty(1000, np.int64), np.empty(1000, np.float32))
    assert n == n_want > 0
    np.testing.assert_array_equal(got, want)
    # scratch too small: nothing changed, the count needed returned
    small = data.copy()
    n = _kernels.clean_sharp(small, 40.0, 0.7, np.empty(1, np.int64), np.empty(1, np.float32))
    assert n == -n_want
    np.testing.assert_array_equal(small, data)


@pytest.mark.parametrize("shape", [(10, 12), (11, 13), (2, 3)])
def test_bin2_is_the_sum_of_each_two_by_two_block(shape):
    data = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    h, w = shape[0] // 2, shape[1] // 2
    out = np.empty((h, w), np.float32)
    _kernels.bin2(data, out)
    want = data[:2 * h, :2 * w].reshape(h, 2, w, 2).sum(axis=(1, 3))
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sigma", [0.5, 1.06, 2.5])
@pytest.mark.parametrize("shape", [(40, 57), (3, 9)])
def test_smooth_is_scipys_gaussian_filter(sigma, shape):
    data = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    radius = int(3.0 * sigma + 0.5)
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.empty_like(data)
    _kernels.smooth(data, k.astype(np.float32), 2.5, np.empty_like(data), out)
    want = ndimage.gaussian_filter(data.astype(np.float64), sigma, truncate=3.0, mode="nearest")
    np.testing.assert_allclose(out, 2.5 * want, rtol=0, atol=1e-5)


def test_round_peaks_are_numpys_round_local_maxima():
    rng = np.random.default_rng(6)
    snr = ndimage.gaussian_filter(rng.normal(size=(80, 90)), 1.0).astype(np.float32) * 8
    snr[20, 30:40] = 50.0  # a line: equal neighbours, not round
    snr[0, 5] = snr[45, 0] = 99.0  # on the border: never
    snr[60, 60] = 40.0  # a single bright pixel: round
    snr[10, 10] = snr[10, 11] = 30.0  # a plateau of two: both are maxima
    iy = np.empty(500, np.int64)
    ix = np.empty(500, np.int64)
    n = _kernels.round_peaks(snr, 2.0, iy, ix)
    want_y, want_x = peaks_ref(snr, 2.0)
    assert n == len(want_y) > 5
    np.testing.assert_array_equal(iy[:n], want_y)
    np.testing.assert_array_equal(ix[:n], want_x)
    assert _kernels.round_peaks(snr, 2.0, iy[:2], ix[:2]) == n  # the count even when cut


def test_centroid_stamps_match_the_numpy_iteration():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:200, 0:260]
    img = rng.normal(0, 1, yy.shape)
    x = rng.uniform(15, 245, 60)
    y = rng.uniform(15, 185, 60)
    for a, b in zip(x, y, strict=True):
        img += 40 * np.exp(-((xx - a) ** 2 + (yy - b) ** 2) / (2 * 1.3 ** 2))
    sx = x + rng.normal(0, 1, x.size)
    sy = y + rng.normal(0, 1, y.size)
    sx[3] = np.nan  # not started
    sx[5], sy[5] = 150.5, 3.0  # near nothing: walks off or holds no flux
    stamps, gx, gy = cut_stamps(img, sx, sy, 1.3)
    got = iterate_centroids(stamps, gx, gy, sx, sy, 1.3)
    want = centroids_ref(stamps, gx, gy, sx, sy, 1.3)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w))
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-9)
    ok = np.isfinite(got[0])
    assert ok.sum() >= 50
    d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + np.eye(x.size) * 1e9
    alone = ok & (d.min(axis=1) > 8)  # a blend converges between its stars
    assert alone.sum() > 30
    assert np.abs(got[0][alone] - x[alone]).max() < 0.1  # and they find the stars


def test_all_finite():
    data = np.zeros((4, 5), np.float32)
    assert _kernels.all_finite(data)
    for bad in (np.nan, np.inf, -np.inf):
        d = data.copy()
        d[3, 4] = bad
        assert not _kernels.all_finite(d)
        assert _kernels.all_finite(d[:3])  # a view without it
