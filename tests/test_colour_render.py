"""Colour output: the FITS cube, 16-bit PNG and TIFF files, and the colour picture's steps.

References: astropy, PIL and tifffile read the files back; the expected pixels are computed
here with plain numpy from the documented formulas; the synthetic fields are rendered with
``tests.helpers.render_stars`` with known star colours, gains and sky levels.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import tifffile
import xarray as xr
from astropy.io import fits
from astropy.visualization import simple_norm
from PIL import Image

from bigstack import BigstackWarning, display, save_fits, save_png, save_tiff
from bigstack._files import made_by_bigstack
from bigstack._render_colour import (
    colour_levels,
    luminance,
    neutralise,
    star_white_balance,
)
from bigstack.cli import main

from .helpers import render_stars

matplotlib.use("Agg")

SHAPE = (150, 180)
FWHM = 3.0


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _field(*, seed=0, gains=(1.0, 1.0, 1.0), sky=(100.0, 130.0, 80.0), slope=(0.0, 0.0, 0.0),
           noise=2.0, flux=(3000.0, 20000.0)):
    """A colour field ``(3, ny, nx)`` whose stars are grey on average, and its truth.

    Stars sit on a jittered grid (no overlaps) in pairs of equal flux with colours
    ``(1 + d, 1, 1 - d)`` and ``(1 - d, 1, 1 + d)``: each channel's total star flux is the
    same before the ``gains``. The sky of channel c is ``sky[c] + slope[c] * (x / nx - 0.5)``.
    """
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    gy, gx = np.mgrid[15:ny - 14:24, 15:nx - 14:24]
    x = (gx.ravel() + rng.uniform(-3, 3, gx.size))
    y = (gy.ravel() + rng.uniform(-3, 3, gy.size))
    n = x.size - x.size % 2
    x, y = x[:n], y[:n]
    pair_flux = rng.uniform(*flux, n // 2)
    d = rng.uniform(0.05, 0.35, n // 2)
    star_flux = np.repeat(pair_flux, 2)
    d = np.repeat(d, 2) * np.tile([1.0, -1.0], n // 2)
    colours = np.stack([1 + d, np.ones(n), 1 - d])
    xx = np.arange(nx)[None, :]
    rgb = np.empty((3, ny, nx))
    for c in range(3):
        plane = np.broadcast_to(sky[c] + slope[c] * (xx / nx - 0.5), SHAPE).copy()
        render_stars(SHAPE, x, y, star_flux * colours[c] * gains[c], FWHM, out=plane)
        rgb[c] = plane + rng.normal(0.0, noise, SHAPE)
    yy, xx = np.mgrid[:ny, :nx]
    near = np.zeros(SHAPE, bool)
    for xi, yi in zip(x, y, strict=True):
        near |= np.hypot(xx - xi, yy - yi) < 4 * FWHM
    return rgb, {"x": x, "y": y, "colours": colours, "sky_mask": ~near}


def _dataset(rgb, coverage=None, order=("R", "G", "B")):
    """A colour stack Dataset like the store's, with the channels in ``order``."""
    index = ["RGB".index(c) for c in order]
    if coverage is None:
        coverage = np.full(rgb.shape, 5, np.int32)
    ny, nx = rgb.shape[1:]
    return xr.Dataset(
        {"stack": (("channel", "y", "x"), rgb[index].astype(np.float32)),
         "coverage": (("channel", "y", "x"), coverage[index])},
        coords={"channel": list(order), "y": np.arange(ny), "x": np.arange(nx)},
        attrs={"bigstack_version": "0.1.0", "complete": True, "n_frames": 5})


def _read(path):
    with Image.open(path) as picture:
        return picture.mode, np.asarray(picture)


def _png_samples(path):
    """A PNG's samples as stored (16-bit RGB too, which PIL cannot give), by imagecodecs."""
    import imagecodecs

    with open(path, "rb") as f:
        return imagecodecs.png_decode(f.read())


# --------------------------------------------------------------------------
# files


