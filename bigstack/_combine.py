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
import threading
from dataclasses import dataclass, replace

import numpy as np

from ._errors import BigstackError

STREAMING = ("mean", "sum")  # methods the streaming kernel computes
SUBPIXEL = ("nearest", "bilinear", "lanczos3", "lanczos4")
EXTENTS = ("reference", "intersection", "union")
NORMALIZE = ("coverage", "count")

# frames added in float32 before flushing to float64: 256 * 2**15 < 2**24
_FLUSH = 256

# bytes of working memory per output pixel of a tile in flight: float32 and
# float64 sums, the int32 and float64 difference arrays, the stored source rows
# and bilinear's two float32 temporaries, the float32 result
_BYTES_PER_PIXEL = 4 + 8 + 4 + 8 + 4 + 8 + 4

#: frames per call of the grouped add (calibrated or plain), and the bytes per output pixel
#: their stored rows may take (counted in the tile plan: 8 16-bit frames)
_GROUP = 8
_GROUP_BYTES = 16
#: add plain (uncalibrated) whole-pixel copies in groups too (False: one numpy add per
#: frame over the whole tile; benchmarks/nearest_cost.py --both compares the two)
_GROUP_PLAIN = True
#: at most this many bytes of stored rows in a plain group, so that they stay in the shared
#: cache between the read and the add (400 frames of 2048 x 2048, tiles of 512 rows: groups
#: of 4 16-bit frames, 8 MiB, added in 0.9x the time of groups of 8, 16 MiB)
_GROUP_CACHE = 8 * 2**20
#: bytes per output pixel of a calibrated tile's base, bias + k * dark over the frames' rows
#: (float32, the tile's rows and the frames' shifts: up to twice the tile), computed once a
#: tile so that the fused kernel subtracts one master row, not two (see _add_fused; a tile of
#: 400 frames of 2048 x 2048 in 1.13-1.16x the CPU of the plain grouped add, 1.28x before)
_BASE_BYTES = 8


# --------------------------------------------------------------------------
# geometry


def _coverage_span(shifts, subpixel, size, axis):
    """Output interval ``[lo, hi)`` each frame covers along one axis."""
    d = shifts[:, axis]
    if subpixel == "nearest":
        whole = np.floor(d + 0.5)
        return -whole, size - whole
    # interpolations: x + d must lie in [0, size - 1]; exact integers need no neighbour
    lo = np.ceil(-d)
    hi = np.floor(size - 1 - d) + 1
    return lo, hi


def translations(transforms):
    """(N,) bool: the frames whose transform is a pure translation (``A`` exactly ``I``)."""
    return np.all(transforms[:, :, :2] == np.eye(2), axis=(1, 2))


def as_transforms(shifts):
    """(N, 2, 3) translations ``[I | shift]`` from (N, 2) ``[x, y]`` shifts."""
    out = np.zeros((len(shifts), 2, 3))
    out[:, 0, 0] = out[:, 1, 1] = 1.0
    out[:, :, 2] = shifts
    return out


def _footprint(transform, shape, subpixel):
    """The output-grid polygon (4 x 2, ``[x, y]``, convex) a frame covers.

    The frame's coverage domain (pixel centres ``[-0.5, n - 0.5)`` for
    nearest, ``[0, n - 1]`` for the interpolations that need every tap)
    mapped back through the inverse of ``[x_i, y_i] = A @ [x, y] + t``.
    """
    ny, nx = shape
    lo, hx, hy = (-0.5, nx - 0.5, ny - 0.5) if subpixel == "nearest" else (0.0, nx - 1, ny - 1)
    corners = np.array([[lo, lo], [hx, lo], [hx, hy], [lo, hy]])
    inverse = np.linalg.inv(transform[:, :2])
    return (corners - transform[:, 2]) @ inverse.T


def _clip_polygon(polygon, edge_a, edge_b):
    """The part of a convex polygon on the left of the directed edge a -> b."""
    out = []
    n = len(polygon)
    side = lambda p: (edge_b[0] - edge_a[0]) * (p[1] - edge_a[1]) - \
        (edge_b[1] - edge_a[1]) * (p[0] - edge_a[0])  # noqa: E731
    for k in range(n):
        p, q = polygon[k], polygon[(k + 1) % n]
        sp, sq = side(p), side(q)
        if sp >= 0:
            out.append(p)
        if (sp >= 0) != (sq >= 0):
            out.append(p + (q - p) * (sp / (sp - sq)))
    return np.array(out) if out else np.empty((0, 2))


def _intersection(polygons):
    """The convex polygon all ``polygons`` share (counter-clockwise vertices)."""
    region = polygons[0]
    for polygon in polygons[1:]:
        if len(region) == 0:
            break
        if _area(polygon) < 0:
            polygon = polygon[::-1]
        if _area(region) < 0:
            region = region[::-1]
        for k in range(len(polygon)):
            region = _clip_polygon(region, polygon[k], polygon[(k + 1) % len(polygon)])
            if len(region) == 0:
                break
    return region


def _area(polygon):
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _x_extent(polygon, y):
    """``(x_left, x_right)`` of a convex polygon's cross-section at height ``y``."""
    xs = []
    n = len(polygon)
    for k in range(n):
        (xa, ya), (xb, yb) = polygon[k], polygon[(k + 1) % n]
        if min(ya, yb) <= y <= max(ya, yb):
            xs.append(xa if ya == yb else xa + (xb - xa) * (y - ya) / (yb - ya))
    return (min(xs), max(xs)) if xs else (np.inf, -np.inf)


def _inscribed_box(polygon, eps=1e-9):
    """A large axis-aligned box of whole pixels inside a convex polygon: ``(y0, y1, x0, x1)``.

    For a convex polygon the left edge is a convex function of ``y`` and the
    right edge a concave one, so the columns inside over rows ``[ya, yb]``
    are those inside at both ``ya`` and ``yb``; the largest such box over a
    grid of candidate rows (every row for small grids) is taken.
    """
    if len(polygon) < 3:
        return None
    top, bottom = int(np.ceil(polygon[:, 1].min() - eps)), int(np.floor(polygon[:, 1].max() + eps))
    if bottom < top:
        return None
    rows = np.unique(np.linspace(top, bottom, min(bottom - top + 1, 96)).round().astype(int))
    extents = [_x_extent(polygon, y) for y in rows]
    best, box = -1, None
    for i, ya in enumerate(rows):
        for j in range(i, len(rows)):
            left = int(np.ceil(max(extents[i][0], extents[j][0]) - eps))
            right = int(np.floor(min(extents[i][1], extents[j][1]) + eps))
            area = (right - left + 1) * (rows[j] - ya + 1)
            if right >= left and area > best:
                best, box = area, (int(ya), int(rows[j]) + 1, left, right + 1)
    return box


