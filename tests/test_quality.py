"""Frame statistics, normalisation, quality, weights and selection (bigstack._quality)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bigstack._quality import (
    frame_stats,
    gather,
    measure_frame,
    normalisation,
    sample_rows,
    select_frames,
    weights_from,
)

# --------------------------------------------------------------------------
# test frames


def add_star(image, x0, y0, flux, sx, sy=None, theta=0.0):
    """Add a pixel-integrated elliptical Gaussian star (9x9 sub-samples a pixel)."""
    sy = sx if sy is None else sy
    half = int(math.ceil(5 * max(sx, sy)))
    ys = np.arange(max(int(y0) - half, 0), min(int(y0) + half + 1, image.shape[0]))
    xs = np.arange(max(int(x0) - half, 0), min(int(x0) + half + 1, image.shape[1]))
    sub = (np.arange(9) + 0.5) / 9 - 0.5
    gy = (ys[:, None] + sub[None, :]).ravel()[:, None] - y0
    gx = (xs[:, None] + sub[None, :]).ravel()[None, :] - x0
    c, s = math.cos(theta), math.sin(theta)
    u = c * gx + s * gy
    v = -s * gx + c * gy
    profile = np.exp(-0.5 * (u * u / sx**2 + v * v / sy**2)) / (2 * math.pi * sx * sy * 81)
    stamp = profile.reshape(ys.size, 9, xs.size, 9).sum(axis=(1, 3))
    image[ys[:, None], xs[None, :]] += flux * stamp


class Rows:
    """``read_rows`` over an in-memory frame that records what was read."""

    def __init__(self, frame):
        self.frame = frame
        self.calls = []

    def __call__(self, r0, r1):
        self.calls.append((r0, r1))
        return self.frame[r0:r1].astype(np.float32)

    @property
    def rows_read(self):
        return sum(r1 - r0 for r0, r1 in self.calls)


def sky_frame(seed, shape=(1024, 300), sky=1000.0, noise=10.0, stars=150, sx=1.3, sy=None,
              theta=0.0, hot=30):
    rng = np.random.default_rng(seed)
    frame = rng.normal(sky, noise, shape)
    for _ in range(stars):
        add_star(frame, rng.uniform(5, shape[1] - 5), rng.uniform(5, shape[0] - 5),
                 rng.uniform(2e3, 2e4), sx, sy, theta)
    ys, xs = rng.integers(0, shape[0], hot), rng.integers(0, shape[1], hot)
    frame[ys, xs] += rng.uniform(500, 20000, hot)  # hot pixels and cosmic rays
    return frame.astype(np.float32)


# --------------------------------------------------------------------------
# the subsample and frame_stats


def test_sample_rows_spread_over_the_frame():
    assert sample_rows(2048, 64, 8) == [(int(a), int(a) + 64) for a in
                                        np.linspace(0, 1984, 8).round()]
    assert sample_rows(2048, 64, 8)[0] == (0, 64)
    assert sample_rows(2048, 64, 8)[-1] == (1984, 2048)
    assert sample_rows(500, 64, 8) == [(0, 500)]
    with pytest.raises(ValueError, match="rows and bands must be >= 1"):
        sample_rows(100, 0, 8)


def test_frame_stats_reads_only_the_subsample():
    frame = sky_frame(1)
    rows = Rows(frame)
    stats = frame_stats(rows, *frame.shape, rows=32, bands=8)
    assert rows.rows_read == 8 * 32
    assert rows.calls[0][0] == 0 and rows.calls[-1][1] == frame.shape[0]
    # stars, hot pixels and cosmic rays are clipped away
    assert stats["background"] == pytest.approx(1000.0, abs=0.3)
    assert stats["scale"] == pytest.approx(10.0, rel=0.03)


def test_frame_stats_equal_astropy_on_float_pixels():
    """Float pixels: astropy's clipped median and mad_std of the strided sample."""
    from astropy.stats import mad_std, sigma_clip

    from bigstack._quality import _STATS_SAMPLE

    frame = sky_frame(3, shape=(1024, 300))
    stats = frame_stats(Rows(frame), *frame.shape, rows=32, bands=8)
    pixels = np.concatenate([frame[a:b].ravel() for a, b in sample_rows(1024, 32, 8)])
    step = -(-pixels.size // _STATS_SAMPLE)
    kept = sigma_clip(pixels[::step].astype(np.float64), sigma=3, maxiters=5, cenfunc="median",
                      stdfunc="mad_std", masked=False, axis=None)
    assert stats["background"] == np.median(kept)
    assert stats["scale"] == pytest.approx(mad_std(kept), rel=1e-12)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 5.0, 10.0])
