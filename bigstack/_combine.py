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

import os
from dataclasses import dataclass, replace

import numpy as np

from ._errors import BigstackError

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


def parse_memory(memory):
    """A memory budget (``"512MB"``, ``"2GiB"``, bytes) as bytes; ValueError naming it."""
    from dask.utils import parse_bytes

    try:
        value = parse_bytes(memory) if isinstance(memory, str) else int(memory)
    except (ValueError, TypeError) as err:
        raise ValueError(f"memory={memory!r} is not a size such as '512MB'") from err
    if value <= 0:
        raise ValueError(f"memory={memory!r} must be positive")
    return value


def format_bytes(n):
    """``n`` bytes in the largest unit that keeps a value of at least 1 (``"1.5 MiB"``)."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _budget(memory, threads):
    """Bytes per thread the tiles may use (half the budget: the rest is the process
    itself, Python, numpy, dask and zarr, and the write buffers) and the thread count."""
    threads = threads or os.cpu_count() or 1
    return parse_memory(memory) // 2 // threads, threads


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
            f"{format_bytes(per_row)} per thread, so give at least "
            f"{format_bytes(2 * per_row * threads)} with {threads} threads"
        )
    return _clamp_rows(per_thread // per_row, out_rows, threads, max_rows)


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
            f"frames of {cols} pixels needs about {format_bytes(need)} with {threads} "
            "threads; give more memory, or use method='mean'"
        )
    return _clamp_rows(fit, rows, threads)


def tile_rows(grid, memory, combine, n_kept, weighted):
    """Rows per output tile for ``combine`` (a :class:`~bigstack._reject.Rejection`)."""
    rows, cols = grid[1] - grid[0], grid[3] - grid[2]
    if combine.streaming:
        return plan_tiles(rows, cols, memory)
    return _gather_rows(rows, cols, memory, n_kept, combine.method, weighted)


def tile_bounds(rows, tile):
    """``[(a, b), ...]``: the row ranges of the tiles of a grid ``rows`` high."""
    return [(a, min(a + tile, rows)) for a in range(0, rows, tile)]


# --------------------------------------------------------------------------
# the tile plan


@dataclass(frozen=True)
class TilePlan:
    """Everything a tile task needs besides the frames: small, sent once per task.

    ``shifts`` (N, 2) ``[x, y]`` and ``keep`` (N,) cover every input frame;
    ``grid`` is ``(y0, y1, x0, x1)`` on the reference grid; ``combine`` is
    the :class:`~bigstack._reject.Rejection` (method and options);
    ``n_total`` the frames the mean divides by with ``normalize="count"``;
    ``gains``, ``biases`` and ``weights`` the per-frame normalisation and
    weights (None when not used).
    """

    shape: tuple
    shifts: np.ndarray
    keep: np.ndarray
    subpixel: str
    grid: tuple
    combine: object
    normalize: str = "coverage"
    n_total: int = 0
    gains: np.ndarray | None = None
    biases: np.ndarray | None = None
    weights: np.ndarray | None = None

    @property
    def n(self):
        return len(self.keep)

    @property
    def streaming(self):
        return self.combine.streaming

    def with_factors(self, factors):
        """This plan with per-frame values measured later (see ``stack``'s lazy path)."""
        if factors is None:
            return self
        return replace(self, **factors)


# --------------------------------------------------------------------------
# the tile kernel


class _Window:
    """One frame's part of a tile: what to add where (see :func:`_frame_windows`)."""

    __slots__ = ("k", "i", "rows", "block", "bad", "scale", "zero", "out", "flat")

    def __init__(self, **fields):
        for name, value in fields.items():
            setattr(self, name, value)


def _frame_windows(source, plan, a, b):
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
    ny, nx = plan.shape
    y0, _, x0, x1 = plan.grid
    width = x1 - x0
    buffers = {}
    shifts, subpixel = plan.shifts, plan.subpixel
    whole = _integer_shifts(shifts, subpixel)
    for k, i in enumerate(np.flatnonzero(plan.keep)):
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


def combine_tile(source, plan, a, b):
    """Sum and coverage of output rows ``[a, b)`` (grid-relative) over the kept frames.

    Frames are added in index order into a float32 sum of stored values,
    flushed into a float64 sum every ``_FLUSH`` frames: 256 16-bit values
    add up exactly in float32, so sums of integer frames are exact, and
    equal whichever way the frames are grouped (resume, append);
    what is the same for a whole frame window (the count of frames, BZERO)
    is recorded at the window's four corners of a 2-D difference array and
    summed up once at the end, so each frame costs one read and one add.
    NaN (or FITS BLANK) pixels are left out of the sum and the coverage.

    Frame ``i`` may be normalised to ``value * plan.gains[i] + plan.biases[i]``
    and weighted by ``plan.weights[i]``; the sum is then the weighted sum.

    Returns ``(sum float64 (b - a, W), coverage int32 (b - a, W), weight)``,
    ``weight`` the sum of the covering frames' weights (None unweighted).
    """
    _, _, x0, x1 = plan.grid
    gains, biases, weights = plan.gains, plan.biases, plan.weights
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
    for w in _frame_windows(source, plan, a, b):
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


def gather_tile(source, plan, a, b):
    """The kept frames' shifted values for output rows ``[a, b)``, one plane each.

    Returns float32 ``(kept frames, b - a, W)``, NaN where a frame does not
    cover a pixel (or the pixel is NaN/BLANK), normalised like
    :func:`combine_tile`. This is what rejection methods need: every
    frame's value of a pixel at once, so its memory grows with the number
    of frames and the tile height shrinks to fit.
    """
    _, _, x0, x1 = plan.grid
    gains, biases = plan.gains, plan.biases
    values = np.full((int(np.count_nonzero(plan.keep)), b - a, x1 - x0), np.nan, np.float32)
    for w in _frame_windows(source, plan, a, b):
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


def finish_stack(plan):
    """``f(sum, coverage) -> stack`` for the plan's method (the append path's last step)."""
    return lambda total, coverage: _finish(total, coverage, plan.combine.method,
                                           plan.normalize, plan.n_total)


def compute_tile(source, plan, a, b, factors=None):
    """The output arrays of tile rows ``[a, b)``: ``stack``, ``coverage`` and ``sum`` or
    ``rejected``. ``factors`` (keep, gains, biases, weights, n_total) complete a plan
    whose per-frame values were measured in the same graph."""
    plan = plan.with_factors(factors)
    if plan.streaming:
        total, coverage, weight = combine_tile(source, plan, a, b)
        denominator = coverage if weight is None else weight
        return {"stack": _finish(total, denominator, plan.combine.method, plan.normalize,
                                 plan.n_total),
                "coverage": coverage, "sum": total}
    from . import _reject

    values = gather_tile(source, plan, a, b)
    weights = None if plan.weights is None else plan.weights[plan.keep]
    result, kept, rejected = _reject.combine_block(values, plan.combine.method,
                                                   weights=weights, **plan.combine.options)
    return {"stack": result, "coverage": kept, "rejected": rejected}