def output_grid(shifts, shape, subpixel="nearest", extent="reference", transforms=None):
    """Return ``(y0, y1, x0, x1)`` of the output grid in reference-frame pixels.

    ``transforms`` (N, 2, 3), when given, are the kept frames' transforms
    (``shifts`` their translations); ``"union"`` is then the smallest box
    holding every pixel whose centre some frame covers, ``"intersection"``
    a large box of pixels every frame covers (the largest for translations).
    """
    ny, nx = shape
    if extent == "reference":
        return 0, ny, 0, nx
    if transforms is not None and not translations(transforms).all():
        return _transformed_grid(transforms, shape, subpixel, extent)
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


def _transformed_grid(transforms, shape, subpixel, extent, eps=1e-9):
    polygons = [_footprint(t, shape, subpixel) for t in transforms]
    if extent == "union":
        points = np.concatenate(polygons)
        box = (int(np.ceil(points[:, 1].min() - eps)), int(np.floor(points[:, 1].max() + eps)) + 1,
               int(np.ceil(points[:, 0].min() - eps)), int(np.floor(points[:, 0].max() + eps)) + 1)
    else:
        box = _inscribed_box(_intersection(polygons))
    if box is None or box[1] <= box[0] or box[3] <= box[2]:
        raise BigstackError(
            f"extent={extent!r} is empty: the frames' transforms leave no pixel that every frame "
            "covers; use extent='reference' or 'union'")
    return box


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


# the share of the memory budget a rejection method's tiles may hold (each holds its rows
# of every frame, so they are the largest allocations); the rest is the process itself:
# Python with numpy, dask, xarray, zarr and astropy hold about 150 MiB, and the reads,
# outputs and writes in flight about 80 more (with half the budget for the blocks, a median
# of 400 frames of 2048 x 2048 in 512 MB peaked at 481-502 MiB; with 40%, at 431 MiB)
_GATHER_SHARE = 0.4


def _budget(memory, threads, share=0.5):
    """Bytes per thread the tiles may use (``share`` of the budget, by default half: the
    rest is the process itself, Python, numpy, dask and zarr, and the write buffers) and
    the thread count."""
    threads = threads or os.cpu_count() or 1
    return int(parse_memory(memory) * share) // threads, threads


