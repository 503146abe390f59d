"""Alternating runs in one process: what the ``*_cost.py`` scripts share.

Each script times a few runs (variants of ``bigstack.stack``, most against the ``floor``
row) on a set ``benchmarks/run.py --dir`` made. :func:`frame_set` reads its command line
``[FOLDER] [FRAMES] [REPEATS]`` and the set; :func:`scratch_store` is a store path in a
temporary folder removed afterwards; :func:`alternate` warms every run once, then times
the runs in turn, round after round, in wall and in process CPU time (steadier on a
shared machine), a line a round; :func:`print_best` prints the best of each and its ratio
to the first run's best (the floor's). The scripts import ``bigstack`` before this
package, so ``PYTHONPATH=<another checkout>`` measures that checkout's code.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import tempfile
import time

import bigstack

from .data import Frames
from .harness import make_job
from .methods import floor


def frame_set(argv, folder, repeats):
    """The frames and the number of rounds that the command line ``argv`` asks for.

    ``argv[1:4]`` are FOLDER (a set ``benchmarks/run.py --dir`` made: ``*.fit`` frames,
    taken in name order, with ``truth.json`` beside them; default ``folder``), FRAMES (how
    many of its frames; default all) and REPEATS (default ``repeats``). Returns a
    :class:`bench.data.Frames` with the set's shifts and, where it has them, transforms,
    and REPEATS.
    """
    folder = argv[1] if len(argv) > 1 else folder
    paths = sorted(glob.glob(os.path.join(folder, "*.fit")))
    n = int(argv[2]) if len(argv) > 2 else len(paths)
    repeats = int(argv[3]) if len(argv) > 3 else repeats
    with open(os.path.join(folder, "truth.json")) as f:
        truth = json.load(f)
    transforms = truth.get("transforms")
    shape = bigstack.open_frames(paths[:1]).shape[1:]
    frames = Frames(folder, paths[:n], shape, truth["shifts"][:n],
                    truth.get("ref_star", (0, 0)), False,
                    transforms[:n] if transforms is not None else None)
    return frames, repeats


@contextlib.contextmanager
def scratch_store(name):
    """A store path ``name`` in a new temporary folder, removed (with all in it) on leaving."""
    folder = tempfile.mkdtemp()
    try:
        yield os.path.join(folder, name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def floor_run(frames, store):
    """The ``floor`` row (:func:`bench.methods.floor`) on ``frames`` as a run."""
    _, job = make_job("floor", frames, os.path.dirname(store))
    return lambda: floor(job)


def timed(fn):
    """Call ``fn()``; its (wall, process CPU) seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def alternate(runs, repeats, before=None):
    """Time the runs ``{name: fn}`` in turn, ``repeats`` rounds, after a warm-up of each.

    The warm-up calls every run once (page cache, numba, imports); each round then times
    every run (:func:`timed`) and prints ``name W s (C s CPU)`` for each, in one line.
    ``before()``, if given, is called untimed before every call of a run. Returns
    ``{name: [(wall, cpu), ...]}``, a pair a round.
    """
    for fn in runs.values():
        if before is not None:
            before()
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            if before is not None:
                before()
            times[name].append(timed(fn))
        print(", ".join(f"{name} {t[-1][0]:.2f} s ({t[-1][1]:.2f} s CPU)"
                        for name, t in times.items()), flush=True)
    return times


def print_best(times, n):
    """Print, in wall and in CPU time, the best of every run and its ratio to the best of
    the first run (the floor): ``N frames, best wall: floor W s, name B s = R.RRx, ...``."""
    base_name, *names = times
    for k, what in enumerate(("wall", "CPU")):
        base = min(t[k] for t in times[base_name])
        parts = [f"{base_name} {base:.2f} s"]
        for name in names:
            best = min(t[k] for t in times[name])
            parts.append(f"{name} {best:.2f} s = {best / base:.2f}x")
        print(f"{n} frames, best {what}: " + ", ".join(parts))
