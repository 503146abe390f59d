"""Calibration masters and lazy calibration, against a plain numpy calibration in memory."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clip

import bigstack
from bigstack import BigstackError, Cosmetic, FrameError

from .helpers import raise_if_dask_computes

SHAPE = (48, 60)


class Sensor:
    """A small sensor written in the test: bias with a column pattern, dark current with
    amp glow and hot pixels, a vignetted flat with a dust donut."""

    def __init__(self, seed=0):
        rng = np.random.default_rng(seed)
        ny, nx = SHAPE
        yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
        self.rng = rng
        self.bias = 500.0 + 6.0 * np.sin(xx / 2.7)
        self.rate = 0.4 + 15.0 * np.exp(-(xx ** 2 + yy ** 2) / 150.0)  # e-/s, glow at (0, 0)
        self.hot = rng.random(SHAPE) < 0.01
        self.hot[[0, -1], :] = self.hot[:, [0, -1]] = False
        self.rate[self.hot] += 40.0
        r2 = ((xx - nx / 2) ** 2 + (yy - ny / 2) ** 2) / ((nx / 2) ** 2 + (ny / 2) ** 2)
        donut = np.hypot(xx - 40, yy - 15)
        self.flat = (1 - 0.25 * r2) * (1 - 0.03 * ((donut > 3) & (donut < 6)))
        self.read_noise = 3.0

    def frames(self, folder, kind, n, exptime, level=0.0, scale=None):
        paths = []
        for i in range(n):
            signal = self.bias + self.rate * exptime
            if kind == "flat":
                signal = signal + level * (1 + 0.1 * i) * self.flat
            elif kind == "light":
                signal = signal + level * self.flat
            data = signal + self.rng.normal(0, self.read_noise, SHAPE)
            path = folder / f"{kind}{i:02d}.fit"
            hdu = fits.PrimaryHDU(data.astype(np.float32))
            hdu.header["EXPTIME"] = exptime
            hdu.header["IMAGETYP"] = kind.upper()
            hdu.writeto(path)
            paths.append(str(path))
        return paths


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sensor")
    sensor = Sensor()
    files = {"bias": sensor.frames(folder, "bias", 9, 0.0),
             "dark": sensor.frames(folder, "dark", 9, 30.0),
             "flat": sensor.frames(folder, "flat", 9, 1.0, level=20000.0),
             "light": sensor.frames(folder, "light", 5, 60.0, level=1000.0)}
    return sensor, files


def data_of(paths):
    return np.array([fits.getdata(p).astype(np.float64) for p in paths])


def clipped_mean(cube):
    return np.ma.getdata(sigma_clip(cube, sigma=3, maxiters=5, axis=0,
                                    cenfunc="median", stdfunc="std").mean(axis=0))


def test_masters_equal_numpy_references(night):
    _, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    np.testing.assert_allclose(bias.values, clipped_mean(data_of(files["bias"])), rtol=1e-6)
    assert bias.attrs["n_frames"] == 9 and bias.attrs["bigstack_master"] == "bias"
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    want = clipped_mean(data_of(files["dark"]) - bias.values)
    np.testing.assert_allclose(dark.values, want, rtol=1e-5, atol=1e-3)
    assert dark.attrs["exptime"] == 30.0 and dark.attrs["bias_subtracted"] is True
    flat = bigstack.make_master(files["flat"], "flat", bias=bias, method="mean")
    cube = data_of(files["flat"]) - bias.values
    levels = np.median(cube, axis=(1, 2))
    want = (cube * (levels[0] / levels)[:, None, None]).mean(axis=0)
    want /= np.median(want)
    np.testing.assert_allclose(flat.values, want, rtol=2e-3)
    assert abs(float(np.median(flat.values)) - 1) < 1e-6


def test_calibrate_equals_numpy_pixel_for_pixel(night):
    _, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    flat = bigstack.make_master(files["flat"], "flat", bias=bias)
    cube = bigstack.open_frames(files["light"])
    with raise_if_dask_computes():  # lazy: nothing is read until asked
        calibrated = bigstack.calibrate(cube, bias=bias, dark=dark, flat=flat)
    raw = data_of(files["light"]).astype(np.float32)
    want = (raw - bias.values - np.float32(2.0) * dark.values) / flat.values
    np.testing.assert_allclose(calibrated.values, want, rtol=1e-6, atol=1e-3)
    assert calibrated.attrs["calibration"]["dark_factor"] == [2.0] * 5


def test_calibrated_lights_are_the_sky_and_the_stack_keeps_the_record(night, tmp_path):
    sensor, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    flat = bigstack.make_master(files["flat"], "flat", bias=bias)
    calibrated = bigstack.calibrate(files["light"], bias=bias, dark=dark, flat=flat)
    result = bigstack.stack(calibrated, store=tmp_path / "cal.zarr")
    level = 1000.0 * np.median(sensor.flat)  # the flat is normalised by its median
    image = result["stack"].values
    noise = sensor.read_noise * np.sqrt(1 + 1 / 9 + 4 / 9) / np.sqrt(5) / np.min(sensor.flat)
    assert np.abs(image - level).max() < 6 * noise  # vignetting, donut, glow, hot pixels gone
    raw = bigstack.stack(files["light"]).compute()["stack"].values
    assert np.ptp(raw) > 300  # the raw stack is anything but flat
    record = result.attrs["calibration"]
    assert record["dark_scale"] == "exptime" and record["dark_factor"] == [2.0] * 5


def test_dark_scaling_and_optimisation(night):
    _, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    lights = bigstack.open_frames(files["light"])
    optimised = bigstack.calibrate(lights, bias=bias, dark=dark, dark_scale="optimize")
    np.testing.assert_allclose(optimised.attrs["calibration"]["dark_factor"], 2.0, rtol=0.01)
    none = bigstack.calibrate(lights, bias=bias, dark=dark, dark_scale="none")
    raw = data_of(files["light"])
    np.testing.assert_allclose(none.values, raw - bias.values - dark.values, atol=2e-3)
    # a dark that still holds the bias cannot be scaled to another exposure
    raw_dark = bigstack.make_master(files["dark"], "dark")
    with pytest.raises(BigstackError, match="still holds the bias"):
        bigstack.calibrate(lights, dark=raw_dark)


def test_low_flat_is_refused_or_masked(night):
    _, files = night
    flat = bigstack.make_master(files["flat"], "flat").values.copy()
    flat[3:5, 7:10] = 0.0
    with pytest.raises(FrameError, match=r"0\.208% of the flat's pixels are at or below 0\.05"):
        bigstack.calibrate(files["light"], flat=flat)
    masked = bigstack.calibrate(files["light"], flat=flat, low_flat="mask")
    values = masked.values
    assert np.isnan(values[:, 3:5, 7:10]).all() and np.isfinite(values[:, 10:, 10:]).all()
    assert masked.attrs["calibration"]["flat_low_pixels"] == 6


@pytest.mark.parametrize("floor", [0.05, 0.5, 0.0])
def test_low_flat_pixels_equal_numpy_with_or_without_the_median(night, floor, monkeypatch):
    """Flats whose every pixel is above ``floor`` x their largest skip the median; each
    count of low pixels equals numpy's, at the threshold too (float32 comparisons)."""
    _, files = night
    medians = []
    nanmedian = np.nanmedian
    good = bigstack.make_master(files["flat"], "flat").values.astype(np.float32)
    level = np.float32(floor * float(np.nanmedian(good)))
    below = np.nextafter(level, np.float32(-1)) if floor else np.float32(-0.5)
    above = np.nextafter(level, np.float32(2)) if floor else np.float32(1e-3)
    cases = {"good": good}
    for name, value in (("at", level), ("below", below), ("above", above),
                        ("nan", np.nan), ("inf", np.inf)):
        flat = good.copy()
        flat[5, 6] = value
        cases[name] = flat
    for name, flat in cases.items():
        want = int((~np.isfinite(flat) | (flat <= np.float32(floor * float(
            np.nanmedian(flat))))).sum())
        medians.clear()
        with monkeypatch.context() as patch:
            patch.setattr(np, "nanmedian", lambda *a, **k: medians.append(1) or nanmedian(
                *a, **k))
            masked = bigstack.calibrate(files["light"], flat=flat, low_flat="mask",
                                        flat_floor=floor)
        assert masked.attrs["calibration"]["flat_low_pixels"] == want, name
        assert want == (name in ("at", "below", "nan", "inf"))
        # every pixel above floor x the largest: no median (a finite flat when floor is 0)
        assert bool(medians) != (name == "good" or (floor == 0 and name == "above")), name