@pytest.mark.parametrize("sky", [1000.0, 1000.4])
def test_frame_stats_on_integer_pixels(sigma, sky):
    """16-bit pixels: no half-ADU steps in the background or the noise."""
    rng = np.random.default_rng(int(sigma * 10 + sky))
    frame = np.round(rng.normal(sky, sigma, (512, 256))).astype(np.float32)
    stats = frame_stats(Rows(frame), 512, 256, rows=32, bands=8)
    true_noise = math.hypot(sigma, 12**-0.5)  # rounding adds 1/12
    assert stats["scale"] == pytest.approx(true_noise, rel=0.02)
    assert stats["background"] == pytest.approx(sky, abs=0.04 * true_noise)


def test_frame_stats_on_synthetic_frames(tmp_path):
    from bigstack import open_frames, synthetic
    from bigstack._io import frame_reader

    truth = synthetic.make_frames(tmp_path, n_frames=2, shape=(400, 300), seed=3,
                                  camera=synthetic.Camera(noise="gaussian"),
                                  sky=synthetic.Sky(gradient=(0.0, 0.0)), workers=1)
    reader, files = frame_reader(open_frames(truth.paths))
    for i in range(2):
        stats = frame_stats(lambda a, b, i=i: reader.read(int(files[i]), a, b), 400, 300,
                            rows=16, bands=6)
        assert stats["background"] == pytest.approx(truth.params["sky"], abs=0.1 * truth.sky_sigma)
        # the file holds integers: rounding adds 1/12 to the variance
        assert stats["scale"] == pytest.approx(math.hypot(truth.sky_sigma, 12**-0.5), rel=0.04)


def test_frame_stats_with_nan_and_empty_frames():
    frame = sky_frame(2, shape=(200, 100), stars=15)
    frame[:, :30] = np.nan
    stats = frame_stats(Rows(frame), 200, 100)
    assert stats["background"] == pytest.approx(1000.0, abs=0.5)
    empty = np.full((50, 40), np.nan, np.float32)
    stats = frame_stats(Rows(empty), 50, 40)
    assert np.isnan(stats["background"]) and np.isnan(stats["scale"])
    with pytest.raises(ValueError, match=r"returned shape \(10, 40\), expected \(10, 41\)"):
        frame_stats(lambda a, b: np.zeros((b - a, 40)), 10, 41)


# --------------------------------------------------------------------------
# normalisation


def test_normalisation_formulas():
    stats = [{"background": 100.0, "scale": 5.0}, {"background": 150.0, "scale": 10.0},
             {"background": 80.0, "scale": 2.0}]
    offset, scale = normalisation(stats, "none")
    assert (offset == 0).all() and (scale == 1).all()
    offset, scale = normalisation(stats, "additive")
    np.testing.assert_allclose(offset, [0.0, 50.0, -20.0])
    np.testing.assert_allclose(scale, 1.0)
    offset, scale = normalisation(stats, "multiplicative", reference=1)
    np.testing.assert_allclose(offset, 0.0)
    np.testing.assert_allclose(scale, [1.5, 1.0, 150 / 80])
    offset, scale = normalisation(stats, "additive+scale")
    np.testing.assert_allclose(scale, [1.0, 0.5, 2.5])
    # (b_i - offset) * scale = b_ref and s_i * scale = s_ref
    b = np.array([100.0, 150.0, 80.0])
    np.testing.assert_allclose((b - offset) * scale, 100.0)
    np.testing.assert_allclose(np.array([5.0, 10.0, 2.0]) * scale, 5.0)


