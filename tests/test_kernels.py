"""The compiled kernels of ``bigstack._kernels`` against independent references.

Warps: scipy's ``map_coordinates`` / ``affine_transform`` (orders 0 and 1) on
whole frames for nearest and bilinear, and a plain numpy Lanczos written here
(scipy has none). Windows: reading only the rows ``source_window`` names must
give exactly what reading the whole frame gives, at every edge. Rejection:
``_reject.combine_block``, astropy's ``sigma_clip`` and ``np.nanmedian``.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
from astropy.stats import sigma_clip
from astropy.utils.exceptions import AstropyUserWarning
from scipy import ndimage

from bigstack import _kernels, _reject
from bigstack._kernels import reject_block, source_window, warp_accumulate, warp_values

from .helpers import (
    about_centre,
    lanczos_kernel,
    reference_pixels,
    reference_scipy,
    rotation,
    source_points,
)

INTERPOLATIONS = ("nearest", "bilinear", "lanczos3", "lanczos4")


# --------------------------------------------------------------------------
# references


def warped(frame, A, t, band, interpolation, rows=None, total_dtype=np.float32, **kwargs):
    """``warp_accumulate`` of a frame into an empty band ``(y0, h, x0, w)``: values (NaN
    where not covered) and coverage. ``rows``: read only frame rows ``[r0, r1)``."""
    y0, h, x0, w = band
    total = np.zeros((h, w), total_dtype)
    coverage = np.zeros((h, w), np.int32)
    r0, r1 = (0, frame.shape[0]) if rows is None else rows
    warp_accumulate(frame[r0:r1], r0, frame.shape, A, t, (y0, x0), total, coverage,
                    interpolation, **kwargs)
    assert coverage.max(initial=0) <= 1
    return np.where(coverage > 0, total, np.nan), coverage


def assert_matches(got, want, rtol=2e-5):
    """Same coverage (NaN pattern) and values within float32 interpolation rounding."""
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    scale = max(float(np.nanmax(np.abs(want), initial=0.0)), 1.0)
    np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=rtol,
                               atol=rtol * scale)


def frame_of(shape, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    smooth = 100 + 20 * np.sin(xx / 3.0) * np.cos(yy / 4.0)
    return (smooth + rng.normal(0, 5, shape)).astype(dtype)


GEOMETRIES = [
    pytest.param(np.eye(2), (0.37, -1.62), id="shift"),
    pytest.param(np.eye(2), (3.0, -2.0), id="integer-shift"),
    pytest.param(rotation(1.0), (0.3, 0.2), id="1deg"),
    pytest.param(rotation(-7.0, 1.01), (-0.4, 0.7), id="-7deg-scaled"),
    pytest.param(rotation(45.0), (0.1, 0.2), id="45deg"),
    pytest.param(rotation(90.0), (0.25, 0.0), id="90deg"),
    pytest.param(rotation(-91.5), (0.0, 0.4), id="-91.5deg"),
    pytest.param(rotation(180.0), (0.0, 0.0), id="180deg"),
    pytest.param(rotation(179.0), (0.6, -0.3), id="179deg"),
    pytest.param(rotation(0.0, flip=True), (0.2, 0.0), id="mirror-x"),
    pytest.param(rotation(30.0, 0.7), (1.0, 0.5), id="30deg-shrunk"),
]


# --------------------------------------------------------------------------
# warps against scipy and the numpy Lanczos


@pytest.mark.parametrize("A, shift", GEOMETRIES)
@pytest.mark.parametrize("interpolation, order", [("nearest", 0), ("bilinear", 1)])
def test_warp_equals_scipy(A, shift, interpolation, order):
    shape = (37, 45)
    frame = frame_of(shape)
    t = about_centre(A, shape, shift)
    want, covered = reference_scipy(frame, A, t, -3, 43, -2, 50, order)
    got, coverage = warped(frame, A, t, (-3, 43, -2, 50), interpolation)
    np.testing.assert_array_equal(coverage > 0, covered)
    assert_matches(got, np.where(covered, want, np.nan))


@pytest.mark.parametrize("order", [0, 1])
def test_affine_transform_convention(order):
    """scipy's ``affine_transform`` works in (row, column): its matrix is A reversed."""
    shape = (30, 41)
    frame = frame_of(shape, seed=3).astype(np.float64)
    A = rotation(12.0, 0.97)
    t = about_centre(A, shape, (0.3, -0.8))
    matrix = A[::-1, ::-1]
    offset = t[::-1]
    want = ndimage.affine_transform(frame, matrix, offset, output_shape=shape, order=order,
                                    mode="nearest")
    _, covered = reference_scipy(frame, A, t, 0, shape[0], 0, shape[1], order)
    got, _ = warped(frame, A, t, (0, shape[0], 0, shape[1]),
                    "nearest" if order == 0 else "bilinear")
    assert_matches(got, np.where(covered, want, np.nan))


@pytest.mark.parametrize("A, shift", GEOMETRIES)
@pytest.mark.parametrize("interpolation", ["lanczos3", "lanczos4"])
@pytest.mark.parametrize("clamp", [True, False])
def test_lanczos_equals_numpy(A, shift, interpolation, clamp):
    shape = (23, 29)
    frame = frame_of(shape, seed=2)
    frame[11, 14] += 400.0  # a hot pixel: the clamp has work
    t = about_centre(A, shape, shift)
    band = (-2, 27, -3, 34)
    want = reference_pixels(frame, A, t, *band, interpolation, clamp)
    got, _ = warped(frame, A, t, band, interpolation, clamp=clamp)
    assert_matches(got, want)


def _warp_square(image, A, t, interpolation, clamp):
    n = image.shape[0]
    total = np.zeros((n, n), np.float32)
    coverage = np.zeros((n, n), np.int32)
    warp_accumulate(image.astype(np.float32), 0, (n, n), A, t, (0, 0), total, coverage,
                    interpolation, clamp=clamp)
    return np.where(coverage > 0, total, np.nan).astype(np.float64)


@pytest.mark.parametrize("A", [np.eye(2), rotation(1.0)], ids=["shift", "1deg"])
def test_lanczos_clamp_keeps_the_flux_of_stars(A):
    """Stars of FWHM >= 2 px keep their unclamped flux to 1e-3 (the 2 x 2 clamp this
    replaced lost 0.6% on average and up to 3.4% at FWHM 2; issue 13)."""
    n = 40
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    rng = np.random.default_rng(5)
    for fwhm in (2.0, 2.5, 3.0):
        sigma = fwhm / 2.3548
        for _ in range(12):
            sx, sy = 19.5 + rng.uniform(-0.5, 0.5, 2)
            t = np.array([19.5, 19.5]) - A @ [19.5, 19.5] + rng.uniform(-0.5, 0.5, 2)
            star = 100 + 5000 * np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * sigma**2))
            inner = (slice(8, -8), slice(8, -8))
            raw = _warp_square(star, A, t, "lanczos3", False)[inner] - 100
            got = _warp_square(star, A, t, "lanczos3", True)[inner] - 100
            assert abs(got.sum() / raw.sum() - 1) < 1e-3, (fwhm, sx, sy, t)


