"""A night's folder in one command: sorting by headers, the plan, masters, stacks."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

import bigstack
from bigstack import FrameError, StoreExistsError
from bigstack._night import frame_kind, plan_night, stack_night

SHAPE = (80, 112)


class Camera:
    """A sensor and a sky written in the test: bias with a column pattern, dark current with a
    glow, a vignetted flat, and a star field that drifts."""

    def __init__(self, seed=0):
        rng = self.rng = np.random.default_rng(seed)
        ny, nx = SHAPE
        self.yy, self.xx = np.mgrid[0:ny, 0:nx].astype(float)
        self.bias = 500 + 6 * np.sin(self.xx / 2.7)
        self.rate = 0.4 + 15 * np.exp(-(self.xx ** 2 + self.yy ** 2) / 150.0)
        self.flat = 1 - 0.25 * (((self.xx - nx / 2) / (nx / 2)) ** 2 +
                                ((self.yy - ny / 2) / (ny / 2)) ** 2) / 2
        self.stars = [(rng.uniform(6, nx - 6), rng.uniform(6, ny - 6), rng.uniform(3e3, 4e4))
                      for _ in range(50)]

    def sky(self, dx=0.0, dy=0.0, level=800.0):
        image = np.full(SHAPE, level)
        for x, y, flux in self.stars:
            image += flux / (2 * np.pi * 1.3 ** 2) * np.exp(
                -((self.xx - x - dx) ** 2 + (self.yy - y - dy) ** 2) / (2 * 1.3 ** 2))
        return image

    def write(self, path, kind, exptime, imagetyp=None, signal=0.0, **cards):
        data = self.bias + self.rate * exptime + signal + self.rng.normal(0, 3, SHAPE)
        hdu = fits.PrimaryHDU(np.clip(np.round(data), 0, 65535).astype(np.uint16))
        if imagetyp is not None:
            hdu.header["IMAGETYP"] = imagetyp
        hdu.header["EXPTIME"] = exptime
        for key, value in {"CCD-TEMP": -10.0, "GAIN": 100, "XBINNING": 1, **cards}.items():
            hdu.header[key] = value
        path.parent.mkdir(parents=True, exist_ok=True)
        hdu.writeto(path)
        return str(path)


def write_night(folder, camera, lights=6, folders=False, targets=("M42",), filters=("L",)):
    typ = (lambda t: None) if folders else (lambda t: t)
    if folders:
        def where(sub, name):
            return folder / sub / name
    else:
        def where(sub, name):
            return folder / name
    for i in range(5):
        camera.write(where("bias", f"bias_{i}.fits"), "bias", 0.0, typ("Offset"))
        camera.write(where("darks", f"dark_{i}.fits"), "dark", 60.0, typ("Dark Frame"))
        for f in filters:
            camera.write(where("flats", f"flat_{f}_{i}.fits"), "flat", 1.0, typ("Flat Field"),
                         signal=20000 * camera.flat, FILTER=f)
    for target in targets:
        for f in filters:
            for i in range(lights):
                camera.write(where("lights", f"{target}_{f}_{i}.fits"), "light", 60.0,
                             typ("Light Frame"), signal=camera.sky(0.7 * i, -0.4 * i)
                             * camera.flat, FILTER=f, OBJECT=target)


@pytest.mark.parametrize("text, kind", [("Light Frame", "light"), ("LIGHT", "light"),
                                        ("Light", "light"), ("Dark Frame", "dark"),
                                        ("Bias Frame", "bias"), ("Offset", "bias"),
                                        ("Flat Field", "flat"), ("FLAT", "flat"),
                                        ("Dark Flat", "darkflat"), ("DARKFLAT", "darkflat"),
                                        ("Flat Dark", "darkflat"), ("focus", None)])
def test_imagetyp_spellings(text, kind):
    assert frame_kind(text) == kind


@pytest.mark.parametrize("folders", [False, True])
def test_plan_sorts_by_headers_or_folders(tmp_path, folders):
    write_night(tmp_path, Camera(), folders=folders)
    plan = plan_night(tmp_path)
    assert plan.counts == {"light": 6, "dark": 5, "bias": 5, "flat": 5, "darkflat": 0}
    (group,) = plan.groups
    assert (group.name, group.filter, group.target) == ("M42_L", "L", "M42")
    assert group.bias and group.dark and group.flat and not plan.warnings
    assert any("stack M42_L: 6 lights; calibration: bias" in line for line in plan.lines())


def test_missing_and_mismatched_calibration_is_said(tmp_path):
    camera = Camera(1)
    write_night(tmp_path, camera, filters=("L",))
    for path in tmp_path.glob("flat_*"):
        path.unlink()
    for i in range(3):  # flats of another filter, and darks at another temperature
        camera.write(tmp_path / f"flatR_{i}.fits", "flat", 1.0, "Flat", signal=2e4, FILTER="R")
    for path in tmp_path.glob("dark_*"):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["CCD-TEMP"] = 5.0
    plan = plan_night(tmp_path)
    text = "\n".join(plan.lines())
    assert "the flats are of filter R, not L: flat not applied" in text
    assert "no dark matches the camera" in text and "dark not subtracted" in text
    (group,) = plan.groups
    assert group.flat is None and group.dark is None and group.bias is not None


def test_no_lights_and_two_targets(tmp_path):
    camera = Camera(2)
    (tmp_path / "empty").mkdir()
    camera.write(tmp_path / "empty" / "b.fits", "bias", 0.0, "Bias")
    with pytest.raises(FrameError, match="no light frames found"):
        plan_night(tmp_path / "empty")
    write_night(tmp_path / "two", camera, targets=("M31", "M42"), lights=4)
    plan = plan_night(tmp_path / "two")
    assert [g.name for g in plan.groups] == ["M31_L", "M42_L"]
    assert any("2 targets in this folder (M31, M42): each is stacked on its own" in line
               for line in plan.lines())


def test_stack_night_calibrates_registers_and_reuses_its_masters(tmp_path, monkeypatch):
    camera = Camera(3)
    write_night(tmp_path / "night", camera)
    lines = []
    store = tmp_path / "night.zarr"
    results = stack_night(tmp_path / "night", store, method="mean", out=lines.append)
    result = results["M42_L"]
    assert result.attrs["n_frames"] == 6
    calibration = result.attrs["calibration"]
    assert calibration["flat"].endswith("masters/flat-112x80-gain100-L")
    # the calibrated stack is the sky: no vignetting, no glow, no bias pattern
    image = result["stack"].values
    sky = np.nanmedian(image)
    assert abs(sky - 800 * np.median(camera.flat)) < 3
    background = image[np.abs(image - sky) < 15]
    assert background.size > 0.5 * image.size
    raw = bigstack.stack(bigstack.open_frames(sorted(str(p) for p in (tmp_path / "night")
                                                     .glob("M42_*")))).compute()
    assert np.nanpercentile(raw["stack"].values, 95) - np.nanpercentile(
        raw["stack"].values, 5) > 10 * np.std(background)
    # a rerun builds no master again and leaves the stack alone
    import bigstack._calibrate as calibrate_module

    built = []
    real = calibrate_module.make_master
    monkeypatch.setattr(calibrate_module, "make_master",
                        lambda *a, **k: built.append(a) or real(*a, **k))
    again = []
    stack_night(tmp_path / "night", store, method="mean", out=again.append)
    assert not built and "stack M42_L: up to date (6 frames)" in again
    assert sum("reused" in line for line in again) == 3
    # new lights: refused without --append, appended with it
    camera.write(tmp_path / "night" / "M42_L_9.fits", "light", 60.0, "Light Frame",
                 signal=camera.sky(2.0, 1.0) * camera.flat, FILTER="L", OBJECT="M42")
    with pytest.raises(StoreExistsError, match="pass --append"):
        stack_night(tmp_path / "night", store, method="mean", out=again.append)
    appended = stack_night(tmp_path / "night", store, method="mean", mode="append",
                           out=again.append)
    assert appended["M42_L"].attrs["n_frames"] == 7 and not built


def test_night_command_dry_run_and_run(tmp_path, capsys):
    from bigstack.cli import main

    write_night(tmp_path / "night", Camera(4), lights=4)
    assert main(["night", str(tmp_path / "night"), "-o", str(tmp_path / "n.zarr"),
                 "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "stack M42_L: 4 lights" in err and not (tmp_path / "n.zarr").exists()
    assert main(["night", str(tmp_path / "night"), "-o", str(tmp_path / "n.zarr"),
                 "--png", "--method", "mean"]) == 0
    assert (tmp_path / "n-M42_L.png").exists()
    assert bigstack.open_stack(tmp_path / "n.zarr" / "M42_L").attrs["n_frames"] == 4
    # a folder that is not a night store is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["night", str(tmp_path / "night"), "-o", str(tmp_path / "other")]) == 2
    assert "is not a bigstack night store" in capsys.readouterr().err


# --------------------------------------------------------------------------
# nights written by the generator, as capture programs write them


@pytest.mark.parametrize("style", ["nina", "sharpcap", "maxim", "asiair"])
@pytest.mark.parametrize("folders, imagetyp", [(False, True), (True, True), ("native", True),
                                               (True, False)])
def test_survey_sorts_every_style_as_the_truth_says(tmp_path, style, folders, imagetyp):
    from bigstack import synthetic
    from bigstack._night import survey

    night = synthetic.make_night(tmp_path / "n", lights=3, darks=2, flats=2, bias=2,
                                 darkflats=2, style=style, folders=folders, imagetyp=imagetyp,
                                 shape=(48, 64), seed=1)
    found, skipped = survey(tmp_path / "n")
    assert not skipped
    kinds = {f.path: f.kind for f in found}
    for frame in night.frames:
        got = kinds[str(frame.path)]
        # a program without a flat-dark type labels them darks; the planner uses darks of
        # the flats' exposure as flat-darks
        assert got == frame.kind or (frame.kind == "darkflat" and got == "dark"), frame


@pytest.fixture(scope="module")
def generated_night(tmp_path_factory):
    from bigstack import synthetic

    folder = tmp_path_factory.mktemp("night")
    # no cosmic rays: with 8 frames the mean keeps them, and what is measured here is what
    # calibration does (bias, dark, flat, hot and cold pixels)
    night = synthetic.make_night(folder / "raw", lights=8, darks=8, flats=8, bias=8,
                                 shape=(256, 320), seed=5, style="nina", folders=True,
                                 artefacts=synthetic.Artefacts(cosmic_rays=0))
    results = stack_night(folder / "raw", folder / "night.zarr", method="mean",
                          out=lambda line: None)
    return night, results


def test_the_calibrated_stack_is_the_sky(generated_night):
    night, results = generated_night
    (name,) = [k for k in results if k != "plan"]
    result = results[name]
    reference = result.attrs["registration"]["reference"]
    truth = night.lights[0]
    flat = night.flat(truth.params["filter"])
    # the master flat is normalised by its median, so the calibrated sky keeps that level
    expected = np.asarray(truth.calibrated(reference), np.float64) * np.median(flat)
    image = result["stack"].values
    inner = (slice(20, -20), slice(20, -20))
    sky = expected[inner] < np.percentile(expected[inner], 60)  # away from the stars
    ratio = image[inner][sky] / expected[inner][sky]
    # vignetting and dust are gone: the ratio is flat from the centre to the corners
    yy, xx = np.mgrid[0:256, 0:320][(slice(None),) + inner]
    r = np.hypot(yy - 128, xx - 160)[sky]
    centre, edge = np.median(ratio[r < 40]), np.median(ratio[r > 130])
    assert abs(edge / centre - 1) < 0.002
    # where the uncalibrated light fell off by more than 10% (vignetting alone; 25% at the
    # corners)
    fall = flat[inner][sky]
    assert np.median(fall[r > 130]) / np.median(fall[r < 40]) < 0.9


def test_hot_pixels_leave_no_trail(generated_night):
    from bigstack._measure import clipped_stats

    night, results = generated_night
    (name,) = [k for k in results if k != "plan"]
    result = results[name]
    reference = result.attrs["registration"]["reference"]
    truth = night.lights[0]
    expected = np.asarray(truth.calibrated(reference), np.float64) * np.median(
        night.flat(truth.params["filter"]))
    residual = (result["stack"].values - expected)[10:-10, 10:-10]
    faint = expected[10:-10, 10:-10] < np.percentile(expected, 80)
    _, sigma = clipped_stats([residual[faint].astype(np.float32)])
    outliers = int(np.sum(np.abs(residual[faint]) > 5 * sigma))
    # pure noise has a 5-sigma pixel in about 1.7 million; allow a couple
    assert outliers <= 2, outliers
    # the hot pixels were there to remove: each stands out in a raw light
    from astropy.io import fits

    hot_y, hot_x = night.hot_pixels
    raw = fits.getdata(truth.paths[0]).astype(np.float64)
    inside = (hot_y > 0) & (hot_y < 255) & (hot_x > 0) & (hot_x < 319)
    hy, hx = hot_y[inside], hot_x[inside]
    neighbours = np.median([raw[hy + dy, hx + dx] for dy in (-1, 1) for dx in (-1, 1)], axis=0)
    assert hy.size > 10 and np.median(raw[hy, hx] - neighbours) > 5 * sigma


def test_darks_of_another_binning_are_not_applied(tmp_path):
    camera = Camera(3)
    write_night(tmp_path, camera, filters=("L",))
    for path in tmp_path.glob("dark_*"):
        with fits.open(path, mode="update") as hdul:
            hdul[0].header["XBINNING"] = 2
    plan = plan_night(tmp_path)
    (group,) = plan.groups
    assert group.dark is None
    assert any("no dark matches the camera" in line and "dark not subtracted" in line
               for line in plan.lines())
