"""bigstack benchmarks: every method on the same frames, side by side, in one run.

Usage (see benchmarks/README.md)::

    python benchmarks/run.py                      # 100 frames of 2048x2048
    python benchmarks/run.py --frames 400
    python benchmarks/run.py --sweep              # scaling in N and frame size, scaling.png
    python benchmarks/run.py --many               # 5,000 frames of 1080x1920

Each method runs in a fresh child process (``python run.py --child spec.json``)
so that its peak RSS is its own: the parent starts it with ``subprocess.Popen``
and reaps it with ``os.wait4``, whose ``ru_maxrss`` is the child's peak
resident set (dask's threads live in the child). The child times only its
work (imports excluded); the parent also records the total wall time of the
child and samples how many files it holds open. Every file is read once
before each method, so all methods see a warm page cache.

Outputs are checked against plain-numpy references computed by the parent
on three bands of rows (top, middle, bottom; 64 rows in all) read with
astropy, so edges with partial coverage are checked too.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as _dt
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if (REPO / "bigstack" / "__init__.py").exists():
    # measure the checkout this file lives in (the children get it on PYTHONPATH too)
    sys.path.insert(0, str(REPO))
RESULTS = HERE / "RESULTS.md"
SCALING_PNG = HERE / "scaling.png"

METHODS = ("floor", "tutorial", "ccdproc", "dask-naive", "bigstack-nearest", "bigstack-bilinear",
           "bigstack-cluster", "bigstack-median", "bigstack-sigma_clip", "find_shifts")
SWEEP_METHODS = ("floor", "bigstack-nearest", "bigstack-bilinear", "dask-naive", "tutorial")
SWEEP_FRAMES = (25, 50, 100, 200, 400)
SWEEP_SIZES = (1024, 2048, 4096)
SWEEP_BASE_SIZE = 2048  # the size of the N sweep
SWEEP_BASE_FRAMES = 100  # the N of the size sweep

# How the frames are made. Cheap settings (Gaussian noise, no cosmic rays)
# keep generation fast; the pixel values do not change the cost of stacking.
# The drift is sub-pixel (so bilinear has work) and slow: 0.25 px a frame,
# about 100 px over 400 frames, so every frame covers most of the reference.
RECIPE = {"fmt": "fits", "dtype": "uint16", "seed": 1, "subpixel": True, "drift_step": 0.25,
          "jitter": 0.5, "noise": "gaussian", "cosmic_rays": 0, "prefix": "frame"}
RECIPE_VERSION = 1
FIND_SEARCH = 200  # the tutorial's box
TOLERANCE = 1e-4  # relative
FLUSH = 256  # frames per float32 partial sum in the floor (exact for 16-bit data)
TUTORIAL_MEMORY_SHARE = 0.6  # skip the in-memory tutorial beyond this share of RAM

_FITS_BLOCK = 2880
_BITPIX = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


# ==========================================================================
# small helpers shared by parent and child


def fits_layout(path):
    """``(data offset, dtype, (ny, nx), bscale, bzero)`` of a primary-HDU FITS image.

    A minimal header walk (the floor should not pay for a FITS library).
    """
    cards = {}
    with open(path, "rb") as f:
        blocks = 0
        while True:
            block = f.read(_FITS_BLOCK)
            if len(block) < _FITS_BLOCK:
                raise ValueError(f"{path}: no END card in the primary header")
            blocks += 1
            text = block.decode("ascii", "replace")
            done = False
            for k in range(0, _FITS_BLOCK, 80):
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
    return (blocks * _FITS_BLOCK, _BITPIX[int(cards["BITPIX"])], (ny, nx),
            float(cards.get("BSCALE", 1)), float(cards.get("BZERO", 0)))


def import_dask_stack():
    """Import what a first dask compute imports lazily (dask imports dask.distributed,
    when installed, on its first compute to look for a client): imports are not work."""
    import dask.array  # noqa: F401

    try:
        import distributed  # noqa: F401
    except ImportError:
        pass


def find_search(shape):
    """The tutorial's 200 px box; on tiny test frames a quarter of the frame."""
    return min(FIND_SEARCH, max(8, min(shape) // 4))


def whole_shifts(shifts):
    """Integer shifts as bigstack's ``subpixel="nearest"`` rounds them."""
    return np.floor(np.asarray(shifts, dtype=np.float64) + 0.5).astype(np.int64)


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vmhwm():
    """Peak RSS of this process so far (bytes), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def bands_for(ny):
    """Rows checked against the reference: a top, a middle and a bottom band."""
    h = max(1, min(16, ny // 8))
    mid = ny // 2
    return [(0, h), (mid - h, mid + h), (ny - h, ny)]


# ==========================================================================
# the child: one method, timed


def child_main(spec_path):
    t_start = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    method = spec["method"]
    paths = spec["paths"]
    shape = tuple(spec["shape"])
    shifts = np.asarray(spec["shifts"], dtype=np.float64)
    work = _CHILD_METHODS[method]
    t0 = time.perf_counter()
    prepared = work.prepare(spec)  # imports only
    import_s = time.perf_counter() - t0
    rss_before = rss_now()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    out, extra = work.run(spec, paths, shape, shifts, prepared)
    work_s = time.perf_counter() - t0
    peak_work = vmhwm()
    extra["page_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    result = {"method": method, "work_s": work_s, "import_s": import_s,
              "rss_after_imports": rss_before, "child_s": time.perf_counter() - t_start}
    result.update(extra)
    # not timed: what the parent checks
    if "bands" in spec and out is not None:
        np.savez(spec["bands_out"], *[np.asarray(out(a, b), np.float64) for a, b in spec["bands"]])
    result["vmhwm_work"] = peak_work  # peak RSS up to the end of the work (cross-check)
    if hasattr(work, "after"):
        result.update(work.after(spec, paths, shape, shifts, prepared, extra))
    with open(spec["result_out"], "w") as f:
        json.dump(result, f)


class _Floor:
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

    @staticmethod
    def prepare(spec):
        return None

    @staticmethod
    def run(spec, paths, shape, shifts, prepared):
        from concurrent.futures import ThreadPoolExecutor

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

        workers = spec.get("threads") or os.cpu_count() or 1
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(band, bands))
        return (lambda a, b: mean[a:b]), {}


class _Tutorial:
    """The tutorial's way: every frame in one float64 (N, ny, nx) array, shift, average.

    Frames are loaded with ``astropy.io.fits.getdata``; shifts are whole
    pixels (rounded as bigstack's nearest); each shifted frame is added into
    one output by slicing with zero fill (no ``np.roll``, no shifted copy),
    and the sum is divided by N as the tutorial does.
    """

    @staticmethod
    def prepare(spec):
        from astropy.io import fits

        return fits

    @staticmethod
    def run(spec, paths, shape, shifts, fits):
        n = len(paths)
        ny, nx = shape
        images = np.zeros((n, ny, nx))
        for i, p in enumerate(paths):
            images[i] = fits.getdata(p)
        out = np.zeros((ny, nx))
        for i, (ix, iy) in enumerate(whole_shifts(shifts)):
            # output (y, x) takes frame (y + iy, x + ix)
            ys, ye = max(0, -iy), min(ny, ny - iy)
            xs, xe = max(0, -ix), min(nx, nx - ix)
            if ye > ys and xe > xs:
                out[ys:ye, xs:xe] += images[i, ys + iy:ye + iy, xs + ix:xe + ix]
        out /= n
        return (lambda a, b: out[a:b]), {}


class _Ccdproc:
    """``ccdproc.combine(paths, method="average", mem_limit=512e6, unit="adu")``, unaligned."""

    @staticmethod
    def prepare(spec):
        import warnings

        warnings.simplefilter("ignore")  # ccdproc warns per tile and per file
        import ccdproc
        from astropy import log

        log.setLevel("ERROR")
        return ccdproc

    @staticmethod
    def run(spec, paths, shape, shifts, ccdproc):
        result = ccdproc.combine(list(paths), method="average", mem_limit=512e6, unit="adu")
        out = np.asarray(result.data)
        return (lambda a, b: out[a:b]), {}


class _DaskNaive:
    """A plain dask.array stack: one delayed ``fits.getdata`` per frame, slice + pad, mean.

    Each padded frame is rechunked to one chunk, as a user who looks at the
    graph would; without it the graph grows with the square of the frames.
    """

    @staticmethod
    def prepare(spec):
        import dask
        import dask.array as da
        from astropy.io import fits

        import_dask_stack()
        return dask, da, fits

    @staticmethod
    def run(spec, paths, shape, shifts, prepared):
        dask, da, fits = prepared
        ny, nx = shape
        dtype = fits.getdata(paths[0]).dtype  # astropy's view of the files (uint16)
        load = dask.delayed(fits.getdata, pure=True)
        frames = []
        for p, (ix, iy) in zip(paths, whole_shifts(shifts), strict=True):
            frame = da.from_delayed(load(p), shape, dtype=dtype)
            iy, ix = int(np.clip(iy, -ny, ny)), int(np.clip(ix, -nx, nx))
            src = frame[max(iy, 0):ny + min(iy, 0), max(ix, 0):nx + min(ix, 0)]
            padded = da.pad(src, ((max(-iy, 0), max(iy, 0)), (max(-ix, 0), max(ix, 0))))
            # one chunk per frame again: da.pad adds chunks as wide as the pad, which differ
            # from frame to frame, and stacking them would cut every frame at every other
            # frame's chunk edges (1.9 million tasks for 100 frames, minutes to order them)
            frames.append(padded.rechunk(shape))
        mean = da.stack(frames).mean(axis=0)
        out = mean.compute(scheduler="threads")
        return (lambda a, b: out[a:b]), {}


class _Bigstack:
    """``bigstack.stack(open_frames(paths), shifts, subpixel=..., store=..., memory=...)``.

    ``method`` is passed to ``stack``; with ``cluster`` the stack runs on a
    dask.distributed LocalCluster of 2 single-threaded worker processes,
    started before the timing (its start-up is reported apart).
    """

    def __init__(self, subpixel, method="mean", cluster=False):
        self.subpixel = subpixel
        self.method = method
        self.cluster = cluster
        self._client = None

    def prepare(self, spec):
        import astropy.io.fits  # noqa: F401  (imports are not part of the work)
        import xarray  # noqa: F401
        import zarr  # noqa: F401

        import bigstack

        import_dask_stack()
        if self.cluster:
            from distributed import Client, LocalCluster

            t0 = time.perf_counter()
            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                   dashboard_address=None)
            self._client = Client(cluster)
            self.cluster_start_s = time.perf_counter() - t0
        return bigstack

    def run(self, spec, paths, shape, shifts, bigstack):
        store = spec["store"]
        if os.path.exists(store):
            shutil.rmtree(store)
        t0 = time.perf_counter()
        cube = bigstack.open_frames(paths)
        open_s = time.perf_counter() - t0
        ds = bigstack.stack(cube, shifts, subpixel=self.subpixel, store=store,
                            memory=spec["memory"], method=self.method)
        extra = {"open_s": open_s,
                 "tile_rows": int(ds.attrs.get("parameters", {}).get("tile_rows", 0) or 0)}
        if self.cluster:
            extra["cluster_start_s"] = self.cluster_start_s
        return None, extra

    def after(self, spec, paths, shape, shifts, bigstack, extra):
        import xarray as xr

        ds = xr.open_zarr(spec["store"])
        values = ds["stack"].values
        np.savez(spec["bands_out"], *[values[a:b].astype(np.float64) for a, b in spec["bands"]])
        found = {}
        if spec.get("graph"):
            # graph construction alone: open the cube and build the lazy stack
            t0 = time.perf_counter()
            cube = bigstack.open_frames(paths)
            t1 = time.perf_counter()
            lazy = bigstack.stack(cube, shifts, subpixel=self.subpixel, store=None,
                                  memory=spec["memory"])
            t2 = time.perf_counter()
            found = {"graph_open_s": t1 - t0, "graph_build_s": t2 - t1,
                     "graph_tasks": len(lazy["stack"].data.__dask_graph__())}
        shutil.rmtree(spec["store"], ignore_errors=True)
        return found


class _FindShifts:
    """``bigstack.find_shifts(open_frames(paths), star_pos=ref_star, search=200, track=True)``."""

    @staticmethod
    def prepare(spec):
        import astropy.io.fits  # noqa: F401  (imports are not part of the work)
        import scipy.ndimage  # noqa: F401
        import xarray  # noqa: F401

        import bigstack

        import_dask_stack()

        return bigstack

    @staticmethod
    def run(spec, paths, shape, shifts, bigstack):
        cube = bigstack.open_frames(paths)
        ds = bigstack.find_shifts(cube, star_pos=spec["ref_star"], search=find_search(shape),
                                  track=True)
        found = np.asarray(ds["shift"].transpose("frame", "axis").sel(axis=["x", "y"]).values)
        valid = np.asarray(ds["valid"].values, bool)
        good = found[valid]
        err = np.abs(good - shifts[valid]).max() if good.size else math.inf
        return None, {"shift_max_err": float(err), "n_valid": int(valid.sum()),
                      "n_frames": len(paths)}


_CHILD_METHODS = {
    "floor": _Floor,
    "tutorial": _Tutorial,
    "ccdproc": _Ccdproc,
    "dask-naive": _DaskNaive,
    "bigstack-nearest": _Bigstack("nearest"),
    "bigstack-bilinear": _Bigstack("bilinear"),
    "bigstack-cluster": _Bigstack("nearest", cluster=True),
    "bigstack-median": _Bigstack("nearest", method="median"),
    "bigstack-sigma_clip": _Bigstack("nearest", method="sigma_clip"),
    "find_shifts": _FindShifts,
}


# ==========================================================================
# the parent: frames, references, children, tables


class Frames:
    """A generated set of frames with its truth (shifts and reference star)."""

    def __init__(self, folder, paths, shape, shifts, ref_star, generated):
        self.folder = folder
        self.paths = paths
        self.shape = tuple(shape)
        self.shifts = np.asarray(shifts, dtype=np.float64)
        self.ref_star = tuple(ref_star)
        self.generated = generated  # made by this run (so a sweep may delete it)

    def subset(self, n):
        return Frames(self.folder, self.paths[:n], self.shape, self.shifts[:n], self.ref_star,
                      False)

    @property
    def n(self):
        return len(self.paths)

    @property
    def data_bytes(self):
        return self.n * self.shape[0] * self.shape[1] * 2  # uint16


def frame_bytes(n, shape):
    return n * (shape[0] * shape[1] * 2 + 2 * _FITS_BLOCK)


def cache_key(n, shape, recipe):
    parts = [f"{n}x{shape[0]}x{shape[1]}", f"seed{recipe['seed']}",
             f"drift{recipe['drift_step']:g}", f"v{RECIPE_VERSION}"]
    return "bigstack-bench-" + "-".join(parts)


def default_cache_root():
    return Path(tempfile.gettempdir()) / "bigstack-bench"


def get_frames(n, shape, folder=None, recipe=None, log=print):
    """Frames from the cache (``folder`` or a temp folder keyed by parameters), made if missing."""
    from bigstack import synthetic

    recipe = dict(RECIPE, **(recipe or {}))
    key = cache_key(n, shape, recipe)
    folder = Path(folder) if folder else default_cache_root() / key
    truth_file = folder / "truth.json"
    want = {"key": key, "n_frames": n, "shape": list(shape), "recipe": recipe}
    if truth_file.exists():
        truth = json.loads(truth_file.read_text())
        if {k: truth.get(k) for k in want} == want:
            paths = [str(folder / name) for name in truth["files"]]
            if all(os.path.exists(p) for p in paths):
                log(f"frames: reusing {n} frames {shape[0]}x{shape[1]} in {folder}")
                return Frames(str(folder), paths, shape, truth["shifts"], truth["ref_star"], False)
        if folder.name != key:
            raise SystemExit(f"{folder} holds other benchmark frames ({truth.get('key')}); "
                             "give an empty folder or the matching --frames/--size")
    if folder.exists() and any(folder.iterdir()) and folder.name != key:
        raise SystemExit(f"{folder} is not empty and holds no matching benchmark frames; "
                         "give an empty or new folder with --dir")
    need = frame_bytes(n, shape)
    folder.mkdir(parents=True, exist_ok=True)
    check_disk(folder, need, what=f"{n} frames of {shape[0]}x{shape[1]}")
    log(f"frames: generating {n} frames {shape[0]}x{shape[1]} uint16 FITS "
        f"({need / 1e9:.2f} GB) in {folder} ...")
    t0 = time.perf_counter()
    params = {k: v for k, v in recipe.items()}
    truth = synthetic.make_frames(folder, n_frames=n, shape=shape, overwrite=True,
                                  **synthetic.options_from_dict(params))
    log(f"frames: generated in {time.perf_counter() - t0:.0f} s")
    record = dict(want, files=[os.path.basename(p) for p in truth.paths],
                  shifts=np.asarray(truth.shifts).tolist(), ref_star=list(truth.ref_star))
    truth_file.write_text(json.dumps(record))
    return Frames(str(folder), list(truth.paths), shape, truth.shifts, truth.ref_star, True)


def check_disk(folder, need, what, margin=1e9):
    free = shutil.disk_usage(folder).free
    if free < need + margin:
        raise SystemExit(f"not enough disk for {what}: needs {need / 1e9:.1f} GB "
                         f"(+{margin / 1e9:.0f} GB margin), {free / 1e9:.1f} GB free in {folder}")


def warm(paths, chunk=8 << 20):
    """Read every file once so every method starts from a warm page cache."""
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(view):
                pass


# ---- the references (plain numpy on bands of rows, read with astropy)


def reference_bands(frames, kind, bands):
    """Bands ``[(a, b), ...]`` of rows of a plain-numpy stack.

    ``kind``: ``"unshifted"`` (plain mean), ``"nearest-count"`` (whole-pixel
    shifts, zero fill, divide by N: the tutorial), ``"nearest-coverage"`` and
    ``"bilinear-coverage"`` (divide by the frames covering each pixel, NaN
    where none does: bigstack). Output pixel (x, y) takes frame i's pixel
    (x + dx, y + dy); written with index arrays and masks, independently of
    bigstack's window arithmetic. Each file is opened once.
    """
    from astropy.io import fits

    ny, nx = frames.shape
    if kind in ("nearest-median", "nearest-sigma_clip"):
        return _rejection_bands(frames, kind, bands)
    totals = [np.zeros((b - a, nx)) for a, b in bands]
    covers = [np.zeros((b - a, nx), np.int64) for a, b in bands]
    x = np.arange(nx)[None, :]
    for path, (dx, dy) in zip(frames.paths, frames.shifts, strict=True):
        if kind == "unshifted":
            ix = iy = 0
            fx = fy = 0.0
        elif kind.startswith("nearest"):
            ix, iy = (int(v) for v in np.floor(np.array([dx, dy]) + 0.5))
            fx = fy = 0.0
        else:
            ix, iy = math.floor(dx), math.floor(dy)
            fx, fy = dx - ix, dy - iy
        ex, ey = int(fx > 0), int(fy > 0)
        with fits.open(path, memmap=False) as hdul:  # section reads only the rows asked for
            for (a, b), total, cover in zip(bands, totals, covers, strict=True):
                ys, xs = np.arange(a, b)[:, None] + iy, x + ix
                ok = (ys >= 0) & (ys + ey <= ny - 1) & (xs >= 0) & (xs + ex <= nx - 1)
                lo, hi = min(max(a + iy, 0), ny), min(max(b + iy + ey, 0), ny)
                if hi <= lo or not ok.any():
                    continue
                rows = np.asarray(hdul[0].section[lo:hi, :], dtype=np.float64)
                r0 = np.clip(ys - lo, 0, hi - lo - 1)
                r1 = np.clip(ys - lo + 1, 0, hi - lo - 1)
                c0 = np.clip(xs, 0, nx - 1)
                c1 = np.clip(xs + 1, 0, nx - 1)
                value = ((1 - fx) * (1 - fy) * rows[r0, c0] + fx * (1 - fy) * rows[r0, c1]
                         + (1 - fx) * fy * rows[r1, c0] + fx * fy * rows[r1, c1])
                total += np.where(ok, value, 0.0)
                cover += ok
    if kind in ("unshifted", "nearest-count"):
        return [total / frames.n for total in totals]
    with np.errstate(invalid="ignore", divide="ignore"):
        return [np.where(cover > 0, total / cover, np.nan)
                for total, cover in zip(totals, covers, strict=True)]


def _rejection_bands(frames, kind, bands):
    """Median or sigma-clipped mean of the whole-pixel-shifted frames, band by band."""
    import warnings

    from astropy.io import fits
    from astropy.stats import sigma_clip

    ny, nx = frames.shape
    planes = [np.full((frames.n, b - a, nx), np.nan, np.float32) for a, b in bands]
    x = np.arange(nx)
    for k, (path, (dx, dy)) in enumerate(zip(frames.paths, frames.shifts, strict=True)):
        ix, iy = (int(v) for v in np.floor(np.array([dx, dy]) + 0.5))
        with fits.open(path, memmap=False) as hdul:
            for (a, b), plane in zip(bands, planes, strict=True):
                ys = np.arange(a, b) + iy
                okr = (ys >= 0) & (ys < ny)
                okc = (x + ix >= 0) & (x + ix < nx)
                if not okr.any() or not okc.any():
                    continue
                rows = np.asarray(hdul[0].section[ys[okr].min():ys[okr].max() + 1, :],
                                  dtype=np.float32)
                plane[k][np.ix_(okr, okc)] = rows[:, (x + ix)[okc]]
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        for plane in planes:
            if kind == "nearest-median":
                out.append(np.nanmedian(plane, axis=0).astype(np.float64))
            else:
                clipped = sigma_clip(np.ma.masked_invalid(plane), sigma=3, maxiters=5,
                                     cenfunc="median", stdfunc="std", axis=0)
                out.append(clipped.mean(axis=0).filled(np.nan).astype(np.float64))
    return out


# what each method's output is checked against
REFERENCE_OF = {
    "floor": "unshifted",
    "ccdproc": "unshifted",
    "tutorial": "nearest-count",
    "dask-naive": "nearest-count",
    "bigstack-nearest": "nearest-coverage",
    "bigstack-bilinear": "bilinear-coverage",
    "bigstack-cluster": "nearest-coverage",
    "bigstack-median": "nearest-median",
    "bigstack-sigma_clip": "nearest-sigma_clip",
}

MATCH_MEANS = {
    "floor": "= plain mean of the unshifted frames",
    "ccdproc": "= plain mean of the unshifted frames (ccdproc does not align)",
    "tutorial": "= shifted mean, whole-pixel shifts, zero fill, divided by N",
    "dask-naive": "= shifted mean, whole-pixel shifts, zero fill, divided by N",
    "bigstack-nearest": "= shifted mean, whole-pixel shifts, divided by coverage (NaN where none)",
    "bigstack-bilinear": "= bilinear-shifted mean, divided by coverage (NaN where none)",
    "bigstack-cluster": "= shifted mean as bigstack-nearest (on a LocalCluster of 2 worker "
                        "processes; cluster start-up not timed)",
    "bigstack-median": "= np.nanmedian of the whole-pixel-shifted frames",
    "bigstack-sigma_clip": "= mean kept by astropy sigma_clip (3, 3 sigma, median centre, std, "
                           "5 iterations) of the whole-pixel-shifted frames",
    "find_shifts": "every frame valid and within 0.5 px of the true shift",
}


class References:
    """Reference bands per kind, computed once per frame set (lazily)."""

    def __init__(self, frames):
        self.frames = frames
        self.bands = bands_for(frames.shape[0])
        self._cache = {}

    def get(self, kind):
        if kind not in self._cache:
            self._cache[kind] = reference_bands(self.frames, kind, self.bands)
        return self._cache[kind]


def compare(out_bands, ref_bands):
    """``(matches, max relative error)``: same NaN pattern, finite values within TOLERANCE."""
    worst = 0.0
    for out, ref in zip(out_bands, ref_bands, strict=True):
        if out.shape != ref.shape:
            return False, math.inf
        nan_out, nan_ref = np.isnan(out), np.isnan(ref)
        if (nan_out != nan_ref).any():
            return False, math.inf
        good = ~nan_ref
        if good.any():
            rel = np.abs(out[good] - ref[good]) / np.maximum(np.abs(ref[good]), 1.0)
            worst = max(worst, float(rel.max()))
    return worst <= TOLERANCE, worst


# ---- running one child


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


# The launcher: a lean process that starts every child and reaps it with
# os.wait4. On Linux a process inherits, through vfork/posix_spawn and exec,
# the peak RSS of the process it was spawned from (exec records the old
# memory map's high-water mark in ru_maxrss). Spawned straight from this
# parent, which has numpy, astropy and bigstack imported, every child would
# report at least the parent's peak; spawned from a bare interpreter (about
# 10 MiB) ru_maxrss is the child's own peak.
_LAUNCHER = r"""
import json, os, sys
for line in sys.stdin:
    job = json.loads(line)
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, job["stdout"], write, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, job["stderr"], write, 0o644)]
    try:
        pid = os.posix_spawn(job["argv"][0], job["argv"], job["env"], file_actions=actions)
    except OSError as err:
        print(json.dumps({"error": str(err)}), flush=True)
        continue
    print(json.dumps({"pid": pid}), flush=True)
    _, status, usage = os.wait4(pid, 0)
    print(json.dumps({"status": status, "maxrss_kib": usage.ru_maxrss}), flush=True)
"""


class Launcher:
    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(self.close)

    def spawn(self, argv, env, stdout, stderr):
        job = {"argv": argv, "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise OSError(f"cannot start {argv}: {reply['error']}")
        return reply["pid"]

    def wait(self):
        reply = json.loads(self.proc.stdout.readline())
        return reply["status"], reply["maxrss_kib"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def run_child(method, frames, workdir, *, memory="512MB", graph=False, timeout=3600,
              with_bands=True):
    """Run one method in a fresh process; return its measurements."""
    workdir = Path(workdir)
    tag = f"{method}-{frames.n}-{os.getpid()}-{time.monotonic_ns()}"
    spec = {
        "method": method, "paths": list(frames.paths), "shape": list(frames.shape),
        "shifts": frames.shifts.tolist(), "ref_star": list(frames.ref_star),
        "memory": memory, "store": str(workdir / f"{tag}.zarr"), "graph": graph,
        "result_out": str(workdir / f"{tag}.json"), "bands_out": str(workdir / f"{tag}.npz"),
    }
    if with_bands:
        spec["bands"] = bands_for(frames.shape[0])
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    out_path, err_path = workdir / f"{tag}.out", workdir / f"{tag}.err"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    launcher = Launcher.get()
    t0 = time.perf_counter()
    pid = launcher.spawn([sys.executable, str(Path(__file__).resolve()), "--child",
                          str(spec_path)], env, out_path, err_path)
    fds = {"max": 0}
    done = threading.Event()
    timed_out = {"flag": False}

    def sample():
        deadline = time.monotonic() + timeout
        while not done.is_set():
            try:
                fds["max"] = max(fds["max"], len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                pass
            if time.monotonic() > deadline and not timed_out["flag"]:
                timed_out["flag"] = True
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status, maxrss_kib = launcher.wait()
    except BaseException:  # Ctrl-C or SIGTERM: stop the child this run started
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        raise
    finally:
        done.set()
        sampler.join()
    total_s = time.perf_counter() - t0
    returncode = os.waitstatus_to_exitcode(status)
    result = {"method": method, "total_s": total_s, "peak_rss": maxrss_kib * 1024,
              "max_fds": fds["max"], "returncode": returncode}
    result_path = Path(spec["result_out"])
    if returncode == 0 and result_path.exists():
        result.update(json.loads(result_path.read_text()))
        bands_path = Path(spec["bands_out"])
        if bands_path.exists():
            with np.load(bands_path) as z:
                result["bands"] = [z[f"arr_{k}"] for k in range(len(z.files))]
    else:
        tail = err_path.read_text(errors="replace").strip().splitlines()[-8:]
        why = "timed out" if timed_out["flag"] else f"exit {returncode}"
        result["error"] = f"{why}: " + (" | ".join(tail) if tail else "(no stderr)")
    for p in (spec_path, out_path, err_path, result_path, Path(spec["bands_out"])):
        p.unlink(missing_ok=True)
    shutil.rmtree(spec["store"], ignore_errors=True)
    return result


def cpu_busy(interval=0.5):
    """Share of all CPUs busy over ``interval`` seconds (this process sleeps meanwhile)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(max_wait, threshold=0.15, log=print):
    """Wait up to ``max_wait`` s for other processes to leave the CPUs idle; return busy share."""
    busy = cpu_busy()
    deadline = time.monotonic() + max_wait
    said = False
    while busy > threshold and time.monotonic() < deadline:
        if not said:
            log(f"  (waiting for the machine to be idle: {busy:.0%} of the CPUs busy)")
            said = True
        time.sleep(2)
        busy = cpu_busy()
    return busy


def tutorial_skip(frames):
    need = frames.n * frames.shape[0] * frames.shape[1] * 8
    limit = TUTORIAL_MEMORY_SHARE * mem_total_bytes()
    if need > limit:
        return f"skipped: needs {need / 1e9:.1f} GB (> 60% of {mem_total_bytes() / 1e9:.1f} GB)"
    return None


def measure(method, frames, refs, workdir, *, repeat=1, memory="512MB", graph=False,
            timeout=3600, idle_wait=0, log=print):
    """Best of ``repeat`` runs of one method, checked against its reference."""
    if method == "tutorial":
        why = tutorial_skip(frames)
        if why:
            log(f"  {method:18s} {why}")
            return {"method": method, "skipped": why}
    runs = []
    for _ in range(repeat):
        warm(frames.paths)
        busy = wait_idle(idle_wait, log=log) if idle_wait else None
        runs.append(run_child(method, frames, workdir, memory=memory, graph=graph,
                              timeout=timeout))
        runs[-1]["busy_before"] = busy
        if "error" in runs[-1]:
            break
    ok = [r for r in runs if "error" not in r]
    best = min(ok, key=lambda r: r["work_s"]) if ok else runs[-1]
    best["repeats"] = len(runs)
    if "error" not in best:
        if method == "find_shifts":
            best["matches"] = (best["n_valid"] == best["n_frames"]
                               and best["shift_max_err"] <= 0.5)
            best["match_detail"] = (f"{best['n_valid']}/{best['n_frames']} valid, "
                                    f"max error {best['shift_max_err']:.3f} px")
        elif "bands" in best:
            matches, err = compare(best.pop("bands"), refs.get(REFERENCE_OF[method]))
            best["matches"] = matches
            best["match_detail"] = f"max rel. diff {err:.1e}"
    best.pop("bands", None)
    log("  " + one_line(best))
    return best


def one_line(r):
    if "skipped" in r:
        return f"{r['method']:18s} {r['skipped']}"
    if "error" in r:
        return f"{r['method']:18s} FAILED ({r['error'][:300]})"
    return (f"{r['method']:18s} {r['work_s']:8.2f} s  (total {r['total_s']:.2f} s)  "
            f"peak RSS {r['peak_rss'] / 2**20:7.0f} MiB  max fds {r['max_fds']:4d}  "
            f"matches: {'yes' if r.get('matches') else 'NO'} ({r.get('match_detail', '')})"
            + (f"  [VmHWM after work {r['vmhwm_work'] / 2**20:.0f} MiB, "
               f"{r['page_faults']} page faults in the work]" if "vmhwm_work" in r else "")
            + (f"  [machine {r['busy_before']:.0%} busy at start]"
               if (r.get("busy_before") or 0) > 0.15 else ""))


# ---- tables and the record


def fmt_row(r, floor_s, data_bytes, extra=()):
    if "skipped" in r:
        return [r["method"], *extra, "-", "-", "-", "-", "-", "-", "-", r["skipped"]]
    if "error" in r:
        return [r["method"], *extra, "-", "-", "-", "-", "-", "-", "no", "failed: "
                + r["error"][:120].replace("|", "/")]
    mbs = "-" if r["method"] == "find_shifts" else f"{data_bytes / r['work_s'] / 1e6:.0f}"
    ratio = f"{r['work_s'] / floor_s:.2f}" if floor_s else "-"
    detail = r.get("match_detail", "")
    if (r.get("busy_before") or 0) > 0.15:
        detail += f"; machine {r['busy_before']:.0%} busy at start"
    return [r["method"], *extra, f"{r['work_s']:.2f}", f"{r['total_s']:.2f}", ratio, mbs,
            f"{r['peak_rss'] / 2**20:.0f}", str(r["max_fds"]),
            "yes" if r.get("matches") else "no", detail]


HEADERS = ["method", "seconds", "total s", "x floor", "input MB/s", "peak RSS MiB",
           "max open files", "matches", "check"]


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(headers), line("-" * w for w in widths)] + [line(r) for r in rows])


