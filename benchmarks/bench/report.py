"""What a run says: tables, the machine and versions, RESULTS.md, the scaling plot."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

from . import REPO
from .methods import METHODS, mem_total_bytes
from .references import TOLERANCE

SWEEP_FRAMES = (25, 50, 100, 200, 400)
SWEEP_SIZES = (1024, 2048, 4096)
SWEEP_BASE_SIZE = 2048  # the size of the N sweep
SWEEP_BASE_FRAMES = 100  # the N of the size sweep


def fmt_row(r, floor_s, data_bytes, extra=()):
    if "skipped" in r:
        return [r["method"], *extra, "-", "-", "-", "-", "-", "-", "-", r["skipped"]]
    if "error" in r:
        return [r["method"], *extra, "-", "-", "-", "-", "-", "-", "no", "failed: "
                + r["error"][:120].replace("|", "/")]
    reads_all = METHODS[r["method"]].reads_all if r["method"] in METHODS else True
    mbs = f"{data_bytes / r['work_s'] / 1e6:.0f}" if reads_all else "-"
    ratio = f"{r['work_s'] / floor_s:.2f}" if floor_s else "-"
    detail = r.get("match_detail", "")
    if (r.get("busy_before") or 0) > 0.15:
        detail += f"; machine {r['busy_before']:.0%} busy at start"
    if r.get("cold") and r.get("cached_at_start") is not None:
        detail += f"; {r['cached_at_start']:.0%} of the frames cached at start"
    return [r["method"], *extra, f"{r['work_s']:.2f}", f"{r['total_s']:.2f}", ratio, mbs,
            f"{r['peak_rss'] / 2**20:.0f}", str(r["max_fds"]),
            "yes" if r.get("matches") else "no", detail]


HEADERS = ["method", "seconds", "total s", "x floor", "input MB/s", "peak RSS MiB",
           "max open files", "matches", "check"]


def markdown_table(headers, rows):
    lines = ["| " + " | ".join(headers) + " |",
             "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def text_table(headers, rows):
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True))  # noqa: E731
    return "\n".join([line(headers), line("-" * w for w in widths)] + [line(r) for r in rows])


def machine_info():
    import dask
    import xarray
    import zarr

    import bigstack

    try:
        import astropy
        astropy_v = astropy.__version__
    except ImportError:
        astropy_v = "-"
    try:
        import ccdproc
        ccdproc_v = ccdproc.__version__
    except ImportError:
        ccdproc_v = "not installed"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    commit = _git("rev-parse", "--short", "HEAD")
    code = ("bigstack", "benchmarks/bench", "benchmarks/run.py")
    dirty = _git("status", "--porcelain", "--", *code)
    if dirty:  # name the working tree's state of the code so runs can be told apart
        import hashlib

        diff = _git("diff", "HEAD", "--", *code) + _git("ls-files", "--others", "--", *code)
        dirty = hashlib.sha1(diff.encode()).hexdigest()[:10]
    load = os.getloadavg()
    return {
        "cores": os.cpu_count(), "cpu": cpu, "mem_gib": mem_total_bytes() / 2**30,
        "python": platform.python_version(), "numpy": np.__version__,
        "dask": dask.__version__, "zarr": zarr.__version__, "xarray": xarray.__version__,
        "astropy": astropy_v, "ccdproc": ccdproc_v, "bigstack": bigstack.__version__,
        "commit": (commit or "?") + (f" + uncommitted changes (diff {dirty})"
                                     if dirty else ""),
        "load": f"{load[0]:.2f}, {load[1]:.2f}, {load[2]:.2f}",
        "siril": siril_version(),
    }


def siril_version():
    """``siril-cli --version`` ("siril 1.0.6" -> "1.0.6"), or "not installed"."""
    from . import siril

    exe = siril.executable()
    if exe is None:
        return "not installed"
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return "?"
    words = (out.stdout or out.stderr).split()
    return words[-1] if words else "?"


def _git(*args):
    try:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_text(m):
    return (f"- Machine: {m['cores']} cores ({m['cpu']}), {m['mem_gib']:.1f} GiB memory "
            f"(MemTotal); load average at start {m['load']}\n"
            f"- Versions: Python {m['python']}, numpy {m['numpy']}, dask {m['dask']}, "
            f"zarr {m['zarr']}, xarray {m['xarray']}, astropy {m['astropy']}, "
            f"ccdproc {m['ccdproc']}, Siril {m.get('siril', '-')}, bigstack {m['bigstack']} "
            f"at commit {m['commit']}")


def command_text():
    args = " ".join(sys.argv[1:])
    return f"python benchmarks/run.py{(' ' + args) if args else ''}"


def append_results(path, text):
    path = Path(path)
    if not path.exists():
        path.write_text("# bigstack benchmark results\n\nAppended by `benchmarks/run.py` "
                        "(see README.md in this folder); newest at the bottom.\n")
    with open(path, "a") as f:
        f.write("\n" + text.rstrip() + "\n")


def now_text():
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def data_text(frames):
    drift = np.abs(frames.shifts).max(axis=0)
    return (f"- Data: {frames.n} frames of {frames.shape[0]}x{frames.shape[1]} uint16 FITS "
            f"({frames.data_bytes / 1e6:.0f} MB of pixels) from `bigstack.synthetic.make_frames`"
            f" (sub-pixel drift, largest shift {drift[0]:.1f} px in x, {drift[1]:.1f} px in y)")


COMMON_NOTES = """\
- Every method runs in its own fresh process. *seconds*: wall time of the
  work only, measured inside the child (imports excluded; for bigstack it
  includes `open_frames`), except for the command rows (`bigstack-cli`,
  `siril`), where it is the whole process as a user waits for it
  (interpreter or program start, imports, work); *total s*: the child
  process from start to exit (interpreter start, imports, work, saving the
  check bands); *x floor*: seconds / floor's seconds; *input MB/s*: bytes of
  pixel data of all frames / seconds; *peak RSS*: `ru_maxrss` of the child
  from `os.wait4` (includes the imported libraries: about 30 MiB for Python
  and numpy, 150 MiB with dask, xarray, zarr and astropy); *max open
  files*: largest number of entries in `/proc/<pid>/fd` seen while sampling
  the child every 20 ms.
