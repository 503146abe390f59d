"""Small helpers shared by the tests."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
from astropy.io import fits


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
