"""``bigstack demo``: a synthetic night, aligned and stacked out of core.

Writes into DIRECTORY: ``frames/`` (the generated FITS frames),
``stack.zarr`` (the aligned stack), ``shifts.csv`` and ``demo.png`` (single
frame, naive stack, aligned mean and aligned sigma-clipped stack side by
side, with a zoom on the reference star), and prints what it measured.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np

from ._errors import BigstackWarning, StoreExistsError


def pixel_noise(image, mask=None):
    """Per-pixel noise from neighbour differences (immune to gradients and stars).

    ``1.4826 * MAD`` of horizontal pixel differences, divided by sqrt(2);
    ``mask`` (same shape, bool) selects the pixels to use.
    """
    image = np.asarray(image, np.float64)
    diff = image[:, 1:] - image[:, :-1]
    if mask is not None:
        diff = diff[mask[:, 1:] & mask[:, :-1]]
    diff = diff[np.isfinite(diff)]
    return 1.4826 * float(np.median(np.abs(diff - np.median(diff)))) / np.sqrt(2)


def _star_fwhm(image, position, box=40):
    from ._register import measure_star, search_box

    y0, y1, x0, x1 = search_box(position, box, image.shape)
    return measure_star(np.asarray(image[y0:y1, x0:x1]), "centroid")["fwhm"]


def run_demo(directory="bigstack-demo", *, n_frames=60, shape=(1536, 2048), seed=0,
             overwrite=False, memory="512MB", progress=False, out=print, colour=False):
    """Generate, align and stack a synthetic night; return the measured summary (dict).

    ``colour``: a one-shot-colour night (RGGB Bayer FITS), debayered and stacked in
    colour; registration and the measurements use the green plane, and the summary
    adds the reference star's colour against the truth.
    """
    from . import find_shifts, find_transforms, open_frames, stack, synthetic
    from ._memory import PeakMemory
    from ._tables import write_shifts_csv, write_transforms_csv

    directory = os.fspath(directory)
    store = os.path.join(directory, "stack.zarr")
    picture = os.path.join(directory, "demo.png")
    table = os.path.join(directory, "shifts.csv")
    if not overwrite:
        for path in (store, picture, table):
            if os.path.exists(path):
                raise StoreExistsError(f"{path}: left by an earlier demo; pass --overwrite or "
                                       "choose another folder")
    os.makedirs(directory, exist_ok=True)  # a read-only place fails here, before any work
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{directory}: cannot write in it (permission denied or a "
                              "read-only file system)")
    t0 = time.perf_counter()
    truth = synthetic.make_frames(
        os.path.join(directory, "frames"), n_frames=n_frames, shape=shape, seed=seed,
        motion=synthetic.Motion(subpixel=True, drift_step=1.2, jitter=0.5),
        artefacts=synthetic.Artefacts(trail=True), stars=synthetic.Stars(ref_isolation=60),
        overwrite=overwrite, bayer="RGGB" if colour else None)
    made = time.perf_counter() - t0
    out(f"generated {n_frames} frames of {shape[1]} x {shape[0]} in {made:.1f} s "
        f"({os.path.join(directory, 'frames')})")

    cube = open_frames(truth.paths)
    with PeakMemory() as run:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BigstackWarning)
            if colour:  # registered on many stars of the green plane (find_transforms)
                shifts = find_transforms(cube, reference=0)
            else:
                shifts = find_shifts(cube, star_pos=truth.ref_star, search=100, track=True)
            found = time.perf_counter()
            # frames find_shifts flagged (a trail beside the star, say) are left out
            result = stack(cube, shifts, store=store, memory=memory,
                           mode="overwrite" if overwrite else "write", progress=progress)
        stacked = time.perf_counter()
        clip_start = time.perf_counter()
        with warnings.catch_warnings():  # the frames left out are reported above
            warnings.simplefilter("ignore", BigstackWarning)
            clipped = stack(cube, shifts, method="sigma_clip", memory=memory).compute()
        clip_seconds = time.perf_counter() - clip_start
    for w in caught:
        out(f"warning: {w.message}")
    (write_transforms_csv if colour else write_shifts_csv)(shifts, table, overwrite=overwrite)
    used = int(shifts["valid"].sum())
    error = np.abs(shifts["shift"].values - truth.shifts)[shifts["valid"].values]

    # measurements: a single frame against the stacks (a colour night: its green plane)
    rgb = result["stack"].values if colour else None
    green = {"channel": "G"} if colour else {}
    single = cube.isel(frame=0).sel(**green).values
    naive = stack(cube).compute()["stack"].sel(**green).values
    aligned = result["stack"].sel(**green).values
    full = result["coverage"].sel(**green).values == used
    clipped_stack = clipped["stack"].sel(**green).values
    noise_single = pixel_noise(single, full)
    noise_stack = pixel_noise(aligned, full)
    fwhm_single = _star_fwhm(single, truth.ref_star)
    fwhm_stack = _star_fwhm(aligned, truth.ref_star)
    summary = {
        "frames": n_frames, "frames_used": used, "shape": list(shape),
        "seconds_shifts": found - run.t0, "seconds_total": stacked - run.t0,
        "peak_memory_bytes": run.peak, "max_shift_error_px": float(error.max()),
        "fwhm_single": fwhm_single, "fwhm_stack": fwhm_stack,
        "noise_single": noise_single, "noise_stack": noise_stack,
        "noise_gain": noise_single / noise_stack, "expected_gain": float(np.sqrt(used)),
        "store": store, "picture": picture,
    }
    summary["seconds_sigma_clip"] = clip_seconds
    summary["rejected"] = int(clipped["rejected"].sum())
    if colour:
        summary["star_colour"] = _star_colour(rgb, truth)
    _picture(picture, single, naive, aligned, clipped_stack, truth.ref_star, overwrite)

    mib = "unknown" if run.peak is None else f"{run.peak / 2**20:.0f} MiB"
    out(f"aligned and stacked {used} of {n_frames} frames in {summary['seconds_total']:.1f} s "
        f"(shifts {summary['seconds_shifts']:.1f} s), peak memory {mib}")
    out(f"shift error against the generator's truth: at most {summary['max_shift_error_px']:.3f} "
        "px")
    out(f"star FWHM: single frame {fwhm_single:.2f} px, stack {fwhm_stack:.2f} px "
        f"({100 * (fwhm_stack / fwhm_single - 1):+.1f}%)")
    out(f"background noise: single frame {noise_single:.2f}, stack {noise_stack:.2f}: "
        f"gain {summary['noise_gain']:.2f} (sqrt(N) = {summary['expected_gain']:.2f})")
    out(f"sigma-clipped stack in {clip_seconds:.1f} s: {summary['rejected']} values rejected "
        "(the noise's own tails, and the trails, cosmic rays and hot pixels)")
    if colour:
        measured, expected = summary["star_colour"]
        out(f"reference star colour R/G, B/G: {measured[0]:.3f}, {measured[1]:.3f} "
            f"(truth {expected[0]:.3f}, {expected[1]:.3f})")
    out(f"wrote {store}, {table} and {picture}")
    return summary


def _star_colour(rgb, truth, radius=8):
    """The reference star's ``([R/G, B/G] measured, [R/G, B/G] true)`` in a colour stack."""
    x, y = truth.ref_star
    yy, xx = np.mgrid[0:rgb.shape[1], 0:rgb.shape[2]]
    d = np.hypot(xx - x, yy - y)
    flux = []
    for plane in rgb:
        sky = np.nanmedian(plane[(d >= radius + 3) & (d < radius + 8)])
        flux.append(float(np.nansum(plane[d < radius] - sky)))
    s = truth.stars
    return ([flux[0] / flux[1], flux[2] / flux[1]],
            [float(s["r"][0] / s["g"][0]), float(s["b"][0] / s["g"][0])])


