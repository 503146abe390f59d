"""Per-tile reducers: combine the N frames' values of a block of output pixels.

One call reduces a gathered block ``values`` of shape ``(N, h, W)`` (the N
frames' shifted rows for one output tile, NaN where a frame does not cover
a pixel) to the stacked rows ``(h, W)``, the number of values kept per
pixel (the store's ``coverage``) and the number rejected. Every output
pixel sees only the finite values of the frames that cover it, so
coverage may vary from pixel to pixel near the edges; ``inf`` counts as
missing, like NaN.

Methods
-------
``mean`` (alias ``average``)
    Mean of the finite values, weighted when ``weights`` are given.
``sum``
    Plain sum of the finite values (no weights); NaN where no frame covers
    the pixel.
``median``
    Median of the finite values (no weights: a weighted median is not
    offered).
``sigma_clip``
    Iterative kappa-sigma clipping with astropy's
    :func:`astropy.stats.sigma_clip` semantics (``axis=0``,
    ``cenfunc=centre``, ``stdfunc="std"``, ``sigma_lower``/``sigma_upper``
    = ``kappa``, ``maxiters``): in each iteration the centre (median or
    mean) and the population standard deviation (``ddof=0``) of the values
    still kept give the bounds ``centre - kappa_low * std`` and
    ``centre + kappa_high * std``; values strictly outside them are rejected
    for good; the iterations stop after ``maxiters`` or when an iteration
    rejects nothing. The result is the (weighted) mean of the kept values.
    Note the method's limit with few values: one outlier among n values
    lies at most ``sqrt(n - 1)`` standard deviations from their mean, so
    with kappa 3 nothing is rejected from 10 values or fewer (edges covered
    by few frames keep their trails), and two equal outliers among 15
    values stay within 2.94 sigmas of the median. ``winsorized``, whose
    sigma ignores the outliers, does not have that limit.
``winsorized``
    Winsorized sigma clipping, after the algorithm Siril and PixInsight
    describe for their "Winsorized Sigma Clipping" (Huber's winsorization
    for a robust sigma). For each pixel, with K the values still kept and
    n = |K|, each iteration (at most ``maxiters``) does:

    1. ``m = median(K)`` and ``s = std(K)`` (population, ``ddof=0``);
    2. winsorized sigma: repeat ``s' = 1.134 * std(clip(K, m - 1.5 s,
       m + 1.5 s))`` (the clipping always starts from the values K, not
       from the previous winsorized copy), setting ``s = s'`` each time,
       until ``|s' - s| <= 5e-4 * s`` (that last ``s'`` is used) or after
       50 rounds. Winsorizing about the median leaves the median unchanged,
       so the centre stays ``m``;
    3. reject the values of K below ``m - kappa_low * s`` or above
       ``m + kappa_high * s``; stop when nothing was rejected.

    The result is the (weighted) mean of the kept values. As for
    ``sigma_clip``, no minimum number of values is enforced (with kappa
    below 1 a pixel may lose all its values and become NaN).
``minmax``
    Drop the ``nlow`` lowest and ``nhigh`` highest finite values of each
    pixel and average the rest. A pixel covered by ``nlow + nhigh`` values
    or fewer keeps its middle value (odd count) or middle two values (even
    count), so it is neither emptied nor pushed to one side. Among equal
    values the choice does not change the unweighted mean; with weights,
    the lower frame index counts as the lower value.
``percentile``
    Keep the values inside the pixel's ``[p_low, p_high]`` percentile band
    (both ends included; percentiles as ``np.nanpercentile`` with linear
    interpolation) and average them. When the band holds no value (two
    values and a band narrower than their gap, say) the pixel keeps its
    middle value(s), as for ``minmax``.

``weights`` (one per frame, >= 0) only weight the final average of the
kept values; they do not change which values are rejected. A frame with
zero weight still counts in ``kept`` and in the rejection statistics; a
pixel whose kept values all have zero weight is NaN.

Implementation and memory
-------------------------
The block is processed in chunks of whole pixels (all their frames): at
most ``_CHUNK_VALUES`` values and ``_CHUNK_PIXELS`` pixels, so the
reducers' temporaries are bounded per call, not per block. For the
rank-based methods (all but ``mean`` and ``sum``) each chunk is transposed
to (pixels, frames) by a cache-blocked copy and sorted along the frames
(NaNs sort last, so a pixel's finite values are its first ``k`` entries).
Rejection by value thresholds always keeps a contiguous run ``[s, e)`` of
the sorted values, so a median is two look-ups. For ``sigma_clip`` and
``minmax`` the run's sum and sum of squares (float64, exact squares of
the float32 values) are the whole-row totals minus the entries the run
ends have moved past; run ends move inwards entry by entry for a few
steps, then by a vectorised binary search, and only pixels whose run
changed in the last iteration are looked at again. ``winsorized`` uses
float64 prefix sums instead, as its clamp points move by many entries,
and ``percentile`` masked sums. The variance ``S2/n - (S1/n)**2`` from
float64 sums loses about ``1e-16 * mean**2 / var`` relative (1e-6 for a
mean of 65535 and a sigma of 1), far below float32 precision. The only
Python loops are over chunks, iterations and search steps, never over
pixels.

Memory of one call: the block itself (4 bytes per value for float32,
:func:`bytes_per_value`), the outputs (``_PIXEL_BYTES`` = 12 bytes per
output pixel) and a workspace bounded by :func:`workspace_bytes`
(7-18 MiB, whatever the block size). So with ``T`` tiles in flight, a
budget ``M``, ``N`` frames and ``W`` pixels a row, a tile may have::

    h = (M / T - workspace_bytes(method)) / (W * (N * bytes_per_value(method) + 12))

rows (:func:`max_rows`), leaving out the caller's own read buffers.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

METHODS = ("mean", "sum", "median", "sigma_clip", "winsorized", "minmax", "percentile")
ALIASES = {"average": "mean"}
CENTRES = ("median", "mean")

# options each method uses; any other option given is an error
_USES = {
    "mean": {"weights"},
    "sum": set(),
    "median": set(),
    "sigma_clip": {"weights", "kappa", "centre", "maxiters"},
    "winsorized": {"weights", "kappa", "maxiters"},
    "minmax": {"weights", "nlow", "nhigh"},
    "percentile": {"weights", "percentile"},
}
_DEFAULTS = {"kappa": (3.0, 3.0), "centre": "median", "maxiters": 5, "nlow": 1, "nhigh": 1,
             "percentile": (10.0, 90.0)}

# values per chunk: about 2 MiB of float32, so a chunk and its sorted copy
# stay in the L2/L3 caches; at most _CHUNK_PIXELS pixels, which bounds the
# per-pixel arrays when there are few frames
_CHUNK_VALUES = 1 << 19
_CHUNK_PIXELS = 1 << 13
# frames copied together by the blocked transpose (measured best on x86-64)
_TRANSPOSE_FRAMES = 8
# per output pixel: result float32, kept and rejected int32
_PIXEL_BYTES = 12
# winsorized sigma: convergence of the inner loop
_WINSOR_CLIP = 1.5
_WINSOR_FACTOR = 1.134
_WINSOR_RTOL = 5e-4
_WINSOR_ROUNDS = 50


# --------------------------------------------------------------------------
# memory

# workspace per chunk value (bytes), measured with tracemalloc and rounded
# up: the sorted float32 chunk, masks, a float64 copy for the sums
# (sigma_clip, minmax) or two float64 prefix sums (winsorized); weighted
# minmax/percentile add an argsort index and the sorted weights
_VALUE_BYTES = {"mean": 8, "sum": 8, "median": 6, "sigma_clip": 24, "winsorized": 24,
                "minmax": 20, "percentile": 12}
_WEIGHTED_BYTES = {"mean": 0, "sigma_clip": 0, "winsorized": 4, "minmax": 8, "percentile": 16}
# workspace per chunk pixel: the per-pixel index, bound and sum arrays
_ROW_BYTES = 512


def bytes_per_value(method):
    """Bytes per (frame x pixel) value of a block that grow with the block.

    This is the block itself, float32: 4 bytes for every method. The
    reducers work in bounded chunks, so their temporaries do not grow with
    the block; they are the fixed :func:`workspace_bytes`. With ``T``
    tiles in flight, a budget ``M`` (bytes), ``N`` frames and ``W`` pixels
    a row, a tile may have::

        rows = (M / T - workspace_bytes(method)) / (W * (N * bytes_per_value(method) + 12))

    rows, 12 being the outputs' bytes per pixel (:func:`max_rows`).
    """
    _method(method)
    return 4.0


def workspace_bytes(method, n_frames=None, weighted=False):
    """Upper bound of one :func:`combine_block` call's own working memory, in bytes.

    It does not depend on the block size: about 7 MiB for ``median``,
    16 MiB for ``sigma_clip`` and 18 MiB for weighted ``minmax``,
    ``percentile`` and ``winsorized``. ``n_frames`` matters only beyond
    ``_CHUNK_VALUES`` (half a million) frames, when a chunk of one pixel
    is larger than that.
    """
    method = _method(method)
    chunk = _CHUNK_VALUES if n_frames is None else max(_CHUNK_VALUES, int(n_frames))
    per_value = _VALUE_BYTES[method] + (_WEIGHTED_BYTES.get(method, 0) if weighted else 0)
    return chunk * per_value + _CHUNK_PIXELS * _ROW_BYTES


def max_rows(memory, threads, n_frames, width, method, weighted=False, value_bytes=None):
    """Rows per tile that keep ``threads`` blocks within ``memory`` bytes (may be 0).

    See :func:`bytes_per_value` for the formula (``value_bytes`` replaces it
    for a block of other values: the stored rows of
    :func:`bigstack._kernels.reject_stored`); 0 means not even one row
    fits, which the caller should report as an error naming the budget.
    """
    value = bytes_per_value(method) if value_bytes is None else value_bytes
    per_row = width * (n_frames * value + _PIXEL_BYTES)
    free = memory / max(int(threads), 1) - workspace_bytes(method, n_frames, weighted)
    return max(int(free // per_row), 0)


# --------------------------------------------------------------------------
# validation


def _method(method):
    name = ALIASES.get(method, method)
    if name not in METHODS:
        raise ValueError(f"method must be one of {METHODS + tuple(ALIASES)}, got {method!r}")
    return name


def _options(method, given):
    """Resolve the options of ``method``; refuse those it would ignore."""
    unused = sorted(k for k, v in given.items() if v is not None and k not in _USES[method])
    if unused:
        if "weights" in unused and method in ("median", "sum"):
            why = ("a weighted median is not offered" if method == "median"
                   else "a weighted sum is not a sum")
            raise ValueError(f"weights cannot be used with method={method!r} ({why}); "
                             "use method='mean' or a clipping method for weights")
        raise ValueError(f"method={method!r} does not use {', '.join(unused)}; "
                         "leave it unset")
    out = {k: (_DEFAULTS.get(k) if given.get(k) is None else given[k])
           for k in _USES[method]}
    if "kappa" in out:
        out["kappa"] = _kappa(out["kappa"])
    if "centre" in out and out["centre"] not in CENTRES:
        raise ValueError(f"centre must be one of {CENTRES}, got {out['centre']!r}")
    if "maxiters" in out:
        out["maxiters"] = _count("maxiters", out["maxiters"], minimum=1)
    for key in ("nlow", "nhigh"):
        if key in out:
            out[key] = _count(key, out[key], minimum=0)
    if "percentile" in out:
        out["percentile"] = _band(out["percentile"])
    return out


def _kappa(kappa):
    pair = (kappa, kappa) if isinstance(kappa, numbers.Real) else tuple(kappa)
    if len(pair) != 2:
        raise ValueError(f"kappa must be a number or (low, high), got {kappa!r}")
    low, high = (float(k) for k in pair)
    if not (np.isfinite(low) and np.isfinite(high) and low > 0 and high > 0):
        raise ValueError(f"kappa must be finite and > 0 (low, high), got {kappa!r}")
    return low, high


def _count(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _band(band):
    try:
        low, high = (float(p) for p in band)
    except (TypeError, ValueError) as err:
        raise ValueError(f"percentile must be (low, high) in percent, got {band!r}") from err
    if not 0.0 <= low < high <= 100.0:
        raise ValueError(f"percentile must satisfy 0 <= low < high <= 100, got {band!r}")
    return low, high


def check_weights(weights, n):
    """Return ``weights`` as float64 ``(n,)``; raise ValueError naming the problem."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"weights must have one value per frame ({n}), got shape {w.shape}")
    bad = np.flatnonzero(~np.isfinite(w))
    if bad.size:
        raise ValueError(f"weight of frame {int(bad[0])} is not finite: {float(w[bad[0]])}")
    bad = np.flatnonzero(w < 0)
    if bad.size:
        raise ValueError(f"weight of frame {int(bad[0])} is negative: {float(w[bad[0]])}")
    if not w.any():
        raise ValueError("weights are all zero: no frame would contribute")
    return w