def test_fits_cube_has_the_planes_in_rgb_order_and_the_coverage_per_channel(tmp_path):
    rgb, _ = _field(seed=1)
    coverage = np.stack([np.full(SHAPE, k, np.int32) for k in (3, 4, 5)])
    coverage[0, :10, :] = 0
    ds = _dataset(rgb, coverage, order=("B", "R", "G"))  # stored in another order
    path = save_fits(ds, tmp_path / "stack.fits")
    with fits.open(path) as hdul:
        header = hdul[0].header
        assert (header["NAXIS"], header["NAXIS1"], header["NAXIS2"], header["NAXIS3"]) == \
            (3, SHAPE[1], SHAPE[0], 3)
        assert header["CTYPE3"] == "RGB" and header["ROWORDER"] == "BOTTOM-UP"
        for c in range(3):
            np.testing.assert_array_equal(hdul[0].data[c], rgb[c].astype(np.float32))
        assert hdul["COVERAGE"].data.shape == (3, *SHAPE)
        np.testing.assert_array_equal(hdul["COVERAGE"].data, coverage)
        assert hdul["COVERAGE"].header["CTYPE3"] == "RGB"
    assert made_by_bigstack(path)


def test_fits_cube_of_a_numpy_colour_image(tmp_path):
    rgb, _ = _field(seed=2)
    path = save_fits(rgb.astype(np.float32), tmp_path / "rgb.fits")
    with fits.open(path) as hdul:
        assert hdul[0].header["NAXIS3"] == 3
        np.testing.assert_array_equal(hdul[0].data, rgb.astype(np.float32))
        assert "COVERAGE" not in hdul


def _linear_reference(rgb, bits):
    """The documented colour picture of a linear 0..100 % stretch, in plain numpy."""
    lum = rgb.mean(axis=0)
    lo, hi = lum.min(), lum.max()
    values = np.clip((rgb - lo) / (hi - lo), 0.0, None)
    values = np.where(lum > lo, values, 0.0)
    peak = values.max(axis=0)
    values = np.where(peak > 1, values / np.where(peak > 1, peak, 1), values)
    values = np.clip(values, 0.0, 1.0)
    pixels = np.rint(values * (2**bits - 1)).astype(np.uint16 if bits == 16 else np.uint8)
    return pixels.transpose(1, 2, 0)[::-1]


LINEAR = {"stretch": "linear", "min_percent": 0, "max_percent": 100,
          "white_balance": "none", "neutralise": False}


@pytest.mark.parametrize("bits", [8, 16])
def test_colour_png_matches_a_numpy_scaling(tmp_path, bits):
    rgb, _ = _field(seed=3)
    path = save_png(_dataset(rgb), tmp_path / "pic.png", bits=bits, **LINEAR)
    mode, pixels = _read(path)
    assert pixels.shape == (*SHAPE, 3)
    if bits == 16:  # PIL has no 16-bit RGB mode: read the samples with libpng's decoder
        pixels = _png_samples(path)
        assert pixels.dtype == np.uint16
    else:
        assert mode == "RGB"
    reference = _linear_reference(rgb.astype(np.float32).astype(np.float64), bits)
    np.testing.assert_array_equal(pixels, reference)
    assert made_by_bigstack(path)


def test_tiff_16_bit_is_the_png_picture_and_32_bit_the_linear_values(tmp_path):
    rgb, _ = _field(seed=4)
    coverage = np.full(rgb.shape, 4, np.int32)
    coverage[2, 50, 60] = 0  # blue uncovered at (x=60, y=50)
    ds = _dataset(rgb, coverage)
    png = save_png(ds, tmp_path / "pic.png", bits=16)
    tif16 = save_tiff(ds, tmp_path / "pic.tif")
    tif32 = save_tiff(ds, tmp_path / "lin.tif", bits=32)
    with tifffile.TiffFile(tif16) as tif:
        page = tif.pages[0]
        assert page.photometric == tifffile.PHOTOMETRIC.RGB
        assert str(page.tags[305].value).startswith("bigstack")
        picture = page.asarray()
    assert picture.dtype == np.uint16
    np.testing.assert_array_equal(picture, _png_samples(png))
    linear = tifffile.imread(tif32)
    assert linear.dtype == np.float32 and linear.shape == (*SHAPE, 3)
    expected = rgb.astype(np.float32).transpose(1, 2, 0)[::-1].copy()
    expected[SHAPE[0] - 1 - 50, 60, 2] = np.nan
    np.testing.assert_array_equal(linear, expected)  # NaN where uncovered, equal elsewhere
    assert made_by_bigstack(tif16) and made_by_bigstack(tif32)


