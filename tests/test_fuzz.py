"""Corrupt frame files give bigstack's own FrameError naming the file, or a correct stack.

Each example writes a pair of small frames from :mod:`bigstack.synthetic`
(FITS uint16 with BZERO=32768 and BLANK pixels, FITS float32 with NaN
pixels, PNG 8/16-bit, JPEG, DNG, RGB TIFF read grey, one-frame SER videos),
corrupts one of them and runs the public
API on the pair::

    cube = bigstack.open_frames(paths)
    bigstack.stack(cube)["stack"].values

It must either work -- the untouched frame then reads as the reference
library reads it (astropy, imagecodecs, rawpy, tifffile; SER by its
header's layout) and the stack is the
NaN-aware mean of the two frames, so finite wherever a frame is -- or raise
:class:`bigstack.FrameError` with a one-line message naming the corrupted
file. Any other exception, or any warning (the suite runs with warnings as
errors), is a bug; hypothesis then prints the corruption.

The default run is short and derandomized; the ``slow`` variants run many
more random examples (``--hypothesis-show-statistics`` counts outcomes).
"""

from __future__ import annotations

import faulthandler
import functools
import io
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from astropy.io import fits
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import bigstack
from bigstack import synthetic

SHAPE = (24, 32)
HARD_TIMEOUT = 600  # seconds for one test; a hang ends the run with every thread's stack
GREY = np.array([0.2126, 0.7152, 0.0722])
KINDS = {  # name: (fmt, dtype) of synthetic.make_frames
    "fits-u16": ("fits", "uint16"),
    "fits-f32": ("fits", "float32"),
    "png-8": ("png", "uint8"),
    "png-16": ("png", "uint16"),
    "jpg": ("jpg", "uint8"),
    "dng": ("dng", "uint16"),
    "tiff-16": ("tiff", "uint16"),
    "ser-16": ("ser", "uint16"),
}


@pytest.fixture(autouse=True)
def _hard_timeout():
    """A hang (in C code too) ends the process with a traceback instead of blocking CI."""
    faulthandler.dump_traceback_later(HARD_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


# --------------------------------------------------------------------------
# the clean pairs, and what the reference libraries read from them


def _fits_with_invalid_pixels(data, dtype):
    """Mark a few pixels invalid the FITS way: BLANK for integers, NaN for floats."""
    with fits.open(io.BytesIO(data)) as hdul:
        header = hdul[0].header.copy()
        pixels = hdul[0].data.copy()
    spots = (np.array([0, 5, 23]), np.array([0, 17, 31]))
    out = io.BytesIO()
    if dtype == "uint16":  # stored as int16 with BZERO=32768; BLANK is a stored value
        stored = (pixels.astype(np.int32) - 32768).astype(np.int16)
        stored[spots] = -32768
        hdu = fits.PrimaryHDU(stored, header=header)
        hdu.header["BZERO"], hdu.header["BSCALE"], hdu.header["BLANK"] = 32768, 1, -32768
        hdu.writeto(out, output_verify="silentfix")
    else:
        pixels[spots] = np.nan
        fits.PrimaryHDU(pixels, header=header).writeto(out)
    return out.getvalue()


def _reference(kind, data) -> np.ndarray:
    """The frame as the reference library reads it (G plane for DNG), float64."""
    fmt = KINDS[kind][0]
    if fmt == "fits":  # astropy's stored values, scaled here (astropy keeps BLANK in uint16)
        with fits.open(io.BytesIO(data), do_not_scale_image_data=True) as hdul:
            header, stored = hdul[0].header, hdul[0].data
            image = stored * float(header.get("BSCALE", 1)) + float(header.get("BZERO", 0))
            if "BLANK" in header:
                image[stored == header["BLANK"]] = np.nan
            return image
    if fmt in ("png", "jpg"):
        rgb = imagecodecs.imread(data).astype(np.float64)
        return rgb[..., :3] @ GREY
    if fmt == "tiff":
        rgb = tifffile.imread(io.BytesIO(data)).astype(np.float64)
        return rgb[..., :3] @ GREY
    if fmt == "ser":  # one mono 16-bit little-endian frame after the 178-byte header
        return np.frombuffer(data[178:178 + 2 * SHAPE[0] * SHAPE[1]], "<u2").reshape(
            SHAPE).astype(np.float64)
    import rawpy

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "f.dng")
        Path(path).write_bytes(data)
        with rawpy.imread(path) as raw:
            image = raw.raw_image.astype(np.float64)
    return (image[0::2, 1::2] + image[1::2, 0::2]) / 2  # RGGB: the two greens


