"""Rendering of synthetic frames: the field, the geometry of each frame, noise, files.

Private to :mod:`bigstack.synthetic`, which documents the model. Everything
here works on the flat, resolved parameter dict ``p`` (``Truth.params``).
"""

from __future__ import annotations

import datetime as _dt
import errno
import io
import math
import threading
import zlib

import numpy as np
from scipy.special import erf

#: Weights of R, G and B in the grey frame the project reads from colour files.
GREY_WEIGHTS = (0.2126, 0.7152, 0.0722)

# format -> (file suffix, allowed dtypes, default dtype, colour planes drawn)
FORMATS = {
    "fits": ("fit", ("uint16", "float32"), "uint16", 1),
    "png": ("png", ("uint8", "uint16"), "uint16", 3),
    "jpg": ("jpg", ("uint8",), "uint8", 3),
    "dng": ("dng", ("uint16",), "uint16", 3),
    "tiff": ("tif", ("uint8", "uint16"), "uint16", 3),
}
MAXVAL = {"uint8": 255.0, "uint16": 65535.0}

# Random stream keys: SeedSequence(seed, spawn_key=(_FIELD,)) for the star
# field all frames share, (_FRAME, k, purpose) for light frame k, (_EXTRA,
# purpose) for the other shared parts and (_CALIB, set, j, purpose) for frame
# j of a set of calibration frames. Light frame i has k = frame_base + i,
# with frame_base 0 except for the second and later sets of lights of a night
# (p["frame_base"]). A new purpose gets a new key, so that adding a feature
# changes no existing frame.
_FIELD, _FRAME, _EXTRA, _CALIB = 0, 1, 2, 3
_DRIFT, _NOISE, _COSMIC, _TRAIL, _HOT_PATTERN_ON, _TEMPERATURE = 0, 1, 2, 3, 4, 5  # per frame
_SENSOR_PATTERN, _OTHER_FIELD, _HOT_PATTERN, _COLD, _DUST, _PRNU, _FILTER_DUST, _CLUSTER = range(8)

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def stream(seed, *key) -> np.random.Generator:
    """The random generator for one purpose, derived from the master seed."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def unit_luminance(rgb) -> np.ndarray:
    """Scale colour factors (..., 3) so that their grey value is 1."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return rgb / (rgb @ np.asarray(GREY_WEIGHTS))[..., None]


# --------------------------------------------------------------------------
# geometry


def rotation_matrix(degrees, scale=1.0):
    """``scale * R(degrees)``, exact for multiples of 90 degrees."""
    quarter, rest = divmod(float(degrees), 90.0)
    if rest == 0.0:
        c, s = ((1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))[int(quarter) % 4]
    else:
        rad = math.radians(degrees)
        c, s = math.cos(rad), math.sin(rad)
    return np.array([[c, -s], [s, c]]) * scale + 0.0


def drift(seed, n_frames, angle, drift_step, jitter, subpixel, frame_base=0):
    """Drift ``[x, y]`` of frames 0..n-1: a slow walk plus jitter.

    The walk moves ``drift_step`` pixels a frame in a direction that wanders
    by about 0.3 rad a frame around ``angle``; the jitter is Gaussian of
    standard deviation ``jitter`` per axis and does not accumulate. Frame
    i's steps come from frame i's own stream, so a shift does not depend on
    ``n_frames``.
    """
    shifts = np.zeros((n_frames, 2))
    walk = np.zeros(2)
    for i in range(1, n_frames):
        rng = stream(seed, _FRAME, frame_base + i, _DRIFT)
        theta = angle + 0.3 * rng.standard_normal()
        walk = walk + drift_step * np.array([math.cos(theta), math.sin(theta)])
        shifts[i] = walk + jitter * rng.standard_normal(2)
    if not subpixel:
        shifts = np.rint(shifts)
    shifts[0] = 0.0
    return shifts + 0.0  # no negative zeros


def geometry(p):
    """Per-frame geometry of the resolved parameters ``p``.

    Returns
    -------
    dict
        ``transforms`` (n, 2, 3), ``rotation`` (n,) degrees in (-180, 180],
        ``scale`` (n,), ``drift`` (n, 2) and ``shifts`` (n, 2): the
        displacement of the reference star, ``A @ ref + t - ref`` (``t``
        itself where ``A`` is the identity).
    """
    n = p["n_frames"]
    ny, nx = p["shape"]
    if p["transforms"] is not None:
        tr = np.array(p["transforms"], dtype=np.float64)
        a = tr[:, :, :2]
        rotation = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
        scale = np.sqrt(np.abs(a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]))
        shifts_d = tr[:, :, 2].copy()
    else:
        if p["shifts"] is not None:
            shifts_d = np.array(p["shifts"], dtype=np.float64) + 0.0
        else:
            angle = stream(p["seed"], _FIELD).uniform(0.0, 2.0 * math.pi)  # the field's first draw
            shifts_d = drift(p["seed"], n, angle, p["drift_step"], p["jitter"], p["subpixel"],
                             p.get("frame_base", 0))
        frames = np.arange(n)
        if p["rotation"] is not None:
            rotation = np.array(p["rotation"], dtype=np.float64)
        else:
            rotation = frames * p["rotation_rate"]
        if p["scale"] is not None:
            scale = np.array(p["scale"], dtype=np.float64)
        else:
            scale = 1.0 + frames * p["scale_rate"]
        if p["flip_at"] is not None:
            flipped = frames >= p["flip_at"]
            rotation = np.where(flipped, rotation + 180.0, rotation)
            shifts_d[flipped] += np.asarray(p["flip_offset"])
        centre = np.asarray(p["centre"])
        tr = np.zeros((n, 2, 3))
        for i in range(n):
            a = rotation_matrix(rotation[i], scale[i])
            tr[i, :, :2] = a
            tr[i, :, 2] = shifts_d[i] + (centre - a @ centre)  # exactly d_i when a = I
    rotation = (rotation + 180.0) % 360.0 - 180.0
    rotation[rotation == -180.0] = 180.0
    identity = np.all(tr[:, :, :2] == np.eye(2), axis=(1, 2))
    ref = np.asarray(p["ref_star"])
    shifts = np.empty((n, 2))
    for i in range(n):
        if identity[i]:
            shifts[i] = tr[i, :, 2]
        else:
            shifts[i] = tr[i, :, :2] @ ref + tr[i, :, 2] - ref
    return {"transforms": tr + 0.0, "rotation": rotation + 0.0, "scale": scale + 0.0,
            "drift": shifts_d, "shifts": shifts + 0.0, "identity": identity}


