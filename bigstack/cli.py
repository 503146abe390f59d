"""The ``bigstack`` command line.

::

    bigstack shifts "lights/*.fit" --star 400,500 --search 200 -o shifts.csv
    bigstack stack "lights/*.fit" -o night.zarr --star 400,500 --search 200 --png night.png
    bigstack render night.zarr -o night.png --crop 0,3100,2100,0
    bigstack info night.zarr
    bigstack demo

Every failure the user can act on (bad input, an output that cannot be
written, a full disk, an interrupted run) is printed as one line naming the
file and the problem, with exit status 2 (130 when interrupted), never as a
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import warnings

import numpy as np

from ._errors import BigstackError, BigstackWarning

_STRETCHES = ("auto", "linear", "sqrt", "power", "log", "asinh")


# --------------------------------------------------------------------------
# argument parsing helpers


def _pair(text):
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected X,Y (two numbers), got {text!r}") from err
    return [x, y]


def _kappa_values(text):
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or one number, got {text!r}") from err
    if len(values) == 1:
        return (values[0], values[0])
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH or one number, got {text!r}")
    return tuple(values)


def _crop_values(text):
    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(
            f"expected LEFT,RIGHT,TOP,BOTTOM (empty for 'to the edge'), got {text!r}")
    try:
        return [int(p) if p.strip() else None for p in parts]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"crop values must be whole pixels: {text!r}") from err


def _add_cluster_options(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on a running dask.distributed scheduler (e.g. tcp://host:8786)")
    group.add_argument("--workers", type=int, metavar="N",
                       help="start a local dask.distributed cluster of N worker processes")


@contextlib.contextmanager
def _cluster(args):
    """Connect to the scheduler asked for, or start a local cluster, for the command's run.

    Local workers are started with SIGINT ignored, so Ctrl-C reaches this
    process only (which stops the run and reports it in one line) instead of
    every worker printing its own traceback; distributed's shutdown chatter
    is kept to errors.
    """
    if not (getattr(args, "scheduler", None) or getattr(args, "workers", None)):
        yield
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise BigstackError("--scheduler/--workers need dask.distributed: "
                            "pip install 'bigstack[distributed]'") from err
    quiet = logging.getLogger("distributed")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    # an interrupted gather leaves asyncio tasks whose "exception was never
    # retrieved" reports come when they are collected, after this block: this
    # command's process has no other use for asyncio's log
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        if args.scheduler:
            try:
                client = Client(args.scheduler, timeout="10s")
            except OSError as err:
                raise BigstackError(f"cannot reach the scheduler at {args.scheduler}: "
                                    f"{err}") from err
            with client:
                yield
            return
        if args.workers < 1:
            raise BigstackError(f"--workers must be at least 1, got {args.workers}")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the workers
        try:
            with warnings.catch_warnings():
                # e.g. "Port 8787 is already in use": the scheduler then picks another port
                warnings.simplefilter("ignore", UserWarning)
                cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                       processes=True, dashboard_address=None,
                                       silence_logs=logging.CRITICAL)
        finally:
            signal.signal(signal.SIGINT, previous)
        with cluster, Client(cluster):
            yield
    finally:
        quiet.setLevel(level)


def _show_progress(args):
    return args.progress if args.progress is not None else sys.stderr.isatty()


def _add_progress(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar (default: when on a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_false")


def _add_input_options(parser):
    parser.add_argument("pattern", help="frame files: a glob pattern (quote it), or a folder")
    parser.add_argument("--channel", choices=("R", "G", "B"),
                        help="colour (Bayer) frames: use only this colour's plane")
    parser.add_argument("--debayer", choices=("bilinear", "superpixel", "cfa"),
                        default="bilinear",
                        help="colour (Bayer FITS or camera RAW) frames: bilinear (default, "
                             "full size), superpixel (half size) or cfa (each colour's own "
                             "samples placed on the grid)")


def _add_star_options(parser, required):
    parser.add_argument("--star", type=_pair, required=required, metavar="X,Y",
                        help="rough [x, y] of a bright isolated star in the reference frame")
    parser.add_argument("--search", type=int, default=200, metavar="S",
                        help="search box size in pixels (default 200)")
    parser.add_argument("--track", action="store_true",
                        help="re-centre each frame's box on the previous frame's star "
                             "(for drifts larger than the box)")


def _reference(text):
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a frame index, got {text!r}") \
            from err


def _add_reference_option(parser, default):
    parser.add_argument("--reference", type=_reference, default=default, metavar="auto|N",
                        help=f"the reference frame: an index, or auto (the best frame) "
                             f"(default {default})")


def _add_registration_options(parser):
    parser.add_argument("--model", choices=("shift", "similarity", "affine"),
                        default="similarity",
                        help="automatic registration: the transform fitted to the matched "
                             "stars (default similarity: shift, rotation, scale, flips)")
    parser.add_argument("--min-matches", type=int, default=6, metavar="N",
                        help="stars a frame must match to be used (default 6)")
    parser.add_argument("--max-residual", type=float, metavar="PX",
                        help="largest RMS of the matched stars after the fit (default the "
                             "larger of 0.5 px and FWHM/10)")
    parser.add_argument("--report", metavar="FILE.png",
                        help="also draw the per-frame curves (FWHM, background, stars "
                             "matched, residual, shift, rotation) with the frames left out")


def _register(args, cube):
    """Automatic registration of ``cube`` as the options say; warnings reported in one line."""
    from . import find_transforms

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BigstackWarning)
        ds = _with_progress(args, lambda: find_transforms(
            cube, model=args.model, reference=args.reference, min_matches=args.min_matches,
            max_residual=args.max_residual))
    _report_warnings(caught, skip=("flagged invalid",))  # the summary groups them
    return ds


def _print_summary(ds):
    from ._report import frame_table, summary_lines

    for line in summary_lines(frame_table(ds), ds.attrs):
        print(line, file=sys.stderr)


def _write_report(args, ds):
    from ._report import frame_table, report_picture

    if getattr(args, "report", None):
        report_picture(frame_table(ds), args.report, ds.attrs, overwrite=args.overwrite)
        print(f"wrote {args.report}")


def _open(args):
    from . import open_frames

    return open_frames(args.pattern, channel=args.channel,
                       debayer=getattr(args, "debayer", "bilinear"))


def _report_warnings(caught, skip=()):
    for w in caught:
        text = str(w.message)
        if not any(s in text for s in skip):
            print(f"bigstack: warning: {text}", file=sys.stderr)


# --------------------------------------------------------------------------
# shifts


def _print_shift_table(ds, out=None):
    from ._tables import shift_rows

    out = out or sys.stdout
    print(f"{'frame':>5}  {'dx':>8} {'dy':>8} {'peak':>9} {'fwhm':>6} {'valid':>5}  file / reason",
          file=out)
    for row in shift_rows(ds):
        note = os.path.basename(row["path"]) + ("" if row["valid"] else f"  ({row['reason']})")
        print(f"{row['frame']:>5}  {row['dx']:>8.2f} {row['dy']:>8.2f} {row['peak']:>9.1f} "
              f"{row['fwhm']:>6.2f} {'yes' if row['valid'] else 'NO':>5}  {note}", file=out)


def _check_file_output(path, overwrite, inputs=()):
    """Refuse, before any work, a file output that exists (unless asked) or is an input."""
    if not path:
        return
    real = os.path.realpath(path)
    for frame in inputs:
        if os.path.realpath(frame) == real:
            raise FileExistsError(f"{path}: is an input frame; choose another output path")
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(f"{path}: exists already; pass --overwrite to replace it")
    if os.path.isdir(path):
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{path}: cannot write in {folder} (permission denied or a "
                              "read-only file system)")


def _cmd_shifts(args):
    from . import find_shifts
    from ._tables import write_shifts_csv

    cube = _open(args)
    _check_file_output(args.output, args.overwrite, cube["path"].values)
    with _cluster(args), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BigstackWarning)
        ds = _with_progress(args, lambda: find_shifts(
            cube, star_pos=args.star, search=args.search, method=args.method,
            reference=args.reference, track=args.track))
    _print_shift_table(ds)
    _report_warnings(caught)
    if args.output:
        write_shifts_csv(ds, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    return 0


def _with_progress(args, run):
    if not _show_progress(args):
        return run()
    from ._progress import progress_bar

    with progress_bar(sys.stderr):
        return run()


# --------------------------------------------------------------------------
# stack


def _stack_mode(args):
    if args.resume and args.overwrite:
        raise BigstackError("--resume continues the store that --overwrite would replace; "
                            "give one of them")
    if args.append and args.overwrite:
        raise BigstackError("--append adds to the store that --overwrite would replace; "
                            "give one of them")
    if args.resume:
        return "resume"
    if args.append:
        return "append"
    return "overwrite" if args.overwrite else "write"


def _cmd_stack(args):
    from . import find_shifts, stack
    from ._memory import PeakMemory
    from ._stack import check_budget
    from ._store import check_target
    from ._tables import read_shifts_csv

    given = [name for name, on in (("--star", args.star is not None),
                                   ("--shifts", args.shifts is not None),
                                   ("--no-align", args.no_align)) if on]
    if len(given) > 1:
        raise BigstackError(f"give one of {' and '.join(given)}, not both")
    mode = _stack_mode(args)
    cube = _open(args)
    inputs = [str(p) for p in cube["path"].values]
    # everything that can be refused is refused before any pixel is read
    check_target(args.output, mode, inputs)
    for path in (args.png, args.tiff, args.fits, args.report):
        _check_file_output(path, args.overwrite, inputs)
    _check_picture_options(args, "--png", args.png)
    colour = _colour_options(args, cube, args.pattern)
    check_budget(cube.shape[-2:], cube.sizes["frame"], method=args.method, memory=args.memory,
                 weighted=args.weights != "none", kappa=args.kappa)
    if args.no_align:
        print("bigstack: note: --no-align: stacking the frames as they are", file=sys.stderr)
    print(f"{cube.sizes['frame']} frames of {cube.sizes['x']} x {cube.sizes['y']} pixels",
          file=sys.stderr)
    shifts = None
    with _cluster(args), PeakMemory() as mem:
        if args.star is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BigstackWarning)
                shifts = find_shifts(cube, star_pos=args.star, search=args.search,
                                     method=args.align,
                                     reference=0 if args.reference == "auto" else args.reference,
                                     track=args.track)
            _report_warnings(caught)
        elif args.shifts is None and not args.no_align:
            shifts = _register(args, cube)
            _print_summary(shifts)
        elif args.shifts is not None:
            values, valid = read_shifts_csv(args.shifts, cube.sizes["frame"])
            cube = cube.isel(frame=np.flatnonzero(valid))
            shifts = values[valid]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BigstackWarning)
            args.store_begun = True
            ds = stack(cube, shifts, method=args.method, store=args.output, mode=mode,
                       subpixel=args.subpixel, extent=args.extent, normalize=args.divide_by,
                       kappa=args.kappa, normalize_frames=args.normalize,
                       weights=args.weights, select=args.reject_worst,
                       memory=args.memory, progress=_show_progress(args))
            args.store_begun = False
        _report_warnings(caught, skip=("flagged invalid",))  # reported above
    coverage = ds["coverage"]
    print(f"wrote {args.output}: {ds.sizes['x']} x {ds.sizes['y']} pixels from "
          f"{ds.attrs['n_frames']} frames, coverage {int(coverage.min())}..{int(coverage.max())}, "
          f"{mem.seconds:.1f} s, peak memory {_mib(mem.peak)}")
    _write_pictures(args, ds, colour, max_pixels=16_000_000, **_stretch_options(args.stretch))
    if shifts is not None and hasattr(shifts, "data_vars"):
        _write_report(args, shifts)
    return 0


def _cmd_register(args):
    from ._tables import write_transforms_csv

    cube = _open(args)
    inputs = [str(p) for p in cube["path"].values]
    _check_file_output(args.output, args.overwrite, inputs)
    _check_file_output(args.report, args.overwrite, inputs)
    print(f"{cube.sizes['frame']} frames of {cube.sizes['x']} x {cube.sizes['y']} pixels",
          file=sys.stderr)
    with _cluster(args):
        ds = _register(args, cube)
    _print_summary(ds)
    if args.output:
        write_transforms_csv(ds, args.output, overwrite=args.overwrite)
        print(f"wrote {args.output}")
    _write_report(args, ds)
    if args.strict and not ds["valid"].all():
        bad = int((~ds["valid"]).sum())
        raise BigstackError(f"{bad} of {ds.sizes['frame']} frames could not be registered "
                            "(--strict); see the lines above")
    return 0


def _mib(value):
    return "unknown" if value is None else f"{value / 2**20:.0f} MiB"


# --------------------------------------------------------------------------
# render and info


def _is_frame_file(path):
    from ._io import SUPPORTED_SUFFIXES

    return os.path.isfile(path) and path.lower().endswith(SUPPORTED_SUFFIXES)


def _frame_image(path, channel):
    """One frame file as a 2-D DataArray (a RAW frame: its green plane unless told)."""
    from . import open_frames
    from ._io import RAW_SUFFIXES

    if channel is None and path.lower().endswith(RAW_SUFFIXES):
        channel = "G"
    image = open_frames([path], channel=channel).isel(frame=0)
    return image.sel(channel="G") if "channel" in image.dims else image


def _cmd_render(args):
    from . import crop, open_stack

    outputs = [path for path in (args.output, args.tiff, args.fits) if path]
    if not outputs:
        raise BigstackError("render: give an output: -o FILE.png, --tiff FILE.tif or "
                            "--fits FILE.fits")
    _check_picture_options(args, "-o", args.output)
    if _is_frame_file(args.store):  # a frame: to look at the data or pick a star
        image = _frame_image(args.store, args.channel)
        inputs = [args.store]
    else:
        ds = open_stack(args.store, allow_incomplete=args.allow_incomplete)
        if args.channel:
            if "channel" not in ds.dims:
                raise BigstackError("--channel picks a colour of a colour frame or stack; "
                                    f"{args.store} is a mono stack")
            ds = ds.sel(channel=args.channel)
        inputs = ds.attrs.get("inputs", ())
        image = ds  # the Dataset, so save_png sees whether the stack is finished
    for path in outputs:
        _check_file_output(path, args.overwrite, inputs)
    colour = _colour_options(args, image, args.store)
    if args.crop:
        left, right, top, bottom = args.crop
        image = crop(image, left=left, right=right, top=top, bottom=bottom)
    _write_pictures(args, image, colour, cmap=args.cmap, max_pixels=args.max_pixels,
                    background=args.background, allow_incomplete=args.allow_incomplete,
                    **_stretch_options(args.stretch, args.log_a, args.min_percent,
                                       args.max_percent))
    return 0


def _white_balance(text):
    from ._render_colour import parse_factors

    if text in ("stars", "none"):
        return text
    try:
        return parse_factors(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _add_picture_options(parser, png_flag):
    """Options of the pictures and files written from a stack: bits, TIFF, FITS, colour."""
    parser.add_argument("--bits", type=int, choices=(8, 16), default=8,
                        help=f"levels per channel of the {png_flag} picture (default 8)")
    parser.add_argument("--tiff", metavar="FILE.tif",
                        help="also write a TIFF: the picture in 16 bits, or the linear values "
                             "with --tiff-bits 32")
    parser.add_argument("--tiff-bits", type=int, choices=(16, 32), default=16,
                        help="16: the stretched picture; 32: the linear values as floats")
    parser.add_argument("--fits", metavar="FILE.fits",
                        help="also write the stack, its coverage and provenance as FITS (a "
                             "3-plane cube for colour)")
    parser.add_argument("--white-balance", type=_white_balance, metavar="stars|none|R,G,B",
                        help="colour stacks: from the average colour of the stars (default), "
                             "none, or three factors")
    parser.add_argument("--no-neutralise", dest="neutralise", action="store_false",
                        default=None,
                        help="colour stacks: keep each channel's sky level (by default each "
                             "channel's sky is brought to a common grey level)")


def _check_picture_options(args, png_flag, png):
    """Refuse --bits and --tiff-bits when the file they are for is not asked for."""
    if args.bits != 8 and not png:
        raise BigstackError(f"--bits {args.bits} is for the {png_flag} picture; give "
                            f"{png_flag} FILE.png")
    if args.tiff_bits != 16 and not args.tiff:
        raise BigstackError(f"--tiff-bits {args.tiff_bits} is for the TIFF; give --tiff "
                            "FILE.tif")


def _colour_options(args, image, name):
    """save_png's colour keywords for ``image``; the colour options refused for a mono one."""
    from ._render_colour import is_colour

    if is_colour(image):
        return {"white_balance": args.white_balance, "neutralise": args.neutralise}
    given = [flag for flag, value in (("--white-balance", args.white_balance),
                                      ("--no-neutralise", args.neutralise)) if value is not None]
    if given:
        raise BigstackError(f"{name}: {' and '.join(given)} apply to colour stacks; this one "
                            "is mono")
    return {}


