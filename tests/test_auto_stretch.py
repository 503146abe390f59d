"""The automatic stretch and the background flattening, judged by what the picture shows.

Every expected property is measured here, independently of bigstack's own
statistics: the sky and its noise come from the generator's truth (the sky
model of ``bigstack.synthetic`` and its ``sky_sigma``) or from plain numpy on
images made here; the output levels are read back from the PNG with Pillow
or taken from the matplotlib image ``display`` returns.
"""

from __future__ import annotations

import dask.array as da
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
from astropy.io import fits
from PIL import Image
from scipy.stats import norm as gaussian

from bigstack import display, save_png, synthetic

matplotlib.use("Agg")

SHAPE = (256, 384)
SKY, GRADIENT = 1000.0, (0.2, 0.1)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _frame(folder, gradient):
    truth = synthetic.make_frames(folder, n_frames=1, shape=SHAPE, seed=3, dtype="float32",
                                  sky=synthetic.Sky(level=SKY, gradient=gradient))
    image = fits.getdata(truth.paths[0]).astype(np.float32)
    ny, nx = SHAPE
    # the generator's sky model: sky * (1 + gx * fx + gy * fy), fx and fy from -0.5 to 0.5
    fx, fy = np.linspace(-0.5, 0.5, nx), np.linspace(-0.5, 0.5, ny)
    sky = SKY * (1 + gradient[0] * fx[None, :] + gradient[1] * fy[:, None])
    light = truth.clean - sky  # star light only
    clear = light < 0.02 * truth.sky_sigma  # no star light worth speaking of
    clear[truth.hot_pixels] = False
    for hit in truth.cosmic_rays:
        clear[hit] = False
    return {"image": image, "sky": sky, "light": light, "clear": clear,
            "sigma": truth.sky_sigma, "truth": truth}


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    return _frame(tmp_path_factory.mktemp("flat"), (0.0, 0.0))


@pytest.fixture(scope="module")
def sloped(tmp_path_factory):
    return _frame(tmp_path_factory.mktemp("sloped"), GRADIENT)


def _png(image, folder, name="out.png", **kwargs):
    """The 8-bit levels save_png writes, as ``[y, x]`` (row 0 at the bottom) in 0..1."""
    path = save_png(image, folder / name, **kwargs)
    with Image.open(path) as picture:
        return np.asarray(picture)[::-1].astype(np.float64) / 255


def _levels(img):
    """The 0..1 levels of a matplotlib image from ``display``, NaN where masked."""
    values = img.norm(img.get_array())
    return np.ma.filled(np.ma.masked_invalid(values).astype(np.float64), np.nan)


# --------------------------------------------------------------------------
# on synthetic frames: sky level, noise, stars


def test_sky_dark_grey_noise_visible_stars_unclipped(flat, tmp_path):
    out = _png(flat["image"], tmp_path)  # the default stretch is the automatic one
    clear = flat["clear"]
    # the sky median lands at about a quarter of the range
    assert 0.2 <= np.median(out[clear]) <= 0.26
    # the noise is visible: one sky sigma spans several 8-bit levels
    assert 8 <= np.std(out[clear] * 255) <= 30
    # nothing is clipped, not even by the rounding to 8 bits
    assert (out >= 1.0).sum() == 0
    image, light = flat["image"], flat["light"]
    levels = _levels(display(image))
    assert levels.max() < 1.0
    # the brightest star (FWHM 3 px) is not a flat white disc: a handful of pixels share
    # its top level and 3 px from the peak it has fallen well below white
    y, x = np.unravel_index(np.argmax(image), image.shape)
    assert (out == out[y, x]).sum() <= 6
    assert out[[y - 3, y + 3, y, y], [x, x, x - 3, x + 3]].mean() < 0.95
    # brighter stars stay brighter
    peaks = (light > 50 * flat["sigma"]) & (light == _local_max(light))
    assert peaks.sum() >= 5
    order = np.argsort(image[peaks])
    assert np.all(np.diff(levels[peaks][order]) > 0)
    # a faint star (5 to 20 sigma at its peak) stands out of the sky
    sigma = flat["sigma"]
    faint = (light > 5 * sigma) & (light < 20 * sigma) & (light == _local_max(light))
    assert faint.any()
    assert np.median(out[faint]) > np.median(out[clear]) + 0.2


def _local_max(values):
    from scipy.ndimage import maximum_filter

    return maximum_filter(values, size=5, mode="nearest")


