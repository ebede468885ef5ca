"""Test-wide rules. A skip fails the run, in every lane: a skipped test hides a missing piece (a golden set, a
ComfyUI prerequisite, a dependency). The only skips allowed are platform conditions, where this platform cannot run
the test at all; their reason starts with PLATFORM_CONDITION and says which platforms those are."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLATFORM_CONDITION = "platform condition:"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if PLATFORM_CONDITION not in reason:
            report.outcome = "failed"
            report.longrepr = f"skipped, which would hide a missing piece, so it fails: {reason}"
