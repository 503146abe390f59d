"""The rows of the table: one small function per method, registered in :data:`METHODS`.

A *Python row* is a function ``run(job) -> Output`` that the harness calls in
a fresh child process, timing only the call: the modules named in
``imports`` (and an optional ``setup(job)``) come before the clock starts.
``Output.rows(a, b)`` gives rows ``a:b`` of the result for the check (called
after the timing), or None when there is no image to check.

A *command row* is a function ``command(job) -> Command`` that the parent
calls before the run (not timed) to prepare inputs and name the program; the
harness starts the program as it starts the Python children and times the
whole process, start-up included; ``Command.collect()`` then reads what it
wrote.

To add a row: write the function, decorate it with :func:`method` giving its
name, what it runs (a line for RESULTS.md) and how its output is checked
(``reference=`` a kind of :mod:`bench.references`, or ``check=`` a function
``check(result, frames, refs) -> (matches, detail)``). Rows run in the order
they are registered here.
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import siril as _siril
from .references import KINDS, whole_shifts

FIND_SEARCH = 200  # the tutorial's box
FLUSH = 256  # frames per float32 partial sum in the floor (exact for 16-bit data)
TUTORIAL_MEMORY_SHARE = 0.6  # skip the in-memory tutorial beyond this share of RAM
SHIFT_TOLERANCE = 0.5  # px, for rows that measure shifts

DASK = ("dask.array", "distributed?")  # distributed: dask imports it on a first compute
BIGSTACK = ("astropy.io.fits", "xarray", "zarr", "bigstack", *DASK)

_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


@dataclass
class Job:
    """What a row gets: the frames, their true shifts and the run's settings."""

    method: str
    paths: list
    shape: tuple
    shifts: np.ndarray  # (N, 2) true shifts, [x, y]
    ref_star: tuple  # [x, y] of the reference star in frame 0
    transforms: np.ndarray | None = None  # (N, 2, 3) true [A | t], reference pixel -> frame
    memory: str = "512MB"  # bigstack's budget
    store: str = ""  # a path the row may write its output to
    workdir: str = ""  # a scratch folder of this run
    graph: bool = False  # --many: also time building the lazy graph (after the run)
    threads: int | None = None
    state: dict = field(default_factory=dict)  # what setup() made

    @classmethod
    def from_spec(cls, spec):
        return cls(method=spec["method"], paths=list(spec["paths"]), shape=tuple(spec["shape"]),
                   shifts=np.asarray(spec["shifts"], dtype=np.float64),
                   ref_star=tuple(spec["ref_star"]),
                   transforms=np.asarray(spec["transforms"]) if spec.get("transforms") else None,
                   memory=spec.get("memory", "512MB"),
                   store=spec.get("store", ""), workdir=spec.get("workdir", ""),
                   graph=bool(spec.get("graph")), threads=spec.get("threads"))


@dataclass
class Output:
    """A row's result: ``rows(a, b)`` of its image (or None) and extra numbers."""

    rows: Callable | None = None
    extra: dict = field(default_factory=dict)
    after: Callable | None = None  # untimed, after the check bands: more numbers (dict)


@dataclass
class Command:
    """A program to run as the row: ``argv`` started as a child, ``collect()`` after it."""

    argv: list
    collect: Callable  # (stdout_path, stderr_path) -> Output
    env: dict | None = None  # added to the environment
    cwd: str | None = None


@dataclass(frozen=True)
class Method:
    name: str
    what: str  # what runs, one line for RESULTS.md
    run: Callable | None = None  # Python row: run(job) -> Output, in a child, timed
    command: Callable | None = None  # command row: command(job) -> Command, in the parent
    imports: tuple = ()  # imported in the child before the timing ("name?": if installed)
    setup: Callable | None = None  # child, after imports, not timed: setup(job) -> dict
    reference: str | None = None  # a kind of bench.references for the band check
    check: Callable | None = None  # or check(result, frames, refs) -> (matches, detail)
    matches: str = ""  # what "matches" means, when not a reference kind
    skip: Callable | None = None  # skip(frames) -> reason or None
    reads_all: bool = True  # reads every byte (so input MB/s means something)
    recipe: str = "drift"  # the frames it runs on (a name in bench.data.RECIPES)

    @property
    def match_text(self):
        return self.matches or (f"= {KINDS[self.reference]}" if self.reference else "")


