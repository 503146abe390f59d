"""Finding frame files and reading them lazily.

``open_frames`` reads headers only and returns a dask-backed
``xarray.DataArray``; pixels are read when a chunk is computed, and every
read goes through :meth:`FrameReader.read`, which reads exactly the rows
(and, for a box, exactly the columns) it is asked for.

Formats
-------
FITS
    The first HDU with a 2-D image. Pixel data are contiguous big-endian
    rows, so a band of rows is one ``pread`` and a box is one ``pread`` a
    row. Integer data are scaled with BSCALE/BZERO as astropy does (16-bit
    camera frames with BZERO=32768 come back as 0..65535) and BLANK becomes
    NaN. Every header value used is checked at open time (whole numbers in
    range, finite scales, data that fit in the file). A cube (NAXIS3 > 1)
    is a frame per plane, or R, G, B planes (see :mod:`bigstack._fitsz`).
Tile-compressed and gzipped FITS, TIFF, SER, XISF
    In their own modules (:mod:`bigstack._fitsz`, :mod:`bigstack._tiff`,
    :mod:`bigstack._ser`, :mod:`bigstack._xisf`), each saying what it
    reads by rows and what it decodes whole; :mod:`bigstack._planes` says
    how a colour file becomes planes, one plane or grey.
PNG / JPEG
    The size comes from the PNG IHDR chunk or the JPEG start-of-frame
    segment at open time. Pixels are decoded whole (these formats cannot be
    read by rows) and converted to grey with the weights R 0.2126, G 0.7152,
    B 0.0722, in the file's own integer scale (0..255 for 8-bit, 0..65535
    for 16-bit). Note that matplotlib's ``imread`` scales PNG to 0..1
    instead.
Camera RAW (NEF, CR2, DNG, ...)
    Through ``rawpy`` (the ``raw`` extra): the visible Bayer mosaic, decoded
    whole, with LibRaw's 2x2 pattern; ``open_frames`` debayers it as it does
    a Bayer FITS (below). The tutorial's ``load_image`` still gives one plane
    per Bayer colour, half the sensor size (:func:`read_raw_planes`).
Colour (Bayer) frames
    A FITS frame with ``BAYERPAT`` (or ``COLORTYP``), and camera RAW, is a
    mosaic: ``open_frames`` returns ``(frame, channel, y, x)`` debayered band
    by band (:mod:`bigstack._bayer`), or one colour with ``channel=``, or the
    mosaic itself with ``debayer=None``.

Bad input
---------
A file that cannot be used raises :class:`FrameError`, one line naming the
file and the problem (for FITS, the HDU and the card), never the reader
library's own exception. A local file whose size or modification time
changed after ``open_frames`` is refused when a task reads it.
"""

from __future__ import annotations

import glob
import math
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._errors import FrameError, FrameNotFoundError

GREY_WEIGHTS = (0.2126, 0.7152, 0.0722)

FITS_SUFFIXES = (".fit", ".fits", ".fts")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
RAW_SUFFIXES = (
    ".nef", ".cr2", ".cr3", ".crw", ".arw", ".srf", ".sr2", ".dng", ".orf",
    ".rw2", ".raf", ".pef", ".srw", ".x3f", ".3fr", ".iiq", ".erf", ".kdc",
    ".mef", ".mos", ".nrw", ".rwl",
)
TIFF_SUFFIXES = (".tif", ".tiff")
SER_SUFFIXES = (".ser",)
XISF_SUFFIXES = (".xisf",)
COMPRESSED_FITS_SUFFIXES = (".fz", ".fits.gz", ".fit.gz", ".fts.gz")
SUPPORTED_SUFFIXES = (FITS_SUFFIXES + COMPRESSED_FITS_SUFFIXES + TIFF_SUFFIXES + SER_SUFFIXES
                      + XISF_SUFFIXES + IMAGE_SUFFIXES + RAW_SUFFIXES)

_FITS_BLOCK = 2880
_BITPIX_DTYPES = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}


# --------------------------------------------------------------------------
# discovery


def find_files(pattern_or_paths) -> list[str]:
    """Return the frame files named by a glob pattern, a folder or a list.

    A pattern (``"lights/*.fit"``) gives the matching files sorted by name,
    as the tutorial's ``get_files`` does; a folder gives every file in it
    with a supported suffix, sorted; a list or tuple is kept in its order.

    Raises
    ------
    FrameNotFoundError
        If nothing matches, naming the pattern, or if a listed file is
        missing, naming the file.
    """
    if isinstance(pattern_or_paths, str) and is_url(pattern_or_paths):
        return _find_remote(pattern_or_paths)
    if isinstance(pattern_or_paths, (str, os.PathLike)):
        pattern = os.fspath(pattern_or_paths)
        if os.path.isdir(pattern):
            paths = sorted(
                os.path.join(pattern, name)
                for name in os.listdir(pattern)
                if name.lower().endswith(SUPPORTED_SUFFIXES)
            )
            if not paths:
                raise FrameNotFoundError(
                    pattern, "folder holds no frame files (looked for FITS, .fz, .fits.gz, "
                    "TIFF, SER, XISF, PNG, JPEG and camera RAW)"
                )
            return paths
        if glob.has_magic(pattern):
            paths = sorted(glob.glob(pattern))
            if not paths:
                raise FrameNotFoundError(pattern, "no file matches this pattern")
            return paths
        paths = [pattern]
    else:
        paths = [os.fspath(p) for p in pattern_or_paths]
        if not paths:
            raise FrameNotFoundError("<empty list>", "no frame files given")
    for path in paths:
        if is_url(path):
            continue  # checked when its header is read
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise FrameNotFoundError(path, "no such file") from None
        except OSError as err:
            raise FrameError(path, f"cannot open: {err.strerror or err}") from err
        if stat.S_ISDIR(mode):
            raise FrameError(path, "is a folder, not a frame file")
    return paths


