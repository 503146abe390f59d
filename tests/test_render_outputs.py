"""What display, save_png and save_fits do with a stack's attributes.

Unfinished stacks are refused (or used with a warning when asked); the FITS
observation cards are checked against values computed here with numpy's
datetime64 and plain sums.
"""

from __future__ import annotations

import datetime

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from astropy.io import fits
from PIL import Image

import bigstack
from bigstack import BigstackWarning, display, save_fits, save_png
from bigstack._errors import IncompleteStoreError

matplotlib.use("Agg")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _dataset(attrs, ny=30, nx=40):
    rng = np.random.default_rng(0)
    stack = rng.normal(100, 3, (ny, nx)).astype(np.float32)
    coverage = np.full((ny, nx), 3, np.int32)
    if attrs.get("complete") is False:
        stack[20:, :] = np.nan  # the missing tiles
        coverage[20:, :] = 0
    return xr.Dataset({"stack": (("y", "x"), stack), "coverage": (("y", "x"), coverage)},
                      coords={"y": np.arange(ny), "x": np.arange(nx)}, attrs=dict(attrs))


UNFINISHED = {"complete": False, "store": "/data/night.zarr", "tiles_missing": 2,
              "tiles_total": 5}


# --------------------------------------------------------------------------
# unfinished stacks


def _writers(tmp_path):
    return {
        "save_png": lambda data, **kw: save_png(data, tmp_path / "out.png", **kw),
        "save_fits": lambda data, **kw: save_fits(data, tmp_path / "out.fits", **kw),
        "display": lambda data, **kw: display(data, **kw),
    }


@pytest.mark.parametrize("writer", ["save_png", "save_fits", "display"])
@pytest.mark.parametrize("kind", ["Dataset", "DataArray"])
def test_unfinished_stack_is_refused(tmp_path, writer, kind):
    data = _dataset(UNFINISHED)
    if kind == "DataArray":
        data = data["stack"].assign_attrs(UNFINISHED)
    with pytest.raises(IncompleteStoreError) as caught:
        _writers(tmp_path)[writer](data)
    message = str(caught.value)
    assert message.startswith("/data/night.zarr: incomplete stack (2 of 5 tiles missing)")
    assert "allow_incomplete=True" in message
    assert (caught.value.store, caught.value.missing, caught.value.total) == (
        "/data/night.zarr", 2, 5)
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file


def test_unfinished_stack_without_counts(tmp_path):
    data = _dataset({"complete": False})
    with pytest.raises(IncompleteStoreError, match=r"^<stack>: incomplete stack \(some tiles "
                                                   r"missing\)") as caught:
        save_png(data, tmp_path / "a.png")
    assert "None" not in str(caught.value) and "?" not in str(caught.value)


def test_unfinished_stack_used_when_allowed(tmp_path):
    data = _dataset(UNFINISHED)
    with pytest.warns(BigstackWarning, match="2 of 5 tiles missing"):
        path = save_png(data, tmp_path / "a.png", allow_incomplete=True)
    with Image.open(path) as picture:
        levels = np.asarray(picture)[::-1]
    assert np.all(levels[20:] == 0)  # the missing area: NaN, drawn black
    assert 0.15 < np.median(levels[:20]) / 255 < 0.3
    with pytest.warns(BigstackWarning, match="/data/night.zarr"):
        path = save_fits(data, tmp_path / "a.fits", allow_incomplete=True)
    with fits.open(path) as hdul:
        assert np.isnan(hdul[0].data[20:]).all()
        np.testing.assert_array_equal(hdul[0].data[:20], data["stack"].values[:20])
    with pytest.warns(BigstackWarning, match="some tiles missing"):
        display(_dataset({"complete": False}), allow_incomplete=True)


@pytest.mark.parametrize("attrs", [{}, {"complete": True}, {"complete": np.True_},
                                   {"complete": "unknown"}])
def test_finished_or_unmarked_stacks_pass(tmp_path, attrs):
    data = _dataset(attrs)
    save_png(data, tmp_path / "a.png")
    save_fits(data, tmp_path / "a.fits")
    display(data)


def test_numpy_false_counts_as_unfinished(tmp_path):
    with pytest.raises(IncompleteStoreError):
        display(_dataset({"complete": np.False_}))


# --------------------------------------------------------------------------
# FITS observation cards

