"""The tiled shifted combine against a plain-numpy reference.

The reference below works on whole frames with explicit coordinate grids
(``source = output + shift`` per pixel), not with the row windows the tiled
code computes, so the two share no arithmetic beyond the convention.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
import xarray as xr
import zarr

import bigstack
from bigstack import BigstackError, BigstackWarning, StoreExistsError, _combine, open_frames

from .helpers import write_fits


def reference_stack(cube, shifts, subpixel="nearest", extent="reference",
                    normalize="coverage", method="mean"):
    """Whole-frame numpy shift-and-combine on a canvas large enough for any extent."""
    cube = np.asarray(cube, np.float64)
    shifts = np.asarray(shifts, np.float64)
    n, ny, nx = cube.shape
    pad = int(np.ceil(np.abs(shifts).max())) + 2
    Y, X = np.mgrid[-pad:ny + pad, -pad:nx + pad]
    total = np.zeros(Y.shape)
    cover = np.zeros(Y.shape, int)
    for frame, (dx, dy) in zip(cube, shifts, strict=True):
        if subpixel == "nearest":
            sx, sy = X + np.floor(dx + 0.5), Y + np.floor(dy + 0.5)
            inside = (sx >= 0) & (sx < nx) & (sy >= 0) & (sy < ny)
            values = np.zeros(Y.shape)
            values[inside] = frame[sy[inside].astype(int), sx[inside].astype(int)]
        else:
            x, y = X + dx, Y + dy
            x0, y0 = np.floor(x), np.floor(y)
            wx, wy = x - x0, y - y0
            values = np.zeros(Y.shape)
            inside = np.ones(Y.shape, bool)
            for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
                weight = (wx if ox else 1 - wx) * (wy if oy else 1 - wy)
                cx, cy = x0 + ox, y0 + oy
                ok = (cx >= 0) & (cx < nx) & (cy >= 0) & (cy < ny)
                inside &= ok | (weight == 0)
                gx = np.clip(cx, 0, nx - 1).astype(int)
                gy = np.clip(cy, 0, ny - 1).astype(int)
                values += np.where(ok, weight * frame[gy, gx], 0.0)
        total += np.where(inside, values, 0.0)
        cover += inside
    if extent == "reference":
        rows, cols = slice(pad, pad + ny), slice(pad, pad + nx)
    else:
        mask = cover > 0 if extent == "union" else cover == n
        ys, xs = np.nonzero(mask)
        rows, cols = slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)
    total, cover = total[rows, cols], cover[rows, cols]
    if method == "sum":
        result = total
    elif normalize == "count":
        result = total / n
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            result = np.where(cover > 0, total / np.maximum(cover, 1), np.nan)
    return result, cover, (Y[rows, 0][0], X[0, cols][0])


def _cube(n=7, ny=33, nx=41, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(1000, 30, (n, ny, nx)).astype(np.float32)


def _shifts(n, seed=1, scale=9.0, integer=False):
    rng = np.random.default_rng(seed)
    shifts = rng.uniform(-scale, scale, (n, 2))
    shifts[0] = 0
    return np.round(shifts) if integer else shifts


@pytest.mark.parametrize("subpixel", ["nearest", "bilinear"])
@pytest.mark.parametrize("extent", ["reference", "intersection", "union"])
@pytest.mark.parametrize("normalize", ["coverage", "count"])
@pytest.mark.parametrize("method", ["mean", "sum"])
def test_matches_numpy_reference(subpixel, extent, normalize, method):
    cube = _cube()
    shifts = _shifts(len(cube))
    out = bigstack.stack(cube, shifts, subpixel=subpixel, extent=extent, normalize=normalize,
                         method=method)
    expected, cover, (ey0, ex0) = reference_stack(cube, shifts, subpixel, extent, normalize,
                                                  method)
    np.testing.assert_array_equal(out["coverage"].values, cover)
    np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, atol=1e-3,
                               equal_nan=True)
    assert out["y"].values[0] == ey0 and out["x"].values[0] == ex0
    assert out["stack"].dtype == np.float32


def test_fused_plan_counts_the_group_of_frames():
    """A calibrated source's tiles hold a group of frames' stored rows (and the rows of
    bias + k * dark) besides the sums: the plan gives them lower tiles within the same
    budget."""
    plain = _combine.plan_tiles(4096, 2048, "64MB", threads=1)
    fused = _combine.plan_tiles(4096, 2048, "64MB", threads=1, fused=True)
    budget = _combine.parse_memory("64MB") // 2
    assert plain == budget // (2048 * _combine._BYTES_PER_PIXEL)
    assert fused == budget // (2048 * (_combine._BYTES_PER_PIXEL + _combine._GROUP_BYTES))
    # a calibrated group also subtracts the tile's rows of bias + k * dark
    base = _combine.plan_tiles(4096, 2048, "64MB", threads=1, fused=True, base=True)
    assert base == budget // (2048 * (_combine._BYTES_PER_PIXEL + _combine._GROUP_BYTES
                                      + _combine._BASE_BYTES))
    assert _combine.plan_tiles(4096, 2048, "64MB", threads=1, base=True) == plain


def test_fused_plan_within_a_budget_too_small_for_a_group():
    """A budget that holds one row of sums but not a group's buffer still plans
    one-row tiles (the group shrinks to one frame) instead of refusing; a budget
    too small for the sums alone is still refused."""
    one_row = 40 * _combine._BYTES_PER_PIXEL
    memory = 2 * 2 * one_row  # half for the process, two threads
    assert _combine.plan_tiles(400, 40, memory, threads=2, fused=True) == 1
    assert _combine.plan_tiles(400, 40, memory, threads=2) == 1
    with pytest.raises(BigstackError, match="too small"):
        _combine.plan_tiles(400, 40, memory - 8, threads=2, fused=True)


@pytest.mark.parametrize("tile_rows", [1, 2, 5, 13, 64])
@pytest.mark.parametrize("subpixel", ["nearest", "bilinear"])
def test_every_tile_height(monkeypatch, tile_rows, subpixel):
    monkeypatch.setattr(_combine, "plan_tiles", lambda *args, **kwargs: tile_rows)
    cube = _cube(n=5, ny=29, nx=23)
    shifts = _shifts(5, seed=3, scale=12)
    out = bigstack.stack(cube, shifts, subpixel=subpixel, extent="union")
    expected, cover, _ = reference_stack(cube, shifts, subpixel, "union")
    assert out["stack"].data.chunks[0][0] == min(tile_rows, out.sizes["y"])
    np.testing.assert_array_equal(out["coverage"].values, cover)
    np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, equal_nan=True)


def test_frames_shifted_past_the_edges():
    cube = _cube(n=4, ny=20, nx=20)
    shifts = np.array([[0, 0], [25, 0], [0, -30], [19.5, 19.5]])  # some wholly off the grid
    for subpixel in ("nearest", "bilinear"):
        out = bigstack.stack(cube, shifts, subpixel=subpixel)
        expected, cover, _ = reference_stack(cube, shifts, subpixel)
        np.testing.assert_array_equal(out["coverage"].values, cover)
        np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, equal_nan=True)


@pytest.mark.parametrize("scheduler", ["synchronous", "threads", "processes"])
def test_schedulers_agree_bit_for_bit(scheduler):
    cube = _cube(n=6, ny=40, nx=30)
    shifts = _shifts(6, seed=4)
    with dask.config.set(scheduler="synchronous"):
        expected = bigstack.stack(cube, shifts, subpixel="bilinear", memory="64kB").compute()
    with dask.config.set(scheduler=scheduler):
        got = bigstack.stack(cube, shifts, subpixel="bilinear", memory="64kB").compute()
    assert got["stack"].data.tobytes() == expected["stack"].data.tobytes()


def test_identical_frames_give_the_frame_and_coverage_counts_overlaps():
    frame = _cube(n=1, ny=15, nx=17)[0]
    cube = np.repeat(frame[None], 5, axis=0)
    out = bigstack.stack(cube)  # no shifts: the tutorial's stack_files
    np.testing.assert_allclose(out["stack"].values, frame, rtol=1e-6)
    assert (out["coverage"].values == 5).all()
    # integer shifts: coverage counts, pixel by pixel, the frames overlapping it
    shifts = np.array([[0, 0], [3, 0], [0, 4], [-2, -1], [5, 5]])
    out = bigstack.stack(cube, shifts)
    yy, xx = np.mgrid[:15, :17]
    count = sum(((xx + dx >= 0) & (xx + dx < 17) & (yy + dy >= 0) & (yy + dy < 15)).astype(int)
                for dx, dy in shifts)
    np.testing.assert_array_equal(out["coverage"].values, count)


def test_nan_pixels_do_not_count():
    cube = np.ones((3, 5, 5), np.float32)
    cube[1, 2, 2] = np.nan
    out = bigstack.stack(cube)
    assert out["coverage"].values[2, 2] == 2 and out["stack"].values[2, 2] == 1.0


def test_lazy_without_store_and_nothing_computed():
    def forbidden(*args, **kwargs):
        raise AssertionError("computed too early")

    cube = _cube(n=3)
    with dask.config.set(scheduler=forbidden):
        out = bigstack.stack(cube, _shifts(3))
    assert isinstance(out["stack"].data, dask.array.Array)


# --------------------------------------------------------------------------
# files: the fast path reads from the files and equals the array path


def test_file_cube_fast_path_matches(tmp_path, monkeypatch):
    cube = np.random.default_rng(5).integers(0, 60000, (5, 37, 29)).astype(np.uint16)
    paths = [write_fits(tmp_path / f"f{i}.fit", frame) for i, frame in enumerate(cube)]
    frames = open_frames(paths, rows=8)
    shifts = _shifts(5, seed=6, scale=6)
    # the fast path must not go through dask's chunks of the cube
    monkeypatch.setattr(bigstack._io.ArrayRows, "raw", None)
    out = bigstack.stack(frames, shifts, subpixel="bilinear", extent="union")
    expected, cover, _ = reference_stack(cube, shifts, "bilinear", "union")
    np.testing.assert_array_equal(out["coverage"].values, cover)
    np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, equal_nan=True)
    # a selection of frames is still read from the files, in the selected order
    sub = frames.isel(frame=[4, 1, 2])
    out = bigstack.stack(sub, shifts[[4, 1, 2]], subpixel="nearest")
    expected, cover, _ = reference_stack(cube[[4, 1, 2]], shifts[[4, 1, 2]])
    np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, equal_nan=True)


@pytest.mark.parametrize("tile_rows", [1, 4, 9, 40])
@pytest.mark.parametrize("dtype", [np.uint16, np.int16, np.uint8, np.float32])
def test_file_rows_every_window(tmp_path, monkeypatch, tile_rows, dtype):
    # integer files take the one-dimensional add; shifts in every direction,
    # some past the edges, for every tile height
    monkeypatch.setattr(_combine, "plan_tiles", lambda *args, **kwargs: tile_rows)
    rng = np.random.default_rng(9)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1000, 1000)
    cube = rng.integers(lo, hi, (9, 23, 17), endpoint=True).astype(dtype)
    paths = [write_fits(tmp_path / f"f{i}.fit", frame) for i, frame in enumerate(cube)]
    shifts = np.array([[0, 0], [3, 0], [-3, 0], [0, 5], [0, -5], [4, -2], [-6, 7], [16, 1],
                       [-2, -22]], float)
    out = bigstack.stack(open_frames(paths), shifts)
    expected, cover, _ = reference_stack(cube, shifts)
    np.testing.assert_array_equal(out["coverage"].values, cover)
    np.testing.assert_allclose(out["stack"].values, expected, rtol=1e-6, atol=1e-6,
                               equal_nan=True)
    total = bigstack.stack(open_frames(paths), shifts, method="sum")["stack"].values
    exact, _, _ = reference_stack(cube, shifts, method="sum")
    if info is not None:  # integer frames: the sum is exact (up to float32 of the result)
        np.testing.assert_array_equal(total, exact.astype(np.float32))


def test_frames_with_different_offsets(tmp_path):
    # unsigned 16-bit (BZERO 32768), float (none) and scaled frames in one stack
    rng = np.random.default_rng(12)
    cube = rng.integers(0, 30000, (3, 11, 13)).astype(np.float32)
    paths = [write_fits(tmp_path / "u.fit", cube[0].astype(np.uint16)),
             write_fits(tmp_path / "f.fit", cube[1]),
             write_fits(tmp_path / "s.fit", cube[2], bzero=7.0, bscale=1.0)]
    shifts = [[0, 0], [2, 1], [-1, -3]]
    out = bigstack.stack(open_frames(paths), shifts)
    expected, cover, _ = reference_stack(cube, shifts)
    np.testing.assert_array_equal(out["coverage"].values, cover)
    np.testing.assert_allclose(out["stack"].values, expected, rtol=1e-6, equal_nan=True)


def test_pattern_and_computed_cube(tmp_path):
    cube = np.random.default_rng(7).integers(0, 1000, (3, 12, 14)).astype(np.uint16)
    for i, frame in enumerate(cube):
        write_fits(tmp_path / f"f{i}.fit", frame)
    shifts = [[0, 0], [1, 2], [-3, 1]]
    from_pattern = bigstack.stack(str(tmp_path / "*.fit"), shifts)
    expected, _, _ = reference_stack(cube, shifts)
    np.testing.assert_allclose(from_pattern["stack"].values, expected, rtol=1e-6, equal_nan=True)
    # a cube that was computed on goes through dask, not the files
    doubled = bigstack.stack(open_frames(str(tmp_path / "*.fit")) * 2, shifts)
    np.testing.assert_allclose(doubled["stack"].values, 2 * expected, rtol=1e-6, equal_nan=True)


def test_find_shifts_dataset_drops_invalid_frames():
    cube = _cube(n=4, ny=10, nx=10)
    shifts = xr.Dataset(
        {"shift": (("frame", "axis"), np.array([[0, 0], [1, 1], [np.nan, np.nan], [2, 0]])),
         "valid": ("frame", [True, True, False, True]),
         "reason": ("frame", ["", "", "no star above the noise in the box", ""])},
        coords={"axis": ["x", "y"]},
    )
    with pytest.warns(BigstackWarning, match="leaving out 1 frame.*frame 2: no star"):
        out = bigstack.stack(cube, shifts)
    expected, _, _ = reference_stack(cube[[0, 1, 3]], [[0, 0], [1, 1], [2, 0]])
    np.testing.assert_allclose(out["stack"].values, expected, rtol=1e-6, equal_nan=True)
    assert out.attrs["frames_used"] == [0, 1, 3]


# --------------------------------------------------------------------------
# the zarr store


def test_store_roundtrip_and_provenance(tmp_path):
    cube = _cube(n=4, ny=30, nx=20)
    shifts = _shifts(4, seed=8)
    path = tmp_path / "out.zarr"
    out = bigstack.stack(cube, shifts, store=path, memory="64kB", extent="union",
                         subpixel="nearest")
    assert isinstance(out["stack"].data, dask.array.Array)  # opened lazily from the store
    expected, cover, (y0, x0) = reference_stack(cube, shifts, extent="union")
    np.testing.assert_allclose(out["stack"].values, expected, rtol=2e-6, equal_nan=True)
    np.testing.assert_array_equal(out["coverage"].values, cover)
    assert out["y"].values[0] == y0 and out["x"].values[0] == x0
    group = zarr.open_group(path, mode="r")
    assert group.attrs["complete"] is True
    assert group["stack"].chunks == (out.attrs["parameters"]["tile_rows"], out.sizes["x"])
    assert out.attrs["shifts"] == [[float(a), float(b)] for a, b in shifts]
    assert out.attrs["parameters"]["extent"] == "union"
    assert out.attrs["bigstack_version"] == bigstack.__version__


def test_existing_store_is_not_overwritten(tmp_path):
    cube = _cube(n=2, ny=8, nx=8)
    path = tmp_path / "out.zarr"
    bigstack.stack(cube, store=path)
    before = bigstack.stack(cube * 0 + 5, store=path, mode="overwrite")["stack"].values
    with pytest.raises(StoreExistsError, match="out.zarr: holds a finished stack.*overwrite"):
        bigstack.stack(cube, store=path)
    after = xr.open_zarr(path)["stack"].values
    np.testing.assert_array_equal(before, after)
    assert (after == 5).all()


# --------------------------------------------------------------------------
# bad arguments


def test_bad_arguments():
    cube = _cube(n=3, ny=8, nx=8)
    with pytest.raises(ValueError, match="method must be one of"):
        bigstack.stack(cube, method="median-ish")
    with pytest.raises(ValueError, match="subpixel must be one of"):
        bigstack.stack(cube, subpixel="cubic")
    with pytest.raises(ValueError, match="extent must be one of"):
        bigstack.stack(cube, extent="all")
    with pytest.raises(ValueError, match="normalize must be one of"):
        bigstack.stack(cube, normalize="frames")
    with pytest.raises(ValueError, match="shifts must be 3 x 2"):
        bigstack.stack(cube, [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="transform of frame 1 is not finite"):
        bigstack.stack(cube, [[0, 0], [np.nan, 1], [0, 0]])
    with pytest.raises(BigstackError, match="extent='intersection' is empty"):
        bigstack.stack(cube, [[0, 0], [9, 0], [0, 0]], extent="intersection")
    with pytest.raises(BigstackError, match="memory='100B' is too small"):
        bigstack.stack(cube, memory="100B")
    with pytest.raises(ValueError, match=r"\(frame, y, x\) cube"):
        bigstack.stack(cube[0])


def _mixed_files(tmp_path, rng, ny, nx):
    """Frames of every stored kind one night may mix, in runs (a group holds one type)."""
    frames, paths = [], []

    def add(name, data, **scaling):
        paths.append(write_fits(tmp_path / f"{len(paths):02d}{name}.fit", data, **scaling))

    for _ in range(5):
        add("u16", rng.integers(0, 65535, (ny, nx), endpoint=True).astype(np.uint16))
    for _ in range(2):
        add("i16", rng.integers(-32768, 32767, (ny, nx), endpoint=True).astype(np.int16))
    add("u8", rng.integers(0, 255, (ny, nx), endpoint=True).astype(np.uint8))
    for _ in range(3):
        data = rng.normal(500, 100, (ny, nx)).astype(np.float32)
        data[rng.random((ny, nx)) < 0.05] = np.nan
        add("f32", data)
    add("scaled", rng.integers(0, 30000, (ny, nx)).astype(np.float32), bzero=7.0, bscale=0.5)
    blank = rng.integers(-30000, 30000, (ny, nx)).astype(np.int16)
    blank[rng.random((ny, nx)) < 0.05] = -32768
    add("blank", blank, BLANK=-32768)
    add("u16", rng.integers(0, 65535, (ny, nx), endpoint=True).astype(np.uint16))
    return paths, frames


@pytest.mark.parametrize("subpixel", ["nearest", "bilinear"])
def test_grouped_plain_add_equals_frame_by_frame(tmp_path, monkeypatch, subpixel):
    """Plain whole-pixel copies added a group at a time (bigstack._kernels.add_plain) give
    the coverage and weights of one numpy add per frame, bit for bit, and its sums up to
    float32 rounding (integer frames' to the bit: tests above): every stored
    kind (16-bit with BZERO, 8-bit, float with NaN, scaled, BLANK), gains, biases and
    weights, every tile height, and (bilinear) warped frames between the copies, which the
    copies before them must not pass."""
    from bigstack import _io, _kernels, _reject

    rng = np.random.default_rng(21)
    ny, nx = 23, 19
    paths, _ = _mixed_files(tmp_path, rng, ny, nx)
    n = len(paths)
    shifts = rng.integers(-6, 7, (n, 2)).astype(float)
    shifts[3] = [16, -1]  # partly past the edge
    if subpixel == "bilinear":
        shifts[[2, 8, 12]] += [[0.25, 0.5], [0.5, 0.0], [0.0, 0.75]]  # warped
    source, _, shape, _ = _io.cube_source(open_frames(paths), "test")
    assert isinstance(source, _io.FileRows)
    calls = []
    kernel = _kernels.add_plain
    monkeypatch.setattr(_kernels, "add_plain", lambda *a, **k: calls.append(
        (len(a[1]), a[0].nbytes, a[2].shape)) or kernel(*a, **k))
    plan = _combine.TilePlan(
        shape=shape, shifts=shifts, keep=np.ones(n, bool), subpixel=subpixel,
        grid=(0, ny, 0, nx), combine=_reject.Rejection("mean"),
        gains=rng.uniform(0.5, 2, n), biases=rng.normal(0, 50, n),
        weights=rng.uniform(0.1, 3, n))
    for tile in (1, 4, 9, ny):
        for a, b in _combine.tile_bounds(ny, tile):
            monkeypatch.setattr(_combine, "_GROUP_PLAIN", True)
            calls.clear()
            grouped = _combine.combine_tile(source, plan, a, b)
            assert max(c[0] for c in calls) > 1  # in groups
            for _, nbytes, (h, width) in calls:  # a group's rows take what the plan counts
                assert nbytes <= _combine._GROUP_BYTES * h * width
            monkeypatch.setattr(_combine, "_GROUP_PLAIN", False)
            single = _combine.combine_tile(source, plan, a, b)
            # a float or BLANK frame's offset is added in float32 with its values (in
            # float64 after the loop when its window holds no NaN or BLANK frame by frame):
            # float32 rounding of the running sums
            np.testing.assert_allclose(grouped[0], single[0], rtol=0,
                                       atol=1e-6 * np.abs(single[0]).max())
            np.testing.assert_array_equal(grouped[1], single[1])
            np.testing.assert_array_equal(grouped[2], single[2])


def test_grouped_plain_add_flushes_as_frame_by_frame(monkeypatch):
    """Past 256 frames the float32 sums move into float64 at the same frame either way:
    float frames (whose sums round) stack to the same bits, and match the reference."""
    rng = np.random.default_rng(22)
    cube = rng.normal(1000, 30, (300, 9, 11)).astype(np.float32)
    cube[5, 2, 3] = np.nan
    shifts = _shifts(300, seed=23, scale=3, integer=True)
    stacks = {}
    for grouped in (True, False):
        monkeypatch.setattr(_combine, "_GROUP_PLAIN", grouped)
        out = bigstack.stack(cube, shifts, subpixel="nearest", method="sum")
        stacks[grouped] = out["stack"].values, out["coverage"].values
    np.testing.assert_array_equal(stacks[True][0], stacks[False][0])
    np.testing.assert_array_equal(stacks[True][1], stacks[False][1])
    expected, cover, _ = reference_stack(np.nan_to_num(cube), shifts, method="sum")
    cover[2 - int(np.floor(shifts[5, 1] + 0.5)), 3 - int(np.floor(shifts[5, 0] + 0.5))] -= 1
    np.testing.assert_array_equal(stacks[True][1], cover)
    np.testing.assert_allclose(stacks[True][0], expected, rtol=1e-6)


def test_plain_plan_counts_the_group_of_frames():
    """A plain mono source's tiles hold a group of frames' stored rows (counted in the
    plan), a colour one's do not; a calibrated one's only unweighted."""
    from bigstack import _io

    source = _io.ArrayRows(np.zeros((2, 4, 4), np.float32))
    assert _combine.groups_copies(source, weighted=False)
    assert _combine.groups_copies(source, weighted=True)

    class Colour:
        channels = ("R", "G", "B")

    class Calibrated:
        def stored(self):
            pass

    assert not _combine.groups_copies(Colour(), weighted=False)
    assert _combine.groups_copies(Calibrated(), weighted=False)
    assert not _combine.groups_copies(Calibrated(), weighted=True)
