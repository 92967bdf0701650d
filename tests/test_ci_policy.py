"""tests/conftest.py's CI policy: under CI=true a skip fails the run; elsewhere a skip stays a skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SKIPPING = '''
import pytest

def test_needs_tmux():
    pytest.skip("tmux is not installed")

@pytest.mark.skipif(True, reason="Triton does not import")
def test_needs_triton():
    pass

def test_runs():
    pass
'''


def run_pytest(folder: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


def test_a_skip_fails_under_ci_only(tmp_path):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    local = run_pytest(tmp_path, None)
    assert local.returncode == 0 and "1 passed, 2 skipped" in local.stdout, local.stdout
    ci = run_pytest(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout
    assert "1 failed, 1 passed, 1 error" in ci.stdout and "skipped under CI" in ci.stdout
    assert "tmux is not installed" in ci.stdout and "Triton does not import" in ci.stdout
