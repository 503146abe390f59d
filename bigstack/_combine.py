"""The tiled shifted combine: bigstack's hot path, top to bottom in this file.

Geometry
--------
Frame i has shift ``(dx, dy)`` (``[x, y]``, ``star_i - star_reference``).
Output pixel ``(x, y)`` of the reference grid takes frame i's pixel
``(x + dx, y + dy)``. With ``subpixel="nearest"`` the shift is rounded to
whole pixels (``floor(d + 0.5)``) and values are copied exactly; with
``"bilinear"`` the fractional shift is applied by bilinear interpolation
(weights sum to one, so flux is conserved), and a frame covers an output
pixel only where all the source pixels it interpolates from exist.

Plan
----
The output is cut into full-width row bands ("tiles"). One task per tile
loops over the frames in index order; for frame i it reads only the source
rows ``[a + dy_i, b + dy_i)`` (clipped to the frame) of output rows
``[a, b)``, straight from the file, and adds them into a float64 sum and an
int32 coverage count. Memory is that of the tiles in flight, whatever the
number of frames; the fixed frame order makes the result independent of
scheduling. With a store, each tile writes its own zarr chunk (a tile is
exactly one chunk, so no lock is needed) and the result is returned opened
lazily from the store.
"""

from __future__ import annotations

import datetime as _dt
import os
import warnings
from dataclasses import dataclass

import numpy as np

from ._errors import BigstackError, BigstackWarning, StoreExistsError

STREAMING = ("mean", "sum")  # methods the streaming kernel computes
SUBPIXEL = ("nearest", "bilinear")
EXTENTS = ("reference", "intersection", "union")
NORMALIZE = ("coverage", "count")

# frames added in float32 before flushing to float64: 256 * 2**15 < 2**24
_FLUSH = 256

# bytes of working memory per output pixel of a tile in flight: float32 and
# float64 sums, the int32 and float64 difference arrays, the stored source rows
# and bilinear's two float32 temporaries, the float32 result
_BYTES_PER_PIXEL = 4 + 8 + 4 + 8 + 4 + 8 + 4


# --------------------------------------------------------------------------
# inputs


def _as_shifts(shifts, n):
    """Return ``(shifts (n, 2) float64, keep (n,) bool, reasons)`` from any form."""
    if shifts is None:
        return np.zeros((n, 2)), np.ones(n, bool), {}
    keep = np.ones(n, bool)
    reasons = {}
    if hasattr(shifts, "data_vars"):  # the Dataset from find_shifts
        if "shift" not in shifts:
            raise ValueError("shifts Dataset has no 'shift' variable (expected find_shifts output)")
        if "valid" in shifts:
            keep = np.asarray(shifts["valid"].values, bool)
            if "reason" in shifts:
                reasons = {int(i): str(shifts["reason"].values[i]) for i in np.flatnonzero(~keep)}
        shift = shifts["shift"]
        if "axis" in shift.dims:
            shift = shift.transpose(..., "axis").sel(axis=["x", "y"])
        values = np.asarray(shift.values, dtype=np.float64)
    else:
        values = np.asarray(getattr(shifts, "values", shifts), dtype=np.float64)
    if values.shape != (n, 2):
        raise ValueError(f"shifts must be {n} x 2 ([x, y] per frame) for {n} frames; "
                         f"got shape {values.shape}")
    bad = np.flatnonzero(keep & ~np.isfinite(values).all(axis=1))
    if bad.size:
        raise ValueError(f"shift of frame {int(bad[0])} is not finite: {values[bad[0]].tolist()}; "
                         "mark it invalid or drop the frame")
    values = np.where(keep[:, None], values, 0.0)  # left-out frames are never read
    return values, keep, reasons


# --------------------------------------------------------------------------
# geometry


def _integer_shifts(shifts, subpixel):
    """Whole-pixel part used for windows; nearest rounds, bilinear floors."""
    if subpixel == "nearest":
        return np.floor(shifts + 0.5).astype(np.int64)
    return np.floor(shifts).astype(np.int64)


def _coverage_span(shifts, subpixel, size, axis):
    """Output interval ``[lo, hi)`` each frame covers along one axis."""
    d = shifts[:, axis]
    if subpixel == "nearest":
        whole = np.floor(d + 0.5)
        return -whole, size - whole
    # bilinear: x + d must lie in [0, size - 1]; exact integers need no neighbour
    lo = np.ceil(-d)
    hi = np.floor(size - 1 - d) + 1
    return lo, hi


def output_grid(shifts, shape, subpixel="nearest", extent="reference"):
    """Return ``(y0, y1, x0, x1)`` of the output grid in reference-frame pixels."""
    ny, nx = shape
    if extent == "reference":
        return 0, ny, 0, nx
    ylo, yhi = _coverage_span(shifts, subpixel, ny, 1)
    xlo, xhi = _coverage_span(shifts, subpixel, nx, 0)
    if extent == "union":
        box = ylo.min(), yhi.max(), xlo.min(), xhi.max()
    else:
        box = ylo.max(), yhi.min(), xlo.max(), xhi.min()
    y0, y1, x0, x1 = (int(v) for v in box)
    if y1 <= y0 or x1 <= x0:
        raise BigstackError(
            f"extent={extent!r} is empty: the frames' shifts (up to "
            f"{np.abs(shifts).max(axis=0).round(1).tolist()} px [x, y]) leave no pixel that "
            f"every frame covers; use extent='reference' or 'union'"
        )
    return y0, y1, x0, x1


