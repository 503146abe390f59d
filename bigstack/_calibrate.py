"""Calibration: bias, dark and flat masters built out of core, applied inside the reads.

Desktop stackers write a calibrated copy of every light before registering
it. bigstack never does: :func:`make_master` combines calibration frames with
the same tiled, robust combine as :func:`bigstack.stack` (no shifts, bounded
memory), and :func:`calibrate` returns a lazy cube whose every read takes the
light's stored rows and the masters' matching rows and returns

``(raw - bias - k * dark) / flat``

so :func:`bigstack.find_transforms` and :func:`bigstack.stack` consume
calibrated pixels straight from the files, with no calibrated copy on disk.

Semantics (those ccdproc users know)
------------------------------------
- A **bias** master is the combine of bias frames.
- A **dark** master has the bias removed when one is given (then it scales
  with exposure time); without a bias it still holds the bias and can only
  be used at its own exposure (``dark_scale="none"``).
- ``dark_scale="exptime"`` scales the dark by ``exptime_light /
  exptime_dark``; ``"optimize"`` fits the factor ``k`` per light that
  leaves the least noise in ``raw - bias - k * dark`` (measured on a sample
  of rows), as desktop stackers' "dark optimisation" does.
- A **flat** master is the combine of flats with the bias (or a flat-dark)
  removed, each flat scaled to the first one's level before combining, and
  the result divided by its median, so the calibrated light keeps its level.
  Pixels of the flat at or below ``flat_floor`` (a fraction of its median)
  are an error naming their share, or, with ``low_flat="mask"``, NaN in the
  calibrated lights (the combine leaves them out).
- **Cosmetic correction** (:class:`Cosmetic`): hot pixels from the dark
  master and cold pixels from the flat, found by sigma thresholds, are
  replaced by the median of their eight neighbours or made NaN.

Masters are ``xarray.DataArray`` images (``y``, ``x``) whose ``attrs`` hold
their provenance: kind, method, frames and inputs, exposure, temperature and
gain ranges, filter. :func:`save_master` writes one as FITS (read back by
:func:`load_master`, or by passing the path to :func:`calibrate`), so masters
can be reused across nights.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np

from ._errors import BigstackError, BigstackWarning, FrameError

KINDS = ("bias", "dark", "flat", "darkflat")
DARK_SCALES = ("exptime", "none", "optimize")
REPLACE = ("median", "nan")


# --------------------------------------------------------------------------
# masters


def _cube(frames, what):
    """The frames as a mono cube; colour (Bayer) frames as their mosaics."""
    from ._io import open_frames

    if isinstance(frames, (str, os.PathLike, list, tuple)):
        frames = open_frames(frames, debayer=None)
    elif _bayer_of(frames) is not None:
        frames = _mosaic_cube(frames)
    if not hasattr(frames, "dims") or frames.ndim != 3:
        raise ValueError(f"{what} needs frames: a pattern, a list of files or a cube "
                         f"(frame, y, x)")
    return frames


def _range(cube, name):
    if name not in cube.coords:
        return None
    values = np.asarray(cube[name].values, float)
    return [float(values.min()), float(values.max())]


def _one_value(cube, name, kind, tolerance):
    """The frames' common value of ``name`` (exposure...), or None when not in headers."""
    span = _range(cube, name)
    if span is None:
        return None
    if span[1] - span[0] > tolerance * max(abs(span[1]), 1e-9):
        paths = [os.path.basename(str(p)) for p in cube["path"].values[:2]] \
            if "path" in cube.coords else []
        raise BigstackError(f"the {kind} frames differ in {name} ({span[0]:g} to {span[1]:g}; "
                            f"e.g. {', '.join(paths)}): give one {name} per master")
    return float(np.median(cube[name].values))