def _write_pictures(args, image, colour, **picture):
    """The PNG (-o or --png), TIFF and FITS outputs the command asked for, each reported.

    bigstack's warnings are printed in one line each, except that the stack
    is unfinished (said when it was opened).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BigstackWarning)
        _write_outputs(args, image, colour, **picture)
    _report_warnings(caught, skip=("incomplete stack",))


def _write_outputs(args, image, colour, **picture):
    from . import save_fits, save_png, save_tiff

    png = getattr(args, "output", None) if args.command == "render" else args.png
    if png:
        save_png(image, png, overwrite=args.overwrite, bits=args.bits, **picture, **colour)
        print(f"wrote {png}")
    if args.tiff:
        if args.tiff_bits == 32:  # the data: shrunk only when render is told --max-pixels
            shrink = picture.get("max_pixels") if args.command == "render" else None
            save_tiff(image, args.tiff, bits=32, overwrite=args.overwrite, max_pixels=shrink,
                      allow_incomplete=picture.get("allow_incomplete", False))
        else:
            options = {k: v for k, v in picture.items() if k != "cmap"}
            save_tiff(image, args.tiff, bits=16, overwrite=args.overwrite, **options, **colour)
        print(f"wrote {args.tiff}")
    if args.fits:
        save_fits(image, args.fits, overwrite=args.overwrite,
                  allow_incomplete=picture.get("allow_incomplete", False))
        print(f"wrote {args.fits}")


def _store_summary(path):
    """The store's attributes plus what ``info`` derives (completeness, tiles)."""
    from ._store import read_attrs, tiles_done

    if not os.path.exists(path) and "://" not in path:
        raise FileNotFoundError(f"{path}: no such store")
    attrs = read_attrs(path)
    if attrs is None:
        raise BigstackError(f"{path}: not a bigstack stack store")
    done = tiles_done(path)
    return attrs, int((done == 0).sum()), int(done.size)


