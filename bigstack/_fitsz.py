"""Compressed FITS (tile-compressed ``.fz`` and gzipped ``.fits.gz``) and FITS cubes.

Compressed files are read through astropy:

- **tile-compressed** (``CompImageHDU``, what ``fpack`` writes): astropy's
  ``section`` decompresses only the tiles a band of rows touches, and
  fpack's default tiles are one row each, so a band costs its own rows;
- **gzipped** (``.fits.gz``, ``.fit.gz``, ``.fts.gz``): headers are read
  through the gzip stream with bigstack's own FITS header reader, and rows
  ``[y0, y1)`` by seeking in the stream: a gzip stream cannot be entered in
  the middle, so that decompresses the file from its start up to row
  ``y1`` (Python's ``gzip``; measured 0.015 s for the first 100 rows of a
  3000x4000 16-bit frame, 0.8 s for its last, where astropy's ``section``
  takes 0.8 to 1.5 s for any band). Frames are one chunk each by default so
  that a cube's chunk decompresses its frame once.

FITS cubes (``NAXIS3 > 1``, compressed or not) give one frame per plane,
except a 3-plane cube that is a colour image: Siril and PixInsight write
RGB images as ``NAXIS3 = 3`` (planes R, G, B), so 3 planes are read as
colour unless ``CTYPE3`` names something other than RGB (a 3-frame cube
then says, e.g., ``CTYPE3 = 'TIME'``).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._errors import FrameError
from ._planes import RGB, choose, planes_of

GZIP_SUFFIXES = (".fits.gz", ".fit.gz", ".fts.gz")
FZ_SUFFIXES = (".fz",)
SUFFIXES = FZ_SUFFIXES + GZIP_SUFFIXES


def is_colour_cube(depth, ctype3) -> bool:
    """Whether a cube of ``depth`` planes is an R, G, B image (see the module notes)."""
    if depth != 3:
        return False
    if ctype3 is None or not str(ctype3).strip():
        return True
    return str(ctype3).strip().upper().startswith("RGB")


@dataclass(frozen=True)
class CompressedFitsSource:
    """One frame (or one colour image) of a compressed FITS file, read through astropy."""

    path: str
    shape: tuple[int, int]
    hdu: int
    plane: int | None = None  # a cube's plane that is this frame
    rgb: bool = False  # a 3-plane colour image
    pick: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def planes(self):
        return planes_of(self.rgb, self.pick)

    by_rows = True

    def read(self, y0, y1, x0, x1, plane=None):
        want = plane if plane is not None else self.pick
        if not self.rgb:
            key = (slice(y0, y1), slice(x0, x1)) if self.plane is None else \
                (self.plane, slice(y0, y1), slice(x0, x1))
            return self._section(key).astype(np.float32)
        if want in RGB:
            return self._section((RGB.index(want), slice(y0, y1), slice(x0, x1))).astype(
                np.float32)
        from ._planes import take

        return take(self._section((slice(0, 3), slice(y0, y1), slice(x0, x1))), want, axis=0)

    def _section(self, key):
        from astropy.io import fits

        from ._io import _check_unchanged

        _check_unchanged(self.path, self.stamp)
        try:
            with _truncation_is_an_error(self.path), \
                    fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
                data = np.asarray(hdul[self.hdu].section[key])
        except (OSError, ValueError, EOFError, IndexError, TypeError) as err:
            raise _error(self.path, err) from err
        return data


def _error(path, err):
    problem = " ".join(str(err).split()) or type(err).__name__
    return FrameError(path, f"cannot read compressed FITS: {problem}")


@contextlib.contextmanager
def _truncation_is_an_error(path):
    """astropy warns of a truncated file and reads on: make that bigstack's error.

    Other astropy warnings while reading (card fixes) are dropped.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        if "truncated" in str(warning.message):
            raise FrameError(path, "truncated: " + " ".join(str(warning.message).split()))


