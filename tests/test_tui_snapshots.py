"""SVG snapshots of the studio's main screens (pytest-textual-snapshot), with fixed seeds and the step
latencies hidden, so the pictures depend only on the shipped checkpoints and Omniglot-mini.
Update them after an intended change with: pytest tests/test_tui_snapshots.py --snapshot-update"""

from __future__ import annotations

from pathlib import Path

import pytest

from mclstudio.tui.cli import build_open_app
from mclstudio.tui.headless import settle, start_live

ROOT = Path(__file__).resolve().parent.parent
CKPTS = [f"checkpoints/{m}.pt" for m in ("mamba", "transformer")]  # relative: the picker shows them
SIZE = (160, 48)
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def in_repo_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)


def app(tmp_path: Path):
    return build_open_app(CKPTS, tasks=4, shots=2, seed=0, device="cpu", record_dir=tmp_path, show_timing=False)


def test_picker_screen(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(app(tmp_path), terminal_size=SIZE)


async def five_steps(pilot) -> None:
    await start_live(pilot)
    for _ in range(5):
        await pilot.press("n")
    await settle(pilot, 5)


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 50)], ids=["80x24", "120x40", "200x50"])
def test_live_screen_after_five_steps(snap_compare, tmp_path: Path, size: tuple[int, int]) -> None:
    # 80x24 is the compact view (accuracy, forgetting, state memory, association map)
    assert snap_compare(app(tmp_path), terminal_size=size, run_before=five_steps)


def test_too_small_message(snap_compare, tmp_path: Path) -> None:
    assert snap_compare(app(tmp_path), terminal_size=(70, 20), run_before=five_steps)


def test_help_screen(snap_compare, tmp_path: Path) -> None:
    async def help_screen(pilot) -> None:
        await start_live(pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app(tmp_path), terminal_size=(120, 40), run_before=help_screen)
