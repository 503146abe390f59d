"""One star in a search box: find it, measure it, and judge it against the reference star.

For :func:`bigstack.find_star` and :func:`bigstack.find_shifts`. Boxes are
indexed ``[y, x]``; positions are ``[x, y]`` in box pixels; a pixel's
centre has integer coordinates.

A frame's star is trusted on its own evidence only, never because other
frames agree with it. :func:`measure_star` says what it saw in the box:
no star, a one-pixel spike, a star at the edge, a saturated core, two
comparable stars, a faint star. The reference frame's star must pass
these and :func:`reference_reason` (round enough, no line of light
across the ring around it). :func:`compare` then holds every other
frame's star against the reference star: its flux, FWHM and roundness;
the light in the ring just outside it (a satellite trail through or
beside the star raises it, and pulls the centroid); and the other stars
of the box (where the reference frame's are, moved by this frame's
shift, there must be their light, or another star was taken).

Hot pixels and cosmic rays on and around the star are replaced by their
neighbours' median before anything is measured (:func:`clean_spikes`).
"""

from __future__ import annotations

import numpy as np

from ._detect import SPIKE, neighbours, sharp_pixels
from ._measure import (
    FWHM_PER_SIGMA,
    adaptive_shapes,
    box_stats,
    fwhm_from_halfmax,
    windowed_centroid,
)
from ._xcorr import overlap

#: a frame's measured values, in this order
FIELDS = ("x", "y", "peak", "flux", "fwhm", "background", "noise", "snr", "roundness")

#: another star whose core reaches this fraction of the chosen one's makes the box ambiguous
COMPARABLE = 0.5
#: the reference star's least signal to noise (aperture flux over the sky noise in it)
MIN_SNR = 20.0
#: another frame's star may be fainter, down to this
MIN_FRAME_SNR = 10.0
#: flux ratio to the reference star outside ``[1 / FLUX_RATIO, FLUX_RATIO]`` is flagged
FLUX_RATIO = 3.0
#: FWHM ratio to the reference star outside ``[1 / FWHM_RATIO, FWHM_RATIO]`` is flagged
FWHM_RATIO = 2.0
#: roundness (``1 - b / a``) more than this above the reference star's is flagged
ROUNDNESS = 0.2
#: the reference star itself must be rounder than this
MAX_ROUNDNESS = 0.35
#: light in the ring over this fraction of the star's peak (and 5 sigma) is flagged
RING_LIGHT = 0.03
#: sectors of the ring
SECTORS = 12
#: the frame must show at least this fraction of the light of the reference box's other stars
FIELD_SHOWN = 0.5
#: ... when that light stands this many sigma above the noise
FIELD_SIGNIFICANT = 10.0


def _brightest(values):
    """Index ``(iy, ix)`` of the first largest value, as ``np.where`` finds it."""
    flat = np.nanargmax(values) if np.isnan(values).any() else np.argmax(values)
    return np.unravel_index(flat, values.shape)


def ring_radii(fwhm):
    """``(inner, outer)``: the ring ``2 fwhm`` to ``3.5 fwhm`` (at least 4 to 7 px) around a star.

    Outside the star's own light, inside the reach of its windowed
    centroid.
    """
    return max(2.0 * fwhm, 4.0), max(3.5 * fwhm, 7.0)


def ring_light(signal, x, y, radii, noise):
    """Per sector of the ring around ``(x, y)``: median of ``signal`` and its noise.

    ``radii`` is ``(inner, outer)``; the ring is cut into :data:`SECTORS`
    sectors of equal angle. A sector with fewer than 6 pixels inside the
    box is NaN. The noise of a median of ``n`` pixels is ``1.2533 noise /
    sqrt(n)``.
    """
    ny, nx = signal.shape
    inner, outer = radii
    r = int(np.ceil(outer))
    x0, x1 = max(int(round(x)) - r, 0), min(int(round(x)) + r + 1, nx)
    y0, y1 = max(int(round(y)) - r, 0), min(int(round(y)) + r + 1, ny)
    dy = np.arange(y0, y1)[:, None] - y
    dx = np.arange(x0, x1)[None, :] - x
    dist = np.hypot(dx, dy)
    sector = ((np.arctan2(dy, dx) + np.pi) / (2 * np.pi) * SECTORS).astype(int) % SECTORS
    inside = (dist >= inner) & (dist <= outer)
    cut = signal[y0:y1, x0:x1]
    level = np.full(SECTORS, np.nan)
    error = np.full(SECTORS, np.nan)
    for k in range(SECTORS):
        values = cut[inside & (sector == k)]
        values = values[np.isfinite(values)]
        if values.size >= 6:
            level[k] = np.median(values)
            error[k] = 1.2533 * noise / np.sqrt(values.size)
    return level, error