def is_url(path) -> bool:
    """True for an fsspec URL such as ``s3://bucket/f.fit`` or ``memory://f.fit``."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def _fs(url):
    try:
        from fsspec.core import url_to_fs
    except ImportError as err:
        raise FrameError(url, "URLs need fsspec: pip install fsspec") from err
    return url_to_fs(url)


def _find_remote(pattern):
    fs, path = _fs(pattern)
    if glob.has_magic(pattern):
        found = sorted(fs.glob(path))
    elif fs.isdir(path):
        found = sorted(p for p in fs.ls(path, detail=False)
                       if p.lower().endswith(SUPPORTED_SUFFIXES))
    else:
        found = [path] if fs.exists(path) else []
    if not found:
        raise FrameNotFoundError(pattern, "no file matches this URL")
    return [fs.unstrip_protocol(p) for p in found]


class _File:
    """A file opened for reading at offsets: a local descriptor, or an fsspec file.

    ``stamp`` is the file's ``(size, mtime)`` when its header was read; a
    local file that no longer matches it is refused (its header may no
    longer describe its bytes).
    """

    def __init__(self, path, stamp=None):
        self.path = path
        self.remote = None
        if is_url(path):
            fs, inner = _fs(path)
            try:
                self.remote = fs.open(inner, "rb")
            except FileNotFoundError as err:
                raise FrameNotFoundError(path, "no such file") from err
            except OSError as err:
                raise FrameError(path, f"cannot open: {err.strerror or err}") from err
        else:
            self.fd = _open_for_read(path)
            if stamp is not None:
                try:
                    _check_unchanged(path, stamp, os.fstat(self.fd))
                except BaseException:
                    os.close(self.fd)
                    raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.remote is not None:
            self.remote.close()
        else:
            os.close(self.fd)

    def read_into(self, array, offset):
        """Fill ``array`` (C-contiguous) with the bytes at ``offset``."""
        if self.remote is None:
            _pread_into(self.fd, array, offset, self.path)
            return
        view = memoryview(array.reshape(-1).view(np.uint8))
        try:
            self.remote.seek(offset)
            data = self.remote.read(len(view))
        except OSError as err:
            raise FrameError(self.path, f"cannot read: {err.strerror or err}") from err
        if len(data) < len(view):
            raise FrameError(self.path, f"truncated: no data at byte {offset + len(data)}")
        view[:] = data


def _stat(path):
    """``(size, stamp)`` of a file; ``stamp`` is ``(size, mtime_ns)``, None for a URL."""
    try:
        if is_url(path):
            fs, inner = _fs(path)
            return fs.size(inner), None
        st = os.stat(path)
    except FileNotFoundError as err:
        raise FrameNotFoundError(path, "no such file") from err
    except OSError as err:
        raise FrameError(path, f"cannot open: {err.strerror or err}") from err
    return st.st_size, (st.st_size, st.st_mtime_ns)


def _check_unchanged(path, stamp, st=None):
    """Refuse a local file whose size or modification time differ from ``stamp``.

    (Not the inode: workers of a cluster may see the same files through
    other mounts or copies.)
    """
    if stamp is None:
        return
    if st is None:
        try:
            st = os.stat(path)
        except FileNotFoundError as err:
            raise FrameNotFoundError(path, "no such file (was it moved after opening?)") from err
        except OSError as err:
            raise FrameError(path, f"cannot open: {err.strerror or err}") from err
    if st.st_size != stamp[0]:
        raise FrameError(path, f"changed since it was opened (now {st.st_size} bytes, was "
                               f"{stamp[0]}); open the frames again")
    if st.st_mtime_ns != stamp[1]:
        raise FrameError(path, "changed since it was opened (modified); open the frames again")


def file_kind(path) -> str:
    """Return the reader for a file from its suffix.

    ``"fits"``, ``"fitsz"`` (tile-compressed or gzipped FITS), ``"tiff"``,
    ``"ser"``, ``"xisf"``, ``"image"`` (PNG/JPEG) or ``"raw"``.
    """
    name = os.fspath(path).lower()
    suffix = Path(name).suffix
    if name.endswith(COMPRESSED_FITS_SUFFIXES):
        return "fitsz"
    if suffix in FITS_SUFFIXES:
        return "fits"
    for kind, suffixes in (("tiff", TIFF_SUFFIXES), ("ser", SER_SUFFIXES),
                           ("xisf", XISF_SUFFIXES)):
        if suffix in suffixes:
            return kind
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in RAW_SUFFIXES:
        return "raw"
    raise FrameError(
        path,
        f"unsupported file type {suffix or '(no suffix)'!r}; bigstack reads FITS "
        f"({', '.join(FITS_SUFFIXES)}, .fz, .fits.gz), TIFF, XISF, SER, PNG, JPEG and "
        "camera RAW",
    )


# --------------------------------------------------------------------------
# per-format sources: what was learnt from the header, and how to read pixels


@dataclass(frozen=True)
class FitsSource:
    """Where a FITS image's pixels are and how to scale them."""

    path: str
    shape: tuple[int, int]
    offset: int
    dtype: str
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)
    bayer: str | None = None  # the effective Bayer pattern of a one-shot-colour mosaic

    planes = None

    def read_raw(self, y0, y1, out=None):
        """Full-width rows ``[y0, y1)`` as stored (big-endian, unscaled), one ``pread``.

        ``out``, if given, is a 1-D buffer of the stored dtype with room for
        the rows; it is filled and a view of it is returned, so a caller
        reading many frames allocates once.
        """
        nx = self.shape[1]
        dtype = np.dtype(self.dtype)
        count = (y1 - y0) * nx
        raw = np.empty(count, dtype) if out is None else out[:count]
        with _File(self.path, self.stamp) as f:
            f.read_into(raw, self.offset + y0 * nx * dtype.itemsize)
        return raw.reshape(y1 - y0, nx)

    def read(self, y0, y1, x0, x1, plane=None):
        ny, nx = self.shape
        dtype = np.dtype(self.dtype)
        raw = np.empty((y1 - y0, x1 - x0), dtype=dtype)
        with _File(self.path, self.stamp) as f:
            if x0 == 0 and x1 == nx:
                f.read_into(raw, self.offset + y0 * nx * dtype.itemsize)
            else:
                for row in range(y0, y1):
                    f.read_into(raw[row - y0], self.offset + (row * nx + x0) * dtype.itemsize)
        return _scale(raw, self.bscale, self.bzero, self.blank)


@dataclass(frozen=True)
class ImageSource:
    """A PNG or JPEG frame, decoded whole and turned grey."""

    path: str
    shape: tuple[int, int]
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    planes = None

    def read(self, y0, y1, x0, x1, plane=None):
        _check_unchanged(self.path, self.stamp)
        grey = read_image_grey(self.path)
        _check_decoded(self.path, grey.shape, self.shape)
        return grey[y0:y1, x0:x1]


@dataclass(frozen=True)
class RawSource:
    """A camera RAW frame read through rawpy, one plane per Bayer colour.

    With ``channel`` set the frame is that colour's 2-D plane; otherwise it
    has one plane per colour in ``colours``.
    """

    path: str
    shape: tuple[int, int]
    colours: tuple[str, ...] = ("R", "G", "B")
    channel: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def planes(self):
        return None if self.channel is not None else self.colours

    def read(self, y0, y1, x0, x1, plane=None):
        colour = plane if plane is not None else self.channel
        _check_unchanged(self.path, self.stamp)
        planes = read_raw_planes(self.path, self.colours if colour is None else (colour,))
        _check_decoded(self.path, planes.shape[1:], self.shape)
        if colour is None:
            return planes[:, y0:y1, x0:x1]
        return planes[0, y0:y1, x0:x1]


@dataclass(frozen=True)
class RawMosaicSource:
    """A camera RAW frame's whole Bayer mosaic (the visible area), read through rawpy.

    Decoded whole (RAW cannot be read by rows); ``bayer`` is the effective
    pattern of the visible area's origin.
    """

    path: str
    shape: tuple[int, int]
    bayer: str
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    planes = None

    def read(self, y0, y1, x0, x1, plane=None):
        _check_unchanged(self.path, self.stamp)
        mosaic = read_raw_mosaic(self.path)[0]
        _check_decoded(self.path, mosaic.shape, self.shape)
        return mosaic[y0:y1, x0:x1]


def _check_decoded(path, shape, expected):
    """Refuse pixels whose shape is not the one the header announced at open time."""
    if tuple(shape) != tuple(expected):
        raise FrameError(path, f"decodes to {shape[0]}x{shape[1]} pixels, not the "
                               f"{expected[0]}x{expected[1]} its header announced when opened")


def _open_for_read(path):
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError as err:
        raise FrameNotFoundError(path, "no such file (was it moved after opening?)") from err
    except OSError as err:
        raise FrameError(path, f"cannot open: {err.strerror}") from err


def _pread_into(fd, array, offset, path):
    """Fill ``array`` (C-contiguous) with the bytes at ``offset``."""
    view = memoryview(array.reshape(-1).view(np.uint8))
    done = 0
    while done < len(view):
        try:
            n = os.preadv(fd, [view[done:]], offset + done)
        except OSError as err:
            raise FrameError(path, f"cannot read: {err.strerror or err}") from err
        if n == 0:
            raise FrameError(path, f"truncated: no data at byte {offset + done}")
        done += n


def _scale(raw, bscale, bzero, blank):
    """FITS integer scaling to float32, as astropy applies it."""
    out = raw.astype(np.float32)
    if bscale != 1.0:
        out *= np.float32(bscale)
    if bzero != 0.0:
        out += np.float32(bzero)
    if blank is not None:
        out[raw == blank] = np.nan
    return out


def read_image_grey(path, weights=GREY_WEIGHTS) -> np.ndarray:
    """Decode a PNG/JPEG and return float32 grey in the file's integer scale.

    ``weights`` are the R, G, B weights (a grey file is returned as is; an
    alpha channel is dropped). The decoder is chosen from the file's first
    bytes, and its errors become :class:`FrameError` naming the file.
    """
    data = _read_bytes(path)
    data = _decode_image(path, data)
    if data.ndim == 3 and data.shape[2] in (1, 2):  # grey, grey + alpha
        data = data[..., 0]
    if data.ndim == 2:
        return data.astype(np.float32)
    if data.ndim != 3 or data.shape[2] not in (3, 4):
        raise FrameError(path, f"unexpected image layout {data.shape}")
    rgb = data[..., :3].astype(np.float64)
    grey = rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1]
    grey += rgb[..., 2] * weights[2]
    return grey.astype(np.float32)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read_bytes(path) -> bytes:
    """The whole file, local or fsspec URL; read errors name the file."""
    try:
        if is_url(path):
            fs, inner = _fs(path)
            return fs.cat_file(inner)
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise FrameNotFoundError(path, "no such file (was it moved after opening?)") from err
    except OSError as err:
        raise FrameError(path, f"cannot read: {err.strerror or err}") from err


