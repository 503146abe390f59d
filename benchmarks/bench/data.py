"""The frames: generated once with ``bigstack.synthetic``, cached, warmed or evicted.

A set of frames lives in a folder with its truth (``truth.json``: file names,
true shifts, the reference star and the recipe that made them), so a second
run starts at once. The page cache is part of what a benchmark measures:
:func:`warm` reads every file before a method, :func:`evict` drops them
(``posix_fadvise(DONTNEED)``) so the method reads from the disk, and
:func:`resident_share` says how much of the frames the cache holds (``mincore``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import mmap
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

FITS_BLOCK = 2880


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How the frames are made: ``make_frames`` settings with the option groups of
    ``bigstack.synthetic`` (any group left None keeps the generator's defaults).

    The default is cheap to make (Gaussian noise, no cosmic rays; pixel values do not
    change the cost of stacking) and drifts by sub-pixel steps, so bilinear has work,
    and slowly: 0.25 px a frame, about 100 px over 400 frames, so every frame covers
    most of the reference.
    """

    name: str = "drift"
    fmt: str = "fits"
    dtype: str = "uint16"
    seed: int = 1
    prefix: str = "frame"
    motion: object = None
    stars: object = None
    camera: object = None
    artefacts: object = None

    def groups(self):
        return {k: getattr(self, k) for k in ("motion", "stars", "camera", "artefacts")
                if getattr(self, k) is not None}

    def record(self):
        """A JSON record of the settings: each group's fields that differ from its default."""
        out = {"name": self.name, "fmt": self.fmt, "dtype": self.dtype, "seed": self.seed,
               "prefix": self.prefix}
        for key, group in self.groups().items():
            default = type(group)()
            out[key] = {f.name: _jsonable(getattr(group, f.name))
                        for f in dataclasses.fields(group)
                        if getattr(group, f.name) != getattr(default, f.name)}
        return out

    def drift_step(self):
        return getattr(self.motion, "drift_step", None) or 0.0


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: np.asarray(v).tolist()))


RECIPE_VERSION = 2  # bump when a recipe's frames change


def default_recipe(drift_step=0.25, n_stars=None):
    """The benchmark's frames (see :class:`Recipe`); ``--many`` asks for fewer stars and
    a slower drift."""
    from bigstack import synthetic

    return Recipe(
        motion=synthetic.Motion(drift_step=drift_step, jitter=0.5, subpixel=True),
        stars=synthetic.Stars(n_stars=n_stars) if n_stars else None,
        camera=synthetic.Camera(noise="gaussian"),
        artefacts=synthetic.Artefacts(cosmic_rays=0),
    )


def rotated_recipe(n_frames):
    """Frames for rows that register rotations: the default drift, the field turning by 1
    degree over the night, and a meridian flip (180 degrees) before the last frame."""
    from bigstack import synthetic

    return Recipe(
        name="rotated",
        motion=synthetic.Motion(drift_step=0.25, jitter=0.5, subpixel=True,
                                rotation_rate=1.0 / max(n_frames - 1, 1),
                                flip_at=n_frames - 1 if n_frames > 1 else None),
        camera=synthetic.Camera(noise="gaussian"),
        artefacts=synthetic.Artefacts(cosmic_rays=0),
    )


#: Recipes by name, each a function of the number of frames; a method names the one its
#: frames come from (``Method.recipe``).
RECIPES = {"drift": lambda n_frames: default_recipe(), "rotated": rotated_recipe}


class Frames:
    """A generated set of frames with its truth (shifts, transforms and reference star)."""

    def __init__(self, folder, paths, shape, shifts, ref_star, generated, transforms=None,
                 recipe="drift"):
        self.folder = folder
        self.paths = paths
        self.shape = tuple(shape)
        self.shifts = np.asarray(shifts, dtype=np.float64)
        self.ref_star = tuple(ref_star)
        self.generated = generated  # made by this run (so a sweep may delete it)
        if transforms is None:  # pure translations: [I | shift]
            transforms = np.zeros((len(paths), 2, 3))
            transforms[:, 0, 0] = transforms[:, 1, 1] = 1.0
            transforms[:, :, 2] = self.shifts
        self.transforms = np.asarray(transforms, dtype=np.float64)  # (N, 2, 3) [A | t]
        self.recipe = recipe

    def subset(self, n):
        return Frames(self.folder, self.paths[:n], self.shape, self.shifts[:n], self.ref_star,
                      False, self.transforms[:n], self.recipe)

    @property
    def n(self):
        return len(self.paths)

    @property
    def data_bytes(self):
        return self.n * self.shape[0] * self.shape[1] * 2  # uint16


def frame_bytes(n, shape):
    """Disk bytes of ``n`` uint16 FITS frames (pixels plus a header and padding each)."""
    return n * (shape[0] * shape[1] * 2 + 2 * FITS_BLOCK)


def cache_key(n, shape, recipe):
    parts = [f"{n}x{shape[0]}x{shape[1]}", f"seed{recipe.seed}",
             f"drift{recipe.drift_step():g}", f"v{RECIPE_VERSION}"]
    if recipe.name != "drift":
        parts.insert(0, recipe.name)
    return "bigstack-bench-" + "-".join(parts)


def default_cache_root():
    return Path(tempfile.gettempdir()) / "bigstack-bench"