def test_mono_tiff_is_grey(tmp_path):
    image = np.random.default_rng(5).normal(100, 3, SHAPE).astype(np.float32)
    png = save_png(image, tmp_path / "m.png", bits=16)
    tif = save_tiff(image, tmp_path / "m.tif")
    with Image.open(png) as reference:
        np.testing.assert_array_equal(tifffile.imread(tif), np.asarray(reference))
    np.testing.assert_array_equal(tifffile.imread(save_tiff(image, tmp_path / "f.tif", bits=32)),
                                  image[::-1])


# --------------------------------------------------------------------------
# the picture's steps


def test_neutralisation_brings_the_sky_medians_together_under_a_coloured_gradient():
    noise = 2.0
    rgb, truth = _field(seed=6, sky=(100.0, 140.0, 70.0), slope=(40.0, 0.0, -25.0),
                        noise=noise)
    sky = truth["sky_mask"]
    sky &= sky[:, ::-1]  # star-free pixels placed symmetrically in x: the gradient's median
    assert sky.sum() > 2000  # is its value at the centre, whatever the channel's slope
    before = np.array([np.median(rgb[c][sky]) for c in range(3)])
    assert np.ptp(before) > 30 * noise  # the test can fail: the skies start far apart
    out, skies = neutralise(rgb)
    after = np.array([np.median(out[c][sky]) for c in range(3)])
    assert np.ptp(after) < 0.1 * noise
    np.testing.assert_allclose(after.mean(), before.mean(), atol=0.1 * noise)
    np.testing.assert_allclose(skies, before, atol=0.1 * noise)


def test_star_white_balance_recovers_the_gains():
    gains = np.array([1.35, 1.0, 0.7])
    rgb, truth = _field(seed=7, gains=gains)
    colours = truth["colours"]
    np.testing.assert_allclose(colours.sum(axis=1), colours.shape[1])  # grey on average
    skies = np.array([100.0, 130.0, 80.0])
    factors = star_white_balance(rgb - skies[:, None, None])
    np.testing.assert_allclose(factors, gains[1] / gains, rtol=0.02)
    assert factors[1] == 1.0


def test_white_balance_given_or_from_stars_makes_the_average_star_grey():
    gains = np.array([1.35, 1.0, 0.7])
    rgb, truth = _field(seed=8, gains=gains, sky=(20.0, 20.0, 20.0))
    kwargs = {"stretch": "linear", "log_a": None, "min_percent": 0, "max_percent": 100,
              "neutral": True}
    levels, info = colour_levels(rgb, white_balance="stars", **kwargs)
    np.testing.assert_allclose(info["white_balance"], 1 / gains, rtol=0.02)
    given, info = colour_levels(rgb, white_balance=1 / gains, **kwargs)
    np.testing.assert_array_equal(info["white_balance"], 1 / gains)
    # summed star peaks are grey after either balance; unbalanced they are not
    iy, ix = np.rint(truth["y"]).astype(int), np.rint(truth["x"]).astype(int)
    for result in (levels, given):
        totals = result[:, iy, ix].sum(axis=1)
        np.testing.assert_allclose(totals / totals[1], 1.0, rtol=0.03)
    raw, _ = colour_levels(rgb, white_balance="none", **kwargs)
    totals = raw[:, iy, ix].sum(axis=1)
    assert abs(totals[0] / totals[1] - 1.35) < 0.05