@pytest.mark.parametrize("mode", ["additive", "multiplicative", "additive+scale"])
def test_normalised_frames_match_the_reference(mode):
    rng = np.random.default_rng(5)
    base = [sky_frame(10 + i, shape=(512, 200), sky=800.0, noise=8.0, stars=60)
            for i in range(5)]
    if mode == "additive":  # sky glow: offsets only
        gains, offsets = np.ones(5), rng.uniform(-200, 300, 5)
    elif mode == "multiplicative":  # transparency: gains only
        gains, offsets = rng.uniform(0.6, 1.5, 5), np.zeros(5)
    else:  # both
        gains, offsets = rng.uniform(0.6, 1.5, 5), rng.uniform(-200, 300, 5)
    gains[2], offsets[2] = 1.0, 0.0
    frames = [g * f + o for f, g, o in zip(base, gains, offsets, strict=True)]
    stats = [frame_stats(Rows(f), *f.shape, rows=32, bands=8) for f in frames]
    offset, scale = normalisation(stats, mode, reference=2)
    after = [frame_stats(Rows((f - o) * s), *f.shape, rows=32, bands=8)
             for f, o, s in zip(frames, offset, scale, strict=True)]
    ref = stats[2]
    for a in after:  # within the noise of the estimates
        assert a["background"] == pytest.approx(ref["background"], abs=0.1 * ref["scale"])
        if mode == "additive+scale":
            assert a["scale"] == pytest.approx(ref["scale"], rel=0.03)
    spread = np.ptp([s["background"] for s in stats])
    assert spread > 50  # the frames did differ


def test_normalisation_errors_and_keep():
    stats = {"background": np.array([100.0, -5.0, np.nan]), "scale": np.array([5.0, 5.0, 0.0])}
    with pytest.raises(ValueError, match="normalisation must be one of"):
        normalisation(stats, "scale")
    with pytest.raises(ValueError, match="background of frame 1 is -5.0.*finite positive"):
        normalisation(stats, "multiplicative")
    with pytest.raises(ValueError, match="background of frame 2 is nan"):
        normalisation(stats, "additive")
    with pytest.raises(ValueError, match="reference=5 but there are 3 frames"):
        normalisation(stats, "additive", reference=5)
    with pytest.raises(ValueError, match="reference frame 2 is not among the kept"):
        normalisation(stats, "additive", reference=2, keep=[True, True, False])
    offset, scale = normalisation(stats, "multiplicative", keep=[True, False, False])
    np.testing.assert_array_equal(scale, [1.0, 1.0, 1.0])
    stats["background"][2] = 90.0
    with pytest.raises(ValueError, match="noise of frame 2 is 0.0"):
        normalisation(stats, "additive+scale")
    with pytest.raises(ValueError, match="needs 'background' in the frame table"):
        normalisation({"level": np.ones(2)}, "additive")


# --------------------------------------------------------------------------
# frame quality


@pytest.mark.parametrize("shape", [(64, 300), (5, 7), (1, 9), (20, 3)])
@pytest.mark.parametrize("radius", [1, 2, 3, 5])
def test_window_max_equals_scipy_maximum_filter(shape, radius):
    from scipy.ndimage import maximum_filter

    from bigstack._quality import _window_max

    data = np.random.default_rng(radius).normal(size=shape).astype(np.float32)
    np.testing.assert_array_equal(_window_max(data, radius),
                                  maximum_filter(data, 2 * radius + 1, mode="nearest"))


