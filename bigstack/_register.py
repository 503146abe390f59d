"""Finding the reference star in each frame, and the frame shifts.

Positions and shifts are written ``[x, y]``; images are indexed ``[y, x]``;
a pixel's centre has integer coordinates. ``shift[i] = star[i] -
star[reference]``: stacking then takes frame i's pixel ``(x + dx, y + dy)``
for output pixel ``(x, y)``.

Methods
-------
``peak``
    The tutorial's: the brightest pixel in the search box. Exact and
    reproducible, but a cosmic ray or hot pixel brighter than the star wins.
``centroid``
    The brightest 3x3 minimum of the box (a cosmic ray or hot pixel does
    not survive the minimum, a star's core does), refined to sub-pixel by an
    iterative Gaussian-windowed centroid on the background-subtracted
    pixels (unbiased for a symmetric star, like SExtractor's windowed
    positions).
``xcorr``
    Phase cross-correlation of the box against the reference frame's box
    (scikit-image, sub-pixel by upsampling); for fields with no isolated
    bright star. Both boxes are median-filtered first, so hot pixels, which
    do not move with the sky, do not pull the answer towards zero shift.

Each frame is one dask task that reads only its box from the file.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._errors import BigstackError, BigstackWarning
from ._measure import box_stats, fwhm_from_halfmax, windowed_centroid

METHODS = ("peak", "centroid", "xcorr")
DEFAULT_SEARCH = 500  # the tutorial's default box size for find_star

# a frame's measured values, in this order
_FIELDS = ("x", "y", "peak", "flux", "fwhm", "background", "noise")


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
# measuring one star in a box


def _peak(box):
    """Index ``(iy, ix)`` of the first brightest pixel, as ``np.where`` finds it."""
    flat = np.nanargmax(box) if np.isnan(box).any() else np.argmax(box)
    return np.unravel_index(flat, box.shape)


def measure_star(box, method="centroid", saturation=None):
    """Measure the star in ``box`` (a 2-D array); positions relative to the box.

    Returns a dict with ``x``, ``y`` (``[x, y]`` in box pixels), ``peak``
    (brightest raw pixel), ``flux`` (background-subtracted sum within 3
    FWHM), ``fwhm``, ``background``, ``noise`` and ``reason`` (empty when
    the star is good, else why it is not).
    """
    box = np.asarray(box, dtype=np.float64)
    background, noise = box_stats(box)
    out = dict.fromkeys(_FIELDS, np.nan)
    out.update(background=background, noise=noise, reason="")
    if method == "peak":
        iy, ix = _peak(box)
    else:
        from scipy.ndimage import minimum_filter

        # the brightest 3x3 minimum: a star (FWHM >= ~1.5 px) keeps a bright
        # core under it, a cosmic ray or hot pixel (<= 2 px wide) does not
        iy, ix = _peak(minimum_filter(box, size=3, mode="nearest"))
    peak = float(box[iy, ix])
    out["peak"] = peak
    signal = box - background
    if method == "peak":
        out["x"], out["y"] = float(ix), float(iy)
    # is there a star at all?
    floor = max(noise, 1e-12 * max(abs(background), 1.0))
    if not signal[iy, ix] > 5 * floor:
        out["reason"] = "no star above the noise in the box"
        out["x"] = out["y"] = np.nan
        return out
    fwhm0 = fwhm_from_halfmax(signal, iy, ix)
    sigma_w = max(fwhm0, 1.5) / 2.3548
    cx, cy, m2 = windowed_centroid(signal, float(ix), float(iy), sigma_w)
    if method != "peak":
        out["x"], out["y"] = cx, cy
    # windowed second moment of a Gaussian star: m2 = s^2 w^2 / (s^2 + w^2)
    if np.isfinite(m2) and 0 < m2 < sigma_w**2:
        sigma = np.sqrt(m2 * sigma_w**2 / (sigma_w**2 - m2))
        out["fwhm"] = 2.3548 * sigma
    else:
        out["fwhm"] = fwhm0
    fwhm = out["fwhm"] if np.isfinite(out["fwhm"]) else fwhm0
    ny, nx = box.shape
    yy, xx = np.ogrid[:ny, :nx]
    ref_x = cx if np.isfinite(cx) else ix
    ref_y = cy if np.isfinite(cy) else iy
    aperture = (xx - ref_x) ** 2 + (yy - ref_y) ** 2 <= (1.5 * fwhm) ** 2
    out["flux"] = float(signal[aperture].sum())
    # reasons not to trust it
    edge = max(2.0, fwhm)
    if not np.isfinite(cx):
        out["reason"] = "centroid failed (no positive flux around the peak)"
    elif min(ref_x, ref_y, nx - 1 - ref_x, ny - 1 - ref_y) < edge:
        out["reason"] = "star touches the edge of the search box"
    elif saturation is not None and peak >= saturation:
        out["reason"] = f"saturated (peak {peak:g} >= {saturation:g})"
    else:
        core = box[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3]
        top = core.max()
        if np.count_nonzero(core >= top - max(1e-6 * abs(top), 0.5)) >= 4 and fwhm0 > 1.5:
            out["reason"] = "saturated (flat-topped star)"
    return out


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


def _measure_frame(source, index, star_pos, search, shape, method, saturation,
                   reference_box=None, previous=None):
    """Task body: measure one frame. Returns a tuple of floats and a reason."""
    centre = tuple(star_pos)
    if previous is not None:  # tracking: follow the star from the previous frame
        found = previous[:2]
        centre = found if np.isfinite(found).all() else previous[-1]
    box = search_box(centre, search, shape)
    if box is None:
        values = dict.fromkeys(_FIELDS, np.nan)
        values["reason"] = "search box off the image"
        return _pack(values, centre)
    y0, y1, x0, x1 = box
    pixels = _window(source, index, box)
    if method == "xcorr":
        values = _xcorr(reference_box, pixels, box)
    else:
        values = measure_star(pixels, method, saturation)
        values["x"] += x0
        values["y"] += y0
    return _pack(values, centre)


def _pack(values, centre):
    """A frame's record: the measured fields, the reason, the box centre used."""
    return tuple(float(values[k]) for k in _FIELDS) + (values["reason"], centre)


