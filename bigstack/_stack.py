"""``stack``: validate the request, plan the tiles, run them lazily or into a store.

The three steps are kept apart so each reads on its own:

1. :func:`_request` checks every option before anything is read and turns the
   deprecated keywords into ``mode``;
2. :func:`_inputs` and :func:`_plan` turn frames, shifts and the frame
   quality table into a :class:`~bigstack._combine.TilePlan` and the
   provenance;
3. :func:`_lazy` builds one dask task per tile; :func:`_into_store` runs them
   into a zarr store whose life cycle (:mod:`bigstack._store`) it drives.

The tile kernels themselves are in :mod:`bigstack._combine`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np

from . import _combine, _quality, _reject, _store
from ._errors import BigstackError, BigstackWarning


@dataclass(frozen=True)
class _Request:
    combine: _reject.Rejection
    subpixel: str
    extent: str
    normalize: str
    memory: object
    mode: str
    progress: bool
    normalize_frames: str
    weights: object
    select: object

    @property
    def weighting(self):
        return not (isinstance(self.weights, str) and self.weights == "none")

    @property
    def needs_quality(self):
        return (self.normalize_frames != "none" or self.select is not None
                or (self.weighting and isinstance(self.weights, str)))


def stack(frames, shifts=None, *, method="mean", store=None, mode="write", subpixel=None,
          extent="reference", normalize="coverage", memory="512MB", progress=False,
          normalize_frames="none", weights="none", select=None, quality=None, kappa=None,
          centre=None, maxiters=None, nlow=None, nhigh=None, percentile=None, overwrite=None,
          resume=None):
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
    method : str or :class:`bigstack.Rejection`
        ``"mean"`` (alias ``"average"``) and ``"sum"`` stream: each tile adds
        the frames one by one, so memory does not depend on their number.
        The rejection methods ``"median"``, ``"sigma_clip"``,
        ``"winsorized"``, ``"minmax"`` and ``"percentile"`` need every
        frame's value of a pixel at once: each tile holds its rows of all
        frames, ``rows = (0.4 memory / threads - workspace) / (W * (4 N + 12))``
        for N frames of W pixels (see :mod:`bigstack._reject`; ``2 N`` for
        whole-pixel 8/16-bit integer frames, whose stored rows the
        ``median``, ``sigma_clip`` and ``winsorized`` kernels read), so
        tiles get lower as N grows, and a budget too small for one row is
        an error.
        A :class:`~bigstack.Rejection` carries a method with its options.
    kappa, centre, maxiters, nlow, nhigh, percentile
        Options of the rejection methods, as for :class:`~bigstack.Rejection`
        (``kappa=(low, high)`` for ``sigma_clip``/``winsorized``, ``centre``
        and ``maxiters`` for ``sigma_clip``, ``nlow``/``nhigh`` for
        ``minmax``, ``percentile=(low, high)``); giving one a method does not
        use is an error.
    store : str, path or zarr store, optional
        Write the result to this zarr store, tile by tile, and return it
        opened lazily from there. Without a store the result is a lazy
        dask-backed Dataset. fsspec URLs work.
    mode : {"write", "overwrite", "resume", "append"}
        What to do with ``store``. ``"write"`` (default) refuses an existing
        path. ``"overwrite"`` replaces a store bigstack made, and only that
        (never the current folder or one of its parents, a folder holding
        input frames, or one with files bigstack did not write); the old
        store is kept aside until the new one is complete. ``"resume"``
        finishes an interrupted run (same frames, shifts and parameters, or
        it is an error), computing only the tiles not yet written.
        ``"append"`` adds ``frames`` to the finished stack in ``store``
        (live stacking): ``shifts`` are relative to the same reference
        frame, the grid and tile plan are the store's, and the result equals
        stacking all frames at once (exactly, for integer frames with
        ``subpixel="nearest"``); only for unweighted ``mean``/``sum``.
    subpixel : {"nearest", "bilinear", "lanczos3", "lanczos4"}, optional
        How a frame is resampled onto the output grid. ``"nearest"`` copies
        whole pixels (shifts rounded; exact, the fastest); ``"bilinear"``
        and ``"lanczos3"``/``"lanczos4"`` interpolate, with weights summing
        to one (flux is conserved) and Lanczos' ringing clamped around hot
        pixels (stars keep their flux). A frame covers an output pixel where every
        source pixel the interpolation uses exists (nearest: where the
        nearest source pixel exists). Default: ``"nearest"`` when every
        frame is a whole-pixel translation, else ``"lanczos3"``, which keeps
        stars as sharp as in one frame (bilinear widens them by 5-10% and
        smooths the per-pixel noise). Rotations, flips and scale changes
        (from :func:`bigstack.find_transforms`) are applied the same way.
    extent : {"reference", "intersection", "union"}
        The reference frame's grid, only pixels every frame covers, or
        every pixel any frame covers.
    normalize : {"coverage", "count"}
        For the mean: divide each pixel by the number (or weight) of frames
        covering it (NaN where none does), or by the number of frames with
        uncovered pixels counted as zero (the tutorial's numbers).
    normalize_frames : {"none", "additive", "multiplicative", "additive+scale"}
        Match each frame's background (and noise, for ``additive+scale``)
        to the reference frame's before combining.
    weights : {"none", "noise", "fwhm"} or array_like (N,)
        Per-frame weights of the mean: inverse noise variance, inverse
        FWHM squared, or given values.
    select : dict, str or float, optional
        Drop frames by quality before combining: thresholds such as
        ``{"fwhm": 4.0}``, or the worst fraction by FWHM (``"10%"``).
    quality : xarray.Dataset, optional
        The table of :func:`bigstack.frame_quality` that ``normalize_frames``,
        ``weights`` and ``select`` use. Without it the table is measured:
        now when writing a store, or inside the lazy graph without a store
        (``select`` with an ``extent`` other than ``"reference"`` then needs
        it given, since the output grid depends on the frames kept).
    memory : str or int
        Budget for the tiles in flight (e.g. ``"512MB"``).
    progress : bool
        Show a progress bar while tiles are computed (dask's, or
        dask.distributed's when a client is active).
    overwrite, resume : bool, deprecated
        Use ``mode="overwrite"`` and ``mode="resume"``.

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
    request = _request(method, store, mode, subpixel, extent, normalize, memory, progress,
                       normalize_frames, weights, select, overwrite, resume,
                       {"kappa": kappa, "centre": centre, "maxiters": maxiters, "nlow": nlow,
                        "nhigh": nhigh, "percentile": percentile})
    store = _store.as_store(store)
    inputs = _inputs(frames, shifts)
    if inputs.channels is not None:
        request = _colour_request(request, inputs)
    existing = None
    if store is not None:
        existing = _store.check_target(store, request.mode, inputs.paths or ())
    plan, provenance = _plan(request, inputs, quality, lazy=store is None)
    if store is None:
        return _lazy(inputs.source, plan, provenance)
    return _into_store(store, existing, inputs.source, plan, provenance, request)


# --------------------------------------------------------------------------
# 1. the request


def _request(method, store, mode, subpixel, extent, normalize, memory, progress,
             normalize_frames, weights, select, overwrite, resume, options):
    if isinstance(method, _reject.Rejection):
        given = sorted(k for k, v in options.items() if v is not None)
        if given:
            raise ValueError(f"method is a Rejection; give {', '.join(given)} in it, not "
                             "as separate keywords")
        combine = method
    else:
        combine = _reject.Rejection(method, **options)
    for name, value, allowed in (
            ("subpixel", subpixel, _combine.SUBPIXEL), ("extent", extent, _combine.EXTENTS),
            ("normalize", normalize, _combine.NORMALIZE),
            ("normalize_frames", normalize_frames, _quality.NORMALISATIONS),
            ("mode", mode, _store.MODES)):
        if value not in allowed and not (name == "subpixel" and value is None):
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    mode = _deprecated_mode(mode, overwrite, resume)
    _combine.parse_memory(memory)
    if isinstance(weights, str) and weights not in _quality.WEIGHTS:
        raise ValueError(f"weights must be one of {_quality.WEIGHTS} or an array, "
                         f"got {weights!r}")
    request = _Request(combine, subpixel, extent, normalize, memory, mode, bool(progress),
                       normalize_frames, weights, select)
    method = combine.method
    if not combine.streaming and normalize != "coverage":
        raise ValueError(f"normalize={normalize!r} applies to mean and sum; method={method!r} "
                         "always divides by the values kept")
    if method in ("sum", "median") and request.weighting:
        raise ValueError(f"weights cannot be used with method={method!r}")
    if store is None and mode != "write":
        raise ValueError(f"mode={mode!r} needs a store")
    if mode == "append" and (not combine.streaming or request.weighting or select is not None
                             or normalize_frames != "none"):
        raise ValueError("mode='append' adds sums, so it works with unweighted 'mean' or "
                         "'sum' without normalize_frames or select")
    return request


def _deprecated_mode(mode, overwrite, resume):
    if overwrite is None and resume is None:
        return mode
    if overwrite and resume:
        raise ValueError("overwrite=True and resume=True contradict each other; give one mode")
    if overwrite and mode in ("append", "resume"):
        raise ValueError(f"overwrite=True would discard the store that mode={mode!r} builds "
                         "on; drop one of them")
    new = "overwrite" if overwrite else ("resume" if resume else mode)
    warnings.warn(f"stack(overwrite=..., resume=...) are deprecated; use mode={new!r}",
                  FutureWarning, stacklevel=4)
    return new


# --------------------------------------------------------------------------
# 2. inputs and plan


@dataclass(frozen=True)
class _Inputs:
    source: object
    n: int
    shape: tuple
    coords: dict
    paths: list | None
    transforms: np.ndarray
    keep: np.ndarray
    registration: dict
    frames_table: dict | None = None
    calibration: dict | None = None
    channels: tuple | None = None  # the colours of a colour cube, each stacked
    debayer: str | None = None

    @property
    def resident_bytes(self):
        """Bytes the row source keeps in memory for every task (calibration masters)."""
        return int(getattr(self.source, "resident_bytes", 0))


def _inputs(frames, shifts):
    from ._io import cube_source

    source, n, shape, coords = cube_source(frames, "stack")
    paths = [str(p) for p in coords["path"].values] if "path" in coords else None
    values, keep, reasons = _as_transforms(shifts, n)
    if reasons:
        listed = "; ".join(f"frame {i}: {r}" for i, r in list(reasons.items())[:5])
        warnings.warn(f"leaving out {len(reasons)} frame(s) flagged invalid ({listed})",
                      BigstackWarning, stacklevel=3)
    if not keep.any():
        raise BigstackError("no frame left to stack: every frame is flagged invalid")
    frames_table = None
    if hasattr(shifts, "data_vars"):
        from ._report import frame_table

        registration = dict(shifts.attrs) or {"registration": "given"}
        frames_table = frame_table(shifts)
    else:
        registration = {"registration": "none" if shifts is None else "given"}
    calibration = getattr(frames, "attrs", {}).get("calibration")
    channels = getattr(source, "channels", None)
    debayer = source.reader.method if channels is not None else None
    return _Inputs(source, n, tuple(shape), coords, paths, values, keep, registration,
                   frames_table, calibration, channels, debayer)


def _colour_request(request, inputs):
    """A colour cube: ``cfa`` places each colour's own samples (nearest); the tiles hold
    every colour's results, so they get a third of the budget each."""
    if request.mode == "append":
        raise BigstackError("mode='append' is for mono stacks; stack a colour night at once")
    if inputs.debayer == "cfa":
        if request.subpixel not in (None, "nearest"):
            raise ValueError(f"debayer='cfa' places each colour's own samples with "
                             f"subpixel='nearest'; got subpixel={request.subpixel!r}")
        request = replace(request, subpixel="nearest")
    memory = _combine.parse_memory(request.memory) // len(inputs.channels)
    return replace(request, memory=memory)