def star_field(seed, positions, sx=1.4, sy=None, theta=0.0, shape=(600, 240)):
    rng = np.random.default_rng(seed)
    frame = rng.normal(500.0, 5.0, shape)
    for x, y in positions:
        add_star(frame, x, y, 8000.0, sx, sy, theta)
    return frame


def test_star_count_ignores_hot_pixels_and_cosmic_rays():
    bands = sample_rows(600, 40, 4)  # (0, 40), (187, 227), (373, 413), (560, 600)
    rng = np.random.default_rng(3)
    positions = []
    for r0, r1 in bands:
        xs = np.arange(15, 230, 20)[:8] + rng.uniform(-2, 2, 8)
        ys = rng.uniform(r0 + 8, r1 - 8, 8)
        positions += list(zip(xs, ys, strict=True))
    frame = star_field(4, positions)
    # stars between the bands are not seen
    add_star(frame, 120.0, 100.0, 8000.0, 1.4)
    # single hot pixels and cosmic rays, and a 2-pixel cosmic ray
    for r0, _ in bands:
        frame[r0 + 20, 5:230:37] += 5000.0
    frame[bands[1][0] + 30, 50:52] += 3000.0
    quality = measure_frame(Rows(frame), *frame.shape, rows=40, bands=4)
    assert quality["stars"] == len(positions)


def test_field_fwhm_and_roundness():
    rng = np.random.default_rng(6)
    positions = list(zip(rng.uniform(10, 230, 120), rng.uniform(10, 590, 120), strict=True))
    sx, sy = 1.8, 1.35  # axis ratio 0.75
    frame = star_field(7, positions, sx, sy, theta=0.6)
    rows = Rows(frame)
    quality = measure_frame(rows, *frame.shape, rows=40, bands=5)
    assert quality["fwhm"] == pytest.approx(2.3548 * math.sqrt((sx**2 + sy**2) / 2), rel=0.03)
    assert quality["roundness"] == pytest.approx(0.25, abs=0.02)
    assert quality["background"] == pytest.approx(500.0, abs=0.3)
    assert quality["noise"] == pytest.approx(5.0, rel=0.04)
    assert np.isnan(quality["flux"])
    assert rows.rows_read == 5 * 40


def test_reference_star_quality():
    frame = star_field(8, [], shape=(400, 200))
    add_star(frame, 101.3, 250.6, 40000.0, 2.0, 1.2, theta=-0.4)
    rows = Rows(frame)
    quality = measure_frame(rows, 400, 200, star=[101.3, 250.6], rows=32, bands=4)
    assert quality["roundness"] == pytest.approx(0.4, abs=0.02)
    assert quality["fwhm"] == pytest.approx(2.3548 * math.sqrt((4 + 1.44) / 2), rel=0.03)
    assert quality["flux"] == pytest.approx(40000.0, rel=0.03)
    # only the subsample and the stamp's rows were read
    assert rows.rows_read <= 4 * 32 + 29
    # measurements from find_shifts are used as they are
    given = measure_frame(Rows(frame), 400, 200, star=[101.3, 250.6], fwhm=3.3, flux=123.0,
                          rows=32, bands=4)
    assert given["fwhm"] == 3.3 and given["flux"] == 123.0
    assert given["roundness"] == quality["roundness"]
    # NaN measurements (a frame find_shifts lost) are measured here instead
    unknown = measure_frame(Rows(frame), 400, 200, star=[101.3, 250.6], fwhm=np.nan,
                            flux=np.nan, rows=32, bands=4)
    assert unknown == quality
    # a lost star (NaN position) falls back to the field
    lost = measure_frame(Rows(frame), 400, 200, star=[np.nan, np.nan], rows=32, bands=4)
    assert np.isnan(lost["flux"])


