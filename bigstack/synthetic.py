"""Synthetic night-sky frames with known truth, for tests, benchmarks and demos.

:func:`make_frames` writes a seeded set of frames to a folder, as a camera
on a slightly drifting mount would, and returns a :class:`Truth` holding
everything that went into them: the shift of every frame, the star list,
the hot pixels, the cosmic-ray hits, the satellite trails and the
noiseless image. :func:`make_tutorial_frames` makes five frames shaped
like those of the stacking tutorial the project started from.

Conventions
-----------
- Images are indexed ``[y, x]``; positions and shifts are written
  ``[x, y]``.
- Pixel ``(x, y)`` has its centre at the integer coordinates ``(x, y)``:
  the pixel index is the coordinate, and pixel ``[y, x]`` covers
  ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.
- ``shifts[i] = star_position_in_frame_i - star_position_in_frame_0``: a
  star at ``(x0, y0)`` in frame 0 is at ``(x0 + dx_i, y0 + dy_i)`` in frame
  ``i``. Frame 0 is the reference, ``shifts[0] == [0, 0]``.
- Row ``y`` of an array is row ``y`` of the file: FITS stores rows from
  the first (``y = 0``) on, PNG/JPEG/DNG from the top of the picture down,
  and nothing is flipped.

The model
---------
All levels are given in ADU of a 16-bit sensor ("sensor ADU"); a file's
pixel value is ``adu_scale`` times that (1 for 16-bit and float files,
1/128 for 8-bit files, which keeps the default reference star just below
255). A frame is, in this order:

1. sky: ``sky`` ADU with a linear gradient, fixed on the sensor;
2. stars: a power-law flux distribution plus one isolated reference star,
   each a Gaussian (or Moffat) PSF integrated over the pixels, at its
   frame-0 position plus the frame's shift;
3. a satellite trail in some frames and the hot pixels (fixed on the
   sensor, they do not drift with the stars);
4. noise: Poisson in electrons (``gain`` e-/ADU) plus Gaussian read noise;
5. cosmic-ray hits (1-4 pixel blobs, random in every frame);
6. rounding and clipping to the file's integer range (saturation).

Colour formats (PNG, JPEG) hold R, G, B planes each made as above, with a
coloured sky and slightly coloured stars whose colour factors have unit
luminance, so the grey frame ``0.2126 R + 0.7152 G + 0.0722 B`` equals the
monochrome model. DNG holds the RGGB Bayer mosaic of the colour frame,
with the noise drawn on the mosaic, as a sensor records it.

Random numbers come from :class:`numpy.random.Generator` streams derived
from the master ``seed`` per purpose and per frame, so frame ``i`` is the
same whatever ``n_frames`` is, and turning the trail on or off does not
change the noise of any frame.

Examples
--------
>>> import tempfile
>>> from bigstack import synthetic
>>> truth = synthetic.make_frames(tempfile.mkdtemp(), n_frames=3, shape=(128, 128))
>>> len(truth.paths), truth.shifts.shape
(3, (3, 2))
>>> truth.shifts[0].tolist()
[0.0, 0.0]
"""

from __future__ import annotations

import datetime as _dt
import errno
import io
import math
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

__all__ = [
    "GREY_WEIGHTS",
    "TUTORIAL_SHIFTS",
    "TUTORIAL_STARS",
    "Truth",
    "make_frames",
    "make_tutorial_frames",
]

#: Weights of R, G and B in the grey frame the project reads from colour files.
GREY_WEIGHTS = (0.2126, 0.7152, 0.0722)

#: ``[x, y]`` of the tutorial's reference star in each of its five frames.
TUTORIAL_STARS = ((397, 483), (399, 499), (418, 519), (441, 506), (462, 522))

#: The tutorial's shifts, ``[x, y]``: ``TUTORIAL_STARS[i] - TUTORIAL_STARS[0]``.
TUTORIAL_SHIFTS = tuple(
    (x - TUTORIAL_STARS[0][0], y - TUTORIAL_STARS[0][1]) for x, y in TUTORIAL_STARS
)

# format -> (file suffix, allowed dtypes, default dtype, colour planes drawn)
_FORMATS = {
    "fits": ("fit", ("uint16", "float32"), "uint16", 1),
    "png": ("png", ("uint8", "uint16"), "uint16", 3),
    "jpg": ("jpg", ("uint8",), "uint8", 3),
    "dng": ("dng", ("uint16",), "uint16", 3),
}
_MAXVAL = {"uint8": 255.0, "uint16": 65535.0}
_NOISE_MODELS = ("poisson", "gaussian", "none")

# Random stream keys: SeedSequence(seed, spawn_key=(_FIELD,)) for what all
# frames share, (_FRAME, i, purpose) for frame i.
_FIELD, _FRAME = 0, 1
_DRIFT, _NOISE, _COSMIC, _TRAIL = 0, 1, 2, 3

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------
# the truth


