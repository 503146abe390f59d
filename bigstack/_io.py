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
    NaN. Tile-compressed FITS is refused with a clear error.
PNG / JPEG
    Decoded whole (these formats cannot be read by rows) and converted to
    grey with the weights R 0.2126, G 0.7152, B 0.0722, in the file's own
    integer scale (0..255 for 8-bit, 0..65535 for 16-bit). Note that
    matplotlib's ``imread`` scales PNG to 0..1 instead.
Camera RAW (NEF, CR2, DNG, ...)
    Through ``rawpy`` (the ``raw`` extra): one plane per Bayer colour, each
    half the sensor size, the two greens averaged, as the tutorial's
    ``load_image`` does. The cube then has a ``channel`` dimension, or pick
    one colour with ``open_frames(..., channel="G")``.
"""

from __future__ import annotations

import glob
import os
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
SUPPORTED_SUFFIXES = FITS_SUFFIXES + IMAGE_SUFFIXES + RAW_SUFFIXES

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
                    pattern, "folder holds no frame files "
                    f"(looked for {', '.join(SUPPORTED_SUFFIXES[:6])}, ... and camera RAW)"
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
        if not os.path.exists(path):
            raise FrameNotFoundError(path, "no such file")
        if os.path.isdir(path):
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
    """A file opened for reading at offsets: a local descriptor, or an fsspec file."""

    def __init__(self, path):
        self.path = path
        self.remote = None
        if is_url(path):
            fs, inner = _fs(path)
            try:
                self.remote = fs.open(inner, "rb")
            except FileNotFoundError as err:
                raise FrameNotFoundError(path, "no such file") from err
        else:
            self.fd = _open_for_read(path)

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
        self.remote.seek(offset)
        data = self.remote.read(len(view))
        if len(data) < len(view):
            raise FrameError(self.path, f"truncated: no data at byte {offset + len(data)}")
        view[:] = data


def _file_size(path):
    if is_url(path):
        fs, inner = _fs(path)
        try:
            return fs.size(inner)
        except FileNotFoundError as err:
            raise FrameNotFoundError(path, "no such file") from err
    return os.path.getsize(path)


def _file_bytes(path):
    if is_url(path):
        fs, inner = _fs(path)
        return fs.cat_file(inner)
    return path


def file_kind(path) -> str:
    """Return ``"fits"``, ``"image"`` or ``"raw"`` from the file's suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in FITS_SUFFIXES:
        return "fits"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in RAW_SUFFIXES:
        return "raw"
    raise FrameError(
        path,
        f"unsupported file type {suffix or '(no suffix)'!r}; bigstack reads FITS "
        f"({', '.join(FITS_SUFFIXES)}), PNG, JPEG and camera RAW",
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
        with _File(self.path) as f:
            f.read_into(raw, self.offset + y0 * nx * dtype.itemsize)
        return raw.reshape(y1 - y0, nx)

    def read(self, y0, y1, x0, x1, plane=None):
        ny, nx = self.shape
        dtype = np.dtype(self.dtype)
        raw = np.empty((y1 - y0, x1 - x0), dtype=dtype)
        with _File(self.path) as f:
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

    planes = None

    def read(self, y0, y1, x0, x1, plane=None):
        return read_image_grey(self.path)[y0:y1, x0:x1]


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

    @property
    def planes(self):
        return None if self.channel is not None else self.colours

    def read(self, y0, y1, x0, x1, plane=None):
        colour = plane if plane is not None else self.channel
        if colour is None:
            return read_raw_planes(self.path, self.colours)[:, y0:y1, x0:x1]
        return read_raw_planes(self.path, (colour,))[0, y0:y1, x0:x1]


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
        n = os.preadv(fd, [view[done:]], offset + done)
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

    ``weights`` are the R, G, B weights (a grey file is returned as is).
    """
    import imagecodecs

    try:
        data = imagecodecs.imread(_file_bytes(path))
    except Exception as err:  # imagecodecs raises its own error classes per codec
        raise FrameError(path, f"cannot decode image: {err}") from err
    if data.ndim == 2:
        return data.astype(np.float32)
    if data.ndim != 3 or data.shape[2] not in (3, 4):
        raise FrameError(path, f"unexpected image layout {data.shape}")
    rgb = data[..., :3].astype(np.float64)
    grey = rgb[..., 0] * weights[0] + rgb[..., 1] * weights[1]
    grey += rgb[..., 2] * weights[2]
    return grey.astype(np.float32)


def _import_rawpy(path):
    try:
        import rawpy
    except ImportError as err:
        raise FrameError(
            path, "camera RAW needs rawpy: pip install 'bigstack[raw]'"
        ) from err
    return rawpy


def raw_layout(path) -> tuple[tuple[int, int], tuple[str, ...]]:
    """Return the per-colour plane shape and the Bayer colours of a RAW file."""
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            pattern = np.asarray(raw.raw_pattern)
            sizes = raw.sizes
            desc = raw.color_desc.decode("ascii")
    except Exception as err:  # LibRaw raises several unrelated classes
        raise FrameError(path, f"cannot read as camera RAW: {err}") from err
    if pattern is None or pattern.ndim != 2:
        raise FrameError(path, "not a Bayer-pattern RAW file")
    prow, pcol = pattern.shape
    shape = (sizes.raw_height // prow, sizes.raw_width // pcol)
    colours = tuple(dict.fromkeys(desc[i] for i in np.unique(pattern)))
    return shape, tuple(c for c in ("R", "G", "B") if c in colours) or colours


def read_raw_planes(path, colours=("R", "G", "B"), filtered=True) -> np.ndarray:
    """Read a RAW file into one float32 plane per colour in ``colours``.

    Each colour's plane takes one pixel per Bayer cell (half the sensor
    size for a 2x2 pattern); a colour present more than once in the cell
    (the two greens) is the mean of its planes. With ``filtered=False`` the
    planes keep the sensor size with zeros at other colours' pixels (the
    tutorial's ``return_filtered_raw=False``).
    """
    rawpy = _import_rawpy(path)
    try:
        with rawpy.imread(os.fspath(path)) as raw:
            image = np.array(raw.raw_image, dtype=np.float32)
            pattern = np.array(raw.raw_pattern)
            desc = np.array(list(raw.color_desc.decode("ascii")))
            raw_colors = np.array(raw.raw_colors) if not filtered else None
    except Exception as err:
        raise FrameError(path, f"cannot read as camera RAW: {err}") from err
    prow, pcol = pattern.shape
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
                planes.append(image[row::prow, col::pcol])
            else:
                planes.append(image * (raw_colors == index))
        out.append(np.mean(planes, axis=0, dtype=np.float32))
    return np.stack(out)


# --------------------------------------------------------------------------
# header inspection (open time): read headers once, check sizes, no pixels


def inspect_fits(path) -> FitsSource:
    """Locate the first 2-D image HDU of a FITS file from its headers alone.

    Walks the HDUs by reading only their headers and seeking over their
    data; checks that the file is long enough for the data the header
    announces, so a truncated frame is reported before any work starts.
    """
    from astropy.io import fits

    size = _file_size(path)
    if size == 0:
        raise FrameError(path, "not a FITS file (the file is empty)")
    if is_url(path):
        fs, inner = _fs(path)
        opened = fs.open(inner, "rb", block_size=_FITS_BLOCK)
    else:
        opened = open(path, "rb", buffering=0)  # unbuffered: read header blocks only
    with opened as f:
        pos = 0
        index = 0
        while pos < size:
            f.seek(pos)
            try:
                header = _quick_header(f)
                if header is None:  # anything unusual: let astropy read it
                    f.seek(pos)
                    header = fits.Header.fromfile(f)
            except (ValueError, OSError, EOFError) as err:
                if index == 0:
                    raise FrameError(path, f"not a FITS file ({err or 'empty'})") from err
                raise FrameError(path, f"HDU {index} has a corrupt header ({err})") from err
            if index == 0 and header.get("SIMPLE") is not True:
                raise FrameError(path, "not a FITS file (no SIMPLE = T card)")
            data_start = f.tell()
            naxis = int(header.get("NAXIS", 0))
            axes = [int(header.get(f"NAXIS{i}", 0)) for i in range(1, naxis + 1)]
            bitpix = int(header.get("BITPIX", 8))
            nbytes = 0
            if naxis:
                count = int(np.prod(axes, dtype=np.int64)) + int(header.get("PCOUNT", 0))
                nbytes = abs(bitpix) // 8 * int(header.get("GCOUNT", 1)) * count
            is_image = index == 0 or str(header.get("XTENSION", "")).strip() == "IMAGE"
            if header.get("ZIMAGE") is True:
                raise FrameError(
                    path,
                    f"HDU {index} is a tile-compressed image, which bigstack cannot read "
                    "by rows; decompress it first (e.g. with funpack)",
                )
            if is_image and naxis >= 1 and nbytes > 0:
                if naxis != 2:
                    extra = [n for n in axes[2:] if n != 1]
                    if naxis == 1 or extra:
                        raise FrameError(
                            path,
                            f"HDU {index} holds a {naxis}-D image of shape "
                            f"{tuple(reversed(axes))}; bigstack needs one 2-D frame per file",
                        )
                if bitpix not in _BITPIX_DTYPES:
                    raise FrameError(path, f"HDU {index} has invalid BITPIX = {bitpix}")
                if data_start + nbytes > size:
                    raise FrameError(
                        path,
                        f"truncated: the header announces {nbytes} bytes of image data but "
                        f"only {size - data_start} follow it",
                    )
                blank = header.get("BLANK") if bitpix > 0 else None
                return FitsSource(
                    path=os.fspath(path),
                    shape=(axes[1], axes[0]),
                    offset=data_start,
                    dtype=_BITPIX_DTYPES[bitpix],
                    bscale=float(header.get("BSCALE", 1.0)),
                    bzero=float(header.get("BZERO", 0.0)),
                    blank=None if blank is None else int(blank),
                    header=_frame_metadata(header),
                )
            pos = data_start + -(-nbytes // _FITS_BLOCK) * _FITS_BLOCK
            index += 1
    raise FrameError(path, "no image HDU (no HDU holds a 2-D image)")


# the cards open_frames needs; _quick_header reads only these
_NEEDED_CARDS = {
    "SIMPLE", "XTENSION", "BITPIX", "NAXIS", "PCOUNT", "GCOUNT", "BSCALE", "BZERO", "BLANK",
    "ZIMAGE", "EXPTIME", "EXPOSURE", "DATE-OBS", "TIME-OBS", "FILTER",
}


def _quick_header(f, max_blocks=100):
    """Read one FITS header (whole 2880-byte blocks) and parse only the cards bigstack uses.

    Returns a dict of those keywords' values, with ``f`` left at the start
    of the data, or None when anything is unusual (not ASCII, a value it
    does not understand, no END within ``max_blocks``); then the caller
    reads the header with astropy instead. Opening thousands of frames is
    dominated by header parsing, and astropy parses every card.
    """
    cards = {}
    for _ in range(max_blocks):
        block = f.read(_FITS_BLOCK)
        if len(block) < _FITS_BLOCK:
            return None
        try:
            text = block.decode("ascii")
        except UnicodeDecodeError:
            return None
        for start in range(0, _FITS_BLOCK, 80):
            key = text[start:start + 8].rstrip()
            if key == "END":
                return cards if "SIMPLE" in cards or "XTENSION" in cards else None
            if (key in _NEEDED_CARDS or key.startswith("NAXIS")) and \
                    text[start + 8:start + 10] == "= ":
                value = _card_value(text[start + 10:start + 80])
                if value is None:
                    return None
                cards[key] = value
    return None


def _card_value(field):
    """The value of a fixed-format card (the 70 characters after ``= ``), or None."""
    field = field.strip()
    if field.startswith("'"):
        end, chars = 1, []
        while True:
            quote = field.find("'", end)
            if quote < 0:
                return None
            chars.append(field[end:quote])
            if field[quote + 1:quote + 2] == "'":  # a doubled quote stands for one
                chars.append("'")
                end = quote + 2
                continue
            return "".join(chars).rstrip()
    field = field.split("/", 1)[0].strip()
    if field in ("T", "F"):
        return field == "T"
    try:
        return int(field)
    except ValueError:
        pass
    try:
        return float(field.replace("D", "E"))
    except ValueError:
        return None


def inspect_image(path) -> ImageSource:
    """Read a PNG/JPEG's size from its header without decoding pixels."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        source = io.BytesIO(_file_bytes(path)) if is_url(path) else path
        with Image.open(source) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError) as err:
        raise FrameError(path, f"not a readable PNG/JPEG image ({err})") from err
    return ImageSource(path=os.fspath(path), shape=(height, width))


