"""Cropping, showing and exporting stacked images.

Conventions: images are indexed ``[y, x]`` and drawn with ``y = 0`` at the
bottom (matplotlib's ``origin="lower"``); positions are written ``[x, y]``.

All five functions take a numpy array, a dask array or an
``xarray.DataArray`` with dims ``(..., y, x)``; ``display``, ``save_png``,
``save_tiff`` and ``save_fits`` also take the ``Dataset`` that
:func:`bigstack.stack` returns (variables ``stack`` and ``coverage``) and
then show or write its ``stack``, mono or colour (see "Colour images").

Large lazy images
-----------------
``display`` (and ``save_png`` when asked with ``max_pixels``) never load a
lazy image bigger than ``max_pixels``: they compute a block mean of it
(``dask.array.coarsen`` with square blocks of ``f x f`` pixels, ``f`` the
smallest factor that brings the picture under ``max_pixels``; edge rows and
columns that do not fill a whole block are left out; NaNs are ignored in a
block) and draw that with an ``extent`` in original pixel coordinates.

Automatic stretch
-----------------
``stretch="auto"`` (the default of ``display`` and ``save_png``) is set
from the sky rather than from fixed percentiles, in the manner of the
"screen transfer function" of desktop stacking programs:

* the sky's level and noise are the median and ``1.4826 x MAD`` of (up to
  a million, evenly spaced) finite pixels, with stars and dead pixels
  clipped out at 3 sigma until nothing changes;
* black is 2.8 sigma below the sky median (but not below the darkest
  pixel), white twice as far above black as the brightest pixel: no star
  is clipped, and even in 8 bits no star core is flattened to white;
* between them the midtones transfer function
  ``y = (m - 1) x / ((2m - 1) x - m)`` with its balance ``m`` chosen so
  that the sky median comes out at 0.22: the sky is a dark grey with its
  noise visible (one sigma is about 15 of 255 levels) and faint stars
  stand out.

A sky gradient spreads the sky's values and so lowers the black point and
the contrast of the noise; ``background="plane"`` (or ``"poly2"``)
subtracts a fit of the sky first, for the picture only: the polynomial is
fitted to the 3-sigma clipped medians of a grid of up to 16 x 16 cells, so
stars do not pull it, and cells that stand out from the fit are dropped.
NaN (uncovered) pixels take no part. An image whose finite pixels all
have one value is all sky and comes out at 0.22; an image with no finite
pixel is refused (``ValueError``).

Colour images
-------------
A colour image is indexed ``(channel, y, x)`` with the channels R, G, B: a
DataArray with a ``channel`` dim (put in R, G, B order by its ``channel``
coordinate), a Dataset whose ``stack`` is one (with a ``coverage`` per
channel, or one shared), or an array of shape ``(3, ny, nx)``. ``display``
and ``save_png`` draw it in colour (see :mod:`bigstack._render_colour` for
the formulas):

* ``neutralise=True`` (default) moves each channel's sky median to the mean
  of the three, measured on the same sky pixels in each;
  ``background="plane"``/``"poly2"`` first removes each channel's own
  gradient;
* ``white_balance="stars"`` multiplies each channel's signal above the sky
  so that the stars' total flux is the same in R, G and B; three numbers
  give the factors, ``"none"`` keeps the colours. The default (``None``)
  is ``"stars"``, except that an image with fewer than 3 usable stars
  keeps its colours with a :class:`~bigstack.BigstackWarning` (``"stars"``
  then raises ``ValueError``);
* the stretch (``auto`` or an explicit one) is computed on the luminance,
  the mean of the channels, and each channel is scaled by the same factor
  ``s(L) / (L - black)``: colour ratios above black are kept; a pixel whose
  brightest channel would pass white is scaled down as a whole.

A pixel uncovered in a channel (NaN, or coverage 0) is left out of every
statistic and is empty in that channel only: 0 in a PNG or 16-bit TIFF,
NaN in a 32-bit TIFF, and on screen 0 in that channel (transparent where no
channel is covered). ``cmap`` and ``norm_array`` are for mono images and
refused for colour; ``white_balance`` and ``neutralise`` are refused for
mono.

Unfinished stacks
-----------------
A Dataset or DataArray whose ``attrs["complete"]`` is false comes from a
run that stopped early; ``display``, ``save_png`` and ``save_fits`` refuse
it with :class:`~bigstack.IncompleteStoreError` unless
``allow_incomplete=True``.

FITS layout written by :func:`save_fits`
----------------------------------------
Primary HDU
    The stack, float32. Short scalar attributes (numbers, booleans,
    one-card strings) as header cards: the name upper-cased, as a plain
    keyword when it has at most 8 characters, else as a ``HIERARCH`` card.
    ``NCOMBINE`` (frames used), ``EXPTIME`` (their total exposure, s),
    ``DATE-OBS``/``DATE-END`` (UTC start of the earliest, end of the latest
    frame used) when the attributes ``frames_used``, ``frame_exptime`` and
    ``frame_time`` give them for every frame used.
    ``LTV1``/``LTV2`` (IRAF convention, ``physical = logical - LTV``) when
    the ``x``/``y`` coordinates do not start at 0, e.g. for a cropped
    stack, so pixels map back to the reference grid.
``COVERAGE`` image extension
    The coverage (number of frames per pixel), when given.
Colour stacks
    The primary HDU is a cube ``NAXIS3 = 3`` with the planes R, G, B (the
    layout Siril and PixInsight read as an RGB image), ``CTYPE3 = 'RGB'``
    and ``ROWORDER = 'BOTTOM-UP'`` (the first row is the bottom of the
    picture, the FITS convention and bigstack's); the ``COVERAGE``
    extension is a 3-plane cube too, one coverage per channel (a shared
    ``(y, x)`` coverage is repeated). The values are the stack's own
    (float32, linear); Siril reads float data whose maximum is above 1 as
    on a 0..65535 scale, which a stack of 16-bit frames is.
``PROVENANCE`` binary table
    One row, one column ``JSON``: all the attributes as JSON text (ASCII,
    non-ASCII characters escaped). ``json.loads`` gives them back exactly,
    whatever their length or nesting, which header cards cannot do.
"""

from __future__ import annotations

import datetime
import functools
import json
import math
import numbers
import operator
import os
import re
import warnings

import numpy as np

from ._errors import BigstackWarning, IncompleteStoreError
from ._files import SOFTWARE, atomic_output, mark_png, refuse_existing
from ._render_colour import (
    check_white_balance,
    colour_levels,
    colour_parts,
    is_colour,
    masked_values,
)

__all__ = ["crop", "display", "save_png", "save_fits", "save_tiff"]

STRETCHES = ("auto", "linear", "sqrt", "power", "log", "asinh")
BACKGROUNDS = ("none", "plane", "poly2")

# colormap name -> inverted?  Written as one grey channel by save_png.
_GREY_CMAPS = {"Greys_r": False, "gray": False, "grey": False,
               "Greys": True, "gray_r": True, "grey_r": True}

_FITS_RESERVED = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "EXTNAME",
    "BZERO", "BSCALE", "BLANK", "END", "COMMENT", "HISTORY", "CONTINUE", "GROUPS",
    "LTV1", "LTV2", "LTM1_1", "LTM2_2", "PROVHDU",
}
_KEYWORD = re.compile(r"[A-Z0-9_-]+")
_BITPIX = {"uint8": 8, "int16": 16, "int32": 32, "int64": 64, "float32": -32, "float64": -64}


# --------------------------------------------------------------------------
# what kind of image was given


def _is_dask(data) -> bool:
    import dask.array as da

    return isinstance(data, da.Array)


def _xarray_types():
    import xarray as xr

    return xr.DataArray, xr.Dataset


def _stack_variable(image, name):
    """The ``stack`` variable of a bigstack Dataset, other objects unchanged."""
    _, dataset = _xarray_types()
    if isinstance(image, dataset):
        if "stack" not in image.data_vars:
            raise ValueError(
                f"{name}: the Dataset has no 'stack' variable (it has "
                f"{sorted(map(str, image.data_vars)) or 'none'}); pass the DataArray to use"
            )
        return image["stack"]
    return image