def _xcorr(reference, pixels, box):
    """Shift of ``pixels`` against the reference box, returned as a star position.

    ``reference`` is ``(ref_pixels, ref_box)``; the returned ``x``/``y`` are
    where the reference box's centre lies in this frame.
    """
    from scipy.ndimage import median_filter
    from skimage.registration import phase_cross_correlation

    ref_pixels, ref_box = reference
    background, noise = box_stats(pixels)
    values = dict.fromkeys(_FIELDS, np.nan)
    values.update(background=background, noise=noise, peak=float(np.max(pixels)), reason="")
    if ref_pixels.shape != pixels.shape:
        values["reason"] = "xcorr region clipped by the image edge"
        return values
    a = median_filter(ref_pixels, size=3, mode="nearest")
    b = median_filter(pixels, size=3, mode="nearest")
    a = a - np.median(a)
    b = b - np.median(b)
    if not (np.ptp(b) > 5 * max(noise, 1e-12)):
        values["reason"] = "flat region: nothing to correlate"
        return values
    shift, error, _ = phase_cross_correlation(a, b, upsample_factor=100,
                                              normalization=None)
    # phase_cross_correlation gives the (row, col) move that registers b onto a
    # (the frame moved by +d shows as -d); frame offset = box offset - that move
    cy = (ref_box[0] + ref_box[1] - 1) / 2
    cx = (ref_box[2] + ref_box[3] - 1) / 2
    offset_y = box[0] - ref_box[0]
    offset_x = box[2] - ref_box[2]
    values["x"] = cx + offset_x - float(shift[1])
    values["y"] = cy + offset_y - float(shift[0])
    values["flux"] = float(b.sum())
    return values