def test_luminance_stretch_keeps_the_colour_ratios_of_stars():
    rgb, truth = _field(seed=9, sky=(10.0, 10.0, 10.0), flux=(20000.0, 60000.0))
    levels, _ = colour_levels(rgb, stretch="asinh", log_a=None, min_percent=0,
                              max_percent=100, neutral=False, white_balance="none")
    lum = rgb.mean(axis=0)
    black = lum.min()  # min_percent=0: the luminance's darkest pixel is black
    iy, ix = np.rint(truth["y"]).astype(int), np.rint(truth["x"]).astype(int)
    ratio = levels[0, iy, ix] / levels[1, iy, ix]
    expected = (rgb[0, iy, ix] - black) / (rgb[1, iy, ix] - black)
    np.testing.assert_allclose(ratio, expected, rtol=1e-9)
    true_ratio = truth["colours"][0] / truth["colours"][1]
    np.testing.assert_allclose(ratio, true_ratio, rtol=0.03)
    # each channel stretched on its own flattens the colours towards white
    own = np.stack([simple_norm(rgb[c], stretch="asinh", min_percent=0, max_percent=100)(
        rgb[c]) for c in range(3)])
    washed = own[0, iy, ix] / own[1, iy, ix]
    reddest = np.argmax(true_ratio)
    assert abs(washed[reddest] - true_ratio[reddest]) > 0.1
    # the brightest channel of a star is never over 1, and a grey star stays grey
    assert np.nanmax(levels) <= 1.0
    grey = np.ones((3, 1, 1)) * lum[None, iy[:1], ix[:1]]
    np.testing.assert_allclose(luminance(grey), lum[iy[:1], ix[:1]][None, :])


def test_a_pixel_uncovered_in_one_channel_stays_masked_there(tmp_path):
    rgb, _ = _field(seed=10)
    coverage = np.full(rgb.shape, 3, np.int32)
    coverage[0, 40, 70] = 0  # red uncovered at (x=70, y=40); its value is still finite
    ds = _dataset(rgb, coverage)
    img = display(ds, white_balance="none")
    shown = img.get_array()
    assert img.origin == "lower" and shown.shape == (*SHAPE, 4)
    assert shown[40, 70, 0] == 0 and shown[40, 70, 1] > 0 and shown[40, 70, 3] == 1
    from bigstack._render import _colour_render

    levels, _, _ = _colour_render(ds, "image", stretch="auto", log_a=None, min_percent=None,
                                  max_percent=None, background="none", max_pixels=None,
                                  decimate_eager=False, white_balance="none", neutralise=True)
    assert np.isnan(levels[0, 40, 70]) and np.isfinite(levels[1:, 40, 70]).all()
    assert np.isfinite(np.delete(levels[0].ravel(), 40 * SHAPE[1] + 70)).all()
    # the same pixels are drawn: display and the levels agree where covered
    np.testing.assert_allclose(shown[..., :3], np.nan_to_num(levels).transpose(1, 2, 0))
    _, pixels = _read(save_png(ds, tmp_path / "p.png", white_balance="none"))
    row = SHAPE[0] - 1 - 40
    assert pixels[row, 70, 0] == 0 and pixels[row, 70, 1] > 0
    # a pixel uncovered in every channel is transparent on screen
    coverage[:, 10, 20] = 0
    shown = display(_dataset(rgb, coverage), white_balance="none").get_array()
    assert shown[10, 20, 3] == 0


def test_colour_options_are_refused_where_they_would_be_ignored(tmp_path):
    rgb, _ = _field(seed=11)
    mono = rgb[1]
    with pytest.raises(ValueError, match="white_balance.*mono"):
        display(mono, white_balance="stars")
    with pytest.raises(ValueError, match="neutralise.*mono"):
        save_png(mono, tmp_path / "m.png", neutralise=False)
    with pytest.raises(ValueError, match="cmap='viridis' is for mono"):
        display(rgb, cmap="viridis")
    with pytest.raises(ValueError, match="norm_array is for mono"):
        save_png(rgb, tmp_path / "c.png", norm_array=mono)
    with pytest.raises(ValueError, match="three positive factors"):
        display(rgb, white_balance=(1.0, -1.0, 1.0))
    with pytest.raises(ValueError, match="for stretched pictures"):
        save_tiff(rgb, tmp_path / "t.tif", bits=32, stretch="log")
    bad = _dataset(rgb).assign_coords(channel=["R", "G", "H"])
    with pytest.raises(ValueError, match="not R, G, B"):
        save_fits(bad, tmp_path / "bad.fits")
    assert not list(tmp_path.iterdir())