def _decode_image(path, data) -> np.ndarray:
    """Decode PNG or JPEG bytes with imagecodecs' decoder for the format."""
    import imagecodecs

    if data.startswith(_PNG_SIGNATURE):
        name, decoders = "PNG", [(imagecodecs.png_decode, imagecodecs.PngError)]
    elif data.startswith(b"\xff\xd8"):
        name, decoders = "JPEG", [(imagecodecs.jpeg8_decode, imagecodecs.Jpeg8Error)]
        if imagecodecs.LJPEG.available:  # lossless JPEG, which libjpeg cannot read
            decoders.append((imagecodecs.ljpeg_decode, imagecodecs.LjpegError))
    else:
        raise FrameError(path, "not a PNG or JPEG file (unknown signature)")
    first = None
    for decode, error in decoders:
        try:
            return decode(data)
        except (error, ValueError) as err:  # the codec's own class, or bad arguments
            first = first or err
    problem = " ".join(str(first).split()) or type(first).__name__
    raise FrameError(path, f"cannot decode {name} image ({problem})") from first


def _import_rawpy(path):
    try:
        import rawpy
    except ImportError as err:
        raise FrameError(
            path, "camera RAW needs rawpy: pip install 'bigstack[raw]'"
        ) from err
    return rawpy


def _raw_error(path, err):
    problem = err.args[0] if len(err.args) == 1 else str(err)  # LibRaw's message is bytes
    if isinstance(problem, bytes):
        problem = problem.decode("ascii", "replace")
    problem = " ".join(str(problem).split()) or type(err).__name__
    return FrameError(path, f"cannot read as camera RAW: {problem}")


def _bayer(path, pattern, desc) -> tuple[np.ndarray, str]:
    """Check LibRaw's Bayer cell and colour names; return them as an array and a str."""
    try:
        desc = desc.decode("ascii")
    except (AttributeError, UnicodeDecodeError):
        raise FrameError(path, f"cannot read as camera RAW: colour names {desc!r}") from None
    pattern = None if pattern is None else np.asarray(pattern)
    if pattern is None or pattern.ndim != 2 or pattern.size == 0:
        raise FrameError(path, "not a Bayer-pattern RAW file")
    if pattern.min() < 0 or pattern.max() >= len(desc):
        raise FrameError(path, f"cannot read as camera RAW: Bayer cell {pattern.tolist()} "
                               f"names colours beyond {desc!r}")
    return pattern, desc


def raw_layout(path) -> tuple[tuple[int, int], tuple[str, ...]]:
    """Return the per-colour plane shape and the Bayer colours of a RAW file."""
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            pattern = raw.raw_pattern
            sizes = raw.sizes
            desc = raw.color_desc
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError) as err:
        raise _raw_error(path, err) from err
    pattern, desc = _bayer(path, pattern, desc)
    prow, pcol = pattern.shape
    shape = (sizes.raw_height // prow, sizes.raw_width // pcol)
    if min(shape) < 1:
        raise FrameError(path, f"cannot read as camera RAW: sensor of {sizes.raw_height}x"
                               f"{sizes.raw_width} pixels")
    colours = tuple(dict.fromkeys(desc[i] for i in np.unique(pattern)))
    return shape, tuple(c for c in ("R", "G", "B") if c in colours) or colours


def read_raw_planes(path, colours=("R", "G", "B"), filtered=True) -> np.ndarray:
    """Read a RAW file into one float32 plane per colour in ``colours``.

    Each colour's plane takes one pixel per Bayer cell (half the sensor
    size for a 2x2 pattern; whole cells only); a colour present more than
    once in the cell (the two greens) is the mean of its planes. With
    ``filtered=False`` the planes keep the sensor size with zeros at other
    colours' pixels (the tutorial's ``return_filtered_raw=False``).
    """
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            image = np.array(raw.raw_image, dtype=np.float32)
            pattern, desc = raw.raw_pattern, raw.color_desc
            raw_colors = np.array(raw.raw_colors) if not filtered else None
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError) as err:
        raise _raw_error(path, err) from err
    pattern, desc = _bayer(path, pattern, desc)
    if image.ndim != 2 or (raw_colors is not None and raw_colors.shape != image.shape):
        raise FrameError(path, f"cannot read as camera RAW: raw image of shape {image.shape}")
    prow, pcol = pattern.shape
    ny, nx = image.shape[0] // prow, image.shape[1] // pcol
    desc = np.array(list(desc))
    out = []
    for colour in colours:
        indices = np.flatnonzero(desc == colour)
        if indices.size == 0:
            raise FrameError(
                path, f"colour {colour!r} not in the Bayer pattern ({''.join(desc)})"
            )
        planes = []
        for index in indices:
            if filtered:
                row, col = np.argwhere(pattern == index)[0]
                planes.append(image[row::prow, col::pcol][:ny, :nx])
            else:
                planes.append(image * (raw_colors == index))
        out.append(np.mean(planes, axis=0, dtype=np.float32))
    return np.stack(out)


def read_raw_mosaic(path) -> tuple[np.ndarray, str]:
    """A RAW file's visible Bayer mosaic as float32 and its effective 2x2 pattern."""
    from ._bayer import PATTERNS

    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            image = np.array(raw.raw_image_visible, dtype=np.float32)
            colors = np.array(raw.raw_colors_visible[:2, :2])
            desc = raw.color_desc
            pattern = raw.raw_pattern
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError) as err:
        raise _raw_error(path, err) from err
    pattern, desc = _bayer(path, pattern, desc)
    if image.ndim != 2 or min(image.shape) < 2 or colors.shape != (2, 2):
        raise FrameError(path, f"cannot read as camera RAW: raw image of shape {image.shape}")
    cell = "".join(desc[int(k)] for k in colors.reshape(-1))
    if pattern.shape != (2, 2) or cell not in PATTERNS:
        raise FrameError(path, f"Bayer cell {cell!r} of {pattern.shape[0]}x{pattern.shape[1]}"
                               f" is not one of {', '.join(PATTERNS)}")
    return image, cell


# --------------------------------------------------------------------------
# header inspection (open time): read headers once, check sizes, no pixels


def inspect_fits(path) -> FitsSource:
    """The first 2-D image of a FITS file, from its headers alone (see :func:`inspect_fits_frames`).

    A cube (NAXIS3 > 1) is refused here: this serves readers of one frame.
    """
    source, depth, _ctype3 = _inspect_fits(path)
    if depth > 1:
        raise FrameError(path, f"holds a cube of {depth} planes, not one 2-D frame")
    return source


class _TileCompressed(FrameError):
    """A FITS file whose image is tile-compressed (fpack's format under a .fits name)."""


def inspect_fits_frames(path, channel=None, colour=None) -> list:
    """The frames of a FITS file: its 2-D image, each plane of a cube, or a colour image.

    A tile-compressed image in a file named .fits (some programs write them
    so) is read as a .fz file is.
    """
    try:
        source, depth, ctype3 = _inspect_fits(path)
    except _TileCompressed:
        if is_url(path):
            raise
        from ._fitsz import inspect_compressed

        return inspect_compressed(path, channel, colour)
    if depth == 1:
        from ._planes import choose

        choose(path, False, channel, colour)
        return [source]
    from ._fitsz import fits_cube_frames

    return fits_cube_frames(path, source, depth, ctype3, channel, colour)


