"""Tests of bigstack._dng.write_dng: the DNG files it writes must open in rawpy (LibRaw)."""

import datetime as dt

import numpy as np
import pytest

rawpy = pytest.importorskip("rawpy")
pytest.importorskip("tifffile")

from bigstack._dng import MIN_SIZE, write_dng  # noqa: E402

PATTERNS = ["RGGB", "BGGR", "GRBG", "GBRG"]

# LibRaw's colour indices into color_desc b"RGBG" (the second green is colour 3).
EXPECTED_RAW_PATTERN = {
    "RGGB": [[0, 1], [3, 2]],
    "BGGR": [[2, 3], [1, 0]],
    "GRBG": [[1, 0], [2, 3]],
    "GBRG": [[3, 2], [0, 1]],
}


def _mosaic(seed, shape=(24, 32)):
    return np.random.default_rng(seed).integers(0, 65536, size=shape, dtype=np.uint16)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_round_trip_through_rawpy(tmp_path, pattern):
    cfa = _mosaic(PATTERNS.index(pattern), shape=(26, 40))
    path = write_dng(tmp_path / f"{pattern}.dng", cfa, pattern)
    assert path.read_bytes()[:4] == b"II*\x00"  # little-endian classic TIFF

    with rawpy.imread(str(path)) as raw:
        raw_image = raw.raw_image.copy()
        visible = raw.raw_image_visible.copy()
        raw_colors = raw.raw_colors.copy()
        raw_pattern = raw.raw_pattern.copy()
        color_desc = raw.color_desc
        sizes = raw.sizes
        num_colors = raw.num_colors

    assert raw_image.dtype == np.uint16
    np.testing.assert_array_equal(raw_image, cfa)
    np.testing.assert_array_equal(visible, cfa)
    assert (sizes.raw_height, sizes.raw_width) == cfa.shape
    assert (sizes.top_margin, sizes.left_margin) == (0, 0)
    assert sizes.flip == 0

    assert color_desc == b"RGBG"
    assert num_colors == 3
    assert raw_pattern.tolist() == EXPECTED_RAW_PATTERN[pattern]
    letters = "".join(chr(color_desc[i]) for i in raw_pattern.ravel())
    assert letters == pattern
    np.testing.assert_array_equal(raw_colors, np.tile(raw_pattern, (13, 20)))


def test_levels_exposure_and_time(tmp_path):
    cfa = _mosaic(10)
    when = dt.datetime(2024, 1, 15, 21, 30, 5)
    path = write_dng(
        tmp_path / "meta.dng",
        cfa,
        "GBRG",
        black_level=512,
        white_level=16383,
        exptime=1 / 250,
        datetime=when,
    )
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image, cfa)  # no subtraction, no clipping
        assert list(raw.black_level_per_channel) == [512, 512, 512, 512]
        assert raw.white_level == 16383
        assert raw.other.shutter_speed == pytest.approx(1 / 250, rel=1e-6)
        assert raw.other.timestamp == when  # both sides in local time


def test_long_exposure_and_string_datetime(tmp_path):
    path = write_dng(
        tmp_path / "long.dng", _mosaic(11), exptime=300, datetime="2023:12:01 02:03:04"
    )
    with rawpy.imread(str(path)) as raw:
        assert raw.other.shutter_speed == pytest.approx(300.0)
        assert raw.other.timestamp == dt.datetime(2023, 12, 1, 2, 3, 4)


@pytest.mark.parametrize(
    ("pattern", "per_channel"),
    [("RGGB", [100, 200, 400, 300]), ("GBRG", [300, 400, 200, 100])],
)
def test_black_level_per_cfa_position(tmp_path, pattern, per_channel):
    # black_level is laid out like cfa[0:2, 0:2]; LibRaw reports it per colour (R, G, B, G2).
    path = write_dng(
        tmp_path / "black.dng", _mosaic(12), pattern, black_level=[[100, 200], [300, 400]]
    )
    with rawpy.imread(str(path)) as raw:
        assert list(raw.black_level_per_channel) == per_channel


def test_smallest_size_opens(tmp_path):
    cfa = _mosaic(13, shape=(MIN_SIZE, MIN_SIZE))
    path = write_dng(tmp_path / "small.dng", cfa, "BGGR")
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image, cfa)


@pytest.mark.parametrize("shape", [(25, 32), (24, 33), (25, 33)])
def test_odd_dimensions_raise(tmp_path, shape):
    with pytest.raises(ValueError, match="even"):
        write_dng(tmp_path / "odd.dng", _mosaic(0, shape))
    assert not (tmp_path / "odd.dng").exists()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.uint32, np.float32])
def test_non_uint16_raises(tmp_path, dtype):
    cfa = np.zeros((24, 32), dtype=dtype)
    with pytest.raises(ValueError, match="uint16"):
        write_dng(tmp_path / "dtype.dng", cfa)
    assert not (tmp_path / "dtype.dng").exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cfa": np.zeros((2, 24, 32), np.uint16)}, "2-D"),
        ({"cfa": np.zeros((MIN_SIZE - 2, 32), np.uint16)}, "LibRaw"),
        ({"cfa": [[0, 1], [2, 3]]}, "numpy array"),
        ({"pattern": "RGBG"}, "pattern"),
        ({"white_level": 0}, "white_level"),
        ({"black_level": 70000}, "black_level"),
        ({"black_level": [1, 2, 3]}, "black_level"),
        ({"exptime": 0}, "exptime"),
        ({"datetime": "2024-01-01T00:00:00"}, "datetime"),
    ],
)
def test_bad_arguments_raise(tmp_path, kwargs, match):
    args = {"cfa": _mosaic(0)} | kwargs
    with pytest.raises(ValueError, match=match):
        write_dng(tmp_path / "bad.dng", **args)
    assert not (tmp_path / "bad.dng").exists()


def test_existing_file_raises_unless_overwrite(tmp_path):
    path = tmp_path / "frame.dng"
    path.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_dng(path, _mosaic(1))
    assert path.read_bytes() == b"keep me"

    cfa = _mosaic(2)
    write_dng(path, cfa, overwrite=True)
    with rawpy.imread(str(path)) as raw:
        np.testing.assert_array_equal(raw.raw_image, cfa)
