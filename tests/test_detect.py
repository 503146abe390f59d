"""Star detection (bigstack._detect) and the measurements under it (bigstack._measure).

Truth comes from the reference renderer in tests/helpers.py: pixel-integrated
Gaussian or Moffat stars at known sub-pixel positions.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from bigstack._detect import detect_stars
from bigstack._measure import background_map, windowed_centroids
from tests.helpers import (
    glow_with_noise,
    render_frame,
    render_stars,
    scattered_stars,
    similarity,
)

SIGMA = 10.0


def grid_stars(shape, spacing, seed, margin=30):
    """Stars on a jittered grid (isolated), sub-pixel positions."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    gy, gx = np.mgrid[margin:ny - margin + 1:spacing, margin:nx - margin + 1:spacing]
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    return x, y


def peak_to_flux(peak, fwhm):
    s = fwhm / 2.3548
    return peak * 2 * np.pi * s * s


def nearest(found, x, y):
    d, i = cKDTree(np.column_stack([x, y])).query(np.column_stack([found["x"], found["y"]]))
    err = np.column_stack([found["x"] - x[i], found["y"] - y[i]])
    return d, i, err


@pytest.mark.parametrize("psf", ["gaussian", "moffat"])
def test_bright_star_positions_and_no_sensor_features(psf):
    """Sub-pixel positions of bright stars; hot pixels, cosmic rays, pattern are not stars."""
    shape = (160, 600)
    x, y = grid_stars(shape, 50, seed=1)
    flux = np.full(x.size, peak_to_flux(3000.0, 3.0))
    image = render_frame(shape, (x, y, flux), similarity(), 3.0, seed=2, noise=SIGMA,
                         pattern=11.0, hot=300, hot_level=(200.0, 20000.0), cosmics=30,
                         psf=psf)
    found = detect_stars([(0, image)], n_stars=500)
    d, _, err = nearest(found, x, y)
    # every detection is one of the stars: no hot pixel, cosmic ray or column
    assert d.max() < 0.5
    inner = (x > 10) & (x < shape[1] - 11) & (y > 10) & (y < shape[0] - 11)
    assert found["x"].size == inner.sum()
    # windowed centroids are unbiased for a symmetric star; peak SNR 300
    assert np.sqrt(np.mean(err**2)) < 0.02
    assert abs(err.mean(axis=0)).max() < 0.01
    assert found["frame_fwhm"] == pytest.approx(3.0, rel=0.15 if psf == "gaussian" else 0.3)


def test_demosaiced_hot_pixels_are_not_stars():
    """A hot pixel of a Bayer mosaic at a green site, through a bilinear demosaic, is a
    plus of five pixels (the arms a quarter of the centre). None of them is a star, and
    the frame's FWHM stays the stars' own: in row bands with few stars, such pluses
    once outnumbered the stars among the best detections (FWHM read as 1.5 px for
    3.3 px stars) and good frames of a colour night were refused."""
    shape = (192, 1200)
    fwhm = 3.3
    x, y = grid_stars(shape, 120, seed=3)
    flux = np.full(x.size, peak_to_flux(400.0, fwhm))
    image = render_frame(shape, (x, y, flux), similarity(), fwhm, seed=4, noise=SIGMA)
    rng = np.random.default_rng(5)
    hy = rng.integers(10, shape[0] - 10, 60)
    hx = rng.integers(10, shape[1] - 10, 60)
    far = cKDTree(np.column_stack([x, y])).query(np.column_stack([hx, hy]))[0] > 12
    hy, hx = hy[far], hx[far]
    level = rng.uniform(2000.0, 30000.0, hx.size).astype(np.float32)
    for dy, dx, part in ((0, 0, 1.0), (-1, 0, 0.25), (1, 0, 0.25), (0, -1, 0.25), (0, 1, 0.25)):
        image[hy + dy, hx + dx] += part * level
    found = detect_stars([(0, image)], n_stars=500)
    near_hot = cKDTree(np.column_stack([hx, hy])).query(
        np.column_stack([found["x"], found["y"]]))[0]
    assert near_hot.min() > 3.0  # no detection on a plus
    d, _, _ = nearest(found, x, y)
    assert d.max() < 0.5
    assert found["frame_fwhm"] == pytest.approx(fwhm, rel=0.15)


