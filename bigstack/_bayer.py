"""One-shot-colour frames: the Bayer pattern from headers, and demosaicing by row bands.

A Bayer mosaic has one colour a pixel, repeating in 2x2 cells. The
*effective pattern* here is always the cell at the stored array's origin,
read in the stored order: ``pattern[0:2]`` is row 0 (columns 0, 1), and
``pattern[2:4]`` row 1. Frames keep their stored row order; only the
pattern is turned to match it.

Header conventions
------------------
``BAYERPAT`` (or ``COLORTYP`` when it names a pattern) gives the cell as the
camera reads out, top row first. ``XBAYROFF``/``YBAYROFF`` shift where that
cell starts (a 1 moves it by a column/row). ``ROWORDER`` says how rows were
stored: ``TOP-DOWN`` (what most camera drivers write, and what a file
without the keyword is taken to be) keeps the pattern as given for stored
row 0; ``BOTTOM-UP`` stores the top row last, so the pattern is counted from
the last stored row (for an even number of rows its two rows swap: RGGB
reads as GBRG), as Siril and NINA do.

Methods
-------
``bilinear``
    Each colour's missing samples are the mean of its nearest samples (the
    two or four around for red and blue, the four neighbours for green):
    the convolution of the colour's samples with ``[1, 2, 1] x [1, 2, 1] / 4``
    (red, blue) or the cross ``[[0, 1, 0], [1, 4, 1], [0, 1, 0]] / 4``
    (green), mirrored at the frame's edges (the mirror keeps the pattern).
    A band of output rows needs the mosaic rows one above and one below it,
    so a band reads ``[r0 - 1, r1 + 1)`` (clipped to the frame). Computed on
    the quarter-size sample lattices with numpy slices, no convolution.
``superpixel``
    Each whole 2x2 cell becomes one RGB pixel (green the mean of the two
    greens): half the size, no interpolation. Output rows ``[r0, r1)`` read
    mosaic rows ``[2 r0, 2 r1)``.
``cfa``
    The mosaic kept as it is: each colour's plane holds that colour's
    samples and NaN elsewhere. Stacked with ``subpixel="nearest"``, every
    frame puts its own samples of a colour onto the output grid, and the
    dithered frames fill the grid in (the Bayer-drizzle idea), with a
    coverage per colour.
"""

from __future__ import annotations

import numpy as np

from ._errors import FrameError

PATTERNS = ("RGGB", "GRBG", "GBRG", "BGGR")
METHODS = ("bilinear", "superpixel", "cfa")
CHANNELS = ("R", "G", "B")


# --------------------------------------------------------------------------
# the pattern from a header


def _offset(path, cards, key):
    value = cards.get(key)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) \
            or value < 0:
        raise FrameError(path, f"{key} = {value!r} is not a Bayer offset (a whole number "
                               "of pixels, 0 or more)")
    return int(value)


def header_pattern(path, cards, ny) -> str | None:
    """The effective pattern (one of :data:`PATTERNS`) of a FITS image, None if not Bayer.

    ``cards`` are the header's parsed values; ``ny`` the number of stored
    rows (``BOTTOM-UP`` counts the pattern from the last one).
    """
    value = cards.get("BAYERPAT")
    key = "BAYERPAT"
    if value is None:
        colortyp = cards.get("COLORTYP")
        if isinstance(colortyp, str) and colortyp.strip().upper() in PATTERNS:
            value, key = colortyp, "COLORTYP"
    if value is None:
        return None
    if not isinstance(value, str) or value.strip().upper() not in PATTERNS:
        raise FrameError(path, f"{key} = {value!r} is not a Bayer pattern (one of "
                               f"{', '.join(PATTERNS)})")
    given = value.strip().upper()
    dx, dy = _offset(path, cards, "XBAYROFF"), _offset(path, cards, "YBAYROFF")
    order = cards.get("ROWORDER")
    if order is not None:
        if not isinstance(order, str) or order.strip().upper() not in ("TOP-DOWN", "BOTTOM-UP"):
            raise FrameError(path, f"ROWORDER = {order!r} is neither 'TOP-DOWN' nor "
                                   "'BOTTOM-UP'")
        order = order.strip().upper()
    bottom_up = order == "BOTTOM-UP"
    cell = []
    for row in (0, 1):
        top_row = (ny - 1 - row) if bottom_up else row  # the row counted from the top
        for col in (0, 1):
            cell.append(given[2 * ((top_row + dy) % 2) + (col + dx) % 2])
    return "".join(cell)


