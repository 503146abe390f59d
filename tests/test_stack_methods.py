"""stack() with rejection, weights, normalisation and selection, against in-memory references.

The references shift the whole cube with plain numpy (NaN where a frame does
not cover a pixel) and reduce it with numpy / astropy, independently of the
tiled code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip

import bigstack
from bigstack import BigstackError, BigstackWarning, _combine, open_frames, synthetic

from .helpers import raise_if_dask_computes, write_fits


def shifted_cube(cube, shifts):
    """Frames moved onto the reference grid (whole pixels), NaN where uncovered."""
    n, ny, nx = cube.shape
    out = np.full((n, ny, nx), np.nan)
    for k, (dx, dy) in enumerate(np.floor(np.asarray(shifts) + 0.5).astype(int)):
        ys, xs = slice(max(0, -dy), min(ny, ny - dy)), slice(max(0, -dx), min(nx, nx - dx))
        if ys.start < ys.stop and xs.start < xs.stop:
            out[k, ys, xs] = cube[k, ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("methods")
    rng = np.random.default_rng(50)
    cube = rng.normal(1000, 20, (13, 30, 26)).astype(np.float32)
    cube[3, 10, 5] = 60000  # outliers
    cube[7, 12:15, :] += 5000
    paths = [write_fits(directory / f"f{i:02d}.fit", frame) for i, frame in enumerate(cube)]
    shifts = np.round(rng.uniform(-4, 4, (13, 2)))
    shifts[0] = 0
    return [str(p) for p in paths], shifts, cube


def clean_stack(truth):
    """The noiseless frames moved onto the reference grid and averaged (sky is fixed on the
    sensor, so it moves with the shifts too)."""
    cube = np.stack([truth.frame_clean(i) for i in range(truth.n_frames)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(shifted_cube(cube, truth.shifts), axis=0)


def _check(result, expected, kept):
    np.testing.assert_array_equal(result["coverage"].values, kept)
    np.testing.assert_allclose(result["stack"].values, expected, rtol=1e-5, atol=1e-3,
                               equal_nan=True)


@pytest.mark.parametrize("tile_rows", [1, 7, 30])
def test_median_and_sigma_clip_match_numpy_and_astropy(files, monkeypatch, tile_rows):
    monkeypatch.setattr(_combine, "_gather_rows", lambda *args, **kwargs: tile_rows)
    paths, shifts, cube = files
    moved = shifted_cube(cube, shifts)
    frames = open_frames(paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels in the reference
        median = np.nanmedian(moved, axis=0)
    _check(bigstack.stack(frames, shifts, method="median"), median,
           np.isfinite(moved).sum(axis=0))
    clipped = sigma_clip(np.ma.masked_invalid(moved), sigma_lower=2.5, sigma_upper=2.0,
                         maxiters=5, cenfunc="median", stdfunc="std", axis=0)
    expected = clipped.mean(axis=0).filled(np.nan)
    kept = (~clipped.mask).sum(axis=0)
    got = bigstack.stack(frames, shifts, method="sigma_clip", kappa=(2.5, 2.0))
    _check(got, expected, kept)
    np.testing.assert_array_equal(got["rejected"].values,
                                  np.isfinite(moved).sum(axis=0) - kept)


@pytest.mark.parametrize("tile_rows", [1, 7])
def test_rejection_tiles_written_to_a_store_reuse_blocks_cleanly(files, monkeypatch, tmp_path,
                                                                 tile_rows):
    # the tiles of a run into a store pass their blocks on (_combine.Blocks): a frame that
    # covers none of a tile's rows (shifted by 22-25 rows) must read as NaN there, not as
    # what the previous tile left in its plane; the last tile is shorter than the block
    monkeypatch.setattr(_combine, "_gather_rows", lambda *args, **kwargs: tile_rows)
    paths, shifts, cube = files
    shifts = shifts.copy()
    shifts[5] = (3, 25)
    shifts[9] = (-2, -22)
    moved = shifted_cube(cube, shifts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels in the reference
        median = np.nanmedian(moved, axis=0)
    frames = open_frames(paths)
    for method, expected in (("median", median), ("sigma_clip", None)):
        store = tmp_path / f"{method}.zarr"
        got = bigstack.stack(frames, shifts, method=method, store=store)
        assert got["stack"].data.chunks[0][0] == tile_rows
        if expected is None:
            clipped = sigma_clip(np.ma.masked_invalid(moved), sigma=3, maxiters=5,
                                 cenfunc="median", stdfunc="std", axis=0)
            expected = clipped.mean(axis=0).filled(np.nan)
            kept = (~clipped.mask).sum(axis=0)
        else:
            kept = np.isfinite(moved).sum(axis=0)
        _check(got.compute(), expected, kept)


def test_blocks_are_passed_on_and_copies_start_empty():
    import pickle

    blocks = _combine.Blocks()
    first = blocks.take((3, 4, 5))
    assert first.shape == (3, 4, 5) and first.dtype == np.float32
    assert first.flags.c_contiguous
    blocks.give(first)
    smaller = blocks.take((2, 4, 5))  # the given block, not a new one
    assert smaller.shape == (2, 4, 5) and np.shares_memory(smaller, first)
    larger = blocks.take((4, 4, 5))  # none free: a new one
    assert not np.shares_memory(larger, first)
    blocks.give(smaller)
    copy = pickle.loads(pickle.dumps(blocks))
    assert not np.shares_memory(copy.take((3, 4, 5)), first)


def test_minmax_and_percentile_match_per_pixel_loops(files):
    paths, shifts, cube = files
    moved = shifted_cube(cube, shifts)
    frames = open_frames(paths)
    got = bigstack.stack(frames, shifts, method="minmax", nlow=1, nhigh=2)
    expected = np.full(moved.shape[1:], np.nan)
    for y, x in np.ndindex(*moved.shape[1:]):
        values = np.sort(moved[:, y, x][np.isfinite(moved[:, y, x])])
        if values.size > 3:
            expected[y, x] = values[1:-2].mean()
    covered = np.isfinite(moved).sum(axis=0)
    mask = covered > 3
    np.testing.assert_allclose(got["stack"].values[mask], expected[mask], rtol=1e-5)
    got = bigstack.stack(frames, shifts, method="percentile", percentile=(20, 80))
    for y, x in [(0, 0), (15, 13), (29, 25), (12, 3)]:
        values = moved[:, y, x][np.isfinite(moved[:, y, x])]
        lo, hi = np.percentile(values, [20, 80])
        inside = values[(values >= lo) & (values <= hi)]
        np.testing.assert_allclose(got["stack"].values[y, x], inside.mean(), rtol=1e-5)


def test_weighted_mean_matches_np_average(files):
    paths, shifts, cube = files
    moved = shifted_cube(cube, shifts)
    weights = np.linspace(0.5, 2.0, len(paths))
    got = bigstack.stack(open_frames(paths), shifts, weights=weights)
    mask = np.isfinite(moved)
    expected = (np.where(mask, moved, 0) * weights[:, None, None]).sum(0) / (
        mask * weights[:, None, None]).sum(0)
    np.testing.assert_allclose(got["stack"].values, expected, rtol=1e-5)
    assert got.attrs["parameters"]["weights"] == "given"
    clipped = bigstack.stack(open_frames(paths), shifts, method="sigma_clip", weights=weights)
    assert np.isfinite(clipped["stack"].values).all()


def test_rejection_tiles_follow_frames_and_memory():
    rows = _combine._gather_rows(2048, 2048, "512MB", 400, "median", False, threads=2)
    # the blocks of 400 frames fit 40% of the budget: 2 threads x rows x 2048 x (400 x 4 + 12)
    assert 2 * rows * 2048 * (400 * 4 + 12) <= 0.4 * 512e6
    assert rows >= 20
    assert _combine._gather_rows(2048, 2048, "512MB", 100, "median", False, threads=2) > rows
    with pytest.raises(BigstackError, match="memory='40MB' is too small for method='median'"):
        _combine._gather_rows(2048, 2048, "40MB", 400, "median", False, threads=2)


def test_bad_combinations_are_refused(files):
    paths, shifts, _ = files
    frames = open_frames(paths)
    with pytest.raises(ValueError, match="does not use kappa"):
        bigstack.stack(frames, shifts, kappa=3)
    with pytest.raises(ValueError, match="weights cannot be used with method='median'"):
        bigstack.stack(frames, shifts, method="median", weights="noise")
    with pytest.raises(ValueError, match="normalize='count' applies to mean and sum"):
        bigstack.stack(frames, shifts, method="median", normalize="count")
    with pytest.raises(ValueError, match="method must be one of"):
        bigstack.stack(frames, shifts, method="mode")
    with pytest.raises(ValueError, match="weights must be one of"):
        bigstack.stack(frames, shifts, weights="seeing")


# --------------------------------------------------------------------------
# on the generator's frames


@pytest.fixture(scope="module")
def trails(tmp_path_factory):
    directory = tmp_path_factory.mktemp("trails")
    return synthetic.make_frames(directory, n_frames=24, shape=(96, 128), seed=51,
                                 artefacts=synthetic.Artefacts(trail=[3, 11, 17],
                                                               trail_peak=3000.0, cosmic_rays=6),
                                 camera=synthetic.Camera(hot_pixels=0),
                                 stars=synthetic.Stars(ref_isolation=30))


def test_sigma_clip_removes_trails_and_cosmic_rays(trails):
    truth = trails
    frames = open_frames(truth.paths)
    mean = bigstack.stack(frames, truth.shifts)
    clipped = bigstack.stack(frames, truth.shifts, method="sigma_clip", kappa=(3, 3))
    clean = clean_stack(truth)
    full = clipped["coverage"].values + clipped["rejected"].values == 24
    noise = truth.sky_sigma / np.sqrt(24)
    # every trail pixel (on the reference grid) where all frames overlap
    trail = np.zeros(clean.shape, bool)
    for i in (3, 11, 17):
        ys, xs = truth.trail[i]
        dx, dy = np.floor(truth.shifts[i] + 0.5).astype(int)
        gy, gx = ys - dy, xs - dx
        ok = (gy >= 0) & (gy < clean.shape[0]) & (gx >= 0) & (gx < clean.shape[1])
        trail[gy[ok], gx[ok]] = True
    trail &= full & (clean < 5000)  # away from bright stars' shot noise
    assert trail.sum() > 100
    residual_mean = mean["stack"].values[trail] - clean[trail]
    residual_clip = clipped["stack"].values[trail] - clean[trail]
    assert np.median(residual_mean) > 10 * noise  # the mean keeps the trails
    assert np.all(np.abs(residual_clip) < 3 * noise * np.sqrt(1 + clean[trail] / 1000))
    assert (clipped["rejected"].values[trail] >= 1).all()  # and the map shows where


def test_normalisation_and_selection(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=8, shape=(80, 96), seed=52,
                                  stars=synthetic.Stars(ref_isolation=25))
    paths = []
    for i, path in enumerate(truth.paths):  # every frame with its own sky level
        from astropy.io import fits

        data = fits.getdata(path).astype(np.float32) + 100.0 * i
        paths.append(write_fits(tmp_path / f"offset{i}.fit", data))
    frames = open_frames(paths)
    plain = bigstack.stack(frames, truth.shifts)
    with raise_if_dask_computes():  # the quality table is measured inside the graph
        lazy = bigstack.stack(frames, truth.shifts, normalize_frames="additive")
    quality = bigstack.frame_quality(frames)
    matched = bigstack.stack(frames, truth.shifts, normalize_frames="additive", quality=quality)
    reference = clean_stack(truth)
    centre = (slice(20, 60), slice(20, 76))
    assert abs(np.median(plain["stack"].values[centre] - reference[centre]) - 350) < 15
    assert abs(np.median(matched["stack"].values[centre] - reference[centre])) < 5
    np.testing.assert_array_equal(lazy["stack"].values, matched["stack"].values)
    assert "quality" in matched.attrs and len(matched.attrs["quality"]["noise"]) == 8
    with pytest.warns(BigstackWarning, match="leaves out 2 frame"):
        chosen = bigstack.stack(frames, truth.shifts, select="25%", quality=quality)
    assert chosen.attrs["n_frames"] == 6
    with raise_if_dask_computes():
        lazy = bigstack.stack(frames, truth.shifts, select="25%")
    np.testing.assert_array_equal(lazy["stack"].values, chosen["stack"].values)
    with pytest.raises(ValueError, match="needs the frame quality first"):
        bigstack.stack(frames, truth.shifts, select="25%", extent="union")


@pytest.fixture(scope="module")
def integer_files(tmp_path_factory):
    """16-bit frames as cameras write them (uint16 stored as int16 + BZERO 32768), one with
    a BLANK pixel, 300 wide so that the kernel's 256-pixel loads straddle rows."""
    directory = tmp_path_factory.mktemp("integer")
    rng = np.random.default_rng(51)
    cube = rng.normal(1000, 30, (11, 60, 300)).round().astype(np.uint16)
    cube[2, 4, 7] = 60000
    cube[6, 9:12, :] += 4000  # a trail
    paths = [write_fits(directory / f"f{i:02d}.fit", frame) for i, frame in enumerate(cube)]
    blank = directory / "f05.fit"
    data = cube[5].astype(np.int32) - 32768
    data[3, 100] = -32768  # BLANK in the stored values
    hdu = fits.PrimaryHDU(data.astype(np.int16))
    hdu.header["BZERO"] = 32768
    hdu.header["BLANK"] = -32768
    hdu.writeto(blank, overwrite=True)
    values = cube.astype(np.float64)
    values[5, 3, 100] = np.nan
    shifts = np.round(rng.uniform(-6, 6, (11, 2)))
    shifts[0] = 0
    shifts[8] = (-40, 18)  # misses most tiles
    return [str(p) for p in paths], shifts, values