@pytest.mark.parametrize(("fwhm", "limit"), [(1.4, 0.2), (1.8, 0.03)])
def test_undersampled_stars_are_not_hot_pixels(fwhm, limit):
    """Stars of FWHM 1.4-1.8 px (a short focal length, good seeing) put more than 70% of
    a centred star's peak above its neighbours' median: cleaned at SHARP, their peaks
    were replaced as hot pixels and their centroids moved by 0.3 px rms (FWHM 1.4) and
    0.12 px (1.8), so that a night of such frames was registered 1.2 px off at the
    corners with a sixth of its frames refused as "not of this field". Hot pixels and
    cosmic rays are still no stars. (At FWHM 1.4 the wing pixels of a star, with five
    dark neighbours, are still sharp by the neighbours' median: 0.15 px rms is left.)"""
    shape = (200, 800)
    x, y = grid_stars(shape, 40, seed=6, margin=15)
    flux = np.full(x.size, peak_to_flux(1500.0, fwhm))
    image = render_frame(shape, (x, y, flux), similarity(), fwhm, seed=7, noise=SIGMA,
                         pattern=5.0, hot=300, hot_level=(200.0, 20000.0), cosmics=30)
    found = detect_stars([(0, image)], n_stars=500)
    d, _, err = nearest(found, x, y)
    assert d.max() < 4 * limit  # every detection is a star
    inner = (x > 8) & (x < shape[1] - 9) & (y > 8) & (y < shape[0] - 9)
    assert found["x"].size >= 0.9 * inner.sum()
    assert np.sqrt(np.mean(err**2)) < limit
    assert found["frame_fwhm"] == pytest.approx(fwhm, rel=0.2)


def test_faint_wide_stars_at_three_sigma():
    """Defocused stars (FWHM 11) peaking at 3 sigma per pixel are found; sensor features are not."""
    shape = (300, 1200)
    x, y = grid_stars(shape, 60, seed=3, margin=40)
    flux = np.full(x.size, peak_to_flux(3 * SIGMA, 11.0))
    image = render_frame(shape, (x, y, flux), similarity(), 11.0, seed=4, noise=SIGMA,
                         pattern=11.0, hot=500, cosmics=30)
    found = detect_stars([(0, image)], n_stars=500)
    d, _, err = nearest(found, x, y)
    assert (d < 3.0).all()  # no false detection
    usable = (x > 17) & (x < shape[1] - 18) & (y > 17) & (y < shape[0] - 18)
    assert found["x"].size >= 0.8 * usable.sum()
    # position error of a Gaussian star of total S/N ~25: about 0.3 px per axis
    assert np.sqrt(np.mean(err**2)) < 0.6
    assert found["frame_fwhm"] == pytest.approx(11.0, rel=0.3)


@pytest.mark.parametrize(("peak", "width"), [(20000.0, 80.0), (5000.0, 80.0), (1000.0, 150.0),
                                             (3000.0, 300.0)])
def test_bright_nebula_does_not_hide_the_other_stars(peak, width):
    """A nebula or galaxy thousands of ADU over the sky, tens to hundreds of pixels across.

    Before: the column pattern was measured with the object in it (a cross of
    residuals over the frame), the 128 px background cells could not follow it
    and the noise took in what they left: none of these frames kept more than
    a tenth of its stars. Now every star where the object is under 10 sigma is
    found, no detection is false, and the positions keep their accuracy.
    """
    shape = (600, 800)
    x, y = grid_stars(shape, 40, seed=7)
    flux = np.full(x.size, peak_to_flux(30 * SIGMA, 3.0))
    image = render_frame(shape, (x, y, flux), similarity(), 3.0, seed=8, noise=SIGMA,
                         pattern=11.0, hot=300, cosmics=30)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image += glow_with_noise(peak * np.exp(-((xx - 420.0) ** 2 + (yy - 310.0) ** 2)
                                           / (2 * width**2)))
    found = detect_stars([(0, image)], n_stars=1000)
    d, i, err = nearest(found, x, y)
    assert (d < 0.5).all()  # no false detection
    got = np.zeros(x.size, bool)
    got[i] = True
    usable = (x > 10) & (x < shape[1] - 11) & (y > 10) & (y < shape[0] - 11)
    under = peak * np.exp(-((x - 420.0) ** 2 + (y - 310.0) ** 2) / (2 * width**2))
    away = usable & (under < 10 * SIGMA)  # none in the widest: it is over 10 sigma everywhere
    if away.any():
        assert got[away].mean() >= (0.85 if peak == 20000.0 else 0.99)
    assert got[usable].mean() >= (0.45 if peak == 20000.0 else 0.7)
    clear = under[i] < 10 * SIGMA
    if clear.any():  # peak SNR 30 away from the object: a few hundredths of a pixel
        assert np.sqrt(np.mean(err[clear] ** 2)) < 0.06
    else:  # the whole frame is under the object: its photon noise is 2-4x the sky's
        assert np.sqrt(np.mean(err**2)) < 0.2
    assert found["frame_fwhm"] == pytest.approx(3.0, rel=0.1)


