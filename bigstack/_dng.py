"""Write minimal Bayer-mosaic DNG files that LibRaw (``rawpy``) can open.

The test suite uses :func:`write_dng` to make small camera RAW files with a
known mosaic, so that the RAW reader can be checked without shipping real
camera files. The file is an uncompressed, little-endian, single-image TIFF
carrying the DNG tags LibRaw needs to treat it as a colour filter array (CFA)
image.

What ``rawpy`` (LibRaw 0.22) gives back for a file written here:

- ``raw_image`` equals ``cfa`` exactly: same shape, no margins, no crop, no
  black subtraction and no clipping at the white level.
- ``color_desc`` is ``b"RGBG"`` and ``raw_pattern`` holds indices into it,
  the second green of the 2x2 cell being colour 3: RGGB gives
  ``[[0, 1], [3, 2]]``, BGGR ``[[2, 3], [1, 0]]``, GRBG ``[[1, 0], [2, 3]]``
  and GBRG ``[[3, 2], [0, 1]]``.
- ``black_level_per_channel`` is indexed by colour (R, G, B, G2), not by
  position in the 2x2 cell; ``white_level`` is ``white_level``.
- ``other.shutter_speed`` is ``exptime`` (as a float32) and
  ``other.timestamp`` is ``datetime`` (read back in local time).

LibRaw refuses images smaller than 22 pixels on either side, so
:func:`write_dng` does too.
"""

from __future__ import annotations

import datetime as _dt
import errno
import math
import os
import pathlib
from fractions import Fraction

import numpy as np

__all__ = ["write_dng", "MIN_SIZE"]

#: Smallest height or width LibRaw accepts as a RAW image.
MIN_SIZE = 22

_CFA_CODES = {"R": 0, "G": 1, "B": 2}
_BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")
_ILLUMINANT_D65 = 21


