"""SER videos: many frames in one file, each read at its own offset.

SER (version 3, "LUCAM-RECORDER") is what planetary and lucky-imaging
capture programs write: a 178-byte little-endian header, then
``FrameCount`` frames of ``width x height x planes`` samples stored one after
the other (rows top to bottom), then optionally one 64-bit UTC timestamp per
frame. Frame ``k`` starts at byte ``178 + k * frame_bytes``, so a file of
thousands of frames opens as a cube from its header alone, and a task reads
any band of rows of any frame with one ``pread``.

Samples are 8-bit (``PixelDepthPerPlane`` <= 8) or 16-bit. The byte order
of 16-bit samples follows what capture programs write rather than the
letter of the specification: the header's ``LittleEndian`` field is 0 for
little-endian data and 1 for big-endian (the first SER writers used the
field with the opposite meaning to the document, and Siril and later
readers keep their reading so as to read those files).

A ``FrameCount`` of 0 (a capture that stopped before writing it) counts
the whole frames the file holds.

Colour IDs: 0 mono; 8..11 Bayer RGGB, GRBG, GBRG, BGGR (the frame is the
raw mosaic, one plane, with ``bayerpat`` in its metadata for debayering);
100 RGB and 101 BGR (three interleaved samples a pixel: the frame has
``R, G, B`` planes). The CMY mosaics (16..19) are refused.

File descriptors: the frames of one file share one descriptor per thread
(kept in a small per-thread cache and checked against the size and
modification time recorded at open time), so a task that reads a row band
of 10,000 frames opens the file once, not 10,000 times.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import os
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from ._errors import FrameError
from ._planes import choose, planes_of, take

HEADER_BYTES = 178
SIGNATURE = b"LUCAM-RECORDER"
COLOURS = {0: "MONO", 8: "RGGB", 9: "GRBG", 10: "GBRG", 11: "BGGR", 100: "RGB", 101: "BGR"}
_CMY = {16: "CYYM", 17: "YCMY", 18: "YMCY", 19: "MYYC"}
_HEADER = struct.Struct("<14siiiiiii40s40s40sqq")
# 100-ns ticks from 0001-01-01 to 1970-01-01
_EPOCH_TICKS = 621355968000000000


@dataclass(frozen=True)
class SerSource:
    """One frame of a SER video: where its samples are and how they are laid out."""

    path: str
    shape: tuple[int, int]
    offset: int
    dtype: str  # "u1", "<u2" or ">u2"
    samples: int = 1  # 1 (mono or Bayer) or 3 (RGB / BGR, interleaved)
    order: str = "RGB"  # the order of the interleaved samples
    colour: str | None = None  # with samples == 3: one plane only, or "grey"
    index: int = 0
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    by_rows = True
    bscale, bzero, blank = 1.0, 0.0, None  # what FileRows.raw hands the combine with rows

    @property
    def raw_rows(self):
        """Mono and Bayer frames give their stored rows to the combine (no float copy)."""
        return self.samples == 1

    def read_raw(self, y0, y1, out=None):
        """Full-width rows ``[y0, y1)`` as stored; ``out``: a reusable buffer, as for FITS."""
        nx = self.shape[1]
        dtype = np.dtype(self.dtype)
        count = (y1 - y0) * nx
        raw = np.empty(count, dtype) if out is None else out[:count]
        read_at(self.path, self.stamp, raw, self.offset + y0 * nx * dtype.itemsize)
        return raw.reshape(y1 - y0, nx)

    @property
    def planes(self):
        return planes_of(self.samples == 3, self.colour)

    def read_samples(self, y0, y1):
        """Rows ``[y0, y1)`` as stored: ``(rows, width[, 3])`` of the file's dtype."""
        ny, nx = self.shape
        dtype = np.dtype(self.dtype)
        shape = (y1 - y0, nx) if self.samples == 1 else (y1 - y0, nx, self.samples)
        out = np.empty(shape, dtype)
        start = self.offset + y0 * nx * self.samples * dtype.itemsize
        read_at(self.path, self.stamp, out, start)
        return out

    def read(self, y0, y1, x0, x1, plane=None):
        rows = self.read_samples(y0, y1)[:, x0:x1]
        if self.samples == 1:
            return rows.astype(np.float32)
        want = plane if plane is not None else self.colour
        order = [self.order.index(c) for c in "RGB"]
        return take(rows[..., order], want)


