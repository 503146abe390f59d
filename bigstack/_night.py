"""A night's folder in one command: sort by headers, plan, build masters, calibrate, register,
stack each target and filter.

:func:`plan_night` reads the headers of every frame file under a folder and
sorts them: IMAGETYP (with the spellings capture programs write: ``Light``,
``Light Frame``, ``LIGHT``, ``Dark``, ``Bias``, ``Offset``, ``Flat``, ``Flat
Field``, ``Dark Flat``...), or, when a header has none, the folder it is in
(``lights/``, ``darks/``, ``flats/``, ``bias/`` or ``biases/``...); then
EXPTIME, FILTER, GAIN/ISO, CCD-TEMP, XBINNING, OBJECT and the image size.
Lights are grouped by target (OBJECT) and filter; each group gets:

- a **bias** master from bias frames of its size, binning and gain;
- a **dark** master from darks of its size, binning and gain whose
  temperature is within ``temperature_tolerance`` of the lights' and whose
  exposure is the lights' (else the nearest one, scaled by exposure when a
  bias is there to take out first);
- a **flat** master from flats of its filter, size and binning, with their
  own flat-darks (same exposure; darks of the flats' exposure when the
  capture program has no flat-dark type) or the bias removed.

What is missing or does not match is a warning that says what was not
applied. :func:`stack_night` then builds the masters (cached in the output
store, so a rerun or an ``append`` of new lights reuses them), calibrates the
lights lazily (no calibrated copy), registers them automatically and stacks
each group into its own stack store inside the night's store.

Layout of the night's store (zarr, format 3): the root group's attributes
hold the marker (``attrs["bigstack"]["kind"] == "night"``) and the plan;
``masters/`` holds one array per master (its provenance in the array's
attributes); every ``<target>_<filter>/`` is an ordinary stack store (open it
with :func:`bigstack.open_stack`).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass, field

import numpy as np

from ._errors import BigstackWarning, FrameError, StoreExistsError

_TYPES = {
    "light": ("light", "light frame", "object", "science", "lights"),
    "dark": ("dark", "dark frame", "darks"),
    "bias": ("bias", "bias frame", "offset", "offset frame", "zero", "biases"),
    "flat": ("flat", "flat field", "flat frame", "sky flat", "dome flat", "twilight flat",
             "flats"),
    "darkflat": ("dark flat", "darkflat", "flat dark", "flatdark", "dark-flat", "flat-dark",
                 "darkflats", "flatdarks"),
}
_FOLDERS = {"lights": "light", "light": "light", "darks": "dark", "dark": "dark",
            "flats": "flat", "flat": "flat", "bias": "bias", "biases": "bias",
            "offsets": "bias", "offset": "bias", "darkflats": "darkflat",
            "darkflat": "darkflat", "flatdarks": "darkflat", "dark_flats": "darkflat",
            "flat_darks": "darkflat"}


def frame_kind(imagetyp):
    """``"light"``, ``"dark"``, ``"bias"``, ``"flat"``, ``"darkflat"`` or None."""
    if imagetyp is None:
        return None
    text = re.sub(r"[\s_]+", " ", str(imagetyp).strip().lower())
    for kind in ("darkflat", "light", "dark", "bias", "flat"):  # "dark flat" before "dark"
        if text in _TYPES[kind]:
            return kind
    return None


@dataclass(frozen=True)
class Frame:
    """One file of the night, as its header describes it."""

    path: str
    kind: str
    shape: tuple
    exptime: float | None = None
    filter: str | None = None
    gain: float | None = None
    temperature: float | None = None
    binning: float | None = None
    object: str | None = None


def survey(directory):
    """``(frames, skipped)``: every frame file under ``directory`` sorted by its header.

    ``skipped`` lists ``(path, why)`` for files that could not be told apart.
    """
    from ._io import SUPPORTED_SUFFIXES, inspect

    directory = os.path.abspath(os.fspath(directory))
    if not os.path.isdir(directory):
        raise FrameError(directory, "not a folder")
    frames, skipped = [], []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            if not name.lower().endswith(SUPPORTED_SUFFIXES):
                continue
            path = os.path.join(root, name)
            source = inspect(path)
            header = source.header
            kind = frame_kind(header.get("imagetyp"))
            if kind is None:
                kind = _folder_kind(os.path.relpath(path, directory))
            if kind is None:
                why = ("no IMAGETYP card and not in a lights/darks/flats/bias folder"
                       if header.get("imagetyp") is None
                       else f"IMAGETYP = {header['imagetyp']!r} is not a frame type bigstack knows")
                skipped.append((path, why))
                continue
            frames.append(Frame(path=path, kind=kind, shape=tuple(source.shape),
                                exptime=header.get("exptime"), filter=header.get("filter"),
                                gain=header.get("gain"), temperature=header.get("temperature"),
                                binning=header.get("binning"), object=header.get("object")))
    return frames, skipped


def _folder_kind(relpath):
    for part in reversed(os.path.normpath(relpath).split(os.sep)[:-1]):
        kind = _FOLDERS.get(part.lower())
        if kind:
            return kind
    return None


# --------------------------------------------------------------------------
# the plan


@dataclass
class MasterPlan:
    """A master to build: its kind, frames, and the masters its frames need first."""

    key: str
    kind: str
    frames: list
    exptime: float | None = None
    bias: str | None = None  # key of the bias master to take out first
    dark: str | None = None  # flats: key of the flat-dark master to take out instead


@dataclass
class GroupPlan:
    """Lights of one target and filter, and what calibrates them."""

    name: str
    target: str | None
    filter: str | None
    lights: list
    bias: str | None = None
    dark: str | None = None
    flat: str | None = None
    dark_scale: str = "none"
    notes: list = field(default_factory=list)


@dataclass
class NightPlan:
    """What :func:`stack_night` will do, printed before the work."""

    directory: str
    groups: list
    masters: dict
    warnings: list
    skipped: list
    counts: dict

    def lines(self):
        names = {"light": "light", "dark": "dark", "bias": "bias frame", "flat": "flat",
                 "darkflat": "flat-dark"}
        out = [f"night {self.directory}: " + ", ".join(
            f"{n} {names[kind]}{'' if n == 1 else 's'}" for kind, n in self.counts.items() if n)]
        for master in self.masters.values():
            extra = "".join([f", {master.exptime:g} s" if master.exptime is not None else "",
                             f", bias {master.bias} taken out" if master.bias else "",
                             f", flat-dark {master.dark} taken out" if master.dark else ""])
            out.append(f"  master {master.key}: {len(master.frames)} {master.kind} frames"
                       f"{extra}")
        targets = sorted({g.target for g in self.groups if g.target})
        if len(targets) > 1:
            out.append(f"  {len(targets)} targets in this folder ({', '.join(targets)}): each "
                       "is stacked on its own")
        for group in self.groups:
            applied = [f"{name} {key}" for name, key in (("bias", group.bias),
                                                          ("dark", group.dark),
                                                          ("flat", group.flat)) if key]
            scale = f" (dark scaled by {group.dark_scale})" if group.dark and \
                group.dark_scale != "none" else ""
            out.append(f"  stack {group.name}: {len(group.lights)} lights; calibration: "
                       f"{', '.join(applied) or 'none'}{scale}")
            for note in group.notes:
                out.append(f"    note: {note}")
        for message in self.warnings:
            out.append(f"  warning: {message}")
        for path, why in self.skipped:
            out.append(f"  skipped {path}: {why}")
        return out


def _same(a, b, tolerance=0.0):
    if a is None or b is None:
        return True  # an unknown value does not forbid a match
    return abs(a - b) <= tolerance * max(abs(a), abs(b), 1e-9) if tolerance else a == b


def _fits_camera(frame, light):
    return (frame.shape == light.shape and _same(frame.binning, light.binning)
            and _same(frame.gain, light.gain))


def _slug(text):
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", str(text)).strip("-") or "none"


def plan_night(directory, *, temperature_tolerance=2.0, exposure_tolerance=0.01):
    """Sort a night's folder and decide what calibrates what (see the module notes)."""
    frames, skipped = survey(directory)
    by_kind = {kind: [f for f in frames if f.kind == kind] for kind in _TYPES}
    counts = {kind: len(v) for kind, v in by_kind.items()}
    lights = by_kind["light"]
    if not lights:
        raise FrameError(os.fspath(directory), "no light frames found (by IMAGETYP or in a "
                                               "lights/ folder)")
    masters, messages, groups = {}, [], []

    def master(kind, members, exptime=None, bias=None, dark=None, extra=""):
        ref = members[0]
        parts = [kind, f"{ref.shape[1]}x{ref.shape[0]}"]
        if ref.binning not in (None, 1.0):
            parts.append(f"bin{ref.binning:g}")
        if ref.gain is not None:
            parts.append(f"gain{ref.gain:g}")
        if exptime is not None:
            parts.append(f"{exptime:g}s")
        if extra:
            parts.append(extra)
        key = _slug("-".join(parts))
        if key not in masters:
            masters[key] = MasterPlan(key, kind, [m.path for m in members], exptime, bias, dark)
        return key

    keys = sorted({(f.object, f.filter, f.shape, f.binning) for f in lights},
                  key=lambda k: tuple("" if v is None else str(v) for v in k))
    for target, filt, shape, binning in keys:
        members = [f for f in lights if (f.object, f.filter, f.shape, f.binning) ==
                   (target, filt, shape, binning)]
        ref = members[0]
        name = _slug("_".join(p for p in (target, filt) if p) or "lights")
        if any(g.name == name for g in groups):
            name = _slug(f"{name}_{shape[1]}x{shape[0]}")
        group = GroupPlan(name=name, target=target, filter=filt, lights=[m.path for m in members])
        exptimes = {m.exptime for m in members}
        exptime = members[0].exptime if len(exptimes) == 1 else None
        # bias
        bias = [f for f in by_kind["bias"] if _fits_camera(f, ref)]
        if bias:
            group.bias = master("bias", bias)
        elif by_kind["bias"]:
            messages.append(f"{name}: no bias frame of this camera's size/binning/gain "
                            f"({len(by_kind['bias'])} others found): bias not taken out")
        # dark
        darks = [f for f in by_kind["dark"] if _fits_camera(f, ref)
                 and (f.temperature is None or ref.temperature is None
                      or abs(f.temperature - ref.temperature) <= temperature_tolerance)]
        if darks:
            same = [f for f in darks if exptime is not None
                    and _same(f.exptime, exptime, exposure_tolerance)]
            if same:
                group.dark = master("dark", same, exptime=same[0].exptime, bias=group.bias,
                                    extra=_temperature(same))
                group.dark_scale = "exptime" if group.bias else "none"
            elif group.bias and exptime is not None:
                nearest = min({f.exptime for f in darks if f.exptime is not None},
                              key=lambda e: abs(e - exptime), default=None)
                if nearest is not None:
                    chosen = [f for f in darks if f.exptime == nearest]
                    group.dark = master("dark", chosen, exptime=nearest, bias=group.bias,
                                        extra=_temperature(chosen))
                    group.dark_scale = "exptime"
                    group.notes.append(f"no dark of {exptime:g} s: the {nearest:g} s dark is "
                                       "scaled by exposure")
            else:
                messages.append(f"{name}: no dark of the lights' exposure "
                                f"({exptime if exptime is not None else 'mixed'} s) and no "
                                "bias to scale another: dark not subtracted")
        elif by_kind["dark"]:
            temps = sorted({f.temperature for f in by_kind["dark"] if f.temperature is not None})
            messages.append(f"{name}: no dark matches the camera ({ref.shape[1]}x{ref.shape[0]}"
                            f", gain {ref.gain}, {ref.temperature} C; darks at "
                            f"{', '.join(f'{t:g}' for t in temps) or 'unknown'} C): dark not "
                            "subtracted")
        # flat
        flats = [f for f in by_kind["flat"] if f.shape == ref.shape and _same(f.binning,
                                                                              ref.binning)]
        same_filter = [f for f in flats if f.filter == filt]
        if same_filter:
            fexp = same_filter[0].exptime
            fdarks = [f for f in by_kind["darkflat"] if f.shape == ref.shape
                      and _same(f.exptime, fexp, exposure_tolerance)]
            if not fdarks and fexp is not None:  # programs without a flat-dark type
                fdarks = [f for f in by_kind["dark"] if f.shape == ref.shape
                          and _same(f.binning, ref.binning) and f.exptime is not None
                          and _same(f.exptime, fexp, exposure_tolerance)]
            fdark = master("darkflat", fdarks, exptime=fdarks[0].exptime) if fdarks else None
            group.flat = master("flat", same_filter, bias=None if fdark else group.bias,
                                dark=fdark, extra=_slug(filt) if filt else "")
        elif flats:
            others = sorted({str(f.filter) for f in flats})
            messages.append(f"{name}: the flats are of filter {', '.join(others)}, not "
                            f"{filt}: flat not applied")
        elif by_kind["flat"]:
            messages.append(f"{name}: no flat of this camera's size/binning: flat not applied")
        if not by_kind["flat"]:
            group.notes.append("no flats in the folder: flat not applied")
        groups.append(group)
    if not by_kind["bias"] and not by_kind["dark"] and not by_kind["flat"]:
        messages.append("no calibration frames in the folder: the lights are stacked raw")
    return NightPlan(os.fspath(directory), groups, masters, messages, skipped, counts)


