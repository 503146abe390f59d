"""How a night registered: the per-frame table, a text summary and a picture.

Users judge a night by its curves: FWHM, background, stars matched, the
fit's residual, the drift and the field rotation against time, with the
frames left out marked by their reason. :func:`frame_table` takes what
:func:`bigstack.find_transforms` (or :func:`bigstack.find_shifts`) measured
into plain lists (kept in a store's provenance as ``attrs["frames"]``, so
``bigstack info --report`` can draw it later); :func:`summary_lines` and
:func:`report_picture` turn it into words and a picture.
"""

from __future__ import annotations

import os
import re

import numpy as np

# the columns of a frame table, in order; missing ones are left out
_NUMBERS = ("shift_x", "shift_y", "rotation", "scale", "fwhm", "background", "n_stars",
            "n_matched", "residual")


def _values(ds, name):
    return np.asarray(ds[name].values) if name in ds else None


def frame_table(ds):
    """Per-frame lists (JSON-ready) of a registration Dataset; None for anything else."""
    if not hasattr(ds, "data_vars") or "valid" not in ds:
        return None
    n = ds.sizes["frame"]
    out = {}
    if "transform" in ds:
        t = np.asarray(ds["transform"].values, float)
        out["shift_x"], out["shift_y"] = t[:, 0, 2], t[:, 1, 2]
    elif "shift" in ds:
        shift = ds["shift"].transpose(..., "axis").sel(axis=["x", "y"]).values
        out["shift_x"], out["shift_y"] = shift[:, 0], shift[:, 1]
    for name in ("rotation", "scale", "fwhm", "background", "n_stars", "n_matched", "residual"):
        values = _values(ds, name)
        if values is not None:
            out[name] = values
    table = {k: [None if not np.isfinite(v) else float(v) for v in np.asarray(v, float)]
             for k, v in out.items()}
    table["valid"] = [bool(v) for v in ds["valid"].values]
    table["reason"] = [str(r) for r in ds["reason"].values] if "reason" in ds else [""] * n
    table["path"] = ([os.path.basename(str(p)) for p in ds["path"].values]
                     if "path" in ds.coords else [f"frame {i}" for i in range(n)])
    if "time" in ds.coords:
        times = np.asarray(ds["time"].values).astype("datetime64[ms]")
        table["time"] = [None if np.isnat(t) else str(t) for t in times]
    return table


def _kind(reason):
    """A reason with its numbers taken out, so that like reasons group together."""
    return re.sub(r"-?\d+(\.\d+)?", "#", reason)


def _short(reason, most=80):
    """A reason for a legend: the part before its details, never cut inside a word."""
    head = reason.split(": ", 1)[0] if ": " in reason else reason
    if len(head) <= most:
        return head
    return head[:most].rsplit(" ", 1)[0] + " ..."


def reason_groups(table):
    """``[(example reason, [frames])]`` of the frames left out, largest group first."""
    groups = {}
    for i, (valid, reason) in enumerate(zip(table["valid"], table["reason"], strict=True)):
        if not valid:
            groups.setdefault(_kind(reason), []).append((i, reason))
    ordered = sorted(groups.values(), key=len, reverse=True)
    return [(members[0][1], [i for i, _ in members]) for members in ordered]


def _frames_list(frames, most=8):
    shown = ", ".join(str(i) for i in frames[:most])
    return shown + (f", ... ({len(frames)} in all)" if len(frames) > most else "")


def _span(table, name, unit, digits):
    if name not in table:
        return None
    values = [v for v, ok in zip(table[name], table["valid"], strict=True)
              if ok and v is not None]
    if not values:
        return None
    return f"{min(values):.{digits}f}..{max(values):.{digits}f}{unit}"


