"""Matching two star lists without a prior, and fitting the transform between them.

Positions are ``[x, y]`` arrays of shape ``(n, 2)``, brightest star first.
A transform is a 2 x 3 matrix ``M = [A | t]`` that maps a point of the
first list (``src``, the reference) to the second (``dst``, a frame):
``dst = A @ src + t``.

:func:`match_stars` finds the pairs of stars that are the same star in
both lists, under any translation, rotation (180 degrees included), mirror
flip and a scale of a few percent, in two stages:

1. **Votes** (cheap, and works when ``dst`` is a subset of ``src``, e.g.
   stars of a few row bands against the reference frame's whole list): for
   each orientation hypothesis (a hint, the identity, a 180 degree turn and
   the two mirror images) the differences ``dst_j - A src_i`` of all pairs
   of the brightest stars are binned; the true offset collects a vote from
   every star in both lists, chance pairs spread thin.
2. **Triangles** (when the votes find nothing): triangles of each star with
   pairs of its nearest neighbours; their shapes (the two ratios of the
   shorter sides to the longest) do not change under translation,
   rotation, flip or scale. Triangles of similar shape propose
   transforms; each proposal is scored by the number of all stars it
   brings within ``tolerance`` of a star of the other list (RANSAC), and
   the best one wins.

Every candidate is then refined the same way (:func:`refine`): nearest
neighbours within a radius, mutual pairs only, a least-squares fit of the
model, pairs further than 3 sigma clipped, repeated with a radius that
follows the fit's scatter. The caller judges the result by its own
evidence (number of pairs, residual).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MODELS = ("shift", "similarity", "affine")

_MIRROR = np.diag([-1.0, 1.0])
#: orientations tried by the votes: identity, 180 degrees, the mirror images
ORIENTATIONS = (np.eye(2), -np.eye(2), _MIRROR, -_MIRROR)


@dataclass
class Match:
    """The result of :func:`match_stars` (or :func:`refine`).

    ``matrix`` maps ``src`` to ``dst`` (2 x 3); ``src_index[k]`` and
    ``dst_index[k]`` are a matched pair; ``residual`` is the RMS distance
    of the pairs after the fit (px); ``flip`` whether the fit includes a
    mirror image; ``method`` how the candidate was found.
    """

    matrix: np.ndarray
    src_index: np.ndarray
    dst_index: np.ndarray
    residual: float
    flip: bool
    method: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def n_matched(self):
        return int(self.src_index.size)


NO_MATCH = Match(np.full((2, 3), np.nan), np.empty(0, int), np.empty(0, int), np.nan, False,
                 "none")


# --------------------------------------------------------------------------
# the models


def apply(matrix, xy):
    """``A @ xy + t`` for points ``xy`` ``(n, 2)``."""
    return xy @ matrix[:, :2].T + matrix[:, 2]


def fit(src, dst, model="similarity", flip=False, weights=None):
    """Least-squares transform ``dst ~ A @ src + t`` (2 x 3) of ``model``.

    Parameters
    ----------
    src, dst : numpy.ndarray
        ``(n, 2)`` matched positions ``[x, y]``.
    model : {"shift", "similarity", "affine"}
        ``"shift"``: ``A = I``; ``"similarity"``: rotation and uniform
        scale (and a mirror image when ``flip``: ``A = s R(theta) diag(-1,
        1)``); ``"affine"``: any ``A``.
    weights : numpy.ndarray, optional
        Per pair, e.g. inverse variances.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    w = w / w.sum()
    cs = w @ src
    cd = w @ dst
    s = src - cs
    d = dst - cd
    if model == "shift":
        A = np.eye(2)
    elif model == "similarity":
        if flip:
            s = s @ _MIRROR
        # d_x = a s_x - b s_y ; d_y = b s_x + a s_y
        norm = w @ (s * s).sum(axis=1)
        a = (w @ (s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1])) / norm
        b = (w @ (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0])) / norm
        A = np.array([[a, -b], [b, a]])
        if flip:
            A = A @ _MIRROR
    elif model == "affine":
        sw = s * w[:, None]
        A = np.linalg.solve(sw.T @ s, sw.T @ d).T
    else:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    t = cd - A @ cs
    return np.column_stack([A, t])


