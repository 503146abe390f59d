"""Per-frame tables as CSV files: what ``bigstack shifts -o`` and ``bigstack register -o``
write and ``--shifts`` reads.

A table bigstack writes starts with the header row ``frame,path,...`` and
ends its columns with ``valid,reason``; an overwrite replaces only such a
file, never another one that happens to have the same name.
"""

from __future__ import annotations

import csv
import os

import numpy as np

from ._errors import BigstackError

_FIRST = "frame,path,"
_LAST = ",valid,reason"


def shift_rows(ds):
    """One dict per frame of find_shifts' Dataset, in frame order."""
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


def transform_rows(ds):
    """One dict per frame of find_transforms' Dataset: ``[A | t]`` and the evidence."""
    t = np.asarray(ds["transform"].values, float)
    for i in range(ds.sizes["frame"]):
        yield {
            "frame": int(ds["frame"].values[i]),
            "path": str(ds["path"].values[i]) if "path" in ds.coords else "",
            "a00": t[i, 0, 0], "a01": t[i, 0, 1], "tx": t[i, 0, 2],
            "a10": t[i, 1, 0], "a11": t[i, 1, 1], "ty": t[i, 1, 2],
            "rotation": float(ds["rotation"].values[i]),
            "scale": float(ds["scale"].values[i]),
            "flip": bool(ds["flip"].values[i]),
            "n_stars": int(ds["n_stars"].values[i]),
            "n_matched": int(ds["n_matched"].values[i]),
            "residual": float(ds["residual"].values[i]),
            "fwhm": float(ds["fwhm"].values[i]),
            "background": float(ds["background"].values[i]),
            "valid": bool(ds["valid"].values[i]),
            "reason": str(ds["reason"].values[i]),
        }


def made_by_bigstack(path):
    """True when the file at ``path`` is a table bigstack wrote."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline(4096).rstrip("\r\n")
    except OSError:
        return False
    return header.startswith(_FIRST) and header.endswith(_LAST)


def write_csv(rows, path, overwrite=False):
    """Write dict rows as CSV, atomically; replace only a table bigstack wrote."""
    from ._files import atomic_output

    rows = list(rows)
    path = os.fspath(path)
    with atomic_output(path, overwrite, made_by_bigstack) as tmp, \
            open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_shifts_csv(ds, path, overwrite=False):
    """Write find_shifts' table as CSV (one row a frame)."""
    return write_csv(shift_rows(ds), path, overwrite)


def write_transforms_csv(ds, path, overwrite=False):
    """Write find_transforms' table as CSV (one row a frame)."""
    return write_csv(transform_rows(ds), path, overwrite)


def read_shifts_csv(path, n_frames):
    """Read a table written by ``bigstack shifts`` or ``bigstack register``.

    Returns ``(values, valid (N,))``: ``values`` is ``(N, 2)`` ``[x, y]``
    shifts for a shifts table, ``(N, 2, 3)`` transforms for a transforms table.
    """
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: no such shifts file") from err
    except (UnicodeDecodeError, csv.Error) as err:
        raise BigstackError(f"{path}: not a bigstack shifts file ({err})") from err
    if len(rows) != n_frames:
        raise BigstackError(f"{path}: holds shifts for {len(rows)} frames, but {n_frames} "
                            "frames were given")
    try:
        if rows and "a00" in rows[0]:
            keys = ("a00", "a01", "tx", "a10", "a11", "ty")
            shifts = np.array([[float(r[k]) for k in keys] for r in rows]).reshape(-1, 2, 3)
        else:
            shifts = np.array([[float(r["dx"]), float(r["dy"])] for r in rows])
        valid = np.array([r.get("valid", "True") == "True" for r in rows])
    except (KeyError, ValueError, TypeError) as err:
        raise BigstackError(f"{path}: not a bigstack shifts file ({err})") from err
    return shifts, valid