@pytest.mark.parametrize("interpolation", ["lanczos3", "lanczos4"])
def test_lanczos_clamp_stops_the_rings_of_a_hot_pixel(interpolation):
    """A hot pixel of 10000 on 100: unclamped, a dark ring down to about -1300 and a bright
    one up to about +400 (+700 for Lanczos-4); clamped, what is left of the dark ring is
    under 1% of the hot pixel's height, and nothing is left of the ring its outer lobe
    makes (pixels whose inner 4 x 4 taps miss it). The pixels around it whose 2 x 2
    holds it are its own light."""
    n = 48
    yy, xx = np.mgrid[:n, :n].astype(np.float64)
    rng = np.random.default_rng(4)
    deepest, outer_max, raw_min = np.inf, -np.inf, np.inf
    for k in range(16):
        A = np.eye(2) if k % 2 == 0 else rotation(1.0)
        t = np.array([0.5, 0.5]) if k == 0 else rng.uniform(-0.5, 0.5, 2)
        if k % 2:
            t = t + np.array([24.0, 24.0]) - A @ [24.0, 24.0]
        image = np.full((n, n), 100.0)
        image[24, 24] = 10000.0
        got = _warp_square(image, A, t, interpolation, True)
        raw = _warp_square(image, A, t, interpolation, False)
        p = np.stack([xx, yy], axis=-1) @ A.T + t
        fx, fy = np.floor(p[..., 0]), np.floor(p[..., 1])
        off2 = ~(np.isin(fx, [23, 24]) & np.isin(fy, [23, 24]))
        off4 = ~((np.abs(fx - 23.5) < 2) & (np.abs(fy - 23.5) < 2))
        deepest = min(deepest, np.nanmin(got[off2]))
        raw_min = min(raw_min, np.nanmin(raw[off2]))
        outer_max = max(outer_max, np.nanmax(got[off4]))
    assert raw_min < -700
    assert deepest >= 100 - 0.01 * 9900 - 0.01
    assert outer_max <= 100 + 1e-3


def test_lanczos_weights_are_accurate_and_sum_to_one():
    f = np.linspace(0, 1, 1001, endpoint=False)
    for a in (3, 4):
        got = _kernels.lanczos_weights(f, a)
        d = f[:, None] - np.arange(-a + 1, a + 1)[None, :]
        want = lanczos_kernel(d, a)
        want /= want.sum(axis=1, keepdims=True)
        assert np.abs(got - want).max() < 1e-6
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(got[0], np.eye(2 * a)[a - 1])  # f = 0: the pixel


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_integer_shift_copies_exactly(interpolation):
    frame = frame_of((20, 24), seed=4)
    got, coverage = warped(frame, np.eye(2), (2.0, -3.0), (0, 20, 0, 24), interpolation)
    want = np.full((20, 24), np.nan, np.float32)
    want[3:, :22] = frame[:17, 2:]
    np.testing.assert_array_equal(got, want)


def test_half_pixel_rounds_up_also_when_flipped():
    """``floor(s + 0.5)`` on both sides of a 180 degree flip (mirrored internally)."""
    frame = frame_of((9, 12), seed=5)
    for A in (np.eye(2), rotation(180.0), rotation(0.0, flip=True)):
        t = np.array([0.5, 0.5]) + (np.array([11.0, 8.0]) if A[0, 0] < 0 else 0.0)
        t[1] = 0.5 if A[1, 1] > 0 else 8.5
        got, _ = warped(frame, A, t, (0, 9, 0, 12), "nearest")
        want = reference_pixels(frame, A, t, 0, 9, 0, 12, "nearest")
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("interpolation", ["bilinear", "lanczos3"])
def test_shift_path_equals_mirrored_general_path(interpolation):
    """The constant-weight path (A = I) against the general one on the mirrored frame."""
    frame = frame_of((25, 31), seed=6)
    t = np.array([0.35, -1.7])
    band = (0, 25, 0, 31)
    direct, _ = warped(frame, np.eye(2), t, band, interpolation)
    flipped = np.ascontiguousarray(frame[:, ::-1])
    A = np.array([[-1.0, 0.0], [0.0, 1.0]])
    mirrored, _ = warped(flipped, A, np.array([30 - t[0], t[1]]), band, interpolation)
    assert_matches(direct, mirrored, rtol=1e-6)


# --------------------------------------------------------------------------
# windows: the rows a band needs, at every edge

WINDOW_CASES = [
    # (frame shape, A, shift, band (y0, h, x0, w))
    ((1, 1), np.eye(2), (0.0, 0.0), (0, 1, 0, 1)),
    ((2, 3), np.eye(2), (0.5, 0.5), (-1, 3, -1, 5)),
    ((3, 2), rotation(180.0), (0.0, 0.0), (0, 3, 0, 2)),
    ((5, 7), rotation(90.0), (0.3, 0.0), (1, 1, 0, 7)),
    ((9, 9), rotation(45.0), (0.0, 0.0), (0, 9, 0, 9)),
    ((9, 9), rotation(45.0), (0.0, 0.0), (4, 1, 0, 9)),
    ((16, 40), rotation(1.0), (0.4, 0.6), (5, 3, 0, 40)),
    ((16, 40), rotation(181.0), (-0.4, 0.6), (14, 6, 0, 40)),
    ((16, 40), rotation(-89.0), (0.2, 0.1), (0, 16, 12, 16)),
    ((16, 40), np.eye(2), (0.3, 14.8), (0, 4, 0, 40)),  # band mostly outside the frame
    ((16, 40), np.eye(2), (0.3, 30.0), (0, 4, 0, 40)),  # wholly outside
    ((16, 40), np.eye(2), (0.3, -15.2), (0, 1, 0, 40)),  # 1-row band at the last row
    ((16, 40), rotation(3.0, 1.2), (-2.5, -6.0), (0, 16, -10, 60)),
    ((12, 10), rotation(0.0, flip=True), (0.0, 0.0), (11, 3, -2, 14)),
]


