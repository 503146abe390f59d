"""find_transforms: many-star registration with rotation, scale and flips.

Every frame is mapped to a reference frame by a 2 x 3 transform found from
many stars, with no prior on the shift, the rotation or a flip, and each
frame's transform is judged valid on that frame's own evidence only.

Convention
----------
A transform ``M = [A | t]`` maps an output (reference-grid) pixel ``[x,
y]`` to the frame's pixel: ``[x_i, y_i] = A @ [x, y] + t``. For a pure
translation ``A = I`` and ``t = star_i - star_reference``, the tutorial's
shift, so transforms and :func:`bigstack.find_shifts`' shifts agree.
Images are indexed ``[y, x]``.

Stages
------
1. **Stars, one mapped task per frame.** Each task reads ``bands`` row
   bands of ``rows`` rows (default 4 x 48), spread evenly and
   symmetrically over the frame (a 180 degree turn maps them onto
   themselves), each with one ``source.raw`` call, and runs
   :func:`bigstack._detect.detect_stars` on them (background map, fixed
   pattern removal, sharp-peak removal by shape, matched filter at a FWHM
   chosen per frame, round detections only, windowed centroids at native
   resolution; every pass over the rows is compiled, see
   :mod:`bigstack._kernels`). It returns the ``n_stars`` brightest stars
   and the frame's background, noise and FWHM: a few kB. While fewer than
   ``n_stars`` stars are found, the bands grow (by the shortfall, reading
   only the new rows): the fit's accuracy follows the number of stars
   (a sparse field's 4 x 48 rows held 11-40 stars and gave transforms
   0.08 px off at the corners, 100 stars under 0.02). Where they would
   cover half the frame (a sparse field), ``min_stars`` stars are enough
   for now: the matching stage then measures the reference's stars on
   the frame (stage 3). Frames of wide stars (FWHM over
   :data:`_STAMP_FWHM`), or with fewer stars, are read whole instead.
2. **Reference, one task.** ``reference="auto"`` ranks the frames by
   quality: the most stars per row read, then the smallest FWHM (within
   10%), then the lowest background. Quality alone can pick a frame of
   another field (as rich in stars and as sharp), so the best candidate
   is read whole, its brightest stars listed (enough to cover every star
   a frame's bands can hold), and matched to the band stars of up to 12
   other frames spread over the night (no reads). It is taken when it
   matches at least half of them; otherwise the next candidate is tried,
   up to 3, and the one that matches the most is taken. The choice and
   why (with the frames passed over) are in ``attrs``. A given reference
   is read whole the same way, without the check.
3. **Matching, a task per batch of frames (no pixel reads).** Each
   frame's stars are matched to the reference's by
   :func:`bigstack._match.match_stars`: votes of pair differences under a
   few orientation hypotheses (the previous frame's, identity, 180
   degrees, mirrors: translation nights and meridian flips cost no more),
   then triangles of like shape with RANSAC. A frame whose match is not
   convincing (fewer than ``min_matches`` pairs or ``min_fraction`` of its
   stars on the reference) is read whole (the only second read) and
   matched again, triangles then having the whole field on both sides
   (this is what finds a scale change of a few percent, which spreads the
   votes); so is a frame whose transform from the bands has a predicted
   error over ``max_error`` (0.03 px: few stars in the overlap), to fit
   it on all its stars. The predicted error is a 1-sigma figure over the
   overlap; at the frame's corners a fit from bands alone was measured 3-4
   times worse (0.10-0.16 px at a predicted 0.034-0.045 in a 384 px
   frame), hence the low bound. The search fits a similarity (with mirror images);
   then ``model`` is fitted by least squares to the matched pairs.
   A sparse field's frame (stage 1) whose bands match convincingly is not
   searched whole: the match puts the reference's brightest stars on the
   frame, and each is measured on a stamp of the frame's own pixels
   (:func:`_refine`: one read of the rows they span, a local background
   plane, sharp pixels cleaned, a windowed centroid, signal to noise at
   least ``threshold``). The stars found are the frame's stars; ``model``
   is fitted to them and judged as any match. This costs about a tenth of
   the whole frame's detection. When the bands do not match convincingly,
   or the stars measured do not, the frame is searched whole.

Validity
--------
A frame is valid when at least ``min_matches`` stars (default 6) match,
they are at least ``min_fraction`` (default half) of the pairs possible
(the frame's listed stars that the transform puts on the reference frame,
or the reference's listed stars that it puts on the frame, whichever are
fewer: a frame read whole lists more stars than the reference), and the RMS
distance of the matched pairs after the fit of ``model`` (``residual``,
weighted by the stars' signal to noise) is at most ``max_residual``
(default: 0.5 px or a tenth of the frames' median FWHM, whichever is
larger), and the fit's predicted 1-sigma error over the overlap
(``error``) is at most 0.1 px or an eighth of ``max_residual``, whichever
is larger. A few faint stars that scatter by half of ``max_residual`` or
more leave the transform itself uncertain by up to a pixel (faint
defocused stars under a bright nebula: 7-16 pairs, residuals 0.4-1.1 px,
true errors 0.4-1.3 px, predicted 0.25-1.3 px); the hard cases of the
generator predict at most 0.03 px (0.084 px for FWHM 11 stars at 3
sigma), and the true error at the corners has been up to 3 times the
predicted one. A
right transform pairs 80-95% of those stars; the best of the
many transforms a search tries by chance on another field pairs 10-20%
of them at residuals under 0.5 px, so the share is what rejects it. A
transform ``model`` cannot describe (a rotated frame with
``model="shift"``) fails the residual test. Nothing else: no comparison
with other frames' drift.

Reasons say what was found: ``"12 stars detected, 3 matched (need 6)"``,
``"residual 2.4 px (limit 0.5)"``, ``"transform uncertain: predicted error
0.84 px from 7 stars (limit 0.13)"``, ``"frame is not of this field: ..."``
(no transform pairs more than 2 of its stars, or it pairs fewer than
``min_fraction`` of the stars it puts on the reference); a valid frame
turned by more than 90 degrees notes ``"rotated 179.8° (meridian
flip)"`` and a mirrored one ``"mirrored"``. ``strict=True`` raises :class:`StarNotFoundError` naming
the invalid frames; otherwise a :class:`BigstackWarning` lists them.

Reads
-----
A frame costs ``bands * rows`` rows (9% of a 2048-row frame with the
defaults; bands of wide stars are made taller, to 12 FWHM), the
reference frame once more in full, a sparse field's frame the rows its
stamps span (read, not searched), and a frame that needs it (too few
stars in the bands, no convincing match) once more in full; a predicted
error over ``max_error`` grows the bands by the square of the shortfall
(whole when they would cover half the frame). Measured on synthetic
2048 x 2048 16-bit FITS frames, warm cache, 2 shared cores: in a rich
field (``benchmarks/registration_speed.py 40 2048``) 192 rows a frame are
read and registration takes 2.3 times reading and adding every frame; in
a sparse field of 100 rotated frames (``/tmp/bsb400-rotated``: about 35
stars in bands of 2 x 48 rows, 220 on a frame) 24 ms of CPU a frame in
one thread, bands and stamps, against 45 ms when each frame was searched
whole. Of a whole frame's time, the background cells take about 16 ms, the matched
filter's smoothing 10, the row and column pattern 9, the conversion of
the stored rows 8, the sharp-peak pass 6 and the binning 5.

Tasks
-----
One task per frame (stars), one that picks the reference and lists its
stars, one per batch of 32 frames (matching) and
one that builds the table; the graph is written out as a dict (2000
frames: 0.6 s to build).
"""

