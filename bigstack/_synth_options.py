"""The option groups of :func:`bigstack.synthetic.make_frames`, as small validated dataclasses.

Each group is frozen and checks itself when made: a bad value raises a
ValueError naming the field (``Stars.fwhm must be ...``). Checks that need
the frame size or the number of frames (a reference star outside the
frame, ``Motion.shifts`` of the wrong length) are made by ``make_frames``,
and name the field too.

Sequences are stored as tuples, so the groups are hashable and compare by
value. ``None`` means "the default that depends on the frame" and is
resolved by ``make_frames`` (the resolved values are in ``Truth.params``).

Growing without a redesign: a new field gets a default that leaves today's
frames unchanged and, if it draws random numbers, a stream of its own (see
``_synth_scene``). The sensor's calibration truth is the group
:class:`Sensor` (bias level -- its column structure is ``Camera.column_pattern``
--, dark current scaled by exposure and temperature, amp glow, the flat
field with vignetting, dust and cold pixels); :class:`Lights`,
:class:`Darks`, :class:`Flats` and :class:`Bias` describe the sets of frames
of a night for ``make_night``. Colour goes in as ``Camera`` fields (the
Bayer pattern, today fixed to RGGB for DNG) and a ``Stars`` field for the
colour distribution (today a fixed spread around white); the sensor applies
to the planes as stored, so a Bayer mosaic takes it pixel by pixel.
"""

from __future__ import annotations

import datetime as _dt
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields, replace

import numpy as np

__all__ = [
    "Artefacts",
    "Bias",
    "Camera",
    "Darks",
    "Flats",
    "Lights",
    "Motion",
    "Sensor",
    "Sky",
    "Stars",
    "options_from_dict",
]

NOISE_MODELS = ("poisson", "gaussian", "none")
PSF_KINDS = ("gaussian", "moffat")
CORNERS = ("bottom-left", "bottom-right", "top-left", "top-right")


# --------------------------------------------------------------------------
# validators: each returns the normalised value or raises naming ``where``


def _number(where, value, *, low=None, low_open=False, high=None, high_open=False):
    """A finite float within the given bounds."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number, not {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(out):
        raise ValueError(f"{where} must be a finite number, not {value!r}")
    if low is not None and (out < low or (low_open and out == low)):
        raise ValueError(f"{where} must be {'>' if low_open else '>='} {low}, not {value!r}")
    if high is not None and (out > high or (high_open and out == high)):
        raise ValueError(f"{where} must be {'<' if high_open else '<='} {high}, not {value!r}")
    return out


def _optional_number(where, value, **bounds):
    return None if value is None else _number(where, value, **bounds)


def _count(where, value, *, low=0):
    """An integer >= ``low`` (numpy integers and whole floats are not taken for it)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{where} must be an integer >= {low}, not {value!r}")
    return int(value)


def _tuple(where, value, n, what):
    """``n`` finite floats."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {what}, not {value!r}") from None
    if len(out) != n or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{where} must be {what}, not {value!r}")
    return out


def _level_range(where, value):
    """``(low, high)`` with ``0 < low <= high``."""
    lo, hi = _tuple(where, value, 2, "(low, high)")
    if not 0 < lo <= hi:
        raise ValueError(f"{where} must be (low, high) with 0 < low <= high, not {value!r}")
    return lo, hi


def _choice(where, value, choices):
    if value not in choices:
        raise ValueError(f"{where} must be one of {choices}, not {value!r}")
    return value


def _frame_list(where, value):
    """Sorted unique frame indices >= 0."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{where} must list frame indices, not {value!r}")
    out = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"{where} must list frame indices (integers >= 0), not {value!r}")
        out.append(int(v))
    return tuple(sorted(set(out)))


def _frames_or_probability(where, value, true_probability):
    """A probability per frame (bool -> 0 or ``true_probability``) or a list of frames."""
    if value is None or value is False:
        return 0.0
    if value is True:
        return true_probability
    if isinstance(value, (float, int, np.floating, np.integer)):
        return _number(where, value, low=0.0, high=1.0)
    return _frame_list(where, value)


def _array(where, value, shape_tail, what):
    """A finite float64 array ``(n, *shape_tail)``, n >= 1."""
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be {what}, not {value!r}") from None
    if arr.ndim != 1 + len(shape_tail) or arr.shape[1:] != shape_tail or arr.shape[0] < 1:
        raise ValueError(f"{where} must be {what}, not an array of shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{where} must be finite")
    return arr + 0.0  # no negative zeros


def _frozen(arr):
    """Nested tuples of an array (hashable, compares by value)."""
    return tuple(_frozen(a) for a in arr) if arr.ndim > 1 else tuple(float(v) for v in arr)


def _set(obj, name, value):
    object.__setattr__(obj, name, value)


# --------------------------------------------------------------------------
# the groups


@dataclass(frozen=True)
class Sky:
    """The sky background, fixed on the sensor.

    Parameters
    ----------
    level : float
        Mean sky level, sensor ADU (>= 0).
    gradient : tuple of float
        ``(gx, gy)``: the sky rises linearly by ``gx * level`` from the left
        edge (x = 0) to the right one and by ``gy * level`` from y = 0 to the
        last row.
    colour : tuple of float
        R, G, B factors of the sky in colour formats (normalised to unit
        luminance, so the grey sky is ``level``).
    """

    level: float = 1000.0
    gradient: tuple = (0.2, 0.1)
    colour: tuple = (1.15, 1.0, 0.8)

    def __post_init__(self):
        _set(self, "level", _number("Sky.level", self.level, low=0.0))
        _set(self, "gradient", _tuple("Sky.gradient", self.gradient, 2, "(gx, gy)"))
        colour = _tuple("Sky.colour", self.colour, 3, "(r, g, b)")
        if min(colour) <= 0:
            raise ValueError(f"Sky.colour must be three numbers > 0, not {self.colour!r}")
        _set(self, "colour", colour)


