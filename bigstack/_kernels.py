"""Compiled hot loops: warp one frame into an output band, and reject per pixel.

These are the loops the tile engine runs once per (frame, band) or per
band; everything else stays numpy. They are compiled by numba with
``cache=True`` (a second process pays no compile time) and ``nogil=True``
(dask runs tiles on threads). Public names: :func:`source_window`,
:func:`warp_accumulate`, :func:`warp_values`, :func:`reject_block`,
:func:`gather_rows`, :func:`lanczos_weights`, :data:`INTERPOLATIONS`, :data:`REJECTIONS`.

Geometry
--------
A frame's transform maps an output (reference-grid) pixel ``[x, y]`` to the
frame's pixel ``[x_i, y_i] = A @ [x, y] + t``; pixel ``[y, x]`` has its centre
at the integer coordinates ``(x, y)``. The source point of output pixel
``(x, y)`` is computed in float64 as ``A[0, 0] * x + (A[0, 1] * y + t[0])``
(and likewise for ``y_i``).

Interpolations and coverage (frame ``ny x nx``):

``"nearest"``
    The source pixel ``floor(s + 0.5)`` on each axis; the frame covers the
    output pixel when that pixel is inside the frame.
``"bilinear"``
    Weights ``1 - f, f`` (``f = s - floor(s)``) on each axis; covered when
    the source point lies in ``[0, n - 1]`` on both axes (every tap with a
    non-zero weight exists).
``"lanczos3"``, ``"lanczos4"``
    The separable Lanczos kernel ``sinc(d) sinc(d / a)`` on the ``2a`` taps
    ``floor(s) - a + 1 .. floor(s) + a`` of each axis, normalised to sum 1
    (flux is conserved); covered on the same domain as bilinear; taps beyond
    the frame's edge take the edge pixel. The normalised weights are
    evaluated as polynomials of the fraction (fitted once at import, max
    error 1.3e-7 for a = 3, 4e-8 for a = 4; they sum to 1 exactly up to
    float32 rounding), so no look-up and no division per pixel.

    ``clamp`` (the default) stops the rings Lanczos draws around a hot pixel
    and keeps the flux of stars. Over the window of taps with a non-zero
    weight (2a x 2a; on an axis whose fraction is exactly zero, the one
    tap), with ``lo``, ``hi`` its range: a value below ``lo`` by more than
    1% of ``hi - lo`` is raised to ``lo`` (the dark ring); a value above the
    largest of the inner 4 x 4 taps (offsets -1 .. 2) is lowered to it when
    the window's largest tap lies outside them (the bright ring of the outer
    lobes). Why these bounds: a star's peak between pixels is brighter than
    every sample, so any clamp to the samples' range costs stars flux (the
    2 x 2 clamp this replaced lost 0.6% on average, up to 3.4% at FWHM 2);
    a star of FWHM >= 2 px undershoots its window's minimum by under 1% of
    the window's range (measured: at most 0.98% at FWHM 2), a hot pixel by
    6-14%; and a radial profile is never brighter than the inner 4 x 4's
    largest tap when its peak is outside them, while an outer lobe's bright
    ring is. Measured (``benchmarks/kernels.py --clamp``, and 100 random
    sub-pixel positions, shift and 1 degree): star flux within 0.013% of
    unclamped Lanczos-3 at FWHM 2 (0.001% at 2.35; Lanczos-4 0.2% at FWHM 2,
    0.07% at 2.35), second-moment FWHM as unclamped (1.002 of the
    sampled star at FWHM 2.35); around a hot pixel of 10000 on 100 the dark
    ring of -722 (at a (0.5, 0.5) shift; -1360 at worst) keeps at most 1% of
    its height (67 at that shift, 11 at worst) and the outer lobes' bright
    ring (+260) is gone; the diagonal of negative lobes keeps a faint bright
    ring, +2.2% of the hot pixel (Lanczos-4: +3%), that telling it from the
    shoulder of a star would need more than the window's range. Stars
    narrower than 2 px ring deeper and are clamped in part (FWHM 1.65:
    +1% flux, FWHM 6% wider than sampled, as unclamped). Cost: the same
    as unclamped in the rotated warp (see Speed below); 1.6x the unclamped
    shift of Lanczos-3 (a shift's two 1-D passes read 12 taps a pixel, its
    clamp all 36). ``clamp=False`` gives the plain kernel.

A tap with a non-zero weight that is NaN (or the FITS BLANK value, or
infinite) makes the output pixel not covered by that frame. A weight is
zero only on an axis whose fraction is exactly zero, off its centre tap.

Data flow per (frame, band)
---------------------------
1. :func:`source_window` gives the frame rows ``[r0, r1)`` (and columns)
   the band needs: the band's footprint in the frame (slanted for a
   rotation, flipped for 180 degrees), widened by the kernel's reach and
   clipped to the frame; the caller reads those rows as stored.
2. ``_prepare`` converts the stored rows to a native float32 buffer
   (``physical = stored * scale + zero``; big-endian integers are swapped
   in the loop, in their own width; BLANK and non-finite values become
   NaN), padded by the kernel's reach with the edge pixels, and oriented so
   that an output row runs forwards along the buffer's rows: mirrored in x
   when ``A[0, 0] < 0`` (a 180 degree flip), transposed when the rotation is
   nearer 90 than 0 degrees. Why the kernel takes the stored rows: this
   conversion costs ~0.09 ns a pixel, a third of the numpy floor, while
   having the caller convert with numpy first costs a floor's worth more
   (measured: a 1 degree bilinear band 1.43 ns/px from the stored rows,
   1.98 ns/px with the caller's numpy conversion), and converting inside
   the interpolation would convert every stored pixel once per tap.
3. ``_warp_rows`` walks each output row in *segments* along which the
   source taps are consecutive pixels of fixed buffer rows (about 57
   pixels for a 1 degree rotation); each segment is one vectorised loop with
   contiguous loads (no gathers). Rotations whose segments would be a few
   pixels long (beyond ~3.5 degrees from a multiple of 90) are interpolated
   pixel by pixel, 10-50x slower (``benchmarks/kernels.py --angles``). A
   pure translation (``A`` the identity) skips the per-pixel weights: two
   1-D passes with constant weights (``_shift_rows``).
4. The values (a float32 band, NaN where not covered) are added into the
   accumulators by ``_accumulate``, the only loop compiled per accumulator
   type, or returned by :func:`warp_values`. A warped (not translated) frame
   is added ``_CHUNK`` (8) output rows at a time (``_warp_add``): the rows'
   values go into the sums while they are in the core's cache, and the
   buffer rows each step needs are converted (step 2) just before it, so
   the warp reads them from the cache too (not transposed frames; a
   transposed buffer is converted whole first). Measured on 100 frames of
   2048 x 2048 turned by up to 1 degree (``benchmarks/warp_cost.py``), where
   a tile's whole buffer and band (each ~4 MiB) went to memory and back:
   see benchmarks/RESULTS.md.

Accumulators: ``total`` float32 or float64; float32 is the faster (6% in
the benchmark) and is exact for sums of up to 256 frames of 16-bit
integers, so callers add into float32 and flush into float64 every 256
frames, as the tile engine does. ``coverage`` int32; optional per-frame
``weight`` (``total += weight * value``, ``weight_sum += weight``,
``weight_sum`` float64).

Speed (``benchmarks/kernels.py``, one core of a shared 2-core AMD EPYC,
a 64 x 2048 band from big-endian int16 rows, against numpy's ``total +=
rows`` of the same band, 0.25 ns/px, measured in turns): shift nearest 2.2x,
bilinear 2.9x, Lanczos-3 5.5x; 1 degree rotation nearest 4.4x, bilinear
5.6x, Lanczos-3 22x (bound by floating point: ~120 operations a pixel for
36 taps and 12 polynomial weights, where Zen 4 does 16 float32 lanes a
cycle); today's numpy bilinear shift 4-17x; scipy's ``affine_transform``
(order 1) ~100x. A call costs ~25 us of Python besides. These Lanczos
figures predate the clamp of the module notes; measured against the 2 x 2
clamp it replaced, in turns in one session of a loaded machine, Lanczos-3
is 1.25x slower rotated (9.2 -> 11.4 ns/px) and 1.45x as a shift (3.4 ->
4.9), Lanczos-4 1.45x and 1.75x; ``clamp=False`` rotated is as slow as
clamped, the clamp's code being in the same loop (separate loops, and a
second pass sharing each column's range between lanes, measured slower
still: numba/LLVM then stop vectorising the selects).

Colour
------
:func:`add_bilinear` adds a whole-pixel window of a Bayer frame's bilinear
colours (:mod:`bigstack._bayer`) straight into the three colour sums, from
the stored mosaic rows: each mosaic row is converted once into one of three
float32 rows (the row above, the row, the row below), and one loop per
output row adds each colour's value, its own sample or the mean of its
neighbours, to the three sums. The debayered planes are never written:
~1 ns a mosaic pixel, against 6-7 ns for debayering a band and adding its
three planes (384 x 2048 big-endian int16, one shared core, in turns).
That loop stays scalar (its three stores into arrays numba cannot prove
apart); one loop a colour vectorises but was measured no faster (it reads
every row three times). Integer rows without BLANK cannot give NaN; other
rows (floats, calibrated rows, BLANK) are checked, by mosaic row: a row
whose three mosaic rows are finite takes the same loop (with the offset),
the others a loop that counts each NaN value (~5 ns a pixel).

Rejection
---------
:func:`reject_block` reduces a gathered block ``(N, h, W)`` float32 (NaN or
inf: not covered) with ``median``, ``sigma_clip`` or ``winsorized``, with
exactly the semantics of :func:`bigstack._reject.combine_block` (see its
module notes): the same values are kept (tested against it and astropy),
the median is bit-identical, and clipped means agree within float32
rounding (float64 sums taken in another order). 64 adjacent pixels are
processed together, vectorised across pixels over a contiguous copy of
their values, four frames per state update: order statistics by counting
passes (interpolation search with a bisection safeguard, snapping to the
data value once the rank is found; the last few pixels finish one by one);
each clipping iteration is one fused pass that also finds the new median
when it lies next to the last one, and the smallest and largest value kept,
so that an iteration whose new bounds hold them all is not made (it would
only confirm that nothing changes); no sorting. At N = 400 (1% outliers, 2%
NaN) per value: median 2.4 ns, sigma_clip 6 ns, winsorized 16 ns, 1.7-3.9x
faster than ``combine_block`` in the same run. Tiles are loaded four at a
time (:func:`_load_tiles`): one tile's 256 bytes a frame, the frames a
block's plane apart, come from memory one cache line at a time, four
tiles' 1 KiB stream in (a 400 x 36 x 2048 block of the benchmark's frames,
old and new alternating in one process on a loaded machine: median 2.86 ->
2.48 ns a value, sigma_clip 6.63 -> 6.18 with the skipped iterations).

A whole-pixel frame's window of the gathered block is converted from its
stored rows by :func:`gather_rows` (the ``_physical`` conversion of the
warp), in place of a numpy multiply and add whose byte-swapping cast cost
about twice as much.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

INTERPOLATIONS = ("nearest", "bilinear", "lanczos3", "lanczos4")
REJECTIONS = ("median", "sigma_clip", "winsorized")

_JIT = dict(cache=True, nogil=True, error_model="numpy")
_FAST = dict(_JIT, fastmath={"contract"})
# sums whose order does not matter (a row's clipped mean): reassociated, so they vectorise
_SUMS = dict(_JIT, fastmath={"contract", "reassoc"})

_KIND = {"nearest": 0, "bilinear": 1, "lanczos3": 3, "lanczos4": 4}
# pixels per vector loop: numba's LLVM runs 16 float32 lanes 4 times interleaved,
# so a loop of fewer than 64 iterations would run scalar
_LANES = 64
# segments shorter than this are interpolated pixel by pixel (a vector loop runs
# _LANES lanes whatever the segment's length)
_SHORT = 4
# output rows a warp interpolates before adding them (:func:`_warp_add`): 8 rows of 2048
# values are 64 KiB, which stay in the core's cache between the two
_CHUNK = 8
# a selection with this many pixels left finishes them one by one
_STRAGGLERS = 6
# tiles loaded together (:func:`_load_tiles`)
_LOAD_TILES = 4
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_FH = np.float32(0.5)
_FINF = np.float32(np.inf)
_FNAN = np.float32(np.nan)
# Lanczos' clamp keeps an undershoot below its window's minimum smaller than this share of
# the window's range: a star's own ringing (FWHM >= 2 px), not a hot pixel's (module notes)
_DERING = np.float32(0.01)


# --------------------------------------------------------------------------
# Lanczos weights


def _lanczos_polynomials(a, degree=9, samples=4001):
    """Polynomials of the normalised Lanczos-``a`` tap weights.

    With ``u = f - 1/2`` (``f`` the fraction), tap ``k = i + 1`` has weight
    ``ce[i](u**2) + u * co[i](u**2)`` and tap ``1 - k`` has ``ce[i](u**2) -
    u * co[i](u**2)`` (the kernel is even). Fitted by least squares at
    Chebyshev points of ``f`` in [0, 1]; the last even part is set so that the
    weights sum to exactly one.
    """
    f = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, samples))
    taps = np.arange(-a + 1, a + 1)
    d = f[:, None] - taps[None, :]
    w = np.sinc(d) * np.sinc(d / a)
    w /= w.sum(axis=1, keepdims=True)
    u = f - 0.5
    powers = np.stack([u**p for p in range(degree + 1)], axis=1)
    even = np.empty((a, degree // 2 + 1))
    odd = np.empty((a, degree // 2 + 1))
    for i in range(a):
        coef = np.linalg.lstsq(powers, w[:, i + a], rcond=None)[0]
        even[i], odd[i] = coef[0::2], coef[1::2]
    even[-1] = -even[:-1].sum(axis=0)
    even[-1, 0] += 0.5
    return even.astype(np.float32), odd.astype(np.float32)


_LANCZOS = {a: _lanczos_polynomials(a) for a in (3, 4)}


def lanczos_weights(f, a):
    """Normalised Lanczos-``a`` weights of taps ``-a+1 .. a`` at fraction ``f`` (numpy).

    The same polynomials the kernels evaluate; ``f == 0`` gives exactly the
    centre tap. Returns float32 ``(len(f), 2a)``.
    """
    even, odd = _LANCZOS[a]
    f = np.atleast_1d(np.asarray(f, np.float32))
    u = f - np.float32(0.5)
    u2 = u * u
    out = np.empty((f.size, 2 * a), np.float32)
    for i in range(a):
        e = np.polyval(even[i][::-1], u2).astype(np.float32)
        o = np.polyval(odd[i][::-1], u2).astype(np.float32)
        out[:, a + i] = e + u * o
        out[:, a - 1 - i] = e - u * o
    zero = f == 0
    out[zero] = 0.0
    out[zero, a - 1] = 1.0
    return out


# --------------------------------------------------------------------------
# geometry (Python): which rows of a frame a band needs


def _kind(interpolation):
    try:
        return _KIND[interpolation]
    except KeyError:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, "
                         f"got {interpolation!r}") from None


def _reach(kind):
    """Taps below and above ``floor(s)`` (nearest: the rounded pixel itself)."""
    return (0, 0) if kind == 0 else (kind - 1, kind) if kind > 1 else (0, 1)


def _transform(A, t):
    A = np.asarray(A, np.float64)
    t = np.asarray(t, np.float64)
    if A.shape != (2, 2) or t.shape != (2,):
        raise ValueError(f"A must be 2x2 and t of length 2, got shapes {A.shape} and {t.shape}")
    a, b, c, d = A.ravel().tolist()
    if not all(map(math.isfinite, (a, b, c, d, *t.tolist()))):
        raise ValueError(f"the transform is not finite: A={A.tolist()}, t={t.tolist()}")
    if abs(a * d - b * c) < 1e-12:
        raise ValueError(f"the transform is singular: A={A.tolist()}")
    return A, t


@njit(**_JIT)
def _clip(pts, n, axis, value, above, out):
    """Sutherland-Hodgman: the part of a convex polygon (``pts[:n]`` rows ``x, y, exact``)
    on one side of the line ``pts[:, axis] == value``, into ``out``; returns its size.
    New points, on the line, are not exact."""
    m = 0
    for i in range(n):
        p = pts[i]
        q = pts[(i + 1) % n]
        pin = p[axis] >= value if above else p[axis] <= value
        qin = q[axis] >= value if above else q[axis] <= value
        if pin:
            out[m, :] = p
            m += 1
        if pin != qin:
            w = (value - p[axis]) / (q[axis] - p[axis])
            out[m, 0] = p[0] + w * (q[0] - p[0])
            out[m, 1] = p[1] + w * (q[1] - p[1])
            out[m, axis] = value
            out[m, 2] = 0.0
            m += 1
    return m


@njit(**_JIT)
def _footprint(A, t, ny, nx, y0, y1, x0, x1, kind, lo, hi):
    """:func:`source_window`'s arithmetic: ``(r0, r1, c0, c1)``, all 0 when empty."""
    pts = np.empty((12, 3))
    tmp = np.empty((12, 3))
    corners = ((x0, y0), (x1 - 1, y0), (x1 - 1, y1 - 1), (x0, y1 - 1))
    for i in range(4):
        x = float(corners[i][0])
        y = float(corners[i][1])
        pts[i, 0] = A[0, 0] * x + (A[0, 1] * y + t[0])
        pts[i, 1] = A[1, 0] * x + (A[1, 1] * y + t[1])
        pts[i, 2] = 1.0
    n = 4
    edge = 0.5 if kind == 0 else 0.0
    for axis in range(2):
        size = nx if axis == 0 else ny
        n = _clip(pts, n, axis, -edge, True, tmp)
        n = _clip(tmp, n, axis, size - 1 + edge, False, pts)
        if n == 0:
            return 0, 0, 0, 0
    window = np.zeros(4, np.int64)
    for k in range(2):
        axis = 1 - k  # rows first
        size = ny if axis == 1 else nx
        smin = np.inf
        smax = -np.inf
        for i in range(n):
            s = pts[i, axis]
            # clipped vertices are computed, not the kernels' own numbers: widen them
            slack = 0.0 if pts[i, 2] else 1e-9 * max(1.0, abs(s))
            smin = min(smin, s - slack)
            smax = max(smax, s + slack)
        if kind == 0:
            first = np.floor(smin + 0.5)
            last = np.floor(smax + 0.5)
        else:
            first = np.floor(smin) - lo
            last = np.floor(smax) + hi
        window[2 * k] = max(int(first), 0)
        window[2 * k + 1] = min(int(last) + 1, size)
    if window[1] <= window[0] or window[3] <= window[2]:
        return 0, 0, 0, 0
    return window[0], window[1], window[2], window[3]