def needed_rows(frame, A, t, band, interpolation, zero_weights=False):
    """Brute force: the frame rows holding a tap with a non-zero weight (every tap with
    ``zero_weights``) of a pixel the frame covers."""
    ny, nx = frame.shape
    sx, sy = source_points(A, t, *band)
    rows = set()
    for x, y in zip(sx.ravel(), sy.ravel(), strict=True):
        if interpolation == "nearest":
            iy, ix = math.floor(y + 0.5), math.floor(x + 0.5)
            if 0 <= iy < ny and 0 <= ix < nx:
                rows.add(iy)
            continue
        if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
            continue
        iy = math.floor(y)
        a = 1 if interpolation == "bilinear" else int(interpolation[-1])
        lo, hi = (0, 1) if a == 1 else (-a + 1, a)
        for k in range(lo, hi + 1):
            if k != 0 and y == iy and not zero_weights:
                continue
            rows.add(min(max(iy + k, 0), ny - 1))
    return (min(rows), max(rows) + 1) if rows else None


@pytest.mark.parametrize("shape, A, shift, band", WINDOW_CASES)
@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_window_rows_give_the_whole_frame_result(shape, A, shift, band, interpolation):
    frame = frame_of(shape, seed=7)
    t = about_centre(A, shape, shift)
    y0, h, x0, w = band
    r0, r1, c0, c1 = source_window(A, t, shape, (y0, y0 + h), (x0, x0 + w), interpolation)
    whole, coverage = warped(frame, A, t, band, interpolation)
    need = needed_rows(frame, A, t, band, interpolation)
    if need is None:
        assert r0 == r1 and not coverage.any()
        return
    # the window holds what is needed, and not much more: at most a row beyond every tap
    # (the footprint is a continuous polygon)
    assert r0 <= need[0] and r1 >= need[1]
    every = needed_rows(frame, A, t, band, interpolation, zero_weights=True)
    assert r0 >= every[0] - 1 and r1 <= every[1] + 1
    assert 0 <= c0 < c1 <= shape[1]
    part, _ = warped(frame, A, t, band, interpolation, rows=(r0, r1))
    np.testing.assert_array_equal(part, whole)
    if r1 - r0 < shape[0]:  # one row fewer is refused, not silently wrong
        with pytest.raises(ValueError, match="do not hold the rows"):
            warped(frame, A, t, band, interpolation, rows=(r0 + 1, r1))


def test_window_of_band_outside_is_empty():
    assert source_window(np.eye(2), (0.0, 100.0), (50, 60), (0, 10), (0, 60)) == (0, 0, 0, 0)
    total = np.zeros((10, 60), np.float32)
    coverage = np.zeros((10, 60), np.int32)
    warp_accumulate(np.zeros((0, 60), np.uint16), 0, (50, 60), np.eye(2), (0.0, 100.0), (0, 0),
                    total, coverage)
    assert not coverage.any()


# --------------------------------------------------------------------------
# stored data, NaN and BLANK, weights, modes


@pytest.mark.parametrize("dtype, scale, zero", [(">i2", 1.0, 32768.0), ("<i2", 1.0, 0.0),
                                                ("u1", 2.0, -5.0), (">i4", 0.5, 10.0),
                                                (">f4", 1.0, 0.0), ("<f8", 1.0, 0.0),
                                                ("<u2", 1.0, 0.0)])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
def test_stored_rows_are_converted(dtype, scale, zero, interpolation):
    rng = np.random.default_rng(8)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1e3, 1e3)
    stored = rng.uniform(lo, hi, (21, 26)).astype(dtype)
    physical = stored.astype(np.float64) * scale + zero
    A = rotation(2.0)
    t = about_centre(A, stored.shape, (0.3, 0.1))
    got, _ = warped(stored, A, t, (0, 21, 0, 26), interpolation, scale=scale, zero=zero)
    order = 0 if interpolation == "nearest" else 1
    want, covered = reference_scipy(physical, A, t, 0, 21, 0, 26, order)
    assert_matches(got, np.where(covered, want, np.nan), rtol=1e-6)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
@pytest.mark.parametrize("A, shift", [
    pytest.param(np.eye(2), (0.4, 0.3), id="shift"),
    pytest.param(np.eye(2), (1.0, 0.3), id="integer-x"),
    pytest.param(rotation(180.0), (1.0, -2.0), id="180deg-integer"),
    pytest.param(rotation(4.0), (0.3, 0.2), id="4deg"),
])
def test_nan_and_blank_uncover_only_through_nonzero_weights(interpolation, A, shift):
    shape = (19, 23)
    frame = frame_of(shape, seed=9)
    frame[7, 9] = np.nan
    frame[12:14, 3] = np.nan
    frame[0, 20] = np.inf
    t = about_centre(A, shape, shift)
    want = reference_pixels(np.where(np.isfinite(frame), frame, np.nan), A, t, 0, 19, 0, 23,
                            interpolation)
    got, _ = warped(frame, A, t, (0, 19, 0, 23), interpolation)
    assert_matches(got, want)
    holes = ~np.isfinite(frame)  # the same holes as BLANK integers
    stored = np.round(np.where(holes, -99.9, frame) * 10).astype(">i2")
    got, _ = warped(stored, A, t, (0, 19, 0, 23), interpolation, scale=0.1, blank=-999)
    physical = np.where(stored == -999, np.nan, stored.astype(np.float64) * 0.1)
    want = reference_pixels(physical, A, t, 0, 19, 0, 23, interpolation)
    assert_matches(got, want)


@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "lanczos3"])
def test_weights_accumulate_into_float64(interpolation):
    shape = (17, 22)
    frames = [frame_of(shape, seed=s) for s in range(3)]
    transforms = [(np.eye(2), (0.3, 0.6)), (rotation(2.0), (0.1, -0.4)),
                  (rotation(-178.0), (0.0, 0.2))]
    weights = [0.5, 2.0, 1.25]
    total = np.zeros(shape, np.float64)
    coverage = np.zeros(shape, np.int32)
    wsum = np.zeros(shape, np.float64)
    want_total = np.zeros(shape)
    want_cov = np.zeros(shape, int)
    want_w = np.zeros(shape)
    for frame, (A, shift), wt in zip(frames, transforms, weights, strict=True):
        t = about_centre(A, shape, shift)
        warp_accumulate(frame, 0, shape, A, t, (0, 0), total, coverage, interpolation,
                        weight=wt, weight_sum=wsum)
        ref = reference_pixels(frame, A, t, 0, shape[0], 0, shape[1], interpolation)
        ok = ~np.isnan(ref)
        want_total[ok] += wt * ref[ok]
        want_cov += ok
        want_w += wt * ok
    np.testing.assert_array_equal(coverage, want_cov)
    np.testing.assert_allclose(wsum, want_w, rtol=1e-12)
    np.testing.assert_allclose(total, want_total, rtol=2e-5, atol=2e-3)


