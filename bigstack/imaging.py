"""The tutorial-compatible facade.

Code written for the tutorial's ``imaging`` module runs on bigstack with
only its import line changed::

    from bigstack import imaging as im

The functions keep the tutorial's names, arguments, ``print_log`` and
conventions: images are indexed ``[y, x]``; positions and shifts are
written ``[x, y]``. They work on in-memory numpy arrays, as the tutorial's
do; for frames that do not fit in memory use the lazy API
(:func:`bigstack.open_frames` and friends).
"""

from __future__ import annotations

import glob
import os
import warnings

import numpy as np

from . import _combine, _io, _register, _render
from ._reject import Rejection

__all__ = ["get_files", "load_image", "stack_files", "find_star", "stack", "crop", "display",
           "shift", "flip", "rotate"]

STACK_TYPES = ("mean", "average", "sum")


def get_files(pathname, root_dir=None, print_log=False):
    """Return the paths matching a shell-style pattern, sorted.

    Parameters
    ----------
    pathname : str
        A pattern such as ``"./lights/*.fit"``.
    root_dir : str, optional
        Folder that a relative ``pathname`` is matched in; the paths returned
        are then relative to it (as :func:`glob.glob` does).
    print_log : bool
        Print the list of files found.

    Returns
    -------
    numpy.ndarray of str
        The matching paths, sorted. Empty when nothing matches, as in the
        tutorial (:func:`bigstack.open_frames` refuses an empty pattern).
    """
    files = np.sort(glob.glob(os.fspath(pathname), root_dir=root_dir))
    if print_log:
        print("Files loaded:\n", files)
    return files


def load_image(filename, gray_conv=_io.GREY_WEIGHTS, bayer_colors=("R", "G", "B"),
               return_filtered_raw=True, print_log=False, cmap="Greys_r", stretch="log",
               log_a=1000):
    """Load one image file as a float32 array.

    Parameters
    ----------
    filename : str
        A FITS, PNG, JPEG or camera RAW file.
    gray_conv : (float, float, float)
        R, G, B weights that turn a colour PNG/JPEG grey.
    bayer_colors : sequence of {"R", "G", "B"}
        RAW only: the colours to return, one plane each.
    return_filtered_raw : bool
        RAW only: keep one pixel per Bayer cell (half-size planes). With
        ``False`` the planes keep the sensor size, zero at other colours.
    print_log : bool
        Print the detected type and show the image.
    cmap, stretch, log_a
        How to show the image when ``print_log`` is set.

    Returns
    -------
    numpy.ndarray
        float32, indexed ``[y, x]``: FITS as stored (BSCALE/BZERO applied,
        so 16-bit camera frames are 0..65535); PNG/JPEG grey in the file's
        integer scale; RAW one plane per colour in ``bayer_colors``.
    """
    path = os.fspath(filename)
    kind = _io.file_kind(path)
    if print_log:
        print("File extension detected as", os.path.splitext(path)[1].lstrip(".").upper())
    if not os.path.exists(path):
        raise _io.FrameNotFoundError(path, "no such file")
    if kind == "fits":
        source = _io.inspect_fits(path)
        data = source.read(0, source.shape[0], 0, source.shape[1])
    elif kind == "image":
        data = _io.read_image_grey(path, gray_conv)
    elif kind == "raw":
        data = _io.read_raw_planes(path, tuple(bayer_colors), filtered=return_filtered_raw)
    else:  # TIFF, XISF, SER, compressed FITS: the first frame, colour made grey as for PNG
        source = _io.inspect_frames(path, colour=True)[0]
        ny, nx = source.shape
        if source.planes is None:
            data = source.read(0, ny, 0, nx)
        else:
            planes = [source.read(0, ny, 0, nx, c).astype(np.float64) for c in source.planes]
            data = sum(w * p for w, p in zip(gray_conv, planes, strict=True))
    if print_log:
        shown = data.sum(axis=0) if data.ndim == 3 else data
        display(shown, cmap=cmap, stretch=stretch, log_a=log_a)
    return data.astype(np.float32, copy=False)



