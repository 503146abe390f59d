"""find_transforms on frames, against the transforms the frames were made with."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest

from bigstack import BigstackWarning, StarNotFoundError, find_transforms, open_frames, synthetic
from tests.helpers import bytes_read, render_frame, similarity, sky_field, transform_error

SHAPE = (512, 512)
CENTRE = (255.5, 255.5)


def field(seed=1, density=800, fwhm=3.0, peak=300.0):
    """Stars over a sky larger than the frame, faintest peak ``peak / 4`` ADU."""
    s = fwhm / 2.3548
    return sky_field(seed, int(density * 9 * SHAPE[0] * SHAPE[1] / 1e6),
                     (-SHAPE[1], 2 * SHAPE[1], -SHAPE[0], 2 * SHAPE[0]),
                     flux_min=peak / 4 * 2 * np.pi * s * s)


def cube(matrices, stars, fwhm=3.0, **kwargs):
    return np.stack([render_frame(SHAPE, stars, m, fwhm, seed=10 + k, **kwargs)
                     for k, m in enumerate(matrices)])


def overlap_error(found, truth, shape=SHAPE):
    """Largest error on a 17 x 17 grid of reference pixels that land inside the frame."""
    ny, nx = shape
    gy, gx = np.mgrid[0:ny - 1:17j, 0:nx - 1:17j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    p = grid @ truth[:, :2].T + truth[:, 2]
    inside = ((p >= 0) & (p <= [nx - 1, ny - 1])).all(axis=1)
    return transform_error(found, truth, grid[inside]).max()


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    folder = tmp_path_factory.mktemp("night")
    return synthetic.make_frames(folder, n_frames=8, shape=(1024, 256), seed=3,
                                 stars=synthetic.Stars(n_stars=700),
                                 motion=synthetic.Motion(subpixel=True, drift_step=2.0))


def test_translation_night_against_truth(night):
    frames = open_frames(night.paths)
    find_transforms(frames[:2], reference=0)  # imports: their reads are not the frames'
    with bytes_read() as counter:
        ds = find_transforms(frames, reference=0)
    # every frame valid, its matrix the identity, its transform the truth's over the frame
    assert ds["valid"].all()
    np.testing.assert_allclose(ds["transform"].values[:, :, :2],
                               np.broadcast_to(np.eye(2), (8, 2, 2)), atol=1e-4)
    # (the bands grow to some 100 stars, most of them faint: the fitted rotation is good to
    # about 5e-5 rad, 0.06 px at the far corners of this narrow frame)
    gy, gx = np.mgrid[0:1024:9j, 0:256:5j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    for k in range(8):
        truth = np.column_stack([np.eye(2), night.shifts[k]])
        assert transform_error(ds["transform"].values[k], truth, grid).max() < 0.08, k
    assert np.asarray(ds["shift"]).shape == (8, 2)
    assert list(ds["axis"].values) == ["x", "y"]
    assert ds["transform"].dims == ("frame", "row", "col")
    assert list(ds["path"].values) == night.paths
    assert "time" in ds.coords
    assert ds.attrs["reference"] == 0 and ds["reference"].values[0]
    assert ds.attrs["model"] == "similarity"
    assert (ds["n_matched"] >= 6).all() and (ds["residual"] <= ds.attrs["max_residual"]).all()
    # reads: 4 bands of 48 of the 1024 rows per frame hold fewer than the 100 stars the fit
    # wants (n_stars), so they grow (reading only the new rows) but stay under half the
    # frame; and the reference once whole
    frame_bytes = 1024 * 256 * 2
    assert counter.value < 8 * frame_bytes * 0.5 + 1.2 * frame_bytes
    assert ((ds["rows_read"] > 192) & (ds["rows_read"] < 512)).all()
    # a translation night fitted as such: the tutorial's shifts
    shifts = find_transforms(frames, model="shift", reference=0)
    np.testing.assert_allclose(np.asarray(shifts["shift"]), night.shifts, atol=0.05)


def test_rotation_flip_mirror_and_scale():
    stars = field()
    truths = [similarity(),
              similarity(0.5, 1.0, False, (20.0, -15.0), CENTRE),
              similarity(179.8, 1.0, False, (6.0, 4.0), CENTRE),  # meridian flip
              similarity(-0.3, 1.0, True, (3.0, -2.0), CENTRE),  # mirrored
              similarity(1.0, 1.01, False, (-30.0, 10.0), CENTRE)]
    frames = cube(truths, stars, pattern=5.0, hot=100)
    ds = find_transforms(frames, reference=0)
    assert ds["valid"].all(), ds["reason"].values
    for k, truth in enumerate(truths):
        assert overlap_error(ds["transform"].values[k], truth) < 0.05, k
    assert "meridian flip" in str(ds["reason"].values[2])
    assert list(ds["flip"].values) == [False, False, False, True, False]
    assert "mirrored" in str(ds["reason"].values[3])
    np.testing.assert_allclose(ds["rotation"].values[[1, 2, 4]], [0.5, 179.8, 1.0], atol=0.01)
    assert ds["scale"].values[4] == pytest.approx(1.01, abs=1e-4)

    # a model that cannot describe a rotation flags those frames, and says why
    with pytest.warns(BigstackWarning, match="flagged invalid"):
        shift_only = find_transforms(frames[[0, 1, 2]], model="shift", reference=0)
    assert list(shift_only["valid"].values) == [True, False, False]
    assert "model 'shift' cannot describe it" in str(shift_only["reason"].values[1])


def test_other_field_and_empty_frame_are_flagged():
    stars = field()
    truths = [similarity(0, 1, False, (k * 3.0, k * 1.0)) for k in range(3)]
    frames = list(cube(truths, stars))
    frames.append(render_frame(SHAPE, field(seed=77), similarity(), 3.0, seed=5))
    frames.append(render_frame(SHAPE, (np.empty(0),) * 3, similarity(), 3.0, seed=6))
    frames = np.stack(frames)
    with pytest.warns(BigstackWarning, match="2 of 5 frames flagged invalid") as caught:
        ds = find_transforms(frames, reference=0)
    assert list(ds["valid"].values) == [True, True, True, False, False]
    assert str(ds["reason"].values[3]).startswith("frame is not of this field")
    assert str(ds["reason"].values[4]) == "0 stars detected (need 6)"
    assert "frame 3" in str(caught[0].message) and "frame 4" in str(caught[0].message)
    for k in range(3):
        assert overlap_error(ds["transform"].values[k], truths[k]) < 0.05
    with pytest.raises(StarNotFoundError, match="frame 3"):
        find_transforms(frames, reference=0, strict=True)


def test_reference_auto_passes_over_the_best_frame_when_it_is_of_another_field(tmp_path):
    """The frame of another field, given the lowest sky, ranks first by quality; its stars
    match none of the others, so the choice passes over it and says so."""
    from astropy.io import fits

    truth = synthetic.make_case("other_field", tmp_path, n_frames=8, shape=(384, 384), seed=1)
    odd = int(np.flatnonzero(truth.other_field)[0])
    with fits.open(truth.paths[odd], mode="update") as hdul:  # 40 ADU darker: ranked first
        hdul[0].data = (hdul[0].data.astype(np.int64) - 40).astype(hdul[0].data.dtype)
    with pytest.warns(BigstackWarning, match="not of this field"):
        ds = find_transforms(open_frames(truth.paths), reference="auto")
    why = ds.attrs["reference_reason"]
    assert f"passed over: frame {odd} matched only 0 of 7" in why, why
    assert not truth.other_field[ds.attrs["reference"]]
    np.testing.assert_array_equal(ds["valid"].values, ~truth.other_field)


def test_a_reference_that_matches_no_other_frame_is_refused(tmp_path, capsys):
    """A reference of another field leaves nothing to stack with it: an error, not "1 of 8".

    Before, every other frame was marked "not of this field" and the CLI went on
    to stack the reference alone, with exit code 0.
    """
    from bigstack.cli import main

    truth = synthetic.make_case("other_field", tmp_path / "night", n_frames=8, shape=(384, 384),
                                seed=1)
    odd = int(np.flatnonzero(truth.other_field)[0])
    frames = open_frames(truth.paths)
    with pytest.raises(StarNotFoundError, match=rf"reference frame {odd} \(.*\): none of the "
                       r"other 7 frames is of its field"):
        find_transforms(frames, reference=odd)
    table = tmp_path / "t.csv"
    pattern = str(tmp_path / "night" / "*.fit")
    assert main(["register", pattern, "-o", str(table), "--reference", str(odd),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"bigstack: error: reference frame {odd} (")
    assert "none of the other 7 frames is of its field" in err[-1]
    assert not table.exists()
    # any true frame as the reference: the odd one alone is left out
    with pytest.warns(BigstackWarning, match="not of this field"):
        ds = find_transforms(frames, reference=(odd + 1) % 8)
    np.testing.assert_array_equal(ds["valid"].values, ~truth.other_field)


def test_a_transform_known_only_roughly_is_not_valid(tmp_path):
    """Faint defocused stars (FWHM 11, 3 sigma) under a bright nebula: a frame keeps 7-9 of
    them, matched with residuals of 0.4-1 px, which is under ``max_residual`` (1.1 px) but
    leaves its transform uncertain by a pixel or more. Before, frames 1-6 of this night were
    valid 0.8-1.5 px from the truth (predicted 0.3-1.1 px); the fit's predicted error now
    rejects them."""
    import dataclasses

    shape = (512, 512)
    options = synthetic.make_case("faint_defocused", tmp_path / "probe", n_frames=2,
                                  shape=shape, seed=2).options
    options.update(n_frames=8, stars=dataclasses.replace(options["stars"],
                                                         nebula=(5000.0, 64.0)))
    truth = synthetic.make_frames(tmp_path / "night", **options)
    with pytest.warns(BigstackWarning, match="transform uncertain"):
        ds = find_transforms(open_frames(truth.paths), reference=0)
    reasons = [str(r) for r in ds["reason"].values]
    uncertain = np.array([r.startswith("transform uncertain") for r in reasons])
    assert uncertain.sum() >= 2
    bound = max(0.1, ds.attrs["max_residual"] / 8)
    assert (ds["error"].values[uncertain] > bound).all()
    for k in np.flatnonzero(ds["valid"].values):
        assert overlap_error(ds["transform"].values[k], truth.transforms[k], shape) < 0.3, k


def test_reference_auto_takes_the_sharpest_frame():
    stars = field(density=500)
    frames = np.stack([render_frame(SHAPE, stars, similarity(0, 1, False, (k, -k)),
                                    2.6 if k == 2 else 3.6, seed=20 + k) for k in range(4)])
    ds = find_transforms(frames)
    assert ds.attrs["reference"] == 2
    assert "FWHM" in ds.attrs["reference_reason"]
    np.testing.assert_allclose(ds["transform"].values[2], similarity(), atol=0)
    # transforms are relative to frame 2: frame k is shifted by (k - 2, 2 - k) from it
    np.testing.assert_allclose(np.asarray(ds["shift"]), [[k - 2, 2 - k] for k in range(4)],
                               atol=0.05)


def test_reference_counts_stars_over_the_rows_searched():
    """A sparse field's frames are read in bands, then whole; their stars are counted
    over the frame's rows. Counted over the rows read (the bands and then the frame
    again: 960 to 1332 for 768 rows on a generator night of 7 stars), a frame whose
    bands had grown once more looked 28% poorer in stars and was passed over for the
    reference, although it had as many stars and a lower background."""
    from bigstack._transforms import choose_reference

    def record(rows, background):
        return {"n_found": 8, "rows": rows, "whole": True, "height": 768,
                "frame_fwhm": 3.0, "background": background}

    ref, why = choose_reference([record(192 + 768, 1000.0), record(564 + 768, 990.0)])
    assert ref == 1
    assert "8 in 768 rows" in why
    # bands only: the stars per band row, as before
    bands = [dict(record(192, 990.0), whole=False, height=48, n_found=4),
             dict(record(384, 980.0), whole=False, height=96, n_found=4)]
    assert choose_reference(bands)[0] == 0


def test_faint_defocused_raw_frames():
    """FWHM 11, faintest stars at 3 sigma, column pattern of 11 ADU, hot pixels, 12 px drift."""
    stars = field(seed=4, density=1200, fwhm=11.0, peak=4 * 30.0)
    truths = [similarity(0, 1, False, (12.0 * k, 4.0 * k)) for k in range(4)]
    frames = cube(truths, stars, fwhm=11.0, pattern=11.0, hot=300, cosmics=10)
    ds = find_transforms(frames, reference=0)
    assert ds["valid"].all(), ds["reason"].values
    for k, truth in enumerate(truths):
        assert overlap_error(ds["transform"].values[k], truth) < 0.3, k
    assert (ds["fwhm"] > 8).all()


def test_compute_false_is_lazy_and_equal():
    stars = field()
    frames = cube([similarity(0, 1, False, (k * 2.0, k)) for k in range(3)], stars)
    reads = []

    def count(block):
        reads.append(1)
        return block

    lazy_frames = da.from_array(frames, chunks=(1, 512, 512)).map_blocks(
        count, dtype=frames.dtype, meta=np.empty((0, 0, 0), frames.dtype))
    reads.clear()
    ds = find_transforms(lazy_frames, reference=0, compute=False)
    assert not reads
    assert isinstance(ds["transform"].data, da.Array)
    with dask.config.set(scheduler="synchronous"):
        computed = ds.compute()
    assert reads
    eager = find_transforms(frames, reference=0)
    np.testing.assert_allclose(computed["transform"].values, eager["transform"].values)
    assert list(computed["valid"].values) == list(eager["valid"].values)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"model": "rigid"}, "model must be one of"),
    ({"reference": 7}, "reference=7 but the cube has 3 frames"),
    ({"reference": "best"}, "reference must be 'auto' or a frame index"),
    ({"min_matches": 2}, "min_matches must be at least 3"),
    ({"max_residual": 0}, "max_residual must be a positive"),
])
def test_bad_arguments(kwargs, match):
    frames = np.zeros((3, 64, 64), np.float32)
    with pytest.raises(ValueError, match=match):
        find_transforms(frames, **kwargs)


def test_affine_model_follows_a_shear():
    stars = field(seed=8)
    shear = np.array([[1.004, 0.003, 5.0], [-0.002, 0.997, -3.0]])
    frames = cube([similarity(), shear], stars)
    ds = find_transforms(frames, model="affine", reference=0)
    assert ds["valid"].all()
    assert overlap_error(ds["transform"].values[1], shear) < 0.05
    # a similarity cannot follow it: about 1 px off at the corners
    with pytest.warns(BigstackWarning, match="residual"):
        sim = find_transforms(frames, model="similarity", reference=0, max_residual=0.2)
    assert not sim["valid"].values[1]


@pytest.mark.parametrize("name", synthetic.CASES)
def test_hard_cases_of_the_generator(name, tmp_path):
    """Every frame of the generator's hard cases is registered, or flagged if it cannot be.

    Valid frames must be within 0.1 px of the truth everywhere they overlap the
    reference (0.3 px for faint defocused frames, with or without a globular cluster);
    only the frame of another field may be invalid.
    """
    truth = synthetic.make_case(name, tmp_path, n_frames=8, shape=(512, 512))
    frames = open_frames(truth.paths)
    if truth.other_field.any():
        with pytest.warns(BigstackWarning, match="not of this field"):
            ds = find_transforms(frames, reference=0)
    else:
        ds = find_transforms(frames, reference=0)
    np.testing.assert_array_equal(ds["valid"].values, ~truth.other_field)
    limit = 0.3 if name in ("faint_defocused", "globular") else 0.1
    for k in np.flatnonzero(ds["valid"].values):
        assert overlap_error(ds["transform"].values[k], truth.transforms[k], (512, 512)) < limit, k
    if name == "meridian_flip":
        flipped = np.abs(truth.rotation) > 90
        assert all("meridian flip" in str(r) for r in ds["reason"].values[flipped])


def test_eight_bit_frames_of_a_dark_sky(tmp_path):
    """JPEG frames whose sky is 8 counts: most of its pixels share one value, so most
    differences of nearby pixels are 0 and their MAD is 0. The noise then comes from the
    RMS of the differences; before, the MAD of the pixels (0 too) left the noise at 0-3e-4
    counts, and frame 1 of this night was invalid, the others up to 0.07 px off."""
    truth = synthetic.make_case("rotation_1", tmp_path, n_frames=4, shape=(512, 512),
                                fmt="jpg", seed=2)
    ds = find_transforms(open_frames(truth.paths), reference=0)
    assert ds["valid"].all()
    assert (ds["noise"].values > 0).all()
    for k in range(1, 4):
        assert overlap_error(ds["transform"].values[k], truth.transforms[k], (512, 512)) < 0.05


# --------------------------------------------------------------------------
# stack consumes the transforms


def test_stack_takes_the_transforms_of_a_translation_night(night):
    import bigstack

    frames = open_frames(night.paths)
    ds = find_transforms(frames, reference=0)
    got = bigstack.stack(frames, ds, subpixel="bilinear").compute()
    as_array = bigstack.stack(frames, ds["transform"].values, subpixel="bilinear").compute()
    np.testing.assert_array_equal(got["stack"].values, as_array["stack"].values)
    # and the truth's shifts give the same picture to within the registration error
    truth = bigstack.stack(frames, night.shifts, subpixel="bilinear").compute()
    inner = (slice(8, -8), slice(8, -8))
    scale = np.nanmax(truth["stack"].values)
    assert np.nanmax(np.abs(got["stack"].values[inner] - truth["stack"].values[inner])) < \
        0.05 * scale


def _relative(truth, ref):
    """The generator's transforms (onto frame 0) made relative to frame ``ref``."""
    inv = np.linalg.inv(np.vstack([truth.transforms[ref], [0, 0, 1]]))
    return [(np.vstack([t, [0, 0, 1]]) @ inv)[:2] for t in truth.transforms]