def source_window(A, t, shape, rows, cols, interpolation="bilinear"):
    """Rows and columns of a frame that an output band needs: ``(r0, r1, c0, c1)``.

    Parameters
    ----------
    A, t : array_like (2, 2) and (2,)
        The frame's transform: output ``[x, y]`` -> frame ``A @ [x, y] + t``.
    shape : (ny, nx)
        The frame's shape.
    rows, cols : (start, stop)
        The band's output rows ``y`` and columns ``x`` (absolute, half-open).
    interpolation : str
        One of :data:`INTERPOLATIONS`.

    Returns
    -------
    r0, r1, c0, c1 : int
        Frame rows ``[r0, r1)`` and columns ``[c0, c1)`` holding every tap
        of every output pixel of the band the frame covers (taps beyond the
        frame's edge are the edge pixel, so they lie inside too); all 0 when
        the frame covers none of the band. The footprint is the band's
        rectangle of pixel centres mapped into the frame (a parallelogram,
        its corners computed exactly as the kernels compute them) and clipped
        to the frame's coverage domain, widened by the kernel's reach.

    Examples
    --------
    >>> source_window([[1, 0], [0, 1]], [0.5, -2.25], (100, 80), (10, 20), (0, 80))
    (7, 18, 0, 80)
    """
    kind = _kind(interpolation)
    A, t = _transform(A, t)
    return _window(kind, A, t, shape, rows, cols)


def _window(kind, A, t, shape, rows, cols):
    ny, nx = (int(n) for n in shape)
    (y0, y1), (x0, x1) = rows, cols
    if y1 <= y0 or x1 <= x0 or ny < 1 or nx < 1:
        return 0, 0, 0, 0
    lo, hi = _reach(kind)
    return tuple(int(v) for v in _footprint(A, t, ny, nx, int(y0), int(y1), int(x0), int(x1),
                                            kind, lo, hi))


# --------------------------------------------------------------------------
# stored rows -> oriented float32 buffer


def _physical(raw, swap, signed, scale, zero, blank, has_blank):
    """The physical float32 value of one stored value (compiled per stored type)."""


@overload(_physical, jit_options=dict(_JIT))
def _physical_typed(raw, swap, signed, scale, zero, blank, has_blank):
    # Branch-free, and in the stored width: numba widens integer arithmetic to 64 bits
    # unless cast back, which halves the vector width (measured 4x slower). ``blank``
    # is the stored bits of the BLANK value, as ``raw``.
    if isinstance(raw, types.Float):
        def floating(raw, swap, signed, scale, zero, blank, has_blank):
            out = np.float32(raw) * scale + zero
            return out if out - out == 0 else _FNAN
        return floating
    if raw.bitwidth == 8:
        def byte(raw, swap, signed, scale, zero, blank, has_blank):
            out = np.float32(raw) * scale + zero
            return _FNAN if has_blank and raw == blank else out
        return byte
    if raw.bitwidth == 16:
        def short(raw, swap, signed, scale, zero, blank, has_blank):
            w = np.uint16((raw >> np.uint16(8)) | (raw << np.uint16(8))) if swap else raw
            v = np.float32(np.int16(w)) if signed else np.float32(w)
            out = v * scale + zero
            return _FNAN if has_blank and raw == blank else out
        return short

    def word(raw, swap, signed, scale, zero, blank, has_blank):
        w = np.uint32((raw >> np.uint32(24)) | ((raw >> np.uint32(8)) & np.uint32(0xFF00))
                      | ((raw & np.uint32(0xFF00)) << np.uint32(8)) | (raw << np.uint32(24))) \
            if swap else raw
        v = np.float32(np.int32(w)) if signed else np.float32(w)
        out = v * scale + zero
        return _FNAN if has_blank and raw == blank else out
    return word


@njit(**_JIT)
def _convert_row(stored, swap, signed, scale, zero, blank, has_blank, y, x_first, mirror, out):
    """``out[i]`` = the physical value of ``stored[y, x_first + i]`` (``x_first - i``
    mirrored)."""
    n = out.shape[0]
    row = stored[y]
    if mirror:
        src = row[x_first - n + 1:x_first + 1]
        for i in range(n):
            out[i] = _physical(src[n - 1 - i], swap, signed, scale, zero, blank, has_blank)
    else:
        src = row[x_first:x_first + n]
        for i in range(n):
            out[i] = _physical(src[i], swap, signed, scale, zero, blank, has_blank)


@njit(**_JIT)
def _prepare_rows(stored, swap, signed, scale, zero, blank, has_blank, r_stored, frame_nx,
                  mirror, u_lo, u_hi, v_lo, v_hi, pad, buf, first, last):
    """Rows ``[first, last)`` of :func:`_prepare`'s buffer, not transposed."""
    nbu = buf.shape[1]
    nu = u_hi - u_lo
    x_first = frame_nx - 1 - u_lo if mirror else u_lo
    for vi in range(first, last):
        y = min(max(v_lo - pad + vi, v_lo), v_hi - 1) - r_stored
        line = buf[vi]
        _convert_row(stored, swap, signed, scale, zero, blank, has_blank, y, x_first, mirror,
                     line[pad:pad + nu])
        for ui in range(pad):
            line[ui] = line[pad]
        for ui in range(pad + nu, nbu):
            line[ui] = line[pad + nu - 1]


@njit(**_JIT)
def _prepare(stored, swap, signed, scale, zero, blank, has_blank, r_stored, frame_nx, frame_ny,
             transpose, mirror, u_lo, u_hi, v_lo, v_hi, pad, buf):
    """Fill ``buf`` with the frame in canonical coordinates ``(u, v)``, padded by ``pad``.

    ``buf[v - v_lo + pad, u - u_lo + pad]`` is the physical value of the
    frame at canonical ``(u, v)`` clamped to ``[u_lo, u_hi) x [v_lo, v_hi)``
    (the part the band needs, inside the frame; clamping replicates its
    edge). Canonical ``u`` is ``x`` (``nx - 1 - x`` mirrored) and ``v`` is
    ``y``; transposed, ``u`` is ``y`` (``ny - 1 - y`` mirrored) and ``v`` is
    ``x``. ``stored`` holds frame rows from ``r_stored`` on, every column.
    """
    nbv, nbu = buf.shape
    nu = u_hi - u_lo
    if not transpose:
        _prepare_rows(stored, swap, signed, scale, zero, blank, has_blank, r_stored, frame_nx,
                      mirror, u_lo, u_hi, v_lo, v_hi, pad, buf, 0, nbv)
        return
    # transposed: buffer row = frame column, buffer column = frame row
    tmp = np.empty(v_hi - v_lo, np.float32)
    for ui in range(pad, pad + nu):
        u = u_lo - pad + ui
        y = (frame_ny - 1 - u if mirror else u) - r_stored
        _convert_row(stored, swap, signed, scale, zero, blank, has_blank, y, v_lo, False, tmp)
        for vi in range(v_hi - v_lo):
            buf[pad + vi, ui] = tmp[vi]
    for vi in range(nbv):
        src = min(max(vi, pad), pad + v_hi - v_lo - 1)
        line = buf[vi]
        if src != vi:
            line[pad:pad + nu] = buf[src, pad:pad + nu]
        for ui in range(pad):
            line[ui] = line[pad]
        for ui in range(pad + nu, nbu):
            line[ui] = line[pad + nu - 1]


def _blank_bits(blank, stored, view):
    """``(has_blank, bits)``: BLANK as the stored bits of dtype ``stored`` read as ``view``;
    no BLANK for float rows or a value the stored type cannot hold."""
    if blank is None or stored.kind not in "iu":
        return False, view.type(0)
    info = np.iinfo(stored)
    if not info.min <= int(blank) <= info.max:
        return False, view.type(0)
    return True, np.array(int(blank), stored).view(view)[()]


def _stored_view(rows):
    """``(view, swap, signed, floating)``: stored rows as numba can read them."""
    rows = np.asarray(rows)
    dtype = rows.dtype
    if dtype.kind == "f":
        if not dtype.isnative or dtype.itemsize not in (4, 8):
            rows = rows.astype(np.float32 if dtype.itemsize <= 4 else np.float64)
        return np.ascontiguousarray(rows), False, False, True
    if dtype.kind not in "iub" or dtype.itemsize not in (1, 2, 4):
        raise ValueError(f"rows must be 8/16/32-bit integers or floats, got {dtype}")
    if dtype.kind == "b":
        rows = rows.view(np.uint8)
        dtype = rows.dtype
    rows = np.ascontiguousarray(rows)
    swap = dtype.itemsize > 1 and not dtype.isnative
    view = rows.view(np.dtype(f"u{dtype.itemsize}"))
    return view, swap, dtype.kind == "i", False


# --------------------------------------------------------------------------
# the warp: segments of consecutive taps


@njit(inline="always", **_JIT)
def _tap(s, kind, mirror, n):
    """The buffer-axis tap index (a float) of frame coordinate ``s``: ``floor(s)`` (nearest:
    ``floor(s + 0.5)``), or on a mirrored axis of ``n`` pixels the index of the same point
    counted from the other end. Computed from ``s`` itself so that ties round as documented."""
    i = np.floor(s + 0.5) if kind == 0 else np.floor(s)
    if not mirror:
        return i
    if kind == 0 or s == i:
        return n - 1 - i
    return n - 2 - i


@njit(inline="always", **_JIT)
def _axis_inside(s, kind, n):
    if kind == 0:
        i = np.floor(s + 0.5)
        return i >= 0 and i <= n - 1
    return s >= 0.0 and s <= n - 1


@njit(**_JIT)
def _covered(tr, bu, bv, x0, w, kind, nu, nv):
    """Output columns ``[jlo, jhi)`` of one row the frame covers (an interval: the
    coordinates are monotonic in ``x``). Solved, then moved onto the exact test."""
    lo = -1e300
    hi = 1e300
    edge = 0.5 if kind == 0 else 0.0
    for axis in range(2):
        a = tr[axis, 0]
        b = bu if axis == 0 else bv
        n = nu if axis == 0 else nv
        if a == 0.0:  # this coordinate is the same along the row
            if not _axis_inside(b, kind, n):
                return 0, 0
            continue
        p = (-edge - b) / a
        q = (n - 1 + edge - b) / a
        lo = max(lo, min(p, q))
        hi = min(hi, max(p, q))
    if hi < lo - 1.0:
        return 0, 0
    jlo = int(max(0.0, min(float(w), np.ceil(lo - x0))))
    jhi = int(max(0.0, min(float(w), np.floor(hi - x0) + 1.0)))

    def inside(j):
        x = float(x0 + j)
        return (_axis_inside(tr[0, 0] * x + bu, kind, nu)
                and _axis_inside(tr[1, 0] * x + bv, kind, nv))

    while jlo < jhi and not inside(jlo):
        jlo += 1
    while jhi > jlo and not inside(jhi - 1):
        jhi -= 1
    if jhi > jlo:
        while jlo > 0 and inside(jlo - 1):
            jlo -= 1
        while jhi < w and inside(jhi):
            jhi += 1
    else:  # the solved interval missed: look once either side of it
        for j in (jlo - 1, jlo):
            if 0 <= j < w and inside(j):
                jlo = j
                jhi = j + 1
                while jlo > 0 and inside(jlo - 1):
                    jlo -= 1
                while jhi < w and inside(jhi):
                    jhi += 1
                break
    return jlo, jhi


@njit(inline="always", **_JIT)
def _same(tr, bu, bv, x, iu0, iv0, x_start, kind, mirror, nu):
    iu = _tap(tr[0, 0] * x + bu, kind, mirror, nu)
    iv = _tap(tr[1, 0] * x + bv, kind, False, 0)
    return iv == iv0 and iu - x == iu0 - x_start


@njit(**_JIT)
def _segment_end(tr, bu, bv, x0, j, jhi, iu, iv, kind, mirror, nu, guess):
    """First column after ``j`` (< ``jhi``) whose taps are not consecutive with ``j``'s.

    The taps' test is monotonic along a row, so the end is searched: first
    at ``j + guess`` (the last segment's length: segments of a row have about
    the same length, so this usually costs two tests), then by galloping
    and bisecting.
    """
    xs = float(x0 + j)
    good = j + 1  # [j, good) known to continue the segment
    bad = jhi  # known to end it (or the row's end)
    probe = min(j + max(guess, 1), jhi) - 1
    if probe >= good:
        if _same(tr, bu, bv, float(x0 + probe), iu, iv, xs, kind, mirror, nu):
            good = probe + 1
            if good < jhi and not _same(tr, bu, bv, float(x0 + good), iu, iv, xs, kind,
                                        mirror, nu):
                return good
        else:
            bad = probe
            if not _same(tr, bu, bv, float(x0 + probe - 1), iu, iv, xs, kind, mirror, nu):
                bad = probe - 1
            else:
                return probe
    step = 16
    while good < bad:  # gallop, then bisect
        probe = min(good + step, bad) - 1
        if _same(tr, bu, bv, float(x0 + probe), iu, iv, xs, kind, mirror, nu):
            good = probe + 1
            step *= 2
        else:
            bad = probe
            break
    while good < bad:
        mid = (good + bad) // 2
        if _same(tr, bu, bv, float(x0 + mid), iu, iv, xs, kind, mirror, nu):
            good = mid + 1
        else:
            bad = mid
    return good


@njit(inline="always", **_FAST)
def _w3(f, ce, co):
    """Lanczos-3 weights of taps -2..3 at fraction ``f`` (exactly the centre tap at 0)."""
    u = f - _FH
    u2 = u * u
    e1 = (((ce[0, 4] * u2 + ce[0, 3]) * u2 + ce[0, 2]) * u2 + ce[0, 1]) * u2 + ce[0, 0]
    o1 = (((co[0, 4] * u2 + co[0, 3]) * u2 + co[0, 2]) * u2 + co[0, 1]) * u2 + co[0, 0]
    e2 = (((ce[1, 4] * u2 + ce[1, 3]) * u2 + ce[1, 2]) * u2 + ce[1, 1]) * u2 + ce[1, 0]
    o2 = (((co[1, 4] * u2 + co[1, 3]) * u2 + co[1, 2]) * u2 + co[1, 1]) * u2 + co[1, 0]
    e3 = (((ce[2, 4] * u2 + ce[2, 3]) * u2 + ce[2, 2]) * u2 + ce[2, 1]) * u2 + ce[2, 0]
    o3 = (((co[2, 4] * u2 + co[2, 3]) * u2 + co[2, 2]) * u2 + co[2, 1]) * u2 + co[2, 0]
    # exactly the centre tap at f == 0, by arithmetic: selecting constants here makes LLVM
    # turn the taps' loads into gathers (ten times slower)
    m = _F0 if f == 0 else _F1
    c = _F1 - m
    return ((e3 - u * o3) * m, (e2 - u * o2) * m, (e1 - u * o1) * m + c, (e1 + u * o1) * m,
            (e2 + u * o2) * m, (e3 + u * o3) * m)


@njit(inline="always", **_FAST)
def _w4(f, ce, co):
    """Lanczos-4 weights of taps -3..4 at fraction ``f``."""
    u = f - _FH
    u2 = u * u
    e1 = (((ce[0, 4] * u2 + ce[0, 3]) * u2 + ce[0, 2]) * u2 + ce[0, 1]) * u2 + ce[0, 0]
    o1 = (((co[0, 4] * u2 + co[0, 3]) * u2 + co[0, 2]) * u2 + co[0, 1]) * u2 + co[0, 0]
    e2 = (((ce[1, 4] * u2 + ce[1, 3]) * u2 + ce[1, 2]) * u2 + ce[1, 1]) * u2 + ce[1, 0]
    o2 = (((co[1, 4] * u2 + co[1, 3]) * u2 + co[1, 2]) * u2 + co[1, 1]) * u2 + co[1, 0]
    e3 = (((ce[2, 4] * u2 + ce[2, 3]) * u2 + ce[2, 2]) * u2 + ce[2, 1]) * u2 + ce[2, 0]
    o3 = (((co[2, 4] * u2 + co[2, 3]) * u2 + co[2, 2]) * u2 + co[2, 1]) * u2 + co[2, 0]
    e4 = (((ce[3, 4] * u2 + ce[3, 3]) * u2 + ce[3, 2]) * u2 + ce[3, 1]) * u2 + ce[3, 0]
    o4 = (((co[3, 4] * u2 + co[3, 3]) * u2 + co[3, 2]) * u2 + co[3, 1]) * u2 + co[3, 0]
    m = _F0 if f == 0 else _F1  # see _w3
    c = _F1 - m
    return ((e4 - u * o4) * m, (e3 - u * o3) * m, (e2 - u * o2) * m, (e1 - u * o1) * m + c,
            (e1 + u * o1) * m, (e2 + u * o2) * m, (e3 + u * o3) * m, (e4 + u * o4) * m)


@njit(inline="always", **_FAST)
def _dot6(r, i, w):
    return (w[0] * r[i] + w[1] * r[i + 1] + w[2] * r[i + 2] + w[3] * r[i + 3]
            + w[4] * r[i + 4] + w[5] * r[i + 5])


@njit(inline="always", **_FAST)
def _dot8(r, i, w):
    return (w[0] * r[i] + w[1] * r[i + 1] + w[2] * r[i + 2] + w[3] * r[i + 3]
            + w[4] * r[i + 4] + w[5] * r[i + 5] + w[6] * r[i + 6] + w[7] * r[i + 7])


@njit(inline="always", **_JIT)
def _dering(acc, lo, hi, inner_hi):
    """Lanczos' clamp (module notes) of ``acc`` from its window's minimum ``lo``, maximum
    ``hi`` and the maximum ``inner_hi`` of the window's inner 4 x 4. NaN stays NaN."""
    acc = lo if lo - acc > _DERING * (hi - lo) else acc
    return inner_hi if (inner_hi < hi) & (acc > inner_hi) else acc


@njit(inline="always", **_JIT)
def _row6(r, i, whole):
    """Taps ``i .. i + 5`` of a row: (min, max, max of the inner ``i + 1 .. i + 4``); only
    the centre tap ``i + 2`` unless ``whole`` (a zero fraction gives the others no weight)."""
    ilo = _fmin(_fmin(r[i + 1], r[i + 2]), _fmin(r[i + 3], r[i + 4]))
    ihi = _fmax(_fmax(r[i + 1], r[i + 2]), _fmax(r[i + 3], r[i + 4]))
    olo = _fmin(r[i], r[i + 5])
    ohi = _fmax(r[i], r[i + 5])
    c = r[i + 2]
    return (_fmin(ilo, olo) if whole else c, _fmax(ihi, ohi) if whole else c, ihi if whole else c)


@njit(inline="always", **_JIT)
def _row8(r, i, whole):
    """Taps ``i .. i + 7``: as :func:`_row6`, inner ``i + 2 .. i + 5``, centre ``i + 3``."""
    ilo = _fmin(_fmin(r[i + 2], r[i + 3]), _fmin(r[i + 4], r[i + 5]))
    ihi = _fmax(_fmax(r[i + 2], r[i + 3]), _fmax(r[i + 4], r[i + 5]))
    olo = _fmin(_fmin(r[i], r[i + 1]), _fmin(r[i + 6], r[i + 7]))
    ohi = _fmax(_fmax(r[i], r[i + 1]), _fmax(r[i + 6], r[i + 7]))
    c = r[i + 3]
    return (_fmin(ilo, olo) if whole else c, _fmax(ihi, ohi) if whole else c, ihi if whole else c)


