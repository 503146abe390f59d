"""Colour pictures: background neutralisation, white balance and a luminance stretch.

A colour image is ``(channel, y, x)`` with the channels in the order R, G,
B: an ``xarray.DataArray`` with a ``channel`` dim (its ``channel``
coordinate, when present, must hold ``"R"``, ``"G"``, ``"B"``; it is put in
that order), a Dataset whose ``stack`` is one (its ``coverage`` is
``(channel, y, x)`` or a shared ``(y, x)``), or a numpy/dask array of shape
``(3, ny, nx)``. A pixel is *uncovered in a channel* when that channel's
value is NaN or its coverage is 0; it takes no part in any statistic, and
comes out masked in that channel only.

The picture is made in three steps, on the linear data (nothing here
changes the data themselves):

1. **Background neutralisation** (``neutralise=True``): each channel's sky
   level (the clipped median of its pixels, as the automatic stretch
   measures it) is moved to the mean of the three, so that the sky comes
   out grey. With ``background="plane"``/``"poly2"`` each channel's own
   sky gradient is fitted and subtracted first, which also removes a
   gradient of another colour than the sky's.
2. **White balance**: each channel's signal above its sky is multiplied by
   a factor, ``out_c = sky_c + f_c (x_c - sky_c)``, so the sky stays
   where step 1 put it. ``"stars"`` measures the factors from the stars
   (by default too, but then too few stars leave the colours as they are,
   with a :class:`~bigstack.BigstackWarning`, where ``"stars"`` is an error):
   stars are detected on the luminance, each star's flux is summed in an
   aperture in each channel (a local sky from a ring around it
   subtracted), stars with a clipped (saturated) core or an uncovered
   pixel are left out, and ``f = (F_G / F_R, 1, F_G / F_B)`` with ``F_c``
   the channel's total over the stars: the stars' average colour becomes
   grey. Three numbers give the factors; ``"none"`` leaves the colours.
3. **Luminance stretch**: the stretch (any of the mono ones) is computed on
   the luminance ``L`` (the mean of the covered channels) exactly as for
   a mono image, giving its black point ``b`` and stretched values
   ``s(L)`` in 0..1; each channel then gets ``s(L) (x_c - b) / (L - b)``.
   The ratios ``(x_R - b) : (x_G - b) : (x_B - b)`` are kept, so star
   colours do not wash out to white as they do when each channel is
   stretched on its own. A pixel whose brightest channel would exceed 1 is
   scaled down as a whole (its hue kept); negative values are clipped to
   0, and pixels at or below black are black.
"""

from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from ._errors import BigstackWarning

CHANNELS = ("R", "G", "B")
WHITE_BALANCES = ("stars", "none")
_MIN_STARS = 3  # stars a white balance from the stars needs at least
_APERTURE_FWHM = 2.5  # aperture radius, in star FWHMs
_RING_WIDTH = 4.0  # width of the ring around the aperture that gives the local sky, px
_BAND_PIXELS = 1 << 20  # pixels per row band of the per-pixel steps (bounds their temporaries)


# --------------------------------------------------------------------------
# what is a colour image


def _dataset_parts(image):
    import xarray as xr

    if isinstance(image, xr.Dataset):
        if "stack" not in image.data_vars:
            return image, None
        coverage = image["coverage"] if "coverage" in image.data_vars else None
        return image["stack"], coverage
    return image, None


def is_colour(image):
    """True for a colour image (see the module notes), False for anything else."""
    import xarray as xr

    image, _ = _dataset_parts(image)
    if isinstance(image, xr.DataArray):
        return "channel" in image.dims
    shape = getattr(image, "shape", None)
    return shape is not None and len(shape) == 3 and shape[0] == 3


def _in_rgb_order(array, name):
    """A DataArray with a ``channel`` dim as ``(channel, y, x)`` in the order R, G, B."""
    if array.sizes["channel"] != 3:
        raise ValueError(f"{name}: a colour image has 3 channels (R, G, B), got "
                         f"{array.sizes['channel']}")
    if "channel" in array.coords:
        names = [str(v) for v in array.coords["channel"].values]
        if sorted(names) != sorted(CHANNELS):
            raise ValueError(f"{name}: channels {names} are not R, G, B")
        array = array.sel(channel=list(CHANNELS))
    rest = [d for d in array.dims if d != "channel"]
    if set(rest) == {"y", "x"}:
        array = array.transpose("channel", "y", "x")
    elif len(rest) != 2:
        raise ValueError(f"{name}: a colour image has dims (channel, y, x), got {array.dims}")
    return array


