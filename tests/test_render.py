"""crop, display, save_png and save_fits, checked against independent references.

References: plain numpy slicing for ``crop``; astropy's ``simple_norm``
computed here on the same data for ``display`` and ``save_png``; a numpy
reshape-mean for the decimated view of large lazy images; Pillow for
reading PNGs back and astropy for reading FITS back.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings

import dask
import dask.array as da
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from astropy.visualization import simple_norm
from dask.callbacks import Callback
from PIL import Image

from bigstack import BigstackWarning
from bigstack._render import crop, display, save_fits, save_png

matplotlib.use("Agg")  # no display needed; switching after the pyplot import is allowed

NY, NX = 23, 31


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _image(ny=NY, nx=NX, seed=0):
    return np.random.default_rng(seed).gamma(2.0, 100.0, (ny, nx)).astype(np.float32)


def _no_temp_files(folder):
    return [name for name in os.listdir(folder) if name.endswith(".tmp")] == []


# --------------------------------------------------------------------------
# crop

ROWS = (None, 0, 4, 11, NY - 1, NY)
COLS = (None, 0, 5, 17, NX)


def _plain_window(left, right, top, bottom):
    return slice(bottom, top), slice(left, right)


@pytest.mark.parametrize("left, right", list(itertools.product(COLS, COLS)))
def test_crop_numpy_matches_slicing(left, right):
    image = np.arange(NY * NX).reshape(NY, NX)
    for top, bottom in itertools.product(ROWS, ROWS):
        expected = image[bottom:top, left:right]
        if expected.size == 0:
            with pytest.raises(ValueError, match="leaves no"):
                crop(image, left=left, right=right, top=top, bottom=bottom)
            continue
        out = crop(image, left=left, right=right, top=top, bottom=bottom)
        np.testing.assert_array_equal(out, expected)
        assert np.shares_memory(out, image)  # a view, as numpy slicing gives


ORIGINS = [(10, 7), (0, 0), (NX, NY), (30, 1)]
DISTANCES = (None, 0, 1, 6, 12)


def _origin_reference(image, origin, left, right, top, bottom):
    """The origin crop by explicit arithmetic; None when it must be refused."""
    ny, nx = image.shape[-2:]
    ox, oy = origin
    y0 = 0 if bottom is None else oy - bottom
    y1 = ny if top is None else oy + top
    x0 = 0 if left is None else ox - left
    x1 = nx if right is None else ox + right
    if y0 < 0 or x0 < 0 or y1 > ny or x1 > nx or y1 <= y0 or x1 <= x0:
        return None
    return image[..., y0:y1, x0:x1]


@pytest.mark.parametrize("origin", ORIGINS)
def test_crop_origin_numpy(origin):
    image = np.arange(NY * NX).reshape(NY, NX)
    checked = refused = 0
    for left, right, top, bottom in itertools.product(DISTANCES, repeat=4):
        expected = _origin_reference(image, origin, left, right, top, bottom)
        kwargs = dict(left=left, right=right, top=top, bottom=bottom, origin=origin)
        if expected is None:
            with pytest.raises(ValueError):
                crop(image, **kwargs)
            refused += 1
        else:
            np.testing.assert_array_equal(crop(image, **kwargs), expected)
            checked += 1
    assert checked > 20 and refused > 20


def test_crop_origin_defaults_to_edges():
    image = np.arange(NY * NX).reshape(NY, NX)
    # a missing distance means "to the edge": all four missing keeps everything
    np.testing.assert_array_equal(crop(image, origin=[10, 7]), image)
    np.testing.assert_array_equal(crop(image, top=3, origin=[10, 7]), image[:10, :])
    np.testing.assert_array_equal(crop(image, left=2, right=4, origin=[10, 7]), image[:, 8:14])
    # numpy integers, as find_star returns, and whole floats are accepted
    np.testing.assert_array_equal(
        crop(image, left=1, right=1, top=1, bottom=1, origin=np.array([10, 7])), image[6:8, 9:11]
    )
    np.testing.assert_array_equal(crop(image, right=20.0, top=np.int64(9)), image[:9, :20])


def test_crop_keeps_leading_dims():
    cube = np.arange(3 * NY * NX).reshape(3, NY, NX)
    np.testing.assert_array_equal(crop(cube, left=2, right=9, top=8, bottom=1), cube[:, 1:8, 2:9])


def test_crop_dask_is_lazy_and_equal():
    image = np.random.default_rng(3).normal(size=(NY, NX))
    lazy = da.from_array(image, chunks=(5, 8))
    for left, right, top, bottom in [(None, 20, 15, 2), (3, None, None, 0), (0, NX, NY, 0)]:
        out = crop(lazy, left=left, right=right, top=top, bottom=bottom)
        assert isinstance(out, da.Array)
        np.testing.assert_array_equal(out.compute(), image[bottom:top, left:right])
    out = crop(lazy, left=2, right=3, top=4, bottom=5, origin=[10, 12])
    np.testing.assert_array_equal(out.compute(), image[7:16, 8:13])


def test_crop_xarray_keeps_coordinates():
    image = np.random.default_rng(4).normal(size=(2, NY, NX))
    arr = xr.DataArray(
        image, dims=("frame", "y", "x"),
        coords={"frame": [0, 1], "y": np.arange(NY), "x": np.arange(NX),
                "path": ("frame", ["a", "b"])},
        attrs={"units": "adu"},
    )
    for left, right, top, bottom in itertools.product((None, 4), (None, 25), (None, 19), (None, 2)):
        out = crop(arr, left=left, right=right, top=top, bottom=bottom)
        np.testing.assert_array_equal(out.values, image[:, bottom:top, left:right])
        np.testing.assert_array_equal(out.x.values, np.arange(NX)[left:right])
        np.testing.assert_array_equal(out.y.values, np.arange(NY)[bottom:top])
        assert out.attrs == {"units": "adu"}
        assert list(out.path.values) == ["a", "b"]
    # an already offset grid: the coordinates stay the reference-grid indices
    shifted = arr.assign_coords(x=np.arange(NX) + 100, y=np.arange(NY) - 40)
    out = crop(shifted, left=3, right=6, top=2, bottom=1, origin=[10, 7])
    np.testing.assert_array_equal(out.x.values, np.arange(107, 116))
    np.testing.assert_array_equal(out.y.values, np.arange(-34, -31))
    # dask-backed stays lazy
    lazy = crop(arr.chunk({"y": 5}), left=4, right=25, top=19, bottom=2)
    assert isinstance(lazy.data, da.Array)
    np.testing.assert_array_equal(lazy.values, image[:, 2:19, 4:25])


def test_crop_xarray_without_coordinates_gets_them():
    arr = xr.DataArray(np.zeros((NY, NX)), dims=("y", "x"))
    out = crop(arr, left=5, right=9, top=12, bottom=10)
    np.testing.assert_array_equal(out.x.values, [5, 6, 7, 8])
    np.testing.assert_array_equal(out.y.values, [10, 11])


def test_crop_dataset():
    rng = np.random.default_rng(5)
    ds = xr.Dataset(
        {"stack": (("y", "x"), rng.normal(size=(NY, NX)).astype(np.float32)),
         "coverage": (("y", "x"), rng.integers(0, 5, (NY, NX), dtype=np.int32))},
        coords={"y": np.arange(NY), "x": np.arange(NX)},
        attrs={"bigstack_version": "0.1.0"},
    )
    out = crop(ds, left=1, right=30, top=20, bottom=3)
    np.testing.assert_array_equal(out["stack"].values, ds["stack"].values[3:20, 1:30])
    np.testing.assert_array_equal(out["coverage"].values, ds["coverage"].values[3:20, 1:30])
    np.testing.assert_array_equal(out.x.values, np.arange(1, 30))
    assert out.attrs == ds.attrs


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(left=-1), "left=-1"),
        (dict(right=-3), "right=-3"),
        (dict(bottom=-2), "bottom=-2"),
        (dict(top=NY + 1), f"top={NY + 1}"),
        (dict(right=NX + 5), f"right={NX + 5}"),
        (dict(bottom=5, top=5), "no rows"),
        (dict(bottom=9, top=4), "no rows"),
        (dict(left=7, right=7), "no columns"),
        (dict(left=-1, origin=[5, 5]), "left=-1"),
        (dict(bottom=6, origin=[5, 5]), "bottom=6"),
        (dict(top=NY, origin=[5, 5]), f"top={NY}"),
        (dict(right=NX - 4, origin=[5, 5]), f"right={NX - 4}"),
        (dict(left=0, right=0, origin=[5, 5]), "no columns"),
        (dict(origin=[NX + 1, 0]), "origin"),
        (dict(origin=[-1, 3]), "origin"),
        (dict(origin=[1, 2, 3]), "origin"),
    ],
)
def test_crop_refuses(kwargs, match):
    image = np.zeros((NY, NX))
    with pytest.raises(ValueError, match=match):
        crop(image, **kwargs)
    with pytest.raises(ValueError, match=match):
        crop(xr.DataArray(image, dims=("y", "x")), **kwargs)


def test_crop_refuses_fractions():
    with pytest.raises(TypeError, match="left"):
        crop(np.zeros((NY, NX)), left=2.5)
    with pytest.raises(TypeError, match="top"):
        crop(np.zeros((NY, NX)), top=True)


# --------------------------------------------------------------------------
# display


@pytest.mark.parametrize("stretch", ["log", "linear", "sqrt", "power", "asinh"])
@pytest.mark.parametrize("percents", [(0, 100), (1, 99.5)])
def test_display_numpy_is_the_tutorials(stretch, percents):
    image = _image()
    image[:3, -5:] = np.nan  # an uncovered corner
    img = display(image, stretch=stretch, log_a=500, min_percent=percents[0],
                  max_percent=percents[1])
    assert img.origin == "lower"
    drawn = img.get_array()
    np.testing.assert_array_equal(np.ma.getdata(drawn), image)  # full array, as given
    reference = simple_norm(image, stretch=stretch, log_a=500, min_percent=percents[0],
                            max_percent=percents[1])
    assert img.norm.vmin == pytest.approx(reference.vmin, rel=1e-12)
    assert img.norm.vmax == pytest.approx(reference.vmax, rel=1e-12)
    assert type(img.norm.stretch) is type(reference.stretch)
    assert img.get_extent() == [-0.5, NX - 0.5, -0.5, NY - 0.5]
    assert img.get_cmap().name == "Greys_r"
    img.figure.canvas.draw()  # the NaNs render without warnings


def test_display_norm_array():
    image, template = _image(seed=1) * 0.1, _image(seed=2)
    img = display(image, stretch="log", norm_array=template, min_percent=2, max_percent=98)
    reference = simple_norm(template, stretch="log", log_a=1000, min_percent=2, max_percent=98)
    assert (img.norm.vmin, img.norm.vmax) == pytest.approx((reference.vmin, reference.vmax))
    own = simple_norm(image, stretch="log", min_percent=2, max_percent=98)
    assert img.norm.vmax != pytest.approx(own.vmax)


def test_display_axes_and_options():
    fig, axes = plt.subplots(1, 2)
    img = display(_image(), fig=fig, ax=axes[1], title="stacked", xlim=(2, 20), ylim=(1, 9),
                  cmap="viridis")
    assert img.axes is axes[1]
    assert axes[1].get_title() == "stacked"
    assert axes[1].get_xlim() == (2, 20) and axes[1].get_ylim() == (1, 9)
    assert img.get_cmap().name == "viridis"
    assert len(plt.get_fignums()) == 1
    new = display(_image())
    assert new.figure is not fig


@pytest.mark.parametrize("stretch", ["sinh", "Log", "histeq", 3])
def test_display_refuses_unknown_stretch(stretch):
    with pytest.raises(ValueError, match="linear, sqrt, power, log, asinh"):
        display(_image(), stretch=stretch)


def test_display_refuses_bad_input():
    with pytest.raises(ValueError, match="no finite"):
        display(np.full((4, 5), np.nan))
    with pytest.raises(ValueError, match="2-D"):
        display(np.zeros((2, 4, 5)))


class _LargestResult(Callback):
    """Record the largest array any dask task returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def _posttask(self, key, result, dsk, state, worker_id):
        self.largest = max(self.largest, getattr(result, "size", 0))


