"""Cross-correlation of a frame's search box against the reference frame's box.

For :func:`bigstack.find_shifts` with ``method="xcorr"``. Boxes are
indexed ``[y, x]``; lags and positions are ``[x, y]`` here only where
the docstrings say so.

What does not move with the sky is taken out of both boxes first, by
:func:`bigstack._detect._prepare` (the detector's own cleaning): the
column and row pattern of the sensor, the background and its gradient,
and the hot pixels and cosmic rays (peaks sharper than any star of
FWHM 1.6 px, replaced by their neighbours' median). Otherwise a box much larger than its stars
correlates best at zero shift on the sensor, whatever the sky did. Both
boxes are then tapered at their edges (a raised cosine over an eighth of
the box), so a star that enters or leaves the box counts little.

The correlation ``c(d) = sum_x a(x) b(x + d)`` of the reference box ``a``
and the frame's box ``b`` is computed by FFT, zero-padded so that no lag
wraps around onto another; it peaks at the lag ``d`` by which the frame's
content moved. The whole-pixel peak is refined by
Newton's method on the correlation's own Fourier series (the band-limited
interpolation of ``c``, exact for sampled stars of FWHM 2 px or more),
with no grid to quantise the answer and no filter to bias it.

The correlation's evidence decides whether to trust the lag: its height
over the correlation's noise, its contrast with the next peak, its width
(stars make a peak at least as wide as themselves; a pattern fixed on
the sensor makes one a pixel wide, at zero shift on the sensor), and
how well and how brightly the two boxes match where they overlap at
that lag (a bright star of one box lined up with a faint one of the
other makes a peak, but not the same light).
"""

from __future__ import annotations

import numpy as np

from ._detect import SPIKE, _prepare

#: a correlation peak under this many times the correlation's noise is not trusted
MIN_SNR = 8.0
#: the highest peak must exceed the next one by this factor
MIN_CONTRAST = 1.5
#: ``(c(d - 1) + c(d + 1)) / 2 c(d)`` along x or y under this: a peak one pixel wide
SHARP = 0.35
#: the boxes' light must correlate at least this well where they overlap (see ``_match``)
MIN_MATCH = 0.5
#: ... and be as bright within this factor (see ``_match``)
MAX_BRIGHTNESS = 3.0


def clean(pixels):
    """``(cleaned float64 box, pixel noise)``: background, pattern and sharp pixels removed."""
    resids, _, sigma, _ = _prepare([(0, np.asarray(pixels))], sharp=SPIKE)
    return resids[0].astype(np.float64), float(sigma)


def taper(shape):
    """A flat-topped window over ``shape``: a raised cosine over the outer eighth of each side."""
    out = []
    for n in shape:
        width = max(2, n // 8)
        edge = np.minimum(np.arange(n), n - 1 - np.arange(n)) / width
        out.append(np.where(edge >= 1, 1.0, 0.5 - 0.5 * np.cos(np.pi * np.clip(edge, 0, 1))))
    return out[0][:, None] * out[1][None, :]


def _signed(i, n):
    return i if i <= n // 2 else i - n


def _half_width(line, i):
    """Pixels from ``line[i]`` (a peak, circular) until the line falls under half of it."""
    n = line.size
    top = line[i]
    width = 0
    while width < n // 2 and line[(i + width + 1) % n] > top / 2 \
            and line[(i - width - 1) % n] > top / 2:
        width += 1
    return width


def overlap(shape_a, shape_b, lag):
    """Slices ``(of a, of b)`` of the pixels that ``a[y, x]`` and ``b[y + dy, x + dx]`` share.

    ``lag`` is ``[dx, dy]`` (whole pixels); ``shape_a`` and ``shape_b`` are
    ``(ny, nx)``. Empty slices when nothing overlaps.
    """
    dx, dy = lag
    (nya, nxa), (nyb, nxb) = shape_a, shape_b
    y0, y1 = max(0, -dy), min(nya, nyb - dy)
    x0, x1 = max(0, -dx), min(nxa, nxb - dx)
    y1, x1 = max(y1, y0), max(x1, x0)
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx))