def _as_transforms(shifts, n):
    """Return ``(transforms (n, 2, 3) float64, keep (n,) bool, reasons)`` from any form.

    ``shifts`` is None, find_shifts' or find_transforms' Dataset, an (N, 2)
    array of ``[x, y]`` shifts or an (N, 2, 3) array of transforms ``[A | t]``
    (output pixel ``[x, y]`` -> frame pixel ``A @ [x, y] + t``).
    """
    keep = np.ones(n, bool)
    if shifts is None:
        return _combine.as_transforms(np.zeros((n, 2))), keep, {}
    reasons = {}
    if hasattr(shifts, "data_vars"):  # the Dataset from find_shifts or find_transforms
        if "transform" not in shifts and "shift" not in shifts:
            raise ValueError("shifts Dataset has neither 'transform' nor 'shift' (expected "
                             "find_transforms' or find_shifts' output)")
        if "valid" in shifts:
            keep = np.asarray(shifts["valid"].values, bool)
            if "reason" in shifts:
                reasons = {int(i): str(shifts["reason"].values[i]) for i in np.flatnonzero(~keep)}
        if "transform" in shifts:
            values = np.asarray(shifts["transform"].values, np.float64)
        else:
            shift = shifts["shift"]
            if "axis" in shift.dims:
                shift = shift.transpose(..., "axis").sel(axis=["x", "y"])
            values = np.asarray(shift.values, dtype=np.float64)
    else:
        values = np.asarray(getattr(shifts, "values", shifts), dtype=np.float64)
    if values.ndim == 2 and values.shape == (n, 2):
        values = _combine.as_transforms(values)
    if values.shape != (n, 2, 3):
        raise ValueError(f"shifts must be {n} x 2 ([x, y] per frame) or {n} x 2 x 3 ([A | t] "
                         f"per frame) for {n} frames; got shape {values.shape}")
    bad = np.flatnonzero(keep & ~np.isfinite(values).all(axis=(1, 2)))
    if bad.size:
        raise ValueError(f"transform of frame {int(bad[0])} is not finite: "
                         f"{values[bad[0]].tolist()}; mark it invalid or drop the frame")
    singular = np.flatnonzero(keep & (np.abs(np.linalg.det(values[:, :, :2])) < 1e-6))
    if singular.size:
        raise ValueError(f"transform of frame {int(singular[0])} is singular (it squashes the "
                         "frame to a line); mark it invalid or drop the frame")
    values = np.where(keep[:, None, None], values,
                      _combine.as_transforms(np.zeros((n, 2))))  # left-out frames: never read
    return values, keep, reasons