def _unwrap(image, name):
    """Return ``(data, (ycoords, xcoords))`` of a 2-D image.

    ``data`` is a numpy or dask array; the coordinates are numeric 1-D arrays
    for a DataArray that has them, else ``None``.
    """
    dataarray, _ = _xarray_types()
    image = _stack_variable(image, name)
    coords = (None, None)
    if isinstance(image, dataarray):
        if set(image.dims) == {"y", "x"}:
            image = image.transpose("y", "x")
        data = image.data
        if image.ndim == 2:
            coords = tuple(_numeric_coord(image, dim) for dim in image.dims)
    elif _is_dask(image):
        data = image
    else:
        data = np.asarray(image)
    if data.ndim != 2:
        raise ValueError(f"{name} must be a 2-D image (y, x), got shape {data.shape}")
    return data, coords


def _numeric_coord(array, dim):
    if dim not in array.coords:
        return None
    values = np.asarray(array.coords[dim].values)
    if values.ndim != 1 or values.size == 0 or values.dtype.kind not in "iuf":
        return None
    return values


def _check_complete(image, allow_incomplete, stacklevel=3):
    """Refuse (or warn about) an image whose attributes say its stack is unfinished.

    A Dataset or DataArray with ``attrs["complete"]`` false is the product of
    a run that stopped early: its missing tiles are NaN. The store's name and
    the tile counts come from the ``store``, ``tiles_missing`` and
    ``tiles_total`` attributes when present.
    """
    attrs = getattr(image, "attrs", None)
    if not isinstance(image, _xarray_types()) or not isinstance(attrs, dict):
        return
    complete = attrs.get("complete")
    if not isinstance(complete, (bool, np.bool_)) or complete:
        return
    store = attrs.get("store", "<stack>")
    missing, total = attrs.get("tiles_missing"), attrs.get("tiles_total")
    if not allow_incomplete:
        raise IncompleteStoreError(store, missing, total)
    count = (f"{missing} of {total} tiles" if missing is not None and total is not None
             else "some tiles")
    warnings.warn(f"{store}: incomplete stack used as asked ({count} missing, shown as NaN)",
                  BigstackWarning, stacklevel=stacklevel)


# --------------------------------------------------------------------------
# crop


def _as_int(value, name):
    """``value`` as a Python int, or ``None``; whole floats are accepted."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer or None, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        if isinstance(value, numbers.Real) and float(value).is_integer():
            return int(value)
    raise TypeError(f"{name} must be an integer number of pixels or None, got {value!r}")


def _check_range(value, name, upper, what):
    if value is not None and not 0 <= value <= upper:
        raise ValueError(f"crop: {name}={value} is outside the image's {upper} {what} (0..{upper})")


def _crop_window(shape, left, right, top, bottom, origin):
    """Rows ``(y0, y1)`` and columns ``(x0, x1)`` that ``crop`` keeps."""
    ny, nx = shape
    left, right = _as_int(left, "left"), _as_int(right, "right")
    top, bottom = _as_int(top, "top"), _as_int(bottom, "bottom")
    if origin is None:
        _check_range(bottom, "bottom", ny, "rows")
        _check_range(top, "top", ny, "rows")
        _check_range(left, "left", nx, "columns")
        _check_range(right, "right", nx, "columns")
        y0, y1 = bottom or 0, ny if top is None else top
        x0, x1 = left or 0, nx if right is None else right
        rows, cols = f"rows bottom:top = {y0}:{y1}", f"columns left:right = {x0}:{x1}"
    else:
        try:
            position = list(origin)
        except TypeError as err:
            raise TypeError(f"origin must be a position [x, y], got {origin!r}") from err
        if len(position) != 2:
            raise ValueError(f"origin must be a position [x, y], got {origin!r}")
        ox, oy = (_as_int(v, "origin") for v in position)
        if ox is None or oy is None or not (0 <= ox <= nx and 0 <= oy <= ny):
            raise ValueError(
                f"crop: origin=[x, y]={[ox, oy]} is outside the image of {nx} columns "
                f"and {ny} rows"
            )
        for name, value in (("left", left), ("right", right), ("top", top), ("bottom", bottom)):
            if value is not None and value < 0:
                raise ValueError(
                    f"crop: {name}={value} is negative; distances from the origin are >= 0"
                )
        y0 = 0 if bottom is None else oy - bottom
        y1 = ny if top is None else oy + top
        x0 = 0 if left is None else ox - left
        x1 = nx if right is None else ox + right
        for name, value, bad, edge in (
            ("bottom", bottom, y0 < 0, f"below row 0 (origin y = {oy})"),
            ("top", top, y1 > ny, f"above the top row {ny - 1} (origin y = {oy})"),
            ("left", left, x0 < 0, f"left of column 0 (origin x = {ox})"),
            ("right", right, x1 > nx, f"right of the last column {nx - 1} (origin x = {ox})"),
        ):
            if bad:
                raise ValueError(f"crop: {name}={value} reaches {edge}")
        rows, cols = f"rows {y0}:{y1}", f"columns {x0}:{x1}"
    if y1 <= y0:
        raise ValueError(f"crop leaves no rows: {rows}")
    if x1 <= x0:
        raise ValueError(f"crop leaves no columns: {cols}")
    return (y0, y1), (x0, x1)


def crop(image, left=None, right=None, top=None, bottom=None, origin=None):
    """Cut a rectangle out of an image.

    Images are indexed ``[y, x]`` with ``y = 0`` the bottom row as drawn, so
    ``top`` and ``bottom`` are row numbers, ``left`` and ``right`` column
    numbers.

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array, xarray.DataArray or xarray.Dataset
        Indexed ``(..., y, x)``; an xarray object needs ``y`` and ``x`` dims
        (a DataArray without them is cut on its last two dims).
    left, right, top, bottom : int or None
        Without ``origin``: keep rows ``bottom:top`` and columns
        ``left:right`` with Python slice meaning (end excluded, ``None`` to
        the edge), i.e. ``image[bottom:top, left:right]``. With ``origin``:
        distances from the origin, ``None`` meaning to the edge: keeps
        ``image[oy - bottom:oy + top, ox - left:ox + right]``.
    origin : [x, y], optional
        A position (written ``[x, y]``, e.g. from ``find_star``) that the
        four values are measured from.

    Returns
    -------
    same type as ``image``
        A numpy view, a lazy dask slice, or the xarray object cut with
        ``isel``; its ``y``/``x`` coordinates are the original pixel indices
        of the rows and columns kept (added when the input had none), so a
        cropped stack still knows where it sits on the reference grid.

    Raises
    ------
    ValueError
        A negative value, a value beyond the image (numpy would wrap or clip
        silently; here the message names the parameter), or a crop that
        leaves no pixels.
    TypeError
        A value that is not a whole number of pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from bigstack import crop
    >>> image = np.arange(6 * 8).reshape(6, 8)
    >>> crop(image, left=2, right=5, top=4, bottom=1).shape
    (3, 3)
    >>> crop(image, left=1, right=2, top=1, bottom=1, origin=[4, 3]).tolist()
    [[19, 20, 21], [27, 28, 29]]
    """
    dataarray, dataset = _xarray_types()
    if isinstance(image, (dataarray, dataset)):
        dims = tuple(image.dims)
        if "y" in dims and "x" in dims:
            ydim, xdim = "y", "x"
        elif isinstance(image, dataarray) and image.ndim >= 2:
            ydim, xdim = dims[-2:]
        else:
            raise ValueError(f"crop needs an image with 'y' and 'x' dims, got dims {dims}")
        shape = (image.sizes[ydim], image.sizes[xdim])
        (y0, y1), (x0, x1) = _crop_window(shape, left, right, top, bottom, origin)
        out = image.isel({ydim: slice(y0, y1), xdim: slice(x0, x1)})
        if ydim not in image.coords:
            out = out.assign_coords({ydim: np.arange(y0, y1)})
        if xdim not in image.coords:
            out = out.assign_coords({xdim: np.arange(x0, x1)})
        return out
    data = image if _is_dask(image) else np.asarray(image)
    if data.ndim < 2:
        raise ValueError(f"crop needs an image of at least 2 dims (y, x), got shape {data.shape}")
    (y0, y1), (x0, x1) = _crop_window(data.shape[-2:], left, right, top, bottom, origin)
    return data[..., y0:y1, x0:x1]


# --------------------------------------------------------------------------
# decimation of large lazy images


def _check_max_pixels(max_pixels):
    if max_pixels is not None:
        if isinstance(max_pixels, bool) or not isinstance(max_pixels, numbers.Integral):
            raise TypeError(f"max_pixels must be a whole number or None, got {max_pixels!r}")
        if max_pixels < 1:
            raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")


def _block_factors(shape, max_pixels) -> tuple[int, int]:
    """Block sizes ``(fy, fx)`` bringing ``shape`` under ``max_pixels`` (square when possible)."""
    ny, nx = shape
    if max_pixels is None or ny * nx <= max_pixels:
        return 1, 1
    f = max(2, math.ceil(math.sqrt(ny * nx / max_pixels)))
    while True:
        fy, fx = min(f, ny), min(f, nx)
        if (ny // fy) * (nx // fx) <= max_pixels:
            return fy, fx
        f += 1


def _block_mean(data, fy, fx) -> np.ndarray:
    """Mean of the finite values in each ``fy x fx`` block (NaN where none).

    Edge rows and columns that do not fill a block are left out. A dask
    array is reduced chunk by chunk and only the small result is computed.
    """
    ny, nx = (data.shape[0] // fy) * fy, (data.shape[1] // fx) * fx
    data = data[:ny, :nx].astype(np.float64)
    finite = np.isfinite(data)
    values = np.where(finite, data, 0.0)
    count = finite.astype(np.int64)
    if _is_dask(data):
        import dask.array as da

        total = da.coarsen(np.sum, values, {0: fy, 1: fx})
        count = da.coarsen(np.sum, count, {0: fy, 1: fx})
    else:
        total = values.reshape(ny // fy, fy, nx // fx, fx).sum(axis=(1, 3))
        count = count.reshape(ny // fy, fy, nx // fx, fx).sum(axis=(1, 3))
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return np.asarray(mean)


def _edges(coord, used):
    """Outer pixel edges ``(first, last)`` of the first ``used`` pixels along one axis."""
    if coord is None:
        return -0.5, used - 0.5
    step = float(coord[1] - coord[0]) if coord.size > 1 else 1.0
    return float(coord[0]) - step / 2, float(coord[used - 1]) + step / 2


def _picture(image, name, max_pixels, decimate_eager):
    """The 2-D numpy array to draw and its extent (or ``None`` for the default).

    Lazy images over ``max_pixels`` (also eager ones with ``decimate_eager``)
    are replaced by their block mean.
    """
    data, (ycoord, xcoord) = _unwrap(image, name)
    lazy = _is_dask(data)
    fy, fx = _block_factors(data.shape, max_pixels) if lazy or decimate_eager else (1, 1)
    if (fy, fx) != (1, 1):
        picture = _block_mean(data, fy, fx)
    else:
        picture = np.asarray(data)
    return picture, _extent(picture.shape, fy, fx, ycoord, xcoord)


def _extent(shape, fy, fx, ycoord, xcoord):
    """imshow's extent of a picture of ``shape`` made of ``fy x fx`` blocks (``None``: default)."""
    if ycoord is None and xcoord is None and (fy, fx) == (1, 1):
        return None
    ny, nx = shape[0] * fy, shape[1] * fx
    left, right = _edges(xcoord, nx)
    bottom, top = _edges(ycoord, ny)
    return left, right, bottom, top