def test_cosmetic_correction_finds_the_hot_pixels_and_repairs_them(night):
    sensor, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    lights = bigstack.open_frames(files["light"])
    plain = bigstack.calibrate(lights, bias=bias).values  # hot pixels still in
    repaired = bigstack.calibrate(lights, bias=bias, dark=dark, dark_scale="none",
                                  cosmetic=Cosmetic(hot=5.0, cold=None))
    record = repaired.attrs["calibration"]["cosmetic"]
    assert record["hot_pixels"] == int(sensor.hot.sum())
    values = repaired.values
    ys, xs = np.nonzero(sensor.hot)
    # each hot pixel is the median of its eight neighbours (those not hot themselves)
    expected_frame = plain[0] - dark.values
    for y, x in list(zip(ys, xs, strict=True))[:10]:
        ring = [expected_frame[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                if (dy or dx) and not sensor.hot[y + dy, x + dx]]
        assert values[0, y, x] == pytest.approx(np.median(ring), rel=1e-5)
    nan = bigstack.calibrate(lights, bias=bias, dark=dark, cosmetic=Cosmetic(replace="nan"))
    assert np.isnan(nan.values[:, sensor.hot]).all()


def test_bad_masters_and_flats_are_named(night, tmp_path):
    _, files = night
    small = tmp_path / "small.fits"
    fits.PrimaryHDU(np.ones((10, 10), np.float32)).writeto(small)
    with pytest.raises(FrameError, match=r"small.fits: bias master of shape \(10, 10\)"):
        bigstack.calibrate(files["light"], bias=small)
    with pytest.raises(FrameError, match=r"small.fits: dark master of shape \(10, 10\)"):
        bigstack.calibrate(files["light"], dark=small)
    with pytest.raises(FrameError, match=r"small.fits: flat master of shape \(10, 10\)"):
        bigstack.calibrate(files["light"], flat=small)
    saturated = []
    for i in range(3):
        path = tmp_path / f"sat{i}.fit"
        fits.PrimaryHDU(np.full(SHAPE, 65000, np.uint16)).writeto(path)
        saturated.append(str(path))
    with pytest.raises(BigstackError, match="all 3 flats are saturated"):
        bigstack.make_master(saturated, "flat")
    with pytest.raises(BigstackError, match="differ in exptime"):
        bigstack.make_master(files["dark"] + files["light"][:1], "dark")


def test_masters_are_saved_and_reused(night, tmp_path):
    _, files = night
    bias = bigstack.make_master(files["bias"], "bias", store=tmp_path / "bias.fits")
    again = bigstack.load_master(tmp_path / "bias.fits")
    np.testing.assert_array_equal(again.values, bias.values)
    assert again.attrs["n_frames"] == 9 and again.attrs["inputs"] == files["bias"]
    calibrated = bigstack.calibrate(files["light"], bias=tmp_path / "bias.fits")
    np.testing.assert_allclose(calibrated.values, data_of(files["light"]) - bias.values,
                               atol=2e-3)
    assert calibrated.attrs["calibration"]["bias"] == str(tmp_path / "bias.fits")


def test_fused_stack_with_dark_factors_that_differ(night, tmp_path, monkeypatch):
    """Lights of different exposures scale the dark each by its own factor: the fused
    stack subtracts the bias and the scaled dark apart (no one bias + k * dark for the
    tile), and still equals stacking the calibrated frames."""
    from bigstack import _kernels

    _, files = night
    lights = []
    for i, (path, exptime) in enumerate(zip(files["light"], [60.0, 30.0, 60.0, 90.0, 45.0],
                                            strict=True)):
        data = np.clip(np.round(fits.getdata(path)), 0, 65535).astype(np.uint16)
        hdu = fits.PrimaryHDU(data)
        hdu.header["EXPTIME"] = exptime
        hdu.writeto(tmp_path / f"e{i}.fits")
        lights.append(str(tmp_path / f"e{i}.fits"))
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    flat = bigstack.make_master(files["flat"], "flat", bias=bias)
    cube = bigstack.calibrate(bigstack.open_frames(lights), bias=bias, dark=dark, flat=flat)
    calls = []
    kernel = _kernels.add_calibrated
    monkeypatch.setattr(_kernels, "add_calibrated", lambda *a, **k: calls.append(
        k.get("base")) or kernel(*a, **k))
    shifts = np.array([[0, 0], [1, -2], [-3, 1], [2, 2], [0, 4]], float)
    fused = bigstack.stack(cube, shifts, subpixel="nearest").compute()
    assert calls and all(base is None for base in calls)
    plain = bigstack.stack(np.asarray(cube.values), shifts, subpixel="nearest")
    np.testing.assert_allclose(fused["stack"].values, plain["stack"].values, rtol=1e-6,
                               atol=1e-4)
    np.testing.assert_array_equal(fused["coverage"].values, plain["coverage"].values)


def test_masters_count_in_the_memory_budget(night):
    _, files = night
    bias = bigstack.make_master(files["bias"], "bias")
    calibrated = bigstack.calibrate(files["light"], bias=bias)
    with pytest.raises(BigstackError, match="the calibration masters alone take"):
        bigstack.stack(calibrated, memory=bias.values.nbytes // 2)


@pytest.mark.parametrize("cosmetic", [None, Cosmetic(), Cosmetic(replace="nan")])
@pytest.mark.parametrize("stored", ["float32", "int16"])
@pytest.mark.parametrize("tile", [None, 3])
def test_fused_calibrated_stack_equals_the_calibrated_frames_stacked(night, tmp_path, cosmetic,
                                                                       stored, tile,
                                                                       monkeypatch):
    """The stack reads raw rows and calibrates them as it adds them, a group of frames at a
    time (one pass, a row of the sums in the cache while the group adds to it): it must
    equal stacking the calibrated frames themselves, with the plan's tiles or 3-row ones."""
    from bigstack import _combine

    if tile is not None:
        monkeypatch.setattr(_combine, "plan_tiles", lambda *args, **kwargs: tile)
    _, files = night
    lights = files["light"]
    if stored == "int16":  # camera frames: 16-bit with BZERO, a BLANK pixel in one, and
        lights = []       # one frame of floats in the middle (a group ends at it)
        for i, path in enumerate(files["light"]):
            data = np.clip(np.round(fits.getdata(path)), 0, 65535).astype(np.uint16)
            out = tmp_path / f"u{i}.fits"
            hdu = fits.PrimaryHDU(data.astype(np.float32) if i == 3 else data)
            hdu.header["EXPTIME"] = 60.0
            if i == 2:
                hdu.scale("int16", bzero=32768)
                hdu.header["BLANK"] = -32768
                hdu.data[5, 7] = -32768
            hdu.writeto(out)
            lights.append(str(out))
    bias = bigstack.make_master(files["bias"], "bias")
    dark = bigstack.make_master(files["dark"], "dark", bias=bias)
    flat = bigstack.make_master(files["flat"], "flat", bias=bias).values.copy()
    flat[10:12, 20:24] = 0.0  # dead: masked below
    cube = bigstack.calibrate(bigstack.open_frames(lights), bias=bias, dark=dark, flat=flat,
                              cosmetic=cosmetic, low_flat="mask")
    shifts = np.array([[0, 0], [1, -2], [-3, 1], [2, 2], [0, 4]], float)
    from bigstack import _kernels

    calls = []
    kernel = _kernels.add_calibrated
    monkeypatch.setattr(_kernels, "add_calibrated", lambda *a, **k: calls.append(
        (len(a[1]), a[0].nbytes, a[3].shape, k.get("base"))) or kernel(*a, **k))
    fused = bigstack.stack(cube, shifts, subpixel="nearest").compute()
    assert sum(c[0] for c in calls) >= len(lights)  # the fused path added every frame
    assert max(c[0] for c in calls) > 1  # in groups
    for _, nbytes, (h, width), base in calls:  # what the tile plan counts
        assert nbytes <= _combine._GROUP_BYTES * (h + 2) * width  # a group's rows
        if base is not None:  # the lights share one exposure: bias + 2 * dark, one master
            assert base[2] == 2.0 and base[0].nbytes <= _combine._BASE_BYTES * h * width
    bases = [c[3] is not None for c in calls]
    # with the plan's tiles every group subtracts one master; 3-row tiles are too low for
    # the frames' shifts (6 rows apart): most subtract the bias and the dark apart
    assert all(bases) if tile is None else not all(bases)
    plain = bigstack.stack(np.asarray(cube.values), shifts, subpixel="nearest")
    np.testing.assert_allclose(fused["stack"].values, plain["stack"].values, rtol=1e-6,
                               atol=1e-4, equal_nan=True)
    np.testing.assert_array_equal(fused["coverage"].values, plain["coverage"].values)
    assert np.isnan(fused["stack"].values).any() == np.isnan(plain["stack"].values).any()
