"""The ``bigstack`` command line.

::

    bigstack shifts "lights/*.fit" --star 400,500 --search 200 -o shifts.csv
    bigstack stack "lights/*.fit" -o night.zarr --star 400,500 --search 200 --png night.png
    bigstack render night.zarr -o night.png --stretch asinh --crop 0,3100,2100,0
    bigstack info night.zarr
    bigstack demo

Errors about the user's input are printed as one line naming the file and
the problem (exit status 2), not as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
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
    """Connect to the scheduler asked for, or start a local cluster, for the command's run."""
    if not (getattr(args, "scheduler", None) or getattr(args, "workers", None)):
        yield
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise BigstackError("--scheduler/--workers need dask.distributed: "
                            "pip install 'bigstack[distributed]'") from err
    if args.scheduler:
        try:
            client = Client(args.scheduler, timeout="10s")
        except OSError as err:
            raise BigstackError(f"cannot reach the scheduler at {args.scheduler}: {err}") from err
        with client:
            yield
        return
    if args.workers < 1:
        raise BigstackError(f"--workers must be at least 1, got {args.workers}")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        yield


def _show_progress(args):
    return args.progress if args.progress is not None else sys.stderr.isatty()


def _add_progress(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="show a progress bar (default: when on a terminal)")
    group.add_argument("--no-progress", dest="progress", action="store_false")


def _add_star_options(parser, required):
    parser.add_argument("--star", type=_pair, required=required, metavar="X,Y",
                        help="rough [x, y] of a bright isolated star in the reference frame")
    parser.add_argument("--search", type=int, default=200, metavar="S",
                        help="search box size in pixels (default 200)")
    parser.add_argument("--reference", type=int, default=0, metavar="N",
                        help="index of the reference frame (default 0)")
    parser.add_argument("--track", action="store_true",
                        help="re-centre each frame's box on the previous frame's star "
                             "(for drifts larger than the box)")


# --------------------------------------------------------------------------
# shifts


def _shift_rows(ds):
    for i in range(ds.sizes["frame"]):
        yield {
            "frame": int(ds["frame"].values[i]),
            "path": str(ds["path"].values[i]) if "path" in ds.coords else "",
            "dx": float(ds["shift"].values[i, 0]),
            "dy": float(ds["shift"].values[i, 1]),
            "star_x": float(ds["star"].values[i, 0]),
            "star_y": float(ds["star"].values[i, 1]),
            "peak": float(ds["peak"].values[i]),
            "flux": float(ds["flux"].values[i]),
            "fwhm": float(ds["fwhm"].values[i]),
            "background": float(ds["background"].values[i]),
            "valid": bool(ds["valid"].values[i]),
            "reason": str(ds["reason"].values[i]),
        }


def _print_shift_table(ds, out=None):
    out = out or sys.stdout
    print(f"{'frame':>5}  {'dx':>8} {'dy':>8} {'peak':>9} {'fwhm':>6} {'valid':>5}  file / reason",
          file=out)
    for row in _shift_rows(ds):
        note = os.path.basename(row["path"]) + ("" if row["valid"] else f"  ({row['reason']})")
        print(f"{row['frame']:>5}  {row['dx']:>8.2f} {row['dy']:>8.2f} {row['peak']:>9.1f} "
              f"{row['fwhm']:>6.2f} {'yes' if row['valid'] else 'NO':>5}  {note}", file=out)


def write_shifts_csv(ds, path, overwrite=False):
    """Write find_shifts' table as CSV (one row a frame)."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: exists already; pass --overwrite to replace it")
    rows = list(_shift_rows(ds))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def read_shifts_csv(path, n_frames):
    """Read a shifts CSV written by ``bigstack shifts``: ``(shifts (N, 2), valid (N,))``."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no such shifts file") from err
    if len(rows) != n_frames:
        raise BigstackError(f"{path}: holds shifts for {len(rows)} frames, but {n_frames} "
                            "frames were given")
    try:
        shifts = np.array([[float(r["dx"]), float(r["dy"])] for r in rows])
        valid = np.array([r.get("valid", "True") == "True" for r in rows])
    except (KeyError, ValueError) as err:
        raise BigstackError(f"{path}: not a bigstack shifts file ({err})") from err
    return shifts, valid


