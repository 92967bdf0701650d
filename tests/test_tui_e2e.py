"""End to end: `mclstudio open checkpoints/mamba.pt` in a real terminal (tmux), Enter on the picker,
three single steps, the screen read back with capture-pane, then q; with the models in a thread of the app
and in a child process (--worker). .ci/run installs tmux."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"),
]


@pytest.mark.parametrize("worker", ["thread", "process"])
def test_open_mamba_in_tmux(tmp_path: Path, worker: str) -> None:
    sock = f"mclstudio-test-{os.getpid()}-{worker}"  # a private tmux server: never touches the user's sessions
    tmux = ["tmux", "-L", sock]
    command = (f"cd {ROOT} && {sys.executable} -m mclstudio open checkpoints/mamba.pt --record-dir {tmp_path} "
               f"--worker {worker}")
    env = {**os.environ, "TERM": "xterm-256color"}
    subprocess.run([*tmux, "-f", "/dev/null", "new-session", "-d", "-s", "studio", "-x", "160", "-y", "50",
                    command], check=True, env=env)

    def screen() -> str:
        out = subprocess.run([*tmux, "capture-pane", "-p", "-t", "studio"], capture_output=True, text=True)
        return out.stdout

    def wait_for(text: str, timeout: float = 40.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            shown = screen()
            if text in shown:
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{screen()}")

    def keys(*names: str) -> None:
        for name in names:
            subprocess.run([*tmux, "send-keys", "-t", "studio", name], check=True)
            time.sleep(0.15)

    try:
        wait_for("Start (Enter)")
        keys("Enter")
        wait_for("waiting for the first step")
        keys("n", "n", "n")
        shown = wait_for("step 3/100")
        assert "task 1/20" in shown
        assert "mamba" in shown and "acc" in shown
        assert "paused" in shown
        assert "▀" in shown  # the example drawn in half blocks
        keys("q")
        end = time.monotonic() + 20
        while time.monotonic() < end:
            alive = subprocess.run([*tmux, "has-session", "-t", "studio"], capture_output=True).returncode == 0
            if not alive:
                break
            time.sleep(0.2)
        assert not alive, "q did not quit the app"
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