METHODS: dict[str, Method] = {}


def method(name, what, **options):
    """Register the decorated function as the row ``name`` (see the module notes)."""
    def register(fn):
        kind = "command" if options.pop("command", False) else "run"
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = Method(name=name, what=what, **{kind: fn}, **options)
        return fn
    return register


# ==========================================================================
# the floor: the speed limit


def fits_layout(path):
    """``(data offset, dtype, (ny, nx), bscale, bzero)`` of a primary-HDU FITS image.

    A minimal header walk (the floor should not pay for a FITS library).
    """
    cards = {}
    with open(path, "rb") as f:
        blocks = 0
        while True:
            block = f.read(2880)
            if len(block) < 2880:
                raise ValueError(f"{path}: no END card in the primary header")
            blocks += 1
            text = block.decode("ascii", "replace")
            done = False
            for k in range(0, 2880, 80):
                card = text[k:k + 80]
                key = card[:8].strip()
                if key == "END":
                    done = True
                    break
                if card[8:10] == "= ":
                    cards[key] = card[10:].split("/")[0].strip()
            if done:
                break
    ny, nx = int(cards["NAXIS2"]), int(cards["NAXIS1"])
    return (blocks * 2880, _BITPIX[int(cards["BITPIX"])], (ny, nx),
            float(cards.get("BSCALE", 1)), float(cards.get("BZERO", 0)))


@method("floor", reference="unshifted",
        what="read every byte once with `os.preadv` and add it into a float32 accumulator "
             "(moved into float64 every 256 frames), row bands over both cores: the speed "
             "limit; always the best of at least 3 runs (single runs varied 0.61-0.90 s)")
