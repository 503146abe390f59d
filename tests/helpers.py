"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage


class _Counter:
    value = 0


def _rchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


@contextlib.contextmanager
def bytes_read():
    """Count the bytes this process reads through system calls (Linux ``rchar``).

    This is the kernel's count, independent of bigstack's own code. It
    includes reads of ``/proc/self/io`` itself, which are measured once
    and subtracted.
    """
    probe0 = _rchar()
    probe1 = _rchar()
    overhead = probe1 - probe0
    counter = _Counter()
    start = _rchar()
    yield counter
    counter.value = _rchar() - start - overhead


def write_fits(path, data, *, bzero=None, bscale=None, **header) -> Path:
    """Write ``data`` as a FITS primary HDU with astropy (the reference writer)."""
    path = Path(path)
    hdu = fits.PrimaryHDU(np.array(data))  # a copy: astropy scales in place
    if bzero is not None or bscale is not None:
        hdu.scale("int16", bzero=bzero or 0.0, bscale=bscale or 1.0)
    for key, value in header.items():
        hdu.header[key.replace("_", "-")] = value
    hdu.writeto(path)
    return path


@contextlib.contextmanager
def raise_if_dask_computes(max_computes=0):
    """Fail when dask computes more than ``max_computes`` times inside the block.

    Proves that building a graph (``stack`` without a store, ``compute=False``)
    reads no pixels: every dask compute goes through this scheduler.
    """
    import dask

    count = [0]

    def scheduler(dsk, keys, **kwargs):
        count[0] += 1
        if count[0] > max_computes:
            raise RuntimeError(f"dask computed {count[0]} time(s) (allowed {max_computes})")
        return dask.get(dsk, keys, **kwargs)

    with dask.config.set(scheduler=scheduler):
        yield


def render_stars(shape, x, y, flux, fwhm, *, psf="gaussian", beta=2.5, out=None):
    """Add pixel-integrated stars to an image (the reference renderer of the tests).

    ``x``, ``y`` are ``[x, y]`` pixel coordinates (pixel centres at
    integers), ``flux`` the total flux of each star, ``fwhm`` in pixels.
    Gaussian stars are integrated exactly over each pixel (error
    functions); Moffat stars are sampled on a 5 x 5 grid per pixel.
    """
    from scipy.special import erf

    image = np.zeros(shape, np.float64) if out is None else out
    ny, nx = image.shape
    x, y, flux = (np.atleast_1d(np.asarray(v, np.float64)) for v in (x, y, flux))
    fwhm = float(fwhm)
    if psf == "gaussian":
        s = fwhm / (2 * np.sqrt(2 * np.log(2)))
        half = int(np.ceil(5 * s)) + 1
    else:
        alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
        half = int(np.ceil(6 * fwhm)) + 1
    for xi, yi, fi in zip(x, y, flux, strict=True):
        ix, iy = int(round(xi)), int(round(yi))
        xs = np.arange(max(ix - half, 0), min(ix + half + 1, nx))
        ys = np.arange(max(iy - half, 0), min(iy + half + 1, ny))
        if xs.size == 0 or ys.size == 0:
            continue
        if psf == "gaussian":
            c = np.sqrt(2) * s
            px = 0.5 * (erf((xs + 0.5 - xi) / c) - erf((xs - 0.5 - xi) / c))
            py = 0.5 * (erf((ys + 0.5 - yi) / c) - erf((ys - 0.5 - yi) / c))
            image[ys[:, None], xs[None, :]] += fi * py[:, None] * px[None, :]
        else:
            sub = (np.arange(5) + 0.5) / 5 - 0.5
            gx = (xs[:, None] + sub[None, :]).ravel() - xi
            gy = (ys[:, None] + sub[None, :]).ravel() - yi
            r2 = gx[None, :] ** 2 + gy[:, None] ** 2
            prof = (beta - 1) / (np.pi * alpha**2) * (1 + r2 / alpha**2) ** -beta / 25
            stamp = prof.reshape(ys.size, 5, xs.size, 5).sum(axis=(1, 3))
            image[ys[:, None], xs[None, :]] += fi * stamp
    return image


def similarity(rotation_deg=0.0, scale=1.0, flip=False, shift=(0.0, 0.0), centre=(0.0, 0.0)):
    """2 x 3 ``[A | t]`` of a turn by ``rotation_deg`` and ``scale`` about ``centre``.

    With ``flip`` the x axis is mirrored first; ``shift`` is added last.
    Maps reference pixels to frame pixels: ``frame = A @ ref + t``.
    """
    th = np.radians(rotation_deg)
    A = scale * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    if flip:
        A = A @ np.diag([-1.0, 1.0])
    c = np.asarray(centre, np.float64)
    return np.column_stack([A, c - A @ c + np.asarray(shift, np.float64)])


