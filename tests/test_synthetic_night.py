"""Tests of bigstack.synthetic.make_night: a night's folder and the sensor's calibration truth.

Every check reads the files back with astropy and measures them with plain
numpy: masters are medians of the frames, the dark law and the flat's depths
are measured on them and compared with the stated parameters; the header
spellings and names are checked against literal tables written here from
what each program writes.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from bigstack import synthetic
from bigstack.synthetic import (
    Bias,
    Camera,
    Darks,
    Flats,
    Lights,
    Sensor,
    Sky,
    Stars,
)

SHAPE = (128, 160)


def _stack(paths):
    return np.stack([fits.getdata(p).astype(np.float64) for p in paths])


def _median(paths):
    return np.median(_stack(paths), axis=0)


def _rel(night, frame):
    return Path(frame.path).relative_to(night.directory).as_posix()


# --------------------------------------------------------------------------
# calibration truth


def test_calibrating_with_masters_gives_the_calibrated_truth(tmp_path):
    # Masters made here with numpy from the night's own calibration frames; the
    # calibrated light must equal the noiseless sky + stars within the noise.
    n_cal = 15
    night = synthetic.make_night(
        tmp_path, shape=SHAPE, seed=4, lights=2, darks=n_cal, flats=n_cal, bias=n_cal,
        darkflats=n_cal, temperature_jitter=0.0,
    )
    p = night.params
    gain, rn = p["gain"], p["read_noise"]
    light = night.select("light")[0]
    bias = _median(night.paths("bias"))
    dark = _median(night.paths("dark", exptime=light.exptime)) - bias
    flat_frames = night.select("flat", filter=light.filter)
    level = flat_frames[0].level
    flat = (_median([f.path for f in flat_frames]) - bias
            - (_median(night.paths("darkflat")) - bias)) / level
    data = fits.getdata(light.path).astype(np.float64)
    calibrated = (data - bias - dark) / flat

    truth = night.lights[0]
    want = truth.calibrated(0).astype(np.float64)
    # the noise: the light's (shot noise of everything that made electrons, read noise),
    # and the masters' (median of n: pi/2 times the variance of the mean)
    signal = want * truth.flat() + truth.dark(light.exptime, light.temperature)
    var_light = (np.maximum(signal, 0) * gain + rn**2) / gain**2
    var_bias = rn**2 / gain**2
    var_dark = (np.maximum(truth.dark(light.exptime), 0) * gain + rn**2) / gain**2
    var_master = math.pi / 2 / n_cal * (var_bias + var_dark)
    sigma = np.sqrt(var_light + var_master) / truth.flat()
    z = (calibrated - want) / sigma

    mask = np.ones(SHAPE, bool)
    mask[truth.cosmic_rays[0]] = False
    mask[night.cold_pixels] = False
    mask[night.hot_pixels] = False
    mask &= data < 60000  # saturated star cores
    # the flat's own noise matters only where the signal is high: keep the sky
    mask &= want < np.percentile(want, 90)
    assert mask.sum() > 0.8 * 0.9 * mask.size
    assert abs(np.mean(z[mask])) < 0.05
    assert 0.9 < np.std(z[mask]) < 1.15


def test_light_is_sky_times_flat_plus_dark_plus_bias(tmp_path):
    # The light frame against the truth's parts, composed here.
    night = synthetic.make_night(tmp_path, shape=SHAPE, seed=8, lights=3, darks=0, flats=0,
                                 bias=0)
    truth = night.lights[0]
    p = night.params
    for i, frame in enumerate(night.select("light")):
        data = fits.getdata(frame.path).astype(np.float64)
        signal = (truth.calibrated(i) * truth.flat()
                  + truth.dark(frame.exptime, frame.temperature))
        want = signal + truth.bias
        sigma = np.sqrt(np.maximum(signal, 0) * p["gain"] + p["read_noise"] ** 2) / p["gain"]
        mask = np.ones(SHAPE, bool)
        mask[truth.cosmic_rays[i]] = False
        mask &= want < 60000
        z = (data - want)[mask] / sigma[mask]
        assert abs(z.mean()) < 0.05
        assert 0.93 < z.std() < 1.07


def test_dark_is_linear_in_exposure_and_doubles_with_temperature(tmp_path):
    sensor = Sensor(bias=500.0, dark_current=0.5, amp_glow=3.0, amp_glow_corner="top-right",
                    dark_doubling=6.0)
    camera = Camera(temperature=-10.0, hot_pixels=20, hot_level=(100.0, 2000.0))
    night = synthetic.make_night(
        tmp_path, shape=SHAPE, seed=2, lights=1, flats=0, camera=camera, sensor=sensor,
        temperature_jitter=0.0, bias=Bias(9),
        darks=[Darks(9, exptime=60.0), Darks(9, exptime=120.0), Darks(9, exptime=240.0),
               Darks(9, exptime=60.0, temperature=-4.0), Darks(9, exptime=60.0, temperature=-16.0)],
    )
    bias = _median(night.paths("bias"))

    def dark(exptime, temperature):
        return _median(night.paths("dark", exptime=exptime, set_temp=temperature)) - bias

    d60, d120, d240 = dark(60.0, -10.0), dark(120.0, -10.0), dark(240.0, -10.0)
    assert d120.mean() / d60.mean() == pytest.approx(2.0, rel=0.01)
    assert d240.mean() / d60.mean() == pytest.approx(4.0, rel=0.01)
    # the stated law: doubling every 6 degrees
    assert dark(60.0, -4.0).mean() / d60.mean() == pytest.approx(2.0, rel=0.02)
    assert dark(60.0, -16.0).mean() / d60.mean() == pytest.approx(0.5, rel=0.02)
    # and the level the parameters give: 0.5 ADU/s plus the glow and the hot pixels
    ny, nx = SHAPE
    yy, xx = np.mgrid[:ny, :nx]
    glow = 3.0 * np.exp(-np.hypot(xx - (nx - 1), yy - (ny - 1)) / (0.1 * math.hypot(ny, nx)))
    hot_y, hot_x = night.hot_pixels
    quiet = np.ones(SHAPE, bool)
    quiet[hot_y, hot_x] = False
    assert d240[quiet].mean() == pytest.approx(240 * (0.5 + glow[quiet].mean()), rel=0.01)
    # the glow is in the top-right corner (last row, last column)
    assert d240[-8:, -8:].mean() > 240 * (0.5 + 1.5)
    assert d240[:8, :8].mean() == pytest.approx(240 * 0.5, abs=5)
    # hot pixels scale with the exposure too
    assert np.median(d240[hot_y, hot_x] / d60[hot_y, hot_x]) == pytest.approx(4.0, rel=0.02)


def test_dark_truth_follows_the_same_law(tmp_path):
    night = synthetic.make_night(tmp_path, shape=(64, 64), seed=1, lights=1, darks=0, flats=0,
                                 bias=0, sensor=Sensor(dark_current=0.2, dark_doubling=5.0))
    rate = night.dark_rate
    assert np.allclose(night.dark(100.0, -10.0), 100.0 * rate)
    assert np.allclose(night.dark(100.0, -5.0), 200.0 * rate)
    assert np.allclose(night.dark(50.0, -20.0), 12.5 * rate)
    assert np.median(rate) == pytest.approx(0.2)
    hot_y, hot_x = night.hot_pixels
    levels = night.lights[0].hot_levels
    assert np.allclose(rate[hot_y, hot_x], 0.2 + levels / Camera().exptime)


def test_flat_vignetting_depth_as_specified(tmp_path):
    sensor = Sensor(bias=600.0, vignetting=0.25)
    night = synthetic.make_night(tmp_path, shape=SHAPE, seed=3, lights=1, darks=0,
                                 flats=[Flats(9, level=0.4, exptime=0.5)], bias=9,
                                 darkflats=0, sensor=sensor, temperature_jitter=0.0)
    bias = _median(night.paths("bias"))
    frames = night.select("flat")
    assert frames[0].level == pytest.approx(0.4 * 65535)
    flat = (_median([f.path for f in frames]) - bias) / frames[0].level
    ny, nx = SHAPE
    cy, cx = (ny - 1) / 2, (nx - 1) / 2
    centre = flat[int(cy) - 2:int(cy) + 3, int(cx) - 2:int(cx) + 3].mean()
    assert centre == pytest.approx(1.0, abs=0.003)
    corners = [flat[0, 0], flat[0, -1], flat[-1, 0], flat[-1, -1]]
    for value in corners:
        assert value == pytest.approx(0.75, abs=0.012)  # one pixel: 0.6% noise
    # the fall-off is radial and smooth: half way to the corner, the cos^4 law
    f = math.hypot(cx, cy) / math.sqrt(0.75**-0.5 - 1)
    r = math.hypot(cx, cy) / 2
    yy, xx = np.mgrid[:ny, :nx]
    ring = np.abs(np.hypot(xx - cx, yy - cy) - r) < 1.0
    assert flat[ring].mean() == pytest.approx((1 + (r / f) ** 2) ** -2, abs=0.003)


def test_dust_donut_depth_as_specified(tmp_path):
    # no vignetting: its curvature would differ between the ring and the annulus around it
    sensor = Sensor(bias=600.0, dust=3, dust_depth=(0.03, 0.06), dust_radius=(10.0, 14.0))
    night = synthetic.make_night(tmp_path, shape=(192, 256), seed=12, lights=1, darks=0,
                                 flats=[Flats(9, level=0.5)], bias=9, sensor=sensor,
                                 temperature_jitter=0.0)
    bias = _median(night.paths("bias"))
    frames = night.select("flat")
    flat = (_median([f.path for f in frames]) - bias) / frames[0].level
    dust = night.dust(frames[0].filter)
    assert dust["x"].size == 3 and not dust["on_filter"].any()
    assert np.all((dust["depth"] >= 0.03) & (dust["depth"] <= 0.06))
    assert np.all((dust["radius"] >= 10.0) & (dust["radius"] <= 14.0))
    yy, xx = np.mgrid[: flat.shape[0], : flat.shape[1]]
    checked = 0
    for k in range(dust["x"].size):
        x, y, radius = dust["x"][k], dust["y"][k], dust["radius"][k]
        others = [j for j in range(dust["x"].size) if j != k]
        if any(math.hypot(x - dust["x"][j], y - dust["y"][j]) < radius + dust["radius"][j] + 10
               for j in others):
            continue  # overlapping shadows: not a clean measurement
        r = np.hypot(xx - x, yy - y)
        band = (r > 0.6 * radius) & (r < 0.85 * radius)  # inside the ring
        outside = (r > radius + 3) & (r < radius + 8)
        centre = r < 0.2 * radius  # the obstruction's shadow: no loss
        measured = 1 - flat[band].mean() / flat[outside].mean()
        assert measured == pytest.approx(dust["depth"][k], abs=0.002)
        assert abs(1 - flat[centre].mean() / flat[outside].mean()) < 0.006
        checked += 1
    assert checked >= 2


def test_flats_of_another_filter_see_other_dust(tmp_path):
    sensor = Sensor(bias=600.0, filter_dust=1, dust_depth=(0.05, 0.06))
    night = synthetic.make_night(tmp_path, shape=(192, 256), seed=5, sensor=sensor,
                                 lights=[Lights(1, filter="L")], darks=0, bias=9,
                                 flats=[Flats(9, filter="L"), Flats(9, filter="Ha")],
                                 temperature_jitter=0.0)
    bias = _median(night.paths("bias"))
    flat = {name: _median(night.paths("flat", filter=name)) - bias for name in ("L", "Ha")}
    ratio = flat["Ha"] / flat["L"]
    for name, other in (("Ha", 1), ("L", -1)):
        d = night.dust(name)
        assert d["on_filter"].sum() == 1
        x, y, radius = d["x"][-1], d["y"][-1], d["radius"][-1]
        yy, xx = np.mgrid[: ratio.shape[0], : ratio.shape[1]]
        r = np.hypot(xx - x, yy - y)
        band = (r > 0.6 * radius) & (r < 0.85 * radius)
        # the donut of one filter's glass is not in the other's flat
        assert 1 - ratio[band].mean() ** other == pytest.approx(d["depth"][-1], abs=0.01)


def test_cold_pixels_are_low_in_flats_and_lights(tmp_path):
    night = synthetic.make_night(tmp_path, shape=SHAPE, seed=6, lights=1, darks=0, bias=5,
                                 flats=[Flats(5)], sensor=Sensor(bias=700.0, cold_pixels=6,
                                                                 cold_response=(0.0, 0.3)))
    cy, cx = night.cold_pixels
    assert cy.size == 6
    bias = _median(night.paths("bias"))
    flat = _median(night.paths("flat")) - bias
    level = night.select("flat")[0].level
    assert np.all(flat[cy, cx] / level < 0.3 + 0.02)
    assert np.all(night.flat()[cy, cx] <= 0.3)


def test_expected_matches_the_mean_of_many_frames(tmp_path):
    night = synthetic.make_night(tmp_path, shape=(64, 80), seed=9, lights=1, flats=[Flats(12)],
                                 darks=[Darks(12, exptime=120.0)], bias=Bias(12),
                                 temperature_jitter=0.0)
    for kind in ("bias", "dark", "flat"):
        frames = night.select(kind)
        mean = _stack([f.path for f in frames]).mean(axis=0)
        want = night.expected(frames[0])
        assert want.shape == frames[0].shape
        resid = np.median(mean - want)
        assert abs(resid) < 2.0, kind
    assert night.expected(night.select("light")[0]).shape == (64, 80)


# --------------------------------------------------------------------------
# headers and names

# What each program writes (literal, from their documentation and files).
SPELLINGS = {
    "nina": {"light": "LIGHT", "dark": "DARK", "flat": "FLAT", "bias": "BIAS",
             "darkflat": "DARKFLAT"},
    "sharpcap": {"light": "Light", "dark": "Dark", "flat": "Flat", "bias": "Bias",
                 "darkflat": "Dark Flat"},
    "maxim": {"light": "Light Frame", "dark": "Dark Frame", "flat": "Flat Field",
              "bias": "Bias Frame", "darkflat": "Dark Frame"},
    "asiair": {"light": "Light", "dark": "Dark", "flat": "Flat", "bias": "Bias",
               "darkflat": "Dark"},
}
NAMES = {
    "nina": {
        "light": r"LIGHT_M 42_60\.00s_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_Ha_-?\d+\.\d\d_\d{4}\.fits",
        "dark": r"DARK__60\.00s_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d__-?\d+\.\d\d_\d{4}\.fits",
        "flat": r"FLAT__2\.00s_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_Ha_-?\d+\.\d\d_\d{4}\.fits",
        "bias": r"BIAS__0\.00s_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d__-?\d+\.\d\d_\d{4}\.fits",
        "darkflat": r"DARKFLAT__2\.00s_.*_\d{4}\.fits",
    },
    "sharpcap": {
        "light": r"M 42_\d{5} \d\d_\d\d_\d\d\.fits",
        "dark": r"Capture_\d{5} \d\d_\d\d_\d\d\.fits",
        "flat": r"Capture_\d{5} \d\d_\d\d_\d\d\.fits",
        "bias": r"Capture_\d{5} \d\d_\d\d_\d\d\.fits",
        "darkflat": r"Capture_\d{5} \d\d_\d\d_\d\d\.fits",
    },
    "maxim": {
        "light": r"M 42-\d{3}Ha\.fit",
        "dark": r"Dark-\d{3}\.fit",
        "flat": r"Flat-\d{3}Ha\.fit",
        "bias": r"Bias-\d{3}\.fit",
        "darkflat": r"Dark-\d{3}\.fit",
    },
    "asiair": {
        "light": r"Light_M 42_60\.0s_Bin1_\w+_gain120_\d{8}-\d{6}_-?\d+\.\dC_Ha_\d{4}\.fit",
        "dark": r"Dark_60\.0s_Bin1_\w+_gain120_\d{8}-\d{6}_-?\d+\.\dC_\d{4}\.fit",
        "flat": r"Flat_2\.0s_Bin1_\w+_gain120_\d{8}-\d{6}_-?\d+\.\dC_Ha_\d{4}\.fit",
        "bias": r"Bias_0\.0s_Bin1_\w+_gain120_\d{8}-\d{6}_-?\d+\.\dC_\d{4}\.fit",
        "darkflat": r"Dark_2\.0s_Bin1_\w+_gain120_\d{8}-\d{6}_-?\d+\.\dC_\d{4}\.fit",
    },
}


@pytest.mark.parametrize("style", synthetic.STYLES)
def test_headers_and_names_per_style(tmp_path, style):
    night = synthetic.make_night(
        tmp_path, style=style, shape=(32, 48), seed=1, gain=120,
        lights=[Lights(2, target="M 42", filter="Ha", exptime=60.0, temperature=-15.0)],
        darks=2, flats=[Flats(2, exptime=2.0)], bias=2, darkflats=2,
        sensor=Sensor(), camera=Camera(hot_pixels=0),
    )
    kinds = {f.kind for f in night.frames}
    assert kinds == {"light", "dark", "flat", "bias", "darkflat"}
    for frame in night.frames:
        assert Path(frame.path).parent == tmp_path  # folders=False: one folder
        assert re.fullmatch(NAMES[style][frame.kind], Path(frame.path).name), frame.path
        h = fits.getheader(frame.path)
        assert h["IMAGETYP"] == SPELLINGS[style][frame.kind]
        assert h["EXPTIME"] == frame.exptime
        if style in ("nina", "maxim"):
            assert h["EXPOSURE"] == frame.exptime
        gain_card = "ISOSPEED" if style == "maxim" else "GAIN"
        assert h[gain_card] == 120
        assert abs(h["CCD-TEMP"] - h["SET-TEMP"]) < 1.5
        assert h["SET-TEMP"] == -15.0
        assert h["XBINNING"] == h["YBINNING"] == 1
        assert h["INSTRUME"]
        assert h["DATE-OBS"] == frame.date
        assert h["SWCREATE"].startswith("bigstack")
        if frame.kind == "light":
            assert h["OBJECT"] == "M 42" and h["FILTER"] == "Ha"
        elif frame.kind == "flat":
            assert h["FILTER"] == "Ha" and "OBJECT" not in h
        else:
            assert "OBJECT" not in h and "FILTER" not in h
        data = fits.getdata(frame.path)
        assert data.shape == (32, 48) and data.dtype.kind in "ui"
    expected = {"light": 60.0, "dark": 60.0, "flat": 2.0, "darkflat": 2.0, "bias": 0.0}
    assert all(f.exptime == expected[f.kind] for f in night.frames)
    dates = [f.date for f in night.frames]
    assert len(set(dates)) == len(dates)


def test_temperature_jitter_around_set_point(tmp_path):
    night = synthetic.make_night(tmp_path, shape=(32, 32), seed=2, lights=10, darks=10,
                                 flats=0, bias=0, temperature_jitter=0.3)
    temps = np.array([fits.getheader(p)["CCD-TEMP"] for p in night.paths()])
    assert np.all(np.abs(temps - (-10.0)) < 1.5)
    assert np.unique(temps).size > 3
    assert np.allclose(temps * 10, np.rint(temps * 10))  # written to 0.1 degree
    assert np.array_equal(night.lights[0].temperatures, temps[:10])


def test_imagetyp_overrides_and_omission(tmp_path):
    night = synthetic.make_night(tmp_path / "a", shape=(32, 32), seed=1, lights=1, darks=1,
                                 flats=1, bias=1, darkflats=1, style="nina",
                                 imagetyp={"bias": "Offset", "flat": "Flat Frame",
                                           "darkflat": "Dark Flat"})
    got = {f.kind: fits.getheader(f.path)["IMAGETYP"] for f in night.frames}
    assert got == {"light": "LIGHT", "dark": "DARK", "flat": "Flat Frame", "bias": "Offset",
                   "darkflat": "Dark Flat"}
    bare = synthetic.make_night(tmp_path / "b", shape=(32, 32), seed=1, lights=1, darks=1,
                                flats=1, bias=1, folders=True, imagetyp=False)
    for frame in bare.frames:
        assert "IMAGETYP" not in fits.getheader(frame.path)
        assert frame.imagetyp is None


def test_folders_true_layout(tmp_path):
    night = synthetic.make_night(tmp_path, shape=(32, 32), seed=1, lights=3, darks=2, flats=2,
                                 bias=2, darkflats=2, folders=True, style="asiair")
    folder = {"light": "lights", "dark": "darks", "flat": "flats", "bias": "bias",
              "darkflat": "darkflats"}
    for frame in night.frames:
        assert _rel(night, frame).split("/")[:-1] == [folder[frame.kind]]
    assert sorted(os.listdir(tmp_path)) == sorted(folder.values())
    renamed = synthetic.make_night(tmp_path / "x", shape=(32, 32), seed=1, lights=1, darks=1,
                                   flats=1, bias=2, folders={"bias": "biases"})
    assert {_rel(renamed, f).split("/")[0] for f in renamed.select("bias")} == {"biases"}


@pytest.mark.parametrize("style, pattern", [
    ("nina", r"2024-03-09/(LIGHT|DARK|FLAT|BIAS)/2024-03-09_\d\d-\d\d-\d\d_.*\.fits"),
    ("asiair", r"Autorun/(Light/M 8|Dark|Flat|Bias)/(Light_M 8|Dark|Flat|Bias)_.*\.fit"),
    ("sharpcap", r"2024-03-09/(M 8|Capture)/(Light|Dark|Flat|Bias)/\d\d_\d\d_\d\d/"
                 r"(M 8|Capture)_\d{5}\.fits"),
    ("maxim", r"(M 8|Dark|Flat|Bias)-\d{3}(L)?\.fit"),
])
def test_native_trees(tmp_path, style, pattern):
    night = synthetic.make_night(tmp_path, shape=(32, 32), seed=1, style=style,
                                 folders="native", lights=Lights(2, target="M 8"), darks=2,
                                 flats=2, bias=2)
    for frame in night.frames:
        assert re.fullmatch(pattern, _rel(night, frame)), _rel(night, frame)
    kinds = {f.kind: _rel(night, f).split("/")[:-1] for f in night.frames}
    if style != "maxim":  # every kind in folders of its own
        assert len({tuple(v) for v in kinds.values()}) == 4


# --------------------------------------------------------------------------
# sets, targets, mistakes


def test_filters_darks_and_two_targets(tmp_path):
    night = synthetic.make_night(
        tmp_path, shape=(96, 96), seed=3, flats=3, bias=2,
        lights=[Lights(3, target="M 42", filter="L"),
                Lights(3, target="M 42", filter="R", exptime=60.0),
                Lights(3, target="NGC 2024", filter="L", field=1)],
        darks=[Darks(3), Darks(2, exptime=600.0, temperature=0.0)],
    )
    # flats for every filter of the lights
    assert sorted({f.filter for f in night.select("flat")}) == ["L", "R"]
    assert len(night.select("flat")) == 6
    # darks for every exposure of the lights, plus the mismatching set
    got = sorted({(f.exptime, f.set_temp) for f in night.select("dark")})
    assert got == [(30.0, -10.0), (60.0, -10.0), (600.0, 0.0)]
    objects = [fits.getheader(p)["OBJECT"] for p in night.paths("light")]
    assert objects == ["M 42"] * 6 + ["NGC 2024"] * 3
    # the second target is another part of the sky
    a = night.lights[0].calibrated(0)
    b = night.lights[2].calibrated(0)
    same = night.lights[0].calibrated(1)
    corr = [np.corrcoef(a.ravel(), x.ravel())[0, 1] for x in (same, b)]
    assert corr[0] > 0.5 and abs(corr[1]) < 0.2
    assert night.lights[2].other_field.all() and not night.lights[0].other_field.any()
    # one sensor for the whole night
    for truth in night.lights:
        assert np.array_equal(truth.hot_pixels[0], night.hot_pixels[0])
        assert np.array_equal(truth.hot_pixels[1], night.hot_pixels[1])
        assert np.array_equal(truth.bias, night.bias)


def test_mistakes_are_made_as_asked(tmp_path):
    night = synthetic.make_night(
        tmp_path, shape=(64, 96), seed=7, lights=Lights(2, filter="L"), darks=2, flats=2,
        bias=2, mistakes=("dark_size", "dark_binning", "flat_filter", "flats_saturated"),
        temperature_jitter=0.0,
    )
    size = night.select("dark", mistake="dark_size")
    assert len(size) == 2
    for f in size:
        assert fits.getdata(f.path).shape == (32, 48)
    binned = night.select("dark", mistake="dark_binning")
    assert len(binned) == 2
    for f in binned:
        h = fits.getheader(f.path)
        assert h["XBINNING"] == h["YBINNING"] == 2
        assert fits.getdata(f.path).shape == (32, 48)
    # a binned dark is the 2x2 mean of the sensor's dark (binned here with numpy)
    full = night.expected(night.select("dark", mistake=None)[0])
    want = full.reshape(32, 2, 48, 2).mean(axis=(1, 3))
    assert np.allclose(night.expected(binned[0]), want, atol=0.01)
    for f in binned:
        assert abs(np.median(fits.getdata(f.path) - want)) < 1.0
    # a region of interest is the sensor's first rows and columns
    assert np.allclose(night.expected(size[0]), full[:32, :48], atol=0.01)
    other = night.select("flat", mistake="flat_filter")
    assert other and all(f.filter not in ("L",) for f in other)
    assert all(fits.getheader(f.path)["FILTER"] == f.filter for f in other)
    for path in night.paths("flat"):
        data = fits.getdata(path)
        assert np.median(data) == 65535  # saturated
    assert all(f.mistake is not None for f in night.select("flat"))
    assert all(f.mistake is None for f in night.select("light") + night.select("bias"))


def test_no_lights(tmp_path):
    night = synthetic.make_night(tmp_path, shape=(32, 32), seed=1, darks=3, flats=2, bias=2,
                                 mistakes=("no_lights",))
    assert night.select("light") == [] and night.lights == ()
    assert all(fits.getheader(p)["IMAGETYP"] != "LIGHT" for p in night.paths())
    # without lights the darks take the camera's exposure, the flats its filter
    assert {f.exptime for f in night.select("dark")} == {Camera().exptime}
    assert {f.filter for f in night.select("flat")} == {Camera().filter}
    with pytest.raises(ValueError, match="no_lights"):
        synthetic.make_night(tmp_path / "b", lights=2, mistakes=("no_lights",))


def test_lights_are_the_generators_frames(tmp_path):
    # Without a sensor or jitter, a night's first lights are make_frames' frames.
    night = synthetic.make_night(tmp_path / "n", shape=(64, 64), seed=5, lights=3, darks=0,
                                 flats=0, bias=0, sensor=Sensor(), camera=Camera(),
                                 temperature_jitter=0.0)
    truth = synthetic.make_frames(tmp_path / "f", 3, (64, 64), seed=5)
    for a, b in zip(night.paths("light"), truth.paths, strict=True):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))


def test_sets_have_streams_of_their_own(tmp_path):
    kw = dict(shape=(48, 48), seed=3, lights=2, flats=0, bias=2)
    one = synthetic.make_night(tmp_path / "a", darks=[Darks(2, exptime=60.0)], **kw)
    two = synthetic.make_night(tmp_path / "b", **kw,
                               darks=[Darks(2, exptime=60.0), Darks(2, exptime=120.0)])
    for a, b in zip(one.paths("dark"), two.paths("dark")[:2], strict=True):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))
    for kind in ("light", "bias"):
        for a, b in zip(one.paths(kind), two.paths(kind), strict=True):
            assert np.array_equal(fits.getdata(a), fits.getdata(b))
    # and different frames differ
    d = _stack(two.paths("dark"))
    assert not np.array_equal(d[0], d[1])


def test_same_seed_same_night_and_options_replay(tmp_path):
    night = synthetic.make_night(tmp_path / "a", shape=(32, 32), seed=None, lights=2, darks=1,
                                 flats=1, bias=1, style="maxim")
    again = synthetic.make_night(tmp_path / "b", **night.options)
    assert [Path(p).name for p in night.paths()] == [Path(p).name for p in again.paths()]
    for a, b in zip(night.paths(), again.paths(), strict=True):
        assert np.array_equal(fits.getdata(a), fits.getdata(b))


def test_refuses_to_overwrite(tmp_path):
    kw = dict(shape=(32, 32), seed=1, lights=1, darks=1, flats=1, bias=1)
    synthetic.make_night(tmp_path, **kw)
    with pytest.raises(FileExistsError, match="overwrite"):
        synthetic.make_night(tmp_path, **kw)
    synthetic.make_night(tmp_path, overwrite=True, **kw)
    stranger = tmp_path / "other"
    stranger.mkdir()
    night = synthetic.make_night(stranger, **kw)
    path = night.paths("bias")[0]
    fits.PrimaryHDU(np.zeros((4, 4), np.uint16)).writeto(path, overwrite=True)
    with pytest.raises(FileExistsError, match="not written by bigstack"):
        synthetic.make_night(stranger, overwrite=True, **kw)


@pytest.mark.parametrize("kwargs, match", [
    (dict(style="sgp"), "style"),
    (dict(folders="tree"), "folders"),
    (dict(folders={"lights": "x"}), "unknown kind 'lights'"),
    (dict(imagetyp={"flat": ""}), "imagetyp"),
    (dict(mistakes=("wrong_dark",)), "unknown mistake 'wrong_dark'"),
    (dict(lights=-1), "lights"),
    (dict(darks=[Flats(2)]), "darks"),
    (dict(darks=[Darks(2, shape=(600, 600))]), r"Darks\.shape"),
    (dict(bias=Bias(2, binning=4), shape=(24, 24)), r"Bias\.binning"),
    (dict(gain=-1), "gain"),
    (dict(sensor=Sky()), "sensor"),
    (dict(mistakes=("flats_saturated",), flats=0), "needs flats"),
])
def test_make_night_refuses_bad_options(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synthetic.make_night(tmp_path, **{"shape": (64, 64), **kwargs})
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize("make, match", [
    (lambda: Lights(0), r"Lights\.n"),
    (lambda: Lights(field=2), r"Lights\.field"),
    (lambda: Lights(target="a/b"), r"Lights\.target"),
    (lambda: Darks(exptime=0.0), r"Darks\.exptime"),
    (lambda: Darks(binning=0), r"Darks\.binning"),
    (lambda: Flats(level=0.0), r"Flats\.level"),
    (lambda: Flats(shape=(4, 100)), r"Flats\.shape"),
    (lambda: Bias(exptime=-1.0), r"Bias\.exptime"),
])
def test_sets_check_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_options_are_checked_before_any_file(tmp_path):
    # a Stars group that cannot be placed fails before anything is written
    with pytest.raises(ValueError):
        synthetic.make_night(tmp_path, shape=(16, 16), stars=Stars(n_stars=10, ref_isolation=20))
    assert not any(tmp_path.iterdir())
