"""Tests of bigstack.synthetic: the frames on disk must match the truth returned.

Every check reads the written files back with an independent reader
(astropy, imagecodecs, Pillow, rawpy) and measures them with plain numpy
here, rather than trusting the generator's own helpers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bigstack import synthetic
from bigstack.synthetic import Artefacts, Camera, Motion, Sensor, Sky, Stars

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
        tmp_path, n_frames=4, shape=(64, 96), stars=Stars(n_stars=30, ref_peak=50000.0),
        camera=Camera(exptime=20.0, gap=3.0),
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
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(48, 40), dtype="float32",
                                  stars=Stars(n_stars=10))
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
        motion=Motion(subpixel=True, drift_step=2.0, jitter=0.7),
        stars=Stars(ref_star=(120.3, 131.7)),
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
        tmp_path, n_frames=6, shape=(200, 220), motion=Motion(drift_step=3.0, jitter=1.0), seed=5
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
    kw = dict(n_frames=1, shape=(96, 96), sky=Sky(gradient=(0, 0)))
    truth = synthetic.make_frames(
        tmp_path, stars=Stars(n_stars=0, psf=psf, ref_star=(47.3, 50.8)), **kw
    )
    star = truth.clean.astype(np.float64) - truth.params["sky"]
    yy, xx = np.indices(star.shape)
    centroid = [(star * xx).sum() / star.sum(), (star * yy).sum() / star.sum()]
    np.testing.assert_allclose(centroid, (47.3, 50.8), atol=atol)
    np.testing.assert_allclose(star.sum(), truth.ref_flux, rtol=3e-3 if psf == "moffat" else 1e-5)
    # centred on a pixel, the peak is ref_peak
    centred = synthetic.make_frames(tmp_path / "c", stars=Stars(n_stars=0, psf=psf), **kw)
    x, y = (int(v) for v in centred.ref_star)
    np.testing.assert_allclose(centred.clean[y, x] - 1000.0, 30000.0, rtol=1e-5)


def test_gaussian_psf_is_integrated_over_the_pixel(tmp_path):
    # Undersampled (FWHM 1 px): a PSF sampled at pixel centres would differ
    # by ~10% from the pixel integrals and not conserve the flux.
    fwhm, pos = 1.0, (40.3, 30.8)
    truth = synthetic.make_frames(
        tmp_path, n_frames=1, shape=(64, 80), sky=Sky(gradient=(0, 0)),
        stars=Stars(n_stars=0, fwhm=fwhm, ref_star=pos),
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
        tmp_path, n_frames=3, shape=(128, 160), sky=Sky(gradient=(0, 0)),
        motion=Motion(drift_step=4.0), seed=2,
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
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(256, 256), stars=Stars(n_stars=300))
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
    truth = synthetic.make_frames(
        tmp_path, n_frames=1, shape=(256, 256), seed=11, artefacts=Artefacts(trail=False)
    )
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
        motion=Motion(drift_step=4.0),
        camera=Camera(hot_pixels=12),
        artefacts=Artefacts(cosmic_rays=8, trail=[2]),
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
    kw = dict(shape=(64, 64), stars=Stars(n_stars=40), artefacts=Artefacts(trail=0.5),
              motion=Motion(subpixel=True))
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
    truth = synthetic.make_frames(
        tmp_path, n_frames=2, shape=(96, 128), fmt="png", stars=Stars(n_stars=30)
    )
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
    kw = dict(n_frames=2, shape=(64, 64), stars=Stars(n_stars=40), seed=9)
    mono = synthetic.make_frames(tmp_path / "fits", **kw)
    colour = synthetic.make_frames(tmp_path / "png", fmt="png", **kw)
    np.testing.assert_allclose(colour.clean, mono.clean, rtol=1e-5)
    np.testing.assert_allclose(colour.frame_clean(1), mono.frame_clean(1), rtol=1e-5)


def test_png_8bit_colour(tmp_path):
    from PIL import Image

    truth = synthetic.make_frames(
        tmp_path, n_frames=1, shape=(64, 64), fmt="png", dtype="uint8", stars=Stars(n_stars=20)
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
    truth = synthetic.make_frames(
        tmp_path, n_frames=2, shape=(64, 80), fmt="jpg", stars=Stars(n_stars=20)
    )
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
        tmp_path, n_frames=2, shape=(64, 96), fmt="dng", stars=Stars(n_stars=20),
        motion=Motion(drift_step=4.0), seed=4,
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
        stars=Stars(n_stars=1000, flux_min=2e5),
        camera=Camera(hot_pixels=4000, hot_level=(60000.0, 65000.0)),
        artefacts=Artefacts(cosmic_rays=500, cosmic_level=(60000.0, 65000.0)),
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
    few = Stars(n_stars=5)
    synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), stars=few)
    with pytest.raises(FileExistsError, match="frame-0000.fit"):
        synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), stars=few)
    synthetic.make_frames(tmp_path, n_frames=3, shape=(32, 32), stars=few, overwrite=True)

    # checked before anything is written
    other = tmp_path / "other"
    other.mkdir()
    (other / "x-0002.fit").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="x-0002.fit"):
        synthetic.make_frames(other, n_frames=3, shape=(32, 32), prefix="x")
    assert sorted(p.name for p in other.iterdir()) == ["x-0002.fit"]
    assert (other / "x-0002.fit").read_bytes() == b"keep"


def test_creates_the_directory(tmp_path):
    truth = synthetic.make_frames(
        tmp_path / "a" / "b", n_frames=1, shape=(32, 32), stars=Stars(n_stars=5)
    )
    assert (tmp_path / "a" / "b" / "frame-0000.fit").is_file()
    assert truth.paths == [str(tmp_path / "a" / "b" / "frame-0000.fit")]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fmt="jpg", dtype="uint16"), "dtype"),
        (dict(fmt="webp"), "fmt"),
        (dict(stars=Stars(ref_star=(100, 5))), r"Stars\.ref_star .* outside"),
        (dict(motion=Motion(shifts=[[0, 0], [1, 0], [2, 0]])), "Motion.shifts has 3 frames"),
        (dict(motion=Motion(rotation=[0, 1, 2])), "Motion.rotation has 3 frames"),
        (dict(motion=Motion(scale_rate=-1.0)), "Motion.scale_rate"),
        (dict(sky=Sky(gradient=(-3, 0))), "Sky.gradient"),
        (dict(n_frames=0), "n_frames"),
        (dict(seed=-1), "seed"),
    ],
)
def test_rejects_bad_parameters(tmp_path, kwargs, match):
    kwargs = {"n_frames": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        synthetic.make_frames(tmp_path, shape=(32, 32), **kwargs)
    assert not list(tmp_path.iterdir())


def test_tutorial_frames_refuse_what_they_fix(tmp_path):
    with pytest.raises(ValueError, match="shifts"):
        synthetic.make_tutorial_frames(tmp_path, shifts=[[0, 0]] * 5)
    with pytest.raises(ValueError, match="Stars.ref_star"):
        synthetic.make_tutorial_frames(tmp_path, stars=Stars(ref_star=(10, 10)))
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


# --------------------------------------------------------------------------
# option groups: validation and the flat keywords of old


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Sky(level=-1.0), r"Sky\.level must be >= 0"),
        (lambda: Sky(gradient=(0.1,)), r"Sky\.gradient"),
        (lambda: Sky(colour=(1, 0, 1)), r"Sky\.colour"),
        (lambda: Stars(fwhm=0), r"Stars\.fwhm must be > 0"),
        (lambda: Stars(fwhm=float("nan")), r"Stars\.fwhm must be a finite number"),
        (lambda: Stars(psf="airy"), r"Stars\.psf must be one of"),
        (lambda: Stars(moffat_beta=1.0), r"Stars\.moffat_beta"),
        (lambda: Stars(n_stars=-3), r"Stars\.n_stars"),
        (lambda: Stars(n_stars=10, density=0.01), r"Stars\.n_stars or Stars\.density"),
        (lambda: Stars(flux_min=10.0, flux_max=5.0), r"Stars\.flux_min .* Stars\.flux_max"),
        (lambda: Stars(ref_star=(1, 2, 3)), r"Stars\.ref_star"),
        (lambda: Camera(noise="uniform"), r"Camera\.noise"),
        (lambda: Camera(gain=0), r"Camera\.gain"),
        (lambda: Camera(hot_level=(500.0, 100.0)), r"Camera\.hot_level"),
        (lambda: Camera(start="yesterday"), r"Camera\.start"),
        (lambda: Camera(column_pattern=-1), r"Camera\.column_pattern"),
        (lambda: Camera(hot_pixels=2.5), r"Camera\.hot_pixels"),
        (lambda: Motion(shifts=[[1, 0], [2, 0]]), r"Motion\.shifts\[0\]"),
        (lambda: Motion(shifts=[[0, 0], [0.5, 0]]), r"Motion\.shifts must be whole"),
        (lambda: Motion(shifts=[0, 1]), r"Motion\.shifts must be \[x, y\]"),
        (lambda: Motion(shifts=[[0, 0]], drift_step=2.0), r"Motion\.drift_step .* Motion\.shifts"),
        (lambda: Motion(rotation=[0, 1], rotation_rate=0.5), r"Motion\.rotation_rate"),
        (lambda: Motion(rotation=[3, 1]), r"Motion\.rotation\[0\] must be 0"),
        (lambda: Motion(scale=[1, 0]), r"Motion\.scale"),
        (lambda: Motion(flip_at=0), r"Motion\.flip_at"),
        (lambda: Motion(transforms=[[[1, 0, 1], [0, 1, 0]]]), r"Motion\.transforms\[0\]"),
        (lambda: Motion(transforms=[[[1, 0, 0], [0, 1, 0]]], jitter=1.0),
         r"Motion\.jitter .* Motion\.transforms"),
        (lambda: Motion(transforms=[[[1, 0, 0], [0, 1, 0]], [[1, 2, 0], [1, 2, 0]]]),
         r"Motion\.transforms\[1\] is singular"),
        (lambda: Stars(nebula=(1000.0, 0.0)), r"Stars\.nebula needs peak >= 0 and sigma > 0"),
        (lambda: Stars(nebula=(-5.0, 10.0)), r"Stars\.nebula needs peak >= 0"),
        (lambda: Stars(nebula=(1000.0, 10.0, 5.0)), r"Stars\.nebula"),
        (lambda: Stars(cluster=(0, 10.0)), r"Stars\.cluster needs a whole n >= 1"),
        (lambda: Stars(cluster=(10.5, 10.0)), r"Stars\.cluster needs a whole n >= 1"),
        (lambda: Stars(cluster=(10, 0.0)), r"Stars\.cluster needs .* radius > 0"),
        (lambda: Stars(cluster=(10, 5.0, 1.0)), r"Stars\.cluster"),
        (lambda: Artefacts(clouds={3: 1.5}), r"Artefacts\.clouds\[3\] must be <= 1"),
        (lambda: Artefacts(clouds={-1: 0.5}), r"Artefacts\.clouds"),
        (lambda: Artefacts(trail=1.5), r"Artefacts\.trail must be <= 1"),
        (lambda: Artefacts(trail="often"), r"Artefacts\.trail"),
        (lambda: Artefacts(other_field=[1, -2]), r"Artefacts\.other_field"),
        (lambda: Artefacts(hot_pattern=[0.5]), r"Artefacts\.hot_pattern"),
        (lambda: Artefacts(trail_through_star="yes"), r"Artefacts\.trail_through_star"),
        (lambda: Artefacts(quiet_box=(5, 1, 0, 10)), r"Artefacts\.quiet_box"),
    ],
)
def test_option_groups_name_the_bad_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_option_groups_are_frozen_and_compare_by_value():
    a = Motion(shifts=np.array([[0, 0], [1, 2]]), rotation_rate=0.1)
    assert a == Motion(shifts=[[0.0, 0.0], [1.0, 2.0]], rotation_rate=0.1)
    assert hash(a) == hash(Motion(shifts=((0, 0), (1, 2)), rotation_rate=0.1))
    with pytest.raises(AttributeError):
        a.rotation_rate = 1.0
    assert Artefacts(clouds={4: 0.2, 1: 0.5}).clouds == ((1, 0.5), (4, 0.2))
    assert Artefacts(trail=True).trail == 0.2


def test_old_keywords_warn_and_give_the_same_frames(tmp_path):
    common = dict(n_frames=3, shape=(64, 80), seed=4)
    with pytest.warns(FutureWarning) as record:
        old = synthetic.make_frames(
            tmp_path / "old", **common, n_stars=25, fwhm=2.5, sky=800.0, gradient=(0.1, 0.0),
            drift_step=3.0, subpixel=True, gain=2.0, trail=[1], cosmic_rays=5.0,
            star_margin=0.1,
        )
    messages = [str(w.message) for w in record]
    assert len(messages) == 10
    assert all(w.category is FutureWarning for w in record)
    assert all(w.filename == __file__ for w in record)  # points at the caller
    assert "make_frames(n_stars=...) is deprecated; use stars=synthetic.Stars(n_stars=...)" in (
        messages
    )
    assert "make_frames(sky=...) is deprecated; use sky=synthetic.Sky(level=...)" in messages
    assert "make_frames(star_margin=...) is deprecated; use stars=synthetic.Stars(margin=...)" in (
        messages
    )
    new = synthetic.make_frames(
        tmp_path / "new", **common,
        stars=Stars(n_stars=25, fwhm=2.5, margin=0.1), sky=Sky(level=800.0, gradient=(0.1, 0.0)),
        motion=Motion(drift_step=3.0, subpixel=True), camera=Camera(gain=2.0),
        artefacts=Artefacts(trail=[1], cosmic_rays=5.0),
    )
    assert _bytes(old.paths) == _bytes(new.paths)
    np.testing.assert_array_equal(old.shifts, new.shifts)
    assert old.options == new.options
    assert old.params.keys() == new.params.keys()


def test_old_keywords_of_the_tutorial_frames_warn(tmp_path):
    with pytest.warns(FutureWarning, match=r"use camera=synthetic\.Camera\(hot_pixels=\.\.\.\)"):
        old = synthetic.make_tutorial_frames(tmp_path / "old", shape=(700, 640), n_stars=50,
                                             hot_pixels=7)
    new = synthetic.make_tutorial_frames(tmp_path / "new", shape=(700, 640),
                                         stars=Stars(n_stars=50), camera=Camera(hot_pixels=7))
    assert _bytes(old.paths) == _bytes(new.paths)
    again = synthetic.make_frames(tmp_path / "again", **new.options)
    assert _bytes(again.paths) == _bytes(new.paths)


def test_old_and_new_form_of_one_option_clash(tmp_path):
    with pytest.raises(ValueError, match=r"n_stars= and stars=Stars\(n_stars=\.\.\.\) both"):
        synthetic.make_frames(tmp_path, n_frames=1, shape=(32, 32), n_stars=4,
                              stars=Stars(n_stars=5))
    with pytest.raises(TypeError, match="n_star"):
        synthetic.make_frames(tmp_path, n_frames=1, shape=(32, 32), n_star=4)
    with pytest.raises(ValueError, match="stars must be a synthetic.Stars"):
        synthetic.make_frames(tmp_path, n_frames=1, shape=(32, 32), stars=Camera())
    assert not list(tmp_path.iterdir())


def test_options_from_a_flat_record(tmp_path):
    record = {"n_stars": 30, "drift_step": 2.0, "subpixel": True, "sky": 500.0,
              "noise": "gaussian", "cosmic_rays": 0, "seed": 3, "prefix": "r"}
    kwargs = synthetic.options_from_dict(record)
    assert kwargs == {"seed": 3, "prefix": "r", "stars": Stars(n_stars=30),
                      "motion": Motion(drift_step=2.0, subpixel=True), "sky": Sky(level=500.0),
                      "camera": Camera(noise="gaussian"), "artefacts": Artefacts(cosmic_rays=0)}
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(48, 48), **kwargs)
    assert truth.params["sky"] == 500.0 and truth.params["n_stars"] == 30


def test_options_make_the_same_frames_again(tmp_path):
    truth = synthetic.make_frames(
        tmp_path / "a", n_frames=3, shape=(64, 64), seed=None,
        motion=Motion(rotation_rate=0.3, subpixel=True), artefacts=Artefacts(clouds={1: 0.5}),
    )
    again = synthetic.make_frames(tmp_path / "b", **truth.options)
    assert _bytes(truth.paths) == _bytes(again.paths)


# --------------------------------------------------------------------------
# transforms: rotation, flip, scale


def _rot(deg, s=1.0):
    a = np.radians(deg)
    return s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])


TURNED = dict(
    rotation=[0.0, 0.7, -12.5, 180.0, 90.0, 33.0],
    scale=[1.0, 1.03, 0.95, 1.0, 1.05, 1.0],
    shifts=[[0, 0], [2.5, -1.25], [7.1, 3.3], [-4.2, 1.9], [0.6, 0.4], [1.0, -2.0]],
    centre=(101.3, 95.8),
)


@pytest.fixture(scope="module")
def turned(tmp_path_factory):
    """A noiseless float32 night with rotation, scale, drift and a cloud in frame 5."""
    return synthetic.make_frames(
        tmp_path_factory.mktemp("turned"), n_frames=6, shape=(200, 240), dtype="float32", seed=8,
        sky=Sky(gradient=(0.0, 0.0)), stars=Stars(n_stars=40, ref_star=(120.0, 90.0)),
        camera=Camera(noise="none", hot_pixels=0),
        motion=Motion(subpixel=True, **TURNED),
        artefacts=Artefacts(cosmic_rays=0, clouds={5: 0.2}),
    )


def _isolated(xy, shape, near=20.0, edge=13):
    """Indices of positions at least ``edge`` inside the frame with no other within ``near``."""
    ny, nx = shape
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    inside = (xy[:, 0] >= edge) & (xy[:, 0] <= nx - 1 - edge)
    inside &= (xy[:, 1] >= edge) & (xy[:, 1] <= ny - 1 - edge)
    return np.flatnonzero(inside & (d.min(axis=1) > near))


def _window(image, xy, half):
    x0, y0 = round(xy[0]), round(xy[1])
    win = image[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
    wy, wx = np.mgrid[y0 - half : y0 + half + 1, x0 - half : x0 + half + 1]
    return win, wx, wy


def test_transforms_follow_the_convention(turned):
    c = np.array(TURNED["centre"])
    for i, (deg, s, d) in enumerate(zip(TURNED["rotation"], TURNED["scale"], TURNED["shifts"],
                                        strict=True)):
        a = _rot(deg, s)
        np.testing.assert_allclose(turned.transforms[i, :, :2], a, atol=1e-12)
        np.testing.assert_allclose(turned.transforms[i, :, 2], c + np.array(d) - a @ c,
                                   atol=1e-9)
    np.testing.assert_array_equal(turned.transforms[0], [[1, 0, 0], [0, 1, 0]])
    np.testing.assert_array_equal(turned.transforms[3, :, :2], [[-1, 0], [0, -1]])  # exact
    np.testing.assert_allclose(turned.rotation, TURNED["rotation"], atol=1e-9)
    np.testing.assert_allclose(turned.scale, TURNED["scale"], atol=1e-12)
    # shifts: where the reference star went
    ref = np.array(turned.ref_star)
    moved = np.einsum("nij,j->ni", turned.transforms[:, :, :2], ref) + turned.transforms[:, :, 2]
    np.testing.assert_allclose(turned.shifts, moved - ref, atol=1e-9)
    np.testing.assert_allclose(turned.star_positions(2)[0], moved[2], atol=1e-9)


def test_stars_sit_where_the_transform_puts_them(turned):
    # plain numpy centroids of the written noiseless frames against A @ p + t
    p = np.stack([turned.stars["x"], turned.stars["y"]])
    sky = turned.params["sky"]
    checked = 0
    for i in range(turned.n_frames):
        image = _read_fits(turned.paths[i]) - sky
        predicted = (turned.transforms[i, :, :2] @ p).T + turned.transforms[i, :, 2]
        stars = _isolated(predicted, image.shape)
        assert stars.size >= 4, i
        for k in stars:
            win, wx, wy = _window(image, predicted[k], 10)
            centroid = [(win * wx).sum() / win.sum(), (win * wy).sum() / win.sum()]
            np.testing.assert_allclose(centroid, predicted[k], atol=0.01, err_msg=f"{i}, {k}")
            checked += 1
    assert checked > 30


def test_scale_keeps_the_flux_of_a_star_and_clouds_dim_it(turned):
    p = np.stack([turned.stars["x"], turned.stars["y"]])
    sky = turned.params["sky"]
    for i, factor in ((1, 1.0), (2, 1.0), (4, 1.0), (5, 0.2)):  # scales 1.03, 0.95, 1.05; cloud
        image = _read_fits(turned.paths[i]) - sky
        predicted = (turned.transforms[i, :, :2] @ p).T + turned.transforms[i, :, 2]
        stars = _isolated(predicted, image.shape)
        assert stars.size >= 4
        for k in stars:
            win, _, _ = _window(image, predicted[k], 8)
            np.testing.assert_allclose(win.sum(), factor * turned.stars["flux"][k], rtol=1e-4)
    assert turned.transmission.tolist() == [1, 1, 1, 1, 1, 0.2]
    # the cloud dims the stars, not the sky
    assert np.median(_read_fits(turned.paths[5])) == pytest.approx(sky, abs=1e-3)
    np.testing.assert_allclose(turned.frame_stars(5)["flux"], 0.2 * turned.stars["flux"])


def test_clouds_in_a_noisy_frame(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=3, shape=(128, 128), seed=6,
                                  sky=Sky(gradient=(0, 0)), stars=Stars(n_stars=10),
                                  artefacts=Artefacts(clouds={1: 0.2}, cosmic_rays=0))
    fluxes = []
    for i, path in enumerate(truth.paths):
        image = _read_fits(path)
        xy = np.array(truth.ref_star) + truth.shifts[i]
        win, _, _ = _window(image, xy, 10)
        fluxes.append(win.sum() - win.size * np.median(image))
    # noise of the sum ~ sqrt(441 * 1525) / 1.5 ~ 550 ADU, on 3.4e5 and 6.8e4
    assert fluxes[1] / fluxes[0] == pytest.approx(0.2, abs=0.01)
    assert fluxes[2] / fluxes[0] == pytest.approx(1.0, abs=0.01)


def test_meridian_flip(tmp_path):
    shape = (96, 128)
    truth = synthetic.make_frames(
        tmp_path, n_frames=5, shape=shape, seed=2, stars=Stars(n_stars=30),
        motion=Motion(flip_at=3, flip_offset=(6.0, -4.0), shifts=[[0, 0], [1, 0], [2, 1],
                                                                    [3, 1], [4, 2]]),
    )
    assert truth.rotation.tolist() == [0, 0, 0, 180, 180]
    c = np.array([(shape[1] - 1) / 2, (shape[0] - 1) / 2])
    for i, d in ((3, [3, 1]), (4, [4, 2])):
        np.testing.assert_array_equal(truth.transforms[i, :, :2], -np.eye(2))
        np.testing.assert_allclose(truth.transforms[i, :, 2], 2 * c + np.array(d) + [6, -4])
    # the brightest pixel near the reference star's predicted place is the star
    for i, path in enumerate(truth.paths):
        image = _read_fits(path)
        xy = truth.star_positions(i)[0]
        peak = _disc_argmax(image, xy, 6)
        assert np.abs(peak - xy).max() <= 0.5, i


def test_explicit_transforms(tmp_path):
    a = _rot(5.0, 1.02)
    tr = np.array([[[1, 0, 0], [0, 1, 0]], np.hstack([a, [[3.0], [-2.0]]])])
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(96, 96), seed=1,
                                  motion=Motion(transforms=tr))
    np.testing.assert_allclose(truth.transforms, tr)
    assert truth.rotation[1] == pytest.approx(5.0)
    assert truth.scale[1] == pytest.approx(1.02)


def test_sky_hot_pixels_and_pattern_stay_on_the_sensor(tmp_path):
    # stars turn and drift; what is fixed on the sensor must not move
    truth = synthetic.make_frames(
        tmp_path, n_frames=4, shape=(128, 160), seed=3, stars=Stars(n_stars=0),
        camera=Camera(noise="none", column_pattern=10.0, row_pattern=4.5, hot_pixels=6),
        motion=Motion(rotation_rate=20.0, drift_step=5.0, subpixel=True),
        artefacts=Artefacts(cosmic_rays=0),
    )
    images = [_read_fits(p) for p in truth.paths]
    yy, xx = np.indices(images[0].shape)
    away = np.ones(images[0].shape, bool)
    for i in range(truth.n_frames):  # mask the reference star in every frame
        x, y = truth.star_positions(i)[0]
        away &= np.hypot(xx - x, yy - y) > 15
    for i in range(1, truth.n_frames):
        np.testing.assert_array_equal(images[i][away], images[0][away])
    pattern = truth.fixed_pattern.astype(np.float64)
    sky = 1000.0 * (1 + 0.2 * np.linspace(-0.5, 0.5, 160)[None, :]
                    + 0.1 * np.linspace(-0.5, 0.5, 128)[:, None])
    residual = images[0] - sky
    no_hot = away.copy()
    no_hot[truth.hot_pixels] = False
    assert np.abs(residual - pattern)[no_hot].max() <= 0.5 + 1e-3  # rounding to integers
    # columns plus rows, of the stated size
    cols, rows = pattern.mean(axis=0), pattern.mean(axis=1)
    np.testing.assert_allclose(pattern, rows[:, None] + cols[None, :] - pattern.mean(), atol=1e-4)
    assert 8.0 < cols.std() < 12.0 and 3.3 < rows.std() < 5.7
    assert np.all(residual[truth.hot_pixels] > 250)  # hot pixels on the same pixels in every frame
    for image in images[1:]:
        np.testing.assert_array_equal(image[truth.hot_pixels], images[0][truth.hot_pixels])


def test_saturation(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(64, 64), seed=1,
                                  camera=Camera(saturation=20000.0))
    data = fits.getdata(truth.paths[0])
    assert data.max() == 20000
    x, y = (int(v) for v in truth.ref_star)
    assert data[y, x] == 20000 and truth.clean[y, x] == 20000
    assert fits.getheader(truth.paths[0])["SATURATE"] == 20000


# --------------------------------------------------------------------------
# artefacts of real nights


def test_trail_through_the_brightest_star(tmp_path):
    truth = synthetic.make_frames(
        tmp_path, n_frames=3, shape=(160, 192), seed=9,
        motion=Motion(rotation_rate=2.0, subpixel=True, drift_step=3.0),
        artefacts=Artefacts(trail=[1, 2], trail_through_star=True, trail_peak=5000.0),
    )
    p = np.stack([truth.stars["x"], truth.stars["y"]])
    for i in (1, 2):
        line = truth.trail_lines[i]
        xy = (truth.transforms[i, :, :2] @ p).T + truth.transforms[i, :, 2]
        inside = np.flatnonzero((xy[:, 0] >= 0) & (xy[:, 0] <= 191) & (xy[:, 1] >= 0)
                                & (xy[:, 1] <= 159))
        brightest = inside[np.argmax(truth.stars["flux"][inside])]
        assert line["star"] == brightest
        # the star lies on the line (distance from the line through x, y at angle)
        sx, sy = xy[brightest]
        dist = -(sx - line["x"]) * np.sin(line["angle"]) + (sy - line["y"]) * np.cos(line["angle"])
        assert abs(dist) < 1e-9
        # and the written frame is raised along the line far from the star
        image = _read_fits(truth.paths[i]) - truth.frame_clean(i)
        for r in (-40, -30, 30, 40):
            px = sx + r * np.cos(line["angle"])
            py = sy + r * np.sin(line["angle"])
            if 0 <= px <= 191 and 0 <= py <= 159:
                assert image[round(py), round(px)] > 0.5 * 5000
    assert truth.trail_lines[0] is None


def test_other_field_frame_shares_no_stars(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=3, shape=(160, 160), seed=12,
                                  stars=Stars(n_stars=120),
                                  artefacts=Artefacts(other_field=[1], cosmic_rays=0))
    assert truth.other_field.tolist() == [False, True, False]
    sigma = truth.sky_sigma
    lit = []
    for i, path in enumerate(truth.paths):
        image = _read_fits(path)
        xy = truth.star_positions(i)
        inside = np.flatnonzero((xy[:, 0] > 3) & (xy[:, 0] < 156) & (xy[:, 1] > 3)
                                & (xy[:, 1] < 156))
        brightest = inside[np.argsort(truth.stars["flux"][inside])[-15:]]
        background = np.median(image)
        values = image[np.rint(xy[brightest, 1]).astype(int), np.rint(xy[brightest, 0]).astype(int)]
        lit.append(int((values > background + 8 * sigma).sum()))
    assert lit[0] == 15 and lit[2] == 15
    assert lit[1] <= 2  # another field: the reference field's stars are not there
    # the other field's stars are where frame_stars says, and are other positions
    other = truth.frame_stars(1)
    np.testing.assert_array_equal(other["x"], truth.other_stars["x"] + truth.shifts[1][0])
    ref = truth.stars
    d = np.hypot(ref["x"][:, None] - truth.other_stars["x"][None, :],
                 ref["y"][:, None] - truth.other_stars["y"][None, :])
    assert (d.min(axis=1) < 0.5).sum() <= 2  # chance coincidences only


def test_hot_pixel_pattern_in_some_frames(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=4, shape=(100, 120), seed=5,
                                  artefacts=Artefacts(hot_pattern=[1, 3], cosmic_rays=0))
    assert truth.hot_pattern_frames.tolist() == [False, True, False, True]
    assert truth.hot_pattern[0].size == 12  # one per 1000 pixels
    fixed = set(zip(*truth.hot_pixels, strict=True))
    pattern = set(zip(*truth.hot_pattern, strict=True))
    assert not fixed & pattern
    for i, path in enumerate(truth.paths):
        image = _read_fits(path)
        clean = truth.frame_clean(i).astype(np.float64)
        z = (image - clean) / _sigma(clean, truth.params)
        if truth.hot_pattern_frames[i]:
            assert np.all(z[truth.hot_pattern] > 8), i
        else:
            assert np.all(np.abs(z[truth.hot_pattern]) < 6), i
        hot = truth.hot_pixels_in(i)
        mask = np.ones(image.shape, bool)
        mask[hot] = False
        assert np.abs(z[mask]).max() < 6, i


def test_new_features_keep_frames_independent_of_the_count(tmp_path):
    kw = dict(shape=(64, 64), seed=3, stars=Stars(n_stars=30),
              motion=Motion(rotation_rate=1.5, flip_at=2, scale_rate=0.01, subpixel=True),
              camera=Camera(column_pattern=3.0),
              artefacts=Artefacts(clouds={1: 0.4}, hot_pattern=0.5, other_field=[2], trail=0.5,
                                  trail_through_star=True))
    a = synthetic.make_frames(tmp_path / "a", n_frames=5, **kw)
    b = synthetic.make_frames(tmp_path / "b", n_frames=3, **kw)
    assert _bytes(a.paths[:3]) == _bytes(b.paths)
    np.testing.assert_array_equal(a.transforms[:3], b.transforms)


def test_reference_stars_peak_snr(tmp_path):
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(128, 128), seed=2,
                                  sky=Sky(gradient=(0, 0)), stars=Stars(n_stars=20))
    ref = truth.reference_stars()
    assert ref["x"][0] == truth.ref_star[0] and ref["flux"][0] == truth.ref_flux
    x, y = (int(v) for v in truth.ref_star)
    np.testing.assert_allclose(ref["peak"][0], truth.clean[y, x] - 1000.0, rtol=1e-5)
    np.testing.assert_allclose(ref["snr"], ref["peak"] / _sigma(1000.0, truth.params))


# --------------------------------------------------------------------------
# the named hard cases


def _blended_fraction(xy, fwhm):
    d = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    np.fill_diagonal(d, np.inf)
    return float((d.min(axis=1) < 2 * fwhm).mean())


@pytest.mark.parametrize("name", synthetic.CASES)
def test_cases(tmp_path, name):
    n, shape = 6, (192, 224)
    truth = synthetic.make_case(name, tmp_path, n_frames=n, shape=shape, seed=1)
    assert len(truth.paths) == n and fits.getdata(truth.paths[0]).shape == shape
    np.testing.assert_array_equal(truth.transforms[0], [[1, 0, 0], [0, 1, 0]])
    mid = n // 2
    inside = (truth.stars["x"] >= 0) & (truth.stars["x"] < shape[1]) & (truth.stars["y"] >= 0)
    inside &= truth.stars["y"] < shape[0]
    xy = np.stack([truth.stars["x"], truth.stars["y"]], -1)[inside]
    if name == "crowded":
        assert inside.sum() / (shape[0] * shape[1]) == pytest.approx(0.012, rel=0.01)
        assert _blended_fraction(xy, truth.params["fwhm"]) > 0.5
    elif name == "faint_defocused":
        assert truth.params["fwhm"] == 11.0
        snr = truth.reference_stars()["snr"][1:][inside[1:]]
        assert snr.min() >= 2.2 and 2.8 < np.median(snr) < 4.5
        # the file's noise about the noiseless frame (pattern included) is the stated sigma,
        # so the stars really peak about 3 sigma above the sky
        image = _read_fits(truth.paths[0])
        sky = truth.clean < np.percentile(truth.clean, 30)
        sky[truth.hot_pixels] = False
        sky[truth.cosmic_rays[0]] = False
        noise = (image - truth.clean)[sky].std()
        assert noise == pytest.approx(truth.sky_sigma, rel=0.05)
        pattern = truth.fixed_pattern
        assert 9.5 < pattern.std() < 12.5  # about 11 ADU
        assert np.abs(np.diff(truth.shifts, axis=0)).max() < 16
        steps = np.hypot(*np.diff(truth.shifts, axis=0).T)
        assert 8 < steps.mean() < 14  # about 12 px a frame
        assert truth.hot_pixels[0].size == round(shape[0] * shape[1] / 1000)
    elif name == "trail_through_star":
        assert [line is not None for line in truth.trail_lines] == [i in (1, mid) for i in range(n)]
        assert all("star" in truth.trail_lines[i] for i in (1, mid))
    elif name == "cloud":
        assert truth.transmission[mid] == 0.2 and np.sum(truth.transmission == 1) == n - 1
    elif name == "meridian_flip":
        assert truth.rotation.tolist() == [0.0] * mid + [180.0] * (n - mid)
    elif name.startswith("rotation_"):
        total = float(name.split("_")[1])
        np.testing.assert_allclose(truth.rotation, np.linspace(0, total, n), atol=1e-12)
    elif name == "scale":
        assert truth.scale.max() == pytest.approx(1.05, abs=0.01)
        assert truth.scale.min() == pytest.approx(0.95, abs=0.01)
    elif name == "other_field":
        assert truth.other_field.tolist() == [i == mid for i in range(n)]
    elif name == "big_drift":
        assert np.hypot(*truth.shifts[-1]) > 0.5 * max(shape)
        for i in range(n):  # stars fill every frame
            fx, fy = truth.star_positions(i).T
            seen = (fx >= 0) & (fx < shape[1]) & (fy >= 0) & (fy < shape[0])
            assert seen.sum() > 0.8 * truth.params["n_stars"], i
    elif name == "hot_pattern":
        assert truth.hot_pattern_frames.sum() == round(0.3 * n) and not truth.hot_pattern_frames[0]
    elif name == "nebula":
        peak, sigma, x0, y0 = truth.params["nebula"]
        assert (peak, sigma) == (20000.0, max(shape) / 6)
        # the same night without it: the noiseless frames differ by a Gaussian of that
        # sigma at (x0, y0) in frame 0, moved with the field in the others
        options = dict(truth.options)
        options["stars"] = dataclasses.replace(options["stars"], nebula=None)
        plain = synthetic.make_frames(tmp_path / "plain", **options)
        yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
        model = peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * sigma**2))
        np.testing.assert_allclose(truth.clean - plain.clean, model, atol=0.05)
        with_glow = _read_fits(truth.paths[n - 1]).astype(np.float64)
        without = _read_fits(plain.paths[n - 1]).astype(np.float64)
        fx, fy = truth.transforms[n - 1] @ [x0, y0, 1.0]
        extra = with_glow - without  # the glow and its photon noise
        centre = extra[int(round(fy)) - 2:int(round(fy)) + 3, int(round(fx)) - 2:int(round(fx)) + 3]
        assert centre.mean() == pytest.approx(peak, rel=0.02)
    elif name == "globular":
        n_cluster, radius, x0, y0 = truth.params["cluster"]
        assert (n_cluster, radius) == (300, max(shape) / 16)
        assert (x0, y0) == (0.35 * shape[1], 0.6 * shape[0])
        assert truth.params["nebula"] == (3000.0, radius, x0, y0)
        assert truth.params["fwhm"] == 11.0
        # the faint defocused night's field, unchanged, and 300 stars more after it
        plain = synthetic.make_case("faint_defocused", tmp_path / "plain", n_frames=n,
                                    shape=shape, seed=1)
        m = plain.stars["x"].size
        assert truth.stars["x"].size == m + 300
        for key in ("x", "y", "flux"):
            np.testing.assert_array_equal(truth.stars[key][:m], plain.stars[key][:m])
        # concentrated (test_cluster_is_a_plummer_profile has the profile), and off the
        # reference star's disc, which here takes a bite out of the core
        r = np.hypot(truth.stars["x"][m:] - x0, truth.stars["y"][m:] - y0)
        assert np.median(r) < 1.5 * radius
        rx, ry = truth.params["ref_star"]
        off = np.hypot(truth.stars["x"][m:] - rx, truth.stars["y"][m:] - ry)
        assert off.min() > truth.params["ref_isolation"]
        assert plain.stars["flux"][1:].min() <= truth.stars["flux"][m:].min()
        assert truth.stars["flux"][m:].max() <= plain.params["flux_max"]
    else:
        raise AssertionError(f"no check for case {name}")


def test_cluster_is_a_plummer_profile(tmp_path):
    """``Stars.cluster``: surface density ``(1 + r^2 / a^2)^-2``, so ``N(<r) = r^2 / (r^2 +
    a^2)``: half the stars within ``a``, 90% within ``3 a``, 99% within ``sqrt(99) a``."""
    n, a, x0, y0 = 3000, 12.0, 70.0, 80.0
    truth = synthetic.make_frames(tmp_path, n_frames=1, shape=(256, 256), seed=4,
                                  stars=Stars(n_stars=20, cluster=(n, a, x0, y0)))
    x, y = truth.stars["x"][-n:], truth.stars["y"][-n:]
    r = np.hypot(x - x0, y - y0)
    for k, want in ((1.0, 0.5), (3.0, 0.9), (np.sqrt(99.0), 0.99)):
        assert (r < k * a).mean() == pytest.approx(want, abs=0.03), k
    # round: no direction preferred
    angle = np.arctan2(y - y0, x - x0)
    counts, _ = np.histogram(angle, bins=8, range=(-np.pi, np.pi))
    assert counts.min() > 0.8 * n / 8 and counts.max() < 1.2 * n / 8
    # drawn into the image: the frame is brighter around the cluster than away from it
    image = truth.clean
    near = image[int(y0) - 6:int(y0) + 7, int(x0) - 6:int(x0) + 7].mean()
    far = image[200:230, 200:230].mean()
    assert near > far + 100


def test_make_case_refuses_unknown_names(tmp_path):
    with pytest.raises(ValueError, match="unknown case 'windy'; choose from crowded"):
        synthetic.make_case("windy", tmp_path)
    with pytest.raises(ValueError, match="n_frames >= 2"):
        synthetic.make_case("cloud", tmp_path, n_frames=1)


@pytest.mark.slow
def test_cases_are_fast(tmp_path):
    """Every case: 10 frames of 512 x 512 in well under a second a frame."""
    for name in synthetic.CASES:
        start = time.perf_counter()
        synthetic.make_case(name, tmp_path / name)
        elapsed = time.perf_counter() - start
        print(f"{name}: {elapsed:.2f} s for 10 frames")
        assert elapsed < 5.0, name


@pytest.mark.parametrize("fmt", ["fits", "png", "jpg", "dng", "tiff"])
def test_overwrite_replaces_only_frames_bigstack_wrote(tmp_path, fmt):
    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(32, 32), fmt=fmt, seed=1)
    again = synthetic.make_frames(tmp_path, n_frames=2, shape=(32, 32), fmt=fmt, seed=2,
                                  overwrite=True)  # its own frames: replaced
    assert again.paths == truth.paths
    with open(truth.paths[1], "rb") as f:
        theirs = f.read()
    with open(truth.paths[1], "wb") as f:  # someone's own file under the same name
        f.write(b"a file bigstack did not write" + theirs[:10])
    with pytest.raises(FileExistsError, match="not written by bigstack"):
        synthetic.make_frames(tmp_path, n_frames=2, shape=(32, 32), fmt=fmt, overwrite=True)
    with open(truth.paths[1], "rb") as f:
        assert f.read().startswith(b"a file bigstack did not write")


# --------------------------------------------------------------------------
# the sensor model: calibration truth, and today's frames unchanged without it

# SHA-256 (first 16 hex digits) of the decoded pixels of every file, then of
# truth.clean, made by the generator before it had a sensor model (commit
# 46ba579). A change here means frames of earlier versions changed; if a new
# numpy changes its random streams, regenerate them from that commit.
BEFORE_SENSOR = {
    "default": ["771707122bb083eb", "100ae210471003e7", "68d7273fb0774af8", "59a824a0e9c9cc4a"],
    "float32": ["f41b4d0dc0a854e3", "90ebb088d7748262", "3f1cb801ce774be4"],
    "png16": ["2132bc9ffbc97648", "ea30f12255cb14ac", "577153c51583b36c"],
    "dng": ["917b1dd1bc24c9f1", "1114657c66d400bf", "93d404ecd5cb0c7d"],
    "trail": ["d42c0822880857e2", "aaf09585447d43bf", "7e17ceda52b75403", "0538c4be1158134f"],
    "pattern": ["bced7c25a4c2dd4f", "e23d6d0fdf105af0", "9fb2fd3bfd83221b"],
    "faint_defocused": ["54a4a83764f0c5ac", "f40d18c9ddfd4630", "84e8fc255e3668a2",
                        "92432c1bfdcc0468"],
    "hot_pattern": ["7c507572f46b37e4", "59c3e7aae7daf2c1", "14e200bd3d7811c2",
                    "4c6a4cf867b87569", "bff1341f4cdea637"],
}


def _digest(arr):
    arr = np.ascontiguousarray(arr)
    head = str((arr.dtype.str, arr.shape)).encode()
    return hashlib.sha256(head + arr.tobytes()).hexdigest()[:16]


def _decoded(path):
    path = str(path)
    if path.endswith(".fit"):
        return fits.getdata(path)
    if path.endswith(".png"):
        import imagecodecs

        return imagecodecs.png_decode(Path(path).read_bytes())
    import tifffile

    with tifffile.TiffFile(path) as tif:  # the raw mosaic: the largest page
        return max(tif.pages, key=lambda page: page.shape[0] * page.shape[1]).asarray()


@pytest.mark.parametrize("name", sorted(BEFORE_SENSOR))
def test_frames_without_a_sensor_are_those_of_before(tmp_path, name):
    size = dict(shape=(96, 128))
    pattern = Camera(column_pattern=5, row_pattern=2, saturation=40000, exptime=60,
                     temperature=5)
    make = {
        "default": lambda d, **kw: synthetic.make_frames(d, 3, **size, seed=1, **kw),
        "float32": lambda d, **kw: synthetic.make_frames(d, 2, **size, dtype="float32", seed=2,
                                                         **kw),
        "png16": lambda d, **kw: synthetic.make_frames(d, 2, **size, fmt="png", seed=3, **kw),
        "dng": lambda d, **kw: synthetic.make_frames(d, 2, (128, 160), fmt="dng", seed=5, **kw),
        "trail": lambda d, **kw: synthetic.make_frames(d, 3, **size, seed=7,
                                                       artefacts=Artefacts(trail=(1, 2)), **kw),
        "pattern": lambda d, **kw: synthetic.make_frames(d, 2, **size, camera=pattern, seed=9,
                                                         **kw),
        "faint_defocused": lambda d: synthetic.make_case("faint_defocused", d, n_frames=3,
                                                         shape=(128, 128), seed=2),
        "hot_pattern": lambda d: synthetic.make_case("hot_pattern", d, n_frames=4,
                                                     shape=(128, 128), seed=2),
    }[name]
    truth = make(tmp_path / "a")
    got = [_digest(_decoded(p)) for p in truth.paths] + [_digest(truth.clean)]
    assert got == BEFORE_SENSOR[name]
    if not name.startswith(("faint", "hot")):  # an empty Sensor is no sensor
        again = make(tmp_path / "b", sensor=Sensor())
        assert [_digest(_decoded(p)) for p in again.paths] == got[:-1]


def test_sensor_light_model_on_float_frames(tmp_path):
    # float32: no rounding or clipping, the model exactly as stated
    sensor = Sensor(bias=300.0, dark_current=0.3, amp_glow=4.0, amp_glow_corner="bottom-left",
                    vignetting=0.3, dust=2, filter_dust=1, cold_pixels=3, pixel_response=0.01)
    truth = synthetic.make_frames(tmp_path, 3, (96, 128), dtype="float32", seed=4,
                                  camera=Camera(column_pattern=3.0, exptime=60.0),
                                  sensor=sensor, artefacts=Artefacts(cosmic_rays=0.0))
    gain, rn = truth.params["gain"], truth.params["read_noise"]
    for i, path in enumerate(truth.paths):
        data = fits.getdata(path).astype(np.float64)
        sky = truth.calibrated(i).astype(np.float64)
        dark = truth.dark(60.0)
        signal = sky * truth.flat() + dark
        sigma = np.sqrt(signal * gain + rn**2) / gain
        z = (data - truth.bias - signal) / sigma
        assert abs(z.mean()) < 0.03 and 0.95 < z.std() < 1.05
        # and the calibration a perfect master set would do
        calibrated = (data - truth.bias - dark) / truth.flat()
        ok = truth.flat() > 0.5
        zc = (calibrated - sky)[ok] / (sigma / truth.flat())[ok]
        assert abs(zc.mean()) < 0.03 and 0.95 < zc.std() < 1.05
    # noiseless frame_clean: the same model without hot pixels
    clean = truth.calibrated(0) * truth.flat() + truth.bias + truth.dark(60.0)
    clean[truth.hot_pixels] -= truth.hot_levels  # their rate times the exposure they are for
    assert np.allclose(truth.frame_clean(0), clean, rtol=1e-5, atol=1e-2)
    # the glow is in the bottom-left corner (row 0, column 0)
    rate = truth.dark_rate
    assert rate[0, 0] == pytest.approx(0.3 + 4.0, rel=1e-6)
    assert rate[-1, -1] < 0.3 + 0.1
    # the flat is low where the cold pixels are, and 1 - vignetting at the corners
    cy, cx = truth.cold_pixels
    assert np.all(truth.flat()[cy, cx] <= 0.5)
    assert truth.vignetting[0, 0] == pytest.approx(0.7)
    assert truth.vignetting[-1, -1] == pytest.approx(0.7)


def test_sensor_applies_to_the_bayer_mosaic(tmp_path):
    # DNG holds the RGGB mosaic: the sensor takes it pixel by pixel.
    truth = synthetic.make_frames(tmp_path, 2, (128, 160), fmt="dng", seed=6,
                                  sensor=Sensor(bias=500.0, dark_current=0.2, vignetting=0.2),
                                  artefacts=Artefacts(cosmic_rays=0.0))
    gain, rn = truth.params["gain"], truth.params["read_noise"]
    for i, path in enumerate(truth.paths):
        data = _decoded(path).astype(np.float64)
        signal = truth.calibrated(i) * truth.flat() + truth.dark(truth.params["exptime"])
        sigma = np.sqrt(np.maximum(signal, 0) * gain + rn**2) / gain
        ok = signal + 500.0 < 60000
        z = ((data - truth.bias - signal) / sigma)[ok]
        assert abs(z.mean()) < 0.05 and 0.93 < z.std() < 1.07


def test_hot_pixels_are_dark_current(tmp_path):
    # Camera.hot_level is a hot pixel's signal in a light of Camera.exptime; the sensor
    # model makes it a rate, so a dark of twice the exposure has twice the signal.
    camera = Camera(exptime=40.0, hot_pixels=30, hot_level=(2000.0, 8000.0))
    truth = synthetic.make_frames(tmp_path, 1, (64, 64), seed=2, camera=camera,
                                  sensor=Sensor(bias=200.0),
                                  artefacts=Artefacts(cosmic_rays=0.0))
    hy, hx = truth.hot_pixels
    data = fits.getdata(truth.paths[0]).astype(np.float64)
    sky = truth.calibrated(0)[hy, hx]
    got = data[hy, hx] - 200.0 - sky
    assert np.allclose(got, truth.hot_levels, atol=6 * np.sqrt(8000 / 1.5))
    assert np.allclose(truth.dark_rate[hy, hx], truth.hot_levels / 40.0)
    assert np.allclose(truth.dark(80.0)[hy, hx], 2 * truth.hot_levels)


@pytest.mark.parametrize("kwargs, match", [
    (dict(vignetting=1.0), r"Sensor\.vignetting"),
    (dict(vignetting=-0.1), r"Sensor\.vignetting"),
    (dict(amp_glow_corner="middle"), r"Sensor\.amp_glow_corner"),
    (dict(dust_depth=(0.02, 1.0)), r"Sensor\.dust_depth"),
    (dict(dust_radius=(0.0, 3.0)), r"Sensor\.dust_radius"),
    (dict(cold_response=(0.5, 1.0)), r"Sensor\.cold_response"),
    (dict(dark_doubling=0.0), r"Sensor\.dark_doubling"),
    (dict(bias=-1.0), r"Sensor\.bias"),
    (dict(cold_pixels=1.5), r"Sensor\.cold_pixels"),
])
def test_sensor_checks_itself(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sensor(**kwargs)


def test_sensor_options_from_flat_names(tmp_path):
    kwargs = synthetic.options_from_dict({"vignetting": 0.2, "bias": 100.0, "n_stars": 10})
    assert kwargs["sensor"] == Sensor(vignetting=0.2, bias=100.0)
    truth = synthetic.make_frames(tmp_path, 1, (32, 32), seed=1, **kwargs)
    assert truth.params["vignetting"] == 0.2 and truth.params["dark_reference"] == -10.0
    again = synthetic.make_frames(tmp_path / "again", **truth.options)
    assert np.array_equal(fits.getdata(truth.paths[0]), fits.getdata(again.paths[0]))