def _cmd_shifts(args):
    from . import find_shifts, open_frames

    cube = open_frames(args.pattern)
    with _cluster(args), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BigstackWarning)
        ds = _with_progress(args, lambda: find_shifts(
            cube, star_pos=args.star, search=args.search, method=args.method,
            reference=args.reference, track=args.track))
    _print_shift_table(ds)
    for w in caught:
        print(f"bigstack: warning: {w.message}", file=sys.stderr)
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


def _cmd_stack(args):
    from . import find_shifts, open_frames, save_png, stack
    from ._memory import PeakMemory

    if args.star is not None and args.shifts is not None:
        raise BigstackError("give either --star (measure shifts) or --shifts FILE, not both")
    if args.resume and args.overwrite:
        raise BigstackError("--resume continues the store that --overwrite would replace; "
                            "give one of them")
    store_in_use = args.resume or args.append
    for path in ((args.png,) if store_in_use else (args.output, args.png)):
        if path and os.path.exists(path) and not args.overwrite:  # refuse before any work
            raise FileExistsError(f"{path}: exists already; pass --overwrite to replace it")
    cube = open_frames(args.pattern)
    if args.star is None and args.shifts is None:
        print("bigstack: note: no --star or --shifts given; stacking without alignment",
              file=sys.stderr)
    print(f"{cube.sizes['frame']} frames of {cube.sizes['x']} x {cube.sizes['y']} pixels",
          file=sys.stderr)
    shifts = None
    with _cluster(args), PeakMemory() as mem:
        if args.star is not None:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BigstackWarning)
                shifts = find_shifts(cube, star_pos=args.star, search=args.search,
                                     method=args.align, reference=args.reference,
                                     track=args.track)
            for w in caught:
                print(f"bigstack: warning: {w.message}", file=sys.stderr)
        elif args.shifts is not None:
            values, valid = read_shifts_csv(args.shifts, cube.sizes["frame"])
            cube = cube.isel(frame=np.flatnonzero(valid))
            shifts = values[valid]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BigstackWarning)
            ds = stack(cube, shifts, method=args.method, store=args.output,
                       subpixel=args.subpixel, extent=args.extent, normalize=args.divide_by,
                       kappa=args.kappa, normalize_frames=args.normalize,
                       weights=args.weights, select=args.reject_worst,
                       memory=args.memory, overwrite=args.overwrite and not args.append,
                       progress=_show_progress(args), resume=args.resume,
                       mode="append" if args.append else "write")
        for w in caught:
            if "flagged by find_shifts" not in str(w.message):  # reported above
                print(f"bigstack: warning: {w.message}", file=sys.stderr)
    coverage = ds["coverage"]
    print(f"wrote {args.output}: {ds.sizes['x']} x {ds.sizes['y']} pixels from "
          f"{ds.attrs['n_frames']} frames, coverage {int(coverage.min())}..{int(coverage.max())}, "
          f"{mem.seconds:.1f} s, peak memory {_mib(mem.peak)}")
    if args.png:
        save_png(ds, args.png, overwrite=args.overwrite, max_pixels=16_000_000,
                 **_stretch_options(args.stretch))
        print(f"wrote {args.png}")
    return 0


def _mib(value):
    return "unknown" if value is None else f"{value / 2**20:.0f} MiB"


# --------------------------------------------------------------------------
# render and info


def _open_store(path):
    import xarray as xr

    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such store")
    try:
        return xr.open_zarr(path)
    except Exception as err:  # zarr/xarray raise several classes for a bad store
        raise BigstackError(f"{path}: not a bigstack zarr store ({err})") from err


def _cmd_render(args):
    from . import crop, save_png

    ds = _open_store(args.store)
    image = ds["stack"]
    if args.crop:
        left, right, top, bottom = args.crop
        image = crop(image, left=left, right=right, top=top, bottom=bottom)
    save_png(image, args.output, cmap=args.cmap, overwrite=args.overwrite,
             max_pixels=args.max_pixels, background=args.background,
             **_stretch_options(args.stretch, args.log_a, args.min_percent, args.max_percent))
    print(f"wrote {args.output}")
    return 0