@functools.cache
def _pair(kind):
    """``(suffix, [bytes, bytes], [reference, reference])`` of a clean pair of frames."""
    fmt, dtype = KINDS[kind]
    if fmt == "dng":
        pytest.importorskip("rawpy")
    with tempfile.TemporaryDirectory() as folder:
        if fmt == "ser":  # two videos of one frame each
            paths = [os.path.join(folder, f"v{i}.ser") for i in range(2)]
            for i, path in enumerate(paths):
                synthetic.make_ser(path, n_frames=1, shape=SHAPE, seed=3 + i,
                                   stars=synthetic.Stars(n_stars=5))
        else:
            paths = synthetic.make_frames(folder, n_frames=2, shape=SHAPE, fmt=fmt, dtype=dtype,
                                          seed=3, stars=synthetic.Stars(n_stars=5)).paths
        frames = [Path(p).read_bytes() for p in paths]
        suffix = Path(paths[0]).suffix
    if fmt == "fits":
        frames = [_fits_with_invalid_pixels(data, dtype) for data in frames]
    return suffix, frames, [_reference(kind, data) for data in frames]


def _fits_cards(data):
    """``[(offset, keyword)]`` of the primary header's cards up to END (none without END)."""
    cards = []
    for offset in range(0, len(data) - 79, 80):
        key = data[offset:offset + 8].decode("latin-1").rstrip()
        cards.append((offset, key))
        if key == "END":
            return cards
    return []


def _tiff_entries(data):
    """``[(offset, tag)]`` of the first IFD's 12-byte entries (little-endian TIFF)."""
    first = struct.unpack_from("<I", data, 4)[0]
    count = struct.unpack_from("<H", data, first)[0]
    return [(first + 2 + 12 * k, struct.unpack_from("<H", data, first + 2 + 12 * k)[0])
            for k in range(count)]


# --------------------------------------------------------------------------
# corruptions: small readable records, so a failing example shows what was done


@dataclass(frozen=True)
class SetCard:
    """FITS: give card ``key`` the value field ``value`` (added before END if missing)."""

    key: str
    value: bytes

    def apply(self, data):
        cards = dict((k, o) for o, k in reversed(_fits_cards(data)))
        if not cards:
            return data
        data = bytearray(data)
        field = self.value if self.value.startswith(b"'") else self.value.rjust(20)
        card = self.key.encode().ljust(8)[:8] + b"= " + field.ljust(70)[:70]
        if self.key in cards:
            data[cards[self.key]:cards[self.key] + 80] = card
        else:  # the END card's place; END moves one card on (within the header block)
            end = cards["END"]
            data[end:end + 80] = card
            if (end + 80) % 2880:
                data[end + 80:end + 160] = b"END".ljust(80)
        return bytes(data)


@dataclass(frozen=True)
class DeleteCard:
    """FITS: remove card ``key``; the cards after it move up."""

    key: str

    def apply(self, data):
        cards = _fits_cards(data)
        for offset, key in cards[:-1]:
            if key == self.key:
                end = cards[-1][0] + 80
                return data[:offset] + data[offset + 80:end] + b" " * 80 + data[end:]
        return data


@dataclass(frozen=True)
class BlankCard:
    """FITS: blank card ``key``: the whole card, or only its value field."""

    key: str
    value_only: bool

    def apply(self, data):
        for offset, key in _fits_cards(data):
            if key == self.key:
                start = offset + 10 if self.value_only else offset
                return data[:start] + b" " * (offset + 80 - start) + data[offset + 80:]
        return data


@dataclass(frozen=True)
class Overwrite:
    """Any format: write ``chunk`` at byte ``offset`` (clipped to the file)."""

    offset: int
    chunk: bytes

    def apply(self, data):
        offset = min(self.offset, len(data))
        return (data[:offset] + self.chunk + data[offset + len(self.chunk):])[:len(data)]


