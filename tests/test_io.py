"""open_frames and the tutorial loaders, checked against astropy / imagecodecs.

Files are written here by the reference libraries themselves (astropy for
FITS, imagecodecs for PNG/JPEG) from seeded arrays, and read back through
bigstack; the expected values come from the reference library reading the
same file, never from bigstack.
"""

from __future__ import annotations

import os
import pickle

import dask
import imagecodecs
import numpy as np
import pytest
from astropy.io import fits

import bigstack
from bigstack import FrameError, FrameNotFoundError, imaging, open_frames
from bigstack._io import frame_reader

from .helpers import bytes_read, write_fits

GREY = np.array([0.2126, 0.7152, 0.0722])


def _astropy_cube(paths):
    return np.stack([np.asarray(fits.getdata(p), dtype=np.float32) for p in paths])


# --------------------------------------------------------------------------
# FITS, pixel for pixel against astropy


@pytest.mark.parametrize(
    "dtype, bzero, bscale",
    [
        ("uint16", None, None),  # astropy writes BITPIX=16, BZERO=32768
        ("int16", None, None),
        ("uint8", None, None),
        ("int32", None, None),
        ("float32", None, None),
        ("float64", None, None),
        ("int16", 100.0, 2.5),  # scaled integers
    ],
)
def test_fits_matches_astropy(tmp_path, dtype, bzero, bscale):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(3):
        if np.dtype(dtype).kind == "f":
            data = rng.normal(1000, 50, (37, 53)).astype(dtype)
        else:
            info = np.iinfo(dtype)
            hi = min(info.max, 2**20)
            data = rng.integers(max(info.min, -(2**20)), hi, (37, 53), endpoint=True).astype(dtype)
        paths.append(write_fits(tmp_path / f"f{i}.fits", data, bzero=bzero, bscale=bscale))
    cube = open_frames(paths, rows=8)  # bands of 8 rows: 5 chunks, the last one short
    assert cube.dims == ("frame", "y", "x")
    assert cube.dtype == np.float32
    assert cube.data.chunks == ((1, 1, 1), (8, 8, 8, 8, 5), (53,))
    expected = _astropy_cube(paths)
    np.testing.assert_array_equal(cube.values, expected)
    if dtype == "uint16":
        header = fits.getheader(paths[0])
        assert header["BITPIX"] == 16 and header["BZERO"] == 32768
        assert cube.values.max() > 32768  # came back as 0..65535


def test_fits_image_in_extension_and_blank(tmp_path):
    data = np.arange(20 * 30, dtype=np.int16).reshape(20, 30)
    data[3, 4] = -999
    hdu = fits.ImageHDU(data)
    hdu.header["BLANK"] = -999
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    cube = open_frames([path])
    with fits.open(path) as hdul:
        expected = hdul[1].data.astype(np.float32)
    got = cube.values[0]
    assert np.isnan(got[3, 4])
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected) | (data == -999))
    mask = data != -999
    np.testing.assert_array_equal(got[mask], data[mask].astype(np.float32))


def test_header_coordinates(tmp_path):
    paths = []
    for i in range(3):
        header = {"EXPTIME": 30.0 + i, "DATE-OBS": f"2026-03-0{i + 1}T21:00:0{i}.250",
                  "FILTER": "Ha"}
        paths.append(write_fits(tmp_path / f"f{i}.fit", np.zeros((4, 5), np.uint16), **header))
    cube = open_frames(str(tmp_path / "*.fit"))
    np.testing.assert_array_equal(cube["exptime"].values, [30.0, 31.0, 32.0])
    assert cube["time"].values[2] == np.datetime64("2026-03-03T21:00:02.250")
    assert list(cube["filter"].values) == ["Ha"] * 3
    assert list(cube["path"].values) == [os.path.abspath(p) for p in paths]
    np.testing.assert_array_equal(cube["y"].values, np.arange(4))
    np.testing.assert_array_equal(cube["x"].values, np.arange(5))


def test_coordinate_absent_when_a_header_lacks_it(tmp_path):
    write_fits(tmp_path / "a.fit", np.zeros((4, 5), np.uint16), EXPTIME=10.0)
    write_fits(tmp_path / "b.fit", np.zeros((4, 5), np.uint16))
    cube = open_frames(tmp_path / "*.fit")
    assert "exptime" not in cube.coords