def inspect_raw(path, channel=None) -> RawSource:
    shape, colours = raw_layout(path)
    if channel is not None and channel not in colours:
        raise FrameError(path, f"channel {channel!r} not in the Bayer pattern {colours}")
    return RawSource(path=os.fspath(path), shape=shape, colours=colours, channel=channel)


def _frame_metadata(header) -> dict:
    """The per-frame header values the cube carries as coordinates."""
    meta = {}
    for key, name in (("EXPTIME", "exptime"), ("EXPOSURE", "exptime")):
        if name not in meta and key in header:
            try:
                meta[name] = float(header[key])
            except (TypeError, ValueError):
                pass
    if "DATE-OBS" in header:
        value = str(header["DATE-OBS"]).strip()
        if "T" not in value and "TIME-OBS" in header:
            value = f"{value}T{str(header['TIME-OBS']).strip()}"
        try:
            meta["time"] = np.datetime64(value.rstrip("Z"), "ns")
        except ValueError:
            pass
    if "FILTER" in header:
        meta["filter"] = str(header["FILTER"]).strip()
    return meta


def inspect(path, channel=None):
    """Return the source description of one frame file (headers only)."""
    kind = file_kind(path)
    if is_url(path):
        if kind == "raw":
            raise FrameError(path, "camera RAW is read from local files only")
    elif not os.path.exists(path):
        raise FrameNotFoundError(path, "no such file")
    if channel is not None and kind != "raw":
        raise FrameError(path, f"channel={channel!r} applies to camera RAW files only")
    if kind == "fits":
        return inspect_fits(path)
    if kind == "image":
        return inspect_image(path)
    return inspect_raw(path, channel)


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
            self._token = (type(self).__name__, self.sources,
                           [_stamp(s.path) for s in self.sources])
        return self._token

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


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def _default_rows(source, nx, nplanes=1, target_bytes=32 * 2**20) -> int:
    if not isinstance(source, FitsSource):
        return source.shape[0]  # compressed formats decode whole frames
    return max(1, min(source.shape[0], target_bytes // (4 * nx * nplanes)))


def open_frames(pattern_or_paths, *, rows: int | None = None, channel: str | None = None):
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
    channel : {"R", "G", "B"}, optional
        Camera RAW only: keep one Bayer colour and drop the ``channel``
        dimension. Given for another format it is an error.

    Returns
    -------
    xarray.DataArray
        float32, dims ``("frame", "y", "x")`` (``("frame", "channel", "y",
        "x")`` for RAW without ``channel``), backed by dask with one chunk per
        frame row band. Coordinates: ``frame`` (0..N-1), ``y`` and ``x``
        (pixel indices: images are indexed ``[y, x]``), per-frame ``path``
        (absolute),
        and where every header gives them ``exptime`` (s), ``time`` (from
        DATE-OBS) and ``filter``.

    Raises
    ------
    FrameNotFoundError
        An empty pattern or a missing file.
    FrameError
        A file that is not a readable image, a truncated FITS, a FITS with no
        2-D image, or a frame whose shape differs from the first frame's.
        The message names the file.

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

    paths = [p if is_url(p) else os.path.abspath(p) for p in find_files(pattern_or_paths)]
    sources = []
    for path in paths:
        source = inspect(path, channel)
        if sources and source.shape != sources[0].shape:
            raise FrameError(
                path,
                f"frame shape {source.shape} (y, x) differs from {sources[0].shape} of the "
                f"first frame {sources[0].path}",
            )
        if sources and source.planes != sources[0].planes:
            raise FrameError(path, f"Bayer colours {source.planes} differ from the first frame's")
        sources.append(source)

    reader = FrameReader(sources)
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
    coords = {
        "frame": np.arange(len(paths)),
        "y": np.arange(ny),
        "x": np.arange(nx),
        "path": ("frame", np.array([s.path for s in sources])),
    }
    if reader.planes is not None:
        coords["channel"] = list(reader.planes)
    for name_, values in _header_coords(sources).items():
        coords[name_] = ("frame", values)
    return xr.DataArray(data, dims=dims, coords=coords, name="frames")


def _header_coords(sources) -> dict:
    """Per-frame coordinates present in every header."""
    out = {}
    for key in ("exptime", "time", "filter"):
        values = [s.header.get(key) for s in sources]
        if all(v is not None for v in values):
            out[key] = np.array(values)
    return out


def frame_reader(frames) -> tuple[FrameReader, np.ndarray] | None:
    """The reader behind a cube from :func:`open_frames`, if pixels are untouched.

    Returns ``(reader, frame_indices)`` when ``frames`` is an
    ``open_frames`` cube or a selection of its frames (``isel``/``sel`` on
    ``frame`` only), so fast paths may read files directly; ``None`` when
    the cube was computed on (arithmetic, another y/x extent, a
    user-built array).
    """
    data = getattr(frames, "data", None)
    graph = getattr(data, "dask", None)
    if graph is None or "path" not in getattr(frames, "coords", {}):
        return None
    readers = []
    for layer_name, layer in graph.layers.items():
        if layer_name.startswith("original-frames-"):
            readers.extend(v for v in layer.values() if isinstance(v, FrameReader))
        elif not (layer_name.startswith("frames-") or layer_name.startswith("getitem-")):
            return None
    if len(readers) != 1:
        return None
    reader = readers[0]
    ny, nx = reader.frame_shape
    if frames.sizes.get("y") != ny or frames.sizes.get("x") != nx:
        return None
    if "channel" in frames.dims or (reader.planes is not None and "channel" not in frames.coords):
        return None
    index = {s.path: i for i, s in enumerate(reader.sources)}
    try:
        indices = np.array([index[p] for p in np.atleast_1d(frames["path"].values)])
    except KeyError:
        return None
    return reader, indices


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
        """``(rows, scale, zero, blank, floating)`` of frame ``i``'s full rows ``[r0, r1)``."""
        source = self.reader.sources[int(self.files[i])]
        if isinstance(source, FitsSource):
            size = (r1 - r0) * source.shape[1]
            buffer = buffers.get(source.dtype)
            if buffer is None or buffer.size < size:
                buffer = buffers[source.dtype] = np.empty(size, source.dtype)
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
        if frames.ndim != 3 or frames.dims[-2:] != ("y", "x"):
            raise ValueError(
                f"{what} needs a (frame, y, x) cube; got dims {frames.dims}"
                + (" (pick a RAW colour with channel=...)" if "channel" in frames.dims else "")
            )
        found = frame_reader(frames)
        source = FileRows(*found) if found is not None else ArrayRows(frames.data)
        coords = {k: v for k, v in frames.coords.items() if v.dims == (frames.dims[0],)}
        return source, frames.shape[0], frames.shape[1:], coords
    if np.ndim(frames) != 3:
        raise ValueError(f"{what} needs a (frame, y, x) cube; got shape {np.shape(frames)}")
    return ArrayRows(frames), np.shape(frames)[0], np.shape(frames)[1:], {}