def star_step(fwhm):
    """How far the brightest pixel of a star of ``fwhm`` px can stand above its neighbours.

    ``(value - second brightest of the 8 neighbours) / value``, largest for
    a star centred on a pixel (``1 - edge / centre`` of a pixel-integrated
    Gaussian): 0.46 at FWHM 2, 0.25 at FWHM 3, 0.02 at FWHM 11. An
    elongated star stands less high along its long axis.
    """
    from scipy.special import erf

    c = np.sqrt(2.0) * max(float(fwhm), 0.3) / FWHM_PER_SIGMA
    centre = erf(0.5 / c)
    edge = 0.5 * (erf(1.5 / c) - centre)
    return float(1.0 - edge / centre)


def core_fraction(fwhm, dx, dy):
    """The 3 x 3 minimum about the pixel nearest a star, as a fraction of its flux.

    For a pixel-integrated Gaussian of ``fwhm`` px at ``(dx, dy)`` px (each
    in ``[-0.5, 0.5]``) from that pixel's centre. It depends on where the
    star falls in its pixel, the more so the sharper the star: at FWHM 1.4
    a star on a pixel corner keeps a twelfth of a centred star's, at FWHM 3
    half.
    """
    from scipy.special import erf

    c = np.sqrt(2.0) * max(float(fwhm), 0.3) / FWHM_PER_SIGMA
    k = np.array([-1.0, 0.0, 1.0])

    def axis(d):
        return float(np.min(0.5 * (erf((k + 0.5 - d) / c) - erf((k - 0.5 - d) / c))))

    return axis(dx) * axis(dy)


def core_floor(ref_core, fwhm, dx, dy, share=1.0 / 3.0):
    """The 3 x 3 minimum a frame's star must reach: ``share`` of the reference star's
    ``ref_core``, lowered by what the star's sub-pixel position alone can take from it
    (the reference star at ``(dx, dy)`` from its pixel's centre, the frame's star
    anywhere; :func:`core_fraction`)."""
    if not (np.isfinite(fwhm) and np.isfinite(dx) and np.isfinite(dy)):
        return share * ref_core
    worst = core_fraction(fwhm, 0.5, 0.5) / core_fraction(fwhm, dx, dy)
    return share * ref_core * min(1.0, worst)


#: stars narrower than this (px) are as sharp as a cosmic ray's blob of a few pixels
#: by the test at SPIKE (the diagonal pixel of a centred star of FWHM 1.4 px stands
#: 0.9 of its value above its neighbours' median; at FWHM 1.6, 0.84)
BLOB_FWHM = 1.6


def clean_spikes(signal, noise, fwhm):
    """A copy of ``signal`` without the hot pixels and cosmic rays on and around a star.

    A pixel more than 5 ``noise`` above its neighbours is replaced by
    their median when it stands above the second brightest of them by a
    larger fraction of its value than a star of 0.8 ``fwhm`` could
    (:func:`star_step`, plus 0.1; a lone hot pixel, even on the star's
    core), or above their median by more than
    :data:`bigstack._detect.SPIKE` of its value (a blob of a few pixels),
    unless 0.8 ``fwhm`` is under :data:`BLOB_FWHM`: such a star's own pixels
    pass that test. Returns ``(cleaned, count)``.
    """
    limit = 5 * noise
    ys, xs = np.nonzero(signal > limit)
    if ys.size == 0:
        return signal, 0
    near = np.sort(neighbours(signal, ys, xs), axis=0)
    med = 0.5 * (near[3] + near[4])
    value = signal[ys, xs]
    step = star_step(0.8 * fwhm if np.isfinite(fwhm) else 1.6) + 0.1
    alone = (value - near[-2] > limit) & (value - near[-2] > step * value)
    blob = (value - med > limit) & (value - med > SPIKE * value)
    if np.isfinite(fwhm) and 0.8 * fwhm < BLOB_FWHM:
        blob[:] = False  # a star this sharp is a blob of a few pixels itself
    spike = alone | blob
    if not spike.any():
        return signal, 0
    out = signal.copy()
    out[ys[spike], xs[spike]] = med[spike]
    return out, int(spike.sum())


