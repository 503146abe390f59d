"""Compressed FITS (tile-compressed ``.fz`` and gzipped ``.fits.gz``) and FITS cubes.

Compressed files are read through astropy:

- **tile-compressed** (``CompImageHDU``, what ``fpack`` writes): astropy's
  ``section`` decompresses only the tiles a band of rows touches, and
  fpack's default tiles are one row each, so a band costs its own rows;
- **gzipped** (``.fits.gz``, ``.fit.gz``, ``.fts.gz``): a gzip stream cannot
  be entered in the middle, so reading rows ``[y0, y1)`` decompresses the
  file from its start up to row ``y1``; frames are one chunk each by
  default so that each is decompressed once.

FITS cubes (``NAXIS3 > 1``, compressed or not) give one frame per plane,
except a 3-plane cube that is a colour image: Siril and PixInsight write
RGB images as ``NAXIS3 = 3`` (planes R, G, B), so 3 planes are read as
colour unless ``CTYPE3`` names something other than RGB (a 3-frame cube
then says, e.g., ``CTYPE3 = 'TIME'``).
"""

from __future__ import annotations

import os
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
    gzip: bool = False
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def planes(self):
        return planes_of(self.rgb, self.pick)

    @property
    def by_rows(self):
        return not self.gzip

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
            with fits.open(self.path, memmap=False, lazy_load_hdus=True) as hdul:
                data = np.asarray(hdul[self.hdu].section[key])
        except (OSError, ValueError, EOFError, IndexError, TypeError) as err:
            raise _error(self.path, err) from err
        return data


def _error(path, err):
    problem = " ".join(str(err).split()) or type(err).__name__
    return FrameError(path, f"cannot read compressed FITS: {problem}")


def inspect_compressed(path, channel=None, colour=None) -> list[CompressedFitsSource]:
    """The frames of a ``.fz`` or gzipped FITS file, from its headers."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyError

    from ._io import _NEEDED, _frame_metadata, _stat, is_url

    if is_url(path):
        raise FrameError(path, "compressed FITS is read from local files only")
    size, stamp = _stat(path)
    if size == 0:
        raise FrameError(path, "not a FITS file (the file is empty)")
    gz = path.lower().endswith(GZIP_SUFFIXES)
    try:
        with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
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
    meta = {**_frame_metadata(cards), "format": "fits.gz" if gz else "fits.fz"}
    base = {"path": os.fspath(path), "hdu": index, "gzip": gz, "stamp": stamp}
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
class FitsColourSource:
    """A 3-plane (R, G, B) FITS image, each plane read by rows as a plain FITS frame."""

    path: str
    shape: tuple[int, int]
    parts: tuple  # the FitsSource of planes R, G, B
    pick: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    by_rows = True

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