@dataclass(frozen=True)
class _Provenance:
    operation: dict  # what resume compares and append extends
    attrs: dict  # the store's (or lazy result's) attributes
    frame_meta: dict  # per-input exposure and start time
    factors: object = None  # delayed per-frame values of the lazy path


def _plan(request, inputs, quality, lazy):
    """The tile plan and provenance; measures the frame quality table now if needed."""
    if request.subpixel is None:
        request = replace(request, subpixel=_default_subpixel(inputs.transforms[inputs.keep]))
    if inputs.resident_bytes:  # the calibration masters count in the budget
        left = _combine.parse_memory(request.memory) - inputs.resident_bytes
        if left <= 0:
            raise BigstackError(
                f"memory={request.memory!r} is too small: the calibration masters alone take "
                f"{_combine.format_bytes(inputs.resident_bytes)}")
        request = replace(request, memory=left)
    shifts = inputs.transforms[:, :, 2]
    fields = {"keep": inputs.keep, "n_total": int(inputs.keep.sum())}
    table = factors = None
    if request.needs_quality and quality is None and lazy:
        if request.select is not None and request.extent != "reference":
            raise ValueError(f"select with extent={request.extent!r} needs the frame quality "
                             "first: pass quality=bigstack.frame_quality(frames, shifts)")
        import dask

        measured = _quality.quality_table(inputs.source, inputs.n, inputs.shape, None,
                                          inputs.keep, compute=False)
        factors = dask.delayed(_frame_factors, pure=True)(measured, request, shifts,
                                                          inputs.keep, False)
    else:
        if request.needs_quality or quality is not None:
            table = _table(quality, inputs, request)
        if request.needs_quality or request.weighting:
            fields.update(_frame_factors(table, request, shifts, inputs.keep))
    keep = fields["keep"]
    transforms = inputs.transforms
    grid = _combine.output_grid(shifts[keep], inputs.shape, request.subpixel, request.extent,
                                transforms=transforms[keep])
    warp = _combine.warp_footprint(transforms, inputs.keep, request.subpixel, inputs.shape)
    moving = not _combine.translations(transforms[inputs.keep]).all()
    plan = _combine.TilePlan(shape=inputs.shape, shifts=shifts, subpixel=request.subpixel,
                             grid=grid, combine=request.combine, normalize=request.normalize,
                             transforms=transforms if moving else None, **fields)
    # a rejection block kept as stored: decided on every frame that may be kept (a later
    # selection only drops frames)
    value_bytes = _combine.stored_gather(inputs.source, replace(plan, keep=inputs.keep))
    plan = replace(plan, stored=value_bytes is not None)
    tile = _combine.tile_rows(grid, request.memory, request.combine, int(keep.sum()),
                              request.weighting, warp=warp,
                              fused=_combine.groups_copies(inputs.source, request.weighting),
                              base=hasattr(inputs.source, "stored"), value_bytes=value_bytes)
    return plan, _provenance(request, inputs, plan, tile, table, factors)