def colour_parts(image, name="image"):
    """``(data, coverage, (ycoord, xcoord))`` of a colour image.

    ``data`` is a numpy or dask array ``(3, ny, nx)`` in R, G, B order;
    ``coverage`` one of the same shape (a shared ``(y, x)`` coverage is
    repeated), or ``None``; the coordinates are numeric 1-D arrays or
    ``None``.
    """
    import xarray as xr

    from ._render import _is_dask, _numeric_coord

    image, coverage = _dataset_parts(image)
    coords = (None, None)
    if isinstance(image, xr.DataArray):
        image = _in_rgb_order(image, name)
        coords = tuple(_numeric_coord(image, dim) for dim in image.dims[1:])
        data = image.data
    elif _is_dask(image):
        data = image
    else:
        data = np.asarray(image)
    if data.ndim != 3 or data.shape[0] != 3:
        raise ValueError(f"{name} must be a colour image (3, y, x), got shape {data.shape}")
    cover = None
    if coverage is not None:
        if "channel" in coverage.dims:
            coverage = _in_rgb_order(coverage, f"{name} coverage")
        elif set(coverage.dims) == {"y", "x"}:
            coverage = coverage.transpose("y", "x").expand_dims(channel=3)
        cover = coverage.data
        if cover.shape != data.shape:
            raise ValueError(f"{name}: coverage shape {cover.shape} differs from the "
                             f"stack's {data.shape}")
    return data, cover, coords


def masked_values(data, coverage):
    """``data`` with NaN where a channel is uncovered (coverage 0); a dask array stays lazy."""
    from ._render import _is_dask

    if coverage is None:
        return data
    if _is_dask(data) or _is_dask(coverage):
        import dask.array as da

        return da.where(coverage > 0, data, np.nan)
    return np.where(coverage > 0, data, np.nan)


# --------------------------------------------------------------------------
# options


def check_white_balance(value):
    """``"stars"``, ``"none"``, three positive factors as a float64 array, or ``"default"``.

    ``None`` is ``"default"``: from the stars when enough are found, else
    none (with a warning).
    """
    if value is None:
        return "default"
    if isinstance(value, str):
        if value not in WHITE_BALANCES:
            raise ValueError(f"white_balance={value!r} is not 'stars', 'none' or three "
                             "factors R, G, B")
        return value
    try:
        factors = [float(v) for v in value]
    except (TypeError, ValueError) as err:
        raise ValueError(f"white_balance={value!r} is not 'stars', 'none' or three "
                         "factors R, G, B") from err
    if len(factors) != 3 or not all(math.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"white_balance={value!r}: give three positive factors R, G, B")
    return np.array(factors)


# --------------------------------------------------------------------------
# the three steps


def sky_levels(rgb):
    """Each channel's sky level (clipped median) and noise (MAD sigma), as arrays of 3.

    The channels are measured on the same pixels: those (of up to a million,
    evenly spaced) whose luminance is within ``3`` sigmas of its clipped
    median, so stars and a bright object are left out of all three alike
    and a gradient weighs the same in each.
    """
    from ._render import _KAPPA, _SKY_SAMPLE, _clipped_sky

    ny, nx = rgb.shape[1:]
    step = max(1, math.ceil(math.sqrt(ny * nx / _SKY_SAMPLE)))
    sub = np.asarray(rgb[:, ::step, ::step], dtype=np.float64)
    lum = luminance(sub)
    finite = np.isfinite(lum)
    sky = finite.copy()
    if finite.any():
        median, sigma = _clipped_sky(lum[finite])
        if sigma > 0:
            sky &= np.abs(np.where(finite, lum, median) - median) <= _KAPPA * sigma
    levels, noise = np.empty(3), np.empty(3)
    for c in range(3):
        channel = sub[c]
        values = channel[sky & np.isfinite(channel)]
        if values.size == 0:
            values = channel[np.isfinite(channel)]
        if values.size == 0:
            raise ValueError(f"channel {CHANNELS[c]} has no covered pixel")
        levels[c], noise[c] = _clipped_sky(values)
    return levels, noise


