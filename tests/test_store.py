"""Zarr stores: resume an interrupted run, append frames, remote (fsspec) stores and inputs."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import xarray as xr
import zarr
from astropy.io import fits

import bigstack
from bigstack import BigstackError, _combine

from .helpers import write_fits


@pytest.fixture
def frames(tmp_path):
    """12 uint16 FITS frames of 40 x 30 with integer shifts, and the shifts."""
    rng = np.random.default_rng(30)
    cube = rng.integers(0, 60000, (12, 40, 30)).astype(np.uint16)
    paths = [write_fits(tmp_path / f"f{i:02d}.fit", frame) for i, frame in enumerate(cube)]
    shifts = np.round(rng.uniform(-5, 5, (12, 2)))
    shifts[0] = 0
    return [str(p) for p in paths], shifts, cube


def _done(store):
    return zarr.open_group(store, mode="r", use_consolidated=False)["_bigstack"]["tiles_done"][:]


def _die_after(n_tiles, paths, shifts, store, extra=""):
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
                       store={str(store)!r}{extra})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 9, result.stderr


def test_resume_computes_only_missing_tiles(frames, tmp_path, monkeypatch):
    paths, shifts, _ = frames
    store = tmp_path / "night.zarr"
    _die_after(3, paths, shifts, store)
    done = _done(store)
    assert len(done) == 8 and done.sum() == 3  # 40 rows in tiles of 5; three written
    assert zarr.open_group(store, mode="r").attrs["complete"] is False
    missing = [5 * t for t in np.flatnonzero(done == 0)]

    calls = []
    real = _combine.combine_tile
    monkeypatch.setattr(_combine, "combine_tile",
                        lambda source, plan, a, b: calls.append(a) or real(source, plan, a, b))
    cube = bigstack.open_frames(paths)
    with pytest.raises(bigstack.StoreExistsError):
        bigstack.stack(cube, shifts, store=store)  # not without resume
    resumed = bigstack.stack(cube, shifts, store=store, mode="resume")
    assert sorted(calls) == missing  # the five missing tiles, nothing else
    monkeypatch.setattr(_combine, "plan_tiles", lambda *a, **k: 5)
    whole = bigstack.stack(cube, shifts, store=tmp_path / "whole.zarr")
    for name in ("stack", "coverage", "sum"):
        np.testing.assert_array_equal(resumed[name].values, whole[name].values)
    assert resumed.attrs["complete"] is True and resumed.attrs["pending"] is None


def test_resume_refuses_other_inputs(frames, tmp_path):
    paths, shifts, _ = frames
    store = tmp_path / "night.zarr"
    _die_after(2, paths, shifts, store)
    cube = bigstack.open_frames(paths)
    with pytest.raises(BigstackError, match="other shifts, transforms than this call's"):
        bigstack.stack(cube, shifts + 1, store=store, mode="resume")
    with pytest.raises(BigstackError, match="other inputs, .*frames_used"):
        bigstack.stack(cube.isel(frame=slice(0, 6)), shifts[:6], store=store, mode="resume")
    with pytest.raises(BigstackError, match=r"other parameters"):
        bigstack.stack(cube, shifts, store=store, mode="resume", subpixel="bilinear")
    assert _done(store).sum() == 2  # nothing was touched
    bigstack.stack(cube, shifts, store=store, mode="resume")
    with pytest.raises(BigstackError, match="complete; there is nothing to resume"):
        bigstack.stack(cube, shifts, store=store, mode="resume")


@pytest.mark.parametrize("subpixel", ["nearest", "bilinear"])
def test_append_equals_stacking_all_at_once(frames, tmp_path, subpixel):
    paths, shifts, _ = frames
    shifts = shifts + (0.3 if subpixel == "bilinear" else 0)
    shifts[0] = 0
    cube = bigstack.open_frames(paths)
    store = tmp_path / "live.zarr"
    bigstack.stack(cube.isel(frame=slice(0, 5)), shifts[:5], store=store, subpixel=subpixel,
                   memory="64kB")
    bigstack.stack(cube.isel(frame=slice(5, 9)), shifts[5:9], store=store, mode="append",
                   subpixel=subpixel)
    live = bigstack.stack(cube.isel(frame=slice(9, 12)), shifts[9:], store=store,
                          mode="append", subpixel=subpixel)
    whole = bigstack.stack(cube, shifts, subpixel=subpixel, memory="64kB").compute()
    np.testing.assert_array_equal(live["coverage"].values, whole["coverage"].values)
    if subpixel == "nearest":  # integer frames: the sums are exact, so bit for bit
        np.testing.assert_array_equal(live["stack"].values, whole["stack"].values)
    else:
        np.testing.assert_allclose(live["stack"].values, whole["stack"].values, rtol=1e-6)
    assert live.attrs["n_frames"] == 12 and live.attrs["inputs"] == list(cube["path"].values)
    assert [h["mode"] for h in live.attrs["history"]] == ["write", "append", "append"]
    assert "_bigstack" not in xr.open_zarr(store).data_vars


def test_interrupted_append_resumes(frames, tmp_path):
    paths, shifts, _ = frames
    store = tmp_path / "live.zarr"
    cube = bigstack.open_frames(paths)
    _combine_plan = _combine.plan_tiles
    try:
        _combine.plan_tiles = lambda *a, **k: 5
        bigstack.stack(cube.isel(frame=slice(0, 6)), shifts[:6], store=store)
    finally:
        _combine.plan_tiles = _combine_plan
    _die_after(4, paths[6:], shifts[6:], store, extra=", mode='append'")
    with pytest.raises(BigstackError, match="did not finish; finish it first with resume"):
        bigstack.stack(cube.isel(frame=slice(6, 12)), shifts[6:], store=store, mode="append")
    got = bigstack.stack(cube.isel(frame=slice(6, 12)), shifts[6:], store=store, mode="resume")
    whole = bigstack.stack(cube, shifts).compute()
    np.testing.assert_array_equal(got["stack"].values, whole["stack"].values)
    np.testing.assert_array_equal(got["coverage"].values, whole["coverage"].values)


def test_append_refuses_other_settings(frames, tmp_path):
    paths, shifts, _ = frames
    cube = bigstack.open_frames(paths)
    store = tmp_path / "s.zarr"
    bigstack.stack(cube.isel(frame=slice(0, 4)), shifts[:4], store=store, extent="union")
    with pytest.raises(BigstackError, match="extent='union' \\(not 'reference'\\)"):
        bigstack.stack(cube.isel(frame=[5]), shifts[[5]], store=store, mode="append")
    with pytest.raises(BigstackError, match="no store to append to"):
        bigstack.stack(cube, shifts, store=tmp_path / "none.zarr", mode="append")
    with pytest.raises(ValueError, match="overwrite=True would discard"):
        bigstack.stack(cube, shifts, store=store, mode="append", overwrite=True)
    other = write_fits(tmp_path / "big.fit", np.zeros((41, 30), np.uint16))
    with pytest.raises(BigstackError, match=r"holds frames of shape \(40, 30\)"):
        bigstack.stack([other], store=store, mode="append", extent="union")


# --------------------------------------------------------------------------
# fsspec: an in-memory file system for inputs and store


def test_memory_filesystem_inputs_and_store():
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    rng = np.random.default_rng(31)
    cube = rng.integers(0, 60000, (4, 25, 35)).astype(np.uint16)
    for i, frame in enumerate(cube):
        buffer = io.BytesIO()
        fits.PrimaryHDU(frame).writeto(buffer)
        fs.pipe(f"/bigstack-test/lights/f{i}.fit", buffer.getvalue())
    try:
        frames = bigstack.open_frames("memory://bigstack-test/lights/*.fit")
        assert frames.sizes["frame"] == 4
        np.testing.assert_array_equal(frames.values, cube.astype(np.float32))
        shifts = [[0, 0], [2, 1], [-1, 3], [0, -2]]
        found = bigstack.find_shifts(frames, star_pos=[17, 12], search=10, method="peak",
                                     compute=False)
        assert found["shift"].shape == (4, 2)
        out = bigstack.stack(frames, shifts, store="memory://bigstack-test/out.zarr")
        local = bigstack.stack(cube.astype(np.float32), shifts).compute()
        np.testing.assert_array_equal(out["stack"].values, local["stack"].values)
        again = xr.open_zarr("memory://bigstack-test/out.zarr")
        np.testing.assert_array_equal(again["coverage"].values, local["coverage"].values)
        with pytest.raises(bigstack.StoreExistsError):
            bigstack.stack(frames, shifts, store="memory://bigstack-test/out.zarr")
        # append on a remote store moves its sums into the book, as on a local one
        bigstack.stack(frames.isel(frame=[0, 1]), shifts[:2], store="memory://bigstack-test/a.zarr")
        live = bigstack.stack(frames.isel(frame=[2, 3]), shifts[2:],
                              store="memory://bigstack-test/a.zarr", mode="append")
        np.testing.assert_array_equal(live["stack"].values, local["stack"].values)
    finally:
        fs.rm("/bigstack-test", recursive=True)


def test_append_drops_the_first_runs_registration_table(tmp_path):
    # a stack of registered frames records registration's table, frame by frame; after an
    # append it would describe only the first run's frames, so the append drops it
    from bigstack import synthetic

    synthetic.make_frames(tmp_path / "night", n_frames=6, shape=(96, 128), seed=3)
    paths = sorted(str(p) for p in (tmp_path / "night").glob("*.fit*"))
    first = bigstack.open_frames(paths[:4])
    store = tmp_path / "s.zarr"
    bigstack.stack(first, bigstack.find_transforms(first, reference=0), store=store)
    assert len(zarr.open_group(store).attrs["frames"]["valid"]) == 4
    more = bigstack.open_frames(paths[4:])
    got = bigstack.stack(more, bigstack.find_transforms(more, reference=0), store=store,
                         mode="append")
    attrs = zarr.open_group(store).attrs.asdict()
    assert "frames" not in attrs and "frames" not in got.attrs
    assert attrs["n_frames"] == 6 and len(attrs["inputs"]) == 6


@pytest.mark.parametrize("channels", [0, 3])
def test_tiles_write_the_chunk_files_zarr_writes(tmp_path, channels):
    # bigstack encodes a tile's chunks itself (zarr writes every thread's chunks on one
    # thread); the files must be zarr's own, bit for bit, edge chunk and colour included
    import os

    from bigstack import _store

    rng = np.random.default_rng(31)
    stores = []
    for name in ("zarr", "tiles"):
        group = zarr.open_group(tmp_path / name, mode="w", zarr_format=3)
        _store._create_arrays(group, 50, 37, 16, ("stack", "coverage", "sum", "rejected"),
                              channels)
        group.create_array("done", shape=(4,), chunks=(1,), dtype="uint8", fill_value=0)
        stores.append(group)
    tiles = _store.Tiles(str(tmp_path / "tiles"))
    lead = (channels,) if channels else ()
    for t, a in enumerate(range(0, 50, 16)):
        b = min(a + 16, 50)
        for name, dtype in (("stack", np.float32), ("coverage", np.int32), ("sum", np.float64),
                            ("rejected", np.int32)):
            values = rng.normal(100, 10, (*lead, b - a, 37)).astype(dtype)
            values[..., 0, :3] = 0  # the fill value of the counts
            stores[0][name][..., a:b, :] = values
            tiles.write(name, a, b, values)
        stores[0]["done"][t] = 1
        tiles.write("done", t, t + 1, np.ones(1, np.uint8))
    def chunk_files(folder):
        out = {}
        for root, _, names in os.walk(folder):
            for f in names:
                if f != "zarr.json":
                    path = os.path.join(root, f)
                    with open(path, "rb") as file:
                        out[os.path.relpath(path, folder)] = file.read()
        return out

    written = chunk_files(tmp_path / "zarr")
    assert len(written) == 4 * 4 + 4
    assert chunk_files(tmp_path / "tiles") == written  # no temporary file left either
    again = zarr.open_group(tmp_path / "tiles", mode="r")
    for name in ("stack", "coverage", "sum", "rejected", "done"):
        np.testing.assert_array_equal(again[name][:], stores[0][name][:])


def test_tiles_leave_other_writes_to_zarr(tmp_path):
    # a write that is not one whole chunk, or an array in a store that is not a local
    # folder, goes through zarr
    from bigstack import _store

    group = zarr.open_group(tmp_path / "s", mode="w", zarr_format=3)
    _store._create_arrays(group, 20, 8, 10, ("stack",))
    tiles = _store.Tiles(str(tmp_path / "s"))
    tiles.write("stack", 3, 7, np.full((4, 8), 2.0, np.float32))  # inside a chunk
    got = zarr.open_group(tmp_path / "s", mode="r")["stack"][:]
    assert np.isnan(got[:3]).all() and (got[3:7] == 2).all() and np.isnan(got[7:]).all()
    memory = zarr.open_group(zarr.storage.MemoryStore(), mode="w", zarr_format=3)
    _store._create_arrays(memory, 20, 8, 10, ("stack",))
    assert _store._chunk_writer(memory["stack"]) is None


def test_a_chunk_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno
    import os

    from bigstack import _store

    target = tmp_path / "a" / "c" / "0"
    _store._put(str(target), b"first")
    assert target.read_bytes() == b"first"

    def full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_store.os, "replace", full)
    with pytest.raises(OSError, match="No space left") as err:
        _store._put(str(target), b"second")
    assert err.value.filename == str(target)
    assert target.read_bytes() == b"first"  # the old chunk stays whole
    assert sorted(os.listdir(target.parent)) == ["0"]  # no temporary file left