def test_list_keeps_order_pattern_sorts(tmp_path):
    a = write_fits(tmp_path / "a.fit", np.full((3, 3), 1, np.uint16))
    b = write_fits(tmp_path / "b.fit", np.full((3, 3), 2, np.uint16))
    assert list(open_frames([b, a]).values[:, 0, 0]) == [2.0, 1.0]
    assert list(open_frames(str(tmp_path / "*.fit")).values[:, 0, 0]) == [1.0, 2.0]
    assert list(open_frames(tmp_path).values[:, 0, 0]) == [1.0, 2.0]  # a folder


# --------------------------------------------------------------------------
# reading only what is asked for


def test_each_chunk_reads_only_its_rows(tmp_path):
    data = np.random.default_rng(2).integers(0, 65535, (300, 200)).astype(np.uint16)
    path = write_fits(tmp_path / "f.fit", data)
    cube = open_frames([path], rows=50)
    block = cube.data.blocks[0, 2, 0]  # rows 100..150
    with bytes_read() as count:
        values = block.compute(scheduler="synchronous")
    np.testing.assert_array_equal(values[0], data[100:150].astype(np.float32))
    assert count.value == 50 * 200 * 2  # exactly the band, nothing more


def test_box_read_reads_only_the_box(tmp_path):
    data = np.random.default_rng(3).integers(0, 65535, (400, 500)).astype(np.uint16)
    path = write_fits(tmp_path / "f.fit", data)
    reader, _ = frame_reader(open_frames([path]))
    with bytes_read() as count:
        box = reader.read(0, 120, 160, 300, 340)
    np.testing.assert_array_equal(box, data[120:160, 300:340].astype(np.float32))
    assert count.value == 40 * 40 * 2


def test_opening_200_frames_reads_no_pixels(tmp_path, monkeypatch):
    data = np.random.default_rng(4).integers(0, 65535, (256, 256)).astype(np.uint16)
    paths = [write_fits(tmp_path / f"f{i:03d}.fit", data, EXPTIME=1.0) for i in range(200)]
    pixel_bytes = 200 * data.nbytes
    with bytes_read() as count:
        cube = open_frames(str(tmp_path / "*.fit"))
        _ = cube.isel(frame=slice(10, 20)).mean("frame")  # building on it stays lazy
    # headers only: each file's primary header is a single 2880-byte block
    # (plus a little slack for whatever else the process reads meanwhile)
    assert count.value <= 200 * 2880 + 64 * 1024
    assert count.value < pixel_bytes / 40
    # the measurement does see pixel reads
    with bytes_read() as count:
        cube.isel(frame=0).load()
    assert count.value >= data.nbytes
    # and no pixel read is attempted at all while opening

    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read while opening")

    monkeypatch.setattr(os, "preadv", forbidden)
    with dask.config.set(scheduler=forbidden):
        open_frames(paths)


# --------------------------------------------------------------------------
# PNG / JPEG


def _write_image(path, array):
    encode = imagecodecs.png_encode if str(path).endswith(".png") else imagecodecs.jpeg8_encode
    path.write_bytes(encode(array))
    return path


@pytest.mark.parametrize(
    "suffix, dtype, channels",
    [(".png", np.uint8, 3), (".png", np.uint16, 3), (".png", np.uint16, 0),
     (".png", np.uint8, 4), (".jpg", np.uint8, 3)],
)
def test_png_jpeg_grey_matches_reference(tmp_path, suffix, dtype, channels):
    rng = np.random.default_rng(5)
    shape = (23, 31, channels) if channels else (23, 31)
    paths = []
    for i in range(2):
        array = rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)
        paths.append(_write_image(tmp_path / f"im{i}{suffix}", array))
    cube = open_frames(paths)
    assert cube.shape == (2, 23, 31)
    for k, path in enumerate(paths):
        decoded = imagecodecs.imread(path).astype(np.float64)  # JPEG: what the codec gives
        expected = decoded[..., :3] @ GREY if decoded.ndim == 3 else decoded
        np.testing.assert_allclose(cube.values[k], expected, rtol=1e-6)
        np.testing.assert_allclose(imaging.load_image(str(path)), expected, rtol=1e-6)
    if dtype == np.uint16:
        assert cube.values.max() > 255  # full 16-bit precision kept