def _stretch_options(stretch, log_a=None, min_percent=None, max_percent=None):
    """save_png's stretch keywords: the explicit stretches default to 0.5..99.9 percent."""
    if stretch == "auto":  # sets its own range; save_png refuses any given option
        return {"stretch": stretch, "log_a": log_a, "min_percent": min_percent,
                "max_percent": max_percent}
    return {"stretch": stretch, "log_a": 1000 if log_a is None else log_a,
            "min_percent": 0.5 if min_percent is None else min_percent,
            "max_percent": 99.9 if max_percent is None else max_percent}


def _cmd_info(args):
    from ._store import open_stack

    attrs, missing, total = _store_summary(args.store)
    if args.json:
        print(json.dumps(dict(attrs, store=args.store, tiles_missing=missing,
                              tiles_total=total), indent=2))
        return 0
    grid = attrs["grid"]
    print(f"store      {args.store}")
    print(f"size       {grid['x1'] - grid['x0']} x {grid['y1'] - grid['y0']} pixels (x by y); "
          f"x {grid['x0']}..{grid['x1'] - 1}, y {grid['y0']}..{grid['y1'] - 1} "
          "on the reference grid")
    if attrs.get("complete"):
        ds = open_stack(args.store)
        coverage = ds["coverage"]
        print(f"coverage   {int(coverage.min())}..{int(coverage.max())} frames")
        print("complete   yes")
    else:
        print(f"complete   NO: {missing} of {total} tiles missing; rerun the stack with "
              "--resume to finish it")
        ds = None
    print(f"frames     {attrs.get('n_frames', '?')} used of {len(attrs.get('inputs', []))} inputs")
    for key, value in attrs.get("parameters", {}).items():
        print(f"{key:<10} {value}")
    registration = attrs.get("registration")
    if registration:
        print("registration " + ", ".join(f"{k}={v}" for k, v in registration.items()))
    print(f"version    bigstack {attrs.get('bigstack_version', '?')}, created "
          f"{attrs.get('created', '?')}")
    if ds is not None and "rejected" in ds:
        rejected = ds["rejected"]
        print(f"rejected   {int(rejected.sum())} values, at most {int(rejected.max())} "
              "at one pixel")
    quality = attrs.get("quality")
    if quality:
        _print_quality(quality, attrs)
    if attrs.get("frames"):
        from ._report import summary_lines

        for line in summary_lines(attrs["frames"], attrs.get("registration")):
            print(line)
    if args.report:
        _info_report(args, attrs)
    return 0


