"""TIFF frames through tifffile, read by rows where the file allows.

Each full-resolution image (page) of the file is a frame: 8-, 16-, 32- or
64-bit samples, unsigned, signed or float, one sample a pixel (mono) or
three (RGB, an alpha sample after them is dropped), chunky or planar. A
multi-page TIFF (an ImageJ stack, a capture program's sequence) gives one
frame a page when every page has the first one's layout; otherwise, and
for reduced-resolution pages (thumbnails), only the first page is read.

How a band of rows is read:

- **uncompressed and contiguous** (what most astronomy programs write):
  the rows' bytes are at a known offset, one ``pread`` for a full-width
  band, exactly as for FITS; no tifffile call at read time;
- **striped or tiled, compressed or not**: only the strips (or the tiles)
  that cover the band are read and decoded, with tifffile's own decoder
  for the page (deflate, LZW, zstd, predictor, ...);
- anything else (bit depths that are not whole bytes, palette images, JPEG
  in YCbCr, ...) is decoded whole by ``tifffile.imread``.

Colour: an RGB TIFF gives ``R, G, B`` planes by default (a ``channel``
dimension), since a colour TIFF is a colour picture -- a DSLR conversion or
a colour stack -- whose colour the user wants to keep; ``colour=False`` or
``channel=...`` gives grey or one plane (see :mod:`bigstack._planes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ._errors import FrameError
from ._planes import choose, planes_of, take

SUFFIXES = (".tif", ".tiff")
_KINDS = {1: "u", 2: "i", 3: "f"}  # TIFF SampleFormat


@dataclass(frozen=True)
class TiffSource:
    """Page 0 of a TIFF file: its layout and how a band of rows is read."""

    path: str
    shape: tuple[int, int]
    dtype: str  # with the file's byte order
    samples: int  # samples a pixel in the file (1, 2, 3, 4)
    rgb: bool
    planar: bool  # planar configuration 2: one plane per sample
    mode: str  # "contiguous", "segments" or "whole"
    offset: int = 0  # "contiguous": where the pixels start
    segment_rows: int = 0  # "segments": rows per strip or tile
    segment_cols: int = 0  # "segments": columns per tile (the width for strips)
    pick: str | None = None
    page: int = 0
    header: dict = field(default_factory=dict, compare=False, repr=False)
    stamp: tuple | None = field(default=None, compare=False, repr=False)

    @property
    def planes(self):
        return planes_of(self.rgb, self.pick)

    @property
    def by_rows(self):
        return self.mode != "whole"

    def read(self, y0, y1, x0, x1, plane=None):
        want = plane if plane is not None else self.pick
        block = self.samples_of(y0, y1, x0, x1)  # (rows, cols, samples)
        if not self.rgb:
            return block[..., 0].astype(np.float32)
        if want is None:
            raise ValueError("a colour TIFF frame needs a plane to read")
        return take(block[..., :3], want)

    def samples_of(self, y0, y1, x0, x1) -> np.ndarray:
        """Rows ``[y0, y1)``, columns ``[x0, x1)`` as ``(rows, cols, samples)`` as stored."""
        from ._io import _check_unchanged

        if self.mode == "contiguous":
            return self._contiguous(y0, y1, x0, x1)
        _check_unchanged(self.path, self.stamp)
        if self.mode == "segments":
            return self._segments(y0, y1, x0, x1)
        return self._whole()[y0:y1, x0:x1]

    def _contiguous(self, y0, y1, x0, x1):
        from ._io import _File

        ny, nx = self.shape
        dtype = np.dtype(self.dtype)
        s = self.samples
        with _File(self.path, self.stamp) as f:
            if not self.planar:
                rows = np.empty((y1 - y0, nx, s), dtype)
                f.read_into(rows, self.offset + y0 * nx * s * dtype.itemsize)
                return rows[:, x0:x1]
            rows = np.empty((s, y1 - y0, nx), dtype)
            for k in range(s):
                f.read_into(rows[k], self.offset + (k * ny + y0) * nx * dtype.itemsize)
            return np.moveaxis(rows, 0, -1)[:, x0:x1]

    def _segments(self, y0, y1, x0, x1):
        import tifffile

        ny, nx = self.shape
        rows_per, cols_per = self.segment_rows, self.segment_cols
        down, across = -(-ny // rows_per), -(-nx // cols_per)
        out = np.empty((y1 - y0, x1 - x0, self.samples), np.dtype(self.dtype).newbyteorder("="))
        try:
            with tifffile.TiffFile(self.path) as tif:
                page = tif.pages[self.page]
                offsets, counts = page.dataoffsets, page.databytecounts
                fh = tif.filehandle
                for k in range(self.samples if self.planar else 1):
                    for ty in range(y0 // rows_per, (y1 - 1) // rows_per + 1):
                        for tx in range(x0 // cols_per, (x1 - 1) // cols_per + 1):
                            index = (k * down + ty) * across + tx
                            fh.seek(offsets[index])
                            data = fh.read(counts[index])
                            if len(data) < counts[index]:
                                raise FrameError(self.path, f"truncated: segment {index} ends "
                                                            "before its byte count")
                            segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables,
                                                        jpegheader=page.jpegheader)
                            if segment is None:
                                raise FrameError(self.path, f"segment {index} is empty")
                            segment = segment.reshape(segment.shape[-3:])  # rows, cols, samples
                            a, b = ty * rows_per, tx * cols_per
                            r0, r1 = max(a, y0), min(a + segment.shape[0], y1, ny)
                            c0, c1 = max(b, x0), min(b + segment.shape[1], x1, nx)
                            part = segment[r0 - a:r1 - a, c0 - b:c1 - b]
                            if self.planar:
                                out[r0 - y0:r1 - y0, c0 - x0:c1 - x0, k] = part[..., 0]
                            else:
                                out[r0 - y0:r1 - y0, c0 - x0:c1 - x0] = part
        except FrameError:
            raise
        except Exception as err:  # tifffile and its codecs raise many kinds
            raise _error(self.path, err) from err
        return out

    def _whole(self):
        import tifffile

        try:
            data = tifffile.imread(self.path, key=self.page)
        except Exception as err:
            raise _error(self.path, err) from err
        if data.ndim == 2:
            data = data[..., None]
        if data.shape[:2] != tuple(self.shape):
            raise FrameError(self.path, f"decodes to shape {data.shape}, not the "
                                        f"{self.shape[0]}x{self.shape[1]} its header announced")
        return data


def _error(path, err):
    problem = " ".join(str(err).split()) or type(err).__name__
    return FrameError(path, f"cannot read as TIFF: {problem}")


def inspect_tiff(path, channel=None, colour=None) -> list[TiffSource]:
    """Read the pages' tags (no pixels) and choose how bands of rows will be read."""
    import tifffile

    from ._io import _stat, is_url

    if is_url(path):
        raise FrameError(path, "TIFF is read from local files only")
    size, stamp = _stat(path)
    if size == 0:
        raise FrameError(path, "not a TIFF file (the file is empty)")
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.pages:
                raise FrameError(path, "TIFF file holds no image")
            first = _layout(path, tif.pages.first, size)
            layouts = [(0, first)]
            if len(tif.pages) > 1:
                more = [(k, _layout(path, p, size)) for k, p in enumerate(tif.pages)
                        if k and not getattr(p, "is_reduced", False)]
                same = ("shape", "dtype", "samples", "rgb", "planar")
                if all(all(m[key] == first[key] for key in same) for _, m in more):
                    layouts += more
    except FrameError:
        raise
    except Exception as err:
        raise _error(path, err) from err
    pick = choose(path, first["rgb"], channel, colour, True)
    return [TiffSource(path=os.fspath(path), pick=pick, page=k, stamp=stamp,
                       header={"format": "tiff"}, **info) for k, info in layouts]