def neutralise(rgb, skies=None, out=None):
    """``rgb`` with each channel's sky moved to the mean sky level of the three.

    Returns ``(neutralised, skies)``: a new float64 array (or ``out``,
    which may be ``rgb`` itself) and the channels' sky levels before.
    """
    if skies is None:
        skies, _ = sky_levels(rgb)
    if out is None:
        out = np.array(rgb, dtype=np.float64)
    common = float(np.mean(skies))
    for c in range(3):
        out[c] -= skies[c] - common
    return out, skies


def apply_white_balance(rgb, factors, skies, out=None):
    """``sky_c + f_c (x_c - sky_c)`` for each channel: a new float64 array, or ``out``."""
    if out is None:
        out = np.array(rgb, dtype=np.float64)
    for c in range(3):
        if factors[c] != 1.0:
            out[c] -= skies[c]
            out[c] *= factors[c]
            out[c] += skies[c]
    return out


def _bands(shape):
    """Row slices of about ``_BAND_PIXELS`` pixels over an image of ``shape`` ``(ny, nx)``."""
    ny, nx = shape
    rows = max(1, _BAND_PIXELS // max(nx, 1))
    for y0 in range(0, ny, rows):
        yield slice(y0, min(ny, y0 + rows))


def luminance(rgb):
    """The mean of the covered channels (NaN where none is covered), a row band at a time."""
    out = np.empty(rgb.shape[1:])
    for band in _bands(rgb.shape[1:]):
        part = np.asarray(rgb[:, band], dtype=np.float64)
        finite = np.isfinite(part)
        count = finite.sum(axis=0)
        total = np.where(finite, part, 0.0).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[band] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def star_fluxes(rgb, *, n_stars=200):
    """Aperture fluxes ``(3, n)`` of the unsaturated, fully covered stars of ``rgb``.

    Stars are detected on the luminance (:func:`bigstack._detect.detect_stars`);
    each channel's flux is the sum in a circle of ``2.5`` FWHM minus the
    median of a ring around it times the circle's area.
    """
    from ._detect import detect_stars

    lum = luminance(rgb)
    found = detect_stars([(0, lum)], n_stars=n_stars)
    if found["x"].size == 0:
        return np.empty((3, 0))
    fwhm = found["frame_fwhm"] if np.isfinite(found["frame_fwhm"]) else found["filter_fwhm"]
    radius = max(_APERTURE_FWHM * float(fwhm), 3.0)
    outer = radius + _RING_WIDTH
    ny, nx = lum.shape
    top = np.array([np.nanmax(rgb[c]) for c in range(3)])
    half = int(math.ceil(outer))
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1]
    fluxes = []
    for x, y in zip(found["x"], found["y"], strict=True):
        ix, iy = int(round(x)), int(round(y))
        if not (half <= ix < nx - half and half <= iy < ny - half):
            continue
        stamp = rgb[:, iy - half:iy + half + 1, ix - half:ix + half + 1]
        r = np.hypot(xx - (x - ix), yy - (y - iy))
        inside, ring = r <= radius, (r > radius) & (r <= outer)
        if not np.isfinite(stamp[:, r <= outer]).all():
            continue  # an uncovered pixel: the flux would be short in that channel
        # a clipped core: two or more pixels at a channel's maximum
        if any((stamp[c][inside] >= top[c]).sum() >= 2 for c in range(3)):
            continue
        sky = np.median(stamp[:, ring], axis=1)
        fluxes.append(stamp[:, inside].sum(axis=1) - sky * inside.sum())
    if not fluxes:
        return np.empty((3, 0))
    fluxes = np.array(fluxes).T
    return fluxes[:, (fluxes > 0).all(axis=0)]