@pytest.mark.parametrize(("peak", "core"), [(5000.0, 20.0), (20000.0, 10.0)])
def test_faint_wide_stars_beside_a_bright_compact_core(peak, core):
    """A globular cluster's core: ``peak / (1 + r^2 / core^2)``, its wings over the frame.

    With defocused stars (FWHM 11) peaking at 3 sigma, the old detection found
    none of them: the noise, the MAD of all that the background cells left of
    the core, came out too high, and the FWHM ladder, scored on its ten best
    detections, climbed to the core (a "star" of FWHM 20-40). Now the noise
    comes from differences of nearby rows (the core's smooth light cancels)
    and a rung's ten best detections each count only up to twice their median.
    """
    shape = (1024, 1024)
    x, y = scattered_stars(shape, 440, seed=7)
    flux = np.full(x.size, peak_to_flux(3 * SIGMA, 11.0))
    image = render_frame(shape, (x, y, flux), similarity(), 11.0, seed=8, noise=SIGMA,
                         pattern=11.0, hot=300, cosmics=30)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    image += glow_with_noise(peak / (1.0 + ((xx - 460.0) ** 2 + (yy - 512.0) ** 2) / core**2))
    found = detect_stars([(0, image)], n_stars=1000)
    d, i, err = nearest(found, x, y)
    true = d < 2.0
    assert (~true).sum() <= 5  # false detections, all in the core
    got = np.zeros(x.size, bool)
    got[i[true]] = True
    usable = (x > 22) & (x < shape[1] - 23) & (y > 22) & (y < shape[0] - 23)
    under = peak / (1.0 + ((x - 460.0) ** 2 + (y - 512.0) ** 2) / core**2)
    away = usable & (under < 3 * SIGMA)
    assert away.sum() > 300
    assert got[away].mean() >= 0.9
    assert found["noise"] == pytest.approx(SIGMA, rel=0.1)
    assert found["filter_fwhm"] <= 11.0
    assert found["frame_fwhm"] == pytest.approx(11.0, rel=0.3)
    assert np.sqrt(np.mean(err[true] ** 2)) < 0.8  # total S/N about 25 (see above)


def test_defocused_rings_of_a_reflector():
    """Stars defocused behind a central obstruction: rings of radius 8 px with a hole of 3.5
    px. At the 2.5 px rung their pieces are a hundred round "stars" of signal to noise 30;
    the whole rings peak at the 10 px rung. A ladder that scored each detection up to
    twice the threshold (67071ed) took the pieces and found none of the rings."""
    from scipy.ndimage import gaussian_filter

    shape = (512, 1024)
    x, y = scattered_stars(shape, 100, seed=7, margin=40, separation=45)
    image = np.zeros(shape)
    yy, xx = np.mgrid[-12:13, -12:13]
    for xi, yi in zip(x, y, strict=True):
        r = np.hypot(xx - (xi - int(xi)), yy - (yi - int(yi)))
        image[int(yi) - 12:int(yi) + 13, int(xi) - 12:int(xi) + 13] += (r <= 8) & (r >= 3.5)
    rng = np.random.default_rng(1)
    image = gaussian_filter(image, 1.2) * 80.0 + 1000.0 + rng.normal(0.0, SIGMA, shape)
    found = detect_stars([(0, image.astype(np.float32))], n_stars=500)
    d, i, err = nearest(found, x, y)
    assert (d < 1.5).all() and np.unique(i).size == x.size
    assert np.sqrt(np.mean(err**2)) < 0.5
    assert found["filter_fwhm"] > 10