def test_white_balance_from_stars_needs_stars():
    flat = np.random.default_rng(12).normal(100.0, 2.0, (3, *SHAPE))
    with pytest.raises(ValueError, match="white_balance='stars': only 0"):
        colour_levels(flat, stretch="auto", log_a=None, min_percent=None, max_percent=None,
                      neutral=True, white_balance="stars")


# --------------------------------------------------------------------------
# command line


def _colour_store(path, ds):
    """A finished colour stack store that ``open_stack`` reads (the store's marker and book)."""
    import zarr

    from bigstack._store import BOOK, MARKER

    attrs = dict(ds.attrs, **{MARKER: {"kind": "stack", "layout": 1}}, complete=True,
                 inputs=[])
    ds = ds.assign_attrs(attrs)
    ds.to_zarr(path, zarr_format=3, consolidated=False)
    group = zarr.open_group(path, mode="r+")
    group.create_group(BOOK)
    zarr.consolidate_metadata(path)
    return path


@pytest.fixture(scope="module")
def colour_store(tmp_path_factory):
    import warnings

    rgb, _ = _field(seed=13, gains=(1.3, 1.0, 0.75))
    store = tmp_path_factory.mktemp("colour") / "c.zarr"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's notices about format 3 strings/consolidation
        _colour_store(str(store), _dataset(rgb))
    return rgb, store


def test_cli_render_of_a_colour_store(colour_store, tmp_path, capsys):
    rgb, store = colour_store
    out = tmp_path / "pic.png"
    assert main(["render", str(store), "-o", str(out), "--fits", str(tmp_path / "c.fits"),
                 "--tiff", str(tmp_path / "c.tif"), "--bits", "16"]) == 0
    pixels = _png_samples(out)
    assert pixels.shape == (*SHAPE, 3) and pixels.dtype == np.uint16
    reference = save_png(_dataset(rgb), tmp_path / "ref.png", bits=16)
    np.testing.assert_array_equal(pixels, _png_samples(reference))
    with fits.open(tmp_path / "c.fits") as hdul:
        assert hdul[0].header["NAXIS3"] == 3
        np.testing.assert_array_equal(hdul[0].data, rgb.astype(np.float32))
    assert tifffile.imread(tmp_path / "c.tif").shape == (*SHAPE, 3)
    assert "wrote" in capsys.readouterr().out
    # the options reach the picture
    assert main(["render", str(store), "-o", str(tmp_path / "n.png"), "--white-balance",
                 "none", "--no-neutralise", "--stretch", "linear"]) == 0
    reference = save_png(_dataset(rgb), tmp_path / "nref.png", white_balance="none",
                         neutralise=False, stretch="linear", min_percent=0.5,
                         max_percent=99.9)
    assert np.array_equal(_read(tmp_path / "n.png")[1], _read(reference)[1])
    assert main(["render", str(store), "-o", str(tmp_path / "g.png"), "--white-balance",
                 "0.77,1,1.33"]) == 0


