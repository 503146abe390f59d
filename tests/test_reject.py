"""The per-tile reducers of ``bigstack._reject`` against independent references.

References are numpy / astropy / ccdproc on the in-memory cube, or plain
per-pixel Python loops over each pixel's finite values written here from
the documented algorithms. Cubes have NaN holes and edges like shifted
frames, and pixels covered by 0, 1 and 2 frames only.
"""

from __future__ import annotations

import threading
import tracemalloc
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning

from bigstack import _reject
from bigstack._reject import bytes_per_value, combine_block, max_rows, workspace_bytes

RANK_METHODS = ("median", "sigma_clip", "winsorized", "minmax", "percentile")
ALL_METHODS = ("mean", "sum") + RANK_METHODS


# --------------------------------------------------------------------------
# test data


def make_cube(seed, n=15, h=7, w=11, holes=0.15, ties=False, dtype=np.float32, edges=True):
    """A (n, h, w) cube: sky + noise + outliers, NaN edges, holes and thin pixels.

    Pixel (0, 0) is covered by no frame, (0, 1) by one, (0, 2) and (0, 3)
    by two, (0, 4) by three. ``edges=False, holes=0`` gives full coverage.
    """
    rng = np.random.default_rng(seed)
    if ties:  # integer values: many equal values per pixel
        cube = rng.integers(95, 106, (n, h, w)).astype(dtype)
    else:
        cube = rng.normal(100.0, 5.0, (n, h, w)).astype(dtype)
    hit = rng.random(cube.shape) < 0.06
    cube[hit] += (rng.choice([-1.0, 1.0], hit.sum()) * rng.uniform(15, 400, hit.sum())).astype(
        dtype)
    for i in range(n if edges else 0):  # the uncovered edges of a frame shifted by (dx, dy)
        dx, dy = rng.integers(-3, 4, 2)
        if dx > 0:
            cube[i, :, -dx:] = np.nan
        elif dx < 0:
            cube[i, :, :-dx] = np.nan
        if dy > 0:
            cube[i, -dy:, :] = np.nan
        elif dy < 0:
            cube[i, :-dy, :] = np.nan
    cube[rng.random(cube.shape) < holes] = np.nan
    if not edges:
        return cube
    cube[:, 0, :5] = np.nan
    cube[n // 2, 0, 1] = 120.0
    cube[[0, n - 1], 0, 2] = [90.0, 130.0]
    cube[[1, n - 2], 0, 3] = [100.0, 100.0]
    cube[[0, 1, n - 1], 0, 4] = [80.0, 101.0, 300.0]
    return cube


def per_pixel(cube, reduce, weights=None):
    """Apply ``reduce(values, frames)`` to each pixel's finite values.

    ``reduce`` returns ``(result, kept)``; an empty pixel gives NaN, 0.
    """
    n, h, w = cube.shape
    result = np.full((h, w), np.nan)
    kept = np.zeros((h, w), int)
    for y in range(h):
        for x in range(w):
            values = cube[:, y, x].astype(np.float64)
            frames = np.flatnonzero(np.isfinite(values))
            if frames.size:
                result[y, x], kept[y, x] = reduce(values[frames], frames)
    return result, kept


def coverage(cube):
    return np.isfinite(cube).sum(axis=0)


def assert_same(got, want_result, want_kept, cube, rtol=2e-6):
    result, kept, rejected = got
    assert result.dtype == np.float32 and result.shape == want_result.shape
    assert kept.dtype == np.int32 and rejected.dtype == np.int32
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_array_equal(rejected, coverage(cube) - want_kept)
    np.testing.assert_array_equal(np.isnan(result), np.isnan(want_result))
    scale = np.nanmax(np.abs(want_result))
    np.testing.assert_allclose(result, want_result, rtol=rtol, atol=rtol * scale)


def middle(sorted_values):
    """The documented fallback: the middle value (odd count) or two (even)."""
    k = sorted_values.size
    return sorted_values[(k - 1) // 2:k // 2 + 1]


CUBES = [pytest.param(dict(seed=1), id="normal"),
         pytest.param(dict(seed=2, n=6, holes=0.3), id="few-frames"),
         pytest.param(dict(seed=3, ties=True), id="ties"),
         pytest.param(dict(seed=4, n=40, h=5, w=6, holes=0.05), id="many-frames")]


# --------------------------------------------------------------------------
# plain reducers


@pytest.mark.parametrize("spec", CUBES)
def test_mean_sum_median_equal_numpy(spec):
    cube = make_cube(**spec)
    cov = coverage(cube)
    empty = cov == 0
    with warnings.catch_warnings():  # the references warn on the empty pixel
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(cube.astype(np.float64), axis=0)
        median = np.nanmedian(cube.astype(np.float64), axis=0)
    total = np.where(empty, np.nan, np.nansum(cube.astype(np.float64), axis=0))
    assert_same(combine_block(cube, "mean"), mean, cov, cube)
    assert_same(combine_block(cube, "average"), mean, cov, cube)
    assert_same(combine_block(cube, "sum"), total, cov, cube)
    assert_same(combine_block(cube, "median"), median, cov, cube)


@pytest.mark.parametrize("spec", CUBES)
def test_weighted_mean_equals_np_average(spec):
    cube = make_cube(**spec)
    weights = np.random.default_rng(7).uniform(0.2, 3.0, cube.shape[0])
    want = per_pixel(cube, lambda v, f: (np.average(v, weights=weights[f]), v.size))
    assert_same(combine_block(cube, "mean", weights=weights), *want, cube)


def test_weighted_mean_with_zero_weights():
    cube = make_cube(5)
    weights = np.ones(cube.shape[0])
    weights[[1, 3, 7]] = 0.0
    want = per_pixel(cube, lambda v, f: (
        np.average(v, weights=weights[f]) if weights[f].any() else np.nan, v.size))
    # (0, 1) is covered only by frame 7, whose weight is 0: kept 1, result NaN
    assert np.isnan(want[0][0, 1])
    assert_same(combine_block(cube, "mean", weights=weights), *want, cube)


# --------------------------------------------------------------------------
# sigma clipping against astropy and ccdproc


def astropy_clip(cube, kappa, maxiters, centre, callable_centre=False):
    cenfunc = {"median": np.nanmedian, "mean": np.nanmean}[centre] if callable_centre else centre
    with warnings.catch_warnings():  # astropy notes the NaN holes
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        clipped = sigma_clip(cube.astype(np.float64), axis=0, sigma_lower=kappa[0],
                             sigma_upper=kappa[1], maxiters=maxiters, cenfunc=cenfunc,
                             stdfunc="std", masked=True)
    kept = (~np.ma.getmaskarray(clipped)).sum(axis=0)
    result = np.ma.mean(clipped, axis=0).filled(np.nan)
    return clipped, np.where(kept > 0, result, np.nan), kept


@pytest.mark.parametrize("spec", CUBES)
@pytest.mark.parametrize("kappa", [(3.0, 3.0), (2.0, 2.5), (1.3, 4.0)])
@pytest.mark.parametrize("maxiters", [1, 3, 5, 50])
@pytest.mark.parametrize("centre", ["median", "mean"])
def test_sigma_clip_equals_astropy(spec, kappa, maxiters, centre):
    cube = make_cube(**spec)
    _, result, kept = astropy_clip(cube, kappa, maxiters, centre)
    got = combine_block(cube, "sigma_clip", kappa=kappa, maxiters=maxiters, centre=centre)
    assert_same(got, result, kept, cube)


@pytest.mark.parametrize("centre", ["median", "mean"])
def test_sigma_clip_equals_astropy_generic_path(centre):
    """astropy's Python path (callable cenfunc), not only its C fast path."""
    cube = make_cube(11, n=25)
    _, result, kept = astropy_clip(cube, (2.0, 2.0), 10, centre, callable_centre=True)
    assert_same(combine_block(cube, "sigma_clip", kappa=2.0, maxiters=10, centre=centre),
                result, kept, cube)


@pytest.mark.parametrize("spec", CUBES)
def test_weighted_sigma_clip(spec):
    cube = make_cube(**spec)
    weights = np.random.default_rng(8).uniform(0.5, 2.0, cube.shape[0])
    clipped, _, kept = astropy_clip(cube, (2.5, 2.5), 5, "median")
    mask = np.ma.getmaskarray(clipped)
    w = np.where(mask, 0.0, weights[:, None, None])
    with np.errstate(invalid="ignore"):
        want = (w * np.where(mask, 0.0, cube)).sum(axis=0) / w.sum(axis=0)
    got = combine_block(cube, "sigma_clip", kappa=2.5, weights=weights)
    assert_same(got, want, kept, cube)


def ccd_combiner(cube, weights=None):
    from astropy.nddata import CCDData
    from ccdproc import Combiner

    frames = [CCDData(frame.astype(np.float64), unit="adu", mask=~np.isfinite(frame))
              for frame in cube]
    combiner = Combiner(frames, dtype=np.float64)
    if weights is not None:
        combiner.weights = weights
    return combiner


@pytest.mark.parametrize("spec", CUBES)
def test_sigma_clip_equals_ccdproc_combiner(spec):
    """ccdproc's average with sigma clipping (one iteration, its default)."""
    cube = make_cube(**spec)
    combiner = ccd_combiner(cube)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        combiner.sigma_clipping(low_thresh=2.0, high_thresh=2.5, func="median", dev_func="std")
        with np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            combined = combiner.average_combine()
    kept = (~combiner.data_arr.mask).sum(axis=0)
    want = np.where(kept > 0, combined.data, np.nan)
    got = combine_block(cube, "sigma_clip", kappa=(2.0, 2.5), maxiters=1)
    assert_same(got, want, kept, cube)


def test_median_and_weighted_mean_equal_ccdproc_combiner():
    cube = make_cube(12, holes=0.0, edges=False)  # ccdproc masks uncovered pixels
    weights = np.random.default_rng(9).uniform(0.5, 2.0, cube.shape[0])
    median = ccd_combiner(cube).median_combine().data
    mean = ccd_combiner(cube, weights).average_combine().data
    got = combine_block(cube, "median")
    np.testing.assert_allclose(got[0], median, rtol=2e-6)
    got = combine_block(cube, "mean", weights=weights)
    np.testing.assert_allclose(got[0], mean, rtol=2e-6)


# --------------------------------------------------------------------------
# minmax, percentile, winsorized against per-pixel loops


def minmax_reference(nlow, nhigh, weights=None):
    def reduce(values, frames):
        order = np.argsort(values, kind="stable")  # equal values: lower frame first
        k = values.size
        keep = order[nlow:k - nhigh] if k > nlow + nhigh else middle(order)
        if weights is None:
            return values[keep].mean(), keep.size
        return np.average(values[keep], weights=weights[frames[keep]]), keep.size
    return reduce


@pytest.mark.parametrize("spec", CUBES)
@pytest.mark.parametrize("nlow, nhigh", [(1, 1), (0, 2), (3, 1), (0, 0)])
def test_minmax_equals_loop(spec, nlow, nhigh):
    cube = make_cube(**spec)
    want = per_pixel(cube, minmax_reference(nlow, nhigh))
    assert_same(combine_block(cube, "minmax", nlow=nlow, nhigh=nhigh), *want, cube)


@pytest.mark.parametrize("spec", CUBES)
def test_weighted_minmax_equals_loop(spec):
    cube = make_cube(**spec)
    weights = np.random.default_rng(10).uniform(0.5, 2.0, cube.shape[0])
    want = per_pixel(cube, minmax_reference(2, 1, weights))
    assert_same(combine_block(cube, "minmax", nlow=2, nhigh=1, weights=weights), *want, cube)


def test_minmax_equals_ccdproc_clip_extrema():
    cube = make_cube(13, holes=0.0, edges=False)  # clip_extrema counts NaNs as values
    combiner = ccd_combiner(cube)
    combiner.clip_extrema(nlow=2, nhigh=3)
    want = combiner.average_combine().data
    result, kept, rejected = combine_block(cube, "minmax", nlow=2, nhigh=3)
    np.testing.assert_allclose(result, want, rtol=2e-6)
    assert (kept == cube.shape[0] - 5).all() and (rejected == 5).all()


def percentile_reference(band, weights=None):
    def reduce(values, frames):
        low, high = np.percentile(values, band)
        keep = np.flatnonzero((values >= low) & (values <= high))
        if not keep.size:
            keep = middle(np.argsort(values, kind="stable"))
        if weights is None:
            return values[keep].mean(), keep.size
        return np.average(values[keep], weights=weights[frames[keep]]), keep.size
    return reduce


@pytest.mark.parametrize("spec", CUBES)
@pytest.mark.parametrize("band", [(10.0, 90.0), (25.0, 60.0), (0.0, 100.0), (40.0, 45.0)])
def test_percentile_equals_loop(spec, band):
    cube = make_cube(**spec)
    want = per_pixel(cube, percentile_reference(band))
    assert_same(combine_block(cube, "percentile", percentile=band), *want, cube)


def test_weighted_percentile_equals_loop():
    cube = make_cube(14, ties=True)
    weights = np.random.default_rng(11).uniform(0.5, 2.0, cube.shape[0])
    want = per_pixel(cube, percentile_reference((20.0, 80.0), weights))
    assert_same(combine_block(cube, "percentile", percentile=(20, 80), weights=weights),
                *want, cube)


def winsorized_reference(kappa_low, kappa_high, maxiters, weights=None):
    """Winsorized sigma clipping, straight from the documented algorithm."""
    def reduce(values, frames):
        keep = np.ones(values.size, bool)
        for _ in range(maxiters):
            kept = values[keep]
            if not kept.size:
                break
            m = np.median(kept)
            s = np.std(kept)
            if kept.size >= 2 and s > 0:
                for _round in range(50):
                    new = 1.134 * np.std(np.clip(kept, m - 1.5 * s, m + 1.5 * s))
                    converged = abs(new - s) <= 5e-4 * s
                    s = new
                    if converged:
                        break
            now = keep & (values >= m - kappa_low * s) & (values <= m + kappa_high * s)
            if (now == keep).all():
                break
            keep = now
        if not keep.any():
            return np.nan, 0
        if weights is None:
            return values[keep].mean(), keep.sum()
        return np.average(values[keep], weights=weights[frames[keep]]), keep.sum()
    return reduce


@pytest.mark.parametrize("spec", CUBES)
@pytest.mark.parametrize("kappa, maxiters", [((3.0, 3.0), 5), ((2.0, 2.5), 3), ((1.5, 1.5), 20),
                                             ((0.8, 0.8), 5)])
def test_winsorized_equals_loop(spec, kappa, maxiters):
    cube = make_cube(**spec)
    want = per_pixel(cube, winsorized_reference(*kappa, maxiters))
    got = combine_block(cube, "winsorized", kappa=kappa, maxiters=maxiters)
    assert_same(got, *want, cube)


def test_weighted_winsorized_equals_loop():
    cube = make_cube(15)
    weights = np.random.default_rng(12).uniform(0.5, 2.0, cube.shape[0])
    want = per_pixel(cube, winsorized_reference(2.0, 2.0, 5, weights))
    assert_same(combine_block(cube, "winsorized", kappa=2.0, weights=weights), *want, cube)


# --------------------------------------------------------------------------
# trails and cosmic rays


def trail_cube(n=15, size=48, seed=21):
    """Sky + noise; a bright streak in frame 4, cosmic rays in others. Returns truth."""
    rng = np.random.default_rng(seed)
    sigma = 10.0
    cube = rng.normal(1000.0, sigma, (n, size, size)).astype(np.float32)
    hit = np.zeros(cube.shape, bool)
    ys = np.arange(size)
    for width in (0, 1):  # a two-pixel-wide diagonal streak
        xs = np.clip((0.7 * ys + 5 + width).astype(int), 0, size - 1)
        hit[4, ys, xs] = True
    cosmic = rng.random(cube.shape) < 0.004
    cosmic[4] = False
    hit |= cosmic
    cube[hit] += rng.uniform(200.0, 5000.0, hit.sum()).astype(np.float32)
    return cube, hit, sigma


def test_sigma_clip_removes_trail_and_cosmic_rays():
    cube, hit, sigma = trail_cube()
    n = cube.shape[0]
    trail = hit[4]
    clipped, kept, rejected = combine_block(cube, "sigma_clip", kappa=3.0)
    mean = combine_block(cube, "mean")[0]
    limit = 3 * sigma / np.sqrt(n)
    # the mean keeps the trail everywhere on it
    assert (np.abs(mean[trail] - 1000.0) > limit).all()
    # every trail and cosmic-ray value is rejected; few clean values are
    hits = hit.sum(axis=0)
    assert (rejected >= hits).all()
    false = rejected - hits
    assert false.sum() <= 0.005 * cube.size
    np.testing.assert_array_equal(kept + rejected, n)
    # on the trail only noise is left: where no clean value was rejected the
    # result is exactly the mean of the clean values, and the residual is
    # noise of the mean of n - 1 values (3 sigma / sqrt(n) for about all of
    # the ~100 pixels: a max over 100 noise values may pass 3 sigma, so the
    # max is held to 4)
    clean_mean = np.where(hit, np.nan, cube.astype(np.float64))
    clean_mean = np.nanmean(clean_mean, axis=0)
    exact = trail & (false == 0)
    assert exact.sum() > 0.9 * trail.sum()
    np.testing.assert_allclose(clipped[exact], clean_mean[exact], rtol=1e-6)
    residual = np.abs(clipped[trail] - 1000.0)
    assert np.mean(residual > limit) < 0.02
    assert residual.max() < 4 * sigma / np.sqrt(n)
    assert np.sqrt(np.mean(residual**2)) < 1.2 * sigma / np.sqrt(n - 1)


def test_clipping_methods_remove_trail():
    cube, hit, sigma = trail_cube(seed=22)
    trail = hit[4]
    limit = 3 * sigma / np.sqrt(cube.shape[0])
    for method, options in (("winsorized", {}), ("median", {}), ("minmax", {"nhigh": 3}),
                            ("percentile", {"percentile": (5, 80)})):
        result = combine_block(cube, method, **options)[0]
        # median, minmax and percentile are noisier than a mean of all values
        bound = limit * (1.0 if method == "winsorized" else 1.5)
        assert np.abs(result[trail] - 1000.0).max() < bound, method


def aligned_block(truth, frames):
    """The frames of a synthetic night moved onto frame 0's grid (whole-pixel shifts).

    Returns the block and, per frame, a boolean map of its trail pixels on that grid.
    """
    n = len(frames)
    ny, nx = frames[0].shape
    block = np.full((n, ny, nx), np.nan, np.float32)
    trails = np.zeros((n, ny, nx), bool)
    for i, frame in enumerate(frames):
        dx, dy = (int(v) for v in truth.shifts[i])
        ys = slice(max(0, -dy), min(ny, ny - dy))
        xs = slice(max(0, -dx), min(nx, nx - dx))
        block[i, ys, xs] = frame[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
        ty, tx = truth.trail[i]
        ty, tx = ty - dy, tx - dx
        ok = (ty >= 0) & (ty < ny) & (tx >= 0) & (tx < nx)
        trails[i, ty[ok], tx[ok]] = True
    return block, trails


def test_clipping_removes_synthetic_trails(tmp_path):
    """On the generator's frames (two crossing trails, cosmic rays): trails leave the stack.

    ``sigma_clip`` (kappa 3) is held to pixels with one trail and at least
    11 covering frames: with n values one outlier lies at most sqrt(n - 1)
    population sigmas from their mean, so nothing can be rejected from 10
    values or fewer, and two equal outliers among 15 values stay within
    2.94 sigmas of the median. ``winsorized``, whose sigma ignores the
    outliers, removes the trails everywhere, crossings and edges included.
    """
    from astropy.io import fits

    from bigstack import synthetic

    truth = synthetic.make_frames(tmp_path, n_frames=15, shape=(96, 128), seed=5,
                                  stars=synthetic.Stars(n_stars=40),
                                  artefacts=synthetic.Artefacts(trail=[3, 9]),
                                  camera=synthetic.Camera(noise="gaussian", hot_pixels=0),
                                  workers=1)
    frames = [fits.getdata(p).astype(np.float32) for p in truth.paths]
    block, trails = aligned_block(truth, frames)
    on_trail = trails.any(axis=0)
    crossings = trails.sum(axis=0) > 1
    assert crossings.any() and on_trail.sum() > 500
    bound = 3 * truth.sky_sigma
    mean = combine_block(block, "mean")[0]
    assert (np.abs(mean - truth.clean)[on_trail] > bound).mean() > 0.9

    clipped, kept, rejected = combine_block(block, "sigma_clip", kappa=3.0)
    where = on_trail & ~crossings & (coverage(block) >= 11)
    assert where.sum() > 500
    assert np.abs(clipped - truth.clean)[where].max() < bound
    assert (rejected[where] >= 1).all()

    robust, kept, rejected = combine_block(block, "winsorized", kappa=3.0)
    assert np.abs(robust - truth.clean)[on_trail].max() < bound
    assert (rejected[on_trail] >= trails.sum(axis=0)[on_trail]).all()


# --------------------------------------------------------------------------
# edge cases


@pytest.mark.parametrize("method", ALL_METHODS)
def test_empty_single_and_all_nan(method):
    empty = np.full((4, 2, 3), np.nan, np.float32)
    result, kept, rejected = combine_block(empty, method)
    assert np.isnan(result).all() and not kept.any() and not rejected.any()
    one = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    result, kept, rejected = combine_block(one, method)
    np.testing.assert_array_equal(result, one[0])
    assert (kept == 1).all() and not rejected.any()
    nothing = combine_block(np.zeros((0, 2, 3), np.float32), method)
    assert np.isnan(nothing[0]).all() and not nothing[1].any()
    flat = combine_block(np.zeros((3, 0, 5), np.float32), method)
    assert flat[0].shape == (0, 5)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_identical_frames_return_the_frame(method):
    frame = np.random.default_rng(3).normal(10, 2, (5, 6)).astype(np.float32)
    block = np.repeat(frame[None], 9, axis=0)
    result, kept, rejected = combine_block(block, method)
    want = frame * 9 if method == "sum" else frame
    np.testing.assert_allclose(result, want, rtol=1e-6)
    if method in ("mean", "sum", "median", "sigma_clip", "winsorized"):
        assert (kept == 9).all()


@pytest.mark.parametrize("method", ALL_METHODS)
def test_infinities_count_as_missing(method):
    cube = make_cube(30)
    spoiled = cube.copy()
    spoiled[2, 1:4, 2] = np.inf
    spoiled[5, 2, 1:5] = -np.inf
    cube[2, 1:4, 2] = np.nan
    cube[5, 2, 1:5] = np.nan
    got = combine_block(spoiled, method)
    want = combine_block(cube, method)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_float64_and_integer_input(method):
    cube = make_cube(31, holes=0.0, edges=False)
    want = combine_block(cube, method)
    got = combine_block(cube.astype(np.float64), method)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_array_equal(got[1], want[1])
    ints = np.random.default_rng(1).integers(0, 1000, (5, 3, 4)).astype(np.uint16)
    got = combine_block(ints, method)
    np.testing.assert_array_equal(got[1] + got[2], 5)


def test_input_is_not_modified():
    cube = make_cube(32)
    before = cube.copy()
    for method in ALL_METHODS:
        combine_block(cube, method)
    np.testing.assert_array_equal(cube, before)


@pytest.mark.parametrize("method", RANK_METHODS)
def test_chunks_do_not_change_the_result(method, monkeypatch):
    cube = make_cube(33, n=20, h=9, w=13)
    want = combine_block(cube, method)
    monkeypatch.setattr(_reject, "_CHUNK_VALUES", 20 * 7)  # 7 pixels a chunk, a ragged last
    got = combine_block(cube, method)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


def test_long_runs_of_rejections_match_astropy():
    """Pixels that lose many values in one iteration take the bisection path."""
    rng = np.random.default_rng(34)
    cube = rng.normal(0, 1, (60, 4, 5)).astype(np.float32)
    cube[:20, :2] += 50.0  # a third of the values far off in some pixels
    cube[-15:, 2:] -= 80.0
    _, result, kept = astropy_clip(cube, (2.0, 2.0), 10, "median")
    assert_same(combine_block(cube, "sigma_clip", kappa=2.0, maxiters=10), result, kept, cube)


def test_threads_give_identical_results():
    cube = make_cube(35, n=30, h=20, w=40)
    want = combine_block(cube, "sigma_clip")
    results = [None] * 4

    def run(i):
        results[i] = combine_block(cube, "sigma_clip")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results:
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------
# options and errors


@pytest.mark.parametrize("method", ["median", "sum"])
def test_weights_refused_by_median_and_sum(method):
    with pytest.raises(ValueError, match=f"weights.*method='{method}'"):
        combine_block(make_cube(1), method, weights=np.ones(15))


@pytest.mark.parametrize("method, option", [("mean", {"kappa": 2.0}),
                                            ("median", {"maxiters": 3}),
                                            ("sigma_clip", {"nlow": 1}),
                                            ("winsorized", {"centre": "mean"}),
                                            ("minmax", {"percentile": (5, 95)}),
                                            ("percentile", {"kappa": 3.0})])
def test_options_a_method_ignores_are_refused(method, option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"method='{method}' does not use {name}"):
        combine_block(make_cube(1), method, **option)


@pytest.mark.parametrize("options, match", [
    ({"method": "mode"}, "method must be one of"),
    ({"method": "sigma_clip", "kappa": 0}, "kappa must be finite and > 0"),
    ({"method": "sigma_clip", "kappa": (1, 2, 3)}, "kappa must be a number or"),
    ({"method": "sigma_clip", "centre": "mode"}, "centre must be one of"),
    ({"method": "sigma_clip", "maxiters": 0}, "maxiters must be an integer >= 1"),
    ({"method": "sigma_clip", "maxiters": 2.5}, "maxiters must be an integer"),
    ({"method": "minmax", "nlow": -1}, "nlow must be an integer >= 0"),
    ({"method": "percentile", "percentile": (90, 10)}, "0 <= low < high <= 100"),
    ({"method": "percentile", "percentile": 50}, r"percentile must be \(low, high\)"),
])
def test_bad_options(options, match):
    method = options.pop("method")
    with pytest.raises(ValueError, match=match):
        combine_block(make_cube(1), method, **options)


@pytest.mark.parametrize("weights, match", [
    (np.ones(14), r"one value per frame \(15\)"),
    (np.r_[np.ones(14), np.nan], "weight of frame 14 is not finite"),
    (np.r_[np.ones(3), -1.0, np.ones(11)], "weight of frame 3 is negative"),
    (np.zeros(15), "weights are all zero"),
])
def test_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        combine_block(make_cube(1), "mean", weights=weights)


def test_bad_block_shape():
    with pytest.raises(ValueError, match="values must be a .frame, y, x. block"):
        combine_block(np.zeros((3, 4)), "mean")


# --------------------------------------------------------------------------
# memory


def test_tile_rows_formula():
    budget = 512 * 2**20
    rows = max_rows(budget, threads=4, n_frames=400, width=2048, method="sigma_clip")
    per_row = 2048 * (400 * bytes_per_value("sigma_clip") + _reject._PIXEL_BYTES)
    assert rows == int((budget / 4 - workspace_bytes("sigma_clip", 400)) // per_row)
    assert workspace_bytes("sigma_clip") <= 16 * 2**20
    assert rows >= 1
    assert max_rows(2**20, threads=8, n_frames=400, width=2048, method="median") == 0
    with pytest.raises(ValueError, match="method must be one of"):
        bytes_per_value("mode")


@pytest.mark.parametrize("method", ALL_METHODS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("n, h, w", [(64, 32, 700), (400, 8, 400), (3, 20, 2000)])
def test_peak_memory_within_the_documented_bound(method, weighted, n, h, w):
    if weighted and method in ("median", "sum"):
        return
    cube = make_cube(36, n=n, h=h, w=w, holes=0.05)
    weights = np.linspace(0.5, 1.5, n) if weighted else None
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        combine_block(cube, method, weights=weights)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    # beyond the block itself (the caller's): the workspace and the outputs
    bound = workspace_bytes(method, n, weighted) + h * w * _reject._PIXEL_BYTES
    assert peak <= bound, (peak, bound)