def parse_header(path, head: bytes, size: int) -> dict:
    """Check a SER header (the file's first 178 bytes) against the file size."""
    if len(head) < HEADER_BYTES:
        raise FrameError(path, f"not a SER file (only {len(head)} bytes, the header needs "
                               f"{HEADER_BYTES})")
    (sig, _lu, colour_id, big, width, height, depth, count, observer, instrument, telescope,
     local_time, utc_time) = _HEADER.unpack(head[:HEADER_BYTES])
    if sig != SIGNATURE:
        raise FrameError(path, "not a SER file (no LUCAM-RECORDER signature)")
    if colour_id in _CMY:
        raise FrameError(path, f"SER colour {_CMY[colour_id]} (a CMY mosaic) is not supported")
    if colour_id not in COLOURS:
        raise FrameError(path, f"SER ColorID {colour_id} is not a known SER colour")
    if not 1 <= depth <= 16:
        raise FrameError(path, f"SER PixelDepthPerPlane {depth} is not a supported bit depth "
                               "(1..16)")
    if width < 1 or height < 1:
        raise FrameError(path, f"SER frame size {width}x{height} is empty")
    if count < 0:
        raise FrameError(path, f"SER FrameCount {count} is negative")
    if big not in (0, 1):
        raise FrameError(path, f"SER LittleEndian = {big} is neither 0 nor 1")
    itemsize = 1 if depth <= 8 else 2
    samples = 3 if colour_id >= 100 else 1
    frame_bytes = width * height * samples * itemsize
    if count == 0:  # a capture that stopped before writing its count: the frames there are
        count = max(size - HEADER_BYTES, 0) // frame_bytes
        if count == 0:
            raise FrameError(path, "SER FrameCount 0 and no whole frame in the file")
    need = HEADER_BYTES + count * frame_bytes
    if size < need:
        whole = (size - HEADER_BYTES) // frame_bytes
        raise FrameError(path, f"truncated: the header announces {count} frames of "
                               f"{frame_bytes} bytes but the file holds {max(whole, 0)}")
    dtype = "u1" if itemsize == 1 else (">u2" if big else "<u2")
    return {
        "colour": COLOURS[colour_id], "width": width, "height": height, "depth": depth,
        "count": count, "dtype": dtype, "samples": samples, "frame_bytes": frame_bytes,
        "observer": _text(observer), "instrument": _text(instrument),
        "telescope": _text(telescope), "utc": utc_time, "trailer": size >= need + 8 * count,
    }


def _text(raw):
    return raw.split(b"\0", 1)[0].decode("latin-1").strip()