@dataclass(frozen=True)
class Stars:
    """The star field: how many stars, their PSF and fluxes, and the reference star.

    Positions are ``[x, y]`` pixel coordinates of frame 0 (the reference
    grid); pixel ``[y, x]`` has its centre at ``(x, y)``.

    Parameters
    ----------
    n_stars : int, optional
        Field stars in frame 0's field of view (more are placed in the
        ``margin`` around it at the same density). Default 300 (2000 for
        :func:`~bigstack.synthetic.make_tutorial_frames`), unless ``density``
        is given.
    density : float, optional
        Field stars per square pixel instead of ``n_stars`` (a crowded
        field has about 0.01).
    fwhm : float
        PSF full width at half maximum, pixels. The PSF is round and the
        same in every frame (it does not rotate or scale with the field).
    psf : {"gaussian", "moffat"}
        PSF profile.
    moffat_beta : float
        Moffat index (> 1), for ``psf="moffat"``.
    flux_min, flux_index, flux_max : float
        Field star fluxes (total, sensor ADU) follow a power law
        ``N(>F) ~ F**-flux_index`` from ``flux_min``, capped at ``flux_max``.
    margin : float
        Stars are also placed this fraction of the larger side beyond every
        edge of frame 0, so that stars drift and rotate into view. Make it
        cover the night's drift.
    ref_star : tuple of float, optional
        ``(x, y)`` of the isolated bright reference star in frame 0; default
        ``(nx // 2, ny // 2)``.
    ref_peak : float, optional
        Peak of the reference star above the sky (sensor ADU) when centred
        on a pixel. Default 30000 (50000 for the tutorial's frames).
    ref_isolation : float, optional
        No field star lies within this many pixels of the reference star
        (nor, with ``Artefacts.protect_ref``, a hot pixel or cosmic ray).
        Default ``min(30, min(ny, nx) / 4)``.
    nebula : tuple of float, optional
        ``(peak, sigma)`` or ``(peak, sigma, x, y)``: a round nebula or
        galaxy on the sky, a Gaussian of ``sigma`` px peaking ``peak`` ADU
        over the sky at ``(x, y)`` of frame 0 (default its centre). It turns
        and scales with the field as the stars do, dims under a cloud as
        they do, and has photon noise; a frame of another field does not
        show it.
    cluster : tuple of float, optional
        ``(n, radius)`` or ``(n, radius, x, y)``: a globular cluster, ``n``
        stars more around ``(x, y)`` of frame 0 (default its centre), their
        surface density a Plummer profile ``(1 + r^2 / radius^2)^-2`` (half
        of them within ``radius``), their fluxes drawn as the field's. Near
        the core they crowd and blend; add ``nebula`` at the same place for
        the light of the stars too faint to draw.
    """

    n_stars: int | None = None
    density: float | None = None
    fwhm: float = 3.0
    psf: str = "gaussian"
    moffat_beta: float = 2.5
    flux_min: float = 600.0
    flux_index: float = 1.0
    flux_max: float = 2.0e6
    margin: float = 0.25
    ref_star: tuple | None = None
    ref_peak: float | None = None
    ref_isolation: float | None = None
    nebula: tuple | None = None
    cluster: tuple | None = None

    def __post_init__(self):
        if self.n_stars is not None:
            _set(self, "n_stars", _count("Stars.n_stars", self.n_stars))
        _set(self, "density", _optional_number("Stars.density", self.density, low=0.0))
        if self.n_stars is not None and self.density is not None:
            raise ValueError("give Stars.n_stars or Stars.density, not both")
        _set(self, "fwhm", _number("Stars.fwhm", self.fwhm, low=0.0, low_open=True))
        _choice("Stars.psf", self.psf, PSF_KINDS)
        _set(self, "moffat_beta", _number("Stars.moffat_beta", self.moffat_beta, low=1.0,
                                          low_open=True))
        for name in ("flux_min", "flux_index", "flux_max"):
            _set(self, name, _number(f"Stars.{name}", getattr(self, name), low=0.0,
                                     low_open=True))
        if self.flux_min > self.flux_max:
            raise ValueError(f"Stars.flux_min ({self.flux_min}) must not exceed "
                             f"Stars.flux_max ({self.flux_max})")
        _set(self, "margin", _number("Stars.margin", self.margin, low=0.0))
        if self.ref_star is not None:
            _set(self, "ref_star", _tuple("Stars.ref_star", self.ref_star, 2, "(x, y)"))
        if self.nebula is not None:
            size = len(self.nebula) if isinstance(self.nebula, (tuple, list)) else 0
            nebula = _tuple("Stars.nebula", self.nebula, 4 if size == 4 else 2,
                            "(peak, sigma) or (peak, sigma, x, y)")
            if nebula[0] < 0 or nebula[1] <= 0:
                raise ValueError(f"Stars.nebula needs peak >= 0 and sigma > 0, not "
                                 f"{self.nebula!r}")
            _set(self, "nebula", nebula)
        if self.cluster is not None:
            size = len(self.cluster) if isinstance(self.cluster, (tuple, list)) else 0
            cluster = _tuple("Stars.cluster", self.cluster, 4 if size == 4 else 2,
                             "(n, radius) or (n, radius, x, y)")
            if cluster[0] < 1 or cluster[0] != int(cluster[0]) or cluster[1] <= 0:
                raise ValueError(f"Stars.cluster needs a whole n >= 1 and radius > 0, not "
                                 f"{self.cluster!r}")
            _set(self, "cluster", cluster)
        _set(self, "ref_peak", _optional_number("Stars.ref_peak", self.ref_peak, low=0.0,
                                                low_open=True))
        _set(self, "ref_isolation", _optional_number("Stars.ref_isolation", self.ref_isolation,
                                                     low=0.0))


