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

import numpy as np

from . import _io

__all__ = ["get_files", "load_image"]


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
    else:
        data = _io.read_raw_planes(path, tuple(bayer_colors), filtered=return_filtered_raw)
    if print_log:
        from . import _render

        shown = data.sum(axis=0) if data.ndim == 3 else data
        _render.display(shown, cmap=cmap, stretch=stretch, log_a=log_a)
    return data.astype(np.float32, copy=False)

