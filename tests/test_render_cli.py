"""``bigstack render`` / ``stack --png``: the automatic stretch by default, the explicit ones as
before, and the progress line of ``bigstack shifts --progress``.

References: pictures written by ``save_png`` called here with the options the command line
is documented to use; the terminal model of ``test_progress``.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from PIL import Image

import bigstack
from bigstack import save_png, synthetic
from bigstack.cli import main

from .test_progress import FINAL, screen


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    directory = tmp_path_factory.mktemp("night")
    truth = synthetic.make_frames(directory / "lights", n_frames=4, shape=(96, 128), seed=5,
                                  stars=synthetic.Stars(ref_isolation=30))
    store = directory / "night.zarr"
    bigstack.stack(bigstack.open_frames(truth.paths), store=str(store))
    return truth, store


def _read(path):
    with Image.open(path) as picture:
        return np.asarray(picture)


def test_render_defaults_to_the_automatic_stretch(night, tmp_path):
    _, store = night
    assert main(["render", str(store), "-o", str(tmp_path / "a.png")]) == 0
    reference = save_png(xr.open_zarr(store)["stack"], tmp_path / "ref.png")
    np.testing.assert_array_equal(_read(tmp_path / "a.png"), _read(reference))
    assert 0.18 < np.median(_read(reference)) / 255 < 0.3

    assert main(["render", str(store), "-o", str(tmp_path / "b.png"), "--background",
                 "plane"]) == 0
    reference = save_png(xr.open_zarr(store)["stack"], tmp_path / "ref_b.png",
                         background="plane")
    np.testing.assert_array_equal(_read(tmp_path / "b.png"), _read(reference))


def test_render_explicit_stretch_as_before(night, tmp_path):
    _, store = night
    assert main(["render", str(store), "-o", str(tmp_path / "a.png"), "--stretch",
                 "asinh"]) == 0
    reference = save_png(xr.open_zarr(store)["stack"], tmp_path / "ref.png", stretch="asinh",
                         min_percent=0.5, max_percent=99.9)
    np.testing.assert_array_equal(_read(tmp_path / "a.png"), _read(reference))
    assert main(["render", str(store), "-o", str(tmp_path / "b.png"), "--stretch", "log",
                 "--log-a", "100", "--min-percent", "2", "--max-percent", "98"]) == 0
    reference = save_png(xr.open_zarr(store)["stack"], tmp_path / "ref_b.png", stretch="log",
                         log_a=100, min_percent=2, max_percent=98)
    np.testing.assert_array_equal(_read(tmp_path / "b.png"), _read(reference))


def test_render_refuses_percentiles_with_auto(night, tmp_path, capsys):
    _, store = night
    assert main(["render", str(store), "-o", str(tmp_path / "a.png"), "--min-percent",
                 "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "min_percent=1.0" in err[0] and "auto" in err[0]
    assert not (tmp_path / "a.png").exists()


def test_stack_png_uses_the_automatic_stretch(night, tmp_path):
    truth, _ = night
    store, png = tmp_path / "s.zarr", tmp_path / "s.png"
    pattern = truth.paths[0].rsplit("/", 1)[0] + "/*.fit"
    assert main(["stack", pattern, "-o", str(store), "--png", str(png),
                 "--no-progress"]) == 0
    reference = save_png(xr.open_zarr(store), tmp_path / "ref.png")
    np.testing.assert_array_equal(_read(png), _read(reference))


def test_shifts_progress_line_is_clean(night, tmp_path, capsys):
    truth, _ = night
    star = f"{truth.ref_star[0]:.0f},{truth.ref_star[1]:.0f}"
    pattern = truth.paths[0].rsplit("/", 1)[0] + "/*.fit"
    assert main(["shifts", pattern, "--star", star, "--search", "30", "--progress"]) == 0
    err = capsys.readouterr().err
    lines = [line.rstrip() for line in screen(err)]
    assert any(FINAL.fullmatch(line) for line in lines)