def make_master(frames, kind, method="sigma_clip", *, bias=None, dark=None, store=None,
                memory="512MB", overwrite=False, progress=False, saturation=None, **options):
    """Combine calibration frames into a master, out of core.

    Parameters
    ----------
    frames : pattern, list of paths or cube ``(frame, y, x)``
        The bias, dark, flat or flat-dark frames.
    kind : {"bias", "dark", "flat", "darkflat"}
    method : str or :class:`bigstack.Rejection`
        The combine, as for :func:`bigstack.stack` (default ``"sigma_clip"``;
        ``"median"`` and ``"mean"`` too). ``options`` (``kappa``...) go with it.
    bias : master or path, optional
        Subtracted from darks, flat-darks and flats first.
    dark : master or path, optional
        For flats: a flat-dark master (or a dark of the flats' exposure)
        subtracted instead of the bias.
    store : str or path, optional
        Also write the master: ``*.fits``/``*.fit`` as FITS
        (:func:`save_master`), anything else as a zarr stack store.
    memory : str
        Budget for the combine's tiles, as for :func:`bigstack.stack`.
    saturation : float, optional
        Flats: a flat whose median is at or above this level is saturated
        (default: 90% of the largest value the frames' integer type holds,
        when known). All flats saturated is an error naming them.

    Returns
    -------
    xarray.DataArray
        The master image (y, x), float32, with its provenance in ``attrs``.
    """
    from . import stack

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    cube = _cube(frames, f"make_master(kind={kind!r})")
    exptime = _one_value(cube, "exptime", kind, 0.01) if kind in ("dark", "darkflat") else \
        (float(np.median(cube["exptime"].values)) if "exptime" in cube.coords else None)
    base = None
    if kind in ("dark", "darkflat", "flat"):
        base = dark if (kind == "flat" and dark is not None) else bias
    if kind == "flat":
        _check_flats(cube, saturation)
    if base is not None:
        cube = calibrate(cube, bias=None if kind == "flat" and dark is not None else bias,
                         dark=dark if kind == "flat" else None, dark_scale="none")
    normalize = "multiplicative" if kind == "flat" else "none"
    result = stack(cube, None, method=method, memory=memory, progress=progress,
                   normalize_frames=normalize, **options)
    image = result["stack"].compute()
    attrs = {
        "bigstack_master": kind,
        "method": result.attrs["parameters"]["method"],
        "n_frames": int(cube.sizes["frame"]),
        "inputs": [str(p) for p in cube["path"].values] if "path" in cube.coords else [],
        "frame_shape": [int(cube.sizes["y"]), int(cube.sizes["x"])],
        "exptime": exptime,
        "exptime_range": _range(cube, "exptime"),
        "temperature_range": _range(cube, "temperature"),
        "gain": _range(cube, "gain"),
        "filter": sorted({str(v) for v in cube["filter"].values}) if "filter" in cube.coords
        else None,
        "bias_subtracted": base is not None,
        "subtracted": _describe(base),
    }
    values = image.values.astype(np.float32)
    pattern = _pattern(cube)
    if pattern is not None:
        attrs["bayer"] = pattern
    if kind == "flat":
        values, attrs["normalised_by"] = _normalise_flat(values, pattern)
    master = _as_master(values, attrs)
    if store is not None:
        save_master(master, store, overwrite=overwrite)
    return master


def _bayer_of(cube):
    from ._io import bayer_reader

    return bayer_reader(cube) if hasattr(cube, "dims") else None


def _mosaic_cube(cube):
    """The Bayer mosaics of a colour cube's frames, opened again as a mono cube."""
    from ._io import FileRows, open_frames

    reader, indices = _bayer_of(cube)
    if not isinstance(reader.mosaic, FileRows):
        raise BigstackError("these colour frames are calibrated already; calibrate the frames "
                            "from open_frames once")
    return open_frames([reader.sources[int(i)].path for i in indices], debayer=None)


def _pattern(cube):
    """The Bayer pattern of a mono cube's mosaics, None if not Bayer (or not from files)."""
    from ._io import frame_reader

    found = frame_reader(cube)
    if found is None or not hasattr(found[0], "sources") or not found[0].sources:
        return None
    return getattr(found[0].sources[0], "bayer", None)