@dataclass(frozen=True, eq=False)
class Truth:
    """What :func:`make_frames` wrote: the files and the truth behind them.

    Positions and shifts are ``[x, y]``; pixel indices are given as
    ``(y, x)`` index arrays, ready for ``image[y, x]``. "File units" are
    the pixel values of the written files (grey ``0.2126 R + 0.7152 G +
    0.0722 B`` for PNG/JPEG, the raw mosaic for DNG); "sensor ADU" are the
    model's units, file units divided by ``params["adu_scale"]``.

    Attributes
    ----------
    paths : list of str
        The files written, in frame order (sorted names sort the same way).
    shifts : numpy.ndarray
        float64, shape ``(n_frames, 2)``, ``[x, y]`` per frame:
        ``star_in_frame_i - star_in_frame_0``; ``shifts[0] == [0, 0]``.
    stars : dict of numpy.ndarray
        The star list in frame-0 coordinates: ``x``, ``y`` (pixel
        coordinates), ``flux`` (total, sensor ADU) and ``r``, ``g``, ``b``
        (colour factors, unit luminance; unused by monochrome formats).
        Entry 0 is the reference star. Stars up to a margin outside frame 0
        are included, so that stars drift into view.
    ref_star : tuple of float
        ``(x, y)`` of the reference star in frame 0.
    ref_flux : float
        Total flux of the reference star, sensor ADU.
    clean : numpy.ndarray
        float32 ``(ny, nx)``: the noiseless frame 0 (sky and stars, no hot
        pixels, cosmic rays or trail) in file units, clipped like the file
        (not for float32 files). Grey for PNG/JPEG, the mosaic for DNG.
    hot_pixels : tuple of numpy.ndarray
        ``(y, x)`` sensor indices of the hot pixels, the same in every frame.
    hot_levels : numpy.ndarray
        Extra signal of each hot pixel, sensor ADU, the same in every frame.
    cosmic_rays : list of tuple of numpy.ndarray
        Per frame, the ``(y, x)`` indices of the pixels hit by cosmic rays.
    trail : list of tuple of numpy.ndarray
        Per frame, the ``(y, x)`` indices of the pixels the satellite trail
        raises by at least half its peak (empty arrays without a trail).
    trail_lines : list of dict or None
        Per frame, the trail's line: a point on it ``x``, ``y``, its
        ``angle`` (radians from the +x axis), ``peak`` (sensor ADU) and
        ``fwhm`` (pixels); None without a trail.
    dates : list of str
        DATE-OBS of every frame (ISO, UTC, start of the exposure).
    sky_sigma : float
        Standard deviation of the noise of one pixel at the mean sky level,
        in file units (grey for PNG/JPEG, mean over the Bayer cell for DNG),
        without the rounding to integers. :meth:`noise_map` gives it per
        pixel.
    params : dict
        Every parameter used, defaults resolved (``seed`` included, so
        ``make_frames(**params)``-style reproduction is possible).
    """

    paths: list
    shifts: np.ndarray
    stars: dict
    ref_star: tuple
    ref_flux: float
    clean: np.ndarray
    hot_pixels: tuple
    hot_levels: np.ndarray
    cosmic_rays: list
    trail: list
    trail_lines: list
    dates: list
    sky_sigma: float
    params: dict
    _scene: _Scene = field(repr=False)

    @property
    def n_frames(self) -> int:
        """Number of frames written."""
        return len(self.paths)

    def frame_clean(self, i: int, rgb: bool = False) -> np.ndarray:
        """Return the noiseless frame ``i`` in file units, float32 ``(ny, nx)``.

        Sky and stars at frame ``i``'s shift, clipped like the file (not for
        float32 files); no hot pixels, cosmic rays or trail. ``frame_clean(0)``
        equals :attr:`clean`.

        Parameters
        ----------
        i : int
            Frame index.
        rgb : bool, optional
            For PNG/JPEG, return the colour planes ``(ny, nx, 3)`` instead of
            the grey frame.
        """
        return self._scene.clean(self._frame_index(i), rgb=rgb)

    def noise_map(self, i: int) -> np.ndarray:
        """Return the standard deviation of the noise of frame ``i``, per pixel.

        float32 ``(ny, nx)`` in file units, from the frame's expected signal
        (sky, stars, hot pixels and trail) through the gain and read noise;
        rounding, clipping and cosmic rays are not included. Grey for
        PNG/JPEG (the planes' noises are independent).
        """
        return self._scene.noise_map(self._frame_index(i))

    def _frame_index(self, i):
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range 0..{self.n_frames - 1}")
        return i


# --------------------------------------------------------------------------
# helpers


def _stream(seed, *key) -> np.random.Generator:
    """The random generator for one purpose, derived from the master seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _unit_luminance(rgb) -> np.ndarray:
    """Scale colour factors (..., 3) so that their grey value is 1."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / (rgb @ np.asarray(GREY_WEIGHTS))[..., None]


def _positive(name, value, *, allow_zero=False):
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        sign = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {sign}, not {value!r}")
    return value


class _PSF:
    """Point-spread function: unit-flux stamps of ``2 * half + 1`` pixels a side."""

    def __init__(self, kind, fwhm, beta=2.5):
        self.kind = kind
        if kind == "gaussian":
            self.sigma = fwhm / _FWHM_PER_SIGMA
            self.half = max(2, math.ceil(4.0 * fwhm))
        else:
            self.beta = beta
            self.alpha = fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
            self.half = max(3, math.ceil(8.0 * fwhm))
        #: Fraction of the flux in the central pixel of a pixel-centred star.
        self.peak_fraction = float(self.stamps(np.zeros(1), np.zeros(1))[2][0].max())

    def stamps(self, xs, ys):
        """PSF stamps of unit flux: corner indices (iy, ix) and (n, 2h+1, 2h+1) stamps.

        A Gaussian is integrated exactly over each pixel (erf): pixel values
        are what a detector records, the flux is conserved, and for a
        sampled PSF (FWHM >= ~1.5 px) the intensity-weighted centroid is the
        star's position to < 1e-4 px. A Moffat profile is averaged over 5x5
        points per pixel (centroid within ~1e-3 px).
        """
        h = self.half
        ix = np.rint(xs).astype(np.int64)
        iy = np.rint(ys).astype(np.int64)
        if self.kind == "gaussian":
            edges = np.arange(-h, h + 2) - 0.5
            k = 1.0 / (self.sigma * math.sqrt(2.0))
            px = 0.5 * np.diff(erf((ix[:, None] + edges - xs[:, None]) * k), axis=1)
            py = 0.5 * np.diff(erf((iy[:, None] + edges - ys[:, None]) * k), axis=1)
            stamps = py[:, :, None] * px[:, None, :]
        else:
            ss = 5
            sub = (np.arange(ss) + 0.5) / ss - 0.5
            grid = (np.arange(-h, h + 1)[:, None] + sub[None, :]).ravel()
            beta, alpha = self.beta, self.alpha
            norm = (beta - 1.0) / (math.pi * alpha**2) / ss**2
            m = 2 * h + 1
            stamps = np.empty((xs.size, m, m))
            for a in range(0, xs.size, 16):  # bounded memory: 16 stars at a time
                b = min(a + 16, xs.size)
                gx = ix[a:b, None] + grid[None, :] - xs[a:b, None]
                gy = iy[a:b, None] + grid[None, :] - ys[a:b, None]
                r2 = gy[:, :, None] ** 2 + gx[:, None, :] ** 2
                prof = norm * (1.0 + r2 / alpha**2) ** (-beta)
                stamps[a:b] = prof.reshape(-1, m, ss, m, ss).sum(axis=(2, 4))
        return iy - h, ix - h, stamps