def test_load_image_custom_grey_weights(tmp_path):
    rgb = np.random.default_rng(6).integers(0, 255, (9, 11, 3)).astype(np.uint8)
    path = _write_image(tmp_path / "c.png", rgb)
    got = imaging.load_image(str(path), gray_conv=[1.0, 0.0, 0.0])
    np.testing.assert_array_equal(got, rgb[..., 0].astype(np.float32))


# --------------------------------------------------------------------------
# tutorial loaders


def test_get_files_sorted(tmp_path, capsys):
    for name in ("c.fit", "a.fit", "b.fit", "x.txt"):
        (tmp_path / name).write_bytes(b"")
    files = imaging.get_files(str(tmp_path / "*.fit"), print_log=True)
    assert [os.path.basename(f) for f in files] == ["a.fit", "b.fit", "c.fit"]
    assert "Files loaded" in capsys.readouterr().out
    assert len(imaging.get_files(str(tmp_path / "*.nothing"))) == 0


def test_load_image_fits_as_astropy(tmp_path):
    data = np.random.default_rng(7).integers(0, 65535, (40, 60)).astype(np.uint16)
    path = write_fits(tmp_path / "f.fit", data)
    image = imaging.load_image(str(path))
    assert image.dtype == np.float32 and image.shape == (40, 60)
    np.testing.assert_array_equal(image, fits.getdata(path).astype(np.float32))


# --------------------------------------------------------------------------
# bad input: each names the file and the problem


def test_empty_pattern(tmp_path):
    pattern = str(tmp_path / "*.fit")
    with pytest.raises(FrameNotFoundError, match="no file matches") as err:
        open_frames(pattern)
    assert pattern in str(err.value)
    with pytest.raises(FrameNotFoundError, match="no frame files"):
        open_frames([])
    with pytest.raises(FrameNotFoundError, match="no frame files"):
        open_frames(tmp_path)  # an empty folder


def test_missing_file(tmp_path):
    good = write_fits(tmp_path / "a.fit", np.zeros((3, 3), np.uint16))
    missing = tmp_path / "gone.fit"
    with pytest.raises(FrameNotFoundError, match="no such file") as err:
        open_frames([good, missing])
    assert str(missing) in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(FrameNotFoundError, match="gone.fit"):
        imaging.load_image(str(missing))


@pytest.mark.parametrize("name, content, problem", [
    ("text.fit", b"this is not an image\n" * 10, "not a FITS file"),
    ("empty.fits", b"", "not a FITS file"),
    ("noise.png", bytes(range(256)) * 4, "not a readable PNG/JPEG"),
    ("notes.txt", b"hello", "unsupported file type '.txt'"),
])
def test_not_an_image(tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FrameError, match=problem) as err:
        open_frames([path])
    assert str(path) in str(err.value)


def test_fits_missing_simple_card(tmp_path):
    path = write_fits(tmp_path / "f.fit", np.zeros((3, 3), np.uint16))
    raw = bytearray(path.read_bytes())
    raw[:6] = b"XIMPLE"
    path.write_bytes(bytes(raw))
    with pytest.raises(FrameError, match="not a FITS file"):
        open_frames([path])


def test_truncated_fits_found_at_open(tmp_path, monkeypatch):
    data = np.zeros((100, 100), np.uint16)
    good = write_fits(tmp_path / "a.fit", data)
    bad = write_fits(tmp_path / "b.fit", data)
    with open(bad, "r+b") as f:
        f.truncate(2880 + 100 * 100 * 2 - 10)
    monkeypatch.setattr(os, "preadv", None)  # any pixel read would fail loudly
    with pytest.raises(FrameError, match="truncated") as err:
        open_frames([good, bad])
    assert str(bad) in str(err.value)


def test_frames_of_different_shapes(tmp_path):
    a = write_fits(tmp_path / "a.fit", np.zeros((10, 20), np.uint16))
    b = write_fits(tmp_path / "b.fit", np.zeros((10, 21), np.uint16))
    with pytest.raises(FrameError, match=r"frame shape \(10, 21\) .* differs") as err:
        open_frames([a, b])
    assert str(b) in str(err.value) and str(a) in str(err.value)