@njit(inline="always", **_JIT)
def _range6(r0, r1, r2, r3, r4, r5, i, bx, by):
    """Lanczos-3's window at lane ``i`` (rows ``r0..r5``, taps ``i..i+5``): (min, max, inner
    max) over the taps with a non-zero weight (only the centre one on an axis whose
    fraction is zero: ``bx``, ``by`` False)."""
    a0, b0, c0 = _row6(r0, i, bx)
    a1, b1, c1 = _row6(r1, i, bx)
    a2, b2, c2 = _row6(r2, i, bx)
    a3, b3, c3 = _row6(r3, i, bx)
    a4, b4, c4 = _row6(r4, i, bx)
    a5, b5, c5 = _row6(r5, i, bx)
    lo = _fmin(a2, _fmin(_fmin(_fmin(a0, a1), _fmin(a3, a4)), _fmin(a5, a5)) if by else a2)
    hi = _fmax(b2, _fmax(_fmax(_fmax(b0, b1), _fmax(b3, b4)), _fmax(b5, b5)) if by else b2)
    return lo, hi, _fmax(c2, _fmax(_fmax(c1, c3), _fmax(c4, c4)) if by else c2)


@njit(inline="always", **_JIT)
def _range8(r0, r1, r2, r3, r4, r5, r6, r7, i, bx, by):
    """Lanczos-4's window: as :func:`_range6`, rows ``r0..r7``, inner rows ``r2..r5``."""
    a0, b0, c0 = _row8(r0, i, bx)
    a1, b1, c1 = _row8(r1, i, bx)
    a2, b2, c2 = _row8(r2, i, bx)
    a3, b3, c3 = _row8(r3, i, bx)
    a4, b4, c4 = _row8(r4, i, bx)
    a5, b5, c5 = _row8(r5, i, bx)
    a6, b6, c6 = _row8(r6, i, bx)
    a7, b7, c7 = _row8(r7, i, bx)
    lo = _fmin(a3, _fmin(_fmin(_fmin(a0, a1), _fmin(a2, a4)), _fmin(_fmin(a5, a6), a7))
               if by else a3)
    hi = _fmax(b3, _fmax(_fmax(_fmax(b0, b1), _fmax(b2, b4)), _fmax(_fmax(b5, b6), b7))
               if by else b3)
    return lo, hi, _fmax(c3, _fmax(_fmax(c2, c4), c5) if by else c3)


@njit(inline="always", **_JIT)
def _fractions(x, i, au, bu, iu, av, bv, iv, mirror, nu):
    """Lane ``i`` of a segment: the fractions exactly as one pixel computes them (the
    segment's taps start at ``iu``, ``iv``; the fast axis steps one tap a lane)."""
    xi = x + i
    s = au * xi + bu
    fu = ((nu - 1) - (iu + i)) - s if mirror else s - (iu + i)
    return np.float32(fu), np.float32(av * xi + bv - iv)


@njit(**_FAST)
def _bilinear_run(flat, k, nb, out, n, x, au, bu, iu, av, bv, iv, mirror, nu):
    """``n`` lanes of a segment whose first taps are ``flat[k]`` (rows ``nb`` apart).

    The fractions step by a constant along the segment: they differ from one pixel's
    own by ~1e-16, which leaves bilinear's values within float32 rounding (a zero
    fraction still copies the pixel exactly, and NaN decisions are re-checked by
    :func:`_repair`); Lanczos' clamp needs exact zeros, so it uses :func:`_fractions`.
    """
    r0 = flat[k:]
    r1 = flat[k + nb:]
    fx0, fy0 = _fractions(x, 0, au, bu, iu, av, bv, iv, mirror, nu)
    dfx = np.float64(-au - 1.0 if mirror else au - 1.0)
    for i in range(n):
        fx = np.float32(fx0 + dfx * i)
        fy = np.float32(fy0 + av * i)
        gx = _F1 - fx
        top = gx * r0[i] + fx * r0[i + 1]
        bottom = gx * r1[i] + fx * r1[i + 1]
        out[i] = (_F1 - fy) * top + fy * bottom


@njit(**_FAST)
def _lanczos3_run(flat, k, nb, out, n, x, au, bu, iu, av, bv, iv, mirror, nu, ce, co, clamp):
    r0 = flat[k:]
    r1 = flat[k + nb:]
    r2 = flat[k + 2 * nb:]
    r3 = flat[k + 3 * nb:]
    r4 = flat[k + 4 * nb:]
    r5 = flat[k + 5 * nb:]
    for i in range(n):
        fx, fy = _fractions(x, i, au, bu, iu, av, bv, iv, mirror, nu)
        wx = _w3(fx, ce, co)
        wy = _w3(fy, ce, co)
        acc = (wy[0] * _dot6(r0, i, wx) + wy[1] * _dot6(r1, i, wx) + wy[2] * _dot6(r2, i, wx)
               + wy[3] * _dot6(r3, i, wx) + wy[4] * _dot6(r4, i, wx)
               + wy[5] * _dot6(r5, i, wx))
        if clamp:
            lo, hi, ihi = _range6(r0, r1, r2, r3, r4, r5, i, fx != 0, fy != 0)
            acc = _dering(acc, lo, hi, ihi)
        out[i] = acc


@njit(**_FAST)
def _lanczos4_run(flat, k, nb, out, n, x, au, bu, iu, av, bv, iv, mirror, nu, ce, co, clamp):
    r0 = flat[k:]
    r1 = flat[k + nb:]
    r2 = flat[k + 2 * nb:]
    r3 = flat[k + 3 * nb:]
    r4 = flat[k + 4 * nb:]
    r5 = flat[k + 5 * nb:]
    r6 = flat[k + 6 * nb:]
    r7 = flat[k + 7 * nb:]
    for i in range(n):
        fx, fy = _fractions(x, i, au, bu, iu, av, bv, iv, mirror, nu)
        wx = _w4(fx, ce, co)
        wy = _w4(fy, ce, co)
        acc = (wy[0] * _dot8(r0, i, wx) + wy[1] * _dot8(r1, i, wx) + wy[2] * _dot8(r2, i, wx)
               + wy[3] * _dot8(r3, i, wx) + wy[4] * _dot8(r4, i, wx)
               + wy[5] * _dot8(r5, i, wx) + wy[6] * _dot8(r6, i, wx)
               + wy[7] * _dot8(r7, i, wx))
        if clamp:
            lo, hi, ihi = _range8(r0, r1, r2, r3, r4, r5, r6, r7, i, fx != 0, fy != 0)
            acc = _dering(acc, lo, hi, ihi)
        out[i] = acc


@njit(inline="always", **_FAST)
def _pixel(buf, ub, vb, su, sv, kind, mirror, nu, ce, co, clamp, wx, wy):
    """One output pixel's value at frame coordinates ``su`` (buffer fast axis, mirrored or
    not) and ``sv`` (the exact NaN rule: only taps with a non-zero weight count). ``ub``,
    ``vb``: buffer coordinates of ``buf[0, 0]``; ``wx``, ``wy``: scratch for 8 weights."""
    iu = _tap(su, kind, mirror, nu)
    iv = _tap(sv, kind, False, 0)
    a = 1 if kind <= 1 else kind
    row0 = int(iv) - (a - 1 if kind > 1 else 0) - vb
    col0 = int(iu) - (a - 1 if kind > 1 else 0) - ub
    taps = 1 if kind == 0 else 2 * a
    if row0 < 0 or col0 < 0 or row0 + taps > buf.shape[0] or col0 + taps > buf.shape[1]:
        raise IndexError("bigstack: a tap lies outside the prepared rows (window bug)")
    if kind == 0:
        return buf[row0, col0]
    fx = np.float32(((nu - 1) - iu) - su if mirror else su - iu)
    fy = np.float32(sv - iv)
    if kind == 1:
        wx[0], wx[1] = _F1 - fx, fx
        wy[0], wy[1] = _F1 - fy, fy
    elif kind == 3:
        w = _w3(fx, ce, co)
        for k in range(6):
            wx[k] = w[k]
        w = _w3(fy, ce, co)
        for k in range(6):
            wy[k] = w[k]
    else:
        w = _w4(fx, ce, co)
        for k in range(8):
            wx[k] = w[k]
        w = _w4(fy, ce, co)
        for k in range(8):
            wy[k] = w[k]
    # a weight is zero only on an axis with a zero fraction, off its centre tap (polynomial
    # weights may round to zero near it, the kernel's do not)
    acc = _F0
    for s in range(2 * a):
        if fy == 0 and s != a - 1:
            continue
        part = _F0
        for c in range(2 * a):
            if fx == 0 and c != a - 1:
                continue
            part += wx[c] * buf[row0 + s, col0 + c]
        acc += wy[s] * part
    if clamp and kind > 1:
        lo, hi, ihi = _FINF, -_FINF, -_FINF
        for s in range(2 * a):
            if fy == 0 and s != a - 1:
                continue
            for c in range(2 * a):
                if fx == 0 and c != a - 1:
                    continue
                v = buf[row0 + s, col0 + c]
                lo = _fmin(lo, v)
                hi = _fmax(hi, v)
                if (fy == 0 or a - 2 <= s <= a + 1) and (fx == 0 or a - 2 <= c <= a + 1):
                    ihi = _fmax(ihi, v)
        acc = _dering(acc, lo, hi, ihi)
    return acc


@njit(**_JIT)
def _store_row(vals, jlo, jhi, orow):
    """``orow`` = the values ``[jlo, jhi)`` of a row, NaN outside; returns how many NaN
    values lie inside (the caller checks those with the exact NaN rule). Loops run over
    slices from 0 (an index numba cannot prove >= 0 stops vectorising)."""
    orow[:jlo] = _FNAN
    orow[jhi:] = _FNAN
    n = jhi - jlo
    v = vals[jlo:jhi]
    o = orow[jlo:jhi]
    bad = 0
    for i in range(n):
        o[i] = v[i]
        bad += 0 if v[i] == v[i] else 1
    return bad


@njit(**_JIT)
def _repair(orow, jlo, jhi, buf, ub, vb, tr, bu, bv, x0, kind, mirror, nu, ce, co, clamp, wx,
            wy):
    """Recompute the NaN values of a row with the exact NaN rule: a NaN tap whose
    weight is exactly zero (integer coordinates) does not uncover the pixel."""
    for j in range(jlo, jhi):
        if orow[j] == orow[j]:
            continue
        x = float(x0 + j)
        orow[j] = _pixel(buf, ub, vb, tr[0, 0] * x + bu, tr[1, 0] * x + bv, kind, mirror, nu, ce,
                         co, clamp, wx, wy)


@njit(**_JIT)
def _accumulate(band, total, coverage, wsum, weight):
    """Add a band of values (NaN: not covered) into the accumulators: the only loop
    compiled for each accumulator type (float32, float64). ``weight < 0``: unweighted."""
    h, w = band.shape
    wt = np.float32(weight)
    for r in range(h):
        v = band[r]
        t = total[r]
        c = coverage[r]
        if weight < 0:
            for i in range(w):
                ok = v[i] == v[i]
                t[i] += v[i] if ok else _F0
                c[i] += 1 if ok else 0
        else:
            ws = wsum[r]
            for i in range(w):
                ok = v[i] == v[i]
                t[i] += wt * v[i] if ok else _F0
                c[i] += 1 if ok else 0
                ws[i] += weight if ok else 0.0


@njit(**_JIT)
def _warp_rows(flat, buf, ub, vb, nu, nv, tr, mirror, y0, x0, kind, ce, co, clamp, out, vals):
    """Interpolate every output row of a band from the oriented buffer (see module notes).

    ``buf`` is the start of ``flat``, which has spare values after it (the
    vector loops run past a segment's end); ``tr`` (2, 3): the rows of
    ``[A | t]`` for the buffer's fast and slow axes, ``[s_u, s_v] = tr[:, :2]
    @ [x, y] + tr[:, 2]`` in frame coordinates, the fast axis mirrored in
    the buffer when ``mirror``; ``ub``, ``vb``: buffer coordinates of
    ``buf[0, 0]``; ``out`` (h, w) receives the values, NaN where the frame
    does not cover a pixel; ``vals``: a work row of ``w + 2 * _LANES`` floats.
    """
    h, w = out.shape
    nbv, nbu = buf.shape
    a = 1 if kind <= 1 else kind
    below = 0 if kind <= 1 else a - 1
    guess = 16
    wx = np.empty(8, np.float32)
    wy = np.empty(8, np.float32)
    # a segment ends where a tap index stops stepping by one: about every
    # 1 / max(| |A| - 1 |, |slope|) pixels along a row
    drift = max(abs(abs(tr[0, 0]) - 1.0), abs(tr[1, 0]))
    pixelwise = drift * 2 * _SHORT > 1.0
    for r in range(h):
        y = float(y0 + r)
        bu = tr[0, 1] * y + tr[0, 2]
        bv = tr[1, 1] * y + tr[1, 2]
        jlo, jhi = _covered(tr, bu, bv, x0, w, kind, nu, nv)
        j = jlo
        while j < jhi:
            x = float(x0 + j)
            if pixelwise:  # steep rotations: segments of a few pixels cost more than they save
                je = jhi
            else:
                u = tr[0, 0] * x + bu
                v = tr[1, 0] * x + bv
                iu = _tap(u, kind, mirror, nu)
                iv = _tap(v, kind, False, 0)
                je = _segment_end(tr, bu, bv, x0, j, jhi, iu, iv, kind, mirror, nu, guess)
                guess = je - j
            n = je - j
            seg = vals[j:]
            if pixelwise or (n < _SHORT and kind > 0):
                for i in range(n):
                    xi = x + i
                    seg[i] = _pixel(buf, ub, vb, tr[0, 0] * xi + bu, tr[1, 0] * xi + bv, kind,
                                    mirror, nu, ce, co, clamp, wx, wy)
                j = je
                continue
            row = int(iv) - below - vb
            col = int(iu) - below - ub
            taps = 1 if kind == 0 else 2 * a
            if row < 0 or col < 0 or row + taps > nbv or col + n + taps - 1 > nbu:
                raise IndexError("bigstack: a tap lies outside the prepared rows (window bug)")
            lanes = (n + _LANES - 1) // _LANES * _LANES
            k = row * nbu + col
            au = tr[0, 0]
            av = tr[1, 0]
            if kind == 0:
                src = flat[k:k + n]
                for i in range(n):
                    seg[i] = src[i]
            elif kind == 1:
                _bilinear_run(flat, k, nbu, seg, lanes, x, au, bu, iu, av, bv, iv, mirror, nu)
            elif kind == 3:
                _lanczos3_run(flat, k, nbu, seg, lanes, x, au, bu, iu, av, bv, iv, mirror, nu, ce,
                              co, clamp)
            else:
                _lanczos4_run(flat, k, nbu, seg, lanes, x, au, bu, iu, av, bv, iv, mirror, nu, ce,
                              co, clamp)
            j = je
        jhi = max(jhi, jlo)
        if _store_row(vals, jlo, jhi, out[r]):
            _repair(out[r], jlo, jhi, buf, ub, vb, tr, bu, bv, x0, kind, mirror, nu, ce, co,
                    clamp, wx, wy)


@njit(**_JIT)
def _warp_add(flat, buf, ub, vb, nu, nv, tr, mirror, y0, x0, kind, ce, co, clamp, band, vals,
              total, coverage, wsum, weight, stored, swap, signed, scale, zero, blank,
              has_blank, r_stored, frame_nx, u_lo, u_hi, v_lo, v_hi, pad, lazy):
    """:func:`_warp_rows` and :func:`_accumulate` a few rows at a time (``band``'s height):
    the values go into the sums while they are in the core's cache, and no band of the
    tile's size is written and read back (``wsum`` is not read when ``weight < 0``).

    ``lazy``: the buffer is not prepared yet (nor transposed); the rows each step needs
    are converted (:func:`_prepare_rows`) just before it, so that the warp reads them
    from the cache they were written to."""
    h, w = total.shape
    nbv = buf.shape[0]
    step = band.shape[0]
    below = 0 if kind <= 1 else kind - 1
    taps = 2 if kind <= 1 else 2 * kind
    done_lo = done_hi = 0  # buffer rows [done_lo, done_hi) converted
    for r in range(0, h, step):
        e = min(h, r + step)
        if lazy:  # the buffer rows of the step's corners (v is linear in x and y), widened
            lo = 1e300
            hi = -1e300
            for y in (float(y0 + r), float(y0 + e - 1)):
                for x in (float(x0), float(x0 + w - 1)):
                    v = tr[1, 0] * x + (tr[1, 1] * y + tr[1, 2])
                    lo = min(lo, v)
                    hi = max(hi, v)
            first = int(max(0.0, min(float(nbv), np.floor(lo) - below - vb - 1)))
            last = int(max(0.0, min(float(nbv), np.floor(hi) + taps + 1 - vb + 1)))
            if done_hi <= done_lo:
                done_lo = done_hi = first
            if first < done_lo:
                _prepare_rows(stored, swap, signed, scale, zero, blank, has_blank, r_stored,
                              frame_nx, mirror, u_lo, u_hi, v_lo, v_hi, pad, buf, first,
                              done_lo)
                done_lo = first
            if last > done_hi:
                _prepare_rows(stored, swap, signed, scale, zero, blank, has_blank, r_stored,
                              frame_nx, mirror, u_lo, u_hi, v_lo, v_hi, pad, buf, done_hi,
                              last)
                done_hi = last
        values = band[:e - r]
        _warp_rows(flat, buf, ub, vb, nu, nv, tr, mirror, y0 + r, x0, kind, ce, co, clamp,
                   values, vals)
        _accumulate(values, total[r:e], coverage[r:e], wsum[r:e] if weight >= 0 else wsum[:1],
                    weight)


# --------------------------------------------------------------------------
# pure translations: constant weights, two 1-D passes


@njit(**_FAST)
def _hpass(src, out, wx, taps, n):
    """``out[i] = sum_k wx[k] * src[i + k]`` over ``taps`` taps (1, 2, 6 or 8)."""
    if taps == 1:
        for i in range(n):
            out[i] = src[i]
    elif taps == 2:
        w0, w1 = wx[0], wx[1]
        for i in range(n):
            out[i] = w0 * src[i] + w1 * src[i + 1]
    elif taps == 6:
        w = (wx[0], wx[1], wx[2], wx[3], wx[4], wx[5])
        for i in range(n):
            out[i] = _dot6(src, i, w)
    else:
        w = (wx[0], wx[1], wx[2], wx[3], wx[4], wx[5], wx[6], wx[7])
        for i in range(n):
            out[i] = _dot8(src, i, w)


@njit(**_FAST)
def _vpass(rows, first, out, wy, taps, n):
    """``out[i] = sum_s wy[s] * rows[first + s, i]``."""
    if taps == 1:
        src = rows[first]
        for i in range(n):
            out[i] = src[i]
        return
    src = rows[first]
    w = wy[0]
    for i in range(n):
        out[i] = w * src[i]
    for s in range(1, taps):
        src = rows[first + s]
        w = wy[s]
        for i in range(n):
            out[i] += w * src[i]


