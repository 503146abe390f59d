"""A night's folder for :func:`bigstack.synthetic.make_night`: the plan, the headers, the names.

Private to :mod:`bigstack.synthetic`, which renders the frames. Here: the
sets of frames a night holds (resolved from :class:`Lights`,
:class:`Darks`, :class:`Flats` and :class:`Bias`), their times, and what
each capture program writes: the IMAGETYP spellings, the header cards and
the file names and folders.

What the styles follow (facts about the programs, no code of theirs):

- ``"nina"``: IMAGETYP ``LIGHT``, ``DARK``, ``FLAT``, ``BIAS``,
  ``DARKFLAT``; EXPOSURE and EXPTIME, GAIN and OFFSET as integers, EGAIN,
  SET-TEMP and CCD-TEMP. Its default file pattern (the ``folders="native"``
  tree) is, token by token, DATEMINUS12 \\ IMAGETYPE \\ DATETIME _ FILTER _
  SENSORTEMP _ EXPOSURETIME s _ FRAMENR; in one folder, the pattern users
  write for that: IMAGETYPE _ TARGETNAME _ EXPOSURETIME s _ DATETIME _
  FILTER _ SENSORTEMP _ FRAMENR (the target is empty for calibration
  frames). Numbers with two decimals, frame numbers from 0000.
- ``"sharpcap"``: frame types Light, Dark, Flat, Bias and Dark Flat; a
  folder per date, then target (``Capture`` when there is none), frame type
  and the time the capture started; files ``<target>_<00001>.fits``, with
  the time appended (``Capture_00001 21_04_12.fits``) in one folder.
- ``"maxim"``: IMAGETYP ``Light Frame``, ``Dark Frame``, ``Flat Field``,
  ``Bias Frame`` (no flat-dark type: those are ``Dark Frame`` too); the
  autosave names ``<name>-<001><filter>.fit`` in one folder, numbered on
  per name; ISOSPEED instead of GAIN, as MaxIm DL writes for cameras set by
  ISO.
- ``"asiair"``: IMAGETYP ``Light``, ``Dark``, ``Flat``, ``Bias``; names
  ``Light_<target>_<60.0>s_Bin1_<camera>_gain<100>_<YYYYMMDD-HHMMSS>_<-10.0>C_<filter>_<0001>.fit``
  (``Dark_``, ``Flat_``, ``Bias_`` without the target) under
  ``Autorun/Light/<target>/``, ``Autorun/Dark/``, ... in the native tree.

Every file also carries ``SWCREATE = 'bigstack.synthetic (<style> style)'``,
which marks it as written by bigstack (an overwrite replaces only those).
"""

from __future__ import annotations

import datetime as _dt
import io
import math
from dataclasses import dataclass, replace

import numpy as np

from ._synth_options import Bias, Darks, Flats, Lights

STYLES = ("nina", "sharpcap", "maxim", "asiair")
KINDS = ("light", "dark", "flat", "bias", "darkflat")
MISTAKES = ("dark_size", "dark_binning", "flat_filter", "flats_saturated", "no_lights")

#: IMAGETYP of each kind of frame, per style.
IMAGETYP = {
    "nina": {"light": "LIGHT", "dark": "DARK", "flat": "FLAT", "bias": "BIAS",
             "darkflat": "DARKFLAT"},
    "sharpcap": {"light": "Light", "dark": "Dark", "flat": "Flat", "bias": "Bias",
                 "darkflat": "Dark Flat"},
    "maxim": {"light": "Light Frame", "dark": "Dark Frame", "flat": "Flat Field",
              "bias": "Bias Frame", "darkflat": "Dark Frame"},
    "asiair": {"light": "Light", "dark": "Dark", "flat": "Flat", "bias": "Bias",
               "darkflat": "Dark"},
}

#: ``folders=True``: the folder of each kind.
FOLDERS = {"light": "lights", "dark": "darks", "flat": "flats", "bias": "bias",
           "darkflat": "darkflats"}

# the calibration kinds' codes in the random stream keys (_CALIB, code, set, frame, purpose)
KIND_CODE = {"dark": 0, "flat": 1, "bias": 2, "darkflat": 3}