def test_fits_without_image_hdu(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    path = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(path)
    with pytest.raises(FrameError, match="no image HDU") as err:
        open_frames([path])
    assert str(path) in str(err.value)


def test_4d_fits(tmp_path):
    path = write_fits(tmp_path / "cube.fits", np.zeros((2, 3, 10, 20), np.float32))
    with pytest.raises(FrameError, match=r"4-D image of shape \(2, 3, 10, 20\)") as err:
        open_frames([path])
    assert str(path) in str(err.value)


def test_3d_fits_with_single_plane_is_a_frame(tmp_path):
    data = np.arange(200, dtype=np.float32).reshape(1, 10, 20)
    path = write_fits(tmp_path / "one.fits", data)
    np.testing.assert_array_equal(open_frames([path]).values[0], data[0])


def test_channel_refused_for_fits(tmp_path):
    path = write_fits(tmp_path / "a.fit", np.zeros((3, 3), np.uint16))
    with pytest.raises(FrameError, match="channel='G': the file holds one \\(mono\\) plane"):
        open_frames([path], channel="G")


def test_file_removed_after_open_names_it(tmp_path):
    path = write_fits(tmp_path / "a.fit", np.zeros((3, 3), np.uint16))
    cube = open_frames([path])
    os.remove(path)
    with pytest.raises(FrameNotFoundError, match="a.fit"):
        cube.load()


# --------------------------------------------------------------------------
# the graph is light and portable


def test_graph_carries_no_pixels_and_pickles(tmp_path):
    data = np.zeros((512, 512), np.uint16)
    paths = [write_fits(tmp_path / f"f{i:02d}.fit", data) for i in range(20)]
    cube = open_frames(paths)
    blob = pickle.dumps(dict(cube.data.dask))
    assert len(blob) < 20 * 1024  # 20 frames of 512 KiB each: only paths travel
    error = pickle.loads(pickle.dumps(FrameError("x.fit", "broken")))
    assert str(error) == "x.fit: broken"


def test_version():
    assert isinstance(bigstack.__version__, str)


# --------------------------------------------------------------------------
# camera RAW (generated DNG files, read by rawpy)


def _raw_reference(path):
    """The tutorial's plane split, written out with rawpy and numpy slicing."""
    rawpy = pytest.importorskip("rawpy")
    with rawpy.imread(str(path)) as raw:
        image = raw.raw_image.astype(np.float64)
        pattern = raw.raw_pattern.copy()
        desc = raw.color_desc.decode()
    planes = {}
    for index in range(len(desc)):
        row, col = np.argwhere(pattern == index)[0]
        planes.setdefault(desc[index], []).append(image[row::2, col::2])
    return {colour: np.mean(p, axis=0) for colour, p in planes.items()}


@pytest.mark.parametrize("pattern", ["RGGB", "GBRG"])
def test_raw_planes_match_rawpy(tmp_path, pattern):
    pytest.importorskip("rawpy")
    from bigstack._dng import write_dng

    rng = np.random.default_rng(8)
    paths = []
    for i in range(2):
        cfa = rng.integers(0, 4095, (40, 64)).astype(np.uint16)
        paths.append(write_dng(tmp_path / f"r{i}.dng", cfa, pattern=pattern))
    # superpixel debayering: one RGB pixel a Bayer cell, the greens averaged (rawpy's planes)
    cube = open_frames(paths, debayer="superpixel")
    assert cube.dims == ("frame", "channel", "y", "x")
    assert list(cube["channel"].values) == ["R", "G", "B"]
    assert cube.shape == (2, 3, 20, 32)
    green = open_frames(paths, channel="G", debayer="superpixel")
    assert green.dims == ("frame", "y", "x")
    for k, path in enumerate(paths):
        ref = _raw_reference(path)
        for c, colour in enumerate("RGB"):
            np.testing.assert_allclose(cube.values[k, c], ref[colour], rtol=1e-6)
        np.testing.assert_allclose(green.values[k], ref["G"], rtol=1e-6)
        tutorial = imaging.load_image(str(path))
        assert tutorial.shape == (3, 20, 32) and tutorial.dtype == np.float32
        np.testing.assert_allclose(tutorial[2], ref["B"], rtol=1e-6)
    # unfiltered planes keep the sensor size, zero at the other colours' pixels
    full = imaging.load_image(str(paths[0]), bayer_colors=["R"], return_filtered_raw=False)
    assert full.shape == (1, 40, 64)
    r_row, r_col = {"RGGB": (0, 0), "GBRG": (1, 0)}[pattern]
    np.testing.assert_allclose(full[0, r_row::2, r_col::2], _raw_reference(paths[0])["R"])
    assert np.count_nonzero(full[0]) <= 40 * 64 // 4


def test_raw_bad_channel_and_corrupt(tmp_path):
    pytest.importorskip("rawpy")
    from bigstack._dng import write_dng

    path = write_dng(tmp_path / "r.dng", np.zeros((24, 32), np.uint16))
    with pytest.raises(FrameError, match="channel 'Q' is not one of 'R', 'G', 'B'"):
        open_frames([path], channel="Q")
    bad = tmp_path / "broken.nef"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(FrameError, match="cannot read as camera RAW") as err:
        open_frames([bad])
    assert str(bad) in str(err.value)


# --------------------------------------------------------------------------
# the quick header reader agrees with astropy's


def _headers_cases(tmp_path):
    cases = []
    hdu = fits.PrimaryHDU(np.zeros((5, 7), np.uint16))
    hdu.header["FILTER"] = "O'III"  # a quote inside a string
    hdu.header["EXPTIME"] = (1.5e2, "seconds / with a slash in the comment")
    hdu.header["DATE-OBS"] = "2026-02-03"
    hdu.header["TIME-OBS"] = "04:05:06.5"
    for k in range(60):  # a header of several blocks
        hdu.header[f"EXTRA{k}"] = "x" * 40
    hdu.header["LONGSTR"] = "a long value " * 10  # CONTINUE cards
    hdu.header["HIERARCH ESO DET CHIP"] = 3
    cases.append(hdu)
    scaled = fits.PrimaryHDU(np.arange(12, dtype=np.int16).reshape(3, 4))
    scaled.header["BSCALE"] = 2.5
    scaled.header["BZERO"] = -10.0
    scaled.header["BLANK"] = -1
    scaled.header["EXPOSURE"] = 7
    cases.append(scaled)
    paths = []
    for i, item in enumerate(cases):
        path = tmp_path / f"h{i}.fits"
        item.writeto(path, output_verify="silentfix")
        paths.append(path)
    ext = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.ones((4, 6), np.float32))]).writeto(ext)
    paths.append(ext)
    return paths