def machine_info():
    import dask
    import xarray
    import zarr

    import bigstack

    try:
        import astropy
        astropy_v = astropy.__version__
    except ImportError:
        astropy_v = "-"
    try:
        import ccdproc
        ccdproc_v = ccdproc.__version__
    except ImportError:
        ccdproc_v = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--", "bigstack")
    if dirty:  # name the working tree's state of bigstack/ so runs can be told apart
        import hashlib

        diff = _git("diff", "HEAD", "--", "bigstack") + _git("ls-files", "--others", "--",
                                                             "bigstack")
        dirty = hashlib.sha1(diff.encode()).hexdigest()[:10]
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(), "cpu": cpu, "mem_gib": mem_total_bytes() / 2**30,
        "python": platform.python_version(), "numpy": np.__version__,
        "dask": dask.__version__, "zarr": zarr.__version__, "xarray": xarray.__version__,
        "astropy": astropy_v, "ccdproc": ccdproc_v, "bigstack": bigstack.__version__,
        "commit": (commit or "?") + (f" + uncommitted changes to bigstack/ (diff {dirty})"
                                     if dirty else ""),
        "load": f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
    }


def _git(*args):
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_text(m):
    return (f"- Machine: {m['cores']} cores ({m['cpu']}), {m['mem_gib']:.1f} GiB memory "
            f"(MemTotal); load average at start {m['load']}\n"
            f"- Versions: Python {m['python']}, numpy {m['numpy']}, dask {m['dask']}, "
            f"zarr {m['zarr']}, xarray {m['xarray']}, astropy {m['astropy']}, "
            f"ccdproc {m['ccdproc']}, bigstack {m['bigstack']} at commit {m['commit']}")