def _block_mean_reference(data, f):
    ny, nx = data.shape[0] // f * f, data.shape[1] // f * f
    blocks = data[:ny, :nx].astype(np.float64).reshape(ny // f, f, nx // f, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks: NaN expected
        return np.nanmean(blocks, axis=(1, 3))


def test_display_decimates_large_lazy_image():
    data = np.random.default_rng(6).gamma(2.0, 100.0, (1003, 1201)).astype(np.float32)
    data[:5, :5] = np.nan  # one whole block uncovered
    data[500, 600] = np.nan  # one pixel of a block
    lazy = da.from_array(data, chunks=(100, 1201))
    spy = _LargestResult()
    with spy, dask.config.set(scheduler="sync"):
        img = display(lazy, stretch="log", max_pixels=50_000, min_percent=1, max_percent=99)
    drawn = np.ma.getdata(img.get_array())
    assert drawn.shape == (200, 240)  # 5 x 5 blocks, 3 rows and 1 column trimmed
    expected = _block_mean_reference(data, 5)
    np.testing.assert_allclose(drawn, expected, rtol=1e-6, equal_nan=True)
    assert np.isnan(drawn[0, 0]) and np.isfinite(drawn[100, 120])
    assert spy.largest < data.size / 5  # never computed the whole image in one piece
    assert img.get_extent() == [-0.5, 1199.5, -0.5, 999.5]  # original pixel coordinates
    reference = simple_norm(expected[np.isfinite(expected)], stretch="log", min_percent=1,
                            max_percent=99)
    assert (img.norm.vmin, img.norm.vmax) == pytest.approx((reference.vmin, reference.vmax))


def test_display_decimated_xarray_extent_and_norm_array():
    rng = np.random.default_rng(7)
    data = rng.normal(100, 5, (400, 600)).astype(np.float32)
    arr = xr.DataArray(data, dims=("y", "x"),
                       coords={"y": np.arange(400) + 50, "x": np.arange(600) - 20}).chunk(100)
    template = da.from_array(rng.normal(300, 5, (400, 600)), chunks=100)
    img = display(arr, norm_array=template, max_pixels=10_000, stretch="linear")
    drawn = np.ma.getdata(img.get_array())
    assert drawn.shape == (80, 120)  # f = 5
    np.testing.assert_allclose(drawn, _block_mean_reference(data, 5), rtol=1e-6)
    assert img.get_extent() == [-20.5, 579.5, 49.5, 449.5]
    template_mean = _block_mean_reference(template.compute(), 5)
    reference = simple_norm(template_mean, stretch="linear")
    assert (img.norm.vmin, img.norm.vmax) == pytest.approx((reference.vmin, reference.vmax))


def test_display_small_lazy_and_dataset_in_full():
    data = _image()
    img = display(da.from_array(data, chunks=7))
    np.testing.assert_array_equal(np.ma.getdata(img.get_array()), data)
    assert img.get_extent() == [-0.5, NX - 0.5, -0.5, NY - 0.5]
    ds = xr.Dataset({"stack": (("y", "x"), data), "coverage": (("y", "x"), np.ones((NY, NX)))})
    img = display(crop(ds, left=3, bottom=2))
    np.testing.assert_array_equal(np.ma.getdata(img.get_array()), data[2:, 3:])
    assert img.get_extent() == [2.5, NX - 0.5, 1.5, NY - 0.5]


# --------------------------------------------------------------------------
# save_png


def _read_png(path):
    with Image.open(path) as picture:
        return np.asarray(picture)


def _expected_levels(image, top=255, **kwargs):
    norm = simple_norm(image, **kwargs)
    levels = np.ma.getdata(norm(image, clip=True))
    levels = np.where(np.isfinite(levels), levels, 0.0)
    return levels * top


def test_save_png_grey_origin_lower(tmp_path):
    image = _image() + np.arange(NY, dtype=np.float32)[:, None] * 40  # brighter upwards
    image[4, 7] = np.nan
    path = save_png(image, tmp_path / "out.png", stretch="log")
    png = _read_png(path)
    assert png.dtype == np.uint8 and png.shape == (NY, NX)
    expected = _expected_levels(image, stretch="log", log_a=1000)
    # the bottom row of the picture is image row 0
    assert np.abs(png[-1].astype(float) - expected[0]).max() <= 1
    assert np.abs(png[::-1].astype(float) - expected).max() <= 1
    assert png[::-1][4, 7] == 0  # NaN: lowest level
    assert png[0].mean() > png[-1].mean()
    assert _no_temp_files(tmp_path)


def test_save_png_options(tmp_path):
    image, template = _image(seed=8), _image(seed=9) * 2
    path = save_png(image, tmp_path / "a.png", stretch="sqrt", norm_array=template,
                    min_percent=5, max_percent=95, bits=16)
    png = _read_png(path)
    assert png.dtype == np.uint16 and png.max() > 255
    norm = simple_norm(template, stretch="sqrt", min_percent=5, max_percent=95)
    expected = np.ma.getdata(norm(image, clip=True)) * 65535
    assert np.abs(png[::-1].astype(float) - expected).max() <= 1

    path = save_png(image, tmp_path / "b.png", cmap="viridis", stretch="linear")
    rgb = _read_png(path)
    assert rgb.shape == (NY, NX, 3)
    levels = np.ma.getdata(simple_norm(image, stretch="linear")(image, clip=True))
    expected = matplotlib.colormaps["viridis"](levels)[..., :3] * 255
    assert np.abs(rgb[::-1].astype(float) - expected).max() <= 1

    path = save_png(image, tmp_path / "c.png", cmap="Greys", stretch="linear")
    expected = 255 - _expected_levels(image, stretch="linear")
    assert np.abs(_read_png(path)[::-1].astype(float) - expected).max() <= 1


def test_save_png_dataset_and_decimation(tmp_path):
    data = np.random.default_rng(10).gamma(2.0, 100.0, (203, 301)).astype(np.float32)
    ds = xr.Dataset({"stack": (("y", "x"), data),
                     "coverage": (("y", "x"), np.ones(data.shape, np.int32))}).chunk(50)
    full = _read_png(save_png(ds, tmp_path / "full.png", stretch="log"))
    assert full.shape == data.shape
    assert np.abs(full[::-1].astype(float) - _expected_levels(data, stretch="log")).max() <= 1
    small = _read_png(save_png(ds, tmp_path / "small.png", stretch="log", max_pixels=2_500))
    mean = _block_mean_reference(data, 5)
    assert small.shape == mean.shape == (40, 60)
    assert np.abs(small[::-1].astype(float) - _expected_levels(mean, stretch="log")).max() <= 1


def test_save_png_overwrite(tmp_path):
    path = tmp_path / "out.png"
    save_png(_image(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="out.png"):
        save_png(_image(seed=2), path)
    assert path.read_bytes() == before
    save_png(_image(seed=2), path, overwrite=True)
    assert path.read_bytes() != before
    assert _no_temp_files(tmp_path)


def test_save_png_refuses(tmp_path):
    with pytest.raises(ValueError, match="bits"):
        save_png(_image(), tmp_path / "a.png", bits=12)
    with pytest.raises(ValueError, match="grey"):
        save_png(_image(), tmp_path / "a.png", cmap="viridis", bits=16)
    with pytest.raises(ValueError, match="not a matplotlib colormap"):
        save_png(_image(), tmp_path / "a.png", cmap="no-such-map")
    with pytest.raises(ValueError, match="asinh"):
        save_png(_image(), tmp_path / "a.png", stretch="sinh")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# save_fits

ATTRS = {
    "bigstack_version": "0.1.0",
    "shifts": [[0.0, 0.0], [2.0, 16.0], [21.0, 36.5]],
    "parameters": {"method": "mean", "normalize": "coverage", "tile": 128, "subpixel": False},
    "inputs": ["/data/ring/ring-0001L.fit", "/data/ring/étoile-0002L.fit"],
    "n_frames": 3,
    "complete": True,
    "note": "x" * 200,
}


def _stack_dataset(ny=40, nx=50, y0=0, x0=0, seed=11):
    rng = np.random.default_rng(seed)
    stack = rng.normal(1000, 30, (ny, nx)).astype(np.float32)
    stack[-3:, -4:] = np.nan
    coverage = rng.integers(0, 4, (ny, nx), dtype=np.int32)
    return xr.Dataset(
        {"stack": (("y", "x"), stack), "coverage": (("y", "x"), coverage)},
        coords={"y": np.arange(ny) + y0, "x": np.arange(nx) + x0},
        attrs=dict(ATTRS),
    )


@pytest.mark.parametrize("lazy", [False, True])
def test_save_fits_round_trip(tmp_path, lazy):
    ds = _stack_dataset()
    source = ds.chunk({"y": 7}) if lazy else ds
    path = save_fits(source, tmp_path / "stack.fits")
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "COVERAGE", "PROVENANCE"]
        primary = hdul[0]
        assert primary.data.dtype == np.dtype(">f4")
        np.testing.assert_array_equal(primary.data, ds["stack"].values)
        np.testing.assert_array_equal(hdul["COVERAGE"].data, ds["coverage"].values)
        provenance = json.loads(hdul["PROVENANCE"].data["JSON"][0])
        header = primary.header
    assert provenance == ATTRS
    assert header["BIGSTACK_VERSION"] == "0.1.0"
    assert header["N_FRAMES"] == 3 and header["COMPLETE"] is True
    assert "NOTE" not in header  # too long for one card: in the JSON only
    assert "LTV1" not in header and "LTV2" not in header  # grid starts at 0
    assert _no_temp_files(tmp_path)


def test_save_fits_offset_grid(tmp_path):
    ds = _stack_dataset(y0=-30, x0=12)
    path = save_fits(crop(ds, left=5, bottom=7), tmp_path / "crop.fits")
    with fits.open(path) as hdul:
        header = hdul[0].header
        np.testing.assert_array_equal(hdul[0].data, ds["stack"].values[7:, 5:])
        assert hdul["COVERAGE"].header["LTV1"] == header["LTV1"]
    # IRAF: reference (physical) pixel = file (logical) pixel - LTV, 1-based
    assert header["LTV1"] == -(12 + 5)
    assert header["LTV2"] == -(-30 + 7)
    assert "LTM1_1" not in header


def test_save_fits_plain_arrays(tmp_path):
    image = _image().astype(np.float64)
    with fits.open(save_fits(image, tmp_path / "a.fits")) as hdul:
        assert len(hdul) == 1
        np.testing.assert_array_equal(hdul[0].data, image.astype(np.float32))
    arr = xr.DataArray(image, dims=("y", "x"), attrs={"exptime": np.float64(30.0)})
    with fits.open(save_fits(arr, tmp_path / "b.fits")) as hdul:
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "PROVENANCE"]
        assert hdul[0].header["EXPTIME"] == 30.0
        assert json.loads(hdul["PROVENANCE"].data["JSON"][0]) == {"exptime": 30.0}