@dataclass(frozen=True)
class Rejection:
    """A combine method and its options, validated once.

    ``stack(..., method=Rejection("sigma_clip", kappa=(2.5, 3)))`` is the same
    as ``stack(..., method="sigma_clip", kappa=(2.5, 3))``; the object form
    keeps a night's combine settings in one value. Options the method does
    not use must be left unset (a ValueError names them); unset options take
    their defaults (``kappa=(3, 3)``, ``centre="median"``, ``maxiters=5``,
    ``nlow=nhigh=1``, ``percentile=(10, 90)``).

    Parameters
    ----------
    method : {"mean", "average", "sum", "median", "sigma_clip", "winsorized", "minmax",
              "percentile"}
        See the module notes for each method's exact algorithm.
    kappa, centre, maxiters, nlow, nhigh, percentile
        As for :func:`combine_block`.

    Examples
    --------
    >>> Rejection("sigma_clip", kappa=2.5).options
    {'kappa': (2.5, 2.5), 'centre': 'median', 'maxiters': 5}
    >>> Rejection("median", kappa=3)
    Traceback (most recent call last):
    ...
    ValueError: method='median' does not use kappa; leave it unset
    """

    method: str = "sigma_clip"
    kappa: object = None
    centre: str | None = None
    maxiters: int | None = None
    nlow: int | None = None
    nhigh: int | None = None
    percentile: object = None

    def __post_init__(self):
        name = _method(self.method)
        given = {k: getattr(self, k) for k in _OPTION_NAMES}
        resolved = _options(name, given)
        object.__setattr__(self, "method", name)
        for key in _OPTION_NAMES:
            object.__setattr__(self, key, resolved.get(key))

    @property
    def options(self):
        """The options this method uses, resolved (a dict, for :func:`combine_block`)."""
        return {k: getattr(self, k) for k in _OPTION_NAMES if k in _USES[self.method]}

    @property
    def streaming(self):
        """True for the methods that add frames one by one (``mean``, ``sum``)."""
        return self.method in ("mean", "sum")

    @property
    def weighted(self):
        """True when the method can weight its frames."""
        return "weights" in _USES[self.method]