INPUTS = [f"/data/f{i}.fit" for i in range(5)]
TIMES = ["2024-03-09T21:00:00", "2024-03-09T21:00:32.5", "2024-03-09T21:01:05",
         "2024-03-09T21:01:40.125", "2024-03-09T21:02:20"]
EXPTIMES = [30.0, 30.0, 32.5, 30.0, 45.25]


def _cards(tmp_path, name="out.fits", **attrs):
    path = save_fits(_dataset({"inputs": INPUTS, **attrs}), tmp_path / name)
    with fits.open(path) as hdul:
        return hdul[0].header


def _end(start, seconds):
    return np.datetime64(start) + np.timedelta64(round(seconds * 1e6), "us")


def test_observation_cards(tmp_path):
    used = [1, 2, 4]  # frames 0 and 3 were rejected
    header = _cards(tmp_path, frames_used=used, frame_exptime=EXPTIMES, frame_time=TIMES)
    assert header["NCOMBINE"] == 3
    assert header["EXPTIME"] == pytest.approx(30.0 + 32.5 + 45.25, abs=1e-9)
    assert np.datetime64(header["DATE-OBS"]) == np.datetime64(TIMES[1])
    assert np.datetime64(header["DATE-END"]) == _end(TIMES[4], EXPTIMES[4])
    # readable as FITS dates by astropy
    from astropy.time import Time

    span = Time(header["DATE-END"], scale="utc") - Time(header["DATE-OBS"], scale="utc")
    expected = (_end(TIMES[4], EXPTIMES[4]) - np.datetime64(TIMES[1])) / np.timedelta64(1, "s")
    assert span.sec == pytest.approx(expected, abs=1e-3)


def test_observation_cards_take_the_earliest_start_and_latest_end(tmp_path):
    times = list(TIMES)
    times[3] = "2024-03-09T20:59:00"  # frame 3 started first
    exptimes = list(EXPTIMES)
    exptimes[0] = 300.0  # and frame 0 ends last
    header = _cards(tmp_path, frames_used=[0, 3, 4], frame_exptime=exptimes, frame_time=times)
    assert np.datetime64(header["DATE-OBS"]) == np.datetime64(times[3])
    assert np.datetime64(header["DATE-END"]) == _end(times[0], 300.0)
    assert header["EXPTIME"] == pytest.approx(300.0 + 30.0 + 45.25)


def test_observation_cards_in_utc(tmp_path):
    header = _cards(tmp_path, frames_used=[0], frame_exptime=[10.0],
                    frame_time=["2024-03-09T22:30:00+01:00"])
    assert header["DATE-OBS"] == "2024-03-09T21:30:00"
    assert header["DATE-END"] == "2024-03-09T21:30:10"
    header = _cards(tmp_path, "z.fits", frames_used=[0], frame_time=["2024-03-09T21:30:00Z"])
    assert header["DATE-OBS"] == "2024-03-09T21:30:00"


def test_partial_metadata_omits_cards(tmp_path):
    def cards(name, **attrs):
        path = save_fits(_dataset({"inputs": INPUTS, **attrs}), tmp_path / name)
        with fits.open(path) as hdul:
            return {k for k in ("NCOMBINE", "EXPTIME", "DATE-OBS", "DATE-END")
                    if k in hdul[0].header}

    assert cards("a.fits") == set()
    assert cards("b.fits", frames_used=[0, 1]) == {"NCOMBINE"}
    # an unknown exposure of a frame used: no total, no end; of a frame not used: no matter
    exptimes = [30.0, None, 30.0, 30.0, 30.0]
    assert cards("c.fits", frames_used=[0, 1], frame_exptime=exptimes, frame_time=TIMES) == {
        "NCOMBINE", "DATE-OBS"}
    assert cards("d.fits", frames_used=[0, 2], frame_exptime=exptimes, frame_time=TIMES) == {
        "NCOMBINE", "EXPTIME", "DATE-OBS", "DATE-END"}
    times = [None, *TIMES[1:]]
    assert cards("e.fits", frames_used=[0, 2], frame_exptime=EXPTIMES, frame_time=times) == {
        "NCOMBINE", "EXPTIME"}
    assert cards("f.fits", frames_used=[1, 2], frame_exptime=EXPTIMES, frame_time=times) == {
        "NCOMBINE", "EXPTIME", "DATE-OBS", "DATE-END"}
    # lists that do not reach the frames used are not trusted
    assert cards("g.fits", frames_used=[4], frame_exptime=[30.0]) == {"NCOMBINE"}
    with pytest.warns(BigstackWarning, match="frame 1: start time 'last night'"):
        got = cards("h.fits", frames_used=[0, 1], frame_exptime=EXPTIMES,
                    frame_time=[TIMES[0], "last night", *TIMES[2:]])
    assert got == {"NCOMBINE", "EXPTIME"}


