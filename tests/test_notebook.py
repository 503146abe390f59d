"""The notebook runs from top to bottom, writes its outputs and leaves no files behind."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from PIL import Image

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "basic_stacking.ipynb"


def _stream_text(cell):
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream")


def _errors(cell):
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def test_basic_stacking_notebook_runs(tmp_path, monkeypatch):
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))  # the kernel's tempfile.mkdtemp() lands here
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    workdir = written = None
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            assert not _errors(cell), _errors(cell)
            text = _stream_text(cell)
            if "working in" in text:
                workdir = Path(text.split("working in", 1)[1].split()[0])
                assert workdir.parent == tmp and workdir.is_dir()
            if "wrote " in text:  # the outputs, checked while they exist
                written = re.findall(r"wrote (\S+) \(", text)
                assert sorted(Path(p).name for p in written) == ["night.fits", "night.png"]
                assert all(Path(p).parent == workdir for p in written)
                with Image.open(workdir / "night.png") as picture:
                    assert picture.size == (1024, 768)
                    levels = np.asarray(picture)
                # the automatic stretch: the sky (the median pixel) a dark grey
                assert 0.15 * 255 < np.median(levels) < 0.3 * 255
                with fits.open(workdir / "night.fits") as hdul:
                    assert hdul[0].data.shape == (768, 1024)
                    assert json.loads(hdul["PROVENANCE"].data["JSON"][0])["inputs"]

    outputs = [o for cell in notebook.cells if cell.cell_type == "code"
               for o in cell.get("outputs", [])]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    error = float(text.split("largest error against the truth:")[1].split("px")[0])
    assert error < 0.25
    assert workdir is not None and written is not None
    assert f"removed {workdir}" in text
    assert not workdir.exists()  # the notebook cleaned up after itself
    assert list(cwd.iterdir()) == []  # and never wrote into its working folder
    assert list(tmp.iterdir()) == []


def test_whole_night_notebook_runs(tmp_path, monkeypatch):
    """The night notebook: folder -> plan -> masters -> stack -> picture, against the truth."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    notebook = nbformat.read(NOTEBOOK.with_name("whole_night.ipynb"), as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(cwd)}})
    text = ""
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if cell.cell_type != "code":
                continue
            client.execute_cell(cell, index)
            assert not _errors(cell), _errors(cell)
            text += _stream_text(cell)
    assert "master flat-" in text and "12 of 12 frames usable" in text
    centre, corners = (float(v) for v in re.search(
        r"stack / truth on the sky: centre (\S+), corners (\S+)", text).groups())
    assert abs(corners / centre - 1) < 0.002  # the vignetting is gone
    assert "wrote " in text and "night.png" in text
    assert list(tmp.iterdir()) == [] and list(cwd.iterdir()) == []  # nothing left behind
