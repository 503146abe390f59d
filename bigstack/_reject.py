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
    Plain sum of the finite values (no weights).
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
The block is processed in chunks of about ``_CHUNK_VALUES`` values
(columns of pixels across all frames), so the reducers' temporaries are
bounded per call, not per block. For the rank-based methods (all but
``mean`` and ``sum``) each chunk is transposed to (pixels, frames) with a
cache-blocked copy and sorted along the frame axis (NaNs sort last, so
the finite values of a pixel are its first ``k`` entries). Rejection by
value thresholds then always keeps a contiguous run ``[s, e)`` of the
sorted values, so medians are two look-ups, sums and sums of squares of
the kept run come from float64 prefix sums (taken relative to the pixel's
median, which keeps the one-pass variance well conditioned), and new run
ends come from a vectorised binary search. The only Python loops are over
chunks, iterations and binary-search steps, never over pixels.

Memory of one call (see :func:`bytes_per_value`): the block itself
(4 bytes per value for float32), the outputs and per-pixel accumulators
(about ``_PIXEL_BYTES`` per output pixel), and a fixed workspace of at
most about ``_CHUNK_VALUES * 24`` bytes (about 12 MiB) whatever the block
size. So a tile of ``h`` rows of ``W`` pixels over ``N`` frames costs
about ``h * W * (N * bytes_per_value(method) + _PIXEL_BYTES) +
workspace_bytes(method)`` bytes, and with ``T`` tiles in flight a budget
``M`` allows ``h = (M / T - workspace_bytes(method)) / (W * (N *
bytes_per_value(method) + _PIXEL_BYTES))`` rows (:func:`max_rows`).
"""

from __future__ import annotations

import numbers

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
# stay in the L2/L3 caches
_CHUNK_VALUES = 1 << 19
# frames copied together by the blocked transpose (measured best on x86-64)
_TRANSPOSE_FRAMES = 8
# per output pixel: result float32, kept and rejected int32, and the
# float64/int64 per-pixel accumulators of one chunk at a time
_PIXEL_BYTES = 12
# winsorized sigma: convergence of the inner loop
_WINSOR_CLIP = 1.5
_WINSOR_FACTOR = 1.134
_WINSOR_RTOL = 5e-4
_WINSOR_ROUNDS = 50


# --------------------------------------------------------------------------
# memory


def bytes_per_value(method):
    """Bytes of working memory per (frame x pixel) value of a block.

    This is the block itself, float32 (4 bytes). Every reducer works in
    bounded chunks, so its own temporaries do not grow with the block;
    they are the fixed :func:`workspace_bytes`, plus ``_PIXEL_BYTES`` (12)
    per output pixel for the outputs. The tile height for a memory budget
    ``M`` shared by ``T`` tiles in flight, ``N`` frames and ``W`` pixels a
    row is::

        rows = (M / T - workspace_bytes(method)) / (W * (N * bytes_per_value(method) + 12))

    which :func:`max_rows` computes (ignoring the caller's own read
    buffers, a frame's rows at a time).
    """
    _method(method)
    return 4.0


def workspace_bytes(method, n_frames=None):
    """Fixed working memory of one :func:`combine_block` call, in bytes.

    For the rank-based methods: a transposed, sorted float32 chunk, two
    float64 prefix-sum arrays (or an argsort index for weighted
    ``minmax``) and the boolean/float64 temporaries of the final weighted
    mean, about 24 bytes per chunk value; for ``mean``/``sum``, a float64
    copy of a chunk (weights) and a mask, about 13 bytes per value.
    ``n_frames`` is accepted for symmetry; the chunk has at least one
    pixel, so for very many frames the chunk is ``n_frames`` values.
    """
    method = _method(method)
    chunk = _CHUNK_VALUES if n_frames is None else max(_CHUNK_VALUES, int(n_frames))
    per_value = 13 if method in ("mean", "sum") else 24
    return chunk * per_value


def max_rows(memory, threads, n_frames, width, method):
    """Rows per tile that keep ``threads`` blocks within ``memory`` bytes (may be 0).

    See :func:`bytes_per_value` for the formula; a result of 0 means not
    even one row fits, which the caller should report as an error naming
    the budget.
    """
    per_row = width * (n_frames * bytes_per_value(method) + _PIXEL_BYTES)
    free = memory / max(int(threads), 1) - workspace_bytes(method, n_frames)
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
        raise ValueError(f"weight of frame {int(bad[0])} is not finite: {w[bad[0]]!r}")
    bad = np.flatnonzero(w < 0)
    if bad.size:
        raise ValueError(f"weight of frame {int(bad[0])} is negative: {w[bad[0]]!r}")
    if not w.any():
        raise ValueError("weights are all zero: no frame would contribute")
    return w


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
        modified. float64 is accepted too (sorted in float64).
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


def _linear(flat, method, weights, result, kept):
    n, pixels = flat.shape
    step = max(1, _CHUNK_VALUES // n)
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
        else:
            total = weights @ chunk.astype(np.float64)
            norm = weights @ finite.astype(np.float64)
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
    run kept by value thresholds is ``rows[r, s[r]:e[r]]``. Sums are kept
    relative to ``ref`` (the pixel's median, as float32), in float64.
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
        self.base = np.arange(c, dtype=np.intp) * n
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

    # ---- sums relative to ref -----------------------------------------------

    def start_sums(self, prefix=False):
        """Set ``ref`` (median) and the float64 sums of ``value - ref`` over every run."""
        k = self.k
        zero = np.zeros_like(k)
        ref = np.where(k > 0, self.median(zero, k), 0.0).astype(np.float32)
        self.ref = ref.astype(np.float64)
        d = self.work["d"][: self.c]
        np.subtract(self.rows, ref[:, None], out=d)
        partial = np.flatnonzero(k < self.n)
        if partial.size:  # zero the NaN tails so that whole-row sums work
            j = np.arange(self.n)
            d[partial] = np.where(j < k[partial, None], d[partial], 0)
        # squares rounded to float32, summed in float64: runs remove exactly
        # the terms their totals added
        sq = self.work["sq"][: self.c]
        np.multiply(d, d, out=sq)
        self.d = d.reshape(-1)
        self.sq = sq.reshape(-1)
        if prefix:  # for runs whose ends move by many entries at a time
            p1 = self.work["p1"][: self.c]
            p2 = self.work["p2"][: self.c]
            np.cumsum(d, axis=1, dtype=np.float64, out=p1)
            np.cumsum(sq, axis=1, dtype=np.float64, out=p2)
            self.p1 = p1.reshape(-1)
            self.p2 = p2.reshape(-1)
            return self.prefix_sums(zero, k)
        return d.sum(axis=1, dtype=np.float64), sq.sum(axis=1, dtype=np.float64)

    def prefix_sums(self, s, e):
        """Sums over ``[s, e)`` from the prefix sums (``start_sums(prefix=True)``)."""
        def upto(p, j):
            return np.where(j > 0, p.take(self.base + np.clip(j - 1, 0, self.n - 1)), 0.0)

        return (upto(self.p1, e) - upto(self.p1, s), upto(self.p2, e) - upto(self.p2, s))

    def direct_sums(self, idx, s, e):
        """Sums over ``[s, e)`` of rows ``idx``, by masking whole rows."""
        j = np.arange(self.n)
        inside = (j >= s[:, None]) & (j < e[:, None])
        d = self.d.reshape(self.c, self.n)
        sq = self.sq.reshape(self.c, self.n)
        if idx.size < self.c:
            d, sq = d[idx], sq[idx]
        return (np.where(inside, d, 0).sum(axis=1, dtype=np.float64),
                np.where(inside, sq, 0).sum(axis=1, dtype=np.float64))

    def run_sums(self, totals, s, e):
        """Sums over ``[s, e)`` from the whole-run ``totals``, removing the ends."""
        s1, s2 = (t.copy() for t in totals)
        ends = int(s.max(initial=0)) + int((self.k - e).max(initial=0))
        if ends > 2 * _WALK:
            return self.direct_sums(np.arange(self.c), s, e)
        for j in range(int(s.max(initial=0))):
            self._drop(s1, s2, np.flatnonzero(j < s), j)
        for j in range(int((self.k - e).max(initial=0))):
            idx = np.flatnonzero(e + j < self.k)
            self._drop(s1, s2, idx, e[idx] + j)
        return s1, s2

    def _drop(self, s1, s2, idx, j):
        at = self.base[idx] + j
        s1[idx] -= self.d.take(at)
        s2[idx] -= self.sq.take(at)

    # ---- runs moving inwards ------------------------------------------------

    def walk(self, limit, s, e, sums, low, rows):
        """Move runs' low ends up over values < ``limit`` (``low``), or their
        high ends down over values > ``limit``, removing those from ``sums``.

        All arrays are aligned with ``rows`` (row numbers). Returns the new
        ends and the positions (in ``rows``) whose end moved more than
        ``_WALK`` entries: bisection found those ends, and their sums must
        be recomputed.
        """
        end = (s if low else e).copy()
        s1, s2 = sums
        at_end = np.flatnonzero(s < e)
        lim = limit[at_end]
        base = self.base[rows[at_end]]
        for _ in range(_WALK):
            if not at_end.size:
                return end, at_end
            at = end[at_end] if low else end[at_end] - 1
            value = self.flat.take(base + at)
            ok = value < lim if low else value > lim
            if not ok.all():
                at_end, lim, at, base = at_end[ok], lim[ok], at[ok], base[ok]
                if not at_end.size:
                    return end, at_end
            end[at_end] += 1 if low else -1
            s1[at_end] -= self.d.take(base + at)
            s2[at_end] -= self.sq.take(base + at)
            live = end[at_end] < e[at_end] if low else s[at_end] < end[at_end]
            if not live.all():
                at_end, lim, base = at_end[live], lim[live], base[live]
        if at_end.size:  # long moves: bisect the rest
            idx = rows[at_end]
            if low:
                end[at_end] = self.bisect(idx, end[at_end], e[at_end], lim, "lt")
            else:
                end[at_end] = self.bisect(idx, s[at_end], end[at_end], lim, "le")
        return end, at_end


def _passes(value, limit, op):
    if op == "lt":
        return value < limit
    if op == "le":
        return value <= limit
    return value == value  # "finite": not NaN


# how far a run end is walked entry by entry before bisecting
_WALK = 6


def _ranked(flat, method, opts, result, kept, rejected):
    n, pixels = flat.shape
    step = min(max(1, _CHUNK_VALUES // n), pixels)
    dtype = np.float64 if flat.dtype == np.float64 else np.float32
    weights = opts.get("weights")
    work = {"rows": np.empty((step, n), dtype)}
    if method != "median":
        work["d"] = np.empty((step, n), dtype)
        work["sq"] = np.empty((step, n), dtype)
    if method == "winsorized":
        work["p1"] = np.empty((step, n), np.float64)
        work["p2"] = np.empty((step, n), np.float64)
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
            totals = rows.start_sums(prefix=method == "winsorized")
            if method == "sigma_clip":
                s, e, sums = _sigma_clip(rows, totals, **opts)
            elif method == "winsorized":
                s, e = _winsorized(rows, totals, **opts)
                sums = rows.prefix_sums(s, e)
            elif method == "minmax":
                s, e = _minmax(k, opts["nlow"], opts["nhigh"])
                sums = None if weights is not None else rows.run_sums(totals, s, e)
            else:
                s, e = _percentile(rows, opts["percentile"])
                sums = None if weights is not None else rows.run_sums(totals, s, e)
            if weights is None:
                m = e - s
                out = np.where(m > 0, sums[0] / np.maximum(m, 1) + rows.ref, np.nan)
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
        w = np.where(inside, weights[rows.order], 0.0)
        total = np.einsum("ij,ij->i", w, np.where(inside, rows.rows, 0.0))
        norm = w.sum(axis=1)
    else:  # kept by value: the run is every value in [rows[s], rows[e - 1]]
        low = rows.take(s)
        high = rows.take(e - 1)
        inside = (chunk >= low) & (chunk <= high) & (e > s)
        norm = weights @ inside
        total = weights @ np.where(inside, chunk, 0).astype(np.float64)
    return np.where(norm > 0, total / np.where(norm > 0, norm, 1), np.nan)


def _spread(sums, s, e):
    """Mean (relative to ``ref``) and population std of each run from its sums."""
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
            middle = mean + rows.ref[active]
        new_s, long_low = rows.walk(middle - low * std, sa, ea, sums, True, active)
        new_e, long_high = rows.walk(middle + high * std, new_s, ea, sums, False, active)
        redo = np.union1d(long_low, long_high)
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
    every = np.arange(rows.c)
    s = np.zeros_like(k)
    e = k.copy()
    sums = totals
    for _ in range(maxiters):
        n = e - s
        nn = np.maximum(n, 1)
        middle = rows.median(s, e)
        c = middle - rows.ref  # relative to ref, as the sums are
        _, sigma = _spread(sums, s, e)
        done = (n < 2) | (sigma == 0)
        for _round in range(_WINSOR_ROUNDS):
            if done.all():
                break
            lo = c - _WINSOR_CLIP * sigma
            hi = c + _WINSOR_CLIP * sigma
            # [s, a) are clamped up to lo, [b, e) down to hi, [a, b) kept as they are
            a = rows.bisect(every, s, e, lo + rows.ref, "lt")
            b = rows.bisect(every, a, e, hi + rows.ref, "le")
            m1, m2 = rows.prefix_sums(a, b)
            na = a - s
            nb = e - b
            w1 = na * lo + m1 + nb * hi
            w2 = na * lo * lo + m2 + nb * hi * hi
            wmean = w1 / nn
            new = _WINSOR_FACTOR * np.sqrt(np.maximum(w2 / nn - wmean * wmean, 0.0))
            update = ~done
            done = done | (np.abs(new - sigma) <= _WINSOR_RTOL * sigma)
            sigma = np.where(update, new, sigma)
        new_s = rows.bisect(every, s, e, middle - low * sigma, "lt")
        new_e = rows.bisect(every, new_s, e, middle + high * sigma, "le")
        changed = (new_s != s) | (new_e != e)
        s, e = new_s, new_e
        sums = rows.prefix_sums(s, e)
        if not changed.any():
            break
    return s, e


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
    every = np.arange(rows.c)
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
