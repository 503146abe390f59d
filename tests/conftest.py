"""Test configuration: a non-interactive matplotlib backend, figures closed after each test,
and no test skipped for a missing package.

Every package the tests import is in the ``test`` extra, so a test skipped
because an import failed (``pytest.importorskip``) means the environment is
not the one ``pip install -e ".[test]"`` makes: that is reported as a failure,
never as a quiet skip that would let CI pass without running it.
"""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

_MISSING = ("could not import", "is not installed")


def _missing_package(report):
    if not report.skipped:
        return None
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message if any(m in message for m in _MISSING) else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    message = _missing_package(report)
    if message:
        report.outcome = "failed"
        report.longrepr = f"a package the tests need is missing ({message}); " \
                          "install the test extra: pip install -e '.[test]'"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    message = _missing_package(report)
    if message:
        report.outcome = "failed"
        report.longrepr = f"a package the tests need is missing ({message}); " \
                          "install the test extra: pip install -e '.[test]'"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")