def _reference_region(source, index, star_pos, search, shape):
    box = search_box(star_pos, search, shape)
    return _window(source, index, box), box


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
        Re-centre each frame's box on the star's position in the previous
        frame, frames taken in time order (the ``time`` coordinate when
        present, else frame order). Use it when the drift over the night is
        larger than the box; it costs parallelism (each frame waits for the
        previous one). Frames before the reference are tracked backwards
        from it.
    saturation : float, optional
        Pixel value at or above which the star counts as saturated; without
        it a flat-topped star core is taken as saturated.
    jump : float, optional
        A frame whose shift differs from the median of its ten neighbours by
        more than this many pixels is flagged (default: the larger of 3 px
        and 5 times the scatter of the shifts).
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
        ``flux``, ``fwhm``, ``background``, ``noise``, ``valid`` and
        ``reason``. A frame whose star is lost has ``valid=False``, NaN
        position and a reason; a :class:`BigstackWarning` lists such frames.

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
    from ._io import cube_source

    source, n, shape, coords = cube_source(frames, "find_shifts")
    if not -n <= reference < n:
        raise ValueError(f"reference={reference} but the cube has {n} frames")
    reference %= n
    _check_box(star_pos, search, shape, what="the frames")

    measure = dask.delayed(_measure_frame, pure=True)
    source = dask.delayed(source, traverse=False)  # one key, shared by every task
    ref_region = None
    if method == "xcorr":
        ref_region = dask.delayed(_reference_region, pure=True)(source, reference, star_pos,
                                                                 search, shape)
    if track:
        order = _time_order(coords, n)
        start = int(np.flatnonzero(order == reference)[0])
        records = [None] * n
        records[reference] = measure(source, reference, star_pos, search, shape, method,
                                     saturation, ref_region)
        for steps in (order[start + 1:], order[:start][::-1]):
            previous = records[reference]
            for i in steps:
                records[i] = measure(source, int(i), star_pos, search, shape, method,
                                     saturation, ref_region, previous)
                previous = records[i]
    else:
        records = [measure(source, i, star_pos, search, shape, method, saturation, ref_region)
                   for i in range(n)]
    table = dask.delayed(_table, pure=True)(records, reference, jump, _time_order(coords, n))
    # how the shifts were found: stack() keeps this in the store's provenance
    provenance = {"registration": "find_shifts", "method": method,
                  "star_pos": [float(v) for v in star_pos], "search": int(search),
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
    """Gather per-frame records into arrays, derive shifts and flag outliers."""
    n = len(records)
    nf = len(_FIELDS)
    values = np.array([r[:nf] for r in records], dtype=np.float64).reshape(n, nf)
    reasons = np.array([r[nf] for r in records], dtype=object)
    cols = {k: values[:, j] for j, k in enumerate(_FIELDS)}
    star = np.stack([cols["x"], cols["y"]], axis=1)
    shift = star - star[reference]
    ok = np.isfinite(shift).all(axis=1)
    # a star that is clearly fainter than the others: cloud or a wrong object
    flux = cols["flux"]
    good_flux = flux[ok & (reasons == "") & np.isfinite(flux)]
    if good_flux.size >= 3:
        low = np.median(good_flux) * 0.3
        for i in np.flatnonzero(ok & (reasons == "") & (flux < low)):
            reasons[i] = f"star flux {flux[i]:.3g} under 30% of the median (cloud?)"
    # a shift far from what its neighbours predict: a cosmic ray or another star won
    candidates = ok & (reasons == "")
    idx = order[candidates[order]]  # candidate frames, in time order
    if idx.size >= 5:
        distance = _jump_distances(shift[idx])
        limit = jump
        if limit is None:
            limit = max(3.0, 5 * 1.4826 * np.median(distance))
        for k in np.flatnonzero(distance > limit):
            i = idx[k]
            if i != reference:
                reasons[i] = (f"shift jumps {distance[k]:.1f} px from its neighbours "
                              "(a cosmic ray or another star?)")
    valid = reasons == ""
    out = {k: cols[k] for k in ("peak", "flux", "fwhm", "background", "noise")}
    out.update(star=star, shift=shift, valid=valid, reason=reasons.astype(str))
    return out


# the columns of find_shifts' table: trailing shape (after frame) and dtype
_COLUMNS = {"star": ((2,), np.float64), "shift": ((2,), np.float64),
            "peak": ((), np.float64), "flux": ((), np.float64), "fwhm": ((), np.float64),
            "background": ((), np.float64), "noise": ((), np.float64),
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
    return ds


def _lazy_columns(table, n):
    """The columns of the delayed table as dask arrays."""
    import dask.array as da

    return {k: da.from_delayed(table[k], shape=(n, *shape), dtype=dtype)
            for k, (shape, dtype) in _COLUMNS.items()}


def _report(ds, reference, strict):
    bad = np.flatnonzero(~ds["valid"].values)
    ref_reason = str(ds["reason"].values[reference])
    if not np.isfinite(ds["star"].values[reference]).all() or (
            ref_reason and "jumps" not in ref_reason):
        raise StarNotFoundError(
            f"reference frame {reference} ({_frame_name(ds, reference)}): {ref_reason}; "
            "choose another star_pos/search or another reference frame"
        )
    if bad.size == 0:
        return
    lines = [f"frame {i} ({_frame_name(ds, i)}): {ds['reason'].values[i]}" for i in bad[:10]]
    more = f"\n... and {bad.size - 10} more" if bad.size > 10 else ""
    message = (f"{bad.size} of {ds.sizes['frame']} frames flagged invalid:\n"
               + "\n".join(lines) + more)
    if strict:
        raise StarNotFoundError(message)
    warnings.warn(message, BigstackWarning, stacklevel=3)


def _frame_name(ds, i):
    if "path" in ds.coords:
        import os

        return os.path.basename(str(ds["path"].values[i]))
    return f"frame {i}"