@dataclass(frozen=True)
class Camera:
    """The camera: noise, levels, exposure, headers and what is fixed on the sensor.

    Parameters
    ----------
    gain : float
        Electrons per ADU.
    read_noise : float
        Gaussian read noise, electrons.
    noise : {"poisson", "gaussian", "none"}
        Shot noise exact (Poisson in electrons), as a Gaussian of the same
        variance (faster), or no noise at all (not even read noise).
    adu_scale : float, optional
        File value per sensor ADU; default 1, or 1/128 for 8-bit files.
    saturation : float, optional
        Full well, sensor ADU: every pixel is clipped there (before the
        file's own integer range). Default: only the file's range.
    exptime, gap : float
        Exposure time and dead time between exposures, seconds.
    start : str
        ISO time (UTC) of the start of frame 0; frame i starts at
        ``start + i * (exptime + gap)``.
    filter, object : str
        FILTER and OBJECT header values.
    temperature : float
        Sensor temperature, degrees C (CCD-TEMP header).
    hot_pixels : int, optional
        Hot pixels, fixed on the sensor and in every frame, each with a
        fixed extra signal drawn log-uniformly in ``hot_level``. Default one
        per 5000 pixels.
    hot_level : tuple of float
        ``(low, high)`` extra signal of the hot pixels, sensor ADU.
    column_pattern, row_pattern : float
        Fixed sensor pattern: every column (row) gets an offset drawn once
        from a Gaussian of this standard deviation (ADU), the same in every
        frame and fixed on the sensor (it does not move with the stars). It
        is an offset of the readout: it adds no shot noise.
    """

    gain: float = 1.5
    read_noise: float = 5.0
    noise: str = "poisson"
    adu_scale: float | None = None
    saturation: float | None = None
    exptime: float = 30.0
    gap: float = 2.0
    start: str = "2024-03-09T21:00:00"
    filter: str = "L"
    object: str = "synthetic field"
    temperature: float = -10.0
    hot_pixels: int | None = None
    hot_level: tuple = (300.0, 30000.0)
    column_pattern: float = 0.0
    row_pattern: float = 0.0

    def __post_init__(self):
        _set(self, "gain", _number("Camera.gain", self.gain, low=0.0, low_open=True))
        _set(self, "read_noise", _number("Camera.read_noise", self.read_noise, low=0.0))
        _choice("Camera.noise", self.noise, NOISE_MODELS)
        _set(self, "adu_scale", _optional_number("Camera.adu_scale", self.adu_scale, low=0.0,
                                                 low_open=True))
        _set(self, "saturation", _optional_number("Camera.saturation", self.saturation,
                                                  low=0.0, low_open=True))
        _set(self, "exptime", _number("Camera.exptime", self.exptime, low=0.0, low_open=True))
        _set(self, "gap", _number("Camera.gap", self.gap, low=0.0))
        try:
            _dt.datetime.fromisoformat(str(self.start))
        except ValueError:
            raise ValueError(f"Camera.start must be an ISO time, not {self.start!r}") from None
        _set(self, "start", str(self.start))
        _set(self, "filter", str(self.filter))
        _set(self, "object", str(self.object))
        _set(self, "temperature", _number("Camera.temperature", self.temperature))
        if self.hot_pixels is not None:
            _set(self, "hot_pixels", _count("Camera.hot_pixels", self.hot_pixels))
        _set(self, "hot_level", _level_range("Camera.hot_level", self.hot_level))
        for name in ("column_pattern", "row_pattern"):
            _set(self, name, _number(f"Camera.{name}", getattr(self, name), low=0.0))


