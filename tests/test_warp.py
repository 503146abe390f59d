"""Stacking any transform: rotations, flips, scale changes, against numpy and scipy references."""

from __future__ import annotations

import numpy as np
import pytest

import bigstack
from bigstack import _combine, open_frames, synthetic

from .helpers import about_centre, reference_pixels, reference_scipy, rotation, write_fits

SHAPE = (36, 44)


def transforms_of(*cases):
    """(N, 2, 3) transforms from ``(degrees, scale, flip, shift)`` about the frame's centre."""
    out = []
    for degrees, scale, flip, shift in cases:
        A = rotation(degrees, scale, flip)
        out.append(np.column_stack([A, about_centre(A, SHAPE, shift)]))
    return np.array(out)


NIGHTS = {
    "1 degree": transforms_of((0, 1, False, (0, 0)), (0.5, 1, False, (1.3, -0.7)),
                              (1.0, 1, False, (2.2, 0.4))),
    "flip": transforms_of((0, 1, False, (0, 0)), (180.0, 1, False, (0.6, 1.4)),
                          (179.7, 1, False, (-1.2, 0.3))),
    "90 degrees": transforms_of((0, 1, False, (0, 0)), (90.4, 1, False, (0.2, 0.1))),
    "mirror and scale": transforms_of((0, 1, False, (0, 0)), (-0.3, 1, True, (0.5, 0.5)),
                                      (0.2, 1.03, False, (-0.4, 0.9))),
    "shifts": transforms_of((0, 1, False, (0, 0)), (0, 1, False, (0.37, -1.61)),
                            (0, 1, False, (3.5, 2.25))),
}


def cube_of(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1000.0, 50.0, (n, *SHAPE)).astype(np.float32)


def reference_stack(cube, transforms, subpixel, grid):
    """Plain numpy/scipy: each frame resampled at ``A @ p + t``, averaged where covered."""
    y0, y1, x0, x1 = grid
    h, w = y1 - y0, x1 - x0
    planes = []
    for frame, T in zip(cube, transforms, strict=True):
        A, t = T[:, :2], T[:, 2]
        if subpixel in ("nearest", "bilinear"):
            values, covered = reference_scipy(frame, A, t, y0, h, x0, w,
                                              order=0 if subpixel == "nearest" else 1)
            values = np.where(covered, values, np.nan)
        else:
            values = reference_pixels(frame, A, t, y0, h, x0, w, subpixel)
        planes.append(values)
    planes = np.array(planes)
    coverage = np.isfinite(planes).sum(axis=0)
    with np.errstate(invalid="ignore"):
        mean = np.nansum(planes, axis=0) / coverage
    return np.where(coverage > 0, mean, np.nan), coverage, planes