def test_black_point_just_below_the_sky(flat, tmp_path):
    out = _png(flat["image"], tmp_path)
    clear = flat["clear"]
    sky_noise = flat["image"][clear] - flat["sky"][clear]
    # black sits a few sigma below the sky: the darkest noise pixels (and only they) are 0
    black_fraction = (out[clear] == 0).mean()
    assert 0 < black_fraction < 0.02
    # ... and it is where a Gaussian sky puts the 2.5..3.1 sigma tail
    low, high = gaussian.cdf(-3.1), gaussian.cdf(-2.5)
    assert low / 2 < black_fraction < 2 * high
    assert np.std(sky_noise) == pytest.approx(flat["sigma"], rel=0.1)  # the truth is right


def test_gradient_hides_noise_unless_plane_removed(sloped, tmp_path):
    ny, nx = SHAPE
    clear, box = sloped["clear"], 40
    corners = [(slice(0, box), slice(0, box)), (slice(0, box), slice(nx - box, nx)),
               (slice(ny - box, ny), slice(0, box)), (slice(ny - box, ny), slice(nx - box, nx))]

    def corner_levels(out):
        return np.array([np.median(out[rows, cols][clear[rows, cols]]) for rows, cols in corners])

    plain = _png(sloped["image"], tmp_path, "plain.png")
    flattened = _png(sloped["image"], tmp_path, "plane.png", background="plane")
    # the sky model differs by 0.3 * SKY = 11 sigma between the darkest and brightest corner
    assert np.ptp(corner_levels(plain)) > 0.15
    assert np.ptp(corner_levels(flattened)) < 0.02
    # with the gradient gone the sky sits where it does on a flat frame, its noise visible
    assert 0.2 <= np.median(flattened[clear]) <= 0.26
    assert 8 <= np.std(flattened[clear] * 255) <= 30
    for rows, cols in corners:  # the noise shows in every corner, not only in the middle
        assert np.std(flattened[rows, cols][clear[rows, cols]] * 255) > 6
    # the data are not changed: the picture of the same array without background is unchanged
    again = _png(sloped["image"], tmp_path, "again.png")
    np.testing.assert_array_equal(again, plain)


def test_poly2_takes_out_a_curved_sky(tmp_path):
    rng = np.random.default_rng(4)
    ny, nx = 200, 300
    v, u = np.mgrid[-1:1:ny * 1j, -1:1:nx * 1j]
    sky = 500 + 40 * u**2 + 25 * v**2 - 15 * u * v + 10 * u
    image = sky + rng.normal(0, 3, (ny, nx))
    for x, y in rng.uniform((10, 10), (nx - 10, ny - 10), (30, 2)):  # stars, 100..2000 high
        image += rng.uniform(100, 2000) * np.exp(-((u * nx / 2 - (x - nx / 2)) ** 2
                                                   + (v * ny / 2 - (y - ny / 2)) ** 2) / 4.5)
    clear = np.abs(image - sky) < 12  # within 4 sigma of the sky: no star

    def spread(out):  # sky level in the four corners and the centre
        boxes = [(slice(0, 30), slice(0, 30)), (slice(0, 30), slice(-30, None)),
                 (slice(-30, None), slice(0, 30)), (slice(-30, None), slice(-30, None)),
                 (slice(85, 115), slice(135, 165))]
        return np.ptp([np.median(out[r, c][clear[r, c]]) for r, c in boxes])

    assert spread(_png(image, tmp_path, "none.png")) > 0.3
    assert spread(_png(image, tmp_path, "plane.png", background="plane")) > 0.1  # curved
    assert spread(_png(image, tmp_path, "poly2.png", background="poly2")) < 0.02


# --------------------------------------------------------------------------
# on simple numpy images


def test_pure_noise_sky_level_and_black_point(tmp_path):
    rng = np.random.default_rng(5)
    image = rng.normal(200.0, 4.0, (300, 400))
    out = _png(image, tmp_path)
    assert np.median(out) == pytest.approx(0.22, abs=0.01)
    # black at about 2.8 sigma below the median: Gaussian tail below it
    assert (out == 0).mean() == pytest.approx(gaussian.cdf(-2.8), rel=0.35)
    assert 8 <= np.std(out * 255) <= 30