def test_quick_header_matches_astropy(tmp_path, monkeypatch):
    from bigstack import _io

    paths = _headers_cases(tmp_path)
    quick = [_io.inspect_fits(str(p)) for p in paths]
    monkeypatch.setattr(_io, "_quick_header", lambda *args: None)
    slow = [_io.inspect_fits(str(p)) for p in paths]
    for a, b in zip(quick, slow, strict=True):
        assert a == b
        assert a.header == b.header
    assert quick[0].header["filter"] == "O'III"
    assert quick[0].header["exptime"] == 150.0
    assert quick[0].header["time"] == np.datetime64("2026-02-03T04:05:06.500")
    assert (quick[1].bscale, quick[1].bzero, quick[1].blank) == (2.5, -10.0, -1)
    assert quick[1].header["exptime"] == 7.0


# --------------------------------------------------------------------------
# corrupt headers: one line that names the file, the HDU and the card


def _with_card(path, key, field):
    """Rewrite card ``key`` of the primary header as ``key = field`` (``field`` raw bytes)."""
    data = bytearray(path.read_bytes())
    for offset in range(0, 2880, 80):
        if data[offset:offset + 8].rstrip() == key.encode():
            card = key.encode().ljust(8) + (b"= " + field if field is not None else b"")
            data[offset:offset + 80] = card.ljust(80)[:80]
            path.write_bytes(bytes(data))
            return path
    raise AssertionError(f"no card {key}")