def _match(a, b, lag, noise_a, noise_b, window):
    """How well the tapered boxes ``a`` and ``b`` match at the whole-pixel ``lag`` ([x, y]).

    Over the part of ``a`` that ``b`` covers at that lag, with ``E_a`` and
    ``E_b`` their energies (sums of squares) less their expected noise
    energies: ``(match, brightness)`` with ``match = sum(a b) / sqrt(E_a
    E_b)``, near 1 when ``b`` shows what ``a`` shows there, and
    ``brightness = sqrt(E_b / E_a)``, how much brighter that light is in
    ``b`` (the clouds' transmission for the same stars; far from 1 when a
    bright star of one box lines up with a faint one of the other, which
    all stars of one PSF match in shape). NaN when either holds nothing
    above its noise (5 sigma of the noise energy).
    """
    sa, sb = overlap(a.shape, b.shape, lag)
    pa, pb = a[sa], b[sb]
    wa, wb = window[sa], window[sb]
    n = pa.size
    if n == 0:
        return np.nan, np.nan
    ea = float(np.sum(pa * pa)) - noise_a**2 * float(np.sum(wa * wa))
    eb = float(np.sum(pb * pb)) - noise_b**2 * float(np.sum(wb * wb))
    floor_a = 5 * np.sqrt(2.0 * n) * noise_a**2 * float(np.mean(wa * wa))
    floor_b = 5 * np.sqrt(2.0 * n) * noise_b**2 * float(np.mean(wb * wb))
    if not (ea > floor_a and eb > floor_b):
        return np.nan, np.nan
    return float(np.sum(pa * pb)) / np.sqrt(ea * eb), float(np.sqrt(eb / ea))