def stack_files(filelist, stack_type="mean", gray_conv=_io.GREY_WEIGHTS,
                bayer_colors=("R", "G", "B"), return_filtered_raw=True, print_log=False):
    """Add image files without shifting them (the tutorial's naive stack).

    Files are read one at a time, so memory holds two images whatever the
    number of files.

    Returns
    -------
    numpy.ndarray
        float32: the sum, or the mean for ``"mean"``/``"average"``; one
        plane per colour for RAW files.
    """
    if stack_type not in STACK_TYPES:
        raise ValueError(f"`stack_type` should be either \"sum\" or \"mean\" (or \"average\"), "
                         f"got {stack_type!r}")
    filelist = list(filelist)
    if not filelist:
        raise _io.FrameNotFoundError("<empty list>", "no files to stack")
    stacked = None
    for path in filelist:
        image = load_image(path, gray_conv=gray_conv, bayer_colors=bayer_colors,
                           return_filtered_raw=return_filtered_raw)
        if stacked is None:
            stacked = np.zeros_like(image, dtype=np.float32)
        elif image.shape != stacked.shape:
            raise _io.FrameError(path, f"shape {image.shape} differs from {stacked.shape} of "
                                       f"{filelist[0]}")
        stacked += image
        if print_log:
            print("File completed:", path)
    if stack_type != "sum":
        stacked = stacked / len(filelist)
    return stacked


def find_star(image_array, star_pos=None, search=500, print_log=False, fig=None, ax=None):
    """The ``[x, y]`` of the brightest pixel in the box ``star_pos ± search//2``.

    The tutorial's method (see :func:`bigstack.find_star` for the sub-pixel
    one). The box is clipped at the image edges.
    """
    return _register.find_star(image_array, star_pos=star_pos, search=search, method="peak",
                               print_log=print_log, fig=fig, ax=ax)


def stack(array_of_images, shifts=None, stack_type="mean", print_log=False):
    """Shift each image of an ``(N, Ly, Lx)`` array and add them, as the tutorial does.

    Image ``i`` is moved so that output pixel ``(x, y)`` takes its pixel
    ``(x + dx, y + dy)`` (shifts rounded to whole pixels); pixels shifted in
    from outside are 0, and the mean divides by ``N`` everywhere, which is
    why the tutorial's stack has dark edges. :func:`bigstack.stack` divides
    by each pixel's coverage instead.

    Returns
    -------
    numpy.ndarray or None
        float64 ``(Ly, Lx)``; ``None`` (with a warning) when the input is not
        3-D, as in the tutorial.
    """
    if stack_type not in STACK_TYPES:
        raise ValueError(f"`stack_type` should be either \"sum\" or \"mean\" (or \"average\"), "
                         f"got {stack_type!r}")
    shape = np.shape(array_of_images)
    if len(shape) != 3:
        warnings.warn("`array_of_images` is expected to be an array of (N, Ly, Lx) elements. "
                      "Returning NoneType.", UserWarning, stacklevel=2)
        return None
    n = shape[0]
    if shifts is None:
        values = np.zeros((n, 2))
        if print_log:
            print("No shifts provided, adding all images without shifting.")
    else:
        values = np.asarray(shifts, dtype=np.float64)
        if len(values) != n:
            warnings.warn("The lengths of `array_of_images` and `shifts` must be the same. "
                          "Not applying shifts.", UserWarning, stacklevel=2)
            values = np.zeros((n, 2))
    source = _io.ArrayRows(np.asarray(array_of_images))
    plan = _combine.TilePlan(shape=shape[1:], shifts=values, keep=np.ones(n, bool),
                             subpixel="nearest", grid=(0, shape[1], 0, shape[2]),
                             combine=Rejection("sum"))
    total, _, _ = _combine.combine_tile(source, plan, 0, shape[1])
    if print_log and shifts is not None:
        for i in range(n):
            print("Shifted image", i + 1, "by vector", values[i], ".")
    return total / n if stack_type != "sum" else total