def test_quantised_sky_has_a_noise():
    """Whole counts with a noise of 0.3 count: most pixel differences are 0 (their MAD is 0),
    so the noise comes from their RMS: the Gaussian's and the rounding's together."""
    shape = (400, 600)
    x, y = scattered_stars(shape, 150, seed=3)
    flux = np.full(x.size, peak_to_flux(20.0, 3.0))
    rng = np.random.default_rng(4)
    image = np.round(8.0 + render_stars(shape, x, y, flux, 3.0)
                     + rng.normal(0.0, 0.3, shape)).astype(np.float32)
    found = detect_stars([(0, image)], n_stars=500)
    true = np.sqrt(0.3**2 + 1.0 / 12.0)  # about 0.41: rounding adds 1/12 count^2
    assert found["noise"] == pytest.approx(true, rel=0.25)
    d, i, _ = nearest(found, x, y)
    hit = d < 0.5
    assert np.unique(i[hit]).size == x.size  # every star (before: none, the noise was 0)
    # what else passes is the sparse rounding noise (a tenth of the pixels 1 count off),
    # every bit of it fainter than the faintest star, so the brightest are all true
    assert found["flux"][~hit].max(initial=0.0) < 0.1 * found["flux"][hit].min()


def test_no_stars_no_detections():
    """Only sensor features and a satellite trail: nothing is returned."""
    shape = (200, 800)
    image = render_frame(shape, (np.empty(0), np.empty(0), np.empty(0)), similarity(), 3.0,
                         seed=5, noise=SIGMA, pattern=11.0, hot=400,
                         hot_level=(100.0, 30000.0), cosmics=60,
                         trail=(400.0, 100.0, 17.0, 300.0, 3.0))
    found = detect_stars([(0, image)])
    assert found["x"].size == 0
    assert found["n_found"] == 0


def test_column_pattern_strong_as_the_noise_makes_no_stars():
    """Whole columns of +11 ADU (about the noise) in blocks do not become stars."""
    rng = np.random.default_rng(6)
    image = rng.normal(1000.0, SIGMA, (256, 1024)).astype(np.float32)
    image[:, 100:104] += 11.0  # a 4-column block
    image[:, 500] += 40.0  # one bad column
    image[60:62, :] += 11.0  # two warm rows
    for fwhm in (None, 3.0, 11.0):
        found = detect_stars([(0, image)], fwhm=fwhm)
        assert found["x"].size == 0, fwhm


def test_bands_keep_frame_rows_and_drop_stars_on_the_cuts():
    shape = (400, 500)
    x, y = grid_stars(shape, 40, seed=7)
    flux = np.full(x.size, peak_to_flux(2000.0, 3.0))
    image = render_frame(shape, (x, y, flux), similarity(), 3.0, seed=8, noise=SIGMA)
    bands = [(50, image[50:114]), (250, image[250:314])]
    found = detect_stars(bands, n_stars=500)
    d, i, _ = nearest(found, x, y)
    assert d.max() < 0.1
    # stars found are inside the bands, clear of the cut by 1.5 FWHM
    ys = y[i]
    assert (((ys >= 54.5) & (ys <= 109.5)) | ((ys >= 254.5) & (ys <= 309.5))).all()
    assert found["rows"] == 128


def test_background_map_follows_a_gradient():
    ny, nx = 256, 512
    yy, xx = np.mgrid[:ny, :nx]
    plane = 1000.0 + 0.1 * xx + 0.05 * yy
    image = (plane + np.random.default_rng(9).normal(0, 5.0, (ny, nx))).astype(np.float32)
    render_stars((ny, nx), [100, 300], [80, 200], [5e5, 5e5], 4.0, out=image)
    background, noise = background_map(image, cell=64)
    inner = (slice(32, -32), slice(32, -32))  # between cell centres: interpolated
    assert np.abs(background - plane)[inner].max() < 2.0
    assert np.median(noise) == pytest.approx(5.0, rel=0.1)