def _colour_picture(image, name, max_pixels, decimate_eager):
    """The ``(3, ny, nx)`` float64 array of a colour image to draw, and its extent.

    Uncovered pixels (NaN, or coverage 0) are NaN in their channel; lazy
    images over ``max_pixels`` (also eager ones with ``decimate_eager``)
    are replaced by each channel's block mean.
    """
    data, coverage, (ycoord, xcoord) = colour_parts(image, name)
    data = masked_values(data, coverage)
    lazy = _is_dask(data)
    shape = data.shape[1:]
    fy, fx = _block_factors(shape, max_pixels) if lazy or decimate_eager else (1, 1)
    if (fy, fx) != (1, 1):
        rgb = np.stack([_block_mean(data[c], fy, fx) for c in range(3)])
    else:
        rgb = np.array(data, dtype=np.float64)  # a copy: the steps work on it in place
    return rgb, _extent(rgb.shape[1:], fy, fx, ycoord, xcoord)


def _check_colour_options(image, white_balance, neutralise):
    """``(colour?, white_balance, neutralise)``: the colour options checked and defaulted.

    They are refused for a mono image, which would not use them.
    """
    if not is_colour(image):
        for option, value in (("white_balance", white_balance), ("neutralise", neutralise)):
            if value is not None:
                raise ValueError(f"{option}={value!r} is for colour images (channel, y, x); "
                                 "this image is mono")
        return False, None, None
    return True, check_white_balance(white_balance), True if neutralise is None else \
        bool(neutralise)


def _refuse_for_colour(cmap, norm_array):
    if norm_array is not None:
        raise ValueError("norm_array is for mono images; a colour image's range is set from "
                         "its own luminance")
    if cmap is not None and _grey_inversion(cmap) is not False:
        raise ValueError(f"cmap={cmap!r} is for mono images; a colour image is drawn in its "
                         "own colours")


def _colour_render(image, name, *, stretch, log_a, min_percent, max_percent, background,
                   max_pixels, decimate_eager, white_balance, neutralise):
    """Levels ``(3, ny, nx)`` in 0..1 (NaN where uncovered), the extent and the steps' info."""
    rgb, extent = _colour_picture(image, name, max_pixels, decimate_eager)
    if background != "none":
        rgb = np.stack([_flatten(rgb[c], background) for c in range(3)])
    levels, info = colour_levels(rgb, stretch=stretch, log_a=log_a, min_percent=min_percent,
                                 max_percent=max_percent, neutral=neutralise,
                                 white_balance=white_balance, name=name, copy=False)
    return levels, extent, info


