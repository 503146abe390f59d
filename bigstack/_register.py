"""Finding the reference star in each frame, and the frame shifts.

Positions and shifts are written ``[x, y]``; images are indexed ``[y, x]``;
a pixel's centre has integer coordinates. ``shift[i] = star[i] -
star[reference]``: stacking then takes frame i's pixel ``(x + dx, y + dy)``
for output pixel ``(x, y)``.

Methods
-------
``peak``
    The tutorial's: the brightest pixel in the search box. Exact and
    reproducible, but a cosmic ray or hot pixel brighter than the star wins
    (and its frame is then flagged: a one-pixel spike is no star).
``centroid``
    The brightest 3x3 minimum of the box (a cosmic ray or hot pixel does
    not survive the minimum, a star's core does), refined to sub-pixel by an
    iterative Gaussian-windowed centroid on the background-subtracted
    pixels (unbiased for a symmetric star, like SExtractor's windowed
    positions).
``xcorr``
    Cross-correlation of the box against the reference frame's box, for
    fields with no isolated bright star (:mod:`bigstack._xcorr`): what does
    not move with the sky (column and row pattern, background, hot pixels)
    is removed from both boxes first, and the peak is refined on the
    correlation's Fourier series, without a bias towards whole pixels.

Validity
--------
Each frame is judged on its own evidence, never because most frames agree
(:mod:`bigstack._starbox`): the reference frame's star must be a clear,
round, unsaturated star with a good signal to noise, alone among stars as
bright in its box; every other frame's star must be so too, and like the
reference star in flux, FWHM, roundness and the light around it (a trail
through or beside it, or a neighbour the reference frame does not show,
is flagged). An xcorr frame is judged on its correlation: height over the
noise, contrast with the next peak, and a width that stars, not a pattern
fixed on the sensor, give it. The distance of each valid shift from the
drift of its neighbours is measured too (``jump``) and reported in a
warning; it never changes ``valid``.

With ``track``, each frame's box is centred where the last *good* frames
put the star, and only a star near that place is taken.

Each frame is one dask task that reads only its box from the file.
"""

from __future__ import annotations

import warnings

import numpy as np

from . import _starbox, _xcorr
from ._errors import BigstackError, BigstackWarning
from ._measure import box_stats
from ._starbox import FIELDS, measure_star
from ._starbox import _brightest as _peak

METHODS = ("peak", "centroid", "xcorr")
DEFAULT_SEARCH = 500  # the tutorial's default box size for find_star


class StarNotFoundError(BigstackError, ValueError):
    """The search box holds no usable star (strict mode), or lies off the image."""


# --------------------------------------------------------------------------
# the box


def search_box(star_pos, search, shape):
    """Return the box ``(y0, y1, x0, x1)`` around ``star_pos``, clipped to ``shape``.

    The box is ``x - search//2 <= x < x + search//2`` and likewise in y, as
    the tutorial slices it; ``star_pos`` is ``[x, y]``, ``shape`` is
    ``(ny, nx)``. Returns ``None`` when nothing of the box is on the image.
    """
    ny, nx = shape
    half = int(search) // 2
    x, y = int(round(star_pos[0])), int(round(star_pos[1]))
    x0, x1 = max(x - half, 0), min(x + half, nx)
    y0, y1 = max(y - half, 0), min(y + half, ny)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _check_box(star_pos, search, shape, what="the image"):
    if star_pos is None:
        return 0, shape[0], 0, shape[1]
    if len(star_pos) != 2:
        raise ValueError(f"star_pos must be [x, y], got {star_pos!r}")
    if search is None or int(search) < 2:
        raise ValueError(f"search must be a box size of at least 2 pixels, got {search!r}")
    box = search_box(star_pos, search, shape)
    if box is None:
        ny, nx = shape
        raise StarNotFoundError(
            f"search box of {int(search)} px around star_pos [x, y] = {list(star_pos)} lies "
            f"wholly off {what} ({nx} x {ny} pixels, x by y)"
        )
    return box


