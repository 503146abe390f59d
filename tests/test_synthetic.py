"""Tests of bigstack.synthetic: the frames on disk must match the truth returned.

Every check reads the written files back with an independent reader
(astropy, imagecodecs, Pillow, rawpy) and measures them with plain numpy
here, rather than trusting the generator's own helpers.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bigstack import synthetic

GREY = np.array([0.2126, 0.7152, 0.0722])


def _read_fits(path):
    return fits.getdata(path).astype(np.float64)


def _sigma(level, params):
    """Expected noise (ADU) at expected value ``level``: Poisson in e- plus read noise."""
    gain, rn = params["gain"], params["read_noise"]
    return np.sqrt(np.maximum(level, 0.0) * gain + rn**2) / gain


def _disc_argmax(image, centre, radius):
    """``[x, y]`` of the brightest pixel within ``radius`` of ``centre`` (``[x, y]``)."""
    yy, xx = np.indices(image.shape)
    outside = (xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 > radius**2
    masked = np.where(outside, -np.inf, image)
    iy, ix = np.unravel_index(np.argmax(masked), image.shape)
    return np.array([ix, iy])


def _centroid(image, guess, half=5, annulus=(12, 20)):
    """Background-subtracted intensity-weighted centroid ``[x, y]`` near ``guess``.

    Three passes, each re-centring the window on the rounded centroid; the background
    is the median of an annulus around the window centre.
    """
    yy, xx = np.indices(image.shape)
    cx, cy = float(guess[0]), float(guess[1])
    for _ in range(3):
        x0, y0 = round(cx), round(cy)
        r2 = (xx - x0) ** 2 + (yy - y0) ** 2
        ring = (r2 >= annulus[0] ** 2) & (r2 < annulus[1] ** 2)
        bg = np.median(image[ring])
        win = image[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1] - bg
        wy, wx = np.mgrid[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
        cx, cy = (win * wx).sum() / win.sum(), (win * wy).sum() / win.sum()
    return np.array([cx, cy])


# --------------------------------------------------------------------------
# FITS


def test_fits_uint16_as_cameras_write_it(tmp_path):
    # ref_peak above 32767 so that a wrong BZERO would show.
    truth = synthetic.make_frames(
        tmp_path, n_frames=4, shape=(64, 96), n_stars=30, ref_peak=50000.0, exptime=20.0, gap=3.0
    )
    assert [p.rsplit("/", 1)[1] for p in truth.paths] == [f"frame-{i:04d}.fit" for i in range(4)]
    dates = []
    for path in truth.paths:
        with fits.open(path) as hdul:
            header = hdul[0].header
            assert header["BITPIX"] == 16
            assert header["BZERO"] == 32768
            assert header["BSCALE"] == 1
            assert header["IMAGETYP"] == "Light Frame"
            assert header["EXPTIME"] == 20.0
            assert header["GAIN"] == truth.params["gain"]
            assert header["FILTER"].strip() == "L"
            assert "SHIFTX" not in header and "SHIFTY" not in header
            dates.append(dt.datetime.fromisoformat(header["DATE-OBS"]))
        data = fits.getdata(path)
        assert data.dtype == np.uint16
        assert data.shape == (64, 96)
        assert data.max() > 40000  # the reference star, read back unsigned
    steps = np.diff([d.timestamp() for d in dates])
    np.testing.assert_allclose(steps, 23.0)
    assert truth.dates == [d.isoformat(timespec="milliseconds") for d in dates]


def test_fits_float32(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(48, 40), dtype="float32", n_stars=10)
    with fits.open(truth.paths[1]) as hdul:
        assert hdul[0].header["BITPIX"] == -32
        assert "BZERO" not in hdul[0].header
        data = hdul[0].data
    assert data.dtype.kind == "f" and data.dtype.itemsize == 4
    assert np.any(data != np.rint(data))  # not rounded to integers


# --------------------------------------------------------------------------
# the truth, measured independently


def test_subpixel_shifts_agree_with_centroids(tmp_path):
    # Reference star: flux ~3.2e5 ADU = 4.8e5 e- (gain 1.5); in the 11x11
    # centroid window the noise is sqrt(4.8e5 + 121 * (1500 + 25)) ~ 800 e-,
    # so SNR ~ 600 and the centroid's own error is ~ 0.005 px.
    truth = synthetic.make_frames(
        tmp_path,
        n_frames=6,
        shape=(256, 256),
        subpixel=True,
        drift_step=2.0,
        jitter=0.7,
        ref_star=(120.3, 131.7),
        seed=3,
    )
    shifts = truth.shifts
    assert np.all(shifts[0] == 0)
    assert np.any(shifts[1:] != np.rint(shifts[1:]))  # really sub-pixel
    assert np.abs(shifts).max() < 15  # stays inside the search disc below

    measured = []
    for path in truth.paths:
        image = _read_fits(path)
        peak = _disc_argmax(image, truth.ref_star, 25)
        measured.append(_centroid(image, peak))
    measured = np.array(measured)
    error = (measured - measured[0]) - shifts
    rms = np.sqrt(np.mean(error[1:] ** 2))
    assert rms < 0.05, (rms, error)
    # and the star is where the truth puts it in frame 0
    np.testing.assert_allclose(measured[0], truth.ref_star, atol=0.05)


def test_integer_shifts_move_the_peak_exactly(tmp_path):
    truth = synthetic.make_frames(
        tmp_path, n_frames=6, shape=(200, 220), drift_step=3.0, jitter=1.0, seed=5
    )
    shifts = truth.shifts
    np.testing.assert_array_equal(shifts, np.rint(shifts))
    assert np.count_nonzero(shifts) >= 4
    peaks = [_disc_argmax(_read_fits(p), truth.ref_star, 25) for p in truth.paths]
    np.testing.assert_array_equal(peaks[0], truth.ref_star)
    for i, peak in enumerate(peaks):
        np.testing.assert_array_equal(peak - peaks[0], shifts[i])


@pytest.mark.parametrize("psf, atol", [("gaussian", 1e-4), ("moffat", 2e-3)])
def test_psf_is_unbiased_and_conserves_flux(tmp_path, psf, atol):
    kw = dict(n_frames=1, shape=(96, 96), gradient=(0, 0), n_stars=0, psf=psf)
    truth = synthetic.make_frames(tmp_path, ref_star=(47.3, 50.8), **kw)
    star = truth.clean.astype(np.float64) - truth.params["sky"]
    yy, xx = np.indices(star.shape)
    centroid = [(star * xx).sum() / star.sum(), (star * yy).sum() / star.sum()]
    np.testing.assert_allclose(centroid, (47.3, 50.8), atol=atol)
    np.testing.assert_allclose(star.sum(), truth.ref_flux, rtol=3e-3 if psf == "moffat" else 1e-5)
    # centred on a pixel, the peak is ref_peak
    centred = synthetic.make_frames(tmp_path / "c", **kw)
    x, y = (int(v) for v in centred.ref_star)
    np.testing.assert_allclose(centred.clean[y, x] - 1000.0, 30000.0, rtol=1e-5)


def test_gaussian_psf_is_integrated_over_the_pixel(tmp_path):
    # Undersampled (FWHM 1 px): a PSF sampled at pixel centres would differ
    # by ~10% from the pixel integrals and not conserve the flux.
    fwhm, pos = 1.0, (40.3, 30.8)
    truth = synthetic.make_frames(
        tmp_path, n_frames=1, shape=(64, 80), gradient=(0, 0), n_stars=0, fwhm=fwhm, ref_star=pos
    )
    star = truth.clean.astype(np.float64) - truth.params["sky"]
    np.testing.assert_allclose(star.sum(), truth.ref_flux, rtol=1e-5)
    # midpoint rule with 200 x 200 points per pixel, for the 3 x 3 core
    sigma = fwhm / (2 * np.sqrt(2 * np.log(2)))
    sub = (np.arange(200) + 0.5) / 200 - 0.5
    for y in (30, 31, 32):
        for x in (39, 40, 41):
            gx = np.exp(-0.5 * ((x + sub - pos[0]) / sigma) ** 2).mean()
            gy = np.exp(-0.5 * ((y + sub - pos[1]) / sigma) ** 2).mean()
            expected = truth.ref_flux * gx * gy / (2 * np.pi * sigma**2)
            np.testing.assert_allclose(star[y, x], expected, rtol=1e-4, atol=0.05)


def test_frame_clean_moves_stars_not_sky(tmp_path):
    truth = synthetic.make_frames(
        tmp_path, n_frames=3, shape=(128, 160), gradient=(0, 0), drift_step=4.0, seed=2
    )
    for i in (1, 2):
        dx, dy = (int(v) for v in truth.shifts[i])
        frame = truth.frame_clean(i)
        ny, nx = frame.shape
        # star at (x, y) in frame 0 is at (x + dx, y + dy) in frame i
        ref = truth.clean[max(0, -dy) : ny - max(0, dy), max(0, -dx) : nx - max(0, dx)]
        moved = frame[max(0, dy) : ny + min(0, dy), max(0, dx) : nx + min(0, dx)]
        np.testing.assert_allclose(moved, ref, rtol=1e-5, atol=1e-2)
    np.testing.assert_array_equal(truth.frame_clean(0), truth.clean)


def test_star_field(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(256, 256), n_stars=300)
    x, y, flux = truth.stars["x"], truth.stars["y"], truth.stars["flux"]
    assert (x[0], y[0]) == truth.ref_star
    inside = (x >= -0.5) & (x < 255.5) & (y >= -0.5) & (y < 255.5)
    assert inside.sum() == 301  # n_stars plus the reference
    d = np.hypot(x[1:] - x[0], y[1:] - y[0])
    assert d.min() > 30  # the reference star is isolated
    field = flux[1:][inside[1:]]
    assert field.max() / np.median(field) > 20  # a few bright ones
    assert truth.clean.max() < 65535  # reference and field below saturation by default
    assert np.ptp(truth.stars["r"] - truth.stars["b"]) > 0.1  # stars have colours


def test_noise_matches_the_stated_model(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(256, 256), seed=11, trail=False)
    image = _read_fits(truth.paths[0])
    clean = truth.clean.astype(np.float64)
    z = (image - clean) / _sigma(clean, truth.params)
    mask = np.ones(image.shape, bool)
    mask[truth.hot_pixels] = False
    mask[truth.cosmic_rays[0]] = False
    assert mask.sum() > 0.99 * mask.size
    assert abs(z[mask].mean()) < 0.02
    assert abs(z[mask].std() - 1.0) < 0.02
    assert np.abs(z[mask]).max() < 6.0
    # sky_sigma is the noise of the sky away from stars
    sky = mask & (clean < truth.params["sky"] * 1.2)
    sky_std = (image - clean)[sky].std()
    np.testing.assert_allclose(sky_std, truth.sky_sigma, rtol=0.05)
    unsaturated = mask & (clean < 65535)  # noise_map ignores clipping
    np.testing.assert_allclose(
        truth.noise_map(0)[unsaturated], _sigma(clean, truth.params)[unsaturated], rtol=1e-4
    )


# --------------------------------------------------------------------------
# hot pixels, cosmic rays, trails


def test_hot_pixels_cosmic_rays_and_trail_are_where_truth_says(tmp_path):
    truth = synthetic.make_frames(
        tmp_path,
        n_frames=4,
        shape=(160, 192),
        drift_step=4.0,
        hot_pixels=12,
        cosmic_rays=8,
        trail=[2],
        seed=7,
    )
    assert np.count_nonzero(truth.shifts[1:]) > 0  # stars move, hot pixels must not
    assert truth.hot_pixels[0].size == 12
    assert [t[0].size > 0 for t in truth.trail] == [False, False, True, False]
    assert truth.trail_lines[2] is not None and truth.trail_lines[0] is None
    assert sum(c[0].size for c in truth.cosmic_rays) > 4
    hits = [set(zip(*c, strict=True)) for c in truth.cosmic_rays]
    assert hits[0] != hits[1]  # random per frame

    for i, path in enumerate(truth.paths):
        image = _read_fits(path)
        clean = truth.frame_clean(i).astype(np.float64)
        z = (image - clean) / _sigma(clean, truth.params)
        assert np.all(z[truth.hot_pixels] > 8), i  # same sensor pixels in every frame
        if truth.cosmic_rays[i][0].size:
            assert np.all(z[truth.cosmic_rays[i]] > 8), i
        if truth.trail[i][0].size:
            excess = (image - clean)[truth.trail[i]]
            assert np.median(excess) > 0.5 * truth.params["trail_peak"], i
            assert np.all(z[truth.trail[i]] > 5), i
        # and nothing bright anywhere else
        other = np.ones(image.shape, bool)
        other[truth.hot_pixels] = False
        other[truth.cosmic_rays[i]] = False
        if truth.trail_lines[i] is not None:
            # the trail's faint wings are outside the listed core
            line = truth.trail_lines[i]
            yy, xx = np.indices(image.shape)
            dist = np.abs(
                -(xx - line["x"]) * np.sin(line["angle"]) + (yy - line["y"]) * np.cos(line["angle"])
            )
            other &= dist > 2 * line["fwhm"]
        assert np.abs(z[other]).max() < 6, i


# --------------------------------------------------------------------------
# determinism


def _bytes(paths):
    return [Path(p).read_bytes() for p in paths]


def test_same_seed_same_bytes_and_frames_independent_of_count(tmp_path):
    kw = dict(shape=(64, 64), n_stars=40, trail=0.5, subpixel=True)
    a = synthetic.make_frames(tmp_path / "a", n_frames=5, seed=1, **kw)
    b = synthetic.make_frames(tmp_path / "b", n_frames=5, seed=1, workers=1, **kw)
    c = synthetic.make_frames(tmp_path / "c", n_frames=5, seed=2, **kw)
    d = synthetic.make_frames(tmp_path / "d", n_frames=3, seed=1, **kw)
    assert _bytes(a.paths) == _bytes(b.paths)
    np.testing.assert_array_equal(a.shifts, b.shifts)
    assert all(x != y for x, y in zip(_bytes(a.paths), _bytes(c.paths), strict=True))
    assert _bytes(a.paths[:3]) == _bytes(d.paths)
    np.testing.assert_array_equal(a.shifts[:3], d.shifts)


# --------------------------------------------------------------------------
# colour formats


def test_png_16bit_colour(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(96, 128), fmt="png", n_stars=30)
    assert truth.paths[0].endswith("frame-0000.png")
    rgb = imagecodecs.imread(truth.paths[0])
    assert rgb.shape == (96, 128, 3) and rgb.dtype == np.uint16
    grey = rgb.astype(np.float64) @ GREY
    x, y = (int(v) for v in truth.ref_star)
    noise = truth.noise_map(0)[y, x]
    assert abs(grey[y, x] - truth.clean[y, x]) < 5 * noise
    assert abs(np.median(grey - truth.clean)) < truth.sky_sigma
    # grey of three independent noisy planes: sky_sigma says how much noise
    sky = truth.clean < 1.2 * truth.params["sky"]
    sky[truth.hot_pixels] = False
    sky[truth.cosmic_rays[0]] = False
    np.testing.assert_allclose((grey - truth.clean)[sky].std(), truth.sky_sigma, rtol=0.08)
    red, blue = rgb[..., 0].astype(float), rgb[..., 2].astype(float)
    assert np.median(red) > 1.2 * np.median(blue)  # the sky has a colour
    np.testing.assert_allclose(truth.frame_clean(0, rgb=True) @ GREY, truth.clean, rtol=1e-5)


def test_grey_of_colour_equals_monochrome_model(tmp_path):
    # star and sky colours have unit luminance: grey(RGB) is the mono frame
    kw = dict(n_frames=2, shape=(64, 64), n_stars=40, seed=9)
    mono = synthetic.make_frames(tmp_path / "fits", **kw)
    colour = synthetic.make_frames(tmp_path / "png", fmt="png", **kw)
    np.testing.assert_allclose(colour.clean, mono.clean, rtol=1e-5)
    np.testing.assert_allclose(colour.frame_clean(1), mono.frame_clean(1), rtol=1e-5)


def test_png_8bit_colour(tmp_path):
    from PIL import Image

    truth = synthetic.make_frames(
        tmp_path, n_frames=1, shape=(64, 64), fmt="png", dtype="uint8", n_stars=20
    )
    with Image.open(truth.paths[0]) as img:
        assert img.mode == "RGB"
        rgb = np.asarray(img)
    assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
    grey = rgb.astype(np.float64) @ GREY
    x, y = (int(v) for v in truth.ref_star)
    assert truth.clean[y, x] > 100  # the star, in 8-bit units
    assert abs(grey[y, x] - truth.clean[y, x]) < 3


def test_jpg_colour(tmp_path):
    imagecodecs = pytest.importorskip("imagecodecs")
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(64, 80), fmt="jpg", n_stars=20)
    assert truth.paths[1].endswith("frame-0001.jpg")
    rgb = imagecodecs.imread(truth.paths[1])
    assert rgb.shape == (64, 80, 3) and rgb.dtype == np.uint8
    grey = rgb.astype(np.float64) @ GREY
    expected = np.asarray(truth.ref_star) + truth.shifts[1]
    peak = _disc_argmax(grey, truth.ref_star, 20)
    assert np.abs(peak - expected).max() <= 1


def test_dng_bayer_mosaic(tmp_path):
    rawpy = pytest.importorskip("rawpy")
    pytest.importorskip("tifffile")
    pytest.importorskip("bigstack._dng")
    truth = synthetic.make_frames(
        tmp_path, n_frames=2, shape=(64, 96), fmt="dng", n_stars=20, drift_step=4.0, seed=4
    )
    assert truth.paths[0].endswith("frame-0000.dng")
    for i, path in enumerate(truth.paths):
        with rawpy.imread(path) as raw:
            cfa = raw.raw_image.astype(np.float64)
            pattern = raw.raw_pattern.copy()
            desc = raw.color_desc
        assert desc == b"RGBG" and pattern.tolist() == [[0, 1], [3, 2]]  # RGGB
        assert cfa.shape == (64, 96)
        clean = truth.frame_clean(i).astype(np.float64)
        z = (cfa - clean) / _sigma(clean, truth.params)
        mask = np.ones(cfa.shape, bool)
        mask[truth.hot_pixels] = False
        mask[truth.cosmic_rays[i]] = False
        assert abs(z[mask].mean()) < 0.05 and abs(z[mask].std() - 1) < 0.05
        x, y = np.asarray(truth.ref_star) + truth.shifts[i]
        assert cfa[int(y), int(x)] > 10000  # the reference star moved with the shift
    # the sky is coloured on the mosaic: red pixels brighter than blue ones
    assert np.median(cfa[0::2, 0::2]) > 1.2 * np.median(cfa[1::2, 1::2])


# --------------------------------------------------------------------------
# the tutorial's frames


def test_tutorial_frames_reproduce_the_tutorial_stars(tmp_path):
    truth = synthetic.make_tutorial_frames(tmp_path)
    np.testing.assert_array_equal(truth.shifts, [[0, 0], [2, 16], [21, 36], [44, 23], [65, 39]])
    for path, star in zip(truth.paths, synthetic.TUTORIAL_STARS, strict=True):
        data = fits.getdata(path)
        assert data.dtype == np.uint16 and data.shape == (2200, 3200)
        for x1, y1 in ((500, 600), (501, 601)):  # half-open box and find_star's +-S//2
            box = data[400:y1, 300:x1]
            iy, ix = np.unravel_index(np.argmax(box), box.shape)
            assert (300 + ix, 400 + iy) == star


def test_tutorial_box_stays_clear_in_a_crowded_field(tmp_path):
    # many saturating hot pixels, cosmic rays and bright stars: none may win the box
    truth = synthetic.make_tutorial_frames(
        tmp_path,
        shape=(700, 640),
        n_stars=1000,
        flux_min=2e5,
        hot_pixels=4000,
        hot_level=(60000.0, 65000.0),
        cosmic_rays=500,
        cosmic_level=(60000.0, 65000.0),
    )
    box = (slice(400, 600), slice(300, 500))
    for i, (path, star) in enumerate(zip(truth.paths, synthetic.TUTORIAL_STARS, strict=True)):
        data = fits.getdata(path)
        iy, ix = np.unravel_index(np.argmax(data[box]), data[box].shape)
        assert (300 + ix, 400 + iy) == star, i
        for y, x in (truth.hot_pixels, truth.cosmic_rays[i]):
            assert not np.any((x >= 300) & (x < 500) & (y >= 400) & (y < 600))
    assert (fits.getdata(truth.paths[0]) == 65535).sum() > 1000  # it is crowded outside


# --------------------------------------------------------------------------
# errors


def test_refuses_to_overwrite(tmp_path):
    synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), n_stars=5)
    with pytest.raises(FileExistsError, match="frame-0000.fit"):
        synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), n_stars=5)
    synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), n_stars=5, overwrite=True)

    # checked before anything is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "x-0002.fit").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="x-0002.fit"):
        synthetic.make_frames(other, n_frames=3, shape=(32, 32), prefix="x")
    assert sorted(p.name for p in other.iterdir()) == ["x-0002.fit"]
    assert (other / "x-0002.fit").read_bytes() == b"keep"


def test_creates_the_directory(tmp_path):
    truth = synthetic.make_frames(tmp_path / "a" / "b", n_frames=1, shape=(32, 32), n_stars=5)
    assert (tmp_path / "a" / "b" / "frame-0000.fit").is_file()
    assert truth.paths == [str(tmp_path / "a" / "b" / "frame-0000.fit")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fmt="jpg", dtype="uint16"), "dtype"),
        (dict(fmt="tiff"), "fmt"),
        (dict(shifts=[[1, 0], [2, 0]]), r"shifts\[0\]"),
        (dict(shifts=[[0, 0], [0.5, 0]]), "whole"),
        (dict(ref_star=(100, 5)), "outside"),
        (dict(noise="uniform"), "noise"),
    ],
)
def test_rejects_bad_parameters(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.make_frames(tmp_path, n_frames=2, shape=(32, 32), **kwargs)
    assert not list(tmp_path.iterdir())


def test_tutorial_frames_refuse_what_they_fix(tmp_path):
    with pytest.raises(ValueError, match="shifts"):
        synthetic.make_tutorial_frames(tmp_path, shifts=[[0, 0]] * 5)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------
# speed


@pytest.mark.slow
def test_speed_200_frames_2048(tmp_path_factory):
    """200 uint16 FITS frames of 2048 x 2048 in well under a minute (2 cores)."""
    directory = tmp_path_factory.mktemp("speed")
    try:
        start = time.perf_counter()
        truth = synthetic.make_frames(directory, n_frames=200, shape=(2048, 2048))
        elapsed = time.perf_counter() - start
        assert len(truth.paths) == 200
        print(f"200 frames 2048x2048 uint16 FITS: {elapsed:.1f} s")
        assert elapsed < 60
    finally:
        shutil.rmtree(directory)