@pytest.mark.parametrize("interpolation", INTERPOLATIONS)
def test_values_mode_stores_what_accumulate_adds(interpolation):
    shape = (15, 19)
    frame = frame_of(shape, seed=10)
    frame[5, 5] = np.nan
    A = rotation(-3.0)
    t = about_centre(A, shape, (0.2, 0.3))
    added, _ = warped(frame, A, t, (0, 15, 0, 19), interpolation)
    out = np.full(shape, 7.0, np.float32)  # every pixel is set, NaN where not covered
    warp_values(frame, 0, shape, A, t, (0, 0), out, interpolation)
    np.testing.assert_array_equal(out, added)
    assert np.isnan(out).any()


def test_bad_arguments_are_refused():
    frame = frame_of((5, 6))
    total, coverage = np.zeros((5, 6), np.float32), np.zeros((5, 6), np.int32)
    with pytest.raises(ValueError, match="interpolation must be one of"):
        warp_accumulate(frame, 0, (5, 6), np.eye(2), (0, 0), (0, 0), total, coverage, "cubic")
    with pytest.raises(ValueError, match="singular"):
        warp_accumulate(frame, 0, (5, 6), np.zeros((2, 2)), (0, 0), (0, 0), total, coverage)
    with pytest.raises(ValueError, match="coverage must be int32"):
        warp_accumulate(frame, 0, (5, 6), np.eye(2), (0, 0), (0, 0), total, total)
    with pytest.raises(ValueError, match="weight_sum"):
        warp_accumulate(frame, 0, (5, 6), np.eye(2), (0, 0), (0, 0), total, coverage, weight=2.0)
    with pytest.raises(ValueError, match="full frame rows"):
        warp_accumulate(frame[:, :3], 0, (5, 6), np.eye(2), (0, 0), (0, 0), total, coverage)


def test_threads_give_identical_results():
    shape = (64, 300)
    frame = frame_of(shape, seed=11)
    A = rotation(1.0)
    t = about_centre(A, shape, (0.3, 0.2))
    results = {}

    def run(key):
        got, _ = warped(frame, A, t, (0, 64, 0, 300), "lanczos3")
        results[key] = got

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for k in range(1, 4):
        np.testing.assert_array_equal(results[k], results[0])


def test_kernels_are_cached_and_release_the_gil():
    from numba.core.dispatcher import Dispatcher

    kernels = [v for v in vars(_kernels).values() if isinstance(v, Dispatcher)]
    assert len(kernels) > 10
    for kernel in kernels:
        assert kernel.targetoptions.get("nogil"), kernel.py_func.__name__
        assert type(kernel._cache).__name__ != "NullCache", kernel.py_func.__name__


# --------------------------------------------------------------------------
# rejection against _reject.combine_block, astropy and numpy


def block_of(n, h=3, w=70, seed=0, holes=0.1, ties=False):
    """A block with outliers, NaN holes, an all-NaN pixel, infinities and ties."""
    rng = np.random.default_rng(seed)
    if ties:
        block = rng.integers(95, 106, (n, h, w)).astype(np.float32)
    else:
        block = rng.normal(100.0, 5.0, (n, h, w)).astype(np.float32)
    hit = rng.random(block.shape) < 0.05
    block[hit] += rng.choice([-1.0, 1.0], hit.sum()) * rng.uniform(20, 400, hit.sum())
    block[rng.random(block.shape) < holes] = np.nan
    block[:, 0, 0] = np.nan
    if n > 2:
        block[0, 0, 1] = np.inf
        block[1, 0, 2] = -np.inf
    return block


SIZES = [1, 2, 3, 10, 65, 400]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("ties", [False, True])
def test_median_equals_numpy_and_combine_block(n, ties):
    block = block_of(n, ties=ties, seed=n)
    result, kept, rejected = reject_block(block, "median")
    finite = np.where(np.isfinite(block), block, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        want = np.nanmedian(finite.astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_array_equal(result, want)
    np.testing.assert_array_equal(kept, np.isfinite(block).sum(axis=0))
    assert not rejected.any()
    ref = _reject.combine_block(block, "median")
    for a, b in zip((result, kept, rejected), ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_median_of_values_spread_over_many_orders_of_magnitude():
    # interpolating the rank in a bracket stalls on such values (one huge value skews the
    # splitter to one end); the bisection in float order every few passes still ends the
    # search at the exact value
    rng = np.random.default_rng(7)
    block = (rng.lognormal(0.0, 12.0, (400, 2, 64)) * rng.choice([-1, 1], (400, 2, 64)))
    block = block.astype(np.float32)
    block[rng.random(block.shape) < 0.02] = 3e38
    block[:, 1, :5] = np.float32(1e-42)  # subnormal ties
    block[:7, 1, 3] = np.float32(-1e-42)
    result, kept, _ = reject_block(block, "median")
    want = np.median(block.astype(np.float64), axis=0).astype(np.float32)
    np.testing.assert_array_equal(result, want)
    assert (kept == 400).all()


def astropy_clip(block, kappa, maxiters, centre):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AstropyUserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        finite = np.where(np.isfinite(block), block, np.nan).astype(np.float64)
        clipped = sigma_clip(finite, axis=0, sigma_lower=kappa[0], sigma_upper=kappa[1],
                             maxiters=maxiters, cenfunc=centre, stdfunc="std", masked=True)
    kept = (~np.ma.getmaskarray(clipped)).sum(axis=0)
    result = np.ma.mean(clipped, axis=0).filled(np.nan)
    return np.where(kept > 0, result, np.nan), kept


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kappa, maxiters, centre", [((3.0, 3.0), 5, "median"),
                                                     ((2.0, 2.5), 10, "median"),
                                                     ((1.5, 1.5), 3, "mean")])
@pytest.mark.parametrize("ties", [False, True])
def test_sigma_clip_equals_astropy_and_combine_block(n, kappa, maxiters, centre, ties):
    block = block_of(n, ties=ties, seed=100 + n)
    got = reject_block(block, "sigma_clip", kappa=kappa, maxiters=maxiters, centre=centre)
    want, kept = astropy_clip(block, kappa, maxiters, centre)
    np.testing.assert_array_equal(got[1], kept)
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    ref = _reject.combine_block(block, "sigma_clip", kappa=kappa, maxiters=maxiters,
                                centre=centre)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kappa, maxiters", [((3.0, 3.0), 5), ((1.5, 2.0), 20), ((0.8, 0.8), 5)])
@pytest.mark.parametrize("ties", [False, True])
def test_winsorized_equals_combine_block(n, kappa, maxiters, ties):
    block = block_of(n, ties=ties, seed=200 + n)
    got = reject_block(block, "winsorized", kappa=kappa, maxiters=maxiters)
    ref = _reject.combine_block(block, "winsorized", kappa=kappa, maxiters=maxiters)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_array_equal(got[2], ref[2])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)