def command_text():
    args = " ".join(sys.argv[1:])
    return f"python benchmarks/run.py{(' ' + args) if args else ''}"


def append_results(path, text):
    path = Path(path)
    if not path.exists():
        path.write_text("# bigstack benchmark results\n\nAppended by `benchmarks/run.py` "
                        "(see README.md in this folder); newest at the bottom.\n")
    with open(path, "a") as f:
        f.write("\n" + text.rstrip() + "\n")


def now_text():
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def data_text(frames):
    drift = np.abs(frames.shifts).max(axis=0)
    return (f"- Data: {frames.n} frames of {frames.shape[0]}x{frames.shape[1]} uint16 FITS "
            f"({frames.data_bytes / 1e6:.0f} MB of pixels) from `bigstack.synthetic.make_frames`"
            f" (sub-pixel drift, largest shift {drift[0]:.1f} px in x, {drift[1]:.1f} px in y)")


COMMON_NOTES = """\
- Every method runs in its own fresh process. *seconds*: wall time of the
  work only, measured inside the child (imports excluded; for bigstack it
  includes `open_frames`); *total s*: the child process from start to exit
  (interpreter start, imports, work, saving the check bands); *x floor*:
  seconds / floor's seconds; *input MB/s*: bytes of pixel data of all frames
  / seconds; *peak RSS*: `ru_maxrss` of the child from `os.wait4` (includes
  the imported libraries: about 30 MiB for Python and numpy, 150 MiB with
  dask, xarray, zarr and astropy); *max open files*: largest number
  of entries in `/proc/<pid>/fd` seen while sampling the child every 20 ms.
- Page cache warm: every file is read once right before each method runs.
  Then the run waits (up to `--idle-wait` s) until other processes leave
  the CPUs idle; a method that started on a busy machine says so.
- *matches*: the output agrees, on three bands of rows (top, middle,
  bottom: 64 rows), with a plain-numpy reference computed from rows read
  with astropy, to a relative {tol:g} with the same NaN pattern."""