@pytest.mark.parametrize(("name", "seed"), [
    ("other_field", 2), ("other_field", 9), ("other_field", 0), ("other_field", 1),
    ("other_field", 7),  # fitted from bands alone, 0.10-0.16 px off at the corners
    ("meridian_flip", 2), ("cloud", 2), ("trail_through_star", 2), ("crowded", 2)])
def test_reference_auto_is_a_frame_of_the_night(name, seed, tmp_path):
    """reference="auto" never takes a frame of another field, whatever its quality.

    The true frames must then all be valid and right. (The next test makes the
    other field's frame the best by quality, so that it must be passed over.)
    """
    shape = (384, 384)
    truth = synthetic.make_case(name, tmp_path, n_frames=8, shape=shape, seed=seed)
    frames = open_frames(truth.paths)
    if truth.other_field.any():
        with pytest.warns(BigstackWarning, match="not of this field"):
            ds = find_transforms(frames, reference="auto")
    else:
        ds = find_transforms(frames, reference="auto")
    ref = ds.attrs["reference"]
    assert not truth.other_field[ref]
    why = ds.attrs["reference_reason"]
    assert "other frames sampled" in why
    np.testing.assert_array_equal(ds["valid"].values, ~truth.other_field)
    for k in np.flatnonzero(truth.other_field):
        assert str(ds["reason"].values[k]).startswith("frame is not of this field")
    for k, t in enumerate(_relative(truth, ref)):
        if ds["valid"].values[k]:
            assert overlap_error(ds["transform"].values[k], t, shape) < 0.1, k