@dataclass(frozen=True)
class Truncate:
    """Any format: keep the first ``length`` bytes."""

    length: int

    def apply(self, data):
        return data[:self.length]


_IHDR = {"width": (16, ">I"), "height": (20, ">I"), "depth": (24, ">B"), "colour": (25, ">B"),
         "compression": (26, ">B"), "filter": (27, ">B"), "interlace": (28, ">B")}


@dataclass(frozen=True)
class PngHeader:
    """PNG: set an IHDR field, with its CRC fixed (else the CRC check fails first)."""

    name: str
    value: int
    fix_crc: bool

    def apply(self, data):
        offset, fmt = _IHDR[self.name]
        data = bytearray(data)
        struct.pack_into(fmt, data, offset, self.value % 256 ** struct.calcsize(fmt))
        if self.fix_crc:
            struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
        return bytes(data)


_SOF = {"precision": (0, ">B"), "height": (1, ">H"), "width": (3, ">H"), "components": (5, ">B")}


@dataclass(frozen=True)
class JpegHeader:
    """JPEG: set a field of the start-of-frame segment (SOF0)."""

    name: str
    value: int

    def apply(self, data):
        offset, fmt = _SOF[self.name]
        start = data.index(b"\xff\xc0") + 4  # after the marker and the segment length
        data = bytearray(data)
        struct.pack_into(fmt, data, start + offset, self.value % 256 ** struct.calcsize(fmt))
        return bytes(data)


_TIFF_PARTS = {"type": (2, "<H"), "count": (4, "<I"), "value": (8, "<I")}


@dataclass(frozen=True)
class TiffTag:
    """DNG: set the type, count or value/offset field of the IFD entry of ``tag``."""

    tag: int
    part: str
    value: int

    def apply(self, data):
        data = bytearray(data)
        offset, fmt = _TIFF_PARTS[self.part]
        for entry, tag in _tiff_entries(data):
            if tag == self.tag:
                struct.pack_into(fmt, data, entry + offset,
                                 self.value % 256 ** struct.calcsize(fmt))
        return bytes(data)


# --------------------------------------------------------------------------
# hypothesis strategies


_ABSURD_NUMBERS = [b"0", b"-1", b"1", b"2", b"3", b"8", b"16", b"-32", b"-64", b"12", b"999",
                   b"1000", b"32768", b"-32768", b"65535", b"2147483648", b"-2147483649",
                   b"9223372036854775808", b"99999999999999999999999999", b"3.5", b"24.0",
                   b"1E999", b"-1D308", b"1E-320", b"NaN", b"INF", b"-INFINITY", b"1.0E38",
                   b"4E38", b"0.0", b"T", b"F", b"", b"'$ 32768'", b"'32768'", b"'   '",
                   b"'unterminated", b"$ 32768", b"(1, 2)", b"1_000", b"0x10", b"\xff\xfe",
                   b"3\x00", b"'caf\xe9'"]
_FITS_KEYS = ["SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "BSCALE", "BZERO",
              "BLANK", "PCOUNT", "GCOUNT", "EXTEND", "XTENSION", "ZIMAGE", "EXPTIME",
              "DATE-OBS", "TIME-OBS", "FILTER", "END", "FRAMENO", "OBJECT"]

card_values = st.one_of(
    st.sampled_from(_ABSURD_NUMBERS),
    st.integers(-(2**70), 2**70).map(lambda v: str(v).encode()),
    st.floats(allow_nan=True, allow_infinity=True).map(lambda v: repr(v).upper().encode()),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20)
    .map(lambda s: s.encode()),
    st.binary(max_size=12),
)
fits_corruptions = st.one_of(
    st.builds(SetCard, st.sampled_from(_FITS_KEYS), card_values),
    st.builds(DeleteCard, st.sampled_from(_FITS_KEYS)),
    st.builds(BlankCard, st.sampled_from(_FITS_KEYS), st.booleans()),
)


