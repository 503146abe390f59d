"""The fault matrix: every bad input and every output-side fault, through the command line.

For each case: the exit status, that the error is one line naming the file and
the problem (no traceback), and that every input file is byte-identical
afterwards. Frames are small so the matrix runs in the default suite; the
signals (SIGKILL, SIGINT) run the command in a child process.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import zarr
from astropy.io import fits

import bigstack
from bigstack.cli import main

from .helpers import write_fits

SHAPE = (48, 40)


def make_lights(folder, n=6, seed=0, shape=SHAPE):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cube = rng.integers(100, 60000, (n, *shape)).astype(np.uint16)
    return [str(write_fits(folder / f"light-{i:02d}.fit", frame)) for i, frame in enumerate(cube)]


def checksums(root):
    out = {}
    for folder, _, names in os.walk(root):
        if ".zarr" in folder:
            continue  # outputs
        for name in names:
            if name.endswith(".fit") or name.endswith(".fits") or name.endswith(".txt"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def one_error_line(err, code):
    """The single 'bigstack: ...' line of a failed run's stderr (and no traceback)."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("bigstack:")
             and ("error" in line or "interrupted" in line)]
    assert len(lines) == 1, err
    others = [line for line in err.splitlines() if line.strip() and line not in lines]
    # besides the error line only bigstack's own one-line notes may appear
    assert all(o.startswith(("bigstack: note", "bigstack: warning")) or " frames of " in o
               for o in others), err
    return lines[0]


# --------------------------------------------------------------------------
# bad inputs and refused outputs, in process


def _empty_pattern(tmp):
    return ["stack", str(tmp / "lights" / "*.fit"), "-o", str(tmp / "out.zarr")]


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["stack", str(tmp / "empty"), "-o", str(tmp / "out.zarr")]


def _text_as_fits(tmp):
    make_lights(tmp / "lights")
    (tmp / "lights" / "light-99.fit").write_text("SIMPLE? no, a shopping list\n")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _truncated(tmp):
    paths = make_lights(tmp / "lights")
    with open(paths[2], "r+b") as f:
        f.truncate(2880 + 100)
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _mixed_shapes(tmp):
    make_lights(tmp / "lights")
    write_fits(tmp / "lights" / "light-99.fit", np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint16))
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _cube_3d(tmp):
    make_lights(tmp / "lights")
    write_fits(tmp / "lights" / "light-99.fit", np.zeros((3, *SHAPE), np.uint16))
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _tile_compressed(tmp):
    make_lights(tmp / "lights")
    hdu = fits.CompImageHDU(np.zeros(SHAPE, np.uint16))
    path = tmp / "lights" / "light-99.fit"  # read as .fz is, here cut short
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    path.write_bytes(path.read_bytes()[:4000])
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _gzipped(tmp):
    make_lights(tmp / "lights")
    path = tmp / "lights" / "light-00.fit"
    path.write_bytes(gzip.compress(path.read_bytes()))
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _existing_store(tmp):
    paths = make_lights(tmp / "lights")
    bigstack.stack(bigstack.open_frames(paths), store=tmp / "out.zarr")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr")]


def _overwrite_non_store(tmp):
    make_lights(tmp / "lights")
    (tmp / "out.zarr").mkdir()
    (tmp / "out.zarr" / "thesis.txt").write_text("years of work")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr"), "--overwrite"]


def _overwrite_current_folder(tmp):
    make_lights(tmp / "lights")
    (tmp / "lights" / "notes.txt").write_text("keep")
    os.chdir(tmp / "lights")
    return ["stack", str(tmp / "lights"), "-o", ".", "--overwrite"]


def _overwrite_input_folder(tmp):
    make_lights(tmp / "lights")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "lights"), "--overwrite"]


def _png_over_input(tmp):
    paths = make_lights(tmp / "lights")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr"), "--png", paths[0],
            "--overwrite"]


def _missing_parent(tmp):
    make_lights(tmp / "lights")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "no" / "such" / "out.zarr")]


def _output_is_a_file(tmp):
    make_lights(tmp / "lights")
    (tmp / "out.zarr").write_text("a file")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr"), "--overwrite"]