def summary_lines(table, attrs=None):
    """What a user needs to judge the registration, as a few lines of text."""
    attrs = attrs or {}
    n = len(table["valid"])
    used = sum(table["valid"])
    lines = [f"registration: {used} of {n} frames usable"]
    reference = attrs.get("reference")
    if reference is not None:
        name = table["path"][reference] if reference < n else ""
        why = attrs.get("reference_reason")
        lines.append(f"reference frame {reference} ({name})" + (f": {why}" if why else ""))
    for example, frames in reason_groups(table):
        lines.append(f"left out {len(frames)}: {example} (frame{'s' if len(frames) > 1 else ''} "
                     f"{_frames_list(frames)})")
    spans = [("shift x", _span(table, "shift_x", " px", 2)),
             ("shift y", _span(table, "shift_y", " px", 2)),
             ("rotation", _span(table, "rotation", " deg", 3)),
             ("scale", _span(table, "scale", "", 5)),
             ("FWHM", _span(table, "fwhm", " px", 2))]
    shown = [f"{name} {span}" for name, span in spans if span]
    if shown:
        lines.append("ranges of the usable frames: " + "; ".join(shown))
    notes = {}
    for i, (valid, reason) in enumerate(zip(table["valid"], table["reason"], strict=True)):
        if valid and reason and reason != "reference frame":
            notes.setdefault(_kind(reason), (reason, []))[1].append(i)
    for reason, frames in notes.values():
        lines.append(f"note: {reason} (frame{'s' if len(frames) > 1 else ''} "
                     f"{_frames_list(frames)})")
    return lines


def _x_axis(table):
    """Minutes since the first frame when every frame has a time, else the frame index."""
    times = table.get("time")
    if times and all(t is not None for t in times):
        t = np.array(times, dtype="datetime64[ms]")
        return (t - t.min()) / np.timedelta64(60_000, "ms"), "minutes since the first frame"
    return np.arange(len(table["valid"])), "frame"


def report_picture(table, path, attrs=None, overwrite=False, title=None):
    """Draw the per-frame curves to a PNG; frames left out are marked by their reason."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from ._files import atomic_output

    attrs = attrs or {}
    x, xlabel = _x_axis(table)
    valid = np.array(table["valid"], bool)
    panels = [(name, label) for name, label in (
        ("fwhm", "FWHM (px)"), ("background", "background"),
        ("n_matched", "stars matched"), ("residual", "residual (px)"),
        ("shift", "shift (px)"), ("rotation", "rotation (deg)"))
        if name in table or (name == "shift" and "shift_x" in table)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 1.9 * len(panels) + 1.2),
                             sharex=True, squeeze=False)
    groups = reason_groups(table)
    markers = "xv^s*dP"
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (name, label) in zip(axes[:, 0], panels, strict=True):
        series = ([("shift_x", "x"), ("shift_y", "y")] if name == "shift"
                  else [(name, None)])
        for key, sub in series:
            values = np.array([np.nan if v is None else v for v in table[key]], float)
            ax.plot(x[valid], values[valid], ".-", ms=4, lw=0.8,
                    label=f"{sub} (used)" if sub else None)
            for k, (_, frames) in enumerate(groups):
                ax.plot(x[frames], values[frames], markers[k % len(markers)], ms=8,
                        color=colours[(k + 3) % len(colours)], ls="none")
        if name == "n_matched" and "n_stars" in table:
            stars = np.array([np.nan if v is None else v for v in table["n_stars"]], float)
            ax.plot(x, stars, ":", color="grey", lw=0.8, label="stars detected")
        if name == "residual" and attrs.get("max_residual"):
            ax.axhline(attrs["max_residual"], color="grey", ls="--", lw=0.8, label="limit")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize="small")
    axes[-1, 0].set_xlabel(xlabel)
    handles = [plt.Line2D([], [], marker=markers[k % len(markers)], ls="none", ms=8,
                          color=colours[(k + 3) % len(colours)],
                          label=f"left out ({len(frames)}): {_short(example)}")
               for k, (example, frames) in enumerate(groups)]
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=1, fontsize="small",
                   frameon=False, bbox_to_anchor=(0.5, 0.0))
    used = int(valid.sum())
    head = title or f"registration: {used} of {valid.size} frames usable"
    if attrs.get("reference") is not None:
        head += f"; reference frame {attrs['reference']}"
    fig.suptitle(head)
    fig.tight_layout(rect=(0, 0.03 * (len(handles) + 1), 1, 0.97))
    try:
        with atomic_output(os.fspath(path), overwrite) as tmp:
            fig.savefig(tmp, format="png", dpi=80, metadata={"Software": "bigstack"})
    finally:
        plt.close(fig)
    return os.fspath(path)