def test_sparse_field_measures_the_reference_stars_on_each_frame(monkeypatch):
    """A sparse field (fewer than ``n_stars`` stars in the bands): a frame's bands are
    matched, then the reference's stars are measured where that match puts them, on the
    frame's own pixels; no frame but the reference is searched whole. The transforms are
    as close to the truth as those of the whole frame's detection (the path before)."""
    import bigstack._detect as detect
    import bigstack._transforms as T

    stars = field(seed=5, density=500)
    matrices = [similarity(), similarity(0.4, shift=(7.3, -4.1), centre=CENTRE),
                similarity(-0.6, shift=(-3.2, 9.6), centre=CENTRE),
                similarity(180.2, shift=(2.5, 1.5), centre=CENTRE),
                similarity(0.2, 1.01, shift=(20.4, 11.7), centre=CENTRE)]
    frames = cube(matrices, stars, pattern=5.0, hot=200)
    searched, measured = [], []
    real_detect, real_measure = detect.detect_stars, detect.measure_at

    def spy_detect(bands, **kwargs):
        searched.append(sum(len(rows) for _, rows in bands))
        return real_detect(bands, **kwargs)

    def spy_measure(stamps, *args, **kwargs):
        measured.append(len(stamps))
        return real_measure(stamps, *args, **kwargs)

    monkeypatch.setattr(detect, "detect_stars", spy_detect)
    monkeypatch.setattr(detect, "measure_at", spy_measure)
    with dask.config.set(scheduler="synchronous"):
        ds = find_transforms(frames, reference=0)
    assert ds["valid"].all()
    # whole-frame detections: the reference's only
    assert sum(rows >= SHAPE[0] for rows in searched) == 1
    assert len(measured) == len(matrices) - 1 and min(measured) > 50
    assert (ds["n_matched"].values[1:] > 50).all()
    stamps = [overlap_error(ds["transform"].values[k], matrices[k]) for k in range(1, 5)]
    # the path before: the frames searched whole
    monkeypatch.setattr(T, "_STAMP_FWHM", 0.0)
    searched.clear()
    whole = find_transforms(frames, reference=0)
    assert sum(rows >= SHAPE[0] for rows in searched) == len(matrices)
    before = [overlap_error(whole["transform"].values[k], matrices[k]) for k in range(1, 5)]
    assert max(stamps) < 0.03
    assert max(stamps) < 2 * max(before)
    assert "meridian flip" in str(ds["reason"].values[3])