@pytest.mark.parametrize("method", ["sigma_clip", "winsorized"])
def test_weighted_final_mean(method):
    block = block_of(30, seed=12)
    weights = np.random.default_rng(13).uniform(0.0, 2.0, 30)
    weights[3] = 0.0
    got = reject_block(block, method, weights=weights)
    ref = _reject.combine_block(block, method, weights=weights)
    np.testing.assert_array_equal(got[1], ref[1])
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)


def test_load_tiles_equals_numpy():
    """Tiles of 64 pixels, four loaded at once: each tile is the pixels' values frame by
    frame (plain numpy transpose), NaN for infinities, beyond the block and the frames."""
    block = block_of(6, h=2, w=150, seed=4)  # 300 pixels: a group of 4 tiles, then 1
    flat = block.reshape(6, -1)
    tiles = np.full((4, 8, 64), 7.0, np.float32)
    for q0 in (0, 256):
        g = min(256, flat.shape[1] - q0)
        _kernels._load_tiles(flat, q0, g, tiles)
        want = np.full((8, 4 * 64), np.nan, np.float32)
        want[:6, :g] = flat[:, q0:q0 + g]
        want[~np.isfinite(want)] = np.nan
        want = want.reshape(8, 4, 64).transpose(1, 0, 2)
        np.testing.assert_array_equal(tiles, want)


@pytest.mark.parametrize("method", ["median", "sigma_clip"])
def test_rejection_across_load_groups_and_clean_pixels(method):
    """Blocks of several load groups (4 tiles of 64 pixels) with a partial last one, and
    pixels without outliers, where sigma_clip's first iteration already rejects nothing
    (the pass that would only confirm it is skipped): numpy / astropy references."""
    rng = np.random.default_rng(21)
    block = rng.normal(100.0, 5.0, (40, 5, 121)).astype(np.float32)
    # half 99, half 101 in a random order: every value 1 sigma from the median
    block[:, 2:] = rng.permuted(np.repeat([[[99.0]], [[101.0]]], 20, axis=0)
                                * np.ones((1, 3, 121)), axis=0)
    block[:, 4, 7] = 42.0  # identical values: std 0
    block[3, 0, 5] = 1e4
    got = reject_block(block, method)
    if method == "median":
        want = np.median(block.astype(np.float64), axis=0).astype(np.float32)
        np.testing.assert_array_equal(got[0], want)
        assert (got[1] == 40).all()
    else:
        want, kept = astropy_clip(block, (3.0, 3.0), 5, "median")
        np.testing.assert_array_equal(got[1], kept)
        np.testing.assert_allclose(got[0], want, rtol=1e-6)
        assert got[1][0, 5] < 40 and (got[1][2:] == 40).all()