@njit(**_FAST)
def _dering_shifted(buf, top, col, a, bx, by, seg, n):
    """Clamp a translated row's values ``seg[:n]`` (Lanczos-``a``): pixel ``i``'s window
    is ``buf[top:top + 2a, col + i:col + i + 2a]``, only its centre row (column) when
    ``by`` (``bx``) is False. The rows are views of one array and ``seg`` the only
    store, so the loop vectorises as the warp's does."""
    r0, r1, r2, r3 = buf[top, col:], buf[top + 1, col:], buf[top + 2, col:], buf[top + 3, col:]
    r4, r5 = buf[top + 4, col:], buf[top + 5, col:]
    if a == 3 and bx and by:  # the usual case, its selects folded away
        for i in range(n):
            lo, hi, ihi = _range6(r0, r1, r2, r3, r4, r5, i, True, True)
            seg[i] = _dering(seg[i], lo, hi, ihi)
    elif a == 3:
        for i in range(n):
            lo, hi, ihi = _range6(r0, r1, r2, r3, r4, r5, i, bx, by)
            seg[i] = _dering(seg[i], lo, hi, ihi)
    elif bx and by:
        r6, r7 = buf[top + 6, col:], buf[top + 7, col:]
        for i in range(n):
            lo, hi, ihi = _range8(r0, r1, r2, r3, r4, r5, r6, r7, i, True, True)
            seg[i] = _dering(seg[i], lo, hi, ihi)
    else:
        r6, r7 = buf[top + 6, col:], buf[top + 7, col:]
        for i in range(n):
            lo, hi, ihi = _range8(r0, r1, r2, r3, r4, r5, r6, r7, i, bx, by)
            seg[i] = _dering(seg[i], lo, hi, ihi)


@njit(**_FAST)
def _shift_weights(f, kind, ce, co, out):
    """The constant weights along one axis of a shift with float32 fraction ``f``, into
    ``out``: ``(taps, taps below floor)``; the one tap for a zero fraction, so that a NaN
    tap always has a non-zero weight."""
    if f == 0:
        out[0] = _F1
        return 1, 0
    if kind == 1:
        out[0] = _F1 - f
        out[1] = f
        return 2, 0
    if kind == 3:
        w = _w3(f, ce, co)
        for k in range(6):
            out[k] = w[k]
        return 6, 2
    w = _w4(f, ce, co)
    for k in range(8):
        out[k] = w[k]
    return 8, 3


@njit(**_JIT)
def _shift_rows(buf, ub, vb, nu, nv, tu, tv, y0, x0, kind, ce, co, clamp, out, hrows, vals):
    """Interpolate a band of a purely translated frame: ``[u, v] = [x + tu, y + tv]``.

    Weights are the same for every pixel: a horizontal pass over each
    buffer row the band needs (into ``hrows``, at least ``h + 8`` rows of
    ``w`` values), then a vertical pass per output row, into ``out`` (NaN
    where the frame does not cover a pixel).
    """
    h, w = out.shape
    wx = np.empty(8, np.float32)
    wy = np.empty(8, np.float32)
    tx, bx = _shift_weights(np.float32(tu - np.floor(tu)), kind, ce, co, wx)
    ty, by = _shift_weights(np.float32(tv - np.floor(tv)), kind, ce, co, wy)
    # covered: u and v in [0, n - 1]
    jlo = min(max(0, int(np.ceil(-tu - x0))), w)
    jhi = max(min(w, int(np.floor(nu - 1 - tu)) - x0 + 1), jlo)
    rlo = min(max(0, int(np.ceil(-tv - y0))), h)
    rhi = max(min(h, int(np.floor(nv - 1 - tv)) - y0 + 1), rlo)
    out[:rlo] = _FNAN
    out[rhi:] = _FNAN
    if jhi <= jlo or rhi <= rlo:
        out[:] = _FNAN
        return
    n = jhi - jlo
    col = int(np.floor(tu)) + x0 + jlo - bx - ub  # buffer column of the first tap
    first = int(np.floor(tv)) + y0 + rlo - by - vb  # buffer row of the first tap row
    count = rhi - rlo + ty - 1
    if first < 0 or first + count > buf.shape[0] or col < 0 or col + n + tx - 1 > buf.shape[1]:
        raise IndexError("bigstack: a tap lies outside the prepared rows (window bug)")
    for s in range(count):
        _hpass(buf[first + s, col:], hrows[s], wx, tx, n)
    # the clamp's window starts a - 1 taps before the centre tap on an axis with one tap
    wcol = col - (kind - 1 if tx == 1 else 0)
    wrow = first - (kind - 1 if ty == 1 else 0)
    if clamp and kind > 1 and (wrow < 0 or wcol < 0 or wrow + rhi - rlo + 2 * kind - 1 >
                               buf.shape[0] or wcol + n + 2 * kind - 1 > buf.shape[1]):
        raise IndexError("bigstack: a clamp window lies outside the prepared rows (window bug)")
    for r in range(rlo, rhi):
        seg = vals[jlo:]
        _vpass(hrows, r - rlo, seg, wy, ty, n)
        if clamp and kind > 1:
            _dering_shifted(buf, wrow + r - rlo, wcol, kind, tx > 1, ty > 1, seg, n)
        _store_row(vals, jlo, jhi, out[r])


# --------------------------------------------------------------------------
# the public warp entry points


def _orientation(A, t, shape):
    """The buffer's orientation: ``(transpose, mirror, tr (2, 3), nu, nv)``: ``tr`` holds the
    rows of ``[A | t]`` for the buffer's fast and slow axes (module notes)."""
    ny, nx = shape
    (a, b), (c, d) = A.tolist()
    tx, ty = t.tolist()
    transpose = abs(c) > abs(a)
    rows = [[c, d, ty], [a, b, tx]] if transpose else [[a, b, tx], [c, d, ty]]
    nu, nv = (ny, nx) if transpose else (nx, ny)
    return transpose, rows[0][0] < 0, np.array(rows), nu, nv


def _buffer(work, key, shape, spare=0, dtype=np.float32):
    """A reused work array of ``shape`` with ``spare`` values after it: ``(array, flat)``."""
    size = math.prod(shape)
    have = work.get(key)
    if have is None or have.size < size + spare:
        have = work[key] = np.empty(max(size + spare, 1), dtype)
    return have[:size].reshape(shape), have[:size + spare]


def _warp(mode, rows, r0, shape, A, t, origin, interpolation, scale, zero, blank, clamp, work,
          total=None, coverage=None, weight=None, weight_sum=None, out=None):
    kind = _kind(interpolation)
    A, t = _transform(A, t)
    ny, nx = (int(n) for n in shape)
    target = total if mode == 0 else out
    h, w = target.shape
    y0, x0 = (int(v) for v in origin)
    ra, rb, ca, cb = _window(kind, A, t, (ny, nx), (y0, y0 + h), (x0, x0 + w))
    if rb <= ra:
        if mode == 1:
            out[...] = np.nan
        return
    rows = np.asarray(rows)
    if rows.ndim != 2 or rows.shape[1] != nx:
        raise ValueError(f"rows must be full frame rows of {nx} pixels, got shape {rows.shape}")
    if r0 > ra or r0 + rows.shape[0] < rb:
        raise ValueError(f"rows [{r0}, {r0 + rows.shape[0]}) do not hold the rows [{ra}, {rb}) "
                         "this band needs (see source_window)")
    work = {} if work is None else work
    ce, co = _LANCZOS[kind if kind > 1 else 3]
    view, swap, signed, _ = _stored_view(rows)
    has_blank, blank_bits = _blank_bits(blank, rows.dtype, view.dtype)
    pad = max(_reach(kind)) + 1
    shift = kind > 0 and A.ravel().tolist() == [1.0, 0.0, 0.0, 1.0]
    if shift:
        transpose, mirror, tr, nu, nv = False, False, None, nx, ny
    else:
        transpose, mirror, tr, nu, nv = _orientation(A, t, (ny, nx))
    if transpose:
        u_lo, u_hi = (ny - rb, ny - ra) if mirror else (ra, rb)
        v_lo, v_hi = ca, cb
    else:
        u_lo, u_hi = (nx - cb, nx - ca) if mirror else (ca, cb)
        v_lo, v_hi = ra, rb
    buf, flat = _buffer(work, "buf", (v_hi - v_lo + 2 * pad, u_hi - u_lo + 2 * pad),
                        spare=4 * _LANES)
    scale, zero = np.float32(scale), np.float32(zero)
    ub, vb = u_lo - pad, v_lo - pad
    vals = _buffer(work, "vals", (w + 2 * _LANES,))[0]
    if mode == 0 and not shift:
        lazy = not transpose
        if not lazy:
            _prepare(view, swap, signed, scale, zero, blank_bits, has_blank, int(r0), nx, ny,
                     transpose, mirror, u_lo, u_hi, v_lo, v_hi, pad, buf)
        wsum = weight_sum if weight is not None else _NO_WEIGHT_SUM
        band = _buffer(work, "chunk", (min(h, _CHUNK), w))[0]
        _warp_add(flat, buf, ub, vb, nu, nv, tr, mirror, y0, x0, kind, ce, co, bool(clamp),
                  band, vals, total, coverage, wsum, -1.0 if weight is None else float(weight),
                  view, swap, signed, scale, zero, blank_bits, has_blank, int(r0), nx, u_lo,
                  u_hi, v_lo, v_hi, pad, lazy)
        return
    _prepare(view, swap, signed, scale, zero, blank_bits, has_blank, int(r0), nx, ny,
             transpose, mirror, u_lo, u_hi, v_lo, v_hi, pad, buf)
    band = out if mode == 1 else _buffer(work, "band", (h, w))[0]
    if shift:
        hrows = _buffer(work, "hrows", (h + 8, w + _LANES))[0]
        _shift_rows(buf, ub, vb, nu, nv, t[0], t[1], y0, x0, kind, ce, co, bool(clamp), band,
                    hrows, vals)
    else:
        _warp_rows(flat, buf, ub, vb, nu, nv, tr, mirror, y0, x0, kind, ce, co, bool(clamp),
                   band, vals)
    if mode == 0:
        wsum = weight_sum if weight is not None else _NO_WEIGHT_SUM
        _accumulate(band, total, coverage, wsum, -1.0 if weight is None else float(weight))


_NO_WEIGHT_SUM = np.zeros((1, 1), np.float64)  # never written: the unweighted path skips it
_TOTALS = (np.dtype(np.float32), np.dtype(np.float64))
_INT32 = np.dtype(np.int32)


def _check_accumulators(total, coverage, weight, weight_sum):
    if total.ndim != 2 or total.dtype not in _TOTALS:
        raise ValueError(f"total must be a 2-D float32 or float64 array, got {total.dtype} "
                         f"{total.shape}")
    if coverage.shape != total.shape or coverage.dtype != _INT32:
        raise ValueError(f"coverage must be int32 of shape {total.shape}, got "
                         f"{coverage.dtype} {coverage.shape}")
    if weight is not None:
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"weight must be finite and >= 0, got {weight!r}")
        if weight_sum is None or weight_sum.shape != total.shape or \
                weight_sum.dtype != np.float64:
            raise ValueError("a weight needs weight_sum, float64 of the shape of total")
    for name, array in (("total", total), ("coverage", coverage), ("weight_sum", weight_sum)):
        if array is not None and not array.flags.c_contiguous:
            raise ValueError(f"{name} must be C-contiguous")


def warp_accumulate(rows, r0, shape, A, t, origin, total, coverage, interpolation="bilinear", *,
                    scale=1.0, zero=0.0, blank=None, weight=None, weight_sum=None, clamp=True,
                    work=None):
    """Warp one frame into an output band and add it to the band's accumulators.

    For every output pixel ``(x, y)`` of the band that the frame covers (see
    the module notes for each interpolation's coverage and the NaN rule),
    ``total[y - y0, x - x0] += value`` (times ``weight``) and
    ``coverage[...] += 1`` (and ``weight_sum[...] += weight``), ``value``
    being the frame interpolated at ``A @ [x, y] + t``.

    Parameters
    ----------
    rows : numpy.ndarray (R, nx)
        Frame rows ``[r0, r0 + R)`` as stored: uint8, int16, int32 (any byte
        order, as FITS gives them) or float32/float64. They must include
        the rows :func:`source_window` names for this band.
    r0 : int
        The frame row of ``rows[0]``.
    shape : (ny, nx)
        The frame's shape.
    A, t : array_like (2, 2) and (2,)
        Output ``[x, y]`` -> frame ``A @ [x, y] + t``.
    origin : (y0, x0)
        Absolute output coordinates of ``total[0, 0]``.
    total : numpy.ndarray float32 or float64 (h, w)
    coverage : numpy.ndarray int32 (h, w)
    interpolation : {"nearest", "bilinear", "lanczos3", "lanczos4"}
    scale, zero : float
        ``physical = stored * scale + zero`` (FITS BSCALE, BZERO).
    blank : int, optional
        The stored value of a missing pixel (FITS BLANK, integer rows).
    weight : float, optional
        The frame's weight; then ``weight_sum`` (float64 (h, w)) is required.
    clamp : bool
        Clamp Lanczos to the bilinear taps' range (module notes).
    work : dict, optional
        Scratch buffers kept between calls (one dict per thread).

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.arange(12, dtype=np.float32).reshape(3, 4)
    >>> total, coverage = np.zeros((3, 4), np.float32), np.zeros((3, 4), np.int32)
    >>> warp_accumulate(frame, 0, (3, 4), np.eye(2), [1.0, 0.0], (0, 0), total, coverage)
    >>> total[0].tolist(), coverage[0].tolist()
    ([1.0, 2.0, 3.0, 0.0], [1, 1, 1, 0])
    """
    _check_accumulators(total, coverage, weight, weight_sum)
    _warp(0, rows, r0, shape, A, t, origin, interpolation, scale, zero, blank, clamp, work,
          total=total, coverage=coverage, weight=weight, weight_sum=weight_sum)


def warp_values(rows, r0, shape, A, t, origin, out, interpolation="bilinear", *, scale=1.0,
                zero=0.0, blank=None, clamp=True, work=None):
    """Like :func:`warp_accumulate`, but store the values: ``out[...] = value``, NaN
    where the frame does not cover a pixel (a frame's plane for :func:`reject_block`).
    """
    if out.ndim != 2 or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous 2-D float32 array, got {out.dtype} "
                         f"{out.shape}")
    _warp(1, rows, r0, shape, A, t, origin, interpolation, scale, zero, blank, clamp, work,
          out=out)


# --------------------------------------------------------------------------
# rejection: 64 pixels at a time, vectorised across pixels
#
# A tile holds the N values of 64 adjacent pixels, frame by frame (N rounded
# up to a multiple of 4 with NaN rows, which every test below rejects). Each
# pass reads the whole tile once and updates per-pixel state; the loops run
# over the 64 pixels innermost (vectorised) and over 4 frames at a time, so the
# state is read and written once per 4 values. Ranks are global: the rank of a
# value among all the pixel's finite values.


@njit(inline="always", **_JIT)
def _fmax(a, b):
    # a select: numba's max() keeps larger expressions of them (Lanczos' clamp window)
    # from vectorising, measured 8x slower
    return a if a > b else b


@njit(inline="always", **_JIT)
def _fmin(a, b):
    return a if a < b else b


@njit(inline="always", **_JIT)
def _one(test):
    return _F1 if test else _F0


@njit(**_JIT)
def _load_tiles(flat, q0, g, tiles):
    """Copy pixels ``[q0, q0 + g)`` of every frame into consecutive tiles of 64 pixels (NaN
    where not finite, beyond the block or beyond the frames). A frame's row of several
    tiles is one contiguous read: one tile's 256 bytes a frame, 400 frames apart in
    memory, are fetched one by one (measured 0.99 ns a value at 400 frames); four
    tiles' 1 KiB a frame stream in (0.47 ns)."""
    n = flat.shape[0]
    for f in range(n):
        src = flat[f, q0:q0 + g]
        for c in range(tiles.shape[0]):
            dst = tiles[c, f]
            lo = c * _LANES
            m = min(max(g - lo, 0), _LANES)
            for i in range(m):
                v = src[lo + i]
                dst[i] = v if v - v == 0 else _FNAN
            for i in range(m, _LANES):
                dst[i] = _FNAN
    for c in range(tiles.shape[0]):
        for f in range(n, tiles.shape[1]):
            for i in range(_LANES):
                tiles[c, f, i] = _FNAN


@njit(**_JIT)
def _first_pass(tile, st, sd, exact):
    """Per pixel over its finite values: count, min, max (``st`` rows 0, 2, 3) and sums
    (``sd``): with ``exact`` the float64 sum and sum of squares (rows 0, 1), else only a
    float32 sum in row 0 (a median's first guess)."""
    cnt = st[0]
    mn = st[2]
    mx = st[3]
    s1 = sd[0]
    s2 = sd[1]
    quick = np.zeros(_LANES, np.float32)
    for i in range(_LANES):
        cnt[i] = 0
        mn[i] = _FINF
        mx[i] = -_FINF
        s1[i] = 0.0
        s2[i] = 0.0
    for f in range(0, tile.shape[0], 4):
        r0 = tile[f]
        r1 = tile[f + 1]
        r2 = tile[f + 2]
        r3 = tile[f + 3]
        for i in range(_LANES):
            v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
            k0, k1, k2, k3 = v0 == v0, v1 == v1, v2 == v2, v3 == v3
            cnt[i] += (_one(k0) + _one(k1)) + (_one(k2) + _one(k3))
            mn[i] = _fmin(mn[i], _fmin(_fmin(v0 if k0 else _FINF, v1 if k1 else _FINF),
                                       _fmin(v2 if k2 else _FINF, v3 if k3 else _FINF)))
            mx[i] = _fmax(mx[i], _fmax(_fmax(v0 if k0 else -_FINF, v1 if k1 else -_FINF),
                                       _fmax(v2 if k2 else -_FINF, v3 if k3 else -_FINF)))
        if exact:
            for i in range(_LANES):
                v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
                d0 = np.float64(v0 if v0 == v0 else _F0)
                d1 = np.float64(v1 if v1 == v1 else _F0)
                d2 = np.float64(v2 if v2 == v2 else _F0)
                d3 = np.float64(v3 if v3 == v3 else _F0)
                s1[i] += (d0 + d1) + (d2 + d3)
                s2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
        else:
            for i in range(_LANES):
                v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
                quick[i] += ((v0 if v0 == v0 else _F0) + (v1 if v1 == v1 else _F0)) + (
                    (v2 if v2 == v2 else _F0) + (v3 if v3 == v3 else _F0))
    if not exact:
        for i in range(_LANES):
            s1[i] = quick[i]