def shifted(pattern, dy, dx) -> str:
    """The pattern seen from row ``dy``, column ``dx`` of a mosaic with ``pattern``."""
    return "".join(pattern[2 * ((r + dy) % 2) + (c + dx) % 2] for r in (0, 1) for c in (0, 1))


def _positions(pattern, colour):
    """``[(row parity, column parity), ...]`` of ``colour`` in the cell."""
    return [(k // 2, k % 2) for k, c in enumerate(pattern) if c == colour]


def output_shape(shape, method):
    """The debayered frame's ``(ny, nx)`` for a mosaic of ``shape``."""
    ny, nx = shape
    return (ny // 2, nx // 2) if method == "superpixel" else (ny, nx)


def check_mosaic(path, shape):
    if shape[0] < 2 or shape[1] < 2:
        raise FrameError(path, f"a Bayer mosaic of {shape[0]}x{shape[1]} pixels holds no "
                               "whole 2x2 cell")


# --------------------------------------------------------------------------
# demosaicing one band of rows


def band_rows(method, r0, r1, ny):
    """The mosaic rows ``[a, b)`` output rows ``[r0, r1)`` need."""
    if method == "superpixel":
        return 2 * r0, 2 * r1
    if method == "cfa":
        return r0, r1
    return max(r0 - 1, 0), min(r1 + 1, ny)


def debayer(rows, a, r0, r1, ny, pattern, method, channels=CHANNELS):
    """Demosaic output rows ``[r0, r1)`` from mosaic rows ``rows`` (float32, starting at
    mosaic row ``a``, as :func:`band_rows` asks). Returns float32 ``(len(channels), h, w)``.
    """
    if method == "superpixel":
        return _superpixel(rows, pattern, channels)
    if method == "cfa":
        return _cfa(rows, r0, pattern, channels)
    return _bilinear(rows, a, r0, r1, ny, pattern, channels)


def _superpixel(rows, pattern, channels):
    h, w = rows.shape[0] // 2, rows.shape[1] // 2
    out = np.empty((len(channels), h, w), np.float32)
    for k, colour in enumerate(channels):
        where = _positions(pattern, colour)
        py, px = where[0]
        np.copyto(out[k], rows[py:2 * h:2, px:2 * w:2], casting="unsafe")
        for py, px in where[1:]:
            out[k] += rows[py:2 * h:2, px:2 * w:2]
        if len(where) > 1:
            out[k] *= np.float32(1.0 / len(where))
    return out


def _cfa(rows, r0, pattern, channels):
    local = shifted(pattern, r0, 0)
    out = np.full((len(channels), *rows.shape), np.nan, np.float32)
    for k, colour in enumerate(channels):
        for py, px in _positions(local, colour):
            out[k, py::2, px::2] = rows[py::2, px::2]
    return out


def _extended(rows, a, r0, r1, ny):
    """Mosaic rows ``[r0 - 1, r1 + 1)`` with one column each side, mirrored at the
    frame's edges (row -1 is row 1, column -1 column 1: the pattern is kept)."""
    h, nx = r1 - r0, rows.shape[1]
    e = np.empty((h + 2, nx + 2), np.float32)  # the stored values converted once, here
    top = r0 - 1 if r0 > 0 else 1
    bottom = r1 if r1 < ny else ny - 2
    e[0, 1:-1] = rows[top - a]
    e[1:-1, 1:-1] = rows[r0 - a:r1 - a]
    e[-1, 1:-1] = rows[bottom - a]
    e[:, 0] = e[:, 2]
    e[:, -1] = e[:, -3]
    return e


def _bilinear(rows, a, r0, r1, ny, pattern, channels):
    """Bilinear demosaicing of a band: the compiled kernel (one pass over the band for all
    colours), with the numpy version below as its reference."""
    values = rows if rows.dtype == np.float32 and rows.dtype.isnative \
        else rows.astype(np.float32)
    colour = np.array(["RGB".index(c) for c in shifted(pattern, r0, 0)], np.int64)
    out = np.empty((3, r1 - r0, rows.shape[1]), np.float32)
    _bilinear_kernel()(values, a, r0, r1, ny, colour, out)
    if tuple(channels) == CHANNELS:
        return out
    return out[["RGB".index(c) for c in channels]]


_KERNEL = None


def _bilinear_kernel():
    """The compiled bilinear kernel (numba; compiled once, cached on disk)."""
    global _KERNEL
    if _KERNEL is None:
        from numba import njit

        @njit(cache=True, nogil=True, error_model="numpy")
        def kernel(rows, a, r0, r1, ny, colour, out):
            # per row: the neighbours' means with unit strides (these vectorise), then
            # each column parity's colours picked from them with stride two
            nx = rows.shape[1]
            last = nx - 1
            hh = np.empty(nx, np.float32)  # mean of left and right
            vv = np.empty(nx, np.float32)  # mean of above and below
            dd = np.empty(nx, np.float32)  # mean of the four corners
            half, quarter = np.float32(0.5), np.float32(0.25)
            for i in range(r1 - r0):
                r = r0 + i
                here = rows[r - a]
                above = rows[(r - 1 if r > 0 else 1) - a]
                below = rows[(r + 1 if r < ny - 1 else ny - 2) - a]
                for j in range(1, last):
                    hh[j] = half * (here[j - 1] + here[j + 1])
                    vv[j] = half * (above[j] + below[j])
                    dd[j] = quarter * (above[j - 1] + above[j + 1] + below[j - 1]
                                       + below[j + 1])
                for j, side in ((0, 1), (last, last - 1)):  # mirrored at the edges
                    hh[j] = here[side]
                    vv[j] = half * (above[j] + below[j])
                    dd[j] = half * (above[side] + below[side])
                c0, c1 = colour[2 * (i % 2)], colour[2 * (i % 2) + 1]
                row_colour = c1 if c0 == 1 else c0  # the row's red or blue
                green = out[1, i]
                for q in (0, 1):
                    c = c0 if q == 0 else c1
                    if c == 1:  # green: red and blue from the row and from the column
                        across, down = out[row_colour, i], out[2 - row_colour, i]
                        for j in range(q, nx, 2):
                            green[j] = here[j]
                            across[j] = hh[j]
                            down[j] = vv[j]
                    else:  # red or blue: green from the cross, the other from the corners
                        own, other = out[c, i], out[2 - c, i]
                        for j in range(q, nx, 2):
                            own[j] = here[j]
                            green[j] = half * (hh[j] + vv[j])
                            other[j] = dd[j]

        _KERNEL = kernel
    return _KERNEL


def _bilinear_numpy(rows, a, r0, r1, ny, pattern, channels):
    """Bilinear demosaicing in numpy slices (the reference of the compiled kernel)."""
    h, nx = r1 - r0, rows.shape[1]
    e = _extended(rows, a, r0, r1, ny)  # e[i + 1, j + 1] is mosaic (r0 + i, j)
    local = shifted(pattern, r0, 0)  # the cell at output row 0
    out = np.empty((len(channels), h, nx), np.float32)
    for k, colour in enumerate(channels):
        where = _positions(local, colour)
        if len(where) == 2:
            _green(e, h, nx, where, out[k])
        else:
            _single(e, h, nx, where[0], out[k])
    return out


def _green(e, h, nx, where, out):
    """A colour on a quincunx (two cell positions): samples kept, the rest the mean of
    the four neighbours."""
    out[:] = e[1:h + 1, 1:nx + 1]
    taken = set(where)
    for ia in (0, 1):
        for jb in (0, 1):
            if (ia, jb) in taken:
                continue
            acc = e[ia:h:2, jb + 1:nx + 1:2] + e[ia + 2:h + 2:2, jb + 1:nx + 1:2]
            acc += e[ia + 1:h + 1:2, jb:nx:2]
            acc += e[ia + 1:h + 1:2, jb + 2:nx + 2:2]
            acc *= np.float32(0.25)
            out[ia::2, jb::2] = acc


def _single(e, h, nx, where, out):
    """A colour at one cell position: interpolated along its sample rows, then between
    them (the separable ``[1, 2, 1] / 2`` on each axis)."""
    py, px = where
    k0 = (py + 1) % 2  # the first row of e holding samples (e row k is output row k - 1)
    samples = e[k0::2]
    horiz = np.empty((samples.shape[0], nx), np.float32)
    horiz[:, px::2] = samples[:, px + 1:nx + 1:2]
    q = 1 - px
    if q < nx:
        between = samples[:, q:nx:2] + samples[:, q + 2:nx + 2:2]
        between *= np.float32(0.5)
        horiz[:, q::2] = between
    m0 = (py + 1 - k0) // 2  # horiz row of output row py
    n_own = len(range(py, h, 2))
    out[py::2] = horiz[m0:m0 + n_own]
    i1 = 1 - py
    n_other = len(range(i1, h, 2))
    if n_other:
        mid = horiz[0:n_other] + horiz[1:n_other + 1]
        mid *= np.float32(0.5)
        out[i1::2] = mid


# --------------------------------------------------------------------------
# the reader behind a colour cube


def _as_float(stored, scale, zero, blank):
    values = stored.astype(np.float32)
    if scale != 1:
        values *= np.float32(scale)
    if zero != 0:
        values += np.float32(zero)
    if blank is not None:
        values[stored == blank] = np.nan
    return values


class BayerReader:
    """Array-like debayered frames over a mosaic row source; small to send to workers.

    ``mosaic`` is a row source of the mosaics (``FileRows`` of the files, or
    a calibrated cube's rows), ``n`` frames of ``mosaic_shape``; ``pattern``
    the effective pattern, ``method`` one of :data:`METHODS`. With
    ``channel`` the reader is one colour's ``(frame, y, x)``; otherwise
    ``(frame, channel, y, x)``.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, mosaic, n, mosaic_shape, pattern, method, channel=None):
        self.mosaic = mosaic
        self.n = n
        self.mosaic_shape = tuple(mosaic_shape)
        self.pattern = pattern
        self.method = method
        self.channel = channel
        self.frame_shape = output_shape(self.mosaic_shape, method)
        self.planes = None if channel is not None else CHANNELS
        self.shape = (n, *self.frame_shape) if channel is not None else \
            (n, len(CHANNELS), *self.frame_shape)
        self.ndim = len(self.shape)

    @property
    def sources(self):
        reader = getattr(self.mosaic, "reader", None)
        if reader is None:
            return ()
        return tuple(reader.sources[int(j)] for j in self.mosaic.files)

    @property
    def resident_bytes(self):
        return int(getattr(self.mosaic, "resident_bytes", 0))

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("BayerReader", tokenize(getattr(self.mosaic, "reader", None)),
                tokenize(np.asarray(getattr(self.mosaic, "files", ()))), self.mosaic_shape,
                self.pattern, self.method, self.channel)

    def with_channel(self, channel):
        return BayerReader(self.mosaic, self.n, self.mosaic_shape, self.pattern, self.method,
                           channel)

    def band(self, i, r0, r1, channels=None, method=None):
        """float32 ``(len(channels), r1 - r0, w)`` of frame ``i``'s output rows."""
        planes, scale, zero, _ = self.stored_band(i, r0, r1, channels, method)
        if scale != 1:
            planes *= np.float32(scale)
        if zero != 0:
            planes += np.float32(zero)
        return planes

    def stored_band(self, i, r0, r1, channels=None, method=None):
        """``(planes, scale, zero, floating)``: the band debayered from the stored values.

        Every method is linear with weights summing to one, so debayering the
        stored integers and scaling after (``planes * scale + zero``, which the
        tile kernels apply while adding) gives the same values with two passes
        fewer. ``floating`` is False when the planes cannot hold NaN (integer
        data without BLANK, debayered without gaps).
        """
        method = method or self.method
        channels = channels or ((self.channel,) if self.channel else CHANNELS)
        a, b = band_rows(method, r0, r1, self.mosaic_shape[0])
        stored, scale, zero, blank, floating = self.mosaic.raw(i, a, b, {})
        if blank is not None:
            values, scale, zero = _as_float(stored, scale, zero, blank), 1.0, 0.0
            floating = True
        else:
            values = stored
        planes = debayer(values, a, r0, r1, self.mosaic_shape[0], self.pattern, method,
                         channels)
        return planes, scale, zero, floating or method == "cfa"

    def rows(self, indices, channel=None, method=None):
        return BayerRows(self, np.asarray(indices), channel or self.channel or "G", method)

    def colour_rows(self, indices):
        return ColourRows(self, np.asarray(indices))

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        frames = range(self.n)[key[0]]
        ys = range(self.frame_shape[0])[key[-2]]
        xs = range(self.frame_shape[1])[key[-1]]
        channels = (self.channel,) if self.channel else CHANNELS[key[1]]
        out = np.empty((len(frames), len(channels), len(ys), len(xs)), np.float32)
        if len(ys) and len(xs):
            for k, i in enumerate(frames):
                band = self.band(i, ys.start, ys.start + len(ys), channels)
                out[k] = band[:, :, xs.start:xs.start + len(xs)]
        return out[:, 0] if self.channel else out


class BayerRows:
    """One colour of a Bayer cube as a row source (what the tile tasks read).

    ``method`` overrides the reader's: registration of a ``cfa`` cube reads
    the bilinear green, which has no gaps. With ``channel=None`` the rows are
    every colour's, ``(colour, rows, W)`` (see
    :func:`bigstack._combine.compute_colour_tile`).
    """

    def __init__(self, reader, files, channel, method=None):
        self.reader = reader
        self.files = files
        self.channel = channel
        self.method = method

    @property
    def resident_bytes(self):
        return self.reader.resident_bytes

    def raw(self, i, r0, r1, buffers):
        channels = CHANNELS if self.channel is None else (self.channel,)
        planes, scale, zero, floating = self.reader.stored_band(
            int(self.files[i]), r0, r1, channels, self.method)
        if self.channel is None:  # a colour tile adds these planes one by one (no flat add)
            return planes, scale, zero, None, floating
        # one colour's rows are not integers: keep them off the integer-only flat add
        return planes[0], scale, zero, None, True

    def box(self, i, y0, y1, x0, x1):
        band = self.reader.band(int(self.files[i]), y0, y1, (self.channel,), self.method)
        return band[0, :, x0:x1].astype(np.float64)


class ColourRows(BayerRows):
    """All colours of a Bayer cube: read as the registration plane (green, bilinear for
    ``cfa``) by measurement tasks, and per colour by the stack's tiles."""

    channels = CHANNELS

    def __init__(self, reader, files):
        super().__init__(reader, files, "G", "bilinear" if reader.method == "cfa" else None)

    def channel_rows(self, colour):
        return BayerRows(self.reader, self.files, colour)

    def all_rows(self):
        return BayerRows(self.reader, self.files, None)

    @property
    def bilinear(self):
        """``(mosaic rows, pattern, mosaic shape)`` of a ``bilinear`` cube (the tiles add a
        whole-pixel frame's colours from its mosaic rows, :func:`bigstack._kernels.add_bilinear`),
        None for the other methods."""
        if self.reader.method != "bilinear":
            return None
        return _Indexed(self.reader.mosaic, self.files), self.reader.pattern, \
            self.reader.mosaic_shape

    @property
    def cfa(self):
        """``(mosaic rows, pattern)`` of a ``cfa`` cube (the tiles add the stored samples
        straight), None for the other methods."""
        if self.reader.method != "cfa":
            return None
        return _Indexed(self.reader.mosaic, self.files), self.reader.pattern


class _Indexed:
    """A row source's frames ``files`` as frames 0, 1, ... (what the tile kernels index)."""

    def __init__(self, rows, files):
        self.rows, self.files = rows, files

    def raw(self, i, r0, r1, buffers):
        return self.rows.raw(int(self.files[i]), r0, r1, buffers)