def describe(matrix):
    """``(rotation_deg, scale, flip)`` of a 2 x 3 transform.

    For ``A = s R(theta)`` (or ``s R(theta) diag(-1, 1)`` when mirrored),
    ``theta`` in degrees in ``(-180, 180]``; for a general affine ``A`` the
    closest such similarity.
    """
    A = np.asarray(matrix, np.float64)[:, :2]
    if not np.isfinite(A).all():
        return np.nan, np.nan, False
    flip = bool(np.linalg.det(A) < 0)
    B = A @ _MIRROR if flip else A
    a = (B[0, 0] + B[1, 1]) / 2
    b = (B[1, 0] - B[0, 1]) / 2
    return math.degrees(math.atan2(b, a)), math.hypot(a, b) * 1.0, flip


def _design(src, model, flip):
    """Rows of the linear least-squares problem of :func:`fit` (x rows, then y rows)."""
    x, y = src[:, 0], src[:, 1]
    if model == "similarity" and flip:
        x = -x
    one, zero = np.ones_like(x), np.zeros_like(x)
    if model == "shift":
        return np.stack([one, zero], 1), np.stack([zero, one], 1)
    if model == "similarity":
        return np.stack([x, -y, one, zero], 1), np.stack([y, x, zero, one], 1)
    return (np.stack([x, y, one, zero, zero, zero], 1),
            np.stack([zero, zero, zero, x, y, one], 1))


def predicted_error(src, dst, matrix, model, flip, weights, points):
    """Largest 1-sigma error (px) of the fitted transform at ``points`` (reference pixels).

    From the covariance of the weighted least-squares fit, scaled by the
    fit's own reduced chi-square (so it holds whatever the weights' scale):
    the position of each point under the fitted transform is uncertain by
    ``sqrt(J C J^T)`` per axis; the returned value is the largest over the
    points of the two axes' quadrature sum.
    """
    src = np.asarray(src, np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, np.float64)
    centre = src.mean(axis=0)
    gx, gy = _design(src - centre, model, flip)
    design = np.vstack([gx, gy])
    ww = np.concatenate([w, w])
    d = apply(matrix, src) - dst
    dof = design.shape[0] - design.shape[1]
    if dof <= 0:
        return np.inf
    chi2 = float(np.sum(w * (d * d).sum(axis=1))) / dof
    try:
        cov = np.linalg.inv(design.T @ (design * ww[:, None])) * chi2
    except np.linalg.LinAlgError:
        return np.inf
    px, py = _design(np.asarray(points, np.float64) - centre, model, flip)
    var = np.einsum("ij,jk,ik->i", px, cov, px) + np.einsum("ij,jk,ik->i", py, cov, py)
    return float(np.sqrt(np.max(var))) if len(var) else np.nan


def n_params(model):
    return {"shift": 2, "similarity": 4, "affine": 6}[model]


# --------------------------------------------------------------------------
# refinement


def _pairs(tree, p, radius):
    """Mutual nearest pairs ``(i, j)`` within ``radius`` of points ``p`` and the tree's."""
    dist, j = tree.query(p, distance_upper_bound=radius)
    ok = np.isfinite(dist)
    i = np.flatnonzero(ok)
    j = j[ok]
    dist = dist[ok]
    if i.size == 0:
        return i, j
    order = np.lexsort((dist, j))  # closest first within each j
    j_sorted = j[order]
    first = np.ones(order.size, bool)
    first[1:] = j_sorted[1:] != j_sorted[:-1]
    keep = order[first]
    return i[keep], j[keep]