def _anywhere(size, header):
    """Byte overwrites and truncations over a file of ``size`` bytes, often in its header."""
    offsets = st.one_of(st.integers(0, header - 1), st.integers(0, size - 1))
    return st.one_of(
        st.builds(Overwrite, offsets, st.binary(min_size=1, max_size=8)),
        st.builds(Truncate, st.integers(0, size - 1)),
    )


@st.composite
def corruptions(draw, kind):
    """One to four corruptions of a frame of ``kind``."""
    _suffix, frames, _reference = _pair(kind)
    size = len(frames[0])
    fmt = KINDS[kind][0]
    if fmt == "fits":
        own, header = fits_corruptions, _fits_cards(frames[0])[-1][0] + 80
    elif fmt == "png":
        own, header = st.builds(PngHeader, st.sampled_from(sorted(_IHDR)),
                                st.integers(0, 2**32 - 1), st.booleans()), 64
    elif fmt == "jpg":
        own, header = st.builds(JpegHeader, st.sampled_from(sorted(_SOF)),
                                st.integers(0, 2**16 - 1)), frames[0].index(b"\xff\xda")
    elif fmt == "ser":  # the header's 32-bit fields: colour, byte order, size, depth, count
        fields = st.sampled_from([14, 18, 22, 26, 30, 34, 38])
        values = st.one_of(st.sampled_from([0, 1, 2, 3, 7, 8, 11, 16, 17, 24, 100, 101,
                                            2**31 - 1, 2**32 - 1]), st.integers(0, 2**32 - 1))
        own = st.builds(Overwrite, fields, values.map(lambda v: struct.pack("<I", v)))
        header = 178
    else:
        tags = sorted({tag for _, tag in _tiff_entries(frames[0])})
        values = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 2, 3, 4, 23, 24,
                                                                        size, 2**31]))
        own = st.builds(TiffTag, st.sampled_from(tags), st.sampled_from(sorted(_TIFF_PARTS)),
                        values)
        header = _tiff_entries(frames[0])[-1][0] + 16
    # format-aware changes first (they find the header fields), then bytes and truncation
    changes = draw(st.lists(own, max_size=2)) + draw(st.lists(_anywhere(size, header),
                                                              max_size=2))
    return changes or [draw(own)]


# --------------------------------------------------------------------------
# the check


def _options(kind):
    fmt = KINDS[kind][0]
    # the DNG references are rawpy's green plane: one pixel a Bayer cell, the greens averaged
    if fmt == "dng":
        return {"channel": "G", "debayer": "superpixel"}
    return {"colour": False} if fmt == "tiff" else {}


def check_pair(kind, bad, changes):
    """Write the pair of ``kind`` with frame ``bad`` corrupted by ``changes``; open and stack.

    Returns ``"opened"`` or ``"FrameError"``; raises on anything else.
    """
    suffix, frames, references = _pair(kind)
    data = frames[bad]
    for change in changes:
        data = change.apply(data)
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"frame{i}{suffix}") for i in range(2)]
        for i, path in enumerate(paths):
            Path(path).write_bytes(data if i == bad else frames[i])
        try:
            cube = bigstack.open_frames(paths, **_options(kind))
            result = bigstack.stack(cube)["stack"].values
        except bigstack.FrameError as err:
            message = str(err)
            assert paths[bad] in message, f"FrameError does not name {paths[bad]}: {message}"
            assert "\n" not in message, f"FrameError message of several lines: {message!r}"
            return "FrameError"
        values = cube.values.astype(np.float64)
    clean = 1 - bad  # float32 of the reference (grey weights are applied in float64)
    np.testing.assert_allclose(values[clean], references[clean], rtol=1e-6)
    # the stack is the mean of the values that are not NaN; +-inf (a corrupt float) stays
    covered = ~np.isnan(values)
    count = covered.sum(axis=0)
    expected = np.full(values.shape[1:], np.nan)
    np.divide(np.where(covered, values, 0).sum(axis=0), count, out=expected, where=count > 0)
    finite = np.isfinite(values).all(axis=0)
    assert np.isfinite(result[finite]).all(), "stack not finite where both frames are"
    np.testing.assert_allclose(result, expected, rtol=1e-6)
    return "opened"


