"""Outputs never destroy what bigstack did not create, and unfinished stores are never trusted."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import zarr

import bigstack
from bigstack import BigstackError, IncompleteStoreError, StoreExistsError

from .helpers import write_fits


@pytest.fixture
def frames(tmp_path):
    """10 uint16 FITS frames of 40 x 30 in tmp/lights, with integer shifts."""
    rng = np.random.default_rng(40)
    cube = rng.integers(0, 60000, (10, 40, 30)).astype(np.uint16)
    folder = tmp_path / "lights"
    folder.mkdir()
    paths = [str(write_fits(folder / f"f{i:02d}.fit", frame)) for i, frame in enumerate(cube)]
    shifts = np.round(rng.uniform(-4, 4, (10, 2)))
    shifts[0] = 0
    return paths, shifts, cube


def checksums(folder):
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


def die_after(n_tiles, paths, shifts, store, mode="write"):
    """Run stack in a child process that dies (os._exit) after writing n tiles."""
    script = textwrap.dedent(f"""
        import os, dask, numpy as np, bigstack
        from bigstack import _combine, _stack
        _combine.plan_tiles = lambda *a, **k: 5
        real = _stack._tile_task
        written = []
        def dying(*args, **kwargs):
            result = real(*args, **kwargs)
            written.append(1)
            if len(written) == {n_tiles}:
                os._exit(9)
            return result
        _stack._tile_task = dying
        dask.config.set(scheduler="synchronous")
        bigstack.stack(bigstack.open_frames({paths!r}), np.array({shifts.tolist()!r}),
                       store={str(store)!r}, mode={mode!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr


# --------------------------------------------------------------------------
# overwrite replaces only a store bigstack made


def test_overwrite_refuses_the_input_folder(frames, tmp_path):
    paths, shifts, _ = frames
    before = checksums(tmp_path / "lights")
    cube = bigstack.open_frames(paths)
    with pytest.raises(StoreExistsError, match="lights: contains the input frame"):
        bigstack.stack(cube, shifts, store=tmp_path / "lights", mode="overwrite")
    with pytest.raises(StoreExistsError, match="f03.fit: is the input frame"):
        bigstack.stack(cube, shifts, store=paths[3], mode="overwrite")
    assert checksums(tmp_path / "lights") == before


def test_overwrite_refuses_the_current_folder_and_its_parents(frames, tmp_path, monkeypatch):
    paths, shifts, _ = frames
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("keep me")
    monkeypatch.chdir(work)
    cube = bigstack.open_frames(paths)
    with pytest.raises(StoreExistsError, match=r"^\.: is the current folder"):
        bigstack.stack(cube, shifts, store=".", mode="overwrite")
    with pytest.raises(StoreExistsError, match="is a parent of the current folder"):
        bigstack.stack(cube, shifts, store=str(tmp_path / "a"), mode="overwrite")
    assert (work / "notes.txt").read_text() == "keep me"


def test_overwrite_refuses_what_bigstack_did_not_make(frames, tmp_path):
    paths, shifts, _ = frames
    cube = bigstack.open_frames(paths)
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(StoreExistsError, match="photos: exists and is not a bigstack store"):
        bigstack.stack(cube, shifts, store=other, mode="overwrite")
    a_file = tmp_path / "result.zarr"
    a_file.write_text("a file, not a store")
    with pytest.raises(StoreExistsError, match="is a file, not a store"):
        bigstack.stack(cube, shifts, store=a_file, mode="overwrite")
    # a real store that someone put a file into
    store = tmp_path / "night.zarr"
    bigstack.stack(cube, shifts, store=store)
    (store / "my-notes.txt").write_text("mine")
    with pytest.raises(StoreExistsError, match=r"bigstack did not write \(my-notes.txt\)"):
        bigstack.stack(cube, shifts, store=store, mode="overwrite")
    assert (other / "holiday.jpg").read_bytes() == b"not ours"
    assert a_file.read_text() == "a file, not a store"
    assert (store / "my-notes.txt").read_text() == "mine"


def test_overwrite_of_a_bigstack_store_replaces_it_and_leaves_nothing_behind(frames, tmp_path):
    paths, shifts, cube = frames
    store = tmp_path / "night.zarr"
    bigstack.stack(bigstack.open_frames(paths[:3]), shifts[:3], store=store)
    got = bigstack.stack(bigstack.open_frames(paths), shifts, store=store, mode="overwrite")
    assert got.attrs["n_frames"] == 10 and got.attrs["complete"] is True
    assert sorted(os.listdir(tmp_path)) == ["lights", "night.zarr"]
    expected = bigstack.stack(cube.astype(np.float32), shifts).compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)


def test_an_overwrite_that_dies_keeps_the_old_result_until_resumed(frames, tmp_path):
    paths, shifts, cube = frames
    store = tmp_path / "night.zarr"
    old = bigstack.stack(bigstack.open_frames(paths[:4]), shifts[:4], store=store)
    old_values = old["stack"].values
    die_after(3, paths, shifts, store, mode="overwrite")
    aside = [n for n in os.listdir(tmp_path) if n.startswith("night.zarr.bigstack-old-")]
    assert len(aside) == 1  # the old result, whole, beside the unfinished new one
    kept = bigstack.open_stack(tmp_path / aside[0])
    np.testing.assert_array_equal(kept["stack"].values, old_values)
    with pytest.raises(IncompleteStoreError, match=r"night.zarr: incomplete stack \(\d+ of 8"):
        bigstack.open_stack(store)
    # a plain rerun is refused and points at --resume
    with pytest.raises(StoreExistsError, match="unfinished stack.*--resume"):
        bigstack.stack(bigstack.open_frames(paths), shifts, store=store)
    # a second overwrite that also dies still keeps the old result
    die_after(2, paths, shifts, store, mode="overwrite")
    assert [n for n in os.listdir(tmp_path) if n.startswith("night.zarr.bigstack-old-")] == aside
    done = bigstack.stack(bigstack.open_frames(paths), shifts, store=store, mode="resume")
    assert sorted(os.listdir(tmp_path)) == ["lights", "night.zarr"]  # the old one is gone now
    expected = bigstack.stack(cube.astype(np.float32), shifts).compute()
    np.testing.assert_array_equal(done["stack"].values, expected["stack"].values)


def test_output_folder_problems_are_refused_before_any_work(frames, tmp_path):
    paths, shifts, _ = frames
    cube = bigstack.open_frames(paths)
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        bigstack.stack(cube, shifts, store=tmp_path / "missing" / "night.zarr")
    with pytest.raises(BigstackError, match="no store to resume"):
        bigstack.stack(cube, shifts, store=tmp_path / "none.zarr", mode="resume")


def test_the_old_keywords_still_work_with_a_warning(frames, tmp_path):
    paths, shifts, _ = frames
    cube = bigstack.open_frames(paths)
    store = tmp_path / "night.zarr"
    bigstack.stack(cube, shifts, store=store)
    with pytest.warns(FutureWarning, match="use mode='overwrite'"):
        bigstack.stack(cube, shifts, store=store, overwrite=True)
    with pytest.raises(ValueError, match="contradict"):
        bigstack.stack(cube, shifts, store=store, overwrite=True, resume=True)


# --------------------------------------------------------------------------
# unfinished stores


def test_open_stack_refuses_an_unfinished_store_unless_asked(frames, tmp_path):
    paths, shifts, _ = frames
    store = tmp_path / "night.zarr"
    die_after(3, paths, shifts, store)
    with pytest.raises(IncompleteStoreError) as err:
        bigstack.open_stack(store)
    assert (err.value.missing, err.value.total) == (5, 8)
    assert "--resume" in str(err.value)
    with pytest.warns(bigstack.BigstackWarning, match="5 of 8 tiles missing"):
        ds = bigstack.open_stack(store, allow_incomplete=True)
    done = zarr.open_group(store, mode="r", use_consolidated=False)["_bigstack"]["tiles_done"][:]
    rows = np.isnan(ds["stack"].values).all(axis=1)
    assert rows.sum() == 5 * 5  # the five missing tiles of five rows are NaN, nothing else
    np.testing.assert_array_equal(rows.reshape(8, 5).all(axis=1), done == 0)
    assert ds.attrs["complete"] is False and ds.attrs["tiles_missing"] == 5


def test_open_stack_names_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such store"):
        bigstack.open_stack(tmp_path / "none.zarr")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BigstackError, match="not a bigstack stack store"):
        bigstack.open_stack(tmp_path / "folder")


def test_a_finished_store_opens_without_any_third_party_warning(frames, tmp_path):
    # pytest turns every warning into an error here, so opening must be silent
    paths, shifts, _ = frames
    store = tmp_path / "night.zarr"
    bigstack.stack(bigstack.open_frames(paths), shifts, store=store)
    ds = bigstack.open_stack(store)
    assert ds.attrs["store"] == str(store) and "_bigstack" not in ds.data_vars


def test_info_and_a_rerun_point_at_resume(frames, tmp_path, capsys):
    from bigstack.cli import main

    paths, shifts, _ = frames
    store = tmp_path / "night.zarr"
    die_after(3, paths, shifts, store)
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "complete   NO: 5 of 8 tiles missing; rerun the stack with --resume" in out
    assert main(["stack", str(tmp_path / "lights"), "-o", str(store), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unfinished stack (5 of 8 tiles missing); pass --resume" in err