@dataclass(frozen=True)
class Motion:
    """How the field moves on the sensor from frame to frame.

    Frame 0 is the reference grid. Frame i maps a reference pixel
    ``p = [x, y]`` to ``A_i @ p + t_i`` with ``A_i = s_i * R(theta_i)``
    (``R`` a rotation counter-clockwise as displayed with the origin at
    the lower left, i.e. from +x towards +y), turning about ``centre``
    ``c``: ``t_i = c + d_i - A_i @ c``, where ``d_i`` is the drift (how
    far the centre moved). For a night without rotation or scale,
    ``A_i`` is the identity and ``t_i = d_i``.

    Parameters
    ----------
    drift_step : float, optional
        Pixels per frame of a drawn slow walk (direction wandering by about
        0.3 rad a frame around a persistent one). Default 1.
    jitter : float, optional
        Standard deviation per axis of the frame-to-frame jitter added to
        the walk, pixels (it does not accumulate). Default 0.5.
    subpixel : bool
        Keep the drift's fractions of a pixel; otherwise the drift is
        rounded to whole pixels (rotation and scale are never rounded).
    shifts : array_like, optional
        The drift ``d_i`` ``(n_frames, 2)`` ``[x, y]`` instead of a drawn
        walk; ``shifts[0]`` must be ``[0, 0]`` and, unless ``subpixel``,
        they must be whole numbers.
    rotation_rate : float
        Field rotation, degrees per frame (frame i turns by
        ``i * rotation_rate``).
    rotation : array_like, optional
        Rotation of every frame, degrees, ``(n_frames,)``, instead of a
        rate; ``rotation[0]`` must be 0.
    centre : tuple of float, optional
        ``(x, y)`` the field turns and scales about; default the frame
        centre ``((nx - 1) / 2, (ny - 1) / 2)``.
    flip_at : int, optional
        Meridian flip before this frame: from it on, the field is turned by
        a further 180 degrees about ``centre`` and moved by ``flip_offset``.
    flip_offset : tuple of float
        ``(x, y)`` pixels the re-pointed field lands off after the flip.
    scale_rate : float
        Fractional change of the image scale per frame (frame i is
        magnified by ``1 + i * scale_rate``).
    scale : array_like, optional
        Image scale of every frame ``(n_frames,)``, instead of a rate (focus
        and refraction change it by a few percent); ``scale[0]`` must be 1.
    transforms : array_like, optional
        ``(n_frames, 2, 3)`` matrices ``[A_i | t_i]`` given outright;
        ``transforms[0]`` must be ``[[1, 0, 0], [0, 1, 0]]``. Nothing else of
        this group may be given with it.
    """

    drift_step: float | None = None
    jitter: float | None = None
    subpixel: bool = False
    shifts: tuple | None = None
    rotation_rate: float = 0.0
    rotation: tuple | None = None
    centre: tuple | None = None
    flip_at: int | None = None
    flip_offset: tuple = (12.0, -8.0)
    scale_rate: float = 0.0
    scale: tuple | None = None
    transforms: tuple | None = None

    def __post_init__(self):
        _set(self, "drift_step", _optional_number("Motion.drift_step", self.drift_step,
                                                  low=0.0))
        _set(self, "jitter", _optional_number("Motion.jitter", self.jitter, low=0.0))
        if not isinstance(self.subpixel, (bool, np.bool_)):
            raise ValueError(f"Motion.subpixel must be True or False, not {self.subpixel!r}")
        _set(self, "subpixel", bool(self.subpixel))
        _set(self, "rotation_rate", _number("Motion.rotation_rate", self.rotation_rate))
        _set(self, "scale_rate", _number("Motion.scale_rate", self.scale_rate))
        if self.centre is not None:
            _set(self, "centre", _tuple("Motion.centre", self.centre, 2, "(x, y)"))
        if self.flip_at is not None:
            _set(self, "flip_at", _count("Motion.flip_at", self.flip_at, low=1))
        _set(self, "flip_offset", _tuple("Motion.flip_offset", self.flip_offset, 2, "(x, y)"))
        if self.shifts is not None:
            shifts = _array("Motion.shifts", self.shifts, (2,), "[x, y] per frame, (n, 2)")
            if np.any(shifts[0] != 0):
                raise ValueError(f"Motion.shifts[0] must be [0, 0] (frame 0 is the reference), "
                                 f"not {shifts[0].tolist()}")
            if not self.subpixel and np.any(shifts != np.rint(shifts)):
                raise ValueError("Motion.shifts must be whole numbers unless "
                                 "Motion.subpixel=True")
            _set(self, "shifts", _frozen(shifts))
        if self.rotation is not None:
            rot = _array("Motion.rotation", self.rotation, (), "degrees per frame, (n,)")
            if rot[0] != 0:
                raise ValueError(f"Motion.rotation[0] must be 0 (frame 0 is the reference), "
                                 f"not {rot[0]}")
            _set(self, "rotation", _frozen(rot))
        if self.scale is not None:
            scale = _array("Motion.scale", self.scale, (), "a scale per frame, (n,)")
            if np.any(scale <= 0) or scale[0] != 1:
                raise ValueError("Motion.scale must be > 0 and scale[0] must be 1 "
                                 "(frame 0 is the reference)")
            _set(self, "scale", _frozen(scale))
        if self.transforms is not None:
            tr = _array("Motion.transforms", self.transforms, (2, 3), "(n, 2, 3) matrices")
            if not np.array_equal(tr[0], [[1, 0, 0], [0, 1, 0]]):
                raise ValueError("Motion.transforms[0] must be [[1, 0, 0], [0, 1, 0]] "
                                 "(frame 0 is the reference)")
            det = tr[:, 0, 0] * tr[:, 1, 1] - tr[:, 0, 1] * tr[:, 1, 0]
            if np.any(np.abs(det) < 1e-6):
                bad = int(np.flatnonzero(np.abs(det) < 1e-6)[0])
                raise ValueError(f"Motion.transforms[{bad}] is singular")
            _set(self, "transforms", _frozen(tr))
        self._exclusive("rotation", "rotation_rate")
        self._exclusive("scale", "scale_rate")
        self._exclusive("shifts", "drift_step")
        self._exclusive("shifts", "jitter")
        for name in ("drift_step", "jitter", "subpixel", "shifts", "rotation_rate", "rotation",
                     "centre", "flip_at", "scale_rate", "scale"):
            self._exclusive("transforms", name)

    def _exclusive(self, given, other):
        if getattr(self, given) is not None and _is_set(self, other):
            raise ValueError(f"Motion.{other} cannot be used with Motion.{given}; give one")