def test_quality_on_synthetic_frames(tmp_path):
    from bigstack import find_shifts, open_frames, synthetic
    from bigstack._io import frame_reader

    truth = synthetic.make_frames(tmp_path, n_frames=3, shape=(512, 384), seed=9,
                                  stars=synthetic.Stars(fwhm=3.0, n_stars=400),
                                  camera=synthetic.Camera(noise="gaussian"),
                                  sky=synthetic.Sky(gradient=(0.0, 0.0)), workers=1)
    cube = open_frames(truth.paths)
    shifts = find_shifts(cube, star_pos=truth.ref_star, search=60)
    reader, files = frame_reader(cube)
    rows = [gather([measure_frame(lambda a, b, i=i: reader.read(int(files[i]), a, b), 512, 384,
                                  star=shifts["star"].values[i], fwhm=shifts["fwhm"].values[i],
                                  flux=shifts["flux"].values[i])])
            for i in range(3)]
    for row in rows:
        assert row["fwhm"][0] == pytest.approx(3.0, rel=0.1)
        assert row["roundness"][0] < 0.05
        assert row["stars"][0] > 20
        assert row["background"][0] == pytest.approx(truth.params["sky"], abs=truth.sky_sigma)
    field = measure_frame(lambda a, b: reader.read(int(files[0]), a, b), 512, 384)
    assert field["fwhm"] == pytest.approx(3.0, rel=0.05)
    assert field["roundness"] < 0.05


def test_quality_of_a_flat_frame():
    frame = np.full((100, 50), 7.0, np.float32)
    quality = measure_frame(Rows(frame), 100, 50)
    assert quality["background"] == 7.0 and quality["noise"] == 0.0
    assert np.isnan(quality["fwhm"]) and np.isnan(quality["stars"])


# --------------------------------------------------------------------------
# weights


def table(**columns):
    return {k: np.asarray(v, dtype=np.float64) for k, v in columns.items()}


def test_weights_from_quality():
    quality = table(noise=[1.0, 2.0, 4.0], fwhm=[2.0, 3.0, 4.0])
    np.testing.assert_array_equal(weights_from(quality, "none"), [1.0, 1.0, 1.0])
    w = weights_from(quality, "noise")
    np.testing.assert_allclose(w / w[0], [1.0, 1 / 4, 1 / 16])
    assert w.mean() == pytest.approx(1.0)
    w = weights_from(quality, "fwhm")
    np.testing.assert_allclose(w / w[0], [1.0, 4 / 9, 1 / 4])
    assert w.mean() == pytest.approx(1.0)
    # a list of per-frame dicts works as well
    rows = [{"noise": 1.0, "fwhm": 2.0}, {"noise": 2.0, "fwhm": 3.0}]
    np.testing.assert_allclose(weights_from(rows, "noise"), [1.6, 0.4])


def test_weights_with_frames_left_out():
    quality = table(noise=[1.0, np.nan, 2.0])
    w = weights_from(quality, "noise", keep=[True, False, True])
    np.testing.assert_allclose(w, [1.6, 0.0, 0.4])
    np.testing.assert_array_equal(weights_from(quality, "none", keep=[True, False, True]),
                                  [1.0, 0.0, 1.0])


@pytest.mark.parametrize("mode, match", [
    ("snr", "weights must be one of"),
    ([1.0, 2.0], r"one value per frame \(3\)"),
    ([1.0, np.inf, 2.0], "weight of frame 1 is not finite"),
    ([1.0, -1.0, 2.0], "weight of frame 1 is negative"),
    ([0.0, 0.0, 0.0], "weights are all zero"),
])
def test_bad_weights(mode, match):
    with pytest.raises(ValueError, match=match):
        weights_from(table(noise=[1.0, 2.0, 3.0]), mode)