def _ticks_to_time(ticks):
    """SER timestamps (100 ns since 0001-01-01 UTC) as datetime64[ns]; None if unusable."""
    ticks = np.asarray(ticks, np.int64)
    # after 1970 and before datetime64[ns] wraps (2262); else the stamps are not used
    if ticks.size == 0 or np.any(ticks <= _EPOCH_TICKS) \
            or np.any(ticks - _EPOCH_TICKS > (2**63 - 1) // 100):
        return None
    ns = (ticks - _EPOCH_TICKS) * 100
    return ns.astype("datetime64[ns]")


def inspect_ser(path, channel=None, colour=None) -> list[SerSource]:
    """Every frame of a SER video as a :class:`SerSource` (header and timestamps only).

    ``channel`` picks one plane of an RGB video ("R", "G", "B") or
    ``"grey"``; ``colour=False`` is grey too. Bayer videos give the raw
    mosaic (``header["bayerpat"]``), which a channel cannot split here.
    """
    from ._io import _stat, is_url

    if is_url(path):
        raise FrameError(path, "SER videos are read from local files only")
    size, stamp = _stat(path)
    try:
        with open(path, "rb") as f:
            info = parse_header(path, f.read(HEADER_BYTES), size)
            times = None
            if info["trailer"]:
                f.seek(HEADER_BYTES + info["count"] * info["frame_bytes"])
                raw = f.read(8 * info["count"])
                times = _ticks_to_time(np.frombuffer(raw, "<i8"))
    except OSError as err:
        raise FrameError(path, f"cannot read: {err.strerror or err}") from err
    if info["samples"] == 1 and channel is not None and info["colour"] != "MONO":
        raise FrameError(path, f"channel={channel!r}: this SER video is a {info['colour']} "
                               "Bayer mosaic, read as one plane")
    pick = choose(path, info["samples"] == 3, channel, colour, True)
    meta = {"format": "ser"}
    if info["colour"] in ("RGGB", "GRBG", "GBRG", "BGGR"):
        meta["bayerpat"] = info["colour"]
    if info["instrument"]:
        meta["instrument"] = info["instrument"]
    order = "BGR" if info["colour"] == "BGR" else "RGB"
    out = []
    for k in range(info["count"]):
        header = dict(meta)
        if times is not None:
            header["time"] = times[k]
        out.append(SerSource(
            path=os.fspath(path), shape=(info["height"], info["width"]),
            offset=HEADER_BYTES + k * info["frame_bytes"], dtype=info["dtype"],
            samples=info["samples"], order=order, colour=pick, index=k, header=header,
            stamp=stamp,
        ))
    return out


# --------------------------------------------------------------------------
# shared descriptors: one per file per thread


_LOCAL = threading.local()
_ALL_FDS = set()
_ALL_LOCK = threading.Lock()
_CACHE_SIZE = 8


def _cache():
    cache = getattr(_LOCAL, "fds", None)
    if cache is None or getattr(_LOCAL, "pid", None) != os.getpid():
        cache = _LOCAL.fds = OrderedDict()
        _LOCAL.pid = os.getpid()
    return cache


def _close(fd):
    with _ALL_LOCK:
        _ALL_FDS.discard(fd)
    try:
        os.close(fd)
    except OSError:
        pass


@atexit.register
def _close_all():
    with _ALL_LOCK:
        fds = list(_ALL_FDS)
        _ALL_FDS.clear()
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def shared_fd(path, stamp):
    """An open descriptor of ``path`` for this thread, reused across frames.

    The file is checked against ``stamp`` (size, mtime) on every use (an
    ``fstat``, not an open), so a file rewritten after opening is refused.
    """
    from ._io import _check_unchanged, _open_for_read

    cache = _cache()
    key = (path, stamp)
    fd = cache.get(key)
    if fd is None:
        fd = _open_for_read(path)
        with _ALL_LOCK:
            _ALL_FDS.add(fd)
        cache[key] = fd
        while len(cache) > _CACHE_SIZE:
            _close(cache.popitem(last=False)[1])
    else:
        cache.move_to_end(key)
    try:
        _check_unchanged(path, stamp, os.fstat(fd))
    except BaseException:
        _close(cache.pop(key))
        raise
    return fd


def opens():
    """How many descriptors this process opened through :func:`shared_fd` and holds."""
    with _ALL_LOCK:
        return len(_ALL_FDS)


def read_at(path, stamp, out, offset):
    """Fill ``out`` with the bytes at ``offset`` of ``path`` through the shared descriptor."""
    from ._io import _pread_into

    _pread_into(shared_fd(path, stamp), out, offset, path)


# --------------------------------------------------------------------------
# writing (synthetic data and tests)


def write_ser(path, frames, *, colour="MONO", depth=None, big_endian=False, times=None,
              observer="", instrument="bigstack synthetic camera", telescope="",
              overwrite=False):
    """Write ``frames`` as a SER v3 video; return the path.

    ``frames`` is an iterable of 2-D arrays (mono or a Bayer mosaic) or of
    ``(y, x, 3)`` arrays in R, G, B order (``colour="RGB"`` or ``"BGR"``;
    BGR files store them reversed), all of one shape and of dtype uint8 or
    uint16. It may be a generator: frames are written one at a time, so a
    long video never sits in memory. ``times`` (datetimes, UTC), if given,
    are written as the trailing timestamps. The header's ``LittleEndian``
    field is written as capture programs do (0 for little-endian data).
    """
    ids = {v: k for k, v in COLOURS.items()}
    if colour not in ids:
        raise ValueError(f"colour must be one of {tuple(ids)}, not {colour!r}")
    samples = 3 if colour in ("RGB", "BGR") else 1
    frames = iter(frames)
    first = np.asarray(next(frames))
    if first.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"SER frames are uint8 or uint16, not {first.dtype}")
    want_ndim = 3 if samples == 3 else 2
    if first.ndim != want_ndim or (samples == 3 and first.shape[2] != 3):
        raise ValueError(f"colour={colour!r} takes frames of {want_ndim} dimensions"
                         + (" (y, x, 3)" if samples == 3 else "") + f", not {first.shape}")
    height, width = first.shape[:2]
    if depth is None:
        depth = 8 if first.dtype == np.uint8 else 16
    dtype = np.dtype("u1") if first.dtype == np.uint8 else np.dtype(">u2" if big_endian else "<u2")
    count = 0
    with open(path, "wb" if overwrite else "xb") as f:
        f.write(b"\0" * HEADER_BYTES)
        frame = first
        while frame is not None:
            frame = np.asarray(frame)
            if frame.shape != first.shape or frame.dtype != first.dtype:
                raise ValueError(f"frame {count} has shape {frame.shape} and dtype "
                                 f"{frame.dtype}, not those of frame 0")
            if colour == "BGR":
                frame = frame[..., ::-1]
            f.write(np.ascontiguousarray(frame, dtype).tobytes())
            count += 1
            frame = next(frames, None)
        stamps = list(times) if times is not None else []
        if stamps:
            if len(stamps) != count:
                raise ValueError(f"{len(stamps)} times for {count} frames")
            f.write(np.array([_time_to_ticks(t) for t in stamps], "<i8").tobytes())
        utc = _time_to_ticks(stamps[0]) if stamps else 0
        f.seek(0)
        f.write(_HEADER.pack(SIGNATURE, 0, ids[colour], 1 if big_endian else 0, width, height,
                             depth, count, _field(observer), _field(instrument),
                             _field(telescope), utc, utc))
    return path


def _field(text):
    return text.encode("latin-1")[:40].ljust(40, b"\0")


def _time_to_ticks(t):
    if isinstance(t, np.datetime64):
        ns = int(t.astype("datetime64[ns]").astype(np.int64))
        return _EPOCH_TICKS + ns // 100
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    delta = t - _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
    return _EPOCH_TICKS + (delta // _dt.timedelta(microseconds=1)) * 10
