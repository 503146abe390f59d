"""``benchmarks/run.py`` works on tiny data, and stacking keeps few files open.

The benchmarks themselves are not part of the test run (they take minutes);
this checks that the one command runs end to end and that its table says
what it measured, that its pieces (the method table, the page-cache
eviction, the Siril log parsing) do what they say, and the open-files
promise.
"""

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"
sys.path.insert(0, str(REPO / "benchmarks"))

from bench import alternating, data, methods, references, siril  # noqa: E402


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _row(text, method):
    """The cells of ``method``'s row in the last markdown table of ``text``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
    assert rows, f"no row for {method} in:\n{text}"
    return [cell.strip() for cell in rows[-1].strip().strip("|").split("|")]


def _run(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, str(RUN), "--frames", "4", "--size", "128",
         "--dir", str(tmp_path / "frames"), "--results", str(tmp_path / "RESULTS.md"),
         "--idle-wait", "0", *args],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env or _env(),
    )


def test_run_py_smoke(tmp_path):
    """Python rows and the CLI row, from another cwd, with the frames evicted (--cold)."""
    results = tmp_path / "RESULTS.md"
    names = ["floor", "bigstack-nearest", "find_shifts", "bigstack-cli"]
    proc = _run(tmp_path, "--methods", ",".join(names), "--cold")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = results.read_text()
    assert "python benchmarks/run.py --frames 4 --size 128" in text
    assert "cores" in text and "numpy" in text  # the machine is recorded
    assert "cold cache" in text and "Eviction check" in text
    for method in names:
        # method, seconds, total s, x floor, input MB/s, peak RSS MiB, max open files,
        # matches, check
        cells = _row(text, method)
        assert float(cells[1]) >= 0, cells
        assert float(cells[5]) > 0, cells
        assert cells[7] == "yes", cells
        assert "0% of the frames cached at start" in cells[8], cells
        assert method in proc.stdout  # the table is printed too
    assert float(_row(text, "floor")[3]) == 1.0
    # the CLI row is the whole process: interpreter start and imports included
    cli = _row(text, "bigstack-cli")
    assert cli[1] == cli[2] and float(cli[1]) > float(_row(text, "bigstack-nearest")[1])


def test_siril_row_skipped_without_siril(tmp_path):
    """Without siril-cli on PATH the row is a note in the table, not an error."""
    (tmp_path / "bin").mkdir()
    env = dict(_env(), PATH=str(tmp_path / "bin"))
    proc = _run(tmp_path, "--methods", "siril", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = _row((tmp_path / "RESULTS.md").read_text(), "siril")
    assert "skipped: siril-cli not installed" in cells[-1], cells


@pytest.mark.skipif(shutil.which("siril-cli") is None, reason="siril-cli not installed")
def test_siril_row(tmp_path):
    proc = _run(tmp_path, "--methods", "siril", "--size", "256", "--frames", "5")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cells = _row((tmp_path / "RESULTS.md").read_text(), "siril")
    assert cells[7] == "yes", cells
    assert "5/5 registered" in cells[8], cells
    assert float(cells[5]) > 0  # its own peak RSS


def test_registration_warp_and_calibration_rows(tmp_path):
    """The rows that register rotated frames, warp with Lanczos and calibrate: each checked
    against its own reference (true transforms, a bilinear stack, a numpy calibration)."""
    names = ["floor", "bigstack-calibrated", "bigstack-lanczos3", "register",
             "rotated-bilinear", "register+stack"]
    proc = _run(tmp_path, "--methods", ",".join(names), "--size", "256", "--frames", "6")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (tmp_path / "RESULTS.md").read_text()
    for method in names:
        cells = _row(text, method)
        assert cells[7] == "yes", cells
    assert "6/6 valid, corners within" in _row(text, "register+stack")[8]
    assert "coverage differs at 0 of" in _row(text, "rotated-bilinear")[8]
    assert "(recipe `rotated`)" in text


# ---- the pieces


def test_method_table():
    """Every row is a Python function or a command, and says what it runs and checks."""
    names = list(methods.METHODS)
    assert names[0] == "floor"
    for name in ("tutorial", "ccdproc", "dask-naive", "bigstack-nearest", "bigstack-bilinear",
                 "bigstack-cluster", "bigstack-median", "bigstack-sigma_clip", "find_shifts",
                 "bigstack-cli", "siril", "bigstack-calibrated", "bigstack-lanczos3",
                 "register", "bigstack-rotated", "rotated-bilinear", "rotated-lanczos3",
                 "register+stack"):
        assert name in names
    for entry in methods.METHODS.values():
        assert (entry.run is None) != (entry.command is None), entry.name
        assert entry.what and entry.match_text, entry.name
        assert entry.reference is None or entry.reference in references.KINDS, entry.name
        assert entry.reference or entry.check, entry.name
    with pytest.raises(ValueError, match="registered twice"):
        methods.method("floor", "again")(lambda job: None)


def test_alternating_rounds_and_best_ratios(monkeypatch, capsys):
    """The one-process scripts' loop (``*_cost.py``): a warm-up call of every run, a line
    a round, then the best wall and CPU of each against the first run's best; fixed fake
    timings, the ratios worked out by hand."""
    calls, cleared = [], []
    fake = iter([(1.0, 0.5), (3.0, 2.0), (5.0, 1.5),  # round 1: floor, a, b
                 (0.8, 0.6), (3.2, 1.8), (4.0, 1.2)])  # round 2

    def fake_timed(fn):
        fn()
        return next(fake)

    monkeypatch.setattr(alternating, "timed", fake_timed)
    runs = {name: (lambda name=name: calls.append(name)) for name in ("floor", "a", "b")}
    times = alternating.alternate(runs, 2, before=lambda: cleared.append(len(calls)))
    assert calls == ["floor", "a", "b"] * 3  # the warm-up, then two rounds
    assert cleared == list(range(9))  # before every call, warm-up included
    alternating.print_best(times, 7)
    assert capsys.readouterr().out.splitlines() == [
        "floor 1.00 s (0.50 s CPU), a 3.00 s (2.00 s CPU), b 5.00 s (1.50 s CPU)",
        "floor 0.80 s (0.60 s CPU), a 3.20 s (1.80 s CPU), b 4.00 s (1.20 s CPU)",
        # wall: 3.0 / 0.8 = 3.75, 4.0 / 0.8 = 5; CPU: 1.8 / 0.5 = 3.6, 1.2 / 0.5 = 2.4
        "7 frames, best wall: floor 0.80 s, a 3.00 s = 3.75x, b 4.00 s = 5.00x",
        "7 frames, best CPU: floor 0.50 s, a 1.80 s = 3.60x, b 1.20 s = 2.40x",
    ]


def _fincore_bytes(path):
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_evict_drops_the_pages(tmp_path):
    path = tmp_path / "frame.bin"
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).integers(0, 255, 2**22, np.uint8).tobytes())
        f.flush()
        os.fsync(f.fileno())  # dirty pages cannot be dropped
    data.warm([path])
    resident, total = data.resident_pages(path)
    if resident < total:
        pytest.skip("this file system does not keep the file in the page cache")
    assert total == 2**22 // os.sysconf("SC_PAGE_SIZE")
    data.evict([path])
    assert data.resident_share([path]) == 0.0
    if shutil.which("fincore"):  # util-linux's view, independent of our mincore call
        assert _fincore_bytes(path) == 0
        data.warm([path])
        assert _fincore_bytes(path) == 2**22
        assert data.resident_share([path]) == 1.0


_SIRIL_LOG = """\
log: Running command: register
log: Reference Image:
log: Found 17 stars in reference, channel #0
log: FWHMx:        3.13 px
log: Matching stars in image 2: done
log: Initial pair matches: 17
log: dx:          +0.05 px
log: dy:          +0.46 px
log: FWHMx:        3.11 px
log: Matching stars in image 3: done
log: dx:          -0.86 px
log: dy:          -0.25 px
log: FWHMx:        3.15 px
log: Execution time: 540.62 ms.
log: Registration finished.
log: Total: 0 failed, 3 registered.
log: Running command: stack
log: Stacked sequence successfully.
log: Execution time: 1 min 05 s.
"""

# two threads: image 5's block and image 6's overlap, image 7's stands alone
_SIRIL_THREADS = """\
log: Running command: register
log: Matching stars in image 5: done
log: Matching stars in image 6: done
log: dx:          +1.00 px
log: dy:          +2.00 px
log: dx:          +3.00 px
log: dy:          +4.00 px
log: Matching stars in image 7: done
log: dx:          -0.50 px
log: dy:          +0.25 px
log: Execution time: 1 h 02 min 03 s.
"""


def test_siril_log_parsing():
    found = siril.parse_log(_SIRIL_LOG, 3)
    assert (found["n_registered"], found["n_failed"]) == (3, 0)
    assert found["register_s"] == pytest.approx(0.54062)
    assert found["stack_s"] == pytest.approx(65.0)
    assert found["shifts"] == {1: (0.05, 0.46), 2: (-0.86, -0.25)}
    assert found["fwhm_frames"] == pytest.approx(3.13)
    # Siril's y runs down: its [dx, dy] is the truth's [dx, -dy]
    truth = np.array([[0, 0], [0.03, -0.45], [-0.86, 0.30]])
    errors = siril.shift_errors(found["shifts"], truth)
    assert errors["n_shifts"] == 2
    assert errors["shift_max_err"] == pytest.approx(0.05)


def test_siril_log_interleaved_threads():
    """Lines of overlapping blocks cannot be told apart: those frames are left out."""
    found = siril.parse_log(_SIRIL_THREADS, 8)
    assert found["shifts"] == {6: (-0.5, 0.25)}
    assert found["register_s"] == pytest.approx(3723.0)


def test_fwhm_of_a_gaussian_star():
    yy, xx = np.mgrid[0:64, 0:64]
    sigma = 1.5
    image = 100 + 5000 * np.exp(-((xx - 30.3) ** 2 + (yy - 33.6) ** 2) / (2 * sigma**2))
    assert siril.fwhm_at(image, (30, 34)) == pytest.approx(2.3548 * sigma, rel=0.02)
    assert math.isnan(siril.fwhm_at(image, (2, 2)))  # too near the edge for the box


_STACK_UNDER_LIMIT = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    import numpy as np
    import bigstack

    paths = json.load(open(sys.argv[1]))
    shifts = np.load(sys.argv[2])
    out = bigstack.stack(bigstack.open_frames(paths), shifts)
    np.save(sys.argv[3], out["stack"].values)
    np.save(sys.argv[4], out["coverage"].values)
    print(resource.getrlimit(resource.RLIMIT_NOFILE))
""")