- {cache}
- Before each method the run waits (up to `--idle-wait` s) until other
  processes leave the CPUs idle; a method that started on a busy machine
  says so.
- *matches*: the output agrees, on three bands of rows (top, middle,
  bottom: 64 rows), with a plain-numpy reference computed from rows read
  with astropy, to a relative {tol:g} with the same NaN pattern (unless the
  method's note says otherwise)."""

WARM_TEXT = ("Page cache **warm**: every file is read once right before each method runs, "
             "so the methods read from memory.")
COLD_TEXT = ("Page cache **cold** (`--cold`): right before each method every frame is "
             "evicted with `os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`, so the methods "
             "(the floor too) read from the disk; the check column gives the share of the "
             "frames' pages the cache held at the start (`mincore`).")


def common_notes(cold=False):
    return COMMON_NOTES.format(tol=TOLERANCE, cache=COLD_TEXT if cold else WARM_TEXT)


def cold_check_text(c):
    """The eviction check of a ``--cold`` run, one bullet."""
    return (f"- Eviction check: {c['sample_files']} frames ({c['sample_bytes'] / 1e6:.0f} MB) "
            f"read at {c['warm_mb_s']:.0f} MB/s warm and {c['cold_mb_s']:.0f} MB/s after "
            f"`POSIX_FADV_DONTNEED` ({c['resident_warm']:.0%} of their pages cached before, "
            f"{c['resident_evicted']:.0%} after); evicting all frames "
            f"({c['frames_bytes'] / 1e6:.0f} MB) took /proc/meminfo Cached from "
            f"{c['cached_before'] / 1e6:.0f} to {c['cached_after'] / 1e6:.0f} MB and left "
            f"{c['resident_all_evicted']:.1%} of their pages cached.")


def per_method_notes(methods):
    lines = []
    for m in methods:
        entry = METHODS[m]
        lines.append(f"- `{m}`: {entry.what}; matches {entry.match_text}.")
    return "\n".join(lines)


def plot_scaling(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in table))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    (ax_t, ax_m), (ax_s, ax_sm) = axes
    styles = {m: dict(marker=mk, label=m) for m, mk in zip(methods, "osD^vx<>", strict=False)}
    for m in methods:
        by_n = sorted(((r["n"], r) for r in table
                       if r["method"] == m and r["size"] == SWEEP_BASE_SIZE and "work_s" in r),
                      key=lambda item: item[0])
        if by_n:
            ns = [n for n, _ in by_n]
            ax_t.plot(ns, [r["work_s"] / n for n, r in by_n], **styles[m])
            ax_m.plot(ns, [r["peak_rss"] / 2**20 for _, r in by_n], **styles[m])
        by_s = sorted(((r["size"], r) for r in table
                       if r["method"] == m and r["n"] == SWEEP_BASE_FRAMES and "work_s" in r),
                      key=lambda item: item[0])
        if by_s:
            ss = [s for s, _ in by_s]
            ax_s.plot(ss, [r["data_bytes"] / r["work_s"] / 1e6 for _, r in by_s], **styles[m])
            ax_sm.plot(ss, [r["peak_rss"] / 2**20 for _, r in by_s], **styles[m])
    side = f"{SWEEP_BASE_SIZE}x{SWEEP_BASE_SIZE}"
    ax_t.set(title=f"Time per frame ({side})", xlabel="frames N", ylabel="seconds per frame",
             xscale="log", yscale="log")
    ax_m.set(title=f"Peak memory ({side})", xlabel="frames N", ylabel="peak RSS (MiB)",
             xscale="log", yscale="log")
    ax_s.set(title=f"Throughput ({SWEEP_BASE_FRAMES} frames)", xlabel="frame side (pixels)",
             ylabel="input MB/s", xscale="log", yscale="log")
    ax_sm.set(title=f"Peak memory ({SWEEP_BASE_FRAMES} frames)", xlabel="frame side (pixels)",
              ylabel="peak RSS (MiB)", xscale="log", yscale="log")
    for ax in (ax_t, ax_m):
        ax.set_xticks(SWEEP_FRAMES, [str(v) for v in SWEEP_FRAMES])
        ax.minorticks_off()
    for ax in (ax_s, ax_sm):
        ax.set_xticks(SWEEP_SIZES, [str(v) for v in SWEEP_SIZES])
        ax.minorticks_off()
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for ax in axes.flat:
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = ax_t.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=9,
               bbox_to_anchor=(0.5, 0.955), frameon=False)
    cache = "cold" if any(r.get("cold") for r in table) else "warm"
    fig.suptitle(f"bigstack scaling: each method in a fresh process, {cache} page cache, "
                 f"{os.cpu_count()} cores", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