@pytest.mark.parametrize("key, field, problem", [
    ("NAXIS1", b"$ 32768", r"HDU 0: NAXIS1 = '\$ 32768' is not a whole number"),
    ("NAXIS1", b"                3.5", "HDU 0: NAXIS1 = 3.5 is not a whole number"),
    ("NAXIS1", b"'32'", "HDU 0: NAXIS1 = '32' is not a whole number"),
    ("NAXIS2", b"                 -5", r"HDU 0: NAXIS2 = -5 is not at least 0"),
    # NAXIS = 10**9 once made open_frames look up a billion NAXISn cards
    ("NAXIS", b"         1000000000", r"HDU 0: NAXIS = 1000000000 is not in 0\.\.999"),
    ("NAXIS", b"                  3", "HDU 0: no NAXIS3 card"),
    ("NAXIS2", b"99999999999999999999", "truncated: the header announces"),
    ("BITPIX", b"                 12", "HDU 0: BITPIX = 12 is not one of 8, 16, 32, 64, -32, -64"),
    ("BITPIX", b"                  T", "HDU 0: BITPIX = T is not a whole number"),
    ("BITPIX", None, "HDU 0: BITPIX has no value"),
    ("BZERO", b"$ 32768", "HDU 0: BZERO = '\\$ 32768' is not a number"),
    ("BZERO", b"                NaN", "HDU 0: BZERO = 'NaN' is not a number"),
    ("BZERO", b"              1E999", "HDU 0: BZERO = inf is not a finite number"),
    ("BZERO", b"             1.0E39", "BZERO = 1e\\+39 take BITPIX = 16 values beyond the float32"),
    ("BSCALE", b"", "HDU 0: BSCALE has no value"),
    ("BSCALE", b"      1.0\xb0", "HDU 0: BSCALE = '1.0\xb0' is not a number"),
    ("BLANK", b"                3.5", "HDU 0: BLANK = 3.5 is not a whole number"),
    ("BLANK", b"              99999", r"HDU 0: BLANK = 99999 is not in -32768\.\.32767"),
    ("SIMPLE", b"                  F", "not a FITS file"),
])
def test_corrupt_header_card_names_the_card(tmp_path, key, field, problem):
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)  # astropy: BITPIX=16, BZERO=32768
    good = write_fits(tmp_path / "good.fit", data)
    path = write_fits(tmp_path / "bad.fit", data, BSCALE=1.0, BLANK=-1)
    _with_card(path, key, field)
    with pytest.raises(FrameError, match=problem) as err:
        open_frames([good, path])
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


def test_corrupt_extension_header(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name="a", format="E", array=[1.0])])
    image = fits.ImageHDU(np.ones((4, 6), np.float32))
    path = tmp_path / "ext.fits"
    fits.HDUList([fits.PrimaryHDU(), table, image]).writeto(path)
    data = bytearray(path.read_bytes())
    at = data.index(b"PCOUNT  =")
    data[at:at + 80] = b"PCOUNT  =                   -7".ljust(80)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError, match="HDU 1: PCOUNT = -7 is not at least 0"):
        open_frames([path])
    data[at:at + 80] = b"PCOUNT  =               100000".ljust(80)
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError, match="truncated: HDU 1 announces 100004 bytes"):
        open_frames([path])
    data[2880:2888] = b"XTENSIOM"
    path.write_bytes(bytes(data))
    with pytest.raises(FrameError, match="HDU 1: no XTENSION card"):
        open_frames([path])


def test_header_without_end_card(tmp_path):
    path = write_fits(tmp_path / "f.fit", np.zeros((3, 4), np.uint16))
    data = path.read_bytes().replace(b"END" + b" " * 77, b"FND" + b" " * 77)
    path.write_bytes(data[:2880])
    with pytest.raises(FrameError, match="truncated: HDU 0's header ends without an END card"):
        open_frames([path])


def test_tile_compressed_fits_under_a_fits_name_is_read(tmp_path):
    path = tmp_path / "c.fits"
    data = np.arange(64, dtype=np.int16).reshape(8, 8)
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data)]).writeto(path)
    np.testing.assert_array_equal(open_frames([path]).values[0], data)


