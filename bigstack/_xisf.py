"""XISF, PixInsight's format, through the ``xisf`` package (the ``xisf`` extra).

The ``xisf`` package (PyPI, maintained: releases in 2024 and 2026) parses
the XML header and decodes compressed data blocks; it is GPL-3.0 licensed,
so it is an optional extra of bigstack (BSD-3-Clause), not a dependency.

The first image of the file is the frame (mono, or RGB planes). How a band
of rows is read:

- an **uncompressed attached** block (PixInsight's default) is read by
  rows at its offset, one ``pread`` a band and plane (planar storage, the
  XISF default) or a band of interleaved samples (``pixelStorage="Normal"``),
  in the block's byte order -- no package call at read time;
- a **compressed** block (zlib, lz4, zstd, with or without byte shuffling)
  or an inline/embedded one is decoded whole by the ``xisf`` package.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ._errors import FrameError
from ._planes import RGB, choose, planes_of, take

SUFFIXES = (".xisf",)
_DTYPES = {"UInt8": "u1", "UInt16": "u2", "UInt32": "u4", "Float32": "f4", "Float64": "f8"}


@dataclass(frozen=True)
class XisfSource:
    """The first image of an XISF file."""

    path: str
    shape: tuple[int, int]
    dtype: str  # with the block's byte order
    channels: int
    rgb: bool
    planar: bool
    offset: int | None  # an uncompressed attachment's position; None: decode whole
    pick: str | None = None
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def planes(self):
        return planes_of(self.rgb, self.pick)

    @property
    def by_rows(self):
        return self.offset is not None

    def read(self, y0, y1, x0, x1, plane=None):
        want = plane if plane is not None else self.pick
        if not self.rgb:
            return self._channel(0, y0, y1, x0, x1).astype(np.float32)
        if want in RGB:
            return self._channel(RGB.index(want), y0, y1, x0, x1).astype(np.float32)
        return take(np.stack([self._channel(c, y0, y1, x0, x1) for c in range(3)]), want,
                    axis=0)

    def _channel(self, c, y0, y1, x0, x1):
        from ._io import _check_unchanged, _File

        ny, nx = self.shape
        dtype = np.dtype(self.dtype)
        if self.offset is None:
            _check_unchanged(self.path, self.stamp)
            return _decode_whole(self.path, self.shape, self.channels, self.planar)[
                c, y0:y1, x0:x1]
        with _File(self.path, self.stamp) as f:
            if self.planar:
                rows = np.empty((y1 - y0, nx), dtype)
                f.read_into(rows, self.offset + (c * ny + y0) * nx * dtype.itemsize)
                return rows[:, x0:x1]
            rows = np.empty((y1 - y0, nx, self.channels), dtype)
            f.read_into(rows, self.offset + y0 * nx * self.channels * dtype.itemsize)
            return rows[:, x0:x1, c]


def _import(path):
    try:
        import xisf
    except ImportError as err:
        raise FrameError(path, "XISF needs the xisf package: pip install 'bigstack[xisf]'") \
            from err
    return xisf


def _error(path, err):
    problem = " ".join(str(err).split()) or type(err).__name__
    return FrameError(path, f"cannot read as XISF: {problem}")


def _decode_whole(path, shape, channels, planar):
    """The first image decoded by the ``xisf`` package, as ``(channel, y, x)``."""
    xisf = _import(path)
    try:
        data = xisf.XISF(path).read_image(0, data_format="channels_first")
    except Exception as err:  # the package raises many kinds on a bad block
        raise _error(path, err) from err
    ny, nx = shape
    if data.size != channels * ny * nx:
        raise FrameError(path, f"decodes to {data.size} samples, not {channels}x{ny}x{nx}")
    if not planar:  # the package assumes planar storage: undo its reshape
        data = np.ascontiguousarray(data).reshape(ny, nx, channels).transpose(2, 0, 1)
    return data


def inspect_xisf(path, channel=None, colour=None) -> XisfSource:
    """Read an XISF file's XML header (no pixels) and place its first image."""
    from ._io import _stat, is_url

    if is_url(path):
        raise FrameError(path, "XISF is read from local files only")
    size, stamp = _stat(path)
    with open(path, "rb") as f:
        signature = f.read(8)
    if signature != b"XISF0100":
        raise FrameError(path, "not an XISF file (no XISF0100 signature)")
    xisf = _import(path)
    try:
        images = xisf.XISF(path).get_images_metadata()
    except Exception as err:
        raise _error(path, err) from err
    if not images:
        raise FrameError(path, "XISF file holds no image")
    meta = images[0]
    try:
        nx, ny, channels = (int(v) for v in meta["geometry"])
    except (ValueError, TypeError):
        raise FrameError(path, f"XISF image geometry {meta.get('geometry')!r} is not "
                               "width:height:channels") from None
    kind = _DTYPES.get(meta.get("sampleFormat"))
    if kind is None:
        raise FrameError(path, f"unsupported XISF sample format {meta.get('sampleFormat')!r}")
    if nx < 1 or ny < 1 or channels < 1:
        raise FrameError(path, f"XISF image of {nx}x{ny}x{channels} samples is empty")
    space = str(meta.get("colorSpace", "Gray"))
    rgb = space == "RGB" and channels >= 3
    if not rgb and channels != 1:
        raise FrameError(path, f"unsupported XISF image: {channels} channels in {space}")
    order = ">" if str(meta.get("byteOrder", "little")).lower() == "big" else "<"
    dtype = np.dtype(order + kind)
    planar = str(meta.get("pixelStorage", "Planar")) != "Normal"
    location = meta.get("location")
    offset = None
    if location[0] == "attachment":
        pos, length = int(location[1]), int(location[2])
        if pos + length > size:
            raise FrameError(path, f"truncated: the image block ends at byte {pos + length} "
                                   f"but the file holds {size}")
        if "compression" not in meta:
            if length != nx * ny * channels * dtype.itemsize:
                raise FrameError(path, f"the image block holds {length} bytes, not the "
                                       f"{nx * ny * channels * dtype.itemsize} of its geometry")
            offset = pos
    pick = choose(path, rgb, channel, colour, True)
    header = {"format": "xisf"}
    exptime = meta.get("FITSKeywords", {}).get("EXPTIME")
    if exptime:
        try:
            header["exptime"] = float(exptime[0]["value"])
        except (ValueError, KeyError, TypeError):
            pass
    return XisfSource(path=os.fspath(path), shape=(ny, nx), dtype=dtype.str,
                      channels=channels, rgb=rgb, planar=planar, offset=offset, pick=pick,
                      header=header, stamp=stamp)
