"""The tutorial's own code runs on bigstack with only its import line changed."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

from bigstack import synthetic

TUTORIAL = Path(__file__).parent / "data" / "tutorial_basic_stacking.py"


def tutorial_stack(images, shifts):
    """The tutorial's shift-and-average, done the tutorial's way (Pillow's affine)."""
    total = np.zeros(images[0].shape, np.float64)
    for image, (dx, dy) in zip(images, shifts, strict=True):
        moved = Image.fromarray(np.asarray(image, np.float64))
        moved = moved.transform(moved.size, Image.AFFINE, (1, 0, dx, 0, 1, dy))
        total += np.array(moved)
    return total / len(images)


@pytest.mark.filterwarnings("ignore:FigureCanvasAgg is non-interactive")
def test_tutorial_code_runs_unchanged(tmp_path, monkeypatch, capsys):
    lights = tmp_path / "data" / "imaging" / "ring" / "lights"
    truth = synthetic.make_tutorial_frames(lights)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))  # the tutorial edits it
    names = runpy.run_path(str(TUTORIAL), run_name="__main__")
    out = capsys.readouterr().out

    # step 1: the stars the tutorial prints
    for i, (x, y) in enumerate(synthetic.TUTORIAL_STARS):
        assert f"Frame  {i} : Star located at pixel [{x} {y}]" in out
    # step 2: its shifts
    np.testing.assert_array_equal(names["shifts"], np.asarray(synthetic.TUTORIAL_SHIFTS, float))
    np.testing.assert_array_equal(names["shifts"], truth.shifts)
    # step 3: its stack, against the tutorial's algorithm run independently
    frames = [fits.getdata(p).astype(np.float32) for p in truth.paths]
    expected = tutorial_stack(frames, names["shifts"])
    np.testing.assert_allclose(names["stacked_image"], expected, rtol=1e-12)
    assert "Shifted image 5 by vector [65. 39.] ." in out
    # the naive stack is the plain mean of the frames
    np.testing.assert_allclose(names["naive_stack"], np.mean(frames, axis=0), rtol=1e-6)
    # the crop keeps rows 0:2100 and columns :3100
    assert names["cropped_stack"].shape == (2100, 3100)
    np.testing.assert_array_equal(names["cropped_stack"], names["stacked_image"][0:2100, :3100])
    assert "Files loaded" in out
