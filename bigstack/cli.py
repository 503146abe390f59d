"""The ``bigstack`` command line.

Errors about the user's input are printed as one line naming the file and
the problem (exit status 2), not as a traceback.
"""

from __future__ import annotations

import argparse
import sys
import time

from ._errors import BigstackError


def _cmd_demo(args) -> int:
    from . import open_frames, synthetic

    start = time.perf_counter()
    truth = synthetic.make_frames(
        args.directory, n_frames=args.frames, shape=(args.height, args.width),
        seed=args.seed, overwrite=args.overwrite,
    )
    made = time.perf_counter() - start
    cube = open_frames(truth.paths)
    print(f"wrote {len(truth.paths)} synthetic frames of {args.height}x{args.width} "
          f"to {args.directory} in {made:.1f} s")
    print(f"opened lazily: {cube.sizes['frame']} frames, chunks {cube.data.chunksize}, "
          f"{cube.nbytes / 2**20:.0f} MiB as float32, nothing read yet")
    print("true drift of the last frame [x, y]:", truth.shifts[-1].round(2).tolist())
    print("(aligning and stacking arrive with the stacking work; see the README)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bigstack", description="Align and stack astronomical frames out of core.")
    parser.add_argument("--version", action="version", version=f"bigstack {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate a synthetic night and process it")
    demo.add_argument("directory", nargs="?", default="bigstack-demo",
                      help="folder for the generated frames (default: ./bigstack-demo)")
    demo.add_argument("--frames", type=int, default=60)
    demo.add_argument("--width", type=int, default=2048)
    demo.add_argument("--height", type=int, default=1536)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--overwrite", action="store_true",
                      help="replace frames left in DIRECTORY by an earlier demo")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (BigstackError, FileExistsError, FileNotFoundError) as err:
        print(f"bigstack: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bigstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