def _colour_pixels(levels, bits):
    """PNG/TIFF pixels ``(ny, nx, 3)`` of ``bits`` bits, top row first; uncovered: 0."""
    top = 2**bits - 1
    ny, nx = levels.shape[1:]
    pixels = np.empty((ny, nx, 3), np.uint8 if bits == 8 else np.uint16)
    rows = max(1, 2**20 // max(nx, 1))  # a band at a time: no full-size float temporaries
    for y0 in range(0, ny, rows):
        band = levels[:, y0:y0 + rows]
        values = np.rint(np.where(np.isfinite(band), band, 0.0) * top)
        pixels[ny - y0 - band.shape[1]:ny - y0] = values.transpose(1, 2, 0)[::-1]
    return pixels


# --------------------------------------------------------------------------
# stretch

AUTO_TARGET = 0.22  # output level (0..1) of the sky median under stretch="auto"
AUTO_SHADOWS = 2.8  # black point of stretch="auto": this many sky sigmas below the sky
AUTO_HEADROOM = 2.0  # white point of stretch="auto": this many times the brightest pixel's
# height above black. The transfer function squeezes the top of its range
# (with white at the brightest pixel the top quarter of it is one 8-bit level),
# so the headroom keeps bright star cores from flattening into white discs.
_KAPPA = 3.0  # sigma clipping of stars (and dead pixels) out of the sky statistics
_SKY_SAMPLE = 1_000_000  # pixels the sky statistics are measured on, at most
_GRID_SAMPLE = 300_000  # pixels the background grid is measured on, about (~1000 a cell)
_GRID_CELLS = 16  # cells per side of the background grid, at most
_GRID_CELL_SIZE = 8  # pixels per side of a background cell, at least
_BACKGROUND_TERMS = {
    "plane": ((0, 0), (1, 0), (0, 1)),
    "poly2": ((0, 0), (1, 0), (0, 1), (2, 0), (1, 1), (0, 2)),
}  # exponents (i, j) of the terms x**i * y**j


def _check_stretch(stretch, log_a, min_percent, max_percent):
    """The stretch to use (``None`` is ``"auto"``); refuses options that auto would ignore."""
    if stretch is None:
        stretch = "auto"
    if not isinstance(stretch, str) or stretch not in STRETCHES:
        raise ValueError(f"stretch={stretch!r} is not one of {', '.join(STRETCHES)}")
    if stretch == "auto":
        for name, value in (("log_a", log_a), ("min_percent", min_percent),
                            ("max_percent", max_percent)):
            if value is not None:
                raise ValueError(
                    f"{name}={value!r} is for the explicit stretches "
                    f"({', '.join(STRETCHES[1:])}); stretch='auto' sets its range from the sky"
                )
    return stretch


def _check_background(background):
    if background is None:
        background = "none"
    if not isinstance(background, str) or background not in BACKGROUNDS:
        raise ValueError(f"background={background!r} is not one of {', '.join(BACKGROUNDS)}")
    return background


def _norm(values, stretch, log_a, min_percent, max_percent, name):
    """The normalisation of ``stretch`` computed from the finite ``values`` only."""
    if stretch == "auto":
        return _auto_norm(values, name)
    from astropy.visualization import simple_norm

    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(f"{name} has no finite pixel values to set the display range from")
    return simple_norm(finite, stretch=stretch, log_a=1000 if log_a is None else log_a,
                       min_percent=0 if min_percent is None else min_percent,
                       max_percent=100 if max_percent is None else max_percent)


def _sample(values, size):
    """About ``size`` finite values of the 2-D ``values`` on an even grid, as float64."""
    ny, nx = values.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / size)))
    sample = np.asarray(values[::step, ::step], dtype=np.float64).ravel()
    sample = sample[np.isfinite(sample)]
    if step > 1 and sample.size < 1000:  # mostly uncovered: take every finite pixel
        sample = np.asarray(values, dtype=np.float64)
        sample = sample[np.isfinite(sample)]
    return sample


def _clipped_sky(sample):
    """Median and noise sigma (1.4826 x MAD) of ``sample`` with outliers clipped.

    Values beyond ``_KAPPA`` sigmas of the median (stars, hot and dead
    pixels) are left out and the two are measured again, until nothing
    changes.
    """
    kept = sample
    for _ in range(10):
        median = float(np.median(kept))
        sigma = 1.4826 * float(np.median(np.abs(kept - median)))
        if sigma == 0:
            break
        inside = sample[np.abs(sample - median) <= _KAPPA * sigma]
        if inside.size == kept.size:
            break
        kept = inside
    return median, sigma


def _mtf(midtone, x):
    """Midtones transfer function: maps 0 -> 0, ``midtone`` -> 0.5, 1 -> 1.

    ``(m - 1) x / ((2m - 1) x - m)``; ``_mtf(t, x)`` is also the balance
    ``m`` that maps ``x`` to ``t``, and ``_mtf(1 - m, .)`` undoes ``_mtf(m, .)``.
    """
    return (midtone - 1.0) * x / ((2.0 * midtone - 1.0) * x - midtone)


def _auto_levels(values, name):
    """``(black, white, midtone)`` of the automatic stretch of the 2-D ``values``.

    Black a little below the sky (``AUTO_SHADOWS`` sky sigmas, not below
    the darkest pixel), white ``AUTO_HEADROOM`` times as far above black as
    the brightest pixel, and the midtones balance that puts the sky median
    at ``AUTO_TARGET``. A constant image is
    all sky: it comes out at ``AUTO_TARGET``.
    """
    sample = _sample(values, _SKY_SAMPLE)
    if sample.size == 0:
        raise ValueError(f"{name} has no finite pixel values to set the display range from")
    finite = np.isfinite(values)
    low = float(np.min(values, where=finite, initial=np.inf))
    high = float(np.max(values, where=finite, initial=-np.inf))
    if high == low:
        half = max(abs(high), 1.0) * 1e-3
        return high - half, high + half, _mtf(AUTO_TARGET, 0.5)
    median, sigma = _clipped_sky(sample)
    if sigma == 0:  # over half the pixels share one value (e.g. quantised): use the spread
        sigma = float(np.std(sample))
    if sigma == 0:
        sigma = float(np.std(np.asarray(values, dtype=np.float64)[finite]))
    black = median - AUTO_SHADOWS * sigma
    if black < low < median:
        black = low
    white = black + AUTO_HEADROOM * (max(high, median + sigma) - black)
    sky = (median - black) / (white - black)
    return black, white, _mtf(AUTO_TARGET, sky)


@functools.cache
def _midtones_stretch():
    """astropy stretch class of the midtones transfer function (made on first use)."""
    from astropy.visualization import BaseStretch

    class MidtonesStretch(BaseStretch):
        """Midtones transfer function with balance ``midtone`` on values in 0..1."""

        def __init__(self, midtone):
            super().__init__()
            self.midtone = float(midtone)

        def __call__(self, values, clip=True, out=None):
            if out is None:
                out = np.array(values, dtype=np.float64)
            elif out is not values:
                out[...] = values
            if clip:
                np.clip(out, 0.0, 1.0, out=out)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[...] = _mtf(self.midtone, out)
            return out

        @property
        def inverse(self):
            return MidtonesStretch(1.0 - self.midtone)

    return MidtonesStretch


def _auto_norm(values, name):
    from astropy.visualization import ImageNormalize

    black, white, midtone = _auto_levels(values, name)
    return ImageNormalize(vmin=black, vmax=white, stretch=_midtones_stretch()(midtone),
                          clip=True)


# --------------------------------------------------------------------------
# background flattening (for display only)


