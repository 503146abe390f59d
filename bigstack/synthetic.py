"""Synthetic night-sky frames with known truth, for tests, benchmarks and demos.

:func:`make_frames` writes a seeded set of frames to a folder, as a camera
on a drifting (and, if asked, rotating, flipping or refocusing) mount would,
and returns a :class:`Truth` holding everything that went into them: the
transform of every frame, the star list, the hot pixels, the cosmic-ray
hits, the satellite trails, the clouds and the noiseless image.
:func:`make_case` builds the hard cases registration must handle (a crowded
field, faint defocused stars, a meridian flip, ...), and
:func:`make_tutorial_frames` makes five frames shaped like those of the
stacking tutorial the project started from. :func:`make_night` writes a
whole night's folder -- lights, darks, flats, flat-darks and bias of one
sensor, with the headers and file names of a capture program (N.I.N.A.,
SharpCap, MaxIm DL, ASIAIR), in one folder or a tree -- and returns a
:class:`NightTruth`: every file, what it is, and the sensor's calibration
truth (bias, dark rate, flat field, hot and cold pixels, dust).

The options come in six small groups, each a frozen dataclass that checks
itself: :class:`Sky`, :class:`Stars`, :class:`Camera`, :class:`Motion`,
:class:`Artefacts` and :class:`Sensor`; a night's sets of frames are
:class:`Lights`, :class:`Darks`, :class:`Flats` and :class:`Bias`::

    make_frames(folder, 20, (512, 512), seed=1,
                stars=Stars(fwhm=4.0), motion=Motion(rotation_rate=0.05),
                artefacts=Artefacts(clouds={7: 0.2}))
    make_night(folder, lights=[Lights(20, filter="L"), Lights(10, filter="Ha")],
               darks=10, flats=10, bias=10, style="asiair", folders=True)

The flat keywords of earlier versions (``make_frames(..., fwhm=4.0)``) still
work and emit a FutureWarning naming the field to use instead.

Conventions
-----------
- Images are indexed ``[y, x]``; positions and shifts are written
  ``[x, y]``.
- Pixel ``(x, y)`` has its centre at the integer coordinates ``(x, y)``:
  the pixel index is the coordinate, and pixel ``[y, x]`` covers
  ``[x - 0.5, x + 0.5) x [y - 0.5, y + 0.5)``.
- Frame 0 is the reference grid. A 2x3 matrix ``[A | t]`` maps a
  reference-grid pixel to frame i's pixel: ``[x_i, y_i] = A @ [x, y] + t``
  (``truth.transforms[i]``). Without rotation or scale ``A`` is the
  identity and ``t = truth.shifts[i] = star_in_frame_i - star_in_frame_0``.
- Row ``y`` of an array is row ``y`` of the file: FITS stores rows from
  the first (``y = 0``) on, PNG/JPEG/DNG from the top of the picture down,
  and nothing is flipped.

The model
---------
All levels are given in ADU of a 16-bit sensor ("sensor ADU"); a file's
pixel value is ``adu_scale`` times that (1 for 16-bit and float files,
1/128 for 8-bit files, which keeps the default reference star just below
255). A frame is, in this order:

1. sky: ``Sky.level`` ADU with a linear gradient, fixed on the sensor;
2. stars: a power-law flux distribution plus one isolated reference star,
   each a round Gaussian (or Moffat) PSF integrated over the pixels, at
   ``A_i @ p + t_i`` for every star ``p`` of the reference field (another
   field in the frames of ``Artefacts.other_field``), dimmed by the
   frame's cloud transmission;
3. a satellite trail in some frames;
4. the flat field (:class:`Sensor`: vignetting, dust donuts, pixel
   response, cold pixels), multiplying all of the above;
5. the dark signal: dark current and amp glow (:class:`Sensor`) and the
   hot pixels, all fixed on the sensor (they do not move with the stars),
   in proportion to the exposure and doubling every
   ``Sensor.dark_doubling`` degrees above ``Sensor.dark_reference``; in
   some frames a hot-pixel pattern;
6. noise: Poisson in electrons (``Camera.gain`` e-/ADU) plus Gaussian read
   noise;
7. the bias: ``Sensor.bias`` plus the fixed sensor pattern (column and row
   offsets), no shot noise;
8. cosmic-ray hits (1-4 pixel blobs, random in every frame);
9. saturation, rounding and clipping to the file's integer range.

Without a :class:`Sensor` (the default of :func:`make_frames`) the flat
field is 1, there is no dark current, amp glow or bias level, and the hot
pixels hold ``Camera.hot_level`` in every frame: the frames are those of
earlier versions, byte for byte. The truth of the sensor
(:attr:`Truth.bias`, :attr:`Truth.dark_rate`, :meth:`Truth.dark`,
:meth:`Truth.flat`, :attr:`Truth.cold_pixels`, :meth:`Truth.dust`) and of
what a perfect calibration gives (:meth:`Truth.calibrated`) are there
either way. Calibration frames follow the same model without the sky and
stars: a bias frame is the bias and read noise; a dark frame adds the dark
signal of its exposure and temperature; a flat frame a uniform light
times the flat field of its filter (see :func:`make_night`).

Colour formats (PNG, JPEG) hold R, G, B planes each made as above, with a
coloured sky and slightly coloured stars whose colour factors have unit
luminance, so the grey frame ``0.2126 R + 0.7152 G + 0.0722 B`` equals the
monochrome model. DNG holds the RGGB Bayer mosaic of the colour frame,
with the sensor (flat field, dark, bias) and the noise applied to the
mosaic pixel by pixel, as a sensor records it; a Bayer FITS frame would
take the same path.

Random numbers come from :class:`numpy.random.Generator` streams derived
from the master ``seed`` per purpose and per frame, so frame ``i`` is the
same whatever ``n_frames`` is, and turning the trail (or any other
artefact) on or off does not change the noise of any frame. In a night,
every set of frames has streams of its own, so adding a set changes none
of the others.

Examples
--------
>>> import tempfile
>>> from bigstack import synthetic
>>> truth = synthetic.make_frames(tempfile.mkdtemp(), n_frames=3, shape=(128, 128))
>>> len(truth.paths), truth.shifts.shape, truth.transforms.shape
(3, (3, 2), (3, 2, 3))
>>> truth.shifts[0].tolist()
[0.0, 0.0]
"""

from __future__ import annotations

import errno
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import numpy as np

from . import _files
from . import _synth_night as _night
from . import _synth_scene as _scene
from ._ser import write_ser
from ._synth_formats import bayer_mosaic, make_ser
from ._synth_night import NightFrame
from ._synth_options import (
    FLAT_NAME,
    GROUPS,
    LEGACY,
    Artefacts,
    Bias,
    Camera,
    Darks,
    Flats,
    Lights,
    Motion,
    Sensor,
    Sky,
    Stars,
    merge_flat,
    options_from_dict,
)
from ._synth_scene import GREY_WEIGHTS

__all__ = [
    "CASES",
    "GREY_WEIGHTS",
    "MISTAKES",
    "NIGHT_CAMERA",
    "NIGHT_SENSOR",
    "STYLES",
    "TUTORIAL_SHIFTS",
    "TUTORIAL_STARS",
    "Artefacts",
    "Bias",
    "Camera",
    "Darks",
    "Flats",
    "Lights",
    "Motion",
    "NightFrame",
    "NightTruth",
    "Sensor",
    "Sky",
    "Stars",
    "Truth",
    "bayer_mosaic",
    "make_case",
    "make_frames",
    "make_night",
    "make_ser",
    "make_tutorial_frames",
    "options_from_dict",
    "write_ser",
]

#: ``[x, y]`` of the tutorial's reference star in each of its five frames.
TUTORIAL_STARS = ((397, 483), (399, 499), (418, 519), (441, 506), (462, 522))

#: The tutorial's shifts, ``[x, y]``: ``TUTORIAL_STARS[i] - TUTORIAL_STARS[0]``.
TUTORIAL_SHIFTS = tuple(
    (x - TUTORIAL_STARS[0][0], y - TUTORIAL_STARS[0][1]) for x, y in TUTORIAL_STARS
)

_EMPTY = np.empty(0, np.int64)


# --------------------------------------------------------------------------
# the truth