CAMERA_MODEL = "SYN1600MM"
INSTRUMENT = "bigstack synthetic camera"
PIXEL_SIZE = 3.76  # microns
#: Seconds between the sets of a night (slewing, changing filters, closing the cover).
SET_GAP = 120.0
_SPARE_FILTERS = ("Ha", "OIII", "SII", "R", "G", "B", "L", "X")


@dataclass(frozen=True)
class NightFrame:
    """One file of a night, as :func:`~bigstack.synthetic.make_night` wrote it.

    Attributes
    ----------
    path : str
        The file.
    kind : {"light", "dark", "flat", "bias", "darkflat"}
        What the frame is ("darkflat": a flat-dark, a dark at a flat's
        exposure).
    imagetyp : str or None
        The IMAGETYP card written, or None when the file has none.
    exptime : float
        Exposure, seconds.
    temperature : float
        The sensor's temperature (CCD-TEMP), degrees C: what its dark
        signal follows.
    set_temp : float
        The cooler's set point (SET-TEMP), degrees C.
    filter : str or None
        FILTER (lights and flats), else None.
    object : str or None
        OBJECT (lights), else None.
    gain : int
        The gain setting written (GAIN, or ISOSPEED in the MaxIm style).
    binning : int
        XBINNING = YBINNING.
    shape : tuple of int
        ``(ny, nx)`` of the file's image.
    date : str
        DATE-OBS (ISO, UTC, start of the exposure).
    set : int
        Index of the frame's set among the sets of its kind.
    index : int
        Index of the frame in its set.
    level : float or None
        Flats: the light's level, sensor ADU, where the flat field is 1.
    mistake : str or None
        The name of the mistake (see ``make_night``'s ``mistakes``) this
        frame is, or None.
    """

    path: str
    kind: str
    imagetyp: str | None
    exptime: float
    temperature: float
    set_temp: float
    filter: str | None
    object: str | None
    gain: int
    binning: int
    shape: tuple
    date: str
    set: int
    index: int
    level: float | None
    mistake: str | None


@dataclass(frozen=True)
class FrameSet:
    """A resolved set of frames: every value known."""

    kind: str
    index: int
    n: int
    exptime: float
    set_temp: float
    gain: int
    filter: str | None = None
    target: str | None = None
    level: float = 0.0  # flats: fraction of the file's range
    binning: int = 1
    roi: tuple | None = None
    field: int = 0
    sky: float | None = None
    mistake: str | None = None


# --------------------------------------------------------------------------
# the plan


def _specs(value, cls, what):
    """``int`` -> [cls(n)] (none for 0); one spec -> [it]; an iterable of specs -> list."""
    if isinstance(value, bool):
        raise ValueError(f"make_night: {what} must be a count or {cls.__name__} sets, "
                         f"not {value!r}")
    if isinstance(value, (int, np.integer)):
        if value < 0:
            raise ValueError(f"make_night: {what} must be >= 0, not {value}")
        return [cls(int(value))] if value > 0 else []
    if isinstance(value, cls):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise ValueError(f"make_night: {what} must be a count, a {cls.__name__} or a list of "
                         f"them, not {value!r}") from None
    for item in items:
        if not isinstance(item, cls):
            raise ValueError(f"make_night: {what} lists {item!r}, not a synthetic."
                             f"{cls.__name__}")
    return items