class _Scene:
    """Everything the frames share, and the rendering of one frame.

    Arrays are "planes": float32 ``(P, ny, nx)`` in sensor ADU, with P = 1
    (monochrome, or a Bayer mosaic) or P = 3 (R, G, B).
    """

    def __init__(self, p):
        self.p = p
        self.ny, self.nx = p["shape"]
        self.fmt = p["fmt"]
        self.dtype = p["dtype"]
        self.colour = _FORMATS[self.fmt][3] == 3
        self.scale = p["adu_scale"]
        self.gain = p["gain"]
        self.read_noise = p["read_noise"]
        self.shifts = p["shifts"]
        self.ref = p["ref_star"]
        self.psf = _PSF(p["psf"], p["fwhm"], p["moffat_beta"])
        field_rng = _stream(p["seed"], _FIELD)
        self._make_sky()
        self._make_stars(field_rng)
        self._make_hot_pixels(field_rng)

    # ---- shared parts -------------------------------------------------------

    def _make_sky(self):
        p = self.p
        gx, gy = p["gradient"]
        fx = np.linspace(-0.5, 0.5, self.nx) if self.nx > 1 else np.zeros(1)
        fy = np.linspace(-0.5, 0.5, self.ny) if self.ny > 1 else np.zeros(1)
        grey = p["sky"] * (1.0 + gx * fx[None, :] + gy * fy[:, None])
        if np.any(grey < 0):
            raise ValueError(f"gradient {p['gradient']} makes the sky negative")
        self.sky_colour = _unit_luminance(p["sky_colour"]) if self.colour else np.ones(1)
        self.sky = np.stack([(grey * c).astype(np.float32) for c in self.sky_colour])

    def _make_stars(self, rng):
        p = self.p
        ny, nx = self.ny, self.nx
        # first draw of the field stream: the drift direction (see _resolve)
        self.drift_angle = rng.uniform(0.0, 2.0 * math.pi)
        margin = math.ceil(p["star_margin"] * max(ny, nx))
        rx, ry = self.ref
        iso2 = p["ref_isolation"] ** 2
        area_in = nx * ny
        area_all = (nx + 2 * margin) * (ny + 2 * margin)
        n_in = int(p["n_stars"])
        n_out = round(n_in * (area_all - area_in) / area_in)

        def draw(n, lo_x, hi_x, lo_y, hi_y, outside):
            """n uniform positions in the box, inside or outside frame 0, off the ref disc."""
            xs, ys = np.empty(0), np.empty(0)
            for _round in range(1000):
                if xs.size >= n:
                    return xs[:n], ys[:n]
                m = 2 * (n - xs.size) + 8
                x = rng.uniform(lo_x, hi_x, m)
                y = rng.uniform(lo_y, hi_y, m)
                ok = (x - rx) ** 2 + (y - ry) ** 2 > iso2
                inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
                ok &= inside != outside
                xs, ys = np.concatenate([xs, x[ok]]), np.concatenate([ys, y[ok]])
            raise ValueError(
                f"cannot place {n} stars in a {(ny, nx)} frame outside "
                f"ref_isolation={p['ref_isolation']} px of the reference star"
            )

        x_in, y_in = draw(n_in, -0.5, nx - 0.5, -0.5, ny - 0.5, False)
        x_out, y_out = draw(
            n_out, -0.5 - margin, nx - 0.5 + margin, -0.5 - margin, ny - 0.5 + margin, True
        )
        n = n_in + n_out
        u = 1.0 - rng.random(n)  # (0, 1]
        flux = np.minimum(p["flux_min"] * u ** (-1.0 / p["flux_index"]), p["flux_max"])
        t = rng.uniform(-1.0, 1.0, n + 1)
        colours = _unit_luminance(np.stack([1 + 0.2 * t, np.ones_like(t), 1 - 0.2 * t], -1))

        ref_flux = p["ref_peak"] / self.psf.peak_fraction
        self.ref_flux = ref_flux
        self.stars = {
            "x": np.concatenate([[rx], x_in, x_out]),
            "y": np.concatenate([[ry], y_in, y_out]),
            "flux": np.concatenate([[ref_flux], flux]),
            "r": colours[:, 0],
            "g": colours[:, 1],
            "b": colours[:, 2],
        }
        if p["quiet_box"] is not None and p["quiet_flux_max"] is not None:
            self._quieten_stars()
        if self.colour:
            self.star_weights = colours * self.stars["flux"][:, None]
        else:
            self.star_weights = self.stars["flux"][:, None]

    def _quieten_stars(self):
        """Cap the stars that fall in the quiet box in any frame (not the reference)."""
        x0, x1, y0, y1 = self.p["quiet_box"]
        x, y, flux = self.stars["x"], self.stars["y"], self.stars["flux"]
        pad = 4 * self.p["fwhm"]
        inside = np.zeros(x.size, bool)
        for dx, dy in self.shifts:
            near_x = (x + dx > x0 - pad) & (x + dx < x1 + pad)
            inside |= near_x & (y + dy > y0 - pad) & (y + dy < y1 + pad)
        inside[0] = False
        flux[inside] = np.minimum(flux[inside], self.p["quiet_flux_max"])

    def _allowed(self, y, x, ref_xy):
        """Mask of sensor pixels where hot pixels and cosmic rays may go."""
        ok = np.ones(np.shape(x), bool)
        if self.p["protect_ref"]:
            rx, ry = ref_xy
            ok &= (x - rx) ** 2 + (y - ry) ** 2 > self.p["ref_isolation"] ** 2
        if self.p["quiet_box"] is not None:
            x0, x1, y0, y1 = self.p["quiet_box"]
            ok &= ~((x >= x0 - 3) & (x < x1 + 3) & (y >= y0 - 3) & (y < y1 + 3))
        return ok

    def _make_hot_pixels(self, rng):
        p = self.p
        n = int(p["hot_pixels"])
        picked = np.empty(0, np.int64)
        size = self.ny * self.nx
        tries = 0
        while picked.size < n and tries < 100:
            tries += 1
            cand = rng.integers(0, size, 2 * (n - picked.size) + 8)
            ok = self._allowed(cand // self.nx, cand % self.nx, self.ref)
            merged = np.concatenate([picked, cand[ok]])
            _, first = np.unique(merged, return_index=True)
            picked = merged[np.sort(first)]
        if picked.size < n:
            raise ValueError(f"cannot place {n} hot pixels away from the protected regions")
        picked = picked[:n]
        lo, hi = p["hot_level"]
        self.hot_y, self.hot_x = picked // self.nx, picked % self.nx
        self.hot_levels = np.exp(rng.uniform(math.log(lo), math.log(hi), picked.size))

    # ---- stars ----------------------------------------------------------

    def _add_stars(self, planes, dx, dy):
        ny, nx, h = self.ny, self.nx, self.psf.half
        xs = self.stars["x"] + dx
        ys = self.stars["y"] + dy
        vis = (xs > -h - 1) & (xs < nx + h) & (ys > -h - 1) & (ys < ny + h)
        idx = np.flatnonzero(vis)
        if idx.size == 0:
            return
        y0s, x0s, stamps = self.psf.stamps(xs[idx], ys[idx])
        weights = self.star_weights[idx].astype(np.float32)
        stamps = stamps.astype(np.float32)
        m = 2 * h + 1
        for k in range(idx.size):
            y0, x0 = int(y0s[k]), int(x0s[k])
            a, b = max(0, -y0), min(m, ny - y0)
            c, d = max(0, -x0), min(m, nx - x0)
            if a >= b or c >= d:
                continue
            stamp = stamps[k, a:b, c:d]
            for pl in range(planes.shape[0]):
                planes[pl, y0 + a : y0 + b, x0 + c : x0 + d] += stamp * weights[k, pl]

    # ---- per-frame parts ------------------------------------------------

    def cosmic_rays(self, i):
        """``(y, x, adu)`` of the cosmic-ray hits of frame ``i``."""
        p = self.p
        rng = _stream(p["seed"], _FRAME, i, _COSMIC)
        n = int(rng.poisson(p["cosmic_rays"])) if p["cosmic_rays"] > 0 else 0
        dx, dy = self.shifts[i]
        ref_xy = (self.ref[0] + dx, self.ref[1] + dy)
        hits = {}
        steps = ((0, 1), (0, -1), (1, 0), (-1, 0))
        lo, hi = p["cosmic_level"]
        for _ in range(n):
            for _attempt in range(100):
                y, x = int(rng.integers(self.ny)), int(rng.integers(self.nx))
                if self._allowed(np.array(y), np.array(x), ref_xy):
                    break
            else:
                continue
            size = int(rng.integers(1, 5))
            blob = [(y, x)]
            for _attempt in range(20):
                if len(blob) >= size:
                    break
                by, bx = blob[int(rng.integers(len(blob)))]
                sy, sx = steps[int(rng.integers(4))]
                new = (by + sy, bx + sx)
                if 0 <= new[0] < self.ny and 0 <= new[1] < self.nx and new not in blob:
                    blob.append(new)
            levels = np.exp(rng.uniform(math.log(lo), math.log(hi), len(blob)))
            for pix, level in zip(blob, levels, strict=True):
                hits[pix] = hits.get(pix, 0.0) + float(level)
        if not hits:
            empty = np.empty(0, np.int64)
            return empty, empty.copy(), np.empty(0)
        pix = sorted(hits)
        ys = np.array([q[0] for q in pix], np.int64)
        xs = np.array([q[1] for q in pix], np.int64)
        return ys, xs, np.array([hits[q] for q in pix])

    def trail_line(self, i):
        """The satellite trail of frame ``i`` as a dict, or None."""
        p = self.p
        rng = _stream(p["seed"], _FRAME, i, _TRAIL)
        u = rng.random()
        trail = p["trail"]
        if isinstance(trail, tuple):
            has = i in trail
        else:
            has = u < trail
        if not has:
            return None
        return {
            "x": float(rng.uniform(0.25, 0.75) * (self.nx - 1)),
            "y": float(rng.uniform(0.25, 0.75) * (self.ny - 1)),
            "angle": float(rng.uniform(0.0, math.pi)),
            "peak": p["trail_peak"],
            "fwhm": p["trail_fwhm"],
        }

    def trail_pixels(self, line):
        """``(y, x, adu)`` of the pixels a trail line raises."""
        sigma = line["fwhm"] / _FWHM_PER_SIGMA
        cos, sin = math.cos(line["angle"]), math.sin(line["angle"])
        if abs(cos) >= abs(sin):  # shallow: one run of rows per column
            along = np.arange(self.nx)
            centre = line["y"] + (along - line["x"]) * (sin / cos)
            proj = abs(cos)
        else:
            along = np.arange(self.ny)
            centre = line["x"] + (along - line["y"]) * (cos / sin)
            proj = abs(sin)
        w = math.ceil(4.0 * sigma / proj) + 1
        across = np.rint(centre)[:, None] + np.arange(-w, w + 1)[None, :]
        dist = (across - centre[:, None]) * proj
        adu = line["peak"] * np.exp(-0.5 * (dist / sigma) ** 2)
        along = np.broadcast_to(along[:, None], across.shape)
        if abs(cos) >= abs(sin):
            ys, xs = across, along
        else:
            ys, xs = along, across
        ys, xs = ys.astype(np.int64).ravel(), xs.astype(np.int64).ravel()
        adu = adu.ravel()
        keep = (ys >= 0) & (ys < self.ny) & (xs >= 0) & (xs < self.nx) & (adu > 1e-3)
        return ys[keep], xs[keep], adu[keep]

    def _mosaic(self, planes):
        """RGGB mosaic (1, ny, nx) of colour planes (3, ny, nx)."""
        out = np.empty((1, self.ny, self.nx), np.float32)
        out[0, 0::2, 0::2] = planes[0, 0::2, 0::2]
        out[0, 0::2, 1::2] = planes[1, 0::2, 1::2]
        out[0, 1::2, 0::2] = planes[1, 1::2, 0::2]
        out[0, 1::2, 1::2] = planes[2, 1::2, 1::2]
        return out

    def signal(self, i, extras=True):
        """Expected signal of frame ``i``, sensor ADU, planes as stored in the file."""
        planes = self.sky.copy()
        dx, dy = self.shifts[i]
        self._add_stars(planes, dx, dy)
        if self.fmt == "dng":
            planes = self._mosaic(planes)
        if extras:
            line = self.trail_line(i)
            if line is not None:
                ys, xs, adu = self.trail_pixels(line)
                planes[:, ys, xs] += adu.astype(np.float32)
            planes[:, self.hot_y, self.hot_x] += self.hot_levels.astype(np.float32)
        return planes

    def _noisy(self, planes, rng):
        """Add shot and read noise to ``planes`` (sensor ADU), in place."""
        mode = self.p["noise"]
        if mode == "none":
            return planes
        gain = self.gain
        rn = np.float32(self.read_noise)
        for pl in range(planes.shape[0]):
            plane = planes[pl]
            if mode == "poisson":
                lam = plane.astype(np.float64)
                lam *= gain
                np.maximum(lam, 0.0, out=lam)
                electrons = rng.poisson(lam).astype(np.float32)
                del lam
            else:
                electrons = np.maximum(plane, 0.0) * np.float32(gain)
                sd = np.sqrt(electrons)
                sd *= rng.standard_normal(plane.shape, dtype=np.float32)
                electrons += sd
                del sd
            if rn > 0:
                read = rng.standard_normal(plane.shape, dtype=np.float32)
                read *= rn
                electrons += read
                del read
            electrons *= np.float32(1.0 / gain)
            planes[pl] = electrons
        return planes

    def _to_file_values(self, planes):
        """Sensor ADU planes -> file values (scaled, rounded and clipped if integer)."""
        if self.dtype == "float32":
            return planes.astype(np.float32, copy=False)
        out = planes
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        np.rint(out, out=out)
        np.clip(out, 0.0, _MAXVAL[self.dtype], out=out)
        return out.astype(self.dtype)

    def render(self, i):
        """Frame ``i`` as written: file values (P, ny, nx) and the cosmic-ray hits."""
        planes = self.signal(i)
        planes = self._noisy(planes, _stream(self.p["seed"], _FRAME, i, _NOISE))
        ys, xs, adu = self.cosmic_rays(i)
        if ys.size:
            planes[:, ys, xs] += adu.astype(np.float32)
        return self._to_file_values(planes), (ys, xs)

    def clean(self, i, rgb=False):
        planes = self.signal(i, extras=False)
        planes *= np.float32(self.scale)
        if self.dtype != "float32":
            np.clip(planes, 0.0, _MAXVAL[self.dtype], out=planes)
        if self.colour and self.fmt != "dng":
            if rgb:
                return np.ascontiguousarray(np.moveaxis(planes, 0, -1))
            return self._grey(planes)
        return planes[0]

    def _grey(self, planes):
        w = [np.float32(v) for v in GREY_WEIGHTS]
        return planes[0] * w[0] + planes[1] * w[1] + planes[2] * w[2]

    def _sigma_adu(self, level):
        level = np.maximum(level, 0.0)
        return np.sqrt(level * self.gain + self.read_noise**2) / self.gain

    def noise_map(self, i):
        planes = self.signal(i)
        if self.p["noise"] == "none":
            return np.zeros((self.ny, self.nx), np.float32)
        sig = self._sigma_adu(planes) * np.float32(self.scale)
        if self.colour and self.fmt != "dng":
            w = np.asarray(GREY_WEIGHTS, np.float32)
            return np.sqrt(np.tensordot(w**2, sig**2, axes=1)).astype(np.float32)
        return sig[0].astype(np.float32)

    def sky_sigma(self):
        if self.p["noise"] == "none":
            return 0.0
        sky = self.p["sky"]
        if not self.colour:
            return float(self._sigma_adu(sky) * self.scale)
        var = self._sigma_adu(sky * self.sky_colour) ** 2
        if self.fmt == "dng":  # R, G, G, B pixels of the cell
            return float(math.sqrt((var[0] + 2 * var[1] + var[2]) / 4) * self.scale)
        return float(math.sqrt(np.dot(np.asarray(GREY_WEIGHTS) ** 2, var)) * self.scale)


# --------------------------------------------------------------------------
# drift, dates, files


def _drift(seed, n_frames, angle, drift_step, jitter, subpixel):
    """Shifts ``[x, y]`` of frames 0..n-1: a slow walk plus jitter.

    The walk moves ``drift_step`` pixels a frame in a direction that wanders
    by about 0.3 rad a frame around ``angle``; the jitter is Gaussian of
    standard deviation ``jitter`` per axis and does not accumulate. Frame
    i's steps come from frame i's own stream, so a shift does not depend on
    ``n_frames``.
    """
    shifts = np.zeros((n_frames, 2))
    walk = np.zeros(2)
    for i in range(1, n_frames):
        rng = _stream(seed, _FRAME, i, _DRIFT)
        theta = angle + 0.3 * rng.standard_normal()
        walk = walk + drift_step * np.array([math.cos(theta), math.sin(theta)])
        shifts[i] = walk + jitter * rng.standard_normal(2)
    if not subpixel:
        shifts = np.rint(shifts)
    shifts[0] = 0.0
    return shifts + 0.0  # no negative zeros


def _dates(start, n_frames, exptime, gap):
    t0 = _dt.datetime.fromisoformat(start)
    step = _dt.timedelta(seconds=exptime + gap)
    return [t0 + i * step for i in range(n_frames)]


def _fits_bytes(data, p, date, index):
    from astropy.io import fits

    header = fits.Header()
    header["IMAGETYP"] = ("Light Frame", "type of image")
    header["EXPTIME"] = (p["exptime"], "[s] exposure time")
    header["DATE-OBS"] = (date.isoformat(timespec="milliseconds"), "[UTC] start of exposure")
    header["FILTER"] = (p["filter"], "filter name")
    header["GAIN"] = (p["gain"], "[e-/ADU] conversion gain")
    header["EGAIN"] = (p["gain"], "[e-/ADU] conversion gain")
    header["RDNOISE"] = (p["read_noise"], "[e-] read noise")
    header["XBINNING"] = (1, "binning along x")
    header["YBINNING"] = (1, "binning along y")
    header["CCD-TEMP"] = (-10.0, "[C] sensor temperature")
    header["OBJECT"] = (p["object"], "target")
    header["INSTRUME"] = ("bigstack synthetic camera", "instrument")
    header["SWCREATE"] = ("bigstack.synthetic", "software that wrote the file")
    header["FRAMENO"] = (index, "frame number in the sequence")
    if p["dtype"] == "uint16":
        header["SATURATE"] = (65535, "[ADU] saturation level")
    hdu = fits.PrimaryHDU(data=data, header=header)
    buf = io.BytesIO()
    hdu.writeto(buf)
    return buf.getvalue()


def _write_bytes(path, payload, overwrite):
    try:
        with open(path, "wb" if overwrite else "xb") as f:
            f.write(payload)
    except FileExistsError as err:
        raise FileExistsError(
            errno.EEXIST, "file exists; pass overwrite=True to replace it", path
        ) from err


def _write_frame(scene, i, path, date):
    """Render frame ``i`` and write it; return its cosmic-ray hits."""
    p = scene.p
    values, cosmics = scene.render(i)
    fmt = p["fmt"]
    if fmt == "fits":
        _write_bytes(path, _fits_bytes(values[0], p, date, i), p["overwrite"])
    elif fmt in ("png", "jpg"):
        import imagecodecs

        rgb = np.ascontiguousarray(np.moveaxis(values, 0, -1))
        if fmt == "png":
            payload = imagecodecs.png_encode(rgb, **p["png_options"])
        else:
            payload = imagecodecs.jpeg8_encode(rgb, level=p["jpeg_quality"])
        _write_bytes(path, bytes(payload), p["overwrite"])
    else:  # dng
        from ._dng import write_dng

        write_dng(
            path,
            np.ascontiguousarray(values[0]),
            "RGGB",
            exptime=p["exptime"],
            datetime=date.replace(microsecond=0),
            overwrite=p["overwrite"],
        )
    return cosmics


# --------------------------------------------------------------------------
# public functions


def make_frames(
    directory,
    n_frames=10,
    shape=(512, 512),
    *,
    fmt="fits",
    dtype=None,
    seed=0,
    n_stars=300,
    fwhm=3.0,
    psf="gaussian",
    moffat_beta=2.5,
    ref_star=None,
    ref_peak=30000.0,
    ref_isolation=None,
    subpixel=False,
    drift_step=1.0,
    jitter=0.5,
    shifts=None,
    sky=1000.0,
    gradient=(0.2, 0.1),
    sky_colour=(1.15, 1.0, 0.8),
    flux_min=600.0,
    flux_index=1.0,
    flux_max=2.0e6,
    star_margin=0.25,
    read_noise=5.0,
    gain=1.5,
    noise="poisson",
    adu_scale=None,
    exptime=30.0,
    gap=2.0,
    start="2024-03-09T21:00:00",
    filter="L",
    object="synthetic field",
    hot_pixels=None,
    hot_level=(300.0, 30000.0),
    cosmic_rays=None,
    cosmic_level=(1000.0, 30000.0),
    trail=False,
    trail_peak=3000.0,
    trail_fwhm=None,
    protect_ref=True,
    quiet_box=None,
    quiet_flux_max=None,
    png_options=None,
    jpeg_quality=95,
    prefix="frame",
    overwrite=False,
    workers=None,
):
    """Write a seeded set of synthetic night-sky frames and return their truth.

    Images are indexed ``[y, x]``; every position and shift below is
    ``[x, y]``, and pixel ``[y, x]`` has its centre at coordinates
    ``(x, y)``. A star at ``(x0, y0)`` in frame 0 is at
    ``(x0 + dx_i, y0 + dy_i)`` in frame ``i``, where
    ``(dx_i, dy_i) = truth.shifts[i]``. Levels are in sensor ADU (see the
    module notes); file values are ``adu_scale`` times those.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write to; created if missing.
    n_frames : int
        Number of frames.
    shape : tuple of int
        ``(ny, nx)`` of every frame.
    fmt : {"fits", "png", "jpg", "dng"}
        File format: monochrome FITS; RGB colour PNG or JPEG; Bayer (RGGB)
        DNG camera RAW (needs ``bigstack._dng`` and ``tifffile``).
    dtype : {"uint16", "float32", "uint8"}, optional
        Pixel type: FITS ``uint16`` (BITPIX=16, BZERO=32768, as cameras
        write) or ``float32`` (BITPIX=-32, not rounded or clipped); PNG
        ``uint8`` or ``uint16``; JPEG ``uint8``; DNG ``uint16``. Default:
        ``uint8`` for JPEG, ``uint16`` otherwise.
    seed : int or None
        Master seed; None draws one (recorded in ``truth.params``).
    n_stars : int
        Field stars in frame 0's field of view (more are placed in a margin
        around it, at the same density, so stars drift into view). Flux is a
        power law, ``N(>F) ~ F**-flux_index`` from ``flux_min`` and capped
        at ``flux_max`` (total sensor ADU).
    fwhm : float
        PSF full width at half maximum, pixels.
    psf : {"gaussian", "moffat"}
        PSF profile; Moffat uses ``moffat_beta``.
    ref_star : tuple of float, optional
        ``(x, y)`` of the isolated bright reference star in frame 0. Default
        ``(nx // 2, ny // 2)``. No field star lies within ``ref_isolation``
        pixels of it, and (with ``protect_ref``) no hot pixel within that
        distance of its frame-0 position nor cosmic ray of its position in
        each frame.
    ref_isolation : float, optional
        Radius of that clear zone, pixels; default ``min(30, min(ny, nx) / 4)``.
    ref_peak : float
        Peak of the reference star above the sky (sensor ADU) when centred
        on a pixel; the default keeps it well below uint16 saturation.
    subpixel : bool
        Sub-pixel shifts; otherwise shifts are rounded to whole pixels.
    drift_step : float
        Pixels per frame of the slow walk (a wandering but persistent
        direction).
    jitter : float
        Standard deviation per axis of the frame-to-frame jitter, pixels.
    shifts : array_like, optional
        Use these ``(n_frames, 2)`` ``[x, y]`` shifts instead of drawing a
        drift; ``shifts[0]`` must be ``[0, 0]`` and, unless ``subpixel``,
        they must be whole numbers.
    sky : float
        Mean sky level, sensor ADU.
    gradient : tuple of float
        ``(gx, gy)``: the sky rises linearly by ``gx * sky`` from the left
        edge (x = 0) to the right one and by ``gy * sky`` from y = 0 to the
        last row. Fixed on the sensor.
    sky_colour : tuple of float
        R, G, B factors of the sky for colour formats (normalised to unit
        luminance).
    read_noise : float
        Gaussian read noise, electrons.
    gain : float
        Electrons per ADU.
    noise : {"poisson", "gaussian", "none"}
        Shot noise exact (Poisson in electrons), as a Gaussian of the same
        variance (faster), or no noise at all (not even read noise).
    adu_scale : float, optional
        File value per sensor ADU; default 1, or 1/128 for 8-bit files
        (the default reference star then peaks near 242 of 255, the sky near
        8, and the noise is mostly below one 8-bit step, as in camera JPEGs of
        a dark sky).
    exptime, gap : float
        Exposure time and the dead time between exposures, seconds.
    start : str
        ISO time of the start of frame 0 (UTC); DATE-OBS of frame i is
        ``start + i * (exptime + gap)``.
    filter, object : str
        FILTER and OBJECT header values.
    hot_pixels : int, optional
        Number of hot pixels (fixed sensor positions, the same in every
        frame, each with a fixed extra signal drawn log-uniformly in
        ``hot_level``). Default: one per 5000 pixels.
    cosmic_rays : float, optional
        Mean number of cosmic-ray hits per frame (Poisson), each a 1-4 pixel
        blob of log-uniform ``cosmic_level`` ADU per pixel. Default: 20 per
        million pixels (5 for 512 x 512).
    trail : bool, float or iterable of int
        Satellite trails: True puts one in a frame with probability 0.2, a
        float is that probability, an iterable lists the frames that have
        one. A trail is a straight line across the frame with a Gaussian
        cross-section of ``trail_fwhm`` (default ``fwhm``) and peak
        ``trail_peak`` ADU.
    protect_ref : bool
        Keep hot pixels and cosmic rays away from the reference star.
    quiet_box : tuple of int, optional
        ``(x0, x1, y0, y1)``, a sensor box (``x0 <= x < x1``) with no hot
        pixels or cosmic rays; with ``quiet_flux_max``, field stars that
        come near the box in any frame are capped at that flux (this makes
        frames depend on all the shifts).
    png_options : dict, optional
        Keyword arguments of ``imagecodecs.png_encode``; default
        ``{"level": 1, "strategy": 3, "filter": 16}`` (fast: noisy frames
        hardly compress, and level 6 is ten times slower for 1% smaller
        files).
    jpeg_quality : int
        JPEG quality.
    prefix : str
        File names are ``{prefix}-{i:04d}.{fit|png|jpg|dng}``.
    overwrite : bool
        Replace files of the same names; otherwise a FileExistsError names
        the first one found, before anything is written.
    workers : int, optional
        Threads that render and write frames (default: the number of CPUs,
        at most 8). The output does not depend on it.

    Returns
    -------
    Truth
        The files written and the truth behind them.

    Raises
    ------
    ValueError
        If a parameter is out of range or two of them do not fit together.
    FileExistsError
        If a file to write exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile
    >>> from astropy.io import fits
    >>> truth = make_frames(tempfile.mkdtemp(), n_frames=2, shape=(64, 64), n_stars=20)
    >>> fits.getdata(truth.paths[0]).dtype.name
    'uint16'
    >>> x, y = truth.ref_star
    >>> dx, dy = truth.shifts[1]
    >>> data = fits.getdata(truth.paths[1]).astype(float)
    >>> int(data[int(y + dy), int(x + dx)]) > 20000   # the star moved by the shift
    True
    """
    params = _resolve({k: v for k, v in locals().items() if k not in ("directory", "workers")})
    ny, nx = params["shape"]
    suffix = _FORMATS[params["fmt"]][0]
    directory = os.fspath(directory)
    paths = [
        os.path.join(directory, f"{params['prefix']}-{i:04d}.{suffix}") for i in range(n_frames)
    ]
    if not params["overwrite"]:
        for path in paths:
            if os.path.lexists(path):
                raise FileExistsError(
                    errno.EEXIST, "file exists; pass overwrite=True to replace it", path
                )
    if params["fmt"] == "dng":
        from . import _dng

        if ny % 2 or nx % 2 or min(ny, nx) < _dng.MIN_SIZE:
            raise ValueError(
                f"fmt='dng' needs even sides of at least {_dng.MIN_SIZE}, not shape {(ny, nx)}"
            )
    os.makedirs(directory, exist_ok=True)

    scene = _Scene(params)
    dates = _dates(params["start"], n_frames, params["exptime"], params["gap"])
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_frames))

    def job(i):
        return _write_frame(scene, i, paths[i], dates[i])

    if workers == 1:
        cosmics = [job(i) for i in range(n_frames)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            cosmics = list(pool.map(job, range(n_frames)))

    lines = [scene.trail_line(i) for i in range(n_frames)]
    trails = []
    for line in lines:
        if line is None:
            trails.append((np.empty(0, np.int64), np.empty(0, np.int64)))
        else:
            ys, xs, adu = scene.trail_pixels(line)
            core = adu >= 0.5 * line["peak"]
            trails.append((ys[core], xs[core]))

    return Truth(
        paths=paths,
        shifts=params["shifts"].copy(),
        stars={k: v.copy() for k, v in scene.stars.items()},
        ref_star=tuple(float(v) for v in params["ref_star"]),
        ref_flux=float(scene.ref_flux),
        clean=scene.clean(0),
        hot_pixels=(scene.hot_y.copy(), scene.hot_x.copy()),
        hot_levels=scene.hot_levels.copy(),
        cosmic_rays=cosmics,
        trail=trails,
        trail_lines=lines,
        dates=[d.isoformat(timespec="milliseconds") for d in dates],
        sky_sigma=scene.sky_sigma(),
        params=params,
        _scene=scene,
    )


def _resolve(p):
    """Check the parameters of :func:`make_frames` and fill in the defaults."""
    p = dict(p)
    n_frames = p["n_frames"]
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, not {n_frames!r}")
    p["n_frames"] = n_frames = int(n_frames)
    try:
        ny, nx = (int(v) for v in p["shape"])
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (ny, nx), not {p['shape']!r}") from None
    if ny < 8 or nx < 8:
        raise ValueError(f"shape must be at least (8, 8), not {(ny, nx)}")
    p["shape"] = (ny, nx)

    fmt = str(p["fmt"]).lower()
    if fmt in ("fit", "fts"):
        fmt = "fits"
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in _FORMATS:
        raise ValueError(f"fmt must be one of {tuple(_FORMATS)}, not {p['fmt']!r}")
    p["fmt"] = fmt
    _suffix, allowed, default_dtype, _planes = _FORMATS[fmt]
    dtype = default_dtype if p["dtype"] is None else np.dtype(p["dtype"]).name
    if dtype not in allowed:
        raise ValueError(f"fmt={fmt!r} takes dtype in {allowed}, not dtype={p['dtype']!r}")
    p["dtype"] = dtype
    if p["adu_scale"] is None:
        p["adu_scale"] = 1.0 / 128.0 if dtype == "uint8" else 1.0
    p["adu_scale"] = _positive("adu_scale", p["adu_scale"])

    if p["seed"] is None:
        p["seed"] = int(np.random.SeedSequence().entropy)
    if isinstance(p["seed"], bool) or not isinstance(p["seed"], (int, np.integer)):
        raise ValueError(f"seed must be a non-negative integer or None, not {p['seed']!r}")
    if p["seed"] < 0:
        raise ValueError(f"seed must be a non-negative integer or None, not {p['seed']!r}")
    p["seed"] = int(p["seed"])

    for name in ("fwhm", "ref_peak", "flux_min", "flux_max", "flux_index", "gain", "exptime"):
        p[name] = _positive(name, p[name])
    if p["ref_isolation"] is None:
        p["ref_isolation"] = min(30.0, 0.25 * min(ny, nx))
    for name in (
        "sky",
        "read_noise",
        "drift_step",
        "jitter",
        "gap",
        "ref_isolation",
        "trail_peak",
        "star_margin",
    ):
        p[name] = _positive(name, p[name], allow_zero=True)
    if p["psf"] not in ("gaussian", "moffat"):
        raise ValueError(f"psf must be 'gaussian' or 'moffat', not {p['psf']!r}")
    if p["psf"] == "moffat" and not float(p["moffat_beta"]) > 1.0:
        raise ValueError(f"moffat_beta must be > 1, not {p['moffat_beta']!r}")
    p["moffat_beta"] = float(p["moffat_beta"])
    if p["noise"] not in _NOISE_MODELS:
        raise ValueError(f"noise must be one of {_NOISE_MODELS}, not {p['noise']!r}")
    p["n_stars"] = int(p["n_stars"])
    if p["n_stars"] < 0:
        raise ValueError(f"n_stars must be >= 0, not {p['n_stars']}")
    p["gradient"] = tuple(float(v) for v in p["gradient"])
    p["sky_colour"] = tuple(float(v) for v in p["sky_colour"])
    if len(p["gradient"]) != 2 or len(p["sky_colour"]) != 3:
        raise ValueError("gradient must be (gx, gy) and sky_colour (r, g, b)")
    for name in ("hot_level", "cosmic_level"):
        lo, hi = (_positive(name, v) for v in p[name])
        if lo > hi:
            raise ValueError(f"{name} must be (low, high), not {p[name]!r}")
        p[name] = (lo, hi)
    if p["hot_pixels"] is None:
        p["hot_pixels"] = round(ny * nx / 5000)
    p["hot_pixels"] = int(p["hot_pixels"])
    if p["cosmic_rays"] is None:
        p["cosmic_rays"] = 20.0 * ny * nx / 1e6
    p["cosmic_rays"] = _positive("cosmic_rays", p["cosmic_rays"], allow_zero=True)
    if p["trail_fwhm"] is None:
        p["trail_fwhm"] = p["fwhm"]
    p["trail_fwhm"] = _positive("trail_fwhm", p["trail_fwhm"])
    trail = p["trail"]
    if trail is None or trail is False:
        p["trail"] = 0.0
    elif trail is True:
        p["trail"] = 0.2
    elif isinstance(trail, (float, int)) and not isinstance(trail, bool):
        if not 0.0 <= float(trail) <= 1.0:
            raise ValueError(f"a trail probability must lie in [0, 1], not {trail!r}")
        p["trail"] = float(trail)
    elif isinstance(trail, Iterable):
        p["trail"] = tuple(sorted(int(i) for i in trail))
    else:
        raise ValueError(f"trail must be a bool, a probability or frame indices, not {trail!r}")

    if p["ref_star"] is None:
        p["ref_star"] = (float(nx // 2), float(ny // 2))
    rx, ry = (float(v) for v in p["ref_star"])
    if not (0 <= rx <= nx - 1 and 0 <= ry <= ny - 1):
        raise ValueError(f"ref_star {p['ref_star']!r} ([x, y]) is outside the frame {(ny, nx)}")
    p["ref_star"] = (rx, ry)

    if p["shifts"] is None:
        angle = _stream(p["seed"], _FIELD).uniform(0.0, 2.0 * math.pi)  # = the scene's draw
        p["shifts"] = _drift(
            p["seed"], n_frames, angle, p["drift_step"], p["jitter"], p["subpixel"]
        )
    else:
        shifts = np.array(p["shifts"], dtype=np.float64)
        if shifts.shape != (n_frames, 2) or not np.all(np.isfinite(shifts)):
            raise ValueError(
                f"shifts must be finite [x, y] of shape ({n_frames}, 2), not {shifts.shape}"
            )
        if np.any(shifts[0] != 0):
            raise ValueError(
                f"shifts[0] must be [0, 0] (frame 0 is the reference), not {shifts[0]}"
            )
        if not p["subpixel"] and np.any(shifts != np.rint(shifts)):
            raise ValueError("shifts must be whole numbers unless subpixel=True")
        p["shifts"] = shifts + 0.0
    if p["quiet_box"] is not None:
        p["quiet_box"] = tuple(int(v) for v in p["quiet_box"])
    if p["quiet_flux_max"] is not None:
        p["quiet_flux_max"] = _positive("quiet_flux_max", p["quiet_flux_max"])
    p["subpixel"] = bool(p["subpixel"])
    p["protect_ref"] = bool(p["protect_ref"])
    p["overwrite"] = bool(p["overwrite"])
    p["jpeg_quality"] = int(p["jpeg_quality"])
    if p["png_options"] is None:
        p["png_options"] = {"level": 1, "strategy": 3, "filter": 16}
    p["png_options"] = dict(p["png_options"])
    p["prefix"] = str(p["prefix"])
    return p


def make_tutorial_frames(
    directory,
    *,
    shape=(2200, 3200),
    seed=0,
    n_stars=2000,
    prefix="ring",
    overwrite=False,
    **kwargs,
):
    """Write five uint16 FITS frames shaped like the stacking tutorial's.

    The tutorial crops its stack to ``right=3100, top=2100`` and finds its
    star with ``find_star(image, star_pos=[400, 500], search=200)``: the
    brightest pixel of the box ``300 <= x < 500, 400 <= y < 600`` is at
    :data:`TUTORIAL_STARS` (``[x, y]``) in frames 0..4, so the shifts are
    :data:`TUTORIAL_SHIFTS` ``[[0, 0], [2, 16], [21, 36], [44, 23], [65, 39]]``.

    These frames reproduce that: a bright reference star centred on those
    pixels (peak 50000 ADU above the sky), whole-pixel drift equal to those
    shifts, no hot pixel or cosmic ray in the box and no field star near it
    brighter than 40% of the reference peak.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write to.
    shape : tuple of int
        ``(ny, nx)``; the default leaves room for the tutorial's crop.
    seed, n_stars, prefix, overwrite
        As for :func:`make_frames`.
    **kwargs
        Passed to :func:`make_frames` (not ``fmt``, ``n_frames``,
        ``shifts``, ``ref_star``, ``subpixel``, ``quiet_box`` or
        ``quiet_flux_max``, which are fixed here). ``ref_peak`` defaults to
        50000.

    Returns
    -------
    Truth
    """
    fixed = ("n_frames", "shifts", "ref_star", "subpixel", "quiet_box", "quiet_flux_max", "fmt")
    clash = sorted(set(kwargs) & set(fixed))
    if clash:
        raise ValueError(f"make_tutorial_frames fixes {', '.join(clash)}; do not pass them")
    ref_peak = kwargs.pop("ref_peak", 50000.0)
    kwargs.setdefault("dtype", "uint16")
    kwargs.setdefault("trail", False)
    psf = _PSF(
        kwargs.get("psf", "gaussian"), kwargs.get("fwhm", 3.0), kwargs.get("moffat_beta", 2.5)
    )
    cap = 0.4 * ref_peak / psf.peak_fraction
    return make_frames(
        directory,
        n_frames=len(TUTORIAL_SHIFTS),
        shape=shape,
        fmt="fits",
        seed=seed,
        n_stars=n_stars,
        ref_star=TUTORIAL_STARS[0],
        ref_peak=ref_peak,
        subpixel=False,
        shifts=np.array(TUTORIAL_SHIFTS, dtype=np.float64),
        quiet_box=(300, 500, 400, 600),
        quiet_flux_max=cap,
        prefix=prefix,
        overwrite=overwrite,
        **kwargs,
    )