def apply_transform(transform, identity, x, y):
    """Positions ``A @ [x, y] + t`` (just ``[x + tx, y + ty]`` for the identity)."""
    if identity:
        return x + transform[0, 2], y + transform[1, 2]
    a = transform
    return a[0, 0] * x + a[0, 1] * y + a[0, 2], a[1, 0] * x + a[1, 1] * y + a[1, 2]


# --------------------------------------------------------------------------
# the PSF


class PSF:
    """Point-spread function: unit-flux stamps of ``2 * half + 1`` pixels a side."""

    def __init__(self, kind, fwhm, beta=2.5):
        self.kind = kind
        if kind == "gaussian":
            self.sigma = fwhm / FWHM_PER_SIGMA
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


# --------------------------------------------------------------------------
# the sensor


class SensorModel:
    """What the sensor adds to every frame: bias, dark current, amp glow, the flat field.

    Maps are float32 ``(ny, nx)`` in sensor ADU (the flat field: a factor),
    or None when the parameters make them zero (one) everywhere, in which
    case frames are rendered exactly as without a sensor model. The hot
    pixels (drawn by the scene) are dark current: ``Camera.hot_level`` is
    their signal in ``p["hot_exptime"]`` seconds at ``dark_reference``.
    """

    def __init__(self, p, hot_y, hot_x, hot_levels, pattern):
        self.p = p
        self.ny, self.nx = p["shape"]
        self.reference = float(p["dark_reference"])
        self.doubling = float(p["dark_doubling"])
        self.hot_exptime = float(p["hot_exptime"])
        self.hot_y, self.hot_x, self.hot_levels = hot_y, hot_x, hot_levels
        self.dark_current = float(p["dark_current"])
        if p["bias"] == 0.0:
            self.offset = pattern
        else:
            base = np.zeros((self.ny, self.nx), np.float32) if pattern is None else pattern
            self.offset = base + np.float32(p["bias"])
        self._make_dark()
        self._make_cold(hot_y * self.nx + hot_x)
        self.dust = self._donuts(stream(p["seed"], _EXTRA, _DUST), p["dust"])
        self._base = self._make_flat_base()
        self._flats = {}
        self._lock = threading.Lock()

    # ---- dark ------------------------------------------------------------

    def dark_scale(self, exptime, temperature):
        """Seconds of dark signal at the reference temperature an exposure gathers."""
        return exptime * 2.0 ** ((temperature - self.reference) / self.doubling)

    def _make_dark(self):
        """Dark current plus amp glow, ADU/s at the reference temperature (no hot pixels)."""
        p = self.p
        self.dark_map = None
        if p["dark_current"] == 0.0 and p["amp_glow"] == 0.0:
            return
        rate = np.full((self.ny, self.nx), p["dark_current"])
        if p["amp_glow"] > 0:
            corner = p["amp_glow_corner"]
            cx = self.nx - 1 if corner.endswith("right") else 0
            cy = self.ny - 1 if corner.startswith("top") else 0
            yy, xx = np.ogrid[: self.ny, : self.nx]
            dist = np.sqrt((xx - cx) ** 2.0 + (yy - cy) ** 2.0)
            length = p["amp_glow_size"] * math.hypot(self.ny, self.nx)
            rate += p["amp_glow"] * np.exp(-dist / length)
        self.dark_map = rate.astype(np.float32)

    def dark_rate(self):
        """Dark signal per second at the reference temperature, hot pixels included, float64."""
        rate = np.zeros((self.ny, self.nx))
        if self.dark_map is not None:
            rate += self.dark_map
        rate[self.hot_y, self.hot_x] += self.hot_levels / self.hot_exptime
        return rate

    def add_dark(self, planes, exptime, temperature, hot=True):
        """Add the dark signal of an exposure to ``planes`` (P, ny, nx), in place."""
        f = 2.0 ** ((temperature - self.reference) / self.doubling)
        if self.dark_map is not None and exptime > 0:
            planes += self.dark_map * np.float32(exptime * f)
        if hot and self.hot_y.size:
            scale = (exptime / self.hot_exptime) * f
            planes[:, self.hot_y, self.hot_x] += (self.hot_levels * scale).astype(np.float32)
        return planes

    # ---- flat field --------------------------------------------------------

    def _make_cold(self, hot):
        p = self.p
        self.cold_y = self.cold_x = np.empty(0, np.int64)
        self.cold_levels = np.empty(0)
        n = int(p["cold_pixels"])
        if n == 0:
            return
        rng = stream(p["seed"], _EXTRA, _COLD)
        size = self.ny * self.nx
        if n > size - hot.size:
            raise ValueError(f"Sensor.cold_pixels={n} does not fit in a {(self.ny, self.nx)} "
                             "frame beside the hot pixels")
        picked = np.empty(0, np.int64)
        while picked.size < n:
            cand = rng.integers(0, size, 2 * (n - picked.size) + 8)
            merged = np.concatenate([picked, cand[~np.isin(cand, hot)]])
            _, first = np.unique(merged, return_index=True)
            picked = merged[np.sort(first)]
        picked = picked[:n]
        lo, hi = p["cold_response"]
        self.cold_y, self.cold_x = picked // self.nx, picked % self.nx
        self.cold_levels = rng.uniform(lo, hi, n)

    def _donuts(self, rng, n):
        """``n`` dust donuts: dict of float64 arrays x, y, radius, inner, depth."""
        lo, hi = self.p["dust_radius"]
        dlo, dhi = self.p["dust_depth"]
        out = {k: np.empty(n) for k in ("x", "y", "radius", "inner", "depth")}
        for k in range(n):
            radius = rng.uniform(lo, hi)
            pad_x = min(radius + 2.0, (self.nx - 1) / 2.0)
            pad_y = min(radius + 2.0, (self.ny - 1) / 2.0)
            out["x"][k] = rng.uniform(pad_x, self.nx - 1 - pad_x)
            out["y"][k] = rng.uniform(pad_y, self.ny - 1 - pad_y)
            out["radius"][k] = radius
            out["inner"][k] = 0.45 * radius
            out["depth"][k] = rng.uniform(dlo, dhi)
        return out

    @staticmethod
    def ring(r, radius, inner):
        """The donut's profile (0 to 1) at distance ``r``: an annulus blurred by a Gaussian.

        The blur's sigma is ``0.6 + 0.02 * radius`` pixels; the profile is 1
        in the ring away from its edges and 0 at its centre and outside.
        """
        k = 1.0 / (math.sqrt(2.0) * (0.6 + 0.02 * radius))
        return 0.5 * (erf((radius - r) * k) - erf((inner - r) * k))

    def _shade(self, flat, donuts):
        """Multiply ``flat`` (float64, in place) by the donuts' shadows."""
        for x, y, radius, inner, depth in zip(donuts["x"], donuts["y"], donuts["radius"],
                                              donuts["inner"], donuts["depth"], strict=True):
            half = math.ceil(radius + 8.0)
            y0, y1 = max(0, math.floor(y) - half), min(self.ny, math.floor(y) + half + 1)
            x0, x1 = max(0, math.floor(x) - half), min(self.nx, math.floor(x) + half + 1)
            yy, xx = np.ogrid[y0:y1, x0:x1]
            r = np.sqrt((xx - x) ** 2.0 + (yy - y) ** 2.0)
            flat[y0:y1, x0:x1] *= 1.0 - depth * self.ring(r, radius, inner)

    def _make_flat_base(self):
        """Vignetting, sensor-window dust and pixel response, float64, or None if all one."""
        p = self.p
        if p["vignetting"] == 0.0 and p["dust"] == 0 and p["pixel_response"] == 0.0:
            return None
        flat = np.ones((self.ny, self.nx))
        if p["vignetting"] > 0:
            flat *= self.vignetting()
        self._shade(flat, self.dust)
        if p["pixel_response"] > 0:
            rng = stream(p["seed"], _EXTRA, _PRNU)
            flat *= 1.0 + p["pixel_response"] * rng.standard_normal((self.ny, self.nx))
        return flat

    def vignetting(self):
        """The smooth vignetting alone, float64 ``(ny, nx)`` (cos^4 law)."""
        p = self.p
        if p["vignetting"] == 0.0:
            return np.ones((self.ny, self.nx))
        cx, cy = p["vignetting_centre"]
        corner = math.hypot((self.nx - 1) / 2.0, (self.ny - 1) / 2.0)
        f = corner / math.sqrt((1.0 - p["vignetting"]) ** -0.5 - 1.0)
        yy, xx = np.ogrid[: self.ny, : self.nx]
        r2 = ((xx - cx) ** 2.0 + (yy - cy) ** 2.0) / f**2
        return (1.0 + r2) ** -2.0

    def filter_dust(self, name):
        """The dust donuts on filter ``name`` (same keys as :attr:`dust`)."""
        key = zlib.crc32(str(name).encode("utf-8"))
        return self._donuts(stream(self.p["seed"], _EXTRA, _FILTER_DUST, key),
                            self.p["filter_dust"])

    def flat_for(self, name):
        """The flat field through filter ``name``, float32 ``(ny, nx)``, or None if all one."""
        p = self.p
        if self._base is None and p["filter_dust"] == 0 and p["cold_pixels"] == 0:
            return None
        with self._lock:
            if name not in self._flats:
                flat = np.ones((self.ny, self.nx)) if self._base is None else self._base.copy()
                self._shade(flat, self.filter_dust(name))
                flat[self.cold_y, self.cold_x] = self.cold_levels
                self._flats[name] = flat.astype(np.float32)
            return self._flats[name]