@njit(**_JIT)
def _clip_pass(tile, lo, hi, x, st, sd, near):
    """Per pixel: over its values in ``[lo, hi]`` the count, the count below ``lo``, the
    smallest and the largest (``st`` rows 0-3), the float64 sums (``sd``); and around
    ``x`` over all values (``near`` rows: 0 ``#(v < x)``, 1 ``#(v <= x)``, 2 ``max(v <
    x)``, 3 ``min(v > x)``)."""
    n = st[0]
    below = st[1]
    kmin = st[2]
    kmax = st[3]
    s1 = sd[0]
    s2 = sd[1]
    lt = near[0]
    le = near[1]
    under = near[2]
    over = near[3]
    for i in range(_LANES):
        n[i] = 0
        below[i] = 0
        kmin[i] = _FINF
        kmax[i] = -_FINF
        s1[i] = 0.0
        s2[i] = 0.0
        lt[i] = 0
        le[i] = 0
        under[i] = -_FINF
        over[i] = _FINF
    for f in range(0, tile.shape[0], 4):
        r0 = tile[f]
        r1 = tile[f + 1]
        r2 = tile[f + 2]
        r3 = tile[f + 3]
        for i in range(_LANES):
            a = lo[i]
            b = hi[i]
            m = x[i]
            v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
            k0 = (v0 >= a) & (v0 <= b)
            k1 = (v1 >= a) & (v1 <= b)
            k2 = (v2 >= a) & (v2 <= b)
            k3 = (v3 >= a) & (v3 <= b)
            n[i] += (_one(k0) + _one(k1)) + (_one(k2) + _one(k3))
            below[i] += (_one(v0 < a) + _one(v1 < a)) + (_one(v2 < a) + _one(v3 < a))
            kmin[i] = _fmin(kmin[i], _fmin(_fmin(v0 if k0 else _FINF, v1 if k1 else _FINF),
                                           _fmin(v2 if k2 else _FINF, v3 if k3 else _FINF)))
            kmax[i] = _fmax(kmax[i], _fmax(_fmax(v0 if k0 else -_FINF, v1 if k1 else -_FINF),
                                           _fmax(v2 if k2 else -_FINF, v3 if k3 else -_FINF)))
            d0 = np.float64(v0 if k0 else _F0)
            d1 = np.float64(v1 if k1 else _F0)
            d2 = np.float64(v2 if k2 else _F0)
            d3 = np.float64(v3 if k3 else _F0)
            s1[i] += (d0 + d1) + (d2 + d3)
            s2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)
            lt[i] += (_one(v0 < m) + _one(v1 < m)) + (_one(v2 < m) + _one(v3 < m))
            le[i] += (_one(v0 <= m) + _one(v1 <= m)) + (_one(v2 <= m) + _one(v3 <= m))
            under[i] = _fmax(under[i], _fmax(_fmax(v0 if v0 < m else -_FINF,
                                                   v1 if v1 < m else -_FINF),
                                             _fmax(v2 if v2 < m else -_FINF,
                                                   v3 if v3 < m else -_FINF)))
            over[i] = _fmin(over[i], _fmin(_fmin(v0 if v0 > m else _FINF,
                                                 v1 if v1 > m else _FINF),
                                           _fmin(v2 if v2 > m else _FINF,
                                                 v3 if v3 > m else _FINF)))


@njit(**_JIT)
def _count(tile, m, out):
    """Per pixel: ``#(v < m)``, ``max(v < m)`` and ``min(v >= m)`` (``out`` rows)."""
    c = out[0]
    under = out[1]
    over = out[2]
    for i in range(_LANES):
        c[i] = 0
        under[i] = -_FINF
        over[i] = _FINF
    for f in range(0, tile.shape[0], 4):
        r0 = tile[f]
        r1 = tile[f + 1]
        r2 = tile[f + 2]
        r3 = tile[f + 3]
        for i in range(_LANES):
            s = m[i]
            v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
            l0, l1, l2, l3 = v0 < s, v1 < s, v2 < s, v3 < s
            c[i] += (_one(l0) + _one(l1)) + (_one(l2) + _one(l3))
            under[i] = _fmax(under[i], _fmax(_fmax(v0 if l0 else -_FINF, v1 if l1 else -_FINF),
                                             _fmax(v2 if l2 else -_FINF, v3 if l3 else -_FINF)))
            over[i] = _fmin(over[i], _fmin(_fmin(v0 if v0 >= s else _FINF,
                                                 v1 if v1 >= s else _FINF),
                                           _fmin(v2 if v2 >= s else _FINF,
                                                 v3 if v3 >= s else _FINF)))


@njit(inline="always", **_JIT)
def _key_mid(a, b, key):
    """A float32 in ``(a, b]`` (``a < b``) halfway in the order of float32 values."""
    bits = key.view(np.int32)
    key[0] = a
    ka = np.int64(bits[0])
    key[0] = b
    kb = np.int64(bits[0])
    # int32 bits -> an integer order over all float32 (negative values reversed)
    oa = ka if ka >= 0 else -2147483648 - ka
    ob = kb if kb >= 0 else -2147483648 - kb
    om = (oa + ob + 1) // 2
    bits[0] = np.int32(om if om >= 0 else -2147483648 - om)
    return key[0]


@njit(inline="always", **_JIT)
def _tied_next(value, a, b, cb, k):
    """The value of rank ``k + 1`` when a bracket ``[a, b]`` of one value (``value``)
    holds it too (``cb = #(v <= b) >= k + 2``), else NaN."""
    return value if (a == b) & (cb >= k + 2) else _FNAN


@njit(**_JIT)
def _select(tile, rank, todo, a, ca, b, cb, guess, out, upper, counts, key):
    """The value of global rank ``rank`` of every pixel with ``todo`` set, into ``out``.

    ``a <= value <= b`` bracket it with ``ca = #(v < a) <= rank`` and ``cb =
    #(v <= b) > rank`` (-1: unknown); ``a`` and ``b`` are overwritten. Each pass
    counts the values below a splitter; the bracket snaps to the data values
    either side of it, and the rank is found when the count equals it or the
    bracket holds one value. Splitters interpolate the rank within the
    bracket, every sixth pass bisects it in float32 order (so it ends within
    192 passes); the first is ``guess`` when inside. Returns the passes made.

    Where the same pass tells the value of rank ``rank + 1`` too (the splitter
    fell between the two, or they are tied), it goes into ``upper``; elsewhere
    ``upper`` is left as it was (an even count's median needs both).
    """
    m = np.empty(_LANES, np.float32)
    left = 0
    for i in range(_LANES):
        m[i] = _FNAN  # NaN: not searching (no value is below or above it)
        if not todo[i]:
            continue
        if a[i] == b[i]:
            out[i] = a[i]
            nxt = _tied_next(a[i], a[i], b[i], cb[i], rank[i])
            if nxt == nxt:
                upper[i] = nxt
            continue
        g = guess[i]
        m[i] = g if (g > a[i]) & (g <= b[i]) else _key_mid(a[i], b[i], key)
        left += 1
    passes = 0
    column = np.empty(tile.shape[0], np.float32)
    while left:
        if left <= _STRAGGLERS:  # a few pixels left: one by one, over their own values
            for i in range(_LANES):
                if m[i] == m[i]:
                    for f in range(tile.shape[0]):
                        column[f] = tile[f, i]
                    out[i], nxt = _select_one(column, rank[i], a[i], ca[i], b[i], cb[i],
                                              m[i], passes, key)
                    if nxt == nxt:
                        upper[i] = nxt
            return passes
        passes += 1
        _count(tile, m, counts)
        left = 0
        for i in range(_LANES):
            if m[i] != m[i]:
                continue
            done, a[i], ca[i], b[i], cb[i], m[i], nxt = _narrow(
                counts[0, i], counts[1, i], counts[2, i], rank[i], a[i], ca[i], b[i], cb[i],
                passes, key)
            if done:
                out[i] = m[i]
                m[i] = _FNAN
                if nxt == nxt:
                    upper[i] = nxt
            else:
                left += 1
    return passes


@njit(inline="always", **_JIT)
def _narrow(c, under, over, k, a, ca, b, cb, passes, key):
    """One step of :func:`_select` for one pixel from a count ``c`` of values below the
    splitter, the largest value below it and the smallest from it on: ``(done, a, ca, b,
    cb, m, upper)``, ``m`` the value when done, else the next splitter; ``upper`` the
    value of rank ``k + 1`` when this count tells it too, else NaN."""
    if c > k:  # the rank is below the splitter: at most the largest value below it
        b = under
        cb = c
        if c == k + 1:  # the splitter lies between ranks k and k + 1
            return True, a, ca, b, cb, b, over
        if a == b:
            return True, a, ca, b, cb, b, _tied_next(b, a, b, cb, k)
    else:  # at least the smallest value from the splitter on
        a = over
        ca = c
        if c == k or a == b:
            return True, a, ca, b, cb, a, _tied_next(a, a, b, cb, k)
    if passes % 6 == 0 or ca < 0 or cb < 0:
        return False, a, ca, b, cb, _key_mid(a, b, key), _FNAN
    s = np.float32(a + (np.float64(b) - a) * ((k - ca + 0.5) / (cb - ca)))
    return False, a, ca, b, cb, s if (s > a) & (s <= b) else _key_mid(a, b, key), _FNAN


@njit(**_JIT)
def _select_one(column, k, a, ca, b, cb, m, passes, key):
    """:func:`_select` for one pixel, over its own values (``column``)."""
    while True:
        passes += 1
        c = _F0
        under = -_FINF
        over = _FINF
        for f in range(column.shape[0]):
            v = column[f]
            if v < m:
                c += _F1
                under = _fmax(under, v)
            elif v >= m:
                over = _fmin(over, v)
        done, a, ca, b, cb, m, nxt = _narrow(c, under, over, k, a, ca, b, cb, passes, key)
        if done:
            return m, nxt


@njit(inline="always", **_JIT)
def _nearby(k, x, near, i):
    """The value of global rank ``k`` if ``near`` (a :func:`_clip_pass` around ``x``)
    tells it, else NaN."""
    if near[0, i] <= k < near[1, i]:
        return x[i]
    if k == near[1, i] and near[3, i] < _FINF:
        return near[3, i]
    if k == near[0, i] - 1 and near[2, i] > -_FINF:
        return near[2, i]
    return _FNAN


@njit(**_JIT)
def _medians(tile, st, active, lo, hi, guess, x, near, have_near, mid, work, key):
    """Median (float64, into ``mid``) of each active pixel's values in ``[lo, hi]``;
    ``st`` rows 0, 1 hold their count and the count below ``lo``; ``x`` receives the
    lower middle value. With ``have_near``, ``near`` (around the previous ``x``)
    often tells the middle values without a pass."""
    rank = np.empty(_LANES, np.float32)
    upper = np.empty(_LANES, np.float32)
    todo = np.zeros(_LANES, np.bool_)
    a = work[0]
    b = work[1]
    ca = work[2]
    cb = work[3]
    for i in range(_LANES):
        n = st[0, i]
        mid[i] = np.nan
        upper[i] = _FNAN
        if not (active[i] and n > 0):
            continue
        rank[i] = st[1, i] + (n - 1) // 2
        value = _nearby(rank[i], x, near, i) if have_near else _FNAN
        if n % 2 == 0 and have_near:
            upper[i] = _nearby(rank[i] + 1, x, near, i)
        if value == value:
            x[i] = value
            continue
        todo[i] = True
        a[i] = lo[i]
        b[i] = hi[i]
        ca[i] = st[1, i]
        cb[i] = st[1, i] + n
    if todo.any():
        _select(tile, rank, todo, a, ca, b, cb, guess, x, upper, work[4:7], key)
    even = np.zeros(_LANES, np.bool_)
    for i in range(_LANES):
        even[i] = active[i] and st[0, i] > 0 and st[0, i] % 2 == 0 and upper[i] != upper[i]
    if even.any():
        _count_upper(tile, x, even, upper, rank, work[4:6])
    for i in range(_LANES):
        if not (active[i] and st[0, i] > 0):
            continue
        second = upper[i] if st[0, i] % 2 == 0 else x[i]
        mid[i] = 0.5 * (np.float64(x[i]) + np.float64(second))


@njit(**_JIT)
def _count_upper(tile, x, even, upper, rank, out):
    """For pixels with ``even`` set: the value of rank ``rank + 1`` from the one of
    ``rank`` (``x``): ``x`` itself when tied, else the smallest value above it."""
    le = out[0]
    over = out[1]
    for i in range(_LANES):
        le[i] = 0
        over[i] = _FINF
    for f in range(0, tile.shape[0], 4):
        r0 = tile[f]
        r1 = tile[f + 1]
        r2 = tile[f + 2]
        r3 = tile[f + 3]
        for i in range(_LANES):
            m = x[i]
            v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
            le[i] += (_one(v0 <= m) + _one(v1 <= m)) + (_one(v2 <= m) + _one(v3 <= m))
            over[i] = _fmin(over[i], _fmin(_fmin(v0 if v0 > m else _FINF,
                                                 v1 if v1 > m else _FINF),
                                           _fmin(v2 if v2 > m else _FINF,
                                                 v3 if v3 > m else _FINF)))
    for i in range(_LANES):
        if even[i]:
            upper[i] = x[i] if le[i] > rank[i] + 1 else over[i]


@njit(inline="always", **_JIT)
def _f32_at_least(x):
    """The smallest float32 >= ``x`` (float64)."""
    f = np.float32(x)
    return f if f >= x else np.float32(np.nextafter(f, _FINF))


@njit(inline="always", **_JIT)
def _f32_at_most(x):
    f = np.float32(x)
    return f if f <= x else np.float32(np.nextafter(f, -_FINF))


@njit(**_JIT)
def _winsor_pass(tile, lo, hi, clo, chi, out):
    """Per pixel over its values in ``[lo, hi]``: the counts below ``clo`` and above
    ``chi`` and the float64 sums of the values in ``[clo, chi]``."""
    na = out[0]
    nb = out[1]
    m1 = out[2]
    m2 = out[3]
    for i in range(_LANES):
        na[i] = 0.0
        nb[i] = 0.0
        m1[i] = 0.0
        m2[i] = 0.0
    for f in range(0, tile.shape[0], 4):
        r0 = tile[f]
        r1 = tile[f + 1]
        r2 = tile[f + 2]
        r3 = tile[f + 3]
        for i in range(_LANES):
            a = lo[i]
            b = hi[i]
            ca = clo[i]
            cb = chi[i]
            v0, v1, v2, v3 = r0[i], r1[i], r2[i], r3[i]
            # inside the run and below / above the clip points (NaN: neither)
            na[i] += ((_one((v0 >= a) & (v0 < ca)) + _one((v1 >= a) & (v1 < ca)))
                      + (_one((v2 >= a) & (v2 < ca)) + _one((v3 >= a) & (v3 < ca))))
            nb[i] += ((_one((v0 <= b) & (v0 > cb)) + _one((v1 <= b) & (v1 > cb)))
                      + (_one((v2 <= b) & (v2 > cb)) + _one((v3 <= b) & (v3 > cb))))
            d0 = np.float64(v0 if (v0 >= ca) & (v0 <= cb) else _F0)
            d1 = np.float64(v1 if (v1 >= ca) & (v1 <= cb) else _F0)
            d2 = np.float64(v2 if (v2 >= ca) & (v2 <= cb) else _F0)
            d3 = np.float64(v3 if (v3 >= ca) & (v3 <= cb) else _F0)
            m1[i] += (d0 + d1) + (d2 + d3)
            m2[i] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3)


@njit(**_JIT)
def _winsorized_sigma(tile, lo, hi, n, active, middle, sigma, work):
    """Huber's winsorized sigma of the values in ``[lo, hi]`` (``_reject`` module notes) of
    the active pixels: ``sigma`` (the standard deviation on entry) is updated in place."""
    todo = active & (n >= 2) & (sigma > 0)
    clo = np.empty(_LANES, np.float32)
    chi = np.empty(_LANES, np.float32)
    low = np.empty(_LANES)
    high = np.empty(_LANES)
    for _ in range(50):
        if not todo.any():
            break
        for i in range(_LANES):
            low[i] = middle[i] - 1.5 * sigma[i]
            high[i] = middle[i] + 1.5 * sigma[i]
            # the clip points within the run: lo <= clo, chi <= hi, so that values outside
            # the run are neither counted nor summed
            clo[i] = max(_f32_at_least(low[i]), lo[i]) if todo[i] else _FINF
            chi[i] = min(_f32_at_most(high[i]), hi[i]) if todo[i] else -_FINF
        _winsor_pass(tile, lo, hi, clo, chi, work)
        for i in range(_LANES):
            if not todo[i]:
                continue
            w1 = work[0, i] * low[i] + work[2, i] + work[1, i] * high[i]
            w2 = work[0, i] * low[i] * low[i] + work[3, i] + work[1, i] * high[i] * high[i]
            mean = w1 / n[i]
            new = 1.134 * np.sqrt(max(w2 / n[i] - mean * mean, 0.0))
            if abs(new - sigma[i]) <= 5e-4 * sigma[i]:
                todo[i] = False
            sigma[i] = new


@njit(**_JIT)
def _weighted(tile, lo, hi, weights, out):
    """Per pixel: the sum of ``weights[f] * v`` and of the weights over values in
    ``[lo, hi]``."""
    total = out[0]
    norm = out[1]
    for i in range(_LANES):
        total[i] = 0.0
        norm[i] = 0.0
    for f in range(weights.shape[0]):
        row = tile[f]
        wf = weights[f]
        for i in range(_LANES):
            v = row[i]
            inside = (v >= lo[i]) & (v <= hi[i])
            total[i] += wf * np.float64(v) if inside else 0.0
            norm[i] += wf if inside else 0.0


@njit(**_JIT)
def _reject_tile(tile, p0, g, st, sd, near, work, wsums, key, lo, hi, x, guess, mid, sigma,
                 method, kl, kh, centre_median, maxiters, weights, weighted, result, kept,
                 rejected):
    """Reduce the 64 pixels of ``tile`` (from pixel ``p0``, ``g`` of them real) into
    ``result``, ``kept`` and ``rejected``; the other arguments are work arrays."""
    _first_pass(tile, st, sd, method != 0)
    total = st[0].copy()
    for i in range(_LANES):
        st[1, i] = 0  # nothing below the run yet
        lo[i] = st[2, i]  # the run: every finite value
        hi[i] = st[3, i]
        guess[i] = np.float32(sd[0, i] / st[0, i]) if st[0, i] > 0 else _F0
    if method == 0:
        _medians(tile, st, total > 0, lo, hi, guess, x, near, False, mid, work, key)
        for i in range(g):
            result[p0 + i] = np.float32(mid[i])
            kept[p0 + i] = np.int32(total[i])
            rejected[p0 + i] = 0
        return
    active = total > 1
    have_near = False
    for _ in range(maxiters):
        if not active.any():
            break
        n = st[0]
        if method == 1 and not centre_median:
            for i in range(_LANES):
                mid[i] = sd[0, i] / n[i] if n[i] > 0 else np.nan
        else:
            _medians(tile, st, active, lo, hi, guess, x, near, have_near, mid, work, key)
        for i in range(_LANES):
            mean = sd[0, i] / n[i] if n[i] > 0 else 0.0
            sigma[i] = np.sqrt(max(sd[1, i] / n[i] - mean * mean, 0.0)) if n[i] > 0 else 0.0
        if method == 2:
            _winsorized_sigma(tile, lo, hi, n.copy(), active, mid, sigma, wsums)
        before = n.copy()
        moves = False
        for i in range(_LANES):
            if active[i]:
                lo[i] = max(lo[i], _f32_at_least(mid[i] - kl * sigma[i]))
                hi[i] = min(hi[i], _f32_at_most(mid[i] + kh * sigma[i]))
                guess[i] = x[i]
                # st rows 2, 3: the smallest and largest value kept; inside the new
                # bounds, this iteration rejects nothing from this pixel
                moves |= (st[2, i] < lo[i]) | (st[3, i] > hi[i])
        if not moves:  # no pixel would change: the pass would only confirm it
            break
        _clip_pass(tile, lo, hi, x, st, sd, near)
        have_near = method != 1 or centre_median
        for i in range(_LANES):
            active[i] = active[i] & (st[0, i] != before[i]) & (st[0, i] > 0)
    if weighted:
        _weighted(tile, lo, hi, weights, wsums)
    for i in range(g):
        n = st[0, i]
        if weighted:
            value = wsums[0, i] / wsums[1, i] if wsums[1, i] > 0 else np.nan
        else:
            value = sd[0, i] / n if n > 0 else np.nan
        result[p0 + i] = np.float32(value)
        kept[p0 + i] = np.int32(n)
        rejected[p0 + i] = np.int32(total[i] - n)