def _temperature(frames):
    temps = [f.temperature for f in frames if f.temperature is not None]
    return f"{np.median(temps):g}C" if temps else ""


# --------------------------------------------------------------------------
# doing it


def _check_night_store(store, mode):
    """Refuse to write into something that is not a night store bigstack made."""
    import zarr

    if not os.path.lexists(store):
        return False
    try:
        attrs = zarr.open_group(store, mode="r", use_consolidated=False).attrs.asdict()
    except (FileNotFoundError, NotADirectoryError, KeyError, ValueError,
            zarr.errors.GroupNotFoundError, zarr.errors.NodeTypeValidationError):
        attrs = {}
    if (attrs.get("bigstack") or {}).get("kind") != "night":
        raise StoreExistsError(f"{store}: exists and is not a bigstack night store; choose "
                               "another output path")
    return True


def _load_masters(store):
    import zarr

    group = zarr.open_group(store, mode="r", use_consolidated=False)
    if "masters" not in group:
        return {}
    return {name: array for name, array in group["masters"].arrays()}


def _build_master(plan, spec, built, store, memory, progress):
    """The master ``spec``, reused from the store when it was built from the same frames."""
    import zarr

    from ._calibrate import _as_master, make_master

    where = f"{store}/masters/{spec.key}"
    cached = _load_masters(store).get(spec.key)
    if cached is not None and cached.attrs.get("inputs") == spec.frames:
        return _as_master(np.asarray(cached[:], np.float32),
                          dict(cached.attrs, path=where)), True
    kind = "dark" if spec.kind == "darkflat" else spec.kind
    master = make_master(spec.frames, kind, bias=built.get(spec.bias),
                         dark=built.get(spec.dark), memory=memory, progress=progress)
    master.attrs["path"] = where
    group = zarr.open_group(store, mode="r+", use_consolidated=False)
    masters = group["masters"] if "masters" in group else group.create_group("masters")
    if spec.key in masters:
        del masters[spec.key]
    array = masters.create_array(spec.key, shape=master.shape, dtype="float32",
                                 chunks=master.shape, dimension_names=("y", "x"))
    array[:] = master.values
    array.attrs.update({k: v for k, v in master.attrs.items() if v is not None})
    return master, False


