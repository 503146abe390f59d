"""The bigstack benchmark, one concern a module.

- :mod:`bench.methods`: the rows, one small function each, registered in one table
  (:data:`bench.methods.METHODS`); :mod:`bench.siril` holds the Siril row's script and log
  parsing.
- :mod:`bench.harness`: a fresh process per method (a lean launcher reaps it with
  ``os.wait4`` for its peak RSS), timing, open files, the idle wait, warm or cold cache.
- :mod:`bench.references`: the plain-numpy stacks every output is checked against.
- :mod:`bench.data`: generating and caching the frames with ``bigstack.synthetic``, and the
  page cache (warm, evict, check).
- :mod:`bench.report`: tables, the machine and versions, RESULTS.md, the scaling plot.
- :mod:`bench.modes`: the default run, ``--sweep`` and ``--many``.
- :mod:`bench.alternating`: the one-process ``*_cost.py`` scripts' shared parts (their
  command line and frames, the alternating timing rounds, the best-of ratios to the floor).
- :mod:`bench.cli`: the command line (``benchmarks/run.py`` is a thin entry point over it).
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent  # benchmarks/
REPO = HERE.parent
RUN_PY = HERE / "run.py"
if (REPO / "bigstack" / "__init__.py").exists() and str(REPO) not in sys.path:
    # measure the checkout this file lives in (the children get it on PYTHONPATH too)
    sys.path.insert(0, str(REPO))