def test_non_ascii_comment_is_not_an_error(tmp_path):
    """Capture software writes units such as degrees in comments; only used cards must parse."""
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    path = write_fits(tmp_path / "f.fit", data, CCD_TEMP=-10.0, FILTER="L")
    raw = bytearray(path.read_bytes())
    at = raw.index(b"CCD-TEMP")
    raw[at + 40:at + 46] = "/ [°C]".encode("latin-1")
    path.write_bytes(bytes(raw))
    cube = open_frames([path])
    np.testing.assert_array_equal(cube.values[0], data)
    assert cube["filter"].values[0] == "L"


@pytest.mark.parametrize("key, field", [
    ("EXPTIME", b"$ 30"), ("EXPTIME", b"INF"), ("DATE-OBS", b"'1000'"),
    ("DATE-OBS", b"'yesterday'"), ("FILTER", b"'unterminated"),
])
def test_bad_label_cards_drop_the_label(tmp_path, key, field):
    """EXPTIME, DATE-OBS and FILTER label frames; a bad one is left out, not an error."""
    data = np.zeros((3, 4), np.uint16)
    path = write_fits(tmp_path / "f.fit", data, EXPTIME=30.0, DATE_OBS="2026-01-02T03:04:05",
                      FILTER="L")
    _with_card(path, key, field.ljust(20) if field.startswith(b"'") else field.rjust(20))
    cube = open_frames([path])
    name = {"EXPTIME": "exptime", "DATE-OBS": "time", "FILTER": "filter"}[key]
    assert name not in cube.coords
    assert {"exptime", "time", "filter"} - {name} <= set(cube.coords)


def test_valid_invalid_pixels_keep_working(tmp_path):
    """NaN pixels in float FITS and BLANK pixels in integer FITS are holes, not errors."""
    floats = np.arange(12, dtype=np.float32).reshape(3, 4)
    floats[1, 2] = np.nan
    a = write_fits(tmp_path / "a.fit", floats)
    ints = np.arange(12, dtype=np.int16).reshape(3, 4)
    ints[0, 0] = -99
    b = write_fits(tmp_path / "b.fit", ints, BLANK=-99)
    out = bigstack.stack(open_frames([a, b]))
    expected = np.nanmean([floats, np.where(ints == -99, np.nan, ints)], axis=0)
    np.testing.assert_allclose(out["stack"].values, expected)
    np.testing.assert_array_equal(out["coverage"].values, 2 - np.isnan(floats) - (ints == -99))


def test_long_string_on_continue_cards_matches_astropy(tmp_path):
    path = write_fits(tmp_path / "f.fit", np.zeros((3, 4), np.uint16),
                      FILTER="a very long filter name " * 5)
    assert b"CONTINUE" in path.read_bytes()
    cube = open_frames([path])
    assert cube["filter"].values[0] == fits.getheader(path)["FILTER"].strip()


# --------------------------------------------------------------------------
# a file that changes after open_frames is named when a task reads it


def test_fits_changed_after_open(tmp_path):
    data = np.arange(600, dtype=np.uint16).reshape(20, 30)
    a = write_fits(tmp_path / "a.fit", data)
    b = write_fits(tmp_path / "b.fit", data)
    cube = open_frames([a, b])
    with open(b, "r+b") as f:  # shrinks
        f.truncate(2880 + 100)
    with pytest.raises(FrameError, match="changed since it was opened") as err:
        bigstack.stack(cube)["stack"].load()
    assert str(b) in str(err.value)
    cube = open_frames([a])
    opened = os.stat(a).st_mtime_ns
    write_fits(tmp_path / "c.fit", data + 1)  # same size, new content
    os.replace(tmp_path / "c.fit", a)
    os.utime(a, ns=(opened + 10**9, opened + 10**9))  # a later time, whatever the clock
    with pytest.raises(FrameError, match=f"{a}: changed since it was opened"):
        cube.load()