@pytest.mark.parametrize("subpixel", ["nearest", "bilinear", "lanczos3", "lanczos4"])
@pytest.mark.parametrize("night", list(NIGHTS))
def test_stack_equals_the_reference(night, subpixel):
    transforms = NIGHTS[night]
    cube = cube_of(len(transforms))
    got = bigstack.stack(cube, transforms, subpixel=subpixel).compute()
    mean, coverage, _ = reference_stack(cube, transforms, subpixel, (0, SHAPE[0], 0, SHAPE[1]))
    np.testing.assert_array_equal(got["coverage"].values, coverage)
    np.testing.assert_allclose(got["stack"].values, mean, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("night", ["1 degree", "flip", "mirror and scale"])
def test_union_grid_holds_every_footprint(night):
    transforms = NIGHTS[night]
    cube = cube_of(len(transforms), seed=1)
    got = bigstack.stack(cube, transforms, subpixel="bilinear", extent="union").compute()
    y, x = got["y"].values, got["x"].values
    grid = (y[0], y[-1] + 1, x[0], x[-1] + 1)
    mean, coverage, _ = reference_stack(cube, transforms, "bilinear", grid)
    np.testing.assert_array_equal(got["coverage"].values, coverage)
    np.testing.assert_allclose(got["stack"].values, mean, rtol=1e-5, equal_nan=True)
    # every edge row and column of the union holds a covered pixel, and nothing lies outside
    cover = got["coverage"].values
    assert cover[0].any() and cover[-1].any() and cover[:, 0].any() and cover[:, -1].any()
    big = (grid[0] - 3, grid[1] + 3, grid[2] - 3, grid[3] + 3)
    _, wider, _ = reference_stack(cube, transforms, "bilinear", big)
    assert wider.sum() == cover.sum()


@pytest.mark.parametrize("night", ["1 degree", "flip", "mirror and scale", "90 degrees"])
def test_intersection_is_covered_by_every_frame(night):
    transforms = NIGHTS[night]
    cube = cube_of(len(transforms), seed=2)
    got = bigstack.stack(cube, transforms, subpixel="bilinear", extent="intersection").compute()
    assert (got["coverage"].values == len(transforms)).all()
    assert got["coverage"].size > 0.5 * SHAPE[0] * SHAPE[1] * (0.4 if night == "90 degrees" else 1)


@pytest.mark.parametrize("tile_rows", [1, 3, 7, 64])
def test_every_tile_height_gives_the_same_result(tmp_path, monkeypatch, tile_rows):
    transforms = np.concatenate([NIGHTS["1 degree"], NIGHTS["flip"][1:], NIGHTS["90 degrees"][1:]])
    cube = np.random.default_rng(3).integers(0, 60000, (len(transforms), *SHAPE))
    cube = cube.astype(np.uint16)
    paths = [write_fits(tmp_path / f"f{i}.fit", frame) for i, frame in enumerate(cube)]
    frames = open_frames(paths)
    whole = bigstack.stack(frames, transforms, subpixel="lanczos3").compute()
    monkeypatch.setattr(_combine, "plan_tiles", lambda *a, **k: tile_rows)
    tiled = bigstack.stack(frames, transforms, subpixel="lanczos3").compute()
    assert tiled["stack"].values.tobytes() == whole["stack"].values.tobytes()
    np.testing.assert_array_equal(tiled["coverage"].values, whole["coverage"].values)
    mean, coverage, _ = reference_stack(cube.astype(np.float32), transforms, "lanczos3",
                                        (0, SHAPE[0], 0, SHAPE[1]))
    np.testing.assert_array_equal(tiled["coverage"].values, coverage)
    np.testing.assert_allclose(tiled["stack"].values, mean, rtol=2e-5, equal_nan=True)


def test_rejection_with_rotated_frames_equals_the_reference():
    transforms = np.concatenate([NIGHTS["1 degree"], NIGHTS["flip"][1:],
                                 NIGHTS["mirror and scale"][1:]])
    cube = cube_of(len(transforms), seed=4)
    cube[2, 10:12, 10:30] += 5000.0  # a trail in one frame
    got = bigstack.stack(cube, transforms, subpixel="bilinear", method="median").compute()
    _, coverage, planes = reference_stack(cube, transforms, "bilinear",
                                          (0, SHAPE[0], 0, SHAPE[1]))
    median = np.nanmedian(planes, axis=0)
    np.testing.assert_array_equal(got["coverage"].values, coverage)
    np.testing.assert_allclose(got["stack"].values, median, rtol=1e-5, equal_nan=True)


def test_resume_and_append_with_rotation_are_bit_for_bit(tmp_path):
    transforms = np.concatenate([NIGHTS["1 degree"], NIGHTS["flip"][1:],
                                 NIGHTS["mirror and scale"][1:]])
    cube = np.random.default_rng(5).integers(0, 60000, (len(transforms), *SHAPE))
    paths = [str(write_fits(tmp_path / f"f{i}.fit", f.astype(np.uint16)))
             for i, f in enumerate(cube)]
    frames = open_frames(paths)
    whole = bigstack.stack(frames, transforms, subpixel="bilinear", memory="64kB").compute()
    store = tmp_path / "live.zarr"
    bigstack.stack(frames.isel(frame=slice(0, 3)), transforms[:3], store=store,
                   subpixel="bilinear", memory="64kB")
    live = bigstack.stack(frames.isel(frame=slice(3, None)), transforms[3:], store=store,
                          mode="append", subpixel="bilinear")
    np.testing.assert_array_equal(live["coverage"].values, whole["coverage"].values)
    np.testing.assert_allclose(live["stack"].values, whole["stack"].values, rtol=1e-6,
                               equal_nan=True)
    assert len(live.attrs["transforms"]) == len(transforms)
    np.testing.assert_array_equal(np.array(live.attrs["transforms"]), transforms)


def test_tiles_get_lower_for_a_rotated_night_and_fit_the_budget():
    straight = _combine.plan_tiles(100_000, 2048, "256MB", threads=2, max_rows=None)
    tilted = _combine.plan_tiles(100_000, 2048, "256MB", threads=2, max_rows=None,
                                 warp=(3, np.sin(np.radians(1.0)), 1.0, 2048))
    steep = _combine.plan_tiles(100_000, 2048, "256MB", threads=2, max_rows=None,
                                warp=(3, np.sin(np.radians(45.0)), 0.71, 2048))
    assert steep < tilted < straight
    # what a tile of the steep plan holds: its output rows and its slanted source window
    window_rows = 2048 * np.sin(np.radians(45.0)) + 0.71 * steep + 8
    held = steep * 2048 * _combine._BYTES_PER_PIXEL + window_rows * 2048 * _combine._SOURCE_BYTES
    assert 2 * held <= 256e6 / 2  # two threads' tiles in half the budget
    with pytest.raises(bigstack.BigstackError, match="a turned frame's source window of 14"):
        _combine.plan_tiles(2048, 2048, "32MB", threads=2,
                            warp=(3, np.sin(np.radians(45.0)), 0.71, 2048))


# --------------------------------------------------------------------------
# accuracy on the generator's frames: sharpness and flux


def _fwhm_and_flux(image, x, y, box=12):
    from bigstack._register import measure_star

    x0, y0 = int(round(x)) - box, int(round(y)) - box
    stamp = np.asarray(image[y0:y0 + 2 * box + 1, x0:x0 + 2 * box + 1], np.float64)
    star = measure_star(stamp, "centroid")
    return star["fwhm"], float(np.sum(stamp - np.median(stamp)))


@pytest.fixture(scope="module")
def noiseless_rotated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rotated")
    return synthetic.make_frames(
        folder, n_frames=6, shape=(400, 400), seed=7, dtype="float32",
        camera=synthetic.Camera(noise="none", hot_pixels=0),
        artefacts=synthetic.Artefacts(cosmic_rays=0),
        stars=synthetic.Stars(n_stars=150, fwhm=3.0),
        motion=synthetic.Motion(subpixel=True, drift_step=0.7, rotation_rate=0.2))


# flux_limit: 2e-3 is this measurement's floor (bilinear conserves flux exactly); the
# Lanczos clamp keeps stars' flux (measured -6.6e-4 at the centre, 2e-5 at the corner)
@pytest.mark.parametrize("subpixel, limit, flux_limit", [("lanczos3", 0.03, 2e-3),
                                                         ("bilinear", 0.15, 2e-3)])
def test_rotated_stack_keeps_stars_sharp_at_the_centre_and_corners(noiseless_rotated, subpixel,
                                                                   limit, flux_limit):
    truth = noiseless_rotated
    assert abs(truth.rotation[-1]) == pytest.approx(1.0, abs=1e-9)
    cube = open_frames(truth.paths)
    got = bigstack.stack(cube, truth.transforms, subpixel=subpixel).compute()["stack"].values
    single = cube.isel(frame=0).values
    stars = truth.reference_stars()
    bright = [(x, y) for x, y, f in zip(stars["x"], stars["y"], stars["flux"], strict=True)
              if 30 < x < 370 and 30 < y < 370 and f > 2e4]
    centre = min(bright, key=lambda p: np.hypot(p[0] - 200, p[1] - 200))
    corner = max(bright, key=lambda p: np.hypot(p[0] - 200, p[1] - 200))
    for x, y in (centre, corner):
        fwhm_single, flux_single = _fwhm_and_flux(single, x, y)
        fwhm_stack, flux_stack = _fwhm_and_flux(got, x, y)
        assert fwhm_stack / fwhm_single - 1 < limit, (x, y, fwhm_single, fwhm_stack)
        assert abs(flux_stack / flux_single - 1) < flux_limit, (x, y)


@pytest.mark.parametrize("subpixel", ["bilinear", "lanczos3", "lanczos4"])
def test_flux_is_conserved(subpixel):
    # a smooth noiseless scene: what one frame holds, every resampled frame holds too
    yy, xx = np.mgrid[0:120, 0:140].astype(np.float64)
    scene = 1000 + 300 * np.exp(-((xx - 70) ** 2 + (yy - 60) ** 2) / (2 * 12.0 ** 2))
    frame = scene.astype(np.float32)[None]
    A = rotation(0.8)
    T = np.column_stack([A, about_centre(A, (120, 140), (0.37, -0.21))])[None]
    got = bigstack.stack(frame, T, subpixel=subpixel).compute()
    inner = got["coverage"].values > 0
    inner[:10] = inner[-10:] = False
    inner[:, :10] = inner[:, -10:] = False
    # the resampled frame at reference pixel p is the scene at A p + t
    p = np.stack([xx, yy], axis=-1) @ A.T + T[0, :, 2]
    want = 1000 + 300 * np.exp(-((p[..., 0] - 70) ** 2 + (p[..., 1] - 60) ** 2) / (2 * 144.0))
    total_got, total_want = got["stack"].values[inner].sum(), want[inner].sum()
    assert abs(total_got / total_want - 1) < 1e-4