def test_nan_regions_do_not_change_the_picture(flat, tmp_path):
    image = flat["image"].copy()
    holed = image.copy()
    holed[:60, :90] = np.nan  # an uncovered corner
    holed[200, ::7] = np.nan  # scattered uncovered pixels
    covered = np.isfinite(holed)
    full = _png(image, tmp_path, "full.png")
    with_nan = _png(holed, tmp_path, "nan.png")
    assert np.abs(with_nan[covered] - full[covered]).max() <= 2 / 255
    assert np.all(with_nan[~covered] == 0)  # uncovered: the lowest level
    full = _png(image, tmp_path, "full_plane.png", background="plane")
    with_nan = _png(holed, tmp_path, "nan_plane.png", background="plane")
    assert np.abs(with_nan[covered] - full[covered]).max() <= 3 / 255


def test_constant_image_is_all_sky(tmp_path):
    image = np.full((20, 30), 123.0)
    image[0, 0] = np.nan
    out = _png(image, tmp_path)
    finite = np.isfinite(image)
    assert np.all(out[finite] == round(0.22 * 255) / 255)
    assert out[0, 0] == 0
    levels = _levels(display(np.zeros((5, 6))))
    assert np.allclose(levels, 0.22)


def test_all_nan_image_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no finite pixel"):
        save_png(np.full((10, 10), np.nan), tmp_path / "a.png")
    with pytest.raises(ValueError, match="no finite pixel"):
        display(np.full((10, 10), np.nan), background="plane")
    assert list(tmp_path.iterdir()) == []


def test_quantised_image_with_zero_mad(tmp_path):
    # most pixels share one value (MAD = 0): the picture still has a sky and stars
    image = np.full((100, 100), 10.0)
    image[::3, ::2] = 11.0
    image[50, 50] = 200.0
    out = _png(image, tmp_path)
    assert 0.1 < out[0, 1] < 0.3  # the common value: sky
    assert out[0, 0] > out[0, 1]  # the other level: brighter
    assert out[50, 50] == out.max() > 0.9


def test_lazy_large_image_uses_block_means():
    rng = np.random.default_rng(6)
    data = rng.normal(50.0, 2.0, (600, 800)).astype(np.float32)
    data[::50, ::50] += 5000.0  # stars
    lazy = da.from_array(data, chunks=(100, 800))
    img = display(lazy, max_pixels=30_000)  # 4 x 4 block means: noise 0.5
    levels = _levels(img)
    assert levels.shape == (150, 200)
    assert np.median(levels) == pytest.approx(0.22, abs=0.01)
    assert 8 <= np.std(levels[levels < 0.6] * 255) <= 30  # the block means' own noise shows


def test_norm_array_sets_the_range():
    rng = np.random.default_rng(7)
    smooth, noisy = rng.normal(100, 1, (80, 90)), rng.normal(100, 5, (80, 90))
    levels = _levels(display(noisy, norm_array=smooth))
    # the smooth image's black point (2.8 of its sigmas down) clips much of the noisy one
    assert (levels == 0).mean() > 0.2
    assert np.median(levels) == pytest.approx(0.22, abs=0.02)


def test_colorbar_inverse():
    image = np.random.default_rng(8).gamma(3.0, 50.0, (40, 50))
    img = display(image)
    values = np.linspace(img.norm.vmin, img.norm.vmax, 9)
    np.testing.assert_allclose(img.norm.inverse(img.norm(values)), values, rtol=1e-9)
    plt.colorbar(img)
    img.figure.canvas.draw()


def test_refuses_options_auto_would_ignore(tmp_path):
    image = np.random.default_rng(9).normal(10, 1, (30, 40))
    for kwargs, name in (({"min_percent": 1}, "min_percent"), ({"max_percent": 99}, "max_percent"),
                         ({"log_a": 100}, "log_a")):
        with pytest.raises(ValueError, match=f"{name}=.*explicit stretches"):
            save_png(image, tmp_path / "a.png", **kwargs)
        with pytest.raises(ValueError, match=name):
            display(image, stretch="auto", **kwargs)
    with pytest.raises(ValueError, match="none, plane, poly2"):
        display(image, background="poly3")
    with pytest.raises(ValueError, match="sky cells"):
        display(np.random.default_rng(1).normal(0, 1, (8, 8)), background="plane")
    assert list(tmp_path.iterdir()) == []


def test_explicit_stretch_with_background(tmp_path):
    # background works with the explicit stretches too: the ramp is gone before the percentiles
    v, u = np.mgrid[0:1:100j, 0:1:120j]
    image = 100 + 50 * u + np.random.default_rng(2).normal(0, 1, u.shape)
    out = _png(image, tmp_path, stretch="linear", min_percent=1, max_percent=99,
               background="plane")
    assert abs(np.median(out[:, :20]) - np.median(out[:, -20:])) < 0.03
