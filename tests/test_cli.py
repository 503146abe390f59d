"""The bigstack command line, and the demo."""

from __future__ import annotations

import csv
import re
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from PIL import Image

import bigstack
from bigstack import synthetic
from bigstack._demo import pixel_noise, run_demo
from bigstack.cli import main


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    directory = tmp_path_factory.mktemp("night")
    return synthetic.make_frames(directory / "lights", n_frames=8, shape=(120, 160), seed=21,
                                 motion=synthetic.Motion(subpixel=True),
                                 stars=synthetic.Stars(ref_isolation=40))


def _star_arg(truth):
    return f"{truth.ref_star[0]:.0f},{truth.ref_star[1]:.0f}"


def test_shifts_table_and_csv(night, tmp_path, capsys):
    out_csv = tmp_path / "shifts.csv"
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    assert main(["shifts", pattern, "--star", _star_arg(night), "--search", "40",
                 "-o", str(out_csv)]) == 0
    printed = capsys.readouterr().out
    assert "frame" in printed and "dx" in printed and "frame-0007" in printed
    with open(out_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    measured = np.array([[float(r["dx"]), float(r["dy"])] for r in rows])
    assert np.sqrt(np.mean((measured - night.shifts) ** 2)) < 0.05
    assert all(r["valid"] == "True" for r in rows)
    # the file is not overwritten unless asked
    assert main(["shifts", pattern, "--star", _star_arg(night), "--search", "40",
                 "-o", str(out_csv)]) == 2
    assert "exists already" in capsys.readouterr().err


def test_stack_store_png_render_info(night, tmp_path, capsys):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    store = tmp_path / "night.zarr"
    png = tmp_path / "night.png"
    assert main(["stack", pattern, "-o", str(store), "--star", _star_arg(night), "--search",
                 "40", "--subpixel", "bilinear", "--png", str(png), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "8 frames" in captured.err
    got = xr.open_zarr(store)
    # the same as the library called with the same measured shifts
    cube = bigstack.open_frames(pattern)
    shifts = bigstack.find_shifts(cube, star_pos=[float(v) for v in _star_arg(night).split(",")],
                                  search=40)
    expected = bigstack.stack(cube, shifts, subpixel="bilinear").compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)
    assert got.attrs["parameters"]["subpixel"] == "bilinear"
    with Image.open(png) as picture:
        assert picture.size == (160, 120)

    # render with a crop, then info
    out_png = tmp_path / "crop.png"
    assert main(["render", str(store), "-o", str(out_png), "--crop", "10,110,100,20"]) == 0
    with Image.open(out_png) as picture:
        assert picture.size == (100, 80)
    assert main(["info", str(store)]) == 0
    info = capsys.readouterr().out
    assert "160 x 120 pixels" in info and "coverage" in info and "bilinear" in info

    # an existing store is refused, in one line, and left alone
    assert main(["stack", pattern, "-o", str(store), "--no-progress", "--no-align"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a finished stack" in err[0] and "--overwrite" in err[0]
    np.testing.assert_array_equal(xr.open_zarr(store)["stack"].values, got["stack"].values)


def test_stack_with_shifts_file_drops_invalid_frames(night, tmp_path):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    table = tmp_path / "shifts.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "dx", "dy", "valid"])
        for i, (dx, dy) in enumerate(night.shifts):
            writer.writerow([i, dx, dy, "False" if i == 3 else "True"])
    store = tmp_path / "s.zarr"
    assert main(["stack", pattern, "-o", str(store), "--shifts", str(table),
                 "--no-progress"]) == 0
    got = xr.open_zarr(store)
    keep = [i for i in range(8) if i != 3]
    expected = bigstack.stack(bigstack.open_frames(pattern).isel(frame=keep),
                              night.shifts[keep]).compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)
    assert int(got["coverage"].max()) == 7


@pytest.mark.parametrize("argv, message", [
    (["stack", "/nonexistent/*.fit", "-o", "x.zarr"], "no file matches"),
    (["shifts", "/nonexistent/*.fit", "--star", "1,2"], "no file matches"),
    (["info", "/nonexistent.zarr"], "no such store"),
])
def test_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bigstack: error:") and message in err[0]


def test_bad_star_argument_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["shifts", "x/*.fit", "--star", "400"])
    assert exit_.value.code == 2
    assert "expected X,Y" in capsys.readouterr().err


@pytest.mark.parametrize("module", ["bigstack.cli", "bigstack"])
def test_console_script_runs(module):
    """``python -m bigstack`` runs the command too (it once said 'No module named
    bigstack.__main__')."""
    result = subprocess.run([sys.executable, "-m", module, "--version"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"bigstack {bigstack.__version__}"


# --------------------------------------------------------------------------
# the demo


def test_demo_sharp_and_quiet(tmp_path):
    lines = []
    summary = run_demo(tmp_path / "demo", n_frames=24, shape=(384, 512), seed=3,
                       out=lines.append)
    # frame 7's satellite trail passes 4.8 px from the reference star: flagged, left out
    assert summary["frames_used"] == 23
    assert any("frame 7" in line and "light beside the star" in line for line in lines)
    # alignment keeps stars as sharp as in one frame ...
    assert abs(summary["fwhm_stack"] / summary["fwhm_single"] - 1) < 0.10
    # ... and the background noise falls as sqrt(N)
    assert abs(summary["noise_gain"] / np.sqrt(24) - 1) < 0.15
    assert (tmp_path / "demo" / "demo.png").exists()
    assert summary["rejected"] > 0
    assert any("star FWHM" in line for line in lines)
    with pytest.raises(FileExistsError, match="earlier demo"):
        run_demo(tmp_path / "demo", n_frames=2, shape=(64, 64), out=lines.append)


def test_pixel_noise_of_white_noise():
    rng = np.random.default_rng(0)
    image = rng.normal(0, 3.0, (300, 300)) + np.linspace(0, 500, 300)[None, :]  # with a gradient
    assert abs(pixel_noise(image) / 3.0 - 1) < 0.05


def test_stack_on_local_workers_resume_and_append(night, tmp_path, capsys):
    pytest.importorskip("distributed")
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    first = night.paths[:5]
    store = tmp_path / "live.zarr"
    table = tmp_path / "shifts.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "dx", "dy", "valid"])
        for i, (dx, dy) in enumerate(night.shifts):
            writer.writerow([i, dx, dy, "True"])
    # all frames on a local cluster of two worker processes
    whole = tmp_path / "whole.zarr"
    assert main(["stack", pattern, "-o", str(whole), "--shifts", str(table), "--workers", "2",
                 "--subpixel", "nearest", "--no-progress"]) == 0
    expected = xr.open_zarr(whole)["stack"].values
    # the same, built by appending: the first five, then all eight appended with --append
    # (whole pixels: sums of 16-bit values are exact, so bit for bit)
    bigstack.stack(bigstack.open_frames(first), night.shifts[:5], store=store,
                   subpixel="nearest")
    rest = tmp_path / "rest"
    rest.mkdir()
    for path in night.paths[5:]:
        (rest / path.rsplit("/", 1)[1]).symlink_to(path)
    rest_table = tmp_path / "rest.csv"
    with open(rest_table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "dx", "dy", "valid"])
        for i, (dx, dy) in enumerate(night.shifts[5:]):
            writer.writerow([i, dx, dy, "True"])
    assert main(["stack", str(rest / "*.fit"), "-o", str(store), "--shifts", str(rest_table),
                 "--append", "--subpixel", "nearest", "--no-progress"]) == 0
    np.testing.assert_array_equal(xr.open_zarr(store)["stack"].values, expected)
    # nothing to resume in a finished store: one line, exit 2
    assert main(["stack", pattern, "-o", str(store), "--shifts", str(table), "--resume",
                 "--no-progress"]) == 2
    assert "nothing to resume" in capsys.readouterr().err


def test_stack_with_rejection_weights_and_selection(night, tmp_path, capsys):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    store = tmp_path / "clip.zarr"
    assert main(["stack", pattern, "-o", str(store), "--star", _star_arg(night), "--search",
                 "40", "--method", "sigma_clip", "--kappa", "2.5,3", "--normalize", "additive",
                 "--weights", "noise", "--reject-worst", "25%", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "leaves out 2 frame" in err
    got = xr.open_zarr(store)
    assert "rejected" in got and got.attrs["n_frames"] == 6
    params = got.attrs["parameters"]
    assert params["kappa"] == [2.5, 3.0] and params["weights"] == "noise"
    assert params["normalize_frames"] == "additive"
    assert main(["info", str(store)]) == 0
    info = capsys.readouterr().out
    assert "frame quality" in info and "rejected" in info and "fwhm" in info
    assert info.count(" no  frame-") == 2  # the two frames left out are listed as unused
    with pytest.raises(SystemExit):
        main(["stack", pattern, "-o", str(tmp_path / "x.zarr"), "--kappa", "a,b"])


# --------------------------------------------------------------------------
# the smaller gaps: RAW channel, JSON, provenance, early budget checks


def test_raw_frames_stack_with_channel(tmp_path, capsys):
    truth = synthetic.make_frames(tmp_path / "raw", n_frames=3, shape=(64, 80), fmt="dng",
                                  seed=5)
    store = tmp_path / "g.zarr"
    assert main(["stack", str(tmp_path / "raw"), "-o", str(store), "--channel", "G",
                 "--debayer", "superpixel", "--no-progress", "--no-align"]) == 0
    got = bigstack.open_stack(store)
    expected = bigstack.stack(bigstack.open_frames(truth.paths, channel="G",
                                                   debayer="superpixel")).compute()
    assert got.sizes == {"y": 32, "x": 40}
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)
    # without --channel a colour night stacks in colour, debayered (bilinear) at full size
    colour = tmp_path / "c.zarr"
    assert main(["stack", str(tmp_path / "raw"), "-o", str(colour), "--no-progress",
                 "--no-align", "--png", str(tmp_path / "c.png")]) == 0
    got = bigstack.open_stack(colour)
    assert got["stack"].dims == ("channel", "y", "x")
    assert got.sizes == {"channel": 3, "y": 64, "x": 80}
    assert (tmp_path / "c.png").exists()


def test_info_json_is_only_json_and_has_the_registration(night, tmp_path, capsys):
    import json

    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    store = tmp_path / "night.zarr"
    assert main(["stack", pattern, "-o", str(store), "--star", _star_arg(night), "--search",
                 "40", "--track", "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["info", str(store), "--json"]) == 0
    attrs = json.loads(capsys.readouterr().out)  # the whole output parses
    registration = attrs["registration"]
    assert registration["method"] == "centroid" and registration["search"] == 40
    assert registration["track"] is True and registration["reference"] == 0
    assert registration["star_pos"] == [float(v) for v in _star_arg(night).split(",")]
    assert attrs["complete"] is True and attrs["tiles_missing"] == 0
    assert len(attrs["frame_exptime"]) == 8 and len(attrs["frame_time"]) == 8
    assert main(["info", str(store)]) == 0
    assert "method=centroid" in capsys.readouterr().out


def test_memory_budget_is_refused_before_the_shifts(night, tmp_path, capsys, monkeypatch):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    measured = []
    monkeypatch.setattr(bigstack, "find_shifts", lambda *a, **k: measured.append(1))
    assert main(["stack", pattern, "-o", str(tmp_path / "s.zarr"), "--star", _star_arg(night),
                 "--method", "median", "--memory", "20KB", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "memory='20KB' is too small for method='median'" in err and not measured
    assert re.search(r"needs about [1-9][0-9.]* MiB with \d threads", err), err


# --------------------------------------------------------------------------
# automatic registration on the command line


@pytest.fixture(scope="module")
def flip_night(tmp_path_factory):
    directory = tmp_path_factory.mktemp("flip")
    return synthetic.make_case("meridian_flip", directory / "lights", n_frames=6,
                               shape=(320, 320), seed=4)


def test_register_writes_the_table_summary_and_report(flip_night, tmp_path, capsys):
    from bigstack._tables import read_shifts_csv

    folder = flip_night.paths[0].rsplit("/", 1)[0]
    table, report = tmp_path / "t.csv", tmp_path / "r.png"
    assert main(["register", folder, "-o", str(table), "--reference", "0", "--report",
                 str(report), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "registration: 6 of 6 frames usable" in err
    assert "reference frame 0" in err and "meridian flip" in err
    transforms, valid = read_shifts_csv(table, 6)
    assert valid.all() and transforms.shape == (6, 2, 3)
    # against the generator's truth, on a grid of reference pixels inside each frame
    gy, gx = np.mgrid[20:300:8j, 20:300:8j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    for k in range(6):
        got = grid @ transforms[k, :, :2].T + transforms[k, :, 2]
        want = grid @ flip_night.transforms[k, :, :2].T + flip_night.transforms[k, :, 2]
        assert np.abs(got - want).max() < 0.1, k
    with Image.open(report) as picture:
        assert picture.size[0] > 400 and picture.info["Software"] == "bigstack"
    # the same table refused, then replaced with --overwrite (bigstack wrote it)
    assert main(["register", folder, "-o", str(table), "--no-progress"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_stack_registers_automatically(night, tmp_path, capsys):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    store = tmp_path / "auto.zarr"
    assert main(["stack", pattern, "-o", str(store), "--model", "shift", "--reference", "0",
                 "--no-progress", "--report", str(tmp_path / "r.png")]) == 0
    err = capsys.readouterr().err
    assert "registration: 8 of 8 frames usable" in err and "ranges of the usable" in err
    got = bigstack.open_stack(store)
    cube = bigstack.open_frames(pattern)
    expected = bigstack.stack(cube, bigstack.find_transforms(cube, model="shift",
                                                             reference=0)).compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)
    assert got.attrs["registration"]["registration"] == "find_transforms"
    assert len(got.attrs["frames"]["valid"]) == 8
    # info draws the curves kept in the store
    assert main(["info", str(store), "--report", str(tmp_path / "again.png")]) == 0
    out = capsys.readouterr().out
    assert "registration: 8 of 8 frames usable" in out
    with Image.open(tmp_path / "again.png") as picture:
        assert picture.info["Software"] == "bigstack"
    # --no-align stacks as they are, and says so
    assert main(["stack", pattern, "-o", str(tmp_path / "raw.zarr"), "--no-align",
                 "--no-progress"]) == 0
    assert "--no-align" in capsys.readouterr().err
    plain = bigstack.stack(cube).compute()
    np.testing.assert_array_equal(bigstack.open_stack(tmp_path / "raw.zarr")["stack"].values,
                                  plain["stack"].values)


def test_stack_with_a_transforms_table(night, tmp_path, capsys):
    pattern = night.paths[0].rsplit("/", 1)[0] + "/*.fit"
    table = tmp_path / "t.csv"
    assert main(["register", pattern, "-o", str(table), "--model", "shift", "--reference",
                 "0", "--no-progress"]) == 0
    assert main(["stack", pattern, "-o", str(tmp_path / "s.zarr"), "--shifts", str(table),
                 "--no-progress"]) == 0
    cube = bigstack.open_frames(pattern)
    found = bigstack.find_transforms(cube, model="shift", reference=0)
    expected = bigstack.stack(cube, found["transform"].values).compute()
    got = bigstack.open_stack(tmp_path / "s.zarr")
    np.testing.assert_allclose(got["stack"].values, expected["stack"].values, rtol=1e-6)


def test_render_a_single_frame(night, tmp_path):
    from astropy.io import fits

    out = tmp_path / "frame.png"
    assert main(["render", night.paths[2], "-o", str(out)]) == 0
    with Image.open(out) as picture:
        assert picture.size == (160, 120)
        pixels = np.asarray(picture)[::-1]  # row 0 at the bottom, as FITS row 0
    data = fits.getdata(night.paths[2]).astype(float)
    y, x = np.unravel_index(np.argmax(data), data.shape)
    assert pixels[y, x] == pixels.max()  # the brightest pixel of the frame is the brightest drawn
    assert main(["render", night.paths[2], "-o", str(out)]) == 2  # exists: refused