def _median_fwhm(signal, iy, ix):
    """Rough FWHM of the star at ``(iy, ix)`` from its 3 x 3 median (blind to one hot pixel)."""
    from scipy.ndimage import median_filter

    r = 12
    y0, x0 = max(iy - r, 0), max(ix - r, 0)
    cut = median_filter(signal[y0:iy + r + 1, x0:ix + r + 1], size=3, mode="nearest")
    return fwhm_from_halfmax(cut, iy - y0, ix - x0)


def _candidates(core, threshold, allowed):
    """``(iy, ix)`` of the local maxima (5 x 5) of ``core`` over ``threshold``, brightest first."""
    from scipy.ndimage import maximum_filter

    peaks = (core == maximum_filter(core, size=5, mode="nearest")) & (core > threshold)
    if allowed is not None:
        peaks &= allowed
    iy, ix = np.nonzero(peaks)
    order = np.argsort(-core[iy, ix], kind="stable")
    return iy[order], ix[order]


def measure_star(box, method="centroid", saturation=None, *, near=None, radii=None,
                 min_core=None, fwhm_hint=None, min_snr=MIN_SNR):
    """Measure the star in ``box`` (a 2-D array); positions relative to the box.

    Parameters
    ----------
    box : array_like
        The search box, ``[y, x]``.
    method : {"centroid", "peak"}
        ``"peak"``: the position is the brightest pixel (the tutorial's);
        ``"centroid"``: the brightest 3 x 3 minimum (cosmic rays and hot
        pixels do not survive it), refined by an iterated Gaussian-windowed
        centroid.
    saturation : float, optional
        Pixel value at or above which the star counts as saturated.
    near : (x, y, radius), optional
        Where tracking expects the star (box pixels) and how far from there
        it may be. The star nearest ``[x, y]`` within ``radius`` is taken
        (for ``"peak"``, the brightest pixel within ``radius``), and only a
        star about as near counts as a rival. Without it the brightest star
        in the box is taken, and any other counts.
    radii : (float, float), optional
        The radii of the ring whose light :func:`compare` holds against
        the reference star's (the reference star's); default
        :func:`ring_radii` of the star's FWHM.
    min_core : float, optional
        With ``near``: the 3 x 3 minimum (above the background) a star
        must reach to be taken (a third of the reference star's, say).
    fwhm_hint : float, optional
        The FWHM the star should have (the reference star's); sets how
        sharp a pixel on it must be to count as a hot pixel or cosmic ray
        (:func:`clean_spikes`, run before the star is measured).
    min_snr : float
        A star of lower signal to noise is flagged as faint.

    Returns
    -------
    dict
        ``x``, ``y`` (``[x, y]`` in box pixels), ``peak`` (brightest raw
        pixel of the star), ``flux`` (background-subtracted sum within 1.5
        FWHM), ``fwhm``, ``background``, ``noise``, ``snr`` (flux over the
        sky noise in that aperture), ``roundness`` (``1 - b / a`` of the
        adaptive second moments; NaN when they do not converge, as among
        close neighbours), ``ring`` and ``ring_error`` (per sector, see
        :func:`ring_light`), ``radii``, ``signal`` (the box, background
        subtracted and cleaned), ``core`` (the star's 3 x 3 minimum above
        the background) and ``reason`` (empty when the star is good, else
        what was seen).
    """
    from scipy.ndimage import minimum_filter

    box = np.asarray(box, dtype=np.float64)
    background, noise = box_stats(box)
    out = dict.fromkeys(FIELDS, np.nan)
    out.update(background=background, noise=noise, reason="", ring=None, ring_error=None,
               radii=radii, core=np.nan, signal=None)
    signal = box - background
    ny, nx = box.shape
    floor = max(noise, 1e-12 * max(abs(background), 1.0))
    # the brightest 3x3 minimum: a star (FWHM >= ~1.5 px) keeps a bright
    # core under it, a cosmic ray or hot pixel (<= 2 px wide) does not
    core = minimum_filter(signal, size=3, mode="nearest")
    allowed = None
    if near is None:
        where = "in the box"
        iy, ix = _brightest(box if method == "peak" else core)
    else:
        yy, xx = np.ogrid[:ny, :nx]
        allowed = np.hypot(xx - near[0], yy - near[1]) <= near[2]
        where = f"within {near[2]:.3g} px of where the last good frames put it"
        if not allowed.any():
            out["reason"] = "the expected position is outside the search box"
            return out
        if method == "peak":
            iy, ix = _brightest(np.where(allowed, box, -np.inf))
        else:
            threshold = max(3 * floor, min_core if min_core is not None else 0.0)
            cys, cxs = _candidates(core, threshold, allowed)
            if cys.size == 0:
                out["reason"] = f"no star {where}"
                out["x"] = out["y"] = np.nan
                return out
            k = int(np.argmin(np.hypot(cxs - near[0], cys - near[1])))
            iy, ix = cys[k], cxs[k]
    peak = float(box[iy, ix])
    out["peak"] = peak
    if method == "peak":
        out["x"], out["y"] = float(ix), float(iy)
    if not signal[iy, ix] > 5 * floor:
        out["reason"] = f"no star above the noise {where}"
        out["x"] = out["y"] = np.nan
        return out
    if method == "peak" and sharp_pixels(signal, np.array([iy]), np.array([ix]), SPIKE)[0][0]:
        out["reason"] = (f"the brightest pixel ({peak:g}) is a one-pixel spike, "
                         "sharper than any star")
        return out
    # hot pixels and cosmic rays on the star would pull its centroid: out,
    # by a test for this star's width (from its 3x3 median, where one such
    # pixel does not count, unless the reference star's is given)
    signal, _ = clean_spikes(signal, floor, _median_fwhm(signal, iy, ix)
                             if fwhm_hint is None else fwhm_hint)
    fwhm0 = fwhm_from_halfmax(signal, iy, ix)
    sigma_w = max(fwhm0, 1.5) / FWHM_PER_SIGMA
    cx, cy, m2 = windowed_centroid(signal, float(ix), float(iy), sigma_w)
    if method != "peak":
        out["x"], out["y"] = cx, cy
    # windowed second moment of a Gaussian star: m2 = s^2 w^2 / (s^2 + w^2)
    if np.isfinite(m2) and 0 < m2 < sigma_w**2:
        sigma = np.sqrt(m2 * sigma_w**2 / (sigma_w**2 - m2))
        out["fwhm"] = FWHM_PER_SIGMA * sigma
    else:
        out["fwhm"] = fwhm0
    fwhm = out["fwhm"] if np.isfinite(out["fwhm"]) else fwhm0
    ref_x = cx if np.isfinite(cx) else ix
    ref_y = cy if np.isfinite(cy) else iy
    yy, xx = np.ogrid[:ny, :nx]
    aperture = (xx - ref_x) ** 2 + (yy - ref_y) ** 2 <= (1.5 * fwhm) ** 2
    out["flux"] = float(signal[aperture].sum())
    out["snr"] = out["flux"] / (floor * np.sqrt(np.count_nonzero(aperture)))
    cy_i, cx_i = int(round(ref_y)), int(round(ref_x))
    out["core"] = float(core[min(max(cy_i, 0), ny - 1), min(max(cx_i, 0), nx - 1)])
    half = max(5, int(np.ceil(2.5 * fwhm)))
    if half <= cy_i < ny - half and half <= cx_i < nx - half:
        stamp = signal[cy_i - half:cy_i + half + 1, cx_i - half:cx_i + half + 1]
        out["roundness"] = float(adaptive_shapes(stamp[None])[1][0])
    out["radii"] = ring_radii(fwhm) if radii is None else tuple(radii)
    out["ring"], out["ring_error"] = ring_light(signal, ref_x, ref_y, out["radii"], floor)
    out["signal"] = signal
    out["reason"] = _own_reason(out, box, core, (iy, ix), allowed, near, saturation, fwhm0,
                                min_snr)
    return out