def correlate(ref, frame, ref_noise, frame_noise, sensor_zero=(0, 0), expect=None,
              radius=None):
    """Lag of ``frame``'s content against ``ref`` (both cleaned, same shape), with evidence.

    Parameters
    ----------
    ref, frame : numpy.ndarray
        Boxes from :func:`clean`, ``[y, x]``.
    ref_noise, frame_noise : float
        Their pixel noise (from :func:`clean`).
    sensor_zero : (int, int)
        ``[x, y]`` lag at which the two boxes' pixels are the same sensor
        pixels (0 when both boxes are the same region of the sensor).
    expect, radius : optional
        ``[x, y]`` lag the star is expected at, and how far from it the
        peak may be (tracking); without them the whole plane is searched.

    Returns
    -------
    dict
        ``lag`` (``[x, y]``, sub-pixel, NaN when nothing correlates),
        ``snr`` (peak over the correlation's noise: the MAD of the lags
        within half a box), ``contrast`` (peak over the next peak),
        ``match`` (the first value of :func:`_match` at the peak), ``reason`` (empty when the
        lag can be trusted, else what was seen).
    """
    from scipy.fft import next_fast_len

    window = taper(ref.shape)
    # zero-padded to twice the box: no lag wraps around onto another
    shape = tuple(next_fast_len(2 * n, real=True) for n in ref.shape)
    ny, nx = shape
    spectrum = np.conj(np.fft.rfft2(ref * window, s=shape)) * np.fft.rfft2(frame * window,
                                                                           s=shape)
    cc = np.fft.irfft2(spectrum, s=shape)
    ly = np.array([_signed(i, ny) for i in range(ny)])[:, None]
    lx = np.array([_signed(i, nx) for i in range(nx)])[None, :]
    search = cc
    if expect is not None:
        inside = np.hypot(lx - expect[0], ly - expect[1]) <= radius
        search = np.where(inside, cc, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(search)), shape)
    top = float(cc[iy, ix])
    central = cc[(np.abs(ly) <= ref.shape[0] // 2)[:, 0]][:, (np.abs(lx) <= ref.shape[1] // 2)[0]]
    noise = 1.4826 * float(np.median(np.abs(central - np.median(central))))
    out = {"lag": np.array([np.nan, np.nan]), "snr": top / noise if noise > 0 else np.inf,
           "contrast": np.nan, "match": np.nan, "reason": ""}
    if not top > 0 or not out["snr"] >= MIN_SNR:
        out["reason"] = (f"no correlation above the noise (peak {out['snr']:.1f} times the "
                         f"correlation's noise, under {MIN_SNR:g})")
        return out
    hx, hy = _half_width(cc[iy], ix), _half_width(cc[:, ix], iy)
    exclude = 2 * max(hx, hy, 1) + 1
    far = np.hypot((lx - lx[0, ix] + nx // 2) % nx - nx // 2,
                   (ly - ly[iy, 0] + ny // 2) % ny - ny // 2) > exclude
    far &= np.isfinite(search)
    second = float(cc[far].max()) if far.any() else 0.0
    out["contrast"] = top / second if second > 0 else np.inf
    lag = (int(lx[0, ix]), int(ly[iy, 0]))
    spread = min((cc[iy, (ix - 1) % nx] + cc[iy, (ix + 1) % nx]) / (2 * top),
                 (cc[(iy - 1) % ny, ix] + cc[(iy + 1) % ny, ix]) / (2 * top))
    if spread < SHARP:
        if abs(lag[0] - sensor_zero[0]) <= 1 and abs(lag[1] - sensor_zero[1]) <= 1:
            out["reason"] = ("the correlation peaks at zero shift on the sensor and is one "
                             "pixel wide: a pattern fixed on the sensor outweighs the stars")
        else:
            out["reason"] = "the correlation peak is one pixel wide, narrower than any star"
        return out
    if out["contrast"] < MIN_CONTRAST:
        out["reason"] = (f"ambiguous correlation: a second peak reaches "
                         f"{1 / out['contrast']:.2f} of the highest")
        return out
    out["match"], brightness = _match(ref * window, frame * window, lag, ref_noise,
                                      frame_noise, window)
    if out["match"] < MIN_MATCH:
        out["reason"] = (f"the boxes do not match at the best lag: where they overlap, their "
                         f"light correlates at {out['match']:.0%} (under {MIN_MATCH:.0%})")
        return out
    if not 1 / MAX_BRIGHTNESS <= brightness <= MAX_BRIGHTNESS:
        out["reason"] = (f"the boxes do not match at the best lag: where they overlap, the "
                         f"frame's light is {brightness:.2g} times the reference's")
        return out
    out["lag"] = refine(spectrum, shape, lag)
    return out


def refine(spectrum, shape, lag, iterations=20):
    """Sub-pixel ``[x, y]`` maximum of the correlation near the whole-pixel ``lag``.

    Newton's method on ``c(p) = sum_k w_k Re(X_k exp(i k.p))``, the
    correlation's Fourier series from its half spectrum ``X`` (the
    Nyquist terms, whose sign is undefined, left out), with its exact
    gradient and Hessian. Steps are limited to half a pixel; when the
    iteration does not settle within a pixel of ``lag``, the parabola
    through the whole-pixel peak and its neighbours is used instead.
    """
    ny, nx = shape
    ky = 2 * np.pi * np.fft.fftfreq(ny)
    kx = 2 * np.pi * np.fft.rfftfreq(nx)
    weight = np.full(kx.size, 2.0)
    weight[0] = 1.0
    if nx % 2 == 0:
        weight[-1] = 0.0
    rows = np.ones(ny)
    if ny % 2 == 0:
        rows[ny // 2] = 0.0
    x_spec = spectrum * weight[None, :] * rows[:, None]
    p = np.array([float(lag[1]), float(lag[0])])  # [y, x] inside
    for _ in range(iterations):
        ex = np.exp(1j * kx * p[1])
        ey = np.exp(1j * ky * p[0])
        m0 = x_spec @ ex
        m1 = x_spec @ (ex * kx)
        m2 = x_spec @ (ex * kx * kx)
        s10, s20 = ey @ (m0 * ky), ey @ (m0 * ky * ky)
        s01, s02, s11 = ey @ m1, ey @ m2, ey @ (m1 * ky)
        grad = np.array([-s10.imag, -s01.imag])
        hess = -np.array([[s20.real, s11.real], [s11.real, s02.real]])
        if not (hess[0, 0] < 0 and np.linalg.det(hess) > 0):
            break
        step = np.linalg.solve(hess, grad)
        size = float(np.hypot(*step))
        if size > 0.5:
            step *= 0.5 / size
        p -= step
        if size < 1e-6:
            break
    if np.all(np.abs(p - [lag[1], lag[0]]) <= 1.0) and np.all(np.isfinite(p)):
        return np.array([p[1], p[0]])
    return _parabola(np.fft.irfft2(spectrum, s=shape), lag)


def _parabola(cc, lag):
    """``[x, y]``: the vertex of the parabolas through the whole-pixel peak and its neighbours."""
    ny, nx = cc.shape
    ix, iy = lag[0] % nx, lag[1] % ny
    out = []
    for line, i, n in ((cc[iy], ix, nx), (cc[:, ix], iy, ny)):
        a, b, c = line[(i - 1) % n], line[i], line[(i + 1) % n]
        den = a - 2 * b + c
        out.append(0.5 * (a - c) / den if den < 0 else 0.0)
    return np.array([lag[0] + out[0], lag[1] + out[1]])