def per_method_notes(methods):
    lines = []
    for m in methods:
        what = {
            "floor": "read every byte once with `os.preadv` and add it into a float32 "
                     "accumulator (moved into float64 every 256 frames), row bands over "
                     "both cores: the speed limit",
            "tutorial": "load every frame with astropy into one float64 (N, ny, nx) array, "
                        "shift by slicing with zero fill, average (divide by N)",
            "ccdproc": "`ccdproc.combine(paths, method='average', mem_limit=512e6, unit='adu')`"
                       " **unaligned**: ccdproc has no registration",
            "dask-naive": "`da.stack` of one delayed `fits.getdata` per frame, slice + `da.pad` "
                          "(whole pixels, zero fill) + `.rechunk` to one chunk per frame, "
                          "`.mean(axis=0)`, threaded scheduler",
            "bigstack-nearest": "`bigstack.stack(open_frames(paths), shifts, "
                                "subpixel='nearest', store=tmp.zarr, memory=...)` with the "
                                "true shifts",
            "bigstack-bilinear": "the same with `subpixel='bilinear'`",
            "bigstack-cluster": "bigstack-nearest with a `dask.distributed` `Client` of a "
                                "`LocalCluster(n_workers=2, threads_per_worker=1)`; the "
                                "cluster's start-up is not in *seconds*",
            "bigstack-median": "bigstack-nearest with `method='median'` (each tile holds its "
                               "rows of every frame; the tile height follows from memory)",
            "bigstack-sigma_clip": "bigstack-nearest with `method='sigma_clip'` (kappa 3, 3)",
            "find_shifts": "`bigstack.find_shifts(cube, star_pos=ref_star, search=200, "
                           "track=True)` alone (reads N boxes of 200x200, so no MB/s)",
        }[m]
        lines.append(f"- `{m}`: {what}; matches {MATCH_MEANS[m]}.")
    return "\n".join(lines)


