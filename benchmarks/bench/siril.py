"""The Siril row: register and stack the same frames with ``siril-cli``.

Siril works on a *sequence*: its ``link`` command makes numbered links to
the FITS files of a folder, ``register`` (global star alignment, Siril's
default: a homography fitted to matched stars) writes a registered copy of
every frame (``r_*.fit``, 32-bit float), and ``stack`` combines those. We ask
for the closest Siril has to a plain mean: ``stack r_f_ rej n -nonorm``
(average, rejection ``n``one, normalisation off; Siril's defaults would be
Winsorized rejection and additive normalisation with scaling). Frame 0 is
made the reference with ``setref``, so the result lies on the same grid as
the other rows'. Everything runs in one ``siril-cli`` process, timed as a
whole; its log gives the register and stack times apart.

Siril registers by itself, so its output is checked loosely: every frame
registered, its shifts (from the log, 2 decimals; frames whose log lines other
threads interleaved are left out, at least half must be read) within 0.5 px of the truth,
and the image within a relative 1% (median over the bands' interior pixels)
of the bilinear-shifted mean of the true shifts; the FWHM of the reference
star in the stack is reported next to the generator's.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

EXECUTABLE = "siril-cli"
SHIFT_TOLERANCE = 0.5  # px
IMAGE_TOLERANCE = 1e-2  # median relative difference on interior pixels
SEQUENCE = "f_"

WHAT = ("`siril-cli` in one process: `link` the frames into a sequence, `setref` frame 0, "
        "`register` (global star alignment, writes registered 32-bit frames), "
        "`stack r_f_ rej n -nonorm` (mean, no rejection, no normalisation); *seconds* is the "
        "whole process, the register and stack times from its log are in the check column")
MATCHES = (f"all frames registered, shifts from Siril's log within {SHIFT_TOLERANCE} px of the "
           f"truth, image within a median relative {IMAGE_TOLERANCE:g} of the bilinear-shifted "
           "mean on the bands' interior (Siril interpolates with its own kernel); FWHM of the "
           "reference star in the stack reported")


def executable():
    """Path of ``siril-cli``, or None when it is not installed."""
    return shutil.which(EXECUTABLE)


def skip_reason(frames):
    """Why the Siril row cannot run here (None when it can)."""
    if executable() is None:
        return "skipped: siril-cli not installed (Debian package `siril`)"
    need = frames.n * frames.shape[0] * frames.shape[1] * 4  # the registered float copies
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if free < need + 1e9:
        return (f"skipped: Siril writes {need / 1e9:.1f} GB of registered frames; "
                f"{free / 1e9:.1f} GB free in {tempfile.gettempdir()}")
    return None


def script():
    """The Siril script (run with ``siril-cli -d <folder>``): link, register, stack."""
    return "\n".join([
        "requires 0.99.10",
        "cd in",
        f"link {SEQUENCE} -out=../seq",
        "cd ../seq",
        f"setref {SEQUENCE} 1",
        f"register {SEQUENCE}",
        f"stack r_{SEQUENCE} rej n -nonorm -out=../result",
        "close",
        "",
    ])


def command(job):
    """Prepare a folder of links to the frames and the script; the Command to run."""
    from .methods import Command, Output, link_frames

    base = Path(job.workdir) / f"siril-{os.getpid()}-{len(job.paths)}"
    if base.exists():
        shutil.rmtree(base)
    base.mkdir(parents=True)
    link_frames(job.paths, base / "in")  # exactly these frames, in this order
    (base / "run.ssf").write_text(script())
    argv = [executable() or EXECUTABLE, "-d", str(base), "-s", str(base / "run.ssf")]

    def collect(stdout, stderr):
        from astropy.io import fits

        log = Path(stdout).read_text(errors="replace")
        result = base / "result.fit"
        if not result.exists():
            tail = " | ".join(line for line in log.splitlines()[-6:] if line.strip())
            raise RuntimeError(f"Siril wrote no result: {tail}")
        raw = fits.getdata(result)
        image = raw.astype(np.float64)
        if raw.dtype.kind == "f":
            image *= 65535.0  # Siril's 32-bit results of 16-bit frames are in [0, 1]
        extra = parse_log(log, len(job.paths))
        extra.update(shift_errors(extra.pop("shifts"), job.shifts))
        extra["fwhm_stack"] = fwhm_at(image, job.ref_star)
        shutil.rmtree(base, ignore_errors=True)  # the registered copies: GBs
        return Output(rows=lambda a, b: image[a:b], extra=extra)

    return Command(argv=argv, collect=collect)


_NUMBER = r"([-+]?\d+(?:\.\d+)?)"


def parse_log(text, n):
    """Numbers from a Siril log: registered/failed frames, times, shifts, input FWHM.

    ``shifts`` maps a frame index (0-based) to Siril's ``[dx, dy]``. Siril
    registers frames on several threads whose lines may interleave: a
    ``dx``/``dy`` line is given to a frame only when exactly one open block
    ("Matching stars in image N" not yet followed by its dx and dy) lacks it;
    otherwise every open block is dropped as ambiguous.
    """
    out = {"n_registered": None, "n_failed": None}
    total = re.search(r"Total: (\d+) failed, (\d+) registered", text)
    if total:
        out["n_failed"], out["n_registered"] = int(total.group(1)), int(total.group(2))
    times = _execution_times(text)
    out["register_s"] = times.get("register")
    out["stack_s"] = times.get("stack")
    open_blocks, shifts, ambiguous = {}, {}, set()
    for line in text.splitlines():
        m = re.search(r"Matching stars in image (\d+)", line)
        if m:
            k = int(m.group(1)) - 1
            if k in open_blocks or k in shifts:
                ambiguous.add(k)
            open_blocks[k] = {}
            continue
        m = re.search(r"\bd([xy]):\s*" + _NUMBER + " px", line)
        if not m:
            continue
        axis, value = m.group(1), float(m.group(2))
        lacking = [k for k, got in open_blocks.items() if axis not in got]
        if not lacking:
            continue
        if len(lacking) > 1:
            ambiguous.update(open_blocks)
        open_blocks[lacking[0]][axis] = value
        for k in [k for k, got in open_blocks.items() if len(got) == 2]:
            shifts[k] = (open_blocks[k]["x"], open_blocks[k]["y"])
            del open_blocks[k]
    out["shifts"] = {k: v for k, v in shifts.items() if k not in ambiguous}
    fwhm = [float(v) for v in re.findall(r"FWHMx:\s*" + _NUMBER + " px", text)]
    out["fwhm_frames"] = float(np.median(fwhm)) if fwhm else None
    out["n_frames"] = n
    return out


_DURATION = (r"Execution time: (?:(\d+) h )?(?:(\d+) min )?(\d+(?:\.\d+)?) (ms|s)\b")


def _execution_times(text):
    """``{command: seconds}`` from the "Running command: X" ... "Execution time: T" pairs
    (T as Siril writes it: "540.62 ms", "3.25 s", "1 min 05 s", "1 h 02 min 05 s")."""
    found, command = {}, None
    for line in text.splitlines():
        m = re.search(r"Running command: (\w+)", line)
        if m:
            command = m.group(1)
            continue
        m = re.search(_DURATION, line)
        if m and command and command not in found:
            hours, minutes, value, unit = m.groups()
            seconds = float(value) / 1000 if unit == "ms" else float(value)
            found[command] = seconds + 60 * int(minutes or 0) + 3600 * int(hours or 0)
    return found


def shift_errors(siril_shifts, truth):
    """Largest difference between Siril's shifts and the true ones, in px.

    Siril measures y downwards (its display's rows run top to bottom), so its
    ``[dx, dy]`` is the truth's ``[dx, -dy]``; frame 0 is the reference.
    """
    truth = np.asarray(truth, dtype=np.float64)
    errors = {k: max(abs(sx - truth[k, 0]), abs(-sy - truth[k, 1]))
              for k, (sx, sy) in siril_shifts.items() if 0 <= k < len(truth)}
    if not errors:
        return {"n_shifts": 0, "shift_max_err": math.inf, "shift_worst_frame": None}
    worst = max(errors, key=errors.get)
    return {"n_shifts": len(errors), "shift_max_err": errors[worst], "shift_worst_frame": worst}


def fwhm_at(image, star, box=15):
    """FWHM (px) of the star near ``star = [x, y]`` from its second moments, background
    (the box's edge median) removed; NaN when there is no star."""
    x0, y0 = (int(round(v)) for v in star)
    h = box // 2
    ny, nx = image.shape
    if not (h <= x0 < nx - h and h <= y0 < ny - h):
        return math.nan
    stamp = np.nan_to_num(image[y0 - h:y0 + h + 1, x0 - h:x0 + h + 1])
    edge = np.concatenate([stamp[0], stamp[-1], stamp[:, 0], stamp[:, -1]])
    w = np.clip(stamp - np.median(edge), 0, None)
    total = w.sum()
    if total <= 0:
        return math.nan
    yy, xx = np.mgrid[-h:h + 1, -h:h + 1]
    cx, cy = (w * xx).sum() / total, (w * yy).sum() / total
    var = ((w * ((xx - cx) ** 2 + (yy - cy) ** 2)).sum() / total) / 2
    return float(2 * math.sqrt(2 * math.log(2)) * math.sqrt(var))


def check(result, frames, refs):
    """``(matches, detail)`` for the Siril row (see the module notes)."""
    n = frames.n
    parts, ok = [], True
    reg = result.get("n_registered")
    parts.append(f"{reg if reg is not None else '?'}/{n} registered")
    ok &= reg == n
    err = result.get("shift_max_err", math.inf)
    parts.append(f"shifts of {result.get('n_shifts', 0)} frames within {err:.2f} px"
                 + (f" (worst: frame {result['shift_worst_frame']})"
                    if err > SHIFT_TOLERANCE and result.get("shift_worst_frame") is not None
                    else ""))
    ok &= result.get("n_shifts", 0) >= (n - 1) // 2 and err <= SHIFT_TOLERANCE
    rel = interior_difference(result["bands"], refs.get("bilinear-coverage"), refs.bands,
                              frames)
    parts.append(f"image median rel. diff {rel:.1e}")
    ok &= rel <= IMAGE_TOLERANCE
    parts.append(f"FWHM {result.get('fwhm_stack', math.nan):.2f} px in the stack "
                 f"(inputs {result.get('fwhm_frames') or math.nan:.2f})")
    if result.get("register_s") is not None and result.get("stack_s") is not None:
        parts.append(f"register {result['register_s']:.1f} s + stack {result['stack_s']:.1f} s")
    return bool(ok), ", ".join(parts)


def interior_difference(out_bands, ref_bands, bands, frames):
    """Median relative difference over the bands' pixels that every frame covers, away
    from the edges by the largest shift plus 4 px (where interpolation kernels differ)."""
    ny, nx = frames.shape
    margin = int(np.ceil(np.abs(frames.shifts).max())) + 4 if frames.n else 4
    diffs = []
    for out, ref, (a, b) in zip(out_bands, ref_bands, bands, strict=True):
        rows = np.arange(a, b)
        keep_rows = (rows >= margin) & (rows < ny - margin)
        if not keep_rows.any() or nx <= 2 * margin:
            continue
        o = out[keep_rows, margin:nx - margin]
        r = ref[keep_rows, margin:nx - margin]
        good = np.isfinite(r) & np.isfinite(o)
        diffs.append(np.abs(o[good] - r[good]) / np.maximum(np.abs(r[good]), 1.0))
    if not diffs or not sum(d.size for d in diffs):
        return math.inf
    return float(np.median(np.concatenate(diffs)))