def _stored_and_float(monkeypatch, frames, shifts, tile_rows=None, **kwargs):
    """``stack`` with the block kept as stored and with float32 blocks (the general path)."""
    calls = []
    real = _combine.gather_stored
    monkeypatch.setattr(_combine, "gather_stored",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    if tile_rows is not None:
        monkeypatch.setattr(_combine, "_gather_rows", lambda *args, **kw: tile_rows)
    stored = bigstack.stack(frames, shifts, **kwargs).compute()
    assert calls, "the stored path was not taken"
    monkeypatch.setattr(_combine, "stored_gather", lambda source, plan: None)
    calls.clear()
    general = bigstack.stack(frames, shifts, **kwargs).compute()
    assert not calls
    monkeypatch.undo()
    return stored, general


@pytest.mark.parametrize("tile_rows", [1, 5, None])
@pytest.mark.parametrize("method,options", [("median", {}), ("sigma_clip", {"kappa": 2.0}),
                                            ("winsorized", {"kappa": 2.5})])
def test_rejection_from_stored_rows_equals_the_float_blocks_and_numpy(
        integer_files, monkeypatch, tile_rows, method, options):
    # 16-bit frames keep their stored rows in the block (half the bytes, converted as the
    # kernel loads them): the same values as the float32 blocks, bit for bit, and as numpy
    paths, shifts, values = integer_files
    frames = open_frames(paths)
    stored, general = _stored_and_float(monkeypatch, frames, shifts, tile_rows,
                                        method=method, **options)
    for name in ("stack", "coverage", "rejected"):
        np.testing.assert_array_equal(stored[name].values, general[name].values)
    moved = shifted_cube(values, shifts)
    if method == "median":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            _check(stored, np.nanmedian(moved, axis=0), np.isfinite(moved).sum(axis=0))
    elif method == "sigma_clip":
        clipped = sigma_clip(np.ma.masked_invalid(moved), sigma=2.0, maxiters=5,
                             cenfunc="median", stdfunc="std", axis=0)
        _check(stored, clipped.mean(axis=0).filled(np.nan), (~clipped.mask).sum(axis=0))


def test_stored_rows_with_frame_gains_and_weights_equal_the_float_blocks(integer_files,
                                                                          monkeypatch):
    # normalised frames (a gain and an offset per frame) and weights: the stored path
    # applies them as it converts, as the float blocks do
    paths, shifts, _ = integer_files
    frames = open_frames(paths)
    weights = np.linspace(0.5, 2.0, len(paths))
    stored, general = _stored_and_float(monkeypatch, frames, shifts, 4, method="sigma_clip",
                                        normalize_frames="additive+scale", weights=weights)
    for name in ("stack", "coverage", "rejected"):
        np.testing.assert_array_equal(stored[name].values, general[name].values)
    assert np.isfinite(stored["stack"].values).sum() > 0.9 * stored["stack"].size


def test_stored_rows_make_tiles_twice_as_tall_in_a_store(integer_files, tmp_path,
                                                          monkeypatch):
    # the block of 16-bit stored rows takes half the bytes of float32 values, so the same
    # budget holds tiles about twice as tall; float frames keep float32 blocks
    from bigstack import _reject

    monkeypatch.setattr(_combine.os, "cpu_count", lambda: 2)
    paths, shifts, values = integer_files
    # a budget for float32 tiles of 8 rows: 11 frames of 300 pixels, 4 bytes a value and 12
    # of outputs a pixel, besides the kernel's workspace; 40% of it is the blocks'
    rows = 8.5 * 300 * (11 * 4 + 12) + _reject.workspace_bytes("median", 11)
    memory = int(rows * 2 / _combine._GATHER_SHARE)
    got = bigstack.stack(open_frames(paths), shifts, method="median", memory=memory,
                         store=tmp_path / "int.zarr")
    floats = [write_fits(tmp_path / f"float{i}.fit", v.astype(np.float32))
              for i, v in enumerate(values)]
    ref = bigstack.stack(open_frames(floats), shifts, method="median", memory=memory,
                         store=tmp_path / "float.zarr")
    tall, low = got["stack"].data.chunks[0][0], ref["stack"].data.chunks[0][0]
    # (2 N + 12) bytes a pixel instead of (4 N + 12)
    assert low == 8 and tall == 14, (tall, low)
    np.testing.assert_array_equal(got["stack"].values, ref["stack"].values)
    np.testing.assert_array_equal(got["coverage"].values, ref["coverage"].values)


def test_stored_path_only_for_whole_pixel_integer_frames(integer_files, tmp_path):
    paths, shifts, values = integer_files
    frames = open_frames(paths)
    median = bigstack.Rejection("median")

    def plan(source_frames, subpixel="nearest", method=median, shift=shifts):
        transforms = _combine.as_transforms(np.asarray(shift, float))
        p = _combine.TilePlan(shape=(60, 300), shifts=np.asarray(shift, float),
                              keep=np.ones(len(transforms), bool), subpixel=subpixel,
                              grid=(0, 60, 0, 300), combine=method)
        from bigstack._io import cube_source
        return _combine.stored_gather(cube_source(source_frames, "test")[0], p)

    assert plan(frames) == 2.0
    assert plan(frames, method=bigstack.Rejection("mean")) is None  # streams
    assert plan(frames, method=bigstack.Rejection("minmax")) is None  # numpy reducer
    assert plan(frames, subpixel="bilinear", shift=shifts + 0.3) is None  # interpolated
    floats = [write_fits(tmp_path / f"float{i}.fit", v.astype(np.float32))
              for i, v in enumerate(values)]
    assert plan(open_frames(floats)) is None
    assert plan(open_frames(paths[:5] + [str(floats[5])] + paths[6:])) is None  # mixed types
    assert plan(np.stack([np.asarray(v, np.float32) for v in values])) is None  # in memory


@pytest.mark.parametrize("colour", ["MONO", "RGB"])
def test_stored_rows_only_for_files_whose_rows_are_one_plane(tmp_path, monkeypatch, colour):
    # a mono SER video's rows are its stored rows; an RGB one interleaves R, G and B, so
    # one colour of it (channel="R") is gathered as float32 values, never as stored rows
    rng = np.random.default_rng(52)
    shape = (9, 24, 40) + ((3,) if colour == "RGB" else ())
    frames = rng.integers(100, 4000, shape).astype(np.uint16)
    path = synthetic.write_ser(tmp_path / "v.ser", list(frames), colour=colour)
    shifts = np.round(rng.uniform(-3, 3, (9, 2)))
    cube = open_frames(path, channel="R") if colour == "RGB" else open_frames(path)
    calls = []
    real = _combine.gather_stored
    monkeypatch.setattr(_combine, "gather_stored",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    got = bigstack.stack(cube, shifts, method="median").compute()
    assert bool(calls) == (colour == "MONO")
    values = frames[..., 0] if colour == "RGB" else frames
    moved = shifted_cube(values.astype(np.float64), shifts)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _check(got, np.nanmedian(moved, axis=0), np.isfinite(moved).sum(axis=0))
