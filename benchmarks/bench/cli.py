"""The command line of the benchmark (``python benchmarks/run.py ...``)."""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path

from . import HERE
from .methods import METHODS

RESULTS = HERE / "RESULTS.md"
SCALING_PNG = HERE / "scaling.png"

DESCRIPTION = """\
bigstack benchmarks: every method on the same frames, side by side, in one run.

    python benchmarks/run.py                      # 100 frames of 2048x2048
    python benchmarks/run.py --frames 400
    python benchmarks/run.py --frames 400 --cold --methods floor,bigstack-nearest,find_shifts
    python benchmarks/run.py --sweep              # scaling in N and frame size, scaling.png
    python benchmarks/run.py --many               # 5,000 frames of 1080x1920

See benchmarks/README.md."""


def _terminate(signum, frame):
    raise SystemExit(128 + signum)  # unwinds: the running child is killed, temp files removed


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python benchmarks/run.py", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100, help="number of frames (default 100)")
    parser.add_argument("--size", default="2048",
                        help="frame size: N for NxN or NYxNX (default 2048)")
    parser.add_argument("--dir", help="folder for the frames (reused when it holds the same "
                                      "frames); default: a temp folder keyed by parameters")
    parser.add_argument("--methods", help=f"comma-separated subset of {', '.join(METHODS)}")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; best reported")
    parser.add_argument("--memory", default="512MB", help="bigstack's memory budget")
    parser.add_argument("--results", default=str(RESULTS), help="markdown file to append to")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child run")
    parser.add_argument("--idle-wait", type=float, default=120,
                        help="before each run, wait up to this many seconds for other "
                             "processes to leave the CPUs idle (0: do not wait)")
    parser.add_argument("--cold", action="store_true",
                        help="evict the frames from the page cache before each method "
                             "(posix_fadvise DONTNEED), so every method reads from the disk")
    parser.add_argument("--sweep", action="store_true", help="scaling in N and frame size")
    parser.add_argument("--plot", default=str(SCALING_PNG),
                        help="where --sweep writes its plot (and its data, as .json)")
    parser.add_argument("--replot", action="store_true",
                        help="redraw the plot from the data the last --sweep saved")
    parser.add_argument("--many", action="store_true",
                        help="a smart-telescope night: 5,000 frames of 1080x1920")
    parser.add_argument("--many-frames", type=int, default=5000,
                        help="frames for --many (default 5000)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the frames --sweep/--many generated")
    parser.add_argument("--clean", action="store_true",
                        help="delete the cached frames after a default run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        from .harness import child_main

        child_main(args.child)
        return 0
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    signal.signal(signal.SIGTERM, _terminate)
    from .modes import run_default, run_many, run_sweep
    from .report import plot_scaling

    if args.replot:
        data = json.loads(Path(args.plot).with_suffix(".json").read_text())
        plot_scaling(data["rows"], args.plot)
        print(f"plot: {args.plot} (from {data['command']}, {data['date']})")
        return 0
    if args.sweep:
        return run_sweep(args)
    if args.many:
        return run_many(args)
    return run_default(args)