def _inspect_fits(path):
    """Locate the first image HDU of a FITS file from its headers alone.

    Walks the HDUs by reading only their headers and seeking over their
    data. Every header value used is checked (:func:`_hdu_layout`), and the
    file must be long enough for the data the header announces, so a
    corrupt or truncated frame is reported before any work starts, as a
    :class:`FrameError` naming the file, the HDU and the card.
    """
    size, stamp = _stat(path)
    if size == 0:
        raise FrameError(path, "not a FITS file (the file is empty)")
    try:
        if is_url(path):
            fs, inner = _fs(path)
            opened = fs.open(inner, "rb", block_size=_FITS_BLOCK)
        else:
            opened = open(path, "rb", buffering=0)  # unbuffered: read header blocks only
    except OSError as err:
        raise FrameError(path, f"cannot open: {err.strerror or err}") from err
    with opened as f:
        pos = 0
        index = 0
        while pos < size:
            try:
                f.seek(pos)
                cards = _quick_header(f, path, index)
                if cards is None:  # a header quick reading does not cover: astropy reads it
                    f.seek(pos)
                    cards = _astropy_header(f, path, index)
                data_start = f.tell()
            except OSError as err:
                raise FrameError(path, f"cannot read HDU {index}: {err.strerror or err}") from err
            layout = _hdu_layout(path, index, cards)
            if layout.image:
                if data_start + layout.nbytes > size:
                    raise FrameError(
                        path,
                        f"truncated: the header announces {layout.nbytes} bytes of image data "
                        f"but only {size - data_start} follow it",
                    )
                from ._bayer import header_pattern

                source = FitsSource(
                    path=os.fspath(path),
                    shape=layout.shape,
                    bayer=header_pattern(path, cards, layout.shape[0]),
                    offset=data_start,
                    dtype=_BITPIX_DTYPES[layout.bitpix],
                    bscale=layout.bscale,
                    bzero=layout.bzero,
                    blank=layout.blank,
                    header=_frame_metadata(cards),
                    stamp=stamp,
                )
                ctype3 = cards.get("CTYPE3")
                return source, layout.depth, ctype3 if isinstance(ctype3, str) else None
            if data_start + layout.nbytes > size:
                raise FrameError(
                    path,
                    f"truncated: HDU {index} announces {layout.nbytes} bytes of data but only "
                    f"{size - data_start} follow its header",
                )
            pos = data_start + -(-layout.nbytes // _FITS_BLOCK) * _FITS_BLOCK
            index += 1
    raise FrameError(path, "no image HDU (no HDU holds a 2-D image)")


@dataclass(frozen=True)
class _Layout:
    """What one HDU's header says about its data, checked."""

    bitpix: int
    nbytes: int  # bytes of data after the header (unpadded)
    image: bool = False  # a 2-D image with pixels: the frame
    shape: tuple[int, int] = (0, 0)
    bscale: float = 1.0
    bzero: float = 0.0
    blank: int | None = None
    depth: int = 1  # planes of a cube (NAXIS3)


_MISSING = object()
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT_RANGE = {8: (0, 255), 16: (-(2**15), 2**15 - 1), 32: (-(2**31), 2**31 - 1),
              64: (-(2**63), 2**63 - 1)}


class _Unparsable:
    """A card value that is not a FITS value (kept to be named in an error)."""

    def __init__(self, text=None):
        self.text = None if text is None else text.strip()

    def __repr__(self):
        return "<unparsable>" if self.text is None else repr(self.text)


def _shown(value) -> str:
    """A card value as an error message shows it."""
    if isinstance(value, bool):
        return "T" if value else "F"
    return repr(value)


def _whole(path, hdu, cards, key, default=_MISSING, low=0, high=None) -> int:
    """Card ``key`` as an int in ``[low, high]``; ``default`` when absent (else an error)."""
    value = cards.get(key, _MISSING)
    if type(value) is int and low <= value and (high is None or value <= high):
        return value  # the common case, first
    if value is _MISSING:
        if default is _MISSING:
            raise FrameError(path, f"HDU {hdu}: no {key} card")
        return default
    if value is None:
        raise FrameError(path, f"HDU {hdu}: {key} has no value")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise FrameError(path, f"HDU {hdu}: {key} = {_shown(value)} is not a whole number")
    value = int(value)
    if value < low or (high is not None and value > high):
        allowed = f"at least {low}" if high is None else f"in {low}..{high}"
        raise FrameError(path, f"HDU {hdu}: {key} = {value} is not {allowed}")
    return value


def _real(path, hdu, cards, key, default) -> float:
    """Card ``key`` as a finite float; ``default`` when absent."""
    value = cards.get(key, _MISSING)
    if value is _MISSING:
        return default
    if value is None:
        raise FrameError(path, f"HDU {hdu}: {key} has no value")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FrameError(path, f"HDU {hdu}: {key} = {_shown(value)} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise FrameError(path, f"HDU {hdu}: {key} = {value} is not a finite number")
    return value


def _hdu_layout(path, hdu, cards) -> _Layout:
    """Check the cards that place HDU ``hdu``'s data and say how to read it.

    ``cards`` maps keywords to values as :func:`_quick_header` or
    :func:`_astropy_header` give them. Every value is checked before it is
    used: whole numbers in range for BITPIX, NAXIS, NAXISn, PCOUNT, GCOUNT
    and BLANK, finite numbers for BSCALE and BZERO; sizes are Python ints,
    so they cannot overflow. Raises :class:`FrameError` naming the HDU and
    the card.
    """
    if hdu == 0:
        if cards.get("SIMPLE") is not True:
            raise FrameError(path, "not a FITS file (no SIMPLE = T card)")
        kind = "IMAGE"
    else:
        kind = cards.get("XTENSION")
        if not isinstance(kind, str):
            raise FrameError(path, f"HDU {hdu}: no XTENSION card where an extension should "
                                   "start (corrupt file?)")
        kind = kind.strip()
    if cards.get("ZIMAGE") is True:
        raise _TileCompressed(
            path,
            f"HDU {hdu} is a tile-compressed image; name the file .fz (or open it with "
            "open_frames, which reads it through astropy)",
        )
    bitpix = _whole(path, hdu, cards, "BITPIX", low=-64, high=64)
    if bitpix not in _BITPIX_DTYPES:
        raise FrameError(path, f"HDU {hdu}: BITPIX = {bitpix} is not one of "
                               f"{', '.join(map(str, _BITPIX_DTYPES))}")
    naxis = _whole(path, hdu, cards, "NAXIS", high=999)
    axes = [_whole(path, hdu, cards, f"NAXIS{i}") for i in range(1, naxis + 1)]
    pcount = _whole(path, hdu, cards, "PCOUNT", default=0)
    gcount = _whole(path, hdu, cards, "GCOUNT", default=1)
    itemsize = abs(bitpix) // 8
    nbytes = itemsize * gcount * (pcount + math.prod(axes)) if naxis else 0
    if kind != "IMAGE" or naxis == 0 or 0 in axes:
        return _Layout(bitpix, nbytes)  # no pixels here
    depth = axes[2] if naxis >= 3 else 1
    if naxis == 1 or any(n != 1 for n in axes[3:]):
        raise FrameError(
            path,
            f"HDU {hdu} holds a {naxis}-D image of shape {tuple(reversed(axes))}; "
            "bigstack reads 2-D frames and 3-D cubes",
        )
    bscale = _real(path, hdu, cards, "BSCALE", 1.0)
    bzero = _real(path, hdu, cards, "BZERO", 0.0)
    blank = None
    if bitpix > 0:
        low, high = _INT_RANGE[bitpix]
        blank = _whole(path, hdu, cards, "BLANK", None, low, high)
        reach = abs(bzero) + abs(bscale) * max(-low, high)
    else:
        reach = max(abs(bzero), abs(bscale))
    if reach > _FLOAT32_MAX:
        raise FrameError(path, f"HDU {hdu}: BSCALE = {bscale} and BZERO = {bzero} take "
                               f"BITPIX = {bitpix} values beyond the float32 range")
    return _Layout(bitpix, itemsize * math.prod(axes), True, (axes[1], axes[0]),
                   bscale, bzero, blank, depth)


# the cards open_frames needs; _quick_header reads only these
_NEEDED_CARDS = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
    "ZIMAGE", "EXPTIME", "EXPOSURE", "DATE-OBS", "TIME-OBS", "FILTER",
    # what calibration and a night's sorting look at
    "IMAGETYP", "FRAME", "OBJECT", "GAIN", "ISOSPEED", "CCD-TEMP", "SET-TEMP", "XBINNING",
    "YBINNING", "INSTRUME", "CTYPE3",
    # one-shot-colour mosaics (see bigstack._bayer)
    "BAYERPAT", "COLORTYP", "XBAYROFF", "YBAYROFF", "ROWORDER",
}


_NEEDED = frozenset(_NEEDED_CARDS | {f"NAXIS{i}" for i in range(1, 1000)})


def _quick_header(f, path, index, max_blocks=100):
    """Read one FITS header (whole 2880-byte blocks) and parse only the cards bigstack uses.

    Returns a dict of those keywords' values, with ``f`` left at the start
    of the data. A value that is not a FITS value is kept as
    :class:`_Unparsable` for :func:`_hdu_layout` to name; a string value
    continued on CONTINUE cards is joined. Returns None when there is no
    END card within ``max_blocks`` (a very long header: astropy reads it);
    raises :class:`FrameError` when the file ends before the END card.
    Opening thousands of frames is dominated by header parsing, and
    astropy parses every card.
    """
    cards = {}
    continued = None  # the card whose string value ends with '&'
    for block_index in range(max_blocks):
        block = f.read(_FITS_BLOCK)
        if block_index == 0 and not block.startswith(b"XTENSION= " if index else b"SIMPLE  ="):
            if index == 0:
                raise FrameError(path, "not a FITS file (no SIMPLE = T card)")
            raise FrameError(path, f"HDU {index}: no XTENSION card where an extension should "
                                   "start (corrupt file?)")
        if len(block) < _FITS_BLOCK:
            raise FrameError(path, f"truncated: HDU {index}'s header ends without an END card")
        text = block.decode("latin-1")  # never fails; only the cards used must be ASCII
        for start in range(0, _FITS_BLOCK, 80):
            key = text[start:start + 8].rstrip()
            if continued is not None:
                value = _card_value(text[start + 10:start + 80]) if key == "CONTINUE" else None
                if isinstance(value, str):
                    cards[continued] = cards[continued][:-1] + value
                    continued = continued if value.endswith("&") else None
                    continue
                continued = None
            if key == "END":
                return cards
            if key in _NEEDED:
                if text[start + 8:start + 10] == "= ":
                    value = _card_value(text[start + 10:start + 80])
                else:  # a keyword without a value indicator: the card has no value
                    value = None
                if isinstance(value, str) and value.endswith("&"):
                    continued = key
                cards[key] = value
    return None


_INTEGER = re.compile(r"[+-]?\d+")
_REAL = re.compile(r"[+-]? *(?:\.\d+|\d+(?:\.\d*)?)(?: *[DEde] *[+-]? *\d+)?")


def _card_value(field):
    """The value of a card from the 70 characters after ``= ``.

    A string, bool, int or float; None for no value; :class:`_Unparsable`
    for anything else (non-ASCII bytes, an unclosed string, text that is
    not a number).
    """
    if not field.isascii():
        return _Unparsable(field)
    stripped = field.strip()
    if stripped.startswith("'"):
        end, chars = 1, []
        while True:
            quote = stripped.find("'", end)
            if quote < 0:
                return _Unparsable(field)
            chars.append(stripped[end:quote])
            if stripped[quote + 1:quote + 2] == "'":  # a doubled quote stands for one
                chars.append("'")
                end = quote + 2
                continue
            value = "".join(chars).rstrip()
            return value if value.isprintable() else _Unparsable(field)
    value = stripped.split("/", 1)[0].rstrip()
    if value.isdigit():  # the common case, first (ASCII only: checked above)
        return int(value)
    if not value:
        return None
    if value in ("T", "F"):
        return value == "T"
    if _INTEGER.fullmatch(value):
        return int(value)
    if _REAL.fullmatch(value):
        return float(value.replace(" ", "").replace("D", "E").replace("d", "e"))
    return _Unparsable(value)


def _astropy_header(f, path, index) -> dict:
    """Read one header with astropy; return the cards bigstack uses, as :func:`_quick_header`."""
    from astropy.io import fits
    from astropy.io.fits.verify import VerifyError

    try:
        header = fits.Header.fromfile(f)
    except (VerifyError, ValueError, OSError, EOFError) as err:
        problem = " ".join(str(err).split()) or type(err).__name__
        if index == 0:
            raise FrameError(path, f"not a FITS file ({problem})") from err
        raise FrameError(path, f"HDU {index} has a corrupt header ({problem})") from err
    cards = {}
    for key in header:
        if key in _NEEDED and key not in cards:
            try:
                cards[key] = header[key]
            except (VerifyError, ValueError):  # an unparsable card
                cards[key] = _Unparsable()
    return cards


def inspect_image(path) -> ImageSource:
    """Read a PNG/JPEG's size from its header without decoding pixels.

    The size is checked against what the file can hold (a header that
    announces more pixels than the file's bytes could encode is corrupt),
    so no decode of an absurd size is ever attempted.
    """
    size, stamp = _stat(path)
    try:
        if is_url(path):
            fs, inner = _fs(path)
            opened = fs.open(inner, "rb")
        else:
            opened = open(path, "rb")
        with opened as f:
            head = f.read(8)
            if head == _PNG_SIGNATURE:
                shape = _png_shape(path, f.read(25), size)
            elif head.startswith(b"\xff\xd8"):
                f.seek(2)
                shape = _jpeg_shape(path, f, size)
            else:
                raise FrameError(path, "not a readable PNG/JPEG image (unknown signature)")
    except OSError as err:
        raise FrameError(path, f"cannot read: {err.strerror or err}") from err
    return ImageSource(path=os.fspath(path), shape=shape, stamp=stamp)


# PNG bit depths allowed per colour type, and the samples per pixel of each
_PNG_DEPTHS = {0: (1, 2, 4, 8, 16), 2: (8, 16), 3: (1, 2, 4, 8), 4: (8, 16), 6: (8, 16)}
_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
_DEFLATE_RATIO = 1032  # deflate's largest expansion: 258 bytes from about 2 bits


def _png_shape(path, ihdr, size) -> tuple[int, int]:
    """``(height, width)`` from the IHDR chunk that follows the PNG signature."""
    import struct
    import zlib

    def bad(problem):
        return FrameError(path, f"not a readable PNG/JPEG image (PNG {problem})")

    if len(ihdr) < 25 or ihdr[:8] != b"\x00\x00\x00\x0dIHDR":
        raise bad("does not start with an IHDR chunk")
    width, height, depth, colour, compression, filtering, interlace, crc = \
        struct.unpack(">IIBBBBBI", ihdr[8:])
    if zlib.crc32(ihdr[4:21]) != crc:
        raise bad("IHDR chunk fails its CRC check")
    if not (0 < width < 2**31 and 0 < height < 2**31):
        raise bad(f"size {width}x{height}")
    if depth not in _PNG_DEPTHS.get(colour, ()) or compression or filtering or interlace > 1:
        raise bad(f"IHDR: bit depth {depth}, colour type {colour}, methods "
                  f"{compression}/{filtering}/{interlace}")
    raw = height * (1 + -(-width * _PNG_SAMPLES[colour] * depth // 8))
    if raw > _DEFLATE_RATIO * size:
        raise bad(f"header announces {width}x{height} pixels, more than a file of {size} "
                  "bytes can hold")
    return height, width


# JPEG start-of-frame markers: C0..CF but for DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_JPEG_HUFFMAN_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7))


def _jpeg_shape(path, f, size) -> tuple[int, int]:
    """``(height, width)`` from the first start-of-frame segment of a JPEG (``f`` after SOI)."""
    def bad(problem):
        return FrameError(path, f"not a readable PNG/JPEG image (JPEG {problem})")

    while True:
        byte = f.read(1)
        if byte != b"\xff":
            raise bad("segment does not start with a marker" if byte else
                      "file ends before a start-of-frame segment")
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes
            marker = f.read(1)
        if not marker:
            raise bad("file ends before a start-of-frame segment")
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a segment
            continue
        if code in (0xD8, 0xD9, 0xDA):
            raise bad(f"marker {code:02X} before a start-of-frame segment")
        length = f.read(2)
        if len(length) < 2 or int.from_bytes(length, "big") < 2:
            raise bad(f"segment {code:02X} has a bad length")
        length = int.from_bytes(length, "big") - 2
        if code not in _JPEG_SOF:
            f.seek(length, os.SEEK_CUR)
            continue
        frame = f.read(length)
        if length < 6 or len(frame) < 6:
            raise bad("start-of-frame segment is cut short")
        height, width, components = (int.from_bytes(frame[1:3], "big"),
                                     int.from_bytes(frame[3:5], "big"), frame[5])
        if not (height and width and 1 <= components <= 4):
            raise bad(f"start-of-frame: {width}x{height} pixels, {components} components")
        # a Huffman-coded 8x8 block takes at least one bit: 512 pixels a byte at
        # most; allow eight times that
        if code in _JPEG_HUFFMAN_SOF and height * width > 4096 * size:
            raise bad(f"header announces {width}x{height} pixels, more than a file of "
                      f"{size} bytes can hold")
        return height, width


def inspect_raw(path, channel=None) -> RawSource:
    _size, stamp = _stat(path)
    shape, colours = raw_layout(path)
    if channel is not None and channel not in colours:
        raise FrameError(path, f"channel {channel!r} not in the Bayer pattern {colours}")
    return RawSource(path=os.fspath(path), shape=shape, colours=colours, channel=channel,
                     stamp=stamp)


def _frame_metadata(cards) -> dict:
    """The per-frame header values the cube carries as coordinates.

    ``cards`` as :func:`_quick_header` gives them; a value of the wrong kind
    (an EXPTIME that is not a finite number, a DATE-OBS that is not a date
    within datetime64[ns]) is left out rather than refused: these are
    labels, not what the pixels depend on.
    """
    meta = {}
    for key in ("EXPTIME", "EXPOSURE"):
        value = cards.get(key)
        if "exptime" not in meta and isinstance(value, (int, float)) \
                and not isinstance(value, bool) and math.isfinite(value):
            meta["exptime"] = float(value)
    date, time = cards.get("DATE-OBS"), cards.get("TIME-OBS")
    if isinstance(date, str):
        value = date.strip()
        if "T" not in value and isinstance(time, str):
            value = f"{value}T{time.strip()}"
        try:
            stamp = np.datetime64(value.rstrip("Z"))
        except (ValueError, OverflowError):
            stamp = None
        if stamp is not None and _TIME_RANGE[0] <= stamp <= _TIME_RANGE[1]:
            meta["time"] = stamp.astype("datetime64[ns]")
    value = cards.get("FILTER")
    if value is not None and not isinstance(value, _Unparsable):
        meta["filter"] = str(value).strip()
    for name, keys in (("temperature", ("CCD-TEMP", "SET-TEMP")), ("gain", ("GAIN", "ISOSPEED")),
                       ("binning", ("XBINNING",))):
        for key in keys:
            value = cards.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    and math.isfinite(value):
                meta[name] = float(value)
                break
    for name, keys in (("imagetyp", ("IMAGETYP", "FRAME")), ("object", ("OBJECT",)),
                       ("instrument", ("INSTRUME",))):
        for key in keys:
            value = cards.get(key)
            if isinstance(value, str) and value.strip():
                meta[name] = value.strip()
                break
    return meta


# the dates datetime64[ns] holds (beyond them numpy wraps around silently)
_TIME_RANGE = (np.datetime64("1678-01-01"), np.datetime64("2262-04-11"))


def inspect(path, channel=None, colour=None, mosaic=False):
    """Return the source description of a file's first frame (headers only)."""
    return inspect_frames(path, channel, colour, mosaic)[0]


def inspect_frames(path, channel=None, colour=None, mosaic=False) -> list:
    """Return the source of every frame in one file (headers only).

    Most files hold one frame; a SER video holds many, a FITS cube one per
    plane. ``channel`` and ``colour`` choose what a colour file gives (see
    :mod:`bigstack._planes`). ``mosaic``: a camera RAW file is described as
    its whole Bayer mosaic (:class:`RawMosaicSource`, what ``open_frames``
    debayers) rather than as one plane per colour.
    """
    kind = file_kind(path)
    if is_url(path) and kind == "raw":
        raise FrameError(path, "camera RAW is read from local files only")
    if colour is not None and kind == "raw":
        raise FrameError(path, "camera RAW frames are Bayer planes; pick one with channel=")
    if kind == "fits":
        return inspect_fits_frames(path, channel, colour)
    if kind == "fitsz":
        from ._fitsz import inspect_compressed

        return inspect_compressed(path, channel, colour)
    if kind == "tiff":
        from ._tiff import inspect_tiff

        return inspect_tiff(path, channel, colour)
    if kind == "ser":
        from ._ser import inspect_ser

        return inspect_ser(path, channel, colour)
    if kind == "xisf":
        from ._xisf import inspect_xisf

        return [inspect_xisf(path, channel, colour)]
    if kind == "image":
        if channel is None and not colour:
            return [inspect_image(path)]
        from ._planes import inspect_colour_image

        return [inspect_colour_image(path, channel, colour)]
    if mosaic:
        return [inspect_raw_mosaic(path)]
    return [inspect_raw(path, channel)]


def inspect_raw_mosaic(path) -> RawMosaicSource:
    """A RAW file's mosaic source: its size and pattern (LibRaw reads the header only)."""
    from ._bayer import PATTERNS

    _size, stamp = _stat(path)
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            sizes = raw.sizes
            colors = np.array(raw.raw_colors_visible[:2, :2]) if sizes.height >= 2 \
                and sizes.width >= 2 else None
            pattern, desc = raw.raw_pattern, raw.color_desc
    except (rawpy.LibRawError, rawpy.NotSupportedError, OSError, ValueError) as err:
        raise _raw_error(path, err) from err
    pattern, desc = _bayer(path, pattern, desc)
    if colors is None:
        raise FrameError(path, f"cannot read as camera RAW: {sizes.height}x{sizes.width} "
                               "visible pixels")
    cell = "".join(desc[int(k)] for k in colors.reshape(-1))
    if pattern.shape != (2, 2) or cell not in PATTERNS:
        raise FrameError(path, f"Bayer cell {cell!r} of {pattern.shape[0]}x{pattern.shape[1]}"
                               f" is not one of {', '.join(PATTERNS)}")
    return RawMosaicSource(path=os.fspath(path), shape=(int(sizes.height), int(sizes.width)),
                           bayer=cell, stamp=stamp)


# --------------------------------------------------------------------------
# the lazy cube


class FrameReader:
    """Array-like view ``(frame, y, x)`` (or ``(frame, channel, y, x)``) over files.

    Indexing with slices reads only the addressed rows and columns of the
    addressed frames. It holds file locations, never pixels, so it is cheap
    to send to dask workers.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, sources: Sequence):
        self.sources = tuple(sources)
        first = self.sources[0]
        self.frame_shape = first.shape
        self.planes = first.planes
        if self.planes is None:
            self.shape = (len(self.sources), *self.frame_shape)
        else:
            self.shape = (len(self.sources), len(self.planes), *self.frame_shape)
        self.ndim = len(self.shape)

    def __len__(self):
        return len(self.sources)

    def __dask_tokenize__(self):
        # computed once: each file's size and mtime, so a changed file is a new token
        if getattr(self, "_token", None) is None:
            paths = dict.fromkeys(s.path for s in self.sources)  # a video: one file
            self._token = (type(self).__name__, self.sources, [_stamp(p) for p in paths])
        return self._token

    method = None  # planes as stored, nothing debayered

    def colour_rows(self, indices):
        """The row source of a colour cube's frames ``indices`` (see :class:`PlaneRows`)."""
        if tuple(self.planes or ()) != PlaneRows.channels:
            raise ValueError(f"colour planes {self.planes} are not R, G, B")
        return PlaneRows(self, indices)

    def read(self, frame, y0, y1, x0=0, x1=None, plane=None) -> np.ndarray:
        """Read rows ``[y0, y1)`` and columns ``[x0, x1)`` of one frame as float32."""
        ny, nx = self.frame_shape
        x1 = nx if x1 is None else x1
        if not (0 <= y0 <= y1 <= ny and 0 <= x0 <= x1 <= nx):
            raise IndexError(f"window y[{y0}:{y1}] x[{x0}:{x1}] outside frame {ny}x{nx}")
        return self.sources[frame].read(y0, y1, x0, x1, plane)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        frames = range(self.shape[0])[key[0]]
        ys = range(self.frame_shape[0])[key[-2]]
        xs = range(self.frame_shape[1])[key[-1]]
        if any(not isinstance(k, slice) for k in key) or ys.step != 1 or xs.step != 1:
            raise IndexError("FrameReader supports unit-step slices only")
        y0, y1 = ys.start, ys.start + len(ys)
        x0, x1 = xs.start, xs.start + len(xs)
        if self.planes is None:
            out = np.empty((len(frames), len(ys), len(xs)), np.float32)
            for k, i in enumerate(frames):
                out[k] = self.read(i, y0, y1, x0, x1)
            return out
        planes = self.planes[key[1]]
        out = np.empty((len(frames), len(planes), len(ys), len(xs)), np.float32)
        for k, i in enumerate(frames):
            for p, plane in enumerate(planes):
                out[k, p] = self.read(i, y0, y1, x0, x1, plane)
        return out


class PlaneRows:
    """The R, G, B planes of colour files (RGB TIFF, XISF, SER, a 3-plane FITS, PNG/JPEG
    with ``colour=True``) as row sources, as :class:`bigstack._bayer.ColourRows` gives a
    Bayer cube's: ``channel`` one plane (registration reads green), ``every`` all three
    ``(colour, rows, W)`` for a colour tile."""

    channels = ("R", "G", "B")
    cfa = None

    def __init__(self, reader, files, channel="G", every=False):
        self.reader = reader
        self.files = np.asarray(files)
        self.channel = channel
        self.every = every

    def raw(self, i, r0, r1, buffers):
        j = int(self.files[i])
        if self.every:
            rows = np.stack([self.reader.read(j, r0, r1, plane=c) for c in self.channels])
        else:
            rows = self.reader.read(j, r0, r1, plane=self.channel)
        return rows, 1.0, 0.0, None, True

    def box(self, i, y0, y1, x0, x1):
        j = int(self.files[i])
        return self.reader.read(j, y0, y1, x0, x1, plane=self.channel).astype(np.float64)

    def channel_rows(self, colour):
        return PlaneRows(self.reader, self.files, colour)

    def all_rows(self):
        return PlaneRows(self.reader, self.files, None, every=True)


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _default_rows(source, nx, nplanes=1, target_bytes=32 * 2**20) -> int:
    if not getattr(source, "by_rows", isinstance(source, FitsSource)):
        return source.shape[0]  # formats that decode whole frames
    return max(1, min(source.shape[0], target_bytes // (4 * nx * nplanes)))


def open_frames(pattern_or_paths, *, rows: int | None = None, channel: str | None = None,
                colour: bool | None = None, debayer: str | None = "bilinear"):
    """Open frame files as a lazy ``(frame, y, x)`` cube without reading pixels.

    Parameters
    ----------
    pattern_or_paths : str, path, folder or sequence of paths
        A glob pattern (files sorted by name), a folder (its frame files,
        sorted) or a list of files (kept in order).
    rows : int, optional
        Rows per dask chunk. By default FITS frames are cut into bands of at
        most 32 MiB of float32; PNG/JPEG/RAW frames are one chunk each,
        since those formats decode whole.
    channel : {"R", "G", "B", "grey"}, optional
        Keep one colour of a colour file and drop the ``channel`` dimension:
        of a Bayer mosaic (FITS ``BAYERPAT``, camera RAW) one debayered
        colour; of RGB TIFF, XISF, SER, FITS or PNG/JPEG one plane, or
        ``"grey"`` for the tutorial's grey mix. Given for a mono file it is
        an error.
    colour : bool, optional
        For files with R, G, B planes: True keeps them (a ``channel``
        dimension), False makes them grey. By default TIFF, XISF, SER and
        3-plane FITS keep colour and PNG/JPEG are grey, as the tutorial's
        ``load_image`` reads them.
    debayer : {"bilinear", "superpixel", "cfa"} or None
        For one-shot-colour frames (a FITS ``BAYERPAT``/``COLORTYP`` header,
        or camera RAW): how the Bayer mosaic becomes colour planes (see
        :mod:`bigstack._bayer`): ``"bilinear"`` (default) at full size,
        ``"superpixel"`` (each 2x2 cell one pixel, half size) or ``"cfa"``
        (each colour's own samples, NaN elsewhere: stack it with
        ``subpixel="nearest"`` for a Bayer drizzle). ``None`` keeps the
        mosaic as a mono ``(frame, y, x)`` cube (what calibration masters
        are made of). Mono frames ignore it.

    Returns
    -------
    xarray.DataArray
        float32, dims ``("frame", "y", "x")`` (``("frame", "channel", "y",
        "x")``, channel ``["R", "G", "B"]``, for colour frames without
        ``channel``), backed by dask with one chunk per frame row band (all
        colours of a band in one chunk). Coordinates: ``frame`` (0..N-1), ``y`` and ``x``
        (pixel indices: images are indexed ``[y, x]``), per-frame ``path``
        (absolute),
        and where every header gives them ``exptime`` (s), ``time`` (from
        DATE-OBS) and ``filter``.

    Raises
    ------
    FrameNotFoundError
        An empty pattern or a missing file.
    FrameError
        A file that is not a readable image, a corrupt header (a FITS card
        with a value out of range names the HDU and the card), a truncated
        FITS, a FITS with no 2-D image, or a frame whose shape differs from
        the first frame's. The message names the file. Tasks reading the
        pixels later raise it too, for a file that cannot be decoded or that
        changed since it was opened.

    Examples
    --------
    >>> import tempfile
    >>> from bigstack import open_frames, synthetic
    >>> truth = synthetic.make_frames(tempfile.mkdtemp(), n_frames=3, shape=(64, 96))
    >>> cube = open_frames(truth.paths)
    >>> cube.dims, cube.shape
    (('frame', 'y', 'x'), (3, 64, 96))
    """
    import dask.array as da
    import xarray as xr
    from dask.base import tokenize

    from ._bayer import METHODS

    if debayer is not None and debayer not in METHODS:
        raise ValueError(f"debayer must be one of {METHODS} or None, got {debayer!r}")
    paths = [p if is_url(p) else os.path.abspath(p) for p in find_files(pattern_or_paths)]
    sources = []
    for path in paths:
        found = inspect_frames(path, None, colour, mosaic=True)
        if channel is not None and getattr(found[0], "bayer", None) is None:
            # a plane of a colour file (RGB TIFF, SER, ...), or a one-line error for mono
            found = inspect_frames(path, channel, colour, mosaic=True)
        source = found[0]
        if sources and source.shape != sources[0].shape:
            raise FrameError(
                path,
                f"frame shape {source.shape} (y, x) differs from {sources[0].shape} of the "
                f"first frame {sources[0].path}",
            )
        if sources and source.planes != sources[0].planes:
            raise FrameError(path, f"colour planes {source.planes} differ from the first "
                                   f"frame's {sources[0].planes}")
        if sources and getattr(source, "bayer", None) != getattr(sources[0], "bayer", None):
            raise FrameError(path, f"Bayer pattern {getattr(source, 'bayer', None)} differs "
                                   f"from {getattr(sources[0], 'bayer', None)} of the first "
                                   f"frame {sources[0].path}")
        sources.extend(found)
    paths = [s.path for s in sources]  # a video or a cube: one entry a frame
    pattern = getattr(sources[0], "bayer", None)
    if channel is not None and pattern is not None:  # a colour of a Bayer mosaic
        if channel not in ("R", "G", "B"):
            raise FrameError(sources[0].path, f"channel {channel!r} is not one of 'R', 'G', 'B'")
        if debayer is None:
            raise FrameError(sources[0].path, f"channel={channel!r} picks a colour of colour "
                             "(Bayer) frames with a debayer method")

    reader = FrameReader(sources)
    if pattern is not None and debayer is not None:
        return _bayer_cube(reader, pattern, debayer, channel, rows, paths)
    ny, nx = reader.frame_shape
    nplanes = 1 if reader.planes is None else len(reader.planes)
    band = rows if rows is not None else _default_rows(sources[0], nx, nplanes)
    if band < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    chunks = (1, band, nx) if reader.planes is None else (1, nplanes, band, nx)
    name = "frames-" + tokenize(reader, chunks)
    data = da.from_array(
        reader, chunks=chunks, name=name, asarray=False, fancy=False, lock=False,
        meta=np.empty((0,) * reader.ndim, np.float32), inline_array=False,
    )
    dims = ("frame", "y", "x") if reader.planes is None else ("frame", "channel", "y", "x")
    coords = _cube_coords(sources, reader.frame_shape)
    if reader.planes is not None:
        coords["channel"] = list(reader.planes)
    return xr.DataArray(data, dims=dims, coords=coords, name="frames")


def _cube_coords(sources, shape):
    coords = {
        "frame": np.arange(len(sources)),
        "y": np.arange(shape[0]),
        "x": np.arange(shape[1]),
        "path": ("frame", np.array([s.path for s in sources])),
    }
    for name_, values in _header_coords(sources).items():
        coords[name_] = ("frame", values)
    return coords


def _bayer_cube(reader, pattern, method, channel, rows, paths):
    """The debayered cube over a mosaic reader (see :func:`bayer_array`)."""
    from ._bayer import check_mosaic

    check_mosaic(reader.sources[0].path, reader.frame_shape)
    mosaic = FileRows(reader, np.arange(len(reader)))
    return bayer_array(mosaic, len(reader), reader.frame_shape, pattern, method, channel,
                       reader.sources, rows)


def bayer_array(mosaic, n, mosaic_shape, pattern, method, channel, sources, rows=None,
                coords=None, attrs=None):
    """A lazy colour cube (or one colour's) over ``mosaic``, a row source of Bayer mosaics.

    One chunk per frame row band holds every colour of the band, so the
    band's mosaic rows are read once for the three planes.
    """
    import dask.array as da
    import xarray as xr
    from dask.base import tokenize

    from ._bayer import CHANNELS, BayerReader

    reader = BayerReader(mosaic, n, mosaic_shape, pattern, method, channel)
    ny, nx = reader.frame_shape
    nplanes = 1 if channel else len(CHANNELS)
    if rows is None:
        whole = isinstance(sources[0], RawMosaicSource)  # decoded whole anyway
        rows = ny if whole else max(1, min(ny, (32 * 2**20) // (4 * nx * nplanes)))
    if rows < 1:
        raise ValueError(f"rows must be at least 1, got {rows}")
    chunks = (1, rows, nx) if channel else (1, nplanes, rows, nx)
    name = "bayer-" + tokenize(reader, chunks)
    data = da.from_array(reader, chunks=chunks, name=name, asarray=False, fancy=False,
                         lock=False, meta=np.empty((0,) * reader.ndim, np.float32),
                         inline_array=False)
    if coords is None:
        coords = _cube_coords(sources, (ny, nx))
    else:
        coords = {k: v for k, v in coords.items() if k not in ("y", "x", "channel")}
        coords.update(y=np.arange(ny), x=np.arange(nx))
    if channel:
        dims = ("frame", "y", "x")
        coords["channel"] = channel
    else:
        dims = ("frame", "channel", "y", "x")
        coords["channel"] = list(CHANNELS)
    out = xr.DataArray(data, dims=dims, coords=coords, name="frames", attrs=dict(attrs or {}))
    out.attrs["bayer"] = {"pattern": pattern, "debayer": method}
    return out


def _header_coords(sources) -> dict:
    """Per-frame coordinates present in every header."""
    out = {}
    for key in ("exptime", "time", "filter", "temperature", "gain"):
        values = [s.header.get(key) for s in sources]
        if all(v is not None for v in values):
            out[key] = np.array(values)
    return out


def _graph_reader(frames):
    """``(reader, frame_indices)`` of an untouched ``open_frames`` (or ``calibrate``) cube."""
    data = getattr(frames, "data", None)
    graph = getattr(data, "dask", None)
    if graph is None or "path" not in getattr(frames, "coords", {}):
        return None
    readers = []
    for layer_name, layer in graph.layers.items():
        if layer_name.startswith(("original-frames-", "original-calibrated-",
                                  "original-bayer-")):
            readers.extend(v for v in layer.values() if hasattr(v, "sources"))
        elif not layer_name.startswith(("frames-", "calibrated-", "bayer-", "getitem-")):
            return None
    if len(readers) != 1:
        return None
    reader = readers[0]
    ny, nx = reader.frame_shape
    if frames.sizes.get("y") != ny or frames.sizes.get("x") != nx:
        return None
    wanted = np.atleast_1d(frames["path"].values)
    index = {s.path: i for i, s in enumerate(reader.sources)}
    if len(index) == len(reader.sources):
        try:
            indices = np.array([index[p] for p in wanted])
        except KeyError:
            return None
        return reader, indices
    # frames of a video or a cube share a path: the frame coordinate says which
    if "frame" not in frames.coords:
        return None
    indices = np.atleast_1d(np.asarray(frames["frame"].values))
    if indices.dtype.kind not in "iu" or np.any(indices < 0) \
            or np.any(indices >= len(reader.sources)):
        return None
    if any(reader.sources[i].path != p for i, p in zip(indices, wanted, strict=True)):
        return None
    return reader, indices.astype(np.int64)


def frame_reader(frames) -> tuple[FrameReader, np.ndarray] | None:
    """The reader behind a cube from :func:`open_frames`, if pixels are untouched.

    Returns ``(reader, frame_indices)`` when ``frames`` is an
    ``open_frames`` cube or a selection of its frames (``isel``/``sel`` on
    ``frame`` only, or one colour of a colour cube), so fast paths may read
    files directly; ``None`` when the cube was computed on (arithmetic,
    another y/x extent, a user-built array) or still has a ``channel``
    dimension (see :func:`colour_reader`).
    """
    found = _graph_reader(frames)
    if found is None or "channel" in frames.dims:
        return None
    reader, indices = found
    if reader.planes is not None:
        if "channel" not in frames.coords or not hasattr(reader, "with_channel"):
            return None
        reader = reader.with_channel(str(frames["channel"].values))
    return reader, indices


def colour_reader(frames):
    """``(BayerReader, frame_indices)`` of an untouched colour cube ``(frame, channel, y,
    x)`` from :func:`open_frames` or :func:`bigstack.calibrate`, else None."""
    if getattr(frames, "dims", None) is None or "channel" not in frames.dims:
        return None
    found = _graph_reader(frames)
    if found is None or not hasattr(found[0], "colour_rows") or found[0].planes is None:
        return None
    if list(frames["channel"].values) != list(found[0].planes) or tuple(
            found[0].planes) != ("R", "G", "B"):
        return None
    return found


def bayer_reader(frames):
    """``(BayerReader, frame_indices)`` of a colour cube or one colour of it, else None."""
    found = _graph_reader(frames)
    if found is None or not hasattr(found[0], "with_channel"):
        return None
    return found


# --------------------------------------------------------------------------
# what the tile and star-search tasks read from


class FileRows:
    """Frames read straight from their files: the fast path of every task.

    FITS rows come back as stored (big-endian integers or floats) with
    their BSCALE/BZERO, so the combine converts them while adding instead
    of in a pass of its own; other formats come back as float32.
    """

    def __init__(self, reader, files):
        self.reader = reader
        self.files = np.asarray(files)

    def raw(self, i, r0, r1, buffers):
        """``(rows, scale, zero, blank, floating)`` of frame ``i``'s full rows ``[r0, r1)``.

        Stored rows are read into ``buffers[dtype]`` (a 1-D array; ``dtype`` a
        numpy dtype), made or grown as needed: a caller may put its own there.
        """
        source = self.reader.sources[int(self.files[i])]
        if isinstance(source, FitsSource) or getattr(source, "raw_rows", False):
            size = (r1 - r0) * source.shape[1]
            key = np.dtype(source.dtype)
            buffer = buffers.get(key)
            if buffer is None or buffer.size < size:
                buffer = buffers[key] = np.empty(size, key)
            rows = source.read_raw(r0, r1, buffer)
            return rows, source.bscale, source.bzero, source.blank, rows.dtype.kind == "f"
        return self.reader.read(int(self.files[i]), r0, r1), 1.0, 0.0, None, True

    def box(self, i, y0, y1, x0, x1):
        """Frame ``i``'s box as float64, reading only the box."""
        return self.reader.read(int(self.files[i]), y0, y1, x0, x1).astype(np.float64)


class ArrayRows:
    """Frames of an in-memory or dask ``(frame, y, x)`` array."""

    def __init__(self, array):
        self.array = array

    def _get(self, key):
        block = self.array[key]
        if hasattr(block, "compute"):
            block = block.compute(scheduler="synchronous")
        return block

    def raw(self, i, r0, r1, buffers):
        return np.asarray(self._get((i, slice(r0, r1))), np.float32), 1.0, 0.0, None, True

    def box(self, i, y0, y1, x0, x1):
        return np.asarray(self._get((i, slice(y0, y1), slice(x0, x1))), np.float64)


def cube_source(frames, what):
    """Return ``(source, n, (ny, nx), coords)`` for the frames a task will read.

    ``frames`` is a cube from :func:`open_frames` (its files are then read
    directly), any other ``(frame, y, x)`` DataArray or array, or a pattern
    or list of files (opened first). ``coords`` are the per-frame
    coordinates. ``what`` names the caller in errors.
    """
    if isinstance(frames, (str, os.PathLike, list, tuple)):
        frames = open_frames(frames)
    if hasattr(frames, "dims"):
        colour = colour_reader(frames)
        if colour is not None:  # measured on green; the stack reads every colour
            reader, indices = colour
            coords = {k: v for k, v in frames.coords.items() if v.dims == (frames.dims[0],)}
            return reader.colour_rows(indices), frames.shape[0], frames.shape[-2:], coords
        if frames.ndim != 3 or frames.dims[-2:] != ("y", "x"):
            raise ValueError(
                f"{what} needs a (frame, y, x) cube; got dims {frames.dims}"
                + (" (pick a colour with channel=..., or colour=False for grey)"
                   if "channel" in frames.dims else "")
            )
        found = frame_reader(frames)
        if found is None:
            source = ArrayRows(frames.data)
        elif hasattr(found[0], "rows"):  # a calibrated cube: its own row source
            source = found[0].rows(found[1])
        else:
            source = FileRows(*found)
        coords = {k: v for k, v in frames.coords.items() if v.dims == (frames.dims[0],)}
        return source, frames.shape[0], frames.shape[1:], coords
    if np.ndim(frames) != 3:
        raise ValueError(f"{what} needs a (frame, y, x) cube; got shape {np.shape(frames)}")
    return ArrayRows(frames), np.shape(frames)[0], np.shape(frames)[1:], {}