def sky_field(seed, n, extent, flux_min=1.0, index=1.0):
    """Random stars ``(x, y, flux)`` over ``extent = (x0, x1, y0, y1)``; ``N(>F) ~ F**-index``."""
    rng = np.random.default_rng(seed)
    x0, x1, y0, y1 = extent
    x = rng.uniform(x0, x1, n)
    y = rng.uniform(y0, y1, n)
    flux = flux_min * rng.uniform(1e-3, 1.0, n) ** (-1.0 / index)
    return x, y, flux


def scattered_stars(shape, n, seed, margin=30, separation=25.0):
    """``n`` stars at uniform random positions at least ``separation`` px apart (not on a
    grid: a grid's stars share columns, and the column pattern's estimate takes their light)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    x = rng.uniform(margin, nx - margin, 4 * n)
    y = rng.uniform(margin, ny - margin, 4 * n)
    keep = [0]
    for k in range(1, x.size):
        if len(keep) == n:
            break
        if np.min(np.hypot(x[keep] - x[k], y[keep] - y[k])) >= separation:
            keep.append(k)
    return x[keep], y[keep]


def glow_with_noise(glow, seed=9, gain=2.0):
    """A smooth glow (ADU) and its photon noise at ``gain`` electrons per ADU, float32."""
    noise = np.random.default_rng(seed).normal(0.0, 1.0, glow.shape) * np.sqrt(glow / gain)
    return (glow + noise).astype(np.float32)


def render_frame(shape, stars, matrix, fwhm, *, seed, noise=10.0, sky=1000.0, gradient=30.0,
                 pattern=0.0, hot=0, hot_level=(50.0, 5000.0), cosmics=0, sensor_seed=99,
                 transparency=1.0, trail=None, psf="gaussian"):
    """A raw frame of the sky ``stars`` seen through ``matrix`` (reference -> frame).

    ``stars`` is ``(x, y, flux)`` in reference pixels. Sensor features
    (fixed per ``sensor_seed``): a column pattern of ``pattern`` ADU rms
    (and a row pattern of a third of it), ``hot`` hot pixels. Per frame:
    Gaussian noise, ``cosmics`` cosmic rays (1-4 pixel blobs), a satellite
    ``trail = (x, y, angle_deg, peak, fwhm)``. Returns float32 ``[y, x]``.
    """
    rng = np.random.default_rng(seed)
    srng = np.random.default_rng(sensor_seed)
    ny, nx = shape
    x, y, flux = (np.asarray(v, np.float64) for v in stars)
    m = np.asarray(matrix, np.float64)
    fx = m[0, 0] * x + m[0, 1] * y + m[0, 2]
    fy = m[1, 0] * x + m[1, 1] * y + m[1, 2]
    pad = 4 * fwhm
    inside = (fx > -pad) & (fx < nx + pad) & (fy > -pad) & (fy < ny + pad)
    image = render_stars(shape, fx[inside], fy[inside], flux[inside] * transparency, fwhm,
                         psf=psf)
    image += sky + gradient * (np.linspace(0, 1, nx)[None, :] + np.linspace(0, 1, ny)[:, None])
    if pattern:
        image += srng.normal(0, pattern, nx)[None, :] + srng.normal(0, pattern / 3, ny)[:, None]
    if hot:
        hy, hx = srng.integers(0, ny, hot), srng.integers(0, nx, hot)
        image[hy, hx] += np.exp(srng.uniform(np.log(hot_level[0]), np.log(hot_level[1]), hot))
    if trail is not None:
        image += trail_image(shape, *trail)
    image += rng.normal(0.0, noise, shape)
    for _ in range(int(cosmics)):
        cy, cx = rng.integers(1, ny - 2), rng.integers(1, nx - 2)
        h, w = rng.integers(1, 3, 2)
        image[cy:cy + h, cx:cx + w] += rng.uniform(200, 5000)
    return image.astype(np.float32)


def trail_image(shape, x, y, angle_deg, peak, fwhm):
    """A satellite trail: a straight line through ``[x, y]`` at ``angle_deg`` from +x.

    Gaussian across (``peak``, ``fwhm`` px), constant along; float64 ``[y, x]``.
    """
    ny, nx = shape
    yy, xx = np.mgrid[:ny, :nx]
    th = np.radians(angle_deg)
    dist = (xx - x) * np.sin(th) - (yy - y) * np.cos(th)
    return peak * np.exp(-0.5 * (dist / (fwhm / 2.3548)) ** 2)


def transform_error(found, truth, xy):
    """Distances (px) between where ``found`` and ``truth`` (2 x 3 each) map points ``xy``."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    a = xy @ np.asarray(found)[:, :2].T + np.asarray(found)[:, 2]
    b = xy @ np.asarray(truth)[:, :2].T + np.asarray(truth)[:, 2]
    return np.hypot(*(a - b).T)


# --------------------------------------------------------------------------
# references for warping a frame by a 2x3 transform (plain numpy and scipy)


