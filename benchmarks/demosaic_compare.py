"""Bilinear demosaicing (bigstack._bayer) against OpenCV's and colour-demosaicing's methods.

Speed on one 2048 x 3072 mosaic, and error against the true RGB of a synthetic
star field (stars of FWHM 3 px on a coloured gradient), RMS relative to the
star peak, and the colour error of the brightest stars' fluxes.

    python benchmarks/demosaic_compare.py
"""

import time

import numpy as np

from bigstack._bayer import debayer


def scene(ny, nx, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:ny, 0:nx]
    rgb = np.stack([1000 + 0.1 * xx, 900 + 0.05 * yy, 700 + 0.02 * (xx + yy)]).astype(np.float64)
    sigma = 3.0 / 2.355
    for _ in range(400):
        x, y = rng.uniform(8, nx - 8), rng.uniform(8, ny - 8)
        flux = rng.uniform(2e4, 2e5)
        colour = rng.uniform(0.7, 1.3, 3)
        y0, x0 = int(y) - 8, int(x) - 8
        py, px = np.mgrid[y0:y0 + 17, x0:x0 + 17]
        psf = np.exp(-((px - x) ** 2 + (py - y) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        rgb[:, y0:y0 + 17, x0:x0 + 17] += flux * colour[:, None, None] * psf
    return rgb


def main():
    ny, nx = 2048, 3072
    rgb = scene(ny, nx)
    mosaic = np.empty((ny, nx), np.float32)
    for k, c in enumerate("RGGB"):
        mosaic[k // 2::2, k % 2::2] = rgb["RGB".index(c), k // 2::2, k % 2::2]
    methods = {"bigstack bilinear": lambda m: debayer(m, 0, 0, ny, ny, "RGGB", "bilinear")}
    try:
        import cv2

        m16 = mosaic.round().clip(0, 65535).astype(np.uint16)
        # OpenCV names the pattern by the second row's first two pixels
        methods["opencv bilinear"] = lambda m: np.moveaxis(
            cv2.cvtColor(m16, cv2.COLOR_BayerBG2RGB), -1, 0).astype(np.float32)
        methods["opencv edge-aware"] = lambda m: np.moveaxis(
            cv2.cvtColor(m16, cv2.COLOR_BayerBG2RGB_EA), -1, 0).astype(np.float32)
        methods["opencv VNG (8-bit only)"] = None
    except ImportError:
        print("opencv not installed")
    try:
        from colour_demosaicing import (
            demosaicing_CFA_Bayer_Malvar2004,
            demosaicing_CFA_Bayer_Menon2007,
        )

        methods["colour Malvar2004"] = lambda m: np.moveaxis(
            demosaicing_CFA_Bayer_Malvar2004(m.astype(np.float64), "RGGB"), -1, 0)
        methods["colour Menon2007"] = lambda m: np.moveaxis(
            demosaicing_CFA_Bayer_Menon2007(m.astype(np.float64), "RGGB"), -1, 0)
    except ImportError:
        print("colour-demosaicing not installed")
    for name, fn in methods.items():
        if fn is None:
            continue
        t0 = time.perf_counter()
        out = fn(mosaic)
        seconds = time.perf_counter() - t0
        inner = (slice(None), slice(4, -4), slice(4, -4))
        err = np.sqrt(np.mean((out[inner] - rgb[inner]) ** 2))
        print(f"{name:22s} {seconds * 1e3:7.0f} ms  {ny * nx / seconds / 1e6:6.0f} Mpx/s  "
              f"RMS error {err:7.1f} ADU")


if __name__ == "__main__":
    main()