@njit(**_JIT)
def _scratch(nfr):
    """The work arrays of :func:`_reject_loaded` for ``nfr`` frames (tiles first)."""
    return (np.empty((_LOAD_TILES, (nfr + 3) // 4 * 4, _LANES), np.float32),
            np.empty((4, _LANES), np.float32), np.empty((2, _LANES)),
            np.zeros((4, _LANES), np.float32), np.empty((7, _LANES), np.float32),
            np.empty((4, _LANES)), np.empty(1, np.float32), np.empty(_LANES, np.float32),
            np.empty(_LANES, np.float32), np.empty(_LANES, np.float32),
            np.empty(_LANES, np.float32), np.empty(_LANES), np.empty(_LANES))


@njit(**_JIT)
def _reject_loaded(q0, pixels, scratch, method, kl, kh, centre_median, maxiters, weights,
                   weighted, result, kept, rejected):
    """Reduce the loaded tiles of pixels ``[q0, q0 + 256)`` (``scratch[0]``)."""
    tiles, st, sd, near, work, wsums, key, lo, hi, x, guess, mid, sigma = scratch
    for p0 in range(q0, min(q0 + _LANES * _LOAD_TILES, pixels), _LANES):
        g = min(_LANES, pixels - p0)
        tile = tiles[(p0 - q0) // _LANES]
        _reject_tile(tile, p0, g, st, sd, near, work, wsums, key, lo, hi, x, guess, mid,
                     sigma, method, kl, kh, centre_median, maxiters, weights, weighted,
                     result, kept, rejected)


@njit(**_JIT)
def _reject_tiles(flat, method, kl, kh, centre_median, maxiters, weights, weighted, result,
                  kept, rejected):
    """Reduce every pixel of ``flat`` (N, P), 64 pixels at a time (module notes).

    ``method``: 0 median, 1 sigma_clip, 2 winsorized, as ``_reject`` defines them.
    """
    nfr, pixels = flat.shape
    scratch = _scratch(nfr)
    for q0 in range(0, pixels, _LANES * _LOAD_TILES):
        _load_tiles(flat, q0, min(_LANES * _LOAD_TILES, pixels - q0), scratch[0])
        _reject_loaded(q0, pixels, scratch, method, kl, kh, centre_median, maxiters, weights,
                       weighted, result, kept, rejected)


@njit(**_JIT)
def _stored_tiles(src, swap, signed, scale, zero, blank, has_blank, tiles, f):
    """``tiles[c, f, i]`` = the physical value of ``src[c * 64 + i]``, every one of them."""
    for c in range(_LOAD_TILES):
        dst = tiles[c, f]
        part = src[c * _LANES:c * _LANES + _LANES]
        for i in range(_LANES):
            dst[i] = _physical(part[i], swap, signed, scale, zero, blank, has_blank)


@njit(**_JIT)
def _stored_edge(plane, oy, ny, ox, nx, shift, swap, signed, sc, ze, bl, hb, width, q0, g, line,
                 tiles, f):
    """One frame's part of :func:`_load_stored_tiles` where its window ends (or the tiles
    do): row by row through ``line``."""
    p = q0
    while p < q0 + g:
        y = p // width
        xa = p - y * width
        m = min(width - xa, q0 + g - p)  # pixels of row y from column xa
        out = line[p - q0:p - q0 + m]
        lo = hi = m  # the covered columns, from xa
        if oy <= y < oy + ny:
            lo = min(max(ox - xa, 0), m)
            hi = min(max(ox + nx - xa, lo), m)
            src = plane[y, xa + lo + shift:xa + hi + shift]
            for i in range(hi - lo):
                out[lo + i] = _physical(src[i], swap, signed, sc, ze, bl, hb)
        for i in range(lo):
            out[i] = _FNAN
        for i in range(hi, m):
            out[i] = _FNAN
        p += m
    for c in range(tiles.shape[0]):
        dst = tiles[c, f]
        base = c * _LANES
        m = min(max(g - base, 0), _LANES)
        for i in range(m):
            dst[i] = line[base + i]
        for i in range(m, _LANES):
            dst[i] = _FNAN


@njit(**_JIT)
def _load_stored_tiles(block, geometry, swap, signed, scale, zero, blank, has_blank, width, q0,
                       g, line, tiles):
    """:func:`_load_tiles` from stored rows: the physical values of output pixels ``[q0,
    q0 + g)`` (rows of ``width``) of every frame, NaN outside the frame's window or at a
    BLANK (see :func:`reject_stored`)."""
    n = block.shape[0]
    y = q0 // width
    xa = q0 - y * width
    for f in range(n):
        oy, ny, ox, nx, shift = (geometry[f, 0], geometry[f, 1], geometry[f, 2],
                                 geometry[f, 3], geometry[f, 4])
        sc, ze, bl, hb = scale[f], zero[f], blank[f], has_blank[f]
        if g == _LANES * _LOAD_TILES and xa + g <= width and oy <= y < oy + ny and \
                ox <= xa and xa + g <= ox + nx:
            # whole tiles on one row, inside the window (the usual case): straight into the
            # tiles (0.29 ns a value; 0.85 with this loop written here, 1.0 through ``line``)
            _stored_tiles(block[f, y, xa + shift:xa + shift + g], swap, signed, sc, ze, bl, hb,
                          tiles, f)
            continue
        _stored_edge(block[f], oy, ny, ox, nx, shift, swap, signed, sc, ze, bl, hb, width, q0,
                     g, line, tiles, f)
    for c in range(tiles.shape[0]):
        for f in range(n, tiles.shape[1]):
            for i in range(_LANES):
                tiles[c, f, i] = _FNAN


@njit(**_JIT)
def _reject_stored_tiles(block, geometry, swap, signed, scale, zero, blank, has_blank, width,
                         method, kl, kh, centre_median, maxiters, weights, weighted, result,
                         kept, rejected):
    """:func:`_reject_tiles` of a block of stored rows (:func:`reject_stored`)."""
    nfr = block.shape[0]
    pixels = block.shape[1] * width
    scratch = _scratch(nfr)
    line = np.empty(_LANES * _LOAD_TILES, np.float32)
    for q0 in range(0, pixels, _LANES * _LOAD_TILES):
        _load_stored_tiles(block, geometry, swap, signed, scale, zero, blank, has_blank, width,
                           q0, min(_LANES * _LOAD_TILES, pixels - q0), line, scratch[0])
        _reject_loaded(q0, pixels, scratch, method, kl, kh, centre_median, maxiters, weights,
                       weighted, result, kept, rejected)


def reject_block(values, method, *, weights=None, kappa=None, centre=None, maxiters=None):
    """Combine a gathered block per pixel with rejection, compiled.

    The same contract as :func:`bigstack._reject.combine_block` for
    ``method`` in :data:`REJECTIONS` (the same options, validation and
    results; module notes for how it is computed).

    Parameters
    ----------
    values : numpy.ndarray float32 (N, h, W)
        The N frames' values per output pixel, NaN (or inf) where a frame
        does not cover it. Other dtypes are converted to float32.
    method : {"median", "sigma_clip", "winsorized"}
    weights, kappa, centre, maxiters
        As for :func:`bigstack._reject.combine_block`.

    Returns
    -------
    result : float32 (h, W)
    kept, rejected : int32 (h, W)

    Examples
    --------
    >>> import numpy as np
    >>> block = np.full((5, 1, 2), 10.0, np.float32)
    >>> block[2, 0, 0] = 1000.0
    >>> block[0, 0, 1] = np.nan
    >>> result, kept, rejected = reject_block(block, "sigma_clip", kappa=1.5)
    >>> result.tolist(), kept.tolist(), rejected.tolist()
    ([[10.0, 10.0]], [[4, 4]], [[1, 0]])
    """
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"values must be a (frame, y, x) block, got shape {values.shape}")
    values = np.ascontiguousarray(values, dtype=np.float32)
    n, h, w = values.shape
    options, outputs = _rejection(method, n, h * w, weights, kappa, centre, maxiters)
    if n and h * w:
        _reject_tiles(values.reshape(n, h * w), *options, *outputs)
    return tuple(out.reshape(h, w) for out in outputs)


def _rejection(method, n, pixels, weights, kappa, centre, maxiters):
    """The kernels' method arguments and the (NaN, 0, 0) outputs, checked as
    :func:`bigstack._reject.combine_block` checks them."""
    from . import _reject

    name = _reject._method(method)
    if name not in REJECTIONS:
        raise ValueError(f"reject_block computes {REJECTIONS}, not {method!r}; "
                         "use _reject.combine_block")
    opts = _reject._options(name, {"weights": weights, "kappa": kappa, "centre": centre,
                                   "maxiters": maxiters})
    weighted = opts.get("weights") is not None
    wts = _reject.check_weights(opts["weights"], n) if weighted else np.zeros(max(n, 1))
    kl, kh = opts.get("kappa", (3.0, 3.0))
    options = (REJECTIONS.index(name), float(kl), float(kh),
               opts.get("centre", "median") == "median", int(opts.get("maxiters", 1)), wts,
               weighted)
    return options, (np.full(pixels, np.nan, np.float32), np.zeros(pixels, np.int32),
                     np.zeros(pixels, np.int32))


def stores_rejection(dtype):
    """Whether :func:`reject_stored` takes stored rows of ``dtype``: 8- and 16-bit integers,
    which are smaller than their float32 values (any byte order)."""
    dtype = np.dtype(dtype)
    return dtype.kind in "iu" and dtype.itemsize <= 2


def reject_stored(block, geometry, width, method, *, scale, zero, blank=None, weights=None,
                  kappa=None, centre=None, maxiters=None):
    """:func:`reject_block` of whole-pixel frames, from their stored rows.

    Rejection needs every frame's values of a tile at once. Kept as stored
    (16-bit integers, say), that block is half the size of its float32
    values, so tiles are twice as tall for the same memory; the values are
    converted as the kernel loads them, and no float32 copy is written.

    Parameters
    ----------
    block : numpy.ndarray ``(N, h, Wf)``
        Per frame, the frame's stored rows (8- or 16-bit integers, any byte
        order: :func:`stores_rejection`), full width ``Wf``: row ``y`` of
        frame ``k``'s plane holds the stored row that output row ``y`` takes,
        for the rows ``geometry`` says.
    geometry : int ``(N, 5)``
        Per frame ``(oy, ny, ox, nx, shift)``: output rows ``[oy, oy + ny)``
        and columns ``[ox, ox + nx)`` are covered, output pixel ``(y, x)``
        taking ``block[k, y, x + shift]``. Other pixels are NaN (not covered).
    width : int
        Output pixels a row.
    scale, zero : ``(N,)``
        Per frame, physical = stored * scale + zero, in float32 (as
        :func:`gather_rows`).
    blank : ``(N,)`` of int or None, optional
        Per frame, the stored BLANK value (NaN), or None.
    method, weights, kappa, centre, maxiters
        As for :func:`reject_block`.

    Returns
    -------
    result : float32 (h, width)
    kept, rejected : int32 (h, width)

    The results are :func:`reject_block`'s of the float32 block of the same
    values (tests/test_kernels.py builds that block with numpy).
    """
    stored = np.asarray(block).dtype
    if block.ndim != 3 or not stores_rejection(stored):
        raise ValueError(f"reject_stored needs a (frame, y, x) block of 8/16-bit integers, "
                         f"got {block.shape} {stored}")
    view, swap, signed, _ = _stored_view(block)
    n, h, wf = view.shape
    geometry = np.ascontiguousarray(geometry, np.int64).reshape(n, 5)
    oy, ny, ox, nx, shift = geometry.T
    bad = np.flatnonzero((ny > 0) & ((oy < 0) | (oy + ny > h) | (ox < 0) | (nx < 1)
                                     | (ox + nx > width) | (ox + shift < 0)
                                     | (ox + nx + shift > wf)))
    if bad.size:
        raise ValueError(f"reject_stored: frame {bad[0]}'s window {geometry[bad[0]].tolist()} "
                         f"is outside the block {view.shape} or the rows of {width}")
    blanks = [None] * n if blank is None else list(blank)
    bits = [_blank_bits(b, stored, view.dtype) for b in blanks]
    has_blank = np.array([b[0] for b in bits], bool)
    blank_bits = np.array([b[1] for b in bits], view.dtype)
    options, outputs = _rejection(method, n, h * width, weights, kappa, centre, maxiters)
    if n and h * width:
        _reject_stored_tiles(view, geometry, swap, signed,
                             np.asarray(scale, np.float32).reshape(n),
                             np.asarray(zero, np.float32).reshape(n), blank_bits, has_blank,
                             int(width), *options, *outputs)
    return tuple(out.reshape(h, width) for out in outputs)


# --------------------------------------------------------------------------
# calibration: stored rows -> (physical - bias - k * dark) * (1 / flat), one pass


@njit(**_JIT)
def _calibrate_rows(stored, swap, signed, scale, zero, blank, has_blank, bias, has_bias, dark,
                    k, has_dark, inv_flat, has_flat, out):
    # one row at a time, each step a loop of its own over the row (in the core's cache):
    # loops without branches vectorise, one loop with them does not (measured 3x slower)
    ny, nx = out.shape
    for y in range(ny):
        src = stored[y]
        row = out[y]
        for x in range(nx):
            row[x] = _physical(src[x], swap, signed, scale, zero, blank, has_blank)
        if has_bias:
            b = bias[y]
            for x in range(nx):
                row[x] -= b[x]
        if has_dark:
            d = dark[y]
            for x in range(nx):
                row[x] -= k * d[x]
        if has_flat:
            f = inv_flat[y]
            for x in range(nx):
                row[x] *= f[x]


def calibrate_rows(rows, out, *, scale=1.0, zero=0.0, blank=None, bias=None, dark=None, k=1.0,
                   inv_flat=None):
    """``out = (rows * scale + zero - bias - k * dark) * inv_flat`` in one pass.

    ``rows`` are stored rows as a FITS reader gives them (any byte order,
    8/16/32-bit integers or floats); a stored BLANK, NaN or infinity gives
    NaN. ``bias``, ``dark`` and ``inv_flat`` (the reciprocal of the flat) are
    float32 arrays of ``out``'s shape, or None for none. The reference is the
    same arithmetic in numpy, in float32 (tests/test_kernels.py).
    """
    view, swap, signed, floating = _stored_view(rows)
    has_blank, bits = _blank_bits(blank, np.asarray(rows).dtype, view.dtype)
    empty = np.zeros((1, 1), np.float32)

    def master(m):
        return (empty, False) if m is None else (np.ascontiguousarray(m, np.float32), True)

    b, hb = master(bias)
    d, hd = master(dark)
    f, hf = master(inv_flat)
    _calibrate_rows(view, swap, signed, np.float32(scale), np.float32(zero), bits, has_blank,
                    b, hb, d, np.float32(k), hd, f, hf, out)
    return out


@njit(**_JIT)
def _gather_rows(stored, swap, signed, scale, zero, blank, has_blank, c0, out, oy, ox, ny, nx,
                 nan_outside):
    # C-contiguous rows on both sides: a strided view's rows would not vectorise
    if nan_outside:
        out[:oy] = _FNAN
        out[oy + ny:] = _FNAN
    for y in range(ny):
        src = stored[y, c0:c0 + nx]
        full = out[oy + y]
        if nan_outside:
            full[:ox] = _FNAN
            full[ox + nx:] = _FNAN
        row = full[ox:ox + nx]
        for x in range(nx):
            row[x] = _physical(src[x], swap, signed, scale, zero, blank, has_blank)


def gathers(dtype, scale=1.0):
    """Whether :func:`gather_rows` converts stored rows of ``dtype`` exactly as numpy's
    float32 multiply and add would: 8-bit unsigned, 16-bit integers and float32 rows
    (numpy multiplies 32-bit integers in float64; float64 rows only with ``scale`` 1,
    which needs no rounding before the add)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype.itemsize == 4 or (dtype.itemsize == 8 and scale == 1)
    return (dtype.kind == "u" and dtype.itemsize == 1) or (
        dtype.kind in "iu" and dtype.itemsize == 2)


def gather_rows(rows, c0, out, window=None, *, scale=1.0, zero=0.0, blank=None,
                nan_outside=False):
    """``out[window] = rows[:, c0:c0 + width] * scale + zero`` in float32, in one pass.

    A whole-pixel frame's window of a rejection tile: ``out`` is the frame's
    C-contiguous float32 plane of the tile, ``window`` ``(rows, cols)``
    slices of it (default: all of it) and ``rows`` the stored rows as a FITS
    reader gives them (any byte order, 8-bit unsigned, 16-bit integers or
    floats: :func:`gathers`), one per window row, read from column ``c0``;
    with ``nan_outside`` the rest of the plane is set to NaN in the same
    pass. A stored BLANK, NaN or infinity gives NaN. The float32 arithmetic is
    numpy's ``rows.astype(float32) * float32(scale) + float32(zero)``
    (stored float64 rows are rounded to float32 first); the reference is
    that numpy expression (tests/test_kernels.py).
    """
    view, swap, signed, _ = _stored_view(rows)
    if window is None:
        window = (slice(0, out.shape[0]), slice(0, out.shape[1]))
    (oy, y1, _), (ox, x1, _) = (w.indices(n) for w, n in zip(window, out.shape, strict=True))
    ny, nx = y1 - oy, x1 - ox
    if out.ndim != 2 or out.dtype != np.float32 or not out.flags.c_contiguous or \
            view.ndim != 2 or view.shape[0] != ny or not 0 <= c0 <= view.shape[1] - nx:
        raise ValueError(f"gather_rows: rows {view.shape} from column {c0} do not fill the "
                         f"window {ny} x {nx} of a C-contiguous float32 plane {out.shape}")
    has_blank, bits = _blank_bits(blank, np.asarray(rows).dtype, view.dtype)
    _gather_rows(view, swap, signed, np.float32(scale), np.float32(zero), bits, has_blank,
                 int(c0), out, oy, ox, ny, nx, bool(nan_outside))
    return out


@njit(**_JIT)
def _calibrated(stored, s0, swap, signed, scale, zero, blank, has_blank, bias, has_bias, dark,
                k, has_dark, inv_flat, has_flat, fr, fc):
    """The calibrated value of frame pixel ``(fr, fc)``; ``stored[j]`` is frame row ``s0 + j``
    and the masters are whole frames."""
    v = _physical(stored[fr - s0, fc], swap, signed, scale, zero, blank, has_blank)
    if has_bias:
        v -= bias[fr, fc]
    if has_dark:
        v -= k * dark[fr, fc]
    if has_flat:
        v *= inv_flat[fr, fc]
    return v


@njit(**_JIT)
def _add_row(src, swap, signed, scale, zero, blank, hb, sub, mul, gain, offset, unit, trow):
    """``trow += ((physical src) - sub) * mul * gain + offset``: finite masters, integers
    without BLANK (a function of its own: its loops vectorise)."""
    if unit:  # scale 1, gain 1, offset 0: the same values, fewer steps
        one = np.float32(1)
        for c in range(trow.shape[0]):
            trow[c] += (_physical(src[c], swap, signed, one, zero, blank, hb) - sub[c]) * mul[c]
        return
    for c in range(trow.shape[0]):
        v = (_physical(src[c], swap, signed, scale, zero, blank, hb) - sub[c]) * mul[c]
        trow[c] += v * gain + offset


@njit(**_JIT)
def _add_row_dark(src, swap, signed, scale, zero, blank, hb, bias, k, dark, mul, gain, offset,
                  trow):
    """:func:`_add_row` with the bias and ``k`` times the dark subtracted one after the
    other (frames whose dark factors differ)."""
    for c in range(trow.shape[0]):
        v = (_physical(src[c], swap, signed, scale, zero, blank, hb) - bias[c]
             - k * dark[c]) * mul[c]
        trow[c] += v * gain + offset


@njit(**_JIT)
def _add_calibrated(stored, geometry, factors, unit, swap, signed, floating, blanks, has_blank,
                    bias, has_bias, dark, has_dark, inv_flat, has_flat, base, base0, has_base,
                    bad, has_bad, nan_bad, clean, total, invalid):
    nx = stored.shape[2]
    width = total.shape[1]
    near = np.empty(8, np.float32)
    zeros = np.zeros(width, np.float32)
    ones = np.ones(width, np.float32)
    good = np.zeros(width, np.bool_)
    f0, i0, i1 = np.float32(0), np.int32(0), np.int32(1)
    q_lo, q_hi = total.shape[0], 0
    for g in range(stored.shape[0]):
        q_lo = min(q_lo, geometry[g, 4])
        q_hi = max(q_hi, geometry[g, 4] + geometry[g, 6])
    # output row outside, frames inside: a tile row's sums stay in the core's cache while
    # every frame of the group adds to it, and the master rows the frames read (a few rows
    # apart, by their shifts) are shared
    for oq in range(q_lo, q_hi):
        for g in range(stored.shape[0]):
            s0, s1, fr0, sx, oy, ox, nrows, length = geometry[g]
            if oq < oy or oq >= oy + nrows:
                continue
            scale, zero, k, gain, offset = factors[g]
            blank, hb = blanks[g], has_blank[g]
            hd = has_dark and k != 0
            frame = stored[g]
            fr = fr0 + oq - oy
            trow = total[oq, ox:ox + length]
            irow = invalid[oq, ox:ox + length]
            src = frame[fr - s0, sx:sx + length]
            # rows hoisted out of the pixel loop, a missing master as a neutral row, and
            # selects in place of branches: the loop vectorises (measured 10x, then 2x)
            brow = bias[fr, sx:sx + length] if has_bias else zeros[:length]
            drow = dark[fr, sx:sx + length] if hd else zeros[:length]
            frow = inv_flat[fr, sx:sx + length] if has_flat else ones[:length]
            kk = k
            if has_base or not hd:
                # one row to subtract: the caller's bias + k * dark, or the bias alone (a
                # dark row of zeros left out of the loops below: fewer loads and operations)
                if has_base:
                    brow = base[fr - base0, sx:sx + length]
                drow, kk = zeros[:length], f0
                if clean[fr] and not (floating or hb):
                    _add_row(src, swap, signed, scale, zero, blank, hb, brow, frow, gain,
                             offset, unit[g], trow)
                    continue
            elif clean[fr] and not (floating or hb):
                # finite masters, no bad pixel and integers without BLANK: every value is
                # finite, so no count of invalid values and no selects
                _add_row_dark(src, swap, signed, scale, zero, blank, hb, brow, k, drow, frow,
                              gain, offset, trow)
                continue
            badrow = bad[fr, sx:sx + length] if has_bad else good[:length]
            for c in range(length):
                v = (_physical(src[c], swap, signed, scale, zero, blank, hb) - brow[c]
                     - kk * drow[c]) * frow[c]
                skip = badrow[c]  # a bad pixel is added below
                ok = (v - v == 0) & (not skip)
                trow[c] += (v * gain + offset) if ok else f0
                irow[c] += i0 if (ok | skip) else i1
            if not has_bad:
                continue
            for c in range(length):  # the few bad pixels: NaN, or their neighbours' median
                if not badrow[c]:
                    continue
                if nan_bad:
                    irow[c] += 1
                    continue
                fc = sx + c
                m = 0  # the median of the finite, good eight neighbours (within the frame)
                for dy in range(-1, 2):
                    for dx in range(-1, 2):
                        yy, xx = fr + dy, fc + dx
                        if (dy == 0 and dx == 0) or yy < s0 or yy >= s1 or xx < 0 or xx >= nx:
                            continue
                        if bad[yy, xx]:
                            continue
                        u = _calibrated(frame, s0, swap, signed, scale, zero, blank, hb, bias,
                                        has_bias, dark, k, hd, inv_flat, has_flat, yy, xx)
                        if u - u == 0:
                            near[m] = u
                            m += 1
                if m == 0:
                    irow[c] += 1
                    continue
                srt = np.sort(near[:m])
                v = srt[m // 2] if m % 2 else np.float32(0.5) * (srt[m // 2 - 1] + srt[m // 2])
                trow[c] += v * gain + offset


def add_calibrated(rows, frames, masters, total, invalid, base=None):
    """Calibrate a group of frames' rows and add them to a tile in one pass.

    ``rows`` is ``(G, R, nx)``: frame ``g``'s stored rows (as a FITS reader
    gives them; one stored type for the group). ``frames`` holds G tuples
    ``(s0, s1, fr0, sx, out, scale, zero, blank, k, gain, offset)``: frame
    ``g``'s rows ``s0 .. s1 - 1`` are ``rows[g, :s1 - s0]``, and output pixel
    ``out = (oy, ox, nrows, length)`` + ``(q, c)`` takes its pixel
    ``(fr0 + q, sx + c)``. ``masters`` is ``(bias, dark, inv_flat, bad,
    nan_bad, clean)``: whole frames or None, and ``clean`` a boolean per frame
    row (or None), true where the masters' row is finite and holds no bad
    pixel, so integer rows without BLANK are added there without a check of
    each value (the same sums, faster). ``total`` gets the calibrated value
    ``(physical - bias - k * dark) * inv_flat`` times ``gain`` plus
    ``offset``; a NaN (or BLANK, or a bad pixel with ``nan_bad``) adds 1 to
    ``invalid`` instead. A bad pixel otherwise takes the median of its good,
    finite eight neighbours (neighbours outside ``s0 .. s1 - 1`` are not
    used). Each pixel adds the frames in the group's order. Reference:
    ``CalibratedReader`` plus a numpy add (tests/test_kernels.py).

    ``base``, optional, is ``(rows, r0, k)``: ``bias + k * dark`` (float32)
    for frame rows ``r0 ..``, covering every frame's rows ``fr0 ..
    fr0 + nrows - 1``, for frames that all have dark factor ``k``; each value
    then subtracts that one row, ``(physical - base) * inv_flat`` (float32
    rounding of the sum of bias and dark first; the bad pixels' neighbours
    are calibrated from the masters as without it).
    """
    view, swap, signed, floating = _stored_view(rows)
    if view.ndim != 3 or len(frames) > view.shape[0]:
        raise ValueError(f"rows must be (frames, rows, columns) for {len(frames)} frames, "
                         f"got shape {view.shape}")
    n = len(frames)
    dtype = np.asarray(rows).dtype
    geometry = np.empty((n, 8), np.int64)
    factors = np.empty((n, 5), np.float32)
    unit = np.zeros(n, np.bool_)
    blanks = np.zeros(n, view.dtype)
    has_blank = np.zeros(n, np.bool_)
    base_rows, base0, base_k = (np.zeros((1, 1), np.float32), 0, None) if base is None else base
    base_rows = np.ascontiguousarray(base_rows, np.float32)
    for g, (s0, s1, fr0, sx, out, scale, zero, blank, k, gain, offset) in enumerate(frames):
        if s1 - s0 > view.shape[1]:
            raise ValueError(f"frame {g}'s rows {s0}..{s1} do not fit {view.shape[1]} rows")
        if base is not None and (k != base_k or fr0 < base0
                                 or fr0 + out[2] > base0 + len(base_rows)):
            raise ValueError(f"frame {g} (dark factor {k}, rows {fr0}..{fr0 + out[2]}) does "
                             f"not fit the base of factor {base_k}, rows {base0}.."
                             f"{base0 + len(base_rows)}")
        geometry[g] = (s0, s1, fr0, sx, *out)
        factors[g] = (scale, zero, k, gain, offset)
        unit[g] = scale == 1 and gain == 1 and offset == 0
        has_blank[g], blanks[g] = _blank_bits(blank, dtype, view.dtype)
    bias, dark, inv_flat, bad, nan_bad, clean = masters
    if clean is None:
        clean = np.zeros(int(geometry[:, 1].max(initial=1)), np.bool_)
    empty = np.zeros((1, 1), np.float32)

    def master(m):
        return (empty, False) if m is None else (m, True)

    b, hb = master(bias)
    d, hd = master(dark)
    f, hf = master(inv_flat)
    bd, hbd = (np.zeros((1, 1), np.bool_), False) if bad is None else (bad, True)
    _add_calibrated(view[:n], geometry, factors, unit, swap, signed, floating, blanks,
                    has_blank, b, hb, d, hd, f, hf, base_rows, base0, base is not None, bd, hbd,
                    bool(nan_bad), clean, total, invalid)


@njit(**_JIT)
def _add_plain(stored, geometry, factors, weights, swap, signed, floating, blanks, has_blank,
               total, invalid, lost):
    q_lo, q_hi = total.shape[0], 0
    for g in range(stored.shape[0]):
        q_lo = min(q_lo, geometry[g, 1])
        q_hi = max(q_hi, geometry[g, 1] + geometry[g, 3])
    f0, i0, i1 = np.float32(0), np.int32(0), np.int32(1)
    # output row outside, frames inside: a tile row's sums stay in the core's cache while
    # every frame of the group adds to it
    for oq in range(q_lo, q_hi):
        for g in range(stored.shape[0]):
            sx, oy, ox, nrows, length = geometry[g]
            if oq < oy or oq >= oy + nrows:
                continue
            scale, zero = factors[g]
            weight = weights[g]
            blank, hb = blanks[g], has_blank[g]
            src = stored[g, oq - oy, sx:sx + length]
            trow = total[oq, ox:ox + length]
            if not (floating or hb):  # integers without BLANK: every value counts
                for c in range(length):
                    trow[c] += _physical(src[c], swap, signed, scale, f0, blank, hb)
                continue
            irow = invalid[oq, ox:ox + length]
            lrow = lost[oq, ox:ox + length]
            for c in range(length):  # selects, not branches: the loop vectorises
                v = _physical(src[c], swap, signed, scale, zero, blank, hb)
                ok = v - v == 0
                trow[c] += v if ok else f0
                irow[c] += i0 if ok else i1
                lrow[c] += 0.0 if ok else weight


def checks_values(dtype, blank):
    """Whether :func:`add_plain` checks each value of rows of ``dtype``: floats, and
    integers with a ``blank`` the type can hold."""
    dtype = np.dtype(dtype)
    return dtype.kind == "f" or bool(_blank_bits(blank, dtype, dtype)[0])


def add_plain(rows, frames, total, invalid=None, lost=None):
    """Add a group of frames' stored rows to a tile in one pass.

    ``rows`` is ``(G, R, nx)``: frame ``g``'s stored rows (as a FITS reader
    gives them; one stored type for the group), ``rows[g, q]`` the row of
    output row ``oy + q``. ``frames`` holds G tuples ``(sx, out, scale,
    zero, blank, weight)``: output pixel ``out = (oy, ox, nrows, length)`` +
    ``(q, c)`` takes ``rows[g, q, sx + c]``. ``total`` (float32) gets the
    stored value times ``scale`` (in float32, as numpy's ``block *
    np.float32(scale)``). Integer rows without ``blank`` are added as they
    are, ``zero`` left to the caller (the same for the whole window: it is
    added once per pixel at the end, in float64); the values of float rows
    and of rows with a ``blank`` are checked: a valid one adds ``value *
    scale + zero`` (in float32), a NaN, infinity or BLANK adds 1 to
    ``invalid`` (int32) and ``weight`` to ``lost`` (float64) instead, as the
    numpy path does with a window that holds such a pixel. Each pixel adds
    the frames in the group's order. Reference: a numpy add per frame
    (tests/test_kernels.py).
    """
    view, swap, signed, floating = _stored_view(rows)
    if view.ndim != 3 or len(frames) > view.shape[0]:
        raise ValueError(f"rows must be (frames, rows, columns) for {len(frames)} frames, "
                         f"got shape {view.shape}")
    n = len(frames)
    dtype = np.asarray(rows).dtype
    geometry = np.empty((n, 5), np.int64)
    factors = np.empty((n, 2), np.float32)
    weights = np.empty(n, np.float64)
    blanks = np.zeros(n, view.dtype)
    has_blank = np.zeros(n, np.bool_)
    for g, (sx, out, scale, zero, blank, weight) in enumerate(frames):
        if out[2] > view.shape[1] or sx + out[3] > view.shape[2]:
            raise ValueError(f"frame {g}'s window {out} from column {sx} does not fit rows of "
                             f"shape {view.shape[1:]}")
        geometry[g] = (sx, *out)
        factors[g] = (scale, zero)
        weights[g] = weight
        has_blank[g], blanks[g] = _blank_bits(blank, dtype, view.dtype)
    if (floating or has_blank.any()) and (invalid is None or lost is None):
        raise ValueError("float rows and rows with a BLANK need invalid and lost")
    if invalid is None:
        invalid, lost = np.zeros((1, 1), np.int32), np.zeros((1, 1), np.float64)
    _add_plain(view[:n], geometry, factors, weights, swap, signed, floating, blanks, has_blank,
               total, invalid, lost)


# --------------------------------------------------------------------------
# star detection (bigstack._detect): the passes over a frame's rows
#
# Each is one pass over float32 rows (or over a cell's sample), in place where
# it can be; the numpy and scipy references are in tests/test_detect_kernels.py.


@njit(**_JIT)
def column_clipped_sums(rows, start, limit, sums, counts):
    """Add, per column, the sum and count of ``rows - start`` within ``limit`` of 0.

    ``sums`` float32 (the values are within ``limit`` of 0, so a float32 sum of a few
    thousand rows keeps about 1e-4 of ``limit``), ``counts`` int32.
    """
    ny, nx = rows.shape
    lim = np.float32(limit)
    f0 = np.float32(0.0)
    for y in range(ny):
        r = rows[y]
        for x in range(nx):
            v = r[x] - start[x]
            inside = abs(v) < lim
            sums[x] += v if inside else f0
            counts[x] += np.int32(1) if inside else np.int32(0)


@njit(**_SUMS)
def remove_rows(rows, column, limit):
    """In place: ``rows`` less ``column`` in every row, less each row's mean within ``limit``
    of 0."""
    ny, nx = rows.shape
    lim = np.float32(limit)
    f0 = np.float32(0.0)
    for y in range(ny):
        r = rows[y]
        total = f0
        count = np.int32(0)
        for x in range(nx):
            v = r[x] - column[x]
            r[x] = v
            inside = abs(v) < lim
            total += v if inside else f0
            count += np.int32(1) if inside else np.int32(0)
        m = total / np.float32(max(count, 1))
        for x in range(nx):
            r[x] -= m


@njit(**_JIT)
def subtract_background(rows, grid, i0, f, xterm, yterm, out):
    """``out[y, x] = rows[y, x] - (grid[i0[y], x] + f[y] (grid[i0[y] + 1, x] - grid[i0[y], x])
    + xterm[x] + yterm[y])`` (a cell grid interpolated between its rows, plus a plane);
    ``out`` another array (the same one is allowed, but slower: the compiler then cannot
    use vector instructions)."""
    ny, nx = rows.shape
    for y in range(ny):
        a = i0[y]
        fy = f[y]
        ty = yterm[y]
        for x in range(nx):
            b = grid[a, x] + fy * (grid[a + 1, x] - grid[a, x])
            out[y, x] = rows[y, x] - (b + xterm[x] + ty)


@njit(**_JIT)
def normalise_cells(image, level, i0, f, gain):
    """In place: ``image[y, x] = (image[y, x] - L) * G``, ``L`` and ``G`` read between the
    rows ``i0[y]`` and ``i0[y] + 1`` of ``level`` and ``gain``, ``f[y]`` of the way."""
    ny, nx = image.shape
    for y in range(ny):
        a = i0[y]
        fy = f[y]
        for x in range(nx):
            lv = level[a, x] + fy * (level[a + 1, x] - level[a, x])
            g = gain[a, x] + fy * (gain[a + 1, x] - gain[a, x])
            image[y, x] = (image[y, x] - lv) * g


@njit(inline="always", **_JIT)
def _insertion_sort(src, n, out):
    """``out[:n]`` = ``src[:n]`` sorted (``out`` may be ``src``: each value is read before
    anything is moved into its place)."""
    for i in range(n):
        v = src[i]
        j = i - 1
        while j >= 0 and out[j] > v:
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = v


@njit(inline="always", **_JIT)
def _median8(a):
    """The median of 8 values (the mean of the middle two), sorting ``a`` in place."""
    _insertion_sort(a, 8, a)
    return np.float32(0.5) * (a[3] + a[4])


@njit(**_JIT)
def clean_sharp(rows, limit, ratio, where, value):
    """Replace the sharp pixels of ``rows`` (over ``limit``, and above the median of their 8
    neighbours by more than ``ratio`` of their value) by that median; return their count.

    The medians are taken from the rows as given (a replacement does not change its
    neighbours' tests). ``where``/``value`` are scratch of the caller's size; they end
    with the flat index and the former value of each pixel replaced. When more pixels
    are sharp than they hold, nothing is changed and ``-count`` is returned.
    """
    ny, nx = rows.shape
    lim = np.float32(limit)
    rat = np.float32(ratio)
    near = np.empty(8, np.float32)
    n = 0
    cap = where.size
    for y in range(ny):
        r = rows[y]
        for x in range(nx):
            v = r[x]
            if not v > lim:
                continue
            k = 0
            for dy in (-1, 0, 1):
                yy = min(max(y + dy, 0), ny - 1)
                for dx in (-1, 0, 1):
                    if dy == 0 and dx == 0:
                        continue
                    near[k] = rows[yy, min(max(x + dx, 0), nx - 1)]
                    k += 1
            med = _median8(near)
            if v - med > rat * v:
                if n < cap:
                    where[n] = y * nx + x
                    value[n] = med
                n += 1
    if n > cap:
        return -n
    for k in range(n):  # ``value`` gets the values replaced, to undo it
        y, x = where[k] // nx, where[k] % nx
        rows[y, x], value[k] = value[k], rows[y, x]
    return n


@njit(**_JIT)
def bin2(rows, out):
    """``out[i, j]`` = the sum of the 2 x 2 block ``rows[2 i:2 i + 2, 2 j:2 j + 2]``."""
    h, w = out.shape
    for i in range(h):
        a = rows[2 * i]
        b = rows[2 * i + 1]
        o = out[i]
        for j in range(w):
            o[j] = (a[2 * j] + a[2 * j + 1]) + (b[2 * j] + b[2 * j + 1])


@njit(**_FAST)
def smooth(image, kernel, gain, work, out):
    """``out`` = ``image`` convolved with the symmetric 1-D ``kernel`` along both axes, edges
    repeated (scipy.ndimage's ``mode="nearest"``), times ``gain``; ``work`` is scratch of
    ``image``'s shape."""
    h, w = image.shape
    rad = (kernel.size - 1) // 2
    pad = np.empty(w + 2 * rad, np.float32)
    for i in range(h):  # along x, from a copy of the row with its edges repeated
        src = image[i]
        for j in range(rad):
            pad[j] = src[0]
            pad[w + rad + j] = src[w - 1]
        pad[rad:rad + w] = src
        dst = work[i]
        c = kernel[0]
        for j in range(w):
            dst[j] = c * pad[j]
        for k in range(1, 2 * rad + 1):
            c = kernel[k]
            for j in range(w):
                dst[j] += c * pad[j + k]
    g = np.float32(gain)
    for i in range(h):  # along y: whole rows, so the inner loop runs along x
        dst = out[i]
        src = work[min(max(i - rad, 0), h - 1)]
        c = kernel[0]
        for j in range(w):
            dst[j] = c * src[j]
        for k in range(1, 2 * rad + 1):
            src = work[min(max(i - rad + k, 0), h - 1)]
            c = kernel[k]
            for j in range(w):
                dst[j] += c * src[j]
        for j in range(w):
            dst[j] *= g


@njit(**_JIT)
def round_peaks(snr, threshold, iy, ix):
    """The round local maxima of ``snr`` above ``threshold``, off the border; their count.

    A peak is at least each of its 8 neighbours. Round: the curvatures along x, y and the two
    diagonals (``2 v - left - right``) are all positive and ``|2 (a - b) / (a + b)| <= 1`` for
    the pairs (x, y) and (diagonal, antidiagonal). At most ``iy.size`` are written; the count
    of all is returned.
    """
    h, w = snr.shape
    thr = np.float32(threshold)
    n = 0
    for y in range(1, h - 1):
        up = snr[y - 1]
        r = snr[y]
        dn = snr[y + 1]
        for x in range(1, w - 1):
            v = r[x]
            if not v > thr:
                continue
            if (r[x - 1] > v or r[x + 1] > v or up[x - 1] > v or up[x] > v or up[x + 1] > v
                    or dn[x - 1] > v or dn[x] > v or dn[x + 1] > v):
                continue
            c = 2 * v
            hx = c - r[x - 1] - r[x + 1]
            hy = c - up[x] - dn[x]
            hd = c - up[x - 1] - dn[x + 1]
            ha = c - up[x + 1] - dn[x - 1]
            if not (hx > 0 and hy > 0 and hd > 0 and ha > 0):
                continue
            if abs(2 * (hx - hy)) > hx + hy or abs(2 * (hd - ha)) > hd + ha:
                continue
            if n < iy.size:
                iy[n] = y
                ix[n] = x
            n += 1
    return n


@njit(**_JIT)
def all_finite(rows):
    """Whether every value of the 2-D ``rows`` is finite."""
    ny, nx = rows.shape
    for y in range(ny):
        r = rows[y]
        bad = False
        for x in range(nx):
            v = r[x]
            bad |= not (v - v == 0)
        if bad:
            return False
    return True


@njit(**_JIT)
def centroid_stamps(stamps, gx, gy, x, y, sigma, slack, iterations, tol, flux, m2, done):
    """Iterated Gaussian-windowed centroids on stamps (:func:`bigstack._measure.cut_stamps`).

    Star ``s`` starts at ``(x[s], y[s])``; each step moves by twice the
    window-weighted mean offset over its stamp (pixel ``[i, j]`` at ``(gx[s,
    j], gy[s, i])``) and records ``flux`` (the weighted sum) and ``m2`` (the
    weighted second moment per axis). It stops when a step is under ``tol``
    on both axes (``done``), when the window holds no positive flux or the
    position is more than ``slack`` from the stamp's centre (not done), or
    after ``iterations``. ``x``, ``y``, ``flux``, ``m2``, ``done`` are
    updated in place.
    """
    m, n, _ = stamps.shape
    inv = 1.0 / (2.0 * sigma * sigma)
    r = (n - 1) // 2
    wx = np.empty(n)
    wy = np.empty(n)
    ddx = np.empty(n)
    ddy = np.empty(n)
    for s in range(m):
        xs, ys = x[s], y[s]
        if not (np.isfinite(xs) and np.isfinite(ys)):
            continue
        x0, y0 = gx[s, r], gy[s, r]
        for _ in range(iterations):
            for j in range(n):
                d = gx[s, j] - xs
                ddx[j] = d
                wx[j] = math.exp(-d * d * inv)
                d = gy[s, j] - ys
                ddy[j] = d
                wy[j] = math.exp(-d * d * inv)
            t0 = t1x = t2x = t1y = t2y = 0.0
            for i in range(n):
                row = stamps[s, i]
                a0 = a1 = a2 = 0.0
                for j in range(n):
                    v = row[j] * wx[j]
                    a0 += v
                    a1 += v * ddx[j]
                    a2 += v * ddx[j] * ddx[j]
                w = wy[i]
                t0 += w * a0
                t1x += w * a1
                t2x += w * a2
                t1y += w * ddy[i] * a0
                t2y += w * ddy[i] * ddy[i] * a0
            ok = t0 > 0
            sx = 2.0 * t1x / t0 if ok else 0.0
            sy = 2.0 * t1y / t0 if ok else 0.0
            m2[s] = (t2x + t2y) / t0 / 2.0 if t0 != 0 else np.nan
            flux[s] = t0
            xs += sx
            ys += sy
            if not ok or abs(xs - x0) > slack or abs(ys - y0) > slack:
                break
            if abs(sx) < tol and abs(sy) < tol:
                done[s] = True
                break
        x[s] = xs
        y[s] = ys


@njit(**_JIT)
def _sample_median(a, n, work):
    """The median of ``a[:n]`` as numpy gives it (the mean of the middle two for even ``n``);
    ``a`` is left as it is, ``work`` is scratch of shape ``(3, >= n)``.

    A selection by three-way partitions around a median-of-three pivot, each written out of
    place to two of the scratch rows with no branch on the values (a store to both rows, the
    counts advanced by the comparisons): a sky sample's order is random, so an in-place
    partition's branches are mispredicted about half the time, and this runs about 4 times
    faster on 1,000 values. Sets of 16 values or fewer are sorted.
    """
    k = n // 2
    even = n % 2 == 0
    below = np.float32(-np.inf)  # the largest value left out below the set still searched
    src = a
    at = -1  # the scratch row ``src`` is (-1: ``a``)
    count = n
    while count > 16:
        x0, x1, x2 = src[0], src[count // 2], src[count - 1]
        p = max(min(x0, x1), min(max(x0, x1), x2))
        lo_at = 1 if at == 0 else 0
        hi_at = 3 - at - lo_at if at >= 0 else 1
        dlo = work[lo_at]
        dhi = work[hi_at]
        nlo = 0
        nhi = 0
        for q in range(count):
            v = src[q]
            dlo[nlo] = v
            dhi[nhi] = v
            nlo += 1 if v < p else 0
            nhi += 1 if v > p else 0
        neq = count - nlo - nhi  # at least 1: the pivot is one of the values
        if k < nlo:
            src, at, count = dlo, lo_at, nlo
        elif k < nlo + neq:
            if not even:
                return p
            if k > nlo:
                return p
            lower = below
            for q in range(nlo):
                lower = max(lower, dlo[q])
            return np.float32(0.5) * np.float32(lower + p)
        else:
            k -= nlo + neq
            below = p
            src, at, count = dhi, hi_at, nhi
    small = np.empty(16, np.float32)
    _insertion_sort(src, count, small)
    upper = small[k]
    if not even:
        return upper
    lower = small[k - 1] if k > 0 else below
    return np.float32(0.5) * np.float32(lower + upper)


@njit(**_JIT)
def cell_stats(data, ys, xs, level, sigma, want_sigma=True):
    """Clipped median and MAD sigma of each cell's sample of ``data``.

    Cell ``(i, j)`` is the pixels ``data[ys[i, a], xs[j, b]]``. Its median and MAD
    sigma, then the values more than 3 sigma off replaced by the median, then the
    median and MAD sigma again, go to ``level[i, j]`` and ``sigma[i, j]``
    (:func:`bigstack._measure.background_map`'s cells). Without ``want_sigma`` the
    last MAD (a quarter of the work) is not taken and ``sigma`` is left as it is.
    """
    sy, sx = ys.shape[1], xs.shape[1]
    n = sy * sx
    buf = np.empty(n, np.float32)
    dev = np.empty(n, np.float32)
    work = np.empty((3, n), np.float32)
    k = np.float32(1.4826)
    for i in range(ys.shape[0]):
        for j in range(xs.shape[0]):
            q = 0
            for a in range(sy):
                row = data[ys[i, a]]
                for b in range(sx):
                    buf[q] = row[xs[j, b]]
                    q += 1
            centre = _sample_median(buf, n, work)
            for q in range(n):
                dev[q] = abs(buf[q] - centre)
            s = k * _sample_median(dev, n, work)
            for q in range(n):
                if not dev[q] <= 3 * s:
                    buf[q] = centre
            centre = _sample_median(buf, n, work)
            level[i, j] = centre
            if want_sigma:
                for q in range(n):
                    dev[q] = abs(buf[q] - centre)
                sigma[i, j] = k * _sample_median(dev, n, work)


# --------------------------------------------------------------------------
# colour: a Bayer mosaic's bilinear colours added straight into the sums


@njit(**_JIT)
def _mosaic_row(stored, s0, swap, signed, blank, has_blank, m, fc0, nx, checked, out):
    """``out[k]`` = stored mosaic row ``m``'s value at column ``fc0 - 1 + k``, as float32
    (not scaled), the columns -1 and ``nx`` mirrored to 1 and ``nx - 2``. Returns whether
    every value is finite (not NaN, infinite or BLANK), counted when ``checked``."""
    n = out.shape[0]
    row = stored[m - s0]
    f1, f0 = np.float32(1.0), np.float32(0.0)
    lo = max(fc0 - 1, 0)
    hi = min(fc0 - 1 + n, nx)
    src = row[lo:hi]
    dst = out[lo - (fc0 - 1):hi - (fc0 - 1)]
    bad = 0  # values that are NaN or infinite (an integer sum: it vectorises)
    if checked:
        for k in range(hi - lo):
            v = _physical(src[k], swap, signed, f1, f0, blank, has_blank)
            dst[k] = v
            bad += 0 if v - v == 0 else 1
    else:
        for k in range(hi - lo):
            dst[k] = _physical(src[k], swap, signed, f1, f0, blank, has_blank)
    if fc0 == 0:
        out[0] = out[2]
    if fc0 - 1 + n > nx:
        out[n - 1] = out[n - 3]
    return bad == 0


@njit(**_JIT)
def _add_bilinear(stored, s0, swap, signed, blank, has_blank, ny, nx, colours, fr0, fc0, nrows,
                  length, gain, offset, checked, wt, t0, t1, t2, i0, i1, i2, l0, l1, l2, oy,
                  ox):
    # three float32 rows of the mosaic (columns fc0 - 1 .. fc0 + length), reused in turn
    buf = np.empty((3, length + 2), np.float32)
    held = np.full(3, -1, np.int64)  # the mosaic row in each
    finite = np.ones(3, np.bool_)  # whether each holds finite values only
    half, quarter, f0 = np.float32(0.5), np.float32(0.25), np.float32(0.0)
    for q in range(nrows):
        r = fr0 + q
        up = r - 1 if r > 0 else 1
        down = r + 1 if r < ny - 1 else ny - 2
        for m in (up, r, down):
            if held[m % 3] != m:
                finite[m % 3] = _mosaic_row(stored, s0, swap, signed, blank, has_blank, m,
                                            fc0, nx, checked, buf[m % 3])
                held[m % 3] = m
        above, here, below = buf[up % 3], buf[r % 3], buf[down % 3]
        c0, c1 = colours[2 * (r % 2)], colours[2 * (r % 2) + 1]
        own = c1 if c0 == 1 else c0  # the row's red or blue, at column parity ``parity``
        parity = 1 if c0 == 1 else 0
        y = oy + q
        # own colour, green, the other colour of this row's pixels
        ta = (t0 if own == 0 else t2)[y, ox:ox + length]
        tg = t1[y, ox:ox + length]
        tb = (t2 if own == 0 else t0)[y, ox:ox + length]
        first = (fc0 + parity) % 2  # k of the first own-colour pixel has k % 2 == first
        if not checked:  # the offset is the caller's (marked once for the window)
            for k in range(length):
                j = k + 1
                x = here[j]
                hh = half * (here[j - 1] + here[j + 1])
                vv = half * (above[j] + below[j])
                dd = quarter * (above[j - 1] + above[j + 1] + below[j - 1] + below[j + 1])
                at = (k & 1) == first
                ta[k] += gain * (x if at else hh)
                tg[k] += gain * (half * (hh + vv) if at else x)
                tb[k] += gain * (dd if at else vv)
            continue
        if finite[up % 3] and finite[r % 3] and finite[down % 3]:
            # no value of this row can be NaN: the same loop with the offset (a checked
            # row costs 5 ns a pixel against 1 to 2)
            for k in range(length):
                j = k + 1
                x = here[j]
                hh = half * (here[j - 1] + here[j + 1])
                vv = half * (above[j] + below[j])
                dd = quarter * (above[j - 1] + above[j + 1] + below[j - 1] + below[j + 1])
                at = (k & 1) == first
                ta[k] += gain * (x if at else hh) + offset
                tg[k] += gain * (half * (hh + vv) if at else x) + offset
                tb[k] += gain * (dd if at else vv) + offset
            continue
        ia = (i0 if own == 0 else i2)[y, ox:ox + length]
        ig = i1[y, ox:ox + length]
        ib = (i2 if own == 0 else i0)[y, ox:ox + length]
        la = (l0 if own == 0 else l2)[y, ox:ox + length]
        lg = l1[y, ox:ox + length]
        lb = (l2 if own == 0 else l0)[y, ox:ox + length]
        for k in range(length):
            j = k + 1
            x = here[j]
            hh = half * (here[j - 1] + here[j + 1])
            vv = half * (above[j] + below[j])
            dd = quarter * (above[j - 1] + above[j + 1] + below[j - 1] + below[j + 1])
            at = (k & 1) == first
            va = gain * (x if at else hh) + offset
            vg = gain * (half * (hh + vv) if at else x) + offset
            vb = gain * (dd if at else vv) + offset
            oka, okg, okb = va - va == 0, vg - vg == 0, vb - vb == 0
            ta[k] += va if oka else f0
            tg[k] += vg if okg else f0
            tb[k] += vb if okb else f0
            ia[k] += 0 if oka else 1
            ig[k] += 0 if okg else 1
            ib[k] += 0 if okb else 1
            la[k] += 0.0 if oka else wt
            lg[k] += 0.0 if okg else wt
            lb[k] += 0.0 if okb else wt


def add_bilinear(rows, s0, shape, pattern, fr0, fc0, totals, out, *, gain=1.0, offset=0.0,
                 blank=None, invalid=None, lost=None, weight=1.0):
    """Add a window of a Bayer frame's bilinear colours into three sums, in one pass.

    ``rows`` are the stored mosaic rows from row ``s0`` on (as a FITS reader
    gives them, every column) of a frame of ``shape``, effective pattern
    ``pattern`` (:mod:`bigstack._bayer`); they must hold the window's rows
    and the row above and below it (where the frame has them). Output pixel
    ``out = (oy, ox, nrows, length)`` + ``(q, c)`` takes the debayered
    frame's pixel ``(fr0 + q, fc0 + c)``: colour ``k``'s bilinear value of
    the stored values (the convolution of :func:`bigstack._bayer.debayer`,
    mirrored at the frame's edges) times ``gain`` plus ``offset`` is added
    to ``totals[k]`` (float32). The debayered planes are never written.

    With ``invalid`` (three int32 arrays like ``totals``) a value that is
    NaN (a NaN, infinite or BLANK stored neighbour) adds 1 there and
    ``weight`` to ``lost`` (three float64 arrays) instead of itself to the
    sum; without, the rows must be integers without BLANK (no value can
    then be NaN). Reference: ``debayer`` then a numpy add
    (tests/test_kernels.py).
    """
    view, swap, signed, _ = _stored_view(rows)
    has_blank, bits = _blank_bits(blank, np.asarray(rows).dtype, view.dtype)
    ny, nx = shape
    oy, ox, nrows, length = out
    if nrows <= 0 or length <= 0:
        return
    need0, need1 = max(fr0 - 1, 0), min(fr0 + nrows + 1, ny)
    if s0 > need0 or s0 + view.shape[0] < need1 or fc0 < 0 or fc0 + length > nx \
            or view.shape[1] != nx:
        raise ValueError(f"rows {s0}..{s0 + view.shape[0]} x {view.shape[1]} do not hold "
                         f"mosaic rows {need0}..{need1}, columns {fc0}..{fc0 + length} of a "
                         f"{ny}x{nx} frame")
    colours = np.array(["RGB".index(c) for c in pattern], np.int64)
    checked = invalid is not None
    if checked:
        i0, i1, i2 = invalid
        l0, l1, l2 = lost
    else:
        i0 = i1 = i2 = np.zeros((1, 1), np.int32)
        l0 = l1 = l2 = np.zeros((1, 1), np.float64)
    t0, t1, t2 = totals
    _add_bilinear(view, s0, swap, signed, bits, has_blank, ny, nx, colours, fr0, fc0, nrows,
                  length, np.float32(gain), np.float32(offset), checked, float(weight), t0, t1,
                  t2, i0, i1, i2, l0, l1, l2, oy, ox)
