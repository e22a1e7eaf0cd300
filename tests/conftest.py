"""Test-wide settings: CPU only, float32 matmuls at full precision; under `CI=true`, a skip fails the run.

A skipped test is a check that CI claims and does not run, so when the environment variable `CI` is `true` (or `1`)
every skip (a `skipif`, a `pytest.skip` in a test or fixture, a module skipped at collection) is reported as a
failure naming its reason, unless its node id is in `CI_ALLOWED_SKIPS` with the reason it may skip there. `.ci/run`
installs what the skipping tests need (Chromium, Java, Tesseract). Without `CI`, skips are plain skips (`-rs` lists
them). The hooks run where the test runs, so they work the same in pytest-xdist workers.
"""

import os

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

CI = os.environ.get("CI", "").strip().lower() in ("true", "1")

# Node id (as pytest prints it, e.g. "tests/test_x.py::test_y[param]", or a module's path for a module skipped at
# collection) → why it may skip under CI. Empty: CI installs everything every test needs.
CI_ALLOWED_SKIPS: dict[str, str] = {}


def _ci_failure(report, nodeid: str) -> None:
    """Turns a skipped report into a failed one whose text says why (in place)."""
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    report.outcome = "failed"
    report.longrepr = (f"{nodeid} was skipped under CI=true ({reason}). CI must run every test: install what it "
                       "needs (see .ci/run), or add its node id with the reason to CI_ALLOWED_SKIPS in "
                       "tests/conftest.py.")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if CI and report.skipped and not hasattr(report, "wasxfail"):
        why = CI_ALLOWED_SKIPS.get(item.nodeid)
        if why is None:
            _ci_failure(report, item.nodeid)
        elif isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:  # `-rs` shows why it is allowed
            path, line, reason = report.longrepr
            report.longrepr = (path, line, f"{reason} [allowed in CI: {why}]")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    report = yield
    if CI and report.skipped and collector.nodeid not in CI_ALLOWED_SKIPS:
        _ci_failure(report, collector.nodeid)
    return report