# --------------------------------------------------------------------------
# find_star: one 2-D image


def find_star(image, star_pos=None, search=None, method="peak", print_log=False,
              saturation=None, fig=None, ax=None):
    """Find the ``[x, y]`` position of a star in a 2-D image.

    Parameters
    ----------
    image : array_like (numpy, dask or xarray), indexed ``[y, x]``
    star_pos : [x, y], optional
        Rough position; the search is limited to the box ``x ± search//2``,
        ``y ± search//2``, clipped at the image edges. Without it the whole
        image is searched.
    search : int, optional
        Box size in pixels (default 500, the tutorial's, when ``star_pos``
        is given).
    method : {"peak", "centroid"}
        ``"peak"`` is the tutorial's brightest pixel (integer result);
        ``"centroid"`` is sub-pixel and ignores cosmic rays and hot pixels.
    print_log : bool
        Show the image with the box and the star marked.

    Returns
    -------
    numpy.ndarray
        ``[x, y]``: int for ``"peak"``, float for ``"centroid"`` (NaN when
        no star stands above the noise; a :class:`BigstackWarning` says why).

    Examples
    --------
    >>> import numpy as np
    >>> image = np.zeros((50, 80)); image[20, 30] = 5.0
    >>> find_star(image, star_pos=[28, 22], search=10)
    array([30, 20])
    """
    if method not in ("peak", "centroid"):
        raise ValueError(f"method must be 'peak' or 'centroid' for find_star, got {method!r}")
    if search is None and star_pos is not None:
        search = DEFAULT_SEARCH
    array = image.data if hasattr(image, "dims") else image
    shape = np.shape(array)
    if len(shape) != 2:
        raise ValueError(f"find_star needs a 2-D image [y, x], got shape {shape}")
    y0, y1, x0, x1 = _check_box(star_pos, search, shape)
    box = np.asarray(array[y0:y1, x0:x1], dtype=np.float64)
    if method == "peak":
        iy, ix = _peak(box)
        star = np.array([ix + x0, iy + y0])
    else:
        result = measure_star(box, "centroid")
        if result["reason"]:
            warnings.warn(f"find_star: {result['reason']}", BigstackWarning, stacklevel=2)
        star = np.array([result["x"] + x0, result["y"] + y0])
    if print_log:
        _show_star(image, star, star_pos, search, fig, ax)
    return star


def _show_star(image, star, star_pos, search, fig, ax):
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from . import _render

    if fig is None or ax is None:
        fig, ax = plt.subplots()
    _render.display(image, fig=fig, ax=ax)
    ax.scatter(star[0], star[1], color="none", edgecolor="r", s=20)
    if star_pos is not None:
        half = int(search) // 2
        ax.add_patch(Rectangle((star_pos[0] - half, star_pos[1] - half), int(search),
                               int(search), ec="g", fc="none"))
        ax.scatter(star_pos[0], star_pos[1], color="g", marker="x", s=20)


# --------------------------------------------------------------------------
# find_shifts: the cube, one task per frame


def _window(source, index, box):
    """Read frame ``index``'s box ``(y0, y1, x0, x1)`` as float64."""
    return source.box(index, *box)


def _empty(reason, centre, background=np.nan, noise=np.nan):
    record = dict.fromkeys(FIELDS, np.nan)
    record.update(background=background, noise=noise, reason=reason, centre=centre)
    return record


def _predict(good, when):
    """``[x, y]`` where the last good frames put the star at ``when`` (a time-order rank).

    ``good`` lists ``(rank, x, y)`` of the last good frames, oldest first:
    the last position, moved on by the median of their steps per rank (no
    move with one good frame).
    """
    rank = np.array([g[0] for g in good], np.float64)
    pos = np.array([g[1:] for g in good], np.float64)
    if len(good) == 1:
        return pos[-1]
    rate = np.median(np.diff(pos, axis=0) / np.diff(rank)[:, None], axis=0)
    return pos[-1] + rate * (when - rank[-1])