def _default_subpixel(transforms):
    """Whole-pixel translations are copied ("nearest"); anything else is interpolated with
    Lanczos-3, which keeps stars as sharp as in one frame (see the README)."""
    shifts = transforms[:, :, 2]
    if _combine.translations(transforms).all() and np.all(shifts == np.round(shifts)):
        return "nearest"
    return "lanczos3"


def _table(quality, inputs, request):
    if quality is None:
        return _quality.quality_table(inputs.source, inputs.n, inputs.shape, None, inputs.keep,
                                      progress=request.progress)
    table = _quality.gather(quality, _quality.QUALITY_FIELDS)
    sizes = {len(v) for v in table.values()}
    if sizes != {inputs.n}:
        raise ValueError(f"quality has {sizes.pop()} frames, but {inputs.n} frames were given")
    return table


def _frame_factors(table, request, shifts, keep, warn=True):
    """``keep``, ``gains``, ``biases``, ``weights`` and ``n_total`` from the quality table.

    ``warn=False`` inside the lazy graph, where a warning would surface in a
    worker thread rather than where ``stack`` was called."""
    if request.select is not None:
        chosen, dropped = _quality.select_frames(table, request.select, keep=keep)
        if dropped and warn:
            listed = "; ".join(f"frame {i}: {r}" for i, r in list(dropped.items())[:5])
            warnings.warn(f"select={request.select!r} leaves out {len(dropped)} frame(s) "
                          f"({listed})", BigstackWarning, stacklevel=4)
        keep = keep & chosen
    out = {"keep": keep, "n_total": int(keep.sum())}
    if request.normalize_frames != "none":
        offset, scale = _quality.normalisation(table, request.normalize_frames,
                                               reference=_reference_index(shifts, keep),
                                               keep=keep)
        out.update(gains=scale, biases=-offset * scale)
    if request.weighting:
        weights = request.weights
        values = (_quality.weights_from(table, weights, keep=keep) if isinstance(weights, str)
                  else _reject.check_weights(weights, len(keep)))
        if not values[keep].any():
            raise BigstackError("the kept frames' weights are all zero")
        out["weights"] = values
    return out