class _SensorTruth:
    """The sensor's truth, shared by :class:`Truth` and :class:`NightTruth`.

    Maps are float32 or float64 ``(ny, nx)`` indexed ``[y, x]``, in file
    units (``params["adu_scale"]`` times sensor ADU; ADU for uint16 FITS).
    """

    @property
    def bias(self) -> np.ndarray:
        """The noiseless bias, float32 ``(ny, nx)``, file units.

        ``Sensor.bias`` plus the fixed column and row pattern
        (:attr:`fixed_pattern`); the same in every frame.
        """
        sensor = self._scene.sensor
        if sensor.offset is None:
            return np.zeros(self.params["shape"], np.float32)
        return (sensor.offset * np.float32(self.params["adu_scale"])).astype(np.float32)

    @property
    def dark_rate(self) -> np.ndarray:
        """Dark signal per second at ``params["dark_reference"]`` degrees C, float64 ``(ny, nx)``.

        File units per second: dark current, amp glow and the hot pixels
        (a hot pixel's rate is its level over ``params["hot_exptime"]``).
        """
        return self._scene.sensor.dark_rate() * self.params["adu_scale"]

    def dark(self, exptime: float, temperature: float | None = None) -> np.ndarray:
        """Return the noiseless dark signal of an exposure, float64 ``(ny, nx)``, file units.

        ``dark_rate * exptime * 2 ** ((temperature - dark_reference) /
        dark_doubling)``: linear in the exposure, doubling every
        ``Sensor.dark_doubling`` degrees. Without the bias.

        Parameters
        ----------
        exptime : float
            Exposure, seconds.
        temperature : float, optional
            Sensor temperature, degrees C; default the lights'
            (``Camera.temperature``).
        """
        t = self.params["temperature"] if temperature is None else float(temperature)
        return self.dark_rate * self._scene.sensor.dark_scale(float(exptime), t)

    def flat(self, filter: str | None = None) -> np.ndarray:
        """Return the flat field through a filter, float32 ``(ny, nx)`` (ones without one).

        The response of each pixel relative to the optical axis: the
        vignetting, the dust donuts of the sensor window and of the filter,
        pixel-to-pixel response and the cold pixels. Light frames are
        ``(sky + stars) * flat`` before the dark, bias and noise.

        Parameters
        ----------
        filter : str, optional
            Filter name; default the lights' (``Camera.filter``).
        """
        name = self.params["filter"] if filter is None else str(filter)
        flat = self._scene.sensor.flat_for(name)
        if flat is None:
            return np.ones(self.params["shape"], np.float32)
        return flat.copy()

    @property
    def vignetting(self) -> np.ndarray:
        """The smooth vignetting alone (no dust or pixel response), float64 ``(ny, nx)``."""
        return self._scene.sensor.vignetting()

    @property
    def cold_pixels(self) -> tuple:
        """``(y, x)`` sensor indices of the cold and dead pixels (their flat field is low)."""
        sensor = self._scene.sensor
        return sensor.cold_y.copy(), sensor.cold_x.copy()

    def dust(self, filter: str | None = None) -> dict:
        """Return the dust donuts in the flat field through a filter.

        A dict of float64 arrays: ``x``, ``y`` (centre, pixel coordinates),
        ``radius`` and ``inner`` (the ring's outer and inner radius, pixels),
        ``depth`` (the fraction of the light the ring loses) and bool
        ``on_filter`` (on the filter, rather than the sensor window).

        Parameters
        ----------
        filter : str, optional
            Filter name; default the lights'.
        """
        name = self.params["filter"] if filter is None else str(filter)
        sensor = self._scene.sensor
        window, own = sensor.dust, sensor.filter_dust(name)
        out = {k: np.concatenate([window[k], own[k]]) for k in window}
        out["on_filter"] = np.r_[np.zeros(window["x"].size, bool), np.ones(own["x"].size, bool)]
        return out