def _measure_frame(source, index, star_pos, search, shape, method, saturation,
                   reference=None, previous=None, when=0, tolerance=None, track=False):
    """Task body: measure frame ``index`` and judge it. Returns the frame's record (a dict).

    ``reference`` is the reference frame's record (None for the reference
    itself). With ``track``, ``previous`` is the record of the frame before
    in tracking order (None for the reference), whose ``good`` lists the
    last good frames as ``(rank, x, y)``; ``when`` is this frame's rank in
    time order, ``tolerance`` how far from the predicted place its star may
    be.
    """
    centre = np.asarray(star_pos, np.float64)
    expect = None
    if previous is not None:  # tracking: follow the last good frames, never a flagged one
        if not previous["good"]:
            record = _empty("nothing to track from: the reference frame's star is not usable",
                            tuple(centre))
            record["good"] = []
            return record
        expect = _predict(previous["good"], when)
        centre = expect
    box = search_box(centre, search, shape)
    if box is None:
        record = _empty("search box off the image", tuple(centre))
    else:
        y0, y1, x0, x1 = box
        pixels = _window(source, index, box)
        if method == "xcorr":
            record = _xcorr_frame(pixels, box, reference, expect, tolerance)
        else:
            near = None if expect is None else (expect[0] - x0, expect[1] - y0, tolerance)
            radii = None if reference is None else reference["radii"]
            min_core = None
            if reference is not None:
                lx, ly = reference["local"]
                min_core = _starbox.core_floor(reference["core"], reference["fwhm"],
                                               lx - np.round(lx), ly - np.round(ly))
            hint = None if reference is None else reference["fwhm"]
            record = measure_star(pixels, method, saturation, near=near, radii=radii,
                                  min_core=min_core, fwhm_hint=hint,
                                  min_snr=_starbox.MIN_SNR if reference is None
                                  else _starbox.MIN_FRAME_SNR)
            if not record["reason"] and reference is None:
                record["reason"] = _starbox.reference_reason(record)
            elif not record["reason"]:  # both stars in their own box's pixels
                ref_local = dict(reference, x=reference["local"][0], y=reference["local"][1])
                record["reason"] = _starbox.compare(record, ref_local)
            if reference is not None:
                record["signal"] = None  # only the reference's box is needed further on
            record["local"] = (record["x"], record["y"])
            record["x"] += x0
            record["y"] += y0
        record["centre"] = tuple(float(v) for v in centre)
    if track:
        good = list(previous["good"]) if previous is not None else []
        if not record["reason"]:
            good = (good + [(when, record["x"], record["y"])])[-5:]
        record["good"] = good
    return record


def _xcorr_frame(pixels, box, reference, expect, tolerance):
    """xcorr record of one frame: the reference box's centre as this frame sees it.

    The reference frame's record keeps its cleaned box (``pixels``) and
    ``box``; its position is the centre of that box.
    """
    background, noise = box_stats(pixels)
    record = dict.fromkeys(FIELDS, np.nan)
    record.update(background=background, noise=noise, peak=float(np.nanmax(pixels)),
                  reason="")
    cleaned, sigma = _xcorr.clean(pixels)
    if reference is None:
        record["x"] = (box[2] + box[3] - 1) / 2
        record["y"] = (box[0] + box[1] - 1) / 2
        record.update(pixels=cleaned, box=box, sigma=sigma)
        if not np.ptp(cleaned) > 5 * max(noise, 1e-12):
            record["reason"] = "flat region: nothing to correlate"
        return record
    ref_box = reference["box"]
    if reference["pixels"].shape != cleaned.shape:
        record["reason"] = "xcorr region clipped by the image edge"
        return record
    offset = np.array([box[2] - ref_box[2], box[0] - ref_box[0]], np.float64)
    ref_xy = np.array([reference["x"], reference["y"]])
    lag_expect = None if expect is None else np.asarray(expect) - ref_xy - offset
    found = _xcorr.correlate(reference["pixels"], cleaned, reference["sigma"], sigma,
                             sensor_zero=-offset, expect=lag_expect, radius=tolerance)
    record["snr"] = found["snr"]
    record["reason"] = found["reason"]
    record["x"], record["y"] = ref_xy + offset + found["lag"]
    return record