def _reference_index(shifts, keep):
    """The kept frame normalisation matches: the first unshifted one, else the first."""
    kept = np.flatnonzero(keep)
    zero = kept[np.all(shifts[kept] == 0, axis=1)]
    return int(zero[0] if zero.size else kept[0])


def _provenance(request, inputs, plan, tile, table, factors):
    from . import __version__

    weights = request.weights
    parameters = {"method": request.combine.method, "subpixel": request.subpixel,
                  "extent": request.extent, "normalize": request.normalize,
                  "normalize_frames": request.normalize_frames,
                  "weights": weights if isinstance(weights, str) else "given",
                  "select": None if request.select is None else str(request.select),
                  **{k: (list(v) if isinstance(v, tuple) else v)
                     for k, v in request.combine.options.items()}}
    if inputs.debayer is not None:  # a colour stack: resume only with the same method
        parameters["debayer"] = inputs.debayer
    operation = {
        "mode": request.mode,
        "inputs": list(inputs.paths) if inputs.paths is not None else [],
        "shifts": [[float(v) for v in row] for row in inputs.transforms[:, :, 2]],
        "transforms": [[[float(v) for v in row] for row in m] for m in inputs.transforms],
        "frames_used": [int(i) for i in np.flatnonzero(plan.keep)],
        "frame_shape": [int(v) for v in inputs.shape],
        "parameters": parameters,
    }
    frame_meta = _frame_meta(inputs.coords, inputs.n)
    grid = plan.grid
    attrs = {
        "bigstack_version": __version__,
        "created": _store.now(),
        "complete": False,
        "inputs": operation["inputs"],
        "shifts": operation["shifts"],
        "transforms": operation["transforms"],
        "frames_used": operation["frames_used"],
        "n_frames": len(operation["frames_used"]),
        "frame_shape": operation["frame_shape"],
        "grid": {"y0": int(grid[0]), "y1": int(grid[1]), "x0": int(grid[2]),
                 "x1": int(grid[3])},
        "parameters": dict(parameters, memory=str(request.memory), tile_rows=int(tile)),
        "history": [],
        "pending": dict(operation, n_total=len(operation["frames_used"])),
        **frame_meta,
    }
    attrs["registration"] = inputs.registration
    if inputs.channels is not None:
        attrs["channels"] = list(inputs.channels)
        attrs["debayer"] = inputs.debayer
    if inputs.calibration is not None:
        attrs["calibration"] = inputs.calibration
    if inputs.frames_table is not None:
        attrs["frames"] = inputs.frames_table  # what registration measured, frame by frame
    if table is not None:
        attrs["quality"] = {k: [None if not np.isfinite(v) else float(v) for v in values]
                            for k, values in table.items()}
    if plan.weights is not None:
        attrs["frame_weights"] = [float(w) for w in plan.weights]
    if plan.gains is not None:
        attrs["frame_gains"] = [float(g) for g in plan.gains]
        attrs["frame_biases"] = [float(v) for v in plan.biases]
    return _Provenance(operation, attrs, frame_meta, factors)