def _fuzz(kind, data):
    bad = data.draw(st.integers(0, 1), label="corrupted frame")
    changes = data.draw(corruptions(kind), label="changes")
    note(f"{kind}: frame {bad} corrupted by {changes}")
    event(f"{kind}: {check_pair(kind, bad, changes)}")


# derandomized: the default run is the same examples every time
FAST = settings(max_examples=80, derandomize=True, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=1500, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("kind", list(KINDS))
@FAST
@given(data=st.data())
def test_corrupt_frame_gives_frame_error_or_stacks(kind, data):
    _fuzz(kind, data)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(KINDS))
@SLOW
@given(data=st.data())
def test_corrupt_frame_many_examples(kind, data):
    _fuzz(kind, data)


@pytest.mark.parametrize("kind", list(KINDS))
def test_clean_pair_stacks(kind):
    """The frames the fuzz corrupts are valid as written (BLANK and NaN pixels included)."""
    assert check_pair(kind, 0, []) == "opened"


# --------------------------------------------------------------------------
# the experiment of the issue, seeded: 300 corruptions of one frame of a FITS pair


_ISSUE_VALUES = [b"-1", b"0", b"99999999999999999999999", b"'$ 32768'", b"$ 32768", b"1E999",
                 b"NaN", b"T", b"F", b"'text'", b"", b"3.5", b"-32768", b"2147483648",
                 b"1000", b"1000000000", b"\xff\xfe", b"-64", b"1D300", b"'   '"]


def issue_corruptions(seed, n=300, kind="fits-u16"):
    """``n`` seeded ``(frame, [change])``: absurd card values, blanked cards, random
    header bytes, truncations, as in the issue's experiment."""
    rng = np.random.default_rng(seed)
    data = _pair(kind)[1][0]
    keys = [key for _, key in _fits_cards(data)[:-1]]
    end = _fits_cards(data)[-1][0] + 80
    out = []
    for _ in range(n):
        what = rng.integers(4)
        if what == 0:
            key = keys[rng.integers(len(keys))]
            change = SetCard(key, _ISSUE_VALUES[rng.integers(len(_ISSUE_VALUES))])
        elif what == 1:
            change = BlankCard(keys[rng.integers(len(keys))], bool(rng.integers(2)))
        elif what == 2:
            change = Overwrite(int(rng.integers(end)), bytes(rng.integers(0, 256, rng.integers(
                1, 9)).astype(np.uint8)))
        else:
            change = Truncate(int(rng.integers(len(data))))
        out.append((int(rng.integers(2)), [change]))
    return out


def run_issue_experiment(seed, n=300, kind="fits-u16"):
    """Outcome counts of the experiment; an escape fails with the corruption named."""
    counts = {"opened": 0, "FrameError": 0}
    for bad, changes in issue_corruptions(seed, n, kind):
        try:
            counts[check_pair(kind, bad, changes)] += 1
        except Exception as err:
            raise AssertionError(f"{kind}: frame {bad} corrupted by {changes}: "
                                 f"{type(err).__name__}: {err}") from err
    return counts


def test_issue_experiment_has_no_escapes():
    counts = run_issue_experiment(seed=1, n=300)
    # both outcomes happen: the corruptions are neither all harmless nor all fatal
    assert counts["opened"] > 50 and counts["FrameError"] > 50, counts


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fits-u16", "fits-f32"])
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_issue_experiment_more_seeds(kind, seed):
    counts = run_issue_experiment(seed=seed, n=300, kind=kind)
    assert counts["opened"] > 0 and counts["FrameError"] > 0, counts


# astropy reads headers longer than the quick reader's limit; it may warn (non-ASCII
# bytes, bytes after END) before bigstack's FrameError, and those warnings are astropy's
@pytest.mark.filterwarnings("ignore::astropy.utils.exceptions.AstropyUserWarning")
def test_issue_experiment_through_astropy(monkeypatch):
    from bigstack import _io

    monkeypatch.setattr(_io, "_quick_header", lambda *args: None)
    counts = run_issue_experiment(seed=5, n=100)
    assert counts["opened"] > 10 and counts["FrameError"] > 10, counts