def find_shifts(frames, star_pos=None, search=None, method="centroid", reference=0,
                compute=True, track=False, saturation=None, jump=None, strict=False):
    """Measure each frame's shift from the reference frame, one task per frame.

    Parameters
    ----------
    frames : xarray.DataArray ``(frame, y, x)``, dask or numpy array, pattern or paths
        Usually the cube from :func:`bigstack.open_frames` (a pattern or
        list of files is opened first); then each task reads only its
        frame's search box from the file.
    star_pos : [x, y]
        Rough position of a bright, isolated star in the reference frame
        (for ``"xcorr"``: the centre of the region to correlate).
    search : int
        Size of the search box (or correlation region) in pixels; default
        500, the tutorial's.
    method : {"centroid", "peak", "xcorr"}
        See the module notes. ``"peak"`` is the tutorial's method.
    reference : int
        Index (position along ``frame``) of the reference frame.
    compute : bool
        ``False`` returns the same Dataset backed by dask, nothing computed.
    track : bool
        Centre each frame's box where the last good frames put the star
        (the last good position, moved on by their drift per frame), frames
        taken in time order (the ``time`` coordinate when present, else
        frame order), and take only a star within ``jump`` px of that
        place; a flagged frame is never followed. Use it when the drift
        over the night is larger than the box; it costs parallelism (each
        frame waits for the previous one). Frames before the reference are
        tracked backwards from it.
    saturation : float, optional
        Pixel value at or above which the star counts as saturated; without
        it a flat-topped star core is taken as saturated.
    jump : float, optional
        With ``track``: how far (pixels) from where the last good frames
        put it the star may be (default a quarter of ``search``, at least
        3). For every frame: a valid shift farther than this from the drift
        of its ten neighbours is named in a warning (default: the larger
        of 3 px and 5 times the scatter); the warning does not change
        ``valid``.
    strict : bool
        Raise :class:`StarNotFoundError` instead of flagging bad frames.

    Returns
    -------
    xarray.Dataset
        ``attrs`` say how the shifts were found (``method``, ``star_pos``,
        ``search``, ``track``, ``reference``); ``stack`` keeps them in the
        store's provenance. Over ``frame`` (with the cube's per-frame
        coordinates): ``star`` and ``shift`` ``(frame, axis)`` with ``axis = ["x", "y"]`` (so
        ``np.asarray(ds["shift"])`` is the tutorial's N x 2 array), ``peak``,
        ``flux``, ``fwhm``, ``background``, ``noise``, ``snr`` (the star's
        flux over the sky noise in its aperture; for ``"xcorr"`` the
        correlation peak over the correlation's noise), ``roundness``
        (``1 - b / a``), ``jump`` (px from the drift of the neighbours),
        ``valid`` and ``reason``. A frame is valid on its own evidence
        only (see the module notes); a flagged frame has ``valid=False``
        and a reason saying what was seen (NaN position when no star was
        found); a :class:`BigstackWarning` lists such frames.

    Raises
    ------
    StarNotFoundError
        The box lies wholly off the image, or the reference frame's star is
        not usable, or (with ``strict``) any frame is flagged.
    """
    import dask

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if star_pos is None:
        raise ValueError("find_shifts needs star_pos=[x, y]: a bright isolated star "
                         "(or, for method='xcorr', the centre of the region to correlate)")
    search = DEFAULT_SEARCH if search is None else int(search)
    if jump is not None and not float(jump) > 0:
        raise ValueError(f"jump must be a distance in pixels > 0, got {jump!r}")
    from ._io import cube_source

    source, n, shape, coords = cube_source(frames, "find_shifts")
    if not -n <= reference < n:
        raise ValueError(f"reference={reference} but the cube has {n} frames")
    reference %= n
    _check_box(star_pos, search, shape, what="the frames")
    star_pos = [float(v) for v in star_pos]
    tolerance = float(jump) if jump is not None else max(3.0, search / 4)

    measure = dask.delayed(_measure_frame, pure=True)
    source = dask.delayed(source, traverse=False)  # one key, shared by every task
    order = _time_order(coords, n)
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    common = (star_pos, search, shape, method, saturation)
    ref_record = measure(source, reference, *common, when=int(rank[reference]), track=track)
    records = [None] * n
    records[reference] = ref_record
    if track:
        start = int(rank[reference])
        for steps in (order[start + 1:], order[:start][::-1]):
            previous = ref_record
            for i in steps:
                records[i] = measure(source, int(i), *common, ref_record, previous,
                                     int(rank[i]), tolerance, track=True)
                previous = records[i]
    else:
        for i in range(n):
            if i != reference:
                records[i] = measure(source, i, *common, ref_record)
    table = dask.delayed(_table, pure=True)(records, reference, jump, order)
    # how the shifts were found: stack() keeps this in the store's provenance
    provenance = {"registration": "find_shifts", "method": method,
                  "star_pos": star_pos, "search": int(search),
                  "track": bool(track), "reference": int(reference)}
    if compute:
        (result,) = dask.compute(table)
        ds = _dataset(result, n, coords)
        ds.attrs.update(provenance)
        _report(ds, reference, strict)
        return ds
    ds = _dataset(_lazy_columns(table, n), n, coords)
    ds.attrs.update(provenance)
    return ds