@dataclass(frozen=True)
class Artefacts:
    """What real nights add: cosmic rays, satellite trails, clouds, strays.

    Parameters
    ----------
    cosmic_rays : float, optional
        Mean number of cosmic-ray hits per frame (Poisson), each a 1-4 pixel
        blob. Default 20 per million pixels.
    cosmic_level : tuple of float
        ``(low, high)`` of the log-uniform signal per hit pixel, sensor ADU.
    trail : bool, float or iterable of int
        Satellite trails: True puts one in a frame with probability 0.2, a
        float is that probability, an iterable lists the frames that have
        one. A trail is a straight line across the frame with a Gaussian
        cross-section.
    trail_peak : float
        Peak of a trail, sensor ADU.
    trail_fwhm : float, optional
        Width of a trail, pixels; default ``Stars.fwhm``.
    trail_through_star : bool
        Every trail passes through the centre of the brightest star (the
        greatest flux) inside its frame.
    clouds : mapping of int to float, optional
        ``{frame: transmission}``: the stars of these frames are dimmed by
        the factor (0 to 1; 0.2 is a thick cloud). The sky and the trails
        are not.
    other_field : iterable of int
        Frames that show another part of the sky: a different star field of
        the same density (and no reference star), as when the mount lost
        the target.
    hot_pattern : bool, float or iterable of int
        Frames with an extra hot-pixel pattern (a warm sensor, a faulty
        readout): a probability per frame (True is 0.3) or a list of frames.
        The pattern is one set of sensor pixels, the same in every frame
        that has it.
    hot_pattern_pixels : int, optional
        Pixels in that pattern; default one per 1000 pixels.
    hot_pattern_level : tuple of float
        ``(low, high)`` of their log-uniform extra signal, sensor ADU.
    protect_ref : bool
        Keep hot pixels (within ``Stars.ref_isolation`` of the reference
        star's frame-0 position) and cosmic rays (of its position in each
        frame) off the reference star.
    quiet_box : tuple of int, optional
        ``(x0, x1, y0, y1)``, a sensor box (``x0 <= x < x1``) with no hot
        pixels, hot-pattern pixels or cosmic rays.
    quiet_flux_max : float, optional
        With ``quiet_box``: field stars that come near the box in any frame
        are capped at this flux (this makes frames depend on all the
        transforms).
    """

    cosmic_rays: float | None = None
    cosmic_level: tuple = (1000.0, 30000.0)
    trail: bool | float | tuple = False
    trail_peak: float = 3000.0
    trail_fwhm: float | None = None
    trail_through_star: bool = False
    clouds: Mapping | tuple | None = None
    other_field: tuple = ()
    hot_pattern: bool | float | tuple = 0.0
    hot_pattern_pixels: int | None = None
    hot_pattern_level: tuple = (1000.0, 20000.0)
    protect_ref: bool = True
    quiet_box: tuple | None = None
    quiet_flux_max: float | None = None

    def __post_init__(self):
        _set(self, "cosmic_rays", _optional_number("Artefacts.cosmic_rays", self.cosmic_rays,
                                                   low=0.0))
        _set(self, "cosmic_level", _level_range("Artefacts.cosmic_level", self.cosmic_level))
        if self.trail is not None and not isinstance(
            self.trail, (bool, int, float, np.integer, np.floating, Iterable)
        ):
            raise ValueError(f"Artefacts.trail must be a bool, a probability or frame "
                             f"indices, not {self.trail!r}")
        _set(self, "trail", _frames_or_probability("Artefacts.trail", self.trail, 0.2))
        _set(self, "trail_peak", _number("Artefacts.trail_peak", self.trail_peak, low=0.0))
        _set(self, "trail_fwhm", _optional_number("Artefacts.trail_fwhm", self.trail_fwhm,
                                                  low=0.0, low_open=True))
        _set(self, "trail_through_star", _flag("Artefacts.trail_through_star",
                                               self.trail_through_star))
        if self.clouds is not None:
            items = self.clouds.items() if isinstance(self.clouds, Mapping) else self.clouds
            try:
                pairs = [(k, v) for k, v in items]
            except (TypeError, ValueError):
                raise ValueError(f"Artefacts.clouds must map frame -> transmission, "
                                 f"not {self.clouds!r}") from None
            frames = _frame_list("Artefacts.clouds", [k for k, _ in pairs])
            if len(frames) != len(pairs):
                raise ValueError("Artefacts.clouds lists a frame twice")
            out = {int(k): _number(f"Artefacts.clouds[{k}]", v, low=0.0, high=1.0)
                   for k, v in pairs}
            _set(self, "clouds", tuple(sorted(out.items())))
        _set(self, "other_field", _frame_list("Artefacts.other_field", self.other_field))
        _set(self, "hot_pattern", _frames_or_probability("Artefacts.hot_pattern",
                                                         self.hot_pattern, 0.3))
        if self.hot_pattern_pixels is not None:
            _set(self, "hot_pattern_pixels", _count("Artefacts.hot_pattern_pixels",
                                                    self.hot_pattern_pixels))
        _set(self, "hot_pattern_level", _level_range("Artefacts.hot_pattern_level",
                                                     self.hot_pattern_level))
        _set(self, "protect_ref", _flag("Artefacts.protect_ref", self.protect_ref))
        if self.quiet_box is not None:
            box = _tuple("Artefacts.quiet_box", self.quiet_box, 4, "(x0, x1, y0, y1)")
            if box != tuple(round(v) for v in box) or box[0] > box[1] or box[2] > box[3]:
                raise ValueError(f"Artefacts.quiet_box must be whole (x0, x1, y0, y1) with "
                                 f"x0 <= x1 and y0 <= y1, not {self.quiet_box!r}")
            _set(self, "quiet_box", tuple(int(v) for v in box))
        _set(self, "quiet_flux_max", _optional_number("Artefacts.quiet_flux_max",
                                                      self.quiet_flux_max, low=0.0,
                                                      low_open=True))