@dataclass(frozen=True, eq=False)
class Truth(_SensorTruth):
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
    transforms : numpy.ndarray
        float64 ``(n_frames, 2, 3)``: ``[A_i | t_i]`` maps a reference-grid
        (frame 0) pixel ``[x, y]`` to frame i's pixel ``A_i @ [x, y] + t_i``.
        ``transforms[0]`` is the identity.
    rotation : numpy.ndarray
        float64 ``(n_frames,)``: the rotation of ``A_i``, degrees in
        ``(-180, 180]``, counter-clockwise as displayed (origin lower left);
        180 after a meridian flip.
    scale : numpy.ndarray
        float64 ``(n_frames,)``: the image scale of ``A_i``
        (``sqrt(|det A_i|)``).
    shifts : numpy.ndarray
        float64 ``(n_frames, 2)``, ``[x, y]``: how far the reference star
        moved, ``star_in_frame_i - star_in_frame_0`` (the tutorial's
        shift), that is ``A_i @ ref_star + t_i - ref_star``. Where ``A_i`` is
        the identity this is ``transforms[i, :, 2]``, the shift of every
        star; in a rotated or scaled frame other stars moved differently.
        ``shifts[0] == [0, 0]``.
    transmission : numpy.ndarray
        float64 ``(n_frames,)``: the clouds' transmission (1 when clear);
        the stars of frame i are dimmed by this factor.
    other_field : numpy.ndarray
        bool ``(n_frames,)``: frames that show another star field
        (:attr:`other_stars`) instead of the reference field.
    stars : dict of numpy.ndarray
        The reference field in frame-0 coordinates: ``x``, ``y`` (pixel
        coordinates), ``flux`` (total, sensor ADU, before clouds) and ``r``,
        ``g``, ``b`` (colour factors, unit luminance; unused by monochrome
        formats). Entry 0 is the reference star. Stars up to a margin outside
        frame 0 are included, so that stars drift into view.
    other_stars : dict of numpy.ndarray or None
        The other field (same keys, no reference star), in the same grid:
        frame i shows it at ``A_i @ p + t_i`` too. None without such frames.
    ref_star : tuple of float
        ``(x, y)`` of the reference star in frame 0.
    ref_flux : float
        Total flux of the reference star, sensor ADU.
    clean : numpy.ndarray
        float32 ``(ny, nx)``: the noiseless frame 0 (:meth:`frame_clean`).
    hot_pixels : tuple of numpy.ndarray
        ``(y, x)`` sensor indices of the hot pixels, the same in every frame.
    hot_levels : numpy.ndarray
        Extra signal of each hot pixel, sensor ADU, in a frame of
        ``Camera.exptime`` at ``Sensor.dark_reference`` (every frame of
        :func:`make_frames`); they are dark current, in
        :attr:`dark_rate`.
    hot_pattern : tuple of numpy.ndarray
        ``(y, x)`` sensor indices of the hot-pixel pattern some frames show
        (empty without one); never one of :attr:`hot_pixels`.
    hot_pattern_levels : numpy.ndarray
        Their extra signal, sensor ADU.
    hot_pattern_frames : numpy.ndarray
        bool ``(n_frames,)``: the frames that show the pattern.
    cosmic_rays : list of tuple of numpy.ndarray
        Per frame, the ``(y, x)`` indices of the pixels hit by cosmic rays.
    trail : list of tuple of numpy.ndarray
        Per frame, the ``(y, x)`` indices of the pixels the satellite trail
        raises by at least half its peak (empty arrays without a trail).
    trail_lines : list of dict or None
        Per frame, the trail's line: a point on it ``x``, ``y``, its
        ``angle`` (radians from the +x axis), ``peak`` (sensor ADU) and
        ``fwhm`` (pixels); with ``Artefacts.trail_through_star`` also
        ``star``, the index (in :meth:`frame_stars`) of the star the line
        goes through, whose position is ``x``, ``y``. None without a trail.
    dates : list of str
        DATE-OBS of every frame (ISO, UTC, start of the exposure).
    sky_sigma : float
        Standard deviation of the noise of one pixel at the mean sky level,
        in file units (grey for PNG/JPEG, mean over the Bayer cell for DNG),
        without the rounding to integers. :meth:`noise_map` gives it per
        pixel.
    params : dict
        Every parameter used, defaults resolved, under flat names: the
        keywords of earlier versions where there was one (``params["sky"]``
        is ``Sky.level``, ``params["star_margin"]`` is ``Stars.margin``,
        ``params["shifts"]`` is :attr:`shifts`), the field name otherwise;
        also ``hot_exptime``, the exposure the hot pixels' levels are for.
    options : dict
        The keyword arguments that make the same frames again:
        ``make_frames(directory, **truth.options)`` (the seed resolved).
    """

    paths: list
    transforms: np.ndarray
    rotation: np.ndarray
    scale: np.ndarray
    shifts: np.ndarray
    transmission: np.ndarray
    other_field: np.ndarray
    stars: dict
    other_stars: dict | None
    ref_star: tuple
    ref_flux: float
    clean: np.ndarray
    hot_pixels: tuple
    hot_levels: np.ndarray
    hot_pattern: tuple
    hot_pattern_levels: np.ndarray
    hot_pattern_frames: np.ndarray
    cosmic_rays: list
    trail: list
    trail_lines: list
    dates: list
    sky_sigma: float
    params: dict
    options: dict
    _scene: _scene.Scene = field(repr=False)

    @property
    def n_frames(self) -> int:
        """Number of frames written."""
        return len(self.paths)

    @property
    def fixed_pattern(self) -> np.ndarray:
        """The fixed sensor pattern, float32 ``(ny, nx)``, sensor ADU (zeros without one).

        Column plus row offsets, the same in every frame and fixed on the
        sensor; included in :meth:`frame_clean` (times ``adu_scale``).
        """
        pattern = self._scene.sensor_pattern
        if pattern is None:
            return np.zeros(self.params["shape"], np.float32)
        return pattern.copy()

    def frame_clean(self, i: int, rgb: bool = False) -> np.ndarray:
        """Return the noiseless frame ``i`` in file units, float32 ``(ny, nx)``.

        Sky and stars (at frame ``i``'s transform, dimmed by its clouds),
        times the flat field, plus the dark current and amp glow and the bias
        (level and fixed pattern), saturated and clipped like the file (not
        clipped to a range for float32 files); no hot pixels, cosmic rays or
        trail. ``frame_clean(0)`` equals :attr:`clean`.

        Parameters
        ----------
        i : int
            Frame index.
        rgb : bool, optional
            For PNG/JPEG, return the colour planes ``(ny, nx, 3)`` instead of
            the grey frame.
        """
        return self._scene.clean(self._frame_index(i), rgb=rgb)

    def calibrated(self, i: int, rgb: bool = False) -> np.ndarray:
        """Return what a perfect calibration of frame ``i`` gives, float32 ``(ny, nx)``, file units.

        The noiseless sky and stars alone: ``(light - bias - dark) / flat``
        without the noise (and without the trail, cosmic rays and hot-pixel
        pattern, which calibration does not remove). Not saturated or
        clipped. Dead pixels (a flat of 0) lose this signal for good.

        Parameters
        ----------
        i : int
            Frame index.
        rgb : bool, optional
            For PNG/JPEG, the colour planes ``(ny, nx, 3)``.
        """
        return self._scene.calibrated(self._frame_index(i), rgb=rgb)

    @property
    def temperatures(self) -> np.ndarray:
        """float64 ``(n_frames,)``: each frame's sensor temperature (CCD-TEMP), degrees C."""
        return np.array([self._scene.temperature(i) for i in range(self.n_frames)], np.float64)

    def noise_map(self, i: int) -> np.ndarray:
        """Return the standard deviation of the noise of frame ``i``, per pixel.

        float32 ``(ny, nx)`` in file units, from the frame's expected signal
        (sky, stars, hot pixels, hot-pixel pattern and trail) through the
        gain and read noise; rounding, clipping and cosmic rays are not
        included. Grey for PNG/JPEG (the planes' noises are independent).
        """
        return self._scene.noise_map(self._frame_index(i))

    def star_positions(self, i: int) -> np.ndarray:
        """Return where the reference field's stars are in frame ``i``.

        float64 ``(n_stars, 2)`` ``[x, y]``: ``A_i @ p + t_i`` for every
        star ``p`` of :attr:`stars`, in their order (entry 0 the reference
        star), including those outside the frame. For a frame of
        :attr:`other_field` this is where the reference field would be; what
        the frame shows is :meth:`frame_stars`.
        """
        i = self._frame_index(i)
        x, y = self._scene.positions(i, self.stars["x"], self.stars["y"])
        return np.stack([x, y], axis=-1)

    def frame_stars(self, i: int) -> dict:
        """Return the stars frame ``i`` shows, where it shows them.

        A dict of float64 arrays: ``x``, ``y`` (pixel coordinates in frame
        ``i``, including stars outside it), ``flux`` (total, sensor ADU,
        after the clouds) and ``peak`` (the value of the brightest pixel
        above the sky when centred on a pixel, sensor ADU), for the
        reference field or, in a frame of :attr:`other_field`, the other one.
        """
        i = self._frame_index(i)
        stars, _ = self._scene.field_of(i)
        x, y = self._scene.positions(i, stars["x"], stars["y"])
        flux = stars["flux"] * self._scene.transmission(i)
        return {"x": x + 0.0, "y": y + 0.0, "flux": flux,
                "peak": flux * self._scene.psf.peak_fraction}

    def reference_stars(self) -> dict:
        """Return the reference field's star list with fluxes and peak signal-to-noise.

        A dict of float64 arrays in the order of :attr:`stars`: ``x``, ``y``
        (frame 0, ``[x, y]``), ``flux`` (total, sensor ADU), ``peak`` (the
        brightest pixel above the sky for a star centred on a pixel, sensor
        ADU) and ``snr``: ``peak`` over the noise of one sky pixel where the
        star is (the sky's gradient included; inf without noise).
        """
        sc = self._scene
        x, y, flux = self.stars["x"], self.stars["y"], self.stars["flux"]
        peak = flux * sc.psf.peak_fraction
        ix = np.clip(np.rint(x).astype(np.int64), 0, sc.nx - 1)
        iy = np.clip(np.rint(y).astype(np.int64), 0, sc.ny - 1)
        if self.params["noise"] == "none":
            snr = np.full(x.shape, np.inf)
        else:
            snr = peak / sc.sigma_adu(sc.sky_grey[iy, ix])
        return {"x": x.copy(), "y": y.copy(), "flux": flux.copy(), "peak": peak, "snr": snr}

    def hot_pixels_in(self, i: int) -> tuple:
        """Return ``(y, x)`` of every hot pixel of frame ``i``: the fixed ones and the pattern's."""
        i = self._frame_index(i)
        if not self.hot_pattern_frames[i]:
            return self.hot_pixels[0].copy(), self.hot_pixels[1].copy()
        return (np.concatenate([self.hot_pixels[0], self.hot_pattern[0]]),
                np.concatenate([self.hot_pixels[1], self.hot_pattern[1]]))

    def _frame_index(self, i):
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(f"frame {i} out of range 0..{self.n_frames - 1}")
        return i


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
    sky=None,
    stars=None,
    camera=None,
    motion=None,
    artefacts=None,
    sensor=None,
    png_options=None,
    jpeg_quality=95,
    bayer=None,
    prefix="frame",
    overwrite=False,
    workers=None,
    **deprecated,
):
    """Write a seeded set of synthetic night-sky frames and return their truth.

    Images are indexed ``[y, x]``; every position below is ``[x, y]``, and
    pixel ``[y, x]`` has its centre at coordinates ``(x, y)``. A star at
    ``p = [x, y]`` in frame 0 is at ``A_i @ p + t_i`` in frame ``i``, with
    ``[A_i | t_i] = truth.transforms[i]``; without rotation or scale that is
    ``p + truth.shifts[i]``. Levels are in sensor ADU (see the module
    notes); file values are ``Camera.adu_scale`` times those.

    Parameters
    ----------
    directory : str or os.PathLike
        Folder to write to; created if missing.
    n_frames : int
        Number of frames.
    shape : tuple of int
        ``(ny, nx)`` of every frame.
    fmt : {"fits", "png", "jpg", "dng", "tiff"}
        File format: monochrome FITS; RGB colour PNG, JPEG or TIFF
        (uncompressed, ``tifffile``); Bayer (RGGB) DNG camera RAW (needs
        ``bigstack._dng`` and ``tifffile``). For a SER video see
        :func:`make_ser`.
    bayer : {"RGGB", "GRBG", "GBRG", "BGGR"}, optional
        A one-shot-colour night: each frame the Bayer mosaic of the colour
        frame (coloured sky and stars, as for PNG) with this pattern, as FITS
        with ``BAYERPAT`` (and ``ROWORDER='TOP-DOWN'``), or with
        ``fmt="dng"`` as a DNG of that pattern (RGGB without it).
        Each star's flux in colour c is ``stars["flux"] * stars[c]``
        (c in ``r``, ``g``, ``b``), the sky's ``sky * unit sky colour``.
    dtype : {"uint16", "float32", "uint8"}, optional
        Pixel type: FITS ``uint16`` (BITPIX=16, BZERO=32768, as cameras
        write) or ``float32`` (BITPIX=-32, not rounded or clipped); PNG
        ``uint8`` or ``uint16``; JPEG ``uint8``; DNG ``uint16``; TIFF
        ``uint8`` or ``uint16``. Default:
        ``uint8`` for JPEG, ``uint16`` otherwise.
    seed : int or None
        Master seed; None draws one (recorded in ``truth.params``).
    sky : Sky, optional
        Sky level, gradient and colour.
    stars : Stars, optional
        Star field, PSF, fluxes and the reference star.
    camera : Camera, optional
        Gain, noise, saturation, exposure and headers, hot pixels and the
        fixed sensor pattern.
    motion : Motion, optional
        Drift, jitter, rotation, meridian flip, scale or explicit transforms.
    artefacts : Artefacts, optional
        Cosmic rays, satellite trails, clouds, frames of another field,
        hot-pixel patterns, and the regions kept clear of them.
    sensor : Sensor, optional
        Bias level, dark current and amp glow, the flat field (vignetting,
        dust, cold pixels): what calibration frames measure. Default: none
        of them (the frames of earlier versions).
    png_options : dict, optional
        Keyword arguments of ``imagecodecs.png_encode``; default
        ``{"level": 1, "strategy": 3, "filter": 16}`` (fast: noisy frames
        hardly compress, and level 6 is ten times slower for 1% smaller
        files).
    jpeg_quality : int
        JPEG quality.
    prefix : str
        File names are ``{prefix}-{i:04d}.{fit|png|jpg|dng|tif}``.
    overwrite : bool
        Replace files of the same names; otherwise a FileExistsError names
        the first one found, before anything is written.
    workers : int, optional
        Threads that render and write frames (default: the number of CPUs,
        at most 8). The output does not depend on it.
    **deprecated
        The flat keywords of earlier versions (``n_stars``, ``fwhm``,
        ``sky=1000.0``, ``drift_step``, ``trail``, ...): each still works,
        with a FutureWarning naming the dataclass field to use instead.

    Returns
    -------
    Truth
        The files written and the truth behind them.

    Raises
    ------
    ValueError
        If a parameter is out of range or two of them do not fit together
        (the message names the field, e.g. ``Stars.ref_star``).
    FileExistsError
        If a file to write exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile
    >>> from astropy.io import fits
    >>> from bigstack.synthetic import Motion, Stars, make_frames
    >>> truth = make_frames(tempfile.mkdtemp(), n_frames=2, shape=(64, 64),
    ...                     stars=Stars(n_stars=20))
    >>> fits.getdata(truth.paths[0]).dtype.name
    'uint16'
    >>> x, y = truth.ref_star
    >>> dx, dy = truth.shifts[1]
    >>> data = fits.getdata(truth.paths[1]).astype(float)
    >>> int(data[int(y + dy), int(x + dx)]) > 20000   # the star moved by the shift
    True
    >>> turned = make_frames(tempfile.mkdtemp(), n_frames=3, shape=(64, 64),
    ...                      motion=Motion(rotation_rate=0.5))
    >>> turned.rotation.tolist()
    [0.0, 0.5, 1.0]
    """
    groups = {"sky": sky, "stars": stars, "camera": camera, "motion": motion,
              "artefacts": artefacts, "sensor": sensor}
    if sky is not None and not isinstance(sky, Sky):
        deprecated["sky"] = groups.pop("sky")  # the old sky=<level>
    unknown = sorted(set(deprecated) - set(LEGACY))
    if unknown:
        raise TypeError(f"make_frames() got an unexpected keyword argument {unknown[0]!r}")
    groups = merge_flat(deprecated, groups, caller="make_frames")
    return _make(directory, n_frames, shape, fmt, dtype, seed, groups, png_options,
                 jpeg_quality, prefix, overwrite, workers, bayer=bayer)


