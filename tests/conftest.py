"""Under CI (CI=true) nothing may be skipped: a test whose requirement is missing there (tmux, Triton)
fails, with the skip's reason, instead of passing unnoticed. Locally a skip stays a skip.
The ``one_thread`` fixture runs a test's torch on one thread (files that stream step by step use it)."""

from __future__ import annotations

import os

import pytest
import torch

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every test must run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> object:
    outcome = yield
    if IN_CI:
        _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> object:
    outcome = yield
    if IN_CI:
        _fail_skip(outcome.get_result())


@pytest.fixture
def one_thread():
    """torch on one thread for the test (tiny tensors: more threads only oversubscribe a busy machine),
    then back to what it was."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