# ==========================================================================
# modes


def parse_size(text):
    if "x" in text.lower():
        ny, nx = (int(v) for v in text.lower().split("x"))
        return ny, nx
    return int(text), int(text)


def workdir_for(args):
    path = Path(tempfile.mkdtemp(prefix="bigstack-bench-work-"))
    return path


def run_default(args):
    shape = parse_size(args.size)
    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if "floor" in methods:  # the floor runs first
        methods = ["floor"] + [m for m in methods if m != "floor"]
    machine = machine_info()
    frames = get_frames(args.frames, shape, args.dir)
    refs = References(frames)
    workdir = workdir_for(args)
    print(f"running {', '.join(methods)} on {frames.n} frames {shape[0]}x{shape[1]} "
          f"(best of {args.repeat})")
    results = []
    try:
        for method in methods:
            results.append(measure(method, frames, refs, workdir, repeat=args.repeat,
                                   memory=args.memory, timeout=args.timeout,
                                   idle_wait=args.idle_wait))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floor = next((r for r in results if r["method"] == "floor" and "work_s" in r), None)
    floor_s = floor["work_s"] if floor else None
    rows = [fmt_row(r, floor_s, frames.data_bytes) for r in results]
    print()
    print(text_table(HEADERS, rows))
    section = "\n\n".join([
        f"## {frames.n} frames of {shape[0]}x{shape[1]}, {now_text()}",
        f"- Command: `{command_text()}` (best of {args.repeat}, memory={args.memory!r})\n"
        + machine_text(machine) + "\n" + data_text(frames),
        markdown_table(HEADERS, rows),
        COMMON_NOTES.format(tol=TOLERANCE) + "\n" + per_method_notes(methods),
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"\nappended to {args.results}")
    if args.clean and frames.folder and not args.dir:
        shutil.rmtree(frames.folder, ignore_errors=True)
    failed = [r["method"] for r in results if "error" in r]
    return 1 if failed else 0


def run_sweep(args):
    methods = args.methods.split(",") if args.methods else list(SWEEP_METHODS)
    base = (SWEEP_BASE_SIZE, SWEEP_BASE_SIZE)
    configs = [(n, base) for n in SWEEP_FRAMES]
    configs += [(SWEEP_BASE_FRAMES, (s, s)) for s in SWEEP_SIZES if s != SWEEP_BASE_SIZE]
    # frames made once: the largest set at the base size gives every N, one set per other size
    needs = {(max(SWEEP_FRAMES), base)}
    needs |= {(SWEEP_BASE_FRAMES, (s, s)) for s in SWEEP_SIZES if s != SWEEP_BASE_SIZE}
    root = default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    missing = sum(frame_bytes(n, shape) for n, shape in needs
                  if not (root / cache_key(n, shape, RECIPE) / "truth.json").exists())
    check_disk(root, missing, what="the sweep's frames")
    print(f"sweep: df before: {shutil.disk_usage(root).free / 1e9:.1f} GB free, "
          f"{missing / 1e9:.1f} GB of frames to generate")
    machine = machine_info()
    sets = {shape: get_frames(n, shape) for n, shape in sorted(needs, key=lambda c: c[1])}
    workdir = workdir_for(args)
    table = []
    try:
        for n, shape in configs:
            frames = sets[shape].subset(n)
            refs = References(frames)
            print(f"sweep: {n} frames {shape[0]}x{shape[1]}")
            results = {}
            for method in ["floor"] + [m for m in methods if m != "floor"]:
                results[method] = measure(method, frames, refs, workdir, repeat=args.repeat,
                                          memory=args.memory, timeout=args.timeout,
                                          idle_wait=args.idle_wait)
            floor_s = results["floor"].get("work_s")
            for r in results.values():
                table.append({"n": n, "size": shape[0], "data_bytes": frames.data_bytes,
                              "floor_s": floor_s, **r})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            for frames in sets.values():
                if frames.generated:
                    shutil.rmtree(frames.folder, ignore_errors=True)
    headers = ["frames", "size", "method", "seconds", "s/frame", "x floor", "input MB/s",
               "peak RSS MiB", "max open files", "matches"]
    rows = []
    for r in table:
        if "work_s" not in r:
            rows.append([r["n"], r["size"], r["method"], "-", "-", "-", "-", "-", "-",
                         r.get("skipped") or "failed"])
            continue
        rows.append([r["n"], r["size"], r["method"], f"{r['work_s']:.2f}",
                     f"{r['work_s'] / r['n']:.4f}",
                     f"{r['work_s'] / r['floor_s']:.2f}" if r["floor_s"] else "-",
                     f"{r['data_bytes'] / r['work_s'] / 1e6:.0f}",
                     f"{r['peak_rss'] / 2**20:.0f}", r["max_fds"],
                     "yes" if r.get("matches") else "no"])
    print()
    print(text_table(headers, rows))
    data_path = Path(args.plot).with_suffix(".json")
    data_path.write_text(json.dumps({"command": command_text(), "date": now_text(),
                                     "rows": table}, indent=1, default=float))
    plot_scaling(table, args.plot)
    print(f"\nplot: {args.plot}")
    section = "\n\n".join([
        f"## Scaling sweep, {now_text()}",
        f"- Command: `{command_text()}` (best of {args.repeat}, memory={args.memory!r})\n"
        + machine_text(machine)
        + f"\n- Data: frames {', '.join(map(str, SWEEP_FRAMES))} at {SWEEP_BASE_SIZE}x"
        f"{SWEEP_BASE_SIZE} (the first N of one {max(SWEEP_FRAMES)}-frame set) and sizes "
        f"{', '.join(map(str, SWEEP_SIZES))} at {SWEEP_BASE_FRAMES} frames; "
        "uint16 FITS from `bigstack.synthetic.make_frames`, sub-pixel drift 0.25 px/frame",
        markdown_table(headers, rows),
        f"Plot: [scaling.png]({Path(args.plot).name}); the numbers behind it: "
        f"[scaling.json]({Path(args.plot).with_suffix('.json').name}).\n\n"
        + COMMON_NOTES.format(tol=TOLERANCE)
        + "\n" + per_method_notes([m for m in methods if m in METHODS]),
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"appended to {args.results}")
    return 1 if any("error" in r for r in table) else 0


def plot_scaling(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in table))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (ax_t, ax_m), (ax_s, ax_sm) = axes
    styles = {m: dict(marker=mk, label=m) for m, mk in zip(methods, "osD^vx<>", strict=False)}
    for m in methods:
        by_n = sorted(((r["n"], r) for r in table
                       if r["method"] == m and r["size"] == SWEEP_BASE_SIZE and "work_s" in r),
                      key=lambda item: item[0])
        if by_n:
            ns = [n for n, _ in by_n]
            ax_t.plot(ns, [r["work_s"] / n for n, r in by_n], **styles[m])
            ax_m.plot(ns, [r["peak_rss"] / 2**20 for _, r in by_n], **styles[m])
        by_s = sorted(((r["size"], r) for r in table
                       if r["method"] == m and r["n"] == SWEEP_BASE_FRAMES and "work_s" in r),
                      key=lambda item: item[0])
        if by_s:
            ss = [s for s, _ in by_s]
            ax_s.plot(ss, [r["data_bytes"] / r["work_s"] / 1e6 for _, r in by_s], **styles[m])
            ax_sm.plot(ss, [r["peak_rss"] / 2**20 for _, r in by_s], **styles[m])
    side = f"{SWEEP_BASE_SIZE}x{SWEEP_BASE_SIZE}"
    ax_t.set(title=f"Time per frame ({side})", xlabel="frames N", ylabel="seconds per frame",
             xscale="log", yscale="log")
    ax_m.set(title=f"Peak memory ({side})", xlabel="frames N", ylabel="peak RSS (MiB)",
             xscale="log", yscale="log")
    ax_s.set(title=f"Throughput ({SWEEP_BASE_FRAMES} frames)", xlabel="frame side (pixels)",
             ylabel="input MB/s", xscale="log", yscale="log")
    ax_sm.set(title=f"Peak memory ({SWEEP_BASE_FRAMES} frames)", xlabel="frame side (pixels)",
              ylabel="peak RSS (MiB)", xscale="log", yscale="log")
    for ax in (ax_t, ax_m):
        ax.set_xticks(SWEEP_FRAMES, [str(v) for v in SWEEP_FRAMES])
        ax.minorticks_off()
    for ax in (ax_s, ax_sm):
        ax.set_xticks(SWEEP_SIZES, [str(v) for v in SWEEP_SIZES])
        ax.minorticks_off()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in axes.flat:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
               bbox_to_anchor=(0.5, 0.955), frameon=False)
    fig.suptitle("bigstack scaling: each method in a fresh process, warm page cache, "
                 f"{os.cpu_count()} cores", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_many(args):
    n = args.many_frames
    shape = (1080, 1920)
    small = min(100, n)
    recipe = {"drift_step": min(RECIPE["drift_step"], 200.0 / max(n, 1)), "n_stars": 100}
    root = Path(args.dir) if args.dir else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(n, shape, dict(RECIPE, **recipe))
    folder = Path(args.dir) if args.dir else root / key
    if not (folder / "truth.json").exists():
        need = frame_bytes(n, shape)
        free = shutil.disk_usage(root).free
        if free < need + 2e9:
            raise SystemExit(f"--many needs {need / 1e9:.1f} GB of disk for {n} frames of "
                             f"1080x1920 (+2 GB margin) but {root} has {free / 1e9:.1f} GB free; "
                             "use --many-frames N for fewer frames or --dir on a larger disk")
    machine = machine_info()
    frames = get_frames(n, shape, folder, recipe=recipe)
    workdir = workdir_for(args)
    runs = []
    try:
        sub = frames.subset(small)
        options = {"memory": args.memory, "timeout": args.timeout, "idle_wait": args.idle_wait,
                   "repeat": args.repeat}
        print(f"many: {small}-frame baseline")
        sub_refs = References(sub)
        runs.append(("floor", small, measure("floor", sub, sub_refs, workdir, **options)))
        runs.append(("bigstack-nearest", small,
                     measure("bigstack-nearest", sub, sub_refs, workdir, **options)))
        print(f"many: {n} frames")
        refs = References(frames)
        runs.append(("floor", n, measure("floor", frames, refs, workdir, **options)))
        runs.append(("bigstack-nearest", n,
                     measure("bigstack-nearest", frames, refs, workdir, graph=True, **options)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep and frames.generated and not args.dir:
            shutil.rmtree(frames.folder, ignore_errors=True)
    headers = ["frames", "method", "seconds", "s/frame", "x floor", "input MB/s",
               "peak RSS MiB", "max open files", "matches"]
    rows = []
    floor_s = None
    for m, k, r in runs:  # each floor run is followed by the bigstack run it measures
        if m == "floor":
            floor_s = r.get("work_s")
        if "work_s" not in r:
            rows.append([k, m, "-", "-", "-", "-", "-", "-", "failed: " + r["error"][:100]])
            continue
        data = k * shape[0] * shape[1] * 2
        rows.append([k, m, f"{r['work_s']:.2f}", f"{r['work_s'] / k:.4f}",
                     f"{r['work_s'] / floor_s:.2f}" if floor_s else "-",
                     f"{data / r['work_s'] / 1e6:.0f}", f"{r['peak_rss'] / 2**20:.0f}",
                     r["max_fds"], "yes" if r.get("matches") else "no"])
    big = runs[-1][2]
    base = runs[1][2]
    cache_note = ""
    if runs[2][2].get("work_s"):
        rate = frames.data_bytes / runs[2][2]["work_s"] / 1e6
        cache_note = (f" The floor read the {frames.data_bytes / 1e9:.1f} GB at {rate:.0f} MB/s, "
                      + ("so from the page cache." if rate > 2000 else
                         "so partly from the disk: the page cache could not hold all frames."))
    summary = []
    if "work_s" in big and "work_s" in base:
        per_big, per_small = big["work_s"] / n, base["work_s"] / small
        summary.append(f"- Time per frame: {per_big * 1e3:.1f} ms at {n} frames vs "
                       f"{per_small * 1e3:.1f} ms at {small} frames "
                       f"({per_big / per_small:.2f}x).")
        summary.append(f"- Peak RSS at {n} frames: {big['peak_rss'] / 2**20:.0f} MiB "
                       f"(memory={args.memory!r}; {base['peak_rss'] / 2**20:.0f} MiB at "
                       f"{small} frames).")
        graph = big.get("graph_open_s", 0) + big.get("graph_build_s", 0)
        summary.append(
            f"- Graph construction: `open_frames` {big.get('graph_open_s', 0):.2f} s (headers of "
            f"{n} files) + `stack(..., store=None)` {big.get('graph_build_s', 0):.2f} s "
            f"({big.get('graph_tasks', '?')} tasks) = {graph / big['work_s']:.1%} of the "
            f"{big['work_s']:.1f} s run (the build alone: "
            f"{big.get('graph_build_s', 0) / big['work_s']:.1%}).")
        summary.append(f"- Most files open at once: {big['max_fds']} (sampled every 20 ms; "
                       f"{base['max_fds']} at {small} frames).")
    print()
    print(text_table(headers, rows))
    print("\n".join(summary))
    scaled = "" if n == 5000 else f" (scaled down from 5,000 with --many-frames {n})"
    section = "\n\n".join([
        f"## Smart-telescope night: {n} frames of 1080x1920{scaled}, {now_text()}",
        f"- Command: `{command_text()}` (memory={args.memory!r})\n" + machine_text(machine)
        + "\n" + data_text(frames) + "; 100 stars, slow drift so every frame overlaps",
        markdown_table(headers, rows),
        "\n".join(summary) + "\n- Page cache warmed before each method." + cache_note
        + " The small runs are the first frames of the same set.",
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"appended to {args.results}")
    return 1 if any("error" in r for _, _, r in runs) else 0


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: the running child is killed, temp files removed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    parser.add_argument("--size", default="2048",
                        help="frame size: N for NxN or NYxNX (default 2048)")
    parser.add_argument("--dir", help="folder for the frames (reused when it holds the same "
                                      "frames); default: a temp folder keyed by parameters")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; best reported")
    parser.add_argument("--memory", default="512MB", help="bigstack's memory budget")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    parser.add_argument("--idle-wait", type=float, default=120,
                        help="before each run, wait up to this many seconds for other "
                             "processes to leave the CPUs idle (0: do not wait)")
    parser.add_argument("--sweep", action="store_true", help="scaling in N and frame size")
    parser.add_argument("--plot", default=str(SCALING_PNG),
                        help="where --sweep writes its plot (and its data, as .json)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plot from the data the last --sweep saved")
    parser.add_argument("--many", action="store_true",
                        help="a smart-telescope night: 5,000 frames of 1080x1920")
    parser.add_argument("--many-frames", type=int, default=5000,
                        help="frames for --many (default 5000)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the frames --sweep/--many generated")
    parser.add_argument("--clean", action="store_true",
                        help="delete the cached frames after a default run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args.child)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    if args.replot:
        data = json.loads(Path(args.plot).with_suffix(".json").read_text())
        plot_scaling(data["rows"], args.plot)
        print(f"plot: {args.plot} (from {data['command']}, {data['date']})")
        return 0
    if args.sweep:
        return run_sweep(args)
    if args.many:
        return run_many(args)
    return run_default(args)


if __name__ == "__main__":
    sys.exit(main())