def _stored_case(seed, dtype, n=23, h=7, frame_cols=310, width=300):
    """Stored rows of ``dtype`` and per-frame windows, and the float32 block numpy makes of
    them: each frame's window of stored values times its scale plus its zero, NaN outside
    the window and at its BLANK."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    stored = rng.integers(info.min, int(info.max) + 1, (n, h, frame_cols)).astype(dtype)
    stored[:, :, :40] = stored[:, :, :40] // 64  # ties and clusters for the selection
    geometry = []
    for k in range(n):
        oy = int(rng.integers(0, 3))
        ny = 0 if k == 4 else int(rng.integers(1, h - oy + 1))  # frame 4 misses the tile
        ox = 0 if k % 3 else int(rng.integers(0, 60))
        nx = width - ox - (0 if k % 5 else int(rng.integers(0, 90)))
        geometry.append((oy, ny, ox, nx, int(rng.integers(-ox, frame_cols - ox - nx + 1))))
    geometry = np.array(geometry)
    scale = rng.uniform(0.5, 2.0, n)
    zero = rng.uniform(-100.0, 40000.0, n)
    blank = [int(stored[k, 1, 50 + k]) if k % 4 == 1 else None for k in range(n)]
    block = np.full((n, h, width), np.nan, np.float32)
    for k, (oy, ny, ox, nx, shift) in enumerate(geometry):
        values = stored[k, oy:oy + ny, ox + shift:ox + shift + nx]
        out = values.astype(np.float32) * np.float32(scale[k]) + np.float32(zero[k])
        if blank[k] is not None:
            out[values == blank[k]] = np.nan
        block[k, oy:oy + ny, ox:ox + nx] = out
    return stored, geometry, scale, zero, blank, block


@pytest.mark.parametrize("dtype", [">i2", "<i2", ">u2", "u1"])
@pytest.mark.parametrize("method,options", [("median", {}), ("sigma_clip", {"kappa": 2.0}),
                                            ("sigma_clip", {"weights": "w"}),
                                            ("winsorized", {"kappa": 1.5})])
def test_reject_stored_equals_reject_block_of_the_converted_values(dtype, method, options):
    # the stored rows converted as the kernel loads them: the float32 block's results, bit
    # for bit, whatever the byte order, with windows that cover part of a tile's rows and
    # columns, a frame that misses the tile, and BLANK values
    from bigstack._kernels import reject_stored

    stored, geometry, scale, zero, blank, block = _stored_case(7, np.dtype(dtype))
    if options.get("weights") == "w":
        options = {"weights": np.linspace(0.2, 3.0, len(block))}
    want = reject_block(block, method, **options)
    got = reject_stored(stored, geometry, block.shape[2], method, scale=scale, zero=zero,
                        blank=blank, **options)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
    assert np.isnan(block[4]).all() and (got[1] < len(block)).any()


def test_reject_stored_refuses_windows_outside_its_block():
    from bigstack._kernels import reject_stored

    stored, geometry, scale, zero, _, _ = _stored_case(8, np.dtype(">i2"))
    geometry[3, 4] = stored.shape[2]  # past the stored row's end
    with pytest.raises(ValueError, match="frame 3's window"):
        reject_stored(stored, geometry, 300, "median", scale=scale, zero=zero)
    with pytest.raises(ValueError, match="8/16-bit integers"):
        reject_stored(stored.astype(np.float32), geometry, 300, "median", scale=scale,
                      zero=zero)


def test_rejection_options_are_validated_like_combine_block():
    block = block_of(5)
    with pytest.raises(ValueError, match="does not use kappa"):
        reject_block(block, "median", kappa=3)
    with pytest.raises(ValueError, match="weights cannot be used"):
        reject_block(block, "median", weights=np.ones(5))
    with pytest.raises(ValueError, match="reject_block computes"):
        reject_block(block, "mean")
    with pytest.raises(ValueError, match="kappa must be finite"):
        reject_block(block, "sigma_clip", kappa=-1)


# ---- the gather of a rejection tile


@pytest.mark.parametrize("dtype", [">i2", ">u2", "<i2", "u1", ">f4", "<f4", ">f8"])
def test_gather_rows_equals_numpy(dtype):
    """A window of a tile's plane from stored rows: numpy's float32 multiply and add of the
    same rows (what the gather did before the kernel), NaN for BLANK and non-finite values;
    the rest of the plane untouched."""
    rng = np.random.default_rng(11)
    shape = (5, 40)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        stored = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
        blank = int(stored[1, 7])
    else:
        stored = rng.normal(100, 30, shape).astype(dtype)
        stored[1, 9], stored[3, 12], stored[4, 30] = np.nan, np.inf, -np.inf
        blank = None
    scale, zero = (1.0, 32768.0) if dtype == ">i2" else (1.0 if dtype == ">f8" else 0.75,
                                                         -3.5)
    assert _kernels.gathers(stored.dtype, scale)
    plane = np.full((7, 50), -1.0, np.float32)
    window = (slice(1, 6), slice(4, 34))
    _kernels.gather_rows(stored, 3, plane, window, scale=scale, zero=zero, blank=blank)
    block = stored[:, 3:33]
    want = np.empty((5, 30), np.float32)
    np.multiply(block, np.float32(scale), out=want, casting="unsafe")
    want += np.float32(zero)
    if blank is not None:
        want[block == blank] = np.nan
    if info is None:
        want[~np.isfinite(block)] = np.nan
    np.testing.assert_array_equal(plane[window], want)
    outside = np.ones(plane.shape, bool)
    outside[window] = False
    assert (plane[outside] == -1).all()
    # the tile's own use: the rest of the plane NaN in the same pass
    _kernels.gather_rows(stored, 3, plane, window, scale=scale, zero=zero, blank=blank,
                         nan_outside=True)
    np.testing.assert_array_equal(plane[window], want)
    assert np.isnan(plane[outside]).all()
    with pytest.raises(ValueError, match="do not fill the window"):
        _kernels.gather_rows(stored, 20, plane, window)


def test_gathers_only_what_numpy_converts_in_float32():
    assert _kernels.gathers(">i2") and _kernels.gathers("u1") and _kernels.gathers(">f4")
    assert _kernels.gathers("<f8", 1.0) and not _kernels.gathers("<f8", 0.5)
    assert not _kernels.gathers(">i4") and not _kernels.gathers("i1")


# ---- calibration


@pytest.mark.parametrize("dtype", [">i2", ">u2", "<i2", ">i4", ">f4", "<f8", "u1"])
def test_calibrate_rows_equals_numpy(dtype):
    from bigstack._kernels import calibrate_rows

    rng = np.random.default_rng(5)
    shape = (7, 13)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is not None:
        stored = rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype)
    else:
        stored = rng.normal(100, 30, shape).astype(dtype)
        stored[1, 2], stored[3, 4] = np.nan, np.inf
    scale, zero = (1.0, 32768.0) if dtype == ">i2" else (0.5, 3.0)
    blank = int(stored[2, 5]) if info is not None else None
    bias = rng.normal(300, 5, shape).astype(np.float32)
    dark = rng.normal(2, 1, shape).astype(np.float32)
    inv_flat = (1 / rng.uniform(0.5, 1.5, shape)).astype(np.float32)
    out = np.empty(shape, np.float32)
    calibrate_rows(stored, out, scale=scale, zero=zero, blank=blank, bias=bias, dark=dark,
                   k=1.5, inv_flat=inv_flat)
    # numpy reference, the same float32 operations in the same order
    want = stored.astype(np.float32) * np.float32(scale) + np.float32(zero)
    want = (want - bias - np.float32(1.5) * dark) * inv_flat
    if blank is not None:
        want[stored == blank] = np.nan
    want[~np.isfinite(want)] = np.nan
    np.testing.assert_allclose(out, want, rtol=2e-7, atol=1e-6)
    assert np.array_equal(np.isnan(out), np.isnan(want))
    # masters are optional
    calibrate_rows(stored, out, scale=scale, zero=zero)
    plain = stored.astype(np.float32) * np.float32(scale) + np.float32(zero)
    plain[~np.isfinite(plain)] = np.nan  # no BLANK given: the stored value counts
    np.testing.assert_allclose(out, plain, rtol=2e-7, atol=1e-6)


@pytest.mark.parametrize("base", [False, True])
@pytest.mark.parametrize("clean", [False, True])
@pytest.mark.parametrize("replace", ["median", "nan", None])
def test_add_calibrated_equals_numpy(replace, clean, base):
    """The fused calibrate-and-add of a group of frames against numpy, frame by frame: the
    calibration formula, the bad pixels' neighbour median (bigstack._calibrate._repair,
    numpy) and a masked add, for frames of their own windows, BLANK, dark factor and gain;
    with ``clean`` the rows of finite masters without bad pixels take the unchecked loop;
    with ``base`` the frames share one dark factor and the kernel subtracts the given
    bias + k * dark rows (one of them with scale 1, gain 1 and offset 0, the shortest
    loop)."""
    from bigstack._calibrate import _repair
    from bigstack._kernels import add_calibrated

    rng = np.random.default_rng(11)
    ny, nx = 30, 40
    bias = rng.normal(300, 5, (ny, nx)).astype(np.float32)
    dark = rng.normal(2, 1, (ny, nx)).astype(np.float32)
    dark[20, 15] = np.nan  # a frame with k = 0 does not read the dark: no NaN from it
    inv_flat = (1 / rng.uniform(0.5, 1.5, (ny, nx))).astype(np.float32)
    inv_flat[4, 6] = np.nan  # a masked flat pixel
    bad = None if replace is None else rng.random((ny, nx)) < 0.03
    total = rng.normal(0, 1, (20, 36)).astype(np.float32)
    invalid = np.zeros((20, 36), np.int32)
    want_total, want_invalid = total.copy(), invalid.copy()
    # (s0, s1) rows read; output (oy, ox, nrows, length) takes frame pixel (fr0, sx) on
    frames = [(5, 25, 6, 3, (1, 2, 18, 34), 1.0, 0.0, None, 0.5, 2.0, 1.0),
              (0, 21, 0, 0, (0, 0, 20, 36), 1.0, 32768.0, 7, 1.0, 1.0, 0.0),
              (12, 30, 13, 10, (3, 5, 16, 30), 0.5, 3.0, None, 0.0, 1.5, -2.0)]
    rows_of_base = None
    if base:  # one dark factor, and a frame of scale 1, gain 1, offset 0 without BLANK
        frames = [f[:8] + (0.5,) + f[9:] for f in frames]
        frames[1] = frames[1][:7] + (None,) + frames[1][8:]
        rows_of_base = (bias + np.float32(0.5) * dark, 0, 0.5)
    group = np.zeros((4, 21, nx), ">u2")  # a slot left over: the group may be short
    stacked = []
    for g, (s0, s1, *_) in enumerate(frames):
        stored = rng.integers(0, 60000, (ny, nx)).astype(np.uint16).astype(">u2")
        stored[s0 + 2, 4] = frames[g][7] or 0  # a BLANK pixel (when the frame has BLANK)
        group[g, :s1 - s0] = stored[s0:s1]
        stacked.append(stored)
    rows = None
    if clean:  # as CalibratedReader finds them
        rows = np.isfinite(bias).all(1) & np.isfinite(dark).all(1) & np.isfinite(inv_flat).all(1)
        if bad is not None:
            rows &= ~bad.any(1)
        assert 0 < rows.sum() < ny
    add_calibrated(group, frames, (bias, dark, inv_flat, bad, replace == "nan", rows), total,
                   invalid, base=rows_of_base)
    for stored, (s0, s1, fr0, sx, out, scale, zero, blank, k, gain, offset) in zip(
            stacked, frames, strict=True):
        values = stored[s0:s1].astype(np.float32) * np.float32(scale) + np.float32(zero)
        if blank is not None:
            values[stored[s0:s1] == blank] = np.nan
        values = values - bias[s0:s1]
        if k:
            values = values - np.float32(k) * dark[s0:s1]
        values = values * inv_flat[s0:s1]
        if bad is not None:
            values = _repair(values, bad[s0:s1], replace)
        oy, ox, nrows, length = out
        part = values[fr0 - s0:fr0 - s0 + nrows, sx:sx + length]
        ok = np.isfinite(part)
        want_total[oy:oy + nrows, ox:ox + length] += np.where(
            ok, part * np.float32(gain) + np.float32(offset), 0)
        want_invalid[oy:oy + nrows, ox:ox + length] += ~ok
    np.testing.assert_allclose(total, want_total, rtol=1e-6, atol=1e-3)
    np.testing.assert_array_equal(invalid, want_invalid)
    assert want_invalid.max() >= 1  # the masked flat pixel and the BLANK were seen


def test_add_calibrated_refuses_a_base_that_does_not_fit():
    """The rows of bias + k * dark are for frames of that one dark factor, over their rows."""
    from bigstack._kernels import add_calibrated

    ny, nx = 12, 8
    masters = (np.ones((ny, nx), np.float32), np.ones((ny, nx), np.float32), None, None,
               False, None)
    group = np.zeros((1, 6, nx), ">u2")
    total, invalid = np.zeros((4, nx), np.float32), np.zeros((4, nx), np.int32)
    frame = (2, 8, 3, 0, (0, 0, 4, nx), 1.0, 0.0, None, 1.0, 1.0, 0.0)
    base = np.full((ny, nx), 2, np.float32)
    with pytest.raises(ValueError, match="dark factor 1.0.*factor 0.5"):
        add_calibrated(group, [frame], masters, total, invalid, base=(base, 0, 0.5))
    with pytest.raises(ValueError, match=r"rows 3..7\) does not fit the base .* rows 4..12"):
        add_calibrated(group, [frame], masters, total, invalid, base=(base[4:], 4, 1.0))
    add_calibrated(group, [frame], masters, total, invalid, base=(base[3:7], 3, 1.0))
    np.testing.assert_array_equal(total, -2)  # (0 - 2) * 1


# ---- colour: the bilinear demosaic fused into the add


def _debayer_then_add(stored, s0, shape, pattern, fr0, fc0, totals, out, gain, offset,
                      blank=None, invalid=None, lost=None, weight=1.0):
    """The path the fused kernel replaces, in numpy: debayer the frame's rows with
    ``_bayer.debayer`` (the stored values; BLANK as NaN), then a (masked) add per colour."""
    from bigstack._bayer import band_rows, debayer

    oy, ox, nrows, length = out
    ny = shape[0]
    a, b = band_rows("bilinear", fr0, fr0 + nrows, ny)
    values = stored[a - s0:b - s0].astype(np.float32)
    if blank is not None:
        values[stored[a - s0:b - s0] == blank] = np.nan
    planes = debayer(values, a, fr0, fr0 + nrows, ny, pattern, "bilinear")
    for k in range(3):
        part = planes[k][:, fc0:fc0 + length] * np.float32(gain) + np.float32(offset)
        where = (slice(oy, oy + nrows), slice(ox, ox + length))
        if invalid is None:
            totals[k][where] += part
            continue
        ok = np.isfinite(part)
        totals[k][where] += np.where(ok, part, np.float32(0))
        invalid[k][where] += ~ok
        lost[k][where] += np.where(ok, 0.0, weight)


# (fr0, nrows, fc0, length): inside, at the top-left corner, at the bottom-right corner, the
# whole frame, and windows starting on odd rows and columns (an odd shift)
COLOUR_WINDOWS = [(4, 9, 6, 11), (0, 5, 0, 7), (12, 8, 10, 13), (0, 20, 0, 23), (3, 6, 5, 8),
                  (1, 1, 1, 1), (19, 1, 22, 1)]


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
@pytest.mark.parametrize("dtype", [">u2", "<i2", "u1", ">i4"])
def test_add_bilinear_equals_debayer_then_add(pattern, dtype):
    from bigstack._kernels import add_bilinear

    rng = np.random.default_rng(21)
    shape = (20, 23)
    info = np.iinfo(dtype)
    stored = rng.integers(max(info.min, -40000), min(info.max, 60000), shape,
                          endpoint=True).astype(dtype)
    for fr0, nrows, fc0, length in COLOUR_WINDOWS:
        a, b = max(fr0 - 1, 0), min(fr0 + nrows + 1, shape[0])
        out = (2, 3, nrows, length)
        totals = [rng.normal(0, 100, (nrows + 4, length + 5)).astype(np.float32)
                  for _ in range(3)]
        want = [t.copy() for t in totals]
        add_bilinear(stored[a:b], a, shape, pattern, fr0, fc0, totals, out, gain=2.0,
                     offset=0.0)
        _debayer_then_add(stored, 0, shape, pattern, fr0, fc0, want, out, 2.0, 0.0)
        for k in range(3):
            np.testing.assert_allclose(totals[k], want[k], rtol=1e-6, atol=1e-2,
                                       err_msg=f"colour {k}, window {fr0, nrows, fc0, length}")


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
@pytest.mark.parametrize("dtype", [">f4", "<f8", ">i2"])
def test_add_bilinear_counts_nan_and_blank(pattern, dtype):
    """NaN, infinity or BLANK in the mosaic: every colour value interpolated from one is
    left out of the sum and counted (with its weight) instead."""
    from bigstack._kernels import add_bilinear

    rng = np.random.default_rng(22)
    shape = (16, 18)
    if np.dtype(dtype).kind == "f":
        stored = rng.normal(1000, 50, shape).astype(dtype)
        stored[5:7, 7:9] = np.nan  # a whole cell: every colour is hit
        stored[0, 0], stored[15, 10] = np.inf, np.nan
        blank = None
    else:
        stored = rng.integers(-3000, 3000, shape).astype(dtype)
        blank = -32768
        stored[5:7, 7:9] = stored[0, 0] = stored[15, 17] = blank
    for fr0, nrows, fc0, length in [(0, 16, 0, 18), (4, 5, 6, 7), (1, 14, 1, 16)]:
        a, b = max(fr0 - 1, 0), min(fr0 + nrows + 1, shape[0])
        out = (1, 2, nrows, length)
        size = (nrows + 2, length + 3)
        totals = [np.zeros(size, np.float32) for _ in range(3)]
        invalid = [np.zeros(size, np.int32) for _ in range(3)]
        lost = [np.zeros(size) for _ in range(3)]
        want = ([t.copy() for t in totals], [i.copy() for i in invalid], [x.copy() for x in lost])
        add_bilinear(stored[a:b], a, shape, pattern, fr0, fc0, totals, out, gain=0.5,
                     offset=7.0, blank=blank, invalid=invalid, lost=lost, weight=1.5)
        _debayer_then_add(stored, 0, shape, pattern, fr0, fc0, want[0], out, 0.5, 7.0, blank,
                          want[1], want[2], 1.5)
        for k in range(3):
            np.testing.assert_array_equal(invalid[k], want[1][k])
            assert invalid[k].any()
            np.testing.assert_array_equal(lost[k], want[2][k])
            np.testing.assert_allclose(totals[k], want[0][k], rtol=1e-6, atol=1e-3)


def test_add_bilinear_refuses_rows_that_miss_the_window():
    from bigstack._kernels import add_bilinear

    stored = np.zeros((10, 12), np.uint16)
    totals = [np.zeros((4, 12), np.float32) for _ in range(3)]
    with pytest.raises(ValueError, match="do not hold"):
        add_bilinear(stored[3:7], 3, (10, 12), "RGGB", 3, 0, totals, (0, 0, 4, 12))


@pytest.mark.parametrize("stored_type", [">i2", ">u2", "u1", ">i4", ">f4", "<f8"])
@pytest.mark.parametrize("blank", [None, 7])
def test_add_plain_equals_numpy(stored_type, blank):
    """The grouped add of plain frames against a numpy add per frame: integer rows without
    BLANK add ``stored * scale`` (the offset is the caller's), float rows and rows with a
    BLANK add ``stored * scale + zero`` where valid and count the rest in ``invalid`` and
    their weight in ``lost``; each frame its own window of the tile."""
    from bigstack._kernels import add_plain, checks_values

    rng = np.random.default_rng(12)
    dtype = np.dtype(stored_type)
    h, width, nx = 20, 36, 40
    total = rng.normal(0, 1, (h, width)).astype(np.float32)
    invalid = rng.integers(0, 3, (h, width)).astype(np.int32)
    lost = rng.normal(0, 1, (h, width))
    want = total.copy(), invalid.copy(), lost.copy()
    # (sx, (oy, ox, nrows, length), scale, zero, blank, weight)
    frames = [(3, (1, 2, 18, 34), 1.0, 32768.0, blank, 1.0),
              (0, (0, 0, 20, 36), 0.5, 3.0, blank, 0.25),
              (4, (3, 5, 16, 30), 1.75, -2.5, blank, 2.0)]
    group = np.zeros((4, h, nx), dtype)  # a slot left over: the group may be short
    for g, (_, out, *_rest) in enumerate(frames):
        if dtype.kind == "f":
            stored = rng.normal(0, 1000, (out[2], nx))
            stored[2, 5] = np.nan
            stored[4, 6 + g] = np.inf
        else:
            info = np.iinfo(dtype)
            stored = rng.integers(info.min, info.max, (out[2], nx), endpoint=True)
            stored[2, 5 + g] = 7  # a BLANK pixel when the frame has BLANK
        group[g, :out[2]] = stored.astype(dtype)
    add_plain(group, frames, total, invalid, lost)
    checked = checks_values(dtype, blank)
    assert checked == (dtype.kind == "f" or blank is not None)
    want_total, want_invalid, want_lost = want
    for g, (sx, (oy, ox, nrows, length), scale, zero, fblank, weight) in enumerate(frames):
        stored = group[g, :nrows, sx:sx + length]
        values = stored.astype(np.float32) * np.float32(scale)
        window = np.s_[oy:oy + nrows, ox:ox + length]
        if not checked:
            want_total[window] += values
            continue
        values = values + np.float32(zero)
        bad = ~np.isfinite(stored) if dtype.kind == "f" else stored == fblank
        assert bad.any()
        want_total[window] += np.where(bad, np.float32(0), values)
        want_invalid[window] += bad
        want_lost[window] += bad * weight
    np.testing.assert_array_equal(total, want_total)
    np.testing.assert_array_equal(invalid, want_invalid)
    np.testing.assert_array_equal(lost, want_lost)


def test_add_plain_refuses_what_it_cannot_add():
    from bigstack._kernels import add_plain

    total = np.zeros((4, 5), np.float32)
    frame = (0, (0, 0, 4, 5), 1.0, 0.0, None, 1.0)
    with pytest.raises(ValueError, match="frames, rows, columns"):
        add_plain(np.zeros((4, 5), ">i2"), [frame], total)
    with pytest.raises(ValueError, match="does not fit"):
        add_plain(np.zeros((1, 3, 5), ">i2"), [frame], total)
    with pytest.raises(ValueError, match="need invalid and lost"):
        add_plain(np.zeros((1, 4, 5), ">f4"), [frame], total)
