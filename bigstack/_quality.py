"""Frame statistics, normalisation, quality, weights and selection.

Everything here is measured per frame on a subsample of rows, so that it
can run as one mapped task per frame that reads a few hundred rows, not
the frame: ``read_rows(r0, r1)`` returns rows ``[r0, r1)`` of the frame as
a float32 ``(r1 - r0, nx)`` array (``lambda a, b: reader.read(i, a, b)``
with a :class:`bigstack._io.FrameReader`). The subsample is ``bands``
bands of ``rows`` rows each, spread evenly from the first row to the
last; frames smaller than that are read whole. Images are indexed
``[y, x]``; positions are ``[x, y]``.

The per-frame results are plain dicts of floats; :func:`gather` turns a
list of them into one table (a dict of ``(N,)`` arrays), which
:func:`normalisation`, :func:`weights_from` and :func:`select_frames`
take. :func:`measure_frame` includes :func:`frame_stats`' background and
noise, so one task per frame serves normalisation, weights and selection.

Cost with the defaults (8 bands of 64 rows), per 2048-pixel-wide frame on
one core: :func:`frame_stats` about 8 ms (a 4 MB read and a clipped
32768-pixel sample), :func:`measure_frame` about 30 ms, mostly finding the
stars in half a million pixels; fewer ``rows`` make it cheaper.
"""

from __future__ import annotations

import math
import numbers
import re
import warnings

import numpy as np

from ._measure import STATS_SAMPLE as _STATS_SAMPLE  # noqa: F401 (the sample size, for tests)
from ._measure import adaptive_shapes as _adaptive_shapes
from ._measure import clipped_stats as _clipped_stats
from ._measure import window_max as _window_max

NORMALISATIONS = ("none", "additive", "multiplicative", "additive+scale")
WEIGHTS = ("none", "noise", "fwhm")
QUALITY_FIELDS = ("background", "noise", "fwhm", "roundness", "stars", "flux")
# for selection: True where a larger value is worse
_LARGER_IS_WORSE = {"background": True, "noise": True, "fwhm": True, "roundness": True,
                    "stars": False, "flux": False}

_DETECT_RADIUS = 3  # local maxima: the highest pixel within 3 px
_STAMP = 15  # side of the stamps moments are measured on, pixels


# --------------------------------------------------------------------------
# the subsample


def sample_rows(ny, rows=64, bands=8):
    """The row bands ``[(r0, r1), ...]`` the statistics are taken from.

    ``bands`` bands of ``rows`` rows, evenly spread from the top to the
    bottom of a frame of ``ny`` rows; one band of every row when the
    frame has no more than ``rows * bands`` rows.
    """
    rows, bands = int(rows), int(bands)
    if rows < 1 or bands < 1:
        raise ValueError(f"rows and bands must be >= 1, got rows={rows}, bands={bands}")
    if ny <= rows * bands:
        return [(0, int(ny))]
    starts = np.linspace(0, ny - rows, bands).round().astype(int)
    return [(int(r0), int(r0) + rows) for r0 in starts]


def _read(read_rows, ny, nx, rows, bands):
    out = []
    for r0, r1 in sample_rows(ny, rows, bands):
        band = np.asarray(read_rows(r0, r1), dtype=np.float32)
        if band.shape != (r1 - r0, nx):
            raise ValueError(f"read_rows({r0}, {r1}) returned shape {band.shape}, "
                             f"expected {(r1 - r0, nx)}")
        out.append((r0, band))
    return out