def _make(directory, n_frames, shape, fmt, dtype, seed, groups, png_options, jpeg_quality,
          prefix, overwrite, workers, bayer=None):
    """make_frames on option groups: resolve, check the files, render, write, return the truth."""
    groups = {name: groups.get(name) or cls() for name, cls in GROUPS.items()}
    p = _resolve(n_frames, shape, fmt, dtype, seed, groups, png_options, jpeg_quality, prefix,
                 overwrite)
    if bayer is not None:
        from ._bayer import PATTERNS

        if p["fmt"] not in ("fits", "dng") or str(bayer).upper() not in PATTERNS:
            raise ValueError(f"bayer={bayer!r} needs fmt='fits' or 'dng' and one of "
                             f"{PATTERNS}")
        if p["shape"][0] % 2 or p["shape"][1] % 2:
            raise ValueError(f"bayer needs even sides, not shape {p['shape']}")
        p["bayer"] = str(bayer).upper()
    geom = _scene.geometry(p)
    p["shifts"] = geom["shifts"]
    n_frames = p["n_frames"]
    ny, nx = p["shape"]
    suffix = _scene.FORMATS[p["fmt"]][0]
    directory = os.fspath(directory)
    paths = [os.path.join(directory, f"{p['prefix']}-{i:04d}.{suffix}") for i in range(n_frames)]
    for path in paths:
        if not os.path.lexists(path):
            continue
        if not p["overwrite"]:
            raise FileExistsError(
                errno.EEXIST, "file exists; pass overwrite=True to replace it", path
            )
        if not _files.made_by_bigstack(path):  # overwrite replaces only frames it wrote
            raise FileExistsError(
                errno.EEXIST, "file exists and was not written by bigstack; refusing to "
                "replace it", path
            )
    if p["fmt"] == "dng":
        from . import _dng

        if ny % 2 or nx % 2 or min(ny, nx) < _dng.MIN_SIZE:
            raise ValueError(
                f"fmt='dng' needs even sides of at least {_dng.MIN_SIZE}, not shape {(ny, nx)}"
            )
    scene = _scene.Scene(p, geom)
    os.makedirs(directory, exist_ok=True)

    dates = _scene.dates(p["start"], n_frames, p["exptime"], p["gap"])
    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = max(1, min(int(workers), n_frames))

    def job(i):
        return _scene.write_frame(scene, i, paths[i], dates[i])

    if workers == 1:
        cosmics = [job(i) for i in range(n_frames)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            cosmics = list(pool.map(job, range(n_frames)))
    return _truth(p, geom, scene, groups, paths, dates, cosmics)


def _truth(p, geom, scene, groups, paths, dates, cosmics):
    """The :class:`Truth` of frames rendered from ``scene`` and written to ``paths``."""
    n_frames = p["n_frames"]
    lines = [scene.trail_line(i) for i in range(n_frames)]
    trails = []
    for line in lines:
        if line is None:
            trails.append((_EMPTY.copy(), _EMPTY.copy()))
        else:
            ys, xs, adu = scene.trail_pixels(line)
            core = adu >= 0.5 * line["peak"]
            trails.append((ys[core], xs[core]))

    options = {"n_frames": n_frames, "shape": p["shape"], "fmt": p["fmt"], "dtype": p["dtype"],
               "seed": p["seed"], **groups, "png_options": p["png_options"],
               "jpeg_quality": p["jpeg_quality"], "prefix": p["prefix"]}
    other = scene.other_stars
    return Truth(
        paths=paths,
        transforms=geom["transforms"].copy(),
        rotation=geom["rotation"].copy(),
        scale=geom["scale"].copy(),
        shifts=geom["shifts"].copy(),
        transmission=np.array([scene.transmission(i) for i in range(n_frames)], np.float64),
        other_field=np.array([i in scene.other_frames for i in range(n_frames)], bool),
        stars={k: v.copy() for k, v in scene.stars.items()},
        other_stars=None if other is None else {k: v.copy() for k, v in other.items()},
        ref_star=tuple(float(v) for v in p["ref_star"]),
        ref_flux=float(scene.ref_flux),
        clean=scene.clean(0),
        hot_pixels=(scene.hot_y.copy(), scene.hot_x.copy()),
        hot_levels=scene.hot_levels.copy(),
        hot_pattern=(scene.pattern_y.copy(), scene.pattern_x.copy()),
        hot_pattern_levels=scene.pattern_levels.copy(),
        hot_pattern_frames=np.array([scene.hot_pattern_on(i) for i in range(n_frames)], bool),
        cosmic_rays=cosmics,
        trail=trails,
        trail_lines=lines,
        dates=[d.isoformat(timespec="milliseconds") for d in dates],
        sky_sigma=scene.sky_sigma(),
        params=p,
        options=options,
        _scene=scene,
    )


def _check_length(where, value, n_frames):
    if value is not None and len(value) != n_frames:
        raise ValueError(f"{where} has {len(value)} frames, not n_frames={n_frames}")


def _resolve(n_frames, shape, fmt, dtype, seed, groups, png_options, jpeg_quality, prefix,
             overwrite):
    """Check the parameters that need each other, fill in the defaults, flatten.

    Returns the flat dict of :attr:`Truth.params` (``shifts`` still the
    given drift, or None; the caller replaces it with the truth).
    """
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise ValueError(f"n_frames must be a positive integer, not {n_frames!r}")
    n_frames = int(n_frames)
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (ny, nx), not {shape!r}") from None
    if ny < 8 or nx < 8:
        raise ValueError(f"shape must be at least (8, 8), not {(ny, nx)}")

    fmt_name = str(fmt).lower()
    fmt_name = {"fit": "fits", "fts": "fits", "jpeg": "jpg"}.get(fmt_name, fmt_name)
    if fmt_name not in _scene.FORMATS:
        raise ValueError(f"fmt must be one of {tuple(_scene.FORMATS)}, not {fmt!r}")
    _suffix, allowed, default_dtype, _planes = _scene.FORMATS[fmt_name]
    dtype_name = default_dtype if dtype is None else np.dtype(dtype).name
    if dtype_name not in allowed:
        raise ValueError(f"fmt={fmt_name!r} takes dtype in {allowed}, not dtype={dtype!r}")

    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None, not {seed!r}")

    p = {"n_frames": n_frames, "shape": (ny, nx), "fmt": fmt_name, "dtype": dtype_name,
         "seed": int(seed)}
    for group, obj in groups.items():
        for name in GROUPS[group].__dataclass_fields__:
            p[FLAT_NAME[(group, name)]] = getattr(obj, name)

    # defaults that depend on the frame
    if p["adu_scale"] is None:
        p["adu_scale"] = 1.0 / 128.0 if dtype_name == "uint8" else 1.0
    if p["n_stars"] is None:
        if p["density"] is not None:
            p["n_stars"] = round(p["density"] * ny * nx)
        else:
            p["n_stars"] = 300
    if p["ref_peak"] is None:
        p["ref_peak"] = 30000.0
    if p["ref_isolation"] is None:
        p["ref_isolation"] = min(30.0, 0.25 * min(ny, nx))
    if p["ref_star"] is None:
        p["ref_star"] = (float(nx // 2), float(ny // 2))
    rx, ry = p["ref_star"]
    if not (0 <= rx <= nx - 1 and 0 <= ry <= ny - 1):
        raise ValueError(f"Stars.ref_star {p['ref_star']!r} ([x, y]) is outside the frame "
                         f"{(ny, nx)}")
    if p["hot_pixels"] is None:
        p["hot_pixels"] = round(ny * nx / 5000)
    if p["hot_pattern_pixels"] is None:
        p["hot_pattern_pixels"] = round(ny * nx / 1000)
    if p["cosmic_rays"] is None:
        p["cosmic_rays"] = 20.0 * ny * nx / 1e6
    if p["trail_fwhm"] is None:
        p["trail_fwhm"] = p["fwhm"]

    # the sensor
    if p["dark_reference"] is None:
        p["dark_reference"] = p["temperature"]
    if p["vignetting_centre"] is None:
        p["vignetting_centre"] = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    p["hot_exptime"] = p["exptime"]

    # the geometry
    if p["drift_step"] is None:
        p["drift_step"] = 1.0
    if p["jitter"] is None:
        p["jitter"] = 0.5
    if p["centre"] is None:
        p["centre"] = ((nx - 1) / 2.0, (ny - 1) / 2.0)
    for name in ("shifts", "rotation", "scale", "transforms"):
        _check_length(f"Motion.{name}", p[name], n_frames)
    if p["scale"] is None and 1.0 + (n_frames - 1) * p["scale_rate"] <= 0:
        raise ValueError(f"Motion.scale_rate={p['scale_rate']} shrinks the field to nothing "
                         f"within {n_frames} frames")

    p["png_options"] = dict(png_options or {"level": 1, "strategy": 3, "filter": 16})
    p["jpeg_quality"] = int(jpeg_quality)
    p["prefix"] = str(prefix)
    p["overwrite"] = bool(overwrite)
    return p


def make_tutorial_frames(
    directory,
    *,
    shape=(2200, 3200),
    seed=0,
    n_stars=None,
    prefix="ring",
    overwrite=False,
    dtype="uint16",
    sky=None,
    stars=None,
    camera=None,
    artefacts=None,
    sensor=None,
    workers=None,
    **deprecated,
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
    seed, prefix, overwrite, dtype, workers
        As for :func:`make_frames`.
    n_stars : int, optional
        Field stars in the frame; default 2000 (or ``stars.n_stars``).
    sky, stars, camera, artefacts, sensor : optional
        As for :func:`make_frames`, except what the tutorial fixes:
        ``Stars.ref_star``, ``Artefacts.quiet_box`` and
        ``Artefacts.quiet_flux_max``, and the motion. ``Stars.ref_peak``
        defaults to 50000.
    **deprecated
        Flat keywords of :func:`make_frames`, with a FutureWarning.

    Returns
    -------
    Truth
    """
    fixed = ("n_frames", "shifts", "ref_star", "subpixel", "quiet_box", "quiet_flux_max", "fmt",
             "motion", "drift_step", "jitter")
    clash = sorted(set(deprecated) & set(fixed))
    if clash:
        raise ValueError(f"make_tutorial_frames fixes {', '.join(clash)}; do not pass them")
    groups = {"sky": sky, "stars": stars, "camera": camera, "artefacts": artefacts,
              "sensor": sensor}
    if sky is not None and not isinstance(sky, Sky):
        deprecated["sky"] = groups.pop("sky")
    unknown = sorted(set(deprecated) - set(LEGACY))
    if unknown:
        raise TypeError(f"make_tutorial_frames() got an unexpected keyword argument "
                        f"{unknown[0]!r}")
    counted = stars is not None and (stars.n_stars is not None or stars.density is not None)
    if n_stars is not None and counted:
        raise ValueError("make_tutorial_frames: n_stars= and stars=Stars(n_stars=...) both "
                         "given; give one")
    groups = merge_flat(deprecated, groups, caller="make_tutorial_frames")
    stars, artefacts = groups["stars"], groups["artefacts"]
    for obj, name in ((stars, "ref_star"), (artefacts, "quiet_box"),
                      (artefacts, "quiet_flux_max")):
        if getattr(obj, name) is not None:
            raise ValueError(f"make_tutorial_frames fixes {type(obj).__name__}.{name}; "
                             "do not pass it")
    if n_stars is not None or (stars.n_stars is None and stars.density is None):
        stars = replace(stars, n_stars=2000 if n_stars is None else n_stars)
    ref_peak = 50000.0 if stars.ref_peak is None else stars.ref_peak
    psf = _scene.PSF(stars.psf, stars.fwhm, stars.moffat_beta)
    groups["stars"] = replace(stars, ref_star=TUTORIAL_STARS[0], ref_peak=ref_peak)
    groups["artefacts"] = replace(artefacts, quiet_box=(300, 500, 400, 600),
                                  quiet_flux_max=0.4 * ref_peak / psf.peak_fraction)
    groups["motion"] = Motion(shifts=np.array(TUTORIAL_SHIFTS, dtype=np.float64))
    return _make(directory, len(TUTORIAL_SHIFTS), shape, "fits", dtype, seed, groups, None, 95,
                 prefix, overwrite, workers)


# --------------------------------------------------------------------------
# the hard cases

#: Names of the cases :func:`make_case` builds.
CASES = (
    "crowded",
    "faint_defocused",
    "trail_through_star",
    "cloud",
    "meridian_flip",
    "rotation_0.2",
    "rotation_1",
    "scale",
    "other_field",
    "big_drift",
    "hot_pattern",
    "nebula",
    "globular",
)


def make_case(name, directory, *, n_frames=10, shape=(512, 512), seed=0, fmt="fits",
              dtype=None, overwrite=False, workers=None):
    """Write one of the hard cases registration must handle, and return its truth.

    Every case is an ordinary :func:`make_frames` night (its options are in
    ``truth.options``) with a sub-pixel drift of about 1 px a frame unless
    said otherwise; frame 0 is always the reference and always clean.

    ``"crowded"``
        About 0.012 stars per square pixel (3000 in 512 x 512), most of them
        with a neighbour within two FWHM: blended stars everywhere.
    ``"faint_defocused"``
        Like a real night we must handle: FWHM 11 px, field stars peaking
        about 3 sigma per pixel above the sky (2.5 sigma and up, median 3.5,
        reference star 8 sigma), one hot pixel per 1000 pixels up to 30000
        ADU, a fixed sensor pattern of 11 ADU rms (columns 10, rows 4.5),
        and a drift of 12 px a frame.
    ``"trail_through_star"``
        Satellite trails (peak 8000 ADU) in frames 1 and ``n_frames // 2``,
        each through the brightest star of its frame.
    ``"cloud"``
        Frame ``n_frames // 2`` seen through a cloud: its stars at 20%
        (``truth.transmission``).
    ``"meridian_flip"``
        From frame ``n_frames // 2`` on the field is turned by 180 degrees
        about the frame centre and lands ``Motion.flip_offset`` off.
    ``"rotation_0.2"``, ``"rotation_1"``
        Field rotation about the frame centre growing steadily to 0.2 (1)
        degrees at the last frame.
    ``"scale"``
        Image scale changing by up to +-5% over the night (focus,
        refraction): ``1 + 0.05 sin(2 pi i / (n_frames - 1))``.
    ``"other_field"``
        Frame ``n_frames // 2`` shows another star field of the same density
        (``truth.other_stars``), as when the mount lost the target.
    ``"big_drift"``
        A drift of ``0.75 * max(shape)`` over the night, more than half the
        frame: the reference star leaves the frame; stars fill the whole
        swept area.
    ``"hot_pattern"``
        30% of the frames (never frame 0) show a pattern of extra hot
        pixels, one per 1000 pixels, fixed on the sensor
        (``truth.hot_pattern``, ``truth.hot_pattern_frames``).
    ``"nebula"``
        A bright nebula or galaxy in the field (``Stars.nebula``): a round
        glow of sigma ``max(shape) / 6`` px peaking 20000 ADU over the sky
        (20 times the sky, over a hundred times its noise), off the centre
        of frame 0, moving with the stars.
    ``"globular"``
        The faint defocused night (FWHM 11 px, peaks of about 3 sigma, hot
        pixels, a sensor pattern, 12 px a frame of drift) around a globular
        cluster (``Stars.cluster``): 300 stars more within a Plummer profile
        of radius ``max(shape) / 16`` centred at 35% of the width and 60%
        of the height of frame 0, crowding and blending into its core, and
        the light of its faint stars as a glow (``Stars.nebula``) of that
        sigma peaking at 3000 ADU (three times the sky).

    Parameters
    ----------
    name : str
        One of :data:`CASES`.
    directory : str or os.PathLike
        Folder to write to.
    n_frames : int
        Number of frames, at least 2.
    shape : tuple of int
        ``(ny, nx)``.
    seed, fmt, dtype, overwrite, workers
        As for :func:`make_frames`.

    Returns
    -------
    Truth

    Examples
    --------
    >>> import tempfile
    >>> truth = make_case("meridian_flip", tempfile.mkdtemp(), n_frames=4, shape=(128, 128))
    >>> truth.rotation.tolist()
    [0.0, 0.0, 180.0, 180.0]
    """
    if name not in CASES:
        raise ValueError(f"unknown case {name!r}; choose from {', '.join(CASES)}")
    if isinstance(n_frames, bool) or not isinstance(n_frames, (int, np.integer)) or n_frames < 2:
        raise ValueError(f"make_case needs n_frames >= 2, not {n_frames!r}")
    ny, nx = (int(v) for v in shape)
    groups = _case_options(name, int(n_frames), (ny, nx), seed)
    return _make(directory, n_frames, (ny, nx), fmt, dtype, seed, groups, None, 95, "frame",
                 overwrite, workers)


def _case_options(name, n, shape, seed):
    """The option groups of case ``name``."""
    ny, nx = shape
    big = max(ny, nx)
    groups = {"sky": Sky(), "stars": Stars(), "camera": Camera(),
              "motion": Motion(subpixel=True), "artefacts": Artefacts(), "sensor": Sensor()}
    mid = n // 2
    if name == "crowded":
        groups["stars"] = Stars(density=0.012, flux_min=300.0, flux_index=1.2, ref_isolation=20.0)
    elif name in ("faint_defocused", "globular"):
        sky, camera = groups["sky"], Camera(hot_pixels=round(ny * nx / 1000),
                                            hot_level=(200.0, 30000.0), column_pattern=10.0,
                                            row_pattern=4.5)
        sigma = math.sqrt(sky.level * camera.gain + camera.read_noise**2) / camera.gain
        fwhm, step = 11.0, 12.0
        peak = _scene.PSF("gaussian", fwhm).peak_fraction
        groups["camera"] = camera
        groups["stars"] = Stars(
            n_stars=150, fwhm=fwhm, flux_min=2.5 * sigma / peak, flux_index=2.0,
            flux_max=15.0 * sigma / peak, ref_peak=8.0 * sigma, ref_isolation=40.0,
            margin=max(0.25, (step * (n - 1) * 1.2 + 4 * fwhm) / big),
        )
        groups["motion"] = Motion(subpixel=True, drift_step=step, jitter=1.0)
        if name == "globular":
            radius, x0, y0 = big / 16, 0.35 * nx, 0.6 * ny
            groups["stars"] = replace(groups["stars"], cluster=(300, radius, x0, y0),
                                      nebula=(3000.0, radius, x0, y0))
    elif name == "trail_through_star":
        groups["artefacts"] = Artefacts(trail=(1, mid), trail_through_star=True,
                                        trail_peak=8000.0)
    elif name == "cloud":
        groups["artefacts"] = Artefacts(clouds={mid: 0.2})
    elif name == "meridian_flip":
        groups["motion"] = Motion(subpixel=True, flip_at=mid)
    elif name in ("rotation_0.2", "rotation_1"):
        total = float(name.split("_")[1])
        groups["motion"] = Motion(subpixel=True, rotation_rate=total / (n - 1))
    elif name == "scale":
        scale = 1.0 + 0.05 * np.sin(2.0 * math.pi * np.arange(n) / (n - 1))
        scale[0] = 1.0
        groups["motion"] = Motion(subpixel=True, scale=scale)
    elif name == "other_field":
        groups["artefacts"] = Artefacts(other_field=(mid,))
    elif name == "big_drift":
        step = 0.75 * big / (n - 1)
        groups["stars"] = Stars(margin=0.9)
        groups["motion"] = Motion(subpixel=True, drift_step=step)
    elif name == "nebula":
        groups["stars"] = Stars(nebula=(20000.0, big / 6, 0.55 * nx, 0.45 * ny))
    else:  # hot_pattern
        k = max(1, round(0.3 * n))
        rng = _scene.stream(seed, _scene._EXTRA, _CASE_FRAMES)
        frames = rng.choice(np.arange(1, n), size=min(k, n - 1), replace=False)
        groups["artefacts"] = Artefacts(hot_pattern=sorted(int(i) for i in frames))
    return groups


_CASE_FRAMES = 100  # stream key of the frames a case picks


# --------------------------------------------------------------------------
# a whole night

#: The sensor of :func:`make_night` when none is given: a cooled CMOS camera
#: behind a reducer (bias 800 ADU, 0.1 ADU/s of dark current and 1.5 ADU/s of
#: amp glow at the top-right corner at the lights' temperature, 25% vignetting,
#: three dust donuts on the sensor window and one on each filter, eight cold
#: pixels, 0.5% pixel response).
NIGHT_SENSOR = Sensor(bias=800.0, dark_current=0.1, amp_glow=1.5, cold_pixels=8, vignetting=0.25,
                      dust=3, filter_dust=1, pixel_response=0.005)

#: The camera of :func:`make_night` when none is given: :class:`Camera` with a
#: column pattern of 4 ADU in the bias.
NIGHT_CAMERA = Camera(column_pattern=4.0)

STYLES = _night.STYLES
MISTAKES = _night.MISTAKES


@dataclass(frozen=True, eq=False)
class NightTruth(_SensorTruth):
    """What :func:`make_night` wrote: every file, what it is, and the sensor's truth.

    The sensor's truth (:attr:`bias`, :attr:`dark_rate`, :meth:`dark`,
    :meth:`flat`, :attr:`cold_pixels`, :attr:`hot_pixels`, :meth:`dust`) is
    the same for every frame of the night; it is in ADU (uint16 files).

    Attributes
    ----------
    directory : str
        The night's folder.
    style : str
        The capture program whose headers and names the files follow.
    frames : tuple of NightFrame
        Every file, in the order taken: lights, flats, flat-darks, darks,
        bias (see :class:`NightFrame`).
    lights : tuple of Truth
        One :class:`Truth` per set of lights (its ``paths`` are the set's
        files, its ``dates`` and ``temperatures`` theirs): transforms,
        stars, noiseless and calibrated frames.
    params : dict
        The resolved parameters of the night's sensor and camera (those of
        :attr:`Truth.params` for a frame of ``Camera``'s exposure) and of
        the night: ``style``, ``folders``, ``imagetyp``, ``mistakes``,
        ``gain``, ``offset``, ``temperature_jitter``.
    options : dict
        Keyword arguments that make the same night again:
        ``make_night(directory, **night.options)`` (the seed resolved).
    """

    directory: str
    style: str
    frames: tuple
    lights: tuple
    params: dict
    options: dict
    _scene: _scene.Scene = field(repr=False)
    _sets: dict = field(repr=False)

    def select(self, kind: str | None = None, **where) -> list:
        """Return the frames of a kind with the given attributes, in order.

        Parameters
        ----------
        kind : str, optional
            "light", "dark", "flat", "bias" or "darkflat"; default all.
        **where
            Attributes of :class:`NightFrame` and the values they must have,
            e.g. ``filter="Ha"``, ``exptime=300.0``, ``mistake=None``.

        Examples
        --------
        >>> import tempfile
        >>> night = make_night(tempfile.mkdtemp(), lights=2, darks=1, flats=1, bias=1,
        ...                    shape=(64, 64))
        >>> [f.kind for f in night.select()]
        ['light', 'light', 'flat', 'dark', 'bias']
        """
        if kind is not None and kind not in _night.KINDS:
            raise ValueError(f"kind must be one of {_night.KINDS}, not {kind!r}")
        unknown = sorted(set(where) - set(_night.NightFrame.__dataclass_fields__))
        if unknown:
            raise ValueError(f"NightFrame has no attribute {unknown[0]!r}")
        return [f for f in self.frames
                if (kind is None or f.kind == kind)
                and all(getattr(f, k) == v for k, v in where.items())]

    def paths(self, kind: str | None = None, **where) -> list:
        """Return the paths of :meth:`select`'s frames."""
        return [f.path for f in self.select(kind, **where)]

    @property
    def hot_pixels(self) -> tuple:
        """``(y, x)`` sensor indices of the hot pixels (dark current, in every frame)."""
        sensor = self._scene.sensor
        return sensor.hot_y.copy(), sensor.hot_x.copy()

    def expected(self, frame) -> np.ndarray:
        """Return a file's noiseless expectation, float32, shaped like the file.

        Everything the file holds but the noise and the cosmic rays: for a
        light, ``(sky + stars + trail) * flat + dark + bias`` (hot pixels
        and hot-pixel pattern included); for a calibration frame, the bias,
        the dark signal at its exposure and temperature and, for a flat, the
        light times the flat field; region of interest and binning applied;
        saturated and clipped like the file.

        Parameters
        ----------
        frame : NightFrame or int
            A frame of :attr:`frames`, or its index there.
        """
        if isinstance(frame, (int, np.integer)):
            frame = self.frames[int(frame)]
        if frame.kind == "light":
            truth = self.lights[frame.set]
            return truth._scene.expected(frame.index)[0]
        s = self._sets[(frame.kind, frame.set)]
        return self._scene.calibration_expected(
            frame.exptime, frame.temperature, _flat_adu(s, self.params), s.filter, s.roi,
            s.binning)


def _flat_adu(s, p):
    """The light of a flat set in sensor ADU (0 for other kinds)."""
    if s.kind != "flat":
        return 0.0
    return s.level * _night.saturate_level(p) / p["adu_scale"]


def make_night(
    directory,
    *,
    lights=None,
    darks=10,
    flats=10,
    bias=10,
    darkflats=0,
    style="nina",
    folders=False,
    imagetyp=True,
    mistakes=(),
    shape=(512, 512),
    seed=0,
    sky=None,
    stars=None,
    camera=None,
    motion=None,
    artefacts=None,
    sensor=None,
    gain=100,
    offset=50,
    temperature_jitter=0.2,
    overwrite=False,
    workers=None,
    bayer=None,
):
    """Write a whole night's folder: lights, darks, flats and bias, as a capture program would.

    Every file is a uint16 FITS frame of the same sensor (:class:`Sensor`):
    lights are ``(sky + stars) * flat + dark(exptime, T) + noise + bias``
    as in :func:`make_frames`; bias frames hold the bias and read noise;
    darks add the dark signal (dark current, amp glow and hot pixels,
    linear in the exposure and doubling every ``Sensor.dark_doubling``
    degrees C); flats a uniform light times the flat field of their filter.
    Every frame has Poisson noise on its electrons and read noise, cosmic
    rays in proportion to its exposure, and a sensor temperature (CCD-TEMP)
    a little off its set point (SET-TEMP). The headers and file names are
    those of the capture program ``style``.

    Parameters
    ----------
    directory : str or os.PathLike
        The night's folder; created if missing.
    lights : int, Lights or list of Lights, optional
        The light frames: a count (one set with the camera's exposure,
        filter, target and temperature), or sets of :class:`Lights` (other
        filters, exposures, a second target with ``field=1``). Default 20.
    darks : int, Darks or list of Darks
        Dark frames: a count is that many darks for every exposure (and
        temperature and gain) of the lights; :class:`Darks` sets may give
        other exposures and temperatures, binning or a region of interest.
    flats : int, Flats or list of Flats
        Flat frames: a count is that many flats through every filter of the
        lights; :class:`Flats` sets give a filter, level and exposure.
    bias : int, Bias or list of Bias
        Bias frames.
    darkflats : int, Darks or list of Darks
        Flat-darks: darks at the flats' exposures (a count: that many for
        every exposure of the flats).
    style : {"nina", "sharpcap", "maxim", "asiair"}
        The capture program whose IMAGETYP spellings, header cards and file
        names the files follow (see the module notes of ``_synth_night``):
        ``LIGHT_M 42_30.00s_2024-03-09_21-00-00_L_-10.00_0000.fits`` (N.I.N.A.),
        ``M 42_00001 21_00_00.fits`` (SharpCap), ``M 42-001L.fit`` with
        ``IMAGETYP = 'Light Frame'`` (MaxIm DL),
        ``Light_M 42_30.0s_Bin1_SYN1600MM_gain100_20240309-210000_-10.0C_L_0001.fit``
        (ASIAIR).
    folders : bool, "native" or dict
        False: every file in ``directory``. True: ``lights/``, ``darks/``,
        ``flats/``, ``bias/`` and ``darkflats/``; a dict renames some
        (``{"bias": "biases"}``). "native": the program's own tree (N.I.N.A.
        ``2024-03-09/LIGHT/...``, ASIAIR ``Autorun/Light/M 42/...``,
        SharpCap a folder per date, target, type and capture; MaxIm DL one
        folder).
    imagetyp : bool or dict
        True: the style's IMAGETYP card; False: no IMAGETYP card at all (as
        some programs write; then only folders or names tell the kinds
        apart); a dict of kind -> spelling (or None for no card) overrides
        some, e.g. ``{"bias": "Offset", "flat": "Flat Frame"}``. Kinds are
        "light", "dark", "flat", "bias" and "darkflat".
    mistakes : iterable of str
        Frames that should not be used, for tests of what sorts a night:
        ``"dark_size"`` two darks of a region of interest half the size,
        ``"dark_binning"`` two darks binned 2x2, ``"flat_filter"`` three
        flats of a filter no light has, ``"flats_saturated"`` every flat at
        1.6 times the file's range (clipped), ``"no_lights"`` no lights at
        all. Each such frame has ``NightFrame.mistake`` set.
    shape : tuple of int
        ``(ny, nx)`` of the sensor.
    seed : int or None
        Master seed; None draws one. Each frame has streams of its own: a
        set's frames do not change when other sets are added.
    sky, stars, camera, motion, artefacts : optional
        As for :func:`make_frames`; ``Camera`` gives the default exposure,
        filter, target, temperature and start of the night, and its gain
        (e-/ADU) and read noise hold for every frame. Default camera:
        :data:`NIGHT_CAMERA`. ``Motion`` applies to each set of lights.
    sensor : Sensor, optional
        Default :data:`NIGHT_SENSOR`; ``Sensor()`` for none. Its
        ``dark_reference`` defaults to ``Camera.temperature``, and the hot
        pixels' levels (``Camera.hot_level``) are their dark signal in
        ``Camera.exptime`` seconds.
    gain, offset : int
        The camera's gain and offset settings written in the headers
        (GAIN or ISOSPEED, OFFSET); :class:`Lights` and calibration sets
        may set their own gain.
    temperature_jitter : float
        Standard deviation (degrees C) of CCD-TEMP about SET-TEMP, rounded
        to 0.1; the dark signal follows CCD-TEMP.
    overwrite : bool
        Replace files of the same names (only files bigstack wrote);
        otherwise a FileExistsError names the first one, before anything is
        written.
    workers : int, optional
        Threads that render and write (default: the CPUs, at most 8); the
        files do not depend on it.
    bayer : {"RGGB", "GRBG", "GBRG", "BGGR"}, optional
        A one-shot-colour camera: the lights are Bayer mosaics of coloured
        sky and stars (as :func:`make_frames` with ``bayer``), and every frame
        carries ``BAYERPAT``.

    Returns
    -------
    NightTruth

    Raises
    ------
    ValueError
        If an option is out of range or does not fit the others (the
        message names it).
    FileExistsError
        If a file exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile
    >>> from astropy.io import fits
    >>> from bigstack.synthetic import Darks, Lights, make_night
    >>> night = make_night(tempfile.mkdtemp(), shape=(64, 64), style="maxim", bias=2,
    ...                    lights=[Lights(2, filter="R"), Lights(2, filter="G")],
    ...                    darks=[Darks(2, exptime=30.0)], flats=2)
    >>> [(f.kind, f.filter) for f in night.select("flat")]
    [('flat', 'R'), ('flat', 'R'), ('flat', 'G'), ('flat', 'G')]
    >>> fits.getheader(night.paths("flat")[0])["IMAGETYP"]
    'Flat Field'
    """
    if style not in _night.STYLES:
        raise ValueError(f"make_night: style must be one of {_night.STYLES}, not {style!r}")
    layout = _night.resolve_folders(folders)
    spellings = _night.resolve_imagetyp(style, imagetyp)
    if isinstance(mistakes, str):
        mistakes = (mistakes,)
    mistakes = tuple(mistakes)
    if "no_lights" in mistakes and lights is not None:
        raise ValueError("make_night: lights= and mistakes=('no_lights',) both given; give one")
    for name, value in (("gain", gain), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"make_night: {name} must be an integer >= 0, not {value!r}")
    jitter = float(temperature_jitter)
    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"make_night: temperature_jitter must be >= 0, not {temperature_jitter!r}")
    given = {"sky": sky, "stars": stars, "camera": camera, "motion": motion,
             "artefacts": artefacts, "sensor": sensor}
    defaults = {"camera": NIGHT_CAMERA, "sensor": NIGHT_SENSOR}
    groups = {}
    for name, cls in GROUPS.items():
        value = given[name]
        if value is not None and not isinstance(value, cls):
            raise ValueError(f"make_night: {name} must be a synthetic.{cls.__name__}, "
                             f"not {value!r}")
        groups[name] = value if value is not None else defaults.get(name, cls())

    base = _resolve(1, shape, "fits", "uint16", seed, groups, None, 95, "night", overwrite)
    if bayer is not None:
        from ._bayer import PATTERNS

        if str(bayer).upper() not in PATTERNS or base["shape"][0] % 2 or base["shape"][1] % 2:
            raise ValueError(f"make_night: bayer={bayer!r} needs one of {PATTERNS} and even "
                             f"sides, not shape {base['shape']}")
        bayer = str(bayer).upper()
    base_geom = _scene.geometry(base)
    base_scene = _scene.Scene(base, base_geom)
    cam = groups["camera"]
    sets = _night.plan(20 if lights is None else lights, darks, flats, bias, darkflats, mistakes,
                       cam, groups["sky"].level, int(gain), base["shape"])
    times = _night.timeline(sets, cam.start, cam.gap)

    # every set of lights is a scene of its own on the night's sensor
    scenes, light_groups = {}, {}
    for s, when in zip(sets, times, strict=True):
        if s.kind != "light":
            continue
        g = dict(groups)
        g["camera"] = replace(cam, exptime=s.exptime, filter=s.filter, object=s.target,
                              temperature=s.set_temp, start=when[0].isoformat())
        g["sky"] = replace(groups["sky"], level=s.sky)
        if s.field == 1:
            g["artefacts"] = replace(groups["artefacts"], other_field=tuple(range(s.n)))
        p = _resolve(s.n, shape, "fits", "uint16", base["seed"], g, None, 95, "night", overwrite)
        p.update(frame_base=1_000_000 * s.index, temperature_jitter=jitter, bayer=bayer,
                 dark_reference=base["dark_reference"], hot_exptime=base["hot_exptime"],
                 cosmic_rays=base["cosmic_rays"] * s.exptime / base["hot_exptime"])
        geom = _scene.geometry(p)
        p["shifts"] = geom["shifts"]
        scenes[s.index] = (p, geom, _scene.Scene(p, geom, sensor=base_scene.sensor))
        light_groups[s.index] = g

    # where every frame goes, and what its header says
    directory = os.fspath(directory)
    counters, jobs, frames = {}, [], []
    for s, when in zip(sets, times, strict=True):
        for j, date in enumerate(when):
            if s.kind == "light":
                temp = scenes[s.index][2].temperature(j)
            else:
                temp = _calibration_temperature(base["seed"], s, j, jitter)
            rel = _night.relative_path(style, layout, s, j, date, temp, counters, when[0])
            path = os.path.join(directory, *rel.split("/"))
            roi = s.roi or base["shape"]
            frames.append(_night.NightFrame(
                path=path, kind=s.kind, imagetyp=spellings[s.kind], exptime=float(s.exptime),
                temperature=float(temp), set_temp=float(s.set_temp),
                filter=s.filter if s.kind in ("light", "flat") else None,
                object=s.target if s.kind == "light" else None, gain=int(s.gain),
                binning=int(s.binning), shape=(roi[0] // s.binning, roi[1] // s.binning),
                date=date.isoformat(timespec="milliseconds"), set=s.index, index=j,
                level=_flat_adu(s, base) if s.kind == "flat" else None, mistake=s.mistake,
            ))
            jobs.append((s, j, date, temp, path))
    _check_outputs([f.path for f in frames], overwrite)
    for folder in sorted({os.path.dirname(f.path) for f in frames} | {directory}):
        os.makedirs(folder, exist_ok=True)

    saturate = _night.saturate_level(base)
    egain = base["gain"] / base["adu_scale"]

    def job(item):
        s, j, date, temp, path = item
        if s.kind == "light":
            values, hits = scenes[s.index][2].render(j)
            data = values[0]
        else:
            key = (_night.KIND_CODE[s.kind], s.index, j)
            data, hits = base_scene.render_calibration(key, s.exptime, temp, _flat_adu(s, base),
                                                       s.filter, s.roi, s.binning)
        header = _night.cards(style, s, spellings[s.kind], date, temp, egain=egain,
                              offset=offset)
        if bayer is not None:  # every frame of a colour camera is a mosaic
            header.append(("BAYERPAT", bayer, "Bayer cell, top row first"))
        payload = _night.fits_bytes(data, header, saturate)
        with open(path, "wb" if overwrite else "xb") as f:
            f.write(payload)
        return hits

    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    workers = max(1, min(int(workers), len(jobs) or 1))
    if workers == 1:
        hits = [job(item) for item in jobs]
    else:
        with ThreadPoolExecutor(workers) as pool:
            hits = list(pool.map(job, jobs))

    truths, k = [], 0
    for s, when in zip(sets, times, strict=True):
        if s.kind == "light":
            p, geom, scene = scenes[s.index]
            paths = [f.path for f in frames[k:k + s.n]]
            truths.append(_truth(p, geom, scene, light_groups[s.index], paths, when,
                                 hits[k:k + s.n]))
        k += s.n

    params = dict(base)
    params.update(style=style, folders=layout, imagetyp=spellings, mistakes=mistakes,
                  gain_setting=int(gain), offset=int(offset), temperature_jitter=jitter)
    options = {"lights": lights, "darks": darks, "flats": flats, "bias": bias,
               "darkflats": darkflats, "style": style, "folders": folders,
               "imagetyp": imagetyp, "mistakes": mistakes, "shape": base["shape"],
               "seed": base["seed"], **groups, "gain": gain, "offset": offset,
               "temperature_jitter": temperature_jitter}
    return NightTruth(directory=directory, style=style, frames=tuple(frames),
                      lights=tuple(truths), params=params, options=options, _scene=base_scene,
                      _sets={(s.kind, s.index): s for s in sets})


def _calibration_temperature(seed, s, j, jitter):
    """CCD-TEMP of frame ``j`` of calibration set ``s``."""
    if not jitter:
        return float(s.set_temp)
    rng = _scene.stream(seed, _scene._CALIB, _night.KIND_CODE[s.kind], s.index, j,
                        _scene._TEMPERATURE)
    return round(s.set_temp + jitter * float(rng.standard_normal()), 1) + 0.0


def _check_outputs(paths, overwrite):
    """Refuse duplicates, and files that exist unless ``overwrite`` and bigstack wrote them."""
    seen = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"make_night: two frames would be written to {path}")
        seen.add(path)
        if not os.path.lexists(path):
            continue
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "file exists; pass overwrite=True to replace it",
                                  path)
        if not _files.made_by_bigstack(path):
            raise FileExistsError(errno.EEXIST, "file exists and was not written by bigstack; "
                                  "refusing to replace it", path)