def _unique(items):
    out = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def plan(lights, darks, flats, bias, darkflats, mistakes, camera, sky_level, gain, shape):
    """The night's sets, in the order they are taken: lights, flats, flat-darks, darks, bias.

    Returns a list of :class:`FrameSet`. Calibration sets without an
    exposure (darks), filter (flats) or temperature take those of the
    lights (each distinct one), or of the camera without lights.
    """
    unknown = sorted(set(mistakes) - set(MISTAKES))
    if unknown:
        raise ValueError(f"make_night: unknown mistake {unknown[0]!r}; choose from "
                         f"{', '.join(MISTAKES)}")
    light_specs = [] if "no_lights" in mistakes else _specs(lights, Lights, "lights")
    ls = []
    for k, s in enumerate(light_specs):
        ls.append(FrameSet(
            "light", k, s.n,
            camera.exptime if s.exptime is None else s.exptime,
            camera.temperature if s.temperature is None else s.temperature,
            gain if s.gain is None else s.gain,
            filter=camera.filter if s.filter is None else s.filter,
            target=camera.object if s.target is None else s.target,
            field=s.field,
            sky=sky_level if s.sky is None else s.sky,
        ))
    first = ls[0] if ls else FrameSet("light", 0, 0, camera.exptime, camera.temperature, gain,
                                      filter=camera.filter)

    def like(exptime=None):
        """Temperature and gain of the first lights of this exposure (or the first lights)."""
        match = [s for s in ls if exptime is not None and s.exptime == exptime]
        ref = match[0] if match else first
        return ref.set_temp, ref.gain

    def calib(kind, k, s, exptime, **extra):
        temp, g = like(exptime if kind == "dark" else None)
        return FrameSet(kind, k, s.n, exptime, temp if s.temperature is None else s.temperature,
                        g if s.gain is None else s.gain, binning=s.binning, roi=s.shape,
                        **extra)

    light_filters = _unique([s.filter for s in ls]) or [camera.filter]
    fs = []
    for s in _specs(flats, Flats, "flats"):
        for name in ([s.filter] if s.filter is not None else light_filters):
            fs.append(calib("flat", len(fs), s, s.exptime, filter=name, level=s.level))
    if "flat_filter" in mistakes:
        spare = next(f for f in _SPARE_FILTERS if f not in light_filters)
        fs.append(calib("flat", len(fs), Flats(3), 1.0, filter=spare, level=0.4,
                        mistake="flat_filter"))
    if "flats_saturated" in mistakes:
        if not fs:
            raise ValueError("make_night: mistake 'flats_saturated' needs flats")
        fs = [replace(s, level=1.6, mistake=s.mistake or "flats_saturated") for s in fs]

    dfs = []
    for s in _specs(darkflats, Darks, "darkflats"):
        if s.exptime is not None:
            times = [(s.exptime, like()[0], like()[1])]
        else:
            times = _unique([(f.exptime, f.set_temp, f.gain) for f in fs]) or [(1.0, *like())]
        for exptime, temp, g in times:
            dfs.append(FrameSet("darkflat", len(dfs), s.n, exptime,
                                temp if s.temperature is None else s.temperature,
                                g if s.gain is None else s.gain, binning=s.binning,
                                roi=s.shape))

    ds = []
    for s in _specs(darks, Darks, "darks"):
        if s.exptime is not None:
            ds.append(calib("dark", len(ds), s, s.exptime))
            continue
        combos = _unique([(x.exptime, x.set_temp, x.gain) for x in ls])
        for exptime, temp, g in combos or [(first.exptime, first.set_temp, first.gain)]:
            ds.append(FrameSet("dark", len(ds), s.n, exptime,
                               temp if s.temperature is None else s.temperature,
                               g if s.gain is None else s.gain, binning=s.binning,
                               roi=s.shape))
    ny, nx = shape
    if "dark_size" in mistakes:
        ds.append(replace(calib("dark", len(ds), Darks(2), first.exptime),
                          roi=(max(8, ny // 2), max(8, nx // 2)), mistake="dark_size"))
    if "dark_binning" in mistakes:
        ds.append(replace(calib("dark", len(ds), Darks(2), first.exptime), binning=2,
                          mistake="dark_binning"))

    bs = []
    for s in _specs(bias, Bias, "bias"):
        bs.append(calib("bias", len(bs), s, s.exptime))
    for s in fs + dfs + ds + bs:
        _check_roi(s, shape)
    return ls + fs + dfs + ds + bs


def _check_roi(s, shape):
    ny, nx = shape
    name = {"dark": "Darks", "darkflat": "Darks", "flat": "Flats", "bias": "Bias"}[s.kind]
    if s.roi is not None and (s.roi[0] > ny or s.roi[1] > nx):
        raise ValueError(f"{name}.shape {s.roi} is larger than the sensor {shape}")
    my, mx = s.roi or shape
    if my // s.binning < 8 or mx // s.binning < 8:
        raise ValueError(f"{name}.binning={s.binning} leaves less than 8 x 8 pixels of "
                         f"{(my, mx)}")


def timeline(sets, start, gap):
    """Start times (datetime, UTC) of every frame of every set: the sets one after another."""
    t = _dt.datetime.fromisoformat(start)
    out = []
    for s in sets:
        step = _dt.timedelta(seconds=s.exptime + gap)
        out.append([t + j * step for j in range(s.n)])
        t = t + s.n * step + _dt.timedelta(seconds=SET_GAP)
    return out


# --------------------------------------------------------------------------
# names and folders


def _sharpcap_who(s):
    return s.target if s.kind == "light" else "Capture"


def file_name(style, s, j, date, temperature, counters):
    """The file name a program gives frame ``j`` of set ``s`` (all files in one folder)."""
    exp, f = s.exptime, s.filter or ""
    if style == "nina":
        kind = IMAGETYP["nina"][s.kind]
        target = s.target or ""
        return (f"{kind}_{target}_{exp:.2f}s_{date:%Y-%m-%d_%H-%M-%S}_{f}_"
                f"{temperature:.2f}_{j:04d}.fits")
    if style == "sharpcap":
        return f"{_sharpcap_who(s)}_{j + 1:05d} {date:%H_%M_%S}.fits"
    if style == "maxim":
        prefix = {"light": s.target, "dark": "Dark", "flat": "Flat", "bias": "Bias",
                  "darkflat": "Dark"}[s.kind]
        counters[prefix] = counters.get(prefix, 0) + 1
        suffix = f if s.kind in ("light", "flat") else ""
        return f"{prefix}-{counters[prefix]:03d}{suffix}.fit"
    # asiair
    head = {"light": f"Light_{s.target}", "dark": "Dark", "flat": "Flat", "bias": "Bias",
            "darkflat": "Dark"}[s.kind]
    tail = f"_{f}" if s.kind in ("light", "flat") and f else ""
    return (f"{head}_{exp:.1f}s_Bin{s.binning}_{CAMERA_MODEL}_gain{s.gain}_"
            f"{date:%Y%m%d-%H%M%S}_{temperature:.1f}C{tail}_{j + 1:04d}.fit")


def native_path(style, s, j, date, temperature, counters, set_start):
    """Folder and file name in the program's own tree."""
    if style == "nina":
        night = (date - _dt.timedelta(hours=12)).date().isoformat()
        name = (f"{date:%Y-%m-%d_%H-%M-%S}_{s.filter or ''}_{temperature:.2f}_"
                f"{s.exptime:.2f}s_{j:04d}.fits")
        return f"{night}/{IMAGETYP['nina'][s.kind]}/{name}"
    if style == "sharpcap":
        folder = {"light": "Light", "dark": "Dark", "flat": "Flat", "bias": "Bias",
                  "darkflat": "DarkFlat"}[s.kind]
        who = _sharpcap_who(s)
        return (f"{set_start:%Y-%m-%d}/{who}/{folder}/{set_start:%H_%M_%S}/"
                f"{who}_{j + 1:05d}.fits")
    if style == "maxim":
        return file_name(style, s, j, date, temperature, counters)
    folder = {"light": f"Light/{s.target}", "dark": "Dark", "flat": "Flat", "bias": "Bias",
              "darkflat": "Dark"}[s.kind]
    return f"Autorun/{folder}/{file_name(style, s, j, date, temperature, counters)}"


def relative_path(style, folders, s, j, date, temperature, counters, set_start):
    """Where frame ``j`` of set ``s`` goes, relative to the night's folder."""
    if folders == "native":
        return native_path(style, s, j, date, temperature, counters, set_start)
    name = file_name(style, s, j, date, temperature, counters)
    if folders is None:
        return name
    return f"{folders[s.kind]}/{name}"


def resolve_folders(folders):
    """``folders`` -> None (one folder), "native", or kind -> folder name."""
    if folders is False or folders is None:
        return None
    if folders is True:
        return dict(FOLDERS)
    if folders == "native":
        return "native"
    if isinstance(folders, dict):
        unknown = sorted(set(folders) - set(KINDS))
        if unknown:
            raise ValueError(f"make_night: folders names unknown kind {unknown[0]!r}; kinds "
                             f"are {', '.join(KINDS)}")
        out = dict(FOLDERS)
        for kind, name in folders.items():
            text = str(name)
            if not text or text.startswith("/") or ".." in text.split("/") or "\\" in text:
                raise ValueError(f"make_night: folders[{kind!r}] must be a relative folder "
                                 f"name, not {name!r}")
            out[kind] = text
        return out
    raise ValueError(f"make_night: folders must be False, True, 'native' or a dict of kind -> "
                     f"folder, not {folders!r}")


def resolve_imagetyp(style, imagetyp):
    """``imagetyp`` -> kind -> the IMAGETYP card's value (None: no card)."""
    base = dict(IMAGETYP[style])
    if imagetyp is True:
        return base
    if imagetyp is False or imagetyp is None:
        return dict.fromkeys(KINDS)
    if isinstance(imagetyp, dict):
        unknown = sorted(set(imagetyp) - set(KINDS))
        if unknown:
            raise ValueError(f"make_night: imagetyp names unknown kind {unknown[0]!r}; kinds "
                             f"are {', '.join(KINDS)}")
        for kind, value in imagetyp.items():
            if value is not None and (not str(value).strip() or not str(value).isascii()):
                raise ValueError(f"make_night: imagetyp[{kind!r}] must be ASCII text or None, "
                                 f"not {value!r}")
            base[kind] = None if value is None else str(value)
        return base
    raise ValueError(f"make_night: imagetyp must be True, False or a dict of kind -> spelling, "
                     f"not {imagetyp!r}")


# --------------------------------------------------------------------------
# headers


def cards(style, s, imagetyp, date, temperature, *, egain, offset):
    """The header cards (key, value, comment) a program writes for a frame of set ``s``."""
    out = []
    if imagetyp is not None:
        out.append(("IMAGETYP", imagetyp, "type of image"))
    out.append(("EXPTIME", float(s.exptime), "[s] exposure time"))
    if style in ("nina", "maxim"):
        out.append(("EXPOSURE", float(s.exptime), "[s] exposure time"))
    out.append(("DATE-OBS", date.isoformat(timespec="milliseconds"),
                "[UTC] start of exposure"))
    out.append(("XBINNING", int(s.binning), "binning along x"))
    out.append(("YBINNING", int(s.binning), "binning along y"))
    out.append(("XPIXSZ", PIXEL_SIZE * s.binning, "[um] pixel size along x"))
    out.append(("YPIXSZ", PIXEL_SIZE * s.binning, "[um] pixel size along y"))
    if style == "maxim":
        out.append(("ISOSPEED", int(s.gain), "gain setting"))
    else:
        out.append(("GAIN", int(s.gain), "gain setting"))
        out.append(("OFFSET", int(offset), "offset setting"))
    out.append(("EGAIN", float(egain), "[e-/ADU] conversion gain"))
    out.append(("CCD-TEMP", float(temperature), "[C] sensor temperature"))
    out.append(("SET-TEMP", float(s.set_temp), "[C] cooler set point"))
    if s.kind in ("light", "flat") and s.filter is not None:
        out.append(("FILTER", s.filter, "filter name"))
    if s.kind == "light":
        out.append(("OBJECT", s.target, "target"))
    out.append(("INSTRUME", INSTRUMENT, "instrument"))
    out.append(("SWCREATE", f"bigstack.synthetic ({style} style)",
                "software that wrote the file"))
    return out


def fits_bytes(data, header_cards, saturate):
    """A FITS file of ``data`` (uint16, BZERO 32768 as cameras write) with the cards."""
    from astropy.io import fits

    header = fits.Header()
    for key, value, comment in header_cards:
        header[key] = (value, comment)
    if saturate is not None:
        header["SATURATE"] = (saturate, "[ADU] saturation level")
    buf = io.BytesIO()
    fits.PrimaryHDU(data=data, header=header).writeto(buf)
    return buf.getvalue()


def saturate_level(p):
    """SATURATE of a uint16 file: 65535, or the full well if lower."""
    level = 65535
    if p["saturation"] is not None:
        level = min(level, math.floor(p["saturation"] * p["adu_scale"]))
    return level