def _time_order(coords, n):
    if "time" in coords:
        return np.argsort(np.asarray(coords["time"].values), kind="stable")
    return np.arange(n)


def _jump_distances(shift, half_window=5):
    """Distance of each shift from the drift its neighbours predict.

    For each frame, the neighbours within ``half_window`` frames (itself
    left out) give a robust drift rate (median of their step-to-step
    velocities) and each predicts the frame's shift from its own; the
    prediction is the median of those. A steady drift therefore predicts
    itself, and one wild frame spoils neither the rate nor the median.
    """
    m = len(shift)
    out = np.empty(m)
    for k in range(m):
        nb = [j for j in range(max(0, k - half_window), min(m, k + half_window + 1)) if j != k]
        steps = [(shift[b] - shift[a]) / (b - a) for a, b in zip(nb[:-1], nb[1:], strict=True)]
        rate = np.median(steps, axis=0)
        guesses = [shift[j] + rate * (k - j) for j in nb]
        out[k] = np.hypot(*(shift[k] - np.median(guesses, axis=0)))
    return out


def _table(records, reference, jump, order):
    """Gather per-frame records into columns and derive the shifts.

    Validity is each frame's own (its record's reason); the jump test
    only measures how far each valid shift lies from its neighbours'
    drift (column ``jump``) and the limit for the warning (attribute of
    the result, ``jump_limit``).
    """
    n = len(records)
    cols = {k: np.array([float(r[k]) for r in records], np.float64) for k in FIELDS}
    reasons = np.array([str(r["reason"]) for r in records], dtype=object)
    star = np.stack([cols["x"], cols["y"]], axis=1)
    shift = star - star[reference]
    valid = (reasons == "") & np.isfinite(shift).all(axis=1)
    reasons[~valid & (reasons == "")] = "no position"
    distance = np.full(n, np.nan)
    idx = order[valid[order]]  # valid frames, in time order
    limit = np.inf
    if idx.size >= 5:
        distance[idx] = _jump_distances(shift[idx])
        limit = jump if jump is not None else max(3.0, 5 * 1.4826
                                                  * float(np.median(distance[idx])))
    out = {k: cols[k] for k in ("peak", "flux", "fwhm", "background", "noise", "snr",
                                "roundness")}
    out.update(star=star, shift=shift, valid=valid, reason=reasons.astype(str), jump=distance,
               jump_limit=np.float64(limit))
    return out


