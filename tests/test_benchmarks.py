"""``benchmarks/run.py`` works on tiny data, and stacking keeps few files open.

The benchmarks themselves are not part of the test run (they take minutes);
this checks that the one command runs end to end and that its table says
what it measured.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _row(text, method):
    """The cells of ``method``'s row in the last markdown table of ``text``."""
    rows = [line for line in text.splitlines() if line.startswith(f"| {method} |")]
    assert rows, f"no row for {method} in:\n{text}"
    return [cell.strip() for cell in rows[-1].strip().strip("|").split("|")]


def test_run_py_smoke(tmp_path):
    results = tmp_path / "RESULTS.md"
    methods = ["floor", "bigstack-nearest", "find_shifts"]
    proc = subprocess.run(
        [sys.executable, str(RUN), "--frames", "4", "--size", "128",
         "--dir", str(tmp_path / "frames"), "--methods", ",".join(methods),
         "--results", str(results), "--idle-wait", "0"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = results.read_text()
    assert "python benchmarks/run.py --frames 4 --size 128" in text
    assert "cores" in text and "numpy" in text  # the machine is recorded
    for method in methods:
        # method, seconds, total s, x floor, input MB/s, peak RSS MiB, max open files,
        # matches, check
        cells = _row(text, method)
        assert float(cells[1]) >= 0, cells
        assert float(cells[5]) > 0, cells
        assert cells[7] == "yes", cells
        assert method in proc.stdout  # the table is printed too
    assert float(_row(text, "floor")[3]) == 1.0


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
