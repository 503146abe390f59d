"""Running one method: a fresh process, timed, its peak RSS and open files, then checked.

Python rows run as ``python benchmarks/run.py --child spec.json`` (see
:func:`child_main`), which times only the method's call; command rows (Siril,
the bigstack CLI) run their program directly and are timed whole. Both are
started by a small launcher process that reaps them with ``os.wait4``, whose
``ru_maxrss`` is the child's peak resident set (threads included). Before
each run the harness waits for an idle machine, then warms the frames into
the page cache or evicts them from it (``--cold``).
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import REPO, RUN_PY, data
from .methods import METHODS, Job
from .references import bands_for, compare

BUSY = 0.15  # a machine busier than this (share of all CPUs) is not idle


# ==========================================================================
# the child


def rss_now():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def vmhwm():
    """Peak RSS of this process so far (bytes), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def import_modules(names):
    """Import ``names`` (imports are not work); a name ending in "?" only if installed."""
    for name in names:
        try:
            importlib.import_module(name.rstrip("?"))
        except ImportError:
            if not name.endswith("?"):
                raise


def child_main(spec_path):
    """Run one Python row as the spec says; write its numbers (and check bands) to files."""
    t_start = time.perf_counter()
    with open(spec_path) as f:
        spec = json.load(f)
    job = Job.from_spec(spec)
    method = METHODS[job.method]
    t0 = time.perf_counter()
    import_modules(method.imports)
    made = method.setup(job) if method.setup else {}
    job.state.update(made)  # the run's inputs; names starting with _ are not recorded
    setup = {k: v for k, v in made.items() if not k.startswith("_")}
    import_s = time.perf_counter() - t0
    rss_before = rss_now()
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    out = method.run(job)
    work_s = time.perf_counter() - t0
    peak_work = vmhwm()
    result = {"method": job.method, "work_s": work_s, "import_s": import_s,
              "rss_after_imports": rss_before, "child_s": time.perf_counter() - t_start,
              "page_faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0,
              **setup, **out.extra}
    # not timed: what the parent checks
    if spec.get("bands") and out.rows is not None:
        np.savez(spec["bands_out"],
                 *[np.asarray(out.rows(a, b), np.float64) for a, b in spec["bands"]])
    result["vmhwm_work"] = peak_work  # peak RSS up to the end of the work (cross-check)
    if out.after is not None:
        result.update(out.after())
    with open(spec["result_out"], "w") as f:
        json.dump(result, f)


# ==========================================================================
# the launcher

# A lean process that starts every child and reaps it with os.wait4. On
# Linux a process inherits, through vfork/posix_spawn and exec, the peak RSS
# of the process it was spawned from (exec records the old memory map's
# high-water mark in ru_maxrss). Spawned straight from the parent, which has
# numpy, astropy and bigstack imported, every child would report at least the
# parent's peak; spawned from a bare interpreter (about 10 MiB) ru_maxrss is
# the child's own peak. It also times the child from spawn to reaping.
_LAUNCHER = r"""
import json, os, sys, time
for line in sys.stdin:
    job = json.loads(line)
    write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_OPEN, 1, job["stdout"], write, 0o644),
               (os.POSIX_SPAWN_OPEN, 2, job["stderr"], write, 0o644)]
    t0 = time.perf_counter()
    try:
        pid = os.posix_spawn(job["argv"][0], job["argv"], job["env"], file_actions=actions)
    except OSError as err:
        print(json.dumps({"error": str(err)}), flush=True)
        continue
    print(json.dumps({"pid": pid}), flush=True)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - t0
    print(json.dumps({"status": status, "maxrss_kib": usage.ru_maxrss, "elapsed": elapsed}),
          flush=True)
"""