def _clamp_rows(fit, out_rows, threads, max_rows=None):
    """Tile rows: what fits, but enough tiles to keep every thread busy."""
    for_threads = -(-out_rows // (2 * threads))
    return int(max(1, min(fit, for_threads, out_rows, max_rows or out_rows)))


# bytes per source pixel a warped frame's rows take while a tile adds them:
# the rows as read (up to 4 bytes) and the kernel's float32 copy
_SOURCE_BYTES = 4 + 4


def _source_rows(reach, slant, stretch, out_cols):
    """``(fixed, per_row)``: source rows a warped frame needs for a tile of ``h`` output rows
    are about ``fixed + per_row * h`` (``slant = max |A[1, 0]|``, ``stretch = max |A[1, 1]|``)."""
    return slant * out_cols + 2 * reach + 2, stretch


def plan_tiles(out_rows, out_cols, memory, threads=None, max_rows=512, warp=None,
               fused=False, base=False):
    """Rows per tile from a memory budget: tiles in flight must fit in ``memory``.

    ``warp`` is ``(reach, slant, stretch, frame_cols)`` when some frames are
    warped: their source window (a slanted band for a rotation) counts too,
    so a rotated night gets lower tiles within the same budget. ``fused``
    (see :func:`groups_copies`) counts the stored rows of a group of frames
    that :class:`_Group` adds (or :func:`_add_fused` calibrates and adds) at
    once, and with ``base`` (a calibrated source) the rows of bias + k * dark
    the calibrated group subtracts (``_BASE_BYTES``).
    """
    per_thread, threads = _budget(memory, threads)
    per_row = out_cols * (_BYTES_PER_PIXEL + (
        _GROUP_BYTES + (_BASE_BYTES if base else 0) if fused else 0))
    if fused and per_thread < per_row:
        # a budget too small for a group's buffer: the group shrinks to one frame
        # (its size follows the tile's area), which costs no more than a plain add
        per_row = out_cols * _BYTES_PER_PIXEL
    fixed = 0
    if warp is not None:
        reach, slant, stretch, frame_cols = warp
        window, rows_per_row = _source_rows(reach, slant, stretch, out_cols)
        fixed = int(window * frame_cols * _SOURCE_BYTES)
        per_row += int(np.ceil(rows_per_row * frame_cols * _SOURCE_BYTES))
    if per_thread < fixed + per_row:
        what = f"one output row of {out_cols} pixels"
        if fixed:
            what += f" and a turned frame's source window of {int(window)} rows"
        raise BigstackError(
            f"memory={memory!r} is too small: {what} need about "
            f"{format_bytes(fixed + per_row)} per thread, so give at least "
            f"{format_bytes(2 * (fixed + per_row) * threads)} with {threads} threads"
        )
    return _clamp_rows((per_thread - fixed) // per_row, out_rows, threads, max_rows)


def _gather_rows(rows, cols, memory, n_kept, method, weighted, threads=None, warp=None,
                 value_bytes=None):
    """Rows per tile for a rejection method: every frame's rows of a tile at once
    (``value_bytes`` a value of the block, per output pixel: see :func:`stored_gather`)."""
    from . import _reject

    per_thread, threads = _budget(memory, threads, _GATHER_SHARE)
    if warp is not None:  # one warped frame's source rows at a time, besides the block
        reach, slant, stretch, frame_cols = warp
        fixed, rows_per_row = _source_rows(reach, slant, stretch, cols)
        per_thread -= int((fixed + rows_per_row * min(rows, 512)) * frame_cols * _SOURCE_BYTES)
    fit = _reject.max_rows(per_thread, 1, n_kept, cols, method, weighted, value_bytes)
    if fit < 1:
        value = value_bytes or _reject.bytes_per_value(method)
        need = (_reject.workspace_bytes(method, n_kept, weighted)
                + cols * (n_kept * value + 12)) * threads / _GATHER_SHARE
        raise BigstackError(
            f"memory={memory!r} is too small for method={method!r}: one row of {n_kept} "
            f"frames of {cols} pixels needs about {format_bytes(need)} with {threads} "
            "threads; give more memory, or use method='mean'"
        )
    return _clamp_rows(fit, rows, threads)


def tile_rows(grid, memory, combine, n_kept, weighted, warp=None, fused=False, base=False,
              value_bytes=None):
    """Rows per output tile for ``combine`` (a :class:`~bigstack._reject.Rejection`);
    ``warp``, ``fused`` and ``base`` as for :func:`plan_tiles`, ``value_bytes`` for
    :func:`_gather_rows`."""
    rows, cols = grid[1] - grid[0], grid[3] - grid[2]
    if combine.streaming:
        return plan_tiles(rows, cols, memory, warp=warp, fused=fused, base=base)
    return _gather_rows(rows, cols, memory, n_kept, combine.method, weighted, warp=warp,
                        value_bytes=value_bytes)


def _stored_frames(source, plan):
    """The readers (file sources) of the plan's kept frames, in order."""
    return [source.reader.sources[int(source.files[i])] for i in np.flatnonzero(plan.keep)]


def _stored_sources(source, plan):
    """:func:`_stored_frames` when every one is a whole-pixel copy of 8- or 16-bit
    integers of one type and row length; else None."""
    from . import _kernels
    from ._io import FileRows, FitsSource

    if not isinstance(source, FileRows) or plan.warped.any():
        return None
    frames = _stored_frames(source, plan)
    if not frames or not _kernels.stores_rejection(frames[0].dtype):
        return None
    first = frames[0]
    for frame in frames:
        # the frames FileRows.raw reads as stored rows (FITS, mono and Bayer SER)
        if not ((isinstance(frame, FitsSource) or getattr(frame, "raw_rows", False))
                and getattr(frame, "planes", None) is None
                and np.dtype(frame.dtype) == np.dtype(first.dtype)
                and tuple(frame.shape) == tuple(first.shape)):
            return None
    return frames


def stored_gather(source, plan):
    """Bytes a rejection block's value takes per output pixel when the block keeps the
    frames' stored rows (:func:`bigstack._kernels.reject_stored`), or None.

    A block of 16-bit integers is half the size of its float32 values, so
    tiles are twice as tall (half the reads and writes to schedule), and no
    converted copy is written and read again: a median of 400 frames of
    2048 x 2048 went from 3.5-3.8 s to 2.5-2.7 s on 2 cores
    (``benchmarks/reject_cost.py``). It needs every kept frame to be a
    whole-pixel copy read straight from a file of 8- or 16-bit integers, all
    of one type and row length (FITS, and formats read the same way). The
    value is per output pixel: rows are read whole, so a grid narrower than
    the frames counts their full width.
    """
    from . import _kernels

    if plan.combine.method not in _kernels.REJECTIONS:  # mean and sum stream
        return None
    frames = _stored_sources(source, plan)
    if frames is None:
        return None
    width = plan.grid[3] - plan.grid[2]
    return np.dtype(frames[0].dtype).itemsize * max(frames[0].shape[1], width) / width


def warp_footprint(transforms, keep, subpixel, frame_shape):
    """The ``warp`` argument of :func:`plan_tiles` for these frames, or None if none is
    warped (the largest source window over the kept warped frames)."""
    warped = keep & _warped(transforms, subpixel)
    if not warped.any():
        return None
    from ._kernels import _kind, _reach

    a = np.abs(transforms[warped, 1, :2])
    reach = max(_reach(_kind(subpixel)))
    return (int(reach), float(a[:, 0].max()), float(a[:, 1].max()), int(frame_shape[1]))


def _warped(transforms, subpixel):
    """(N,) bool: frames the warp kernel adds (the others are whole-pixel copies)."""
    moving = ~translations(transforms)
    if subpixel == "nearest":
        return moving
    shifts = transforms[:, :, 2]
    return moving | np.any(shifts != np.floor(shifts), axis=1)


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
    transforms: np.ndarray | None = None  # (N, 2, 3); None: the translations ``shifts``
    stored: bool = False  # a rejection block kept as stored (:func:`stored_gather`)

    @property
    def n(self):
        return len(self.keep)

    @property
    def matrices(self):
        """(N, 2, 3) transforms ``[A | t]`` of every frame."""
        return as_transforms(self.shifts) if self.transforms is None else self.transforms

    @property
    def warped(self):
        """(N,) bool: the frames the warp kernel adds (the others are whole-pixel copies)."""
        if self.transforms is None and self.subpixel == "nearest":
            return np.zeros(len(self.keep), bool)
        return _warped(self.matrices, self.subpixel)

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

    __slots__ = ("k", "i", "rows", "block", "bad", "scale", "zero", "out", "flat", "warp",
                 "r0", "blank", "fused")

    def __init__(self, **fields):
        self.warp = False
        self.flat = self.bad = self.block = self.out = self.r0 = self.blank = None
        self.fused = None
        for name, value in fields.items():
            setattr(self, name, value)

    def plane(self, c):
        """Colour ``c`` of a window whose rows are ``(colour, rows, W)``."""
        bad = None
        if self.bad is not None and self.bad[c].any():
            bad = self.bad[c]
        return _Window(k=self.k, i=self.i, rows=self.rows[c], r0=self.r0, blank=self.blank,
                       scale=self.scale, zero=self.zero, warp=self.warp, out=self.out,
                       block=None if self.block is None else self.block[c], bad=bad)


def _frame_windows(source, plan, a, b, fused=False):
    """Yield, frame by frame in index order, the window each kept frame adds to rows ``[a, b)``.

    A frame that is a whole-pixel copy (a translation with nearest
    interpolation or an integer shift): output rows ``r`` (absolute) take
    source rows ``r + iy``, clipped to the frame; only those rows are read.
    The window's ``block`` holds stored values (scaled by ``scale`` and
    offset by ``zero`` to get physical values); ``bad`` marks NaN or BLANK
    pixels (None when there are none); ``out`` is its place in the tile;
    ``flat`` is set when ``block`` can be added with :func:`_add_rows_flat`.

    Any other frame (a sub-pixel shift with an interpolation, a rotation, a
    flip, a scale change) gets ``warp=True``: ``rows`` are the stored frame
    rows from ``r0`` that hold the tile's footprint in the frame (slanted for
    a rotation), for :func:`bigstack._kernels.warp_accumulate`.

    With ``fused``, a whole-pixel copy is yielded unread, with ``fused =
    (first frame row, first frame column)``: the caller reads it into a
    group of frames and adds the group in one pass (:class:`_Group`; a
    calibrated source, one with ``stored``, calibrates it on the way:
    :func:`_add_fused`).

    ``rows`` is a reused buffer: use a window before asking for the next.
    """
    ny, nx = plan.shape
    y0, _, x0, x1 = plan.grid
    width = x1 - x0
    buffers = {}
    shifts, matrices, warped = plan.shifts, plan.matrices, plan.warped
    if warped.any():  # numba's import is only paid by nights that need the kernels
        from . import _kernels
    whole = np.floor(shifts + 0.5).astype(np.int64)
    for k, i in enumerate(np.flatnonzero(plan.keep)):
        if warped[i]:
            r0, r1, _, _ = _kernels.source_window(matrices[i, :, :2], matrices[i, :, 2],
                                                  (ny, nx), (y0 + a, y0 + b), (x0, x1),
                                                  plan.subpixel)
            if r1 <= r0:
                continue
            rows, scale, zero, blank, _ = source.raw(i, r0, r1, buffers)
            yield _Window(k=k, i=i, rows=rows, r0=r0, scale=scale, zero=zero, blank=blank,
                          warp=True)
            continue
        ix, iy = int(whole[i, 0]), int(whole[i, 1])
        r_lo = max(y0 + a, -iy)
        r_hi = min(y0 + b, ny - iy)
        c_lo = max(x0, -ix)
        c_hi = min(x1, nx - ix)
        if r_hi <= r_lo or c_hi <= c_lo:
            continue
        oy, ox = r_lo - y0 - a, c_lo - x0
        if fused:
            yield _Window(k=k, i=i, fused=(r_lo + iy, c_lo + ix),
                          out=(slice(oy, oy + r_hi - r_lo), slice(ox, ox + c_hi - c_lo)))
            continue
        rows, scale, zero, blank, floating = source.raw(i, r_lo + iy, r_hi + iy, buffers)
        block = rows[..., c_lo + ix:c_hi + ix]  # (colour,) rows, columns
        bad = block == blank if blank is not None else (
            ~np.isfinite(block) if floating else None)
        if bad is not None and not bad.any():
            bad = None
        flat = None
        if not floating and rows.ndim == 2 and rows.shape[1] == width:
            flat = (oy, ox, c_lo + ix, c_hi - c_lo)
        yield _Window(k=k, i=i, rows=rows, block=block, bad=bad, scale=scale, zero=zero,
                      out=(slice(oy, oy + r_hi - r_lo), slice(ox, ox + c_hi - c_lo)),
                      flat=flat)


def combine_tile(source, plan, a, b):
    """Sum and coverage of output rows ``[a, b)`` (grid-relative) over the kept frames.

    Frames are added in index order into a float32 sum, flushed into a
    float64 sum every ``_FLUSH`` frames: 256 16-bit values add up exactly in
    float32, so sums of integer frames are exact, and equal whichever way
    the frames are grouped (resume, append). A whole-pixel copy adds its
    stored values; what is the same for a whole frame window (the count of
    frames, BZERO) is recorded at the window's four corners of a 2-D
    difference array and summed up once at the end, so each frame costs one
    read and one add; the copies are added a group of frames at a time, each
    row of the sums by all of the group (:class:`_Group`). A warped frame is
    interpolated and added, with its coverage, by the compiled kernel
    (:mod:`bigstack._kernels`). NaN (or FITS BLANK) pixels are left out of
    the sum and the coverage.

    Frame ``i`` may be normalised to ``value * plan.gains[i] + plan.biases[i]``
    and weighted by ``plan.weights[i]``; the sum is then the weighted sum.

    Returns ``(sum float64 (b - a, W), coverage int32 (b - a, W), weight)``,
    ``weight`` the sum of the covering frames' weights (None unweighted).
    """
    sums = _Sums(plan, a, b)
    fused = []  # calibrated whole-pixel copies, added after the loop (see _add_fused)
    can_fuse = plan.weights is None and hasattr(source, "stored")
    group = _Group(source, sums, plan.shape[1]) if (
        _GROUP_PLAIN and not hasattr(source, "stored")) else None
    for w in _frame_windows(source, plan, a, b, fused=can_fuse or group is not None):
        if group is not None:
            if w.fused is not None:
                group.take(w)
                continue
            group.add()  # the copies before a warped frame first: each pixel adds in order
        if w.fused is not None:
            _mark(sums.count, w.out, 1)
            g = 1.0 if plan.gains is None else float(plan.gains[w.i])
            bias = 0.0 if plan.biases is None else float(plan.biases[w.i])
            fused.append((w, g, bias))
            continue
        sums.add(w)
    if group is not None:
        group.add()
    if fused:
        if sums.invalid is None:
            sums.invalid = np.zeros((sums.h, sums.width), np.int32)
        _add_fused(source, fused, sums.total, sums.exact, sums.invalid)
    return sums.result()


def groups_copies(source, weighted):
    """Whether :func:`combine_tile` reads the whole-pixel copies of ``source``'s frames a
    group at a time (the ``fused`` of :func:`plan_tiles`): a calibrated source unweighted
    (:func:`_add_fused`), a plain mono one always (:class:`_Group`)."""
    if hasattr(source, "stored"):
        return not weighted
    return _GROUP_PLAIN and getattr(source, "channels", None) is None


class _Group:
    """Plain whole-pixel copies of a tile, added a group of frames at a time.

    Each frame's rows of the tile are one read, into its slot of the group's
    buffer (the plan's ``_GROUP_BYTES`` per output pixel); the kernel
    (:func:`bigstack._kernels.add_plain`) then walks the tile's rows and, in
    each, adds every frame of the group, so a row of the float32 sums stays
    in the core's cache while the group adds to it, where one numpy add per
    frame over the whole tile takes the sums from memory and back for every
    frame. The bookkeeping is :meth:`_Sums.add`'s: the same marks of
    coverage, weight and offset, the same flushes, the same sums (values are
    added in the same order per pixel; the kernel adds the offset of a
    checked frame, one with NaN or BLANK to look for, in float32, as
    :meth:`_Sums.add` does for a window that holds such a pixel).
    """

    def __init__(self, source, sums, nx):
        self.source, self.sums, self.nx = source, sums, nx
        self.buffers = {}
        self.rows = None  # (frames, tile rows, nx) stored rows
        self.frames = []

    def take(self, w):
        """Read whole-pixel copy ``w`` (yielded ``fused``) into the group."""
        from . import _kernels

        sums = self.sums
        if (sums.added + 1) % _FLUSH == 0:
            self.add()  # the frames before a flush go into the float32 sums it flushes
        g, bias, wt = sums.step(w)
        rows, cols = w.out
        nrows = rows.stop - rows.start
        fr0, sx = w.fused
        if self.rows is not None:  # read straight into the frame's slot
            self.buffers[self.rows.dtype] = self.rows[len(self.frames)].reshape(-1)
        stored, scale, zero, blank, _ = self.source.raw(w.i, fr0, fr0 + nrows, self.buffers)
        if self.rows is None or stored.dtype != self.rows.dtype:
            self.add()
            if self.rows is not None:
                self.buffers.pop(self.rows.dtype, None)
            slot = sums.h * self.nx * stored.dtype.itemsize
            size = max(1, min(_GROUP, _GROUP_BYTES * sums.width * sums.h // slot,
                              _GROUP_CACHE // slot))
            self.rows = np.empty((size, sums.h, self.nx), stored.dtype)
        slot = self.rows[len(self.frames)]
        if stored.__array_interface__["data"][0] != slot.__array_interface__["data"][0]:
            slot[:nrows] = stored
        scale, zero = scale * g * wt, (zero * g + bias) * wt
        _mark(sums.count, w.out, 1)
        if sums.weight is not None:
            _mark(sums.weight, w.out, wt)
        if _kernels.checks_values(stored.dtype, blank):  # the kernel adds the offset
            if sums.invalid is None:
                sums.invalid = np.zeros((sums.h, sums.width), np.int32)
                sums.lost = np.zeros((sums.h, sums.width), np.float64)
        else:
            sums.zeros.add(zero)
            if zero:
                _mark(sums.offset, w.out, zero)
        self.frames.append((sx, (rows.start, cols.start, nrows, cols.stop - cols.start),
                            scale, zero, blank, wt))
        if len(self.frames) == len(self.rows):
            self.add()

    def add(self):
        """Add the frames read so far."""
        if self.frames:
            from . import _kernels

            _kernels.add_plain(self.rows[:len(self.frames)], self.frames, self.sums.total,
                               self.sums.invalid, self.sums.lost)
            self.frames.clear()


class _Sums:
    """The running sums of :func:`combine_tile` for one tile: :meth:`add` a frame's window,
    then :meth:`result`. A colour tile keeps one per colour and feeds each its plane of
    every frame's window, so a frame's rows are read once for all colours."""

    def __init__(self, plan, a, b):
        y0, _, x0, x1 = plan.grid
        self.plan, self.a = plan, a
        self.origin = (y0 + a, x0)
        h, width = b - a, x1 - x0
        self.h, self.width = h, width
        self.total = np.zeros((h, width), np.float32)  # running sum of up to _FLUSH frames
        self.exact = np.zeros((h, width), np.float64)  # where the float32 sums are flushed
        self.count = np.zeros((h + 1, width + 1), np.int32)  # difference array of windows
        self.offset = np.zeros((h + 1, width + 1), np.float64)  # difference array of offsets
        self.weight = None if plan.weights is None else np.zeros((h + 1, width + 1),
                                                                 np.float64)
        self.warped = None  # the warped frames' coverage (and weight), counted per pixel
        self.invalid = None  # per pixel, covering values that were NaN or BLANK
        self.lost = None  # per pixel, the weight of those
        self.zeros = set()  # the offsets marked; one value for all frames is the common case
        self.work = {}
        self.added = 0

    def step(self, w):
        """Count window ``w`` (flushing the float32 sum when due); its ``(gain, bias,
        weight)``."""
        plan = self.plan
        self.added += 1
        if self.added % _FLUSH == 0:
            self.exact += self.total
            self.total[:] = 0
        g = 1.0 if plan.gains is None else float(plan.gains[w.i])
        bias = 0.0 if plan.biases is None else float(plan.biases[w.i])
        wt = 1.0 if plan.weights is None else float(plan.weights[w.i])
        return g, bias, wt

    def add(self, w):
        plan = self.plan
        weights = plan.weights
        h, width = self.h, self.width
        total = self.total
        g, bias, wt = self.step(w)
        if w.warp:
            from . import _kernels

            if self.warped is None:
                self.warped = (np.zeros((h, width), np.int32),
                               None if weights is None else np.zeros((h, width), np.float64))
            matrices = plan.matrices
            _kernels.warp_accumulate(
                w.rows, w.r0, plan.shape, matrices[w.i, :, :2], matrices[w.i, :, 2],
                self.origin, total, self.warped[0], plan.subpixel, scale=w.scale * g,
                zero=w.zero * g + bias, blank=w.blank, weight=None if weights is None else wt,
                weight_sum=self.warped[1], work=self.work)
            return
        scale, zero = w.scale * g * wt, (w.zero * g + bias) * wt
        _mark(self.count, w.out, 1)
        if self.weight is not None:
            _mark(self.weight, w.out, wt)
        if w.bad is None:  # the common case: add stored values, convert on the fly
            if scale == 1 and w.flat is not None:
                _add_rows_flat(total, w.rows, *w.flat)
            else:
                total[w.out] += w.block if scale == 1 else w.block * np.float32(scale)
            self.zeros.add(zero)
            if zero:
                _mark(self.offset, w.out, zero)
        else:
            values = w.block.astype(np.float32) * np.float32(scale) + np.float32(zero)
            values[w.bad] = 0
            total[w.out] += values
            if self.invalid is None:
                self.invalid = np.zeros((h, width), np.int32)
                self.lost = np.zeros((h, width), np.float64)
            self.invalid[w.out] += w.bad
            self.lost[w.out] += w.bad * wt

    def result(self):
        exact, zeros, weight = self.exact, self.zeros, self.weight
        copies = _integrate(self.count)  # coverage of the whole-pixel copies
        exact += self.total
        if len(zeros) == 1 and self.invalid is None:  # every window added the same offset
            zero = zeros.pop()
            if zero:
                exact += zero * copies
        elif any(zeros):
            exact += _integrate(self.offset)
        coverage = copies
        if self.invalid is not None:
            coverage -= self.invalid
        if weight is not None:
            weight = _integrate(weight) - (0.0 if self.lost is None else self.lost)
        if self.warped is not None:
            coverage += self.warped[0]
            if weight is not None:
                weight += self.warped[1]
        return exact, coverage, weight


def _add_fused(source, windows, total, exact, invalid):
    """Calibrate and add whole-pixel copies, a group of frames per kernel call.

    Each frame's rows of the tile are one read (with a row above and below,
    for the bad pixels' neighbours), into its slot of the group's buffer;
    the kernel then walks the tile's rows and, in each, adds every frame of
    the group (:func:`bigstack._kernels.add_calibrated`): a row of the sums
    stays in the cache while the group's frames add to it, and the master
    rows (bias, dark, 1 / flat, bad pixels: six times the bytes of a 16-bit
    frame) are read once for the frames they share (the frames' shifts are
    a few rows apart), where frame by frame over a whole tile they would
    come from memory once per frame. One call per group, not per frame,
    also pays Python's cost per call once per group. When the tile's frames
    share one dark factor ``k``, ``bias + k * dark`` over their rows is
    summed once for the tile (:meth:`CalibratedRows.base
    <bigstack._calibrate.CalibratedRows.base>`; ``_BASE_BYTES``), so each
    frame's values subtract one master row, not two, and are multiplied by
    the flat's: two master rows per pixel instead of three, and fewer steps.
    """
    from . import _kernels

    h, width = total.shape
    ny, nx = source.reader.frame_shape
    masters = source.masters
    base = None
    if windows:  # bias + k * dark over the frames' rows, once for the tile (see _BASE_BYTES)
        first = min(w.fused[0] for w, _, _ in windows)
        last = max(w.fused[0] + w.out[0].stop - w.out[0].start for w, _, _ in windows)
        if (last - first) * nx <= _BASE_BYTES // 4 * h * width:
            base = source.base([w.i for w, _, _ in windows], first, last)
    buffers = {}
    group, frames = None, []
    added = 0

    def add():
        if frames:
            _kernels.add_calibrated(group, frames, masters, total, invalid, base=base)
            frames.clear()

    for w, g, bias in windows:
        rows, cols = w.out
        fr0, sx = w.fused
        nrows = rows.stop - rows.start
        s0, s1 = max(fr0 - 1, 0), min(fr0 + nrows + 1, ny)
        if group is not None:  # read straight into the frame's slot
            buffers[group.dtype] = group[len(frames)].reshape(-1)
        stored, scale, zero, blank, k = source.stored(w.i, s0, s1, buffers)
        if group is None or stored.dtype != group.dtype:
            add()
            if group is not None:
                buffers.pop(group.dtype, None)
            # the plan's _GROUP_BYTES per output pixel (and the pad rows)
            size = max(1, min(_GROUP, _GROUP_BYTES * width // (nx * stored.dtype.itemsize)))
            group = np.empty((size, h + 2, nx), stored.dtype)
        slot = group[len(frames)]
        if stored.__array_interface__["data"][0] != slot.__array_interface__["data"][0]:
            slot[:s1 - s0] = stored
        frames.append((s0, s1, fr0, sx, (rows.start, cols.start, nrows, cols.stop - cols.start),
                       scale, zero, blank, k, g, bias))
        added += 1
        if len(frames) == len(group) or added % _FLUSH == 0:
            add()
        if added % _FLUSH == 0:
            exact += total
            total[:] = 0
    add()


def gather_tile(source, plan, a, b, blocks=None):
    """The kept frames' aligned values for output rows ``[a, b)``, one plane each.

    Returns float32 ``(kept frames, b - a, W)``, NaN where a frame does not
    cover a pixel (or the pixel is NaN/BLANK), normalised like
    :func:`combine_tile`. This is what rejection methods need: every
    frame's value of a pixel at once, so its memory grows with the number
    of frames and the tile height shrinks to fit. A whole-pixel copy's
    stored rows are converted into its window by one compiled pass
    (:func:`bigstack._kernels.gather_rows`); only the pixels outside the
    window are set to NaN.
    """
    from . import _kernels

    y0, _, x0, x1 = plan.grid
    gains, biases = plan.gains, plan.biases
    matrices = plan.matrices
    shape = (int(np.count_nonzero(plan.keep)), b - a, x1 - x0)
    values = np.empty(shape, np.float32) if blocks is None else blocks.take(shape)
    filled = np.zeros(len(values), bool)
    work, buffers = {}, {}
    for w in _frame_windows(source, plan, a, b, fused=True):
        g = 1.0 if gains is None else float(gains[w.i])
        bias = 0.0 if biases is None else float(biases[w.i])
        plane = values[w.k]
        filled[w.k] = True
        if w.warp:
            plane.fill(np.nan)
            _kernels.warp_values(w.rows, w.r0, plan.shape, matrices[w.i, :, :2],
                                 matrices[w.i, :, 2], (y0 + a, x0), plane, plan.subpixel,
                                 scale=w.scale * g, zero=w.zero * g + bias, blank=w.blank,
                                 work=work)
            continue
        rows, cols = w.out
        fr0, sx = w.fused
        stored, scale, zero, blank, _ = source.raw(w.i, fr0, fr0 + rows.stop - rows.start,
                                                   buffers)
        scale, zero = scale * g, zero * g + bias
        if _kernels.gathers(stored.dtype, scale):
            _kernels.gather_rows(stored, sx, plane, w.out, scale=scale, zero=zero,
                                 blank=blank, nan_outside=True)
            continue
        _nan_outside(plane, rows, cols)
        block = stored[..., sx:sx + cols.stop - cols.start]
        out = plane[w.out]
        np.multiply(block, np.float32(scale), out=out, casting="unsafe")
        out += np.float32(zero)
        bad = block == blank if blank is not None else (
            ~np.isfinite(block) if block.dtype.kind == "f" else None)
        if bad is not None:
            out[bad] = np.nan
    values[~filled] = np.nan
    return values


def gather_stored(source, plan, a, b, blocks=None):
    """:func:`gather_tile` keeping the stored values: ``(block, geometry, scale, zero,
    blank)`` for :func:`bigstack._kernels.reject_stored`.

    Frame k's stored rows that output rows ``[a, b)`` take are read straight
    into plane k of the block (full rows, as stored), at the rows they fill;
    ``geometry`` says which rows and columns those are. Only for plans
    :func:`stored_gather` accepts (checked there once, not here each tile).
    """
    frames = _stored_frames(source, plan)
    gains, biases = plan.gains, plan.biases
    n = len(frames)
    dtype = np.dtype(frames[0].dtype)
    frame_cols = frames[0].shape[1]
    shape = (n, b - a, frame_cols)
    block = np.empty(shape, dtype) if blocks is None else blocks.take(shape, dtype)
    flat = block.reshape(n, -1)
    geometry = np.zeros((n, 5), np.int64)
    scale, zero = np.ones(n), np.zeros(n)
    blank = [None] * n
    for w in _frame_windows(source, plan, a, b, fused=True):
        frame = frames[w.k]
        rows, cols = w.out
        fr0, sx = w.fused
        ny = rows.stop - rows.start
        frame.read_raw(fr0, fr0 + ny, flat[w.k, rows.start * frame_cols:])
        geometry[w.k] = (rows.start, ny, cols.start, cols.stop - cols.start, sx - cols.start)
        g = 1.0 if gains is None else float(gains[w.i])
        bias = 0.0 if biases is None else float(biases[w.i])
        scale[w.k] = frame.bscale * g
        zero[w.k] = frame.bzero * g + bias
        blank[w.k] = frame.blank
    return block, geometry, scale, zero, blank


def _nan_outside(plane, rows, cols):
    """Set a plane to NaN outside the window ``(rows, cols)`` (slices)."""
    plane[:rows.start] = np.nan
    plane[rows.stop:] = np.nan
    plane[rows, :cols.start] = np.nan
    plane[rows, cols.stop:] = np.nan


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
    """The values a 2-D difference array describes (without its last row/column).

    Only the rows that hold a mark are summed along x (a window's marks sit
    on two rows), then the rows are accumulated downwards one vector add at
    a time: 10x faster than ``np.cumsum`` over both axes, which walks the
    rows with a large stride.
    """
    rows = np.flatnonzero(diff.any(axis=1))
    out = np.zeros((diff.shape[0] - 1, diff.shape[1] - 1), diff.dtype)
    if rows.size == 0:
        return out
    marked = np.cumsum(diff[rows, :-1], axis=1)
    limit = out.shape[0]
    for k, row in enumerate(rows):
        if row < limit:
            out[row] += marked[k]
    for row in range(1, limit):
        np.add(out[row], out[row - 1], out=out[row])
    return out


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


class Blocks:
    """Buffers the rejection tiles of one stack pass on to each other.

    A rejection tile gathers every frame's rows into one block (tens of MiB).
    A fresh block each tile costs the kernel's page faults on every byte
    (measured 1.2 s of 9.6 s on one core for 400 frames of 2048 x 2048, 74
    tiles); a block given back is taken by the next tile instead. The pool
    holds at most one block per tile running at once, which the memory
    budget already counts, and lives as long as the stack's graph. A copy
    (another process of a cluster) starts empty.
    """

    def __init__(self):
        self._free = []
        self._lock = threading.Lock()

    def __reduce__(self):
        return (Blocks, ())

    def take(self, shape, dtype=np.float32):
        """An uninitialised array of ``shape`` (C order) and ``dtype``."""
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        with self._lock:
            fits = [i for i, buf in enumerate(self._free) if buf.size >= size]
            buf = self._free.pop(fits[0]) if fits else None
        if buf is None:
            buf = np.empty(size, np.uint8)
        return buf[:size].view(dtype).reshape(shape)

    def give(self, block):
        """Return a block :meth:`take` gave."""
        with self._lock:
            self._free.append(block.base if block.base is not None else block)


def compute_tile(source, plan, a, b, factors=None, blocks=None):
    """The output arrays of tile rows ``[a, b)``: ``stack``, ``coverage`` and ``sum`` or
    ``rejected``. ``factors`` (keep, gains, biases, weights, n_total) complete a plan
    whose per-frame values were measured in the same graph; ``blocks`` (:class:`Blocks`)
    lends a rejection tile its block."""
    plan = plan.with_factors(factors)
    if plan.streaming:
        total, coverage, weight = combine_tile(source, plan, a, b)
        denominator = coverage if weight is None else weight
        return {"stack": _finish(total, denominator, plan.combine.method, plan.normalize,
                                 plan.n_total),
                "coverage": coverage, "sum": total}
    from . import _kernels, _reject

    weights = None if plan.weights is None else plan.weights[plan.keep]
    if plan.stored:
        block, geometry, scale, zero, blank = gather_stored(source, plan, a, b, blocks)
        result, kept, rejected = _kernels.reject_stored(
            block, geometry, plan.grid[3] - plan.grid[2], plan.combine.method, scale=scale,
            zero=zero, blank=blank, weights=weights, **plan.combine.options)
        if blocks is not None:
            blocks.give(block)
        return {"stack": result, "coverage": kept, "rejected": rejected}
    values = gather_tile(source, plan, a, b, blocks)
    # the compiled kernels for median, sigma_clip and winsorized (the same values kept,
    # results equal up to float32 rounding); numpy for the others
    reduce = (_kernels.reject_block if plan.combine.method in _kernels.REJECTIONS
              else _reject.combine_block)
    result, kept, rejected = reduce(values, plan.combine.method, weights=weights,
                                    **plan.combine.options)
    if blocks is not None:
        blocks.give(values)
    return {"stack": result, "coverage": kept, "rejected": rejected}


def compute_colour_tile(source, plan, a, b, factors=None, blocks=None):
    """:func:`compute_tile` for every colour of a colour cube: ``(channel, b - a, W)`` arrays.

    ``source`` has ``channels``, ``all_rows()`` (a row source whose rows are
    ``(channel, rows, W)``: a Bayer mosaic's band read once and debayered
    into every colour) and ``channel_rows(c)`` (one colour's). The colours
    share the plan (transforms, frame factors): they are one exposure. The
    streaming methods add each frame's colours into one set of sums per
    colour, so every mosaic row is read once; the rejection methods gather
    one colour at a time (their memory is all frames' rows of a tile). A
    ``bilinear`` cube's whole-pixel frames are debayered and added in one
    pass from their mosaic rows (:func:`_add_bilinear`); warped frames are
    debayered first, then warped colour by colour.
    """
    plan = plan.with_factors(factors)
    if not plan.streaming:
        parts = [compute_tile(source.channel_rows(c), plan, a, b, blocks=blocks)
                 for c in source.channels]
        return {name: np.stack([p[name] for p in parts]) for name in parts[0]}
    if getattr(source, "cfa", None) is not None and not plan.warped.any():
        return _cfa_tile(source, plan, a, b)
    sums = [_Sums(plan, a, b) for _ in source.channels]
    bilinear = getattr(source, "bilinear", None)
    fuse = bilinear is not None and tuple(source.channels) == ("R", "G", "B")
    buffers = {}
    for w in _frame_windows(source.all_rows(), plan, a, b, fused=fuse):
        if w.fused is not None:
            _add_bilinear(bilinear, w, sums, buffers)
            continue
        for c, part in enumerate(sums):
            part.add(w.plane(c))
    out = {"stack": [], "coverage": [], "sum": []}
    for part in sums:
        total, coverage, weight = part.result()
        out["stack"].append(_finish(total, coverage if weight is None else weight,
                                    plan.combine.method, plan.normalize, plan.n_total))
        out["coverage"].append(coverage)
        out["sum"].append(total)
    return {name: np.stack(values) for name, values in out.items()}


def _add_bilinear(bilinear, w, sums, buffers):
    """Add a whole-pixel frame window's bilinear colours from its mosaic rows, in one pass.

    The same sums as debayering the window's rows and adding each colour's
    plane (:meth:`_Sums.add`), without writing the planes: the compiled
    kernel (:func:`bigstack._kernels.add_bilinear`) reads the window's
    mosaic rows and the row above and below once, and adds every colour's
    interpolated value where it falls. Integer rows without BLANK cannot
    give NaN: their offset is marked over the window like a mono frame's;
    other rows are checked pixel by pixel (NaN counted in ``invalid``).
    """
    from . import _kernels

    mosaic, pattern, shape = bilinear
    factors = [part.step(w) for part in sums]
    g, bias, wt = factors[0]
    rows, cols = w.out
    nrows, length = rows.stop - rows.start, cols.stop - cols.start
    fr0, fc0 = w.fused
    s0, s1 = max(fr0 - 1, 0), min(fr0 + nrows + 1, shape[0])
    stored, scale, zero, blank, floating = mosaic.raw(w.i, s0, s1, buffers)
    gain, offset = scale * g * wt, (zero * g + bias) * wt
    checked = floating or blank is not None
    for part in sums:
        _mark(part.count, w.out, 1)
        if part.weight is not None:
            _mark(part.weight, w.out, wt)
        if checked:
            if part.invalid is None:
                part.invalid = np.zeros((part.h, part.width), np.int32)
                part.lost = np.zeros((part.h, part.width), np.float64)
        else:
            part.zeros.add(offset)
            if offset:
                _mark(part.offset, w.out, offset)
    extra = {}
    if checked:
        extra = dict(offset=offset, blank=blank, invalid=[p.invalid for p in sums],
                     lost=[p.lost for p in sums], weight=wt)
    _kernels.add_bilinear(stored, s0, shape, pattern, fr0, fc0, [p.total for p in sums],
                          (rows.start, cols.start, nrows, length), gain=gain, **extra)


def _cfa_tile(source, plan, a, b):
    """The colour tile of a ``cfa`` cube whose frames are all whole-pixel copies.

    Each frame's mosaic window is added as it is stored: its samples of a
    colour sit on one or two of the four sub-lattices of the window (which
    ones follow from the frame's pattern and its shift), and each is added
    to that colour's sums and coverage with a stride of two. The same values
    as adding the NaN-filled colour planes, without their gaps to test.
    """
    rows_source, pattern = source.cfa
    y0, _, x0, _ = plan.grid
    gains, biases, weights = plan.gains, plan.biases, plan.weights
    whole = np.floor(plan.shifts + 0.5).astype(np.int64)
    n = len(source.channels)
    h, width = b - a, plan.grid[3] - plan.grid[2]
    total = np.zeros((n, h, width), np.float32)
    exact = np.zeros((n, h, width), np.float64)
    count = np.zeros((n, h, width), np.int32)
    offset = np.zeros((n, h, width), np.float64)
    weight = None if weights is None else np.zeros((n, h, width), np.float64)
    places = {c: [(k // 2, k % 2) for k, cc in enumerate(pattern) if cc == c]
              for c in source.channels}
    added = 0
    first_zero = None  # the offset of the first frame: counted once at the end
    shifted = False  # some frame had another offset: ``offset`` holds the differences
    for w in _frame_windows(rows_source, plan, a, b):
        added += 1
        if added % _FLUSH == 0:
            exact += total
            total[:] = 0
        g = 1.0 if gains is None else float(gains[w.i])
        bias = 0.0 if biases is None else float(biases[w.i])
        wt = 1.0 if weights is None else float(weights[w.i])
        scale, zero = np.float32(w.scale * g * wt), (w.zero * g + bias) * wt
        if first_zero is None:
            first_zero = zero
        zero -= first_zero
        shifted = shifted or zero != 0
        rows, cols = w.out
        frame_row = y0 + a + rows.start + int(whole[w.i, 1])  # of the window's first row
        frame_col = x0 + cols.start + int(whole[w.i, 0])
        good = None if w.bad is None else ~w.bad
        for k, colour in enumerate(source.channels):
            for py, px in places[colour]:
                u, v = (py - frame_row) % 2, (px - frame_col) % 2
                here = (slice(rows.start + u, rows.stop, 2), slice(cols.start + v, cols.stop, 2))
                values = w.block[u::2, v::2]
                if good is None:
                    total[k][here] += values * scale if scale != 1 else values
                    count[k][here] += 1
                    if zero:
                        offset[k][here] += zero
                    if weight is not None:
                        weight[k][here] += wt
                else:
                    ok = good[u::2, v::2]
                    total[k][here] += np.where(ok, values * scale, np.float32(0))
                    count[k][here] += ok
                    if zero:
                        offset[k][here] += ok * zero
                    if weight is not None:
                        weight[k][here] += ok * wt
    exact += total
    if first_zero:
        exact += first_zero * count
    if shifted:
        exact += offset
    denominator = count if weight is None else weight
    return {"stack": np.stack([_finish(exact[k], denominator[k], plan.combine.method,
                                       plan.normalize, plan.n_total) for k in range(n)]),
            "coverage": count, "sum": exact}