def frame_stats(read_rows, ny, nx, rows=64, bands=8):
    """Background level and noise of one frame, from a subsample of its rows.

    Parameters
    ----------
    read_rows : callable
        ``read_rows(r0, r1)`` returns rows ``[r0, r1)`` as float32
        ``(r1 - r0, nx)``; NaNs are ignored.
    ny, nx : int
        The frame's shape.
    rows, bands : int
        The subsample (:func:`sample_rows`): 8 bands of 64 rows by default,
        about 6% of a 2048-row frame.

    Returns
    -------
    dict
        ``background``: the median of the pixels after 3-sigma clipping
        (:func:`astropy.stats.sigma_clip`: median centre, MAD-based
        sigma, at most 5 iterations), which leaves stars, hot pixels and
        cosmic rays out; ``scale``: the MAD-based standard deviation
        (``1.4826 * MAD``, :func:`astropy.stats.mad_std`) of those pixels,
        the noise. At most 32768 pixels are used, an even stride through
        the subsample. Both NaN if no pixel is finite.

    Notes
    -----
    On integer pixels (16-bit cameras) the median and the MAD come in
    steps of half an ADU: a sky noise of 2 ADU would read 27% low and one
    of 5 ADU 11% low, and two frames whose sky differs by 0.4 ADU could
    read the same or 1 ADU apart. So when every sampled pixel is an
    integer, each is first spread over its unit step by a fixed, seeded
    uniform dither in ``[-0.5, 0.5)``, and the dither's variance (1/12) is
    taken back out of the noise; the estimates then vary smoothly (within
    about 1% for noise of 1 to 10 ADU in the tests).

    Examples
    --------
    >>> import numpy as np
    >>> frame = np.random.default_rng(0).normal(100.0, 5.0, (600, 80)).astype(np.float32)
    >>> stats = frame_stats(lambda a, b: frame[a:b], 600, 80)
    >>> round(stats["background"]), round(stats["scale"])
    (100, 5)
    """
    sample = _read(read_rows, ny, nx, rows, bands)
    background, scale = _clipped_stats([b for _, b in sample])
    return {"background": background, "scale": scale}


# --------------------------------------------------------------------------
# tables


def gather(records, fields=None):
    """Turn per-frame dicts into a table: a dict of float64 ``(N,)`` arrays.

    A mapping of arrays (or an xarray Dataset) is passed through, its
    ``fields`` converted to float64 arrays.
    """
    if hasattr(records, "keys"):
        keys = fields or list(records.keys())
        return {k: np.asarray(getattr(records[k], "values", records[k]), dtype=np.float64)
                for k in keys}
    records = list(records)
    keys = fields or (list(records[0].keys()) if records else [])
    return {k: np.array([float(r[k]) for r in records], dtype=np.float64) for k in keys}


def _column(table, name, what):
    if name not in table:
        raise ValueError(f"{what} needs {name!r} in the frame table; it has "
                         f"{sorted(table)}")
    return np.asarray(getattr(table[name], "values", table[name]), dtype=np.float64)


def _keep_mask(keep, n):
    if keep is None:
        return np.ones(n, bool)
    keep = np.asarray(keep, bool)
    if keep.shape != (n,):
        raise ValueError(f"keep must have one value per frame ({n}), got shape {keep.shape}")
    return keep


# --------------------------------------------------------------------------
# normalisation