def rotation(degrees, scale=1.0, flip=False):
    th = math.radians(degrees)
    A = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    if flip:
        A[:, 0] = -A[:, 0]
    return A


def about_centre(A, shape, shift=(0.0, 0.0)):
    """``t`` so that ``A`` turns the frame about its centre, then shifts by ``shift`` [x, y]."""
    ny, nx = shape
    c = np.array([(nx - 1) / 2, (ny - 1) / 2])
    return c - A @ c + np.asarray(shift, float)


def source_points(A, t, y0, h, x0, w):
    """Source coordinates of the output pixels, in float64 as the module documents."""
    yy, xx = np.mgrid[y0:y0 + h, x0:x0 + w].astype(np.float64)
    sx = A[0, 0] * xx + (A[0, 1] * yy + t[0])
    sy = A[1, 0] * xx + (A[1, 1] * yy + t[1])
    return sx, sy


def reference_scipy(frame, A, t, y0, h, x0, w, order):
    """scipy's interpolation of order 0 or 1, and the documented coverage rule."""
    ny, nx = frame.shape
    sx, sy = source_points(A, t, y0, h, x0, w)
    values = ndimage.map_coordinates(frame.astype(np.float64), [sy, sx], order=order,
                                     mode="nearest")
    if order == 0:
        ix, iy = np.floor(sx + 0.5), np.floor(sy + 0.5)
        covered = (ix >= 0) & (ix <= nx - 1) & (iy >= 0) & (iy <= ny - 1)
    else:
        covered = (sx >= 0) & (sx <= nx - 1) & (sy >= 0) & (sy <= ny - 1)
    return values, covered


def lanczos_kernel(d, a):
    """sinc(d) sinc(d / a) inside (-a, a); exactly 0 at the non-zero integers."""
    d = np.asarray(d, np.float64)
    zero = (np.abs(d) >= a) | ((d == np.round(d)) & (d != 0))
    return np.where(zero, 0.0, np.sinc(d) * np.sinc(d / a))


def reference_pixels(frame, A, t, y0, h, x0, w, interpolation, clamp=True):
    """Plain numpy, pixel by pixel: the documented interpolation, NaN rule and clamp."""
    ny, nx = frame.shape
    sx, sy = source_points(A, t, y0, h, x0, w)
    values = np.full((h, w), np.nan)
    for r in range(h):
        for j in range(w):
            values[r, j] = reference_pixel(frame, sx[r, j], sy[r, j], interpolation, clamp)
    return values


def reference_pixel(frame, x, y, interpolation, clamp):
    ny, nx = frame.shape
    if interpolation == "nearest":
        ix, iy = math.floor(x + 0.5), math.floor(y + 0.5)
        if 0 <= ix < nx and 0 <= iy < ny:
            return float(frame[iy, ix])
        return np.nan
    if not (0 <= x <= nx - 1 and 0 <= y <= ny - 1):
        return np.nan
    ix, iy = math.floor(x), math.floor(y)
    fx, fy = x - ix, y - iy
    if interpolation == "bilinear":
        taps = [0, 1]
        wx, wy = np.array([1 - fx, fx]), np.array([1 - fy, fy])
    else:
        a = int(interpolation[-1])
        taps = list(range(-a + 1, a + 1))
        wx = lanczos_kernel(fx - np.array(taps), a)
        wy = lanczos_kernel(fy - np.array(taps), a)
        wx, wy = wx / wx.sum(), wy / wy.sum()
    cols = np.clip(ix + np.array(taps), 0, nx - 1)
    rows = np.clip(iy + np.array(taps), 0, ny - 1)
    patch = frame[np.ix_(rows, cols)].astype(np.float64)
    weights = np.outer(wy, wx)
    used = weights != 0
    if np.isnan(patch[used]).any():
        return np.nan
    value = float((weights[used] * patch[used]).sum())
    if clamp and interpolation.startswith("lanczos"):
        value = dering(value, patch, used, a)
    return value


DERING = 0.01  # bigstack._kernels._DERING


def dering(value, patch, used, a):
    """Lanczos' clamp, as documented in ``bigstack._kernels``, over the window of taps with a
    non-zero weight (``used``, 2a x 2a): an undershoot below its minimum by more than
    ``DERING`` of its range is raised to the minimum; a value above the maximum of its
    inner 4 x 4 (tap offsets -1 .. 2; on an axis with a zero fraction, the one tap) is
    lowered to it when the window's maximum lies outside them."""
    window = patch[used]
    lo, hi = float(window.min()), float(window.max())
    offsets = np.arange(2 * a) - (a - 1)
    near = (offsets >= -1) & (offsets <= 2)
    inner = np.outer(near, near) & used  # offset 0, the one tap of a zero fraction, is near
    inner_hi = float(patch[inner].max())
    if lo - value > np.float32(DERING) * (hi - lo):
        value = lo
    if inner_hi < hi and value > inner_hi:
        value = inner_hi
    return value