from __future__ import annotations

import math
import operator

import numpy as np

from ._register import StarNotFoundError, _frame_name, report_invalid

MODELS = ("shift", "similarity", "affine")
_BATCH = 32  # frames matched per task
_CHUNK = 1024  # rows per read when a frame is read whole
_MAX_REF_STARS = 3000
#: stars wider than this (px) are not measured on stamps (:func:`_refine`) but by the whole
#: frame's detection: a stamp of a wide star spans the gradients, neighbours and sensor
#: pattern the detection removes (the generator's globular cluster, FWHM 11 px: stamps
#: 0.05-0.30 px off the truth and 2 of 24 frames uncertain, the detection 0.05-0.23 px)
_STAMP_FWHM = 6.0
_CANDIDATES = 3  # frames tried as the automatic reference, at most
_SAMPLE = 12  # frames each candidate reference is matched to


# --------------------------------------------------------------------------
# reading


def band_rows(ny, rows, bands):
    """``[(r0, r1), ...]``: ``bands`` bands of ``rows`` rows, centred in equal slices.

    Band ``k`` is centred on ``(k + 0.5) * ny / bands``, so the set is
    symmetric about the frame's middle row. One band of all rows when they
    do not fit.
    """
    rows, bands = int(rows), int(bands)
    if rows < 1 or bands < 1:
        raise ValueError(f"rows and bands must be >= 1, got rows={rows}, bands={bands}")
    if rows * bands >= ny:
        return [(0, int(ny))]
    out = []
    for k in range(bands):
        r0 = int(round((k + 0.5) * ny / bands - rows / 2))
        r0 = min(max(r0, 0), ny - rows)
        out.append((r0, r0 + rows))
    return out


def _read(source, i, r0, r1, buffers):
    """Rows ``[r0, r1)`` of frame ``i`` as float32 values (BSCALE/BZERO applied, BLANK NaN)."""
    from ._kernels import calibrate_rows

    rows, scale, zero, blank, _ = source.raw(i, r0, r1, buffers)
    out = np.empty(np.shape(rows), np.float32)
    return calibrate_rows(rows, out, scale=scale, zero=zero, blank=blank)


def _whole(ny, fwhm_margin=48):
    """Overlapping chunks that cover a frame, for reading it whole."""
    out = []
    r0 = 0
    while r0 < ny:
        r1 = min(r0 + _CHUNK, ny)
        out.append((max(r0 - fwhm_margin, 0), min(r1 + fwhm_margin, ny)))
        r0 = r1
    return out


def _read_plan(source, i, plan, buffers, have=()):
    """Read the bands of ``plan``, reusing rows already read (``have``: ``(r0, values)``)."""
    out = []
    for r0, r1 in plan:
        old = next(((a, v) for a, v in have if a >= r0 and a + len(v) <= r1), None)
        if old is None:
            out.append((r0, _read(source, i, r0, r1, buffers)))
            continue
        a, v = old
        parts = [_read(source, i, r0, a, buffers)] if a > r0 else []
        parts.append(v)
        if a + len(v) < r1:
            parts.append(_read(source, i, a + len(v), r1, buffers))
        out.append((r0, np.concatenate(parts) if len(parts) > 1 else v))
    return out


def _stars(source, i, plan, opts, n_stars, whole=False, have=(), fwhm=None):
    """Detect on the bands of ``plan``; bands too short for the stars found are made taller.

    A star within 1.5 FWHM of a band's cut is not used, so a band of fewer
    than 8 FWHM of rows keeps little; for such wide stars the bands are
    extended to 12 FWHM, reading only the new rows, and detection is run
    again on them. Rows in ``have`` (bands read before, ``(r0, values)``)
    are not read again. ``fwhm``: the matched filter's FWHM found before
    for this frame (its detection then skips the ladder), unless the user
    gave one. Returns ``(stars, bands read)``.
    """
    from ._detect import detect_stars

    buffers = {}
    bands = _read_plan(source, i, plan, buffers, have)
    given = opts["fwhm"] if opts["fwhm"] is not None else fwhm
    found = detect_stars(bands, fwhm=given, n_stars=n_stars, threshold=opts["threshold"])
    rows = sum(r1 - r0 for r0, r1 in plan)
    f = found["frame_fwhm"] if np.isfinite(found["frame_fwhm"]) else found["filter_fwhm"]
    height = plan[0][1] - plan[0][0]
    ny = opts["ny"]
    if not whole and np.isfinite(f) and height < 8 * f and len(plan) > 1:
        taller = band_rows(ny, int(math.ceil(12 * f)), len(plan))
        if taller != plan:
            bands = _read_plan(source, i, taller, buffers, bands)
            rows = sum(r1 - r0 for r0, r1 in taller)
            plan = taller
            found = detect_stars(bands, fwhm=found["filter_fwhm"], n_stars=n_stars,
                                 threshold=opts["threshold"])
    found["rows"] = rows
    found["whole"] = whole or plan == [(0, ny)]
    found["height"] = ny if found["whole"] else plan[0][1] - plan[0][0]
    return found, bands