def _sky_grid(values):
    """Clipped sky medians on a coarse grid of cells: ``(y, x, level)`` of the usable cells.

    ``y``, ``x`` are the cells' centres in pixels of ``values``. Each cell's
    stars are clipped (``_KAPPA`` sigmas, repeated); a cell less than half
    covered by finite pixels is not used.
    """
    ny, nx = values.shape
    step = max(1, math.ceil(math.sqrt(ny * nx / _GRID_SAMPLE)))
    sub = np.asarray(values[::step, ::step], dtype=np.float64)
    sy, sx = sub.shape
    gy = max(1, min(_GRID_CELLS, sy // _GRID_CELL_SIZE))
    gx = max(1, min(_GRID_CELLS, sx // _GRID_CELL_SIZE))
    cy, cx = sy // gy, sx // gx
    cells = sub[:gy * cy, :gx * cx].reshape(gy, cy, gx, cx).transpose(0, 2, 1, 3)
    cells = cells.reshape(gy * gx, cy * cx).copy()
    covered = np.isfinite(cells).sum(axis=1) >= cells.shape[1] / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells give NaN, as wanted
        for _ in range(10):
            median = np.nanmedian(cells, axis=1, keepdims=True)
            sigma = 1.4826 * np.nanmedian(np.abs(cells - median), axis=1, keepdims=True)
            out = np.abs(cells - median) > _KAPPA * sigma
            if not out.any():
                break
            cells[out] = np.nan
        level = np.nanmedian(cells, axis=1)
    iy, ix = np.divmod(np.arange(gy * gx), gx)
    y = (iy * cy + (cy - 1) / 2) * step
    x = (ix * cx + (cx - 1) / 2) * step
    use = covered & np.isfinite(level)
    return y[use], x[use], level[use]


def _flatten(picture, background):
    """``picture`` minus a robust polynomial fit of its sky, plus the fit's value at the centre.

    The polynomial (``"plane"`` or ``"poly2"``, in ``x`` and ``y``) is fitted
    by least squares to the clipped medians of a coarse grid of cells
    (:func:`_sky_grid`); cells that stand out from the fit by more than
    ``_KAPPA`` times the residuals' MAD sigma (a galaxy, a bright star's halo)
    are dropped and the fit repeated. NaN pixels stay NaN.
    """
    if background == "none":
        return picture
    powers = _BACKGROUND_TERMS[background]
    ny, nx = picture.shape

    def scaled(y, x):  # coordinates in -1..1 over the picture keep the fit well conditioned
        return (x - (nx - 1) / 2) / max(nx / 2, 1), (y - (ny - 1) / 2) / max(ny / 2, 1)

    y, x, level = _sky_grid(picture)
    u, v = scaled(y, x)
    design = np.stack([u**i * v**j for i, j in powers], axis=1)
    need = len(powers) + 1
    use = np.ones(level.size, bool)
    if level.size < need:
        if not np.isfinite(picture).any():
            return picture  # nothing to flatten; the stretch reports the empty image
        raise ValueError(
            f"background={background!r}: only {level.size} covered sky cells in a "
            f"{nx} x {ny} picture; fitting needs at least {need}"
        )
    for _ in range(10):
        coef = np.linalg.lstsq(design[use], level[use], rcond=None)[0]
        residual = level - design @ coef
        spread = 1.4826 * float(np.median(np.abs(residual[use] - np.median(residual[use]))))
        keep = np.abs(residual) <= _KAPPA * spread if spread > 0 else use
        if keep.sum() < need or np.array_equal(keep, use):
            break
        use = keep
    dtype = np.result_type(picture.dtype, np.float32)
    out = np.array(picture, dtype=dtype)
    u = scaled(0.0, np.arange(nx, dtype=np.float64))[0]
    rows = max(1, 4_000_000 // max(nx, 1))
    for y0 in range(0, ny, rows):  # the model a band at a time: no full-size float64 copy
        v = scaled(np.arange(y0, min(ny, y0 + rows), dtype=np.float64)[:, None], 0.0)[1]
        model = sum(c * u**i * v**j for c, (i, j) in zip(coef[1:], powers[1:], strict=True))
        out[y0:y0 + rows] -= model.astype(dtype, copy=False)
    return out


def _mono_norm(picture, norm_array, stretch, log_a, min_percent, max_percent, background,
               max_pixels, decimate_eager):
    """The stretch of a mono picture, computed from it or from ``norm_array``."""
    if norm_array is None:
        return _norm(picture, stretch, log_a, min_percent, max_percent, "image")
    norm_values, _ = _picture(norm_array, "norm_array", max_pixels, decimate_eager)
    norm_values = _flatten(norm_values, background)
    return _norm(norm_values, stretch, log_a, min_percent, max_percent, "norm_array")


def display(image, stretch=None, log_a=None, norm_array=None, min_percent=None,
            max_percent=None, cmap="Greys_r", fig=None, ax=None, title=None, xlim=None,
            ylim=None, max_pixels=4_000_000, background="none", allow_incomplete=False,
            white_balance=None, neutralise=None):
    """Show an image with matplotlib, origin at the lower left.

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array, xarray.DataArray or xarray.Dataset
        A 2-D image indexed ``[y, x]`` (a Dataset from :func:`bigstack.stack`
        shows its ``stack``). A numpy image is drawn in full, as the
        tutorial does; a lazy one over ``max_pixels`` pixels is drawn as a
        block mean (see the module notes) computed without loading it.
    stretch : {None, "auto", "log", "linear", "sqrt", "power", "asinh"}
        ``None`` or ``"auto"``: the automatic stretch set from the sky's
        level and noise (see the module notes). The others are the
        stretches of astropy's :func:`~astropy.visualization.simple_norm`.
    log_a : float, optional
        Exponent of the ``log`` stretch (default 1000).
    norm_array : array-like, optional
        Image that the display range is computed from instead of
        ``image`` (e.g. a single frame, free of the dark uncovered edges of
        a stack). Decimated like ``image`` when lazy and large.
    min_percent, max_percent : float, optional
        Explicit stretches: percentiles of the finite pixel values that map
        to black and white (default 0 and 100). ``log_a`` and the
        percentiles are refused with the automatic stretch, which would
        not use them.
    cmap : str or matplotlib.colors.Colormap
        Colormap.
    fig, ax : matplotlib Figure and Axes, optional
        Where to draw. With ``ax`` the image goes there; with only ``fig``
        on its current axes; with neither a new figure is made
        (``plt.subplots()``).
    title : str, optional
        Axes title.
    xlim, ylim : (float, float), optional
        Axis limits, in pixel coordinates of the image.
    max_pixels : int or None
        Largest lazy image drawn pixel for pixel; ``None`` never decimates.
    background : {"none", "plane", "poly2"}
        Subtract a robust fit of the sky (a plane, or a polynomial of
        degree 2 in ``x`` and ``y``) before stretching, so that a sky
        gradient does not hide faint detail. For the picture only: the
        data are not changed; the values drawn keep the fitted sky's level
        at the picture's centre.
        A ``norm_array`` is flattened too (with its own fit) before the
        range is taken from it.
    allow_incomplete : bool
        Show a stack whose attributes say it is unfinished (its missing
        tiles are NaN), with a :class:`~bigstack.BigstackWarning`.
    white_balance : {None, "stars", "none"} or (float, float, float)
        Colour images only: factors for R, G, B measured from the average
        colour of the stars, none, or given. The default is from the stars
        when at least 3 are usable, else none with a warning. See
        "Colour images" in the module notes.
    neutralise : bool, optional
        Colour images only (default true): move each channel's sky median
        to a common level, so the sky is grey.

    Returns
    -------
    matplotlib.image.AxesImage
        The image drawn. Axes are in pixel coordinates: for a DataArray its
        ``x``/``y`` coordinate values (a cropped stack shows reference-grid
        pixels), else column and row indices.

    Raises
    ------
    ValueError
        An unknown stretch or background (the allowed ones are listed), an
        option the stretch would not use, an image that is not 2-D, or one
        with no finite values.
    bigstack.IncompleteStoreError
        An unfinished stack (``attrs["complete"]`` false) without
        ``allow_incomplete``.

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")
    >>> import numpy as np
    >>> from bigstack import display
    >>> image = np.random.default_rng(0).gamma(2.0, 100.0, (64, 96))
    >>> img = display(image, title="a noisy frame")
    >>> img.origin, img.get_array().shape
    ('lower', (64, 96))
    """
    stretch = _check_stretch(stretch, log_a, min_percent, max_percent)
    background = _check_background(background)
    _check_max_pixels(max_pixels)
    colour, white_balance, neutralise = _check_colour_options(image, white_balance, neutralise)
    if colour:
        _refuse_for_colour(cmap, norm_array)
    _check_complete(image, allow_incomplete)
    if colour:
        levels, extent, _ = _colour_render(
            image, "image", stretch=stretch, log_a=log_a, min_percent=min_percent,
            max_percent=max_percent, background=background, max_pixels=max_pixels,
            decimate_eager=False, white_balance=white_balance, neutralise=neutralise)
        covered = np.isfinite(levels)
        rgba = np.concatenate([np.where(covered, levels, 0.0),
                               covered.any(axis=0, keepdims=True).astype(np.float64)])
        picture, norm, cmap = rgba.transpose(1, 2, 0), None, None
    else:
        picture, extent = _picture(image, "image", max_pixels, decimate_eager=False)
        picture = _flatten(picture, background)
        norm = _mono_norm(picture, norm_array, stretch, log_a, min_percent, max_percent,
                          background, max_pixels, decimate_eager=False)

    import matplotlib.pyplot as plt

    if ax is None:
        if fig is None:
            fig, ax = plt.subplots()
        else:
            ax = fig.gca()
    kwargs = {} if extent is None else {"extent": extent}
    img = ax.imshow(picture, origin="lower", cmap=cmap, norm=norm, **kwargs)
    if title is not None:
        ax.set_title(title)
    if xlim is not None:
        ax.set_xlim(xlim)
    if ylim is not None:
        ax.set_ylim(ylim)
    return img


# --------------------------------------------------------------------------
# PNG


def _grey_inversion(cmap):
    """``False``/``True`` for a grey colormap (plain/inverted), ``None`` for a colour one."""
    if cmap is None:
        return False
    if isinstance(cmap, str):
        return _GREY_CMAPS.get(cmap)
    return None


def save_png(image, path, *, stretch=None, log_a=None, norm_array=None, min_percent=None,
             max_percent=None, cmap="Greys_r", max_pixels=None, overwrite=False, bits=8,
             background="none", allow_incomplete=False, white_balance=None, neutralise=None):
    """Write an image as a PNG, one image pixel per PNG pixel, origin at the lower left.

    The image is stretched exactly as :func:`display` does (by default the
    automatic stretch; else astropy's ``simple_norm`` on the finite values
    of ``norm_array`` or the image), clipped to 0..1 and written with row
    ``y = 0`` at the bottom of the picture. Grey colormaps (``"Greys_r"``,
    ``"gray"``, ``"grey"`` and their inverses ``"Greys"``, ``"gray_r"``,
    ``"grey_r"``) give a one-channel grey PNG; any other matplotlib colormap
    an 8-bit RGB PNG. NaN (uncovered) pixels get the lowest level.

    A colour image (``(channel, y, x)``, see the module notes) gives an RGB
    PNG of 8 or 16 bits per channel, made as "Colour images" describes;
    a pixel uncovered in a channel gets that channel's lowest level.

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array, xarray.DataArray or xarray.Dataset
        A 2-D image indexed ``[y, x]``, or a colour image ``(channel, y,
        x)``; a Dataset from :func:`bigstack.stack` writes its ``stack``
        (a colour one with its per-channel ``coverage``).
    path : str or path-like
        The PNG file to write.
    stretch, log_a, norm_array, min_percent, max_percent, cmap, background
        As for :func:`display`.
    white_balance, neutralise
        Colour images only, as for :func:`display`.
    max_pixels : int, optional
        Write at most this many pixels: a larger image (lazy or not) is
        reduced to its block mean first, as :func:`display` does. By default
        the image is written in full, which computes all of a lazy image.
    overwrite : bool
        Replace an existing file. The file is written under a temporary
        name and renamed, so a failure never leaves a partial PNG.
    bits : {8, 16}
        Levels per channel; 16 is for grey colormaps and colour images.
    allow_incomplete : bool
        Write a stack whose attributes say it is unfinished (its missing
        tiles are NaN, drawn black), with a :class:`~bigstack.BigstackWarning`.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false (checked before any
        computing).
    ValueError
        An unknown stretch, background or colormap, an option the stretch
        would not use, ``bits`` not 8 or 16, 16 bits with a colour map, or
        an image that is not 2-D.
    bigstack.IncompleteStoreError
        An unfinished stack (``attrs["complete"]`` false) without
        ``allow_incomplete`` (checked before any computing).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from bigstack import save_png
    >>> image = np.random.default_rng(0).gamma(2.0, 100.0, (64, 96))
    >>> path = save_png(image, os.path.join(tempfile.mkdtemp(), "frame.png"))
    >>> os.path.getsize(path) > 0
    True
    """
    path = os.fspath(path)
    stretch = _check_stretch(stretch, log_a, min_percent, max_percent)
    background = _check_background(background)
    _check_max_pixels(max_pixels)
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits!r}")
    colour, white_balance, neutralise = _check_colour_options(image, white_balance, neutralise)
    if colour:
        _refuse_for_colour(cmap, norm_array)
        refuse_existing(path, overwrite)
        _check_complete(image, allow_incomplete)
        levels, _, _ = _colour_render(
            image, "image", stretch=stretch, log_a=log_a, min_percent=min_percent,
            max_percent=max_percent, background=background, max_pixels=max_pixels,
            decimate_eager=True, white_balance=white_balance, neutralise=neutralise)
        _write_png(path, _colour_pixels(levels, bits), overwrite)
        return path
    inverted = _grey_inversion(cmap)
    colormap = None
    if inverted is None:
        import matplotlib

        try:
            colormap = matplotlib.colormaps[cmap] if isinstance(cmap, str) else cmap
        except KeyError as err:
            raise ValueError(f"cmap={cmap!r} is not a matplotlib colormap") from err
        if bits != 8:
            raise ValueError(
                f"bits={bits} is for grey PNGs only; cmap={cmap!r} gives an 8-bit colour PNG"
            )
    refuse_existing(path, overwrite)
    _check_complete(image, allow_incomplete)

    levels = _mono_levels(image, stretch, log_a, norm_array, min_percent, max_percent,
                          background, max_pixels)
    if colormap is None:
        if inverted:
            levels = 1.0 - levels
        top = 2**bits - 1
        pixels = np.rint(levels * top).astype(np.uint8 if bits == 8 else np.uint16)
    else:
        rgba = colormap(levels)
        pixels = np.rint(rgba[..., :3] * 255).astype(np.uint8)
    _write_png(path, np.ascontiguousarray(pixels[::-1]), overwrite)
    return path


def _mono_levels(image, stretch, log_a, norm_array, min_percent, max_percent, background,
                 max_pixels):
    """The stretched levels (0..1, NaN as 0) of a mono image, decimated to ``max_pixels``."""
    picture, _ = _picture(image, "image", max_pixels, decimate_eager=True)
    picture = _flatten(picture, background)
    norm = _mono_norm(picture, norm_array, stretch, log_a, min_percent, max_percent, background,
                      max_pixels, decimate_eager=True)
    levels = np.ma.getdata(norm(picture, clip=True)).astype(np.float64)
    levels[~np.isfinite(levels)] = 0.0
    np.clip(levels, 0.0, 1.0, out=levels)
    return levels


def _write_png(path, pixels, overwrite):
    """Encode ``pixels`` (top row first) as a PNG marked as bigstack's, written atomically."""
    import imagecodecs

    encoded = mark_png(imagecodecs.png_encode(pixels))
    with atomic_output(path, overwrite) as tmp, open(tmp, "wb") as f:
        f.write(encoded)


# --------------------------------------------------------------------------
# TIFF


def save_tiff(image, path, *, bits=16, stretch=None, log_a=None, min_percent=None,
              max_percent=None, max_pixels=None, overwrite=False, background="none",
              allow_incomplete=False, white_balance=None, neutralise=None):
    """Write an image as a TIFF: a 16-bit picture, or the linear values as 32-bit floats.

    Row ``y = 0`` is the bottom row of the picture, as in :func:`save_png`.
    The file's ``Software`` tag (305) says bigstack, so ``overwrite`` can
    replace it later.

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array, xarray.DataArray or xarray.Dataset
        A 2-D image ``[y, x]`` (a grey TIFF) or a colour image ``(channel,
        y, x)`` (an RGB TIFF); a Dataset from :func:`bigstack.stack` writes
        its ``stack``.
    path : str or path-like
        The TIFF file to write.
    bits : {16, 32}
        16: the picture :func:`save_png` makes with ``bits=16`` (stretched,
        0..65535; uncovered pixels 0). 32: the data themselves as float32,
        not stretched, uncovered pixels NaN (in their channel), for further
        processing in another program; the stretch and colour options are
        then refused.
    stretch, log_a, min_percent, max_percent, background, white_balance, neutralise
        As for :func:`display` (``bits=16`` only).
    max_pixels : int, optional
        Write at most this many pixels (block means), as :func:`save_png`.
    overwrite, allow_incomplete : bool
        As for :func:`save_png`.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false (checked before any
        computing).
    ValueError
        ``bits`` not 16 or 32, a stretch or colour option with ``bits=32``,
        or what :func:`save_png` refuses.
    bigstack.BigstackError
        tifffile is not installed.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np, tifffile
    >>> from bigstack import save_tiff
    >>> image = np.random.default_rng(0).gamma(2.0, 100.0, (3, 64, 96))
    >>> path = save_tiff(image, os.path.join(tempfile.mkdtemp(), "pic.tif"), bits=32)
    >>> back = tifffile.imread(path)
    >>> back.shape, back.dtype.name, bool(back[-1, 0, 1] == np.float32(image[1, 0, 0]))
    ((64, 96, 3), 'float32', True)
    """
    try:
        import tifffile
    except ImportError as err:
        from ._errors import BigstackError

        raise BigstackError("TIFF output needs tifffile: pip install tifffile") from err

    path = os.fspath(path)
    if bits not in (16, 32):
        raise ValueError(f"bits must be 16 or 32 for a TIFF, got {bits!r}")
    stretch_given = {"stretch": stretch, "log_a": log_a, "min_percent": min_percent,
                     "max_percent": max_percent, "white_balance": white_balance,
                     "neutralise": neutralise}
    if background != "none":
        stretch_given["background"] = background
    if bits == 32:
        for name, value in stretch_given.items():
            if value is not None:
                raise ValueError(f"{name}={value!r} is for stretched pictures; a 32-bit TIFF "
                                 "holds the linear values as they are (use bits=16)")
    else:
        stretch = _check_stretch(stretch, log_a, min_percent, max_percent)
        background = _check_background(background)
    _check_max_pixels(max_pixels)
    colour, white_balance, neutralise = _check_colour_options(image, white_balance, neutralise)
    refuse_existing(path, overwrite)
    _check_complete(image, allow_incomplete)
    if bits == 32:
        if colour:
            rgb, _ = _colour_picture(image, "image", max_pixels, decimate_eager=True)
            pixels = rgb.astype(np.float32).transpose(1, 2, 0)[::-1]
        else:
            picture, _ = _picture(image, "image", max_pixels, decimate_eager=True)
            pixels = np.asarray(picture, dtype=np.float32)[::-1]
    elif colour:
        levels, _, _ = _colour_render(
            image, "image", stretch=stretch, log_a=log_a, min_percent=min_percent,
            max_percent=max_percent, background=background, max_pixels=max_pixels,
            decimate_eager=True, white_balance=white_balance, neutralise=neutralise)
        pixels = _colour_pixels(levels, 16)
    else:
        levels = _mono_levels(image, stretch, log_a, None, min_percent, max_percent,
                              background, max_pixels)
        pixels = np.rint(levels * 65535).astype(np.uint16)[::-1]
    from . import __version__

    with atomic_output(path, overwrite) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(pixels),
                         photometric="rgb" if colour else "minisblack",
                         software=f"{SOFTWARE} {__version__}", metadata=None)
    return path


# --------------------------------------------------------------------------
# FITS


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _provenance_json(attrs) -> str:
    """All attributes as ASCII JSON text; names the attribute that cannot be written."""
    for key, value in attrs.items():
        if not isinstance(key, str):
            raise TypeError(f"attribute name {key!r} is not a string; cannot write it to FITS")
        try:
            json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as err:
            raise TypeError(f"attribute {key!r} cannot be written to FITS as JSON: {err}") from err
    return json.dumps(attrs, default=_json_default, ensure_ascii=True)


def _attribute_cards(attrs, taken=()):
    """Header cards for the short scalar attributes (the rest live in the JSON only).

    Names in ``taken`` (cards written already) are left out.
    """
    from astropy.io import fits

    cards, used = [], set(taken)
    for key, value in attrs.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            continue
        if isinstance(value, str):
            if not value.isascii() or not value.isprintable():
                continue
        elif not isinstance(value, (bool, int, float)):
            continue
        name = str(key).upper()
        if not _KEYWORD.fullmatch(name) or name in used or name in _FITS_RESERVED:
            continue
        if name.startswith("NAXIS"):
            continue
        keyword = name if len(name) <= 8 else f"HIERARCH {name}"
        card = fits.Card(keyword, value)
        if len(card.image) != 80:  # would need CONTINUE cards: too long for a scalar card
            continue
        used.add(name)
        cards.append(card)
    return cards


def _used_values(attrs, key, used):
    """``attrs[key][i]`` for each frame ``i`` in ``used``, or ``None`` if any is missing."""
    values = attrs.get(key)
    if not isinstance(values, (list, tuple, np.ndarray)) or len(values) <= max(used):
        return None
    picked = [values[i] for i in used]
    return None if any(v is None for v in picked) else picked


def _utc(text, frame):
    """An ISO date-time as a naive UTC ``datetime``, or ``None`` (with a warning) if unreadable."""
    try:
        moment = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        warnings.warn(f"frame {frame}: start time {text!r} is not an ISO date-time; DATE-OBS "
                      "and DATE-END are left out", BigstackWarning, stacklevel=4)
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return moment


def _observation_cards(attrs):
    """``NCOMBINE``, ``EXPTIME``, ``DATE-OBS``, ``DATE-END`` from the per-frame attributes.

    ``frames_used`` (indices into ``inputs``) gives ``NCOMBINE``. The
    per-frame lists ``frame_exptime`` (seconds) and ``frame_time`` (ISO
    start times, UTC), aligned with ``inputs``, give the total exposure, the
    earliest start and the latest end (start plus exposure) of the frames
    used; a card whose values are not known for every frame used is left
    out.
    """
    used = attrs.get("frames_used")
    if not isinstance(used, (list, tuple, np.ndarray)):
        return []
    used = [int(i) for i in used]
    cards = [("NCOMBINE", len(used), "number of frames combined")]
    if not used:
        return cards
    exptimes = _used_values(attrs, "frame_exptime", used)
    if exptimes is not None:
        exptimes = [float(e) for e in exptimes]
        if all(math.isfinite(e) for e in exptimes):
            cards.append(("EXPTIME", math.fsum(exptimes), "[s] total exposure of the frames"))
        else:
            exptimes = None
    starts = _used_values(attrs, "frame_time", used)
    if starts is not None:
        starts = [_utc(text, i) for text, i in zip(starts, used, strict=True)]
    if starts is not None and all(start is not None for start in starts):
        cards.append(("DATE-OBS", min(starts).isoformat(), "UTC start of the first frame"))
        if exptimes is not None:
            end = max(start + datetime.timedelta(seconds=e)
                      for start, e in zip(starts, exptimes, strict=True))
            cards.append(("DATE-END", end.isoformat(), "UTC end of the last frame"))
    return cards


def _offset_cards(ycoord, xcoord):
    """``LTV``/``LTM`` cards mapping file pixels to the grid of the ``x``/``y`` coordinates."""
    cards = []
    for axis, coord, dim in ((1, xcoord, "x"), (2, ycoord, "y")):
        if coord is None:
            continue
        step = float(coord[1] - coord[0]) if coord.size > 1 else 1.0
        if step == 0 or (coord.size > 2 and not np.allclose(np.diff(coord), step)):
            warnings.warn(
                f"the {dim} coordinates are not evenly spaced; the FITS file does not record "
                "where its pixels sit on the reference grid",
                BigstackWarning,
                stacklevel=3,
            )
            continue
        start = float(coord[0])
        if start == 0 and step == 1:
            continue
        ltv = 1.0 - (start + 1.0) / step  # logical = physical * LTM + LTV, 1-based pixels
        ltv = int(ltv) if ltv.is_integer() else ltv
        cards.append((f"LTV{axis}", ltv, f"{dim} offset: reference pixel = file pixel - LTV{axis}"))
        if step != 1:
            cards.append((f"LTM{axis}_{axis}", 1.0 / step, f"{dim} scale to the reference grid"))
    return cards


def _image_header(shape, dtype, extname=None):
    """The mandatory cards of an image of ``shape`` ``(y, x)``, or ``(3, y, x)`` for colour."""
    from astropy.io import fits

    ny, nx = shape[-2:]
    header = fits.Header()
    if extname is None:
        header["SIMPLE"] = (True, "conforms to FITS standard")
    else:
        header["XTENSION"] = ("IMAGE", "image extension")
    header["BITPIX"] = _BITPIX[np.dtype(dtype).name]
    header["NAXIS"] = len(shape)
    header["NAXIS1"] = (nx, "x: columns")
    header["NAXIS2"] = (ny, "y: rows")
    if len(shape) == 3:
        header["NAXIS3"] = (shape[0], "colour planes: red, green, blue")
    if extname is None:
        header["EXTEND"] = True
    else:
        header["PCOUNT"] = 0
        header["GCOUNT"] = 1
        header["EXTNAME"] = extname
    return header


def _fits_dtype(dtype):
    """The FITS-native dtype that holds ``dtype`` without loss."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return np.dtype(np.float64 if dtype.itemsize > 4 else np.float32)
    if dtype.kind == "b" or dtype == np.uint8:
        return np.dtype(np.uint8)
    if dtype.kind in "iu":
        return np.dtype(np.int32 if dtype.itemsize <= 2 or dtype == np.int32 else np.int64)
    raise TypeError(f"cannot write {dtype} pixels to FITS")


def _row_bands(data, target_bytes=64 * 2**20):
    """Yield consecutive full-width row bands of ``data`` as numpy arrays."""
    if _is_dask(data):
        y0 = 0
        for rows in data.chunks[0]:
            yield np.asarray(data[y0:y0 + rows].compute())
            y0 += rows
        return
    ny, nx = data.shape
    step = max(1, target_bytes // max(1, nx * data.dtype.itemsize))
    for y0 in range(0, ny, step):
        yield data[y0:y0 + step]


def _stream_image(path, header, data, dtype):
    """Write an image HDU a row band at a time; a ``(3, y, x)`` cube plane by plane."""
    from astropy.io import fits

    planes = [data] if data.ndim == 2 else [data[c] for c in range(data.shape[0])]
    hdu = fits.StreamingHDU(path, header)
    try:
        for plane in planes:
            for band in _row_bands(plane):
                hdu.write(np.ascontiguousarray(band, dtype=dtype))
    finally:
        hdu.close()


def _colour_cards():
    """Cards that say a 3-plane cube is an RGB image, bottom row first (Siril, PixInsight)."""
    return [("CTYPE3", "RGB", "planes 1, 2, 3 are red, green, blue"),
            ("ROWORDER", "BOTTOM-UP", "first row is the bottom of the picture")]


def save_fits(data, path, *, overwrite=False, allow_incomplete=False):
    """Write a stack, its coverage and its provenance to a FITS file.

    The primary HDU holds the stack (float32), a ``COVERAGE`` image
    extension the coverage, and a ``PROVENANCE`` binary table the
    attributes as JSON; see the module notes for the layout and the
    observation cards (``NCOMBINE``, ``EXPTIME``, ``DATE-OBS``,
    ``DATE-END``) taken from the attributes. Lazy data are
    computed and written one row band at a time, so the stack never has to
    fit in memory.

    Parameters
    ----------
    data : xarray.Dataset, xarray.DataArray, numpy.ndarray or dask.array.Array
        The Dataset from :func:`bigstack.stack` (``stack`` and optional
        ``coverage``, dims ``(y, x)`` or ``(channel, y, x)`` for colour,
        attributes = provenance), or a single 2-D or colour image (a
        DataArray's own attributes are its provenance). A colour stack is
        written as a 3-plane cube, R, G, B (see the module notes).
        Attributes must be JSON-serialisable (numpy scalars and arrays are
        converted).
    path : str or path-like
        The FITS file to write.
    overwrite : bool
        Replace an existing file. The file is written under a temporary
        name and renamed, so a failure never leaves a partial file and a
        refused write leaves the old one intact.
    allow_incomplete : bool
        Write a stack whose attributes say it is unfinished (its missing
        tiles are NaN), with a :class:`~bigstack.BigstackWarning`.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    FileExistsError
        ``path`` exists and ``overwrite`` is false.
    ValueError
        Data that is neither 2-D nor colour, a Dataset without ``stack``, a
        colour image whose channels are not R, G, B, or a coverage of
        another shape than the stack.
    TypeError
        An attribute that cannot be written as JSON (named).
    bigstack.IncompleteStoreError
        An unfinished stack (``attrs["complete"]`` false) without
        ``allow_incomplete``.

    Examples
    --------
    >>> import json, os, tempfile
    >>> import numpy as np, xarray as xr
    >>> from astropy.io import fits
    >>> from bigstack import save_fits
    >>> ds = xr.Dataset(
    ...     {"stack": (("y", "x"), np.ones((4, 5), np.float32)),
    ...      "coverage": (("y", "x"), np.full((4, 5), 3, np.int32))},
    ...     coords={"y": np.arange(10, 14), "x": np.arange(5)},
    ...     attrs={"bigstack_version": "0.1.0", "shifts": [[0, 0], [2, 16]]})
    >>> path = save_fits(ds, os.path.join(tempfile.mkdtemp(), "stack.fits"))
    >>> with fits.open(path) as hdul:
    ...     print(hdul[0].header["LTV2"], hdul["COVERAGE"].data[0, 0],
    ...           json.loads(hdul["PROVENANCE"].data["JSON"][0])["shifts"])
    -10 3 [[0, 0], [2, 16]]
    """
    from astropy.io import fits

    dataarray, dataset = _xarray_types()
    path = os.fspath(path)
    _check_complete(data, allow_incomplete)
    coverage = None
    if isinstance(data, dataset):
        attrs = dict(data.attrs)
        stack = _stack_variable(data, "data")
        if "coverage" in data.data_vars:
            coverage = data["coverage"]
    else:
        stack = data
        attrs = dict(data.attrs) if isinstance(data, dataarray) else {}
    colour = is_colour(stack)
    cover_data = None
    if colour:
        source = data if isinstance(data, dataset) else stack
        stack_data, cover_data, (ycoord, xcoord) = colour_parts(source, "stack")
    else:
        stack_data, (ycoord, xcoord) = _unwrap(stack, "stack")
    if coverage is not None and not colour:
        cover_data, _ = _unwrap(coverage, "coverage")
        if cover_data.shape != stack_data.shape:
            raise ValueError(
                f"coverage shape {cover_data.shape} differs from the stack's {stack_data.shape}"
            )
    provenance = _provenance_json(attrs) if attrs else None
    refuse_existing(path, overwrite)

    header = _image_header(stack_data.shape, np.float32)
    from . import __version__

    header["CREATOR"] = (f"{SOFTWARE} {__version__}", "software that wrote this file")
    plane_cards = _colour_cards() if colour else []
    for card in plane_cards:
        header.append(card)
    offsets = _offset_cards(ycoord, xcoord)
    for card in offsets:
        header.append(card)
    observation = _observation_cards(attrs)
    for card in observation:
        header.append(card)
    taken = {card[0] for card in observation + plane_cards}
    for card in _attribute_cards(attrs, taken=taken):
        header.append(card)
    if provenance is not None:
        header["PROVHDU"] = ("PROVENANCE", "extension with all attributes as JSON")
        header.add_comment("Written by bigstack; the PROVENANCE table's JSON column holds")
        header.add_comment("the full provenance (json.loads gives the attributes back).")

    with atomic_output(path, overwrite) as tmp:
        _stream_image(tmp, header, stack_data, np.float32)
        if cover_data is not None:
            dtype = _fits_dtype(cover_data.dtype)
            cover_header = _image_header(cover_data.shape, dtype, extname="COVERAGE")
            for card in plane_cards + offsets:
                cover_header.append(card)
            cover_header.add_comment("Number of frames that cover each pixel" +
                                     (", per colour" if colour else ""))
            _stream_image(tmp, cover_header, cover_data, dtype)
        if provenance is not None:
            column = fits.Column(name="JSON", format=f"{len(provenance)}A",
                                 array=np.array([provenance]))
            table = fits.BinTableHDU.from_columns([column], name="PROVENANCE")
            with fits.open(tmp, mode="append") as hdul:
                hdul.append(table)
    return path