_OPTION_NAMES = ("kappa", "centre", "maxiters", "nlow", "nhigh", "percentile")


# --------------------------------------------------------------------------
# the entry point


def combine_block(values, method, *, weights=None, kappa=None, centre=None, maxiters=None,
                  nlow=None, nhigh=None, percentile=None):
    """Combine a block of N frames' values per pixel, with optional rejection.

    Parameters
    ----------
    values : numpy.ndarray, float32, shape ``(N, h, W)``
        The N frames' shifted rows for this tile, indexed ``[frame, y, x]``;
        NaN (or inf) where a frame does not cover a pixel. It is not
        modified. float64 is accepted too (sorted in float64); integers
        are converted to float32 (a copy).
    method : {"mean", "average", "sum", "median", "sigma_clip", "winsorized", "minmax",
              "percentile"}
        See the module notes for each method's exact algorithm.
    weights : array_like ``(N,)``, optional
        Per-frame weights (finite, >= 0, not all zero) for the final
        average of ``mean`` and the clipping methods. Refused by
        ``median`` and ``sum``.
    kappa : float or (low, high), optional
        Clipping limits in sigmas for ``sigma_clip`` and ``winsorized``;
        default ``(3.0, 3.0)``.
    centre : {"median", "mean"}, optional
        Centre of ``sigma_clip``; default ``"median"``.
    maxiters : int, optional
        Most clipping iterations for ``sigma_clip`` and ``winsorized``;
        default 5. Iterating stops earlier once nothing changes, so
        ``maxiters=N`` iterates to convergence.
    nlow, nhigh : int, optional
        Values dropped at each end by ``minmax``; default 1 and 1.
    percentile : (low, high), optional
        The percentile band ``percentile`` keeps; default ``(10, 90)``.

    Options a method does not use must be left unset (``None``); giving
    one is a ValueError naming it, so nothing is silently ignored.

    Returns
    -------
    result : numpy.ndarray float32 ``(h, W)``
        The combined values; NaN where no value is kept.
    kept : numpy.ndarray int32 ``(h, W)``
        Number of values kept (the coverage of the stack).
    rejected : numpy.ndarray int32 ``(h, W)``
        Number of finite covering values rejected.

    Examples
    --------
    >>> import numpy as np
    >>> block = np.full((5, 1, 2), 10.0, np.float32)
    >>> block[2, 0, 0] = 1000.0  # a cosmic ray
    >>> block[0, 0, 1] = np.nan  # frame 0 does not cover this pixel
    >>> result, kept, rejected = combine_block(block, "sigma_clip", kappa=1.5)
    >>> result.tolist(), kept.tolist(), rejected.tolist()
    ([[10.0, 10.0]], [[4, 4]], [[1, 0]])
    """
    method = _method(method)
    values = np.asarray(values)
    if values.ndim != 3:
        raise ValueError(f"values must be a (frame, y, x) block, got shape {values.shape}")
    if values.dtype.kind != "f":
        values = values.astype(np.float32)
    opts = _options(method, {"weights": weights, "kappa": kappa, "centre": centre,
                             "maxiters": maxiters, "nlow": nlow, "nhigh": nhigh,
                             "percentile": percentile})
    n, h, w = values.shape
    if opts.get("weights") is not None:
        opts["weights"] = check_weights(opts["weights"], n)
    pixels = h * w
    flat = values.reshape(n, pixels)
    result = np.empty(pixels, np.float32)
    kept = np.empty(pixels, np.int32)
    rejected = np.zeros(pixels, np.int32)
    if pixels and n:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            if method in ("mean", "sum"):
                _linear(flat, method, opts.get("weights"), result, kept)
            else:
                _ranked(flat, method, opts, result, kept, rejected)
    elif pixels:
        result[:] = np.nan
        kept[:] = 0
    return result.reshape(h, w), kept.reshape(h, w), rejected.reshape(h, w)