@dataclass(frozen=True)
class Sensor:
    """The sensor's own signal: bias, dark current, amp glow and the flat field.

    Every level is in sensor ADU (see :class:`Camera` for the file's units).
    The defaults add nothing, so frames made without a ``Sensor`` are those
    of earlier versions. A light frame is then

        ``(sky + stars + trail) * flat + dark(exptime, T) + noise + bias``

    with the noise Poisson in the electrons of everything before it and
    Gaussian read noise, and the result saturated and clipped to the file's
    range. Bias and dark frames see no light; flat frames see a uniform
    light times the flat (see :func:`~bigstack.synthetic.make_night`).

    Parameters
    ----------
    bias : float
        Bias level, ADU, in every frame. Its fixed column (and row)
        structure is ``Camera.column_pattern`` (``row_pattern``); the bias
        adds no shot noise.
    dark_current : float
        Dark current of every pixel, ADU per second at ``dark_reference``.
    dark_reference : float, optional
        Temperature (degrees C) at which ``dark_current``, ``amp_glow`` and
        the hot pixels' rates hold; default ``Camera.temperature``.
    dark_doubling : float
        The dark signal doubles every ``dark_doubling`` degrees C: at
        temperature ``T`` it is the rate times
        ``2 ** ((T - dark_reference) / dark_doubling)``.
    amp_glow : float
        Amp glow at the corner pixel ``amp_glow_corner``, ADU per second at
        ``dark_reference``; it falls off as ``exp(-d / L)`` with ``d`` the
        distance from that pixel and ``L = amp_glow_size`` times the frame's
        diagonal. It scales with exposure and temperature like the dark
        current.
    amp_glow_corner : {"bottom-left", "bottom-right", "top-left", "top-right"}
        The glowing corner, as displayed with the origin at the lower left:
        bottom is row ``y = 0``, right is column ``x = nx - 1``.
    amp_glow_size : float
        ``L`` above, a fraction of the frame's diagonal (> 0).
    cold_pixels : int
        Cold or dead pixels, fixed on the sensor (never a hot pixel): their
        response (their value in the flat field) is drawn uniformly in
        ``cold_response``.
    cold_response : tuple of float
        ``(low, high)`` response of the cold pixels, ``0 <= low <= high < 1``
        (0 is a dead pixel).
    vignetting : float
        Fraction of the light lost at the distance of the frame's corners
        from the vignetting centre, ``0 <= vignetting < 1``. The fall-off is
        the cos^4 law ``(1 + (r / f)**2) ** -2``, ``f`` set by this value.
    vignetting_centre : tuple of float, optional
        ``(x, y)`` of the optical axis on the sensor; default the frame
        centre ``((nx - 1) / 2, (ny - 1) / 2)``.
    dust : int
        Dust donuts on the sensor window (in every filter's flat): rings
        whose outer radius is drawn in ``dust_radius`` (the inner one is
        0.45 of it, the shadow of a central obstruction) and whose depth
        (the fraction of the light the ring loses) is drawn in
        ``dust_depth``.
    filter_dust : int
        Dust donuts on each filter: every filter name gets its own set (the
        same in every frame taken through it), so a flat of another filter
        does not calibrate a light.
    dust_depth : tuple of float
        ``(low, high)`` depth of the donuts, ``0 < low <= high < 1``.
    dust_radius : tuple of float
        ``(low, high)`` outer radius of the donuts, pixels.
    pixel_response : float
        Pixel-to-pixel response differences: the flat field of each pixel
        is multiplied by ``1 + pixel_response * N(0, 1)``, fixed on the
        sensor.
    """

    bias: float = 0.0
    dark_current: float = 0.0
    dark_reference: float | None = None
    dark_doubling: float = 6.0
    amp_glow: float = 0.0
    amp_glow_corner: str = "top-right"
    amp_glow_size: float = 0.1
    cold_pixels: int = 0
    cold_response: tuple = (0.0, 0.5)
    vignetting: float = 0.0
    vignetting_centre: tuple | None = None
    dust: int = 0
    filter_dust: int = 0
    dust_depth: tuple = (0.02, 0.06)
    dust_radius: tuple = (8.0, 20.0)
    pixel_response: float = 0.0

    def __post_init__(self):
        for name in ("bias", "dark_current", "amp_glow", "pixel_response"):
            _set(self, name, _number(f"Sensor.{name}", getattr(self, name), low=0.0))
        _set(self, "dark_reference", _optional_number("Sensor.dark_reference",
                                                      self.dark_reference))
        _set(self, "dark_doubling", _number("Sensor.dark_doubling", self.dark_doubling, low=0.0,
                                            low_open=True))
        _choice("Sensor.amp_glow_corner", self.amp_glow_corner, CORNERS)
        _set(self, "amp_glow_size", _number("Sensor.amp_glow_size", self.amp_glow_size, low=0.0,
                                            low_open=True))
        for name in ("cold_pixels", "dust", "filter_dust"):
            _set(self, name, _count(f"Sensor.{name}", getattr(self, name)))
        lo, hi = _tuple("Sensor.cold_response", self.cold_response, 2, "(low, high)")
        if not 0 <= lo <= hi < 1:
            raise ValueError(f"Sensor.cold_response must be (low, high) with "
                             f"0 <= low <= high < 1, not {self.cold_response!r}")
        _set(self, "cold_response", (lo, hi))
        _set(self, "vignetting", _number("Sensor.vignetting", self.vignetting, low=0.0, high=1.0,
                                         high_open=True))
        if self.vignetting_centre is not None:
            _set(self, "vignetting_centre", _tuple("Sensor.vignetting_centre",
                                                   self.vignetting_centre, 2, "(x, y)"))
        lo, hi = _level_range("Sensor.dust_depth", self.dust_depth)
        if hi >= 1:
            raise ValueError(f"Sensor.dust_depth must be (low, high) with "
                             f"0 < low <= high < 1, not {self.dust_depth!r}")
        _set(self, "dust_depth", (lo, hi))
        _set(self, "dust_radius", _level_range("Sensor.dust_radius", self.dust_radius))


# --------------------------------------------------------------------------
# the sets of frames of a night (make_night)


def _name(where, value):
    """A non-empty name without characters that cannot go in a FITS card or a file name."""
    text = str(value)
    if not text.strip() or any(c in text for c in "/\\'\n\r\t") or not text.isascii():
        raise ValueError(f"{where} must be a non-empty ASCII name without / \\ ' or control "
                         f"characters, not {value!r}")
    return text


def _optional_name(where, value):
    return None if value is None else _name(where, value)


def _optional_count(where, value, low=0):
    return None if value is None else _count(where, value, low=low)