def inspect_compressed(path, channel=None, colour=None) -> list[CompressedFitsSource]:
    """The frames of a tile-compressed (or gzipped: :func:`inspect_gzip`) FITS file."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyError

    from ._io import _NEEDED, _frame_metadata, _stat, is_url

    if is_url(path):
        raise FrameError(path, "compressed FITS is read from local files only")
    size, stamp = _stat(path)
    if size == 0:
        raise FrameError(path, "not a FITS file (the file is empty)")
    if path.lower().endswith(GZIP_SUFFIXES):
        return inspect_gzip(path, channel, colour)
    try:
        with _truncation_is_an_error(path), \
                fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
            found = None
            for index, hdu in enumerate(hdul):
                if isinstance(hdu, (fits.ImageHDU, fits.PrimaryHDU, fits.CompImageHDU)) \
                        and hdu.header.get("NAXIS", 0) >= 2:
                    found = index, hdu
                    break
            if found is None:
                raise FrameError(path, "no image HDU (no HDU holds a 2-D image)")
            index, hdu = found
            header = hdu.header
            shape = tuple(int(n) for n in hdu.shape)
            cards = {k: header[k] for k in header if k in _NEEDED}
            ctype3 = header.get("CTYPE3")
    except FrameError:
        raise
    except (OSError, ValueError, EOFError, VerifyError, IndexError, TypeError) as err:
        raise _error(path, err) from err
    meta = {**_frame_metadata(cards), "format": "fits.fz"}
    base = {"path": os.fspath(path), "hdu": index, "stamp": stamp}
    if len(shape) == 2:
        return [CompressedFitsSource(shape=shape, header=meta, **base)]
    if len(shape) != 3 or 0 in shape:
        raise FrameError(path, f"HDU {index} holds an image of shape {shape}; bigstack reads "
                               "2-D frames and 3-D cubes")
    ny, nx = shape[1:]
    if is_colour_cube(shape[0], ctype3):
        pick = choose(path, True, channel, colour, True)
        return [CompressedFitsSource(shape=(ny, nx), rgb=True, pick=pick, header=meta, **base)]
    choose(path, False, channel, colour)
    return [CompressedFitsSource(shape=(ny, nx), plane=k, header=meta, **base)
            for k in range(shape[0])]


@dataclass(frozen=True)
class GzipFitsSource:
    """One plane of a gzipped FITS image, read by seeking in the gzip stream."""

    path: str
    shape: tuple[int, int]
    offset: int  # in the decompressed stream
    dtype: str
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    planes = None
    by_rows = False

    def read(self, y0, y1, x0, x1, plane=None):
        import gzip
        import zlib

        from ._io import _check_unchanged, _scale

        _check_unchanged(self.path, self.stamp)
        nx = self.shape[1]
        dtype = np.dtype(self.dtype)
        want = (y1 - y0) * nx * dtype.itemsize
        try:
            with gzip.open(self.path, "rb") as f:
                f.seek(self.offset + y0 * nx * dtype.itemsize)
                data = f.read(want)
        except (OSError, EOFError, zlib.error) as err:
            raise _gzip_error(self.path, err) from err
        if len(data) < want:
            raise FrameError(self.path, "truncated: the gzip stream ends inside the image data")
        raw = np.frombuffer(data, dtype).reshape(y1 - y0, nx)[:, x0:x1]
        return _scale(raw, self.bscale, self.bzero, self.blank)


def _gzip_error(path, err):
    problem = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, EOFError):
        return FrameError(path, f"truncated: the gzip stream ends early ({problem})")
    return FrameError(path, f"cannot read gzipped FITS: {problem}")


def inspect_gzip(path, channel=None, colour=None) -> list:
    """The frames of a gzipped FITS file, from its headers read through the gzip stream."""
    import gzip
    import zlib

    from ._io import (
        _FITS_BLOCK,
        _astropy_header,
        _frame_metadata,
        _hdu_layout,
        _quick_header,
        _stat,
        is_url,
    )

    if is_url(path):
        raise FrameError(path, "gzipped FITS is read from local files only")
    size, stamp = _stat(path)
    if size == 0:
        raise FrameError(path, "not a FITS file (the file is empty)")
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise FrameError(path, "not a gzip file (no gzip signature)")
    try:
        with gzip.open(path, "rb") as f:
            pos, index = 0, 0
            while True:
                f.seek(pos)
                if index and not f.peek(1):
                    raise FrameError(path, "no image HDU (no HDU holds a 2-D image)")
                cards = _quick_header(f, path, index)
                if cards is None:
                    f.seek(pos)
                    cards = _astropy_header(f, path, index)
                start = f.tell()
                layout = _hdu_layout(path, index, cards)
                if layout.image:
                    break
                pos = start + -(-layout.nbytes // _FITS_BLOCK) * _FITS_BLOCK
                index += 1
    except (OSError, EOFError, zlib.error) as err:
        raise _gzip_error(path, err) from err
    dtype = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[layout.bitpix]
    ny, nx = layout.shape
    meta = {**_frame_metadata(cards), "format": "fits.gz"}
    step = ny * nx * np.dtype(dtype).itemsize
    parts = [GzipFitsSource(path=os.fspath(path), shape=(ny, nx), offset=start + k * step,
                            dtype=dtype, bscale=layout.bscale, bzero=layout.bzero,
                            blank=layout.blank, header=meta, stamp=stamp)
             for k in range(layout.depth)]
    ctype3 = cards.get("CTYPE3")
    if layout.depth > 1 and is_colour_cube(layout.depth, ctype3 if isinstance(ctype3, str)
                                           else None):
        pick = choose(path, True, channel, colour, True)
        return [FitsColourSource(path=os.fspath(path), shape=(ny, nx), parts=tuple(parts),
                                 pick=pick, header=meta, stamp=stamp, by_rows=False)]
    choose(path, False, channel, colour)
    return parts


@dataclass(frozen=True)
class FitsColourSource:
    """A 3-plane (R, G, B) FITS image, each plane read by rows as a plain FITS frame."""

    path: str
    shape: tuple[int, int]
    parts: tuple  # the FitsSource of planes R, G, B
    pick: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)
    by_rows: bool = True

    @property
    def planes(self):
        return planes_of(True, self.pick)

    def read(self, y0, y1, x0, x1, plane=None):
        want = plane if plane is not None else self.pick
        if want in RGB:
            return self.parts[RGB.index(want)].read(y0, y1, x0, x1)
        from ._planes import take

        return take(np.stack([p.read(y0, y1, x0, x1) for p in self.parts]), want, axis=0)


def fits_cube_frames(path, first, depth, ctype3, channel=None, colour=None) -> list:
    """The frames of an uncompressed FITS cube whose plane 0 is ``first`` (a FitsSource)."""
    from dataclasses import replace

    ny, nx = first.shape
    step = ny * nx * np.dtype(first.dtype).itemsize
    parts = [replace(first, offset=first.offset + k * step) for k in range(depth)]
    if is_colour_cube(depth, ctype3):
        pick = choose(path, True, channel, colour, True)
        return [FitsColourSource(path=first.path, shape=first.shape, parts=tuple(parts),
                                 pick=pick, header=first.header, stamp=first.stamp)]
    choose(path, False, channel, colour)
    return parts