def _stretch_options(stretch, log_a=None, min_percent=None, max_percent=None):
    """save_png's stretch keywords: the explicit stretches default to 0.5..99.9 percent."""
    if stretch == "auto":  # sets its own range; save_png refuses any given option
        return {"stretch": stretch, "log_a": log_a, "min_percent": min_percent,
                "max_percent": max_percent}
    return {"stretch": stretch, "log_a": 1000 if log_a is None else log_a,
            "min_percent": 0.5 if min_percent is None else min_percent,
            "max_percent": 99.9 if max_percent is None else max_percent}


def _cmd_info(args):
    ds = _open_store(args.store)
    attrs = dict(ds.attrs)
    coverage = ds["coverage"]
    print(f"store      {args.store}")
    print(f"size       {ds.sizes['x']} x {ds.sizes['y']} pixels (x by y); "
          f"x {int(ds['x'][0])}..{int(ds['x'][-1])}, y {int(ds['y'][0])}..{int(ds['y'][-1])} "
          "on the reference grid")
    print(f"coverage   {int(coverage.min())}..{int(coverage.max())} frames")
    print(f"complete   {attrs.get('complete', 'unknown')}")
    print(f"frames     {attrs.get('n_frames', '?')} used of {len(attrs.get('inputs', []))} inputs")
    for key, value in attrs.get("parameters", {}).items():
        print(f"{key:<10} {value}")
    print(f"version    bigstack {attrs.get('bigstack_version', '?')}, created "
          f"{attrs.get('created', '?')}")
    if "rejected" in ds:
        rejected = ds["rejected"]
        print(f"rejected   {int(rejected.sum())} values, at most {int(rejected.max())} "
              "at one pixel")
    quality = attrs.get("quality")
    if quality:
        _print_quality(quality, attrs)
    if args.json:
        print(json.dumps(attrs, indent=2))
    return 0


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


def _cmd_demo(args):
    from ._demo import run_demo

    run_demo(args.directory, n_frames=args.frames, shape=(args.height, args.width),
             seed=args.seed, overwrite=args.overwrite, memory=args.memory,
             progress=_show_progress(args))
    return 0


# --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bigstack", description="Align and stack astronomical frames out of core.")
    parser.add_argument("--version", action="version", version=f"bigstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shifts", help="measure each frame's shift from a reference star")
    p.add_argument("pattern", help="frame files: a glob pattern (quote it), or a folder")
    _add_star_options(p, required=True)
    p.add_argument("--method", choices=("centroid", "peak", "xcorr"), default="centroid")
    p.add_argument("-o", "--output", help="write the table as CSV")
    p.add_argument("--overwrite", action="store_true")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_shifts)

    p = sub.add_parser("stack", help="align and stack frames into a zarr store")
    p.add_argument("pattern", help="frame files: a glob pattern (quote it), or a folder")
    p.add_argument("-o", "--output", required=True, metavar="STORE.zarr")
    _add_star_options(p, required=False)
    p.add_argument("--shifts", metavar="CSV", help="use shifts from 'bigstack shifts -o'")
    p.add_argument("--align", choices=("centroid", "peak", "xcorr"), default="centroid",
                   help="how to measure shifts with --star (default centroid)")
    p.add_argument("--method", default="mean",
                   choices=("mean", "average", "sum", "median", "sigma_clip", "winsorized",
                            "minmax", "percentile"),
                   help="how to combine (default mean); the last five reject outliers")
    p.add_argument("--kappa", type=_kappa_values, metavar="LOW,HIGH",
                   help="rejection bounds in sigmas for sigma_clip/winsorized (default 3,3)")
    p.add_argument("--subpixel", choices=("nearest", "bilinear"), default="nearest")
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
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--resume", action="store_true",
                   help="finish an interrupted run into STORE (same frames and options)")
    p.add_argument("--append", action="store_true",
                   help="add these frames to the finished stack in STORE (live stacking; "
                        "shifts relative to the same reference frame)")
    _add_cluster_options(p)
    _add_progress(p)
    p.set_defaults(func=_cmd_stack)

    p = sub.add_parser("render", help="write a PNG of a stack")
    p.add_argument("store")
    p.add_argument("-o", "--output", required=True, metavar="FILE.png")
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
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_render)

    p = sub.add_parser("info", help="describe a stack store")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="also print all attributes as JSON")
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
    _add_progress(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (BigstackError, FileExistsError, FileNotFoundError, ValueError) as err:
        print(f"bigstack: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