def _tiny_memory(tmp):
    make_lights(tmp / "lights")
    return ["stack", str(tmp / "lights"), "-o", str(tmp / "out.zarr"), "--memory", "1KB"]


def _render_unfinished(tmp):
    paths = make_lights(tmp / "lights")
    store = tmp / "out.zarr"
    bigstack.stack(bigstack.open_frames(paths), store=store, memory="8KB")
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    group["_bigstack"]["tiles_done"][1] = 0  # as if killed before that tile was written
    group.attrs["complete"] = False
    return ["render", str(store), "-o", str(tmp / "out.png")]


CASES = {
    "empty pattern": (_empty_pattern, "no file matches this pattern"),
    "empty folder": (_empty_folder, "empty: folder holds no frame files"),
    "text file as FITS": (_text_as_fits, "light-99.fit: not a FITS file"),
    "truncated FITS": (_truncated, "light-02.fit: truncated"),
    "mixed shapes": (_mixed_shapes, r"light-99.fit: frame shape \(49, 40\)"),
    "3-plane (colour) FITS among mono": (_cube_3d, "light-99.fit: colour planes"),
    "truncated tile-compressed FITS": (_tile_compressed, "light-99.fit: truncated"),
    "gzipped FITS": (_gzipped, "light-00.fit: .*not a FITS file"),
    "existing store": (_existing_store, "out.zarr: holds a finished stack; pass --overwrite"),
    "overwrite of a non-store": (_overwrite_non_store, "out.zarr: exists and is not a bigstack"),
    "overwrite of .": (_overwrite_current_folder, r"\.: is the current folder"),
    "overwrite of the input folder": (_overwrite_input_folder,
                                      "lights: contains the input frame"),
    "png over an input": (_png_over_input, "light-00.fit: is an input frame"),
    "missing parent folder": (_missing_parent, "out.zarr: the folder .*such does not exist"),
    "output is a file": (_output_is_a_file, "out.zarr: is a file, not a store"),
    "memory 1KB": (_tiny_memory, r"memory='1KB' is too small.*give at least \d+\.\d KiB"),
    "render an unfinished store": (_render_unfinished,
                                   r"out.zarr: incomplete stack \(1 of \d+ tiles missing\).*"
                                   "--resume"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fault_matrix(case, tmp_path, capsys, monkeypatch):
    setup, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    argv = setup(tmp_path)
    before = checksums(tmp_path)
    assert main(argv + ["--no-progress", "--no-align"] if argv[0] == "stack" else argv) == 2
    line = one_error_line(capsys.readouterr().err, 2)
    assert line.startswith("bigstack: error: ")
    import re

    assert re.search(message, line), line
    assert checksums(tmp_path) == before


def test_nan_pixels_are_left_out_not_an_error(tmp_path, capsys):
    frames = np.full((4, *SHAPE), 10.0, np.float32)
    frames[1, 5, 7] = np.nan
    for i, frame in enumerate(frames):
        write_fits(tmp_path / f"f{i}.fit", frame)
    before = checksums(tmp_path)
    assert main(["stack", str(tmp_path), "-o", str(tmp_path / "out.zarr"),
                 "--no-progress", "--no-align"]) == 0
    ds = bigstack.open_stack(tmp_path / "out.zarr")
    assert int(ds["coverage"].values[5, 7]) == 3 and float(ds["stack"].values[5, 7]) == 10.0
    assert checksums(tmp_path) == before


# --------------------------------------------------------------------------
# output-side failures of the file system


def _failing_store_writes(monkeypatch, code, after=0):
    """Make the store's writes fail with ``code`` after ``after`` writes: zarr's (metadata,
    coordinates) and the tiles' chunk files bigstack writes itself (``_store._put``)."""
    from zarr.storage import LocalStore

    from bigstack import _store

    real, real_put = LocalStore.set, _store._put
    count = [0]

    def fail(path):
        count[0] += 1
        if count[0] > after:
            raise OSError(code, os.strerror(code), path)

    async def failing(self, key, value):
        fail(os.path.join(str(self.root), key))
        return await real(self, key, value)

    def failing_put(path, data):
        fail(path)
        return real_put(path, data)

    monkeypatch.setattr(LocalStore, "set", failing)
    monkeypatch.setattr(_store, "_put", failing_put)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_output_is_one_line(tmp_path, capsys, monkeypatch, code):
    make_lights(tmp_path / "lights")
    before = checksums(tmp_path)
    _failing_store_writes(monkeypatch, code)
    assert main(["stack", str(tmp_path / "lights"), "-o", str(tmp_path / "out.zarr"),
                 "--no-progress", "--no-align"]) == 2
    line = one_error_line(capsys.readouterr().err, 2)
    assert "out.zarr" in line and os.strerror(code) in line
    assert checksums(tmp_path) == before


def test_unwritable_folder_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    make_lights(tmp_path / "lights")
    real_access = os.access
    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    monkeypatch.setattr(os, "access", lambda p, mode, **k: False if str(p) == locked
                        else real_access(p, mode, **k))
    for argv in (["stack", str(tmp_path / "lights"), "-o", f"{locked}/out.zarr"],):
        assert main(argv + ["--no-progress"]) == 2
        line = one_error_line(capsys.readouterr().err, 2)
        assert f"{locked}/out.zarr: cannot write in {locked}" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path, capsys):
    make_lights(tmp_path / "lights")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for argv in (["stack", str(tmp_path / "lights"), "-o", str(locked / "out.zarr")],
                     ["shifts", str(tmp_path / "lights"), "--star", "10,10",
                      "-o", str(locked / "s.csv")]):
            assert main(argv + ["--no-progress"]) == 2
            one_error_line(capsys.readouterr().err, 2)
    finally:
        locked.chmod(0o755)


def test_disk_full_then_resume(tmp_path, capsys, monkeypatch):
    paths = make_lights(tmp_path / "lights", n=8)
    before = checksums(tmp_path)
    store = tmp_path / "out.zarr"
    _failing_store_writes(monkeypatch, errno.ENOSPC, after=12)
    argv = ["stack", str(tmp_path / "lights"), "-o", str(store), "--memory", "8KB",
            "--no-progress", "--no-align"]
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, 2)
    assert "No space left on device" in line and "out.zarr" in line
    assert checksums(tmp_path) == before
    monkeypatch.undo()  # space again
    with pytest.raises(bigstack.IncompleteStoreError):
        bigstack.open_stack(store)  # never trusted as finished
    assert main(argv + ["--resume"]) == 0
    got = bigstack.open_stack(store)
    expected = bigstack.stack(bigstack.open_frames(paths)).compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)