def _info_report(args, attrs):
    from ._report import report_picture

    if not attrs.get("frames"):
        raise BigstackError(f"{args.store}: holds no per-frame registration table (stacked "
                            "with given shifts or none); nothing to draw")
    _check_file_output(args.report, args.overwrite, attrs.get("inputs", ()))
    report_picture(attrs["frames"], args.report, attrs.get("registration"),
                   overwrite=args.overwrite, title=f"{os.path.basename(args.store)}")
    print(f"wrote {args.report}")


def _print_quality(quality, attrs):
    names = [k for k in ("background", "noise", "fwhm", "roundness", "stars", "flux")
             if k in quality]
    used = set(attrs.get("frames_used", []))
    print("frame quality (measured on a subsample of rows):")
    print(f"{'frame':>5} " + " ".join(f"{n:>10}" for n in names) + "  used  file")
    inputs = attrs.get("inputs", [])
    for i in range(len(quality[names[0]])):
        cells = []
        for name in names:
            value = quality[name][i]
            cells.append(f"{'-':>10}" if value is None else f"{value:>10.4g}")
        name = os.path.basename(inputs[i]) if i < len(inputs) else ""
        print(f"{i:>5} " + " ".join(cells) + f"  {'yes' if i in used else 'no':>4}  {name}")