def _roi(where, value):
    """``(ny, nx)`` of at least 8 x 8, or None."""
    if value is None:
        return None
    try:
        ny, nx = (v for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be (ny, nx), not {value!r}") from None
    return (_count(f"{where}[0]", ny, low=8), _count(f"{where}[1]", nx, low=8))


def _calibration_fields(obj):
    """The fields every calibration set shares: temperature, gain, binning, shape."""
    cls = type(obj).__name__
    _set(obj, "n", _count(f"{cls}.n", obj.n, low=1))
    _set(obj, "temperature", _optional_number(f"{cls}.temperature", obj.temperature))
    _set(obj, "gain", _optional_count(f"{cls}.gain", obj.gain))
    _set(obj, "binning", _count(f"{cls}.binning", obj.binning, low=1))
    if obj.binning > 4:
        raise ValueError(f"{cls}.binning must be 1 to 4, not {obj.binning}")
    _set(obj, "shape", _roi(f"{cls}.shape", obj.shape))


@dataclass(frozen=True)
class Lights:
    """A set of light frames of a night: one target, one filter, one exposure.

    ``None`` takes the value of the night's :class:`Camera` (or ``Sky``, or
    ``make_night``'s ``gain``).

    Parameters
    ----------
    n : int
        Number of frames.
    target : str, optional
        OBJECT of the frames; default ``Camera.object``.
    filter : str, optional
        FILTER; default ``Camera.filter``.
    exptime : float, optional
        Exposure, seconds (> 0); default ``Camera.exptime``.
    temperature : float, optional
        Set point of the sensor's temperature, degrees C (SET-TEMP; the
        sensor's CCD-TEMP varies around it); default ``Camera.temperature``.
    gain : int, optional
        The camera's gain setting (the GAIN or ISOSPEED card). A header
        value: the model's electrons per ADU stay ``Camera.gain``.
    sky : float, optional
        Sky level, sensor ADU (a narrow-band filter sees a darker sky);
        default ``Sky.level``.
    field : {0, 1}
        0: the reference field (with the reference star); 1: another part
        of the sky, for a second target in the same night.
    """

    n: int = 20
    target: str | None = None
    filter: str | None = None
    exptime: float | None = None
    temperature: float | None = None
    gain: int | None = None
    sky: float | None = None
    field: int = 0

    def __post_init__(self):
        _set(self, "n", _count("Lights.n", self.n, low=1))
        _set(self, "target", _optional_name("Lights.target", self.target))
        _set(self, "filter", _optional_name("Lights.filter", self.filter))
        _set(self, "exptime", _optional_number("Lights.exptime", self.exptime, low=0.0,
                                               low_open=True))
        _set(self, "temperature", _optional_number("Lights.temperature", self.temperature))
        _set(self, "gain", _optional_count("Lights.gain", self.gain))
        _set(self, "sky", _optional_number("Lights.sky", self.sky, low=0.0))
        if self.field not in (0, 1) or isinstance(self.field, bool):
            raise ValueError(f"Lights.field must be 0 or 1, not {self.field!r}")


@dataclass(frozen=True)
class Darks:
    """A set of dark frames (or, given as ``darkflats``, of flat-darks).

    Parameters
    ----------
    n : int
        Number of frames.
    exptime : float, optional
        Exposure, seconds (> 0). Default: one set for every exposure (and
        temperature and gain) of the lights; as flat-darks, for every
        exposure of the flats.
    temperature : float, optional
        Set point, degrees C; default that of the lights it matches (or
        ``Camera.temperature``).
    gain : int, optional
        Gain setting (header); default that of the lights it matches.
    binning : int
        Binning (XBINNING = YBINNING): each file pixel is the mean of a
        ``binning`` x ``binning`` block of sensor pixels, and the file is
        that much smaller.
    shape : tuple of int, optional
        ``(ny, nx)`` of a region of interest read from the sensor's first
        rows and columns, instead of the whole sensor (before binning).
    """

    n: int = 10
    exptime: float | None = None
    temperature: float | None = None
    gain: int | None = None
    binning: int = 1
    shape: tuple | None = None

    def __post_init__(self):
        _calibration_fields(self)
        _set(self, "exptime", _optional_number("Darks.exptime", self.exptime, low=0.0,
                                               low_open=True))


@dataclass(frozen=True)
class Flats:
    """A set of flat frames: a uniform light through one filter, times the flat field.

    Parameters
    ----------
    n : int
        Number of frames.
    filter : str, optional
        FILTER; default one set for every filter of the lights (or
        ``Camera.filter``).
    level : float
        The light's level as a fraction of the file's range (65535 ADU, or
        ``Camera.saturation`` if lower) where the flat field is 1; above
        about 1 the flats are saturated.
    exptime : float
        Exposure, seconds (> 0): the flats get its dark current.
    temperature, gain, binning, shape
        As for :class:`Darks`.
    """

    n: int = 10
    filter: str | None = None
    level: float = 0.4
    exptime: float = 1.0
    temperature: float | None = None
    gain: int | None = None
    binning: int = 1
    shape: tuple | None = None

    def __post_init__(self):
        _calibration_fields(self)
        _set(self, "filter", _optional_name("Flats.filter", self.filter))
        _set(self, "level", _number("Flats.level", self.level, low=0.0, low_open=True))
        _set(self, "exptime", _number("Flats.exptime", self.exptime, low=0.0, low_open=True))


@dataclass(frozen=True)
class Bias:
    """A set of bias frames: the shortest exposure, no light.

    Parameters
    ----------
    n : int
        Number of frames.
    exptime : float
        Exposure, seconds (>= 0; cameras write 0 or their shortest).
    temperature, gain, binning, shape
        As for :class:`Darks`.
    """

    n: int = 10
    exptime: float = 0.0
    temperature: float | None = None
    gain: int | None = None
    binning: int = 1
    shape: tuple | None = None

    def __post_init__(self):
        _calibration_fields(self)
        _set(self, "exptime", _number("Bias.exptime", self.exptime, low=0.0))


def _flag(where, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{where} must be True or False, not {value!r}")
    return bool(value)


def _default(cls, name):
    f = cls.__dataclass_fields__[name]
    return f.default if f.default is not MISSING else f.default_factory()


def _is_set(obj, name):
    """Whether field ``name`` of ``obj`` differs from its default."""
    return getattr(obj, name) != _default(type(obj), name)


# --------------------------------------------------------------------------
# the flat keywords of old, and their place in the groups

GROUPS = {"sky": Sky, "stars": Stars, "camera": Camera, "motion": Motion, "artefacts": Artefacts,
          "sensor": Sensor}

#: flat keyword of make_frames (before the groups) -> (group, field)
LEGACY = {
    "sky": ("sky", "level"),
    "gradient": ("sky", "gradient"),
    "sky_colour": ("sky", "colour"),
    "n_stars": ("stars", "n_stars"),
    "fwhm": ("stars", "fwhm"),
    "psf": ("stars", "psf"),
    "moffat_beta": ("stars", "moffat_beta"),
    "flux_min": ("stars", "flux_min"),
    "flux_index": ("stars", "flux_index"),
    "flux_max": ("stars", "flux_max"),
    "star_margin": ("stars", "margin"),
    "ref_star": ("stars", "ref_star"),
    "ref_peak": ("stars", "ref_peak"),
    "ref_isolation": ("stars", "ref_isolation"),
    "gain": ("camera", "gain"),
    "read_noise": ("camera", "read_noise"),
    "noise": ("camera", "noise"),
    "adu_scale": ("camera", "adu_scale"),
    "exptime": ("camera", "exptime"),
    "gap": ("camera", "gap"),
    "start": ("camera", "start"),
    "filter": ("camera", "filter"),
    "object": ("camera", "object"),
    "hot_pixels": ("camera", "hot_pixels"),
    "hot_level": ("camera", "hot_level"),
    "drift_step": ("motion", "drift_step"),
    "jitter": ("motion", "jitter"),
    "subpixel": ("motion", "subpixel"),
    "shifts": ("motion", "shifts"),
    "cosmic_rays": ("artefacts", "cosmic_rays"),
    "cosmic_level": ("artefacts", "cosmic_level"),
    "trail": ("artefacts", "trail"),
    "trail_peak": ("artefacts", "trail_peak"),
    "trail_fwhm": ("artefacts", "trail_fwhm"),
    "protect_ref": ("artefacts", "protect_ref"),
    "quiet_box": ("artefacts", "quiet_box"),
    "quiet_flux_max": ("artefacts", "quiet_flux_max"),
}

#: (group, field) -> its name in ``Truth.params`` (the flat names of old, where there was one)
FLAT_NAME = {place: name for name, place in LEGACY.items()}
for _group, _cls in GROUPS.items():
    for _f in fields(_cls):
        FLAT_NAME.setdefault((_group, _f.name), _f.name)
assert len(set(FLAT_NAME.values())) == len(FLAT_NAME), "two fields share a flat name"


def merge_flat(flat, groups, *, caller, warn=True, stacklevel=3):
    """Put flat keywords into their option groups.

    Parameters
    ----------
    flat : dict
        Keyword -> value, every key in :data:`LEGACY`.
    groups : dict
        Group name -> the dataclass given (or None for the default).
    caller : str
        Function name for the messages.
    warn : bool
        Emit one FutureWarning naming the field to use for each keyword.

    Returns
    -------
    dict
        Group name -> dataclass, one for every group.
    """
    out = {name: (groups.get(name) or cls()) for name, cls in GROUPS.items()}
    for name, given in groups.items():
        if given is not None and not isinstance(given, GROUPS[name]):
            raise ValueError(f"{caller}: {name} must be a synthetic.{GROUPS[name].__name__}, "
                             f"not {given!r}")
    updates = {}
    for key, value in flat.items():
        group, field_name = LEGACY[key]
        given = groups.get(group)
        if given is not None and _is_set(given, field_name):
            raise ValueError(f"{caller}: {key}= and {group}={GROUPS[group].__name__}"
                             f"({field_name}=...) both given; give one")
        updates.setdefault(group, {})[field_name] = value
    if warn:
        for key in flat:
            group, field_name = LEGACY[key]
            warnings.warn(
                f"{caller}({key}=...) is deprecated; use "
                f"{group}=synthetic.{GROUPS[group].__name__}({field_name}=...)",
                FutureWarning,
                stacklevel=stacklevel,
            )
    for group, changes in updates.items():
        out[group] = replace(out[group], **changes)
    return out


def options_from_dict(options):
    """Split a flat dict of :func:`~bigstack.synthetic.make_frames` settings into its groups.

    For settings kept as flat, JSON-friendly records (a benchmark recipe, a
    config file): ``{"n_stars": 100, "drift_step": 0.5, "seed": 1}`` becomes
    ``{"stars": Stars(n_stars=100), "motion": Motion(drift_step=0.5),
    "seed": 1}``, ready for ``make_frames(directory, **result)``. Keys that
    are not option fields (``n_frames``, ``shape``, ``fmt``, ``dtype``,
    ``seed``, ``prefix``, ...) are passed through unchanged, as are
    group objects given under the group's name.

    Parameters
    ----------
    options : mapping
        Flat names (those of :data:`Truth.params <bigstack.synthetic.Truth>`,
        e.g. ``sky`` for ``Sky.level``) and other ``make_frames`` keywords.

    Returns
    -------
    dict
        Keyword arguments of ``make_frames``.
    """
    by_flat = {name: place for place, name in FLAT_NAME.items()}
    passthrough, updates, groups = {}, {}, {}
    for key, value in options.items():
        if key in GROUPS and isinstance(value, GROUPS[key]):
            groups[key] = value
        elif key in by_flat:
            group, field_name = by_flat[key]
            updates.setdefault(group, {})[field_name] = value
        else:
            passthrough[key] = value
    for group, changes in updates.items():
        base = groups.get(group) or GROUPS[group]()
        groups[group] = replace(base, **changes)
    return {**passthrough, **groups}