def floor(job):
    """Read every byte once and add it once: row bands over both cores.

    Each band of rows (about 2 MiB of float32 accumulator, so it stays in
    the core's cache) is one job that loops over all frames, reading the
    band's bytes with one ``preadv`` into a reused buffer and adding them
    (byte swap and conversion happen inside the add). The workers take
    the bands in turn. Every ``FLUSH`` frames the float32 sums move into a
    float64 band, so sums of 16-bit frames stay exact (256 values of at
    most 65535 add up exactly in float32); BSCALE/BZERO and the division
    by N are applied once per band at the end.
    """
    from concurrent.futures import ThreadPoolExecutor

    paths = job.paths
    layouts = [fits_layout(p) for p in paths]
    offset, dtype, (ny, nx), bscale, bzero = layouts[0]
    if any(lay[1:] != layouts[0][1:] for lay in layouts):
        raise ValueError("floor needs frames of one shape, dtype and scaling")
    itemsize = np.dtype(dtype).itemsize
    rows = max(1, min(ny, 2**21 // (4 * nx)))
    bands = [(a, min(a + rows, ny)) for a in range(0, ny, rows)]
    n = len(paths)
    mean = np.empty((ny, nx), np.float32)

    def band(ab):
        a, b = ab
        acc = np.zeros((b - a, nx), np.float32)
        exact = np.zeros((b - a, nx), np.float64) if n > FLUSH else None
        buf = np.empty((b - a, nx), dtype)
        view = memoryview(buf.reshape(-1).view(np.uint8))
        for k, (path, (off, *_rest)) in enumerate(zip(paths, layouts, strict=True)):
            if k and k % FLUSH == 0:  # keep the float32 sums exact
                exact += acc
                acc[:] = 0
            fd = os.open(path, os.O_RDONLY)
            try:
                got = os.preadv(fd, [view], off + a * nx * itemsize)
            finally:
                os.close(fd)
            if got != len(view):
                raise OSError(f"{path}: short read")
            np.add(acc, buf, out=acc)
        exact = acc.astype(np.float64) if exact is None else exact + acc
        exact *= bscale / n
        exact += bzero
        mean[a:b] = exact

    workers = job.threads or os.cpu_count() or 1
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(band, bands))
    return Output(rows=lambda a, b: mean[a:b])


# ==========================================================================
# what people run today


def mem_total_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def mem_available_bytes():
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _tutorial_skip(frames):
    """Skip the in-memory tutorial beyond 60% of the machine's memory, or beyond what is
    available now less 2 GB (the machine may be shared: do not push others into the OOM
    killer)."""
    need = frames.n * frames.shape[0] * frames.shape[1] * 8
    total, available = mem_total_bytes(), mem_available_bytes()
    if need > TUTORIAL_MEMORY_SHARE * total:
        return f"skipped: needs {need / 1e9:.1f} GB (> 60% of {total / 1e9:.1f} GB)"
    if available and need > available - 2e9:
        return (f"skipped: needs {need / 1e9:.1f} GB, {available / 1e9:.1f} GB available now "
                "(less a 2 GB margin)")
    return None


@method("tutorial", reference="nearest-count", imports=("astropy.io.fits",), skip=_tutorial_skip,
        what="load every frame with astropy into one float64 (N, ny, nx) array, shift by "
             "slicing with zero fill, average (divide by N)")
def tutorial(job):
    """The tutorial's way: every frame in one float64 (N, ny, nx) array, shift, average.

    Shifts are whole pixels (rounded as bigstack's nearest); each shifted
    frame is added into one output by slicing with zero fill (no
    ``np.roll``, no shifted copy), and the sum is divided by N as the
    tutorial does.
    """
    from astropy.io import fits

    n = len(job.paths)
    ny, nx = job.shape
    images = np.zeros((n, ny, nx))
    for i, p in enumerate(job.paths):
        images[i] = fits.getdata(p)
    out = np.zeros((ny, nx))
    for i, (ix, iy) in enumerate(whole_shifts(job.shifts)):
        # output (y, x) takes frame (y + iy, x + ix)
        ys, ye = max(0, -iy), min(ny, ny - iy)
        xs, xe = max(0, -ix), min(nx, nx - ix)
        if ye > ys and xe > xs:
            out[ys:ye, xs:xe] += images[i, ys + iy:ye + iy, xs + ix:xe + ix]
    out /= n
    return Output(rows=lambda a, b: out[a:b])


def _quiet_ccdproc(job):
    import warnings

    warnings.simplefilter("ignore")  # ccdproc warns per tile and per file
    from astropy import log

    log.setLevel("ERROR")
    return {}


@method("ccdproc", reference="unshifted", imports=("ccdproc",), setup=_quiet_ccdproc,
        matches="= plain mean of the unshifted frames (ccdproc does not align)",
        what="`ccdproc.combine(paths, method='average', mem_limit=512e6, unit='adu')` "
             "**unaligned**: ccdproc has no registration")
def ccdproc_combine(job):
    import ccdproc

    result = ccdproc.combine(list(job.paths), method="average", mem_limit=512e6, unit="adu")
    out = np.asarray(result.data)
    return Output(rows=lambda a, b: out[a:b])


@method("dask-naive", reference="nearest-count", imports=("astropy.io.fits", *DASK),
        what="`da.stack` of one delayed `fits.getdata` per frame, slice + `da.pad` (whole "
             "pixels, zero fill) + `.rechunk` to one chunk per frame, `.mean(axis=0)`, "
             "threaded scheduler")
def dask_naive(job):
    """A plain dask.array stack: one delayed ``fits.getdata`` per frame, slice + pad, mean.

    Each padded frame is rechunked to one chunk, as a user who looks at the
    graph would: ``da.pad`` adds chunks as wide as the pad, which differ from
    frame to frame, and stacking them would cut every frame at every other
    frame's chunk edges (1.9 million tasks for 100 frames, minutes to order them).
    """
    import dask
    import dask.array as da
    from astropy.io import fits

    ny, nx = shape = job.shape
    dtype = fits.getdata(job.paths[0]).dtype  # astropy's view of the files (uint16)
    load = dask.delayed(fits.getdata, pure=True)
    frames = []
    for p, (ix, iy) in zip(job.paths, whole_shifts(job.shifts), strict=True):
        frame = da.from_delayed(load(p), shape, dtype=dtype)
        iy, ix = int(np.clip(iy, -ny, ny)), int(np.clip(ix, -nx, nx))
        src = frame[max(iy, 0):ny + min(iy, 0), max(ix, 0):nx + min(ix, 0)]
        padded = da.pad(src, ((max(-iy, 0), max(iy, 0)), (max(-ix, 0), max(ix, 0))))
        frames.append(padded.rechunk(shape))
    out = da.stack(frames).mean(axis=0).compute(scheduler="threads")
    return Output(rows=lambda a, b: out[a:b])


# ==========================================================================
# bigstack


def _stacked(job, subpixel="nearest", combine="mean"):
    """``bigstack.stack(open_frames(paths), shifts, ...)`` into ``job.store``; the check
    reads the store afterwards."""
    import bigstack

    if os.path.exists(job.store):
        shutil.rmtree(job.store)
    t0 = time.perf_counter()
    cube = bigstack.open_frames(job.paths)
    open_s = time.perf_counter() - t0
    ds = bigstack.stack(cube, job.shifts, subpixel=subpixel, store=job.store,
                        memory=job.memory, method=combine)
    extra = {"open_s": open_s,
             "tile_rows": int(ds.attrs.get("parameters", {}).get("tile_rows", 0) or 0)}

    def after():
        return _graph_cost(job, subpixel) if job.graph else {}

    return Output(rows=_store_rows(job.store), extra=extra, after=after)


def _store_rows(store):
    def rows(a, b):
        import xarray as xr

        with xr.open_zarr(store) as ds:
            return ds["stack"][a:b].values
    return rows


def _graph_cost(job, subpixel):
    """Graph construction alone (``--many``): open the cube and build the lazy stack."""
    import bigstack

    t0 = time.perf_counter()
    cube = bigstack.open_frames(job.paths)
    t1 = time.perf_counter()
    lazy = bigstack.stack(cube, job.shifts, subpixel=subpixel, store=None, memory=job.memory)
    t2 = time.perf_counter()
    return {"graph_open_s": t1 - t0, "graph_build_s": t2 - t1,
            "graph_tasks": len(lazy["stack"].data.__dask_graph__())}


@method("bigstack-nearest", reference="nearest-coverage", imports=BIGSTACK,
        setup=lambda job: _warm_kernels(job, "nearest"),
        what="`bigstack.stack(open_frames(paths), shifts, subpixel='nearest', store=tmp.zarr, "
             "memory=...)` with the true shifts")
def bigstack_nearest(job):
    return _stacked(job, "nearest")


@method("bigstack-bilinear", reference="bilinear-coverage", imports=BIGSTACK,
        setup=lambda job: _warm_kernels(job, "bilinear"),
        what="the same with `subpixel='bilinear'`")
def bigstack_bilinear(job):
    return _stacked(job, "bilinear")


def _local_cluster(job):
    """A LocalCluster of 2 single-threaded worker processes, started before the timing."""
    from distributed import Client, LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    job.state["client"] = Client(cluster)  # kept alive until the child exits
    return {"cluster_start_s": time.perf_counter() - t0}


@method("bigstack-cluster", reference="nearest-coverage", imports=(*BIGSTACK, "distributed"),
        setup=_local_cluster,
        matches="= shifted mean as bigstack-nearest (on a LocalCluster of 2 worker processes; "
                "cluster start-up not timed)",
        what="bigstack-nearest with a `dask.distributed` `Client` of a "
             "`LocalCluster(n_workers=2, threads_per_worker=1)`; the cluster's start-up is "
             "not in *seconds*")
def bigstack_cluster(job):
    return _stacked(job, "nearest")


@method("bigstack-median", reference="nearest-median", imports=BIGSTACK,
        setup=lambda job: _warm_kernels(job, "nearest", "median"),
        what="bigstack-nearest with `method='median'` (each tile holds its rows of every frame; "
             "the tile height follows from memory)")
def bigstack_median(job):
    return _stacked(job, "nearest", "median")


@method("bigstack-sigma_clip", reference="nearest-sigma_clip", imports=BIGSTACK,
        setup=lambda job: _warm_kernels(job, "nearest", "sigma_clip"),
        what="bigstack-nearest with `method='sigma_clip'` (kappa 3, 3)")
def bigstack_sigma_clip(job):
    return _stacked(job, "nearest", "sigma_clip")


def _warm_kernels(job, subpixel="lanczos3", combine="mean"):
    """Compile (or load from numba's cache) the kernels before the timing: a user pays
    that once per machine (compiling) or once per process (loading the cache, about
    0.8 s), not per stack. Numba compiles per stored type, so the warm-up stacks two
    small frames of the benchmark's own type (16-bit FITS with BZERO), rotated and
    shifted, with ``combine``. The last of them goes into a store: the first store of a
    process imports zarr and sets up its codecs (about 0.3 s), also once per process.
    Then a full garbage collection: the imported libraries leave about 230,000 objects,
    a full collection of them takes about 0.09 s, and the first one (due once per
    process) otherwise falls inside the timed stack. Every bigstack row that runs
    in-process warms the same way, so that no row's *seconds* holds the cache loading
    and another's does not. Returns the seconds it took."""
    import tempfile

    from astropy.io import fits

    import bigstack

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=job.workdir or None) as folder:
        paths = []
        for k in range(2):
            path = os.path.join(folder, f"warm{k}.fits")
            hdu = fits.PrimaryHDU(np.full((32, 32), 1000 + k, np.uint16))
            hdu.writeto(path)
            paths.append(path)
        cube = bigstack.open_frames(paths)
        turn = np.array([[[1, 0, 0], [0, 1, 0]], [[0.9998, -0.017, 0.4], [0.017, 0.9998, 0.3]]])
        for sub in dict.fromkeys([subpixel, "nearest"]):
            bigstack.stack(cube, turn, subpixel=sub, method=combine).compute()
            bigstack.stack(cube, np.array([[0.0, 0.0], [0.5, 0.25]]), subpixel=sub,
                           method=combine).compute()
            bigstack.stack(cube, np.array([[0.0, 0.0], [1.0, 2.0]]), subpixel=sub,
                           method=combine).compute()
        bigstack.stack(cube, np.array([[0.0, 0.0], [1.0, 2.0]]), method=combine,
                       store=os.path.join(folder, "warm.zarr"))
    gc.collect()
    return {"warm_s": time.perf_counter() - t0}


