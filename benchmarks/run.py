"""bigstack benchmarks: every method on the same frames, side by side, in one run.

Usage (see benchmarks/README.md)::

    python benchmarks/run.py                      # 100 frames of 2048x2048
    python benchmarks/run.py --frames 400
    python benchmarks/run.py --frames 400 --cold --methods floor,bigstack-nearest,find_shifts
    python benchmarks/run.py --sweep              # scaling in N and frame size, scaling.png
    python benchmarks/run.py --many               # 5,000 frames of 1080x1920

A thin entry point: the benchmark is the ``bench`` package beside this file
(methods, harness, references, data, report, modes, command line). Each
method's child process is this file again, with ``--child spec.json``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench package, from any cwd

from bench.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
