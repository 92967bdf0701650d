"""Write SVG screenshots of the studio for the docs (fixed seed, Mamba and Transformer, 40 steps):

    python -m mclstudio.tui.screenshots docs/
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mclstudio.tui.cli import build_open_app
from mclstudio.tui.headless import settle, start_live

CHECKPOINTS = ["checkpoints/mamba.pt", "checkpoints/transformer.pt"]


async def shoot(folder: Path, steps: int = 40) -> list[Path]:
    app = build_open_app(CHECKPOINTS, device="cpu", record_dir=folder, show_timing=False)
    written = []
    async with app.run_test(size=(170, 50)) as pilot:
        written.append(Path(app.save_screenshot("tui-picker.svg", path=str(folder))))
        await start_live(pilot)
        for _ in range(steps):
            await pilot.press("n")
        await settle(pilot, steps, timeout=120)
        await pilot.pause(0.2)
        written.append(Path(app.save_screenshot("tui-live.svg", path=str(folder))))
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    for path in asyncio.run(shoot(out)):
        print(path)