class Launcher:
    _instance = None

    @classmethod
    def get(cls):
        if cls._instance is None or cls._instance.proc.poll() is not None:
            cls._instance = cls()
        return cls._instance

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        atexit.register(self.close)

    def spawn(self, argv, env, stdout, stderr):
        job = {"argv": argv, "env": env, "stdout": str(stdout), "stderr": str(stderr)}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise OSError(f"cannot start {argv[0]}: {reply['error']}")
        return reply["pid"]

    def wait(self):
        """``(wait status, ru_maxrss in KiB, seconds from spawn to reaping)``."""
        reply = json.loads(self.proc.stdout.readline())
        return reply["status"], reply["maxrss_kib"], reply["elapsed"]

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def child_env(extra=None):
    """The environment of a child: this checkout first on PYTHONPATH, warnings quiet."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def run_process(argv, env, stdout, stderr, timeout):
    """Start ``argv`` through the launcher and wait for it, sampling its open files.

    Returns ``{"status", "returncode", "peak_rss", "elapsed", "max_fds", "timed_out"}``.
    A run longer than ``timeout`` seconds is killed.
    """
    launcher = Launcher.get()
    pid = launcher.spawn(argv, env, stdout, stderr)
    fds = {"max": 0}
    done = threading.Event()
    timed_out = {"flag": False}

    def sample():
        deadline = time.monotonic() + timeout
        while not done.is_set():
            try:
                fds["max"] = max(fds["max"], len(os.listdir(f"/proc/{pid}/fd")))
            except OSError:
                pass
            if time.monotonic() > deadline and not timed_out["flag"]:
                timed_out["flag"] = True
                try:
                    os.kill(pid, 9)
                except OSError:
                    pass
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        status, maxrss_kib, elapsed = launcher.wait()
    except BaseException:  # Ctrl-C or SIGTERM: stop the child this run started
        try:
            os.kill(pid, 9)
        except OSError:
            pass
        raise
    finally:
        done.set()
        sampler.join()
    return {"status": status, "returncode": os.waitstatus_to_exitcode(status),
            "peak_rss": maxrss_kib * 1024, "elapsed": elapsed, "max_fds": fds["max"],
            "timed_out": timed_out["flag"]}


def _failure(proc, *logs):
    lines = []
    for path in logs:
        if Path(path).exists():
            lines += Path(path).read_text(errors="replace").strip().splitlines()
    tail = [line for line in lines if line.strip()][-8:]
    why = "timed out" if proc["timed_out"] else f"exit {proc['returncode']}"
    return f"{why}: " + (" | ".join(tail) if tail else "(no output)")


def make_job(name, frames, workdir, *, memory="512MB", graph=False):
    tag = f"{name}-{frames.n}-{os.getpid()}-{time.monotonic_ns()}"
    return tag, Job(method=name, paths=list(frames.paths), shape=frames.shape,
                    shifts=frames.shifts, ref_star=frames.ref_star,
                    transforms=frames.transforms, memory=memory,
                    store=str(Path(workdir) / f"{tag}.zarr"), workdir=str(workdir), graph=graph)


def run_child(name, frames, workdir, *, memory="512MB", graph=False, timeout=3600,
              with_bands=True):
    """Run one Python row in a fresh process; return its measurements."""
    workdir = Path(workdir)
    tag, job = make_job(name, frames, workdir, memory=memory, graph=graph)
    spec = {
        "method": name, "paths": job.paths, "shape": list(job.shape),
        "shifts": job.shifts.tolist(), "ref_star": list(job.ref_star),
        "transforms": job.transforms.tolist(), "memory": memory,
        "store": job.store, "workdir": str(workdir), "graph": graph,
        "result_out": str(workdir / f"{tag}.json"), "bands_out": str(workdir / f"{tag}.npz"),
    }
    if with_bands:
        spec["bands"] = bands_for(frames.shape[0])
    spec_path = workdir / f"{tag}.spec.json"
    spec_path.write_text(json.dumps(spec))
    out_path, err_path = workdir / f"{tag}.out", workdir / f"{tag}.err"
    t0 = time.perf_counter()
    proc = run_process([sys.executable, str(RUN_PY), "--child", str(spec_path)], child_env(),
                       out_path, err_path, timeout)
    result = {"method": name, "total_s": time.perf_counter() - t0, "peak_rss": proc["peak_rss"],
              "max_fds": proc["max_fds"], "returncode": proc["returncode"]}
    result_path = Path(spec["result_out"])
    if proc["returncode"] == 0 and result_path.exists():
        result.update(json.loads(result_path.read_text()))
        bands_path = Path(spec["bands_out"])
        if bands_path.exists():
            with np.load(bands_path) as z:
                result["bands"] = [z[f"arr_{k}"] for k in range(len(z.files))]
    else:
        result["error"] = _failure(proc, err_path)
    for p in (spec_path, out_path, err_path, result_path, Path(spec["bands_out"])):
        p.unlink(missing_ok=True)
    shutil.rmtree(job.store, ignore_errors=True)
    return result


def run_command(name, frames, workdir, *, memory="512MB", timeout=3600, with_bands=True):
    """Run one command row: prepare (not timed), run the program whole, collect its output."""
    workdir = Path(workdir)
    tag, job = make_job(name, frames, workdir, memory=memory)
    out_path, err_path = workdir / f"{tag}.out", workdir / f"{tag}.err"
    try:
        try:
            command = METHODS[name].command(job)
        except OSError as err:
            return {"method": name, "error": f"could not prepare the run: {err}"}
        proc = run_process(command.argv, child_env(command.env), out_path, err_path, timeout)
        result = {"method": name, "work_s": proc["elapsed"], "total_s": proc["elapsed"],
                  "peak_rss": proc["peak_rss"], "max_fds": proc["max_fds"],
                  "returncode": proc["returncode"]}
        if proc["returncode"] != 0:
            result["error"] = _failure(proc, err_path, out_path)
            return result
        try:
            out = command.collect(out_path, err_path)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            result["error"] = f"output unreadable: {err}"
            return result
        result.update(out.extra)
        if with_bands and out.rows is not None:
            result["bands"] = [np.asarray(out.rows(a, b), np.float64)
                               for a, b in bands_for(frames.shape[0])]
        return result
    finally:
        for p in (out_path, err_path):
            p.unlink(missing_ok=True)
        shutil.rmtree(job.store, ignore_errors=True)


# ==========================================================================
# the machine and the page cache


def cpu_busy(interval=0.5):
    """Share of all CPUs busy over ``interval`` seconds (this process sleeps meanwhile)."""
    def sample():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    return 1.0 - (idle1 - idle0) / max(total1 - total0, 1)


def wait_idle(max_wait, threshold=BUSY, log=print):
    """Wait up to ``max_wait`` s for other processes to leave the CPUs idle; return busy share."""
    busy = cpu_busy()
    deadline = time.monotonic() + max_wait
    said = False
    while busy > threshold and time.monotonic() < deadline:
        if not said:
            log(f"  (waiting for the machine to be idle: {busy:.0%} of the CPUs busy)")
            said = True
        time.sleep(2)
        busy = cpu_busy()
    return busy


def prepare_cache(paths, cold):
    """Warm every frame into the page cache, or evict them all (``cold``); return the share
    of the frames' pages the cache then holds."""
    if cold:
        data.evict(paths)
    else:
        data.warm(paths)
    try:
        return data.resident_share(paths)
    except OSError:
        return None