def _record(found, whole):
    out = {k: np.asarray(found[k], np.float64) for k in ("x", "y", "flux", "snr")}
    out.update({k: float(found[k]) for k in ("background", "noise", "frame_fwhm",
                                             "filter_fwhm")})
    out.update(n_found=int(found["n_found"]), rows=int(found["rows"]), whole=bool(whole),
               height=int(found["height"]), sparse=bool(found.get("sparse", False)))
    return out


def _frame_task(source, i, shape, opts):
    """Task body: the stars of frame ``i`` from its bands, taller bands if too few.

    While fewer than ``n_stars`` stars are found (the fit's accuracy
    follows their number: with the 30-40 stars of four short bands of a
    sparse field, the transform was measured 0.08 px off at the corners,
    with 100 under 0.02), the bands grow, at least doubled and by the
    shortfall (a field's stars are spread evenly enough that their count
    follows the rows), reading only the new rows. Once the bands would
    cover half the frame, the whole frame is read instead.
    """
    ny = shape[0]
    plan = band_rows(ny, opts["rows"], opts["bands"])
    found, bands = _stars(source, i, plan, opts, opts["n_stars"])
    want = max(opts["n_stars"], opts["min_stars"])
    while found["n_found"] < want and not found["whole"]:
        height = sum(len(v) for _, v in bands) // len(bands)
        grow = max(2.0, 1.2 * want / max(found["n_found"], 1))
        height = int(math.ceil(height * grow))
        if height * len(bands) * 2 >= ny and want > opts["min_stars"] and _compact(found):
            # a sparse field: ``min_stars`` will do, matching then measures the reference's
            # stars on the frame (_refine)
            want = opts["min_stars"]
            if found["n_found"] >= want:
                break
            grow = max(2.0, 1.2 * want / max(found["n_found"], 1))
            height = int(math.ceil(sum(len(v) for _, v in bands) // len(bands) * grow))
        if height * len(bands) * 2 >= ny:
            rows = found["rows"]
            found, _ = _stars(source, i, _whole(ny), opts, opts["n_stars"], whole=True,
                              fwhm=_known_fwhm(found))
            found["rows"] += rows
            break
        plan = band_rows(ny, height, len(bands))
        found, bands = _stars(source, i, plan, opts, opts["n_stars"], have=bands,
                              fwhm=_known_fwhm(found))
    found["sparse"] = not found["whole"] and found["n_found"] < opts["n_stars"]
    return _record(found, found["whole"])


def _compact(found):
    """Whether a frame's stars are narrow enough to be measured on stamps (:func:`_refine`)."""
    f = found["frame_fwhm"] if np.isfinite(found["frame_fwhm"]) else found["filter_fwhm"]
    return bool(f <= _STAMP_FWHM)


def _reference_stars(source, ref, record, opts, shape):
    """Frame ``ref``'s stars over the whole frame (read once more unless it was)."""
    if record["whole"]:
        return record
    ny = shape[0]
    depth = opts["n_stars"] * ny / max(record["rows"], 1) * 1.5
    n_ref = int(min(max(depth, 4 * opts["n_stars"]), _MAX_REF_STARS))
    return _record(_stars(source, ref, _whole(ny), opts, n_ref, whole=True,
                          fwhm=_known_fwhm(record))[0], True)


# --------------------------------------------------------------------------
# the reference


def choose_reference(records, exclude=()):
    """``(index, reason)``: most stars per row searched, then smallest FWHM, lowest background.

    Frames in ``exclude`` are not considered (``(None, "")`` when none is left).
    This is the frames' quality only; :func:`_pick_task` then checks that the
    choice's stars are those of the other frames. A frame read whole after its
    bands (a sparse field) has its stars counted over the frame's rows, not over
    the rows read (the bands and then the frame again).
    """
    n = len(records)
    keep = np.ones(n, bool)
    keep[list(exclude)] = False
    if not keep.any():
        return None, ""
    searched = [_searched(r) for r in records]
    density = np.array([r["n_found"] / max(h, 1) for r, h in zip(records, searched, strict=True)])
    density = np.where(keep, density, -1.0)
    fwhm = np.array([r["frame_fwhm"] for r in records])
    background = np.array([r["background"] for r in records])
    fwhm = np.where(np.isfinite(fwhm), fwhm, np.inf)
    background = np.where(np.isfinite(background), background, np.inf)
    top = density.max()
    pool = np.flatnonzero(density >= 0.8 * top) if top > 0 else np.flatnonzero(keep)
    best_fwhm = fwhm[pool].min()
    if np.isfinite(best_fwhm):
        pool = pool[fwhm[pool] <= 1.1 * best_fwhm]
    ref = int(pool[np.argmin(background[pool])])
    r = records[ref]
    reason = (f"most stars ({r['n_found']} in {searched[ref]} rows), smallest FWHM "
              f"({r['frame_fwhm']:.2f} px) and lowest background ({r['background']:.1f}) among "
              f"the {pool.size} frame(s) within 20% of the most stars and 10% of the best FWHM")
    return ref, reason


def _searched(record):
    """The rows a record's stars were found in: the frame's when read whole."""
    return record["height"] if record["whole"] else record["rows"]


def _sample(n, exclude, usable, k):
    """Up to ``k`` frames spread evenly over ``0..n-1``, not ``exclude``, ``usable`` only."""
    pool = np.flatnonzero(usable)
    pool = pool[pool != exclude]
    if len(pool) <= k:
        return [int(i) for i in pool]
    return [int(pool[j]) for j in np.round(np.linspace(0, len(pool) - 1, k)).astype(int)]


def _score(ref_stars, records, sample, opts):
    """How many frames of ``sample`` the candidate's stars convincingly match (bands only)."""
    hits = 0
    for i in sample:
        solved = _solve(ref_stars, records[i], "similarity", opts, [])
        hits += bool(_convincing(solved, opts))
    return hits


def _pick_task(source, records, reference, opts, shape):
    """Task body: ``((reference, why, options), the reference's stars)``.

    ``reference="auto"``: the best frames by quality (:func:`choose_reference`)
    are candidates, best first, at most ``_CANDIDATES``. A candidate's stars
    (over the whole frame) are matched to the band stars of up to
    ``_SAMPLE`` other frames spread over the night; the first that matches
    at least half of them is taken (a frame of another field cannot: its
    field is not the night's). If none does, the one that matches the most
    is. Each candidate tried costs one whole read, the first one the read
    the reference needs anyway; the matching reads nothing.
    """
    opts = _finish(opts, records)
    if reference != "auto":
        ref = int(reference)
        return (ref, "given", opts), _reference_stars(source, ref, records[ref], opts, shape)
    n = len(records)
    usable = np.array([r["n_found"] >= opts["min_matches"] for r in records])
    tried = []  # (index, quality reason, stars, hits, sample size)
    for _ in range(_CANDIDATES):
        ref, why = choose_reference(records, [t[0] for t in tried])
        if ref is None:
            break
        stars = _reference_stars(source, ref, records[ref], opts, shape)
        sample = _sample(n, ref, usable, _SAMPLE)
        hits = _score(stars, records, sample, opts) if sample else 0
        tried.append((ref, why, stars, hits, len(sample)))
        if not sample or 2 * hits >= len(sample):
            break
    best = max(range(len(tried)), key=lambda k: (tried[k][3], -k))
    ref, why, stars, hits, m = tried[best]
    if m:
        why += f"; its stars match {hits} of the {m} other frames sampled"
    others = [f"frame {t[0]} matched only {t[3]} of {t[4]}" for k, t in enumerate(tried)
              if k != best]
    if others:
        why += " (passed over: " + ", ".join(others) + ")"
    return (ref, why, opts), stars


# --------------------------------------------------------------------------
# matching


def _solve(ref_stars, stars, model, opts, hints):
    """Match a frame's stars to the reference's; the pairs and the fitted model."""
    from ._match import match_stars, refine

    src = np.column_stack([ref_stars["x"], ref_stars["y"]])
    dst = np.column_stack([stars["x"], stars["y"]])
    found = match_stars(src, dst, hints=hints, tolerance=opts["tolerance"],
                        min_matches=opts["min_matches"], max_scale=opts["max_scale"])
    if found.n_matched and model == "affine":
        m = refine(src, dst, found.matrix, "affine", radius=max(3 * opts["tolerance"], 3.0),
                   tolerance=opts["tolerance"])
        if m.n_matched >= found.n_matched:
            found = m
    return _fit_found(ref_stars, stars, found, model, opts)


def _fit_found(ref_stars, stars, found, model, opts):
    """The fit of ``model`` to the pairs of ``found`` (a :class:`bigstack._match.Match`)."""
    from ._match import describe, predicted_error

    src = np.column_stack([ref_stars["x"], ref_stars["y"]])
    dst = np.column_stack([stars["x"], stars["y"]])
    out = {"n_matched": found.n_matched, "matrix": np.full((2, 3), np.nan),
           "residual": np.nan, "rotation": np.nan, "scale": np.nan, "flip": False,
           "search": found, "expected": len(dst), "error": np.nan}
    if found.n_matched < 3:
        return out
    # the pairs possible: the frame's stars that land on the reference, and no more than the
    # reference's listed stars that land on the frame (the two lists may go to other depths)
    out["expected"] = min(_on_reference(found.matrix, dst, opts["shape"]),
                          _on_frame(found.matrix, src, opts["shape"]))
    i, j = found.src_index, found.dst_index
    rotation, scale, flip = describe(found.matrix)
    w = _weights(ref_stars, i, stars, j)
    matrix, d2, keep = _clipped_fit(src[i], dst[j], model, flip, w)
    i, j, w, d2 = i[keep], j[keep], w[keep], d2[keep]
    out["n_matched"] = int(keep.sum())
    out.update(matrix=matrix, residual=float(np.sqrt(np.sum(w * d2) / np.sum(w))),
               rotation=rotation, scale=scale, flip=flip,
               error=predicted_error(src[i], dst[j], matrix, model, flip, w,
                                     _overlap(matrix, opts["shape"])))
    if model != "shift":
        out["rotation"], out["scale"], out["flip"] = describe(matrix)
    return out


def _clipped_fit(src, dst, model, flip, w, share=0.1):
    """``(matrix, squared distances, pairs kept)``: the fit of ``model``, refitted without
    the pairs far off it.

    A pair is off when its distance in units of its expected error (``w``
    are inverse variances) is over 3 times the median of those; at most
    ``share`` of the pairs, the farthest, are left out, so a transform the
    model cannot describe keeps most of its misfit (and fails the residual
    test). What this removes: a star whose centroid a satellite trail or a
    neighbour pulled by a fraction of a pixel, within the match's tolerance
    but bright enough to pull the whole fit.
    """
    from ._match import fit

    keep = np.ones(len(src), bool)
    for step in range(4):
        matrix = fit(src[keep], dst[keep], model, flip, w[keep])
        d2 = np.sum((src @ matrix[:, :2].T + matrix[:, 2] - dst) ** 2, axis=1)
        if step == 3:
            break
        chi = np.sqrt(d2 * w)
        far = np.flatnonzero(chi > 3.0 * np.median(chi[keep]))
        far = far[np.argsort(-chi[far], kind="stable")][:int(share * len(src))]
        new = np.ones(len(src), bool)
        new[far] = False
        if np.array_equal(new, keep):
            break
        keep = new
    return matrix, d2, keep


def _overlap(matrix, shape, n=9):
    """Reference pixels on an ``n x n`` grid that the transform puts inside the frame."""
    ny, nx = shape
    gy, gx = np.mgrid[0:ny - 1:n * 1j, 0:nx - 1:n * 1j]
    grid = np.column_stack([gx.ravel(), gy.ravel()])
    p = grid @ matrix[:, :2].T + matrix[:, 2]
    inside = (p[:, 0] >= 0) & (p[:, 0] <= nx - 1) & (p[:, 1] >= 0) & (p[:, 1] <= ny - 1)
    return grid[inside]


def _on_reference(matrix, dst, shape, margin=2.0):
    """How many of the frame's stars ``matrix`` puts on the reference frame (off its edges)."""
    A, t = matrix[:, :2], matrix[:, 2]
    try:
        p = np.linalg.solve(A, (dst - t).T).T
    except np.linalg.LinAlgError:
        return len(dst)
    ny, nx = shape
    inside = ((p[:, 0] >= margin) & (p[:, 0] <= nx - 1 - margin) & (p[:, 1] >= margin)
              & (p[:, 1] <= ny - 1 - margin))
    return int(inside.sum())


def _on_frame(matrix, src, shape, margin=2.0):
    """How many of the reference's stars ``matrix`` puts on the frame (off its edges)."""
    p = src @ matrix[:, :2].T + matrix[:, 2]
    ny, nx = shape
    inside = ((p[:, 0] >= margin) & (p[:, 0] <= nx - 1 - margin) & (p[:, 1] >= margin)
              & (p[:, 1] <= ny - 1 - margin))
    return int(inside.sum())


def _weights(ref_stars, i, stars, j, floor=0.005):
    """Inverse variances of matched pairs: each star's position error ~ FWHM / SNR."""
    def var(st, k):
        fwhm = st["frame_fwhm"] if np.isfinite(st["frame_fwhm"]) else 3.0
        snr = np.maximum(np.asarray(st["snr"])[k], 1.0)
        return (fwhm / snr) ** 2

    return 1.0 / (var(ref_stars, i) + var(stars, j) + floor**2)


def _convincing(solved, opts):
    """Enough pairs, and most of the stars the transform puts on the reference paired."""
    n = solved["n_matched"]
    return n >= opts["min_matches"] and n >= opts["min_fraction"] * solved["expected"]


def _judge(stars, solved, model, opts):
    """``(valid, reason)`` from the frame's own evidence."""
    n_found, n = stars["n_found"], solved["n_matched"]
    need, limit = opts["min_matches"], opts["max_residual"]
    if n_found < need:
        return False, f"{n_found} stars detected (need {need})"
    if n < need and n <= max(2, 0.05 * n_found):
        return False, (f"frame is not of this field: no transform matches more than {n} of "
                       f"its {n_found} stars")
    if n < need:
        return False, f"{n_found} stars detected, {n} matched (need {need})"
    if not _convincing(solved, opts):
        return False, (f"frame is not of this field: the best transform pairs only {n} of the "
                       f"{solved['expected']} stars the two frames share (need "
                       f"{opts['min_fraction']:.0%})")
    rotation, flip = solved["rotation"], solved["flip"]
    if not solved["residual"] <= limit:
        what = ""
        if model == "shift" and (abs(rotation) > 0.01 or flip):
            what = f"rotated {rotation:.2f}°{' and mirrored' if flip else ''}: model 'shift' " \
                   "cannot describe it; "
        return False, f"{what}residual {solved['residual']:.2f} px (limit {limit:g})"
    bound = max(0.1, limit / 8)
    if solved["error"] > bound:  # NaN (not known) passes
        return False, (f"transform uncertain: predicted error {solved['error']:.2f} px from "
                       f"{n} stars (limit {bound:.2g})")
    notes = []
    if abs(rotation) > 90:
        notes.append(f"rotated {rotation:.1f}° (meridian flip)")
    if flip:
        notes.append("mirrored")
    return True, "; ".join(notes)


def _match_task(source, frames, records, picked, ref_stars, shape, model):
    """Task body: match a batch of frames (in time order) to the reference.

    ``records`` are the batch's own star lists, in the order of ``frames``
    (a task gets only its batch's, so little moves between workers).
    """
    ref, _, opts = picked
    out = {}
    hint = None
    for i, stars in zip(frames, records, strict=True):
        if i == ref:
            out[i] = _identity(stars)
            continue
        solved = _solve(ref_stars, stars, model, opts, [hint] if hint is not None else [])
        if stars["sparse"]:
            refined = (_refine(source, i, ref_stars, stars, solved, model, opts, shape)
                       if _convincing(solved, opts) else None)
            if refined is None:  # the frame's detection over the whole frame
                found, _ = _stars(source, i, _whole(shape[0]), opts, opts["n_stars"],
                                  whole=True, fwhm=_known_fwhm(stars))
                found["rows"] += stars["rows"]
                refined = _record(found, True)
                refined = refined, _solve(ref_stars, refined, model, opts,
                                          [hint] if hint is not None else [])
            stars, solved = refined
        elif not stars["whole"] and (not _convincing(solved, opts)
                                   or not solved["error"] <= opts["max_error"]):
            plan, whole = _second_plan(stars, solved, opts, shape[0])
            found, _ = _stars(source, i, plan, opts, opts["n_stars"] * 4, whole=whole,
                              fwhm=_known_fwhm(stars))
            found["rows"] += stars["rows"]
            first = (dict(stars, rows=found["rows"]), solved)
            stars = _record(found, found["whole"])
            solved = _solve(ref_stars, stars, model, opts, [hint] if hint is not None else [])
            if _convincing(first[1], opts) and not (
                    _convincing(solved, opts) and solved["error"] <= first[1]["error"]):
                stars, solved = first  # the bands' answer was the better one
        valid, reason = _judge(stars, solved, model, opts)
        if valid:
            hint = solved["search"].matrix[:, :2]
        out[i] = _row(stars, solved, valid, reason)
    return out


def _refine(source, i, ref_stars, stars, solved, model, opts, shape):
    """``(stars, solved)`` from the reference's stars measured on frame ``i``, or None.

    For a frame whose bands matched convincingly but hold too few stars for
    the transform's accuracy (a sparse field). The match's transform puts
    the reference's brightest listed stars (up to ``4 n_stars``) on the
    frame; stamps around them are read (the stored rows they span, one
    read) and each star is measured on its own pixels
    (:func:`bigstack._detect.measure_at`: local background, sharp pixels
    cleaned, windowed centroid, signal to noise at least ``threshold``).
    A star found within ``3 tolerance`` (at least 3 px) of where it was
    expected is paired with its reference star; ``model`` is fitted to the pairs and judged as
    any other match, even where the bands' few stars fitted better (a
    similarity fits a sheared frame's bands, not its corners). None when
    the answer is not convincing (the caller then reads the whole frame):
    the detection over the whole frame costs about ten times as much.
    """
    from ._detect import FWHM_PER_SIGMA, _unique, measure_at
    from ._match import Match
    from ._measure import cut_stamps

    ny, nx = shape
    fwhm = stars["frame_fwhm"] if np.isfinite(stars["frame_fwhm"]) else stars["filter_fwhm"]
    if not (np.isfinite(fwhm) and stars["noise"] > 0):
        return None
    window = max(fwhm, 2.0) / FWHM_PER_SIGMA
    reach = max(3, int(math.ceil(3.5 * window))) + int(math.ceil(window)) + 3
    search = solved["search"].matrix
    src = np.column_stack([ref_stars["x"], ref_stars["y"]])
    p = src @ search[:, :2].T + search[:, 2]
    inside = ((p[:, 0] >= reach) & (p[:, 0] <= nx - 1 - reach) & (p[:, 1] >= reach)
              & (p[:, 1] <= ny - 1 - reach))
    sel = np.flatnonzero(inside)[:4 * opts["n_stars"]]
    if sel.size < opts["min_matches"]:
        return None
    px, py = p[sel, 0], p[sel, 1]
    r0 = max(int(math.floor(py.min())) - reach - 1, 0)
    r1 = min(int(math.ceil(py.max())) + reach + 2, ny)
    rows, scale, zero, blank, _ = source.raw(i, r0, r1, {})
    if np.ndim(rows) != 2:
        return None
    cut, gx, gy = cut_stamps(rows, px, py - r0, window)
    values = cut * scale + zero
    if blank is not None:
        values[cut == blank] = np.nan
    k, x, y, flux, snr = measure_at(values, gx, gy + r0, px, py, fwhm, stars["noise"],
                                    opts["threshold"])
    order = np.argsort(-flux, kind="stable")
    k, x, y, flux, snr = k[order], x[order], y[order], flux[order], snr[order]
    keep = _unique(x, y, fwhm)
    k, x, y, flux, snr = k[keep], x[keep], y[keep], flux[keep], snr[keep]
    measured = dict(stars, x=x, y=y, flux=flux, snr=snr, n_found=int(x.size),
                    rows=stars["rows"] + (r1 - r0))
    # pairs as wide as the affine refit's: stars the search's similarity misplaces by a
    # pixel (a shear, a distortion) stay in the fit, so a model that cannot follow them
    # fails the residual test rather than keeping only the stars it fits
    near = np.flatnonzero(np.hypot(x - px[k], y - py[k]) <= max(3 * opts["tolerance"], 3.0))
    found = Match(search, sel[k[near]], near, np.nan, bool(solved["flip"]), "stamps")
    refined = _fit_found(ref_stars, measured, found, model, opts)
    if not _convincing(refined, opts):
        return None
    return measured, refined


def _known_fwhm(record):
    """The matched filter's FWHM a frame's first detection settled on (None if it found none)."""
    f = record.get("filter_fwhm", np.nan)
    return float(f) if np.isfinite(f) and record["n_found"] > 0 else None


def _second_plan(stars, solved, opts, ny):
    """``(plan, whole)``: the rows to read again for a frame whose bands did not do.

    A convincing match whose predicted error is over ``max_error`` needs more
    stars: the error falls as one over the square root of their number, so
    the bands are made taller by ``1.3 (error / max_error)^2`` (at least
    doubled). Anything else (no convincing match, or bands that would cover
    half the frame) reads the whole frame.
    """
    error = solved["error"]
    if _convincing(solved, opts) and np.isfinite(error):
        grow = max(2.0, 1.3 * (error / opts["max_error"]) ** 2)
        height = int(math.ceil(stars["height"] * grow))
        if height * opts["bands"] * 2 < ny:
            return band_rows(ny, height, opts["bands"]), False
    return _whole(ny), True


def _row(stars, solved, valid, reason):
    return {"transform": solved["matrix"], "rotation": solved["rotation"],
            "scale": solved["scale"], "flip": solved["flip"], "n_stars": stars["n_found"],
            "n_matched": solved["n_matched"], "residual": solved["residual"],
            "fwhm": stars["frame_fwhm"], "background": stars["background"],
            "noise": stars["noise"], "rows_read": stars["rows"], "valid": valid,
            "reason": reason, "error": solved.get("error", np.nan)}


def _identity(stars):
    solved = {"matrix": np.column_stack([np.eye(2), np.zeros(2)]), "rotation": 0.0,
              "scale": 1.0, "flip": False, "n_matched": stars["n_found"], "residual": 0.0,
              "error": 0.0}
    return _row(stars, solved, True, "reference frame")


# --------------------------------------------------------------------------
# the table


_COLUMNS = {"transform": ((2, 3), np.float64), "shift": ((2,), np.float64),
            "rotation": ((), np.float64), "scale": ((), np.float64), "flip": ((), bool),
            "n_stars": ((), np.int64), "n_matched": ((), np.int64),
            "residual": ((), np.float64), "error": ((), np.float64),
            "fwhm": ((), np.float64),
            "background": ((), np.float64), "noise": ((), np.float64),
            "rows_read": ((), np.int64), "valid": ((), bool), "reason": ((), object),
            "reference": ((), bool)}
_DIMS = {"transform": ("frame", "row", "col"), "shift": ("frame", "axis")}


def _table(parts, n, picked):
    ref, ref_reason, opts = picked
    rows = {}
    for part in parts:
        rows.update(part)
    out = {}
    for k, (tail, dtype) in _COLUMNS.items():
        if k in ("shift", "reference"):
            continue
        out[k] = np.array([rows[i][k] for i in range(n)], dtype=dtype).reshape(n, *tail)
    out["shift"] = out["transform"][:, :, 2].copy()
    out["reference"] = np.arange(n) == ref
    out["_ref"] = (ref, ref_reason, opts)
    return out


def _dataset(columns, n, coords, attrs):
    import xarray as xr

    data_vars = {k: (_DIMS.get(k, ("frame",)), columns[k]) for k in _COLUMNS}
    all_coords = {"frame": np.arange(n), "axis": ["x", "y"]}
    all_coords.update({k: v for k, v in coords.items() if k != "frame"})
    if "frame" in coords:
        all_coords["frame"] = coords["frame"].values
    ds = xr.Dataset(data_vars, coords=all_coords, attrs=attrs)
    ds["transform"].attrs["description"] = (
        "[x_i, y_i] = A @ [x, y] + t maps a reference-grid pixel [x, y] to the frame's pixel; "
        "transform = [A | t]")
    ds["shift"].attrs["description"] = "t, [x, y] in pixels (star_i - star_reference for a shift)"
    ds["rotation"].attrs["units"] = "degrees"
    ds["residual"].attrs["units"] = "pixels"
    ds["error"].attrs["units"] = "pixels"
    ds["error"].attrs["description"] = (
        "predicted 1-sigma error of the transform, largest over the overlap with the reference")
    return ds


def _lazy(table, n):
    import dask.array as da

    return {k: da.from_delayed(table[k], shape=(n, *tail), dtype=dtype)
            for k, (tail, dtype) in _COLUMNS.items()}


# --------------------------------------------------------------------------
# the public function


def _options(n_stars, min_matches, max_residual, rows, bands, fwhm, threshold, max_scale,
             min_stars, tolerance, min_fraction, max_error):
    if int(n_stars) < 3:
        raise ValueError(f"n_stars must be at least 3, got {n_stars!r}")
    if int(min_matches) < 3:
        raise ValueError(f"min_matches must be at least 3, got {min_matches!r}")
    if max_residual is not None and not float(max_residual) > 0:
        raise ValueError(f"max_residual must be a positive number of pixels, got {max_residual!r}")
    if fwhm is not None and not float(fwhm) >= 2:
        raise ValueError(f"fwhm must be at least 2 pixels, got {fwhm!r}")
    if not 0 < float(min_fraction) <= 1:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction!r}")
    return {"n_stars": int(n_stars), "min_matches": int(min_matches),
            "max_residual": None if max_residual is None else float(max_residual),
            "rows": int(rows), "bands": int(bands),
            "fwhm": None if fwhm is None else float(fwhm), "threshold": float(threshold),
            "max_scale": float(max_scale),
            "min_stars": 3 * int(min_matches) if min_stars is None else int(min_stars),
            "tolerance": None if tolerance is None else float(tolerance), "ny": None,
            "shape": None, "min_fraction": float(min_fraction), "max_error": float(max_error)}


def _finish(opts, records):
    """Defaults that depend on the frames (their median FWHM)."""
    fwhm = np.array([r["frame_fwhm"] for r in records])
    fwhm = float(np.median(fwhm[np.isfinite(fwhm)])) if np.isfinite(fwhm).any() else 3.0
    opts = dict(opts)
    if opts["max_residual"] is None:
        opts["max_residual"] = round(max(0.5, 0.1 * fwhm), 3)
    if opts["tolerance"] is None:
        opts["tolerance"] = max(1.0, 0.25 * fwhm)
    return opts


def find_transforms(frames, model="similarity", reference="auto", *, n_stars=100,
                    min_matches=6, max_residual=None, strict=False, compute=True, rows=48,
                    bands=4, fwhm=None, threshold=5.0, max_scale=0.1, min_stars=None,
                    tolerance=None, min_fraction=0.5, max_error=0.03):
    """Find each frame's transform onto a reference frame from many stars.

    Parameters
    ----------
    frames : xarray.DataArray ``(frame, y, x)``, dask or numpy array, pattern or paths
        Usually the cube from :func:`bigstack.open_frames`; each task then
        reads only its frame's row bands from the file.
    model : {"shift", "similarity", "affine"}
        The transform fitted to the matched stars: a translation; rotation
        + uniform scale + translation (a mirrored frame gets a reflection);
        or a general affine map.
    reference : "auto" or int
        The frame the others are mapped to (its transform is the
        identity). ``"auto"`` picks the frame with the most stars, the
        smallest FWHM and the lowest background whose stars also match
        at least half of a sample of the other frames (else the candidate
        that matches the most), so a frame of another field is never the
        reference; ``attrs`` say which and why.
    n_stars : int
        Stars kept per frame, the brightest (default 100).
    min_matches : int
        Matched stars a valid frame needs (default 6).
    max_residual : float, optional
        Largest RMS distance (px) of the matched stars after the fit for a
        valid frame; default the larger of 0.5 px and a tenth of the
        frames' median FWHM. A valid frame's predicted transform error
        (``error``) must also be at most an eighth of it, or 0.1 px.
    strict : bool
        Raise :class:`StarNotFoundError` naming the invalid frames instead
        of warning.
    compute : bool
        ``False`` returns the Dataset backed by dask, nothing computed.
    rows, bands : int
        Each frame is searched in ``bands`` bands of ``rows`` rows (default
        4 x 48, taller for wide stars), and searched whole only when they hold fewer
        than ``min_stars`` stars (default ``3 * min_matches``) or do not match. In a
        sparse field (fewer than ``n_stars`` stars in bands of half the frame) the
        reference's stars are then measured where the bands' match puts them.
    fwhm : float, optional
        Star FWHM in pixels for the matched filter; default chosen per
        frame.
    threshold : float
        Detection threshold in sigmas of the filtered noise (default 5).
    max_scale : float
        Largest relative scale change searched (default 0.1, i.e. 10%).
    tolerance : float, optional
        Distance (px) within which two stars are the same star once
        fitted; default the larger of 1 px and a quarter of the FWHM.
    min_fraction : float
        Share of the frame's listed stars that the transform puts on the
        reference frame which must be matched (default 0.5; right
        transforms pair 80-95% of them, chance ones 10-20%).
    max_error : float
        A frame whose transform from its bands has a predicted error
        (``error``) above this many pixels is read whole and fitted on
        all its stars (default 0.03). Not a validity test.

    Returns
    -------
    xarray.Dataset
        Over ``frame`` (with the cube's per-frame coordinates):
        ``transform`` ``(frame, row, col)`` = ``[A | t]`` (see the module
        notes for the convention); ``shift`` ``(frame, axis)`` = ``t``,
        ``axis = ["x", "y"]``; ``rotation`` (degrees), ``scale``, ``flip``
        (mirrored); ``n_stars`` (detected), ``n_matched``, ``residual``
        (RMS of the matched stars after the fit, px), ``fwhm``,
        ``background``, ``noise``, ``rows_read``; ``valid`` and
        ``reason`` (why a frame is invalid, or a note on a valid one);
        ``reference`` (True for the reference frame). ``attrs``: the
        model, the reference index and why it was chosen, the thresholds
        used.

    Raises
    ------
    StarNotFoundError
        With ``strict``, when a frame is invalid; always, when the
        reference frame has fewer than ``min_matches`` stars, or when
        every other frame is "not of this field" (the reference is of
        another field: there would be nothing to stack it with).

    Examples
    --------
    >>> import tempfile
    >>> from bigstack import find_transforms, open_frames, synthetic
    >>> truth = synthetic.make_frames(tempfile.mkdtemp(), n_frames=3, shape=(256, 256))
    >>> ds = find_transforms(open_frames(truth.paths), reference=0)
    >>> bool(abs(ds["shift"].values - truth.shifts).max() < 0.05)
    True
    """
    import dask

    from ._io import cube_source

    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    opts = _options(n_stars, min_matches, max_residual, rows, bands, fwhm, threshold,
                    max_scale, min_stars, tolerance, min_fraction, max_error)
    source, n, shape, coords = cube_source(frames, "find_transforms")
    opts["ny"] = int(shape[0])
    opts["shape"] = (int(shape[0]), int(shape[1]))
    if isinstance(reference, str):
        if reference != "auto":
            raise ValueError(f"reference must be 'auto' or a frame index, got {reference!r}")
    else:
        if not -n <= int(reference) < n:
            raise ValueError(f"reference={reference} but the cube has {n} frames")
        reference = int(reference) % n
    order = _time_order(coords, n)
    table = _graph(source, n, shape, opts, reference, model, order)
    attrs = {"registration": "find_transforms", "model": model, "n_stars": opts["n_stars"],
             "min_matches": opts["min_matches"], "min_fraction": opts["min_fraction"],
             "max_error": opts["max_error"],
             "rows": opts["rows"], "bands": opts["bands"],
             "threshold": opts["threshold"], "max_scale": opts["max_scale"]}
    if compute:
        (columns,) = dask.compute(table)
        ref, why, used = columns.pop("_ref")
        attrs.update(reference=int(ref), reference_reason=why,
                     max_residual=used["max_residual"], tolerance=used["tolerance"],
                     fwhm=used["fwhm"] if used["fwhm"] is not None else "auto")
        ds = _dataset(columns, n, coords, attrs)
        _report(ds, int(ref), strict, opts["min_matches"])
        return ds
    attrs.update(reference=reference if reference == "auto" else int(reference))
    return _dataset(_lazy(table, n), n, coords, attrs)


def _graph(source, n, shape, opts, reference, model, order):
    """The task graph, written out (a few tasks per frame; delayed calls on lists of
    thousands of delayed objects take seconds to build). Returns the table's Delayed."""
    import uuid

    from dask.delayed import Delayed

    token = uuid.uuid4().hex
    src = f"find_transforms-source-{token}"
    pick = f"find_transforms-reference-{token}"
    ref_stars = f"find_transforms-reference-stars-{token}"
    table = f"find_transforms-table-{token}"
    records = [(f"find_transforms-stars-{token}", i) for i in range(n)]
    dsk = {src: source}
    for i, key in enumerate(records):
        dsk[key] = (_frame_task, src, i, shape, opts)
    both = f"find_transforms-reference-pick-{token}"
    dsk[both] = (_pick_task, src, list(records), reference, opts, shape)
    dsk[pick] = (operator.getitem, both, 0)
    dsk[ref_stars] = (operator.getitem, both, 1)
    parts = []
    for b, k in enumerate(range(0, n, _BATCH)):
        batch = [int(i) for i in order[k:k + _BATCH]]
        key = (f"find_transforms-match-{token}", b)
        dsk[key] = (_match_task, src, batch, [records[i] for i in batch], pick, ref_stars,
                    shape, model)
        parts.append(key)
    dsk[table] = (_table, parts, n, pick)
    return Delayed(table, dsk)


def _time_order(coords, n):
    if "time" in coords:
        return np.argsort(np.asarray(coords["time"].values), kind="stable")
    return np.arange(n)


def _report(ds, ref, strict, min_matches):
    if int(ds["n_stars"].values[ref]) < min_matches:
        raise StarNotFoundError(
            f"reference frame {ref} ({_frame_name(ds, ref)}): "
            f"{int(ds['n_stars'].values[ref])} stars detected (need {min_matches}); "
            "choose another reference")
    others = np.delete(np.arange(ds.sizes["frame"]), ref)
    foreign = [str(ds["reason"].values[i]).startswith("frame is not of this field")
               for i in others]
    if others.size and all(foreign):
        # no other frame is of the reference's field: the reference is the odd one (or
        # every frame is of a field of its own), and a stack of it alone is no stack
        raise StarNotFoundError(
            f"reference frame {ref} ({_frame_name(ds, ref)}): none of the other "
            f"{others.size} frames is of its field (their stars match none of its own); "
            "choose another reference")
    report_invalid(ds, strict)