# --------------------------------------------------------------------------
# mean and sum: straight accumulation over frames


def _chunk_pixels(n):
    return max(1, min(_CHUNK_VALUES // n, _CHUNK_PIXELS))


def _linear(flat, method, weights, result, kept):
    n, pixels = flat.shape
    step = _chunk_pixels(n)
    for p0 in range(0, pixels, step):
        p1 = min(p0 + step, pixels)
        chunk = flat[:, p0:p1]
        finite = np.isfinite(chunk)
        count = np.count_nonzero(finite, axis=0)
        if not finite.all():
            chunk = np.where(finite, chunk, 0)
        if weights is None:
            total = chunk.sum(axis=0, dtype=np.float64)
            norm = count
        else:  # einsum casts to float64 in buffers, not whole copies
            total = np.einsum("i,ij->j", weights, chunk)
            norm = np.einsum("i,ij->j", weights, finite)
        if method == "sum":
            out = np.where(count > 0, total, np.nan)
        else:
            out = np.where(norm > 0, total / np.where(norm > 0, norm, 1), np.nan)
        result[p0:p1] = out
        kept[p0:p1] = count


# --------------------------------------------------------------------------
# rank-based methods: sorted chunks


class _Rows:
    """One chunk transposed to (pixels, frames), each pixel's values sorted.

    NaNs sort last, so pixel r's finite values are ``rows[r, :k[r]]`` and a
    run kept by value thresholds is ``rows[r, s[r]:e[r]]``. Sums of runs
    (of the values and of their squares) are float64.
    """

    def __init__(self, work, flat, p0, p1, keep_order=False):
        n = flat.shape[0]
        c = p1 - p0
        rows = work["rows"][:c]
        for f0 in range(0, n, _TRANSPOSE_FRAMES):  # cache-blocked transpose
            f1 = min(f0 + _TRANSPOSE_FRAMES, n)
            rows[:, f0:f1] = flat[f0:f1, p0:p1].T
        if keep_order:  # the frame of every sorted entry; ties in frame order
            self.order = np.argsort(rows, axis=1, kind="stable")
            rows[...] = np.take_along_axis(rows, self.order, axis=1)
        else:
            self.order = None
            rows.sort(axis=1)
        self.work = work
        self.rows = rows
        self.flat = rows.reshape(-1)
        self.n = n
        self.c = c
        self.every = np.arange(c, dtype=np.intp)
        self.base = self.every * n
        self.k = self._finite_count()
        self._drop_infinities()

    # ---- look-ups -----------------------------------------------------------

    def take(self, index, idx=None):
        """Entry ``index`` of every row (or of rows ``idx``); index clipped to the row."""
        base = self.base if idx is None else self.base[idx]
        return self.flat.take(base + np.minimum(np.maximum(index, 0), self.n - 1))

    def median(self, s, e, idx=None):
        """Median of each row's run ``[s, e)`` (NaN where empty), float64."""
        n = e - s
        a = self.take(s + (n - 1) // 2, idx).astype(np.float64)
        b = self.take(s + n // 2, idx).astype(np.float64)
        return np.where(n > 0, 0.5 * (a + b), np.nan)

    def bisect(self, idx, lo, hi, limit, op):
        """For rows ``idx``: ``lo`` plus the length of the prefix of ``[lo, hi)`` passing ``op``.

        ``op`` is ``"lt"`` (value < limit), ``"le"`` (value <= limit) or
        ``"finite"`` (not NaN); it must hold on a prefix of the run (sorted
        values make it so).
        """
        base = self.base[idx]
        lo = lo.copy()
        hi = hi.copy()
        for _ in range(int((hi - lo).max(initial=0)).bit_length()):
            mid = (lo + hi) >> 1
            value = self.flat.take(base + np.minimum(mid, self.n - 1))
            go = _passes(value, limit, op) & (lo < hi)
            lo = np.where(go, mid + 1, lo)
            hi = np.where(go, hi, mid)
        return lo

    def seek(self, idx, guess, lo, hi, limit, op):
        """Like :meth:`bisect`, starting from a guess of the answer.

        Rows where the guess is right cost two look-ups; the others are
        bisected on the side of the guess where the answer lies.
        """
        g = np.minimum(np.maximum(guess, lo), hi)
        base = self.base[idx]
        last = self.n - 1
        below = _passes(self.flat.take(base + np.minimum(np.maximum(g - 1, 0), last)), limit, op)
        at = _passes(self.flat.take(base + np.minimum(g, last)), limit, op)
        # entry g passes: the answer is above g; entry g - 1 fails: below g
        for w, step in ((np.flatnonzero((g < hi) & at), 1),
                        (np.flatnonzero((g > lo) & ~below), -1)):
            lim = limit[w]
            for _ in range(_WALK):  # a few entries one by one, then bisect
                if not w.size:
                    break
                g[w] += step
                probe = g[w] if step > 0 else g[w] - 1
                inside = g[w] < hi[w] if step > 0 else g[w] > lo[w]
                more = _passes(self.flat.take(base[w] + np.minimum(np.maximum(probe, 0), last)),
                               lim, op)
                more = inside & (more if step > 0 else ~more)
                w, lim = w[more], lim[more]
            if w.size:
                if step > 0:
                    g[w] = self.bisect(idx[w], g[w] + 1, hi[w], lim, op)
                else:
                    g[w] = self.bisect(idx[w], lo[w], g[w] - 1, lim, op)
        return g

    def _finite_count(self):
        k = np.full(self.c, self.n, np.intp)
        partial = np.flatnonzero(np.isnan(self.rows[:, -1]))
        if partial.size:
            zero = np.zeros(partial.size, np.intp)
            k[partial] = self.bisect(partial, zero, k[partial], None, "finite")
        return k

    def _drop_infinities(self):
        """Count +-inf as missing: they sort just before/after the finite values."""
        last = self.take(self.k - 1)
        bad = (self.rows[:, 0] == -np.inf) | ((self.k > 0) & (last == np.inf))
        for i in np.flatnonzero(bad):  # rare: per row is fine
            row = self.rows[i]
            infinite = np.isinf(row)
            move = np.concatenate([np.flatnonzero(~infinite), np.flatnonzero(infinite)])
            row[:] = row[move]
            if self.order is not None:
                self.order[i] = self.order[i][move]
            row[row.size - np.count_nonzero(infinite):] = np.nan
            self.k[i] = np.count_nonzero(row == row)

    # ---- sums over runs -------------------------------------------------------

    def start_sums(self, prefix=False):
        """Sums of the values and of their squares over each pixel's finite values.

        float64, from exact float64 squares of the float32 values, so run
        ends that move later remove exactly the terms the totals added.
        With ``prefix``, float64 prefix sums are kept for :meth:`prefix_sums`.
        """
        k = self.k
        zero = np.zeros_like(k)
        rows = self.rows
        if prefix:  # for runs whose ends move by many entries at a time
            p1 = self.work["p1"][: self.c]
            p2 = self.work["p2"][: self.c]
            np.copyto(p1, rows)  # cumsum with a dtype would copy the rows first
            np.cumsum(p1, axis=1, out=p1)
            np.square(rows, out=p2, dtype=np.float64)
            np.cumsum(p2, axis=1, out=p2)
            self.p1 = p1.reshape(-1)
            self.p2 = p2.reshape(-1)
            return self.prefix_sums(zero, k)
        d = self.work["d"][: self.c]  # float64 copy: faster than casting reductions
        np.copyto(d, rows)
        s1 = d.sum(axis=1)
        np.multiply(d, d, out=d)
        s2 = d.sum(axis=1)
        partial = np.flatnonzero(k < self.n)
        if partial.size:  # NaN tails: sum the finite values only
            s1[partial], s2[partial] = self.direct_sums(partial, zero[partial], k[partial])
        return s1, s2

    def prefix_sums(self, s, e, idx=None):
        """Sums over ``[s, e)`` (of rows ``idx``) from ``start_sums(prefix=True)``."""
        base = self.base if idx is None else self.base[idx]

        def upto(p, j):
            return np.where(j > 0, p.take(base + np.maximum(j - 1, 0)), 0.0)

        return (upto(self.p1, e) - upto(self.p1, s), upto(self.p2, e) - upto(self.p2, s))

    def direct_sums(self, idx, s, e):
        """Sums over ``[s, e)`` of rows ``idx``, by masking whole rows."""
        j = np.arange(self.n)
        inside = (j >= s[:, None]) & (j < e[:, None])
        rows = self.rows if idx.size == self.c else self.rows[idx]
        d = np.where(inside, rows, 0)
        return (d.sum(axis=1, dtype=np.float64),
                np.einsum("ij,ij->i", d, d, dtype=np.float64))

    def run_sums(self, totals, s, e):
        """Sums over ``[s, e)`` from the whole-run ``totals``, removing the ends."""
        s1, s2 = (t.copy() for t in totals)
        ends = int(s.max(initial=0)) + int((self.k - e).max(initial=0))
        if ends > 2 * _WALK:
            return self.direct_sums(self.every, s, e)
        for j in range(int(s.max(initial=0))):
            self._drop(s1, s2, np.flatnonzero(j < s), j)
        for j in range(int((self.k - e).max(initial=0))):
            idx = np.flatnonzero(e + j < self.k)
            self._drop(s1, s2, idx, e[idx] + j)
        return s1, s2

    def _drop(self, s1, s2, idx, j):
        value = self.flat.take(self.base[idx] + j).astype(np.float64)
        s1[idx] -= value
        s2[idx] -= value * value

    # ---- runs moving inwards ------------------------------------------------

    def walk(self, limit, s, e, sums, low, rows):
        """Move runs' low ends up over values < ``limit`` (``low``), or their
        high ends down over values > ``limit``, removing those from ``sums``.

        All arrays are aligned with ``rows`` (row numbers). Ends move entry
        by entry, only the rows still moving being looked at, for
        ``_WALK`` steps; ends still moving then are bisected, and returned
        (as positions in ``rows``) so that their sums can be recomputed.
        """
        end = s.copy() if low else e.copy()
        s1, s2 = sums
        moving = np.flatnonzero(s < e)
        lim = limit[moving]
        base = self.base[rows[moving]]
        for _ in range(_WALK):
            at = end[moving] if low else end[moving] - 1
            value = self.flat.take(base + at)
            ok = value < lim if low else value > lim
            if not ok.all():
                moving, lim, base, value = moving[ok], lim[ok], base[ok], value[ok]
                if not moving.size:
                    return end, moving
            end[moving] += 1 if low else -1
            value = value.astype(np.float64)
            s1[moving] -= value
            s2[moving] -= value * value
            room = end[moving] < e[moving] if low else s[moving] < end[moving]
            if not room.all():
                moving, lim, base = moving[room], lim[room], base[room]
                if not moving.size:
                    return end, moving
        idx = rows[moving]  # long moves: bisect the rest
        if low:
            end[moving] = self.bisect(idx, end[moving], e[moving], lim, "lt")
        else:
            end[moving] = self.bisect(idx, s[moving], end[moving], lim, "le")
        return end, moving


def _passes(value, limit, op):
    if op == "lt":
        return value < limit
    if op == "le":
        return value <= limit
    return value == value  # "finite": not NaN


# how many entries a run end moves one by one before bisecting
_WALK = 6


def _ranked(flat, method, opts, result, kept, rejected):
    n, pixels = flat.shape
    step = min(_chunk_pixels(n), pixels)
    dtype = np.float64 if flat.dtype == np.float64 else np.float32
    weights = opts.get("weights")
    work = {"rows": np.empty((step, n), dtype)}
    if method == "winsorized":
        work["p1"] = np.empty((step, n), np.float64)
        work["p2"] = np.empty((step, n), np.float64)
    elif method == "sigma_clip" or (method == "minmax" and weights is None):
        work["d"] = np.empty((step, n), np.float64)
    # runs kept by rank (minmax, the middle-value fallbacks) may split equal
    # values, so their weighted means need each sorted value's frame
    by_rank = method in ("minmax", "percentile") and weights is not None
    for p0 in range(0, pixels, step):
        p1 = min(p0 + step, pixels)
        rows = _Rows(work, flat, p0, p1, keep_order=by_rank)
        k = rows.k
        if method == "median":
            s, e = np.zeros_like(k), k
            out = rows.median(s, e)
        else:
            need = method in ("sigma_clip", "winsorized") or (method == "minmax"
                                                               and weights is None)
            totals = rows.start_sums(prefix=method == "winsorized") if need else None
            if method == "sigma_clip":
                s, e, sums = _sigma_clip(rows, totals, **opts)
            elif method == "winsorized":
                s, e = _winsorized(rows, totals, **opts)
                sums = None if weights is not None else rows.prefix_sums(s, e)
            elif method == "minmax":
                s, e = _minmax(k, opts["nlow"], opts["nhigh"])
                sums = None if weights is not None else rows.run_sums(totals, s, e)
            else:
                s, e = _percentile(rows, opts["percentile"])
                sums = None if weights is not None else rows.direct_sums(rows.every, s, e)
            if weights is None:
                m = e - s
                out = np.where(m > 0, sums[0] / np.maximum(m, 1), np.nan)
            else:
                out = _weighted(rows, flat[:, p0:p1], s, e, weights)
        result[p0:p1] = out
        kept[p0:p1] = e - s
        rejected[p0:p1] = k - (e - s)


def _weighted(rows, chunk, s, e, weights):
    """Weighted mean of each row's kept run ``[s, e)``."""
    if rows.order is not None:  # kept by rank: weights follow the sorted order
        j = np.arange(rows.n)
        inside = (j >= s[:, None]) & (j < e[:, None])
        w = weights[rows.order]
        w *= inside
        np.copyto(rows.rows, 0, where=~inside)  # the rows are not needed after this
        total = np.einsum("ij,ij->i", w, rows.rows, dtype=np.float64)
        norm = w.sum(axis=1)
    else:  # kept by value: the run is every value in [rows[s], rows[e - 1]]
        low = rows.take(s)
        high = rows.take(e - 1)
        inside = chunk >= low
        inside &= chunk <= high
        inside &= e > s
        norm = np.einsum("i,ij->j", weights, inside)
        total = np.einsum("i,ij->j", weights, np.where(inside, chunk, 0))
    return np.where(norm > 0, total / np.where(norm > 0, norm, 1), np.nan)


def _spread(sums, s, e):
    """Mean and population std of each run from its sums."""
    n = np.maximum(e - s, 1)
    mean = sums[0] / n
    var = np.maximum(sums[1] / n - mean * mean, 0.0)
    return mean, np.sqrt(var)


def _sigma_clip(rows, totals, *, kappa, centre, maxiters, weights=None):
    low, high = kappa
    k = rows.k
    s = np.zeros_like(k)
    e = k.copy()
    s1, s2 = (t.copy() for t in totals)
    # a run of one value never changes (its std is 0), so only runs that
    # changed in the last iteration are looked at again
    active = np.flatnonzero(k > 1)
    for _ in range(maxiters):
        if not active.size:
            break
        sa, ea = s[active], e[active]
        sums = [s1[active], s2[active]]
        mean, std = _spread(sums, sa, ea)
        if centre == "median":
            middle = rows.median(sa, ea, active)
        else:
            middle = mean
        new_s, long_low = rows.walk(middle - low * std, sa, ea, sums, True, active)
        new_e, long_high = rows.walk(middle + high * std, new_s, ea, sums, False, active)
        redo = long_low if not long_high.size else np.union1d(long_low, long_high)
        if redo.size:
            sums[0][redo], sums[1][redo] = rows.direct_sums(active[redo], new_s[redo],
                                                            new_e[redo])
        s[active], e[active] = new_s, new_e
        s1[active], s2[active] = sums
        active = active[(new_s != sa) | (new_e != ea)]
    return s, e, (s1, s2)


def _winsorized(rows, totals, *, kappa, maxiters, weights=None):
    low, high = kappa
    k = rows.k
    s = np.zeros_like(k)
    e = k.copy()
    # runs of one value never change; runs that did not change in the last
    # iteration would not change in the next
    active = np.flatnonzero(k > 1)
    for _ in range(maxiters):
        if not active.size:
            break
        sa, ea = s[active], e[active]
        middle = rows.median(sa, ea, active)
        _, sigma = _spread(rows.prefix_sums(sa, ea, active), sa, ea)
        sigma = _winsorized_sigma(rows, active, sa, ea, middle, sigma)
        new_s = rows.bisect(active, sa, ea, middle - low * sigma, "lt")
        new_e = rows.bisect(active, new_s, ea, middle + high * sigma, "le")
        s[active], e[active] = new_s, new_e
        active = active[(new_s != sa) | (new_e != ea)]
    return s, e


def _winsorized_sigma(rows, idx, s, e, middle, sigma):
    """Huber's winsorized sigma of the runs ``[s, e)`` of rows ``idx`` (module notes)."""
    sigma = sigma.copy()
    todo = np.flatnonzero((e - s >= 2) & (sigma > 0))
    # first guesses of the clamp points: a normal sample has 6.7% beyond 1.5 sigma
    tail = np.rint(0.0668 * (e - s)).astype(np.intp)
    guess_a, guess_b = s + tail, e - tail
    for _ in range(_WINSOR_ROUNDS):
        if not todo.size:
            break
        r, st, et, m, sg = idx[todo], s[todo], e[todo], middle[todo], sigma[todo]
        lo = m - _WINSOR_CLIP * sg
        hi = m + _WINSOR_CLIP * sg
        # [st, a) are raised to lo, [b, et) lowered to hi, [a, b) kept as they are
        a = rows.seek(r, guess_a[todo], st, et, lo, "lt")
        b = rows.seek(r, guess_b[todo], a, et, hi, "le")
        guess_a[todo], guess_b[todo] = a, b
        m1, m2 = rows.prefix_sums(a, b, r)
        na = a - st
        nb = et - b
        n = et - st
        w1 = na * lo + m1 + nb * hi
        w2 = na * lo * lo + m2 + nb * hi * hi
        wmean = w1 / n
        new = _WINSOR_FACTOR * np.sqrt(np.maximum(w2 / n - wmean * wmean, 0.0))
        sigma[todo] = new
        todo = todo[np.abs(new - sg) > _WINSOR_RTOL * sg]
    return sigma


def _middle(k):
    """The middle value (odd ``k``) or two values (even ``k``) of each row: ``[s, e)``."""
    s = np.maximum(k - 1, 0) // 2
    return s, np.where(k > 0, k // 2 + 1, 0)


def _minmax(k, nlow, nhigh):
    enough = k > nlow + nhigh
    ms, me = _middle(k)
    return np.where(enough, nlow, ms), np.where(enough, k - nhigh, me)


def _percentile(rows, band):
    k = rows.k
    every = rows.every
    limits = []
    for p in band:
        pos = p / 100.0 * np.maximum(k - 1, 0)
        f = np.floor(pos).astype(np.intp)
        g = pos - f
        a = rows.take(f).astype(np.float64)
        b = rows.take(np.minimum(f + 1, k - 1)).astype(np.float64)
        limits.append(np.where(g > 0, a + g * (b - a), a))
    s = rows.bisect(every, np.zeros_like(k), k, limits[0], "lt")
    e = rows.bisect(every, s, k, limits[1], "le")
    empty = e <= s
    ms, me = _middle(k)
    return np.where(empty, ms, s), np.where(empty, me, e)