def crop(image_array, left=None, right=None, top=None, bottom=None, origin=None,
         print_log=False, fig=None, ax=None):
    """Keep rows ``bottom:top`` and columns ``left:right`` (distances from ``origin``).

    See :func:`bigstack.crop`; ``print_log`` shows the result.
    """
    cropped = _render.crop(image_array, left=left, right=right, top=top, bottom=bottom,
                           origin=origin)
    if print_log:
        display(cropped, fig=fig, ax=ax)
    return cropped


def display(image_array, cmap="Greys_r", stretch="log", log_a=1000, norm_array=None,
            min_percent=0.0, max_percent=100.0, title=None, xlim=None, ylim=None, fig=None,
            ax=None):
    """Show a 2-D image with origin lower left and an astropy stretch.

    The tutorial's defaults (``stretch="log"``, ``log_a=1000``, 0 to 100
    percent); ``stretch="auto"`` is bigstack's automatic stretch, which sets
    its own range (``log_a`` and percentiles other than the defaults are
    then refused). See :func:`bigstack.display`. Returns the matplotlib
    ``AxesImage``.
    """
    if stretch == "auto":  # the tutorial's defaults mean "not given" here
        log_a = None if log_a == 1000 else log_a
        min_percent = None if min_percent == 0 else min_percent
        max_percent = None if max_percent == 100 else max_percent
    return _render.display(image_array, stretch=stretch, log_a=log_a, norm_array=norm_array,
                           min_percent=min_percent, max_percent=max_percent, cmap=cmap,
                           fig=fig, ax=ax, title=title, xlim=xlim, ylim=ylim)


def shift(image_array, displacement, print_log=False):
    """Translate an image: output pixel ``(x, y)`` takes input ``(x + dx, y + dy)``.

    ``displacement`` is ``[dx, dy]``, rounded to whole pixels; pixels
    coming from outside the image are 0. Returns float32, like the
    tutorial's.
    """
    image = np.asarray(image_array)
    if image.ndim != 2:
        raise ValueError(f"shift needs a 2-D image [y, x], got shape {image.shape}")
    ny, nx = image.shape
    dx, dy = (int(np.floor(float(d) + 0.5)) for d in displacement)
    out = np.zeros((ny, nx), np.float32)
    ys, xs = slice(max(0, -dy), min(ny, ny - dy)), slice(max(0, -dx), min(nx, nx - dx))
    if ys.start < ys.stop and xs.start < xs.stop:
        out[ys, xs] = image[ys.start + dy:ys.stop + dy, xs.start + dx:xs.stop + dx]
    if print_log:
        display(out, norm_array=image)
    return out


def flip(image_array, axis="x"):
    """Mirror an image: ``"x"`` reverses the columns, ``"y"`` the rows."""
    if axis == "x":
        return image_array[:, ::-1]
    if axis == "y":
        return image_array[::-1, :]
    raise ValueError(f"Can't flip around \"{axis}\" axis; use \"x\" or \"y\".")


def rotate(image_array, angle, origin=None, expand=False, fill=False, print_log=False):
    """Rotate an image by ``angle`` degrees, bicubic, as the tutorial does.

    The turn is Pillow's: anticlockwise with row 0 at the top, so clockwise
    as :func:`display` draws it (row 0 at the bottom). ``origin`` is the
    ``[x, y]`` to turn about (default the centre). With ``expand`` the
    output grows to hold the whole rotated image; with ``fill`` the
    uncovered corners take the image's median instead of 0.
    """
    from PIL import Image

    image = np.asarray(image_array, dtype=np.float32)
    fillcolor = float(np.median(image)) if fill else None
    rotated = Image.fromarray(image).rotate(
        angle, resample=Image.Resampling.BICUBIC,
        center=None if origin is None else tuple(origin), expand=expand, fillcolor=fillcolor)
    out = np.asarray(rotated, dtype=np.float32)
    if print_log:
        display(out, norm_array=image)
    return out