def _frame_meta(coords, n):
    """Per-input exposure (s) and start time (ISO), None where the headers lack them."""
    meta = {}
    if "exptime" in coords:
        meta["frame_exptime"] = [None if not np.isfinite(v) else float(v)
                                 for v in np.asarray(coords["exptime"].values, float)]
    if "time" in coords:
        times = np.asarray(coords["time"].values)
        meta["frame_time"] = [None if np.isnat(t) else str(np.datetime_as_string(t, "ms"))
                              for t in times.astype("datetime64[ms]")]
    return meta


# --------------------------------------------------------------------------
# 3. run


def _lazy(source, plan, provenance):
    import dask
    import dask.array as da
    import xarray as xr

    grid = plan.grid
    tile = provenance.attrs["parameters"]["tile_rows"]
    source_d = dask.delayed(source, traverse=False)
    bounds = _combine.tile_bounds(grid[1] - grid[0], tile)
    channels = getattr(source, "channels", None)
    task = dask.delayed(_combine.compute_tile if channels is None
                        else _combine.compute_colour_tile, pure=True)
    parts = [task(source_d, plan, a, b, provenance.factors) for a, b in bounds]
    names = {"stack": np.float32, "coverage": np.int32}
    if not plan.streaming:
        names["rejected"] = np.int32
    cols = grid[3] - grid[2]
    lead = () if channels is None else (len(channels),)
    dims = ("y", "x") if channels is None else ("channel", "y", "x")
    data = {name: (dims, da.concatenate([
        da.from_delayed(p[name], (*lead, b - a, cols), dtype)
        for p, (a, b) in zip(parts, bounds, strict=True)], axis=len(lead)))
        for name, dtype in names.items()}
    coords = {"y": np.arange(grid[0], grid[1]), "x": np.arange(grid[2], grid[3])}
    if channels is not None:
        coords["channel"] = list(channels)
    return xr.Dataset(data, coords=coords, attrs=provenance.attrs)