def refine(src, dst, matrix, model="similarity", flip=None, *, radius=3.0, tolerance=1.0,
           weights=None, tree=None, iterations=8):
    """Pairs and least-squares transform from a starting ``matrix``.

    Each pass pairs every ``src`` star mapped by the current transform
    with its nearest ``dst`` star within the radius (mutual nearest
    pairs), fits ``model``, drops pairs further than 3 sigma (sigma the
    robust scatter of the distances, at least ``tolerance / 3``) and
    shrinks the radius to ``max(4 sigma, tolerance)``; it stops when the
    pairs no longer change. The radius never grows past its start, so a
    wrong start cannot gather pairs by widening its net.

    Returns
    -------
    Match
    """
    from scipy.spatial import cKDTree

    if flip is None:
        flip = bool(np.linalg.det(matrix[:, :2]) < 0)
    tree = cKDTree(dst) if tree is None else tree
    previous = None
    start = radius
    i = j = np.empty(0, int)
    for _ in range(iterations):
        i, j = _pairs(tree, apply(matrix, src), radius)
        if i.size < n_params(model) // 2 + 1:
            return Match(matrix, i, j, np.nan, flip)
        w = None if weights is None else weights[i]
        matrix = fit(src[i], dst[j], model, flip, w)
        d = np.hypot(*(apply(matrix, src[i]) - dst[j]).T)
        sigma = max(1.4826 * float(np.median(d)) / 1.1774, tolerance / 3.0)  # Rayleigh median
        keep = d <= 3.0 * sigma
        if not keep.all() and keep.sum() >= n_params(model) // 2 + 1:
            i, j = i[keep], j[keep]
            w = None if weights is None else weights[i]
            matrix = fit(src[i], dst[j], model, flip, w)
        radius = min(max(4.0 * sigma, tolerance), start)
        key = (i.tobytes(), j.tobytes())
        if key == previous:
            break
        previous = key
    d = np.hypot(*(apply(matrix, src[i]) - dst[j]).T)
    return Match(matrix, i, j, float(np.sqrt(np.mean(d * d))), flip)


# --------------------------------------------------------------------------
# votes


def vote(src, dst, A, bin_size=4.0):
    """Offset ``t`` with the most pairs ``dst_j - A @ src_i`` in one bin, and its votes.

    Two grids, the second offset by half a bin, so that a cluster on a
    bin edge is not split (the second only when the first has no clear
    peak). Returns ``(t, votes)``.
    """
    p = src @ A.T
    diff = (dst[None, :, :] - p[:, None, :]).reshape(-1, 2)
    best = (None, 0)
    enough = max(6, min(len(src), len(dst)) // 4)
    for offset in (0.0, 0.5):
        if best[1] >= enough:
            break  # a clear peak on the first grid
        keys = np.floor(diff / bin_size + offset).astype(np.int64)
        code = keys[:, 0] * 1_000_003 + keys[:, 1]
        values, inverse, counts = np.unique(code, return_inverse=True, return_counts=True)
        k = int(np.argmax(counts))
        if counts[k] > best[1]:
            best = (diff[inverse.ravel() == k].mean(axis=0), int(counts[k]))
    return best


# --------------------------------------------------------------------------
# triangles


def _triangles(xy, k):
    """Triangles of each star with pairs of its ``k`` nearest neighbours.

    Returns ``(vertices (m, 3), invariants (m, 2), orientation (m,))``:
    vertices ordered as the corners opposite the longest, middle and
    shortest side; invariants ``(L2 / L1, L3 / L1)``; orientation the sign
    of the corners' turn (it flips in a mirror image). Triangles too thin,
    or with two sides nearly equal (their corner order is ambiguous), are
    left out.
    """
    from scipy.spatial import cKDTree

    n = len(xy)
    if n < 3:
        return np.empty((0, 3), int), np.empty((0, 2)), np.empty(0)
    k = min(k, n - 1)
    _, nn = cKDTree(xy).query(xy, k + 1)
    a_idx, b_idx = np.triu_indices(k, 1)
    tri = np.concatenate([np.column_stack([np.full(a_idx.size, i), nn[i, 1 + a_idx],
                                           nn[i, 1 + b_idx]]) for i in range(n)])
    tri = np.unique(np.sort(tri, axis=1), axis=0)
    p = xy[tri]  # (m, 3, 2)
    # side opposite corner c
    side = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T), np.hypot(*(p[:, 2] - p[:, 0]).T),
                     np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)
    order = np.argsort(-side, axis=1)
    side = np.take_along_axis(side, order, axis=1)
    tri = np.take_along_axis(tri, order, axis=1)
    p = xy[tri]
    with np.errstate(invalid="ignore", divide="ignore"):
        inv = np.column_stack([side[:, 1] / side[:, 0], side[:, 2] / side[:, 0]])
        ok = ((side[:, 0] / side[:, 1] > 1.03) & (side[:, 1] / side[:, 2] > 1.03)
              & (inv[:, 1] > 0.1) & (side[:, 2] > 3.0))
    u = p[:, 1] - p[:, 0]
    v = p[:, 2] - p[:, 0]
    orient = np.sign(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])
    return tri[ok], inv[ok], orient[ok]


