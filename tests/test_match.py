"""Matching star lists without a prior (bigstack._match), against known transforms."""

from __future__ import annotations

import numpy as np
import pytest

from bigstack._match import apply, describe, fit, match_stars
from tests.helpers import similarity, transform_error

SIZE = 2048


def scene(seed, rotation, scale, flip, shift, *, n_sky=4000, keep=0.7, outliers=0.3,
          noise=0.05, n_src=300, n_dst=150):
    """Reference and frame star lists of one sky, brightest first, and the true transform.

    The frame sees the sky through ``similarity(rotation, scale, flip, shift)``
    about the frame's centre; it misses ``1 - keep`` of the stars and gets
    ``outliers`` (a fraction of its list) of false stars.
    """
    rng = np.random.default_rng(seed)
    sky = rng.uniform(-1.5 * SIZE, 2.5 * SIZE, (n_sky, 2))
    flux = 1 / rng.uniform(1e-3, 1, n_sky)
    truth = similarity(rotation, scale, flip, shift, (SIZE / 2, SIZE / 2))
    inside = ((sky >= 0) & (sky < SIZE)).all(axis=1)
    src = sky[inside][np.argsort(-flux[inside])][:n_src]
    seen = apply(truth, sky) + rng.normal(0, noise, sky.shape)
    ok = ((seen >= 0) & (seen < SIZE)).all(axis=1) & (rng.uniform(size=n_sky) < keep)
    dst, dflux = seen[ok], flux[ok] * rng.uniform(0.8, 1.2, ok.sum())
    extra = int(outliers * len(dst))
    dst = np.vstack([dst, rng.uniform(0, SIZE, (extra, 2))])
    dflux = np.concatenate([dflux, 1 / rng.uniform(1e-3, 1, extra)])
    dst = dst[np.argsort(-dflux)][:n_dst]
    return src, dst, truth


CASES = [  # rotation (deg), scale, flip, shift [x, y]
    (0.0, 1.0, False, (1100.0, -300.0)),  # more than half the frame
    (180.0, 1.0, False, (40.0, -25.0)),  # meridian flip
    (179.7, 1.002, False, (-700.0, 650.0)),
    (0.3, 1.0, True, (15.0, 8.0)),  # mirrored
    (37.0, 0.95, False, (200.0, 100.0)),
    (-123.0, 1.05, True, (-300.0, 500.0)),
    (90.0, 1.0, False, (0.0, 0.0)),
    (1.0, 0.97, False, (-1150.0, 200.0)),
]


@pytest.mark.parametrize(("rotation", "scale", "flip", "shift"), CASES)
def test_recovers_the_transform(rotation, scale, flip, shift):
    src, dst, truth = scene(int(abs(rotation) * 10 + scale * 100), rotation, scale, flip, shift)
    found = match_stars(src, dst)
    assert found.n_matched >= 30
    # the pairs are true pairs: the truth maps each src star onto its dst star
    np.testing.assert_array_less(transform_error(truth, truth, src[found.src_index]), 1e-9)
    assert np.abs(apply(truth, src[found.src_index]) - dst[found.dst_index]).max() < 0.5
    # the fitted transform equals the truth where the stars are (0.05 px noise per star)
    assert transform_error(found.matrix, truth, src[found.src_index]).max() < 0.03
    rot, sc, fl = describe(found.matrix)
    assert fl == flip
    assert (rot - rotation + 180) % 360 - 180 == pytest.approx(0, abs=0.01)
    assert sc == pytest.approx(scale, abs=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_random_transforms(seed):
    """Random rotation (any angle), flip, scale 0.95-1.05 and a large shift."""
    rng = np.random.default_rng(100 + seed)
    rotation = rng.uniform(-180, 180)
    scale = rng.uniform(0.95, 1.05)
    flip = bool(rng.integers(2))
    shift = rng.uniform(-1, 1, 2) * [1100, 400]
    src, dst, truth = scene(seed, rotation, scale, flip, shift)
    found = match_stars(src, dst)
    assert found.n_matched >= 20
    inner = np.array([[SIZE / 2, SIZE / 2]])
    assert transform_error(found.matrix, truth, inner).max() < 0.05


def test_few_stars_without_outliers():
    """Seven stars, turned by 180 degrees: enough for a match (no 'triangles exhausted')."""
    rng = np.random.default_rng(3)
    src = rng.uniform(0, 500, (7, 2))
    truth = similarity(180.0, 1.0, False, (12.0, -7.0), (250, 250))
    dst = apply(truth, src)[::-1]
    found = match_stars(src, dst, min_matches=5)
    assert found.n_matched == 7
    assert transform_error(found.matrix, truth, src).max() < 1e-6


def test_unrelated_lists_do_not_match():
    rng = np.random.default_rng(4)
    src = rng.uniform(0, SIZE, (300, 2))
    dst = rng.uniform(0, SIZE, (100, 2))
    found = match_stars(src, dst)
    assert found.n_matched < 6


@pytest.mark.parametrize(("model", "flip"), [("shift", False), ("similarity", False),
                                           ("similarity", True), ("affine", False),
                                           ("affine", True)])
def test_fit_models_exactly(model, flip):
    rng = np.random.default_rng(5)
    src = rng.uniform(0, 1000, (20, 2))
    if model == "shift":
        truth = np.array([[1.0, 0.0, 13.25], [0.0, 1.0, -7.5]])
    elif model == "similarity":
        truth = similarity(33.0, 1.02, flip, (5.0, 6.0), (500, 500))
    else:
        truth = np.array([[1.01, 0.02, 3.0], [-0.03, 0.98, -4.0]])
        if flip:
            truth[:, 0] *= -1
    dst = apply(truth, src)
    np.testing.assert_allclose(fit(src, dst, model, flip), truth, atol=1e-9)


def test_describe():
    rot, scale, flip = describe(similarity(-179.5, 0.98, True, (3, 4), (10, 20)))
    assert (rot, scale, flip) == (pytest.approx(-179.5), pytest.approx(0.98), True)
    assert describe(np.full((2, 3), np.nan))[2] is False
