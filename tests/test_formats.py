"""The formats people have: TIFF, SER, XISF, tile-compressed and gzipped FITS, FITS cubes.

Each reader is checked against its library's own reading (tifffile,
astropy, xisf) and against synthetic truth (the same scene written as FITS,
PNG, TIFF or SER by :mod:`bigstack.synthetic`); windows of rows and columns
against the whole; the lazy readers by counting what they decode or open;
and a night stacked from a SER video or from .fz files against the same
night stacked from FITS. Bad input of every format is a one-line
:class:`bigstack.FrameError` naming the file.
"""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
import xisf
from astropy.io import fits

import bigstack
from bigstack import FrameError, open_frames, synthetic
from bigstack._io import frame_reader, inspect
from bigstack.synthetic import Stars

from .helpers import bytes_read

GREY = np.array([0.2126, 0.7152, 0.0722])
SHAPE = (40, 56)


def _rgb(seed=0, dtype=np.uint16, shape=SHAPE):
    rng = np.random.default_rng(seed)
    top = {np.uint8: 255, np.uint16: 65535}.get(dtype, 1000)
    return (rng.random((*shape, 3)) * top).astype(dtype)


def _smooth(shape=SHAPE, dtype=np.uint16):
    """Data that compress (random data make xisf store blocks uncompressed)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return (100 + 3 * yy + 7 * xx).astype(dtype)


def _planes(rgb):
    return np.moveaxis(rgb, -1, 0)


# --------------------------------------------------------------------------
# TIFF

TIFF_LAYOUTS = {  # name: (tifffile.imwrite options, the mode bigstack chooses)
    "plain": ({}, "contiguous"),
    "strips-zlib-predictor": ({"rowsperstrip": 7, "compression": "zlib", "predictor": True},
                              "segments"),
    "tiles-zstd": ({"tile": (16, 16), "compression": "zstd"}, "segments"),
    "planar": ({"planarconfig": "separate"}, "contiguous"),
    "planar-strips-lzw": ({"planarconfig": "separate", "rowsperstrip": 5,
                           "compression": "lzw"}, "segments"),
}


@pytest.mark.parametrize("layout", sorted(TIFF_LAYOUTS))
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_rgb_tiff_matches_tifffile(tmp_path, layout, dtype):
    options, mode = TIFF_LAYOUTS[layout]
    rgb = _rgb(1, dtype)
    path = tmp_path / "a.tif"
    data = _planes(rgb) if options.get("planarconfig") == "separate" else rgb
    tifffile.imwrite(path, data, photometric="rgb", **options)
    reference = tifffile.imread(path)
    if reference.shape[0] == 3:
        reference = np.moveaxis(reference, 0, -1)
    np.testing.assert_array_equal(reference, rgb)  # the file holds what we meant
    assert inspect(str(path)).mode == mode
    cube = open_frames([path])
    assert cube.dims == ("frame", "channel", "y", "x")
    assert list(cube["channel"].values) == ["R", "G", "B"]
    np.testing.assert_array_equal(cube.values[0], _planes(reference).astype(np.float32))
    box = cube[0, :, 9:23, 5:37].values  # a band crossing strip and tile edges, and columns
    np.testing.assert_array_equal(box, _planes(reference)[:, 9:23, 5:37].astype(np.float32))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.uint32, np.float32,
                                   np.float64])
@pytest.mark.parametrize("options", [{}, {"compression": "zlib", "rowsperstrip": 3},
                                     {"tile": (16, 32), "compression": "deflate"}])
def test_mono_tiff_matches_tifffile(tmp_path, dtype, options):
    data = (_rgb(2, np.float64)[..., 0] * 50).astype(dtype)
    path = tmp_path / "m.tif"
    tifffile.imwrite(path, data, **options)
    cube = open_frames([path])
    assert cube.dims == ("frame", "y", "x")
    np.testing.assert_array_equal(cube.values[0], tifffile.imread(path).astype(np.float32))
    np.testing.assert_array_equal(cube[0, 11:30, 17:40].values, data[11:30, 17:40].astype(
        np.float32))


def test_big_endian_tiff(tmp_path):
    data = _rgb(3)[..., 0]
    path = tmp_path / "be.tif"
    tifffile.imwrite(path, data, byteorder=">")
    assert inspect(str(path)).mode == "contiguous"
    np.testing.assert_array_equal(open_frames([path]).values[0], data)


def test_striped_tiff_decodes_only_the_strips_of_a_band(tmp_path, monkeypatch):
    """Rows 10..15 of 7-row strips are in strips 1 and 2: two decodes, not six."""
    rgb = _rgb(4)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", rowsperstrip=7, compression="zlib")
    decoded = []
    real = tifffile.TiffPage.__dict__["decode"].func  # a cached property

    def counting(page):
        decode = real(page)

        def wrapper(data, index, **kw):
            decoded.append(index)
            return decode(data, index, **kw)
        return wrapper

    monkeypatch.setattr(tifffile.TiffPage, "decode", property(counting))
    source = inspect(str(path))
    np.testing.assert_array_equal(source.read(10, 16, 0, SHAPE[1], "G"), rgb[10:16, :, 1])
    assert sorted(decoded) == [1, 2]
    decoded.clear()
    tiled = tmp_path / "t.tif"
    tifffile.imwrite(tiled, rgb, photometric="rgb", tile=(16, 16), compression="zlib")
    source = inspect(str(tiled))
    # rows 17..20, columns 20..30: the tile row 1, tile columns 1 (of 4 across)
    np.testing.assert_array_equal(source.read(17, 21, 20, 30, "B"), rgb[17:21, 20:30, 2])
    assert sorted(decoded) == [4 + 1]


def test_synthetic_tiff_is_the_png_scene(tmp_path):
    """make_frames(fmt="tiff") writes the colour scene that fmt="png" writes."""
    kw = {"n_frames": 2, "shape": (32, 48), "seed": 5, "stars": Stars(n_stars=15)}
    tiff = synthetic.make_frames(tmp_path / "t", fmt="tiff", **kw)
    png = synthetic.make_frames(tmp_path / "p", fmt="png", **kw)
    np.testing.assert_array_equal(tiff.shifts, png.shifts)
    cube = open_frames(tiff.paths)
    planes = np.stack([_planes(imagecodecs.png_decode(Path(p).read_bytes()))
                       for p in png.paths]).astype(np.float32)
    np.testing.assert_array_equal(cube.values, planes)
    np.testing.assert_array_equal(cube.values[0], _planes(tifffile.imread(tiff.paths[0])))
    # grey and one plane, as the tutorial reads PNG
    grey = open_frames(tiff.paths, colour=False).values
    np.testing.assert_allclose(grey, open_frames(png.paths).values, rtol=1e-6)
    np.testing.assert_allclose(grey, np.tensordot(GREY, planes, axes=([0], [1])), rtol=1e-5)
    np.testing.assert_array_equal(open_frames(tiff.paths, channel="G").values, planes[:, 1])
    # and the PNG in colour when asked
    np.testing.assert_array_equal(open_frames(png.paths, colour=True).values, planes)
    np.testing.assert_array_equal(open_frames(png.paths, channel="B").values, planes[:, 2])
    assert bigstack._files.made_by_bigstack(tiff.paths[0])


# --------------------------------------------------------------------------
# SER


def _fits_night(tmp_path, n=6, shape=(48, 64), seed=3):
    return synthetic.make_frames(tmp_path / "fits", n_frames=n, shape=shape, seed=seed,
                                 stars=Stars(n_stars=25))


def test_ser_mono_is_the_fits_night(tmp_path):
    fits_truth = _fits_night(tmp_path)
    path = tmp_path / "night.ser"
    truth = synthetic.make_ser(path, n_frames=6, shape=(48, 64), seed=3, stars=Stars(n_stars=25))
    np.testing.assert_array_equal(truth.shifts, fits_truth.shifts)
    cube = open_frames(path)
    assert cube.shape == (6, 48, 64)
    assert list(cube["path"].values) == [str(path)] * 6
    reference = np.stack([fits.getdata(p) for p in fits_truth.paths]).astype(np.float32)
    np.testing.assert_array_equal(cube.values, reference)
    np.testing.assert_array_equal(cube["time"].values, np.array(
        [np.datetime64(d) for d in fits_truth.dates], "datetime64[ns]"))
    np.testing.assert_array_equal(cube[2:5, 7:19, 3:30].values, reference[2:5, 7:19, 3:30])


@pytest.mark.parametrize("colour", ["RGB", "BGR"])
def test_ser_colour_is_the_png_scene(tmp_path, colour):
    kw = {"n_frames": 3, "shape": (32, 48), "seed": 2}
    ser = synthetic.make_ser(tmp_path / "c.ser", colour=colour, **kw)
    png = synthetic.make_frames(tmp_path / "p", fmt="png", **kw)
    planes = np.stack([_planes(imagecodecs.png_decode(Path(p).read_bytes()))
                       for p in png.paths]).astype(np.float32)
    cube = open_frames(ser.paths[0])
    assert cube.dims == ("frame", "channel", "y", "x")
    np.testing.assert_array_equal(cube.values, planes)
    np.testing.assert_array_equal(open_frames(ser.paths[0], channel="R").values, planes[:, 0])
    np.testing.assert_allclose(open_frames(ser.paths[0], colour=False).values,
                               open_frames(png.paths).values, rtol=1e-6)


@pytest.mark.parametrize("pattern", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_ser_bayer_is_the_mosaic_of_the_scene(tmp_path, pattern):
    kw = {"n_frames": 2, "shape": (32, 48), "seed": 4}
    ser = synthetic.make_ser(tmp_path / "b.ser", colour=pattern, **kw)
    png = synthetic.make_frames(tmp_path / "p", fmt="png", **kw)
    cube = open_frames(ser.paths[0])
    assert cube.dims == ("frame", "y", "x")
    assert inspect(ser.paths[0]).header["bayerpat"] == pattern
    for i, p in enumerate(png.paths):
        rgb = imagecodecs.png_decode(Path(p).read_bytes())
        mosaic = np.empty(rgb.shape[:2], np.float32)
        cell = {"R": 0, "G": 1, "B": 2}
        for k, c in enumerate(pattern):  # the filter colour of each pixel of the 2x2 cell
            dy, dx = divmod(k, 2)
            mosaic[dy::2, dx::2] = rgb[dy::2, dx::2, cell[c]]
        np.testing.assert_array_equal(cube.values[i], mosaic)


def test_ser_header_fields_and_byte_order(tmp_path):
    """Header bytes as the SER v3 document places them; 16-bit big-endian data read right."""
    frames = [np.arange(12 * 10, dtype=np.uint16).reshape(12, 10) * (k + 1) for k in range(3)]
    path = tmp_path / "be.ser"
    synthetic.write_ser(path, frames, big_endian=True)
    raw = path.read_bytes()
    assert raw[:14] == b"LUCAM-RECORDER"
    assert int.from_bytes(raw[22:26], "little") == 1  # as capture programs mark big-endian
    assert [int.from_bytes(raw[o:o + 4], "little") for o in (26, 30, 34, 38)] == [10, 12, 16, 3]
    assert raw[178:180] == frames[0][0, :1].astype(">u2").tobytes()
    assert len(raw) == 178 + 3 * 12 * 10 * 2
    np.testing.assert_array_equal(open_frames(path).values, np.stack(frames))


def test_ser_without_frame_count_counts_its_frames(tmp_path):
    frames = [np.full((6, 10), k, np.uint16) for k in range(4)]
    path = _patch(synthetic.write_ser(tmp_path / "v.ser", frames), 38, 0)
    np.testing.assert_array_equal(open_frames(path).values, np.stack(frames))


def test_ser_frames_map_back_after_selection(tmp_path):
    path = tmp_path / "v.ser"
    synthetic.write_ser(path, [np.full((8, 8), k, np.uint8) for k in range(6)])
    cube = open_frames(path)
    reader, indices = frame_reader(cube.isel(frame=[4, 1, 5]))
    np.testing.assert_array_equal(indices, [4, 1, 5])
    assert [reader.read(i, 0, 1)[0, 0] for i in indices] == [4, 1, 5]
    np.testing.assert_array_equal(cube.isel(frame=[4, 1]).values[:, 0, 0], [4, 1])


def test_stack_of_ser_and_fz_equals_the_fits_night(tmp_path, monkeypatch):
    """The same frames as FITS files, one SER video, .fz files and one FITS cube stack to the
    same picture, and the SER file is opened once a thread, not once a frame."""
    truth = _fits_night(tmp_path, n=8)
    frames = [fits.getdata(p) for p in truth.paths]
    ser = tmp_path / "night.ser"
    synthetic.write_ser(ser, frames)
    fz = []
    for p, frame in zip(truth.paths, frames, strict=True):
        fz.append(p.replace(".fit", ".fits.fz"))
        fits.CompImageHDU(frame, compression_type="RICE_1").writeto(fz[-1])
    cube = tmp_path / "night-cube.fits"
    fits.PrimaryHDU(np.stack(frames)).writeto(cube)
    shifts = truth.shifts.copy()
    results = {}
    opens = []
    real_open = os.open

    def counting_open(path, *args, **kwargs):
        if os.fspath(path) == str(ser):
            opens.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    for name, paths in (("fits", truth.paths), ("ser", ser), ("fz", fz), ("cube", cube)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bigstack.BigstackWarning)
            results[name] = bigstack.stack(open_frames(paths), shifts)
    reference = results["fits"]
    np.testing.assert_array_equal(results["cube"]["stack"].values, reference["stack"].values)
    for name in ("ser", "fz"):
        np.testing.assert_array_equal(results[name]["coverage"].values,
                                      reference["coverage"].values)
        # FITS adds stored int16 + BZERO, the others uint16: equal to float32 rounding
        np.testing.assert_allclose(results[name]["stack"].values, reference["stack"].values,
                                   rtol=2e-7, atol=0)
    assert 1 <= len(opens) <= 1 + os.cpu_count()


# --------------------------------------------------------------------------
# compressed FITS and cubes


@pytest.mark.parametrize("kind", ["fz-rice", "fz-gzip", "fits.gz", "fit.gz"])
def test_compressed_fits_matches_astropy(tmp_path, kind):
    data = (_rgb(6)[..., 0] // 2).astype(np.uint16)
    if kind.startswith("fz"):
        path = tmp_path / "a.fits.fz"
        compression = "RICE_1" if kind == "fz-rice" else "GZIP_1"
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, compression_type=compression)]
                     ).writeto(path)
        with fits.open(path) as hdul:
            reference = hdul[1].data.astype(np.float32)
    else:
        path = tmp_path / f"a.{kind}"
        fits.PrimaryHDU(data).writeto(path)
        reference = fits.getdata(path).astype(np.float32)
    np.testing.assert_array_equal(reference, data)
    cube = open_frames([path])
    np.testing.assert_array_equal(cube.values[0], reference)
    np.testing.assert_array_equal(cube[0, 13:31, 4:50].values, reference[13:31, 4:50])


def test_gzip_fits_float_and_blank(tmp_path):
    data = _rgb(7, np.float64)[..., 1].astype(np.float32)
    data[3, 4] = np.nan
    path = tmp_path / "f.fits.gz"
    fits.PrimaryHDU(data).writeto(path)
    np.testing.assert_array_equal(open_frames([path]).values[0], data)
    stored = (_rgb(8)[..., 0] // 3).astype(np.int16)
    stored[0, 0] = -999
    hdu = fits.PrimaryHDU(stored)
    hdu.header["BLANK"] = -999
    hdu.header["BZERO"] = 10.0
    with gzip.open(tmp_path / "i.fits.gz", "wb") as f:
        hdu.writeto(f)
    out = open_frames([tmp_path / "i.fits.gz"]).values[0]
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out[1:], stored[1:] + 10.0)


@pytest.mark.parametrize("suffix", ["fits", "fits.gz", "fits.fz"])
def test_fits_cube_is_a_frame_per_plane(tmp_path, suffix):
    cube_data = np.stack([_smooth() + 5 * k for k in range(4)]).astype(np.uint16)
    path = tmp_path / f"cube.{suffix}"
    if suffix == "fits.fz":
        fits.CompImageHDU(cube_data).writeto(path)
    else:
        fits.PrimaryHDU(cube_data).writeto(path)
    with fits.open(path) as hdul:
        reference = next(h.data for h in hdul if h.data is not None).astype(np.float32)
    cube = open_frames([path])
    assert cube.dims == ("frame", "y", "x") and cube.shape == (4, *SHAPE)
    np.testing.assert_array_equal(cube.values, reference)
    np.testing.assert_array_equal(cube[1:3, 5:9].values, reference[1:3, 5:9])


@pytest.mark.parametrize("suffix", ["fits", "fits.gz", "fits.fz"])
def test_three_plane_fits_is_colour_unless_ctype3_says_otherwise(tmp_path, suffix):
    planes = _planes(_rgb(9))  # integers: .fz keeps them exactly (it quantises floats)

    def write(path, ctype3=None):
        hdu = (fits.CompImageHDU if suffix == "fits.fz" else fits.PrimaryHDU)(planes)
        if ctype3:
            hdu.header["CTYPE3"] = ctype3
        hdu.writeto(path)
        return path

    colour = open_frames([write(tmp_path / f"rgb.{suffix}")])
    assert colour.dims == ("frame", "channel", "y", "x")
    with fits.open(tmp_path / f"rgb.{suffix}") as hdul:
        reference = next(h.data for h in hdul if h.data is not None)
    np.testing.assert_array_equal(reference, planes)
    np.testing.assert_array_equal(colour.values[0], planes)
    np.testing.assert_array_equal(
        open_frames([write(tmp_path / f"rgb2.{suffix}", "RGB")], channel="B").values[0],
        planes[2])
    np.testing.assert_allclose(open_frames([tmp_path / f"rgb.{suffix}"], colour=False).values[0],
                               np.tensordot(GREY, planes, axes=1), rtol=1e-5)
    frames = open_frames([write(tmp_path / f"time.{suffix}", "TIME")])
    assert frames.dims == ("frame", "y", "x") and frames.shape[0] == 3
    np.testing.assert_array_equal(frames.values, planes)


# --------------------------------------------------------------------------
# XISF


@pytest.mark.parametrize("codec", [None, "zlib", "lz4", "zstd"])
@pytest.mark.parametrize("channels", [1, 3])
def test_xisf_matches_the_xisf_package(tmp_path, codec, channels):
    data = np.stack([_smooth() + 11 * c for c in range(channels)], axis=-1)
    path = tmp_path / "a.xisf"
    xisf.XISF.write(str(path), data, creator_app="bigstack tests", codec=codec, shuffle=True)
    reference = xisf.XISF(str(path)).read_image(0, data_format="channels_first")
    source = inspect(str(path))
    assert (source.offset is not None) == (codec is None)  # uncompressed: read by rows
    cube = open_frames([path])
    expected = reference.astype(np.float32) if channels == 3 else reference[0]
    np.testing.assert_array_equal(cube.values[0], expected)
    window = cube[0, ..., 6:21, 9:33].values
    np.testing.assert_array_equal(window, expected[..., 6:21, 9:33])


def test_xisf_float_rgb_by_rows(tmp_path):
    data = _rgb(10, np.float64).astype(np.float32) / 1000
    path = tmp_path / "f.xisf"
    xisf.XISF.write(str(path), data, creator_app="bigstack tests")
    cube = open_frames([path])
    np.testing.assert_array_equal(cube.values[0], _planes(data))
    np.testing.assert_array_equal(open_frames([path], channel="G").values[0], data[..., 1])


# --------------------------------------------------------------------------
# bad input: one line naming the file


def _cut(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    return path


def _tiff(path, data=None, **kw):
    tifffile.imwrite(path, _rgb(0)[..., 0] if data is None else data, **kw)
    return path


def _ser(path, **kw):
    synthetic.write_ser(path, [_rgb(0)[..., 0]] * 3, **kw)
    return path


def _patch(path, offset, value):
    data = bytearray(path.read_bytes())
    data[offset:offset + 4] = int(value).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    return path


BAD = {
    "tiff-truncated": (lambda p: _cut(_tiff(p / "a.tif"), 0.6), "truncated"),
    "tiff-truncated-strips": (
        lambda p: _cut(_tiff(p / "a.tif", _smooth(), compression="zlib", rowsperstrip=4), 0.8),
        "truncated"),
    "tiff-not-tiff": (lambda p: (p / "a.tif").write_bytes(b"hello") and p / "a.tif",
                      "cannot read as TIFF"),
    "tiff-1-bit": (lambda p: _tiff(p / "a.tif", _rgb(0)[..., 0] % 2 == 0),
                   "unsupported TIFF samples: 1-bit"),
    "tiff-complex": (lambda p: _tiff(p / "a.tif", _rgb(0)[..., 0].astype(np.complex64)),
                     "unsupported TIFF samples"),
    "tiff-palette": (lambda p: _tiff(p / "a.tif", _rgb(0, np.uint8)[..., 0],
                                     colormap=np.zeros((3, 256), np.uint16)), "palette"),
    "ser-truncated": (lambda p: _cut(_ser(p / "a.ser"), 0.8), "truncated"),
    "ser-not-ser": (lambda p: (p / "a.ser").write_bytes(b"x" * 300) and p / "a.ser",
                    "not a SER file"),
    "ser-short": (lambda p: (p / "a.ser").write_bytes(b"LUCAM") and p / "a.ser",
                  "not a SER file"),
    "ser-depth": (lambda p: _patch(_ser(p / "a.ser"), 34, 24), "bit depth"),
    "ser-cmy": (lambda p: _patch(_ser(p / "a.ser"), 18, 16), "CMY"),
    "ser-colour-id": (lambda p: _patch(_ser(p / "a.ser"), 18, 7), "ColorID 7"),
    "fz-truncated": (lambda p: _cut(_fz(p / "a.fits.fz"), 0.8), "truncated"),
    "fz-not-fits": (lambda p: (p / "a.fits.fz").write_bytes(b"x" * 6000) and p / "a.fits.fz",
                    "cannot read compressed FITS"),
    "gz-truncated": (lambda p: _cut(_gz(p / "a.fits.gz"), 0.7), "truncated"),
    "gz-not-gzip": (lambda p: (p / "a.fits.gz").write_bytes(b"x" * 6000) and p / "a.fits.gz",
                    "not a gzip file"),
    "gz-not-fits": (lambda p: (p / "a.fits.gz").write_bytes(gzip.compress(b"x" * 6000))
                    and p / "a.fits.gz", "not a FITS file"),
    "cube-truncated": (lambda p: _cut(_cube(p / "a.fits"), 0.7), "truncated"),
    "xisf-truncated": (lambda p: _cut(_xisf(p / "a.xisf"), 0.6), "truncated"),
    "xisf-not-xisf": (lambda p: (p / "a.xisf").write_bytes(b"hello") and p / "a.xisf",
                      "not an XISF file"),
    "xisf-bad-header": (lambda p: (p / "a.xisf").write_bytes(b"XISF0100garbage")
                        and p / "a.xisf", "cannot read as XISF"),
    "xisf-bad-block": (lambda p: _spoil_tail(_xisf(p / "a.xisf", codec="zlib")),
                       "cannot read as XISF"),
}


def _fz(path):
    fits.CompImageHDU(_smooth()).writeto(path)
    return path


def _gz(path):
    fits.PrimaryHDU(_rgb(0)[..., 0]).writeto(path)
    return path


def _cube(path):
    fits.PrimaryHDU(np.stack([_smooth()] * 4)).writeto(path)
    return path


def _xisf(path, codec=None):
    xisf.XISF.write(str(path), _smooth()[..., None], creator_app="bigstack tests", codec=codec)
    return path


def _spoil_tail(path):
    data = bytearray(path.read_bytes())
    data[-40:] = b"\x01" * 40
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_line_naming_the_file(tmp_path, case):
    make, problem = BAD[case]
    path = make(tmp_path)
    with pytest.raises(FrameError) as err:
        open_frames([path]).values  # noqa: B018 - a read, for errors found when decoding
    message = str(err.value)
    assert str(path) in message
    assert problem in message
    assert "\n" not in message


def test_channel_of_a_mono_file_is_an_error(tmp_path):
    path = _ser(tmp_path / "m.ser")
    with pytest.raises(FrameError, match="channel='R': the file holds one"):
        open_frames(path, channel="R")
    bayer = _ser(tmp_path / "b.ser", colour="RGGB")
    with pytest.raises(FrameError, match="RGGB Bayer mosaic"):
        open_frames(bayer, channel="R")


def test_load_image_reads_the_new_formats_as_the_tutorial_reads_png(tmp_path):
    from bigstack import imaging

    kw = {"n_frames": 1, "shape": (32, 48), "seed": 6}
    tiff = synthetic.make_frames(tmp_path / "t", fmt="tiff", **kw)
    png = synthetic.make_frames(tmp_path / "p", fmt="png", **kw)
    grey = imaging.load_image(png.paths[0])
    np.testing.assert_allclose(imaging.load_image(tiff.paths[0]), grey, rtol=1e-6)
    ser = synthetic.make_ser(tmp_path / "v.ser", colour="RGB", **kw)
    np.testing.assert_allclose(imaging.load_image(ser.paths[0]), grey, rtol=1e-6)
    mono = synthetic.make_ser(tmp_path / "m.ser", **kw)
    fits_truth = synthetic.make_frames(tmp_path / "f", **kw)
    np.testing.assert_array_equal(imaging.load_image(mono.paths[0]),
                                  fits.getdata(fits_truth.paths[0]))


def _xisf_by_hand(path, planes, storage, order):
    """An XISF file as the specification lays it out, with the storage and byte order asked.

    (The xisf package writes planar little-endian blocks only.)
    """
    channels, ny, nx = planes.shape
    data = planes if storage == "Planar" else np.moveaxis(planes, 0, -1)
    block = np.ascontiguousarray(data, dtype=order + "u2").tobytes()
    xml = ('<?xml version="1.0" encoding="UTF-8"?><xisf version="1.0" '
           'xmlns="http://www.pixinsight.com/xisf"><Image '
           f'geometry="{nx}:{ny}:{channels}" sampleFormat="UInt16" colorSpace="RGB" '
           f'pixelStorage="{storage}" byteOrder="{"big" if order == ">" else "little"}" '
           f'location="attachment:4096:{len(block)}"/><Metadata/></xisf>').encode()
    head = b"XISF0100" + len(xml).to_bytes(4, "little") + b"\0" * 4 + xml
    path.write_bytes(head.ljust(4096, b"\0") + block)
    return path


@pytest.mark.parametrize("storage", ["Planar", "Normal"])
@pytest.mark.parametrize("order", ["<", ">"])
def test_xisf_storage_and_byte_order(tmp_path, storage, order):
    planes = _planes(_rgb(11))
    path = _xisf_by_hand(tmp_path / "h.xisf", planes, storage, order)
    assert inspect(str(path)).offset == 4096
    cube = open_frames([path])
    np.testing.assert_array_equal(cube.values[0], planes)
    np.testing.assert_array_equal(cube[0, :, 5:17, 20:41].values, planes[:, 5:17, 20:41])


@pytest.mark.parametrize("options", [{}, {"compression": "zlib", "rowsperstrip": 6}])
def test_multipage_tiff_is_a_frame_per_page(tmp_path, options):
    stack = np.stack([_smooth() + 100 * k for k in range(5)])
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, **options)
    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 5
    cube = open_frames([path])
    assert cube.shape == (5, *SHAPE)
    np.testing.assert_array_equal(cube.values, tifffile.imread(path))
    np.testing.assert_array_equal(cube[3, 7:20, 2:30].values, stack[3, 7:20, 2:30])
    # a thumbnail of another size does not become a frame, nor stop the first page's reading
    mixed = tmp_path / "mixed.tif"
    with tifffile.TiffWriter(mixed) as writer:
        writer.write(stack[0])
        writer.write(stack[0, ::4, ::4])
    cube = open_frames([mixed])
    assert cube.shape == (1, *SHAPE)
    np.testing.assert_array_equal(cube.values[0], stack[0])


def test_fz_band_reads_its_tiles_not_the_file(tmp_path):
    """fpack's tiles are rows: a band of 50 of 2000 rows reads well under half the file,
    wherever it is (the gzipped file, by contrast, is read up to the band)."""
    data = np.random.default_rng(12).normal(1000, 30, (2000, 600)).astype(np.uint16)
    path = tmp_path / "l.fits.fz"
    fits.CompImageHDU(data, compression_type="RICE_1").writeto(path)
    size = path.stat().st_size
    source = inspect(str(path))
    for y0 in (100, 1900):
        with bytes_read() as count:
            band = source.read(y0, y0 + 50, 0, 600)
        np.testing.assert_array_equal(band, data[y0:y0 + 50])
        assert count.value < 0.5 * size


def test_ser_benchmark_runs_and_counts_opens(tmp_path):
    """benchmarks/ser_frames.py on a small video: the file opened once to open the cube and
    once a worker thread to stack it."""
    import importlib.util

    script = Path(__file__).parent.parent / "benchmarks" / "ser_frames.py"
    spec = importlib.util.spec_from_file_location("ser_frames", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (row,) = module.main(["--frames", "60", "--size", "48x64", "--dir", str(tmp_path)])
    assert row["frames"] == 60 and np.isfinite(row["sum"])
    assert row["opens_at_open"] == 1
    assert 2 <= row["opens_total"] <= 1 + os.cpu_count()