def test_cli_refuses_colour_options_on_a_mono_store_and_bad_factors(colour_store, tmp_path,
                                                                     capsys):
    _, store = colour_store
    with pytest.raises(SystemExit) as exit_:
        main(["render", str(store), "--white-balance", "1,2", "-o", str(tmp_path / "x.png")])
    assert exit_.value.code == 2
    assert "three positive factors" in capsys.readouterr().err
    assert main(["render", str(store)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "give an output" in err
    assert main(["render", str(store), "--fits", str(tmp_path / "y.fits"), "--bits", "16"]) == 2
    assert "--bits 16 is for the -o picture" in capsys.readouterr().err
    mono = tmp_path / "mono.fits"
    fits.PrimaryHDU(np.random.default_rng(0).normal(100, 3, (40, 50)).astype(np.float32)) \
        .writeto(mono)
    assert main(["render", str(mono), "-o", str(tmp_path / "m.png"), "--no-neutralise"]) == 2
    assert "apply to colour stacks" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "m.png").exists()


def test_a_lazy_colour_stack_is_drawn_as_block_means_without_loading_it():
    rgb, _ = _field(seed=14)
    ds = _dataset(rgb).chunk({"y": 50})
    from .helpers import raise_if_dask_computes

    img = display(ds, max_pixels=SHAPE[0] * SHAPE[1] // 9, white_balance="none")
    shown = img.get_array()
    assert shown.shape == (SHAPE[0] // 3, SHAPE[1] // 3, 4)
    assert img.get_extent() == [-0.5, SHAPE[1] - 0.5, -0.5, SHAPE[0] - 0.5]
    # the red plane drawn follows the red block means (a monotonic stretch of them)
    means = rgb[0].astype(np.float32).reshape(SHAPE[0] // 3, 3, SHAPE[1] // 3, 3).mean((1, 3))
    bright = means > np.percentile(means, 99)
    assert shown[..., 0][bright].mean() > shown[..., 0][~bright].mean()
    with raise_if_dask_computes():  # opening and checking a lazy colour stack reads nothing
        from bigstack._render_colour import colour_parts

        data, coverage, _ = colour_parts(ds)
        assert data.shape == coverage.shape == (3, *SHAPE)


def test_cli_stack_writes_the_fits_and_tiff_asked_for(tmp_path, capsys):
    from bigstack import open_stack, synthetic

    truth = synthetic.make_frames(tmp_path / "lights", n_frames=3, shape=(64, 80), seed=3,
                                  stars=synthetic.Stars(ref_isolation=20))
    pattern = str(tmp_path / "lights")
    store = tmp_path / "s.zarr"
    assert main(["stack", pattern, "-o", str(store), "--no-align", "--white-balance", "none",
                 "--no-progress"]) == 2
    assert "apply to colour stacks" in capsys.readouterr().err and not store.exists()
    assert main(["stack", pattern, "-o", str(store), "--no-align", "--no-progress",
                 "--png", str(tmp_path / "s.png"), "--bits", "16",
                 "--fits", str(tmp_path / "s.fits"), "--tiff", str(tmp_path / "s.tif"),
                 "--tiff-bits", "32"]) == 0
    ds = open_stack(store)
    with fits.open(tmp_path / "s.fits") as hdul:
        np.testing.assert_array_equal(hdul[0].data, ds["stack"].values)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), ds["stack"].values[::-1])
    mode, pixels = _read(tmp_path / "s.png")
    assert pixels.dtype == np.uint16 or mode.startswith("I;16")
    assert len(truth.paths) == 3


def test_the_default_white_balance_leaves_a_starless_image_with_a_warning(tmp_path):
    flat = np.random.default_rng(15).normal(100.0, 2.0, (3, *SHAPE))
    flat[0] += 30.0
    with pytest.warns(BigstackWarning, match="0 stars usable for a white balance"):
        levels, info = colour_levels(flat, stretch="auto", log_a=None, min_percent=None,
                                     max_percent=None, neutral=True, white_balance="default")
    np.testing.assert_array_equal(info["white_balance"], np.ones(3))
    # neutralised: the red excess is gone from the picture too
    assert abs(np.median(levels[0]) - np.median(levels[1])) < 0.01
    with pytest.raises(ValueError, match="white_balance='stars': only 0"):
        save_png(flat, tmp_path / "s.png", white_balance="stars")
    with pytest.warns(BigstackWarning, match="stars usable"):
        save_png(flat, tmp_path / "d.png")