# --------------------------------------------------------------------------
# the scene


class Scene:
    """Everything the frames share, and the rendering of one frame.

    Arrays are "planes": float32 ``(P, ny, nx)`` in sensor ADU, with P = 1
    (monochrome, or a Bayer mosaic) or P = 3 (R, G, B).
    """

    def __init__(self, p, geom, sensor=None):
        self.p = p
        self.frame_base = int(p.get("frame_base", 0))
        self.ny, self.nx = p["shape"]
        self.fmt = p["fmt"]
        self.dtype = p["dtype"]
        self.bayer = p.get("bayer")  # a Bayer FITS: colour planes stored as this mosaic
        self.colour = FORMATS[self.fmt][3] == 3 or self.bayer is not None
        self.mosaic = self.fmt == "dng" or self.bayer is not None
        self.scale = p["adu_scale"]
        self.gain = p["gain"]
        self.read_noise = p["read_noise"]
        self.transforms = geom["transforms"]
        self.identity = geom["identity"]
        self.ref = p["ref_star"]
        self.psf = PSF(p["psf"], p["fwhm"], p["moffat_beta"])
        self.clouds = dict(p["clouds"] or ())
        self.other_frames = frozenset(p["other_field"])
        field_rng = stream(p["seed"], _FIELD)
        self._make_sky()
        self._make_stars(field_rng)
        self._make_hot_pixels(field_rng)
        self._make_other_field()
        self._make_hot_pattern()
        self._make_sensor_pattern()
        self.sensor = sensor if sensor is not None else SensorModel(
            p, self.hot_y, self.hot_x, self.hot_levels, self.sensor_pattern
        )

    def key(self, i):
        """The stream key of light frame ``i``."""
        return self.frame_base + i

    def temperature(self, i):
        """CCD-TEMP of light frame ``i``: the set point, or near it with ``temperature_jitter``."""
        p = self.p
        jitter = p.get("temperature_jitter", 0.0)
        if not jitter:
            return p["temperature"]
        rng = stream(p["seed"], _FRAME, self.key(i), _TEMPERATURE)
        return round(p["temperature"] + jitter * float(rng.standard_normal()), 1) + 0.0

    # ---- shared parts -------------------------------------------------------

    def _make_sky(self):
        p = self.p
        gx, gy = p["gradient"]
        fx = np.linspace(-0.5, 0.5, self.nx) if self.nx > 1 else np.zeros(1)
        fy = np.linspace(-0.5, 0.5, self.ny) if self.ny > 1 else np.zeros(1)
        grey = p["sky"] * (1.0 + gx * fx[None, :] + gy * fy[:, None])
        if np.any(grey < 0):
            raise ValueError(f"Sky.gradient {p['gradient']} makes the sky negative")
        self.sky_grey = grey
        self.sky_colour = unit_luminance(p["sky_colour"]) if self.colour else np.ones(1)
        self.sky = np.stack([(grey * c).astype(np.float32) for c in self.sky_colour])

    def _place(self, n, sample, iso2, what):
        """``n`` positions drawn by ``sample(m)`` (``x, y, ok`` for ``m`` candidates) and kept
        where ``ok`` and off the reference star's disc (``iso2``: its radius squared)."""
        rx, ry = self.ref
        xs, ys = np.empty(0), np.empty(0)
        for _round in range(1000):
            if xs.size >= n:
                return xs[:n], ys[:n]
            x, y, ok = sample(2 * (n - xs.size) + 8)
            ok &= (x - rx) ** 2 + (y - ry) ** 2 > iso2
            xs, ys = np.concatenate([xs, x[ok]]), np.concatenate([ys, y[ok]])
        raise ValueError(f"cannot place {what} outside "
                         f"Stars.ref_isolation={self.p['ref_isolation']} px of the reference star")

    def _fluxes(self, rng, n):
        """``n`` star fluxes: a power law from ``flux_min``, capped at ``flux_max``."""
        p = self.p
        u = 1.0 - rng.random(n)  # (0, 1]
        return np.minimum(p["flux_min"] * u ** (-1.0 / p["flux_index"]), p["flux_max"])

    def _draw_positions(self, rng, n, outside, iso2):
        """``n`` uniform positions inside frame 0, or in the margin around it, off the ref disc."""
        ny, nx = self.ny, self.nx
        margin = math.ceil(self.p["star_margin"] * max(ny, nx))
        pad = margin if outside else 0
        lo_x, hi_x, lo_y, hi_y = -0.5 - pad, nx - 0.5 + pad, -0.5 - pad, ny - 0.5 + pad

        def sample(m):
            x = rng.uniform(lo_x, hi_x, m)
            y = rng.uniform(lo_y, hi_y, m)
            inside = (x >= -0.5) & (x < nx - 0.5) & (y >= -0.5) & (y < ny - 0.5)
            return x, y, inside != outside

        return self._place(n, sample, iso2, f"{n} stars in a {(ny, nx)} frame")

    def _draw_field(self, rng, iso2):
        """Field stars: positions inside and around frame 0, fluxes, colour factors."""
        ny, nx = self.ny, self.nx
        margin = math.ceil(self.p["star_margin"] * max(ny, nx))
        area_in = nx * ny
        area_all = (nx + 2 * margin) * (ny + 2 * margin)
        n_in = int(self.p["n_stars"])
        n_out = round(n_in * (area_all - area_in) / area_in)
        x_in, y_in = self._draw_positions(rng, n_in, False, iso2)
        x_out, y_out = self._draw_positions(rng, n_out, True, iso2)
        flux = self._fluxes(rng, n_in + n_out)
        return np.concatenate([x_in, x_out]), np.concatenate([y_in, y_out]), flux

    def _draw_cluster(self, rng, iso2):
        """``Stars.cluster``: Plummer-distributed positions (off the ref disc) and fluxes."""
        cluster = self.p["cluster"]
        n, a = int(cluster[0]), float(cluster[1])
        x0, y0 = cluster[2:] if len(cluster) == 4 else ((self.nx - 1) / 2, (self.ny - 1) / 2)

        def sample(m):
            u = rng.uniform(0.0, 1.0, m)
            r = a * np.sqrt(u / np.maximum(1.0 - u, 1e-12))  # projected Plummer: N(<r) = u
            phi = rng.uniform(0.0, 2.0 * math.pi, m)
            return x0 + r * np.cos(phi), y0 + r * np.sin(phi), np.ones(m, bool)

        xs, ys = self._place(n, sample, iso2, f"Stars.cluster's {n} stars")
        return xs, ys, self._fluxes(rng, n)

    def _field(self, x, y, flux, t):
        colours = unit_luminance(np.stack([1 + 0.2 * t, np.ones_like(t), 1 - 0.2 * t], -1))
        stars = {"x": x, "y": y, "flux": flux,
                 "r": colours[:, 0], "g": colours[:, 1], "b": colours[:, 2]}
        return stars, colours

    def _make_stars(self, rng):
        p = self.p
        # first draw of the field stream: the drift direction (see geometry)
        self.drift_angle = rng.uniform(0.0, 2.0 * math.pi)
        rx, ry = self.ref
        x, y, flux = self._draw_field(rng, p["ref_isolation"] ** 2)
        t = rng.uniform(-1.0, 1.0, flux.size + 1)
        self.ref_flux = p["ref_peak"] / self.psf.peak_fraction
        if p.get("cluster"):  # its own stream: the field's stars stay as they are
            crng = stream(p["seed"], _EXTRA, _CLUSTER)
            cx, cy, cflux = self._draw_cluster(crng, p["ref_isolation"] ** 2)
            x, y, flux = (np.concatenate(v) for v in ((x, cx), (y, cy), (flux, cflux)))
            t = np.concatenate([t, crng.uniform(-1.0, 1.0, cflux.size)])
        self.stars, colours = self._field(
            np.concatenate([[rx], x]), np.concatenate([[ry], y]),
            np.concatenate([[self.ref_flux], flux]), t,
        )
        if p["quiet_box"] is not None and p["quiet_flux_max"] is not None:
            self._quieten_stars()
        self.star_weights = self._weights(self.stars, colours)

    def _weights(self, stars, colours):
        if self.colour:
            return colours * stars["flux"][:, None]
        return stars["flux"][:, None]

    def _make_other_field(self):
        """Another part of the sky for the frames of ``other_field``: same density, no ref star."""
        self.other_stars = None
        if not self.p["other_field"]:
            return
        rng = stream(self.p["seed"], _EXTRA, _OTHER_FIELD)
        x, y, flux = self._draw_field(rng, -1.0)
        self.other_stars, colours = self._field(x, y, flux, rng.uniform(-1.0, 1.0, flux.size))
        self.other_weights = self._weights(self.other_stars, colours)

    def positions(self, i, x, y):
        """Positions in frame ``i`` of reference-grid positions ``x``, ``y``."""
        return apply_transform(self.transforms[i], self.identity[i], x, y)

    def field_of(self, i):
        """The star list shown in frame ``i`` and its weights (sensor ADU per plane)."""
        if i in self.other_frames:
            return self.other_stars, self.other_weights
        return self.stars, self.star_weights

    def transmission(self, i):
        return self.clouds.get(i, 1.0)

    def _quieten_stars(self):
        """Cap the stars that fall in the quiet box in any frame (not the reference)."""
        x0, x1, y0, y1 = self.p["quiet_box"]
        x, y, flux = self.stars["x"], self.stars["y"], self.stars["flux"]
        pad = 4 * self.p["fwhm"]
        inside = np.zeros(x.size, bool)
        for i in range(self.p["n_frames"]):
            xi, yi = self.positions(i, x, y)
            near_x = (xi > x0 - pad) & (xi < x1 + pad)
            inside |= near_x & (yi > y0 - pad) & (yi < y1 + pad)
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

    def _pick_pixels(self, rng, n, what, exclude=None):
        """``n`` distinct allowed sensor pixels (flat indices), in drawing order."""
        picked = np.empty(0, np.int64)
        size = self.ny * self.nx
        tries = 0
        while picked.size < n and tries < 100:
            tries += 1
            cand = rng.integers(0, size, 2 * (n - picked.size) + 8)
            ok = self._allowed(cand // self.nx, cand % self.nx, self.ref)
            if exclude is not None:
                ok &= ~np.isin(cand, exclude)
            merged = np.concatenate([picked, cand[ok]])
            _, first = np.unique(merged, return_index=True)
            picked = merged[np.sort(first)]
        if picked.size < n:
            raise ValueError(f"cannot place {n} {what} away from the protected regions")
        return picked[:n]

    def _make_hot_pixels(self, rng):
        picked = self._pick_pixels(rng, int(self.p["hot_pixels"]), "hot pixels")
        lo, hi = self.p["hot_level"]
        self.hot_y, self.hot_x = picked // self.nx, picked % self.nx
        self.hot_levels = np.exp(rng.uniform(math.log(lo), math.log(hi), picked.size))

    def _make_hot_pattern(self):
        p = self.p
        self.pattern_y = self.pattern_x = np.empty(0, np.int64)
        self.pattern_levels = np.empty(0)
        if p["hot_pattern"] == 0.0 or p["hot_pattern_pixels"] == 0:
            return
        rng = stream(p["seed"], _EXTRA, _HOT_PATTERN)
        fixed = self.hot_y * self.nx + self.hot_x
        picked = self._pick_pixels(rng, int(p["hot_pattern_pixels"]), "hot-pattern pixels",
                                   exclude=fixed)
        lo, hi = p["hot_pattern_level"]
        self.pattern_y, self.pattern_x = picked // self.nx, picked % self.nx
        self.pattern_levels = np.exp(rng.uniform(math.log(lo), math.log(hi), picked.size))

    def hot_pattern_on(self, i):
        """Whether frame ``i`` shows the hot-pixel pattern."""
        which = self.p["hot_pattern"]
        if self.pattern_y.size == 0:
            return False
        if isinstance(which, tuple):
            return i in which
        return bool(stream(self.p["seed"], _FRAME, self.key(i), _HOT_PATTERN_ON).random() < which)

    def _make_sensor_pattern(self):
        """Column and row offsets fixed on the sensor (sensor ADU), or None."""
        p = self.p
        self.columns = self.rows = None
        self.sensor_pattern = None
        if p["column_pattern"] == 0.0 and p["row_pattern"] == 0.0:
            return
        rng = stream(p["seed"], _EXTRA, _SENSOR_PATTERN)
        cols = rng.normal(0.0, p["column_pattern"], self.nx)
        rows = rng.normal(0.0, p["row_pattern"], self.ny)
        self.columns, self.rows = cols - cols.mean(), rows - rows.mean()
        self.sensor_pattern = (self.rows[:, None] + self.columns[None, :]).astype(np.float32)

    # ---- stars ----------------------------------------------------------

    def _add_stars(self, planes, i):
        ny, nx, h = self.ny, self.nx, self.psf.half
        stars, all_weights = self.field_of(i)
        xs, ys = self.positions(i, stars["x"], stars["y"])
        vis = (xs > -h - 1) & (xs < nx + h) & (ys > -h - 1) & (ys < ny + h)
        visible = np.flatnonzero(vis)
        m = 2 * h + 1
        chunk = max(1, 2_000_000 // (m * m))  # bounded memory: ~16 MB of stamps at a time
        gain = self.transmission(i)
        for start in range(0, visible.size, chunk):
            idx = visible[start : start + chunk]
            y0s, x0s, stamps = self.psf.stamps(xs[idx], ys[idx])
            weights = all_weights[idx]
            if gain != 1.0:
                weights = weights * gain
            weights = weights.astype(np.float32)
            stamps = stamps.astype(np.float32)
            for k in range(idx.size):
                y0, x0 = int(y0s[k]), int(x0s[k])
                a, b = max(0, -y0), min(m, ny - y0)
                c, d = max(0, -x0), min(m, nx - x0)
                if a >= b or c >= d:
                    continue
                stamp = stamps[k, a:b, c:d]
                for pl in range(planes.shape[0]):
                    planes[pl, y0 + a : y0 + b, x0 + c : x0 + d] += stamp * weights[k, pl]

    def _add_nebula(self, planes, i):
        """``Stars.nebula`` as frame ``i`` sees it (grey: the same ADU in every plane)."""
        nebula = self.p.get("nebula")
        if not nebula or i in self.other_frames:
            return
        peak, sigma = nebula[:2]
        x, y = nebula[2:] if len(nebula) == 4 else ((self.nx - 1) / 2, (self.ny - 1) / 2)
        fx, fy = self.positions(i, np.array([x]), np.array([y]))
        a = np.asarray(self.transforms[i], np.float64)[:, :2]
        s = sigma * (1.0 if self.identity[i] else math.sqrt(abs(np.linalg.det(a))))
        along_x = np.exp(-0.5 * ((np.arange(self.nx) - fx[0]) / s) ** 2)
        along_y = np.exp(-0.5 * ((np.arange(self.ny) - fy[0]) / s) ** 2)
        glow = (peak * self.transmission(i) * along_y[:, None] * along_x[None, :])
        planes += glow.astype(np.float32)[None]

    # ---- per-frame parts ------------------------------------------------

    def cosmic_rays(self, i):
        """``(y, x, adu)`` of the cosmic-ray hits of frame ``i``."""
        p = self.p
        rng = stream(p["seed"], _FRAME, self.key(i), _COSMIC)
        ref_xy = self.positions(i, self.ref[0], self.ref[1])
        return self._cosmic_hits(rng, p["cosmic_rays"], (self.ny, self.nx),
                                 lambda y, x: self._allowed(np.array(y), np.array(x), ref_xy))

    def _cosmic_hits(self, rng, mean, shape, allowed):
        """``(y, x, adu)`` of a Poisson(``mean``) number of hits in a frame of ``shape``."""
        ny, nx = shape
        n = int(rng.poisson(mean)) if mean > 0 else 0
        hits = {}
        steps = ((0, 1), (0, -1), (1, 0), (-1, 0))
        lo, hi = self.p["cosmic_level"]
        for _ in range(n):
            for _attempt in range(100):
                y, x = int(rng.integers(ny)), int(rng.integers(nx))
                if allowed(y, x):
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
                if 0 <= new[0] < ny and 0 <= new[1] < nx and new not in blob:
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

    def brightest_star(self, i):
        """Index (in frame ``i``'s star list) and ``[x, y]`` of its brightest star in the frame."""
        stars, _ = self.field_of(i)
        xs, ys = self.positions(i, stars["x"], stars["y"])
        inside = np.flatnonzero(
            (xs >= 0) & (xs <= self.nx - 1) & (ys >= 0) & (ys <= self.ny - 1)
        )
        if inside.size == 0:
            return None
        k = int(inside[np.argmax(stars["flux"][inside])])
        return k, float(xs[k]), float(ys[k])

    def trail_line(self, i):
        """The satellite trail of frame ``i`` as a dict, or None."""
        p = self.p
        rng = stream(p["seed"], _FRAME, self.key(i), _TRAIL)
        u = rng.random()
        trail = p["trail"]
        if isinstance(trail, tuple):
            has = i in trail
        else:
            has = u < trail
        if not has:
            return None
        line = {
            "x": float(rng.uniform(0.25, 0.75) * (self.nx - 1)),
            "y": float(rng.uniform(0.25, 0.75) * (self.ny - 1)),
            "angle": float(rng.uniform(0.0, math.pi)),
            "peak": p["trail_peak"],
            "fwhm": p["trail_fwhm"],
        }
        if p["trail_through_star"]:
            star = self.brightest_star(i)
            if star is not None:
                line["star"], line["x"], line["y"] = star
        return line

    def trail_pixels(self, line):
        """``(y, x, adu)`` of the pixels a trail line raises."""
        sigma = line["fwhm"] / FWHM_PER_SIGMA
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
        """Bayer mosaic (1, ny, nx) of colour planes (3, ny, nx): RGGB, or ``bayer``."""
        out = np.empty((1, self.ny, self.nx), np.float32)
        for k, colour in enumerate(self.bayer or "RGGB"):
            r, c = divmod(k, 2)
            out[0, r::2, c::2] = planes["RGB".index(colour), r::2, c::2]
        return out

    def signal(self, i, extras=True, sensor=True):
        """Expected signal of frame ``i``, sensor ADU, planes as stored in the file.

        Sky and stars (and, with ``extras``, the trail) times the flat field,
        plus the dark current and amp glow at the frame's exposure and
        temperature; with ``extras`` also the hot pixels and the hot-pixel
        pattern. Without ``sensor``: sky and stars (and trail) alone, what
        a perfect calibration gives. The bias is an offset added after the
        noise (see :meth:`render`). The sensor applies to the planes as
        stored (a Bayer mosaic pixel by pixel).
        """
        planes = self.sky.copy()
        self._add_stars(planes, i)
        self._add_nebula(planes, i)
        if self.mosaic:
            planes = self._mosaic(planes)
        if extras:
            line = self.trail_line(i)
            if line is not None:
                ys, xs, adu = self.trail_pixels(line)
                planes[:, ys, xs] += adu.astype(np.float32)
        if sensor:
            flat = self.sensor.flat_for(self.p["filter"])
            if flat is not None:
                planes *= flat
            self.sensor.add_dark(planes, self.p["exptime"], self.temperature(i), hot=extras)
        if extras:
            if self.hot_pattern_on(i):
                planes[:, self.pattern_y, self.pattern_x] += self.pattern_levels.astype(
                    np.float32
                )
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

    def _saturate(self, planes):
        if self.p["saturation"] is not None:
            np.minimum(planes, np.float32(self.p["saturation"]), out=planes)
        return planes

    def _to_file_values(self, planes):
        """Sensor ADU planes -> file values (scaled, rounded and clipped if integer)."""
        planes = self._saturate(planes)
        if self.dtype == "float32":
            out = planes.astype(np.float32, copy=False)
            if self.scale != 1.0:
                out *= np.float32(self.scale)
            return out
        out = planes
        if self.scale != 1.0:
            out *= np.float32(self.scale)
        np.rint(out, out=out)
        np.clip(out, 0.0, MAXVAL[self.dtype], out=out)
        return out.astype(self.dtype)

    def render(self, i):
        """Frame ``i`` as written: file values (P, ny, nx) and the cosmic-ray hits."""
        planes = self.signal(i)
        planes = self._noisy(planes, stream(self.p["seed"], _FRAME, self.key(i), _NOISE))
        if self.sensor.offset is not None:
            planes += self.sensor.offset
        ys, xs, adu = self.cosmic_rays(i)
        if ys.size:
            planes[:, ys, xs] += adu.astype(np.float32)
        return self._to_file_values(planes), (ys, xs)

    def clean(self, i, rgb=False):
        """Noiseless frame ``i`` in file units: (sky + stars) * flat + dark + bias, clipped.

        The dark signal here is the dark current and amp glow; the hot pixels
        are left out, as are the trail, cosmic rays and hot-pixel pattern.
        """
        planes = self.signal(i, extras=False)
        if self.sensor.offset is not None:
            planes += self.sensor.offset
        planes = self._saturate(planes)
        planes *= np.float32(self.scale)
        if self.dtype != "float32":
            np.clip(planes, 0.0, MAXVAL[self.dtype], out=planes)
        return self._as_image(planes, rgb)

    def expected(self, i):
        """Frame ``i`` without noise or cosmic rays, file units, float32 (P, ny, nx) as stored.

        Everything else the file holds: hot pixels, trail and hot-pixel
        pattern included; saturated and clipped like the file.
        """
        planes = self.signal(i)
        if self.sensor.offset is not None:
            planes += self.sensor.offset
        planes = self._saturate(planes)
        planes *= np.float32(self.scale)
        if self.dtype != "float32":
            np.clip(planes, 0.0, MAXVAL[self.dtype], out=planes)
        return planes

    def calibrated(self, i, rgb=False):
        """Sky and stars of frame ``i`` in file units: what a perfect calibration gives.

        Noiseless, not saturated or clipped, without flat field, dark signal,
        bias, trail, hot pixels or cosmic rays.
        """
        planes = self.signal(i, extras=False, sensor=False)
        planes *= np.float32(self.scale)
        return self._as_image(planes, rgb)

    def _as_image(self, planes, rgb):
        """Planes (P, ny, nx) -> the image as read: grey (or RGB) for colour files, the plane."""
        if self.colour and not self.mosaic:
            if rgb:
                return np.ascontiguousarray(np.moveaxis(planes, 0, -1))
            return self._grey(planes)
        return planes[0]

    # ---- calibration frames ----------------------------------------------

    def calibration_signal(self, exptime, temperature, level=0.0, filter_name=None):
        """Expected signal of a calibration frame, sensor ADU, (1, ny, nx) float32.

        A uniform light of ``level`` ADU times the flat field of
        ``filter_name`` (none for bias and dark frames), plus the dark
        signal (hot pixels included) of ``exptime`` seconds at
        ``temperature``. The bias is an offset added after the noise.
        """
        planes = np.zeros((1, self.ny, self.nx), np.float32)
        if level > 0:
            flat = self.sensor.flat_for(filter_name)
            planes[0] = np.float32(level) if flat is None else flat * np.float32(level)
        return self.sensor.add_dark(planes, exptime, temperature)

    def _readout(self, planes, roi, binning):
        """The signal and offset of a region of interest, binned: ((1, my, mx), (my, mx))."""
        offset = self.sensor.offset
        if offset is None:
            offset = np.zeros((self.ny, self.nx), np.float32)
        if roi is not None:
            ry, rx = roi
            planes, offset = planes[:, :ry, :rx], offset[:ry, :rx]
        if binning > 1:
            b = binning
            my, mx = offset.shape[0] // b, offset.shape[1] // b
            planes = planes[:, : my * b, : mx * b].reshape(1, my, b, mx, b).mean(axis=(2, 4))
            offset = offset[: my * b, : mx * b].reshape(my, b, mx, b).mean(axis=(1, 3))
        return (np.ascontiguousarray(planes, dtype=np.float32),
                np.ascontiguousarray(offset, dtype=np.float32))

    def calibration_expected(self, exptime, temperature, level=0.0, filter_name=None, roi=None,
                             binning=1):
        """Noiseless calibration frame, file units, float32, saturated and clipped like the file."""
        planes = self.calibration_signal(exptime, temperature, level, filter_name)
        planes, offset = self._readout(planes, roi, binning)
        planes += offset
        planes = self._saturate(planes)
        planes *= np.float32(self.scale)
        if self.dtype != "float32":
            np.clip(planes, 0.0, MAXVAL[self.dtype], out=planes)
        return planes[0]

    def render_calibration(self, key, exptime, temperature, level=0.0, filter_name=None,
                           roi=None, binning=1):
        """A bias, dark or flat frame as written: file values (my, mx) and its cosmic-ray hits.

        ``key`` identifies the frame's random streams (the set and the
        frame in it). Cosmic rays hit at ``Artefacts.cosmic_rays`` per
        ``p["hot_exptime"]`` seconds of exposure.
        """
        p = self.p
        planes = self.calibration_signal(exptime, temperature, level, filter_name)
        planes, offset = self._readout(planes, roi, binning)
        rng = stream(p["seed"], _CALIB, *key, _NOISE)
        if planes.any():
            planes = self._noisy(planes, rng)
        elif p["noise"] != "none" and self.read_noise > 0:  # no electrons: read noise alone
            read = rng.standard_normal(planes.shape, dtype=np.float32)
            planes += read * np.float32(self.read_noise / self.gain)
        planes += offset
        shape = offset.shape
        mean = p["cosmic_rays"] * exptime / p["hot_exptime"]
        rng = stream(p["seed"], _CALIB, *key, _COSMIC)
        ys, xs, adu = self._cosmic_hits(rng, mean, shape, lambda y, x: True)
        if ys.size:
            planes[:, ys, xs] += adu.astype(np.float32)
        return self._to_file_values(planes)[0], (ys, xs)

    def _grey(self, planes):
        w = [np.float32(v) for v in GREY_WEIGHTS]
        return planes[0] * w[0] + planes[1] * w[1] + planes[2] * w[2]

    def sigma_adu(self, level):
        """Noise (sensor ADU) of a pixel of expected signal ``level`` (sensor ADU)."""
        level = np.maximum(level, 0.0)
        return np.sqrt(level * self.gain + self.read_noise**2) / self.gain

    def noise_map(self, i):
        planes = self.signal(i)
        if self.p["noise"] == "none":
            return np.zeros((self.ny, self.nx), np.float32)
        sig = self.sigma_adu(planes) * np.float32(self.scale)
        if self.colour and not self.mosaic:
            w = np.asarray(GREY_WEIGHTS, np.float32)
            return np.sqrt(np.tensordot(w**2, sig**2, axes=1)).astype(np.float32)
        return sig[0].astype(np.float32)

    def sky_sigma(self):
        if self.p["noise"] == "none":
            return 0.0
        sky = self.p["sky"]
        dark = 0.0
        if self.sensor.dark_current:  # the uniform dark current, where the flat field is 1
            dark = self.sensor.dark_current * self.sensor.dark_scale(
                self.p["exptime"], self.p["temperature"])
        if not self.colour:
            return float(self.sigma_adu(sky + dark) * self.scale)
        var = self.sigma_adu(sky * self.sky_colour + dark) ** 2
        if self.mosaic:  # R, G, G, B pixels of the cell
            return float(math.sqrt((var[0] + 2 * var[1] + var[2]) / 4) * self.scale)
        return float(math.sqrt(np.dot(np.asarray(GREY_WEIGHTS) ** 2, var)) * self.scale)


# --------------------------------------------------------------------------
# dates and files


def dates(start, n_frames, exptime, gap):
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
    header["CCD-TEMP"] = (p["temperature"], "[C] sensor temperature")
    header["OBJECT"] = (p["object"], "target")
    header["INSTRUME"] = ("bigstack synthetic camera", "instrument")
    header["SWCREATE"] = ("bigstack.synthetic", "software that wrote the file")
    header["FRAMENO"] = (index, "frame number in the sequence")
    if p.get("bayer"):
        header["BAYERPAT"] = (p["bayer"], "Bayer cell, top row first")
        header["XBAYROFF"] = (0, "Bayer pattern x offset")
        header["YBAYROFF"] = (0, "Bayer pattern y offset")
        header["ROWORDER"] = ("TOP-DOWN", "order of the stored rows")
    saturate = None
    if p["dtype"] == "uint16":
        saturate = 65535
    if p["saturation"] is not None:
        level = p["saturation"] * p["adu_scale"]
        saturate = level if saturate is None else min(saturate, math.floor(level))
    if saturate is not None:
        header["SATURATE"] = (saturate, "[ADU] saturation level")
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


def write_frame(scene, i, path, date):
    """Render frame ``i`` and write it; return its cosmic-ray hits."""
    p = scene.p
    values, cosmics = scene.render(i)
    fmt = p["fmt"]
    if fmt == "fits":
        _write_bytes(path, _fits_bytes(values[0], p, date, i), p["overwrite"])
    elif fmt in ("png", "jpg"):
        import imagecodecs

        rgb = np.ascontiguousarray(np.moveaxis(values, 0, -1))
        from ._files import mark_jpeg, mark_png

        if fmt == "png":
            payload = mark_png(imagecodecs.png_encode(rgb, **p["png_options"]))
        else:
            payload = mark_jpeg(imagecodecs.jpeg8_encode(rgb, level=p["jpeg_quality"]))
        _write_bytes(path, bytes(payload), p["overwrite"])
    elif fmt == "tiff":  # RGB, uncompressed strips, as converters and stackers write
        import tifffile

        from ._files import SOFTWARE

        rgb = np.ascontiguousarray(np.moveaxis(values, 0, -1))
        with open(path, "wb" if p["overwrite"] else "xb") as f:
            tifffile.imwrite(f, rgb, photometric="rgb", software=SOFTWARE,
                             datetime=date.replace(microsecond=0))
    else:  # dng
        from ._dng import write_dng

        write_dng(
            path,
            np.ascontiguousarray(values[0]),
            p.get("bayer") or "RGGB",
            exptime=p["exptime"],
            datetime=date.replace(microsecond=0),
            overwrite=p["overwrite"],
        )
    return cosmics