def triangle_candidates(src, dst, *, k_src=6, k_dst=5, eps=0.02, limit=400):
    """Proposed ``(src corners, dst corners, flip)`` from triangles of like shape, best first."""
    from scipy.spatial import cKDTree

    ts, inv_s, or_s = _triangles(src, k_src)
    td, inv_d, or_d = _triangles(dst, k_dst)
    if len(ts) == 0 or len(td) == 0:
        return []
    dist, j = cKDTree(inv_s).query(inv_d, k=min(4, len(ts)), distance_upper_bound=eps)
    dist = np.atleast_2d(dist.reshape(len(td), -1))
    j = np.atleast_2d(j.reshape(len(td), -1))
    rows, cols = np.nonzero(np.isfinite(dist))
    order = np.argsort(dist[rows, cols], kind="stable")[:limit]
    out = []
    for r, c in zip(rows[order], cols[order], strict=True):
        s = j[r, c]
        out.append((ts[s], td[r], bool(or_s[s] != or_d[r])))
    return out


# --------------------------------------------------------------------------
# the whole search


def match_stars(src, dst, *, hints=(), tolerance=1.0, min_matches=6, max_scale=0.1,
                n_vote=(600, 40), triangles=True, weights=None):
    """Find the similarity (with flips) that maps ``src`` stars onto ``dst`` stars.

    Parameters
    ----------
    src, dst : numpy.ndarray
        ``(n, 2)`` positions ``[x, y]``, brightest first. ``dst`` may hold
        only part of ``src``'s field.
    hints : sequence of 2 x 2 arrays
        Orientations (rotation, scale, mirror) to try first, e.g. a
        neighbouring frame's; the translation is found by votes.
    tolerance : float
        Distance (px) within which two stars are the same star once fitted.
    min_matches : int
        The search stops early when a candidate pairs at least this many
        stars and a quarter of ``dst``.
    max_scale : float
        Candidates whose scale differs from 1 by more are not considered.
    n_vote : (int, int)
        The brightest ``src`` and ``dst`` stars that vote.
    triangles : bool
        Try triangles when the votes find no good candidate.
    weights : numpy.ndarray, optional
        Per ``src`` star weights for the fits.

    Returns
    -------
    Match
        The candidate that pairs the most stars (``NO_MATCH`` if none
        pairs three), fitted as a similarity.
    """
    from scipy.spatial import cKDTree

    src = np.asarray(src, np.float64).reshape(-1, 2)
    dst = np.asarray(dst, np.float64).reshape(-1, 2)
    if len(src) < 3 or len(dst) < 3:
        return NO_MATCH
    tree = cKDTree(dst)
    enough = max(min_matches, len(dst) // 4)
    best = NO_MATCH
    tried = []
    radius = max(3.0 * tolerance, 3.0)
    for A in list(hints) + list(ORIENTATIONS):
        A = np.asarray(A, np.float64)
        if any(np.allclose(A, B, atol=1e-3) for B in tried):
            continue
        tried.append(A)
        t, votes = vote(src[:n_vote[0]], dst[:n_vote[1]], A, bin_size=max(2.0, 2 * tolerance))
        if votes < 3:
            continue
        m = refine(src, dst, np.column_stack([A, t]), "similarity", radius=radius,
                   tolerance=tolerance, tree=tree, weights=weights)
        m.method = "votes"
        best = _better(best, m, max_scale)
        if best.n_matched >= enough:
            return best
    if triangles:
        for cs, cd, flip in triangle_candidates(src[:60], dst[:60]):
            matrix = fit(src[cs], dst[cd], "similarity", flip)
            _, scale, _ = describe(matrix)
            if not abs(scale - 1) <= max_scale:
                continue
            i, _ = _pairs(tree, apply(matrix, src), radius)
            if i.size < max(best.n_matched, 3):
                continue
            m = refine(src, dst, matrix, "similarity", flip, radius=radius,
                       tolerance=tolerance, tree=tree, weights=weights)
            m.method = "triangles"
            best = _better(best, m, max_scale)
            if best.n_matched >= enough:
                break
    return best


def _better(best, m, max_scale):
    if m.n_matched < 3 or not np.isfinite(m.residual):
        return best
    _, scale, _ = describe(m.matrix)
    if not abs(scale - 1) <= max_scale:
        return best
    if m.n_matched > best.n_matched or (m.n_matched == best.n_matched
                                        and m.residual < best.residual):
        return m
    return best