def test_observation_cards_win_over_attribute_cards(tmp_path):
    header = _cards(tmp_path, frames_used=[0, 1], frame_exptime=EXPTIMES, frame_time=TIMES,
                    exptime=999.0, ncombine=7)
    assert header["EXPTIME"] == 60.0 and header["NCOMBINE"] == 2
    assert list(header.keys()).count("EXPTIME") == 1


def test_dates_parse_back_with_datetime(tmp_path):
    header = _cards(tmp_path, frames_used=[3], frame_exptime=EXPTIMES, frame_time=TIMES)
    start = datetime.datetime.fromisoformat(header["DATE-OBS"])
    assert start == datetime.datetime(2024, 3, 9, 21, 1, 40, 125000)
    end = datetime.datetime.fromisoformat(header["DATE-END"])
    assert (end - start).total_seconds() == 30.0


# --------------------------------------------------------------------------
# an output replaces only a file bigstack wrote


def test_outputs_replace_only_files_bigstack_wrote(tmp_path):
    from bigstack._files import made_by_bigstack

    image = np.random.default_rng(3).gamma(2.0, 100.0, (20, 30)).astype(np.float32)
    png, fit = tmp_path / "a.png", tmp_path / "a.fits"
    bigstack.save_png(image, png)
    bigstack.save_fits(image, fit)
    with Image.open(png) as picture:  # Pillow reads the marker bigstack writes
        assert picture.info["Software"] == "bigstack"
    assert fits.getheader(fit)["CREATOR"].startswith("bigstack")
    assert made_by_bigstack(png) and made_by_bigstack(fit)
    bigstack.save_png(image * 2, png, overwrite=True)  # its own files: replaced
    bigstack.save_fits(image * 2, fit, overwrite=True)
    np.testing.assert_array_equal(fits.getdata(fit), image * 2)

    theirs_png, theirs_fit = tmp_path / "holiday.png", tmp_path / "m31.fits"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(theirs_png)
    fits.PrimaryHDU(np.ones((4, 4), np.float32)).writeto(theirs_fit)
    before = (theirs_png.read_bytes(), theirs_fit.read_bytes())
    assert not made_by_bigstack(theirs_png) and not made_by_bigstack(theirs_fit)
    with pytest.raises(FileExistsError, match="holiday.png: exists and is not a file bigstack"):
        bigstack.save_png(image, theirs_png, overwrite=True)
    with pytest.raises(FileExistsError, match="m31.fits: exists and is not a file bigstack"):
        bigstack.save_fits(image, theirs_fit, overwrite=True)
    assert (theirs_png.read_bytes(), theirs_fit.read_bytes()) == before
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        bigstack.save_png(image, folder, overwrite=True)


def test_shifts_table_is_replaced_only_if_bigstack_wrote_it(tmp_path):
    from bigstack import _tables

    ds = xr.Dataset({"shift": (("frame", "axis"), np.zeros((2, 2))),
                     "star": (("frame", "axis"), np.ones((2, 2))),
                     **{k: ("frame", np.ones(2)) for k in ("peak", "flux", "fwhm",
                                                           "background")},
                     "valid": ("frame", np.ones(2, bool)), "reason": ("frame", ["", ""])},
                    coords={"frame": [0, 1], "axis": ["x", "y"]})
    table = tmp_path / "shifts.csv"
    _tables.write_shifts_csv(ds, table)
    _tables.write_shifts_csv(ds, table, overwrite=True)
    other = tmp_path / "budget.csv"
    other.write_text("item,cost\ntelescope,999\n")
    with pytest.raises(FileExistsError, match="budget.csv: exists and is not a file bigstack"):
        _tables.write_shifts_csv(ds, other, overwrite=True)
    assert other.read_text() == "item,cost\ntelescope,999\n"