def _own_reason(out, box, core, at, allowed, near, saturation, fwhm0, min_snr):
    """Why the star just measured cannot be trusted on its own evidence, or ''."""
    ny, nx = box.shape
    iy, ix = at
    x, y, fwhm = out["x"], out["y"], out["fwhm"]
    edge = max(3.0, 1.5 * fwhm)  # the windowed centroid needs the star's light to 1.5 FWHM
    if not np.isfinite(x):
        return "centroid failed (no positive flux around the peak)"
    if min(x, y, nx - 1 - x, ny - 1 - y) < edge:
        return "star touches the edge of the search box"
    peak = out["peak"]
    if saturation is not None and peak >= saturation:
        return f"saturated (peak {peak:g} >= {saturation:g})"
    centre = box[max(iy - 2, 0):iy + 3, max(ix - 2, 0):ix + 3]
    top = centre.max()
    if np.count_nonzero(centre >= top - max(1e-6 * abs(top), 0.5)) >= 4 and fwhm0 > 1.5:
        return "saturated (flat-topped star)"
    # another star as bright, apart from this one: which one is the star? (a
    # single star's core is under half its peak beyond 0.7 FWHM from it)
    cys, cxs = _candidates(core, COMPARABLE * out["core"], allowed)
    rivals = np.hypot(cxs - x, cys - y) > max(2.5, 0.7 * fwhm)
    if near is not None:  # tracking: only a rival about as near the expected place counts
        mine = np.hypot(x - near[0], y - near[1])
        rivals &= np.hypot(cxs - near[0], cys - near[1]) <= mine + max(2.0, fwhm)
    if rivals.any() and out["core"] > 0:
        k = int(np.flatnonzero(rivals)[0])
        ratio = core[cys[k], cxs[k]] / out["core"]
        where = "in the box" if near is None else "about as near the expected place"
        return (f"two comparable peaks {where}: one "
                f"{np.hypot(cxs[k] - x, cys[k] - y):.1f} px from the star has {ratio:.2f} of "
                "its core brightness")
    if not out["snr"] >= min_snr:
        return f"faint star (signal to noise {out['snr']:.1f}, under {min_snr:g})"
    return ""