def test_save_fits_overwrite_protection(tmp_path):
    path = tmp_path / "stack.fits"
    save_fits(_stack_dataset(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="stack.fits"):
        save_fits(_stack_dataset(seed=2), path)
    assert path.read_bytes() == before
    save_fits(_stack_dataset(seed=2), path, overwrite=True)
    with fits.open(path) as hdul:
        np.testing.assert_array_equal(hdul[0].data, _stack_dataset(seed=2)["stack"].values)
    assert _no_temp_files(tmp_path)


def test_save_fits_failure_leaves_no_partial_file(tmp_path):
    def explode(block, block_info=None):
        if block_info[0]["array-location"][0][0] >= 20:
            raise RuntimeError("disk read failed")
        return block

    ds = _stack_dataset().chunk({"y": 10})
    ds["stack"] = ds["stack"].copy(data=ds["stack"].data.map_blocks(explode, dtype=np.float32))
    path = tmp_path / "stack.fits"
    with pytest.raises(RuntimeError, match="disk read failed"):
        save_fits(ds, path)
    assert os.listdir(tmp_path) == []
    save_fits(_stack_dataset(), path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="disk read failed"):
        save_fits(ds, path, overwrite=True)
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_save_fits_refuses(tmp_path):
    ds = _stack_dataset()
    ds.attrs["bad"] = object()
    with pytest.raises(TypeError, match="'bad'"):
        save_fits(ds, tmp_path / "a.fits")
    with pytest.raises(ValueError, match="'stack'"):
        save_fits(xr.Dataset({"image": (("y", "x"), np.zeros((3, 4)))}), tmp_path / "a.fits")
    with pytest.raises(ValueError, match="2-D"):
        save_fits(np.zeros((2, 3, 4)), tmp_path / "a.fits")
    assert os.listdir(tmp_path) == []
    uneven = xr.DataArray(np.zeros((3, 4)), dims=("y", "x"), coords={"x": [0, 1, 5, 6]})
    with pytest.warns(BigstackWarning, match="evenly spaced"):
        save_fits(uneven, tmp_path / "b.fits")