class TooFewStars(ValueError):
    """Too few stars for a white balance from the stars."""

    def __init__(self, found):
        self.found = found
        super().__init__(
            f"white_balance='stars': only {found} unsaturated, fully covered stars found "
            f"(at least {_MIN_STARS} needed); give the factors R,G,B or 'none'")

    def __reduce__(self):
        return type(self), (self.found,)


def star_white_balance(rgb):
    """White-balance factors ``(F_G / F_R, 1, F_G / F_B)`` from the stars' total fluxes."""
    fluxes = star_fluxes(rgb)
    if fluxes.shape[1] < _MIN_STARS:
        raise TooFewStars(fluxes.shape[1])
    total = fluxes.sum(axis=1)
    return total[1] / total


def stretch_luminance(rgb, norm, lum=None, out=None):
    """Levels ``(3, ny, nx)`` in 0..1: the stretch of the luminance, the colours kept.

    ``norm`` is the stretch computed on the luminance (an astropy
    ``ImageNormalize`` with ``vmin`` its black point); ``lum`` the
    luminance when already computed. NaN where a channel is uncovered.
    Computed a row band at a time into ``out`` (a new array by default; it
    may be ``rgb`` itself).
    """
    if lum is None:
        lum = luminance(rgb)
    if out is None:
        out = np.empty(rgb.shape)
    black = float(norm.vmin)
    for band in _bands(rgb.shape[1:]):
        part = np.asarray(rgb[:, band], dtype=np.float64)
        stretched = np.ma.getdata(norm(lum[band], clip=True)).astype(np.float64)
        above = lum[band] - black
        with np.errstate(invalid="ignore", divide="ignore"):
            scale = np.where(above > 0, stretched / above, 0.0)
            levels = np.clip((part - black) * scale, 0.0, None)
            peak = np.max(np.where(np.isfinite(levels), levels, -np.inf), axis=0)
            levels = np.where(peak > 1.0, levels / np.where(peak > 1.0, peak, 1.0), levels)
        out[:, band] = np.where(np.isfinite(part), np.clip(levels, 0.0, 1.0), np.nan)
    return out


def colour_levels(rgb, *, stretch, log_a, min_percent, max_percent, neutral, white_balance,
                  name="image", copy=True):
    """The three steps on a ``(3, ny, nx)`` float array: levels in 0..1, NaN where uncovered.

    Returns ``(levels, info)``; ``info`` has the channels' ``sky`` levels
    before neutralisation and the ``white_balance`` factors used. The
    steps work in place on a float64 copy of ``rgb`` (with ``copy=False``,
    on ``rgb`` itself when it is a float64 array: the levels replace it).
    """
    from ._render import _norm

    work = np.array(rgb, dtype=np.float64, copy=copy or None)
    if not np.isfinite(work).any():
        raise ValueError(f"{name} has no finite pixel values to set the display range from")
    skies, _ = sky_levels(work)
    info = {"sky": skies}
    if neutral:
        neutralise(work, skies, out=work)
        balance_skies = np.full(3, float(np.mean(skies)))
    else:
        balance_skies = skies
    if not isinstance(white_balance, str):
        factors = np.asarray(white_balance, dtype=np.float64)
    elif white_balance == "none":
        factors = np.ones(3)
    elif white_balance == "default":
        try:
            factors = star_white_balance(work)
        except TooFewStars as err:
            warnings.warn(f"{name}: {err.found} stars usable for a white balance (at least "
                          f"{_MIN_STARS} needed); colours left as they are (give "
                          "white_balance as three factors to set it)", BigstackWarning,
                          stacklevel=4)
            factors = np.ones(3)
    else:
        factors = star_white_balance(work)  # fluxes above a local sky: no level needed
    info["white_balance"] = factors
    apply_white_balance(work, factors, balance_skies, out=work)
    lum = luminance(work)
    norm = _norm(lum, stretch, log_a, min_percent, max_percent, name)
    return stretch_luminance(work, norm, lum, out=work), info


def parse_factors(text):
    """``"R,G,B"`` (three numbers) as a tuple of floats, for the command line."""
    parts = text.split(",")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(isinstance(v, numbers.Real) and v > 0 for v in values):
        raise ValueError(f"expected 'stars', 'none' or three positive factors R,G,B, got "
                         f"{text!r}")
    return values