def test_stack_1000_frames_under_256_open_files(tmp_path):
    """The open-files promise: 1,000 frames stack in one call under ``ulimit -n 256``."""
    from astropy.io import fits

    n, ny, nx = 1000, 16, 16
    rng = np.random.default_rng(6)
    data = rng.integers(0, 60000, (n, ny, nx), dtype=np.uint16)
    paths = []
    for i in range(n):
        path = tmp_path / "frames" / f"f{i:04d}.fit"
        path.parent.mkdir(exist_ok=True)
        fits.PrimaryHDU(data[i]).writeto(path)
        paths.append(str(path))
    shifts = rng.integers(-3, 4, (n, 2)).astype(np.float64)
    shifts[0] = 0
    (tmp_path / "paths.json").write_text(json.dumps(paths))
    np.save(tmp_path / "shifts.npy", shifts)

    proc = subprocess.run(
        [sys.executable, "-c", _STACK_UNDER_LIMIT, str(tmp_path / "paths.json"),
         str(tmp_path / "shifts.npy"), str(tmp_path / "stack.npy"),
         str(tmp_path / "coverage.npy")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(256, 256)" in proc.stdout

    # plain numpy: output (x, y) takes frame i's pixel (x + dx, y + dy)
    total = np.zeros((ny, nx))
    coverage = np.zeros((ny, nx), np.int64)
    for frame, (dx, dy) in zip(data.astype(np.float64), shifts.astype(int), strict=True):
        ys, xs = np.arange(ny)[:, None] + dy, np.arange(nx)[None, :] + dx
        inside = (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
        total += np.where(inside, frame[ys.clip(0, ny - 1), xs.clip(0, nx - 1)], 0)
        coverage += inside
    np.testing.assert_array_equal(np.load(tmp_path / "coverage.npy"), coverage)
    np.testing.assert_allclose(np.load(tmp_path / "stack.npy"), total / coverage, rtol=1e-6)


def test_rotated_recipe_turns_one_degree_and_flips_the_last_frame(tmp_path):
    """The frames for rotation rows: 1 degree over the night, the last frame flipped."""
    frames = data.get_frames(4, (64, 64), tmp_path / "rot", recipe=data.rotated_recipe(4),
                             log=lambda *a: None)
    a = frames.transforms[:, :, :2]
    turn = np.degrees(np.arctan2(a[:, 1, 0], a[:, 0, 0]))
    np.testing.assert_allclose(turn[:3], [0, 1 / 3, 2 / 3], atol=1e-9)
    assert abs(abs(turn[3]) - 179.0) < 1e-6  # 1 degree plus the meridian flip's 180
    again = data.get_frames(4, (64, 64), tmp_path / "rot", recipe=data.rotated_recipe(4),
                            log=lambda *a: None)  # reused from truth.json, transforms kept
    assert not again.generated
    np.testing.assert_allclose(again.transforms, frames.transforms)