def reference_reason(star):
    """Why the reference frame's star is not fit to be the reference, or ''.

    It must be rounder than :data:`MAX_ROUNDNESS`, and no line of light
    may cross the ring around it: two roughly opposite sectors both
    brighter than the ring's median by :data:`RING_LIGHT` of the star's
    peak (and 5 sigma), as a satellite trail through or beside it makes.
    """
    if star["roundness"] > MAX_ROUNDNESS:
        return (f"elongated star (roundness {star['roundness']:.2f}, over "
                f"{MAX_ROUNDNESS:g})")
    ring = star["ring"]
    if ring is None:
        return ""
    limit = np.maximum(5 * star["ring_error"],
                       RING_LIGHT * (star["peak"] - star["background"]))
    high = np.nan_to_num(ring - np.nanmedian(ring)) > np.nan_to_num(limit, nan=np.inf)
    half = SECTORS // 2
    opposite = high & (np.roll(high, half) | np.roll(high, half - 1) | np.roll(high, half + 1))
    if opposite.any():
        return (f"a line of light crosses the ring {star['radii'][0]:.0f}-"
                f"{star['radii'][1]:.0f} px around the star on opposite sides")
    return ""


def compare(star, ref):
    """Why ``star`` (a frame's, from :func:`measure_star`) is not like the reference star, or ''.

    In this order: the flux ratio (within :data:`FLUX_RATIO`), the FWHM
    ratio (within :data:`FWHM_RATIO`), the roundness (not more than
    :data:`ROUNDNESS` above the reference star's), the light in the ring
    (:func:`ring_excess`) and the other stars of the box
    (:func:`field_mismatch`). Positions are the box's own (``star`` and
    ``ref`` as :func:`measure_star` returns them); ``star`` must have been
    measured with the reference star's ``radii``.
    """
    ratio = star["flux"] / ref["flux"] if ref["flux"] > 0 else np.nan
    if not ratio >= 1 / FLUX_RATIO:
        return f"star flux {ratio:.2g} of the reference star's"
    if ratio > FLUX_RATIO:
        return f"star flux {ratio:.2g} times the reference star's"
    widths = star["fwhm"] / ref["fwhm"]
    if not 1 / FWHM_RATIO <= widths <= FWHM_RATIO:
        return f"star FWHM {star['fwhm']:.2f} px against the reference star's {ref['fwhm']:.2f}"
    if star["roundness"] > ref["roundness"] + ROUNDNESS:
        return (f"elongated star (roundness {star['roundness']:.2f} against the reference "
                f"star's {ref['roundness']:.2f})")
    return ring_excess(star, ref, ratio) or field_mismatch(star, ref, ratio)