def _budget(memory, threads):
    """Bytes per thread the tiles may use (half the budget: the rest is the process
    itself, Python, numpy, dask and zarr, and the write buffers) and the thread count."""
    from dask.utils import parse_bytes

    budget = parse_bytes(memory) if isinstance(memory, str) else int(memory)
    threads = threads or os.cpu_count() or 1
    return budget // 2 // threads, threads


def _clamp_rows(fit, out_rows, threads, max_rows=None):
    """Tile rows: what fits, but enough tiles to keep every thread busy."""
    for_threads = -(-out_rows // (2 * threads))
    return int(max(1, min(fit, for_threads, out_rows, max_rows or out_rows)))


def plan_tiles(out_rows, out_cols, memory, threads=None, max_rows=512):
    """Rows per tile from a memory budget: tiles in flight must fit in ``memory``."""
    per_thread, threads = _budget(memory, threads)
    per_row = out_cols * _BYTES_PER_PIXEL
    if per_thread < per_row:
        raise BigstackError(
            f"memory={memory!r} is too small: one output row of {out_cols} pixels needs about "
            f"{per_row * threads / 2**20:.1f} MiB with {threads} threads; give at least "
            f"{2 * per_row * threads / 2**20:.0f}MiB"
        )
    return _clamp_rows(per_thread // per_row, out_rows, threads, max_rows)


# --------------------------------------------------------------------------
# the tile kernel


class _Window:
    """One frame's part of a tile: what to add where (see :func:`_frame_windows`)."""

    __slots__ = ("k", "i", "rows", "block", "bad", "scale", "zero", "out", "flat")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


def _frame_windows(source, shape, shifts, keep, subpixel, grid, a, b):
    """Yield, frame by frame in index order, the window each kept frame adds to rows ``[a, b)``.

    For kept frame number ``k`` (frame ``i``), output rows ``r`` (absolute)
    take source rows ``r + iy`` (and ``r + iy + 1`` for a fractional
    bilinear shift), clipped to the frame; only those rows are read. The
    window's ``block`` holds stored values (scaled by ``scale`` and offset
    by ``zero`` to get physical values), interpolated for bilinear; ``bad``
    marks NaN or BLANK pixels (None when there are none); ``out`` is its
    place in the tile; ``flat`` is set when ``block`` can be added with
    :func:`_add_rows_flat`. ``rows`` is a reused buffer: use a window
    before asking for the next.
    """
    ny, nx = shape
    y0, _, x0, x1 = grid
    width = x1 - x0
    buffers = {}
    whole = _integer_shifts(shifts, subpixel)
    for k, i in enumerate(np.flatnonzero(keep)):
        ix, iy = int(whole[i, 0]), int(whole[i, 1])
        fx, fy = (0.0, 0.0) if subpixel == "nearest" else shifts[i] - whole[i]
        ex, ey = int(fx > 0), int(fy > 0)  # extra source column/row bilinear needs
        r_lo = max(y0 + a, -iy)
        r_hi = min(y0 + b, ny - iy - ey)
        c_lo = max(x0, -ix)
        c_hi = min(x1, nx - ix - ex)
        if r_hi <= r_lo or c_hi <= c_lo:
            continue
        rows, scale, zero, blank, floating = source.raw(i, r_lo + iy, r_hi + iy + ey, buffers)
        block = rows[:, c_lo + ix:c_hi + ix + ex]
        bad = block == blank if blank is not None else (
            ~np.isfinite(block) if floating else None)
        if bad is not None and not bad.any():
            bad = None
        if ex or ey:
            block = _bilinear(block, bad, np.float32(fx), np.float32(fy), ex, ey)
            bad = None if bad is None else np.isnan(block)
        oy, ox = r_lo - y0 - a, c_lo - x0
        flat = None
        if not (ex or ey or floating) and rows.shape[1] == width:
            flat = (oy, ox, c_lo + ix, c_hi - c_lo)
        yield _Window(k=k, i=i, rows=rows, block=block, bad=bad, scale=scale, zero=zero,
                      out=(slice(oy, oy + r_hi - r_lo), slice(ox, ox + c_hi - c_lo)),
                      flat=flat)


def combine_tile(source, n, shape, shifts, keep, subpixel, grid, a, b, gains=None,
                 biases=None, weights=None):
    """Sum and coverage of output rows ``[a, b)`` (grid-relative) over the kept frames.

    Frames are added in index order into a float32 sum of stored values,
    flushed into a float64 sum every ``_FLUSH`` frames: 256 16-bit values
    add up exactly in float32, so sums of integer frames are exact, and
    equal whichever way the frames are grouped (resume, append);
    what is the same for a whole frame window (the count of frames, BZERO)
    is recorded at the window's four corners of a 2-D difference array and
    summed up once at the end, so each frame costs one read and one add.
    NaN (or FITS BLANK) pixels are left out of the sum and the coverage.

    Frame ``i`` may be normalised to ``value * gains[i] + biases[i]`` and
    weighted by ``weights[i]``; the sum is then the weighted sum.

    Returns ``(sum float64 (b - a, W), coverage int32 (b - a, W), weight)``,
    ``weight`` the sum of the covering frames' weights (None unweighted).
    """
    y0, _, x0, x1 = grid
    h, width = b - a, x1 - x0
    total = np.zeros((h, width), np.float32)  # running sum of up to _FLUSH frames
    exact = np.zeros((h, width), np.float64)  # where the float32 sums are flushed
    count = np.zeros((h + 1, width + 1), np.int32)  # difference array of frame windows
    offset = np.zeros((h + 1, width + 1), np.float64)  # difference array of offsets
    weight = None if weights is None else np.zeros((h + 1, width + 1), np.float64)
    invalid = None  # per pixel, covering values that were NaN or BLANK
    lost = None  # per pixel, the weight of those
    zeros = set()  # the offsets marked; one value for all frames is the common case
    added = 0
    for w in _frame_windows(source, shape, shifts, keep, subpixel, grid, a, b):
        added += 1
        if added % _FLUSH == 0:
            exact += total
            total[:] = 0
        g = 1.0 if gains is None else float(gains[w.i])
        bias = 0.0 if biases is None else float(biases[w.i])
        wt = 1.0 if weights is None else float(weights[w.i])
        scale, zero = w.scale * g * wt, (w.zero * g + bias) * wt
        _mark(count, w.out, 1)
        if weight is not None:
            _mark(weight, w.out, wt)
        if w.bad is None:  # the common case: add stored values, convert on the fly
            if scale == 1 and w.flat is not None:
                _add_rows_flat(total, w.rows, *w.flat)
            else:
                total[w.out] += w.block if scale == 1 else w.block * np.float32(scale)
            zeros.add(zero)
            if zero:
                _mark(offset, w.out, zero)
        else:
            values = w.block.astype(np.float32) * np.float32(scale) + np.float32(zero)
            values[w.bad] = 0
            total[w.out] += values
            if invalid is None:
                invalid = np.zeros((h, width), np.int32)
                lost = np.zeros((h, width), np.float64)
            invalid[w.out] += w.bad
            lost[w.out] += w.bad * wt
    coverage = _integrate(count)
    exact += total
    if len(zeros) == 1 and invalid is None:  # every frame window added the same offset
        zero = zeros.pop()
        if zero:
            exact += zero * coverage
    elif any(zeros):
        exact += _integrate(offset)
    if invalid is not None:
        coverage -= invalid
    if weight is not None:
        weight = _integrate(weight) - (0.0 if lost is None else lost)
    return exact, coverage, weight


def gather_tile(source, n, shape, shifts, keep, subpixel, grid, a, b, gains=None,
                biases=None):
    """The kept frames' shifted values for output rows ``[a, b)``, one plane each.

    Returns float32 ``(kept frames, b - a, W)``, NaN where a frame does not
    cover a pixel (or the pixel is NaN/BLANK), normalised like
    :func:`combine_tile`. This is what rejection methods need: every
    frame's value of a pixel at once, so its memory grows with the number
    of frames and the tile height shrinks to fit.
    """
    y0, _, x0, x1 = grid
    values = np.full((int(np.count_nonzero(keep)), b - a, x1 - x0), np.nan, np.float32)
    for w in _frame_windows(source, shape, shifts, keep, subpixel, grid, a, b):
        g = 1.0 if gains is None else float(gains[w.i])
        bias = 0.0 if biases is None else float(biases[w.i])
        plane = values[w.k][w.out]
        np.multiply(w.block, np.float32(w.scale * g), out=plane, casting="unsafe")
        plane += np.float32(w.zero * g + bias)
        if w.bad is not None:
            plane[w.bad] = np.nan
    return values


def _add_rows_flat(total, rows, oy, ox, sx, length):
    """``total[oy:oy+R, ox:ox+length] += rows[:, sx:sx+length]`` as one 1-D add.

    ``total`` and ``rows`` have the same row length W, so the window is a
    constant offset apart in both flattened arrays: one contiguous add over
    the span (twice as fast as numpy's 2-D strided add), then the values
    that spilled into the ``W - length`` pixels between the window's rows
    are taken out again. For integer rows every partial sum is an integer
    below 2**24, so taking them out is exact.
    """
    n, width = rows.shape
    flat = total.reshape(-1)
    source = rows.reshape(-1)
    start = oy * width + ox
    span = (n - 1) * width + length
    flat[start:start + span] += source[sx:sx + span]
    gap = width - length
    if gap and n > 1:
        spill = flat[start + length:start + length + (n - 1) * width].reshape(n - 1, width)
        spill[:, :gap] -= source[sx + length:sx + length + (n - 1) * width].reshape(
            n - 1, width)[:, :gap]


def _mark(diff, out, value):
    """Add ``value`` over the window ``out`` of a 2-D difference array."""
    rows, cols = out
    diff[rows.start, cols.start] += value
    diff[rows.start, cols.stop] -= value
    diff[rows.stop, cols.start] -= value
    diff[rows.stop, cols.stop] += value


def _integrate(diff):
    """The values a 2-D difference array describes (without its last row/column)."""
    return np.cumsum(np.cumsum(diff, axis=0), axis=1)[:-1, :-1]


def _bilinear(block, bad, fx, fy, ex, ey):
    """Interpolate stored rows at a fractional offset: ``(1 - f) * a + f * b`` per axis.

    ``block`` has ``ex`` extra columns and ``ey`` extra rows; the result is
    float32 without them, NaN wherever an interpolated pixel was ``bad``.
    """
    values = block.astype(np.float32)
    if bad is not None:
        values[bad] = np.nan
    if ex:
        step = values[:, 1:] - values[:, :-1]
        step *= fx
        step += values[:, :-1]
        values = step
    if ey:
        step = values[1:] - values[:-1]
        step *= fy
        step += values[:-1]
        values = step
    return values


def _finish(total, denominator, method, normalize, n_used):
    """Turn a tile's sum and coverage (or weight) into the stacked values (float32)."""
    if method == "sum":
        return total.astype(np.float32)
    if normalize == "count":
        return (total / max(n_used, 1)).astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = total / denominator
    return out.astype(np.float32)  # NaN where no frame covers the pixel


@dataclass(frozen=True)
class TilePlan:
    """Everything a tile task needs besides the frames: small, sent once per task."""

    n: int
    shape: tuple
    shifts: np.ndarray
    keep: np.ndarray
    subpixel: str
    grid: tuple
    method: str
    normalize: str
    n_total: int
    options: dict
    gains: np.ndarray | None = None
    biases: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def streaming(self):
        return self.method in STREAMING


def compute_tile(source, plan, a, b):
    """The output arrays of tile rows ``[a, b)``: ``stack``, ``coverage`` and ``sum`` or
    ``rejected``."""
    args = (source, plan.n, plan.shape, plan.shifts, plan.keep, plan.subpixel, plan.grid, a, b)
    if plan.streaming:
        total, coverage, weight = combine_tile(*args, gains=plan.gains, biases=plan.biases,
                                               weights=plan.weights)
        denominator = coverage if weight is None else weight
        return {"stack": _finish(total, denominator, plan.method, plan.normalize,
                                 plan.n_total),
                "coverage": coverage, "sum": total}
    from . import _reject

    values = gather_tile(*args, gains=plan.gains, biases=plan.biases)
    weights = None if plan.weights is None else plan.weights[plan.keep]
    result, kept, rejected = _reject.combine_block(values, plan.method, weights=weights,
                                                   **plan.options)
    return {"stack": result, "coverage": kept, "rejected": rejected}


def _tile_to_store(store, source, plan, tile, a, b, base):
    """Compute tile ``tile`` (rows ``[a, b)``) and write its chunk of every array.

    With ``base`` (an append), the tile's sums are added to the store's
    saved copy of the sums before the append, never to the live ones, so a
    rerun of this task (a lost worker, a resume) writes the same values.
    """
    import zarr

    arrays = compute_tile(source, plan, a, b)
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    if base:
        saved = group[_BOOK]
        arrays["sum"] += saved["sum"][a:b]
        arrays["coverage"] += saved["coverage"][a:b]
        arrays["stack"] = _finish(arrays["sum"], arrays["coverage"], plan.method,
                                  plan.normalize, plan.n_total)
    for name, values in arrays.items():
        group[name][a:b] = values
    group[_BOOK]["tiles_done"][tile] = 1
    return b - a


# --------------------------------------------------------------------------
# stack


def stack(frames, shifts=None, *, method="mean", store=None, subpixel="nearest",
          extent="reference", normalize="coverage", memory="512MB", overwrite=False,
          progress=False, resume=False, mode="write", kappa=None, centre=None, maxiters=None,
          nlow=None, nhigh=None, percentile=None, normalize_frames="none", weights="none",
          select=None):
    """Shift and combine frames tile by tile, with bounded memory.

    Parameters
    ----------
    frames : xarray.DataArray ``(frame, y, x)``, pattern, list of paths, or array
        Usually the cube from :func:`bigstack.open_frames`; tiles then read
        their rows straight from the files. A pattern or list is opened first.
    shifts : xarray.Dataset, array_like (N, 2) or None
        The Dataset from :func:`bigstack.find_shifts` (frames it flagged
        ``valid=False`` are left out, with a warning) or ``[x, y]`` shifts
        per frame. ``None`` stacks without shifting (the tutorial's
        ``stack_files``).
    method : str
        ``"mean"`` (alias ``"average"``) and ``"sum"`` stream: each tile adds
        the frames one by one, so memory does not depend on their number.
        The rejection methods ``"median"``, ``"sigma_clip"``,
        ``"winsorized"``, ``"minmax"`` and ``"percentile"`` need every
        frame's value of a pixel at once: each tile holds its rows of all
        frames, ``rows = (memory / 2 / threads - workspace) / (W * (4 N + 12))``
        for N frames of W pixels (see :mod:`bigstack._reject`), so tiles get
        lower as N grows, and a budget too small for one row is an error.
        Each output pixel sees the values of the frames covering it.
    kappa, centre, maxiters, nlow, nhigh, percentile
        Options of the rejection methods (``kappa=(low, high)`` for
        ``sigma_clip``/``winsorized``, ``centre`` and ``maxiters`` for
        ``sigma_clip``, ``nlow``/``nhigh`` for ``minmax``, ``percentile=(low,
        high)``); giving one a method does not use is an error.
    store : str, path or zarr store, optional
        Write the result to this zarr store, tile by tile, and return it
        opened lazily from there. An existing store is an error unless
        ``overwrite=True`` (or ``resume``/``mode="append"``). Without a store
        the result is a lazy dask-backed Dataset. fsspec URLs work.
    subpixel : {"nearest", "bilinear"}
        Whole-pixel shifts (exact copies) or fractional bilinear shifts.
    extent : {"reference", "intersection", "union"}
        The reference frame's grid, only pixels every frame covers, or
        every pixel any frame covers.
    normalize : {"coverage", "count"}
        For the mean: divide each pixel by the number (or weight) of frames
        covering it (NaN where none does), or by the number of frames with
        uncovered pixels counted as zero (the tutorial's numbers).
    normalize_frames : {"none", "additive", "multiplicative", "additive+scale"}
        Match each frame's background (and noise, for ``additive+scale``)
        to the reference frame's before combining; measured per frame on a
        subsample of rows (:mod:`bigstack._quality`).
    weights : {"none", "noise", "fwhm"} or array_like (N,)
        Per-frame weights of the mean: inverse noise variance, inverse
        FWHM squared (from ``shifts`` when it is find_shifts' Dataset), or
        given values.
    select : dict, str or float, optional
        Drop frames by quality before combining: thresholds such as
        ``{"fwhm": 4.0}``, or the worst fraction by FWHM (``"10%"``).
    memory : str or int
        Budget for the tiles in flight (e.g. ``"512MB"``).
    overwrite : bool
        Replace an existing ``store``.
    progress : bool
        Show a progress bar while tiles are computed (dask's, or
        dask.distributed's when a client is active).
    resume : bool
        Finish a run into ``store`` that was interrupted: only the tiles not
        yet written are computed. The frames, shifts and parameters must be
        those of the interrupted call, else it is an error.
    mode : {"write", "append"}
        ``"append"`` adds ``frames`` to the finished stack in ``store``
        (live stacking): ``shifts`` are relative to the same reference frame,
        the grid and tile plan are the store's, and the result equals
        stacking all frames at once (exactly, for integer frames with
        ``subpixel="nearest"``). Only for unweighted ``mean``/``sum``;
        ``method``, ``subpixel``, ``extent`` and ``normalize`` must match.

    Returns
    -------
    xarray.Dataset
        ``stack`` (y, x) float32 and ``coverage`` (y, x) int32 (the frames
        behind each pixel; for rejection methods the values kept), with
        ``y``/``x`` coordinates in the reference frame's pixel grid, and
        provenance in ``attrs`` (with the frame quality table when it was
        measured). Rejection methods add ``rejected`` (values rejected per
        pixel); a store of a streaming method also holds ``sum``.

    Examples
    --------
    >>> import numpy as np
    >>> cube = np.ones((3, 4, 5), np.float32)
    >>> out = stack(cube, [[0, 0], [1, 0], [0, 2]])
    >>> out["coverage"].values[0].tolist()
    [3, 3, 3, 3, 2]
    """
    import dask
    import dask.array as da
    import xarray as xr

    from . import _quality, _reject

    method = _reject._method(method)
    options = _reject._options(method, {"kappa": kappa, "centre": centre,
                                        "maxiters": maxiters, "nlow": nlow, "nhigh": nhigh,
                                        "percentile": percentile})
    options.pop("weights", None)  # given separately
    for name, value, allowed in (("subpixel", subpixel, SUBPIXEL), ("extent", extent, EXTENTS),
                                 ("normalize", normalize, NORMALIZE),
                                 ("normalize_frames", normalize_frames,
                                  _quality.NORMALISATIONS),
                                 ("mode", mode, ("write", "append"))):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    weighting = not (isinstance(weights, str) and weights == "none")
    if isinstance(weights, str) and weights not in _quality.WEIGHTS:
        raise ValueError(f"weights must be one of {_quality.WEIGHTS} or an array, "
                         f"got {weights!r}")
    if method not in STREAMING and normalize != "coverage":
        raise ValueError(f"normalize={normalize!r} applies to mean and sum; method={method!r} "
                         "always divides by the values kept")
    if method in ("sum", "median") and weighting:
        raise ValueError(f"weights cannot be used with method={method!r}")
    if store is None and (resume or mode == "append"):
        raise ValueError(f"{'resume=True' if resume else 'mode=append'} needs a store")
    if mode == "append" and (method not in STREAMING or weighting or select is not None
                             or normalize_frames != "none"):
        raise ValueError("mode='append' adds sums, so it works with unweighted 'mean' or "
                         "'sum' without normalize_frames or select")
    if store is not None:
        store = os.fspath(store) if isinstance(store, os.PathLike) else store
        if mode == "write" and not resume:
            _check_store(store, overwrite)
        elif overwrite:
            raise ValueError("overwrite=True would discard the store that "
                             f"{'resume' if resume else 'append'} builds on; drop one of them")

    from ._io import cube_source

    source, n, shape, coords = cube_source(frames, "stack")
    paths = [str(p) for p in coords["path"].values] if "path" in coords else None
    shift_values, keep, reasons = _as_shifts(shifts, n)
    if reasons:
        listed = "; ".join(f"frame {i}: {r}" for i, r in list(reasons.items())[:5])
        warnings.warn(f"leaving out {len(reasons)} frame(s) flagged by find_shifts ({listed})",
                      BigstackWarning, stacklevel=2)
    if not keep.any():
        raise BigstackError("no frame left to stack: every frame is flagged invalid")

    quality = gains = biases = weight_values = None
    if normalize_frames != "none" or select is not None or (
            weighting and isinstance(weights, str)):
        quality = frame_quality(source, n, shape, shifts, keep, progress)
        if select is not None:
            chosen, dropped = _quality.select_frames(quality, select, keep=keep)
            if dropped:
                listed = "; ".join(f"frame {i}: {r}" for i, r in list(dropped.items())[:5])
                warnings.warn(f"select={select!r} leaves out {len(dropped)} frame(s) "
                              f"({listed})", BigstackWarning, stacklevel=2)
            keep = keep & chosen
        if normalize_frames != "none":
            offset, scale = _quality.normalisation(quality, normalize_frames,
                                                   reference=_reference_index(
                                                       shift_values, keep), keep=keep)
            gains, biases = scale, -offset * scale
    if weighting:
        weight_values = _quality.weights_from(quality, weights, keep=keep) if isinstance(
            weights, str) else _reject.check_weights(weights, n)
        if not weight_values[keep].any():
            raise BigstackError("the kept frames' weights are all zero")

    parameters = {"method": method, "subpixel": subpixel, "extent": extent,
                  "normalize": normalize, "normalize_frames": normalize_frames,
                  "weights": weights if isinstance(weights, str) else "given",
                  "select": None if select is None else str(select),
                  **{k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()}}
    operation = _operation(mode, paths, shift_values, keep, shape, parameters)
    if weight_values is not None:
        operation["frame_weights"] = [float(w) for w in weight_values]
    if gains is not None:
        operation["frame_gains"] = [float(g) for g in gains]
        operation["frame_biases"] = [float(v) for v in biases]
    source_d = dask.delayed(source, traverse=False)

    def make_plan(grid, n_total):
        return TilePlan(n=n, shape=tuple(shape), shifts=shift_values, keep=keep,
                        subpixel=subpixel, grid=grid, method=method, normalize=normalize,
                        n_total=n_total, options=options, gains=gains, biases=biases,
                        weights=weight_values)

    def tile_rows(grid):
        rows, cols = grid[1] - grid[0], grid[3] - grid[2]
        if method in STREAMING:
            return plan_tiles(rows, cols, memory)
        return _gather_rows(rows, cols, memory, int(keep.sum()), method,
                            weight_values is not None)

    if store is None:
        grid = output_grid(shift_values[keep], shape, subpixel, extent)
        tile = tile_rows(grid)
        attrs = _provenance(operation, grid, tile, memory, quality)
        plan = make_plan(grid, int(keep.sum()))
        cols = grid[3] - grid[2]
        bounds = _bounds(grid[1] - grid[0], tile)
        parts = [dask.delayed(compute_tile, pure=True)(source_d, plan, a, b) for a, b in bounds]
        names = {"stack": np.float32, "coverage": np.int32}
        if method not in STREAMING:
            names["rejected"] = np.int32
        data = {name: (("y", "x"), da.concatenate([
            da.from_delayed(p[name], (b - a, cols), dtype)
            for p, (a, b) in zip(parts, bounds, strict=True)])) for name, dtype in names.items()}
        coords = {"y": np.arange(grid[0], grid[1]), "x": np.arange(grid[2], grid[3])}
        return xr.Dataset(data, coords=coords, attrs=attrs)

    if resume:
        attrs = _prepare_resume(store, operation)
    elif mode == "append":
        attrs = _prepare_append(store, operation)
    else:
        grid = output_grid(shift_values[keep], shape, subpixel, extent)
        attrs = _provenance(operation, grid, tile_rows(grid), memory, quality)
        _create_store(store, attrs, overwrite, streaming=method in STREAMING)
    grid = tuple(attrs["grid"][k] for k in ("y0", "y1", "x0", "x1"))
    tile = attrs["parameters"]["tile_rows"]
    bounds = _bounds(grid[1] - grid[0], tile)
    done = _tiles_done(store)
    base = attrs["pending"]["mode"] == "append"
    plan = make_plan(grid, attrs["pending"]["n_total"])
    task = dask.delayed(_tile_to_store, pure=False)
    writes = [task(store, source_d, plan, t, a, b, base)
              for t, (a, b) in enumerate(bounds) if not done[t]]
    _compute(writes, progress)
    _finish_store(store)
    return xr.open_zarr(store)


def _reference_index(shifts, keep):
    """The kept frame normalisation matches: the first unshifted one, else the first."""
    kept = np.flatnonzero(keep)
    zero = kept[np.all(shifts[kept] == 0, axis=1)]
    return int(zero[0] if zero.size else kept[0])


def _gather_rows(rows, cols, memory, n_kept, method, weighted, threads=None):
    """Rows per tile for a rejection method: every frame's rows of a tile at once."""
    from . import _reject

    per_thread, threads = _budget(memory, threads)
    fit = _reject.max_rows(per_thread, 1, n_kept, cols, method, weighted)
    if fit < 1:
        need = 2 * (_reject.workspace_bytes(method, n_kept, weighted)
                    + cols * (n_kept * _reject.bytes_per_value(method) + 12)) * threads
        raise BigstackError(
            f"memory={memory!r} is too small for method={method!r}: one row of {n_kept} "
            f"frames of {cols} pixels needs about {need / 2**20:.0f} MiB with {threads} "
            "threads; give more memory, or use method='mean'"
        )
    return _clamp_rows(fit, rows, threads)


def frame_quality(source, n, shape, shifts, keep, progress=False):
    """The per-frame quality table (background, noise, FWHM, ...), one task per kept frame.

    Each task reads a subsample of rows of its frame (see
    :mod:`bigstack._quality`); star positions, FWHM and flux come from
    ``shifts`` when it is find_shifts' Dataset.
    """
    import dask

    from . import _quality

    known = {}
    if hasattr(shifts, "data_vars"):
        for name in ("fwhm", "flux"):
            if name in shifts:
                known[name] = np.asarray(shifts[name].values, float)
        if "star" in shifts:
            known["star"] = np.asarray(shifts["star"].transpose(..., "axis").values, float)
    source_d = dask.delayed(source, traverse=False)
    task = dask.delayed(_quality_task, pure=True)
    kept = np.flatnonzero(keep)
    tasks = [task(source_d, int(i), tuple(shape),
                  *(known[k][i] if k in known else None for k in ("star", "fwhm", "flux")))
             for i in kept]
    records = _compute(tasks, progress)
    empty = dict.fromkeys(_quality.QUALITY_FIELDS, np.nan)
    table = [empty] * n
    for i, record in zip(kept, records, strict=True):
        table[i] = record
    return _quality.gather(table)


def _quality_task(source, i, shape, star, fwhm, flux):
    from . import _quality

    def read_rows(r0, r1):
        rows, scale, zero, blank, floating = source.raw(i, r0, r1, {})
        values = rows.astype(np.float32) * np.float32(scale) + np.float32(zero)
        if blank is not None:
            values[rows == blank] = np.nan
        return values

    star = None if star is None or not np.isfinite(star).all() else star
    return _quality.frame_quality(read_rows, shape[0], shape[1], star=star,
                                  fwhm=None if fwhm is None else float(fwhm),
                                  flux=None if flux is None else float(flux))


def _bounds(rows, tile):
    return [(a, min(a + tile, rows)) for a in range(0, rows, tile)]


def _compute(tasks, progress):
    """Run tasks on the active dask.distributed client if there is one, else locally."""
    import dask

    client = _active_client()
    if client is None:
        if progress:
            from dask.diagnostics import ProgressBar

            with ProgressBar():
                return dask.compute(*tasks)
        return dask.compute(*tasks)
    futures = client.compute(tasks)
    if progress:
        from distributed import progress as show_progress

        show_progress(futures)
    return client.gather(futures)


def _active_client():
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:
        return None


# --------------------------------------------------------------------------
# the store
#
# stack, coverage, sum (y, x) with one zarr chunk per tile, y and x; in the
# group "_bigstack", tiles_done (one chunk per tile, so tile tasks never share
# a chunk) and, during an append, the sums and coverage from before it.
# attrs["pending"] describes the operation under way until it is complete.

_BOOK = "_bigstack"


def _check_store(store, overwrite):
    if _store_exists(store) and not overwrite:
        raise StoreExistsError(
            f"{store}: output store exists already; pass overwrite=True "
            "(CLI: --overwrite) to replace it"
        )


def _store_exists(store):
    import zarr

    if isinstance(store, str) and "://" not in store:
        return os.path.exists(store)
    try:
        zarr.open_group(store, mode="r", use_consolidated=False)
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.GroupNotFoundError):
        return False
    return True


def _operation(mode, paths, shifts, keep, shape, parameters):
    return {
        "mode": mode,
        "inputs": list(paths) if paths is not None else [],
        "shifts": [[float(v) for v in row] for row in shifts],
        "frames_used": [int(i) for i in np.flatnonzero(keep)],
        "frame_shape": [int(v) for v in shape],
        "parameters": parameters,
    }


def _provenance(operation, grid, tile, memory, quality=None):
    from . import __version__

    n_used = len(operation["frames_used"])
    extra = {}
    if quality is not None:
        extra["quality"] = {k: [None if not np.isfinite(v) else float(v) for v in values]
                            for k, values in quality.items()}
    return extra | {
        "bigstack_version": __version__,
        "created": _now(),
        "complete": False,
        "inputs": operation["inputs"],
        "shifts": operation["shifts"],
        "frames_used": operation["frames_used"],
        "n_frames": n_used,
        "frame_shape": operation["frame_shape"],
        "grid": {"y0": int(grid[0]), "y1": int(grid[1]), "x0": int(grid[2]), "x1": int(grid[3])},
        "parameters": dict(operation["parameters"], memory=str(memory), tile_rows=int(tile)),
        "history": [],
        "pending": dict(operation, n_total=n_used),
    }


def _now():
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _create_store(store, attrs, overwrite, streaming=True):
    import zarr

    grid = attrs["grid"]
    rows, cols = grid["y1"] - grid["y0"], grid["x1"] - grid["x0"]
    tile = attrs["parameters"]["tile_rows"]
    group = zarr.open_group(store, mode="w" if overwrite else "w-", zarr_format=3,
                            attributes=attrs)
    _create_arrays(group, rows, cols, tile,
                   ("stack", "coverage", "sum" if streaming else "rejected"))
    for name, values in (("y", np.arange(grid["y0"], grid["y1"])),
                         ("x", np.arange(grid["x0"], grid["x1"]))):
        array = group.create_array(name, shape=values.shape, dtype="int64",
                                   dimension_names=(name,))
        array[:] = values
    book = group.create_group(_BOOK)
    book.create_array("tiles_done", shape=(-(-rows // tile),), chunks=(1,), dtype="uint8",
                      fill_value=0)


def _create_arrays(group, rows, cols, tile, names=("stack", "coverage", "sum")):
    specs = {"stack": ("float32", np.nan, None), "coverage": ("int32", 0, "auto"),
             "sum": ("float64", 0.0, None), "rejected": ("int32", 0, "auto")}
    for name in names:
        dtype, fill, compressors = specs[name]
        group.create_array(name, shape=(rows, cols), chunks=(tile, cols), dtype=dtype,
                           fill_value=fill, dimension_names=("y", "x"),
                           compressors=compressors)


def _tiles_done(store):
    import zarr

    return zarr.open_group(store, mode="r", use_consolidated=False)[_BOOK]["tiles_done"][:]


def _open_attrs(store, what):
    import zarr

    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise BigstackError(f"{store}: no store to {what}") from err
    attrs = group.attrs.asdict()
    if "pending" not in attrs or _BOOK not in group:
        raise BigstackError(f"{store}: not a bigstack stack store; cannot {what} it")
    return attrs


def _prepare_resume(store, operation):
    attrs = _open_attrs(store, "resume")
    pending = attrs["pending"]
    if attrs.get("complete") or pending is None:
        raise BigstackError(f"{store}: the stack is complete; there is nothing to resume")
    stored = {k: pending[k] for k in operation}
    if stored != operation:
        diff = [k for k in operation if stored[k] != operation[k]]
        raise BigstackError(
            f"{store}: was being written with other {', '.join(diff)} than this call's; "
            "resume with the same frames, shifts and parameters, or start a new store"
        )
    return attrs


def _prepare_append(store, operation):
    import zarr

    attrs = _open_attrs(store, "append to")
    if not attrs.get("complete"):
        pending = attrs.get("pending") or {}
        raise BigstackError(
            f"{store}: an earlier {pending.get('mode', 'run')} into this store did not finish; "
            "finish it first with resume=True (CLI: --resume)"
        )
    stored_parameters = {k: attrs["parameters"][k] for k in operation["parameters"]}
    if stored_parameters != operation["parameters"]:
        diff = ", ".join(f"{k}={attrs['parameters'][k]!r} (not {v!r})"
                         for k, v in operation["parameters"].items() if stored_parameters[k] != v)
        raise BigstackError(f"{store}: was stacked with {diff}; append with the same settings")
    if operation["frame_shape"] != attrs["frame_shape"]:
        raise BigstackError(f"{store}: holds frames of shape {tuple(attrs['frame_shape'])} "
                            f"(y, x); the new frames are {tuple(operation['frame_shape'])}")
    offset = len(attrs["inputs"])
    n_total = attrs["n_frames"] + len(operation["frames_used"])
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    book = group[_BOOK]
    grid = attrs["grid"]
    rows, cols = grid["y1"] - grid["y0"], grid["x1"] - grid["x0"]
    tile = attrs["parameters"]["tile_rows"]
    # keep the sums from before the append, so tile tasks can be rerun safely
    for name in ("sum", "coverage"):
        if name in book:
            del book[name]
    _create_arrays(book, rows, cols, tile, names=("sum", "coverage"))
    for a, b in _bounds(rows, tile):
        book["sum"][a:b] = group["sum"][a:b]
        book["coverage"][a:b] = group["coverage"][a:b]
    book["tiles_done"][:] = 0
    attrs.update(
        complete=False,
        inputs=attrs["inputs"] + operation["inputs"],
        shifts=attrs["shifts"] + operation["shifts"],
        frames_used=attrs["frames_used"] + [offset + i for i in operation["frames_used"]],
        n_frames=n_total,
        pending=dict(operation, n_total=n_total),
    )
    group.attrs.update(attrs)
    return attrs


def _finish_store(store):
    import zarr

    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    attrs = group.attrs.asdict()
    pending = attrs["pending"]
    history = attrs.get("history", []) + [
        {"mode": pending["mode"], "frames": len(pending["frames_used"]), "finished": _now()}]
    book = group[_BOOK]
    for name in ("sum", "coverage"):
        if name in book:
            del book[name]
    group.attrs.update({"complete": True, "pending": None, "history": history})
    with warnings.catch_warnings():
        # zarr notes that consolidated metadata is an extension to format 3;
        # xarray reads it, and without it open_zarr warns instead
        warnings.filterwarnings("ignore", "Consolidated metadata", UserWarning)
        zarr.consolidate_metadata(store)