def _masters_setup(job):
    """The calibration row's masters, in memory before the timing (as a night's would be)."""
    from .references import masters

    return {"_masters": masters(job.shape), **_warm_kernels(job)}


@method("bigstack-calibrated", reference="nearest-calibrated", imports=BIGSTACK,
        setup=_masters_setup,
        what="bigstack-nearest on `bigstack.calibrate(cube, bias, dark, flat, dark_scale='none')`"
             " (masters in memory; calibration computed as the rows are read)")
def bigstack_calibrated(job):
    import bigstack

    if os.path.exists(job.store):
        shutil.rmtree(job.store)
    bias, dark, flat = job.state["_masters"]
    cube = bigstack.calibrate(bigstack.open_frames(job.paths), bias=bias, dark=dark, flat=flat,
                              dark_scale="none")
    bigstack.stack(cube, job.shifts, subpixel="nearest", store=job.store, memory=job.memory)
    return Output(rows=_store_rows(job.store))


def _near(kind, tolerance):
    """A check against the reference ``kind`` where the row interpolates differently: the
    median relative difference of the pixels both cover within ``tolerance``."""
    def check(result, frames, refs):
        ref = refs.get(kind)
        diffs = []
        for out, want in zip(result.get("bands", []), ref, strict=True):
            good = np.isfinite(out) & np.isfinite(want)
            diffs.append(np.abs(out[good] - want[good]) / np.maximum(np.abs(want[good]), 1.0))
        diff = float(np.median(np.concatenate(diffs))) if diffs else math.inf
        return diff <= tolerance, f"median rel. diff {diff:.1e} from the {kind} reference"
    return check