def normalisation(stats, mode, reference=0, keep=None):
    """Per-frame offset and scale that bring every frame to the reference's level.

    The normalised frame is ``(frame - offset[i]) * scale[i]``. With
    ``b_i`` the background and ``s_i`` the noise (``scale``) of frame
    ``i`` from :func:`frame_stats`, and ``r`` the reference frame:

    - ``"none"``: ``offset = 0``, ``scale = 1``;
    - ``"additive"``: ``offset = b_i - b_r``, ``scale = 1``: the
      background becomes ``b_r`` (sky glow that comes and goes);
    - ``"multiplicative"``: ``offset = 0``, ``scale = b_r / b_i``: the
      background becomes ``b_r`` and the noise is scaled alike
      (transparency, exposure time); needs ``b_i > 0``;
    - ``"additive+scale"``: ``scale = s_r / s_i``, ``offset = b_i -
      b_r / scale``, so ``(frame - offset) * scale = (frame - b_i) * s_r /
      s_i + b_r``: background ``b_r`` and noise ``s_r``; needs
      ``s_i > 0``.

    Parameters
    ----------
    stats : list of dict or mapping of arrays
        ``background`` and ``scale`` (or ``noise``) of every frame
        (:func:`frame_stats` or :func:`measure_frame` results, or a table
        from :func:`gather`).
    mode : {"none", "additive", "multiplicative", "additive+scale"}
    reference : int
        Index of the frame whose level the others are brought to.
    keep : array_like of bool, optional
        Frames that will be stacked; the others get ``offset 0, scale 1``
        and their statistics are not checked. The reference must be kept.

    Returns
    -------
    offset, scale : numpy.ndarray
        float64 ``(N,)`` each.

    Raises
    ------
    ValueError
        For an unknown mode, or a kept frame whose statistics do not allow
        it (naming the frame and the value).
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"normalisation must be one of {NORMALISATIONS}, got {mode!r}")
    table = gather(stats) if not hasattr(stats, "keys") else stats
    background = _column(table, "background", "normalisation")
    noise = _column(table, "scale", "normalisation") if "scale" in table else \
        _column(table, "noise", "normalisation")
    n = background.size
    keep = _keep_mask(keep, n)
    if not -n <= reference < n:
        raise ValueError(f"reference={reference} but there are {n} frames")
    reference %= n
    if not keep[reference]:
        raise ValueError(f"reference frame {reference} is not among the kept frames")
    offset = np.zeros(n)
    scale = np.ones(n)
    if mode == "none":
        return offset, scale
    _require(background, keep, "background", positive=mode == "multiplicative")
    b = np.where(keep, background, 0.0)
    if mode == "additive":
        offset = np.where(keep, b - b[reference], 0.0)
    elif mode == "multiplicative":
        scale = np.where(keep, b[reference] / np.where(keep, b, 1.0), 1.0)
    else:
        _require(noise, keep, "noise", positive=True)
        s = np.where(keep, noise, 1.0)
        scale = np.where(keep, s[reference] / s, 1.0)
        offset = np.where(keep, b - b[reference] / scale, 0.0)
    return offset, scale


def _require(values, keep, name, positive):
    bad = keep & ~np.isfinite(values)
    if positive:
        bad |= keep & ~(values > 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        need = "a finite positive" if positive else "a finite"
        raise ValueError(f"{name} of frame {i} is {float(values[i])}; normalisation needs {need} "
                         f"{name} for every frame stacked ({int(bad.sum())} frame(s) fail)")


# --------------------------------------------------------------------------
# quality


def measure_frame(read_rows, ny, nx, *, star=None, fwhm=None, flux=None, rows=64, bands=8,
                  threshold=5.0, saturation=None):
    """Quality of one frame, from a subsample of rows (one mapped task per frame).

    Parameters
    ----------
    read_rows : callable
        ``read_rows(r0, r1)`` returns rows ``[r0, r1)`` as float32
        ``(r1 - r0, nx)``.
    ny, nx : int
        The frame's shape.
    star : [x, y], optional
        Position of the reference star in this frame (``find_shifts``'
        ``star``). Its roundness (and, unless given, FWHM and flux) is
        measured on a 15 x 15 stamp around it, reading those rows only.
    fwhm, flux : float, optional
        The reference star's FWHM and flux already measured by
        ``find_shifts``; used as they are (unless NaN).
    rows, bands : int
        The subsample, as for :func:`frame_stats`.
    threshold : float
        Detection threshold for the star count, in noise sigmas.
    saturation : float, optional
        Stars peaking at or above it are not used for FWHM or roundness.

    Returns
    -------
    dict
        ``background``, ``noise`` (as :func:`frame_stats`' ``background``
        and ``scale``); ``stars``: the number of stars in the subsample:
        local maxima (the highest pixel within 3 px, as
        ``scipy.ndimage.maximum_filter`` finds them) more than
        ``threshold`` noise sigmas above the background whose 3x3
        neighbourhood's median is above that too (which leaves out hot
        pixels and cosmic rays of up to 4 pixels); the same rows in every
        frame, so comparable between frames;
        ``fwhm`` (pixels) and ``roundness`` (``1 - b/a``, 0 for a round
        star): from adaptive second moments (below) of the reference star
        when ``star`` is given, else the median over the subsample's
        brightest isolated unsaturated stars (at most 25); ``flux``: the
        reference star's flux (``flux`` as given, or measured with
        :func:`bigstack._register.measure_star` on the stamp; NaN without
        ``star``). Values that cannot be measured are NaN.

    Notes
    -----
    Adaptive moments (Bernstein & Jarvis 2002): the star's background-free
    pixels are weighted by an elliptical Gaussian whose covariance is
    iterated to twice the weighted second moments, which for a Gaussian
    star converges to the star's own covariance ``C``. The pixel's own
    width (1/12 px^2 per axis) is taken off ``C``; with eigenvalues
    ``a^2 >= b^2``, ``fwhm = 2.3548 * sqrt((a^2 + b^2) / 2)`` and
    ``roundness = 1 - b / a``.
    """
    sample = _read(read_rows, ny, nx, rows, bands)
    background, noise = _clipped_stats([b for _, b in sample])
    given_fwhm = fwhm is not None and np.isfinite(fwhm)
    given_flux = flux is not None and np.isfinite(flux)
    out = {"background": background, "noise": noise,
           "fwhm": float(fwhm) if given_fwhm else np.nan, "roundness": np.nan,
           "stars": np.nan, "flux": float(flux) if given_flux else np.nan}
    if not (np.isfinite(background) and np.isfinite(noise) and noise > 0):
        return out
    found = [_detect(band, r0, ny, background, noise, threshold) for r0, band in sample]
    out["stars"] = float(sum(len(f) for f in found))
    if star is not None and np.all(np.isfinite(star)):
        star_fwhm, out["roundness"], star_flux = _reference_star(read_rows, ny, nx, star,
                                                                 background)
    else:
        star_fwhm, out["roundness"] = _field_shape(sample, found, background, saturation)
        star_flux = np.nan
    if not given_fwhm:
        out["fwhm"] = star_fwhm
    if not given_flux:
        out["flux"] = star_flux
    return out


def _detect(band, r0, ny, background, noise, threshold):
    """``(y, x, peak)`` of the stars in a band: local maxima above ``threshold`` sigmas.

    A local maximum is the highest pixel within ``_DETECT_RADIUS``; it is a
    star when the median of its 3x3 neighbourhood is above the threshold
    too (hot pixels and cosmic rays of up to 4 pixels are not); touching
    maxima of equal value count once. Maxima within the radius of the
    band's cut edges (not the frame's own) are left out.
    """
    from scipy.ndimage import label

    data = np.where(np.isfinite(band), band, background).astype(np.float32)
    limit = background + threshold * noise
    peaks = data > limit
    if not peaks.any():
        return []
    peaks &= data == _window_max(data, _DETECT_RADIUS)
    r = _DETECT_RADIUS
    if r0 > 0:
        peaks[:r] = False
    if r0 + band.shape[0] < ny:
        peaks[-r:] = False
    ys, xs = np.nonzero(peaks)
    h, w = data.shape
    near = [data[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
            for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    star = np.median(np.stack(near), axis=0) > limit
    ys, xs = ys[star], xs[star]
    if ys.size:  # one per group of touching maxima (a flat top)
        mask = np.zeros(data.shape, bool)
        mask[ys, xs] = True
        labels, _ = label(mask, structure=np.ones((3, 3), int))
        _, first = np.unique(labels[ys, xs], return_index=True)
        ys, xs = ys[first], xs[first]
    return list(zip(ys.tolist(), xs.tolist(), data[ys, xs].tolist(), strict=True))


def _field_shape(sample, found, background, saturation):
    """Median FWHM and roundness of the brightest isolated unsaturated stars."""
    half = _STAMP // 2
    candidates = []
    for (_, band), stars in zip(sample, found, strict=True):
        h, w = band.shape
        if not stars:
            continue
        ys = np.array([y for y, _, _ in stars])
        xs = np.array([x for _, x, _ in stars])
        for y, x, peak in stars:
            if not (half <= y < h - half and half <= x < w - half):
                continue
            if np.count_nonzero((np.abs(ys - y) <= half) & (np.abs(xs - x) <= half)) > 1:
                continue  # another star on the stamp
            stamp = band[y - half:y + half + 1, x - half:x + half + 1]
            top = float(np.nanmax(stamp))
            if saturation is not None and top >= saturation:
                continue
            if np.count_nonzero(stamp >= top - 1e-6 * abs(top)) >= 3:  # flat top: clipped
                continue
            candidates.append((peak, stamp))
    if not candidates:
        return np.nan, np.nan
    candidates.sort(key=lambda c: -c[0])
    stamps = np.stack([c[1] for c in candidates[:25]]).astype(np.float64) - background
    fwhm, roundness = _adaptive_shapes(stamps)
    ok = np.isfinite(fwhm) & np.isfinite(roundness)
    if not ok.any():
        return np.nan, np.nan
    return float(np.median(fwhm[ok])), float(np.median(roundness[ok]))


def _reference_star(read_rows, ny, nx, star, background):
    """FWHM, roundness and flux of the star at ``star`` ([x, y]) on a stamp."""
    from ._register import measure_star

    half = _STAMP // 2
    x, y = (int(round(float(v))) for v in star)
    y0, y1 = max(y - 2 * half, 0), min(y + 2 * half + 1, ny)
    x0, x1 = max(x - 2 * half, 0), min(x + 2 * half + 1, nx)
    if y1 - y0 < _STAMP or x1 - x0 < _STAMP:
        return np.nan, np.nan, np.nan
    box = np.asarray(read_rows(y0, y1), dtype=np.float64)[:, x0:x1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        measured = measure_star(box)
    cy, cx = y - y0, x - x0
    if half <= cy < box.shape[0] - half and half <= cx < box.shape[1] - half:
        stamp = box[cy - half:cy + half + 1, cx - half:cx + half + 1] - background
        fwhm, roundness = (float(v[0]) for v in _adaptive_shapes(stamp[None]))
    else:
        fwhm = roundness = np.nan
    return fwhm, roundness, float(measured["flux"])


# --------------------------------------------------------------------------
# weights


def weights_from(quality, mode, keep=None):
    """Per-frame weights for the combine.

    Parameters
    ----------
    quality : list of dict or mapping of arrays
        The frame table (:func:`measure_frame` results or :func:`gather`).
    mode : {"none", "noise", "fwhm"} or array_like
        ``"none"``: all ones. ``"noise"``: inverse variance ``1 /
        noise**2``. ``"fwhm"``: ``1 / fwhm**2`` (sharper frames count
        more). Both are normalised to a mean of 1 over the kept frames.
        An array is used as it is, after checks: one finite value >= 0 per
        frame, not all zero.
    keep : array_like of bool, optional
        Frames that will be stacked; the others get weight 0 and their
        values are not checked.

    Returns
    -------
    numpy.ndarray
        float64 ``(N,)``.

    Raises
    ------
    ValueError
        Naming the problem: an unknown mode, a wrong length, a frame whose
        weight (or noise, or FWHM) is not finite, negative or zero, or all
        weights zero.
    """
    from ._reject import check_weights

    table = quality if hasattr(quality, "keys") else gather(quality)
    n = len(next(iter(table.values()))) if table else 0
    if not isinstance(mode, str):
        w = check_weights(mode, np.asarray(mode).shape[0] if n == 0 else n)
        if keep is not None:
            w = np.where(_keep_mask(keep, n), w, 0.0)
            if not w.any():
                raise ValueError("weights are all zero on the kept frames")
        return w
    if mode not in WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} or an array of one weight per "
                         f"frame, got {mode!r}")
    keep = _keep_mask(keep, n)
    if mode == "none":
        return np.where(keep, 1.0, 0.0)
    values = _column(table, mode, f"weights={mode!r}")
    bad = keep & ~(np.isfinite(values) & (values > 0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{mode} of frame {i} is {float(values[i])}: weights={mode!r} needs a "
                         f"finite positive {mode} for every frame stacked "
                         f"({int(bad.sum())} frame(s) fail; drop them with select=)")
    w = np.where(keep, 1.0 / np.where(keep, values, 1.0) ** 2, 0.0)
    return w / w[keep].mean()


# --------------------------------------------------------------------------
# selection


def _fraction(select):
    if isinstance(select, str):
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*%\s*", select)
        if not match:
            raise ValueError(f"select={select!r}: a string must be a percentage like '10%'")
        value = float(match.group(1)) / 100.0
    elif isinstance(select, numbers.Real) and not isinstance(select, bool):
        value = float(select)
    else:
        return None
    if not 0.0 <= value < 1.0:
        raise ValueError(f"select={select!r}: the fraction of frames to drop must be in "
                         "[0, 1) (or 0% to under 100%)")
    return value


def select_frames(quality, select, score="fwhm", keep=None):
    """Choose the frames to stack by quality.

    Parameters
    ----------
    quality : list of dict or mapping of arrays
        The frame table (:func:`measure_frame` results or :func:`gather`).
    select : None, dict, str or float
        ``None``: keep every frame. A dict of thresholds, e.g.
        ``{"fwhm": 4.0, "stars": 50}``: drop frames whose ``fwhm``,
        ``noise``, ``roundness`` or ``background`` is above the value, or
        whose ``stars`` or ``flux`` is below it (a frame where it was not
        measured, NaN, is dropped too). ``"10%"`` or ``0.1``: drop the
        worst 10% of the frames by ``score``, rounded down (10% of 25
        frames drops 2; NaN scores count as the worst).
    score : str
        The field that ranks frames for a fraction: ``"fwhm"`` (default),
        ``"noise"``, ``"roundness"``, ``"background"``, ``"stars"``,
        ``"flux"``.
    keep : array_like of bool, optional
        Frames already left out (False) stay out and do not count in the
        fraction.

    Returns
    -------
    keep : numpy.ndarray of bool ``(N,)``
    reasons : dict
        ``{frame index: why it was dropped}`` for the frames this call
        dropped.

    Raises
    ------
    ValueError
        For an unknown field or a malformed ``select``, or when no frame
        would be left.
    """
    table = quality if hasattr(quality, "keys") else gather(quality)
    n = len(next(iter(table.values()))) if table else 0
    keep = _keep_mask(keep, n).copy()
    reasons = {}
    if select is None:
        return keep, reasons
    if isinstance(select, dict):
        for name, limit in select.items():
            if name not in _LARGER_IS_WORSE:
                raise ValueError(f"select: unknown field {name!r}; use one of "
                                 f"{sorted(_LARGER_IS_WORSE)}")
            values = _column(table, name, "select")
            limit = float(limit)
            worse = _LARGER_IS_WORSE[name]
            for i in np.flatnonzero(keep):
                v = values[i]
                if not np.isfinite(v):
                    reasons[int(i)] = f"{name} not measured"
                elif (v > limit) if worse else (v < limit):
                    sign = ">" if worse else "<"
                    reasons[int(i)] = f"{name} {v:.3g} {sign} {limit:g}"
            for i in reasons:
                keep[i] = False
    else:
        fraction = _fraction(select)
        if fraction is None:
            raise ValueError(f"select must be None, a dict of thresholds, a percentage like "
                             f"'10%' or a fraction like 0.1; got {select!r}")
        if score not in _LARGER_IS_WORSE:
            raise ValueError(f"score must be one of {sorted(_LARGER_IS_WORSE)}, got {score!r}")
        values = _column(table, score, "select")
        candidates = np.flatnonzero(keep)
        drop = int(math.floor(fraction * candidates.size + 1e-9))
        if drop:
            badness = values[candidates] if _LARGER_IS_WORSE[score] else -values[candidates]
            badness = np.where(np.isfinite(badness), badness, np.inf)
            order = candidates[np.argsort(-badness, kind="stable")]
            for i in order[:drop]:
                keep[i] = False
                reasons[int(i)] = (f"{score} {values[i]:.3g}: among the worst "
                                   f"{fraction:.0%} by {score}")
    if not keep.any():
        raise ValueError(f"select={select!r} would leave no frame to stack")
    return keep, reasons


# --------------------------------------------------------------------------
# the public step: one task per frame over a cube


def frame_quality(frames, shifts=None, *, progress=False, compute=True):
    """Measure every frame's quality: background, noise, FWHM, roundness, stars, flux.

    One dask task per frame reads a subsample of its rows (eight bands of
    64 rows; see :func:`frame_stats` and :func:`measure_frame`), so the
    table costs a small fraction of a read of the night. ``stack`` uses it
    for ``weights``, ``select`` and ``normalize_frames``; pass it there as
    ``quality=`` to measure once and keep ``stack`` lazy.

    Parameters
    ----------
    frames : xarray.DataArray ``(frame, y, x)``, array, pattern or list of paths
        Usually the cube from :func:`bigstack.open_frames`.
    shifts : xarray.Dataset, optional
        :func:`bigstack.find_shifts`' Dataset: its star positions, FWHM and
        flux are used instead of being measured again (``flux`` is the
        reference star's). Frames it flagged invalid are measured all the same.
    progress : bool
        Show a progress bar.
    compute : bool
        ``False`` returns the same Dataset backed by one dask task a frame.

    Returns
    -------
    xarray.Dataset
        Over ``frame`` (with the cube's per-frame coordinates): ``background``,
        ``noise``, ``fwhm`` (px), ``roundness`` (0 round, towards 1 elongated),
        ``stars`` (count) and ``flux``, float64, NaN where not measured.

    Examples
    --------
    >>> import tempfile
    >>> from bigstack import open_frames, frame_quality, synthetic
    >>> truth = synthetic.make_frames(tempfile.mkdtemp(), n_frames=2, shape=(128, 128))
    >>> q = frame_quality(open_frames(truth.paths))
    >>> sorted(q.data_vars)
    ['background', 'flux', 'fwhm', 'noise', 'roundness', 'stars']
    """
    import dask.array as da
    import xarray as xr

    from ._io import cube_source

    source, n, shape, coords = cube_source(frames, "frame_quality")
    table = quality_table(source, n, shape, shifts, np.ones(n, bool), progress=progress,
                          compute=compute)
    if compute:
        columns = table
    else:
        columns = {k: da.from_delayed(table[k], (n,), np.float64) for k in QUALITY_FIELDS}
    all_coords = {"frame": np.arange(n)}
    all_coords.update({k: v for k, v in coords.items() if k != "frame"})
    return xr.Dataset({k: ("frame", columns[k]) for k in QUALITY_FIELDS}, coords=all_coords)


def quality_table(source, n, shape, shifts, keep, progress=False, compute=True):
    """The quality table of the kept frames (NaN rows for the others) as numpy columns,
    or, with ``compute=False``, one delayed dict of those columns."""
    import dask

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
    gathered = dask.delayed(_table_of, pure=True)(tasks, kept, n)
    if not compute:
        return gathered
    from ._tasks import compute as run

    (table,) = run([gathered], progress)
    return table


def _table_of(records, kept, n):
    empty = dict.fromkeys(QUALITY_FIELDS, np.nan)
    table = [empty] * n
    for i, record in zip(kept, records, strict=True):
        table[i] = record
    return gather(table, QUALITY_FIELDS)


def _quality_task(source, i, shape, star, fwhm, flux):
    def read_rows(r0, r1):
        rows, scale, zero, blank, floating = source.raw(i, r0, r1, {})
        values = rows.astype(np.float32) * np.float32(scale) + np.float32(zero)
        if blank is not None:
            values[rows == blank] = np.nan
        return values

    star = None if star is None or not np.isfinite(star).all() else star
    return measure_frame(read_rows, shape[0], shape[1], star=star,
                         fwhm=None if fwhm is None else float(fwhm),
                         flux=None if flux is None else float(flux))