def ring_excess(star, ref, ratio):
    """Light in the ring around ``star`` that the reference star's ring lacks, as a reason.

    Per sector, the frame's median less the reference's scaled by the flux
    ratio ``ratio`` (clouds dim the neighbours too); flagged over
    :data:`RING_LIGHT` of the star's peak and 5 sigma. A satellite trail
    through or beside the star does this, and pulls its centroid.
    """
    if star["ring"] is None or ref["ring"] is None:
        return ""
    scale = min(ratio, 2.0)
    excess = star["ring"] - ref["ring"] * scale
    error = np.hypot(star["ring_error"], ref["ring_error"] * scale)
    height = star["peak"] - star["background"]
    limit = np.maximum(5 * error, RING_LIGHT * height)
    high = np.nan_to_num(excess) > np.nan_to_num(limit, nan=np.inf)
    if not high.any():
        return ""
    most = float(np.max(excess[high]))
    return (f"light beside the star that the reference frame does not show ({most / height:.1%}"
            f" of its peak, {star['radii'][0]:.0f}-{star['radii'][1]:.0f} px from it)")


def _noise_energy(values, sigma):
    """The mean square of the noise among background-free ``values``: of those within 4
    ``sigma`` (a MAD estimate) of zero, where stars are few.

    Not ``sigma ** 2``: on an interpolated plane (a debayered green, where half
    the pixels are averages of four) the noise is uneven from pixel to pixel
    and the MAD sits well under the mean square (measured: the mean square
    about 2x the MAD's square), which made noise look like the light of stars.
    """
    core = values[np.abs(values) < 4.0 * sigma]
    if core.size < 10:
        return sigma * sigma
    return float(np.einsum("i,i->", core, core)) / core.size


def field_mismatch(star, ref, ratio):
    """Whether the other stars of the reference box are missing at this shift, as a reason.

    The reference box's cleaned pixels are laid on the frame's, moved by
    the whole pixels nearest to the shift the two stars give, and scaled
    by the flux ratio ``ratio``; both stars, to 2 FWHM, are left out.
    When the reference's light there stands well above its noise
    (:data:`FIELD_SIGNIFICANT` sigma of its noise energy), the frame must
    show at least :data:`FIELD_SHOWN` of it (the regression of the frame's
    pixels on the reference's, over the reference's light beyond its
    noise): the whole field moves with the star, so another star taken
    for it leaves the others where they do not belong.
    """
    f, r = star["signal"], ref["signal"]
    if f is None or r is None:
        return ""
    lag = (int(round(star["x"] - ref["x"])), int(round(star["y"] - ref["y"])))
    sa, sb = overlap(r.shape, f.shape, lag)
    r, f = ratio * r[sa], f[sb]
    yy, xx = np.ogrid[sb[0], sb[1]]
    valid = (np.isfinite(r) & np.isfinite(f)
             & (np.hypot(xx - star["x"], yy - star["y"]) > max(2 * ref["fwhm"], 4.0)))
    n = int(valid.sum())
    if n < 20:
        return ""
    r, f = r[valid], f[valid]
    noise = _noise_energy(r, ratio * ref["noise"])
    # (einsum, not a BLAS dot: threaded BLAS is slow on short vectors of a busy machine)
    light = float(np.einsum("i,i->", r, r)) - n * noise  # the other stars, beyond the noise
    if not light > FIELD_SIGNIFICANT * np.sqrt(2.0 * n) * noise:
        return ""
    shown = float(np.einsum("i,i->", f, r)) / light
    if shown < FIELD_SHOWN:
        return (f"the other stars of the box are not where this shift puts the reference "
                f"frame's (it shows {max(shown, 0.0):.0%} of their light)")
    return ""