@method("bigstack-lanczos3", check=_near("bilinear-coverage", 5e-3), imports=BIGSTACK,
        setup=_warm_kernels,
        matches="within 0.5% (median) of the bilinear-shifted mean",
        what="bigstack-nearest with `subpixel='lanczos3'` (numba kernel)")
def bigstack_lanczos3(job):
    return _stacked(job, "lanczos3")


def check_transforms(result, frames, refs):
    """Every frame valid, and the transform within 0.1 px of the truth at every corner."""
    ok = result["n_valid"] == result["n_frames"] and result["corner_max_err"] <= 0.1
    return ok, (f"{result['n_valid']}/{result['n_frames']} valid, corners within "
                f"{result['corner_max_err']:.3f} px of the truth")


def _corner_error(found, truth, shape):
    ny, nx = shape
    corners = np.array([[0, 0, 1], [nx - 1, 0, 1], [0, ny - 1, 1], [nx - 1, ny - 1, 1]], float)
    return np.abs(np.einsum("fij,cj->fci", found - truth, corners)).max(axis=(1, 2))


@method("register", check=check_transforms, reads_all=False, recipe="rotated",
        imports=BIGSTACK, matches="every frame valid, corners within 0.1 px of the truth",
        what="`bigstack.find_transforms(cube, model='similarity')` alone, on frames turning 1 "
             "degree over the night with a meridian flip before the last frame")