def test_image_and_raw_changed_after_open(tmp_path):
    png = [_write_image(tmp_path / f"p{i}.png", np.full((6, 8), i, np.uint8)) for i in range(2)]
    cube = open_frames(png)
    _write_image(png[1], np.zeros((7, 8), np.uint8))
    with pytest.raises(FrameError, match="changed since it was opened") as err:
        cube.load()
    assert str(png[1]) in str(err.value)
    pytest.importorskip("rawpy")
    from bigstack._dng import write_dng

    raw = [write_dng(tmp_path / f"r{i}.dng", np.full((24, 32), i, np.uint16)) for i in range(2)]
    cube = open_frames(raw, channel="G")
    raw[0].write_bytes(raw[0].read_bytes()[:500])
    with pytest.raises(FrameError, match="changed since it was opened") as err:
        cube.load()
    assert str(raw[0]) in str(err.value)


def test_decoded_shape_is_checked(tmp_path, monkeypatch):
    """Pixels that do not match the header's size are refused, not cut to fit."""
    from bigstack import _io

    paths = [_write_image(tmp_path / f"p{i}.png", np.zeros((6, 8), np.uint8)) for i in range(2)]
    cube = open_frames(paths)
    monkeypatch.setattr(_io, "_decode_image", lambda path, data: np.zeros((5, 8), np.uint8))
    with pytest.raises(FrameError, match="decodes to 5x8 pixels, not the 6x8"):
        cube.load()


# --------------------------------------------------------------------------
# corrupt PNG / JPEG headers


def _png_with_ihdr(path, width=None, height=None, fix_crc=True):
    import struct
    import zlib

    data = bytearray(path.read_bytes())
    if width is not None:
        struct.pack_into(">I", data, 16, width)
    if height is not None:
        struct.pack_into(">I", data, 20, height)
    if fix_crc:
        struct.pack_into(">I", data, 29, zlib.crc32(data[12:29]))
    path.write_bytes(bytes(data))
    return path


def test_png_header_checks(tmp_path):
    path = _write_image(tmp_path / "p.png", np.zeros((6, 8), np.uint8))
    _png_with_ihdr(path, width=60000, height=60000)
    with pytest.raises(FrameError, match="announces 60000x60000 pixels, more than a file of"):
        open_frames([path])
    _png_with_ihdr(path, width=0)
    with pytest.raises(FrameError, match="PNG size 0x60000"):
        open_frames([path])
    _png_with_ihdr(path, width=8, fix_crc=False)
    with pytest.raises(FrameError, match="IHDR chunk fails its CRC check"):
        open_frames([path])


def test_jpeg_header_checks(tmp_path):
    path = _write_image(tmp_path / "j.jpg", np.zeros((16, 24, 3), np.uint8))
    good = path.read_bytes()
    sof = good.index(b"\xff\xc0") + 5
    path.write_bytes(good[:sof] + b"\x00\x00" + good[sof + 2:])  # height 0
    with pytest.raises(FrameError, match="start-of-frame: 24x0 pixels"):
        open_frames([path])
    path.write_bytes(good[:sof] + b"\xff\xff\xff\xff" + good[sof + 4:])
    with pytest.raises(FrameError, match="announces 65535x65535 pixels"):
        open_frames([path])
    path.write_bytes(good[:good.index(b"\xff\xc0")])
    with pytest.raises(FrameError, match="file ends before a start-of-frame segment"):
        open_frames([path])
    path.write_bytes(good[:len(good) // 2])  # the header is whole: the decode fails
    cube = open_frames([path])
    with pytest.raises(FrameError, match="cannot decode JPEG image") as err:
        cube.load()
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_png_grey_with_alpha(tmp_path):
    grey_alpha = np.random.default_rng(8).integers(0, 255, (6, 8, 2)).astype(np.uint8)
    path = tmp_path / "ga.png"
    path.write_bytes(imagecodecs.png_encode(grey_alpha))
    np.testing.assert_array_equal(open_frames([path]).values[0], grey_alpha[..., 0])


def test_raw_truncated_found_at_open(tmp_path):
    pytest.importorskip("rawpy")
    from bigstack._dng import write_dng

    path = write_dng(tmp_path / "r.dng", np.zeros((24, 32), np.uint16))
    path.write_bytes(path.read_bytes()[:600])  # the IFD is whole, the pixels are cut
    with pytest.raises(FrameError, match="cannot read as camera RAW: Input/output error$") as err:
        open_frames([path], channel="G")
    assert str(err.value).startswith(f"{path}: ")