def _into_store(store, existing, source, plan, provenance, request):
    import dask

    from ._tasks import compute

    mode = request.mode
    if mode == "resume":
        attrs = _store.prepare_resume(store, existing, _comparable(provenance.operation))
    elif mode == "append":
        attrs = _store.prepare_append(store, existing, provenance.operation,
                                      provenance.frame_meta)
    else:
        arrays = ("stack", "coverage", "sum" if plan.streaming else "rejected")
        attrs = _store.create(store, provenance.attrs, arrays)
    grid = tuple(attrs["grid"][k] for k in ("y0", "y1", "x0", "x1"))
    plan = replace(plan, grid=grid, n_total=attrs["pending"]["n_total"])
    tile = attrs["parameters"]["tile_rows"]
    bounds = _combine.tile_bounds(grid[1] - grid[0], tile)
    # only a resumed stack has tiles done: a new store's book, and an append's (reset), have
    # none, and reading it opens the store's metadata (every frame's) once more
    done = _store.tiles_done(store) if mode == "resume" else np.zeros(len(bounds), bool)
    base = attrs["pending"]["mode"] == "append"
    source_d = dask.delayed(source, traverse=False)
    task = dask.delayed(_tile_task, pure=False)
    # one pool per run: the tiles pass their rejection blocks on (_combine.Blocks)
    blocks = dask.delayed(_combine.Blocks(), traverse=False)
    tiles = dask.delayed(_store.Tiles(store), traverse=False)
    writes = [task(tiles, source_d, plan, t, a, b, base, blocks)
              for t, (a, b) in enumerate(bounds) if not done[t]]
    compute(writes, request.progress)
    _store.finish(store)
    return _store.open_stack(store)


def _comparable(operation):
    return {k: v for k, v in operation.items() if k != "mode"}


def _tile_task(tiles, source, plan, tile, a, b, base, blocks=None):
    """Compute tile ``tile`` (rows ``[a, b)``) and write its chunk of every array into
    ``tiles`` (the run's :class:`bigstack._store.Tiles`)."""
    if getattr(source, "channels", None) is not None:
        arrays = _combine.compute_colour_tile(source, plan, a, b, blocks=blocks)
    else:
        arrays = _combine.compute_tile(source, plan, a, b, blocks=blocks)
    return _store.write_tile(tiles, arrays, tile, a, b, base, _combine.finish_stack(plan))


def check_budget(shape, n_frames, *, method="mean", memory="512MB", weighted=False,
                 **options):
    """Raise now, before any expensive step, if ``memory`` cannot hold one tile row.

    ``shape`` is the frame's ``(ny, nx)``; the reference grid is assumed (a
    ``union`` grid may be wider, and is checked again by ``stack``).
    """
    combine = method if isinstance(method, _reject.Rejection) else _reject.Rejection(
        method, **{k: v for k, v in options.items() if v is not None})
    ny, nx = (int(v) for v in shape)
    _combine.tile_rows((0, ny, 0, nx), memory, combine, int(n_frames), weighted)