def find_transforms(job):
    import bigstack

    ds = bigstack.find_transforms(bigstack.open_frames(job.paths), model="similarity",
                                  reference=0)
    found = np.asarray(ds["transform"].values, np.float64)
    valid = np.asarray(ds["valid"].values, bool)
    err = _corner_error(found[valid], job.transforms[valid], job.shape)
    return Output(extra={"corner_max_err": float(err.max()) if err.size else math.inf,
                         "n_valid": int(valid.sum()), "n_frames": len(job.paths)})


def _close(kind, tolerance, edge=1e-3):
    """A check against ``kind`` allowing float32 transform arithmetic: the pixels both cover
    within ``tolerance`` (relative), and the covered pixels the same but for a share ``edge``
    (points that fall within rounding of a frame's edge)."""
    def check(result, frames, refs):
        ref = refs.get(kind)
        worst, differ, n = 0.0, 0, 0
        for out, want in zip(result.get("bands", []), ref, strict=True):
            good = np.isfinite(out) & np.isfinite(want)
            differ += int(np.count_nonzero(np.isfinite(out) != np.isfinite(want)))
            n += out.size
            if good.any():
                rel = np.abs(out[good] - want[good]) / np.maximum(np.abs(want[good]), 1.0)
                worst = max(worst, float(rel.max()))
        ok = n > 0 and worst <= tolerance and differ <= edge * n
        return ok, f"max rel. diff {worst:.1e}, coverage differs at {differ} of {n} pixels"
    return check


def _warped(job, subpixel):
    """``stack(cube, true transforms, subpixel=...)`` into ``job.store``."""
    import bigstack

    if os.path.exists(job.store):
        shutil.rmtree(job.store)
    bigstack.stack(bigstack.open_frames(job.paths), job.transforms, subpixel=subpixel,
                   store=job.store, memory=job.memory)
    return Output(rows=_store_rows(job.store))


@method("rotated-bilinear", check=_close("bilinear-transform", 1e-3), recipe="rotated",
        imports=BIGSTACK, setup=lambda job: _warm_kernels(job, "bilinear"),
        matches="= scipy map_coordinates (order 1) at the true transforms, to 1e-3",
        what="`stack(cube, true transforms, subpixel='bilinear')` on the rotated frames")
def rotated_bilinear(job):
    return _warped(job, "bilinear")


@method("rotated-lanczos3", check=_near("bilinear-transform", 5e-3), recipe="rotated",
        imports=BIGSTACK, setup=_warm_kernels,
        matches="within 0.5% (median) of the scipy bilinear warp",
        what="`stack(cube, true transforms, subpixel='lanczos3')` on the rotated frames")
def rotated_lanczos3(job):
    return _warped(job, "lanczos3")


def _registered(job, subpixel=None):
    import bigstack

    if os.path.exists(job.store):
        shutil.rmtree(job.store)
    cube = bigstack.open_frames(job.paths)
    ds = bigstack.find_transforms(cube, model="similarity", reference=0)
    bigstack.stack(cube, ds, subpixel=subpixel, store=job.store, memory=job.memory)
    found = np.asarray(ds["transform"].values, np.float64)
    valid = np.asarray(ds["valid"].values, bool)
    err = _corner_error(found[valid], job.transforms[valid], job.shape)
    return Output(rows=_store_rows(job.store),
                  extra={"corner_max_err": float(err.max()) if err.size else math.inf,
                         "n_valid": int(valid.sum()), "n_frames": len(job.paths)})


@method("register+stack", check=check_transforms, imports=BIGSTACK, setup=_warm_kernels,
        matches="every frame valid, corners within 0.1 px of the truth",
        what="`find_transforms(cube)` then `stack(cube, transforms)` with the default "
             "interpolation (Lanczos-3 for sub-pixel shifts): the automatic path end to end")