def get_frames(n, shape, folder=None, recipe=None, log=print):
    """Frames from the cache (``folder`` or a temp folder keyed by parameters), made if missing."""
    from bigstack import synthetic

    recipe = recipe or default_recipe()
    key = cache_key(n, shape, recipe)
    folder = Path(folder) if folder else default_cache_root() / key
    truth_file = folder / "truth.json"
    want = {"key": key, "n_frames": n, "shape": list(shape), "recipe": recipe.record()}
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        if {k: truth.get(k) for k in want} == want:
            paths = [str(folder / name) for name in truth["files"]]
            if all(os.path.exists(p) for p in paths):
                log(f"frames: reusing {n} frames {shape[0]}x{shape[1]} in {folder}")
                return Frames(str(folder), paths, shape, truth["shifts"], truth["ref_star"], False,
                              truth.get("transforms"), recipe.name)
        if folder.name != key:
            raise SystemExit(f"{folder} holds other benchmark frames ({truth.get('key')}); "
                             "give an empty folder or the matching --frames/--size")
    if folder.exists() and any(folder.iterdir()) and folder.name != key:
        raise SystemExit(f"{folder} is not empty and holds no matching benchmark frames; "
                         "give an empty or new folder with --dir")
    need = frame_bytes(n, shape)
    folder.mkdir(parents=True, exist_ok=True)
    check_disk(folder, need, what=f"{n} frames of {shape[0]}x{shape[1]}")
    log(f"frames: generating {n} frames {shape[0]}x{shape[1]} {recipe.dtype} FITS "
        f"({need / 1e9:.2f} GB) in {folder} ...")
    t0 = time.perf_counter()
    truth = synthetic.make_frames(folder, n_frames=n, shape=shape, fmt=recipe.fmt,
                                  dtype=recipe.dtype, seed=recipe.seed, prefix=recipe.prefix,
                                  overwrite=True, **recipe.groups())
    log(f"frames: generated in {time.perf_counter() - t0:.0f} s")
    record = dict(want, files=[os.path.basename(p) for p in truth.paths],
                  shifts=np.asarray(truth.shifts).tolist(), ref_star=list(truth.ref_star),
                  transforms=np.asarray(truth.transforms).tolist())
    truth_file.write_text(json.dumps(record))
    return Frames(str(folder), list(truth.paths), shape, truth.shifts, truth.ref_star, True,
                  truth.transforms, recipe.name)


def check_disk(folder, need, what, margin=1e9):
    """Refuse (SystemExit) when ``folder``'s disk has less than ``need`` + ``margin`` free."""
    free = shutil.disk_usage(folder).free
    if free < need + margin:
        raise SystemExit(f"not enough disk for {what}: needs {need / 1e9:.1f} GB "
                         f"(+{margin / 1e9:.0f} GB margin), {free / 1e9:.1f} GB free in {folder}")


# ---- the page cache


def warm(paths, chunk=8 << 20):
    """Read every file once so every method starts from a warm page cache."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


def evict(paths):
    """Drop the files' pages from the page cache (``posix_fadvise(POSIX_FADV_DONTNEED)``).

    Clean pages go at once; the frames were written long before, so all of
    theirs are clean. The kernel may ignore the advice (e.g. on some network
    file systems): :func:`resident_share` tells whether it worked.
    """
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


_libc = None


def _mincore_lib():
    global _libc
    if _libc is None:
        lib = ctypes.CDLL(None, use_errno=True)
        lib.mmap.restype = ctypes.c_void_p
        lib.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                             ctypes.c_int, ctypes.c_long]
        lib.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        lib.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        _libc = lib
    return _libc


def resident_pages(path):
    """``(resident, total)`` pages of ``path`` in the page cache, from ``mincore(2)``."""
    size = os.path.getsize(path)
    page = mmap.PAGESIZE
    total = (size + page - 1) // page
    if total == 0:
        return 0, 0
    lib = _mincore_lib()
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = lib.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), f"{path}: mmap failed")
        try:
            vec = (ctypes.c_ubyte * total)()
            if lib.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), f"{path}: mincore failed")
            resident = int(np.count_nonzero(np.frombuffer(vec, np.uint8) & 1))
        finally:
            lib.munmap(addr, size)
    finally:
        os.close(fd)
    return resident, total


def resident_share(paths):
    """Share of the files' pages that the page cache holds (0..1)."""
    resident = total = 0
    for p in paths:
        r, t = resident_pages(p)
        resident += r
        total += t
    return resident / total if total else 0.0


def meminfo(key):
    """A ``/proc/meminfo`` value in bytes (0 when missing)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _read_rate(paths):
    t0 = time.perf_counter()
    warm(paths)
    seconds = time.perf_counter() - t0
    size = sum(os.path.getsize(p) for p in paths)
    return size / max(seconds, 1e-9) / 1e6, size


def cold_check(paths, sample=16):
    """Show that eviction works: read rate and residency of some frames, warm and evicted.

    Reads ``sample`` frames (spread over the set) warm, evicts them, reads them
    again, then evicts every frame and notes ``/proc/meminfo`` Cached before and
    after. Returns a dict of the numbers (MB/s, shares, bytes).
    """
    some = list(paths[:: max(1, len(paths) // sample)])[:sample]
    warm(some)
    warm_rate, size = _read_rate(some)
    warm_share = resident_share(some)
    evict(some)
    evicted_share = resident_share(some)
    cold_rate, _ = _read_rate(some)
    warm(paths)
    cached_before = meminfo("Cached")
    evict(paths)
    cached_after = meminfo("Cached")
    return {"sample_files": len(some), "sample_bytes": size, "warm_mb_s": warm_rate,
            "cold_mb_s": cold_rate, "resident_warm": warm_share,
            "resident_evicted": evicted_share, "resident_all_evicted": resident_share(paths),
            "cached_before": cached_before, "cached_after": cached_after,
            "frames_bytes": sum(os.path.getsize(p) for p in paths)}