# ==========================================================================
# one method, best of ``repeat``, checked

FLOOR_RUNS = 3


def measure(name, frames, refs, workdir, *, repeat=1, memory="512MB", graph=False,
            timeout=3600, idle_wait=0, cold=False, log=print):
    """Best of ``repeat`` runs of one method, checked against its reference.

    The floor, every ratio's baseline, runs at least ``FLOOR_RUNS`` times: one
    run is short (0.6 s at 400 frames of 2048 x 2048), and single runs of it
    on this project's machine took 0.61-0.90 s, which moved every ratio of a
    run by as much. Taking its best makes the ratios, if anything, higher.
    """
    method = METHODS[name]
    if name == "floor":
        repeat = max(repeat, FLOOR_RUNS)
    why = method.skip(frames) if method.skip else None
    if why:
        log(f"  {name:18s} {why}")
        return {"method": name, "skipped": why}
    runs = []
    for _ in range(repeat):
        busy = wait_idle(idle_wait, log=log) if idle_wait else None
        resident = prepare_cache(frames.paths, cold)
        if method.command:
            run = run_command(name, frames, workdir, memory=memory, timeout=timeout)
        else:
            run = run_child(name, frames, workdir, memory=memory, graph=graph, timeout=timeout)
        run["busy_before"] = busy
        run["cached_at_start"] = resident
        runs.append(run)
        if "error" in run:
            break
    ok = [r for r in runs if "error" not in r]
    best = min(ok, key=lambda r: r["work_s"]) if ok else runs[-1]
    best["repeats"] = len(runs)
    if "error" not in best:
        if method.check:
            best["matches"], best["match_detail"] = method.check(best, frames, refs)
        elif method.reference and "bands" in best:
            matches, err = compare(best["bands"], refs.get(method.reference))
            best["matches"] = matches
            best["match_detail"] = f"max rel. diff {err:.1e}"
    best.pop("bands", None)
    log("  " + one_line(best))
    return best


def one_line(r):
    if "skipped" in r:
        return f"{r['method']:18s} {r['skipped']}"
    if "error" in r:
        return f"{r['method']:18s} FAILED ({r['error'][:300]})"
    return (f"{r['method']:18s} {r['work_s']:8.2f} s  (total {r['total_s']:.2f} s)  "
            f"peak RSS {r['peak_rss'] / 2**20:7.0f} MiB  max fds {r['max_fds']:4d}  "
            f"matches: {'yes' if r.get('matches') else 'NO'} ({r.get('match_detail', '')})"
            + (f"  [VmHWM after work {r['vmhwm_work'] / 2**20:.0f} MiB, "
               f"{r['page_faults']} page faults in the work]" if "vmhwm_work" in r else "")
            + (f"  [{r['cached_at_start']:.0%} of the frames cached at start]"
               if r.get("cached_at_start") is not None else "")
            + (f"  [machine {r['busy_before']:.0%} busy at start]"
               if (r.get("busy_before") or 0) > BUSY else ""))