def _picture(path, single, naive, aligned, clipped, star, overwrite):
    import matplotlib

    from ._files import atomic_output
    from ._render import display

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(20, 9.5))
    zoom = 60
    x, y = int(round(star[0])), int(round(star[1]))
    titles = ("single frame", "naive stack (no alignment)", "aligned stack (mean)",
              "aligned stack (sigma clip)")
    images = (single, naive, aligned, clipped)
    rows, cols = slice(max(y - zoom, 0), y + zoom), slice(max(x - zoom, 0), x + zoom)
    for column, (title, image) in enumerate(zip(titles, images, strict=True)):
        # One automatic stretch for all panels, the aligned stack's, with the sky's gradient
        # taken out: the single frame's noise then shows as it is against the stacks'.
        display(image, background="plane", norm_array=aligned, ax=axes[0, column], fig=fig,
                title=title)
        axes[0, column].add_patch(matplotlib.patches.Rectangle(
            (x - zoom, y - zoom), 2 * zoom, 2 * zoom, ec="tab:orange", fc="none"))
        display(image[rows, cols], background="plane", norm_array=aligned[rows, cols],
                ax=axes[1, column], fig=fig, title=f"{title}: around the reference star")
    fig.tight_layout()
    with atomic_output(path, overwrite) as tmp:
        fig.savefig(tmp, format="png", dpi=80, metadata={"Software": "bigstack"})
    plt.close(fig)
