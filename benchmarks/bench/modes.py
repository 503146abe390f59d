"""The runs: the default table, the scaling sweep (``--sweep``) and a long night (``--many``).

Each mode makes or reuses its frames (:mod:`bench.data`), measures every
method with :func:`bench.harness.measure` (floor first, so every ratio has
its floor from the same run), prints a table and appends a section to
RESULTS.md (:mod:`bench.report`).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from .data import (
    RECIPES,
    cache_key,
    check_disk,
    cold_check,
    default_cache_root,
    default_recipe,
    frame_bytes,
    get_frames,
)
from .harness import measure
from .methods import METHODS
from .references import References
from .report import (
    HEADERS,
    SWEEP_BASE_FRAMES,
    SWEEP_BASE_SIZE,
    SWEEP_FRAMES,
    SWEEP_SIZES,
    append_results,
    cold_check_text,
    command_text,
    common_notes,
    data_text,
    fmt_row,
    machine_info,
    machine_text,
    markdown_table,
    now_text,
    per_method_notes,
    plot_scaling,
    text_table,
)

SWEEP_METHODS = ("floor", "bigstack-nearest", "bigstack-bilinear", "dask-naive", "tutorial")


def parse_size(text):
    if "x" in text.lower():
        ny, nx = (int(v) for v in text.lower().split("x"))
        return ny, nx
    return int(text), int(text)


def workdir_for(args):
    return Path(tempfile.mkdtemp(prefix="bigstack-bench-work-"))


def measure_options(args):
    return {"repeat": args.repeat, "memory": args.memory, "timeout": args.timeout,
            "idle_wait": args.idle_wait, "cold": args.cold}


def cache_mode(args):
    return "cold cache" if args.cold else "warm cache"


def choose_methods(text, default):
    methods = text.split(",") if text else list(default)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    return methods


def frames_for(args, shape, recipe):
    """The frames of ``recipe`` (a name in bench.data.RECIPES) for a default run; with
    --dir, recipes other than the default live beside it in ``<dir>-<recipe>``."""
    folder = args.dir
    if folder and recipe != "drift":
        folder = f"{str(folder).rstrip('/')}-{recipe}"
    return get_frames(args.frames, shape, folder, recipe=RECIPES[recipe](args.frames))


def first_cold_check(args, frames, log=print):
    """In a --cold run, show once that eviction works (see bench.data.cold_check)."""
    if not args.cold:
        return None
    check = cold_check(frames.paths)
    log(cold_check_text(check)[2:])
    return check


def run_default(args):
    shape = parse_size(args.size)
    methods = choose_methods(args.methods, METHODS)
    if "floor" in methods:  # the floor runs first
        methods = ["floor"] + [m for m in methods if m != "floor"]
    machine = machine_info()
    # one set of frames per recipe the methods run on (the default drift first)
    recipes = sorted({METHODS[m].recipe for m in methods}, key=lambda r: r != "drift")
    sets = {r: frames_for(args, shape, r) for r in recipes}
    frames = sets[recipes[0]]
    refs = {r: References(f) for r, f in sets.items()}
    workdir = workdir_for(args)
    check = first_cold_check(args, frames)
    print(f"running {', '.join(methods)} on {frames.n} frames {shape[0]}x{shape[1]} "
          f"(best of {args.repeat}, {cache_mode(args)})")
    results = []
    try:
        for method in methods:
            recipe = METHODS[method].recipe
            results.append(measure(method, sets[recipe], refs[recipe], workdir,
                                   **measure_options(args)))
            results[-1]["cold"] = args.cold
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    floor = next((r for r in results if r["method"] == "floor" and "work_s" in r), None)
    floor_s = floor["work_s"] if floor else None
    rows = [fmt_row(r, floor_s, frames.data_bytes) for r in results]
    print()
    print(text_table(HEADERS, rows))
    section = "\n\n".join([
        f"## {frames.n} frames of {shape[0]}x{shape[1]}, {cache_mode(args)}, {now_text()}",
        f"- Command: `{command_text()}` (best of {args.repeat}, memory={args.memory!r}, "
        f"{cache_mode(args)})\n"
        + machine_text(machine) + "\n"
        + "\n".join(data_text(f) + (f" (recipe `{r}`)" if len(sets) > 1 else "")
                    for r, f in sets.items())
        + ("\n" + cold_check_text(check) if check else ""),
        markdown_table(HEADERS, rows),
        common_notes(args.cold) + "\n" + per_method_notes(methods),
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"\nappended to {args.results}")
    if args.clean and not args.dir:
        for f in sets.values():
            shutil.rmtree(f.folder, ignore_errors=True)
    failed = [r["method"] for r in results if "error" in r]
    return 1 if failed else 0


def run_sweep(args):
    methods = choose_methods(args.methods, SWEEP_METHODS)
    base = (SWEEP_BASE_SIZE, SWEEP_BASE_SIZE)
    configs = [(n, base) for n in SWEEP_FRAMES]
    configs += [(SWEEP_BASE_FRAMES, (s, s)) for s in SWEEP_SIZES if s != SWEEP_BASE_SIZE]
    # frames made once: the largest set at the base size gives every N, one set per other size
    needs = {(max(SWEEP_FRAMES), base)}
    needs |= {(SWEEP_BASE_FRAMES, (s, s)) for s in SWEEP_SIZES if s != SWEEP_BASE_SIZE}
    root = default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    missing = sum(frame_bytes(n, shape) for n, shape in needs
                  if not (root / cache_key(n, shape, default_recipe()) / "truth.json").exists())
    check_disk(root, missing, what="the sweep's frames")
    print(f"sweep: df before: {shutil.disk_usage(root).free / 1e9:.1f} GB free, "
          f"{missing / 1e9:.1f} GB of frames to generate")
    machine = machine_info()
    sets = {shape: get_frames(n, shape) for n, shape in sorted(needs, key=lambda c: c[1])}
    workdir = workdir_for(args)
    table = []
    try:
        for n, shape in configs:
            frames = sets[shape].subset(n)
            refs = References(frames)
            print(f"sweep: {n} frames {shape[0]}x{shape[1]}")
            results = {}
            for method in ["floor"] + [m for m in methods if m != "floor"]:
                results[method] = measure(method, frames, refs, workdir, **measure_options(args))
                results[method]["cold"] = args.cold
            floor_s = results["floor"].get("work_s")
            for r in results.values():
                table.append({"n": n, "size": shape[0], "data_bytes": frames.data_bytes,
                              "floor_s": floor_s, **r})
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep:
            for frames in sets.values():
                if frames.generated:
                    shutil.rmtree(frames.folder, ignore_errors=True)
    headers = ["frames", "size", "method", "seconds", "s/frame", "x floor", "input MB/s",
               "peak RSS MiB", "max open files", "matches"]
    rows = []
    for r in table:
        if "work_s" not in r:
            rows.append([r["n"], r["size"], r["method"], "-", "-", "-", "-", "-", "-",
                         r.get("skipped") or "failed"])
            continue
        rows.append([r["n"], r["size"], r["method"], f"{r['work_s']:.2f}",
                     f"{r['work_s'] / r['n']:.4f}",
                     f"{r['work_s'] / r['floor_s']:.2f}" if r["floor_s"] else "-",
                     f"{r['data_bytes'] / r['work_s'] / 1e6:.0f}",
                     f"{r['peak_rss'] / 2**20:.0f}", r["max_fds"],
                     "yes" if r.get("matches") else "no"])
    print()
    print(text_table(headers, rows))
    data_path = Path(args.plot).with_suffix(".json")
    data_path.write_text(json.dumps({"command": command_text(), "date": now_text(),
                                     "rows": table}, indent=1, default=float))
    plot_scaling(table, args.plot)
    print(f"\nplot: {args.plot}")
    section = "\n\n".join([
        f"## Scaling sweep, {cache_mode(args)}, {now_text()}",
        f"- Command: `{command_text()}` (best of {args.repeat}, memory={args.memory!r}, "
        f"{cache_mode(args)})\n"
        + machine_text(machine)
        + f"\n- Data: frames {', '.join(map(str, SWEEP_FRAMES))} at {SWEEP_BASE_SIZE}x"
        f"{SWEEP_BASE_SIZE} (the first N of one {max(SWEEP_FRAMES)}-frame set) and sizes "
        f"{', '.join(map(str, SWEEP_SIZES))} at {SWEEP_BASE_FRAMES} frames; "
        "uint16 FITS from `bigstack.synthetic.make_frames`, sub-pixel drift 0.25 px/frame",
        markdown_table(headers, rows),
        f"Plot: [scaling.png]({Path(args.plot).name}); the numbers behind it: "
        f"[scaling.json]({Path(args.plot).with_suffix('.json').name}).\n\n"
        + common_notes(args.cold)
        + "\n" + per_method_notes([m for m in methods if m in METHODS]),
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"appended to {args.results}")
    return 1 if any("error" in r for r in table) else 0


def run_many(args):
    n = args.many_frames
    shape = (1080, 1920)
    small = min(100, n)
    base_drift = default_recipe().drift_step()
    recipe = default_recipe(drift_step=min(base_drift, 200.0 / max(n, 1)), n_stars=100)
    root = Path(args.dir) if args.dir else default_cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = cache_key(n, shape, recipe)
    folder = Path(args.dir) if args.dir else root / key
    if not (folder / "truth.json").exists():
        need = frame_bytes(n, shape)
        free = shutil.disk_usage(root).free
        if free < need + 2e9:
            raise SystemExit(f"--many needs {need / 1e9:.1f} GB of disk for {n} frames of "
                             f"1080x1920 (+2 GB margin) but {root} has {free / 1e9:.1f} GB free; "
                             "use --many-frames N for fewer frames or --dir on a larger disk")
    machine = machine_info()
    frames = get_frames(n, shape, folder, recipe=recipe)
    workdir = workdir_for(args)
    runs = []
    try:
        sub = frames.subset(small)
        options = measure_options(args)
        print(f"many: {small}-frame baseline")
        sub_refs = References(sub)
        runs.append(("floor", small, measure("floor", sub, sub_refs, workdir, **options)))
        runs.append(("bigstack-nearest", small,
                     measure("bigstack-nearest", sub, sub_refs, workdir, **options)))
        print(f"many: {n} frames")
        refs = References(frames)
        runs.append(("floor", n, measure("floor", frames, refs, workdir, **options)))
        runs.append(("bigstack-nearest", n,
                     measure("bigstack-nearest", frames, refs, workdir, graph=True, **options)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if not args.keep and frames.generated and not args.dir:
            shutil.rmtree(frames.folder, ignore_errors=True)
    headers = ["frames", "method", "seconds", "s/frame", "x floor", "input MB/s",
               "peak RSS MiB", "max open files", "matches"]
    rows = []
    floor_s = None
    for m, k, r in runs:  # each floor run is followed by the bigstack run it measures
        if m == "floor":
            floor_s = r.get("work_s")
        if "work_s" not in r:
            rows.append([k, m, "-", "-", "-", "-", "-", "-", "failed: " + r["error"][:100]])
            continue
        data = k * shape[0] * shape[1] * 2
        rows.append([k, m, f"{r['work_s']:.2f}", f"{r['work_s'] / k:.4f}",
                     f"{r['work_s'] / floor_s:.2f}" if floor_s else "-",
                     f"{data / r['work_s'] / 1e6:.0f}", f"{r['peak_rss'] / 2**20:.0f}",
                     r["max_fds"], "yes" if r.get("matches") else "no"])
    big = runs[-1][2]
    base = runs[1][2]
    cache_note = ""
    if runs[2][2].get("work_s"):
        rate = frames.data_bytes / runs[2][2]["work_s"] / 1e6
        cache_note = (f" The floor read the {frames.data_bytes / 1e9:.1f} GB at {rate:.0f} MB/s, "
                      + ("so from the page cache." if rate > 2000 else
                         "so partly from the disk: the page cache could not hold all frames."))
    summary = []
    if "work_s" in big and "work_s" in base:
        per_big, per_small = big["work_s"] / n, base["work_s"] / small
        summary.append(f"- Time per frame: {per_big * 1e3:.1f} ms at {n} frames vs "
                       f"{per_small * 1e3:.1f} ms at {small} frames "
                       f"({per_big / per_small:.2f}x).")
        summary.append(f"- Peak RSS at {n} frames: {big['peak_rss'] / 2**20:.0f} MiB "
                       f"(memory={args.memory!r}; {base['peak_rss'] / 2**20:.0f} MiB at "
                       f"{small} frames).")
        graph = big.get("graph_open_s", 0) + big.get("graph_build_s", 0)
        summary.append(
            f"- Graph construction: `open_frames` {big.get('graph_open_s', 0):.2f} s (headers of "
            f"{n} files) + `stack(..., store=None)` {big.get('graph_build_s', 0):.2f} s "
            f"({big.get('graph_tasks', '?')} tasks) = {graph / big['work_s']:.1%} of the "
            f"{big['work_s']:.1f} s run (the build alone: "
            f"{big.get('graph_build_s', 0) / big['work_s']:.1%}).")
        summary.append(f"- Most files open at once: {big['max_fds']} (sampled every 20 ms; "
                       f"{base['max_fds']} at {small} frames).")
    print()
    print(text_table(headers, rows))
    print("\n".join(summary))
    scaled = "" if n == 5000 else f" (scaled down from 5,000 with --many-frames {n})"
    section = "\n\n".join([
        f"## Smart-telescope night: {n} frames of 1080x1920{scaled}, {cache_mode(args)}, "
        f"{now_text()}",
        f"- Command: `{command_text()}` (memory={args.memory!r})\n" + machine_text(machine)
        + "\n" + data_text(frames) + "; 100 stars, slow drift so every frame overlaps",
        markdown_table(headers, rows),
        "\n".join(summary) + ("\n- Page cache evicted before each method (--cold)."
                                 if args.cold else "\n- Page cache warmed before each method.")
        + cache_note
        + " The small runs are the first frames of the same set.",
    ])
    if not args.no_record:
        append_results(args.results, section)
        print(f"appended to {args.results}")
    return 1 if any("error" in r for _, _, r in runs) else 0