def _normalise_flat(values, pattern):
    """Divide a flat by its median; a Bayer flat each colour by its own median, so the
    calibrated lights keep their colour balance. Returns the values and the level(s)."""
    if pattern is None:
        level = float(np.nanmedian(values))
        if not level > 0:
            raise BigstackError(f"the flat frames combine to a median of {level:g}: not a flat")
        return values / np.float32(level), level
    out = np.empty_like(values)
    levels = {}
    for colour in sorted(set(pattern)):
        where = [(k // 2, k % 2) for k, c in enumerate(pattern) if c == colour]
        samples = np.concatenate([values[r::2, c::2].ravel() for r, c in where])
        level = float(np.nanmedian(samples))
        if not level > 0:
            raise BigstackError(f"the flat frames' {colour} pixels combine to a median of "
                                f"{level:g}: not a flat")
        for r, c in where:
            out[r::2, c::2] = values[r::2, c::2] / np.float32(level)
        levels[colour] = level
    return out, levels


def _check_flats(cube, saturation):
    """Refuse a set of flats that are all saturated, naming them."""
    from ._quality import frame_quality

    if saturation is None:
        saturation = _saturation_level(cube)
        if saturation is None:
            return
    levels = frame_quality(cube)["background"].values
    saturated = np.asarray(levels >= saturation)
    if saturated.all():
        names = ", ".join(os.path.basename(str(p)) for p in cube["path"].values[:3])
        raise BigstackError(f"all {saturated.size} flats are saturated (median level "
                            f"{float(np.median(levels)):g} >= {saturation:g}; e.g. {names})")
    if saturated.any():
        listed = ", ".join(os.path.basename(str(p))
                           for p in cube["path"].values[saturated][:3])
        warnings.warn(f"{int(saturated.sum())} saturated flat(s) are combined with the others "
                      f"(e.g. {listed})", BigstackWarning, stacklevel=3)


def _saturation_level(cube):
    from ._io import FitsSource, frame_reader

    found = frame_reader(cube)
    if found is None:
        return None
    source = found[0].sources[0]
    if not isinstance(source, FitsSource) or np.dtype(source.dtype).kind not in "iu":
        return None
    info = np.iinfo(np.dtype(source.dtype).newbyteorder("="))
    top = info.max * source.bscale + source.bzero
    return 0.9 * top


def _describe(master):
    if master is None:
        return None
    if isinstance(master, (str, os.PathLike)):
        return str(master)
    attrs = getattr(master, "attrs", {})
    return attrs.get("path") or f"{attrs.get('bigstack_master', 'master')} in memory"


def _as_master(values, attrs):
    import xarray as xr

    ny, nx = values.shape
    return xr.DataArray(values, dims=("y", "x"),
                        coords={"y": np.arange(ny), "x": np.arange(nx)}, attrs=attrs,
                        name="master")


def save_master(master, path, overwrite=False):
    """Write a master as FITS (its provenance in the header and a JSON table)."""
    from ._render import save_fits

    path = os.fspath(path)
    if not path.lower().endswith((".fits", ".fit", ".fts")):
        raise ValueError(f"{path}: masters are written as FITS (.fits)")
    save_fits(master, path, overwrite=overwrite)
    return path


def load_master(path):
    """Read a master written by :func:`save_master` (or any 2-D FITS image)."""
    import json

    from astropy.io import fits

    path = os.fspath(path)
    try:
        with fits.open(path) as hdul:
            data = np.asarray(hdul[0].data, np.float32)
            attrs = {}
            if "PROVENANCE" in hdul:
                attrs = json.loads(hdul["PROVENANCE"].data["JSON"][0])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FrameError(path, f"cannot read as a master ({err})") from err
    if data.ndim != 2:
        raise FrameError(path, f"a master is a 2-D image, this one has shape {data.shape}")
    attrs["path"] = path
    return _as_master(data, attrs)


def _master(value, name):
    """A master argument as ``(float32 image, attrs)``; None passes through."""
    if value is None:
        return None, {}
    if isinstance(value, (str, os.PathLike)):
        value = load_master(value)
    if hasattr(value, "values"):
        attrs = dict(getattr(value, "attrs", {}))
        image = np.asarray(value.values, np.float32)
    else:
        attrs, image = {}, np.asarray(value, np.float32)
    if image.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image, got shape {image.shape}")
    return np.ascontiguousarray(image), attrs


# --------------------------------------------------------------------------
# cosmetic correction


@dataclass(frozen=True)
class Cosmetic:
    """Hot and cold pixels found in the masters, and what to do with them.

    Parameters
    ----------
    hot : float or None
        A pixel of the dark master more than ``hot`` robust sigmas above its
        median is hot (default 5). None: no hot pixels.
    cold : float or None
        A pixel of the flat more than ``cold`` robust sigmas below its median
        is cold (default 5). None: no cold pixels.
    replace : {"median", "nan"}
        Replace those pixels by the median of their eight neighbours, or make
        them NaN so the combine leaves them out.
    """

    hot: float | None = 5.0
    cold: float | None = 5.0
    replace: str = "median"

    def __post_init__(self):
        for name in ("hot", "cold"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"Cosmetic.{name} must be a positive number of sigmas or "
                                 f"None, got {value!r}")
        if self.replace not in REPLACE:
            raise ValueError(f"Cosmetic.replace must be one of {REPLACE}, got {self.replace!r}")


def _outliers(image, kappa, above):
    """Pixels ``kappa`` robust sigmas above (or below) the mean of their eight neighbours.

    Measured against the neighbours, so a smooth amp glow or vignetting is not
    taken for hot or cold pixels; the sigma is the MAD-based spread of those
    differences over the image. The outermost rows and columns are not judged.
    """
    from scipy.ndimage import convolve

    from ._measure import clipped_stats

    image = np.where(np.isfinite(image), image, np.nanmedian(image)).astype(np.float64)
    ring = np.ones((3, 3)) / 8.0
    ring[1, 1] = 0.0
    residual = image - convolve(image, ring, mode="nearest")
    residual[[0, -1], :] = 0.0  # at the edge a gradient's neighbours are one-sided
    residual[:, [0, -1]] = 0.0
    _, sigma = clipped_stats([residual[1:-1, 1:-1].astype(np.float32)])
    limit = kappa * max(sigma, 1e-12)
    return residual > limit if above else residual < -limit


# --------------------------------------------------------------------------
# calibrate


def calibrate(cube, bias=None, dark=None, flat=None, *, dark_scale="exptime", cosmetic=None,
              flat_floor=0.05, low_flat="error"):
    """Calibrate lights lazily: ``(raw - bias - k * dark) / flat``, computed as rows are read.

    Parameters
    ----------
    cube : pattern, list of paths or cube ``(frame, y, x)``
        The lights, usually from :func:`bigstack.open_frames`.
    bias, dark, flat : master, array or path to a FITS master, optional
        From :func:`make_master` (or :func:`load_master`); each must have
        the lights' shape.
    dark_scale : {"exptime", "none", "optimize"}
        ``k`` per light: its exposure over the dark's (both from headers;
        needs a dark with the bias removed, or the same exposure), 1, or the
        value that leaves the least noise (fitted on a sample of each
        light's rows when this is called).
    cosmetic : Cosmetic, optional
        Hot pixels from the dark, cold pixels from the flat, replaced or NaN.
    flat_floor : float
        Flat pixels at or below this fraction of the flat's median (and
        non-finite ones) would blow up the lights.
    low_flat : {"error", "mask"}
        Such pixels are an error naming their share, or NaN in the lights.

    Returns
    -------
    xarray.DataArray
        The calibrated cube, lazy (dask), float32, with the lights'
        coordinates; ``attrs["calibration"]`` says what was applied (kept in
        a stack's provenance). Reads take the lights' rows and the masters'
        matching rows: no calibrated copy is written anywhere.
    """
    import dask.array as da
    import xarray as xr
    from dask.base import tokenize

    from ._io import cube_source

    colour = _bayer_of(cube)
    if colour is not None:  # calibrate the mosaics, then debayer the calibrated rows
        mosaic = calibrate(_mosaic_cube(cube), bias, dark, flat, dark_scale=dark_scale,
                           cosmetic=cosmetic, flat_floor=flat_floor, low_flat=low_flat)
        return _debayered(mosaic, colour[0], cube)
    cube = _cube(cube, "calibrate")
    if dark_scale not in DARK_SCALES:
        raise ValueError(f"dark_scale must be one of {DARK_SCALES}, got {dark_scale!r}")
    if low_flat not in ("error", "mask"):
        raise ValueError(f"low_flat must be 'error' or 'mask', got {low_flat!r}")
    if cosmetic is not None and not isinstance(cosmetic, Cosmetic):
        raise ValueError("cosmetic must be a bigstack.Cosmetic (or None)")
    shape = (int(cube.sizes["y"]), int(cube.sizes["x"]))
    masters = {}
    for name, value in (("bias", bias), ("dark", dark), ("flat", flat)):
        image, attrs = _master(value, name)
        if image is not None and image.shape != shape:
            where = attrs.get("path", f"the {name} master")
            raise FrameError(where, f"{name} master of shape {image.shape} (y, x) does not "
                                    f"fit lights of shape {shape}")
        masters[name] = (image, attrs)
    source, n, _, coords = cube_source(cube, "calibrate")
    record = {"bias": _describe(bias), "dark": _describe(dark), "flat": _describe(flat),
              "dark_scale": dark_scale}
    scale = _dark_factors(masters, coords, n, dark_scale, source, shape, record)
    flat_image = _checked_flat(masters["flat"], flat_floor, low_flat, record)
    hot = cold = None
    if cosmetic is not None:
        if masters["dark"][0] is not None and cosmetic.hot is not None:
            hot = _outliers(masters["dark"][0], cosmetic.hot, above=True)
        if masters["flat"][0] is not None and cosmetic.cold is not None:
            cold = _outliers(masters["flat"][0], cosmetic.cold, above=False)
        record["cosmetic"] = {"hot": cosmetic.hot, "cold": cosmetic.cold,
                              "replace": cosmetic.replace,
                              "hot_pixels": int(hot.sum()) if hot is not None else 0,
                              "cold_pixels": int(cold.sum()) if cold is not None else 0}
    bad = None if hot is None and cold is None else \
        (hot if cold is None else cold if hot is None else hot | cold)
    reader = CalibratedReader(source, n, shape, masters["bias"][0], masters["dark"][0],
                              flat_image, scale, bad,
                              None if cosmetic is None else cosmetic.replace)
    band = max(1, min(shape[0], (32 * 2**20) // (4 * shape[1])))
    name = "calibrated-" + tokenize(reader, band)
    data = da.from_array(reader, chunks=(1, band, shape[1]), name=name, asarray=False,
                         fancy=False, lock=False, meta=np.empty((0, 0, 0), np.float32),
                         inline_array=False)
    attrs = dict(cube.attrs)
    attrs["calibration"] = record
    return xr.DataArray(data, dims=("frame", "y", "x"), coords=cube.coords, attrs=attrs,
                        name="frames")


def _debayered(mosaic, like, cube):
    """The calibrated mosaics ``mosaic`` debayered as the colour cube ``cube`` was
    (``like`` its reader)."""
    from ._io import bayer_array, frame_reader

    reader, indices = frame_reader(mosaic)
    rows = reader.rows(indices)
    channel = None if "channel" in cube.dims else like.channel
    return bayer_array(rows, len(indices), reader.frame_shape, like.pattern, like.method,
                       channel, reader.sources, coords=dict(mosaic.coords),
                       attrs=mosaic.attrs)


def _dark_factors(masters, coords, n, dark_scale, source, shape, record):
    dark, dark_attrs = masters["dark"]
    if dark is None:
        return np.zeros(n, np.float64)
    if dark_scale == "none":
        return np.ones(n)
    if dark_scale == "exptime":
        dark_exptime = dark_attrs.get("exptime")
        if "exptime" not in coords or dark_exptime is None:
            raise BigstackError("dark_scale='exptime' needs the lights' and the dark's exposure "
                                "times (EXPTIME); use dark_scale='none' or 'optimize'")
        k = np.asarray(coords["exptime"].values, float) / float(dark_exptime)
        if not dark_attrs.get("bias_subtracted", True) and np.any(np.abs(k - 1) > 1e-3) \
                and masters["bias"][0] is None:
            raise BigstackError("the dark still holds the bias (made without one), so it "
                                "cannot be scaled to the lights' exposure: give bias=, or a "
                                "dark of the lights' exposure with dark_scale='none'")
        record["dark_factor"] = [float(v) for v in k]
        return k
    k = _optimal_factors(source, n, shape, masters["bias"][0], dark)
    record["dark_factor"] = [float(v) for v in k]
    return k


def _optimal_factors(source, n, shape, bias, dark, rows=32, bands=4):
    """Per light, the dark factor k that leaves the least noise in ``raw - bias - k dark``.

    On ``bands`` bands of ``rows`` rows: the least-squares factor of the
    residual's high-pass part (pixel minus the mean of its row neighbours)
    against the dark's, which weighs hot pixels and amp glow structure, not
    the sky.
    """
    from ._quality import sample_rows

    out = np.ones(n)
    spans = sample_rows(shape[0], rows, bands)
    for i in range(n):
        num = den = 0.0
        for r0, r1 in spans:
            stored, scale, zero, blank, _ = source.raw(i, r0, r1, {})
            light = stored.astype(np.float64) * scale + zero
            if bias is not None:
                light = light - bias[r0:r1]
            d = dark[r0:r1].astype(np.float64)
            hl = light[:, 1:-1] - 0.5 * (light[:, :-2] + light[:, 2:])
            hd = d[:, 1:-1] - 0.5 * (d[:, :-2] + d[:, 2:])
            ok = np.isfinite(hl) & np.isfinite(hd)
            num += float(np.sum(hl[ok] * hd[ok]))
            den += float(np.sum(hd[ok] ** 2))
        out[i] = max(num / den, 0.0) if den > 0 else 1.0
    return out


def _checked_flat(flat, floor, low_flat, record):
    image, attrs = flat
    if image is None:
        return None
    lo, hi = image.min(), image.max()  # NaN if any value is NaN
    if floor >= 0 and np.isfinite(lo) and np.isfinite(hi) and lo > np.float32(floor * float(hi)):
        # every value finite and above floor x the largest, which is at least the median's
        # share: no low pixel, and no median to find (a third of what calibrate costs)
        record["flat_low_pixels"] = 0
        return image
    level = float(np.nanmedian(image))
    low = ~np.isfinite(image) | (image <= floor * level)
    share = float(low.mean())
    record["flat_low_pixels"] = int(low.sum())
    if low.any():
        where = attrs.get("path", "the flat master")
        if low_flat == "error":
            raise FrameError(where, f"{share:.3%} of the flat's pixels are at or below "
                                    f"{floor:g} of its median (or not finite); they would blow "
                                    "up the lights: pass low_flat='mask' to leave them out")
        image = np.where(low, np.nan, image).astype(np.float32)
    return image


# --------------------------------------------------------------------------
# the reader behind the calibrated cube


class CalibratedReader:
    """Array-like ``(frame, y, x)`` of calibrated lights over a row source; small to send.

    ``sources`` are the lights' file sources (so a calibrated cube is
    recognised as reading from files); :meth:`rows` gives the row source the
    tile and star-search tasks read through.
    """

    dtype = np.dtype(np.float32)
    planes = None

    def __init__(self, source, n, shape, bias, dark, flat, dark_factor, bad, replace):
        self.source = source
        self.n = n
        self.frame_shape = tuple(shape)
        self.shape = (n, *shape)
        self.ndim = 3
        self.bias, self.dark = bias, dark
        # multiplied, not divided, in the hot loop: the reciprocal once (NaN stays NaN)
        self.inv_flat = None if flat is None else np.divide(np.float32(1), flat,
                                                            dtype=np.float32)
        self.dark_factor = np.asarray(dark_factor, float)
        self.bad, self.replace = bad, replace
        # frame rows whose masters are finite and hold no bad pixel: the fused combine adds
        # integer rows there without checking each value (bigstack._kernels.add_calibrated)
        self.clean = np.ones(shape[0], bool)
        for m in (bias, dark, self.inv_flat):
            if m is not None:
                self.clean &= np.isfinite(m).all(axis=1)
        if bad is not None:
            self.clean &= ~bad.any(axis=1)

    @property
    def sources(self):
        reader = getattr(self.source, "reader", None)
        if reader is None:
            return ()
        return tuple(reader.sources[int(j)] for j in self.source.files)

    @property
    def resident_bytes(self):
        """Bytes of the masters this reader holds in memory."""
        return sum(a.nbytes for a in (self.bias, self.dark, self.inv_flat, self.bad)
                   if a is not None)

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("CalibratedReader", tokenize(self.source.reader) if hasattr(
            self.source, "reader") else id(self.source), tokenize(
            self.bias, self.dark, self.inv_flat, self.dark_factor, self.bad, self.replace))

    def rows(self, indices):
        return CalibratedRows(self, np.asarray(indices))

    def calibrated(self, i, r0, r1):
        """Calibrated float32 rows ``[r0, r1)`` of light ``i`` (its index in the source)."""
        from . import _kernels

        ny = self.frame_shape[0]
        pad = self.bad is not None and self.replace == "median"
        a, b = (max(r0 - 1, 0), min(r1 + 1, ny)) if pad else (r0, r1)
        stored, scale, zero, blank, _ = self.source.raw(i, a, b, {})
        values = np.empty(stored.shape, np.float32)
        dark = self.dark if self.dark is not None and self.dark_factor[i] else None
        _kernels.calibrate_rows(
            stored, values, scale=scale, zero=zero, blank=blank,
            bias=None if self.bias is None else self.bias[a:b],
            dark=None if dark is None else dark[a:b], k=self.dark_factor[i] if dark is not None
            else 0.0, inv_flat=None if self.inv_flat is None else self.inv_flat[a:b])
        if self.bad is not None:
            values = _repair(values, self.bad[a:b], self.replace)
        return values[r0 - a:r0 - a + (r1 - r0)]

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (3 - len(key))
        frames = range(self.n)[key[0]]
        ys = range(self.frame_shape[0])[key[1]]
        xs = range(self.frame_shape[1])[key[2]]
        out = np.empty((len(frames), len(ys), len(xs)), np.float32)
        if len(ys) == 0 or len(xs) == 0:
            return out
        for k, i in enumerate(frames):
            rows = self.calibrated(i, ys.start, ys.start + len(ys))
            out[k] = rows[:, xs.start:xs.start + len(xs)]
        return out


def _repair(values, bad, replace):
    """Bad pixels as NaN, or the median of their finite eight neighbours."""
    if not bad.any():
        return values
    if replace == "nan":
        values[bad] = np.nan
        return values
    ys, xs = np.nonzero(bad)
    ny, nx = values.shape
    patches = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == 0 and dx == 0:
                continue
            yy, xx = ys + dy, xs + dx
            inside = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
            yy, xx = np.clip(yy, 0, ny - 1), np.clip(xx, 0, nx - 1)
            v = values[yy, xx].copy()
            v[bad[yy, xx] | ~inside] = np.nan  # a bad neighbour (or none) does not vote
            patches.append(v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all eight bad: NaN
        values[ys, xs] = np.nanmedian(np.array(patches), axis=0)
    return values


class CalibratedRows:
    """The row source of a calibrated cube: what the tasks read (see ``FileRows``)."""

    def __init__(self, reader, files):
        self.reader = reader
        self.files = np.asarray(files)

    @property
    def resident_bytes(self):
        return self.reader.resident_bytes

    def raw(self, i, r0, r1, buffers):
        return self.reader.calibrated(int(self.files[i]), r0, r1), 1.0, 0.0, None, True

    def stored(self, i, r0, r1, buffers):
        """Frame ``i``'s stored rows ``[r0, r1)`` for the fused combine
        (:func:`bigstack._kernels.add_calibrated`): ``(rows, scale, zero, blank, k)``,
        ``k`` its dark factor. ``buffers`` as for ``FileRows.raw``."""
        reader = self.reader
        j = int(self.files[i])
        rows, scale, zero, blank, _ = reader.source.raw(j, r0, r1, buffers)
        return rows, scale, zero, blank, float(reader.dark_factor[j])

    def base(self, indices, r0, r1):
        """``bias + k * dark`` over frame rows ``[r0, r1)`` for frames ``indices`` that all
        have dark factor ``k``, as ``(float32 rows, r0, k)``: the one row the fused combine
        subtracts (:func:`bigstack._kernels.add_calibrated`). None when they do not share
        one, or no dark is subtracted (the kernel then subtracts the bias alone)."""
        reader = self.reader
        if reader.dark is None or len(indices) == 0:
            return None
        factors = reader.dark_factor[self.files[np.asarray(indices)]]
        k = float(factors[0])
        if k == 0 or not (factors == k).all():
            return None
        dark = reader.dark[r0:r1]
        if k == 1:
            rows = dark if reader.bias is None else reader.bias[r0:r1] + dark
        else:
            rows = dark * np.float32(k)
            if reader.bias is not None:
                rows += reader.bias[r0:r1]
        return rows, r0, k

    @property
    def masters(self):
        """``(bias, dark, inv_flat, bad, nan_bad, clean)`` for
        :func:`bigstack._kernels.add_calibrated`."""
        reader = self.reader
        return (reader.bias, reader.dark, reader.inv_flat, reader.bad, reader.replace == "nan",
                reader.clean)

    def box(self, i, y0, y1, x0, x1):
        rows = self.reader.calibrated(int(self.files[i]), y0, y1)
        return rows[:, x0:x1].astype(np.float64)