def _exposure_rational(exptime):
    """Return ``exptime`` in seconds as a (numerator, denominator) pair of uint32."""
    value = float(exptime)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"exptime must be a positive number of seconds, not {exptime!r}")
    limit = 2**32 - 1
    max_den = max(1, int(limit // max(value, 1.0)))
    frac = Fraction(value).limit_denominator(max_den)
    if frac.numerator == 0 or frac.numerator > limit:
        raise ValueError(f"exptime {exptime!r} s cannot be stored as a TIFF RATIONAL")
    return frac.numerator, frac.denominator


def _black_levels(black_level, white_level):
    """Return the BlackLevelRepeatDim and BlackLevel values for ``black_level``."""
    levels = np.asarray(black_level)
    if levels.shape not in ((), (2, 2)):
        raise ValueError(
            f"black_level must be a number or a 2x2 array (one per CFA position), "
            f"not shape {levels.shape}"
        )
    if not np.all(np.isfinite(levels)) or not np.all(levels == np.round(levels)):
        raise ValueError(f"black_level must hold whole numbers, not {black_level!r}")
    if levels.min() < 0 or levels.max() >= white_level:
        raise ValueError(
            f"black_level must lie in [0, white_level={white_level}), not {black_level!r}"
        )
    values = tuple(int(v) for v in levels.ravel())
    return ((1, 1) if levels.ndim == 0 else (2, 2)), values


def write_dng(
    path,
    cfa,
    pattern="RGGB",
    *,
    black_level=0,
    white_level=65535,
    exptime=None,
    datetime=None,
    make="bigstack",
    model="synthetic",
    overwrite=False,
):
    """Write a Bayer mosaic as a minimal uncompressed DNG file.

    Parameters
    ----------
    path : str or os.PathLike
        File to write (by convention with a ``.dng`` suffix).
    cfa : numpy.ndarray
        The raw mosaic, 2-D ``uint16`` of shape ``(ny, nx)``, both even and at
        least :data:`MIN_SIZE`. Written unchanged (no scaling, no clipping).
    pattern : {"RGGB", "BGGR", "GRBG", "GBRG"}
        Colours of the 2x2 cell at ``cfa[0:2, 0:2]``, read row by row.
    black_level : int or array_like of shape (2, 2), optional
        Black level of every pixel, or one per position of the 2x2 cell (laid
        out like ``cfa[0:2, 0:2]``).
    white_level : int, optional
        Saturation level, 1 to 65535.
    exptime : float, optional
        Exposure time in seconds, written as the ExposureTime tag.
    datetime : datetime.datetime or str, optional
        Capture time, written as the DateTime tag; a string must already be in
        the TIFF form ``"YYYY:MM:DD HH:MM:SS"``.
    make, model : str, optional
        Camera maker and model (ASCII); the DNG UniqueCameraModel is
        ``f"{make} {model}"``.
    overwrite : bool, optional
        Replace ``path`` if it exists.

    Returns
    -------
    pathlib.Path
        The file written.

    Raises
    ------
    ValueError
        If ``cfa`` is not 2-D ``uint16`` with even sides of at least
        :data:`MIN_SIZE`, or another argument is out of range.
    FileExistsError
        If ``path`` exists and ``overwrite`` is false.

    Notes
    -----
    The file holds one IFD: NewSubFileType 0, PhotometricInterpretation 32803
    (CFA), SamplesPerPixel 1, BitsPerSample 16, one uncompressed strip,
    CFARepeatPatternDim (2, 2), CFAPattern (0 = R, 1 = G, 2 = B),
    DNGVersion 1.4.0.0, DNGBackwardVersion 1.1.0.0, UniqueCameraModel,
    BlackLevelRepeatDim, BlackLevel, WhiteLevel, an identity ColorMatrix1,
    AsShotNeutral (1, 1, 1) and CalibrationIlluminant1 D65. There is no
    thumbnail and no EXIF sub-IFD.

    Examples
    --------
    >>> import numpy as np, rawpy  # doctest: +SKIP
    >>> cfa = np.arange(24 * 32, dtype=np.uint16).reshape(24, 32)  # doctest: +SKIP
    >>> path = write_dng("frame.dng", cfa, "RGGB", exptime=30.0)  # doctest: +SKIP
    >>> with rawpy.imread(str(path)) as raw:  # doctest: +SKIP
    ...     assert (raw.raw_image == cfa).all()
    """
    import tifffile

    if not isinstance(cfa, np.ndarray):
        raise ValueError(f"cfa must be a numpy array, not {type(cfa).__name__}")
    if cfa.ndim != 2:
        raise ValueError(f"cfa must be 2-D (ny, nx), not of shape {cfa.shape}")
    if cfa.dtype.kind != "u" or cfa.dtype.itemsize != 2:
        raise ValueError(f"cfa must be uint16, not {cfa.dtype}")
    ny, nx = cfa.shape
    if ny % 2 or nx % 2:
        raise ValueError(f"cfa sides must be even for a 2x2 Bayer cell, not {cfa.shape}")
    if ny < MIN_SIZE or nx < MIN_SIZE:
        raise ValueError(f"LibRaw needs both sides >= {MIN_SIZE} pixels, not {cfa.shape}")
    if not isinstance(pattern, str) or pattern.upper() not in _BAYER_PATTERNS:
        raise ValueError(f"pattern must be one of {_BAYER_PATTERNS}, not {pattern!r}")
    pattern = pattern.upper()
    if isinstance(white_level, bool) or not isinstance(white_level, (int, np.integer)):
        raise ValueError(f"white_level must be an integer, not {white_level!r}")
    if not 1 <= white_level <= 65535:
        raise ValueError(f"white_level must lie in [1, 65535], not {white_level}")
    black_dim, black_values = _black_levels(black_level, int(white_level))
    for name, text in (("make", make), ("model", model)):
        if not isinstance(text, str) or not text or not text.isascii():
            raise ValueError(f"{name} must be a non-empty ASCII string, not {text!r}")
    if isinstance(datetime, str):
        try:
            _dt.datetime.strptime(datetime, "%Y:%m:%d %H:%M:%S")
        except ValueError:
            raise ValueError(
                f"datetime string must read 'YYYY:MM:DD HH:MM:SS', not {datetime!r}"
            ) from None
    elif datetime is not None and not isinstance(datetime, _dt.datetime):
        raise ValueError(f"datetime must be a datetime.datetime or str, not {datetime!r}")

    # (code, dtype, count, value, writeonce) as tifffile's extratags expects.
    tags = [
        (254, "I", 1, 0, True),  # NewSubFileType: main image
        (271, "s", 0, make, True),  # Make
        (272, "s", 0, model, True),  # Model
        (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
        (33422, "B", 4, bytes(_CFA_CODES[c] for c in pattern), True),  # CFAPattern
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, f"{make} {model}", True),  # UniqueCameraModel
        (50713, "H", 2, black_dim, True),  # BlackLevelRepeatDim
        (50714, "I", len(black_values), black_values, True),  # BlackLevel
        (50717, "I", 1, int(white_level), True),  # WhiteLevel
        # ColorMatrix1 (XYZ -> camera), identity, as 9 SRATIONALs
        (50721, "2i", 9, (1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1), True),
        (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
        (50778, "H", 1, _ILLUMINANT_D65, True),  # CalibrationIlluminant1
    ]
    if exptime is not None:
        tags.append((33434, "2I", 1, _exposure_rational(exptime), True))  # ExposureTime

    path = pathlib.Path(os.fspath(path))
    data = np.ascontiguousarray(cfa, dtype="<u2")
    try:
        with tifffile.TiffWriter(path, byteorder="<", mode="w" if overwrite else "x") as tif:
            tif.write(
                data,
                photometric=32803,
                compression=None,
                rowsperstrip=ny,
                datetime=datetime,
                resolution=None,
                software="bigstack",
                metadata=None,
                extratags=tags,
            )
    except FileExistsError as err:
        raise FileExistsError(
            errno.EEXIST, "file exists; pass overwrite=True to replace it", str(path)
        ) from err
    return path