def test_weights_need_measured_values():
    with pytest.raises(ValueError, match="noise of frame 1 is 0.0.*finite positive noise"):
        weights_from(table(noise=[1.0, 0.0, 3.0]), "noise")
    with pytest.raises(ValueError, match="fwhm of frame 2 is nan"):
        weights_from(table(fwhm=[1.0, 2.0, np.nan]), "fwhm")
    with pytest.raises(ValueError, match="needs 'fwhm' in the frame table"):
        weights_from(table(noise=[1.0]), "fwhm")
    w = weights_from(table(noise=[1.0, 2.0, 3.0]), np.array([0.0, 1.0, 2.0]))
    np.testing.assert_array_equal(w, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="all zero on the kept frames"):
        weights_from(table(noise=[1.0, 2.0, 3.0]), [0.0, 1.0, 2.0], keep=[True, False, False])


# --------------------------------------------------------------------------
# selection


def test_select_by_threshold():
    quality = table(fwhm=[2.5, 4.5, 3.9, np.nan, 5.0], stars=[100, 120, 30, 90, 110],
                    noise=[1, 1, 1, 1, 1])
    keep, reasons = select_frames(quality, {"fwhm": 4.0})
    np.testing.assert_array_equal(keep, [True, False, True, False, False])
    assert reasons == {1: "fwhm 4.5 > 4", 3: "fwhm not measured", 4: "fwhm 5 > 4"}
    keep, reasons = select_frames(quality, {"fwhm": 4.6, "stars": 50})
    np.testing.assert_array_equal(keep, [True, True, False, False, False])
    assert reasons[2] == "stars 30 < 50"
    keep, reasons = select_frames(quality, None)
    assert keep.all() and reasons == {}


def test_select_worst_fraction():
    fwhm = np.array([3.0, 2.0, 5.0, 2.5, 4.0, 3.5, 2.2, 2.8, 3.3, 2.9, 3.1, 6.0, 2.1, 2.6, 2.7,
                     3.2, 2.4, 2.3, 3.4, 3.6, 3.7, 3.8, 2.05, 2.15, 2.25])  # 25 frames
    quality = table(fwhm=fwhm, noise=np.arange(25.0))
    keep, reasons = select_frames(quality, "10%")
    assert set(np.flatnonzero(~keep)) == {11, 2}  # 10% of 25 frames: the 2 worst
    assert "among the worst 10% by fwhm" in reasons[11]
    keep, _ = select_frames(quality, 0.2, score="noise")
    assert set(np.flatnonzero(~keep)) == {24, 23, 22, 21, 20}
    # frames already left out stay out and do not count
    before = np.ones(25, bool)
    before[11] = False
    keep, reasons = select_frames(quality, "10%", keep=before)
    assert set(np.flatnonzero(~keep)) == {11, 2, 4} and set(reasons) == {2, 4}
    # unmeasured frames are the worst; fewer frames than one in ten drops none
    keep, _ = select_frames(table(fwhm=[2.0, np.nan, 3.0, 4.0]), "25%")
    np.testing.assert_array_equal(keep, [True, False, True, True])
    keep, _ = select_frames(table(fwhm=[2.0, 3.0, 4.0]), "10%")
    assert keep.all()
    keep, _ = select_frames(table(stars=[5.0, 50.0, 500.0, 40.0]), "25%", score="stars")
    np.testing.assert_array_equal(keep, [False, True, True, True])


@pytest.mark.parametrize("select, match", [
    ({"sharpness": 3}, "unknown field 'sharpness'"),
    ("ten%", "a percentage like '10%'"),
    ("10", "a percentage like '10%'"),
    ("100%", r"must be in \[0, 1\)"),
    (1.5, r"must be in \[0, 1\)"),
    ([1, 2], "select must be None, a dict of thresholds"),
    ({"fwhm": 1.0}, "would leave no frame to stack"),
])
def test_bad_selection(select, match):
    with pytest.raises(ValueError, match=match):
        select_frames(table(fwhm=[2.0, 3.0]), select)


def test_bad_score():
    with pytest.raises(ValueError, match="score must be one of"):
        select_frames(table(fwhm=[2.0, 3.0]), "10%", score="snr")
