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