# --------------------------------------------------------------------------
# signals, in a child process


_SLOW_TILES = textwrap.dedent("""
    # every process of the run (the command and its cluster's workers, which start
    # their own interpreters) takes {delay} s more per tile, so a signal finds it busy
    import time
    from bigstack import _stack
    real = _stack._tile_task
    def slow(*args, **kwargs):
        time.sleep({delay})
        return real(*args, **kwargs)
    _stack._tile_task = slow
""")


def _start(argv, folder, delay=0.15):
    """The CLI in a child process whose tiles (also on its workers) are slowed down."""
    hooks = folder / "slow-tiles"
    hooks.mkdir(exist_ok=True)
    (hooks / "sitecustomize.py").write_text(_SLOW_TILES.format(delay=delay))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(hooks)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.Popen([sys.executable, "-m", "bigstack.cli", *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_tiles(store, proc, at_least=1, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            done = zarr.open_group(store, mode="r", use_consolidated=False)[
                "_bigstack"]["tiles_done"][:]
            if done.sum() >= at_least:
                return done
        except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
            pass
        time.sleep(0.02)
    raise AssertionError("no tile was written in time")


@pytest.mark.parametrize("workers", [None, 2])
def test_sigint_is_one_line_naming_resume(tmp_path, workers):
    make_lights(tmp_path / "lights", n=8, shape=(400, 40))  # many tiles: still running at SIGINT
    before = checksums(tmp_path)
    store = tmp_path / "out.zarr"
    argv = ["stack", str(tmp_path / "lights"), "-o", str(store), "--memory", "8KB",
            "--no-progress", "--no-align"]
    argv += [] if workers is None else ["--workers", str(workers)]
    proc = _start(argv, tmp_path, delay=0.3)
    _wait_for_tiles(store, proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    line = one_error_line(err, 130)
    assert line == (f"bigstack: interrupted; {store} is unfinished: run the same command with "
                    "--resume to finish it")
    assert checksums(tmp_path) == before
    # and --resume does finish it
    assert main(argv + ["--resume"]) == 0


def test_sigkill_then_resume(tmp_path):
    paths = make_lights(tmp_path / "lights", n=8)
    before = checksums(tmp_path)
    store = tmp_path / "out.zarr"
    argv = ["stack", str(tmp_path / "lights"), "-o", str(store), "--memory", "8KB",
            "--no-progress", "--no-align"]
    proc = _start(argv, tmp_path)
    done = _wait_for_tiles(store, proc, at_least=2)
    proc.kill()
    proc.communicate(timeout=30)
    assert done.sum() < done.size
    with pytest.raises(bigstack.IncompleteStoreError):
        bigstack.open_stack(store)
    assert main(argv + ["--resume"]) == 0
    got = bigstack.open_stack(store)
    expected = bigstack.stack(bigstack.open_frames(paths)).compute()
    np.testing.assert_array_equal(got["stack"].values, expected["stack"].values)
    assert checksums(tmp_path) == before


def _read_only_folder(monkeypatch, folder):
    """Every write under ``folder`` fails with EROFS, as on a read-only file system."""
    import builtins

    from zarr.storage import LocalStore

    folder = os.path.realpath(folder)

    def inside(path):
        return os.path.realpath(os.fspath(path)).startswith(folder + os.sep) or \
            os.path.realpath(os.fspath(path)) == folder

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open
    real_mkdir, real_makedirs, real_access = os.mkdir, os.makedirs, os.access
    real_set = LocalStore.set

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def mkdir(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def makedirs(path, *args, **kwargs):
        if inside(path) and not os.path.isdir(path):
            refuse(path)
        return real_makedirs(path, *args, **kwargs)

    def access(path, mode, **kwargs):
        if mode & os.W_OK and inside(path):
            return False
        return real_access(path, mode, **kwargs)

    async def store_set(self, key, value):
        refuse(os.path.join(str(self.root), key))

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "makedirs", makedirs)
    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(LocalStore, "set", lambda self, key, value: store_set(self, key, value)
                        if inside(os.path.join(str(self.root), key)) else real_set(self, key,
                                                                                   value))


@pytest.mark.parametrize("command", ["stack", "render", "shifts", "demo", "stack --png"])
def test_every_command_on_a_read_only_folder_is_one_line(command, tmp_path, capsys, monkeypatch):
    paths = make_lights(tmp_path / "lights")
    store = tmp_path / "done.zarr"
    bigstack.stack(bigstack.open_frames(paths), store=store)
    locked = tmp_path / "locked"
    locked.mkdir()
    argv = {
        "stack": ["stack", str(tmp_path / "lights"), "-o", str(locked / "out.zarr"),
                  "--no-progress", "--no-align"],
        "stack --png": ["stack", str(tmp_path / "lights"), "-o", str(tmp_path / "new.zarr"),
                        "--png", str(locked / "out.png"), "--no-progress", "--no-align"],
        "render": ["render", str(store), "-o", str(locked / "out.png")],
        "shifts": ["shifts", str(tmp_path / "lights"), "--star", "20,20", "--search", "10",
                   "-o", str(locked / "shifts.csv"), "--no-progress"],
        "demo": ["demo", str(locked / "demo"), "--frames", "2", "--width", "256", "--height",
                 "256", "--no-progress"],
    }[command]
    before = checksums(tmp_path)
    _read_only_folder(monkeypatch, locked)
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, 2)
    assert str(locked) in line and ("read-only" in line.lower() or "cannot write" in line), line
    monkeypatch.undo()
    assert checksums(tmp_path) == before
    assert os.listdir(locked) == []