def register_stack(job):
    return _registered(job)


@method("bigstack-rotated", check=check_transforms, recipe="rotated", imports=BIGSTACK,
        setup=lambda job: _warm_kernels(job, "bilinear"),
        matches="registered as the register row, and stacked",
        what="`find_transforms` then `stack(cube, transforms, subpixel='bilinear')` on the "
             "rotated frames: registration and the warp together")
def bigstack_rotated(job):
    return _registered(job, "bilinear")


def find_search(shape):
    """The tutorial's 200 px box; on tiny test frames a quarter of the frame."""
    return min(FIND_SEARCH, max(8, min(shape) // 4))


def check_shifts(result, frames, refs):
    """Every frame valid and every measured shift within SHIFT_TOLERANCE px of the truth."""
    ok = (result["n_valid"] == result["n_frames"]
          and result["shift_max_err"] <= SHIFT_TOLERANCE)
    return ok, (f"{result['n_valid']}/{result['n_frames']} valid, "
                f"max error {result['shift_max_err']:.3f} px")


@method("find_shifts", check=check_shifts, reads_all=False,
        imports=("astropy.io.fits", "scipy.ndimage", "xarray", "bigstack", *DASK),
        matches=f"every frame valid and within {SHIFT_TOLERANCE} px of the true shift",
        what="`bigstack.find_shifts(cube, star_pos=ref_star, search=200, track=True)` alone "
             "(reads N boxes of 200x200, so no MB/s)")
def find_shifts(job):
    import bigstack

    cube = bigstack.open_frames(job.paths)
    ds = bigstack.find_shifts(cube, star_pos=job.ref_star, search=find_search(job.shape),
                              track=True)
    found = np.asarray(ds["shift"].transpose("frame", "axis").sel(axis=["x", "y"]).values)
    valid = np.asarray(ds["valid"].values, bool)
    good = found[valid]
    err = np.abs(good - job.shifts[valid]).max() if good.size else math.inf
    return Output(extra={"shift_max_err": float(err), "n_valid": int(valid.sum()),
                         "n_frames": len(job.paths)})


# ==========================================================================
# processes a user starts


def _bigstack_argv():
    """The ``bigstack`` command next to this interpreter, else ``python -m bigstack.cli``."""
    script = Path(sys.executable).with_name("bigstack")
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "bigstack.cli"]


def write_shifts_table(path, paths, shifts):
    """The true shifts as the CSV ``bigstack shifts -o`` writes (the columns it reads back)."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "path", "dx", "dy", "valid", "reason"])
        for i, (p, (dx, dy)) in enumerate(zip(paths, shifts, strict=True)):
            writer.writerow([i, p, repr(float(dx)), repr(float(dy)), "True", ""])


def link_frames(paths, folder):
    """A folder of symbolic links to exactly ``paths`` (a sweep's subset shares its folder
    with the other frames of the set), named as the files."""
    folder = Path(folder)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for p in paths:
        os.symlink(os.path.abspath(p), folder / os.path.basename(p))
    return folder


@method("bigstack-cli", command=True, reference="nearest-coverage",
        what="`bigstack stack <folder> -o tmp.zarr --shifts true.csv --subpixel nearest "
             "--no-progress` as a "
             "process: *seconds* is the wall time a user waits, interpreter start and imports "
             "included")
def bigstack_cli(job):
    csv_path = Path(job.workdir) / f"{job.method}-shifts.csv"
    write_shifts_table(csv_path, job.paths, job.shifts)
    folder = link_frames(job.paths, Path(job.workdir) / f"{job.method}-frames")
    argv = [*_bigstack_argv(), "stack", str(folder), "-o", job.store, "--shifts", str(csv_path),
            "--subpixel", "nearest", "--memory", job.memory, "--no-progress"]

    def collect(stdout, stderr):
        return Output(rows=_store_rows(job.store))

    return Command(argv=argv, collect=collect)


@method("siril", command=True, check=_siril.check, skip=_siril.skip_reason,
        matches=_siril.MATCHES, what=_siril.WHAT)
def siril(job):
    return _siril.command(job)