def test_windowed_centroids_of_many_stars():
    shape = (64, 400)
    x = np.array([30.3, 90.71, 150.5, 210.02, 270.9, 330.45])
    y = np.array([20.2, 31.8, 40.5, 25.01, 33.33, 38.9])
    image = render_stars(shape, x, y, np.full(6, 1e4), 3.5)
    cx, cy, flux, _ = windowed_centroids(image, np.round(x) + 1, np.round(y) - 1, 3.5 / 2.3548)
    np.testing.assert_allclose(cx, x, atol=2e-3)
    np.testing.assert_allclose(cy, y, atol=2e-3)
    np.testing.assert_allclose(flux, 1e4, rtol=0.02)  # window = star's sigma: 2x weighted flux


def _stamps_at(image, x, y, fwhm):
    from bigstack._measure import cut_stamps

    return cut_stamps(image.astype(np.float64), x, y, fwhm / 2.3548)


@pytest.mark.parametrize("fwhm", [2.2, 3.0, 5.0])
def test_measure_at_finds_stars_where_expected(fwhm):
    """Stars measured at positions 0.7 px off their truth, on a sloped sky with a column
    pattern, hot pixels and cosmic rays: the windowed centroids on stamps agree with the
    truth as the whole frame's detection does (bright stars, peak SNR 100)."""
    from bigstack._detect import measure_at

    shape = (200, 600)
    x, y = scattered_stars(shape, 40, seed=4, separation=6 * fwhm)
    flux = np.full(x.size, peak_to_flux(1000.0, fwhm))
    image = render_frame(shape, (x, y, flux), similarity(), fwhm, seed=5, noise=SIGMA,
                         gradient=300.0, pattern=3.0, hot=400, hot_level=(200.0, 20000.0),
                         cosmics=30)
    rng = np.random.default_rng(6)
    x0 = x + rng.uniform(-0.7, 0.7, x.size)
    y0 = y + rng.uniform(-0.7, 0.7, x.size)
    stamps, gx, gy = _stamps_at(image, x0, y0, fwhm)
    k, fx, fy, fl, snr = measure_at(stamps, gx, gy, x0, y0, fwhm, SIGMA)
    assert k.size >= x.size - 2  # a hot pixel on a star's core may cost one
    err = np.hypot(fx - x[k], fy - y[k])
    assert np.sqrt(np.mean(err**2)) < 0.03
    # the matched filter's signal to noise of a Gaussian star: peak / sigma * sqrt(pi) s
    s = fwhm / 2.3548
    assert np.median(snr) == pytest.approx(1000.0 / SIGMA * np.sqrt(np.pi) * s, rel=0.1)


def test_measure_at_finds_nothing_where_no_star_is():
    """Empty sky, a lone hot pixel, a star below the threshold and a stamp with a missing
    pixel are not stars."""
    from bigstack._detect import measure_at

    shape = (100, 300)
    x = np.array([50.3, 150.2, 250.6])
    y = np.array([50.4, 49.7, 50.2])
    # the first star: peak 1 sigma, a matched-filter signal to noise of about 2.3
    flux = np.array([peak_to_flux(1.0 * SIGMA, 3.0), peak_to_flux(500.0, 3.0), 0.0])
    image = render_frame(shape, (x, y, flux), similarity(), 3.0, seed=7, noise=SIGMA)
    image[50, 250] += 20000.0  # a hot pixel where the third star would be
    image[48, 152] = np.nan  # the second star's stamp misses a pixel
    probe_x = np.append(x, 200.0)  # and empty sky
    probe_y = np.append(y, 50.0)
    stamps, gx, gy = _stamps_at(image, probe_x, probe_y, 3.0)
    k, *_ = measure_at(stamps, gx, gy, probe_x, probe_y, 3.0, SIGMA, threshold=5.0)
    assert k.size == 0
    image[48, 152] = image[48, 151]
    stamps, gx, gy = _stamps_at(image, probe_x, probe_y, 3.0)
    k, fx, fy, *_ = measure_at(stamps, gx, gy, probe_x, probe_y, 3.0, SIGMA, threshold=5.0)
    assert list(k) == [1]
    assert np.hypot(fx[0] - x[1], fy[0] - y[1]) < 0.05