def _cmd_night(args):
    from ._night import stack_night

    mode = "overwrite" if args.overwrite else ("append" if args.append else "write")
    if args.overwrite and args.append:
        raise BigstackError("--append adds to the stacks that --overwrite would replace; "
                            "give one of them")
    with _cluster(args):
        results = stack_night(args.directory, args.output, model=args.model,
                              method=args.method, subpixel=args.subpixel, memory=args.memory,
                              mode=mode, progress=_show_progress(args), dry_run=args.dry_run,
                              out=lambda line: print(line, file=sys.stderr))
    if args.dry_run:
        return 0
    if args.png:
        from . import save_png

        stem = os.path.splitext(args.output.rstrip("/"))[0]
        for name, ds in results.items():
            if name == "plan":
                continue
            path = f"{stem}-{name}.png"
            save_png(ds, path, overwrite=args.overwrite or args.append, max_pixels=16_000_000)
            print(f"wrote {path}")
    print(f"wrote {args.output}")
    return 0


def _cmd_demo(args):
    from ._demo import run_demo

    run_demo(args.directory, n_frames=args.frames, shape=(args.height, args.width),
             seed=args.seed, overwrite=args.overwrite, memory=args.memory,
             progress=_show_progress(args), colour=args.colour)
    return 0


# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bigstack", description="Align and stack astronomical frames out of core.")
    parser.add_argument("--version", action="version", version=f"bigstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shifts", help="measure each frame's shift from a reference star")
    _add_input_options(p)
    _add_star_options(p, required=True)
    p.add_argument("--reference", type=int, default=0, metavar="N",
                   help="index of the reference frame (default 0)")
    p.add_argument("--method", choices=("centroid", "peak", "xcorr"), default="centroid")
    p.add_argument("-o", "--output", help="write the table as CSV")
    p.add_argument("--overwrite", action="store_true")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_shifts)

    p = sub.add_parser("register", help="register frames on many stars: shift, rotation, "
                                        "scale and flips, no star to pick")
    _add_input_options(p)
    _add_reference_option(p, "auto")
    _add_registration_options(p)
    p.add_argument("-o", "--output", help="write the table of transforms as CSV")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2) when any frame cannot be registered")
    p.add_argument("--overwrite", action="store_true")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_register)

    p = sub.add_parser("stack", help="align and stack frames into a zarr store")
    _add_input_options(p)
    p.add_argument("-o", "--output", required=True, metavar="STORE.zarr")
    _add_reference_option(p, "auto")
    _add_registration_options(p)
    _add_star_options(p, required=False)
    p.add_argument("--shifts", metavar="CSV",
                   help="use the table of 'bigstack register -o' or 'bigstack shifts -o'")
    p.add_argument("--align", choices=("centroid", "peak", "xcorr"), default="centroid",
                   help="how to measure shifts with --star (default centroid)")
    p.add_argument("--no-align", action="store_true",
                   help="stack the frames as they are, without registration")
    p.add_argument("--method", default="mean",
                   choices=("mean", "average", "sum", "median", "sigma_clip", "winsorized",
                            "minmax", "percentile"),
                   help="how to combine (default mean); the last five reject outliers")
    p.add_argument("--kappa", type=_kappa_values, metavar="LOW,HIGH",
                   help="rejection bounds in sigmas for sigma_clip/winsorized (default 3,3)")
    p.add_argument("--subpixel", choices=("nearest", "bilinear", "lanczos3", "lanczos4"),
                   help="resampling onto the reference grid (default: nearest for whole-pixel "
                        "shifts, else lanczos3)")
    p.add_argument("--extent", choices=("reference", "intersection", "union"),
                   default="reference")
    p.add_argument("--normalize", choices=("none", "additive", "multiplicative",
                                           "additive+scale"), default="none",
                   help="match each frame's background (and noise) to the reference's")
    p.add_argument("--weights", choices=("none", "noise", "fwhm"), default="none",
                   help="weight frames by inverse noise variance or by sharpness")
    p.add_argument("--reject-worst", metavar="FRACTION",
                   help="drop the worst frames by FWHM, e.g. 10%% or 0.1")
    p.add_argument("--divide-by", choices=("coverage", "count"), default="coverage",
                   help="mean: divide by each pixel's coverage, or by N with zero-filled "
                        "edges like the tutorial")
    p.add_argument("--memory", default="512MB", help="memory budget (default 512MB)")
    p.add_argument("--png", metavar="FILE", help="also write a picture of the stack")
    p.add_argument("--stretch", choices=_STRETCHES, default="auto",
                   help="stretch of the --png picture (default auto: set from the sky)")
    _add_picture_options(p, "--png")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the store (only one bigstack made) and the picture")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run into STORE (same frames and options)")
    p.add_argument("--append", action="store_true",
                   help="add these frames to the finished stack in STORE (live stacking; "
                        "shifts relative to the same reference frame)")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("night", help="a night's folder in one command: sort by headers, "
                                     "build masters, calibrate, register, stack")
    p.add_argument("directory", help="the night's folder (lights, darks, flats, bias; searched "
                                     "recursively)")
    p.add_argument("-o", "--output", required=True, metavar="NIGHT.zarr")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (what goes where, what is missing) and stop")
    p.add_argument("--model", choices=("shift", "similarity", "affine"), default="similarity")
    p.add_argument("--method", default="sigma_clip",
                   choices=("mean", "median", "sigma_clip", "winsorized"),
                   help="how the lights are combined (default sigma_clip)")
    p.add_argument("--subpixel", choices=("nearest", "bilinear", "lanczos3", "lanczos4"))
    p.add_argument("--memory", default="512MB")
    p.add_argument("--png", action="store_true",
                   help="also write NIGHT-<target>_<filter>.png beside the store")
    p.add_argument("--overwrite", action="store_true",
                   help="stack every group again (masters built from the same frames are "
                        "reused)")
    p.add_argument("--append", action="store_true",
                   help="add the lights not yet in each group's stack")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_night)

    p = sub.add_parser("render", help="write a PNG of a stack, or of one frame")
    p.add_argument("store", metavar="STORE|FRAME",
                   help="a stack store, or one frame file (to look at it or pick a star)")
    p.add_argument("--channel", choices=("R", "G", "B"),
                   help="a colour frame or stack: this colour (a frame: default G)")
    p.add_argument("-o", "--output", metavar="FILE.png",
                   help="the picture (a colour PNG for a colour stack)")
    p.add_argument("--stretch", choices=_STRETCHES, default="auto",
                   help="default auto: black just below the sky, white at the brightest star")
    p.add_argument("--background", choices=("none", "plane", "poly2"), default="none",
                   help="subtract a fit of the sky's gradient from the picture")
    p.add_argument("--log-a", type=float, help="log stretch exponent (default 1000)")
    p.add_argument("--min-percent", type=float,
                   help="explicit stretches: percentile drawn black (default 0.5)")
    p.add_argument("--max-percent", type=float,
                   help="explicit stretches: percentile drawn white (default 99.9)")
    p.add_argument("--cmap", default="Greys_r")
    p.add_argument("--crop", type=_crop_values, metavar="L,R,T,B",
                   help="keep columns L:R and rows B:T (empty value: to the edge)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="shrink by block means to at most this many pixels")
    p.add_argument("--allow-incomplete", action="store_true",
                   help="render an unfinished stack (missing rows shown as empty)")
    _add_picture_options(p, "-o")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("info", help="describe a stack store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="print all attributes as JSON only")
    p.add_argument("--report", metavar="FILE.png",
                   help="draw the per-frame registration curves kept in the store")
    p.add_argument("--overwrite", action="store_true", help="replace the --report picture")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="generate a synthetic night, align and stack it")
    p.add_argument("directory", nargs="?", default="bigstack-demo",
                   help="folder for the frames and results (default: ./bigstack-demo)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--height", type=int, default=1536)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--memory", default="512MB")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what an earlier demo left in DIRECTORY")
    p.add_argument("--colour", "--color", action="store_true",
                   help="a one-shot-colour night (Bayer FITS), stacked in colour")
    _add_progress(p)
    p.set_defaults(func=_cmd_demo)
    return parser


# --------------------------------------------------------------------------
# errors as one line


def _one_line(text):
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else ""
    return f"{lines[0]} (+{len(lines) - 1} more lines: {'; '.join(lines[1:3])}" + \
        ("; ..." if len(lines) > 3 else "") + ")"


def _error_line(err):
    """One line for an error the user can act on, or None for a bug (a traceback then)."""
    if isinstance(err, OSError) and not isinstance(err, BigstackError):
        if err.filename is not None and err.strerror:
            return f"{err.filename}: {err.strerror}"
        return _one_line(err) or type(err).__name__
    if isinstance(err, (BigstackError, ValueError)):
        return _one_line(err)
    name = type(err).__name__
    if name in ("KilledWorker", "CommClosedError", "CancelledError"):
        return f"the dask cluster failed: {name}: {_one_line(err)}"
    return None


def _interrupted_line(args):
    store = getattr(args, "output", None)
    if getattr(args, "store_begun", False) and store:
        return (f"bigstack: interrupted; {store} is unfinished: run the same command with "
                "--resume to finish it")
    return "bigstack: interrupted"


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(_interrupted_line(args), file=sys.stderr)
        return 130
    except Exception as err:
        line = _error_line(err)
        if line is None:
            raise
        print(f"bigstack: error: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