def stack_night(directory, store, *, model="similarity", method="sigma_clip", subpixel=None,
                memory="512MB", mode="write", progress=False, dry_run=False, out=print,
                temperature_tolerance=2.0, cosmetic="default"):
    """Sort, calibrate, register and stack a night's folder into ``store``.

    Parameters
    ----------
    directory : str or path
        The night's folder (searched recursively).
    store : str or path
        The night's zarr store (created; see the module notes for its layout).
    model : {"shift", "similarity", "affine"}
        Registration model (:func:`bigstack.find_transforms`).
    method : str
        The lights' combine (default ``"sigma_clip"``).
    mode : {"write", "overwrite", "append"}
        ``"write"`` makes a new store, or, when ``store`` is this night's
        store already, finishes what is missing and leaves what is done
        (masters built from the same frames are reused); ``"overwrite"``
        stacks every group again (masters are still reused);
        ``"append"`` adds the lights not yet in each group's stack.
    dry_run : bool
        Print the plan only.
    cosmetic : Cosmetic or None
        Hot and cold pixel correction (default ``Cosmetic()``: 5 sigma, replaced
        by the neighbours' median); None for none.
    out : callable
        Where the plan and summary lines go.

    Returns
    -------
    dict
        ``{group name: Dataset}`` of the stacks (empty for a dry run), and the
        plan under ``"plan"``.
    """
    import zarr

    from . import find_transforms, stack
    from ._calibrate import calibrate
    from ._io import open_frames
    from ._store import check_target, read_attrs

    if mode not in ("write", "overwrite", "append"):
        raise ValueError(f"mode must be 'write', 'overwrite' or 'append', got {mode!r}")
    if isinstance(cosmetic, str) and cosmetic == "default":
        from ._calibrate import Cosmetic

        cosmetic = Cosmetic()
    store = os.fspath(store)
    plan = plan_night(directory, temperature_tolerance=temperature_tolerance)
    for line in plan.lines():
        out(line)
    if dry_run:
        return {"plan": plan}
    inputs = [f for g in plan.groups for f in g.lights]
    exists = _check_night_store(store, mode)
    if not exists:
        check_target(store, "write", inputs)
        zarr.open_group(store, mode="w-", zarr_format=3,
                        attributes={"bigstack": {"kind": "night"},
                                    "directory": os.path.abspath(directory)})
    zarr.open_group(store, mode="r+", use_consolidated=False).attrs.update(
        {"plan": plan.lines()})
    built, results = {}, {"plan": plan}
    for key, spec in plan.masters.items():  # darkflats and bias first: others need them
        if spec.kind in ("bias", "darkflat"):
            built[key], reused = _build_master(plan, spec, built, store, memory, progress)
            out(f"master {key}: {'reused' if reused else 'built'}")
    for key, spec in plan.masters.items():
        if spec.kind not in ("bias", "darkflat"):
            built[key], reused = _build_master(plan, spec, built, store, memory, progress)
            out(f"master {key}: {'reused' if reused else 'built'}")
    for group in plan.groups:
        target = os.path.join(store, group.name)
        stored = read_attrs(target) if os.path.isdir(target) else None
        lights = group.lights
        group_mode = "overwrite" if (mode == "overwrite" and stored is not None) else "write"
        if stored is not None and mode != "overwrite":
            if not stored.get("complete"):
                group_mode = "resume"
            elif sorted(stored["inputs"]) == sorted(lights):
                out(f"stack {group.name}: up to date ({stored['n_frames']} frames)")
                results[group.name] = _open(target)
                continue
            elif mode == "append":
                new = [p for p in lights if p not in stored["inputs"]]
                if not new:
                    results[group.name] = _open(target)
                    continue
                reference = stored["inputs"][(stored.get("registration") or {}).get(
                    "reference", 0)]
                lights, group_mode = [reference, *new], "append"
            else:
                raise StoreExistsError(
                    f"{target}: holds a stack of other lights ({stored['n_frames']} frames); "
                    "pass --append to add the new ones, or --overwrite to stack again")
        cube = open_frames(lights)
        # dead pixels of the flat are left out; hot pixels of the dark and cold ones of the
        # flat are replaced by their neighbours' median (their dark current follows the
        # sensor's temperature too steeply for a subtraction to remove it)
        calibrated = calibrate(cube, bias=built.get(group.bias), dark=built.get(group.dark),
                               flat=built.get(group.flat), dark_scale=group.dark_scale,
                               low_flat="mask", cosmetic=cosmetic)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BigstackWarning)
            transforms = find_transforms(calibrated, model=model,
                                         reference=0 if group_mode == "append" else "auto")
            if group_mode == "append":  # the reference frame is in the store already
                calibrated = calibrated.isel(frame=slice(1, None))
                transforms = transforms.isel(frame=slice(1, None))
            result = stack(calibrated, transforms, method=method, subpixel=subpixel,
                           store=target, mode=group_mode, memory=memory, progress=progress)
        for w in caught:
            if "flagged invalid" not in str(w.message):
                out(f"warning: {w.message}")
        from ._report import frame_table, summary_lines

        out(f"stack {group.name}: {result.attrs['n_frames']} frames stacked into {target}")
        for line in summary_lines(frame_table(transforms), transforms.attrs):
            out(f"  {line}")
        results[group.name] = result
    return results


def _open(target):
    from ._store import open_stack

    return open_stack(target)