def _layout(path, page, size) -> dict:
    import tifffile

    bits = page.bitspersample
    kind = _KINDS.get(int(page.sampleformat))
    if kind is None or bits not in (8, 16, 32, 64) or (kind == "f" and bits == 8):
        raise FrameError(path, f"unsupported TIFF samples: {bits}-bit "
                               f"{tifffile.SAMPLEFORMAT(page.sampleformat).name.lower()}")
    photometric = tifffile.PHOTOMETRIC
    if page.photometric == photometric.PALETTE:
        raise FrameError(path, "palette (indexed colour) TIFF is not supported")
    samples = int(page.samplesperpixel)
    rgb = page.photometric in (photometric.RGB, photometric.YCBCR) and samples >= 3
    if not rgb and samples > 2:
        raise FrameError(path, f"unsupported TIFF layout: {samples} samples a pixel with "
                               f"photometric {photometric(page.photometric).name}")
    ny, nx = int(page.imagelength), int(page.imagewidth)
    if page.imagedepth > 1 or ny < 1 or nx < 1:
        raise FrameError(path, f"unsupported TIFF image of {page.imagedepth}x{ny}x{nx} pixels")
    order = page.parent.byteorder
    dtype = np.dtype(f"{order}{kind}{bits // 8}")
    planar = page.planarconfig == 2 and samples > 1
    offsets, counts = page.dataoffsets, page.databytecounts
    end = max((o + c for o, c in zip(offsets, counts, strict=True)), default=0)
    if end > size:
        raise FrameError(path, f"truncated: image data end at byte {end} but the file holds "
                               f"{size}")
    info = {"shape": (ny, nx), "dtype": dtype.str, "samples": samples, "rgb": rgb,
            "planar": planar}
    simple = page.fillorder == 1 and page.photometric != photometric.YCBCR
    if simple and page.compression == 1 and not page.is_tiled and len(offsets) \
            and all(a + n == b for a, n, b in zip(offsets, counts, offsets[1:], strict=False)) \
            and sum(counts) == ny * nx * samples * dtype.itemsize:
        return {**info, "mode": "contiguous", "offset": int(offsets[0])}
    if simple and not page.is_subsampled:
        if page.is_tiled:
            rows, cols = int(page.tilelength), int(page.tilewidth)
        else:
            rows, cols = min(int(page.rowsperstrip or ny), ny), nx
        per_plane = -(-ny // rows) * -(-nx // cols)
        if len(offsets) == per_plane * (samples if planar else 1):
            return {**info, "mode": "segments", "segment_rows": rows, "segment_cols": cols}
    return {**info, "mode": "whole"}