# the columns of find_shifts' table: trailing shape (after frame) and dtype
_COLUMNS = {"star": ((2,), np.float64), "shift": ((2,), np.float64),
            "peak": ((), np.float64), "flux": ((), np.float64), "fwhm": ((), np.float64),
            "background": ((), np.float64), "noise": ((), np.float64),
            "snr": ((), np.float64), "roundness": ((), np.float64), "jump": ((), np.float64),
            "valid": ((), bool), "reason": ((), object)}


def _dataset(columns, n, coords):
    """find_shifts' Dataset from its columns (numpy arrays, or dask arrays when lazy)."""
    import xarray as xr

    data_vars = {k: (("frame", "axis")[:1 + len(shape)], columns[k])
                 for k, (shape, _) in _COLUMNS.items()}
    all_coords = {"frame": np.arange(n), "axis": ["x", "y"]}
    all_coords.update({k: v for k, v in coords.items() if k != "frame"})
    if "frame" in coords:
        all_coords["frame"] = coords["frame"].values
    ds = xr.Dataset(data_vars, coords=all_coords)
    ds["shift"].attrs["description"] = "star - star[reference], [x, y] in pixels"
    ds["star"].attrs["description"] = "star position [x, y] in pixels, frame's own grid"
    ds["jump"].attrs["description"] = ("distance (px) of the shift from the drift of the "
                                       "neighbouring valid frames; NaN for flagged frames")
    if "jump_limit" in columns and not hasattr(columns["jump_limit"], "dask"):
        ds["jump"].attrs["limit"] = float(columns["jump_limit"])
    return ds


def _lazy_columns(table, n):
    """The columns of the delayed table as dask arrays."""
    import dask.array as da

    return {k: da.from_delayed(table[k], shape=(n, *shape), dtype=dtype)
            for k, (shape, dtype) in _COLUMNS.items()}


def _report(ds, reference, strict):
    ref_reason = str(ds["reason"].values[reference])
    if ref_reason or not np.isfinite(ds["star"].values[reference]).all():
        raise StarNotFoundError(
            f"reference frame {reference} ({_frame_name(ds, reference)}): {ref_reason}; "
            "choose another star_pos/search or another reference frame"
        )
    limit = ds["jump"].attrs.get("limit", np.inf)
    jumps = np.flatnonzero(np.nan_to_num(ds["jump"].values) > limit)
    if jumps.size:
        listed = "; ".join(f"frame {i} ({_frame_name(ds, i)}): "
                           f"{ds['jump'].values[i]:.1f} px" for i in jumps[:10])
        warnings.warn(f"{jumps.size} valid frame(s) lie off the drift of their neighbours "
                      f"by more than {limit:.1f} px (each measured well on its own; check "
                      f"them): {listed}", BigstackWarning, stacklevel=3)
    report_invalid(ds, strict)


def report_invalid(ds, strict):
    """Warn (raise with ``strict``) naming the frames ``ds["valid"]`` leaves out, with their
    reasons; called by :func:`find_shifts`' and :func:`bigstack.find_transforms`' reports."""
    bad = np.flatnonzero(~ds["valid"].values)
    if bad.size == 0:
        return
    lines = [f"frame {i} ({_frame_name(ds, i)}): {ds['reason'].values[i]}" for i in bad[:10]]
    more = f"\n... and {bad.size - 10} more" if bad.size > 10 else ""
    message = (f"{bad.size} of {ds.sizes['frame']} frames flagged invalid:\n"
               + "\n".join(lines) + more)
    if strict:
        raise StarNotFoundError(message)
    warnings.warn(message, BigstackWarning, stacklevel=4)  # the user's find_* call


def _frame_name(ds, i):
    if "path" in ds.coords:
        import os

        return os.path.basename(str(ds["path"].values[i]))
    return f"frame {i}"
